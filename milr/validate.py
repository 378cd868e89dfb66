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

from .config import (NETWORK_DEFAULTS, SearchConfig, TrialConfig, check_datasets, check_device,
                     check_float, check_int_list, check_seeds, field_names)
from .presets import get_preset
from .sharpness import sharpness_tasks
from .sweep import eta_star_tasks, unique_tasks

__all__ = [
    "SweepSpec",
    "KINDS",
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
        try:
            base = get_preset(m["preset"])
        except ValueError as exc:
            raise ValueError(f"{src}{exc}") from None
        if kind == "eta_star":
            sections = {"trial": base.get("trial", {}), "search": base.get("search", {}),
                        "options": {}}
        else:  # lambda_1 of the same networks: the trials' input-layer rate and network
            opts = {k: base["trial"][k] for k in ("input_lr_scale", *NETWORK_DEFAULTS)
                    if k in base.get("trial", {})}
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
    ``milr.sharpness.sharpness_tasks``. Duplicate tasks (the same
    record configuration twice) are kept once.
    """
    tasks = []
    if spec.kind == "eta_star":
        for trial in _axes_product(spec.trial):
            for search in _axes_product(spec.search):
                tasks += eta_star_tasks(spec.datasets, spec.depths, spec.widths, spec.seeds,
                                        trial=trial, search=search,
                                        min_width_over_depth=spec.min_width_over_depth)
    else:
        for options in _axes_product(spec.options):
            tasks += sharpness_tasks(spec.datasets, spec.depths, spec.widths, spec.seeds,
                                     min_width_over_depth=spec.min_width_over_depth,
                                     **options)
    return unique_tasks(tasks)
