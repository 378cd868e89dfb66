"""Sweeps over grids of configurations, resumable through the results store.

One task = one (configuration, seed) eta* search. Every configuration of a grid is validated
before anything is computed, and each task writes its own record as soon as it finishes, so
an interrupted sweep keeps every finished result and a rerun computes only what is missing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from .config import SearchConfig, TrialConfig, check_int
from .store import Store, run_metadata

__all__ = ["EtaStarTask", "eta_star_tasks", "run_eta_star_sweep", "load_eta_star"]

log = logging.getLogger(__name__)
KIND = "eta_star"


@dataclass(frozen=True)
class EtaStarTask:
    """One eta* search: trial rules, search rules and one seed."""

    trial: TrialConfig
    search: SearchConfig
    seed: int

    def record_config(self) -> dict:
        """The flat configuration dict that keys this task's record (seed included)."""
        return {**self.trial.to_dict(), **self.search.to_dict(), "seed": self.seed}


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


def run_eta_star_sweep(
    tasks: list[EtaStarTask],
    store: Store | None = None,
    recompute: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Compute every task whose record is missing (all if ``recompute``) and return results.

    Each finished task is written to ``store`` at once. Returns :func:`load_eta_star` of the
    tasks (one row per task, in task order).
    """
    from .data import load_dataset
    from .search import eta_star

    store = Store() if store is None else store
    todo = [t for t in tasks if recompute or not store.has(KIND, t.record_config())]
    log.info("eta* sweep: %d of %d tasks to compute", len(todo), len(tasks))
    for task in _progress(todo, len(todo), progress and bool(todo), "eta* searches"):
        t0 = time.perf_counter()
        data = load_dataset(task.trial.dataset)
        (res,) = eta_star(task.trial, task.search, seeds=[task.seed], data=data, device=device)
        meta = run_metadata(device)
        meta["wall_time"] = time.perf_counter() - t0
        store.put(KIND, task.record_config(), res.to_dict(), meta)
    return load_eta_star(tasks, store)


def load_eta_star(tasks: list[EtaStarTask], store: Store | None = None) -> pd.DataFrame:
    """Results of exactly these tasks (missing ones are absent), as a DataFrame.

    Columns: the configuration fields, ``seed``, ``eta_star``, ``bracket_lo``, ``bracket_hi``,
    ``status``, ``eta_min``, ``non_interval``, ``n_trials``, ``wall_time``, ``dw`` (depth x
    width), ``code_version``.
    """
    store = Store() if store is None else store
    rows = []
    for t in tasks:
        rec = store.get(KIND, t.record_config())
        if rec is None:
            continue
        row = dict(rec["config"])
        row.update({k: v for k, v in rec["result"].items() if not isinstance(v, (list, dict))})
        row["code_version"] = rec.get("meta", {}).get("code_version")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["dw"] = df["depth"] * df["width"]
    return df
