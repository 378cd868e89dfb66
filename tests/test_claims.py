"""Claims (leases) in the store: atomic, released, taken over from dead or stale owners; and
sweeps sharing one store that compute every task once (serial and pool), including when
one of them is SIGKILLed."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from milr.store import DEFAULT_LEASE_S, Store, claim_status, lease_seconds
from milr.sweep import run_sweep, sweep_status

TESTS = Path(__file__).resolve().parent
CFG = {"n": 1}


def _claim_file(store: Store, **info) -> Path:
    """Write a claim by hand (another process's, maybe on another host)."""
    p = store.claim_path("fake", CFG)
    p.parent.mkdir(parents=True, exist_ok=True)
    base = {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": _pid_ns(),
            "token": "x" * 32, "lease_s": DEFAULT_LEASE_S,
            "started": "2026-01-01T00:00:00+00:00"}
    p.write_text(json.dumps({**base, **info}))
    return p


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- the claim file ---------------------------------------------------------------------------

def test_claim_is_exclusive_and_released(tmp_store):
    c = tmp_store.claim("fake", CFG, lease_s=60)
    assert c is not None and c.path == tmp_store.claim_path("fake", CFG)
    info = json.loads(c.path.read_text())
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    assert info["lease_s"] == 60 and info["token"] == c.token and info["started"]
    assert tmp_store.claim("fake", CFG) is None  # held (by this live process)
    assert tmp_store.claim_holder("fake", CFG) == (info, "live")
    assert tmp_store.refresh_claim(c)
    assert tmp_store.release_claim(c) and not c.path.exists()
    assert tmp_store.claim_holder("fake", CFG) is None
    c2 = tmp_store.claim("fake", CFG)
    assert c2 is not None and c2.token != c.token
    tmp_store.release_claim(c2)
    assert not list(c.path.parent.iterdir())  # no temporary files left either


def test_of_many_simultaneous_claims_exactly_one_wins(tmp_store):
    start, got = threading.Barrier(16), []

    def claim():
        start.wait()
        got.append(tmp_store.claim("fake", CFG))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c is not None for c in got) == 1


def test_claims_of_processes_racing_for_one_task(tmp_path):
    """Four processes claim the same 40 tasks at once: each task has exactly one owner.
    Each stays alive (holding its claims) until all have reported."""
    code = ("import sys, json, os, time; from milr.store import Store; s = Store(sys.argv[1]); "
            "go, out, release = sys.argv[2:5]\n"
            "while not os.path.exists(go): time.sleep(0.005)\n"
            "won = [n for n in range(40) if s.claim('fake', {'n': n}, 600)]\n"
            "open(out + '.tmp', 'w').write(json.dumps(won)); os.rename(out + '.tmp', out)\n"
            "while not os.path.exists(release): time.sleep(0.05)\n")
    go, release = tmp_path / "go", tmp_path / "release"
    outs = [tmp_path / f"won{i}.json" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "store"), str(go),
                               str(out), str(release)]) for out in outs]
    try:
        time.sleep(3)
        go.touch()
        t0 = time.monotonic()
        while not all(o.exists() for o in outs):
            assert time.monotonic() - t0 < 240 and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        won = [json.loads(o.read_text()) for o in outs]
    finally:
        release.touch()
        for p in procs:
            p.wait(timeout=60)
    assert sorted(n for w in won for n in w) == list(range(40))


def test_dead_owner_on_this_host_is_taken_over(tmp_store):
    _claim_file(tmp_store, pid=_dead_pid())
    assert tmp_store.claim_holder("fake", CFG)[1] == "dead"
    c = tmp_store.claim("fake", CFG)
    assert c is not None and json.loads(c.path.read_text())["token"] == c.token


def test_reused_pid_is_a_dead_owner(tmp_store):
    # our own pid, but "started" at another time: the pid was reused
    _claim_file(tmp_store, pid=os.getppid(), proc_start="1")
    assert tmp_store.claim_holder("fake", CFG)[1] == "dead"


def test_live_owner_is_respected_on_this_host(tmp_store):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _claim_file(tmp_store, pid=proc.pid)
        assert tmp_store.claim_holder("fake", CFG)[1] == "live"
        assert tmp_store.claim("fake", CFG) is None
        proc.kill()
        proc.wait()
        assert tmp_store.claim("fake", CFG) is not None  # its owner died: taken over
    finally:
        proc.kill()
        proc.wait()


def test_other_hosts_claims_live_until_their_lease_is_stale(tmp_store):
    p = _claim_file(tmp_store, host="elsewhere.example", pid=1, lease_s=30)
    assert tmp_store.claim_holder("fake", CFG)[1] == "live"
    assert tmp_store.claim("fake", CFG) is None
    old = time.time() - 31  # not refreshed for longer than its own lease
    os.utime(p, (old, old))
    assert tmp_store.claim_holder("fake", CFG)[1] == "stale"
    c = tmp_store.claim("fake", CFG)
    assert c is not None and json.loads(p.read_text())["host"] == socket.gethostname()
    # the rule is the owner's lease, not the reader's
    info = {"host": "elsewhere.example", "pid": 1, "token": "y" * 32, "lease_s": 3600}
    assert claim_status(info, time.time() - 600) == "live"
    assert claim_status(info, time.time() - 3601) == "stale"


def test_unreadable_claim_is_live_for_a_grace_period_then_stale(tmp_store):
    p = tmp_store.claim_path("fake", CFG)
    p.parent.mkdir(parents=True)
    p.write_text("")  # e.g. a writer without hard links caught mid-write
    assert tmp_store.claim("fake", CFG) is None
    old = time.time() - 61
    os.utime(p, (old, old))
    assert tmp_store.claim("fake", CFG) is not None


def test_release_of_a_claim_taken_over_meanwhile_keeps_the_new_owner(tmp_store, caplog):
    c = tmp_store.claim("fake", CFG)
    p = _claim_file(tmp_store, host="elsewhere.example", pid=1, token="z" * 32)
    assert not tmp_store.refresh_claim(c)
    assert not tmp_store.release_claim(c)
    assert json.loads(p.read_text())["token"] == "z" * 32  # not removed
    assert "taken over" in caplog.text


def test_lease_setting(monkeypatch):
    assert lease_seconds() == DEFAULT_LEASE_S == 300
    monkeypatch.setenv("MILR_LEASE_S", "12.5")
    assert lease_seconds() == 12.5 and lease_seconds(3) == 3.0
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError, match="lease_s=.* must be a finite number of seconds"):
            lease_seconds(bad)
    monkeypatch.setenv("MILR_LEASE_S", "soon")
    with pytest.raises(ValueError, match="MILR_LEASE_S='soon'"):
        lease_seconds()


# -- sweeps sharing a store -------------------------------------------------------------------

SWEEP = """
import sys, time
sys.path.insert(0, {tests!r})
from test_sweep import FakeTask
from milr.store import Store
from milr.sweep import run_sweep
go = {go!r}
while not __import__("os").path.exists(go):
    time.sleep(0.01)
tasks = [FakeTask(n, sleep={sleep} if n in {slow} else 0.1, log={log!r}) for n in range(24)]
run_sweep(tasks, Store({root!r}), progress=False, torch_threads=None, workers={workers})
"""


def _sweep_proc(tmp_path, workers=1, slow=(), sleep=0.1, go=None):
    script = SWEEP.format(tests=str(TESTS), go=str(go or tmp_path / "go"), sleep=sleep,
                          slow=tuple(slow), log=str(tmp_path / "log.txt"),
                          root=str(tmp_path / "store"), workers=workers)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _computed(tmp_path) -> list[int]:
    log = tmp_path / "log.txt"
    return sorted(int(x) for x in log.read_text().split()) if log.exists() else []


def _all_done(tmp_path) -> bool:
    from test_sweep import FakeTask

    return sweep_status([FakeTask(n) for n in range(24)], Store(tmp_path / "store")).done == 24


@pytest.mark.parametrize("workers", [1, 2])
def test_two_concurrent_sweeps_compute_every_task_once(tmp_path, workers):
    """The same 24-task grid, two sweeps started at the same instant on one store."""
    procs = [_sweep_proc(tmp_path, workers) for _ in range(2)]
    time.sleep(1.0)
    (tmp_path / "go").touch()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert _computed(tmp_path) == list(range(24))  # each once, none lost
    assert _all_done(tmp_path)
    assert Store(tmp_path / "store").claims() == []  # every claim released


@pytest.mark.parametrize("workers", [1, 2])
def test_tasks_of_a_sigkilled_sweep_are_picked_up(tmp_path, workers):
    """Sweep A claims task 0 and hangs in it; B starts alongside, computes the rest and waits
    for task 0; A is SIGKILLed: B takes task 0 over at once (same host, owner dead)."""
    (tmp_path / "go").touch()
    a = _sweep_proc(tmp_path, workers, slow=(0,), sleep=600)
    claim = Store(tmp_path / "store").claim_path("fake", {"n": 0})
    t0 = time.monotonic()
    while not claim.exists():
        assert a.poll() is None, a.communicate()
        assert time.monotonic() - t0 < 120, "sweep A never claimed task 0"
        time.sleep(0.05)
    b = _sweep_proc(tmp_path, 1)
    try:
        from test_sweep import FakeTask

        tasks = [FakeTask(n) for n in range(24)]
        t0 = time.monotonic()
        while sweep_status(tasks, Store(tmp_path / "store")).done < 23:  # all but task 0
            assert b.poll() is None, b.communicate()
            assert time.monotonic() - t0 < 120, _computed(tmp_path)
            time.sleep(0.05)
        time.sleep(1.0)
        assert b.poll() is None  # B waits for task 0: A is alive and holds it
        assert json.loads(claim.read_text())["pid"] == a.pid
        os.killpg(a.pid, signal.SIGKILL)  # A and its pool workers
        a.communicate(timeout=60)
        out, err = b.communicate(timeout=120)
        assert b.returncode == 0, err
        assert re.search(r"waiting for \d+ task\(s\) being computed by another sweep", err)
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate(timeout=60)
    computed = _computed(tmp_path)
    assert computed.count(0) == 2  # started by A (killed), computed by B
    assert sorted(set(computed)) == list(range(24)) and len(computed) == 25
    assert _all_done(tmp_path) and Store(tmp_path / "store").claims() == []


def test_a_later_sweep_takes_over_the_claims_of_a_killed_one(tmp_path):
    (tmp_path / "go").touch()
    a = _sweep_proc(tmp_path, 2, slow=range(24), sleep=600)
    store = Store(tmp_path / "store")
    t0 = time.monotonic()
    while len(store.claims()) < 2:
        assert a.poll() is None, a.communicate()
        assert time.monotonic() - t0 < 120
        time.sleep(0.05)
    os.killpg(a.pid, signal.SIGKILL)
    a.communicate(timeout=60)
    assert {s for _, _, s in store.claims()} == {"dead"}
    from test_sweep import FakeTask

    t0 = time.monotonic()
    run_sweep([FakeTask(n) for n in range(24)], store, progress=False, torch_threads=None)
    assert time.monotonic() - t0 < 60  # no waiting for a lease to run out
    assert _all_done(tmp_path) and store.claims() == []


def test_a_stale_claim_of_another_host_is_taken_over_by_a_sweep(tmp_store, tmp_path):
    from test_sweep import FakeTask

    _claim_file(tmp_store, host="elsewhere.example", pid=1, lease_s=0.5)
    t0 = time.monotonic()
    run_sweep([FakeTask(1), FakeTask(2)], tmp_store, progress=False, torch_threads=None,
              lease_s=5)
    assert time.monotonic() - t0 < 30
    assert sweep_status([FakeTask(1), FakeTask(2)], tmp_store).done == 2
