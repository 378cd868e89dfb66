"""Your own network: eta* and lambda_1 of any ``torch.nn.Module`` under milr's rules.

The built-in configurations (:class:`milr.config.TrialConfig`) train the He-initialised
ReLU MLP of :mod:`milr.models`. This module runs the *same* trials and the *same* search on
a network the user builds:

* :func:`eta_star_for`: ``model_fn(seed)`` returns a freshly initialised module; the trials
  are those of :mod:`milr.train` (plain SGD, mean cross-entropy, :class:`~milr.train.
  StopRules`, minibatch order :func:`~milr.train.batch_indices` of the seed) on the one
  :class:`~milr.train.Trainer`, its gradients through ``torch.func``
  (:class:`~milr.train.StackedModule`); the search is :func:`milr.search.eta_star_on`, the
  one :func:`milr.search.eta_star` runs; the result is the same
  :class:`~milr.search.EtaStarResult` (its trial log feeds :func:`milr.trials.trial_table`
  and :func:`milr.trials.plot_trials`). Results can be cached in a :class:`~milr.store.Store`
  under a name the user gives (kind :data:`KIND`).
* :func:`sharpness_of`: plain and effective lambda_1 of the mean cross-entropy of any module
  that outputs logits, with the operator (:class:`milr.sharpness.LossHessian`) and solver
  (:func:`milr.sharpness.top_eigenvalue`, Lanczos) of the built-in path.
* :func:`parameter_multipliers`: the learning-rate multiplier of every parameter from
  ``lr_multipliers`` (parameter-name prefixes, or parameter groups), the generalisation of
  the MLP's ``input_lr_scale``.

Differences from the built-in path (our choices): the validation set is the validation
tensors as given (no ``n_val`` subset); multipliers default to 1 for every parameter (the
built-in MLP's input layer trains at 0.01 x eta; give ``{"layers.0": 0.01}`` for that).
"""
from __future__ import annotations

import hashlib
import logging
import math
import numbers
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .config import (DTYPES, SearchConfig, check_float, check_int, check_seeds,
                     check_trial_rules)
from .data import CHANCE_ACCURACY, Dataset
from .search import EtaStarResult, eta_star_on
from .sharpness import EigenResult, LossHessian, top_eigenvalue
from .store import Store, run_metadata
from .train import StackedModule, StopRules, Trainer, torch_dtype

__all__ = ["eta_star_for", "sharpness_of", "parameter_multipliers", "ModuleSharpness",
           "data_fingerprint", "cache_config", "KIND"]

log = logging.getLogger(__name__)

#: Store kind of the records of :func:`eta_star_for`.
KIND = "eta_star_custom"
_SPLITS = ("x_train", "y_train", "x_val", "y_val")


# --------------------------------------------------------------------------- multipliers


def _matches(name: str, prefix: str) -> bool:
    """``prefix`` names ``name`` itself or a module above it (``""`` names every parameter)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _names_hint(names: list[str]) -> str:
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def parameter_multipliers(module: torch.nn.Module, lr_multipliers=None) -> dict[str, float]:
    """The learning-rate multiplier of every parameter of ``module``, by name, in
    ``named_parameters()`` order: parameter ``p`` trains at ``multiplier * eta``.

    ``lr_multipliers``:

    * ``None``: 1 for every parameter.
    * a mapping ``{prefix: multiplier}``: a prefix names a parameter (``"layers.0.weight"``)
      or a module above it (``"layers.0"``, ``"features"``; ``""`` names every parameter); a
      key may also be a tuple of prefixes (one group, one multiplier). The longest matching
      prefix wins; parameters no prefix names get 1.
    * a callable ``module -> [{"params": [...], "lr_scale": s}, ...]``, parameter groups in
      the form of :func:`milr.models.param_groups` (unlisted parameters get 1).

    Multipliers are finite and >= 0; 0 freezes a parameter (our choice, as the MLP's
    ``input_lr_scale = 0``: it gets no gradient). Raises ``ValueError``/``TypeError`` for a
    module without parameters, a prefix that matches no parameter, a negative or non-finite
    multiplier, a parameter named by two equally long prefixes with different values, a
    tensor of a group that is not a parameter of ``module``, or a parameter in two groups.
    """
    named = list(module.named_parameters())
    if not named:
        raise ValueError(f"the module ({type(module).__name__}) has no parameters to train")
    names = [n for n, _ in named]
    out = {n: 1.0 for n in names}
    if lr_multipliers is None:
        return out
    if callable(lr_multipliers) and not isinstance(lr_multipliers, Mapping):
        ids = {id(p): n for n, p in named}
        seen: set[str] = set()
        for i, g in enumerate(lr_multipliers(module)):
            if not isinstance(g, Mapping) or "params" not in g or "lr_scale" not in g:
                raise TypeError(f"lr_multipliers group {i} must be a dict with 'params' and "
                                f"'lr_scale' (as milr.models.param_groups), got {g!r}")
            s = check_float(f"lr_multipliers group {i} lr_scale", g["lr_scale"], 0.0)
            for p in g["params"]:
                n = ids.get(id(p))
                if n is None:
                    raise ValueError(f"lr_multipliers group {i} holds a tensor that is not a "
                                     "parameter of the module it was given")
                if n in seen:
                    raise ValueError(f"parameter {n!r} is in two lr_multipliers groups")
                seen.add(n)
                out[n] = s
        return out
    if not isinstance(lr_multipliers, Mapping):
        raise TypeError(f"lr_multipliers={lr_multipliers!r} must be None, a dict "
                        "{parameter-name prefix: multiplier} or a callable returning "
                        "parameter groups")
    depth = {n: -1 for n in names}
    for key, value in lr_multipliers.items():
        if isinstance(key, str):
            prefixes = (key,)
        elif isinstance(key, tuple) and key and all(isinstance(k, str) for k in key):
            prefixes = key
        else:
            raise TypeError(f"lr_multipliers key {key!r} must be a parameter-name prefix "
                            "(str) or a non-empty tuple of prefixes")
        s = check_float(f"lr_multipliers[{key!r}]", value, 0.0)
        for pre in prefixes:
            hit = [n for n in names if _matches(n, pre)]
            if not hit:
                raise ValueError(f"lr_multipliers prefix {pre!r} matches no parameter; the "
                                 f"module's parameters are {_names_hint(names)}")
            for n in hit:
                if len(pre) > depth[n]:
                    depth[n], out[n] = len(pre), s
                elif len(pre) == depth[n] and out[n] != s:
                    raise ValueError(f"parameter {n!r} is named by prefix {pre!r} twice in "
                                     f"lr_multipliers with different multipliers")
    return out


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int | None
    source: object


def _check_pair(x: torch.Tensor, y: torch.Tensor, xn: str, yn: str) -> None:
    """Inputs ``x (N, ...)`` finite floats with N >= 1, labels ``y (N,)`` integers >= 0."""
    for nm, v in ((xn, x), (yn, y)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{nm} must be a torch.Tensor, got {type(v).__name__}")
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{xn} has shape {tuple(x.shape)}; it must be (N, ...) with N >= 1 "
                         "rows and at least one feature axis")
    if not x.is_floating_point():
        raise TypeError(f"{xn} has dtype {x.dtype}; inputs must be floating point (they are "
                        "cast to the computation's dtype)")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{xn} has {bad} non-finite entries (NaN or inf); inputs must be "
                         "finite")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{yn} has shape {tuple(y.shape)}; it must be ({len(x)},), one label "
                         "per input row")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{yn} has dtype {y.dtype}; labels must be integers")
    if int(y.min()) < 0:
        raise ValueError(f"{yn} holds the label {int(y.min())}; labels must be class indices "
                         ">= 0")


def _as_data(data) -> _Data:
    """Check ``data`` (a :class:`milr.data.Dataset` or four tensors) before any training."""
    if isinstance(data, Dataset):
        t = (data.x_train, data.y_train, data.x_val, data.y_val)
        name, n_classes = data.name, int(data.n_classes)
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        t, name, n_classes = tuple(data), "tensors", None
    else:
        raise TypeError("data must be a milr Dataset or four tensors (x_train, y_train, x_val, "
                        f"y_val); got {type(data).__name__}"
                        + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    xtr, ytr, xv, yv = t
    _check_pair(xtr, ytr, "data x_train", "data y_train")
    _check_pair(xv, yv, "data x_val", "data y_val")
    if xv.shape[1:] != xtr.shape[1:]:
        raise ValueError(f"data x_val rows have shape {tuple(xv.shape[1:])}, x_train rows "
                         f"{tuple(xtr.shape[1:])}; they must match")
    return _Data(name, xtr, ytr.long(), xv, yv.long(), n_classes, data)


def _tensor_digest(t: torch.Tensor) -> dict:
    flat = t.detach().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy() if flat.numel() else np.zeros(0, np.uint8)
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "sha256": hashlib.sha256(raw.tobytes()).hexdigest()}


def data_fingerprint(data) -> dict:
    """What identifies the data of a cached :func:`eta_star_for` record: the data set's name
    (``"tensors"`` for four tensors) and, for each of x_train, y_train, x_val, y_val, its
    shape, dtype and the sha256 of its bytes (a subset or a re-standardisation of a named set
    is a different fingerprint). Raises like :func:`eta_star_for` for bad data."""
    d = _as_data(data)
    out = {"name": d.name}
    for nm in _SPLITS:
        out[nm] = _tensor_digest(getattr(d, nm))
    return out


# --------------------------------------------------------------------------- the models


def _call(model_fn: Callable, seed: int) -> torch.nn.Module:
    m = model_fn(seed)
    if not isinstance(m, torch.nn.Module):
        raise TypeError(f"model_fn({seed}) returned {type(m).__name__}; it must return a "
                        "freshly initialised torch.nn.Module")
    return m


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) and all(x.shape == y.shape and torch.equal(x, y)
                                      for x, y in zip(pa, pb))


def _build(model_fn: Callable, seeds: list[int]):
    """``(template, {seed: module})``: every seed's module, checked (fresh objects, no shared
    storage, same parameters for the same seed, one architecture for all seeds)."""
    if not callable(model_fn):
        raise TypeError(f"model_fn={model_fn!r} must be a callable seed -> torch.nn.Module")
    s0 = seeds[0]
    first, again = _call(model_fn, s0), _call(model_fn, s0)
    if first is again:
        raise ValueError(f"model_fn({s0}) returned the same object twice; it must build a "
                         "fresh torch.nn.Module on every call")
    ptrs = {p.data_ptr() for p in first.parameters() if p.numel()}
    if any(p.data_ptr() in ptrs for p in again.parameters() if p.numel()):
        raise ValueError(f"model_fn({s0}) called twice returned modules that share parameter "
                         "tensors; it must build fresh parameters on every call")
    if not _same_params(first, again):
        raise ValueError(f"model_fn({s0}) gave different parameters on two calls; it must "
                         "initialise from its seed argument alone (e.g. "
                         "torch.manual_seed(seed) or a torch.Generator seeded with it)")
    shapes = [(n, tuple(p.shape)) for n, p in first.named_parameters()]
    if not shapes:
        raise ValueError(f"model_fn({s0}) returned a module ({type(first).__name__}) without "
                         "parameters")
    models = {s0: first}
    for s in seeds[1:]:
        m = _call(model_fn, s)
        if any(m is o for o in models.values()) or m is again:
            raise ValueError(f"model_fn({s}) returned the module of another seed; it must "
                             "build a fresh torch.nn.Module on every call")
        got = [(n, tuple(p.shape)) for n, p in m.named_parameters()]
        if got != shapes:
            raise ValueError(f"model_fn({s}) has parameters {got[:4]}...; model_fn({s0}) has "
                             f"{shapes[:4]}...: every seed must build the same architecture")
        models[s] = m
    other = seeds[1] if len(seeds) > 1 else s0 + 1
    probe = models[other] if other in models else _call(model_fn, other)
    if _same_params(first, probe):
        warnings.warn(f"model_fn({s0}) and model_fn({other}) have identical parameters: the "
                      "seed changes only the data order (is the initialisation seeded?)",
                      UserWarning, stacklevel=3)
    return again, models


def _check_output(template, d: _Data, dtype, device) -> int:
    """The number of classes, after checking the module's output on two training rows."""
    x = d.x_train[:2].to(device=device, dtype=dtype)
    with torch.no_grad():
        out = template(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model's output is {type(out).__name__}; it must be a tensor of "
                        "logits (N, n_classes)")
    if out.ndim != 2 or out.shape[0] != len(x):
        raise ValueError(f"the model's output for {len(x)} input rows of shape "
                         f"{tuple(x.shape[1:])} has shape {tuple(out.shape)}; it must be "
                         f"logits ({len(x)}, n_classes)")
    C = int(out.shape[1])
    if d.n_classes is not None and C != d.n_classes:
        raise ValueError(f"the model outputs {C} logits per row; data set {d.name} has "
                         f"n_classes={d.n_classes}")
    if C < 2:
        raise ValueError(f"the model outputs {C} logit per row; cross-entropy needs >= 2 "
                         "classes")
    for nm in ("y_train", "y_val"):
        mx = int(getattr(d, nm).max())
        if mx >= C:
            raise ValueError(f"data {nm} holds the label {mx}; the model outputs {C} logits, "
                             f"so labels must lie in [0, {C - 1}]")
    return C


def _probe_net(net: StackedModule, params: list, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward/backward and one evaluation of two members on two rows."""
    P = [torch.stack([p, p]) for p in params]
    net.forward_loss(P, [(0, 2)], [x], y.expand(2, len(y)))
    net.outputs(P, x)


def _network(template, init: Callable, params: list, mults: list[float], x, y):
    """The trainer's network for the user's module: one layer per parameter (its rate
    multiplier), multiplier-0 parameters frozen; vmapped when ``torch.func`` can batch the
    module, else one member at a time (warned)."""
    frozen = [i for i, m in enumerate(mults) if m == 0.0]
    kw = dict(init=init, layer_of=range(len(mults)), frozen_layers=frozen)
    try:
        net = StackedModule(template, F.cross_entropy, **kw)
        _probe_net(net, params, x, y)
        return net
    except Exception as exc:  # noqa: BLE001 - any failure of vmap: try the loop
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
    net = StackedModule(template, F.cross_entropy, vectorize=False, **kw)
    try:
        _probe_net(net, params, x, y)
    except Exception as exc:  # noqa: BLE001 - one clear error before training
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ValueError(f"the module cannot be trained through torch.func (functional_call "
                         f"+ grad; e.g. BatchNorm in training mode: use .eval() or a norm "
                         f"without running statistics): {msg}") from exc
    warnings.warn(f"torch.func cannot vmap this module ({why}); its trials run one at a time",
                  UserWarning, stacklevel=3)
    return net


# --------------------------------------------------------------------------- the cache


def cache_config(name: str, version, seed: int, rules: dict, search: SearchConfig,
                 multipliers: dict, shapes: dict, fingerprint: dict) -> dict:
    """The configuration keying one seed's :data:`KIND` record: the user's ``name`` and
    ``version``, the seed, the trial rules, the search rules, every parameter's name, shape
    and rate multiplier, and the data fingerprint (:func:`data_fingerprint`). The module's
    code and initialisation are *not* in it (a module cannot be hashed reliably): change
    ``version`` when ``model_fn`` changes."""
    return {"name": name, "version": version, "dataset": fingerprint["name"], "seed": seed,
            "trial": dict(rules, loss="mean_cross_entropy", validation="all rows given"),
            "search": search.to_dict(), "lr_multipliers": dict(multipliers),
            "parameters": {n: list(s) for n, s in shapes.items()}, "data": fingerprint}


def _as_store(store) -> Store | None:
    if store is None or isinstance(store, Store):
        return store
    if isinstance(store, (str, os.PathLike)):
        return Store(store)
    raise TypeError(f"store={store!r} must be None, a milr.store.Store or a directory path")


# --------------------------------------------------------------------------- eta*


def eta_star_for(model_fn: Callable[[int], torch.nn.Module], data, *, threshold: float,
                 seeds: Iterable[int] = (0,), step_budget: int = 400, batch_size: int = 64,
                 eval_every: int = 25, lr_multipliers=None, search: SearchConfig | None = None,
                 blowup_factor: float = 100.0, dtype: str = "float32",
                 device: str | torch.device = "cpu", store=None, name: str | None = None,
                 version: str | int | None = None, on_trial=None, stats: dict | None = None,
                 max_members: int | None = None,
                 scan_window: int | None = None) -> list[EtaStarResult]:
    """eta* of a network you build: the largest learning rate at which ``model_fn(seed)``
    reaches validation accuracy ``threshold`` within ``step_budget`` SGD steps, under the
    trial rules and the search of :func:`milr.search.eta_star`.

    Parameters
    ----------
    model_fn: ``seed -> torch.nn.Module``, a freshly initialised module whose output on inputs
        ``(N, ...)`` is logits ``(N, n_classes)``; the same seed must give the same
        parameters. Its parameters are detached and cast to ``dtype`` (build them in
        ``dtype`` for an exact initialisation: a float32 module cast to float64 is not the
        float64 draw). It is called three or more times before training (checks); its
        buffers and mode (train/eval) are used as returned; it must be deterministic (random
        layers such as dropout cannot be vmapped and fall back to one trial at a time with
        torch's global generator, so they are not reproducible).
    data: a :class:`milr.data.Dataset` or four tensors ``(x_train (N, ...) float,
        y_train (N,) int, x_val (N_val, ...), y_val (N_val,))``. Validation uses every row
        of the validation tensors as given (our choice; the built-in trials use the
        ``n_val`` subset of :func:`milr.train.val_subset`).
    threshold: accuracy counting as success, in (chance, 1) (chance: the data set's, else
        1 / n_classes). step_budget, batch_size, eval_every, blowup_factor, dtype: as in
        :class:`milr.config.TrialConfig` (same defaults, same checks).
    seeds: distinct integers >= 0; each fixes the initialisation (``model_fn(seed)``) and the
        minibatch order (:func:`milr.train.batch_indices`, as the built-in trials).
    lr_multipliers: per-parameter rate multipliers (:func:`parameter_multipliers`; default
        1 everywhere, no input-layer factor).
    search: :class:`milr.config.SearchConfig` (default ``SearchConfig()``).
    store, name, version: cache. With ``store`` (a :class:`milr.store.Store` or a directory)
        and ``name`` (a non-empty string), each seed's result is read from / written to the
        record of kind :data:`KIND` keyed by :func:`cache_config`: name, version, rules,
        search, seed, the parameters' names, shapes and multipliers, and the data fingerprint
        (:func:`data_fingerprint`). **The model's code is not hashed**: give a new
        ``version`` whenever ``model_fn`` changes. Cached seeds are returned without training
        (the checks still run); records carry the store's ``meta`` (code version, ...).
    device, on_trial, stats, max_members, scan_window: as in :func:`milr.search.eta_star`.

    Returns one :class:`milr.search.EtaStarResult` per seed, in order (``trials`` usable by
    :func:`milr.trials.trial_table` and :func:`milr.trials.plot_trials`).

    Raises ``TypeError``/``ValueError`` (one line naming the parameter) before any training
    for bad rules, seeds or multipliers, empty, non-finite or mismatched data, labels outside
    the model's classes, an output that is not ``(N, n_classes)``, a ``model_fn`` that
    returns the same object twice, shares parameters between calls or is not deterministic,
    and ``store`` without ``name`` (or the reverse).
    """
    search = SearchConfig() if search is None else search
    if not isinstance(search, SearchConfig):
        raise TypeError(f"search={search!r} must be a milr.config.SearchConfig")
    seeds = check_seeds(seeds)
    if scan_window is not None:
        scan_window = check_int("scan_window", scan_window, 1)
    store = _as_store(store)
    if (store is None) != (name is None):
        raise ValueError("caching needs both store= and name=: the model cannot be hashed, so "
                         f"its records are keyed by the name you give (got store={store!r}, "
                         f"name={name!r})")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"name={name!r} must be a non-empty string")
    if version is not None and (isinstance(version, bool)
                                or not isinstance(version, (str, numbers.Integral))):
        raise TypeError(f"version={version!r} must be a string, an integer or None")
    d = _as_data(data)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {DTYPES}")
    dt = torch_dtype(dtype)
    template, models = _build(model_fn, seeds)
    template.to(device=device, dtype=dt)
    C = _check_output(template, d, dt, device)
    # the chance level: the data set's, else 1 / n_classes (known from the model's output)
    chance = CHANCE_ACCURACY.get(d.name) if isinstance(d.source, Dataset) else None
    chance = 1.0 / C if chance is None else chance
    rules = check_trial_rules(threshold, chance, d.name if d.name != "tensors" else
                              f"{C} classes", batch_size, step_budget, eval_every,
                              blowup_factor, dtype)
    mult = parameter_multipliers(template, lr_multipliers)
    mults = list(mult.values())
    if not any(mults):
        raise ValueError("lr_multipliers freeze every parameter (all multipliers are 0); at "
                         "least one must be > 0")
    shapes = {n: tuple(p.shape) for n, p in template.named_parameters()}
    params = {s: [p.detach().to(device=device, dtype=dt) for p in m.parameters()]
              for s, m in models.items()}

    cached: dict[int, EtaStarResult] = {}
    configs: dict[int, dict] = {}
    if store is not None:
        fp = data_fingerprint(d.source)
        for s in seeds:
            configs[s] = cache_config(name, version, s, rules, search, mult, shapes, fp)
            rec = store.get(KIND, configs[s])
            if rec is not None:
                cached[s] = EtaStarResult(**rec["result"])
    todo = [s for s in seeds if s not in cached]
    if todo:
        x2 = d.x_train[:2].to(device=device, dtype=dt)
        net = _network(template, lambda seed, _dtype, _device: params[seed],
                       params[todo[0]], mults, x2, d.y_train[:2].to(device))
        tr = Trainer(net, d.x_train, d.y_train, d.x_val, d.y_val,
                     StopRules(rules["step_budget"], rules["eval_every"], rules["threshold"],
                               rules["blowup_factor"]),
                     mults, dtype=dt, device=device, batch_size=rules["batch_size"],
                     max_members=max_members)
        tr.label = name or type(template).__name__
        t0 = time.perf_counter()
        done = eta_star_on(tr, search, todo, device, on_trial=on_trial, stats=stats,
                           scan_window=scan_window)
        wall = time.perf_counter() - t0
        for s, r in zip(todo, done):
            cached[s] = r
            log.debug("eta* %s seed=%d -> %.4g (%s, %d trials)", tr.label, s, r.eta_star,
                      r.status, r.n_trials)
            if store is not None:
                meta = run_metadata(str(device))
                meta["wall_time"] = wall
                meta["seeds_computed_together"] = todo
                if isinstance(d.source, Dataset):
                    meta["data_files"] = list(d.source.sources)
                store.put(KIND, configs[s], r.to_dict(), meta)
    elif stats is not None:
        stats.update(steps_run=0, member_steps=0, syncs=0, flops=0.0, max_members_seen=0)
    return [cached[s] for s in seeds]


# --------------------------------------------------------------------------- lambda_1


@dataclass
class ModuleSharpness:
    """lambda_1 of one module (:func:`sharpness_of`).

    lambda_1: top eigenvalue of the loss Hessian (or Gauss-Newton part) H (loss per unit
        parameter squared; 2 / lambda_1 is a learning rate). lambda_1_eff: of
        ``P^{1/2} H P^{1/2}``, P the per-parameter rate multipliers (GD at rates eta * P is
        stable on the quadratic iff eta * lambda_1_eff < 2); equal to lambda_1 when every
        multiplier is 1. plain, effective: the solver's :class:`milr.sharpness.EigenResult`
        of each (the same object when every multiplier is 1). multipliers: by parameter name.
    """

    lambda_1: float
    lambda_1_eff: float
    plain: EigenResult = field(repr=False)
    effective: EigenResult = field(repr=False)
    multipliers: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """The keys of a built-in sharpness record (``lambda_1``, ``lambda_1_residual``,
        ``lambda_1_n_hvp``, ``lambda_1_converged``, the same for ``lambda_1_eff``)."""
        out = {}
        for key, r in (("lambda_1", self.plain), ("lambda_1_eff", self.effective)):
            out[key] = r.eigenvalue
            out[f"{key}_residual"] = r.residual_norm
            out[f"{key}_n_hvp"] = r.n_hvp
            out[f"{key}_converged"] = r.converged
        return out


def sharpness_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 lr_multipliers=None, *, part: str = "hessian", method: str = "lanczos",
                 tol: float = 1e-6, seed: int = 0, maxiter: int | None = None,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                 chunk_size: int | None = None, ncv: int | None = 8) -> ModuleSharpness:
    """Plain and effective lambda_1 of the mean cross-entropy of any module on ``(x, y)`` at
    its current parameters, with the operator and solver of :func:`milr.sharpness.sharpness`
    (same defaults: Lanczos, ``tol=1e-6``, start-vector ``seed=0``, float64 products).

    ``model``: outputs logits ``(N, n_classes)`` (copied in ``dtype``, never modified);
    ``x``: ``(N, ...)`` finite floats; ``y``: ``(N,)`` integer labels in [0, n_classes).
    ``lr_multipliers``: as in :func:`eta_star_for` (:func:`parameter_multipliers`); the
    effective operator is ``P^{1/2} H P^{1/2}``. ``part``: ``"hessian"`` or
    ``"gauss_newton"``. Raises ``TypeError``/``ValueError`` (one line) for bad input.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_pair(x, y, "x", "y")
    y = y.long()
    mult = parameter_multipliers(model, lr_multipliers)
    op = LossHessian(model, x, y, part=part, dtype=dtype, device=device,
                     chunk_size=chunk_size)
    solve = dict(method=method, tol=tol, seed=seed, maxiter=maxiter, ncv=ncv)
    plain = top_eigenvalue(op.matvec, op.n, **solve)
    if all(m == 1.0 for m in mult.values()):
        eff = plain
    else:
        scales = torch.cat([torch.full((p.numel(),), mult[n], dtype=torch.float64)
                            for n, p in model.named_parameters()])
        op_eff = LossHessian(model, x, y, part=part, dtype=dtype,
                             device=device, chunk_size=chunk_size, scales=scales)
        eff = top_eigenvalue(op_eff.matvec, op_eff.n, **solve)
    return ModuleSharpness(plain.eigenvalue, eff.eigenvalue, plain, eff, mult)
