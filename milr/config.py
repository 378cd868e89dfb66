"""Validated configurations of a trial and of an eta* search.

Every field is one of the paper's settings or one of our documented choices (see README,
"Method"). Construction validates every value and raises one clear ``ValueError`` naming the
parameter, the value and the allowed range, so a sweep fed a bad configuration fails before
it computes anything.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

import torch

from .data import (CHANCE_ACCURACY, DATASETS, DEFAULT_THRESHOLDS, SPLIT_SIZES, DataNotFoundError,
                   available_datasets, load_dataset)

__all__ = ["TrialConfig", "SearchConfig", "config_key", "check_int", "check_float",
           "check_dataset", "check_int_list", "check_datasets", "check_seeds", "check_grid",
           "check_device", "check_device_available", "check_workers", "check_scheduler",
           "check_datasets_available", "usable_cores", "check_split_rows", "check_readout_gain",
           "check_bias", "check_blowup_factor", "NETWORK_DEFAULTS", "network_options",
           "drop_network_defaults"]

DTYPES = ("float32", "float64")
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_SCHEDULER_RE = re.compile(r"^(tcp|tls|ucx|ws|wss|inproc)://\S+$")


def check_int(name: str, value, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, else ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name}={value!r} must be an integer >= {lo}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}={value} must be an integer {rng}")
    return value


def check_split_rows(name: str, value, dataset: str, split: str) -> int:
    """``value`` as a number of rows in ``[1, rows of the split]`` of ``dataset`` (``split``:
    ``"train"`` or ``"val"``; sizes from :data:`milr.data.SPLIT_SIZES`, known without
    loading); ``None`` means the whole split (resolved here, so the key holds the number).
    Else ``TypeError``/``ValueError`` naming ``name``. A subset never silently shrinks to the
    rows there are: its size keys records, so it must be what is computed. A data set
    without a known size is checked only for ``>= 1`` (and cannot take ``None``)."""
    sizes = SPLIT_SIZES.get(dataset)
    rows = None if sizes is None else sizes[0 if split == "train" else 1]
    what = "training" if split == "train" else "validation"
    if value is None:
        if rows is None:
            raise ValueError(f"{name}=None (the whole {what} split) needs the split size of "
                             f"{dataset}, which is not known; give a number")
        return rows
    value = check_int(name, value, 1)
    if rows is not None and value > rows:
        raise ValueError(f"{name}={value} must be an integer in [1, {rows}]: {dataset} has "
                         f"{rows} {what} rows")
    return value


def check_dataset(name) -> str:
    """``name`` if it is a known data set, else ``ValueError`` listing the allowed names."""
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not known; allowed: {', '.join(DATASETS)}")
    return name


def check_float(
    name: str, value, lo: float = -math.inf, hi: float = math.inf, lo_open=False, hi_open=False
) -> float:
    """``value`` as a finite float in the interval, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a real number")
    value = float(value)
    bad = (
        not math.isfinite(value)
        or (value <= lo if lo_open else value < lo)
        or (value >= hi if hi_open else value > hi)
    )
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name}={value!r} must be a finite number in {lb}{lo}, {hi}{rb}")
    return value


# -- network and divergence choices -----------------------------------------------------------

#: Network choices that became configuration fields after records existed, with their
#: defaults (the values every earlier record used; our choices, README "Method"). At its
#: default such a field is left out of a record's configuration
#: (:func:`drop_network_defaults`), so every earlier record keeps its key and file name; any
#: other value is part of the key.
NETWORK_DEFAULTS = {"readout_gain": 1.0, "bias": True}


def check_readout_gain(value) -> float:
    """``value`` as the read-out layer's initialisation gain g: its weights are drawn from
    ``N(0, g / fan_in)``; a finite number > 0, else ``ValueError``/``TypeError``. 1 is our
    default (unit-variance logits per unit second moment of the last hidden layer), 2 is He
    initialisation of the read-out too (its variance as the hidden layers')."""
    return check_float("readout_gain", value, 0.0, lo_open=True, hi_open=True)


def check_bias(value) -> bool:
    """``value`` if it is ``True`` (every layer has a bias, zero-initialised and trained, our
    default) or ``False`` (no bias parameters at all), else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"bias={value!r} must be True (zero-initialised, trained biases) or "
                        "False (no biases)")
    return value


def check_blowup_factor(value) -> float | None:
    """The loss blow-up rule: a finite factor > 1 (a batch loss above factor x the first
    batch loss is divergence), or ``None`` (also spelt ``"off"``, or ``False`` as YAML reads
    ``off``) for no blow-up rule: only non-finite losses, parameters or validation outputs
    stop a trial. Else ``ValueError``/``TypeError`` naming the allowed values."""
    if value is None or value is False or (isinstance(value, str)
                                           and value.strip().lower() in ("off", "none")):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"blowup_factor={value!r} must be a number > 1 or 'off' (None)")
    value = float(value)
    if not (math.isfinite(value) and value > 1.0):
        raise ValueError(f"blowup_factor={value!r} must be a finite number in (1.0, inf) or "
                         "'off' (None: only non-finite losses stop a trial)")
    return value


def network_options(obj) -> dict:
    """``{field: value}`` of the :data:`NETWORK_DEFAULTS` fields of ``obj`` (a
    :class:`TrialConfig`, a sharpness or late-stage task): what building its network needs
    beyond the sizes (keyword arguments of :func:`milr.models.make_mlp`)."""
    return {k: getattr(obj, k) for k in NETWORK_DEFAULTS}


def drop_network_defaults(config: dict) -> dict:
    """``config`` without the :data:`NETWORK_DEFAULTS` fields that hold their default (the
    record configurations of every kind go through this; see :data:`NETWORK_DEFAULTS`)."""
    return {k: v for k, v in config.items()
            if not (k in NETWORK_DEFAULTS and v == NETWORK_DEFAULTS[k]
                    and type(v) is type(NETWORK_DEFAULTS[k]))}


# -- grids and run options ------------------------------------------------------------------

def _as_list(name: str, value) -> list:
    """A grid axis as a list: any iterable but a string or mapping (list, tuple, range, numpy
    array, generator) gives its items; a single number or string is a list of one."""
    if isinstance(value, (str, numbers.Number)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        return list(value)
    raise TypeError(f"{name}={value!r} must be a list (or a single value)")


def check_int_list(name: str, values, lo: int = 1) -> list[int]:
    """A non-empty list of distinct integers ``>= lo`` (a single integer is a list of one).

    ``name`` is the plural parameter name used in messages (``"depths"``, ``"widths"``).
    Raises ``ValueError``/``TypeError`` naming ``name[i]`` and the allowed range.
    """
    vals = _as_list(name, values)
    if not vals:
        raise ValueError(f"{name}=[] must list at least one integer >= {lo}")
    out = [check_int(f"{name}[{i}]", v, lo) for i, v in enumerate(vals)]
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise ValueError(f"{name}={out} repeats {dup}; give each value once")
    return out


def check_seeds(seeds) -> list[int]:
    """A non-empty list of distinct integer seeds ``>= 0``."""
    return check_int_list("seeds", seeds, lo=0)


def check_datasets(datasets) -> list[str]:
    """A non-empty list of distinct known data set names (see :data:`milr.data.DATASETS`)."""
    vals = _as_list("datasets", datasets)
    if not vals:
        raise ValueError(f"datasets=[] must list at least one of: {', '.join(DATASETS)}")
    for i, v in enumerate(vals):
        if v not in DATASETS:
            raise ValueError(f"datasets[{i}]={v!r} is not known; allowed: {', '.join(DATASETS)}")
    dup = sorted({v for v in vals if vals.count(v) > 1})
    if dup:
        raise ValueError(f"datasets={vals} repeats {dup}; give each data set once")
    return list(vals)


def check_grid(datasets, depths, widths, seeds) -> tuple[list, list, list, list]:
    """Validate the four axes of a grid; returns them as lists (for notebooks' parameters)."""
    return (check_datasets(datasets), check_int_list("depths", depths),
            check_int_list("widths", widths), check_seeds(seeds))


def check_device(device) -> str:
    """``"cpu"``, ``"mps"``, ``"cuda"`` or ``"cuda:N"``; raises ``ValueError`` otherwise.

    Only the spelling is checked here (a device that exists on a remote worker may not exist
    on the machine that submits the sweep); :func:`check_device_available` checks presence.
    """
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ValueError(f"device={device!r} must be 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def check_device_available(device: str) -> str:
    """:func:`check_device`, then ``RuntimeError`` if this machine lacks that device."""
    check_device(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but torch sees no CUDA device here "
                               f"(torch {torch.__version__}); use device='cpu'")
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA "
                             "device(s) here, allowed cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1}")
    if device == "mps" and not (hasattr(torch.backends, "mps")
                                and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' but torch sees no MPS device here; use 'cpu'")
    return device


def usable_cores() -> int:
    """CPU cores this process may run on (``sched_getaffinity``, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_workers(workers) -> int:
    """Local worker processes: an integer >= 1, or ``"auto"`` (= :func:`usable_cores`)."""
    if workers == "auto":
        return usable_cores()
    if isinstance(workers, str) and workers.strip().isdigit():
        workers = int(workers)
    return check_int("workers (an integer >= 1 or 'auto')", workers, 1)


def check_scheduler(address) -> str:
    """A dask scheduler address such as ``tcp://10.0.0.5:8786``."""
    if not isinstance(address, str) or not _SCHEDULER_RE.match(address):
        raise ValueError(f"scheduler={address!r} must be a dask scheduler address such as "
                         "'tcp://host:8786' (schemes: tcp, tls, ucx, ws, wss, inproc)")
    return address


def check_datasets_available(names, read: bool = True) -> None:
    """Raise :class:`milr.data.DataNotFoundError` (listing the directories searched) for the
    first data set in ``names`` whose files cannot be found on this machine, and (``read``)
    ``ValueError`` naming the file for one whose files cannot be read (empty, truncated, a
    bad magic number): both are the user's to fix, so they stop a sweep before any task runs
    instead of failing every task. Reading loads each set once (it stays in this process's
    cache, where a task computed here uses it)."""
    have = set(available_datasets())
    for name in names:
        if name not in have:
            load_dataset(name)  # raises DataNotFoundError with every path searched
        if not read:
            continue
        try:
            load_dataset(name)
        except DataNotFoundError:
            raise
        except (ValueError, OSError) as exc:
            raise ValueError(f"data set {name!r} cannot be read: {exc}") from None



# -- configurations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialConfig:
    """Rules of one trial (one training run at one learning rate and one seed).

    dataset: data set name (see :data:`milr.data.DATASETS`).
    depth: d, number of hidden layers, >= 1.
    width: w, units per hidden layer, >= 1.
    threshold: t, validation accuracy that counts as success, chance < t < 1. ``None`` means
        the data set's default (paper: MNIST 0.925, CIFAR-10 0.34; ours: Fashion-MNIST 0.75,
        Gaussian 0.90).
    batch_size: B, minibatch size of SGD (our choice, default 64).
    step_budget: SGD steps before a trial that has not reached t fails (our choice, default
        400, about 0.43 epoch of Fashion-MNIST at B = 64).
    eval_every: validation accuracy is measured every this many steps and after the last one
        (our choice, default 25).
    n_val: size of the fixed validation subset used for accuracy (our choice, 1000: the first
        n_val of a seed-0 permutation of the validation split, the same for every trial), at
        most the split's rows (:data:`milr.data.SPLIT_SIZES`); ``None`` means the whole
        split, resolved to its size here (so the record's key holds the number).
    input_lr_scale: the input layer trains at ``input_lr_scale * eta`` (paper's condition
        (ii); our default 0.01; 0 freezes the input layer), in [0, 1].
    blowup_factor: divergence rule (our choice): a trial fails as diverged as soon as a batch
        loss exceeds ``blowup_factor`` x the initial batch loss, or any loss or parameter is
        non-finite (NaN or +/-inf). Default 100; ``None`` (or ``"off"``) turns the blow-up
        rule off: only non-finite losses, parameters or validation outputs stop a trial
        (:func:`check_blowup_factor`).
    dtype: ``"float32"`` or ``"float64"``.
    readout_gain: read-out weights ~ N(0, readout_gain / fan_in) (our choice 1; 2 is He
        initialisation of the read-out too), any finite value > 0 (:func:`check_readout_gain`).
    bias: ``True`` (default): every layer has a bias, zero-initialised and trained;
        ``False``: no bias parameters at all.

    ``readout_gain`` and ``bias`` are left out of :meth:`to_dict` (the record's key) at their
    defaults, so records made before they existed keep their keys (:data:`NETWORK_DEFAULTS`).
    """

    dataset: str
    depth: int
    width: int
    threshold: float | None = None
    batch_size: int = 64
    step_budget: int = 400
    eval_every: int = 25
    n_val: int | None = 1000
    input_lr_scale: float = 0.01
    blowup_factor: float | None = 100.0
    dtype: str = "float32"
    readout_gain: float = 1.0
    bias: bool = True

    def __post_init__(self):
        check_dataset(self.dataset)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("depth", check_int("depth", self.depth))
        set_("width", check_int("width", self.width))
        t = DEFAULT_THRESHOLDS[self.dataset] if self.threshold is None else self.threshold
        chance = CHANCE_ACCURACY[self.dataset]
        set_("threshold", check_float(f"threshold (chance for {self.dataset} is {chance})",
                                      t, chance, 1.0, lo_open=True, hi_open=True))
        set_("batch_size", check_int("batch_size", self.batch_size))
        set_("step_budget", check_int("step_budget", self.step_budget))
        set_("eval_every", check_int("eval_every", self.eval_every))
        set_("n_val", check_split_rows("n_val", self.n_val, self.dataset, "val"))
        set_("input_lr_scale", check_float("input_lr_scale", self.input_lr_scale, 0.0, 1.0))
        set_("blowup_factor", check_blowup_factor(self.blowup_factor))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {DTYPES}")
        set_("readout_gain", check_readout_gain(self.readout_gain))
        set_("bias", check_bias(self.bias))

    def to_dict(self) -> dict:
        """The fields as a dict, ``readout_gain`` and ``bias`` only when not at their
        defaults (:func:`drop_network_defaults`): the trial part of a record's key."""
        return drop_network_defaults(asdict(self))


@dataclass(frozen=True)
class SearchConfig:
    """Rules of the eta* search (all our choices; the paper's Algorithm 1 gives the idea).

    eta_lo, eta_hi: initial bracket [l, u], 0 < l < u (default [1e-3, 30]).
    tol: stop when u / l <= 1 + tol (default 0.1, i.e. eta* known to within 10 %).
    scan_factor: ratio between consecutive points of the coarse geometric scan that first
        looks for a successful eta (default 4; success is not monotone in eta, see milr.search).
    scan: ``"top-down"`` scans from u downwards and stops at the first success (cheap:
        high rates diverge fast); ``"full"`` tries every scan point, which also reports
        eta_min and flags outcomes that are not an interval.
    max_expand: how many times u may be multiplied by ``scan_factor`` when u itself succeeds.
    max_trials: hard cap on trials per search.
    method: ``"bisect"`` (Algorithm 1: one trial at a time per seed, k = 1) or ``"batched"``
        (k-section, the expansion and, on CUDA, the scan of a seed at once; see milr.search).
    k: batched search only: at most this many learning rates per refinement round (k-section;
        ``k = 1`` is bisection), in [1, 64]. Default 3 (our choice: on the CPU every extra
        rate costs its compute; see README, Performance). Left out of :meth:`to_dict` for
        ``method="bisect"``, which ignores it, so bisection records keep their keys.
    """

    eta_lo: float = 1e-3
    eta_hi: float = 30.0
    tol: float = 0.1
    scan_factor: float = 4.0
    scan: str = "top-down"
    max_expand: int = 4
    max_trials: int = 60
    method: str = "bisect"
    k: int = 3

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("eta_lo", check_float("eta_lo", self.eta_lo, 0.0, lo_open=True))
        set_("eta_hi", check_float("eta_hi", self.eta_hi, 0.0, lo_open=True))
        if not self.eta_hi > self.eta_lo:
            raise ValueError(f"eta_hi={self.eta_hi} must be > eta_lo={self.eta_lo}")
        set_("tol", check_float("tol", self.tol, 0.0, 10.0, lo_open=True))
        set_("scan_factor", check_float("scan_factor", self.scan_factor, 1.0, lo_open=True))
        if self.scan not in ("top-down", "full"):
            raise ValueError(f"scan={self.scan!r} must be 'top-down' or 'full'")
        set_("max_expand", check_int("max_expand", self.max_expand, 0))
        set_("max_trials", check_int("max_trials", self.max_trials, 2))
        if self.method not in ("bisect", "batched"):
            raise ValueError(f"method={self.method!r} must be 'bisect' or 'batched'")
        set_("k", check_int("k", self.k, 1, 64))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.method == "bisect":
            d.pop("k")
        return d


def config_key(kind: str, config: dict) -> str:
    """Stable key of a result: sha256 of the canonical JSON of ``(kind, config)``, 20 hex chars.

    A pure function of the configuration, so a sweep can be stopped and resumed without losing
    work (the record's file name starts with readable parts, :func:`milr.store.record_name`).
    """
    blob = json.dumps({"kind": kind, "config": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]
