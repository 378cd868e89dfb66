"""Sweeps: resume, failures, corrupt records, concurrency, backends (serial, pool, dask),
reproducibility across processes, progress and logging."""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from milr.search import eta_star
from milr.store import CorruptRecordWarning, Store
from milr.sweep import (EtaStarTask, SweepError, SweepFailureWarning, eta_star_tasks,
                        execute_task, load_results, run_sweep, sweep_status, task_units, largest_first, work_hint, pinned_threads)
from milr.validate import build_tasks, load_sweep_file, spec_from_preset

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class FakeTask:
    """A task of the protocol with a known answer (n**2); ``fail``/``sleep``/``log`` are not
    part of its configuration, so a fixed rerun maps to the same record."""

    n: int
    fail: bool = False
    interrupt: bool = False
    sleep: float = 0.0
    log: str | None = None
    kind = "fake"

    def record_config(self) -> dict:
        return {"n": self.n}

    def compute(self, device="cpu") -> dict:
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{self.n}\n")
        time.sleep(self.sleep)
        if self.interrupt:
            raise KeyboardInterrupt
        if self.fail:
            raise RuntimeError(f"task {self.n} failed on purpose")
        return {"square": float(self.n ** 2), "device": device}


def computed(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def fake(ns, tmp_path, **kw):
    return [FakeTask(n, log=str(tmp_path / "log.txt"), **kw) for n in ns]


def tiny_eta_tasks(seeds=(0,), widths=(16,)):
    return eta_star_tasks(["gaussian"], [1, 2], list(widths), list(seeds),
                          trial={"step_budget": 60, "eval_every": 20, "n_val": 200,
                                 "threshold": 0.85, "input_lr_scale": 0.1},
                          search={"eta_lo": 1e-2, "eta_hi": 30.0, "tol": 0.5,
                                  "scan_factor": 8.0})


def comparable(store: Store, tasks) -> dict:
    """Record contents that must not depend on where or when they were computed."""
    out = {}
    for t in tasks:
        rec = store.get(t.kind, t.record_config())
        assert rec is not None, t
        res = {k: v for k, v in rec["result"].items() if "wall_time" not in k}
        if "trials" in res:
            res["trials"] = [{k: v for k, v in tr.items() if k != "wall_time"}
                             for tr in res["trials"]]
        out[rec["key"]] = json.dumps({"config": rec["config"], "result": res}, sort_keys=True)
    return out


# -- resume, failures, corruption -------------------------------------------------------------

def test_rerun_skips_finished_records(tmp_store, tmp_path):
    log = tmp_path / "log.txt"
    df = run_sweep(fake([1, 2, 3], tmp_path), tmp_store, progress=False, torch_threads=None)
    assert list(df["square"]) == [1.0, 4.0, 9.0] and computed(log) == [1, 2, 3]
    df = run_sweep(fake([1, 2, 3, 4], tmp_path), tmp_store, progress=False,
                   torch_threads=None)
    assert computed(log) == [1, 2, 3, 4]  # only the missing one
    assert list(df["n"]) == [1, 2, 3, 4]
    run_sweep(fake([2, 3], tmp_path), tmp_store, recompute=True, progress=False,
              torch_threads=None)
    assert computed(log) == [1, 2, 3, 4, 2, 3]
    assert sweep_status(fake([1, 2, 3, 4, 5], tmp_path), tmp_store).to_dict() == {
        "total": 5, "done": 4, "pending": 1, "failed": 0, "corrupt": 0}


def test_repeated_tasks_are_computed_once(tmp_store, tmp_path):
    df = run_sweep(fake([5, 5, 6], tmp_path), tmp_store, progress=False, torch_threads=None)
    assert computed(tmp_path / "log.txt") == [5, 6] and len(df) == 2


def test_failed_task_is_recorded_and_retried(tmp_store, tmp_path):
    tasks = fake([1, 3], tmp_path) + fake([2], tmp_path, fail=True)
    with pytest.warns(SweepFailureWarning, match="1 of 3 tasks failed.*failed on purpose"):
        df = run_sweep(tasks, tmp_store, progress=False, torch_threads=None)
    assert list(df["n"]) == [1, 3]  # the others finished
    st = sweep_status(tasks, tmp_store)
    assert (st.done, st.failed, st.pending) == (2, 1, 0)
    note = tmp_store.get_failure("fake", {"n": 2})
    assert "RuntimeError: task 2 failed on purpose" in note["failure"]["error"]
    assert "Traceback" in note["failure"]["traceback"] and note["meta"]["device"] == "cpu"
    df = run_sweep(fake([1, 2, 3], tmp_path), tmp_store, progress=False, torch_threads=None)
    assert list(df["square"]) == [1.0, 4.0, 9.0]
    assert sweep_status(tasks, tmp_store).failed == 0
    assert computed(tmp_path / "log.txt") == [1, 3, 2, 2]


def test_errors_raise_stops_the_sweep(tmp_store, tmp_path):
    tasks = fake([1], tmp_path) + fake([2], tmp_path, fail=True) + fake([3], tmp_path)
    with pytest.raises(SweepError, match="fake n=2 failed: RuntimeError") as info:
        run_sweep(tasks, tmp_store, progress=False, torch_threads=None, errors="raise")
    assert info.value.failures == [("fake n=2", "RuntimeError: task 2 failed on purpose")]
    assert computed(tmp_path / "log.txt") == [1, 2]  # stopped before task 3
    assert tmp_store.state("fake", {"n": 1}) == "done"
    assert tmp_store.state("fake", {"n": 2}) == "failed"


def test_interrupt_keeps_finished_records(tmp_store, tmp_path):
    tasks = fake([1, 2], tmp_path) + fake([3], tmp_path, interrupt=True) + fake([4], tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tasks, tmp_store, progress=False, torch_threads=None)
    st = sweep_status(tasks, tmp_store)
    assert (st.done, st.pending, st.failed) == (2, 2, 0)  # an interrupt is not a failure
    run_sweep(fake([1, 2, 3, 4], tmp_path), tmp_store, progress=False, torch_threads=None)
    assert computed(tmp_path / "log.txt") == [1, 2, 3, 3, 4]


def test_corrupt_record_is_reported_and_recomputed(tmp_store, tmp_path):
    tasks = fake([1, 2], tmp_path)
    run_sweep(tasks, tmp_store, progress=False, torch_threads=None)
    path = tmp_store.path("fake", {"n": 2})
    path.write_text(path.read_text()[:40])  # truncated
    assert sweep_status(tasks, tmp_store).corrupt == 1
    with pytest.warns(CorruptRecordWarning, match=str(path)):
        assert len(load_results(tasks, tmp_store)) == 1  # never read as a result
    with pytest.warns(CorruptRecordWarning, match="moved corrupt record"):
        df = run_sweep(tasks, tmp_store, progress=False, torch_threads=None)
    assert list(df["square"]) == [1.0, 4.0]
    assert computed(tmp_path / "log.txt") == [1, 2, 2]
    assert len(list((path.parent / "corrupt").glob("*.json"))) == 1


def _sweep_in_child(root, log, ns):
    run_sweep([FakeTask(n, sleep=0.02, log=log) for n in ns], Store(root), progress=False,
              torch_threads=None)


def test_two_sweeps_on_one_store(tmp_store, tmp_path):
    log = str(tmp_path / "log.txt")
    ctx = mp.get_context("fork")  # fake tasks use no torch: fork is safe here
    procs = [ctx.Process(target=_sweep_in_child, args=(str(tmp_store.root), log, ns))
             for ns in (range(0, 30), range(29, -1, -1))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    tasks = [FakeTask(n) for n in range(30)]
    assert sweep_status(tasks, tmp_store).done == 30
    assert tmp_store.verify() == [] and not tmp_store.stale_temp_files()
    assert [r["result"]["square"] for r in sorted(tmp_store.records("fake"),
                                                  key=lambda r: r["config"]["n"])] == [
        float(n * n) for n in range(30)]
    # each sweep claims a task just before computing it and skips what the other has
    # finished or is computing: every task was computed exactly once
    assert sorted(computed(Path(log))) == list(range(30))
    assert tmp_store.claims() == []


# -- real tasks: reproducibility across processes and backends --------------------------------

def test_one_task_protocol_and_metadata(tmp_store):
    (task,) = tiny_eta_tasks()[:1]
    assert isinstance(task, EtaStarTask) and task.kind == "eta_star"
    cfg = task.record_config()
    assert cfg["seed"] == 0 and cfg["depth"] == 1 and cfg["eta_hi"] == 30.0
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's setting; the task itself runs on 1 thread
    try:
        df = run_sweep([task], tmp_store, progress=False)
        assert torch.get_num_threads() == 2  # the pinning is undone afterwards
    finally:
        torch.set_num_threads(threads_before)
    rec = tmp_store.get("eta_star", cfg)
    meta = rec["meta"]

    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__
    assert meta["backend"] == "serial" and meta["hardware"]["torch_threads"] == 1
    assert meta["wall_time"] > 0 and meta["code_version"].startswith("milr")
    assert df.loc[0, "eta_star"] == rec["result"]["eta_star"] and df.loc[0, "dw"] == 16


def test_progress_callback_and_debug_log_do_not_change_results(caplog):
    task = tiny_eta_tasks(widths=(32,))[1]
    plain = execute_task(task)
    seen = []
    with caplog.at_level(logging.DEBUG, logger="milr.train"):
        watched = execute_task(task, on_trial=seen.append)
    assert plain["ok"] and watched["ok"]
    a, b = plain["result"], watched["result"]
    assert a["eta_star"] == b["eta_star"] and a["n_trials"] == b["n_trials"] == len(seen)
    assert [t["eta"] for t in a["trials"]] == [r.eta for r in seen]
    trial_lines = [r for r in caplog.records if r.name == "milr.train"
                   and r.getMessage().startswith("trial ")]
    assert len(trial_lines) == a["n_trials"]  # one debug line per trial


def test_progress_bars_and_quiet_mode(tmp_path, capsys):
    run_sweep(fake([1, 2], tmp_path), Store(tmp_path / "a"), progress=True,
              torch_threads=None)
    err = capsys.readouterr().err
    assert "fake (0 cached)" in err and "2/2" in err
    run_sweep(fake([1, 2, 3], tmp_path), Store(tmp_path / "a"), progress=True,
              torch_threads=None)
    assert "fake (2 cached)" in capsys.readouterr().err
    run_sweep(fake([4], tmp_path), Store(tmp_path / "a"), progress=False, torch_threads=None)
    assert capsys.readouterr().err == ""


def _sharpness_tasks():
    sh = pytest.importorskip("milr.sharpness")
    return sh.sharpness_tasks(["gaussian"], [1, 2], [16], [0], n_subset=200)


def test_backends_give_identical_records(tmp_path):
    """Serial in this process, a 2-process pool and a 2-worker dask LocalCluster (127.0.0.1)
    produce the same eta* and lambda_1 records (only wall times differ)."""
    tasks = tiny_eta_tasks() + _sharpness_tasks()
    stores = {b: Store(tmp_path / b) for b in ("serial", "pool", "dask")}
    run_sweep(tasks, stores["serial"], progress=False)
    log_file = tmp_path / "debug.log"  # what `milr ... --log-file` sets up
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    milr_log = logging.getLogger("milr")
    milr_log.addHandler(handler)
    try:
        run_sweep(tasks, stores["pool"], progress=False, workers=2)
    finally:
        milr_log.removeHandler(handler)
        handler.close()
    run_sweep(tasks, stores["dask"], progress=False, dask_workers=2)
    ref = comparable(stores["serial"], tasks)
    assert len(ref) == len(tasks) == 4
    for b in ("pool", "dask"):
        assert comparable(stores[b], tasks) == ref, b
        metas = [stores[b].get(t.kind, t.record_config())["meta"] for t in tasks]
        assert {m["backend"] for m in metas} == {b}
        assert {m["hardware"]["torch_threads"] for m in metas} == {1}
    # and each eta* search really ran (not a trivially equal empty result)
    res = [stores["dask"].get(t.kind, t.record_config())["result"] for t in tasks]
    assert all(r["n_trials"] >= 3 for r in res[:2])
    # the pool workers appended one debug line per trial to the parent's log file
    lines = [x for x in log_file.read_text().splitlines() if x.startswith("trial ")]
    assert len(lines) == sum(r["n_trials"] for r in res[:2])
    assert all(r["lambda_1"] > 0 and r["lambda_1_converged"] for r in res[2:])


# -- one implementation: presets, sweep files, make data --------------------------------------

def test_quick_yaml_is_the_quick_preset():
    from_file = build_tasks(load_sweep_file(ROOT / "configs" / "quick.yaml"))
    from_preset = build_tasks(spec_from_preset("quick"))
    assert [t.record_config() for t in from_file] == [t.record_config() for t in from_preset]
    assert len(from_file) == 3 * 24 * 3  # 3 data sets x 24 (d, w) with w >= d x 3 seeds


def test_quick_sharpness_yaml_is_the_lambda_1_half_of_make_data():
    pytest.importorskip("milr.sharpness")
    a = build_tasks(load_sweep_file(ROOT / "configs" / "quick_sharpness.yaml"))
    b = build_tasks(spec_from_preset("quick", kind="sharpness"))
    assert [t.record_config() for t in a] == [t.record_config() for t in b]
    assert {t.input_lr_scale for t in a} == {0.01} and len(a) == 3 * 24 * 3


@pytest.mark.parametrize("name", ["smoke", "paper"])
def test_preset_yaml_files(name):
    a = build_tasks(load_sweep_file(ROOT / "configs" / f"{name}.yaml"))
    b = build_tasks(spec_from_preset(name))
    assert [t.record_config() for t in a] == [t.record_config() for t in b]


def test_load_results_only_returns_asked_configurations(tmp_store, tmp_path):
    run_sweep(fake([1, 2, 3], tmp_path), tmp_store, progress=False, torch_threads=None)
    df = load_results([FakeTask(3), FakeTask(1), FakeTask(9)], tmp_store)
    assert list(df["n"]) == [3, 1] and list(df["square"]) == [9.0, 1.0]
    assert math.isclose(df["square"].sum(), 10.0)


def test_existing_scheduler_by_address(tmp_path):
    """``scheduler="tcp://..."`` (``--scheduler``) sends the tasks to a running cluster."""
    from dask.distributed import LocalCluster

    tasks = tiny_eta_tasks()[:1]
    ref, remote = Store(tmp_path / "ref"), Store(tmp_path / "remote")
    run_sweep(tasks, ref, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        run_sweep(tasks, remote, progress=False, scheduler=cluster.scheduler_address)
        # a data set missing on the workers is reported (with the paths the workers
        # searched) before any task runs
        from milr.data import available_datasets

        if "cifar10" not in available_datasets():
            with pytest.raises(Exception, match="data set 'cifar10'.*Searched"):
                run_sweep(eta_star_tasks(["cifar10"], [1], [8], [0]), remote,
                          progress=False, scheduler=cluster.scheduler_address)
            assert not (remote.root / "eta_star" / "failed").exists()
    assert comparable(remote, tasks) == comparable(ref, tasks)
    assert remote.get(tasks[0].kind, tasks[0].record_config())["meta"]["backend"] == "dask"


# -- units: the seeds of a configuration computed together (batched search) -----------------

def tiny_batched_tasks(seeds=(0, 1), dtype="float64"):
    return eta_star_tasks(["gaussian"], [1, 2], [16], list(seeds),
                          trial={"step_budget": 60, "eval_every": 20, "n_val": 200,
                                 "threshold": 0.85, "input_lr_scale": 0.1, "dtype": dtype},
                          search={"eta_lo": 1e-2, "eta_hi": 30.0, "tol": 0.5,
                                  "scan_factor": 8.0, "method": "batched", "k": 2})


def test_task_units_group_the_seeds_of_batched_configurations():
    batched = tiny_batched_tasks(seeds=(0, 1, 2))  # d=1 seeds 0-2, then d=2 seeds 0-2
    units = task_units(batched)
    assert [[(t.trial.depth, t.seed) for t in u] for u in units] == [
        [(1, 0), (1, 1), (1, 2)], [(2, 0), (2, 1), (2, 2)]]
    assert [len(u) for u in task_units(batched, group_seeds=False)] == [1] * 6
    bisect = tiny_eta_tasks(seeds=(0, 1))  # Algorithm 1: one trial at a time, never grouped
    assert bisect[0].search.method == "bisect"
    assert [len(u) for u in task_units(bisect)] == [1] * 4
    # tasks without group_key (FakeTask) are units of their own; order is kept
    mixed = [FakeTask(1), batched[0], FakeTask(2), batched[1]]
    assert task_units(mixed) == [[mixed[0]], [batched[0], batched[1]], [mixed[2]]]


def test_grouped_sweep_records_equal_one_batched_call_per_configuration(tmp_path):
    """A unit's records are exactly what one eta_star call gives for all its seeds in one
    batch; in float64 they also equal one call per seed (no rounding-level difference is
    amplified in these tiny nets), and the metadata says how the unit ran."""
    tasks = tiny_batched_tasks()
    grouped, single = Store(tmp_path / "grouped"), Store(tmp_path / "single")
    run_sweep(tasks, grouped, progress=False)
    run_sweep(tasks, single, progress=False, group_seeds=False)
    for d in (1, 2):
        mine = [t for t in tasks if t.trial.depth == d]
        with pinned_threads(1):  # as run_sweep runs it
            direct = eta_star(mine[0].trial, mine[0].search, seeds=[0, 1])
        for t, r in zip(mine, direct):
            rec = grouped.get(t.kind, t.record_config())
            assert rec["result"]["eta_star"] == r.eta_star
            assert rec["result"]["trials"][0]["eta"] == r.trials[0]["eta"]
            assert rec["result"]["n_trials"] == r.n_trials >= 3
            assert rec["meta"]["group_size"] == 2
            assert rec["meta"]["wall_time"] == pytest.approx(rec["meta"]["group_wall_time"] / 2)
            alone = single.get(t.kind, t.record_config())
            assert "group_size" not in alone["meta"]
            assert alone["result"]["eta_star"] == r.eta_star
            assert alone["result"]["bracket_hi"] == r.bracket_hi


@dataclass(frozen=True)
class FakeGroupTask(FakeTask):
    """FakeTask whose tasks of equal ``n % 10`` form a unit; a unit containing a ``fail``
    task raises as a whole."""

    def group_key(self):
        return ("fakegroup", self.n % 10)

    @staticmethod
    def compute_group(tasks, device="cpu"):
        if any(t.fail for t in tasks):
            raise RuntimeError("unit failed on purpose")
        return [{"square": float(t.n ** 2), "unit": [u.n for u in tasks]} for t in tasks]


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_unit_fails_each_of_its_tasks_and_keeps_the_others(tmp_store, workers):
    tasks = [FakeGroupTask(1), FakeGroupTask(11), FakeGroupTask(2), FakeGroupTask(12, fail=True),
             FakeGroupTask(3)]
    with pytest.warns(SweepFailureWarning, match="2 of 5 tasks failed"):
        df = run_sweep(tasks, tmp_store, progress=False, workers=workers)
    assert sorted(df["n"]) == [1, 3, 11]
    rec = tmp_store.get("fake", {"n": 11})
    assert rec["result"] == {"square": 121.0, "unit": [1, 11]}
    assert rec["meta"]["group_size"] == 2
    for n in (2, 12):
        assert tmp_store.state("fake", {"n": n}) == "failed"
        note = tmp_store.get_failure("fake", {"n": n})
        assert "unit failed on purpose" in note["failure"]["error"]
    # the rerun retries only the failed unit (now fixed) and keeps the rest
    df = run_sweep([FakeGroupTask(n) for n in (1, 11, 2, 12, 3)], tmp_store, progress=False)
    assert sorted(df["n"]) == [1, 2, 3, 11, 12]
    assert tmp_store.get("fake", {"n": 12})["result"]["unit"] == [2, 12]


def test_errors_raise_records_every_seed_of_the_failing_unit(tmp_store):
    tasks = [FakeGroupTask(1), FakeGroupTask(11, fail=True), FakeGroupTask(21)]
    with pytest.raises(SweepError, match="unit failed on purpose") as info:
        run_sweep(tasks, tmp_store, progress=False, errors="raise")
    assert [tmp_store.state("fake", {"n": n}) for n in (1, 11, 21)] == ["failed"] * 3
    assert len(info.value.failures) == 3


def test_pool_starts_the_largest_units_first():
    tasks = eta_star_tasks(["gaussian", "fashion-mnist"], [1, 4], [32, 256], [0, 1],
                           search={"method": "batched"})
    units = largest_first(task_units(tasks))
    # weights of the network: n0 w + (d - 1) w^2, n0 = 784 (Fashion-MNIST) or 100 (Gaussian)
    assert work_hint(units[0][0]) == 784 * 256 + 3 * 256 ** 2
    hints = [work_hint(u[0]) for u in units]
    assert hints == sorted(hints, reverse=True) and len(units) == 8
    assert [(u[0].trial.dataset, u[0].trial.depth, u[0].trial.width) for u in units[:3]] == [
        ("fashion-mnist", 4, 256), ("gaussian", 4, 256), ("fashion-mnist", 1, 256)]
    assert work_hint(units[-1][0]) == 100 * 32
    assert work_hint(FakeTask(3)) == 0.0  # no network: left where it is
    fakes = [[FakeTask(1)], [FakeTask(2)]]
    assert largest_first(fakes) == fakes


def test_units_run_the_same_on_every_backend(tmp_path):
    """The seeds of a batched configuration, as one unit, give the same records serially, in
    a 2-process pool and on a 2-worker dask LocalCluster."""
    tasks = tiny_batched_tasks(dtype="float32")
    stores = {b: Store(tmp_path / b) for b in ("serial", "pool", "dask")}
    run_sweep(tasks, stores["serial"], progress=False)
    run_sweep(tasks, stores["pool"], progress=False, workers=2)
    run_sweep(tasks, stores["dask"], progress=False, dask_workers=2)
    ref = comparable(stores["serial"], tasks)
    assert len(ref) == 4
    for b in ("pool", "dask"):
        assert comparable(stores[b], tasks) == ref, b
        metas = [stores[b].get(t.kind, t.record_config())["meta"] for t in tasks]
        assert {m["backend"] for m in metas} == {b} and {m["group_size"] for m in metas} == {2}


def test_run_sweep_hands_the_pool_its_units_largest_first(tmp_store, monkeypatch):
    import milr.sweep as sweep

    seen = []
    monkeypatch.setattr(sweep, "_run_pool",
                        lambda units, *a, **k: seen.extend([t.trial.width for t in u]
                                                           for u in units))
    tasks = eta_star_tasks(["gaussian"], [1], [16, 64, 32], [0, 1], search={"method": "batched"})
    run_sweep(tasks, tmp_store, progress=False, workers=2)
    assert seen == [[64, 64], [32, 32], [16, 16]]


@pytest.mark.parametrize("kw, what", [
    (dict(trial={"lr": 1}), r"trial\['lr'\] is not a parameter of TrialConfig; allowed: "
                            r"threshold, batch_size, step_budget, eval_every, n_val, "),
    (dict(search={"tol": 0.2, "eta_max": 3}), r"search\['eta_max'\] is not a parameter of "
                                              r"SearchConfig; allowed: eta_lo, eta_hi, tol, "),
])
def test_unknown_trial_or_search_names_list_the_allowed_ones(kw, what):
    with pytest.raises(ValueError, match=what):
        eta_star_tasks(["gaussian"], [1], [8], [0], **kw)
