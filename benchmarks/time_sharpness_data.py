"""Time the lambda_1 half of ``make data`` (a preset's sharpness tasks) with each solver, in the
same conditions, and check the answers against the committed cache.

For every task of the preset (the same tasks as ``configs/<preset>_sharpness.yaml``), one worker
computes the task's record with each variant back to back, in alternating order from one task
to the next, so that the variants of one network share the machine's conditions (on a shared
machine this is what keeps the ratios meaningful):

* ``arpack``: ``solver="arpack"``, ARPACK's eigsh (ncv 8, residual <= tol |lambda|): the solver
  that computed the committed records (they were made when ``solver="lanczos"`` meant it);
* ``lanczos``: the task as the preset defines it (Lanczos stopped on the eigenvalue's bound);
* ``lanczos-f32``: the same with float32 products (``hvp_dtype="float32"``), Lanczos in float64.

Per task it records each variant's wall and CPU seconds, HVPs and lambda_1 / lambda_1_eff, and
their relative distance to the committed record (``data/results``) and to the float64 Lanczos
answer. It prints the sums and ratios and saves everything to
``benchmarks/results/time_sharpness_data_<preset>.json`` (rewritten after every task, so an
interrupted run keeps what it measured). ``--workers`` processes (default 2, one torch thread
each, as ``make data`` runs on 2 cores). Not part of ``make bench`` (~25 min on 2 idle cores)::

    python benchmarks/time_sharpness_data.py
    python benchmarks/time_sharpness_data.py --seeds 0 --variants arpack lanczos
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from milr.data import load_dataset
from milr.store import Store, code_version
from milr.validate import build_tasks, spec_from_preset

HERE = Path(__file__).resolve().parent
VARIANTS = ("arpack", "lanczos", "lanczos-f32")
KEYS = ("lambda_1", "lambda_1_eff")


def variant_task(task, variant: str):
    if variant == "arpack":
        return replace(task, solver="arpack")
    if variant == "lanczos-f32":
        return replace(task, hvp_dtype="float32")
    return task


def warm_up(datasets):
    """Each worker: one torch thread, the data sets loaded (cached) before any timing."""
    torch.set_num_threads(1)
    for ds in datasets:
        load_dataset(ds)


def run_one(job):
    i, task, variants = job
    order = list(variants) if i % 2 == 0 else list(reversed(variants))
    out = {"dataset": task.dataset, "depth": task.depth, "width": task.width,
           "seed": task.seed, "order": order}
    for v in order:
        t = variant_task(task, v)
        w0, c0 = time.perf_counter(), time.process_time()
        res = t.compute()
        out[v] = {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                  "n_params": res["n_params"], "load1": os.getloadavg()[0]}
        for k in KEYS:
            out[v][k] = res[k]
            out[v][f"{k}_n_hvp"] = res[f"{k}_n_hvp"]
            out[v][f"{k}_converged"] = res[f"{k}_converged"]
    return out


def rel(a, b):
    return abs(a - b) / abs(b) if b else math.inf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", nargs="*", type=int, default=None)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--max-width", type=int, default=None,
                    help="only networks of at most this width (a cheaper subset)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    overrides = {"seeds": args.seeds} if args.seeds else {}
    tasks = build_tasks(spec_from_preset(args.preset, kind="sharpness", **overrides))
    if args.max_width:
        tasks = [t for t in tasks if t.width <= args.max_width]
    # seed by seed, biggest networks first (balances the pool; a partial run covers a seed)
    tasks.sort(key=lambda t: (t.seed, -(t.depth * t.width * t.width), -t.width))
    committed = Store()
    out = Path(args.out) if args.out else HERE / "results" / f"time_sharpness_data_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "preset": args.preset, "variants": args.variants, "workers": args.workers,
            "seeds": args.seeds, "max_width": args.max_width,
            "torch_threads_per_task": 1, "code_version": code_version(),
            "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "load_avg_before": os.getloadavg()}
    rows = []
    t0 = time.perf_counter()
    jobs = [(i, t, args.variants) for i, t in enumerate(tasks)]
    datasets = sorted({t.dataset for t in tasks})
    with mp.get_context("spawn").Pool(args.workers, warm_up, (datasets,)) as pool:
        for row in pool.imap_unordered(run_one, jobs):
            task = next(t for t in tasks if (t.dataset, t.depth, t.width, t.seed)
                        == (row["dataset"], row["depth"], row["width"], row["seed"]))
            rec = committed.get(task.kind, task.record_config())
            for v in args.variants:
                for k in KEYS:
                    if rec is not None:
                        row[v][f"{k}_rel_vs_committed"] = rel(row[v][k], rec["result"][k])
                    if "lanczos" in row and v != "lanczos":
                        row[v][f"{k}_rel_vs_lanczos"] = rel(row[v][k], row["lanczos"][k])
            row["committed"] = rec is not None
            rows.append(row)
            print(f"{len(rows):3d}/{len(tasks)} {row['dataset']} d={row['depth']} "
                  f"w={row['width']} s={row['seed']}: " + "  ".join(
                      f"{v} {row[v]['cpu_s']:.1f}s/{row[v]['lambda_1_n_hvp']}+"
                      f"{row[v]['lambda_1_eff_n_hvp']}hvp" for v in args.variants), flush=True)
            summary = summarise(rows, args.variants)
            meta["load_avg_after"] = os.getloadavg()
            meta["elapsed_s"] = time.perf_counter() - t0
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"meta": meta, "summary": summary, "tasks": rows},
                                      indent=1, default=float) + "\n")
            os.replace(tmp, out)
    print(json.dumps(summary, indent=1, default=float))
    print(f"wrote {out}")
    return 0


def summarise(rows, variants) -> dict:
    s = {"tasks": len(rows)}
    for v in variants:
        d = {"wall_s": sum(r[v]["wall_s"] for r in rows),
             "cpu_s": sum(r[v]["cpu_s"] for r in rows),
             "n_hvp": sum(r[v][f"{k}_n_hvp"] for r in rows for k in KEYS),
             "all_converged": all(r[v][f"{k}_converged"] for r in rows for k in KEYS)}
        for ref in ("committed", "lanczos"):
            vals = [r[v][f"{k}_rel_vs_{ref}"] for r in rows for k in KEYS
                    if f"{k}_rel_vs_{ref}" in r[v]]
            if vals:
                d[f"max_rel_vs_{ref}"] = max(vals)
                d[f"n_beyond_1e-4_vs_{ref}"] = sum(x > 1e-4 for x in vals)
        s[v] = d
    if "arpack" in variants:
        for v in variants:
            if v != "arpack":
                s[v]["ratio_cpu_arpack_over_this"] = s["arpack"]["cpu_s"] / s[v]["cpu_s"]
                s[v]["ratio_wall_arpack_over_this"] = s["arpack"]["wall_s"] / s[v]["wall_s"]
                s[v]["ratio_hvp_arpack_over_this"] = s["arpack"]["n_hvp"] / s[v]["n_hvp"]
    return s


if __name__ == "__main__":
    sys.exit(main())
