"""Command line: ``python -m milr data --preset quick`` recomputes the cached results."""
from __future__ import annotations

import argparse
import logging
import sys
import time

from .presets import get_preset
from .store import Store
from .sweep import eta_star_tasks, run_eta_star_sweep


def cmd_data(args) -> int:
    p = get_preset(args.preset)
    tasks = eta_star_tasks(p["datasets"] if not args.datasets else args.datasets,
                           p["depths"], p["widths"], p["seeds"], p["trial"], p["search"])
    t0 = time.perf_counter()
    df = run_eta_star_sweep(tasks, Store(args.store), recompute=args.recompute,
                            device=args.device, progress=not args.quiet)
    print(f"eta*: {len(df)} of {len(tasks)} records in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="milr", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="compute the cached results of a preset")
    d.add_argument("--preset", default="quick", help="quick | paper | smoke")
    d.add_argument("--datasets", nargs="*", help="override the preset's data sets")
    d.add_argument("--store", default=None, help="results directory (default data/results)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--recompute", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_data)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
