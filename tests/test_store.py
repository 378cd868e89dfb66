"""The results store: round trips, corruption handling, atomic and concurrent writes, safety."""
from __future__ import annotations

import ast
import json
import math
import multiprocessing as mp
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milr.config import config_key
from milr.store import (CorruptRecordWarning, Store, StoreCollisionError, key_of,
                        record_checksum, record_name, run_metadata)

CFG = {"dataset": "gaussian", "depth": 2, "width": 64, "seed": 0, "tol": 0.1}
RES = {"eta_star": 1.25, "eta_min": math.nan, "bracket_hi": math.inf, "status": "converged",
       "trials": [{"eta": 30.0, "success": False}, {"eta": 1.25, "success": True}]}


def same(a, b) -> bool:
    """Equality with NaN == NaN (what a round trip must preserve)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- round trip -------------------------------------------------------------------------------

def test_round_trip_and_layout(tmp_store):
    path = tmp_store.put("eta_star", CFG, RES, {"device": "cpu"})
    key = config_key("eta_star", CFG)
    assert path == tmp_store.root / "eta_star" / f"gaussian_d2_w64_s0_{key}.json"
    rec = tmp_store.get("eta_star", CFG)
    assert rec["config"] == CFG and rec["kind"] == "eta_star" and rec["key"] == key
    assert rec["result"]["eta_star"] == 1.25
    assert math.isnan(rec["result"]["eta_min"]) and rec["result"]["bracket_hi"] == math.inf
    assert rec["result"]["trials"] == RES["trials"]
    assert rec["meta"] == {"device": "cpu"}
    assert tmp_store.state("eta_star", CFG) == "done"
    # strict JSON on disk (no bare NaN), readable by anyone
    raw = path.read_text()
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    df = tmp_store.load("eta_star")
    assert df.loc[0, "eta_star"] == 1.25 and df.loc[0, "width"] == 64
    assert "trials" not in df.columns


def test_another_configuration_never_gets_the_record(tmp_store):
    tmp_store.put("eta_star", CFG, RES)
    for change in ({"seed": 1}, {"width": 65}, {"tol": 0.1000001}, {"extra": None}):
        other = {**CFG, **change}
        assert tmp_store.get("eta_star", other) is None
        assert tmp_store.state("eta_star", other) == "pending"
    assert tmp_store.get("sharpness", CFG) is None  # same config, other kind
    # int 2 and float 2.0 are different configurations (their JSON differs)
    assert tmp_store.get("eta_star", {**CFG, "depth": 2.0}) is None


json_scalars = (st.none() | st.booleans() | st.integers(-2**53, 2**53)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda ch: st.lists(ch, max_size=4)
                           | st.dictionaries(st.text(max_size=8), ch, max_size=4), max_leaves=12)
result_values = st.recursive(json_scalars | st.floats(), lambda ch: st.lists(ch, max_size=4)
                             | st.dictionaries(st.text(max_size=8).filter(
                                 lambda k: k != "__float__"), ch, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.dictionaries(st.text(min_size=1, max_size=10), json_values, min_size=1,
                              max_size=6),
       result=st.dictionaries(st.text(max_size=10).filter(lambda k: k != "__float__"),
                              result_values, max_size=6),
       kind=st.sampled_from(["eta_star", "sharpness", "k2"]))
def test_round_trip_property(tmp_path_factory, config, result, kind):
    store = Store(tmp_path_factory.mktemp("s"))
    path = store.put(kind, config, result, {"note": "x"})
    assert key_of(path) == config_key(kind, config)  # key: a pure function of the config
    assert path.stem == record_name(kind, config)  # and so is the readable name
    rec = store.get(kind, config)
    assert rec is not None
    assert same(rec["config"], config)
    assert same(rec["result"], result)  # NaN, +/-inf, nesting, unicode all survive
    assert store.state(kind, config) == "done"
    assert store.verify() == []


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": [1, math.inf]}, {}, {"x": object()},
                                 {1: 2}])
def test_bad_configs_are_rejected(tmp_store, bad):
    with pytest.raises((ValueError, TypeError), match="config"):
        tmp_store.put("eta_star", bad, RES)


@pytest.mark.parametrize("kind", ["", "Eta", "../x", "a/b", 3, "eta-star"])
def test_bad_kinds_are_rejected(tmp_store, kind):
    with pytest.raises(ValueError, match="kind="):
        tmp_store.put(kind, CFG, RES)


def test_result_must_be_a_dict(tmp_store):
    with pytest.raises(TypeError, match="result must be a dict"):
        tmp_store.put("eta_star", CFG, [1, 2])


# -- corruption -------------------------------------------------------------------------------

def _truncate(p: Path):
    p.write_text(p.read_text()[: len(p.read_text()) // 2])


def _flip_digit(p: Path):  # still valid JSON, one number changed: only the checksum sees it
    p.write_text(p.read_text().replace('"eta_star": 1.25', '"eta_star": 1.35'))


def _other_config(p: Path):  # a valid record of another configuration copied here
    rec = json.loads(p.read_text())
    rec["config"]["seed"] = 7
    rec["checksum"] = record_checksum(rec)
    p.write_text(json.dumps(rec))


def _bad_marker(p: Path):
    rec = json.loads(p.read_text())
    rec["result"]["eta_min"] = {"__float__": "__import__('os')"}
    rec["checksum"] = record_checksum(rec)
    p.write_text(json.dumps(rec))


def _no_checksum_v2(p: Path):
    rec = json.loads(p.read_text())
    del rec["checksum"]
    p.write_text(json.dumps(rec))


@pytest.mark.parametrize("damage", [_truncate, _flip_digit, _other_config, _bad_marker,
                                    _no_checksum_v2, lambda p: p.write_bytes(b"\xff\xfe\x00"),
                                    lambda p: p.write_text("[1, 2]"), lambda p: p.write_text("")])
def test_corrupt_record_is_reported_never_read(tmp_store, damage):
    path = tmp_store.put("eta_star", CFG, RES)
    damage(path)
    with pytest.warns(CorruptRecordWarning, match=str(path)):
        assert tmp_store.get("eta_star", CFG) is None
    assert tmp_store.state("eta_star", CFG) == "corrupt"
    with pytest.warns(CorruptRecordWarning, match="skipping corrupt record"):
        assert tmp_store.records("eta_star") == []
    assert [p for p, _ in tmp_store.verify()] == [path]


def test_corrupt_record_is_moved_aside_before_rewrite(tmp_store):
    path = tmp_store.put("eta_star", CFG, RES)
    _truncate(path)
    damaged = path.read_bytes()
    with pytest.warns(CorruptRecordWarning, match="moved corrupt record"):
        tmp_store.put("eta_star", CFG, {**RES, "eta_star": 2.0})
    kept = list((path.parent / "corrupt").glob("*.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # kept for inspection
    assert tmp_store.get("eta_star", CFG)["result"]["eta_star"] == 2.0
    assert tmp_store.records("eta_star")[0]["config"] == CFG  # corrupt/ is not read as records


def test_schema_1_records_without_checksum_are_read(tmp_store):
    path = tmp_store.path("eta_star", CFG)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": 1, "kind": "eta_star", "key": key_of(path),
                                "config": CFG, "result": {"eta_star": 0.5,
                                                          "eta_min": {"__float__": "nan"}},
                                "meta": {}}))
    rec = tmp_store.get("eta_star", CFG)
    assert rec["result"]["eta_star"] == 0.5 and math.isnan(rec["result"]["eta_min"])


def test_hash_collision_is_never_overwritten(tmp_store, monkeypatch):
    import milr.store as store_mod

    monkeypatch.setattr(store_mod, "config_key", lambda kind, cfg: "samekey")
    path = tmp_store.put("eta_star", CFG, RES)
    other = {**CFG, "tol": 0.2}  # same readable name and (patched) key: one file name
    with pytest.raises(StoreCollisionError, match="another configuration"):
        tmp_store.put("eta_star", other, {"eta_star": 9.0})
    assert json.loads(path.read_text())["config"] == CFG
    with pytest.warns(CorruptRecordWarning, match="another configuration"):
        assert tmp_store.get("eta_star", other) is None


# -- atomic writes and failure notes ----------------------------------------------------------

def test_crash_before_rename_leaves_old_record(tmp_store, monkeypatch):
    path = tmp_store.put("eta_star", CFG, RES)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        tmp_store.put("eta_star", CFG, {**RES, "eta_star": 3.0})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was removed


def test_leftover_temp_files_are_ignored(tmp_store):
    path = tmp_store.put("eta_star", CFG, RES)
    junk = path.parent / f".{path.stem}.abc.tmp"
    junk.write_text('{"half": ')
    assert tmp_store.stale_temp_files() == [junk]
    assert len(tmp_store.records("eta_star")) == 1 and tmp_store.verify() == []


def test_failure_notes(tmp_store):
    try:
        raise RuntimeError("out of memory")
    except RuntimeError as exc:
        note_path = tmp_store.put_failure("eta_star", CFG, exc, {"device": "cpu"})
    assert note_path.parent.name == "failed"
    assert tmp_store.state("eta_star", CFG) == "failed"
    assert tmp_store.get("eta_star", CFG) is None  # a failure is never a result
    note = tmp_store.get_failure("eta_star", CFG)
    assert note["failure"]["error"] == "RuntimeError: out of memory"
    assert "Traceback" in note["failure"]["traceback"]
    assert [f["config"] for f in tmp_store.failures("eta_star")] == [CFG]
    assert tmp_store.records("eta_star") == []
    tmp_store.put("eta_star", CFG, RES)  # success removes the note
    assert tmp_store.state("eta_star", CFG) == "done" and not note_path.exists()


def _hammer(root, n, worker):
    store = Store(root)
    for i in range(n):
        store.put("eta_star", CFG, {"eta_star": float(worker), "i": i, "pad": "x" * 5000})
        store.put("eta_star", {**CFG, "seed": worker}, {"eta_star": float(i)})


def test_concurrent_writers_never_corrupt(tmp_store):
    ctx = mp.get_context("fork")  # the writers use no torch: fork is safe and fast
    procs = [ctx.Process(target=_hammer, args=(str(tmp_store.root), 40, w)) for w in (1, 2, 3)]
    for p in procs:
        p.start()
    seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptRecordWarning)  # any torn read fails the test
        while any(p.is_alive() for p in procs):
            rec = tmp_store.get("eta_star", CFG)
            if rec is not None:
                assert rec["result"]["eta_star"] in (1.0, 2.0, 3.0)
                assert len(rec["result"]["pad"]) == 5000
                seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert tmp_store.verify() == [] and not tmp_store.stale_temp_files()
    assert len(tmp_store.records("eta_star")) == 4
    assert seen > 0


# -- provenance and safety --------------------------------------------------------------------

def test_run_metadata_names_device_and_versions():
    import numpy
    import torch

    meta = run_metadata("cpu")
    assert meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__ and meta["numpy"] == numpy.__version__
    assert meta["code_version"].startswith("milr ")
    assert meta["hardware"]["torch_threads"] == torch.get_num_threads()
    for key in ("python", "platform", "scipy", "date"):
        assert meta[key]


UNSAFE = {("pickle", "load"), ("pickle", "loads"), ("pd", "read_pickle"),
          ("pandas", "read_pickle"), ("yaml", "load"), ("yaml", "unsafe_load"),
          ("dill", "load"), ("joblib", "load"), ("cloudpickle", "load")}


def _unsafe_calls(source: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        kw = {k.arg: k.value for k in node.keywords}
        if (name, node.func.attr) in UNSAFE:
            out.append(f"{name}.{node.func.attr}")
        if (name, node.func.attr) == ("torch", "load"):
            v = kw.get("weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                out.append("torch.load without weights_only=True")
        if node.func.attr == "load" and name in ("np", "numpy"):
            v = kw.get("allow_pickle")
            if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                out.append("np.load with allow_pickle")
    return out


def test_checker_catches_unsafe_loads():
    assert _unsafe_calls("import pickle\npickle.load(f)") == ["pickle.load"]
    assert _unsafe_calls("torch.load(p)") == ["torch.load without weights_only=True"]
    assert _unsafe_calls("torch.load(p, weights_only=True)") == []
    assert _unsafe_calls("np.load(p, allow_pickle=True)") == ["np.load with allow_pickle"]
    assert _unsafe_calls("yaml.safe_load(s)") == [] and _unsafe_calls("yaml.load(s)")


def test_nothing_read_from_disk_is_unpickled():
    pkg = Path(__file__).resolve().parent.parent / "milr"
    found = {p.name: _unsafe_calls(p.read_text()) for p in sorted(pkg.glob("*.py"))}
    assert not {k: v for k, v in found.items() if v}


def test_numpy_and_torch_values_are_stored_as_json(tmp_store):
    import numpy as np
    import torch

    res = {"a": np.float32(1.5), "b": np.arange(3), "c": torch.tensor([1.0, math.nan]),
           "d": np.bool_(True), "e": np.int64(7)}
    tmp_store.put("eta_star", CFG, res)
    got = tmp_store.get("eta_star", CFG)["result"]
    assert got["a"] == 1.5 and got["b"] == [0, 1, 2] and got["d"] is True and got["e"] == 7
    assert got["c"][0] == 1.0 and math.isnan(got["c"][1])


# -- readable names and the legacy layout ------------------------------------------------------

def test_legacy_names_are_read_and_renamed_once(tmp_store):
    """Records named <key>.json (before readable names) are still found; rename_legacy moves
    them (and failure notes) to readable names, byte for byte, and a second call does nothing."""
    cfgs = [{**CFG, "seed": s} for s in range(3)]
    paths = [tmp_store.put("eta_star", c, {**RES, "eta_star": float(i)})
             for i, c in enumerate(cfgs)]
    note = tmp_store.put_failure("eta_star", {**CFG, "seed": 9}, "ValueError: x")
    legacy = []
    for p in paths + [note]:
        old = p.parent / f"{key_of(p)}.json"
        os.replace(p, old)
        legacy.append((old, p, old.read_bytes()))
    other = tmp_store.root / "eta_star" / "0123456789abcdef0123.json"  # not a record
    other.write_text("{}")
    for i, c in enumerate(cfgs):  # read from the legacy names
        assert tmp_store.get("eta_star", c)["result"]["eta_star"] == float(i)
        assert tmp_store.state("eta_star", c) == "done"
    with pytest.warns(CorruptRecordWarning, match="0123456789abcdef0123"):
        assert len(tmp_store.load("eta_star")) == 3
    renamed = tmp_store.rename_legacy()
    assert sorted(renamed) == sorted((old, new) for old, new, _ in legacy)
    for old, new, raw in legacy:
        assert not old.exists() and new.read_bytes() == raw
    assert tmp_store.rename_legacy() == [] and other.exists()
    assert [p for p, _ in tmp_store.verify()] == [other]  # left alone, still reported
    assert tmp_store.get_failure("eta_star", {**CFG, "seed": 9}) is not None
    # a rewrite of a legacy-named record leaves one file, under the readable name
    os.replace(paths[0], paths[0].parent / f"{key_of(paths[0])}.json")
    assert tmp_store.put("eta_star", cfgs[0], RES) == paths[0]
    assert sorted(p.name for p in paths[0].parent.glob("*.json")) == sorted(
        [p.name for p in paths] + [other.name])


def test_code_versions_count_records_by_code(tmp_store):
    tmp_store.put("eta_star", CFG, RES, {"code_version": "milr 0.1.0 git a"})
    tmp_store.put("eta_star", {**CFG, "seed": 1}, RES, {"code_version": "milr 0.1.0 git a"})
    tmp_store.put("late_lr", CFG, RES, {"code_version": "milr 0.1.0 git b+dirty"})
    assert tmp_store.code_versions() == {"milr 0.1.0 git a": 2, "milr 0.1.0 git b+dirty": 1}
    assert tmp_store.code_versions("late_lr") == {"milr 0.1.0 git b+dirty": 1}


def test_rename_records_tool_is_idempotent(tmp_store):
    import subprocess
    import sys

    path = tmp_store.put("eta_star", CFG, RES)
    legacy = path.parent / f"{key_of(path)}.json"
    os.replace(path, legacy)
    tool = Path(__file__).resolve().parent.parent / "tools" / "rename_records.py"
    run = lambda: subprocess.run([sys.executable, str(tool), str(tmp_store.root)],  # noqa: E731
                                 capture_output=True, text=True, timeout=120)
    first = run()
    assert first.returncode == 0 and f"-> {path.name}" in first.stdout
    assert path.exists() and not legacy.exists()
    second = run()
    assert second.returncode == 0 and second.stdout == "" and "0 record(s)" in second.stderr
