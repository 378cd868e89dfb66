"""milr.sweep.shown_datasets: a figure shows a data set whose files are missing when every
record it needs is cached, and only then."""
from milr.store import Store
from milr.sweep import eta_star_tasks, shown_datasets


def tasks_of(name):
    return eta_star_tasks([name], [1], [8, 16], [0], {"step_budget": 20}, {"tol": 0.5})


def test_missing_files_shown_only_when_every_record_is_cached(tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("MILR_DATA_DIR", str(empty))  # only this directory is searched
    store = Store(tmp_path / "store")
    candidates = ["fashion-mnist", "gaussian", "mnist"]
    # nothing cached: only the always-available Gaussians
    assert shown_datasets(candidates, tasks_of, store) == ["gaussian"]
    fm = tasks_of("fashion-mnist")
    store.put(fm[0].kind, fm[0].record_config(), {"eta_star": 1.0})
    assert shown_datasets(candidates, tasks_of, store) == ["gaussian"]  # one of two cached
    store.put(fm[1].kind, fm[1].record_config(), {"eta_star": 2.0})
    assert shown_datasets(candidates, tasks_of, store) == ["fashion-mnist", "gaussian"]
    # a data set with no tasks at all is not "fully cached"
    assert shown_datasets(["mnist"], lambda name: [], store) == []

