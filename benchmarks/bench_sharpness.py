"""Benchmark: Hessian-vector products (HVPs) and wall time to get lambda_1 to 1e-4 relative
accuracy: Lanczos stopped on the eigenvalue's error bound (``milr.sharpness``, the default)
versus ARPACK (scipy eigsh, which='LA', ncv 8, residual test) versus plain power iteration.

For each network (the quick preset's depths x widths 64 and 256 on each data set present, seed
0, the preset's 1000-example subset and loss), a tight float64 reference lambda_1 is computed
first (ARPACK, tol 1e-10, basis 20). Then each solver runs with its own stopping rule at
tol = 1e-4 (Lanczos: error bound <= 1e-4 |lambda|; ARPACK and power iteration: Ritz residual
<= 1e-4 |lambda|) and its actual error against the reference is printed. Power iteration is
also credited with its *oracle* stop, the first iterate within 1e-4 of the reference (what no
stopping rule can beat). Last column: Lanczos with float32 products (Lanczos arithmetic in
float64), its HVPs, its error against the float64 reference and its wall time over float64's.
Both the full Hessian (H) and the effective one (input layer at 0.01, eff) are run.

Prints one line per (network, operator) and the geometric means over them of the ratios
ARPACK / Lanczos and power / Lanczos (HVPs and wall time), all measured in this run.

    python benchmarks/bench_sharpness.py               # the preset's depths, widths 64, 256
    python benchmarks/bench_sharpness.py --widths 64 --datasets gaussian --n-subset 256
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np
import torch

from milr.data import available_datasets, load_dataset
from milr.models import layer_lr_scales, make_mlp
from milr.presets import get_preset
from milr.sharpness import (LossHessian, arpack_top_eigenvalue, lanczos_top_eigenvalue,
                            power_iteration_top_eigenvalue, sharpness_subset)


def gmean(v) -> float:
    return math.exp(float(np.mean(np.log(v)))) if len(v) else math.nan


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
    print(f"lambda_1 to relative accuracy {acc:g}: Lanczos (bound stop) vs ARPACK (eigsh, ncv 8)"
          f" vs power iteration; subset n = {args.n_subset}, float64 HVPs unless f32, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"{'network':<26}{'op':>4}{'ref lambda_1':>13}"
          f"{'Lz hvp':>7}{'Lz s':>7}{'Lz err':>8}"
          f"{'Ar hvp':>7}{'Ar s':>7}{'Ar err':>8}"
          f"{'Pw hvp':>7}{'Pw s':>7}{'Pw err':>8}{'Pw orc':>7}"
          f"{'f32 hvp':>8}{'f32 err':>8}{'f32/64 t':>9}")
    ratios = {k: [] for k in ("ar_hvp", "ar_t", "pw_hvp", "pw_t", "orc_hvp", "f32_t")}
    by_ds: dict = {}
    worst = {"lanczos": 0.0, "arpack": 0.0, "power": 0.0, "f32": 0.0}
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
                    op32 = LossHessian(model, x, y, lr_scales=scales, dtype=torch.float32)
                    ref = arpack_top_eigenvalue(op.matvec, op.n, tol=1e-10, ncv=20)
                    lam = ref.eigenvalue
                    lz = lanczos_top_eigenvalue(op.matvec, op.n, tol=acc)
                    ar = arpack_top_eigenvalue(op.matvec, op.n, tol=acc)
                    pw = power_iteration_top_eigenvalue(op.matvec, op.n, tol=acc,
                                                        maxiter=500, history=True)
                    lz32 = lanczos_top_eigenvalue(op32.matvec, op32.n, tol=acc)
                    errs = {k: abs(r.eigenvalue - lam) / abs(lam) for k, r in
                            (("lanczos", lz), ("arpack", ar), ("power", pw), ("f32", lz32))}
                    for k, e in errs.items():
                        worst[k] = max(worst[k], e)
                    hist = np.abs(np.asarray(pw.history) - lam) / abs(lam)
                    oracle = int(np.argmax(hist <= acc)) + 1 if (hist <= acc).any() else -1
                    print(f"{f'{ds} d={d} w={w}':<26}{op_name:>4}{lam:>13.6g}"
                          f"{lz.n_hvp:>7d}{lz.wall_time:>7.2f}{errs['lanczos']:>8.1e}"
                          f"{ar.n_hvp:>7d}{ar.wall_time:>7.2f}{errs['arpack']:>8.1e}"
                          f"{pw.n_hvp:>7d}{pw.wall_time:>7.2f}{errs['power']:>8.1e}"
                          f"{oracle:>7d}{lz32.n_hvp:>8d}{errs['f32']:>8.1e}"
                          f"{lz32.wall_time / lz.wall_time:>9.2f}", flush=True)
                    ratios["ar_hvp"].append(ar.n_hvp / lz.n_hvp)
                    ratios["ar_t"].append(ar.wall_time / lz.wall_time)
                    ratios["pw_hvp"].append(pw.n_hvp / lz.n_hvp)
                    ratios["pw_t"].append(pw.wall_time / lz.wall_time)
                    ratios["f32_t"].append(lz32.wall_time / lz.wall_time)
                    if oracle > 0:
                        ratios["orc_hvp"].append(oracle / lz.n_hvp)
                    by_ds.setdefault(ds, []).append((ar.n_hvp / lz.n_hvp, pw.n_hvp / lz.n_hvp))

    def rng(v):
        return f"{gmean(v):.2f}x (range {min(v):.2f}-{max(v):.2f})"

    n = len(ratios["ar_hvp"])
    print(f"\ngeometric means over {n} runs (network x operator), each solver at its own stop:")
    print(f"  ARPACK / Lanczos: HVPs {rng(ratios['ar_hvp'])}, wall time {rng(ratios['ar_t'])}")
    print(f"  power / Lanczos:  HVPs {rng(ratios['pw_hvp'])}, wall time {rng(ratios['pw_t'])}")
    if ratios["orc_hvp"]:
        print(f"  power's oracle stop / Lanczos: HVPs {rng(ratios['orc_hvp'])}")
    print(f"  Lanczos float32 / float64 products: wall time {rng(ratios['f32_t'])}")
    for ds, v in by_ds.items():
        a, b = zip(*v)
        print(f"  {ds}: ARPACK / Lanczos HVPs {rng(a)}; power / Lanczos HVPs {rng(b)}")
    print("  largest relative error against the reference: " + ", ".join(
        f"{k} {e:.1e}" for k, e in worst.items()) + f" (asked: {acc:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
