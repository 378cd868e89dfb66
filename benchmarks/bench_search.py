"""Benchmark: sequential Algorithm 1 (bisect) against the batched k-section eta* search, and
the hand-written backward against ``torch.func``, all on the one trainer (milr.train).

On one grid of configurations, with the same trial rules and seeds, this runs in one process,
configuration by configuration, the sequential search (``milr.search.eta_star`` with
``method="bisect"``, one seed after the other: one trial at a time), the batched search
(``method="batched"``: all seeds and several rates per round trained together) and the same
batched search with the trainer's gradients through ``torch.func`` (``generic=True``: vmap of
grad of functional_call over the MLP as an ``nn.Module``), and prints and saves as JSON, per
configuration:

* the two eta* per seed and their distance in final bracket steps (``log(a/b) / log(1+tol)``;
  "agree" means at most one step), and whether the outcomes both searches saw are monotone
  in eta (where they are not, the two searches may legitimately stop at different
  successes: see README, Performance);
* wall time and process CPU time of each search and their ratios (CPU time is less
  disturbed by other jobs on a shared machine; both are reported);
* the wall and CPU time of the ``torch.func`` variant over the hand-written one
  (``ratio_func_wall``: above 1.15 means the generic path is more than 15 % slower);
* training throughput: matrix-product FLOPs of the SGD steps done (``milr.train.step_flops``
  per trial step; evaluation work not counted) per second of wall time, against a plain
  ``torch.mm`` running the same shapes (the products of one SGD step of one trial) and a large
  square ``torch.mm`` on the same device, dtype and threads (the machine's matmul rate).

Usage::

    python benchmarks/bench_search.py                  # default grid (a few minutes, CPU)
    python benchmarks/bench_search.py --grid quick     # the quick preset's grid (long)
    python benchmarks/bench_search.py --grid paper --device cuda --no-sequential

Results go to ``benchmarks/results/bench_search_<device>_<grid>.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from milr.config import SearchConfig, TrialConfig
from milr.data import available_datasets, load_dataset
from milr.presets import get_preset
from milr.search import eta_star, non_interval
from milr.store import _cpu_name, code_version
from milr.train import run_trials, step_flops, torch_dtype

HERE = Path(__file__).resolve().parent

#: Default grid: small enough for ``make bench`` on 2 CPU cores, wide enough to show where
#: batching pays (small nets, overhead-bound) and where it cannot (wide nets, compute-bound).
DEFAULT_GRID = {"depths_widths": [(1, 32), (4, 32), (2, 64), (4, 128), (1, 512), (4, 512)]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocked(fn, device):
    """(result, wall seconds, process CPU seconds) of ``fn()``."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - w0, time.process_time() - c0


def mm_rate(shapes, device, dtype, min_time=0.2) -> float:
    """FLOP/s of plain ``torch.mm`` running ``shapes`` [(m, k, n), ...] back to back."""
    mats = [(torch.randn(m, k, device=device, dtype=dtype),
             torch.randn(k, n, device=device, dtype=dtype)) for m, k, n in shapes]
    flops = sum(2.0 * m * k * n for m, k, n in shapes)
    for a, b in mats:  # warm-up
        torch.mm(a, b)
    reps, elapsed = 1, 0.0
    while True:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            for a, b in mats:
                torch.mm(a, b)
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return flops * reps / elapsed
        reps *= 2


def step_shapes(cfg: TrialConfig, n0: int, n_classes: int):
    """The matrix products of one SGD step of one trial, as (m, k, n) of ``(m,k) @ (k,n)``."""
    B = cfg.batch_size
    dims = [n0] + [cfg.width] * cfg.depth + [n_classes]
    shapes = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        shapes.append((B, a, b))  # forward
        if i > 0 or cfg.input_lr_scale > 0:
            shapes.append((b, B, a))  # weight gradient
        if i > 0:
            shapes.append((B, b, a))  # input gradient
    return shapes


def bracket_steps(a: float, b: float, tol: float) -> float:
    """Distance of ``b`` from ``a`` in final bracket steps, ``log(b / a) / log(1 + tol)``;
    NaN unless both are finite and positive."""
    if not (0 < a < math.inf and 0 < b < math.inf):
        return math.nan
    return math.log(b / a) / math.log1p(tol)


def run_config(ds, depth, width, trial_kw, search_kw, seeds, args, device, data):
    dtype = args.dtype
    cfg = TrialConfig(dataset=ds, depth=depth, width=width, dtype=dtype, **trial_kw)
    seq_search = SearchConfig(**{**search_kw, "method": "bisect"})
    bat_search = SearchConfig(**{**search_kw, "method": "batched", "k": args.k})
    flops_step = step_flops(cfg, data.input_dim, data.n_classes)
    row = {"dataset": ds, "depth": depth, "width": width, "dw": depth * width,
           "seeds": list(seeds), "k": bat_search.k, "tol": seq_search.tol,
           "flops_per_trial_step": flops_step}
    stats = {}

    def batched(generic=False):
        if not args.per_seed:
            return eta_star(cfg, bat_search, seeds, data=data, device=device, stats=stats,
                            generic=generic)
        out = []  # one search per seed, as a sweep of (configuration, seed) tasks runs it
        for s in seeds:
            st = {}
            out += eta_star(cfg, bat_search, [s], data=data, device=device, stats=st,
                            generic=generic)
            for key, v in st.items():
                stats[key] = stats.get(key, 0) + v
        return out

    bat, w_b, c_b = clocked(batched, device)
    row.update(eta_star_batched=[r.eta_star for r in bat], status_batched=[r.status for r in bat],
               trials_batched=sum(r.n_trials for r in bat), wall_batched=w_b, cpu_batched=c_b,
               member_steps_batched=stats["member_steps"], batched_steps=stats["steps_run"],
               gflops_batched=stats["flops"] / w_b / 1e9)
    if not args.no_func:
        stats.clear()
        fun, w_f, c_f = clocked(lambda: batched(generic=True), device)
        row.update(eta_star_func=[r.eta_star for r in fun], wall_func=w_f, cpu_func=c_f,
                   ratio_func_wall=w_f / w_b, ratio_func_cpu=c_f / c_b if c_b > 0 else math.nan)
    if not args.no_sequential:
        seq, w_s, c_s = clocked(lambda: [r for s in seeds for r in eta_star(
            cfg, seq_search, [s], data=data, device=str(device))], device)
        steps_s = sum(t["steps"] for r in seq for t in r.trials)
        devs, nonmono = [], []
        for a, b in zip(seq, bat):
            devs.append(bracket_steps(a.eta_star, b.eta_star, seq_search.tol))
            seen = [(t["eta"], t["success"]) for t in a.trials + b.trials
                    if t["success"] is not None]
            nonmono.append(non_interval(seen))
        row.update(eta_star_seq=[r.eta_star for r in seq], status_seq=[r.status for r in seq],
                   trials_seq=sum(r.n_trials for r in seq), wall_seq=w_s, cpu_seq=c_s,
                   member_steps_seq=steps_s, gflops_seq=steps_s * flops_step / w_s / 1e9,
                   dev_bracket_steps=devs, non_monotone=nonmono,
                   agree=[abs(d) <= 1 + 1e-9 for d in devs],
                   ratio_wall=w_s / w_b, ratio_cpu=c_s / c_b if c_b > 0 else math.nan)
    shapes = step_shapes(cfg, data.input_dim, data.n_classes)
    tdt = torch_dtype(dtype)
    row["gflops_mm_same_shapes"] = mm_rate(shapes, device, tdt) / 1e9
    return row


def warm_up(grid, trial_kw, dtype, device) -> None:
    """A few short trials first, so no variant pays one-time costs (library initialisation,
    first-call kernel selection, torch.func tracing) inside its timing."""
    ds, d, w = grid[0]
    cfg = TrialConfig(dataset=ds, depth=d, width=w, dtype=dtype,
                      **{**trial_kw, "step_budget": 5, "eval_every": 5})
    data = load_dataset(ds)
    run_trials(cfg, [1e-3], [0], data=data, device=device)
    run_trials(cfg, [1e-3, 2e-3], [0, 1], data=data, device=device)
    eta_star(cfg, SearchConfig(eta_lo=1.0, eta_hi=2.0, method="batched"), [0], data=data,
             device=device, generic=True)


def fmt_row(r) -> str:
    eta = lambda xs: "/".join(f"{x:.3g}" for x in xs)  # noqa: E731
    s = f"{r['dataset'][:7]:7s} d={r['depth']:<2d} w={r['width']:<5d} "
    if "wall_seq" in r:
        devs = "/".join("nan" if math.isnan(d) else f"{d:+.1f}" for d in r["dev_bracket_steps"])
        s += (f"eta* seq {eta(r['eta_star_seq'])} bat {eta(r['eta_star_batched'])} "
              f"[steps {devs}{' nm' if any(r['non_monotone']) else ''}]  "
              f"wall {r['wall_seq']:7.1f}s {r['wall_batched']:6.1f}s x{r['ratio_wall']:5.2f}  "
              f"cpu x{r['ratio_cpu']:5.2f}  "
              + (f"func/hand wall x{r['ratio_func_wall']:4.2f}  " if "wall_func" in r else "")
              + f"GFLOP/s {r['gflops_seq']:6.1f} "
              f"{r['gflops_batched']:6.1f} (mm {r['gflops_mm_same_shapes']:6.1f})")
    else:
        s += (f"eta* bat {eta(r['eta_star_batched'])} wall {r['wall_batched']:.1f}s "
              f"GFLOP/s {r['gflops_batched']:.1f} (mm {r['gflops_mm_same_shapes']:.1f})")
    return s


def summarise(rows, device, big_rate):
    out = {"configs": len(rows), "gflops_mm_large": big_rate / 1e9}
    timed = [r for r in rows if "ratio_wall" in r]
    out["wall_batched_total"] = sum(r["wall_batched"] for r in rows)
    if timed:
        gm = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
        out.update(
            wall_seq_total=sum(r["wall_seq"] for r in timed),
            ratio_wall_total=sum(r["wall_seq"] for r in timed)
            / sum(r["wall_batched"] for r in timed),
            ratio_wall_geomean=gm([r["ratio_wall"] for r in timed]),
            ratio_wall_min=min(r["ratio_wall"] for r in timed),
            ratio_cpu_geomean=gm([r["ratio_cpu"] for r in timed]),
            seeds_agree=sum(sum(r["agree"]) for r in timed),
            seeds_total=sum(len(r["agree"]) for r in timed),
            seeds_disagree_monotone=sum(1 for r in timed for a, n in
                                        zip(r["agree"], r["non_monotone"]) if not a and not n),
        )
        funcs = [r for r in timed if "ratio_func_wall" in r]
        if funcs:
            out.update(ratio_func_wall_total=sum(r["wall_func"] for r in funcs)
                       / sum(r["wall_batched"] for r in funcs),
                       ratio_func_wall_geomean=gm([r["ratio_func_wall"] for r in funcs]),
                       ratio_func_cpu_geomean=gm([r["ratio_func_cpu"] for r in funcs]))
        target = 20.0 if device.type == "cuda" else 5.0
        misses = [f"d={r['depth']} w={r['width']}: x{r['ratio_wall']:.2f}" for r in timed
                  if r["width"] <= 512 and r["ratio_wall"] < target]
        out["target_ratio"] = target
        out["target_misses"] = misses
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="default", choices=["default", "quick", "paper", "smoke"],
                    help="default: a small grid; quick/paper/smoke: that preset's grid")
    ap.add_argument("--datasets", nargs="*", help="override the data sets (default: "
                    "fashion-mnist when present, else gaussian; presets: theirs, if present)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's default for this machine)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--k", type=int, default=None,
                    help="rates per round of the batched search (default: the preset's, "
                    "else SearchConfig's default)")
    ap.add_argument("--per-seed", action="store_true",
                    help="batched search once per seed (as a sweep of one task per "
                    "(configuration, seed) calls it) instead of all seeds in one batch")
    ap.add_argument("--no-sequential", action="store_true",
                    help="time the batched search only (e.g. the paper grid on a GPU)")
    ap.add_argument("--no-func", action="store_true",
                    help="skip the torch.func variant of the batched search")
    ap.add_argument("--max-configs", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_search: CUDA is not available here", file=sys.stderr)
        return 2
    avail = available_datasets()
    if args.grid == "default":
        preset = get_preset("quick")
        datasets = args.datasets or (["fashion-mnist"] if "fashion-mnist" in avail
                                     else ["gaussian"])
        pairs = DEFAULT_GRID["depths_widths"]
    else:
        preset = get_preset(args.grid)
        datasets = args.datasets or [d for d in preset["datasets"] if d in avail]
        pairs = [(d, w) for d in preset["depths"] for w in preset["widths"] if w >= d]
    seeds = args.seeds if args.seeds is not None else preset["seeds"]
    trial_kw = {k: v for k, v in preset["trial"].items() if k != "dtype"}
    search_kw = {k: v for k, v in preset["search"].items() if k not in ("method", "k")}
    if args.k is None:
        args.k = preset["search"].get("k", SearchConfig().k)
    grid = [(ds, d, w) for ds in datasets for d, w in pairs][: args.max_configs]

    big = 4096 if device.type == "cuda" else 1024
    big_rate = mm_rate([(big, big, big)], device, torch_dtype(args.dtype))
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "grid": args.grid, "device": str(device), "dtype": args.dtype,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_avg_start": os.getloadavg(), "seeds": seeds, "trial": trial_kw,
        "search": search_kw, "k": args.k, "per_seed": args.per_seed,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    meta["cpu"], meta["code_version"] = _cpu_name(), code_version()
    print(f"bench_search: {len(grid)} configurations, seeds {seeds}, device {device}, "
          f"{args.dtype}, {torch.get_num_threads()} threads, k={args.k}; large mm "
          f"{big_rate / 1e9:.1f} GFLOP/s", flush=True)
    out = Path(args.out) if args.out else (
        HERE / "results" / f"bench_search_{device.type}_{args.grid}"
        f"{'_per_seed' if args.per_seed else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows, complete: bool):
        """The JSON so far: rewritten after every configuration, so that a run stopped early
        (a time limit on a lent GPU) still reports every configuration it finished."""
        meta["load_avg_end"] = os.getloadavg()
        meta["complete"] = complete
        summary = summarise(rows, device, big_rate)
        for r in rows:
            r["frac_of_mm_large_batched"] = r["gflops_batched"] * 1e9 / big_rate
            if "gflops_seq" in r:
                r["frac_of_mm_large_seq"] = r["gflops_seq"] * 1e9 / big_rate
        tmp = out.with_name(out.name + ".tmp")  # atomic: a kill mid-write keeps the last one
        tmp.write_text(json.dumps({"meta": meta, "summary": summary, "configs": rows},
                                  indent=1, default=float) + "\n")
        os.replace(tmp, out)
        return summary

    warm_up(grid, trial_kw, args.dtype, device)
    rows = []
    for ds, d, w in grid:
        data = load_dataset(ds)
        rows.append(run_config(ds, d, w, trial_kw, search_kw, seeds, args, device, data))
        print(fmt_row(rows[-1]), flush=True)
        write(rows, complete=False)
    summary = write(rows, complete=True)
    print("summary:", json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
