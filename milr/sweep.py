"""Sweeps over grids of configurations: resumable, crash-safe, local or on a dask cluster.

A *task* is any object with a ``kind`` (record kind, e.g. ``"eta_star"``), a
``record_config() -> dict`` (flat JSON configuration, seed included, that keys its record)
and a ``compute(device) -> dict`` (the JSON result). One task = one (configuration, seed)
eta* search (:class:`EtaStarTask`) or lambda_1 computation (``milr.sharpness``).

:func:`run_sweep` validates every task before anything is computed, skips the tasks whose
record is already in the store, runs the others on one of three backends and writes each
record (atomically, from the submitting process) as soon as its task finishes:

* ``serial`` (``workers=1``, the library default): in this process, one task after another;
* ``pool`` (``workers=N`` or ``"auto"``): a local pool of N spawned processes;
* ``dask`` (``scheduler="tcp://host:port"``, ``dask_workers=N`` or ``client=``): an existing
  ``dask.distributed`` cluster, or a ``LocalCluster`` of N processes on 127.0.0.1.

Tasks that can be computed together are handed to a worker as one *unit*: an eta* task with
the batched search (``method="batched"``) joins the other seeds of its configuration
(:meth:`EtaStarTask.group_key`), and the unit runs one :func:`milr.search.eta_star`
call with all of them in one batch (``group_seeds=False``: one task per unit). Each task of a
unit still gets its own record, written when the unit finishes. The pool and dask backends
start the largest units first (:func:`largest_first`), so their workers finish together.

Every backend computes a unit with the same function (:func:`execute_tasks`), with torch
pinned to ``torch_threads`` threads (default 1; on CPU the last bits of a result depend on the
thread count, so pinning it makes a result the same whichever backend or machine size ran it).
An interrupted sweep (Ctrl-C, ``SIGKILL``, a lost node) keeps every finished record, and a
rerun computes only the missing ones. A task that raises is recorded as *failed* (with its
error, see :meth:`milr.store.Store.put_failure`) and retried by the next run.

Sweeps sharing a store compute each task once: every backend claims a task in the store
(:meth:`milr.store.Store.claim`) just before handing it to a worker, keeps the claim fresh
while it runs and releases it once the record is written; a task another sweep has finished
is skipped, one another live sweep holds is waited for at the end, and the claims of a dead
sweep (or a stale lease) are taken over. The pool and dask backends keep only as many units
in flight as they have workers (dask: twice its worker threads), so that what is claimed is
what is being computed.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import os
import math
import signal
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pandas as pd

from .config import (NETWORK_DEFAULTS, SearchConfig, TrialConfig, check_datasets_available,
                     check_device, check_device_available, check_float, check_grid, check_int,
                     check_scheduler, check_workers, config_key, field_names, network_options)
from .data import INPUT_DIMS, gaussian_bayes_accuracy, load_dataset, track_sources
from .search import eta_star
from .store import Store, describe_claim, lease_seconds, run_metadata

__all__ = ["EtaStarTask", "eta_star_tasks", "run_sweep", "load_results", "execute_task", "execute_tasks", "task_units", "largest_first",
           "work_hint", "sweep_status", "SweepStatus", "SweepError",
           "SweepFailureWarning", "unique_tasks", "task_label", "BACKENDS",
           "UnreachableThresholdWarning", "warn_unreachable_thresholds"]

log = logging.getLogger(__name__)
KIND = "eta_star"
BACKENDS = ("serial", "pool", "dask")
ERRORS = ("continue", "raise")


class SweepError(RuntimeError):
    """A task failed and ``errors="raise"`` was asked; ``failures`` lists (label, error)."""

    def __init__(self, message: str, failures: list):
        super().__init__(message)
        self.failures = failures


class SweepFailureWarning(UserWarning):
    """Some tasks of a sweep failed (``errors="continue"``); their errors are in the store."""


@dataclass(frozen=True)
class EtaStarTask:
    """One eta* search: trial rules, search rules and one seed."""

    trial: TrialConfig
    search: SearchConfig
    seed: int
    kind = KIND

    def record_config(self) -> dict:
        """The flat configuration dict that keys this task's record (seed included)."""
        return {**self.trial.to_dict(), **self.search.to_dict(), "seed": self.seed}

    def compute(self, device: str = "cpu", on_trial: Callable | None = None) -> dict:
        """The search's result dict (:func:`milr.search.eta_star` with this one seed).

        ``on_trial(result)`` (optional, for progress bars) is called after every trial; it
        does not change the result.
        """
        (res,) = eta_star(self.trial, self.search, [self.seed],
                          data=load_dataset(self.trial.dataset), device=device,
                          on_trial=on_trial)
        return res.to_dict()

    def group_key(self):
        """Tasks with equal (non-None) keys are computed together by :meth:`compute_group`:
        the seeds of one configuration with the batched search (one batch, our choice: more
        trials per step use the machine better). ``None`` for ``method="bisect"``."""
        return (self.kind, self.trial, self.search) if self.search.method == "batched" else None

    @staticmethod
    def compute_group(tasks: list["EtaStarTask"], device: str = "cpu") -> list[dict]:
        """Results of ``tasks`` (equal :meth:`group_key`, distinct seeds), in order, from one
        :func:`milr.search.eta_star` call that trains all their seeds in one batch.

        Each seed keeps its own bracket and rounds, so a result is what :meth:`compute` gives
        for that seed alone up to rounding: the batch's products sum in an order that depends
        on which trials share it, and near eta* SGD amplifies such differences (README,
        Performance). Raises ``ValueError`` if the tasks do not share one group key.
        """
        keys = {t.group_key() for t in tasks}
        if len(keys) != 1 or None in keys:
            raise ValueError("compute_group needs tasks of one configuration with "
                             f"method='batched'; got {len(keys)} group keys")
        t0 = tasks[0]
        res = eta_star(t0.trial, t0.search, [t.seed for t in tasks],
                       data=load_dataset(t0.trial.dataset), device=device)
        return [r.to_dict() for r in res]


def eta_star_tasks(
    datasets: Iterable[str],
    depths: Iterable[int],
    widths: Iterable[int],
    seeds: Iterable[int],
    trial: dict | None = None,
    search: dict | None = None,
    min_width_over_depth: float = 1.0,
) -> list[EtaStarTask]:
    """All tasks of a grid (data sets x depths x widths x seeds), validated up front.

    Networks with ``width < min_width_over_depth * depth`` are left out (default: w >= d,
    our choice: the paper's condition (i) asks for width large compared to depth).
    ``trial``/``search`` are keyword arguments of :class:`TrialConfig`/:class:`SearchConfig`.
    Each axis must be a non-empty list of distinct values (a single value is a list of one).

    Raises ``ValueError``/``TypeError`` naming the first bad parameter; nothing is computed.
    """
    datasets, depths, widths, seeds = check_grid(datasets, depths, widths, seeds)
    ratio = check_float("min_width_over_depth", min_width_over_depth, 0.0)
    if trial is not None and not isinstance(trial, dict):
        raise TypeError(f"trial={trial!r} must be a dict of TrialConfig keyword arguments")
    if search is not None and not isinstance(search, dict):
        raise TypeError(f"search={search!r} must be a dict of SearchConfig keyword arguments")
    trial = dict(trial or {})
    for bad in ("dataset", "depth", "width"):
        if bad in trial:
            raise ValueError(f"trial[{bad!r}] is a grid axis; pass it in {bad}s, not in trial")
    for name, given, cls in (("trial", trial, TrialConfig), ("search", search or {},
                                                             SearchConfig)):
        allowed = [f for f in field_names(cls) if f not in ("dataset", "depth", "width")]
        unknown = [k for k in given if k not in allowed]
        if unknown:
            raise ValueError(f"{name}[{unknown[0]!r}] is not a parameter of {cls.__name__}; "
                             f"allowed: {', '.join(allowed)}")
    search_cfg = SearchConfig(**(search or {}))
    tasks = []
    for ds in datasets:
        for d in depths:
            for w in widths:
                cfg = TrialConfig(dataset=ds, depth=d, width=w, **trial)
                if cfg.width < ratio * cfg.depth:
                    continue
                tasks.extend(EtaStarTask(cfg, search_cfg, s) for s in seeds)
    return tasks


# -- tasks ------------------------------------------------------------------------------------

def _check_task(i: int, task) -> None:
    ok = (isinstance(getattr(task, "kind", None), str) and callable(
        getattr(task, "record_config", None)) and callable(getattr(task, "compute", None)))
    if not ok:
        raise TypeError(f"tasks[{i}]={task!r} does not follow the task protocol (a str "
                        "'kind', record_config() -> dict and compute(device) -> dict)")


def task_key(task) -> tuple[str, str]:
    """``(kind, key)``: the identity of a task's record."""
    return task.kind, config_key(task.kind, task.record_config())


def unique_tasks(tasks: Iterable) -> list:
    """``tasks`` with repeats of the same record (same kind and configuration) removed."""
    seen, out = set(), []
    for i, t in enumerate(tasks):
        _check_task(i, t)
        k = task_key(t)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def task_label(task) -> str:
    """Short human label, e.g. ``eta_star gaussian d=2 w=64 seed=0``."""
    c = task.record_config()
    parts = [task.kind]
    if "dataset" in c:
        parts.append(str(c["dataset"]))
    for k, short in (("depth", "d"), ("width", "w"), ("seed", "seed")):
        if k in c:
            parts.append(f"{short}={c[k]}")
    if len(parts) == 1:  # not a network task: its first few settings
        parts += [f"{k}={v}" for k, v in list(c.items())[:4]]
    return " ".join(parts)


@contextlib.contextmanager
def pinned_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave it), then restore."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def execute_task(task, device: str = "cpu", torch_threads: int | None = 1,
                 on_trial: Callable | None = None) -> dict:
    """Compute one task wherever this runs (this process, a pool worker, a dask worker).

    Returns ``{"ok": True, "result": dict, "meta": dict}`` or, if the task raised,
    ``{"ok": False, "error": "Type: message", "traceback": str, "meta": dict}``. ``meta`` is
    :func:`milr.store.run_metadata` of the process that computed it (device, library
    versions, hardware, torch threads) plus ``wall_time`` in seconds and ``data_files`` (the
    :attr:`milr.data.Dataset.sources` of the data sets it loaded). ``KeyboardInterrupt``
    and ``SystemExit`` propagate.
    """
    def compute() -> dict:
        if on_trial is not None and "on_trial" in inspect.signature(task.compute).parameters:
            result = task.compute(device, on_trial=on_trial)
        else:
            result = task.compute(device)
        if not isinstance(result, dict):
            raise TypeError(f"{type(task).__name__}.compute returned "
                            f"{type(result).__name__}, expected a dict")
        return result

    result, failure, meta, _ = _guarded(compute, device, torch_threads)
    payload = failure or {"ok": True, "result": result}
    payload["meta"] = meta
    return payload


def _failure(exc: BaseException) -> dict:
    """The failure payload of an exception (call it in the ``except`` block that handles it:
    it records the traceback being handled)."""
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()}


def _guarded(compute: Callable, device: str, torch_threads: int | None):
    """``compute()`` with torch pinned to ``torch_threads``; returns ``(result, failure,
    meta, wall)``: ``failure`` is None or :func:`_failure` of what it raised, ``meta`` is
    :func:`milr.store.run_metadata` plus ``wall_time`` (``wall``, seconds) and ``data_files``
    (:func:`milr.data.track_sources` of the call)."""
    t0 = time.perf_counter()
    with pinned_threads(torch_threads), track_sources() as data_files:
        try:
            result, failure = compute(), None
        except Exception as exc:  # noqa: BLE001 - recorded, reported, retried next run
            result, failure = None, _failure(exc)
        meta = run_metadata(device)
    wall = time.perf_counter() - t0
    meta["wall_time"] = wall
    meta["data_files"] = data_files  # the files each data set used was read from
    return result, failure, meta, wall


def task_units(tasks: list, group_seeds: bool = True) -> list[list]:
    """Split ``tasks`` into units computed together: tasks whose class has a
    ``compute_group(tasks, device)`` and whose ``group_key()`` is equal and not None form one
    unit (in order of first appearance), every other task is a unit of its own.
    ``group_seeds=False``: one task per unit."""
    units: list[list] = []
    where: dict = {}
    for t in tasks:
        groupable = (group_seeds and callable(getattr(t, "group_key", None))
                     and callable(getattr(type(t), "compute_group", None)))
        key = t.group_key() if groupable else None
        if key is None:
            units.append([t])
        elif key in where:
            units[where[key]].append(t)
        else:
            where[key] = len(units)
            units.append([t])
    return units


def work_hint(task) -> float:
    """Rough relative cost of a task, for scheduling only: the weights of its network,
    ``n0 w + (d - 1) w^2`` (0 when the configuration has no depth and width). Our choice:
    trial steps, HVPs and evaluations all scale with it."""
    c = task.record_config()
    d, w = c.get("depth"), c.get("width")
    if not (isinstance(d, int) and isinstance(w, int)):
        return 0.0
    return float(INPUT_DIMS.get(c.get("dataset"), 784) * w + (d - 1) * w * w)


def largest_first(units: list[list]) -> list[list]:
    """``units`` sorted by their summed :func:`work_hint`, largest first (stable). A pool that
    starts the big units first ends with small ones, so its workers finish close together
    (the grids list the largest networks last)."""
    return sorted(units, key=lambda u: -sum(work_hint(t) for t in u))


def execute_tasks(tasks: list, device: str = "cpu", torch_threads: int | None = 1,
                  on_trial: Callable | None = None) -> list[dict]:
    """Compute one unit (:func:`task_units`) wherever this runs; one payload per task.

    A single task goes through :func:`execute_task`. Several go through their class's
    ``compute_group(tasks, device)`` in one call; each payload's ``meta`` then holds the
    unit's size (``group_size``), its wall time (``group_wall_time``) and, as ``wall_time``,
    an equal share of it. If the call raises, every task of the unit gets the failure payload.
    """
    if len(tasks) == 1:
        return [execute_task(tasks[0], device, torch_threads, on_trial)]
    def compute() -> list[dict]:
        results = type(tasks[0]).compute_group(tasks, device)
        if len(results) != len(tasks) or not all(isinstance(r, dict) for r in results):
            raise TypeError(f"{type(tasks[0]).__name__}.compute_group must return one "
                            f"dict per task ({len(tasks)})")
        return results

    results, failure, meta, wall = _guarded(compute, device, torch_threads)
    payloads = ([dict(failure) for _ in tasks] if failure
                else [{"ok": True, "result": r} for r in results])
    meta.update(wall_time=wall / len(tasks), group_size=len(tasks), group_wall_time=wall)
    for p in payloads:
        p["meta"] = dict(meta)
    return payloads


# -- status -----------------------------------------------------------------------------------

@dataclass
class SweepStatus:
    """Where a sweep stands in a store: counts and the tasks in each state.

    States (see :meth:`milr.store.Store.state`): ``done`` (valid record), ``pending`` (no
    record), ``failed`` (no record, the last attempt raised), ``corrupt`` (a file that is not
    a valid record; it will be moved aside and recomputed).
    """

    total: int
    done: int
    pending: int
    failed: int
    corrupt: int
    tasks: dict = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        return (f"{self.done} done, {self.pending} pending, {self.failed} failed, "
                f"{self.corrupt} corrupt (of {self.total})")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("total", "done", "pending", "failed", "corrupt")}


def sweep_status(tasks: list, store: Store | None = None) -> SweepStatus:
    """Count the tasks of a sweep by state (reads only; nothing is computed or moved)."""
    store = Store() if store is None else store
    tasks = unique_tasks(tasks)
    by = {s: [] for s in ("done", "pending", "failed", "corrupt")}
    for t in tasks:
        by[store.state(t.kind, t.record_config())].append(t)
    return SweepStatus(len(tasks), len(by["done"]), len(by["pending"]), len(by["failed"]),
                       len(by["corrupt"]), by)


# -- running ----------------------------------------------------------------------------------

def _tqdm_class():
    """tqdm front end: ``MILR_PROGRESS=text`` forces the plain-text bar (``make figures`` sets it
    for papermill, where a widget would be stored as a frozen 0 % bar), ``MILR_PROGRESS=off``
    disables bars, anything else lets ``tqdm.auto`` choose (a widget in JupyterLab).
    """
    mode = os.environ.get("MILR_PROGRESS", "auto").lower()
    if mode == "text":
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm


def _bar(total: int | None, enabled: bool, desc: str, position: int = 0, leave: bool = True):
    tqdm = _tqdm_class()
    if os.environ.get("MILR_PROGRESS", "").lower() == "off":
        enabled = False

    return tqdm(total=total, desc=desc, unit="task" if position == 0 else "trial",
                disable=not enabled, position=position, leave=leave, dynamic_ncols=True,
                smoothing=0.1)


class _Claims:
    """The claims (:meth:`milr.store.Store.claim`) this sweep holds, kept fresh by a
    heartbeat thread (every ``lease_s / 4`` s) and all released when the sweep stops."""

    def __init__(self, store: Store, lease_s: float):
        self.store, self.lease_s = store, lease_s
        self.held: dict = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_Claims":
        self._thread = threading.Thread(target=self._beat, name="milr-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            held, self.held = list(self.held.values()), {}
        for claim in held:
            with contextlib.suppress(OSError):
                self.store.release_claim(claim)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            with self._lock:
                held = list(self.held.items())
            for key, claim in held:
                with contextlib.suppress(OSError):
                    if not self.store.refresh_claim(claim):
                        log.warning("lost the claim on %s (taken over as stale); another "
                                    "sweep may compute it too", claim.path)

    def take(self, task) -> bool:
        """Claim ``task``; False if another live process holds it."""
        claim = self.store.claim(task.kind, task.record_config(), self.lease_s)
        if claim is None:
            return False
        with self._lock:
            self.held[task_key(task)] = claim
        return True

    def release(self, task) -> None:
        with self._lock:
            claim = self.held.pop(task_key(task), None)
        if claim is not None:
            self.store.release_claim(claim)

    def holder(self, task) -> str:
        """Who holds ``task``'s claim (``host:pid since ...``), for messages."""
        got = self.store.claim_holder(task.kind, task.record_config())
        return "nobody now" if got is None else describe_claim(got[0])


class _Recorder:
    """Writes each finished task's record (or failure note) from the submitting process, then
    releases its claim."""

    def __init__(self, store: Store, backend: str, bar, errors: str, claims: _Claims,
                 recompute: bool = False, group_seeds: bool = True):
        self.store, self.backend, self.bar, self.errors = store, backend, bar, errors
        self.claims, self.recompute, self.group_seeds = claims, recompute, group_seeds
        self.failures: list[tuple[str, str]] = []
        self.n_done = 0
        self.by_others: list[str] = []        # labels of tasks another sweep finished
        self.failed_by_others: list[str] = []  # ... or failed while this one waited

    def __call__(self, task, payload: dict) -> None:
        """Record one task's payload (a record, or a failure note)."""
        meta = dict(payload.get("meta") or {})
        meta["backend"] = self.backend
        label = task_label(task)
        cfg = task.record_config()
        try:
            if payload["ok"]:
                self.store.put(task.kind, cfg, payload["result"], meta)
                self.n_done += 1
                res = payload["result"]
                short = ", ".join(f"{k}={res[k]:.4g}" for k in ("eta_star", "lambda_1",
                                                                 "sharpness")
                                  if isinstance(res.get(k), float))
                log.info("done %s in %.1f s %s", label, meta.get("wall_time", math.nan), short)
                self.bar.set_postfix_str(f"{label} {short}"[-60:], refresh=False)
            else:
                self.store.put_failure(task.kind, cfg, payload["error"], meta,
                                       tb=payload.get("traceback"))
                self.failures.append((label, payload["error"]))
                log.error("failed %s: %s", label, payload["error"])
        finally:
            self.claims.release(task)
        self.bar.update(1)

    def unit(self, tasks: list, payloads: list[dict]) -> None:
        """Record every task of a finished unit; then, with ``errors="raise"``, raise
        :class:`SweepError` if one of them failed (so no computed seed is left unrecorded)."""
        for task, payload in zip(tasks, payloads, strict=True):
            self(task, payload)
        bad = [(t, p) for t, p in zip(tasks, payloads) if not p["ok"]]
        if bad and self.errors == "raise":
            task, payload = bad[0]
            raise SweepError(f"task {task_label(task)} failed: {payload['error']}\n"
                             f"{payload.get('traceback', '')}", self.failures)


class _Source:
    """Hands a backend the next unit to compute, with each of its tasks claimed.

    Before a task is computed: finished (by another sweep sharing the store)? then it is
    skipped; claimed by another live process? then it is set aside, and looked at again every
    ``poll_s`` seconds until that process has finished it (skipped), failed it (reported, not
    retried: the next run retries it) or died or let its lease go stale (then it is claimed
    and computed here). A unit whose tasks are partly held elsewhere runs with the rest.
    """

    def __init__(self, units, rec: _Recorder):
        self.queue = collections.deque(units)
        self.claimed: collections.deque = collections.deque()  # units of claimed tasks
        self.rec = rec
        self.poll_s = min(1.0, rec.claims.lease_s / 10)
        self.deferred: list[tuple] = []  # (task, time it was set aside)
        self._next_poll = 0.0
        self._waiting_said = False

    @property
    def finished(self) -> bool:
        """Nothing left to hand out, now or later."""
        return not self.queue and not self.claimed and not self.deferred

    def _done_elsewhere(self, task) -> bool:
        if self.rec.store.state(task.kind, task.record_config()) != "done":
            return False
        self.rec.by_others.append(task_label(task))
        self.rec.bar.update(1)
        log.info("skip %s: finished by another sweep", task_label(task))
        return True

    def _ready(self, task, since: float | None = None) -> bool:
        """Claim ``task`` if it still needs computing here (``since``: set aside then)."""
        if (since is not None or not self.rec.recompute) and self._done_elsewhere(task):
            return False
        if since is not None:  # did its owner fail it while we waited? then leave it
            note = self.rec.store.failure_path(task.kind, task.record_config())
            with contextlib.suppress(OSError):
                if note.stat().st_mtime >= since and not self.rec.store.claim_holder(
                        task.kind, task.record_config()):
                    self.rec.failed_by_others.append(task_label(task))
                    self.rec.bar.update(1)
                    log.warning("%s failed in another sweep; not retried now (the next run "
                                "retries it)", task_label(task))
                    return False
        if not self.rec.claims.take(task):
            if since is None:
                log.info("skip %s for now: being computed by %s", task_label(task),
                         self.rec.claims.holder(task))
            self.deferred.append((task, since if since is not None else time.time()))
            return False
        if (since is not None or not self.rec.recompute) and self._done_elsewhere(task):
            self.rec.claims.release(task)  # finished between the check and the claim
            return False
        return True

    def take(self) -> list | None:
        """The next unit (a list of claimed tasks), or None if none can start now."""
        if self.claimed:
            return self.claimed.popleft()
        while self.queue:
            ready = [t for t in self.queue.popleft() if self._ready(t)]
            if ready:
                return ready
        if self.deferred and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poll_s
            waiting, self.deferred = self.deferred, []
            ready = [t for t, since in waiting if self._ready(t, since)]
            self.claimed.extend(task_units(ready, self.rec.group_seeds))
            if self.claimed:
                return self.claimed.popleft()
            if self.deferred and not self._waiting_said:
                self._waiting_said = True
                owners = sorted({self.rec.claims.holder(t) for t, _ in self.deferred})
                log.warning("waiting for %d task(s) being computed by another sweep (%s); "
                            "they are taken over if it stops", len(self.deferred),
                            "; ".join(owners[:3]) + (" ..." if len(owners) > 3 else ""))
                self.rec.bar.set_postfix_str(f"waiting for {len(self.deferred)} task(s) of "
                                             "another sweep", refresh=True)
        return None

    def pause(self) -> None:
        """Sleep until the next look at the tasks set aside."""
        time.sleep(max(0.0, self._next_poll - time.monotonic()))


def _run_serial(units, rec: _Recorder, device, torch_threads, progress):
    src = _Source(units, rec)
    while not src.finished:
        todo = src.take()
        if todo is None:
            src.pause()
            continue
        trials = []  # the trials bar, made at the first trial (none for tasks without any)

        def on_trial(r, trials=trials):
            if not trials:
                trials.append(_bar(None, progress, "  trials", position=1, leave=False))
            trials[0].update(1)
            eta, reason = getattr(r, "eta", math.nan), getattr(r, "reason", "")
            trials[0].set_postfix_str(f"eta={eta:.3g} {reason}", refresh=False)

        try:
            payloads = execute_tasks(todo, device, torch_threads,
                                     on_trial=on_trial if progress else None)
        finally:
            for bar in trials:
                bar.close()
        rec.unit(todo, payloads)


def _log_files() -> list[tuple[str, int, str | None]]:
    """``(path, level, format)`` of the file handlers on the ``milr`` logger (``--log-file``),
    so that pool workers append their trial logs to the same files."""
    out = []
    for h in logging.getLogger("milr").handlers:
        if isinstance(h, logging.FileHandler):
            fmt = h.formatter._fmt if h.formatter is not None else None
            out.append((h.baseFilename, h.level, fmt))
    return out


def _pool_worker_init(torch_threads, log_files=(), parent: int | None = None):
    """Pool worker set-up: die with the parent (Linux ``PR_SET_PDEATHSIG``; and at once if
    the parent ``pid`` died while this worker was starting) so a killed sweep leaves no
    orphans, ignore Ctrl-C (the parent stops us), torch threads, and append to the parent's
    log files."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: orphans finish their task and exit
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the sweep was killed before this worker was ready
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_files:
        milr_log = logging.getLogger("milr")
        for path, level, fmt in log_files:
            fh = logging.FileHandler(path)
            fh.setLevel(level)
            fh.setFormatter(logging.Formatter(fmt))
            milr_log.addHandler(fh)
        milr_log.setLevel(min(level for _, level, _ in log_files))
        milr_log.propagate = False
    if torch_threads is not None:
        import torch

        torch.set_num_threads(int(torch_threads))


def _failed_unit(unit, exc: BaseException, device) -> list[dict]:
    """Failure payloads for a unit whose worker raised (e.g. was killed by the OS); call it
    in the ``except`` block (it records the traceback being handled)."""
    return [{**_failure(exc), "meta": {"device": device}} for _ in unit]


def _pool_executor(workers: int, torch_threads):
    """The local pool: ``workers`` spawned processes set up by :func:`_pool_worker_init`."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_pool_worker_init,
                               initargs=(torch_threads, _log_files(), os.getpid()))


def _run_pool(units, rec: _Recorder, device, torch_threads, workers, ex=None):
    """At most ``workers`` units in flight on the pool ``ex`` (default: a new
    :func:`_pool_executor`; shut down on return), each claimed just before it is submitted
    (so two sweeps sharing a store split the work)."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    src = _Source(units, rec)
    ex = _pool_executor(workers, torch_threads) if ex is None else ex
    inflight: dict = {}
    try:
        while not (src.finished and not inflight):
            while len(inflight) < workers:
                unit = src.take()
                if unit is None:
                    break
                try:
                    inflight[ex.submit(execute_tasks, unit, device, torch_threads)] = unit
                except BrokenProcessPool as exc:  # a worker was killed (e.g. by the OS)
                    rec.unit(unit, _failed_unit(unit, exc, device))
            if not inflight:
                src.pause()
                continue
            done, _ = wait(list(inflight), timeout=src.poll_s if src.deferred else None,
                           return_when=FIRST_COMPLETED)
            for fut in done:
                unit = inflight.pop(fut)
                try:
                    payloads = fut.result()
                except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by the OS
                    payloads = _failed_unit(unit, exc, device)
                rec.unit(unit, payloads)
    except BaseException:
        for f in inflight:
            f.cancel()
        for p in list(getattr(ex, "_processes", {}).values()):  # stop running tasks now
            p.terminate()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _dask_client(scheduler, dask_workers):
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler, timeout="60s"), None
    cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None,
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _run_dask(units, rec: _Recorder, device, torch_threads, client, scheduler, dask_workers,
              datasets, check_data):
    """Like :func:`_run_pool`, with twice as many units in flight as the cluster has worker
    threads (at least 2; re-read as the cluster grows), each claimed just before it is
    submitted."""
    from dask.distributed import wait

    own = client is None
    cluster = None
    if own:
        client, cluster = _dask_client(scheduler, dask_workers)
    src = _Source(units, rec)
    inflight: dict = {}
    try:
        if check_data and datasets:  # the data must be where the workers are
            client.submit(check_datasets_available, sorted(datasets), pure=False).result()
        window, window_at = 2, -math.inf
        while not (src.finished and not inflight):
            if time.monotonic() - window_at > 5:
                with contextlib.suppress(Exception):
                    window = max(2, 2 * sum(client.nthreads().values()))
                window_at = time.monotonic()
            while len(inflight) < window:
                unit = src.take()
                if unit is None:
                    break
                inflight[client.submit(execute_tasks, unit, device, torch_threads,
                                       pure=False)] = unit
            if not inflight:
                src.pause()
                continue
            try:
                done = wait(list(inflight), timeout=src.poll_s if src.deferred else None,
                            return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue
            for fut in done:
                unit = inflight.pop(fut)
                try:
                    payloads = fut.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker, lost connection, ...
                    payloads = _failed_unit(unit, exc, device)
                rec.unit(unit, payloads)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(inflight))
        raise
    finally:
        if own:
            with contextlib.suppress(Exception):
                client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()


class UnreachableThresholdWarning(UserWarning):
    """A task's threshold accuracy is above what any classifier reaches on its data set."""


def warn_unreachable_thresholds(tasks) -> None:
    """Warn (:class:`UnreachableThresholdWarning`, once per threshold) for tasks on the
    Gaussian task whose threshold is at or above its Bayes-optimal accuracy
    (:func:`milr.data.gaussian_bayes_accuracy`, 0.951): their searches can only end with
    ``no_success`` (short of sampling luck on the validation subset)."""
    bayes = gaussian_bayes_accuracy()
    seen = set()
    for t in tasks:
        c = t.record_config()
        th = c.get("threshold")
        if c.get("dataset") == "gaussian" and isinstance(th, float) and th >= bayes:
            if th not in seen:
                seen.add(th)
                warnings.warn(f"threshold {th:g} on the Gaussian task is at or above its "
                              f"Bayes-optimal accuracy {bayes:.3f}: no network can reach it "
                              "(short of sampling luck on the validation subset), so expect "
                              "status 'no_success'", UnreachableThresholdWarning, stacklevel=3)


def _datasets_of(tasks) -> set:
    out = set()
    for t in tasks:
        ds = t.record_config().get("dataset")
        if isinstance(ds, str):
            out.add(ds)
    return out


def run_sweep(
    tasks: list,
    store: Store | None = None,
    recompute: bool = False,
    device: str = "cpu",
    progress: bool = True,
    *,
    workers: int | str = 1,
    scheduler: str | None = None,
    dask_workers: int | None = None,
    client=None,
    torch_threads: int | None = 1,
    errors: str = "continue",
    check_data: bool = True,
    group_seeds: bool = True,
    lease_s: float | None = None,
) -> pd.DataFrame:
    """Compute every task whose record is missing (all if ``recompute``); return the results.

    Parameters
    ----------
    tasks: objects following the task protocol (see the module docstring); repeats of the
        same record are computed once.
    store: where records go (default :class:`Store()`, the repository's ``data/results``).
    recompute: recompute and overwrite finished records too.
    device: torch device of every task (``cpu``, ``cuda``, ``cuda:N``, ``mps``).
    progress: tqdm bars (terminal or notebook): tasks done / total with ETA and, in the
        serial backend, the trials of the running search. ``False`` for quiet runs (CI).
    workers: local processes; ``1`` (default) computes in this process, ``N > 1`` or
        ``"auto"`` (the usable cores) uses a pool of spawned processes.
    scheduler: address of a running dask scheduler (``tcp://host:8786``).
    dask_workers: start a ``LocalCluster`` of this many single-threaded worker processes on
        127.0.0.1 for this sweep.
    client: an existing ``dask.distributed.Client`` to use (and leave open).
    torch_threads: torch threads per task (default 1, our choice: CPU results then do not
        depend on the machine size or backend; ``None`` leaves torch's setting).
    errors: ``"continue"`` (default) records a failed task, goes on and warns
        (:class:`SweepFailureWarning`) at the end; ``"raise"`` records it, stops the sweep and
        raises :class:`SweepError`. A failed task is retried by the next run.
    check_data: check up front (on a worker for dask) that every data set is there, so a
        missing one fails at once with the directories searched.
    group_seeds: compute the seeds of a configuration together where the task allows it
        (batched eta* search: one batch; see :func:`task_units`). Default True (our choice:
        fewer, fuller batches; on the quick preset with 2 CPU processes it saved 5 % of the
        CPU time and no wall time, README Performance; on a GPU, where a batch's extra
        trials cost little, we expect more, not measured). A unit's records are written when all of its seeds
        are done.
        The pool and dask backends start the largest units first (:func:`largest_first`).
    lease_s: lease of this sweep's claims in seconds (default ``$MILR_LEASE_S``, else
        :data:`milr.store.DEFAULT_LEASE_S` = 300). Each task is claimed in the store just
        before it is computed (:meth:`milr.store.Store.claim`) and released once its record
        is written, so sweeps sharing a store compute each task once: a task finished by
        another sweep is skipped, one that another live sweep is computing is waited for
        (and taken over if that sweep dies, or its claim is not refreshed for its lease).

    Each finished task is written to ``store`` at once (atomically) by this process, with
    metadata from the process that computed it (code version, library versions, device,
    hardware, torch threads, date, wall time, backend). Returns :func:`load_results` of
    ``tasks`` (one row per finished task, in task order).

    Raises ``ValueError``/``TypeError`` for bad arguments or tasks (before computing),
    :class:`milr.data.DataNotFoundError` for a missing data set, :class:`SweepError`
    (``errors="raise"``); ``KeyboardInterrupt`` stops the sweep, finished records stay.
    """
    store = Store() if store is None else store
    if not isinstance(store, Store):
        raise TypeError(f"store={store!r} must be a milr.store.Store")
    tasks = unique_tasks(tasks)
    check_device(device)
    if errors not in ERRORS:
        raise ValueError(f"errors={errors!r} must be one of {ERRORS}")
    if torch_threads is not None:
        torch_threads = check_int("torch_threads", torch_threads, 1)
    n_workers = check_workers(workers)
    dask_given = [n for n, v in (("scheduler", scheduler), ("dask_workers", dask_workers),
                                 ("client", client)) if v is not None]
    if len(dask_given) > 1:
        raise ValueError(f"give at most one of scheduler, dask_workers, client; got "
                         f"{dask_given}")
    if dask_given and workers not in (1, "1"):
        raise ValueError(f"workers={workers!r} is for the local pool; with {dask_given[0]} "
                         "the dask cluster decides (leave workers=1)")
    if scheduler is not None:
        check_scheduler(scheduler)
    if dask_workers is not None:
        dask_workers = check_int("dask_workers", dask_workers, 1)
    lease = lease_seconds(lease_s)
    backend = "dask" if dask_given else ("pool" if n_workers > 1 else "serial")

    if recompute:
        todo = list(tasks)
    else:
        todo = [t for t in tasks if store.state(t.kind, t.record_config()) != "done"]
    kinds = sorted({t.kind for t in tasks})
    log.info("sweep: %d of %d tasks to compute (backend %s)", len(todo), len(tasks), backend)
    warn_unreachable_thresholds(todo)
    if todo:
        datasets = _datasets_of(todo)
        units = task_units(todo, bool(group_seeds))
        if backend == "pool":
            n_workers = min(n_workers, len(units))
        serial = backend == "serial" or (backend == "pool" and n_workers == 1)
        if backend != "dask":
            check_device_available(device)
            if check_data:  # a pool's worker reads them (kept in its memory, not in ours)
                check_datasets_available(sorted(datasets), read=serial)
        ex = None if serial or backend != "pool" else _pool_executor(n_workers, torch_threads)
        try:
            if ex is not None and check_data:  # unreadable files stop us before any task
                ex.submit(check_datasets_available, sorted(datasets)).result()
            desc = (f"{kinds[0] if len(kinds) == 1 else 'tasks'} "
                    f"({len(tasks) - len(todo)} cached)")
            with _bar(len(todo), progress, desc) as bar, _Claims(store, lease) as claims:
                rec = _Recorder(store, backend, bar, errors, claims, recompute,
                                bool(group_seeds))
                if serial:
                    rec.backend = "serial"
                    _run_serial(units, rec, device, torch_threads, progress)
                elif backend == "pool":
                    _run_pool(largest_first(units), rec, device, torch_threads, n_workers, ex)
                else:
                    _run_dask(largest_first(units), rec, device, torch_threads, client,
                              scheduler, dask_workers, datasets, check_data)
        finally:
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)
        if rec.by_others:
            log.info("%d of %d tasks were finished by another sweep sharing the store",
                     len(rec.by_others), len(todo))
        if rec.failed_by_others:
            warnings.warn(f"{len(rec.failed_by_others)} task(s) failed in another sweep sharing "
                          f"the store (first: {rec.failed_by_others[0]}); a rerun retries them",
                          SweepFailureWarning, stacklevel=2)
        if rec.failures:
            first = rec.failures[0]
            warnings.warn(f"{len(rec.failures)} of {len(todo)} tasks failed (first: {first[0]}:"
                          f" {first[1]}); the errors are in {store.root}/<kind>/failed/, a "
                          "rerun retries them", SweepFailureWarning, stacklevel=2)
    return load_results(tasks, store)


def load_results(tasks: list, store: Store | None = None) -> pd.DataFrame:
    """Results of exactly these tasks (missing ones are absent), as a DataFrame.

    Columns: the configuration fields (``seed`` included; ``readout_gain`` and ``bias`` for
    network tasks even where the record's configuration leaves their defaults out), the
    scalar result fields (for eta*: ``eta_star``, ``bracket_lo``, ``bracket_hi``, ``status``,
    ``eta_min``, ``non_interval``, ``n_trials``, ``wall_time``), ``kind``, ``code_version``,
    ``device`` and, when the configuration has depth and width, ``dw`` = depth x width.
    """
    store = Store() if store is None else store
    rows = []
    for t in unique_tasks(tasks):
        rec = store.get(t.kind, t.record_config())
        if rec is None:
            continue
        row = dict(rec["config"])
        net = getattr(t, "trial", t)  # readout_gain and bias even where the key omits them
        if all(hasattr(net, k) for k in NETWORK_DEFAULTS):
            row.update(network_options(net))
        row.update({k: v for k, v in rec["result"].items() if not isinstance(v, (list, dict))})
        row["kind"] = t.kind
        row["code_version"] = rec.get("meta", {}).get("code_version")
        row["device"] = rec.get("meta", {}).get("device")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df) and {"depth", "width"} <= set(df.columns):
        df["dw"] = df["depth"] * df["width"]
    return df
