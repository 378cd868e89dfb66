"""Bad input fails early with one clear error naming the parameter, the value and the range."""
from __future__ import annotations

import math
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from milr.config import SearchConfig, TrialConfig
from milr.data import CHANCE_ACCURACY, DATASETS, DataNotFoundError
from milr.sweep import eta_star_tasks, run_sweep
from milr.config import (check_datasets, check_datasets_available, check_device,
                         check_int_list, check_scheduler, check_workers, usable_cores)
from milr.validate import build_tasks, load_sweep_file, spec_from_preset, sweep_spec

GRID = {"datasets": ["gaussian"], "depths": [1, 2], "widths": [4, 8], "seeds": [0]}


# -- property-based: configurations -----------------------------------------------------------

anything = (st.integers(-5, 5000) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=4) | st.booleans() | st.none())


@settings(max_examples=300, deadline=None)
@given(dataset=st.sampled_from(DATASETS + ("imagenet",)), depth=anything, width=anything,
       threshold=st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=2),
       step_budget=anything, input_lr_scale=anything)
def test_trial_config_valid_or_clear_error(dataset, depth, width, threshold, step_budget,
                                           input_lr_scale):
    kw = dict(dataset=dataset, depth=depth, width=width, threshold=threshold,
              step_budget=step_budget, input_lr_scale=input_lr_scale)
    try:
        cfg = TrialConfig(**kw)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        # the message names one of the parameters we passed, and the offending value
        named = [k for k in kw if re.search(rf"\b{k}\b", msg)]
        assert named, msg
        v = kw[named[0]]
        shown = {repr(v), str(v)}
        if isinstance(v, float) and v.is_integer():
            shown.add(str(int(v)))  # 2.0 is accepted as the integer 2, and shown as such
        assert any(s in msg for s in shown), msg
        return
    # accepted: every field is in its documented range
    assert dataset in DATASETS
    assert isinstance(cfg.depth, int) and cfg.depth >= 1
    assert isinstance(cfg.width, int) and cfg.width >= 1
    assert isinstance(cfg.step_budget, int) and cfg.step_budget >= 1
    assert CHANCE_ACCURACY[dataset] < cfg.threshold < 1
    assert 0 <= cfg.input_lr_scale <= 1
    for v in (depth, width, step_budget):
        assert not isinstance(v, (bool, str)) and v is not None


@settings(max_examples=300, deadline=None)
@given(eta_lo=anything, eta_hi=anything, tol=anything, max_trials=anything)
def test_search_config_valid_or_clear_error(eta_lo, eta_hi, tol, max_trials):
    try:
        cfg = SearchConfig(eta_lo=eta_lo, eta_hi=eta_hi, tol=tol, max_trials=max_trials)
    except (ValueError, TypeError) as exc:
        assert re.search(r"\b(eta_lo|eta_hi|tol|max_trials)\b", str(exc)), str(exc)
        return
    assert 0 < cfg.eta_lo < cfg.eta_hi and math.isfinite(cfg.eta_hi)
    assert 0 < cfg.tol <= 10 and cfg.max_trials >= 2


@pytest.mark.parametrize("kw, pattern", [
    ({"depth": 0}, r"depth=0 must be an integer >= 1"),
    ({"width": -3}, r"width=-3 must be an integer >= 1"),
    ({"width": 2.5}, r"width=2.5 must be an integer"),
    ({"depth": "4"}, r"depth='4' must be an integer"),
    ({"threshold": 1.0}, r"threshold.*=1.0 must be a finite number in \(0.5, 1.0\)"),
    ({"threshold": 0.5}, r"threshold \(chance for gaussian is 0.5\)=0.5"),
    ({"dataset": "fashion-mnist", "threshold": 0.05}, r"chance for fashion-mnist is 0.1"),
    ({"step_budget": 0}, r"step_budget=0 must be an integer >= 1"),
    ({"dataset": "mnis"}, r"dataset='mnis' is not known; allowed: gaussian, fashion-mnist"),
])
def test_trial_config_messages(kw, pattern):
    base = {"dataset": "gaussian", "depth": 2, "width": 8}
    with pytest.raises((ValueError, TypeError), match=pattern):
        TrialConfig(**{**base, **kw})


@pytest.mark.parametrize("kw, pattern", [
    ({"eta_lo": 0.0}, r"eta_lo=0.0 must be a finite number in \(0.0, inf\]"),
    ({"eta_lo": 2.0, "eta_hi": 1.0}, r"eta_hi=1.0 must be > eta_lo=2.0"),
    ({"eta_hi": math.inf}, r"eta_hi=inf must be a finite number"),
    ({"max_trials": 0}, r"max_trials=0 must be an integer >= 2"),
])
def test_search_config_messages(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        SearchConfig(**kw)


# -- grids ------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(anything, max_size=5) | anything)
def test_int_lists_valid_or_clear_error(values):
    try:
        out = check_int_list("depths", values)
    except (ValueError, TypeError) as exc:
        assert str(exc).startswith("depths"), str(exc)
        return
    assert out and all(isinstance(v, int) and v >= 1 for v in out)
    assert len(set(out)) == len(out)


@pytest.mark.parametrize("call, pattern", [
    (lambda: check_int_list("widths", []), r"widths=\[\] must list at least one integer >= 1"),
    (lambda: check_int_list("widths", [8, 0]), r"widths\[1\]=0 must be an integer >= 1"),
    (lambda: check_int_list("depths", [2, 2]), r"depths=\[2, 2\] repeats \[2\]"),
    (lambda: check_datasets(["gaussian", "mnist2"]), r"datasets\[1\]='mnist2' is not known"),
    (lambda: check_datasets([]), r"datasets=\[\] must list at least one of"),
    (lambda: check_device("gpu"), r"device='gpu' must be 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (lambda: check_workers(0), r"workers .*=0 must be an integer >= 1"),
    (lambda: check_workers("many"), r"workers .*='many'"),
    (lambda: check_scheduler("10.0.0.1:8786"), r"scheduler='10.0.0.1:8786' must be a dask"),
    (lambda: eta_star_tasks(["gaussian"], [1], [8], [-1]), r"seeds\[0\]=-1 must be an integer >= 0"),
    (lambda: eta_star_tasks(["gaussian"], [1], [8], []), r"seeds=\[\] must list"),
    (lambda: eta_star_tasks(["gaussian"], [1], [8], [0], trial={"depth": 3}),
     r"trial\['depth'\] is a grid axis"),
    (lambda: eta_star_tasks(["gaussian"], [1], [8], [0], trial={"stepbudget": 3}),
     r"stepbudget"),
    (lambda: eta_star_tasks(["gaussian"], [1], [8], [0], min_width_over_depth=-1),
     r"min_width_over_depth=-1.0"),
])
def test_grid_messages(call, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        call()


def test_workers_auto_is_the_usable_cores():
    assert check_workers("auto") == usable_cores() >= 1
    assert check_workers(3) == 3 and check_workers("2") == 2
    assert check_device("cuda:1") == "cuda:1"
    assert check_scheduler("tcp://127.0.0.1:8786") == "tcp://127.0.0.1:8786"


def test_missing_data_set_lists_the_paths_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        check_datasets_available(["gaussian", "cifar10"])
    tasks = eta_star_tasks(["cifar10"], [1], [8], [0])
    with pytest.raises(DataNotFoundError, match="Searched: .*nowhere"):
        run_sweep(tasks, progress=False)  # fails before computing (or writing) anything


@pytest.mark.parametrize("kw, pattern", [
    ({"workers": 0}, r"workers .*=0"),
    ({"device": "gpu0"}, r"device='gpu0'"),
    ({"errors": "ignore"}, r"errors='ignore' must be one of"),
    ({"torch_threads": 0}, r"torch_threads=0"),
    ({"dask_workers": 2, "scheduler": "tcp://h:1"}, r"at most one of scheduler, dask_workers"),
    ({"dask_workers": 2, "workers": 4}, r"workers=4 is for the local pool"),
    ({"dask_workers": 0}, r"dask_workers=0"),
    ({"scheduler": "localhost"}, r"scheduler='localhost'"),
])
def test_run_sweep_arguments(tmp_store, kw, pattern):
    tasks = eta_star_tasks(["gaussian"], [1], [8], [0])
    with pytest.raises((ValueError, TypeError), match=pattern):
        run_sweep(tasks, tmp_store, progress=False, **kw)
    assert not tmp_store.root.exists()  # nothing computed, nothing written


def test_run_sweep_rejects_non_tasks(tmp_store):
    with pytest.raises(TypeError, match=r"tasks\[1\]=.*task protocol"):
        run_sweep(eta_star_tasks(["gaussian"], [1], [8], [0]) + ["not a task"], tmp_store)


# -- sweep files ------------------------------------------------------------------------------

def write(tmp_path, text: str):
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return p


def test_sweep_file_round_trip(tmp_path):
    p = write(tmp_path, yaml.safe_dump({**GRID, "trial": {"step_budget": 50,
                                                          "input_lr_scale": [0.01, 1.0]},
                                        "search": {"tol": 0.5}, "store": "results"}))
    spec = load_sweep_file(p)
    tasks = build_tasks(spec)
    # 2 input-layer factors x 1 data set x 2 depths x 2 widths x 1 seed, width >= depth
    assert len(tasks) == 8
    assert {t.trial.input_lr_scale for t in tasks} == {0.01, 1.0}
    assert all(t.trial.step_budget == 50 and t.search.tol == 0.5 for t in tasks)
    assert spec.store == str(tmp_path / "results")  # relative to the sweep file


def test_min_width_over_depth_filters_the_grid(tmp_path):
    spec = sweep_spec({**GRID, "depths": [1, 8], "widths": [4, 8, 16]})
    assert sorted((t.trial.depth, t.trial.width) for t in build_tasks(spec)) == [
        (1, 4), (1, 8), (1, 16), (8, 8), (8, 16)]
    with pytest.raises(ValueError, match="the grid is empty"):
        sweep_spec({**GRID, "depths": [8], "widths": [4]})


@pytest.mark.parametrize("text, pattern", [
    ("depths: [1]\nwidths: [4]\nseeds: [0]", r"missing required key 'datasets'"),
    ("datasets: [gaussian]\ndepths: [0]\nwidths: [4]\nseeds: [0]", r"depths\[0\]=0 must be"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [four]\nseeds: [0]", r"widths\[0\]='four'"),
    ("datasets: [gausian]\ndepths: [1]\nwidths: [4]\nseeds: [0]", r"'gausian' is not known"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\ndepht: 3",
     r"unknown key\(s\) \['depht'\]; allowed: kind"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\ntrial: {threshold: 0.3}",
     r"threshold \(chance for gaussian is 0.5\)=0.3"),
    ("datasets: [fashion-mnist, gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\n"
     "trial: {threshold: 0.4}", r"chance for gaussian is 0.5\)=0.4"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\nsearch: {eta_lo: 5, eta_hi: 1}",
     r"eta_hi=1.0 must be > eta_lo=5.0"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\nsearch: {etalo: 1}",
     r"search.etalo is not a known parameter; allowed: eta_lo"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\ntrial: {step_budget: []}",
     r"trial.step_budget=\[\] must list at least one value"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\nkind: lambda",
     r"kind='lambda' is not known; allowed: eta_star, sharpness"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\ndevice: gpu",
     r"device='gpu'"),
    ("datasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\noptions: {tol: 1}",
     r"options are for kind: sharpness"),
    ("kind: sharpness\ndatasets: [gaussian]\ndepths: [1]\nwidths: [4]\nseeds: [0]\n"
     "trial: {step_budget: 3}", r"trial and search are for kind: eta_star"),
    ("preset: huge", r"preset='huge' is not known; allowed: quick"),
    ("- a\n- b", r"a sweep must be a mapping"),
    ("datasets: [gaussian\n", r"not valid YAML"),
])
def test_sweep_file_errors_name_file_and_key(tmp_path, text, pattern):
    p = write(tmp_path, text)
    with pytest.raises((ValueError, TypeError), match=pattern) as info:
        load_sweep_file(p)
    assert str(p) in str(info.value)


def test_missing_sweep_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_sweep_file(tmp_path / "nope.yaml")


def test_yaml_objects_are_not_constructed(tmp_path):
    p = write(tmp_path, "datasets: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_sweep_file(p)


def test_presets_are_valid_sweeps():
    for name in ("quick", "paper", "smoke"):
        assert build_tasks(spec_from_preset(name))
    spec = spec_from_preset("quick", datasets=["gaussian"], trial={"step_budget": 10})
    tasks = build_tasks(spec)
    assert {t.trial.dataset for t in tasks} == {"gaussian"}
    assert {t.trial.step_budget for t in tasks} == {10}
    assert {t.trial.n_val for t in tasks} == {1000}  # the rest of the preset's trial is kept


def test_sharpness_sweep_file(tmp_path):
    pytest.importorskip("milr.sharpness")
    p = write(tmp_path, "kind: sharpness\ndatasets: [gaussian]\ndepths: [1, 2]\nwidths: [8]\n"
                        "seeds: [0, 1]\noptions: {n_subset: [100, 200], solver: lanczos}")
    tasks = build_tasks(load_sweep_file(p))
    assert len(tasks) == 2 * 2 * 2 and {t.kind for t in tasks} == {"sharpness"}
    assert {t.n_subset for t in tasks} == {100, 200}
    p = write(tmp_path, "kind: sharpness\ndatasets: [gaussian]\ndepths: [1]\nwidths: [8]\n"
                        "seeds: [0]\noptions: {nsubset: 3}")
    with pytest.raises(ValueError, match="nsubset"):
        load_sweep_file(p)
