"""Every figure notebook, run by papermill on its smoke settings the way `make figures` runs it
(no matplotlib backend forced: the kernel's inline backend), shows its figures in its own
output, writes them to its figure directory and renders "What it shows" from the results it
just computed."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
FIGURE_NOTEBOOKS = sorted(p for p in NB_DIR.glob("*.ipynb") if p.name != "00_index.ipynb")


def run_smoke(path: Path, tmp_path: Path, monkeypatch) -> tuple[nbformat.NotebookNode, Path]:
    pm = pytest.importorskip("papermill")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # tests/conftest.py sets Agg for pytest
    monkeypatch.setenv("MILR_PROGRESS", "text")
    figs = tmp_path / "figs"
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(path), str(out), kernel_name="python3", cwd=str(NB_DIR),
                        progress_bar=False,
                        parameters={"smoke": True, "store_dir": str(tmp_path / "store"),
                                    "figure_dir": str(figs)})
    return nbformat.read(out, as_version=4), figs


def outputs(nb, mime: str) -> list[str]:
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if mime in o.get("data", {})]


@pytest.mark.parametrize("path", FIGURE_NOTEBOOKS, ids=[p.name for p in FIGURE_NOTEBOOKS])
def test_smoke_run_shows_its_figures(path, tmp_path, monkeypatch):
    nb, figs = run_smoke(path, tmp_path, monkeypatch)
    written = sorted(figs.glob("*.png"))
    assert written, f"{path.name} wrote no figure"
    shown = outputs(nb, "image/png")
    assert len(shown) >= len(written), (
        f"{path.name}: {len(written)} figure file(s) but {len(shown)} image/png output(s)")
    for w in written:
        assert w.with_suffix(".pdf").exists()
    md = outputs(nb, "text/markdown")
    if path.name.startswith(("fig_", "theory_")):
        assert any(m.startswith("## What it shows") for m in md), (
            f"{path.name}: no rendered 'What it shows'")
    # the notebook opens with its title (markdown), then the parameters cell
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "parameters" in nb.cells[1].metadata.get("tags", [])


def test_what_it_shows_holds_the_smoke_numbers(tmp_path, monkeypatch):
    """The main notebook's text is computed: on the smoke store it states the smoke fit."""
    from milr.fit import fit_power_law
    from milr.store import Store

    nb, _ = run_smoke(NB_DIR / "fig_eta_star_vs_dw.ipynb", tmp_path, monkeypatch)
    text = next(m for m in outputs(nb, "text/markdown") if m.startswith("## What it shows"))
    df = Store(tmp_path / "store").load("eta_star")
    assert len(df) == 4  # smoke grid: 2 depths x 2 widths x 1 seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        f = fit_power_law(df.depth * df.width, df.eta_star, n_boot=1000, seed=0)
    # (the bootstrap interval depends on the order of the points; the estimate does not)
    assert re.search(rf"α = {f.alpha:.2f} \[[-0-9.]+, [-0-9.]+\], R² = {f.r2:.2f}, "
                     rf"n = {f.n_used}", text), text
    assert f"{len(df)} searches" in text
    trial_text = [m for m in outputs(nb, "text/markdown") if m.startswith("η\\* = ")]
    assert trial_text and re.search(r"among \d+ trials", trial_text[0])
    assert np.isfinite(f.alpha)
