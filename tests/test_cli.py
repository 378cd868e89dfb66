"""The command line: help, bad input, sweeps and status, make data's path, and sweeps killed
mid-run (SIGINT, SIGKILL) that keep every finished record and complete on rerun."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from milr.cli import main
from milr.store import Store
from milr.sweep import sweep_status
from milr.validate import build_tasks, load_sweep_file

ROOT = Path(__file__).resolve().parent.parent
TINY = ("kind: eta_star\ndatasets: [gaussian]\ndepths: [1]\nwidths: [16]\nseeds: {seeds}\n"
        "trial: {{step_budget: 60, eval_every: 20, n_val: 200, threshold: 0.85, "
        "input_lr_scale: 0.1}}\nsearch: {{eta_lo: 0.01, eta_hi: 30.0, tol: 0.5, "
        "scan_factor: 8.0}}\n")
ETA = ["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "16",
       "--step-budget", "60", "--eval-every", "20", "--n-val", "200", "--threshold", "0.85",
       "--input-lr-scale", "0.1", "--eta-lo", "0.01", "--tol", "0.5", "--scan-factor", "8"]


def sweep_file(tmp_path, seeds) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY.format(seeds=list(seeds)))
    return p


# -- help and entry points --------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["eta-star", "sharpness", "sweep", "status", "data"])
def test_help_of_each_command(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"milr {cmd}" in out and "example" in out


def test_entry_points():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("milr") == "milr.cli:main"
    r = subprocess.run([sys.executable, "-m", "milr", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    for cmd in ("eta-star", "sharpness", "sweep", "status", "data"):
        assert cmd in r.stdout


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, pattern", [
    (["eta-star", "--dataset", "gaussian", "--depth", "0", "--width", "8"],
     r"depth=0 must be an integer >= 1"),
    (["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8",
      "--threshold", "0.3"], r"threshold \(chance for gaussian is 0.5\)=0.3"),
    (["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8", "--eta-lo", "2",
      "--eta-hi", "1"], r"eta_hi=1.0 must be > eta_lo=2.0"),
    (["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8", "--step-budget",
      "-5"], r"step_budget=-5 must be an integer >= 1"),
    (["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8", "--seeds", "-1"],
     r"seed.*=-1 must be an integer >= 0"),
    (["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8", "--workers", "0"],
     r"workers .*=0"),
    (["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8", "--device", "gpu"],
     r"device='gpu'"),
    (["sharpness", "--dataset", "gaussian", "--depth", "1", "--width", "0"],
     r"width=0 must be an integer >= 1"),
    (["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8", "--n-val",
      "10000000"], r"n_val=10000000 must be an integer in \[1, 2000\]: gaussian has 2000 "
     r"validation rows"),
    (["sharpness", "--dataset", "gaussian", "--depth", "1", "--width", "8", "--n-subset",
      "18001"], r"n_subset=18001 must be an integer in \[1, 18000\]: gaussian has 18000 "
     r"training rows"),
    (["sweep", "nope.yaml"], r"sweep file 'nope.yaml' not found"),
    (["data", "--preset", "huge"], r"preset='huge' is not known"),
])
def test_bad_input_exits_2_with_one_clear_line(argv, pattern, capsys, tmp_path):
    assert main(argv + (["--store", str(tmp_path)] if argv[0] != "status" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"milr {argv[0]}: error: "), err
    assert re.search(pattern, err), err
    assert "Traceback" not in err and not any(tmp_path.iterdir())  # nothing computed


def test_argparse_rejects_unknown_dataset(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eta-star", "--dataset", "imagenet", "--depth", "1", "--width", "8"])
    assert info.value.code == 2
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--width", "2.5"], "argument --width: '2.5' is not an integer >= 1"),
    (["--depth", "two"], "argument --depth: 'two' is not an integer >= 1"),
    (["--seeds", "0", "x"], "argument --seeds: 'x' is not an integer >= 0"),
    (["--tol", "tight"], "argument --tol: 'tight' is not a number"),
    (["--step-budget", "1e3"], "argument --step-budget: '1e3' is not an integer"),
    (["--dataset", "gausian"], "argument --dataset: invalid choice: 'gausian' (choose from "
                               "'gaussian', 'fashion-mnist'"),
    (["--errors", "stop"], "argument --errors: invalid choice: 'stop' (choose from "
                           "'continue', 'raise')"),
])
def test_option_errors_are_one_line_with_what_is_allowed(argv, message, capsys):
    base = {"--dataset": "gaussian", "--depth": "1", "--width": "8"}
    for k in argv[::2]:
        base.pop(k, None)
    full = ["eta-star"] + [x for kv in base.items() for x in kv] + argv
    with pytest.raises(SystemExit) as info:
        main(full)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith(f"milr eta-star: error: {message}"), err
    assert err.rstrip().endswith("; see milr eta-star --help"), err


def test_missing_subcommand_or_argument_is_one_line(capsys):
    for argv, prog in (([], "milr"), (["sweep"], "milr sweep")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1, err
        assert "the following arguments are required" in err and f"see {prog} --help" in err


def test_help_is_plain_and_says_where_presets_differ(capsys):
    def help_of(cmd):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        return " ".join(capsys.readouterr().out.split())

    eta = help_of("eta-star")
    assert "TrialConfig." not in eta and "SearchConfig." not in eta
    assert "not a preset's" in eta
    assert "--step-budget N SGD steps before a trial fails (default 400; paper preset: 938)" in eta
    assert ("--k N batched only: learning rates per refinement round, in [1, 64] (default 3; "
            "quick preset: 2, paper preset: 8)") in eta
    assert "--method NAME bisect (Algorithm 1" in eta and "also measures eta_min" in eta
    assert "Fashion-MNIST 0.75" in eta and "MNIST 0.925" in eta  # the real defaults of t
    sharp = help_of("sharpness")
    assert "SharpnessTask." not in sharp
    assert ("--n-subset N size of the fixed training subset of every HVP, at most the split's "
            "rows (default 1000; paper preset: 2048)") in sharp
    assert "--gauss-newton, --no-gauss-newton also compute" in sharp


def test_missing_data_set_lists_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "nowhere"))
    assert main(["eta-star", "--dataset", "cifar10", "--depth", "1", "--width", "8",
                 "--no-store"]) == 2
    err = capsys.readouterr().err
    assert "data set 'cifar10'" in err and str(tmp_path / "nowhere") in err


def _write_idx(path: Path, arr) -> None:
    import gzip

    import numpy as np

    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big")
                                                    for n in arr.shape)
    data = head + arr.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("damage, workers", [("empty", "1"), ("bad magic", "1"),
                                             ("truncated gzip", "1"), ("empty", "2")])
def test_unreadable_data_file_is_a_usage_error_before_any_task(tmp_path, monkeypatch, capsys,
                                                               damage, workers):
    import numpy as np

    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    _write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((20, 28, 28)))
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28)))
    bad = d / "t10k-labels-idx1-ubyte.gz"
    _write_idx(bad, np.arange(10) % 10)
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "bad magic":
        import gzip

        bad.write_bytes(gzip.compress(b"\x12\x34\x08\x01" + bytes(14)))
    else:
        bad.write_bytes(bad.read_bytes()[:-12])
    monkeypatch.setenv("MILR_DATA_DIR", str(tmp_path / "data"))
    store = tmp_path / "s"
    assert main(["eta-star", "--dataset", "mnist", "--depth", "1", "--width", "8",
                 "--n-val", "10", "--store", str(store), "--seeds", "0", "1",
                 "--workers", workers]) == 2  # 2: read by a pool worker
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("milr eta-star: error: data set 'mnist' cannot be read: "), err
    assert str(bad) in err, err
    assert not store.exists()  # no task ran, no failure note


def test_bad_sweep_file_names_file_and_key(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("datasets: [gaussian]\ndepths: [1]\nwidths: [8]\nseeds: [0]\n"
                 "trial: {treshold: 0.9}\n")
    assert main(["sweep", str(p), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "trial.treshold is not a known parameter" in err


@pytest.mark.parametrize("kind, section, what", [
    ("eta_star", "trial: {n_val: 2001}", r"n_val=2001 must be an integer in \[1, 2000\]"),
    ("sharpness", "options: {n_subset: 18001}",
     r"n_subset=18001 must be an integer in \[1, 18000\]: gaussian has 18000 training rows"),
])
def test_subsets_larger_than_the_split_stop_a_dry_run(tmp_path, capsys, kind, section, what):
    p = tmp_path / "big.yaml"
    p.write_text(f"kind: {kind}\ndatasets: [gaussian]\ndepths: [1]\nwidths: [8]\nseeds: [0]\n"
                 f"{section}\n")
    assert main(["sweep", str(p), "--store", str(tmp_path / "s"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(what, err), err
    assert not (tmp_path / "s").exists()


def test_a_subset_is_never_clipped_under_its_key():
    """The largest allowed subset is the whole split; the trainer never shrinks a larger one
    (it would then be keyed as a subset it is not)."""
    import torch

    from milr.config import TrialConfig
    from milr.data import SPLIT_SIZES, Dataset
    from milr.train import val_subset

    assert TrialConfig("gaussian", 1, 8, n_val=SPLIT_SIZES["gaussian"][1]).n_val == 2000
    small = Dataset("gaussian", torch.zeros(10, 3), torch.zeros(10, dtype=torch.long),
                    torch.zeros(5, 3), torch.zeros(5, dtype=torch.long), 2)
    assert len(val_subset(small, 5)[1]) == 5
    with pytest.raises(ValueError, match=r"n_val=6 must be an integer in \[1, 5\]"):
        val_subset(small, 6)


# -- commands on tiny settings ----------------------------------------------------------------

def test_eta_star_command_caches_and_prints_json(tmp_path, capsys):
    store = tmp_path / "s"
    assert main(ETA + ["--seeds", "0", "1", "--store", str(store), "-q", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["config"]["seed"] for x in lines] == [0, 1]
    assert all(Path(x["path"]).is_file() and "eta_star" in x["result"] for x in lines)
    first = [x["result"]["eta_star"] for x in lines]
    assert main(ETA + ["--seeds", "0", "1", "--store", str(store), "-q", "--json"]) == 0
    again = [json.loads(x)["result"]["eta_star"] for x in capsys.readouterr().out.split("\n")
             if x]
    assert json.dumps(again) == json.dumps(first)  # served from the cache
    recs = Store(store).records("eta_star")
    assert len(recs) == 2 and {r["meta"]["backend"] for r in recs} == {"serial"}


def test_json_is_strict_and_no_store_prints_no_dead_paths(capsys):
    """NaN (e.g. no eta_min seen) is printed as null, and --no-store names no record path:
    its temporary store is deleted when the command returns."""
    assert main(ETA + ["--seeds", "0", "--no-store", "-q", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert "path" not in rec and rec["result"]["eta_star"] > 0
    assert "NaN" not in line and any(v is None for v in rec["result"].values())
    assert main(ETA + ["--seeds", "0", "--no-store", "-q"]) == 0
    assert "not stored (--no-store)" in capsys.readouterr().out


def test_table_shows_units_and_no_always_empty_columns(capsys):
    assert main(ETA + ["--no-store", "-q"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["seed", "eta_star", "bracket_lo", "bracket_hi", "status", "n_trials",
                      "wall_time_s"]  # eta_min, non_interval: measured by --scan full only
    assert main(ETA + ["--no-store", "-q", "--scan", "full"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "eta_min" in header and "non_interval" in header and "wall_time_s" in header


def test_unreachable_gaussian_threshold_warns_before_the_search(capsys, monkeypatch):
    import milr.sweep as sweep

    order = []
    real = sweep.execute_tasks
    monkeypatch.setattr(sweep, "execute_tasks",
                        lambda *a, **k: order.append("search") or real(*a, **k))
    check = sweep.warn_unreachable_thresholds
    monkeypatch.setattr(sweep, "warn_unreachable_thresholds",
                        lambda tasks: order.append("check") or check(tasks))
    argv = [a if a != "0.85" else "0.99" for a in ETA]
    assert main(argv + ["--no-store", "-q", "--max-trials", "2"]) == 0
    err = capsys.readouterr().err
    assert ("WARNING milr: UnreachableThresholdWarning: threshold 0.99 on the Gaussian task "
            "is at or above its Bayes-optimal accuracy 0.951") in err
    assert order[0] == "check" and "search" in order  # checked before any search ran
    assert main(ETA + ["--no-store", "-q", "--max-trials", "2"]) == 0  # t = 0.85: no warning
    assert "UnreachableThresholdWarning" not in capsys.readouterr().err


def test_warnings_during_progress_bars_are_log_lines(tmp_path, capsys):
    cfg, store = sweep_file(tmp_path, [0, 1]), tmp_path / "s"
    assert main(["sweep", str(cfg), "--store", str(store), "--workers", "1", "-q"]) == 0
    rec = sorted((store / "eta_star").glob("*.json"))[0]
    rec.write_text(rec.read_text()[:50])  # truncated: moved aside while the bar is shown
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--store", str(store), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    segments = [seg for seg in re.split(r"[\r\n]", err) if "CorruptRecordWarning" in seg]
    assert segments, err
    for seg in segments:  # each alone on its line, never glued to a bar
        assert seg.startswith("WARNING milr: CorruptRecordWarning: moved corrupt record "), seg
    assert "eta_star (1 cached)" in err  # the bar was there


def test_sharpness_command_shows_no_trials_bar(tmp_path, capsys):
    assert main(["sharpness", "--dataset", "gaussian", "--depth", "1", "--width", "8",
                 "--n-subset", "50", "--no-store"]) == 0
    err = capsys.readouterr().err
    assert "sharpness (0 cached)" in err and "trials" not in err


def test_status_says_which_tasks_another_sweep_is_computing(tmp_path, capsys):
    cfg, store = sweep_file(tmp_path, [0, 1]), Store(tmp_path / "s")
    task = build_tasks(load_sweep_file(cfg))[1]
    path = store.claim_path(task.kind, task.record_config())
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "elsewhere.example", "pid": 4321, "token": "t" * 32,
                                "lease_s": 300, "started": "2026-01-01T00:00:00+00:00"}))
    assert main(["status", str(cfg), "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert ("(1 of the unfinished being computed now by elsewhere.example:4321 since "
            "2026-01-01T00:00:00+00:00)") in out, out
    assert main(["status", str(cfg), "--store", str(store.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] == 1


def test_sharpness_command(tmp_path, capsys):
    pytest.importorskip("milr.sharpness")
    assert main(["sharpness", "--dataset", "gaussian", "--depth", "2", "--width", "16",
                 "--n-subset", "200", "--store", str(tmp_path), "-q", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    rec = json.loads(line)
    assert rec["result"]["lambda_1"] > 0 and rec["config"]["n_subset"] == 200


def test_sweep_status_and_data_share_one_cache(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = ROOT / "configs" / "smoke.yaml"
    assert main(["status", str(cfg), "--store", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "config": str(cfg), "kind": "eta_star", "store": str(a), "total": 4, "done": 0,
        "pending": 4, "failed": 0, "corrupt": 0, "running": 0}
    assert main(["sweep", str(cfg), "--store", str(a), "--workers", "1", "-q"]) == 0
    assert main(["data", "--preset", "smoke", "--store", str(b), "--workers", "1", "-q",
                 "--allow-dirty"]) == 0
    capsys.readouterr()
    assert main(["status", str(cfg), "--store", str(b), "--list", "done"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  done\s+4$", out, re.M) and out.count("done\teta_star gaussian") == 4

    def strip(store):
        return {r["key"]: (r["config"], r["result"]["eta_star"], r["result"]["n_trials"],
                           [t["eta"] for t in r["result"]["trials"]])
                for r in Store(store).records("eta_star")}

    assert strip(a) == strip(b) and len(strip(a)) == 4  # `make data` = `milr sweep`


def test_status_lists_failed_and_corrupt(tmp_path, capsys):
    cfg = sweep_file(tmp_path, [0, 1, 2])
    store = Store(tmp_path / "s")
    tasks = build_tasks(load_sweep_file(cfg))
    store.put_failure("eta_star", tasks[0].record_config(), "RuntimeError: CUDA out of memory")
    p = store.put("eta_star", tasks[1].record_config(), {"eta_star": 1.0})
    p.write_text("{")
    assert main(["status", str(cfg), "--store", str(store.root), "--list", "failed",
                 "corrupt"]) == 0
    out = capsys.readouterr().out
    for state in ("failed", "corrupt", "pending"):
        assert re.search(rf"^  {state}\s+1$", out, re.M), out
    assert "CUDA out of memory" in out and str(p) in out and "unreadable JSON" in out


# -- killed sweeps ----------------------------------------------------------------------------

def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so that the sweep installs Python's handler
    even when pytest itself runs in the background (where the shell ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cfg: Path, store: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "milr", "sweep", str(cfg), "--store", str(store), "-q", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_default_sigint)


def _wait_for_records(store: Path, n: int, proc, timeout=240.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len(list((store / "eta_star").glob("*.json"))) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"sweep ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no records appeared")


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _finish_and_check(cfg, store, before: dict[str, bytes]):
    tasks = build_tasks(load_sweep_file(cfg))
    st = sweep_status(tasks, Store(store))
    assert st.corrupt == 0 and st.failed == 0
    assert 2 <= st.done < st.total, st.summary()  # killed mid-run, finished work kept
    for path, data in before.items():
        assert Path(path).read_bytes() == data
    assert Store(store).verify() == []
    assert main(["sweep", str(cfg), "--store", str(store), "--workers", "1", "-q"]) == 0
    st2 = sweep_status(tasks, Store(store))
    assert st2.done == st2.total
    for path, data in before.items():  # the rerun did not recompute finished records
        assert Path(path).read_bytes() == data


def test_sigint_keeps_finished_records_and_rerun_completes(tmp_path):
    cfg, store = sweep_file(tmp_path, range(12)), tmp_path / "s"
    proc = _start(cfg, store, "--workers", "1")
    _wait_for_records(store, 2, proc)
    before = {str(p): p.read_bytes() for p in (store / "eta_star").glob("*.json")}
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; every finished record is kept" in err
    _finish_and_check(cfg, store, before)


def test_sigkill_of_a_pool_sweep_keeps_records_and_leaves_no_orphans(tmp_path):
    cfg, store = sweep_file(tmp_path, range(16)), tmp_path / "s"
    proc = _start(cfg, store, "--workers", "2")
    workers: list[int] = []
    try:
        _wait_for_records(store, 2, proc)
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # the pool's processes
        before = {str(p): p.read_bytes() for p in (store / "eta_star").glob("*.json")}
        proc.kill()  # SIGKILL: no cleanup code runs in the parent
        proc.communicate(timeout=60)
        t0 = time.monotonic()  # pool workers die with their parent (PR_SET_PDEATHSIG)
        while any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers):
            assert time.monotonic() - t0 < 30, f"orphaned workers {workers}"
            time.sleep(0.1)
    finally:  # never leave processes behind, whatever failed above
        if proc.poll() is None:
            workers = _children(proc.pid)
            proc.kill()
            proc.communicate(timeout=60)
        for w in workers:
            if Path(f"/proc/{w}").exists() and "Z" not in _state(w):
                os.kill(w, signal.SIGKILL)
    # records are final once renamed; a writer killed mid-write leaves only a .tmp file
    _finish_and_check(cfg, store, before)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return "Z"


def test_main_restores_logging_and_signals(tmp_path, capsys):
    import logging

    milr_log = logging.getLogger("milr")
    before = (list(milr_log.handlers), milr_log.level, milr_log.propagate,
              signal.getsignal(signal.SIGTERM))
    assert main(["status", str(ROOT / "configs" / "smoke.yaml"), "--store", str(tmp_path),
                 "-vv"]) == 0
    after = (list(milr_log.handlers), milr_log.level, milr_log.propagate,
             signal.getsignal(signal.SIGTERM))
    assert after == before  # calling main() from Python leaves no trace


def test_data_refuses_a_dirty_tree_and_status_shows_code_versions(tmp_path, capsys,
                                                                   monkeypatch):
    import milr.cli as cli

    monkeypatch.setattr(cli, "code_version", lambda: "milr 0.1.0 git abc+dirty")
    assert main(["data", "--preset", "smoke", "--store", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and "--allow-dirty" in err
    assert not any(tmp_path.iterdir())  # nothing was written
    cfg = ROOT / "configs" / "smoke.yaml"
    assert main(["sweep", str(cfg), "--store", str(tmp_path), "--workers", "1", "-q"]) == 0
    capsys.readouterr()
    assert main(["status", str(cfg), "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (line,) = [l for l in out.splitlines() if "made by" in l]
    assert line.strip() == f"made by {Store(tmp_path).code_versions('eta_star').popitem()[0]}: 4"
