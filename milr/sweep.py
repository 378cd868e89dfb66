"""Sweeps over grids of configurations, resumable through the results store.

A *task* is any object with a ``kind`` (record kind, e.g. ``"eta_star"``), a
``record_config() -> dict`` (flat JSON configuration, seed included, that keys its record)
and a ``compute(device) -> dict`` (the JSON result). One task = one (configuration, seed)
eta* search (:class:`EtaStarTask`) or lambda_1 computation (``milr.sharpness``). Every
configuration of a grid is validated before anything is computed, and each task writes its
own record as soon as it finishes, so an interrupted sweep keeps every finished result and a
rerun computes only what is missing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from .config import SearchConfig, TrialConfig, check_int
from .store import Store, run_metadata

__all__ = ["EtaStarTask", "eta_star_tasks", "run_sweep", "load_results", "run_eta_star_sweep",
           "load_eta_star"]

log = logging.getLogger(__name__)
KIND = "eta_star"


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

    def compute(self, device: str = "cpu") -> dict:
        """Run the search (:func:`milr.search.eta_star`) and return its result dict."""
        from .data import load_dataset
        from .search import eta_star

        data = load_dataset(self.trial.dataset)
        (res,) = eta_star(self.trial, self.search, seeds=[self.seed], data=data, device=device)
        return res.to_dict()


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

    Networks with ``width < min_width_over_depth * depth`` are left out (default: w >= d).
    ``trial``/``search`` are keyword arguments of :class:`TrialConfig`/:class:`SearchConfig`.

    Raises ``ValueError``/``TypeError`` naming the first bad parameter; nothing is computed.
    """
    trial = dict(trial or {})
    search_cfg = SearchConfig(**(search or {}))
    seeds = [check_int("seed", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    tasks = []
    for ds in datasets:
        for d in depths:
            for w in widths:
                cfg = TrialConfig(dataset=ds, depth=d, width=w, **trial)
                if cfg.width < min_width_over_depth * cfg.depth:
                    continue
                tasks.extend(EtaStarTask(cfg, search_cfg, s) for s in seeds)
    return tasks


def _progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def run_sweep(
    tasks: list,
    store: Store | None = None,
    recompute: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Compute every task whose record is missing (all if ``recompute``); return the results.

    Each finished task is written to ``store`` at once (atomically), with metadata (code
    version, library versions, hardware, date, wall time). Returns :func:`load_results` of
    ``tasks`` (one row per finished task, in task order).
    """
    store = Store() if store is None else store
    todo = [t for t in tasks if recompute or not store.has(t.kind, t.record_config())]
    log.info("sweep: %d of %d tasks to compute", len(todo), len(tasks))
    for task in _progress(todo, len(todo), progress and bool(todo), "tasks"):
        t0 = time.perf_counter()
        result = task.compute(device)
        meta = run_metadata(device)
        meta["wall_time"] = time.perf_counter() - t0
        store.put(task.kind, task.record_config(), result, meta)
    return load_results(tasks, store)


def load_results(tasks: list, store: Store | None = None) -> pd.DataFrame:
    """Results of exactly these tasks (missing ones are absent), as a DataFrame.

    Columns: the configuration fields (``seed`` included), the scalar result fields (for
    eta*: ``eta_star``, ``bracket_lo``, ``bracket_hi``, ``status``, ``eta_min``,
    ``non_interval``, ``n_trials``, ``wall_time``), ``kind``, ``code_version``, ``device`` and,
    when the configuration has depth and width, ``dw`` = depth x width.
    """
    store = Store() if store is None else store
    rows = []
    for t in tasks:
        rec = store.get(t.kind, t.record_config())
        if rec is None:
            continue
        row = dict(rec["config"])
        row.update({k: v for k, v in rec["result"].items() if not isinstance(v, (list, dict))})
        row["kind"] = t.kind
        row["code_version"] = rec.get("meta", {}).get("code_version")
        row["device"] = rec.get("meta", {}).get("device")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df) and {"depth", "width"} <= set(df.columns):
        df["dw"] = df["depth"] * df["width"]
    return df


def run_eta_star_sweep(tasks, store=None, recompute=False, device="cpu", progress=True):
    """:func:`run_sweep` for eta* tasks (kept as the name the notebooks use)."""
    return run_sweep(tasks, store, recompute, device, progress)


def load_eta_star(tasks, store=None):
    """:func:`load_results` for eta* tasks."""
    return load_results(tasks, store)
