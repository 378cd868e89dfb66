"""The eta* figure notebook runs under papermill, and the committed cache covers the preset."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks" / "fig_eta_star_vs_dw.ipynb"


def test_notebook_runs_with_smoke_parameters(tmp_path):
    pm = pytest.importorskip("papermill")
    out = tmp_path / "out.ipynb"
    figs = tmp_path / "figs"
    pm.execute_notebook(
        str(NB), str(out), kernel_name="python3", cwd=str(NB.parent), progress_bar=False,
        parameters={"smoke": True, "store_dir": str(tmp_path / "store"),
                    "figure_dir": str(figs)},
    )
    assert (figs / "fig_eta_star_vs_dw.png").stat().st_size > 10_000
    assert (figs / "fig_eta_star_vs_dw.pdf").exists()
    # the smoke grid computed one record per (configuration, seed): 2 depths x 2 widths
    assert len(list((tmp_path / "store" / "eta_star").glob("*.json"))) == 4


def test_committed_cache_covers_quick_preset():
    """A fresh clone must draw the figure from cache without recomputing anything."""
    from milr.data import available_datasets
    from milr.presets import get_preset
    from milr.store import Store
    from milr.sweep import eta_star_tasks, load_results

    p = get_preset("quick")
    datasets = [d for d in p["datasets"] if d in available_datasets()]
    tasks = eta_star_tasks(datasets, p["depths"], p["widths"], p["seeds"], p["trial"],
                           p["search"])
    df = load_results(tasks, Store())
    assert len(df) == len(tasks), "data/results lacks quick-preset records: run make data"
    assert df.code_version.str.startswith("milr").all()
    # eta* is a learning rate inside (or expanded from) the search bracket, or NaN (no success)
    ok = df.eta_star.dropna()
    assert ((ok >= 1e-3) & (ok <= 30 * 4 ** 4)).all()
    assert (df.status == "converged").mean() > 0.8
