"""Rename the records of a results store to their readable names (idempotent).

Records written before readable file names are named ``<key>.json``; this renames each valid
one to ``<dataset>_d<depth>_w<width>_s<seed>_<key>.json`` (see ``milr.store``). Keys and
contents are unchanged. Running it twice changes nothing the second time.

    python tools/rename_records.py data/results                # every kind
    python tools/rename_records.py data/results --kinds eta_star late_lr
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from milr.store import Store  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="results directory, e.g. data/results")
    ap.add_argument("--kinds", nargs="+", default=None, help="only these record kinds")
    args = ap.parse_args(argv)
    store = Store(args.store)
    if not store.root.is_dir():
        print(f"rename_records: error: {store.root} is not a directory", file=sys.stderr)
        return 2
    renamed = store.rename_legacy(args.kinds)
    for old, new in renamed:
        print(f"{old.relative_to(store.root)} -> {new.name}")
    print(f"{len(renamed)} record(s) renamed in {store.root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
