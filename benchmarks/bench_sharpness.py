"""Benchmark: Hessian-vector products (HVPs) and wall time to get lambda_1 to 1e-4 relative
accuracy, Lanczos (scipy eigsh, which='LA') versus plain power iteration.

For each configuration (networks of the sharpness figure: data set x depth x width, seed 0,
the figure's subset and loss), a reference lambda_1 is computed first (Lanczos, tol 1e-10,
basis 20). Then each solver runs with its own stopping rule at tol = 1e-4 (Ritz residual
<= 1e-4 |lambda|, the same criterion for both), and we check its actual error against the
reference. Power iteration is also credited with its *oracle* stop, the first iterate whose
Rayleigh quotient is within 1e-4 of the reference (a lower bound on what any stopping rule
could achieve). Both the full Hessian and the effective one (input layer at 0.01) are timed.

Prints one line per (configuration, operator) and the ratios power / Lanczos (geometric mean
over configurations) of HVPs and wall time, all measured in this run.

    python benchmarks/bench_sharpness.py               # the figure's depths, widths 64, 256
    python benchmarks/bench_sharpness.py --widths 64 --datasets gaussian --n-subset 256
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from milr.data import available_datasets, load_dataset
from milr.models import layer_lr_scales, make_mlp
from milr.presets import get_preset
from milr.sharpness import (LossHessian, lanczos_top_eigenvalue,
                            power_iteration_top_eigenvalue, sharpness_subset)


def main(argv=None) -> int:
    p = get_preset("quick")
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--depths", nargs="+", type=int, default=p["depths"])
    ap.add_argument("--widths", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--n-subset", type=int, default=p["sharpness"]["n_subset"])
    ap.add_argument("--accuracy", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    present = available_datasets()
    datasets = args.datasets or [d for d in p["datasets"] if d in present]
    acc = args.accuracy
    print(f"lambda_1 to relative accuracy {acc:g}: Lanczos (eigsh, ncv 8) vs power iteration;"
          f" subset n = {args.n_subset}, float64 HVPs, {args.threads} thread(s)")
    print(f"{'config':<30}{'op':>5}{'ref lambda_1':>14}{'Lz hvp':>8}{'Lz s':>8}{'Lz err':>9}"
          f"{'Pw hvp':>8}{'Pw s':>8}{'Pw err':>9}{'Pw oracle':>10}")
    hvp_ratio, time_ratio, oracle_ratio, by_ds = [], [], [], {}
    for ds in datasets:
        data = load_dataset(ds)
        x, y = sharpness_subset(data, args.n_subset)
        for d in args.depths:
            for w in args.widths:
                if w < d:
                    continue
                model = make_mlp(data.input_dim, w, d, data.n_classes, 0)
                for op_name, scales in (("H", None), ("eff", layer_lr_scales(d, 0.01))):
                    op = LossHessian(model, x, y, lr_scales=scales)
                    ref = lanczos_top_eigenvalue(op.matvec, op.n, tol=1e-10, ncv=20)
                    lz = lanczos_top_eigenvalue(op.matvec, op.n, tol=acc)
                    pw = power_iteration_top_eigenvalue(op.matvec, op.n, tol=acc,
                                                        maxiter=500, history=True)
                    lam = ref.eigenvalue
                    err_lz = abs(lz.eigenvalue - lam) / lam
                    err_pw = abs(pw.eigenvalue - lam) / lam
                    hist = np.abs(np.asarray(pw.history) - lam) / lam
                    oracle = int(np.argmax(hist <= acc)) + 1 if (hist <= acc).any() else -1
                    print(f"{f'{ds} d={d} w={w}':<30}{op_name:>5}{lam:>14.6g}{lz.n_hvp:>8d}"
                          f"{lz.wall_time:>8.2f}{err_lz:>9.1e}{pw.n_hvp:>8d}"
                          f"{pw.wall_time:>8.2f}{err_pw:>9.1e}{oracle:>10d}", flush=True)
                    hvp_ratio.append(pw.n_hvp / lz.n_hvp)
                    by_ds.setdefault(ds, []).append(pw.n_hvp / lz.n_hvp)
                    time_ratio.append(pw.wall_time / lz.wall_time)
                    if oracle > 0:
                        oracle_ratio.append(oracle / lz.n_hvp)

    def gmean(v):
        return math.exp(np.mean(np.log(v))) if v else math.nan

    print(f"\npower / Lanczos, geometric mean over {len(hvp_ratio)} runs: HVPs "
          f"{gmean(hvp_ratio):.2f}x (range {min(hvp_ratio):.2f}-{max(hvp_ratio):.2f}), wall "
          f"time {gmean(time_ratio):.2f}x; with power iteration's oracle stop: HVPs "
          f"{gmean(oracle_ratio):.2f}x")
    for ds, v in by_ds.items():
        print(f"  {ds}: power / Lanczos HVPs {gmean(v):.2f}x (range {min(v):.2f}-{max(v):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
