"""lambda_1 of the training loss: HVP operators against dense float64 Hessians, the two
eigen-solvers against each other and against operators with known spectra, the sweep task,
and the two sharpness figure notebooks (smoke runs)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from milr.data import load_dataset
from milr.models import layer_lr_scales, make_mlp
from milr.config import config_key
from milr.sharpness import (LossHessian, SharpnessTask, arpack_top_eigenvalue,
                            lanczos_top_eigenvalue, parameter_scales,
                            power_iteration_top_eigenvalue, sharpness, sharpness_subset,
                            sharpness_tasks, top_eigenvalue)

from reference import dense_hessian  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# -- float64 oracles --------------------------------------------------------------------------

def tiny_problem(depth=2, width=8, n0=5, n_classes=3, n=7, seed=0):
    """A tiny float64 network and data set (inputs N(0, 1), random labels)."""
    model = make_mlp(n0, width, depth, n_classes, seed, torch.float64)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(n, n0, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return model, x, y


def dense_gauss_newton(model, x, y) -> np.ndarray:
    """(1/N) sum_i J_i^T (diag p_i - p_i p_i^T) J_i from the explicit Jacobian of the logits."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def logits(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            params[n] = theta[i:i + k].view(s)
            i += k
        return functional_call(model, params, (x,))

    jac = torch.autograd.functional.jacobian(logits, flat, vectorize=True).numpy()  # (N, C, P)
    p = torch.softmax(logits(flat), dim=1).detach().numpy()
    g = np.zeros((flat.numel(), flat.numel()))
    for i in range(len(x)):
        h = np.diag(p[i]) - np.outer(p[i], p[i])
        g += jac[i].T @ h @ jac[i]
    return g / len(x)


def top(a: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(0.5 * (a + a.T))[-1])


def rel(a, b) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("seed", [0, 1])
def test_lambda_1_matches_dense_float64_hessian(seed):
    model, x, y = tiny_problem(seed=seed)
    h = dense_hessian(model, x, y)
    ev = np.linalg.eigvalsh(h)
    assert ev[0] < 0 < ev[-1]  # an indefinite Hessian: the sign matters
    for method in ("lanczos", "arpack", "power"):
        r = sharpness(model, x, y, tol=1e-12, method=method, maxiter=20000)
        assert r.converged and rel(r.eigenvalue, ev[-1]) <= 1e-8, (method, r, ev[-1])
        if method == "lanczos":  # converges the eigenvalue: its bound, not the residual
            assert r.method == "lanczos" and r.error_bound <= 1e-12 * abs(ev[-1])
        else:  # ARPACK and power iteration converge the residual
            assert r.residual_norm <= 1e-9 * abs(ev[-1])


def test_operator_is_the_dense_hessian():
    model, x, y = tiny_problem()
    h = dense_hessian(model, x, y)
    hd = LossHessian(model, x, y).dense()
    assert np.abs(hd - h).max() <= 1e-12 * np.abs(h).max()


@pytest.mark.parametrize("input_lr_scale", [0.01, 0.3])
def test_effective_lambda_1_matches_dense(input_lr_scale):
    """lambda_max(P^{1/2} H P^{1/2}) with P the per-layer rates, and lambda_max(P H) agrees."""
    model, x, y = tiny_problem(depth=3, width=6)
    h = dense_hessian(model, x, y)
    scales = layer_lr_scales(3, input_lr_scale)
    p = parameter_scales(model, scales).numpy()
    ph = np.sqrt(p)[:, None] * h * np.sqrt(p)[None, :]
    expect = top(ph)
    # P H is similar to P^{1/2} H P^{1/2}: same eigenvalues (checked independently)
    assert rel(float(np.max(np.linalg.eigvals(p[:, None] * h).real)), expect) <= 1e-8
    for method in ("lanczos", "arpack", "power"):
        r = sharpness(model, x, y, lr_scales=scales, tol=1e-12, method=method, maxiter=20000)
        assert rel(r.eigenvalue, expect) <= 1e-8, (method, r.eigenvalue, expect)
    assert rel(expect, top(h)) > 1e-3  # the weighting really changes the answer


def test_frozen_input_layer_is_the_restricted_hessian():
    model, x, y = tiny_problem()
    h = dense_hessian(model, x, y)
    n_in = sum(p.numel() for p in model.layers[0].parameters())
    r = sharpness(model, x, y, lr_scales=layer_lr_scales(2, 0.0), tol=1e-12)
    assert rel(r.eigenvalue, top(h[n_in:, n_in:])) <= 1e-8


def test_gauss_newton_matches_explicit_jacobian():
    model, x, y = tiny_problem()
    g = dense_gauss_newton(model, x, y)
    op = LossHessian(model, x, y, part="gauss_newton")
    assert np.abs(op.dense() - g).max() <= 1e-12 * np.abs(g).max()
    r = sharpness(model, x, y, part="gauss_newton", tol=1e-12)
    assert rel(r.eigenvalue, top(g)) <= 1e-8
    assert np.linalg.eigvalsh(g)[0] > -1e-12  # G is positive semi-definite, H is not


def test_chunks_give_the_same_product():
    model, x, y = tiny_problem(n=11)
    v = np.random.default_rng(0).standard_normal(LossHessian(model, x, y).n)
    for part in ("hessian", "gauss_newton"):
        full = LossHessian(model, x, y, part=part).matvec(v)
        chunked = LossHessian(model, x, y, part=part, chunk_size=4).matvec(v)
        assert np.abs(full - chunked).max() <= 1e-13 * np.abs(full).max()


def test_float32_products_meet_the_tolerance_of_the_sweeps():
    """float32 HVPs are allowed for big nets: on a real net they agree with float64 to well
    below the sweeps' tolerance (1e-5)."""
    data = load_dataset("gaussian")
    x, y = sharpness_subset(data, 256)
    model = make_mlp(data.input_dim, 64, 2, 2, 0)
    r64 = sharpness(model, x, y, tol=1e-8)
    r32 = sharpness(model, x, y, tol=1e-5, dtype=torch.float32)
    assert rel(r32.eigenvalue, r64.eigenvalue) <= 1e-5


def test_model_is_not_modified():
    model, x, y = tiny_problem()
    before = [p.detach().clone() for p in model.parameters()]
    sharpness(model, x, y, tol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2 ** 20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_memory_stays_flat_over_hundreds_of_products():
    """No autograd graph survives a product: 300 products of a net whose graph holds ~2 MB
    of activations must not grow the resident memory by more than a few graphs' worth (a
    leaked graph per product would add ~600 MB)."""
    torch.manual_seed(0)
    model = make_mlp(32, 128, 2, 4, 0, torch.float64)
    x = torch.randn(256, 32, dtype=torch.float64)
    y = torch.randint(0, 4, (256,))
    op = LossHessian(model, x, y)
    v = np.random.default_rng(0).standard_normal(op.n)
    for _ in range(10):  # warm-up: allocator pools, lazy imports
        out = op.matvec(v)
    start = _rss_mb()
    for _ in range(300):
        out = op.matvec(v)
    grown = _rss_mb() - start
    assert grown < 60, f"resident memory grew by {grown:.0f} MB over 300 products"
    t = op.apply(torch.from_numpy(v))
    assert t.grad_fn is None and not t.requires_grad
    assert np.isfinite(out).all()


# -- operators with known spectra ------------------------------------------------------------

def spectrum_operator(eigenvalues, seed=0):
    """A dense symmetric matrix Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    ev = np.asarray(eigenvalues, dtype=float)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(ev), len(ev))))
    a = (q * ev) @ q.T
    return a, (lambda v: a @ v)


@pytest.mark.parametrize("method", ["lanczos", "arpack", "power"])
def test_dominant_negative_eigenvalue_is_not_returned(method):
    ev = np.r_[-10.0, 3.0, np.linspace(-2, 2.5, 48)]
    a, mv = spectrum_operator(ev)
    r = top_eigenvalue(mv, len(ev), method=method, tol=1e-10, maxiter=5000)
    assert r.converged and abs(r.eigenvalue - 3.0) <= 1e-8, r


@pytest.mark.parametrize("method", ["lanczos", "arpack", "power"])
@pytest.mark.parametrize("ev", [
    np.r_[np.full(5, 4.0), np.linspace(-1, 1, 35)],      # top eigenvalue 5-fold degenerate
    np.full(30, 2.0),                                    # every eigenvalue equal
    np.r_[4.0, 4.0 - 1e-9, np.linspace(0, 1, 20)],       # a near-degenerate pair
    np.zeros(12),                                        # the zero operator
])
def test_degenerate_spectra_do_not_fail(method, ev):
    a, mv = spectrum_operator(ev, seed=1)
    r = top_eigenvalue(mv, len(ev), method=method, tol=1e-10, maxiter=5000)
    assert abs(r.eigenvalue - ev.max()) <= 1e-8 * max(1.0, abs(ev.max())), r
    assert np.isfinite(r.residual_norm)


def test_symmetric_plus_minus_pair_power_iteration():
    """+5 and -5 dominate together: plain power iteration cannot converge on A, the shifted
    phase must still find +5."""
    ev = np.r_[5.0, -5.0, np.linspace(-1, 1, 20)]
    a, mv = spectrum_operator(ev, seed=2)
    r = power_iteration_top_eigenvalue(mv, len(ev), tol=1e-10, maxiter=3000)
    assert r.converged and abs(r.eigenvalue - 5.0) <= 1e-8


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_dimensions(n):
    ev = np.arange(1.0, n + 1) * -1.0 + 0.5
    a, mv = spectrum_operator(ev)
    for fn in (lanczos_top_eigenvalue, arpack_top_eigenvalue):
        r = fn(mv, n, tol=1e-10)
        assert abs(r.eigenvalue - ev.max()) <= 1e-12 and r.converged, (fn, r)


def test_same_seed_same_answer_and_counts():
    model, x, y = tiny_problem()
    for method in ("lanczos", "arpack", "power"):
        a = sharpness(model, x, y, tol=1e-4, method=method, seed=3)
        b = sharpness(model, x, y, tol=1e-4, method=method, seed=3)
        assert a.eigenvalue == b.eigenvalue and a.n_hvp == b.n_hvp
        assert a.residual_norm == b.residual_norm


def test_non_convergence_is_reported_not_raised():
    ev = np.r_[1.0, 1.0 - 1e-6, np.linspace(-1, 0.9, 200)]
    a, mv = spectrum_operator(ev, seed=3)
    r = arpack_top_eigenvalue(mv, len(ev), tol=1e-14, maxiter=1, ncv=4)
    assert not r.converged and r.n_hvp < 20
    z = lanczos_top_eigenvalue(mv, len(ev), tol=1e-14, maxiter=5, fallback=False)
    assert not z.converged and z.n_hvp == 5 and z.method == "lanczos"
    assert z.error_bound > 1e-14 * abs(z.eigenvalue) and z.eigenvalue <= 1.0
    assert 1.0 - z.eigenvalue <= z.error_bound  # the reported bound still holds
    p = power_iteration_top_eigenvalue(mv, len(ev), tol=1e-14, maxiter=5)
    assert not p.converged and p.n_hvp <= 11


@pytest.mark.parametrize("fn", [lanczos_top_eigenvalue, arpack_top_eigenvalue])
def test_residual_and_hvp_count_are_honest(fn):
    ev = np.r_[7.0, np.linspace(0, 3, 40)]
    a, mv = spectrum_operator(ev)
    calls = []
    r = fn(lambda v: (calls.append(1), a @ v)[1], len(ev), tol=1e-8)
    assert r.n_hvp == len(calls)
    v = r.eigenvector
    assert abs(np.linalg.norm(v) - 1) < 1e-12
    assert abs(np.linalg.norm(a @ v - r.eigenvalue * v) - r.residual_norm) < 1e-12
    assert abs(v @ a @ v - r.eigenvalue) < 1e-12  # the eigenvalue is v's Rayleigh quotient


# -- the Lanczos stopping rule: the eigenvalue to the accuracy asked for ----------------------

def _spectra(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "large_gap": np.r_[10.0, rng.uniform(-1.0, 5.0, n - 1)],
        "small_gap": np.r_[10.0, 9.9, rng.uniform(-1.0, 9.8, n - 2)],
        "negative_dominant": np.r_[-30.0, 10.0, rng.uniform(-5.0, 9.5, n - 2)],
        "degenerate": np.r_[np.full(5, 10.0), rng.uniform(-1.0, 9.0, n - 5)],
        "power_law": 10.0 / np.arange(1, n + 1) ** 0.5,
    }


@pytest.mark.parametrize("name", list(_spectra()))
@pytest.mark.parametrize("tol", [1e-3, 1e-4, 1e-6])
def test_lanczos_stops_at_the_requested_eigenvalue_accuracy(name, tol):
    """Known spectra: the returned eigenvalue is within tol (relative) of the largest one, it
    is never above it (a Rayleigh quotient), the stated bound holds, and the stop is early:
    not tighter than needed by orders of magnitude on a well separated spectrum."""
    ev = _spectra()[name]
    a, mv = spectrum_operator(ev, seed=4)
    lam = ev.max()
    r = lanczos_top_eigenvalue(mv, len(ev), tol=tol, maxiter=200)
    assert r.converged and r.method == "lanczos", r
    err = lam - r.eigenvalue
    assert -1e-12 * lam <= err <= tol * lam, (name, tol, err / lam)
    assert err <= r.error_bound * (1 + 1e-9) + 1e-12 * lam, (err, r.error_bound)
    assert r.error_bound <= tol * abs(r.eigenvalue)
    assert np.isfinite(r.residual_norm) and r.residual_norm > 0
    # ARPACK's residual test on the same spectrum is met, if at all, with more products
    ar = arpack_top_eigenvalue(mv, len(ev), tol=tol)
    assert r.n_hvp <= ar.n_hvp, (name, tol, r.n_hvp, ar.n_hvp)


def test_lanczos_needs_fewer_products_than_arpack_on_a_small_gap():
    """lambda_2 / lambda_1 = 0.99 (the hard case for power iteration): at 1e-4 Lanczos reaches
    the accuracy with clearly fewer products than ARPACK (ncv 8, and scipy's default basis)
    and than power iteration, all three accurate to 1e-4."""
    rng = np.random.default_rng(5)
    ev = np.r_[10.0, 9.9, rng.uniform(-1.0, 9.8, 398)]
    a, mv = spectrum_operator(ev, seed=5)
    lz = lanczos_top_eigenvalue(mv, len(ev), tol=1e-4)
    pw = power_iteration_top_eigenvalue(mv, len(ev), tol=1e-4, maxiter=5000)
    for r in (lz, pw):
        assert r.converged and rel(r.eigenvalue, 10.0) <= 1e-4, r
    assert lz.method == "lanczos"
    for ncv in (8, None):
        ar = arpack_top_eigenvalue(mv, len(ev), tol=1e-4, ncv=ncv)
        assert ar.converged and rel(ar.eigenvalue, 10.0) <= 1e-4
        assert lz.n_hvp <= 0.8 * ar.n_hvp, (ncv, lz.n_hvp, ar.n_hvp)
    assert lz.n_hvp <= 0.2 * pw.n_hvp, (lz.n_hvp, pw.n_hvp)


def test_lanczos_falls_back_to_arpack_past_its_basis():
    """A basis cap too small for the accuracy: ARPACK takes over from the best Ritz vector;
    the answer is right, the method says so and every product is counted."""
    ev = _spectra()["small_gap"]
    a, mv = spectrum_operator(ev, seed=6)
    calls = []
    r = lanczos_top_eigenvalue(lambda v: (calls.append(1), a @ v)[1], len(ev), tol=1e-8,
                               maxiter=6)
    assert r.method == "lanczos->arpack" and r.converged
    assert rel(r.eigenvalue, 10.0) <= 1e-8 and r.n_hvp == len(calls) > 6


def test_lanczos_with_float32_products():
    """Products rounded to float32 (a slightly non-symmetric operator): the Lanczos arithmetic
    stays float64, the eigenvalue is the Rayleigh quotient of the operator as applied, and it
    meets 1e-5 (float32 rounding is ~1e-7 relative)."""
    ev = _spectra()["small_gap"]
    a, _ = spectrum_operator(ev, seed=7)
    a32 = a.astype(np.float32)
    r = lanczos_top_eigenvalue(lambda v: (a32 @ v.astype(np.float32)).astype(np.float64),
                               len(ev), tol=1e-5)
    assert r.converged and r.method == "lanczos" and rel(r.eigenvalue, 10.0) <= 1e-5, r


def test_lanczos_non_finite_product_is_reported():
    r = lanczos_top_eigenvalue(lambda v: np.full_like(v, np.nan), 10, tol=1e-6)
    assert not r.converged and math.isnan(r.eigenvalue) and r.n_hvp == 1


@pytest.mark.parametrize("kwargs, pattern", [
    ({"tol": 0.0}, r"tol=0.0 must be a finite number in \(0.0, 1.0\)"),
    ({"tol": 2.0}, r"tol=2.0"),
    ({"seed": -1}, r"seed=-1 must be an integer >= 0"),
    ({"maxiter": 0}, r"maxiter=0 must be an integer >= 1"),
])
def test_solver_bad_arguments(kwargs, pattern):
    a, mv = spectrum_operator([1.0, 2.0, 3.0])
    for fn in (lanczos_top_eigenvalue, arpack_top_eigenvalue, power_iteration_top_eigenvalue):
        with pytest.raises(ValueError, match=pattern):
            fn(mv, 3, **kwargs)
    with pytest.raises(ValueError, match="method='arnoldi'"):
        top_eigenvalue(mv, 3, method="arnoldi")


def test_operator_bad_arguments():
    model, x, y = tiny_problem()
    with pytest.raises(ValueError, match="lr_scales has 2 entries"):
        LossHessian(model, x, y, lr_scales=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"lr_scales\[0\]=-1.0"):
        LossHessian(model, x, y, lr_scales=[-1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="part='fisher'"):
        LossHessian(model, x, y, part="fisher")
    with pytest.raises(ValueError, match="expects n0=5"):
        LossHessian(model, x[:, :4], y)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 2\]"):
        LossHessian(model, x, y + 3)
    with pytest.raises(ValueError, match="v must have shape"):
        LossHessian(model, x, y).apply(torch.zeros(3))


# -- the data subset and the sweep task -------------------------------------------------------

def test_subset_is_the_first_rows_of_a_seed0_permutation():
    data = load_dataset("gaussian")
    x, y = sharpness_subset(data, 50)
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:50]
    assert torch.equal(x, data.x_train[idx]) and torch.equal(y, data.y_train[idx])
    x2, _ = sharpness_subset(data, 100)
    assert torch.equal(x2[:50], x)  # nested: a larger subset extends a smaller one
    with pytest.raises(ValueError, match="n_subset=0"):
        sharpness_subset(data, 0)
    with pytest.raises(ValueError, match="n_subset=18001"):
        sharpness_subset(data, 18001)


def test_task_uses_the_eta_star_network_and_the_training_loss():
    """The network is the trial's (make_mlp, same seed and dtype); lambda_1 is the dense
    float64 Hessian's top eigenvalue of the mean cross-entropy on the documented subset."""
    from milr.config import TrialConfig
    from milr.train import torch_dtype

    task = SharpnessTask("gaussian", 1, 4, seed=4, n_subset=30, tol=1e-12)
    cfg = TrialConfig(dataset="gaussian", depth=1, width=4)
    data = load_dataset("gaussian")
    trial_net = make_mlp(data.input_dim, cfg.width, cfg.depth, data.n_classes, 4,
                         torch_dtype(cfg.dtype))
    model, x, y, _ = task.build()
    for a, b in zip(model.parameters(), trial_net.parameters()):
        assert torch.equal(a, b)
    out = task.compute()
    m64 = make_mlp(data.input_dim, 4, 1, 2, 4, torch.float32).to(torch.float64)
    xs, ys = sharpness_subset(data, 30)
    h = dense_hessian(m64, xs.double(), ys)
    assert rel(out["lambda_1"], top(h)) <= 1e-8
    p = parameter_scales(m64, layer_lr_scales(1, 0.01)).numpy()
    assert rel(out["lambda_1_eff"], top(np.sqrt(p)[:, None] * h * np.sqrt(p))) <= 1e-8
    assert out["lambda_1_converged"] and out["lambda_1_eff_converged"]
    assert out["n_params"] == h.shape[0]
    with torch.no_grad():
        assert abs(out["loss0"] - float(F.cross_entropy(m64(xs.double()), ys))) < 1e-12


def test_task_record_config_is_flat_json_with_subset_and_seed():
    import json

    t = SharpnessTask("gaussian", 2, 16, 1, n_subset=200, gauss_newton=True, chunk_size=50)
    c = t.record_config()
    assert json.loads(json.dumps(c)) == c
    assert c["n_subset"] == 200 and c["seed"] == 1 and c["loss"] == "mean_cross_entropy"
    assert "randperm(seed=0)" in c["subset"] and "chunk_size" not in c
    assert all(not isinstance(v, (list, dict)) for v in c.values())
    out = t.compute()
    for k in ("lambda_1", "lambda_1_eff", "lambda_1_gn", "lambda_1_gn_eff"):
        assert out[k] > 0 and out[f"{k}_converged"] and out[f"{k}_n_hvp"] >= 2
    # G's top eigenvalue is below H's here only by the residual term: both of the same order
    assert 0.5 < out["lambda_1_gn"] / out["lambda_1"] < 1.5


def test_tasks_grid_rule_and_validation():
    tasks = sharpness_tasks(["gaussian"], [1, 4], [2, 8], [0, 1], n_subset=100)
    assert {(t.depth, t.width) for t in tasks} == {(1, 2), (1, 8), (4, 8)}  # w >= d
    assert len(tasks) == 6 and {t.n_subset for t in tasks} == {100}
    for kwargs, pattern in [
        (dict(n_subset=0), r"n_subset=0 must be an integer >= 1"),
        (dict(tol=0), r"tol=0.0 must be a finite number"),
        (dict(solver="qr"), r"solver='qr' must be one of"),
        (dict(input_lr_scale=2.0), r"input_lr_scale=2.0"),
        (dict(hvp_dtype="float16"), r"hvp_dtype='float16'"),
        (dict(nsubset=3), r"unknown option\(s\) \['nsubset'\]"),
        (dict(gauss_newton="yes"), r"gauss_newton='yes' must be True or False"),
    ]:
        with pytest.raises((ValueError, TypeError), match=pattern):
            sharpness_tasks(["gaussian"], [1], [8], [0], **kwargs)
    with pytest.raises(ValueError, match="datasets\\[0\\]='imagenet' is not known"):
        sharpness_tasks(["imagenet"], [1], [8], [0])
    with pytest.raises(ValueError, match="seeds\\[0\\]=-2"):
        sharpness_tasks(["gaussian"], [1], [8], [-2])
    with pytest.raises(ValueError, match="depths\\[0\\]=0"):
        sharpness_tasks(["gaussian"], [0], [8], [0])
    with pytest.raises(ValueError, match="seeds=\\[\\] must list at least one"):
        sharpness_tasks(["gaussian"], [1], [8], [])


def test_committed_records_keep_their_keys():
    """A committed quick-preset record (made when solver="lanczos" was ARPACK) is found by the
    same task today: its stored configuration rebuilds the task, whose configuration and key
    are the record's. solver="arpack" is a different key."""
    paths = sorted((ROOT / "data" / "results" / "sharpness").glob("*.json"))
    if not paths:
        pytest.skip("no committed sharpness records")
    checked = 0
    for path in paths[:5]:
        rec = json.loads(path.read_text())
        cfg = dict(rec["config"])
        fields = {k: v for k, v in cfg.items() if k in SharpnessTask.__dataclass_fields__}
        task = SharpnessTask(**fields)
        assert task.record_config() == cfg
        assert config_key("sharpness", task.record_config()) == rec["key"]
        # the file is named by the key (legacy "<key>.json" or "<readable prefix>_<key>.json")
        assert path.stem == rec["key"] or path.stem.endswith("_" + rec["key"])
        assert task.solver == "lanczos"
        other = SharpnessTask(**{**fields, "solver": "arpack"})
        assert config_key("sharpness", other.record_config()) != rec["key"]
        checked += 1
    assert checked == min(5, len(paths))


def test_task_solvers_agree():
    """The task's three solvers give the same lambda_1 and lambda_1_eff within their tol."""
    outs = {s: SharpnessTask("gaussian", 2, 16, 0, n_subset=100, tol=1e-7, solver=s).compute()
            for s in ("lanczos", "arpack", "power")}
    for s in ("arpack", "power"):
        for k in ("lambda_1", "lambda_1_eff"):
            assert rel(outs[s][k], outs["lanczos"][k]) <= 1e-6, (s, k)
            assert outs[s][f"{k}_converged"]


def test_sweep_runs_and_resumes(tmp_path):
    from milr.store import Store
    from milr.sweep import load_results, run_sweep

    tasks = sharpness_tasks(["gaussian"], [1], [8, 16], [0], n_subset=64)
    store = Store(tmp_path)
    df = run_sweep(tasks, store, progress=False)
    assert len(df) == 2 and (df.lambda_1 > 0).all() and (df.n_subset == 64).all()
    again = load_results(tasks, store)
    assert again.lambda_1.tolist() == df.lambda_1.tolist()


# -- notebooks --------------------------------------------------------------------------------

def _run_notebook(name, tmp_path, **extra):
    pm = pytest.importorskip("papermill")
    nb = ROOT / "notebooks" / f"{name}.ipynb"
    figs = tmp_path / "figs"
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(nb), str(out), kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False,
                        parameters={"smoke": True, "store_dir": str(tmp_path / "store"),
                                    "figure_dir": str(figs), **extra})
    text = ""
    for c in json.loads(out.read_text())["cells"]:
        for o in c.get("outputs", []):
            t = o.get("text", "")
            text += "".join(t) if isinstance(t, list) else t
    return figs, text


def test_sharpness_vs_dw_notebook_smoke(tmp_path):
    figs, text = _run_notebook("fig_sharpness_vs_dw", tmp_path)
    assert (figs / "fig_sharpness_vs_dw.png").stat().st_size > 10_000
    assert (figs / "fig_sharpness_vs_dw.pdf").exists()
    assert len(list((tmp_path / "store" / "sharpness").glob("*.json"))) == 4
    assert len(list((tmp_path / "store" / "sharpness_theory").glob("*.json"))) == 8
    assert "lambda_1 (measured): 4 of 4 records" in text


def test_eta_star_vs_sharpness_notebook_smoke(tmp_path):
    figs, text = _run_notebook("fig_eta_star_vs_sharpness", tmp_path, compute_eta_missing=True)
    assert (figs / "fig_eta_star_vs_sharpness.png").stat().st_size > 10_000
    assert (figs / "fig_eta_star_vs_sharpness.pdf").exists()
    assert "eta*: 4 of 4 cached" in text and "missing" not in text


def test_eta_star_vs_sharpness_notebook_without_eta_star(tmp_path):
    """No eta* in the cache (and none computed): the notebook still runs, draws what it can
    and lists what is missing."""
    figs, text = _run_notebook("fig_eta_star_vs_sharpness", tmp_path)
    assert (figs / "fig_eta_star_vs_sharpness.png").exists()
    assert "eta*: 0 of 4 cached" in text and "eta* missing for 4 configuration(s)" in text
