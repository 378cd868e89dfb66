"""Validation of everything a user feeds a sweep: grids, sweep files (YAML), run options.

Every check raises one ``ValueError`` (bad value) or ``TypeError`` (wrong type) whose message
names the parameter, the value and the allowed range, before anything is computed. The
single-configuration rules (depth, width, threshold above chance, learning-rate bounds,
budgets) live in :class:`milr.config.TrialConfig` and :class:`milr.config.SearchConfig`; this
module checks the grids around them and the sweep file format.

A sweep file (YAML, read with ``yaml.safe_load``: no Python objects) looks like::

    kind: eta_star            # or: sharpness
    name: quick               # optional label
    preset: quick             # optional: start from milr.presets.PRESETS["quick"]
    datasets: [fashion-mnist, gaussian]
    depths: [1, 2, 4, 8]
    widths: [32, 64, 128]
    seeds: [0, 1, 2]
    min_width_over_depth: 1.0 # keep only networks with width >= this x depth
    trial:  {step_budget: 400, input_lr_scale: [0.01, 1.0]}   # a list = one more grid axis
    search: {eta_lo: 1.0e-3, eta_hi: 30.0}
    options: {}               # kind: sharpness only, keyword arguments of sharpness_tasks
    store: data/results       # optional; relative paths are relative to the sweep file
    device: cpu               # optional

Keys given at the top level replace the preset's; ``trial``/``search``/``options`` are merged
key by key.
"""
from __future__ import annotations

import itertools
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import SearchConfig, TrialConfig, check_float, check_int, field_names
from .data import DATASETS

__all__ = [
    "SweepSpec",
    "KINDS",
    "check_int_list",
    "check_datasets",
    "check_seeds",
    "check_grid",
    "check_device",
    "check_workers",
    "check_scheduler",
    "check_datasets_available",
    "sweep_spec",
    "load_sweep_file",
    "spec_from_preset",
    "build_tasks",
]

#: Record kinds a sweep file may ask for.
KINDS = ("eta_star", "sharpness")
_TOP_KEYS = ("kind", "name", "description", "preset", "datasets", "depths", "widths",
             "seeds", "min_width_over_depth", "trial", "search", "options", "store", "device")
_TRIAL_KEYS = tuple(k for k in field_names(TrialConfig) if k not in ("dataset", "depth",
                                                                     "width"))
_SEARCH_KEYS = tuple(field_names(SearchConfig))
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_SCHEDULER_RE = re.compile(r"^(tcp|tls|ucx|ws|wss|inproc)://\S+$")


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
    import torch

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
    from .data import DataNotFoundError, available_datasets, load_dataset

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


# -- sweep files ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the grid and the fixed settings of every task.

    kind: ``"eta_star"`` or ``"sharpness"``.
    datasets, depths, widths, seeds: the grid's axes (validated lists).
    trial, search: keyword arguments of :class:`TrialConfig` / :class:`SearchConfig`
        (``eta_star``); a list value is one more grid axis.
    options: keyword arguments of ``milr.sharpness.sharpness_tasks`` (``sharpness``); a list
        value is one more grid axis.
    min_width_over_depth: networks with ``width < min_width_over_depth * depth`` are left out.
    name: label; store, device: optional defaults for the command line (``store`` resolved
        against the sweep file's folder).
    """

    kind: str
    datasets: list
    depths: list
    widths: list
    seeds: list
    trial: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    min_width_over_depth: float = 1.0
    name: str | None = None
    store: str | None = None
    device: str | None = None

    def axes(self, section: str) -> dict:
        """The list-valued entries of ``trial``/``search``/``options`` (extra grid axes)."""
        return {k: v for k, v in getattr(self, section).items() if isinstance(v, list)}


def _section(src: str, name: str, value, allowed: tuple | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{src}{name}={value!r} must be a mapping of parameter: value")
    out = {}
    for k, v in value.items():
        if allowed is not None and k not in allowed:
            raise ValueError(f"{src}{name}.{k} is not a known parameter; allowed: "
                             f"{', '.join(allowed)}")
        if isinstance(v, (list, tuple)):
            if not v:
                raise ValueError(f"{src}{name}.{k}=[] must list at least one value")
            v = list(v)
        out[k] = v
    return out


def sweep_spec(mapping: dict, source: str | os.PathLike | None = None) -> SweepSpec:
    """Validate a sweep description (the parsed YAML) and return a :class:`SweepSpec`.

    Every task configuration of the grid is also built once (:func:`build_tasks`), so a bad
    value anywhere (e.g. a threshold below chance for one data set) fails here. Errors are
    ``ValueError``/``TypeError`` prefixed with ``source`` (the file) and naming the key.
    """
    src = f"{source}: " if source else ""
    if not isinstance(mapping, dict):
        raise TypeError(f"{src}a sweep must be a mapping (YAML dict), got "
                        f"{type(mapping).__name__}")
    unknown = [k for k in mapping if k not in _TOP_KEYS]
    if unknown:
        raise ValueError(f"{src}unknown key(s) {unknown}; allowed: {', '.join(_TOP_KEYS)}")
    m = dict(mapping)
    kind = m.get("kind", "eta_star")
    if kind not in KINDS:
        raise ValueError(f"{src}kind={kind!r} is not known; allowed: {', '.join(KINDS)}")
    if kind == "sharpness" and (m.get("trial") or m.get("search")):
        raise ValueError(f"{src}trial and search are for kind: eta_star; for kind: sharpness "
                         "put the parameters of milr.sharpness.SharpnessTask in options")
    if kind == "eta_star" and m.get("options"):
        raise ValueError(f"{src}options are for kind: sharpness; for kind: eta_star use "
                         "trial and search")
    if m.get("preset") is not None:
        from .presets import get_preset

        try:
            base = get_preset(m["preset"])
        except ValueError as exc:
            raise ValueError(f"{src}{exc}") from None
        if kind == "eta_star":
            sections = {"trial": base.get("trial", {}), "search": base.get("search", {}),
                        "options": {}}
        else:  # lambda_1 of the same networks: the trials' input-layer rate factor
            opts = {}
            if "input_lr_scale" in base.get("trial", {}):
                opts["input_lr_scale"] = base["trial"]["input_lr_scale"]
            opts.update(base.get("sharpness", {}) or {})
            sections = {"trial": {}, "search": {}, "options": opts}
        for sec, default in sections.items():
            if m.get(sec) is not None and not isinstance(m[sec], dict):
                continue  # reported below
            merged = dict(default)
            merged.update(m.get(sec) or {})
            m[sec] = merged
        for k in ("datasets", "depths", "widths", "seeds", "min_width_over_depth"):
            if k in base:
                m.setdefault(k, base[k])
    for key in ("datasets", "depths", "widths", "seeds"):
        if key not in m:
            raise ValueError(f"{src}missing required key {key!r}")
    try:
        datasets = check_datasets(m["datasets"])
        depths = check_int_list("depths", m["depths"])
        widths = check_int_list("widths", m["widths"])
        seeds = check_seeds(m["seeds"])
        ratio = check_float("min_width_over_depth", m.get("min_width_over_depth", 1.0), 0.0)
        trial = _section(src, "trial", m.get("trial"), _TRIAL_KEYS)
        search = _section(src, "search", m.get("search"), _SEARCH_KEYS)
        options = _section(src, "options", m.get("options"), None)
        device = m.get("device")
        if device is not None:
            check_device(device)
        store = m.get("store")
        if store is not None:
            if not isinstance(store, str) or not store:
                raise TypeError(f"store={store!r} must be a directory path")
            if source is not None and not os.path.isabs(store):
                store = str(Path(source).resolve().parent / store)
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name={name!r} must be a string")
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(src) else src + msg) from None
    spec = SweepSpec(kind=kind, datasets=datasets, depths=depths, widths=widths, seeds=seeds,
                     trial=trial, search=search if kind == "eta_star" else {},
                     options=options, min_width_over_depth=ratio, name=name, store=store,
                     device=device)
    try:
        tasks = build_tasks(spec)
    except (ValueError, TypeError) as exc:
        raise type(exc)(src + str(exc)) from None
    if not tasks:
        raise ValueError(f"{src}the grid is empty: every (depth, width) has width < "
                         f"min_width_over_depth ({ratio}) x depth")
    return spec


def load_sweep_file(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file (YAML, ``yaml.safe_load``); see the module docstring.

    Raises ``FileNotFoundError`` (with the path), ``ValueError`` for malformed YAML or a bad
    value (prefixed with the path and naming the key).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {str(path)!r} not found")
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return sweep_spec(mapping, source=path)


def spec_from_preset(name: str, **overrides) -> SweepSpec:
    """The :class:`SweepSpec` of preset ``name`` of :mod:`milr.presets` (one source of
    truth for ``make data``, the notebooks and ``configs/*.yaml``)."""
    return sweep_spec({"preset": name, **overrides}, source=None)


def _axes_product(section: dict) -> list[dict]:
    keys = [k for k, v in section.items() if isinstance(v, list)]
    fixed = {k: v for k, v in section.items() if k not in keys}
    combos = itertools.product(*(section[k] for k in keys)) if keys else [()]
    return [{**fixed, **dict(zip(keys, c))} for c in combos]


def build_tasks(spec: SweepSpec) -> list:
    """Every task of ``spec``: extra axes (list values) x data sets x depths x widths x seeds.

    ``eta_star``: :func:`milr.sweep.eta_star_tasks`; ``sharpness``:
    ``milr.sharpness.sharpness_tasks`` (imported only when needed). Duplicate tasks (the same
    record configuration twice) are kept once.
    """
    tasks = []
    if spec.kind == "eta_star":
        from .sweep import eta_star_tasks

        for trial in _axes_product(spec.trial):
            for search in _axes_product(spec.search):
                tasks += eta_star_tasks(spec.datasets, spec.depths, spec.widths, spec.seeds,
                                        trial=trial, search=search,
                                        min_width_over_depth=spec.min_width_over_depth)
    else:
        try:
            from .sharpness import sharpness_tasks
        except ImportError as exc:  # pragma: no cover - depends on milr.sharpness existing
            raise ValueError(f"kind='sharpness' needs milr.sharpness ({exc})") from None
        for options in _axes_product(spec.options):
            tasks += sharpness_tasks(spec.datasets, spec.depths, spec.widths, spec.seeds,
                                     min_width_over_depth=spec.min_width_over_depth,
                                     **options)
    from .sweep import unique_tasks

    return unique_tasks(tasks)
