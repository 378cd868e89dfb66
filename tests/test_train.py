"""The one trainer: divergence detection, budget, success on known data; every member of a
batch follows the readable torch.optim.SGD reference (tests/reference.py) exactly in float64;
non-finite validation logits never count as correct."""
import math

import pytest
import torch

from milr.config import SearchConfig, TrialConfig
from milr.data import Dataset, load_dataset
from milr.models import make_mlp
from milr.search import eta_star
from milr.train import (TrialResult, accuracy, batch_indices, correct_fraction, run_trial,
                        run_trials, step_flops, trainer_for, val_subset)

from reference import reference_trial, small_cfg

TrialBatch = trainer_for
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def gaussian():
    return load_dataset("gaussian")


def cfg(**kw):
    base = dict(dataset="gaussian", depth=2, width=32, step_budget=100, eval_every=20, n_val=500)
    return TrialConfig(**(base | kw))


def test_nan_parameters_detected_as_nonfinite(gaussian):
    c = cfg()
    m = make_mlp(gaussian.input_dim, 32, 2, 2, seed=0)
    with torch.no_grad():
        m.layers[1].weight[0, 0] = float("nan")
    r = run_trial(c, 0.1, 0, data=gaussian, model=m)
    assert (r.success, r.reason, r.steps) == (False, "diverged_nonfinite", 1)


def test_inf_loss_detected_as_nonfinite(gaussian):
    # Read-out weights of +/-1e37 make float32 logits of opposite sign ~ +/-1e38, whose
    # difference overflows: the cross-entropy is +inf (not NaN).
    c = cfg()
    m = make_mlp(gaussian.input_dim, 32, 2, 2, seed=0)
    with torch.no_grad():
        m.layers[-1].weight.zero_()
        m.layers[-1].bias.copy_(torch.tensor([3e38, -3e38]))
    x, y = gaussian.x_train[:64], gaussian.y_train[:64]
    loss = torch.nn.functional.cross_entropy(m(x), torch.ones_like(y))
    assert math.isinf(loss.item())  # the premise: this net's loss is +inf
    # labels of the first batch include class 1, so the first loss is +inf
    r = run_trial(c, 0.1, 0, data=gaussian, model=m)
    assert (r.success, r.reason, r.steps) == (False, "diverged_nonfinite", 1)


def test_huge_learning_rate_diverges(gaussian):
    r = run_trial(cfg(), 1e6, 0, data=gaussian)
    assert not r.success
    assert r.reason in ("diverged_nonfinite", "diverged_blowup")
    assert r.steps < 20


def test_blowup_rule_uses_initial_loss(gaussian):
    # blowup_factor just above 1: any loss increase over the first loss counts as divergence
    r = run_trial(cfg(blowup_factor=1.0001), 50.0, 0, data=gaussian)
    assert r.reason == "diverged_blowup"


def test_tiny_learning_rate_exhausts_budget(gaussian):
    r = run_trial(cfg(), 1e-8, 0, data=gaussian)
    assert (r.success, r.reason, r.steps) == (False, "budget_exhausted", 100)
    assert 0.3 < r.best_acc < 0.85


def test_good_learning_rate_succeeds_and_stops_at_threshold(gaussian):
    c = cfg(depth=1, width=64, input_lr_scale=1.0)
    r = run_trial(c, 1.0, 0, data=gaussian, record_curve=True)
    assert r.success and r.reason == "reached_threshold"
    assert r.best_acc >= c.threshold
    assert r.steps % c.eval_every == 0 and r.steps == r.curve[-1][0]
    assert all(a < c.threshold for _, a in r.curve[:-1])


def test_trial_is_deterministic(gaussian):
    a = run_trial(cfg(), 0.5, 3, data=gaussian, record_curve=True)
    b = run_trial(cfg(), 0.5, 3, data=gaussian, record_curve=True)
    assert (a.reason, a.steps, a.curve) == (b.reason, b.steps, b.curve)


def test_batch_indices_are_epoch_permutations():
    idx = batch_indices(n=10, batch_size=4, steps=5, seed=0)
    assert idx.shape == (5, 4)
    flat = idx.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10))
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert torch.equal(idx, batch_indices(10, 4, 5, 0))
    assert not torch.equal(idx, batch_indices(10, 4, 5, 1))


def test_val_subset_fixed(gaussian):
    x1, y1 = val_subset(gaussian, 100)
    x2, y2 = val_subset(gaussian, 100)
    assert x1.shape == (100, 100) and torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("eta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_eta_raises(gaussian, eta):
    with pytest.raises(ValueError, match="eta"):
        run_trial(cfg(), eta, 0, data=gaussian)


@pytest.mark.parametrize(
    "kw,name",
    [({"threshold": 0.4}, "threshold"), ({"threshold": 1.0}, "threshold"),
     ({"depth": 0}, "depth"), ({"width": -3}, "width"), ({"step_budget": 0}, "step_budget"),
     ({"input_lr_scale": 2.0}, "input_lr_scale"), ({"dataset": "imagenet"}, "dataset"),
     ({"dtype": "float16"}, "dtype"), ({"blowup_factor": 0.5}, "blowup_factor")],
)
def test_bad_trial_config_names_parameter(kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        cfg(**kw)


# ------------------------------------------------------------------ batched members
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: these tiny nets gain nothing from two, and on a shared 2-core
    CI machine two threads spin-wait for each other (10x slower runs seen)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# Rates covering every outcome of the small Gaussian net in float64: too slow (budget, 0.3),
# success (1, 3), too unstable (budget, 10), blowup (40), non-finite loss (1e300 overflows the
# activations at step 2).
ETAS = [0.3, 1.0, 3.0, 10.0, 40.0, 1e300]


def fields(r: TrialResult):
    return (r.success, r.reason, r.steps, r.best_acc, r.final_acc, r.curve)


def same_float(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


# ------------------------------------------------------------------ equivalence with run_trial
def test_float64_members_follow_run_trial_exactly(gauss):
    cfg = small_cfg(dtype="float64")
    pairs = [(e, s) for e in ETAS for s in (0, 3)]
    bat = run_trials(cfg, [e for e, _ in pairs], [s for _, s in pairs], data=gauss,
                             record_curve=True)
    reasons = set()
    for (e, s), b in zip(pairs, bat):
        a = reference_trial(cfg, e, s, gauss, record_curve=True)
        assert fields(a) == fields(b) or (
            (a.success, a.reason, a.steps, a.curve) == (b.success, b.reason, b.steps, b.curve)
            and same_float(a.best_acc, b.best_acc) and same_float(a.final_acc, b.final_acc)
        ), (e, s, a, b)
        assert b.eta == e
        assert abs(a.loss0 - b.loss0) <= 1e-12 * abs(a.loss0)
        reasons.add(a.reason)
    # the grid exercises every stopping rule, so the comparison above covers each of them
    assert reasons == {"budget_exhausted", "reached_threshold", "diverged_blowup",
                       "diverged_nonfinite"}


def test_float32_outcomes_match_run_trial(gauss):
    cfg = small_cfg(dtype="float32")
    etas = [0.3, 3.0, 40.0, 1e30]  # 1e30 overflows float32 at step 2
    bat = run_trials(cfg, etas, [1] * len(etas), data=gauss)
    for e, b in zip(etas, bat):
        a = reference_trial(cfg, e, 1, gauss)
        assert (a.success, a.reason, a.steps) == (b.success, b.reason, b.steps), e
        if not math.isnan(a.best_acc):
            assert abs(a.best_acc - b.best_acc) <= 0.01  # float32: a few of 200 val points


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-11), ("float32", 2e-5)])
def test_weights_match_run_trial_after_steps(gauss, dtype, rtol):
    # Batch with a longer budget; compare at its first evaluation point (step 10) with a
    # run_trial of budget 10 (its data order is a prefix of the longer one).
    steps = 10
    cfg = small_cfg(dtype=dtype, threshold=0.99, step_budget=30, eval_every=steps)
    batch = TrialBatch(cfg, gauss, poll_stops=False)
    etas = [0.05, 0.5, 2.0]
    for e in etas:
        batch.add(e, 2)
    assert batch.advance() == []  # nobody finished at step 10
    for i, e in enumerate(etas):
        model = make_mlp(gauss.input_dim, cfg.width, cfg.depth, 2, 2,
                         dtype=getattr(torch, dtype))
        short = TrialConfig(**{**cfg.to_dict(), "step_budget": steps})
        reference_trial(short, e, 2, gauss, model=model)
        for l, layer in enumerate(model.layers):
            w_seq, w_bat = layer.weight.detach(), batch.W[l][i]
            err = (w_seq - w_bat).abs().max().item()
            assert err <= rtol * w_seq.abs().max().item(), (e, l, err)
            # the update really happened (a test that could not fail otherwise)
            init = make_mlp(gauss.input_dim, cfg.width, cfg.depth, 2, 2,
                            dtype=getattr(torch, dtype)).layers[l].weight
            assert (w_bat - init).abs().max().item() > 100 * err + 1e-12


def test_poll_stops_does_not_change_results(gauss):
    cfg = small_cfg(dtype="float64")
    res = {}
    for poll in (True, False):
        batch = TrialBatch(cfg, gauss, poll_stops=poll, record_curve=True)
        uids = [batch.add(e, 0) for e in ETAS]
        out = {}
        while not batch.idle:
            out.update({u: r for u, r, _ in batch.advance()})
        res[poll] = [fields(out[u])[:3] + (out[u].curve,) for u in uids]
    assert res[True] == res[False]
    # a diverged member records the step where it diverged, not the next evaluation point
    diverged = [r for r in res[False] if r[1].startswith("diverged")]
    assert diverged and all(r[2] % cfg.eval_every != 0 for r in diverged)


def test_queue_late_join_and_cancel(gauss):
    cfg = small_cfg(dtype="float64")
    batch = TrialBatch(cfg, gauss, max_members=2)
    first = [batch.add(e, s) for e, s in [(0.3, 0), (1.0, 1), (3.0, 2)]]
    out = {u: r for u, r, _ in batch.advance()}
    assert batch.n_running <= 2
    late = batch.add(1.0, 4)  # joins at an evaluation point of the others
    victim = batch.add(0.3, 5)
    while not batch.idle:
        out.update({u: r for u, r, _ in batch.advance()})
        if victim in [m.uid for m in batch.members]:
            assert batch.cancel(victim)
    for uid, (e, s) in zip(first + [late], [(0.3, 0), (1.0, 1), (3.0, 2), (1.0, 4)]):
        a = reference_trial(cfg, e, s, gauss)
        assert (a.reason, a.steps, a.best_acc) == (out[uid].reason, out[uid].steps,
                                                   out[uid].best_acc)
    assert out[victim].reason == "cancelled" and out[victim].success is False
    assert batch.peak_members <= 2
    assert not batch.cancel(12345)


def test_batch_state_lives_on_device_in_dtype(gauss):
    cfg = small_cfg(dtype="float32")
    batch = TrialBatch(cfg, gauss, device="cpu")
    batch.add(0.5, 0)
    batch.add(0.5, 1)
    batch.advance()
    assert all(w.dtype == torch.float32 and w.device.type == "cpu" for w in batch.W)
    assert batch.xtr.dtype == torch.float32 and batch.W[0].shape == (2, 16, 100)
    assert batch.loss0.dtype == torch.float64


def test_step_flops_closed_form():
    cfg = TrialConfig("gaussian", depth=3, width=8, batch_size=4, input_lr_scale=0.5)
    n0, c = 5, 2
    fwd = n0 * 8 + 2 * 8 * 8 + 8 * c
    bwd = n0 * 8 + 2 * (2 * 8 * 8 + 8 * c)
    assert step_flops(cfg, n0, c) == 2 * 4 * (fwd + bwd)
    frozen = TrialConfig("gaussian", depth=3, width=8, batch_size=4, input_lr_scale=0.0)
    assert step_flops(frozen, n0, c) == 2 * 4 * (fwd + bwd - n0 * 8)


def test_frozen_input_layer_stays_frozen(gauss):
    cfg = small_cfg(dtype="float64", input_lr_scale=0.0, threshold=0.99, step_budget=20)
    batch = TrialBatch(cfg, gauss)
    batch.add(1.0, 0)
    init = batch.net.init(0, torch.float64, "cpu")
    batch.advance()
    assert torch.equal(batch.W[0][0], init[0])
    assert not torch.equal(batch.W[1][0], init[2])


# ------------------------------------------------------------------ validation
def test_bad_inputs_raise_clear_errors(gauss):
    cfg = small_cfg()
    with pytest.raises(TypeError, match="cfg"):
        TrialBatch("gaussian")
    with pytest.raises(ValueError, match="eta"):
        run_trials(cfg, [-1.0], [0], data=gauss)
    with pytest.raises(ValueError, match="eta"):
        run_trials(cfg, [float("nan")], [0], data=gauss)
    with pytest.raises(ValueError, match="seed"):
        run_trials(cfg, [1.0], [-2], data=gauss)
    with pytest.raises(ValueError, match="max_members"):
        TrialBatch(cfg, gauss, max_members=0)
    with pytest.raises(ValueError, match="equal length"):
        run_trials(cfg, [1.0, 2.0], [0], data=gauss)
    # one rule for every method: seeds are a non-empty list of distinct integers >= 0
    for method in ("bisect", "batched"):
        with pytest.raises(ValueError, match="seeds"):
            eta_star(cfg, SearchConfig(method=method), [], data=gauss)
        with pytest.raises(ValueError, match="repeat"):
            eta_star(cfg, SearchConfig(method=method), [1, 1], data=gauss)
        with pytest.raises(ValueError, match="scan_window"):
            eta_star(cfg, SearchConfig(method=method), [0], data=gauss, scan_window=0)
    with pytest.raises(ValueError, match="k="):
        SearchConfig(k=0)
    with pytest.raises(ValueError, match="k="):
        SearchConfig(k=65)
    if not CUDA:
        with pytest.raises(ValueError, match="device"):
            TrialBatch(cfg, gauss, device="cuda")


# ------------------------------------------------------------------ CUDA (skipped without one)
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu_and_never_syncs_between_evaluations(gauss):
    cfg = small_cfg(dtype="float64")
    cpu = run_trials(cfg, ETAS, [0] * len(ETAS), data=gauss)
    gpu = run_trials(cfg, ETAS, [0] * len(ETAS), data=gauss, device="cuda")
    for a, b in zip(cpu, gpu):
        assert (a.reason, a.steps) == (b.reason, b.steps)
    batch = TrialBatch(cfg, gauss, device="cuda")
    for e in ETAS:
        batch.add(e, 0)
    batch._admit()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            batch._step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------ non-finite validation logits
def test_a_row_with_a_non_finite_logit_is_never_correct():
    """argmax of a NaN row is 0: without the finiteness test it counts as correct whenever
    its label is 0 (what the accuracy of earlier versions did)."""
    logits = torch.tensor([[float("nan"), float("nan")], [float("nan"), 1.0],
                           [0.0, float("inf")], [2.0, 1.0], [1.0, 2.0]])
    y = torch.tensor([0, 0, 1, 0, 0])
    assert float(correct_fraction(logits, y)) == pytest.approx(1 / 5)  # only row 3
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    assert accuracy(model, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)) == 0.0


def _nan_validation(data: Dataset) -> Dataset:
    """The data set with every validation input NaN and every validation label 0."""
    return Dataset(data.name, data.x_train, data.y_train, torch.full_like(data.x_val, math.nan),
                   torch.zeros_like(data.y_val), data.n_classes)


def test_all_nan_validation_is_a_divergence_not_a_success(gaussian):
    """Every validation logit NaN, every label 0: argmax-based accuracy reads 1.0 and the
    trial 'reaches' its threshold. It must stop as diverged_nonfinite, accuracy 0."""
    bad = _nan_validation(gaussian)
    c = cfg(threshold=0.6)
    for r in [run_trial(c, 0.5, 0, data=bad), *run_trials(c, [0.5, 2.0], [0, 1], data=bad),
              reference_trial(c, 0.5, 0, bad)]:
        assert (r.success, r.reason) == (False, "diverged_nonfinite")
        assert r.final_acc == 0.0 and r.steps == c.eval_every
    (res,) = eta_star(c, SearchConfig(eta_lo=0.1, eta_hi=10.0), [0], data=bad)
    assert res.status == "no_success" and math.isnan(res.eta_star)


def test_nan_rows_after_a_huge_step_are_wrong(gaussian):
    """Finite parameters whose validation logits are partly non-finite: those rows count as
    wrong and the trial stops as diverged_nonfinite (never reached_threshold)."""
    c = cfg(threshold=0.51, eval_every=1, step_budget=5)
    m = make_mlp(gaussian.input_dim, 32, 2, 2, seed=0)
    bad = Dataset(gaussian.name, gaussian.x_train, gaussian.y_train, gaussian.x_val.clone(),
                  torch.zeros_like(gaussian.y_val), 2)
    bad.x_val[: len(bad.x_val) * 3 // 4] = math.nan  # most rows NaN, all labels 0
    r = run_trial(c, 1e-6, 0, data=bad, model=m)
    assert (r.success, r.reason, r.steps) == (False, "diverged_nonfinite", 1)
    assert r.final_acc < 0.5


def test_generic_torch_func_path_follows_the_reference(gaussian):
    """The module-generic gradients (torch.func over the MLP as an nn.Module) give the same
    trials as the reference loop in float64, and the same eta* as the hand-written path."""
    c = cfg(dtype="float64", depth=2, width=16, step_budget=40, eval_every=10)
    tr = trainer_for(c, gaussian, generic=True, record_curve=True)
    etas = [0.3, 3.0, 40.0]
    uids = [tr.add(e, 0) for e in etas]
    out = tr.run()
    for e, u in zip(etas, uids):
        a = reference_trial(c, e, 0, gaussian, record_curve=True)
        assert (a.reason, a.steps, a.curve) == (out[u].reason, out[u].steps, out[u].curve)
    # a threshold these nets reach (at the default 0.90 every search fails: nan == nan)
    c = cfg(dtype="float64", depth=2, width=16, step_budget=40, eval_every=10, n_val=200,
            threshold=0.85, input_lr_scale=0.1)
    s = SearchConfig(eta_lo=0.1, eta_hi=30.0, tol=0.3, method="batched")
    hand, func = (eta_star(c, s, [0, 1], data=gaussian, generic=g) for g in (False, True))
    assert [r.status for r in hand] == ["converged", "converged"]
    assert [r.eta_star for r in hand] == [r.eta_star for r in func]
    def log(r):  # every trial's rate, outcome, steps and accuracies (not its wall time)
        return [{k: v for k, v in t.items() if k != "wall_time"} for t in r.trials]

    for a, b in zip(hand, func):
        assert repr(log(a)) == repr(log(b))  # repr: nan accuracies compare equal
