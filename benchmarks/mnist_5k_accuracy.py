"""How high the quick grid's networks get on mnist-5k within the quick budget.

For every (depth, width) of the quick preset's main grid and seed 0, trains at a geometric
ladder of learning rates with the quick preset's trial rules (400 steps, batch 64, input layer
at 0.01 x eta, 1000 validation images) and an unreachable threshold, so every trial runs its
whole budget, and records the best validation accuracy seen at an evaluation point. This is
how the mnist-5k threshold in milr.data.DEFAULT_THRESHOLDS was chosen (README, Method).

    python benchmarks/mnist_5k_accuracy.py            # writes benchmarks/results/mnist_5k_accuracy.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from milr.batched import run_trials_batched
from milr.config import TrialConfig
from milr.data import load_dataset
from milr.presets import get_preset

ETAS = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"
                                         / "mnist_5k_accuracy.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    P = get_preset("quick")
    trial = {k: v for k, v in P["trial"].items() if k != "threshold"}
    data = load_dataset(args.dataset)
    rows = []
    t_all = time.perf_counter()
    for d in P["depths"]:
        for w in P["widths"]:
            if w < d:
                continue
            cfg = TrialConfig(dataset=args.dataset, depth=d, width=w, threshold=0.999, **trial)
            etas = [e for e in ETAS for _ in args.seeds]
            seeds = [s for _ in ETAS for s in args.seeds]
            t0 = time.perf_counter()
            res = run_trials_batched(cfg, etas, seeds, data=data)
            for e, s, r in zip(etas, seeds, res):
                rows.append({"depth": d, "width": w, "seed": s, "eta": e, "best_acc": r.best_acc,
                             "reason": r.reason, "steps": r.steps})
            best = max((r.best_acc for r in res if r.best_acc == r.best_acc), default=float("nan"))
            print(f"d={d} w={w}: best {best:.3f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    out = {"dataset": args.dataset, "trial": trial, "etas": ETAS, "seeds": args.seeds,
           "wall_s": time.perf_counter() - t_all, "load_avg": os.getloadavg(), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
