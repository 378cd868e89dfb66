"""Time the eta* half of ``make data`` (a preset's main grid) with each search, same conditions.

``make data PRESET=quick`` with the batched search, measured against the sequential
Algorithm 1 on the same machine (both on the one trainer, ``milr.train``). This script runs the
preset's eta* sweep (the same tasks as ``configs/<preset>.yaml``) into fresh temporary stores,
one variant after the other, in the same conditions (``--workers``, default ``auto``, one torch
thread per task, as ``make data`` runs it):

* ``bisect``: ``method="bisect"``, the sequential Algorithm 1 (one trial at a time);
* ``batched-per-seed``: the preset's batched search, one call per (configuration, seed);
* ``batched``: the preset's batched search with the seeds of a configuration in one batch
  (what ``make data`` does).

It prints and saves (``benchmarks/results/time_make_data_<preset>.json``) the wall time and
the summed CPU time of the workers of each variant, the ratios against ``bisect``, the machine
load before and after, and how far the variants' eta* are apart: per configuration, the
seed-mean of log eta* against the seeds' standard deviation, and per seed, the distance in
final bracket steps. Not part of ``make bench`` (it takes ~15 min on 2 idle cores for ``quick``)::

    python benchmarks/time_make_data.py                         # quick preset, all variants
    python benchmarks/time_make_data.py --variants bisect batched
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench_search import bracket_steps  # this folder: the scripts run from here
from milr.store import Store, code_version
from milr.sweep import load_results, run_sweep
from milr.validate import build_tasks, spec_from_preset

HERE = Path(__file__).resolve().parent
VARIANTS = ("bisect", "batched-per-seed", "batched")


def tasks_for(variant: str, preset: str, datasets):
    overrides = {"datasets": datasets} if datasets else {}
    tasks = build_tasks(spec_from_preset(preset, **overrides))
    if variant == "bisect":
        tasks = [replace(t, search=replace(t.search, method="bisect")) for t in tasks]
    elif any(t.search.method != "batched" for t in tasks):
        raise SystemExit(f"preset {preset!r} does not use the batched search")
    return tasks


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


def compare(ref, other, tol: float) -> dict:
    """How far ``other``'s eta* are from ``ref``'s (DataFrames of load_results)."""
    keys = ["dataset", "depth", "width"]
    a = ref.set_index(keys + ["seed"])["eta_star"]
    b = other.set_index(keys + ["seed"])["eta_star"]
    both = a.index.intersection(b.index)
    steps = [abs(bracket_steps(a[i], b[i], tol)) for i in both
             if math.isfinite(bracket_steps(a[i], b[i], tol))]
    within, n_cfg = 0, 0
    for cfg, ga in ref[np.isfinite(ref["eta_star"])].groupby(keys):
        gb = other[(other[keys] == list(cfg)).all(axis=1) & np.isfinite(other["eta_star"])]
        if len(ga) < 2 or len(gb) < 2:
            continue
        la, lb = np.log(ga["eta_star"]), np.log(gb["eta_star"])
        spread = max(la.std(ddof=1), lb.std(ddof=1), math.log1p(tol))
        n_cfg += 1
        within += abs(la.mean() - lb.mean()) <= spread
    return {"seeds_compared": len(steps),
            "seeds_within_one_bracket_step": sum(s <= 1 + 1e-9 for s in steps),
            "median_bracket_steps": float(np.median(steps)) if steps else math.nan,
            "configs_compared": n_cfg, "configs_mean_within_spread": int(within)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--keep", metavar="DIR", default=None,
                    help="keep the stores in DIR/<variant> (default: a temporary directory)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="milr-time-"))
    for v in args.variants:  # a store that already holds records would time nothing
        if (root / v).exists() and any((root / v).iterdir()):
            ap.error(f"--keep {root}: {root / v} is not empty; give a new directory")
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "preset": args.preset, "datasets": args.datasets, "workers": args.workers,
            "torch_threads_per_task": 1, "code_version": code_version(),
            "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version()}
    rows, frames = {}, {}
    for v in args.variants:
        tasks = tasks_for(v, args.preset, args.datasets)
        store = Store(root / v)
        load0, cpu0, t0 = os.getloadavg(), children_cpu(), time.perf_counter()
        df = run_sweep(tasks, store, progress=False, workers=args.workers, torch_threads=1,
                       group_seeds=(v == "batched"))
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        frames[v] = df
        rows[v] = {"tasks": len(tasks), "records": len(df), "wall_s": wall, "cpu_s": cpu,
                   "load_avg_before": load0, "load_avg_after": os.getloadavg(),
                   "trials": int(df["n_trials"].sum()) if len(df) else 0}
        print(f"{v:17s} {len(df)}/{len(tasks)} records  wall {wall:7.1f} s  cpu {cpu:7.1f} s"
              f"  load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    tol = tasks_for(args.variants[0], args.preset, args.datasets)[0].search.tol
    if "bisect" in rows:
        for v in rows:
            if v != "bisect":
                rows[v]["ratio_wall_vs_bisect"] = rows["bisect"]["wall_s"] / rows[v]["wall_s"]
                rows[v]["ratio_cpu_vs_bisect"] = rows["bisect"]["cpu_s"] / rows[v]["cpu_s"]
                rows[v]["eta_star_vs_bisect"] = compare(frames["bisect"], frames[v], tol)
                print(f"{v:17s} x{rows[v]['ratio_wall_vs_bisect']:.2f} wall, "
                      f"x{rows[v]['ratio_cpu_vs_bisect']:.2f} cpu vs bisect; eta*: "
                      f"{rows[v]['eta_star_vs_bisect']}", flush=True)
    out = Path(args.out) if args.out else HERE / "results" / f"time_make_data_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "variants": rows}, indent=1, default=float) + "\n")
    print(f"wrote {out}; stores in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
