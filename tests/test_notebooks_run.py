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


def test_beyond_mlps_range_tests_follow_the_package_and_the_text_states_them(tmp_path,
                                                                            monkeypatch):
    """fig_beyond_mlps on its smoke settings: every cached LR range test has torch-lr-finder's
    geometric schedule, its suggestion is the package's steepest-gradient rule on its own
    stored curve, and "What it shows" states the suggestion / eta* ratios of the store."""
    from milr.store import Store

    nb, _ = run_smoke(NB_DIR / "fig_beyond_mlps.ipynb", tmp_path, monkeypatch)
    store = Store(tmp_path / "store")
    tests = store.records("lr_finder")
    assert len(tests) == 4  # smoke: one MLP and one CNN, 2 seeds each
    eta = {("mlp", r["config"]["depth"], r["config"]["width"], r["config"]["seed"]):
           r["result"]["eta_star"] for r in store.records("eta_star")}
    for r in store.records("eta_star_custom"):
        d, c = re.search(r"-d(\d+)-c(\d+)$", r["config"]["name"]).groups()
        eta[("cnn", int(d), int(c), r["config"]["seed"])] = r["result"]["eta_star"]
    ratios = []
    for rec in tests:
        cfg, res = rec["config"], rec["result"]
        lr, loss = np.asarray(res["lr"]), np.asarray(res["loss"])
        n = cfg["num_iter"]
        assert res["steps"] == len(lr) <= n and res["diverged"] == (len(lr) < n)
        expect = cfg["start_lr"] * (cfg["end_lr"] / cfg["start_lr"]) ** (
            np.arange(len(lr)) / (n - 1))
        np.testing.assert_allclose(lr, expect, rtol=1e-9)
        a, b = cfg["skip_start"], cfg["skip_end"]
        seg_lr, seg_loss = lr[a:len(lr) - b], loss[a:len(lr) - b]
        if len(seg_lr) >= 2:
            assert res["suggested_lr"] == pytest.approx(seg_lr[np.gradient(seg_loss).argmin()],
                                                        rel=1e-12)
        size = cfg["width"] if cfg["network"] == "mlp" else cfg["channels"]
        ratios.append(res["suggested_lr"] / eta[(cfg["network"], cfg["depth"], size,
                                                  cfg["seed"])])
    text = next(m for m in outputs(nb, "text/markdown") if m.startswith("## What it shows"))
    ok = np.asarray([v for v in ratios if np.isfinite(v) and v > 0])
    if len(ok):
        gm = float(np.exp(np.log(ok).mean()))
        assert f"geometric mean {gm:.2g}" in text, text
    assert "4 tests" in text
