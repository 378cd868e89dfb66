"""The documented choices as configuration fields: read-out initialisation (``readout_gain``),
biases (``bias``) and the blow-up rule switched off (``blowup_factor=None``).

Defaults keep the keys of every committed record (checked on committed records, rebuilt
through the presets); non-default values change the key; the hand-written trainer follows the
torch.optim.SGD oracle (tests/reference.py) with every option in float64; the initialisation
has the closed-form variance; bad values are one clear error line everywhere they enter."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from milr.cli import main
from milr.conditions import late_tasks
from milr.config import (NETWORK_DEFAULTS, TrialConfig, check_blowup_factor, config_key,
                         drop_network_defaults)
from milr.fit import fit_power_law
from milr.late import LateLRTask
from milr.models import make_mlp
from milr.presets import get_preset
from milr.scorecard import collect_scorecard
from milr.sharpness import SharpnessTask
from milr.store import Store
from milr.sweep import EtaStarTask, eta_star_tasks, load_results
from milr.train import run_trial, run_trials, trainer_for
from milr.trials import preset_configs
from milr.validate import build_tasks, spec_from_preset, sweep_spec

from reference import reference_trial

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "results"

# Committed records (file name and key) of each kind, made before the new fields existed.
ETA_RECORD = "eta_star/fashion-mnist_d2_w64_s0_8bd50038db3bf1a282d8.json"
SHARP_RECORD = "sharpness/fashion-mnist_d1_w1024_s0_61ff7555742d68868189.json"
LATE_RECORD = "late_lr/fashion-mnist_d1_w128_s0_9595e2bdaeb88cc7ce1a.json"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def committed(rel: str) -> dict:
    path = RESULTS / rel
    if not path.is_file():
        pytest.skip(f"committed record {rel} is not in this checkout")
    rec = json.loads(path.read_text())
    assert path.stem.endswith(rec["key"])
    return rec


def find(tasks, **where):
    (t,) = [t for t in tasks if all(t.record_config()[k] == v for k, v in where.items())]
    return t


# ------------------------------------------------------------------ keys of committed records
def test_eta_star_record_keeps_its_key_through_the_preset():
    rec = committed(ETA_RECORD)
    task = find(build_tasks(spec_from_preset("quick")), dataset="fashion-mnist", depth=2,
                width=64, seed=0)
    assert task.record_config() == rec["config"]
    assert config_key(task.kind, task.record_config()) == rec["key"] == "8bd50038db3bf1a282d8"
    assert Store(RESULTS).path(task.kind, task.record_config()).name == Path(ETA_RECORD).name
    # the new fields are there, at their defaults, but not in the key
    assert (task.trial.readout_gain, task.trial.bias) == (1.0, True)
    assert not set(NETWORK_DEFAULTS) & set(task.record_config())


def test_sharpness_record_keeps_its_key_through_the_preset():
    rec = committed(SHARP_RECORD)
    task = find(build_tasks(spec_from_preset("quick", kind="sharpness")),
                dataset="fashion-mnist", depth=1, width=1024, seed=0)
    assert task.record_config() == rec["config"]
    assert config_key(task.kind, task.record_config()) == rec["key"] == "61ff7555742d68868189"


def test_late_lr_record_keeps_its_key_through_the_figure_tasks():
    rec = committed(LATE_RECORD)
    # warm-up rate 0.321 = round_sig(0.1 x eta*): a reference eta* of 3.21 rebuilds the task
    ref = pd.DataFrame({"dataset": ["fashion-mnist"], "depth": [1], "width": [128], "seed": [0],
                        "eta_star": [3.21]})
    task = find(late_tasks(get_preset("quick"), ref, ["fashion-mnist"]), seed=0)
    assert task.record_config() == rec["config"]
    assert config_key(task.kind, task.record_config()) == rec["key"] == "9595e2bdaeb88cc7ce1a"


def test_load_results_shows_the_defaults_of_committed_records():
    committed(ETA_RECORD)
    task = find(build_tasks(spec_from_preset("quick")), dataset="fashion-mnist", depth=2,
                width=64, seed=0)
    df = load_results([task], Store(RESULTS))
    assert len(df) == 1 and df.readout_gain.iloc[0] == 1.0 and bool(df.bias.iloc[0]) is True


# ------------------------------------------------------------------ non-default values key
@pytest.mark.parametrize("kw", [{"readout_gain": 2.0}, {"bias": False},
                                {"blowup_factor": None}, {"readout_gain": 2.0, "bias": False}])
def test_non_default_values_are_in_the_key(kw):
    base = dict(dataset="gaussian", depth=2, width=16)
    a, b = TrialConfig(**base), TrialConfig(**base, **kw)
    assert all(b.to_dict()[k] == v for k, v in kw.items())
    (ta,) = eta_star_tasks(["gaussian"], [2], [16], [0])
    (tb,) = eta_star_tasks(["gaussian"], [2], [16], [0], trial=kw)
    assert tb.trial == b and ta.trial == a
    assert config_key(ta.kind, ta.record_config()) != config_key(tb.kind, tb.record_config())
    # a default given explicitly is the default: same key
    (tc,) = eta_star_tasks(["gaussian"], [2], [16], [0],
                           trial={"readout_gain": 1, "bias": True, "blowup_factor": 100})
    assert tc.record_config() == ta.record_config()


def test_non_default_network_keys_sharpness_and_late_tasks():
    s0 = SharpnessTask("gaussian", 2, 16, 0)
    s1 = SharpnessTask("gaussian", 2, 16, 0, readout_gain=2.0, bias=False)
    assert "readout_gain" not in s0.record_config() and "bias" not in s0.record_config()
    assert s1.record_config()["readout_gain"] == 2.0 and s1.record_config()["bias"] is False
    l0 = LateLRTask("gaussian", 2, 16, 0, 0.1)
    l1 = LateLRTask("gaussian", 2, 16, 0, 0.1, readout_gain=2.0, bias=False,
                    blowup_factor="off")
    assert not set(NETWORK_DEFAULTS) & set(l0.record_config())
    assert l1.blowup_factor is None and l1.record_config()["blowup_factor"] is None
    assert config_key("late_lr", l0.record_config()) != config_key("late_lr",
                                                                   l1.record_config())
    assert drop_network_defaults({"bias": True, "readout_gain": 1.0, "x": 1}) == {"x": 1}


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("kw, pattern", [
    ({"readout_gain": 0.0}, r"readout_gain=0.0 must be a finite number in \(0.0, inf\)"),
    ({"readout_gain": -2.0}, r"readout_gain=-2.0 must be"),
    ({"readout_gain": math.inf}, r"readout_gain=inf must be"),
    ({"readout_gain": "2"}, r"readout_gain='2' must be a real number"),
    ({"bias": "yes"}, r"bias='yes' must be True .* or False"),
    ({"bias": 1}, r"bias=1 must be True"),
    ({"blowup_factor": 1.0}, r"blowup_factor=1.0 must be a finite number in \(1.0, inf\) or "
                             r"'off'"),
    ({"blowup_factor": "never"}, r"blowup_factor='never' must be a number > 1 or 'off'"),
    ({"blowup_factor": math.nan}, r"blowup_factor=nan must be"),
])
def test_bad_values_name_the_field_and_the_range(kw, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        TrialConfig("gaussian", 1, 8, **kw)
    with pytest.raises((ValueError, TypeError), match=pattern):
        eta_star_tasks(["gaussian"], [1], [8], [0], trial=kw)
    if "blowup_factor" not in kw:
        with pytest.raises((ValueError, TypeError), match=pattern):
            SharpnessTask("gaussian", 1, 8, 0, **kw)
        with pytest.raises((ValueError, TypeError), match=pattern):
            make_mlp(4, 8, 1, 2, 0, **kw)


@pytest.mark.parametrize("value", [None, "off", "OFF", False])
def test_blowup_off_spellings(value):
    assert check_blowup_factor(value) is None
    assert TrialConfig("gaussian", 1, 8, blowup_factor=value).blowup_factor is None


def test_sweep_file_takes_the_new_fields_as_axes():
    spec = sweep_spec({"preset": "smoke", "trial": {"readout_gain": [1.0, 2.0], "bias": False,
                                                    "blowup_factor": None}})
    tasks = build_tasks(spec)
    gains = {t.trial.readout_gain for t in tasks}
    assert gains == {1.0, 2.0} and all(t.trial.bias is False for t in tasks)
    assert all(t.trial.blowup_factor is None for t in tasks)
    with pytest.raises(ValueError, match=r"readout_gain=0.0 must be"):
        sweep_spec({"preset": "smoke", "trial": {"readout_gain": 0}})
    sharp = build_tasks(sweep_spec({"preset": "smoke", "kind": "sharpness",
                                    "options": {"readout_gain": 2.0, "bias": False}}))
    assert all((t.readout_gain, t.bias) == (2.0, False) for t in sharp)


def test_cli_shows_and_takes_the_new_fields(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["eta-star", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--readout-gain X", "--bias, --no-bias", "--blowup-factor X|off"):
        assert flag in out, flag
    argv = ["eta-star", "--dataset", "gaussian", "--depth", "1", "--width", "8",
            "--store", str(tmp_path)]
    assert main(argv + ["--readout-gain", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(r"readout_gain=0.0 must be a finite number", err)
    with pytest.raises(SystemExit) as info:
        main(argv + ["--blowup-factor", "never"])
    assert info.value.code == 2
    assert "argument --blowup-factor: 'never' is not a number or 'off'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("gain", [0.5, 1.0, 2.0])
def test_readout_variance_is_gain_over_fan_in(gain):
    fan_in = 1000
    m = make_mlp(8, fan_in, 1, 1000, seed=3, dtype=torch.float64, readout_gain=gain)
    w = m.layers[-1].weight  # 10^6 draws: the sample variance is within ~0.5 % (5 sigma)
    assert abs(w.var().item() * fan_in / gain - 1) < 0.01
    assert abs(w.mean().item()) < 5 * math.sqrt(gain / fan_in / w.numel())


def test_options_rescale_one_draw():
    a = make_mlp(12, 32, 3, 4, seed=7, dtype=torch.float64)
    b = make_mlp(12, 32, 3, 4, seed=7, dtype=torch.float64, readout_gain=2.0, bias=False)
    assert b.has_bias is False and all(layer.bias is None for layer in b.layers)
    assert sum(p.numel() for p in b.parameters()) == sum(
        layer.weight.numel() for layer in a.layers)
    for la, lb in zip(a.layers[:-1], b.layers[:-1]):
        assert torch.equal(la.weight, lb.weight)  # hidden layers: the same He draw
    # draws are rounded to float32 parameters first: each side to 2^-24 relative
    torch.testing.assert_close(b.layers[-1].weight, math.sqrt(2.0) * a.layers[-1].weight,
                               rtol=2.5e-7, atol=0)


def test_sharpness_task_builds_the_trials_network(gauss):
    for kw in ({}, {"readout_gain": 2.0, "bias": False}):
        cfg = TrialConfig("gaussian", 2, 16, dtype="float64", **kw)
        init = trainer_for(cfg, gauss).net.init(5, torch.float64, "cpu")
        model, *_ = SharpnessTask("gaussian", 2, 16, 5, weights_dtype="float64", **kw).build()
        params = [p.detach() for p in model.parameters()]
        assert len(params) == len(init) and all(torch.equal(p, q)
                                                for p, q in zip(params, init))


# ------------------------------------------------------------------ trainer vs the oracle
def small(**kw):
    base = dict(dataset="gaussian", depth=2, width=16, threshold=0.85, batch_size=64,
                step_budget=40, eval_every=10, n_val=200, input_lr_scale=0.1, dtype="float64")
    return TrialConfig(**{**base, **kw})


ETAS = [0.3, 1.0, 3.0, 10.0, 40.0, 1e300]


def same(a, b) -> bool:
    nan_eq = lambda x, y: (math.isnan(x) and math.isnan(y)) or x == y  # noqa: E731
    return ((a.success, a.reason, a.steps, a.curve) == (b.success, b.reason, b.steps, b.curve)
            and nan_eq(a.best_acc, b.best_acc) and nan_eq(a.final_acc, b.final_acc))


@pytest.mark.parametrize("kw", [{"bias": False}, {"readout_gain": 2.0},
                                {"readout_gain": 2.0, "bias": False, "input_lr_scale": 0.0},
                                {"blowup_factor": None}])
def test_trainer_follows_the_sgd_oracle_with_each_option(gauss, kw):
    cfg = small(**kw)
    pairs = [(e, s) for e in ETAS for s in (0, 3)]
    got = run_trials(cfg, [e for e, _ in pairs], [s for _, s in pairs], data=gauss,
                     record_curve=True)
    reasons = set()
    for (e, s), b in zip(pairs, got):
        a = reference_trial(cfg, e, s, gauss, record_curve=True)
        assert same(a, b), (e, s, a, b)
        assert abs(a.loss0 - b.loss0) <= 1e-12 * abs(a.loss0)
        reasons.add(a.reason)
    assert "diverged_nonfinite" in reasons and len(reasons) >= 3  # several rules compared
    assert ("diverged_blowup" in reasons) == (cfg.blowup_factor is not None)


@pytest.mark.parametrize("kw", [{"bias": False}, {"readout_gain": 2.0, "bias": False}])
def test_weights_follow_the_oracle_without_biases(gauss, kw):
    steps = 10
    cfg = small(threshold=0.99, step_budget=30, eval_every=steps, **kw)
    tr = trainer_for(cfg, gauss, poll_stops=False)
    etas = [0.05, 0.5, 2.0]
    for e in etas:
        tr.add(e, 2)
    assert tr.advance() == []
    assert tr.b == [None] * 3 and len(tr.P) == 3
    for i, e in enumerate(etas):
        model = make_mlp(gauss.input_dim, 16, 2, 2, 2, torch.float64, **kw)
        init = [p.detach().clone() for p in model.parameters()]
        reference_trial(TrialConfig(**{**cfg.to_dict(), "step_budget": steps}), e, 2, gauss,
                        model=model)
        for l, layer in enumerate(model.layers):
            err = (layer.weight.detach() - tr.W[l][i]).abs().max().item()
            assert err <= 1e-11 * layer.weight.abs().max().item(), (e, l, err)
            assert (tr.W[l][i] - init[l]).abs().max().item() > 100 * err + 1e-12


def test_generic_gradients_agree_without_biases(gauss):
    cfg = small(bias=False, readout_gain=2.0)
    a = run_trials(cfg, ETAS, [1] * len(ETAS), data=gauss)
    tr = trainer_for(cfg, gauss, generic=True)
    uids = [tr.add(e, 1) for e in ETAS]
    out = tr.run()
    for r, u in zip(a, uids):
        assert (r.reason, r.steps) == (out[u].reason, out[u].steps)


def test_blowup_off_trains_past_the_blowup(gauss):
    on = run_trial(small(), 40.0, 0, data=gauss)
    off = run_trial(small(blowup_factor=None), 40.0, 0, data=gauss)
    assert on.reason == "diverged_blowup"
    # the same trajectory up to that step, then it goes on: past 100 x the first loss
    assert off.reason != "diverged_blowup" and off.steps > on.steps
    assert off.loss_max > 100 * off.loss0 and off.loss0 == on.loss0
    assert same(off, reference_trial(small(blowup_factor=None), 40.0, 0, gauss))


def test_eta_star_task_with_options_runs_end_to_end(gauss, tmp_path):
    (t,) = eta_star_tasks(["gaussian"], [1], [16], [0],
                          trial={"step_budget": 40, "eval_every": 10, "n_val": 200,
                                 "threshold": 0.85, "input_lr_scale": 0.1, "bias": False,
                                 "readout_gain": 2.0, "blowup_factor": None},
                          search={"eta_lo": 0.01, "tol": 0.5, "scan_factor": 8.0})
    assert isinstance(t, EtaStarTask)
    res = t.compute()
    assert res["n_trials"] == len(res["trials"]) > 0
    assert all(e["reason"] != "diverged_blowup" for e in res["trials"])


# ------------------------------------------------------------------ searches left out of fits
def test_fit_reports_the_searches_it_left_out():
    with pytest.warns(RuntimeWarning, match="dropped 2"):
        f = fit_power_law([32, 64, 128, 256, 512], [math.nan, 1.0, 0.7, 0.5, math.nan],
                          n_boot=0)
    assert (f.n_left_out, f.n_total, f.n_used, f.n_dropped) == (2, 5, 3, 2)
    assert f.left_out_text() == "2 of 5 searches never reached t: left out"
    g = fit_power_law([1.0, 2.0, 4.0], [1.0, 0.5, 0.25], n_boot=0)
    assert (g.n_left_out, g.n_total, g.left_out_text()) == (0, 3, "")
    assert g.alpha == pytest.approx(1.0, abs=1e-12)


def test_scorecard_shows_the_left_out_count_next_to_alpha(tmp_path):
    store = Store(tmp_path / "results")
    p = get_preset("smoke")
    tasks = eta_star_tasks(p["datasets"], p["depths"], p["widths"], p["seeds"], p["trial"],
                           p["search"])
    assert len(tasks) == 4
    for i, t in enumerate(tasks):
        dw = t.trial.depth * t.trial.width
        res = ({"eta_star": math.nan, "status": "no_success"} if i == 0 else
               {"eta_star": 10.0 * dw ** -0.5, "status": "converged"})
        store.put(t.kind, t.record_config(), res, {"code_version": "milr test"})
    table, numbers = collect_scorecard("smoke", store)
    (ev,) = table[table.claim_id == "1"].evidence
    f = numbers["1"]["gaussian"]
    assert (f.n_left_out, f.n_total) == (1, 4) and f.alpha == pytest.approx(0.5, abs=1e-9)
    assert ev.startswith("α = 0.50") and ev.endswith("; 1 of 4 searches never reached t: "
                                                      "left out"), ev


def test_trials_command_finds_a_search_with_the_new_options(tmp_path, capsys):
    store = Store(tmp_path)
    opts = {"readout_gain": 2.0, "bias": False, "blowup_factor": None}
    task, stask = preset_configs("smoke", "gaussian", 1, 16, 0, opts)
    assert (task.trial.readout_gain, task.trial.bias, task.trial.blowup_factor) == (2.0, False,
                                                                                     None)
    assert (stask.readout_gain, stask.bias) == (2.0, False)  # lambda_1 of the same network
    store.put(task.kind, task.record_config(), task.compute())
    argv = ["trials", "--preset", "smoke", "--dataset", "gaussian", "--depth", "1", "--width",
            "16", "--store", str(tmp_path)]
    assert main(argv) == 1  # the preset's own network: not cached
    capsys.readouterr()
    assert main(argv + ["--readout-gain", "2", "--no-bias", "--blowup-factor", "off"]) == 0
    assert str(store.path(task.kind, task.record_config())) in capsys.readouterr().out
