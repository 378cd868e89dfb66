"""The results cache: one JSON record per (configuration, seed), keyed by the configuration.

Layout: ``<root>/<kind>/<key>.json`` where ``key = config_key(kind, config)`` is a pure
function of the configuration (seed included). Each record holds the configuration that
produced it, the result, and metadata (code version, library versions, hardware, date, wall
time). Writes are atomic (temporary file in the same directory, fsync, ``os.replace``), so a
crash never leaves a half-written record, and two writers of the same record cannot corrupt
it. Records are plain JSON: nothing read from disk is unpickled.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from .config import config_key

__all__ = ["Store", "CorruptRecordWarning", "run_metadata", "code_version", "DEFAULT_ROOT"]

log = logging.getLogger(__name__)

SCHEMA = 1
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "results"


class CorruptRecordWarning(UserWarning):
    """A record on disk could not be parsed or does not match its key; it is skipped."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``milr <version>`` plus the git commit (``+dirty`` when the tree has changes)."""
    from . import __version__

    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return f"milr {__version__}"
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "milr"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return f"milr {__version__} git {rev.stdout.strip()}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"milr {__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata(device: str = "cpu") -> dict:
    """Provenance of a result: code version, library versions, hardware and date (UTC)."""
    import numpy
    import torch

    hw = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return {
        "code_version": code_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "hardware": hw,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _jsonable(x):
    """JSON with NaN/inf encoded as strings (strict JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return {"__float__": repr(x)}
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return _jsonable(x.item())
    return x


def _unjsonable(x):
    if isinstance(x, dict):
        if set(x) == {"__float__"}:
            return float(x["__float__"])
        return {k: _unjsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjsonable(v) for v in x]
    return x


class Store:
    """A directory of JSON records. ``Store()`` uses the repository's ``data/results``.

    Methods take ``kind`` (e.g. ``"eta_star"``, ``"sharpness"``) and ``config`` (a dict of
    JSON scalars that fully determines the result, seed included).
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(DEFAULT_ROOT if root is None else root)

    def path(self, kind: str, config: dict) -> Path:
        """Where the record of ``(kind, config)`` lives (a pure function of both)."""
        return self.root / kind / f"{config_key(kind, config)}.json"

    def put(self, kind: str, config: dict, result: dict, meta: dict | None = None) -> Path:
        """Write one record atomically and return its path."""
        path = self.path(kind, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "schema": SCHEMA,
            "kind": kind,
            "key": path.stem,
            "config": config,
            "result": result,
            "meta": meta or {},
        }
        text = json.dumps(_jsonable(record), indent=1, sort_keys=True, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    def _read(self, path: Path, kind: str | None = None) -> dict | None:
        """Parse and validate one record; warn and return None if it is corrupt."""
        try:
            rec = _unjsonable(json.loads(path.read_text()))
            if not isinstance(rec, dict) or not {"kind", "config", "result"} <= set(rec):
                raise ValueError("missing fields")
            if kind is not None and rec["kind"] != kind:
                raise ValueError(f"kind {rec['kind']!r} != {kind!r}")
            if config_key(rec["kind"], rec["config"]) != path.stem:
                raise ValueError("configuration does not match the record's key")
            return rec
        except (OSError, ValueError, TypeError, KeyError) as exc:
            warnings.warn(f"skipping corrupt record {path}: {exc}", CorruptRecordWarning,
                          stacklevel=3)
            return None

    def get(self, kind: str, config: dict) -> dict | None:
        """The record for exactly this configuration, or None (missing or corrupt)."""
        path = self.path(kind, config)
        if not path.exists():
            return None
        rec = self._read(path, kind)
        if rec is None or rec["config"] != _unjsonable(_jsonable(config)):
            return None
        return rec

    def has(self, kind: str, config: dict) -> bool:
        return self.get(kind, config) is not None

    def records(self, kind: str) -> list[dict]:
        """Every valid record of ``kind`` (corrupt ones are reported and skipped)."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.json")):
            rec = self._read(p, kind)
            if rec is not None:
                out.append(rec)
        return out

    def load(self, kind: str) -> pd.DataFrame:
        """Records of ``kind`` as a DataFrame: one row per record, config and scalar results as
        columns (lists such as the trial log are left out), plus ``key`` and ``code_version``.
        """
        rows = []
        for rec in self.records(kind):
            row = dict(rec["config"])
            row.update({k: v for k, v in rec["result"].items()
                        if not isinstance(v, (list, dict))})
            row["key"] = rec["key"]
            row["code_version"] = rec.get("meta", {}).get("code_version")
            row["device"] = rec.get("meta", {}).get("device")
            rows.append(row)
        return pd.DataFrame(rows)
