"""milr.trials and `milr trials`: a known trial log gives known table rows, the plot puts the
bracket, eta* and 2/lambda_1 at the right learning rates, the command reads the store."""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Polygon, Rectangle  # noqa: E402

from milr.cli import main  # noqa: E402
from milr.search import EtaStarResult  # noqa: E402
from milr.config import SearchConfig  # noqa: E402
from milr.store import Store  # noqa: E402
from reference import reference_bisection  # noqa: E402
from milr.trials import (OUTCOMES, eta_star_record, plot_trials, preset_configs,  # noqa: E402
                         sharpness_record, trial_outcome, trial_table)

NAN = math.nan

#: a batched search's log: scan (round 1), then two bisection rounds; one cancelled trial
TRIALS = [
    {"eta": 30.0, "success": False, "reason": "diverged_blowup", "steps": 2, "best_acc": NAN,
     "final_acc": NAN, "loss0": 2.3, "wall_time": 0.01, "round": 1},
    {"eta": 7.5, "success": False, "reason": "diverged_nonfinite", "steps": 5,
     "best_acc": 0.31, "final_acc": 0.31, "loss0": 2.3, "wall_time": 0.01, "round": 1},
    {"eta": 1.875, "success": True, "reason": "reached_threshold", "steps": 150,
     "best_acc": 0.77, "final_acc": 0.77, "loss0": 2.3, "wall_time": 0.2, "round": 1},
    {"eta": 3.75, "success": False, "reason": "budget_exhausted", "steps": 400,
     "best_acc": 0.71, "final_acc": 0.69, "loss0": 2.3, "wall_time": 0.5, "round": 2},
    {"eta": 2.5, "success": None, "reason": "cancelled", "steps": 75, "best_acc": 0.6,
     "final_acc": 0.6, "loss0": 2.3, "wall_time": 0.1, "round": 2},
    {"eta": 2.9, "success": True, "reason": "reached_threshold", "steps": 250,
     "best_acc": 0.76, "final_acc": 0.76, "loss0": 2.3, "wall_time": 0.3, "round": 3},
]


def result(trials=TRIALS):
    return EtaStarResult(seed=0, eta_star=2.9, bracket_lo=2.9, bracket_hi=3.75,
                         status="converged", eta_min=NAN, non_interval=False,
                         n_trials=len(trials), wall_time=1.0, trials=[dict(t) for t in trials])


def test_known_log_gives_known_rows():
    df = trial_table(result())
    assert list(df.columns) == ["trial", "eta", "round", "outcome", "reason", "steps",
                                "best_acc", "final_acc"]
    assert df.trial.tolist() == [1, 2, 3, 4, 5, 6]
    assert df.eta.tolist() == [30.0, 7.5, 1.875, 3.75, 2.5, 2.9]
    assert df["round"].tolist() == [1, 1, 1, 2, 2, 3]
    assert df.outcome.tolist() == ["diverged", "diverged", "success", "budget exhausted",
                                   "cancelled", "success"]
    assert df.steps.tolist() == [2, 5, 150, 400, 75, 250]
    assert math.isnan(df.best_acc[0]) and df.best_acc[3] == 0.71 and df.final_acc[3] == 0.69
    assert df.reason[1] == "diverged_nonfinite"


def test_record_and_dict_forms_give_the_same_table(tmp_path):
    store = Store(tmp_path)
    cfg = {"dataset": "gaussian", "depth": 2, "width": 8, "seed": 0}
    store.put("eta_star", cfg, result().to_dict())
    rec = store.get("eta_star", cfg)  # NaN accuracies survive the JSON round trip
    pd.testing.assert_frame_equal(trial_table(rec), trial_table(result()))
    pd.testing.assert_frame_equal(trial_table(result().to_dict()), trial_table(result()))
    with pytest.raises(TypeError, match="EtaStarResult"):
        trial_table([1, 2])


def test_log_without_rounds():
    # the readable Algorithm 1 of the tests logs no rounds; a synthetic oracle: success iff
    # 0.1 <= eta <= 2 (too small fails as well)
    res = reference_bisection(lambda eta: 0.1 <= eta <= 2.0,
                              SearchConfig(eta_lo=1e-3, eta_hi=30, tol=0.1))
    df = trial_table(res)
    assert df["round"].isna().all()
    assert (df.outcome[df.eta <= 2.0] == "success").all()
    assert (df.outcome[df.eta > 2.0] == "budget exhausted").all()
    assert df.eta.iloc[0] == 30.0 and len(df) == res.n_trials


def test_outcome_of_unknown_reason_is_an_error():
    assert trial_outcome({"reason": "diverged_blowup"}) == "diverged"
    assert trial_outcome({"success": None}) == "cancelled"
    with pytest.raises(ValueError, match="reason='exploded'"):
        trial_outcome({"reason": "exploded"})


def _vlines_x(ax):
    return sorted(float(ln.get_xdata()[0]) for ln in ax.lines
                  if len(set(np.atleast_1d(ln.get_xdata()))) == 1 and len(ln.get_xdata()) == 2)


def test_plot_marks_bracket_eta_star_and_stability_limit():
    axes = plot_trials(result(), sharpness=4.0, threshold=0.75)
    assert len(axes) == 2
    acc, steps = axes
    # the shaded final bracket: a span from bracket_lo to bracket_hi on both panels
    for ax in axes:
        spans = [p for p in ax.patches + ax.collections if isinstance(p, (Polygon, Rectangle))]
        xs = []
        for p in spans:
            v = p.get_xy() if isinstance(p, Polygon) else np.array(
                [[p.get_x(), 0], [p.get_x() + p.get_width(), 0]])
            xs.append((round(float(np.min(v[:, 0])), 9), round(float(np.max(v[:, 0])), 9)))
        assert (2.9, 3.75) in xs, xs
        # eta* (solid) and 2/lambda_1 = 0.5 (dashed)
        assert _vlines_x(ax) == [0.5, 2.9]
    dashed = [ln for ln in acc.lines if ln.get_linestyle() == "--"]
    assert [float(ln.get_xdata()[0]) for ln in dashed] == [0.5]
    # one scatter per outcome present, points at the trials' (eta, best accuracy)
    labels = [c.get_label() for c in acc.collections if not c.get_label().startswith("_")]
    assert labels == ["success (2)", "diverged (2)", "budget exhausted (1)", "cancelled (1)"]
    success = next(c for c in acc.collections if c.get_label() == "success (2)")
    assert success.get_offsets().tolist() == [[1.875, 0.77], [2.9, 0.76]]
    # the diverged trial with no accuracy is drawn (hollow) at 0, the other at its accuracy
    div = [c.get_offsets().tolist() for c in acc.collections
           if c.get_label() in ("diverged (2)", "_nolegend_", "") or
           c.get_label().startswith("_")]
    assert [[30.0, 0.0]] in div and [[7.5, 0.31]] in [d for d in div]
    step_pts = sorted(map(tuple, np.concatenate([c.get_offsets() for c in steps.collections
                                                if len(c.get_offsets())]).tolist()))
    assert step_pts == sorted((t["eta"], t["steps"]) for t in TRIALS)
    assert acc.get_xscale() == "log"
    lo, hi = acc.get_xlim()
    assert lo < 0.5 and hi > 30  # every mark is inside the view
    plt.close("all")


def test_plot_on_one_axes_and_bad_sharpness():
    fig, ax = plt.subplots()
    (out,) = plot_trials(result(), ax=ax)
    assert out is ax and _vlines_x(ax) == [2.9]  # no lambda_1: no 2/lambda_1 line
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(t["steps"]) for t in TRIALS)
    with pytest.raises(ValueError, match="sharpness=-1"):
        plot_trials(result(), sharpness=-1)
    plt.close("all")


def test_preset_records_and_command(tmp_path, capsys):
    store = Store(tmp_path)
    task, stask = preset_configs("quick", "gaussian", 2, 64, 1)
    assert task.record_config()["method"] == "batched" and task.record_config()["seed"] == 1
    assert eta_star_record(store, "gaussian", 2, 64, 1) is None
    argv = ["trials", "--dataset", "gaussian", "--depth", "2", "--width", "64", "--seed", "1",
            "--store", str(tmp_path)]
    assert main(argv) == 1
    assert "no cached eta* search" in capsys.readouterr().err
    store.put(task.kind, task.record_config(), result().to_dict())
    store.put(stask.kind, stask.record_config(), {"lambda_1": 5.0, "lambda_1_eff": 4.0})
    assert eta_star_record(store, "gaussian", 2, 64, 1)["result"]["eta_star"] == 2.9
    assert sharpness_record(store, "gaussian", 2, 64, 1)["result"]["lambda_1_eff"] == 4.0
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "eta* = 2.9, final bracket [2.9, 3.75], status converged, 6 trials" in out
    assert "0.4 (plain Hessian), 0.5 (effective" in out
    rows = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit() and "=" not in ln]
    assert [r[:4] for r in rows] == [["1", "30", "1", "diverged"], ["2", "7.5", "1", "diverged"],
                                     ["3", "1.875", "1", "success"],
                                     ["4", "3.75", "2", "budget"],
                                     ["5", "2.5", "2", "cancelled"], ["6", "2.9", "3", "success"]]
    assert main(argv + ["--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert [t["eta"] for t in line["trials"]] == [t["eta"] for t in TRIALS]
    assert line["trials"][0]["best_acc"] is None  # strict JSON: NaN -> null
    assert line["result"]["eta_star"] == 2.9 and line["lambda_1_eff"] == 4.0
    assert set(OUTCOMES) >= {trial_outcome(t) for t in line["trials"]}


@pytest.mark.parametrize("argv, message", [
    (["--width", "2.5"], "argument --width: '2.5' is not an integer >= 1"),
    (["--seed", "x"], "argument --seed: 'x' is not an integer >= 0"),
])
def test_trials_option_errors_are_one_line(argv, message, capsys):
    base = {"--dataset": "gaussian", "--depth": "1", "--width": "8"}
    for k in argv[::2]:
        base.pop(k, None)
    with pytest.raises(SystemExit) as info:
        main(["trials"] + [x for kv in base.items() for x in kv] + argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith(f"milr trials: error: {message}"), err
    assert err.rstrip().endswith("; see milr trials --help"), err
