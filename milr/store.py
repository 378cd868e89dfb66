"""The results cache: one JSON record per (configuration, seed), keyed by the configuration.

Layout under ``root``::

    <kind>/<name>.json                one finished result
    <kind>/failed/<name>.json         why the last attempt at that configuration failed
    <kind>/corrupt/<name>.<n>.json    unreadable records moved aside before a rewrite

``name`` is readable before the hash: ``<dataset>_d<depth>_w<width>_s<seed>_<key>`` with
``key = config_key(kind, config)`` (the parts the configuration has; e.g.
``fashion-mnist_d4_w256_s0_3f2a....json``), so the file name says what made the record and
is still a pure function of the configuration (seed included): a sweep can be stopped and
resumed without losing work. Records written before the readable names (``<key>.json``) are
still read; :meth:`Store.rename_legacy` (``tools/rename_records.py``) renames them. Each record holds the configuration that produced it, the result,
metadata (code version, library versions, device, hardware, date, wall time) and a sha256
checksum of all of these.

Guarantees (our design, tested in ``tests/test_store.py``):

* Writes are atomic: a temporary file in the same directory, ``fsync``, then ``os.replace``.
  A crash or ``SIGKILL`` never leaves a half-written record, and two processes writing the
  same record at once leave one complete record (the last one), never a mixture.
* A record is only ever returned for exactly the configuration asked for: its key, its stored
  configuration and its checksum are all checked on every read.
* A record that cannot be parsed, fails its checksum or does not match its key is reported
  (``CorruptRecordWarning`` with the path) and treated as missing; before it is rewritten it
  is moved to ``<kind>/corrupt/`` and never silently replaced. A *valid* record of a
  different configuration under the same key (a hash collision) is never overwritten: ``put``
  raises :class:`StoreCollisionError`.
* Records are strict JSON read with :func:`json.loads`: nothing read from disk is unpickled,
  so a cache shared by someone else cannot run code.

Claims (leases) say who is computing a task now, so that sweeps sharing a store do no work
twice (:meth:`Store.claim`, used by :mod:`milr.sweep`)::

    <kind>/claims/<key>.claim         {host, pid, process start, claim start, lease_s, token}

* A claim is created atomically: written to a temporary file, then hard-linked to its name
  (``os.link`` fails if the name exists; where a file system has no hard links,
  ``O_CREAT | O_EXCL``). Of several processes claiming one task at once exactly one wins.
* Its owner refreshes it (the file's modification time) every ``lease_s / 4`` seconds and
  removes it once the task's record or failure note is written, or when the sweep stops.
* A claim is *live* unless its owner is dead or its lease is stale; only a live claim is
  respected. **Dead**: the claim was made on this host (same host name and process-id
  namespace) and its process is gone (no such pid, a zombie, or a pid reused by a process
  started at another time). **Stale**: not refreshed for more than its own ``lease_s``
  (default :data:`DEFAULT_LEASE_S`; the only rule for claims made on other hosts). An
  unreadable claim file counts as live for :data:`UNREADABLE_GRACE_S` seconds after its last
  change, then as stale. A dead or stale claim is taken over (renamed away, checked, deleted,
  then claimed anew), so a crashed sweep never blocks a task for ever.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import subprocess
import socket
import tempfile
import threading
import time
import traceback as _traceback
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import __version__
from .config import config_key

__all__ = [
    "Store",
    "CorruptRecordWarning",
    "StoreCollisionError",
    "run_metadata",
    "code_version",
    "record_checksum",
    "record_name",
    "key_of",
    "DEFAULT_ROOT",
    "STATES",
    "Claim",
    "DEFAULT_LEASE_S",
]

log = logging.getLogger(__name__)

#: Record format. 1: the first format (no checksum, still read); 2: adds ``checksum``.
SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "results"
#: The state of one configuration in a store (see :meth:`Store.state`).
STATES = ("done", "failed", "corrupt", "pending")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_KEY_RE = re.compile(r"^[0-9a-f]{20}$")
#: Configuration fields that make the readable part of a record's file name, with prefixes.
_NAME_PARTS = (("dataset", ""), ("depth", "d"), ("width", "w"), ("seed", "s"))
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class CorruptRecordWarning(UserWarning):
    """A record on disk is unreadable or inconsistent; it is skipped (and never trusted)."""


class StoreCollisionError(RuntimeError):
    """A valid record of a *different* configuration already sits under the same key."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``milr <version>`` plus the git commit (``+dirty`` when ``milr/`` has changes)."""
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
    """Provenance of a result, computed in the process that produced it.

    Keys: ``code_version``, ``torch``, ``numpy``, ``scipy``, ``python``, ``platform``,
    ``device`` (the torch device string), ``hardware`` (CPU model, core count, torch threads,
    GPU name and CUDA version on a GPU) and ``date`` (UTC, ISO 8601, seconds).
    """
    import numpy
    import torch

    try:
        import scipy

        scipy_version = scipy.__version__
    except ImportError:  # pragma: no cover - scipy is a dependency
        scipy_version = None
    hw = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(torch.device(device))
        hw["cuda"] = torch.version.cuda
    return {
        "code_version": code_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "hardware": hw,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _jsonable(x):
    """JSON-ready copy: non-finite floats become ``{"__float__": "nan"|"inf"|"-inf"}``."""
    if isinstance(x, float) and not math.isfinite(x):
        return {"__float__": repr(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy / torch values
        return _jsonable(x.tolist())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return _jsonable(x.item())
    return x


def _unjsonable(x):
    """Inverse of :func:`_jsonable`; ``ValueError`` on a malformed ``__float__`` marker."""
    if isinstance(x, dict):
        if set(x) == {"__float__"}:
            if x["__float__"] not in _NONFINITE:
                raise ValueError(f"bad non-finite float marker {x['__float__']!r}")
            return _NONFINITE[x["__float__"]]
        return {k: _unjsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjsonable(v) for v in x]
    return x


def _canonical(x) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), allow_nan=False)


def record_checksum(record: dict) -> str:
    """sha256 (hex) of a JSON-ready record's canonical JSON, its ``checksum`` field left out."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _check_kind(kind) -> str:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(
            f"kind={kind!r} must be a lower-case identifier matching {_KIND_RE.pattern} "
            "(e.g. 'eta_star', 'sharpness')"
        )
    return kind


def _check_config(config) -> dict:
    """A configuration must be a non-empty dict of JSON values with finite floats."""
    if not isinstance(config, dict) or not config:
        raise TypeError(f"config must be a non-empty dict, got {type(config).__name__}")

    def walk(v, where):
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise TypeError(f"config key {k!r} at {where} must be a string")
                walk(x, f"{where}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"config{where}={v!r} must be finite (it keys the record)")
        elif v is not None and not isinstance(v, (str, int, bool)):
            raise TypeError(f"config{where}={v!r} must be a JSON scalar, list or dict, not "
                            f"{type(v).__name__}")

    walk(config, "")
    return config


def record_name(kind: str, config: dict) -> str:
    """The file stem of the record of ``(kind, config)``: the readable parts the configuration
    has (see :data:`_NAME_PARTS`), then the key, joined by ``_``."""
    parts = []
    for field, prefix in _NAME_PARTS:
        v = config.get(field)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            parts.append(prefix + re.sub(r"[^a-z0-9.-]+", "-", str(v).lower()))
    return "_".join(parts + [config_key(kind, config)])


def key_of(path: str | os.PathLike) -> str:
    """The key (last ``_``-separated part of the stem) of a record file name."""
    return Path(path).stem.rsplit("_", 1)[-1]


class Store:
    """A directory of JSON records. ``Store()`` uses the repository's ``data/results``.

    Methods take ``kind`` (a lower-case identifier, e.g. ``"eta_star"``, ``"sharpness"``) and
    ``config`` (a dict of JSON values, finite floats only, that fully determines the result,
    seed included). See the module docstring for the layout and the guarantees.

    Raises ``ValueError``/``TypeError`` for a bad ``kind`` or ``config`` (naming it).
    """

    def __init__(self, root: str | os.PathLike | None = None):
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root={root!r} must be a path (str or os.PathLike) or None")
        self.root = Path(DEFAULT_ROOT if root is None else root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths --------------------------------------------------------------------------------
    def path(self, kind: str, config: dict) -> Path:
        """Where the record of ``(kind, config)`` is written (a pure function of both)."""
        _check_kind(kind)
        return self.root / kind / f"{record_name(kind, _check_config(config))}.json"

    def _found(self, kind: str, config: dict) -> Path:
        """The record's path, or its legacy ``<key>.json`` path when only that one exists."""
        p = self.path(kind, config)
        if not p.exists():
            legacy = p.parent / f"{key_of(p)}.json"
            if legacy.exists():
                return legacy
        return p

    def failure_path(self, kind: str, config: dict) -> Path:
        """Where the failure note of ``(kind, config)`` lives (``<kind>/failed/<name>.json``)."""
        p = self.path(kind, config)
        return p.parent / "failed" / p.name

    def rename_legacy(self, kinds=None) -> list[tuple[Path, Path]]:
        """Rename records and failure notes named ``<key>.json`` (before readable names) to
        their readable names; returns ``[(old, new), ...]``. Idempotent: a second call finds
        nothing to do. A file that is not a valid record is left where it is; a legacy file
        whose readable twin already exists is removed when both hold the same configuration
        (the readable one wins: it was written later). ``kinds``: the kinds to touch (default:
        every kind in the store)."""
        kinds = self.kinds() if kinds is None else [_check_kind(k) for k in kinds]
        done = []
        for kind in kinds:
            for folder, payload in ((self.root / kind, "result"),
                                    (self.root / kind / "failed", "failure")):
                for p in sorted(folder.glob("*.json")):
                    if not _KEY_RE.match(p.stem):
                        continue
                    rec, _ = self._parse(p, kind, payload=payload)
                    if rec is None:
                        continue
                    new = folder / f"{record_name(kind, rec['config'])}.json"
                    if new.exists():
                        twin, _ = self._parse(new, kind, payload=payload)
                        if twin is not None and _canonical(_jsonable(twin["config"])) == \
                                _canonical(_jsonable(rec["config"])):
                            p.unlink()
                        continue
                    os.replace(p, new)
                    done.append((p, new))
        return done

    def kinds(self) -> list[str]:
        """The record kinds present in the store (its sub-directories), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and
                      _KIND_RE.match(p.name))

    def code_versions(self, kind: str | None = None) -> dict[str, int]:
        """``{code_version: number of records}`` of ``kind`` (or of every kind): which code
        made the records (``+dirty``: a working tree with uncommitted changes)."""
        out: dict[str, int] = {}
        for k in ([kind] if kind is not None else self.kinds()):
            for rec in self.records(k):
                v = str(rec.get("meta", {}).get("code_version"))
                out[v] = out.get(v, 0) + 1
        return dict(sorted(out.items()))

    # -- writing ------------------------------------------------------------------------------
    def _write_atomic(self, path: Path, record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=1, sort_keys=True, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:  # make the rename durable too (best effort: not every file system allows it)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def _make_record(self, kind, path, config, payload_name, payload, meta) -> dict:
        record = _jsonable({
            "schema": SCHEMA,
            "kind": kind,
            "key": key_of(path),
            "config": config,
            payload_name: payload,
            "meta": meta or {},
        })
        record["checksum"] = record_checksum(record)
        return record

    def quarantine(self, path: str | os.PathLike, reason: str = "") -> Path | None:
        """Move an unreadable record to ``<kind>/corrupt/<key>.<n>.json`` and warn.

        Returns the new path, or ``None`` if the file had already gone (another process
        moved or rewrote it). The file is kept for inspection, never deleted.
        """
        path = Path(path)
        dest_dir = path.parent / "corrupt"
        dest_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            dest = dest_dir / f"{path.stem}.{n}.json"
            if not dest.exists():
                break
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return None
        warnings.warn(f"moved corrupt record {path} to {dest}" + (f" ({reason})" if reason
                      else ""), CorruptRecordWarning, stacklevel=3)
        return dest

    def put(self, kind: str, config: dict, result: dict, meta: dict | None = None) -> Path:
        """Write the record of ``(kind, config)`` atomically; return its path.

        ``result`` must be a dict (NaN and +/-inf are stored as markers and read back as
        floats). An existing record of the same configuration is replaced (a recompute); an
        existing *corrupt* file is first moved aside (:meth:`quarantine`); a valid record of
        another configuration under the same key raises :class:`StoreCollisionError`. A
        failure note for this configuration is removed once the record is written.
        """
        _check_kind(kind)
        _check_config(config)
        if not isinstance(result, dict):
            raise TypeError(f"result must be a dict, got {type(result).__name__}")
        path = self.path(kind, config)
        found = self._found(kind, config)
        if found.exists():
            rec, why = self._parse(found, kind)
            if rec is None:
                self.quarantine(found, why)
            elif _canonical(rec["config"]) != _canonical(_jsonable(config)):
                raise StoreCollisionError(
                    f"{found} holds a valid record of another configuration with the same "
                    "key; refusing to overwrite it")
        record = self._make_record(kind, path, config, "result", result, meta)
        self._write_atomic(path, record)
        if found != path and found.exists():  # the legacy-named copy it replaces
            found.unlink()
        try:
            self.failure_path(kind, config).unlink()
        except FileNotFoundError:
            pass
        return path

    def put_failure(self, kind: str, config: dict, error: BaseException | str,
                    meta: dict | None = None, tb: str | None = None) -> Path:
        """Record (atomically) that computing ``(kind, config)`` failed, with the error.

        The note is a JSON file under ``<kind>/failed/``; it never counts as a result, and a
        later successful :meth:`put` removes it. ``tb`` is the formatted traceback (taken from
        ``error`` when it is an exception and ``tb`` is omitted).
        """
        _check_kind(kind)
        _check_config(config)
        if isinstance(error, BaseException):
            if tb is None:
                tb = "".join(_traceback.format_exception(type(error), error,
                                                         error.__traceback__))
            error = f"{type(error).__name__}: {error}"
        path = self.failure_path(kind, config)
        failure = {"error": str(error), "traceback": tb or ""}
        record = self._make_record(kind, self.path(kind, config), config, "failure", failure,
                                   meta)
        self._write_atomic(path, record)
        return path

    # -- reading ------------------------------------------------------------------------------
    def _parse(self, path: Path, kind: str | None = None,
               payload: str = "result") -> tuple[dict | None, str]:
        """``(record, "")`` if ``path`` holds a valid record, else ``(None, reason)``."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, "missing"
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return None, f"unreadable JSON ({exc})"
        try:
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            missing = {"kind", "config", payload} - set(raw)
            if missing:
                raise ValueError(f"missing fields {sorted(missing)}")
            if raw.get("schema", 1) not in READABLE_SCHEMAS:
                raise ValueError(f"unknown schema {raw.get('schema')!r}")
            if "checksum" in raw:
                if raw["checksum"] != record_checksum(raw):
                    raise ValueError("checksum mismatch (the file was altered or damaged)")
            elif raw.get("schema", 1) >= 2:
                raise ValueError("checksum missing")
            if kind is not None and raw["kind"] != kind:
                raise ValueError(f"kind {raw['kind']!r} != {kind!r}")
            if not isinstance(raw["config"], dict) or not isinstance(raw[payload], dict):
                raise ValueError(f"config and {payload} must be JSON objects")
            key = key_of(path)
            if config_key(raw["kind"], raw["config"]) != key:
                raise ValueError("its configuration does not match the record's key")
            if raw.get("key", key) != key:
                raise ValueError(f"key field {raw.get('key')!r} != file name")
            if path.stem != key and path.stem != record_name(raw["kind"], raw["config"]):
                raise ValueError("its file name does not match its configuration")
            return _unjsonable(raw), ""
        except (ValueError, TypeError, KeyError) as exc:
            return None, str(exc)

    def _read(self, path: Path, kind: str | None = None) -> dict | None:
        """Parse and validate one record; warn (with the path) and return None if corrupt."""
        rec, why = self._parse(path, kind)
        if rec is None and why != "missing":
            warnings.warn(f"skipping corrupt record {path}: {why}", CorruptRecordWarning,
                          stacklevel=3)
        return rec

    def get(self, kind: str, config: dict) -> dict | None:
        """The record for exactly this configuration, or None (missing or corrupt).

        The record's dict has ``schema``, ``kind``, ``key``, ``config``, ``result``, ``meta``
        (and ``checksum`` from schema 2). A corrupt file gives a ``CorruptRecordWarning``
        naming its path; a record of another configuration is never returned.
        """
        path = self._found(kind, config)
        if not path.exists():
            return None
        rec = self._read(path, kind)
        if rec is None:
            return None
        if _canonical(_jsonable(rec["config"])) != _canonical(_jsonable(config)):
            warnings.warn(f"skipping record {path}: it holds another configuration under the "
                          "same key", CorruptRecordWarning, stacklevel=2)
            return None
        return rec

    def get_failure(self, kind: str, config: dict) -> dict | None:
        """The failure note of ``(kind, config)`` (dict with ``failure.error``), or None."""
        path = self.failure_path(kind, config)
        if not path.exists():
            return None
        rec, _ = self._parse(path, kind, payload="failure")
        return rec

    def has(self, kind: str, config: dict) -> bool:
        """True if a valid record of exactly this configuration exists."""
        return self.get(kind, config) is not None

    def state(self, kind: str, config: dict) -> str:
        """``"done"`` (valid record), ``"corrupt"`` (a file that is not a valid record of this
        configuration), ``"failed"`` (no record, a failure note) or ``"pending"`` (neither).
        Never warns: this is the quiet question that ``milr status`` asks."""
        path = self._found(kind, config)
        if path.exists():
            rec, why = self._parse(path, kind)
            if rec is not None and _canonical(_jsonable(rec["config"])) == _canonical(
                    _jsonable(config)):
                return "done"
            if why != "missing":
                return "corrupt"
        if self.failure_path(kind, config).exists():
            return "failed"
        return "pending"

    def records(self, kind: str) -> list[dict]:
        """Every valid record of ``kind``, sorted by key (corrupt ones are reported, skipped)."""
        folder = self.root / _check_kind(kind)
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.json")):
            rec = self._read(p, kind)
            if rec is not None:
                out.append(rec)
        return out

    def failures(self, kind: str) -> list[dict]:
        """Every readable failure note of ``kind`` (config, ``failure.error``, traceback)."""
        folder = self.root / _check_kind(kind) / "failed"
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.json")):
            rec, _ = self._parse(p, kind, payload="failure")
            if rec is not None:
                out.append(rec)
        return out

    def verify(self, kind: str | None = None) -> list[tuple[Path, str]]:
        """Check every record (of ``kind``, or of every kind): ``[(path, reason), ...]`` for
        the corrupt ones. Reads only; nothing is moved or warned."""
        kinds = [kind] if kind is not None else sorted(
            p.name for p in self.root.glob("*") if p.is_dir() and _KIND_RE.match(p.name))
        bad = []
        for k in kinds:
            for p in sorted((self.root / k).glob("*.json")):
                rec, why = self._parse(p, k)
                if rec is None:
                    bad.append((p, why))
        return bad

    def stale_temp_files(self) -> list[Path]:
        """Leftover ``.<key>.*.tmp`` files of writers that were killed mid-write (harmless:
        never read as records; safe to delete when no sweep is running)."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob("*/.*.tmp")) + sorted(self.root.glob("*/failed/.*.tmp"))

    def load(self, kind: str) -> pd.DataFrame:
        """Records of ``kind`` as a DataFrame: one row per record, config and scalar results as
        columns (lists such as the trial log are left out), plus ``key``, ``code_version`` and
        ``device``.
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

    # -- claims (leases): who computes a task now (see the module docstring) ------------------
    def claim_path(self, kind: str, config: dict) -> Path:
        """Where the claim of ``(kind, config)`` lives: ``<kind>/claims/<key>.claim``."""
        _check_kind(kind)
        return self.root / kind / "claims" / f"{config_key(kind, _check_config(config))}.claim"

    def claim(self, kind: str, config: dict, lease_s: float | None = None) -> Claim | None:
        """Claim ``(kind, config)`` for this process: a :class:`Claim`, or None when another
        process holds a live claim on it (module docstring; a dead or stale claim is taken
        over). The caller computes the task, then calls :meth:`release_claim`; while it
        computes it keeps the claim fresh (:meth:`refresh_claim`, every ``lease_s / 4`` s).
        ``lease_s``: default ``$MILR_LEASE_S``, else :data:`DEFAULT_LEASE_S`."""
        lease = lease_seconds(lease_s)
        path = self.claim_path(kind, config)
        token = uuid.uuid4().hex
        info = {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": _pid_namespace(),
                "proc_start": _proc_start(os.getpid()), "token": token, "lease_s": lease,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "kind": kind, "key": path.stem}
        text = json.dumps(info, sort_keys=True)
        for _ in range(5):
            with _HELD_LOCK:
                _HELD.add(token)
            if _create_claim(path, text):
                return Claim(path, token, lease, info)
            with _HELD_LOCK:
                _HELD.discard(token)
            got = _read_claim(path)
            if got is None:
                continue  # released meanwhile: try again
            status = claim_status(*got)
            if status == "live":
                return None
            log.info("taking over the %s claim of %s on %s", status, describe_claim(got[0]),
                     path)
            _break_claim(path, got[0])
        return None

    def claim_holder(self, kind: str, config: dict) -> tuple[dict | None, str] | None:
        """``(info, status)`` of the claim on ``(kind, config)`` (status as
        :func:`claim_status`), or None if nobody claims it. Reads only."""
        got = _read_claim(self.claim_path(kind, config))
        return None if got is None else (got[0], claim_status(*got))

    def refresh_claim(self, claim: Claim) -> bool:
        """Renew ``claim``'s lease (its file's modification time); False if it is no longer
        ours (taken over as stale, e.g. after this process was suspended past the lease)."""
        if not _is_mine(claim):
            return False
        try:
            os.utime(claim.path)
        except OSError:
            return False
        return True

    def release_claim(self, claim: Claim) -> bool:
        """Remove ``claim``; False (and a warning in the log) if another process had taken it
        over meanwhile, in which case that process may be computing the same task."""
        mine = _is_mine(claim)
        if mine:
            try:
                claim.path.unlink()
            except FileNotFoundError:
                pass
        else:
            log.warning("claim %s was taken over by another process while this one held it (a "
                        "lease older than %g s); its task may be computed twice", claim.path,
                        claim.lease_s)
        with _HELD_LOCK:
            _HELD.discard(claim.token)
        return mine

    def claims(self) -> list[tuple[Path, dict | None, str]]:
        """Every claim in the store: ``(path, info, status)``. Reads only."""
        out = []
        if self.root.is_dir():
            for p in sorted(self.root.glob("*/claims/*.claim")):
                got = _read_claim(p)
                if got is not None:
                    out.append((p, got[0], claim_status(*got)))
        return out


# -- claims (leases): who computes a task now -------------------------------------------------

#: Lease of a claim in seconds (our choice): a claim not refreshed for this long is stale and
#: may be taken over. Long enough that a loaded machine always refreshes in time (every
#: lease / 4), short enough that a task of a sweep killed on another host waits at most five
#: minutes. ``MILR_LEASE_S`` or ``run_sweep(lease_s=...)`` change it.
DEFAULT_LEASE_S = 300.0
#: Seconds an unreadable claim file (a writer without hard links caught mid-write, or damage)
#: counts as live after its last change.
UNREADABLE_GRACE_S = 60.0
_HELD: set = set()  # tokens of the claims this process holds now
_HELD_LOCK = threading.Lock()


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` (Linux: clock ticks since boot, /proc/<pid>/stat field
    22), or None where that is unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    """Is process ``pid`` of this host alive, and the one that started at ``started``?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # killed, not yet reaped by its parent
            return False
    except (OSError, IndexError):
        pass
    now = _proc_start(pid)
    return started is None or now is None or now == started


@dataclass(frozen=True)
class Claim:
    """A claim this process holds on one task (see the module docstring): ``path`` of the
    claim file, ``token`` (unique per claim), ``lease_s`` (seconds without refresh before it
    is stale) and the owner's ``info`` as written in the file."""

    path: Path
    token: str
    lease_s: float
    info: dict


def _read_claim(path: Path) -> tuple[dict | None, float] | None:
    """``(info, mtime)`` of a claim file (``info`` None if unreadable); None if absent."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return None, time.time()
    try:
        info = json.loads(text)
        if not isinstance(info, dict) or not isinstance(info.get("token"), str):
            info = None
    except ValueError:
        info = None
    return info, mtime


def claim_status(info: dict | None, mtime: float, now: float | None = None) -> str:
    """``"live"``, ``"dead"`` or ``"stale"``: the rule of the module docstring for a claim
    with contents ``info`` (None: unreadable) last refreshed at ``mtime`` (epoch seconds)."""
    now = time.time() if now is None else now
    age = now - mtime
    if info is None:
        return "stale" if age > UNREADABLE_GRACE_S else "live"
    if info.get("host") == socket.gethostname() and info.get("pid_ns") == _pid_namespace():
        pid = info.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            if pid == os.getpid():
                with _HELD_LOCK:
                    if info["token"] not in _HELD:
                        return "dead"  # ours, left by an earlier call that never released
            elif not _process_alive(pid, info.get("proc_start")):
                return "dead"
    try:
        lease = float(info.get("lease_s", DEFAULT_LEASE_S))
    except (TypeError, ValueError):
        lease = DEFAULT_LEASE_S
    return "stale" if age > lease else "live"


def describe_claim(info: dict | None) -> str:
    """``host:pid since <start>`` of a claim's owner, for messages."""
    if info is None:
        return "an unreadable claim"
    return f"{info.get('host')}:{info.get('pid')} since {info.get('started')}"


def _create_claim(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` atomically; False if it exists already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".claim.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network or FUSE file systems)
            pass
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _break_claim(path: Path, seen: dict | None) -> None:
    """Remove the dead or stale claim ``seen`` (None: unreadable) at ``path``. It is renamed
    away first (atomic: of several breakers one gets it); if what was renamed is a fresh
    claim someone made meanwhile, it is put back."""
    grave = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.broken")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    got = _read_claim(grave)
    info = got[0] if got else None
    same = (info is None) if seen is None else (info is not None
                                               and info.get("token") == seen.get("token"))
    if not same:  # not the claim we judged: give it back
        try:
            os.link(grave, path)
        except FileExistsError:
            log.warning("claim %s of %s was replaced while it was being restored; that task "
                        "may be computed twice", path, describe_claim(info))
        except OSError:
            if not path.exists():
                os.rename(grave, path)
                return
    try:
        os.unlink(grave)
    except OSError:
        pass


def _is_mine(claim: Claim) -> bool:
    got = _read_claim(claim.path)
    return bool(got and got[0] is not None and got[0].get("token") == claim.token)


def lease_seconds(lease_s: float | None = None) -> float:
    """The lease to use: ``lease_s``, else ``$MILR_LEASE_S``, else :data:`DEFAULT_LEASE_S`;
    ``ValueError`` unless it is a finite number > 0."""
    src = "lease_s"
    if lease_s is None:
        env = os.environ.get("MILR_LEASE_S")
        if env is None:
            return DEFAULT_LEASE_S
        src = "MILR_LEASE_S"
        try:
            lease_s = float(env)
        except ValueError:
            raise ValueError(f"MILR_LEASE_S={env!r} must be a number of seconds > 0") from None
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not (
            math.isfinite(lease_s) and lease_s > 0):
        raise ValueError(f"{src}={lease_s!r} must be a finite number of seconds > 0")
    return float(lease_s)
