"""milr.theory: closed forms against quadrature, the infinite-width NTK against wide sampled
networks, each step of the bounds as an exact inequality, and the bounds on sampled networks."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from milr.data import load_dataset
from milr.models import layer_lr_scales, make_mlp
from milr.sharpness import sharpness, sharpness_subset
from milr.theory import (depth_profile, empirical_ntk, empirical_ntk_diagonal,
                         full_lr_scales, gn_top_eigenvalue, infinite_width_ntk, ntk_diagonal,
                         predicted_lambda_gn, predicted_stability_limit, rayleigh_lower_bound,
                         relu_expectations, sharpness_bounds, softmax_hessian,
                         stability_limit)

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# -- arc-cosine closed forms ------------------------------------------------------------------

def quad_expectations(s11, s22, s12):
    """E[relu(u) relu(v)] and E[1{u>0}1{v>0}] by 1-D quadrature over u, with v | u Gaussian
    (an algorithm independent of the closed forms)."""
    su = math.sqrt(s11)
    beta = s12 / s11
    sd = math.sqrt(max(s22 - s12 ** 2 / s11, 0.0))

    def e_relu_v(u):  # E[relu(v) | u], v | u ~ N(beta u, sd^2)
        m = beta * u
        if sd == 0:
            return max(m, 0.0)
        return m * stats.norm.cdf(m / sd) + sd * stats.norm.pdf(m / sd)

    def p_pos_v(u):
        m = beta * u
        return float(m > 0) if sd == 0 else stats.norm.cdf(m / sd)

    pdf = lambda u: stats.norm.pdf(u, scale=su)  # noqa: E731
    e1 = integrate.quad(lambda u: u * e_relu_v(u) * pdf(u), 0, 12 * su, epsabs=1e-13,
                        epsrel=1e-12)[0]
    e0 = integrate.quad(lambda u: p_pos_v(u) * pdf(u), 0, 12 * su, epsabs=1e-13,
                        epsrel=1e-12)[0]
    return e1, e0


@pytest.mark.parametrize("s11, s22, rho", [(1.0, 1.0, 0.3), (2.0, 0.5, -0.7), (1.3, 1.3, 0.99),
                                           (0.7, 1.9, 0.0), (1.0, 4.0, -0.2)])
def test_relu_expectations_match_quadrature(s11, s22, rho):
    s12 = rho * math.sqrt(s11 * s22)
    e1, e0 = relu_expectations(np.array(s11), np.array(s22), np.array(s12))
    q1, q0 = quad_expectations(s11, s22, s12)
    assert abs(float(e1) - q1) <= 1e-9 and abs(float(e0) - q0) <= 1e-9


def test_relu_expectations_special_cases():
    e1, e0 = relu_expectations(np.array([2.0, 2.0, 2.0, 0.0]), np.array([2.0, 2.0, 2.0, 1.0]),
                               np.array([2.0, 0.0, -2.0, 0.0]))
    np.testing.assert_allclose(e1, [1.0, 2.0 / (2 * np.pi), 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(e0, [0.5, 0.25, 0.0, 0.0], atol=1e-15)


# -- the infinite-width NTK -------------------------------------------------------------------

def gaussian_inputs(n, seed=0):
    data = load_dataset("gaussian")
    x, _ = sharpness_subset(data, 1000)
    return x[seed * n:(seed + 1) * n].double()


@pytest.mark.parametrize("depth, s1", [(1, 1.0), (3, 0.01), (5, 0.3)])
def test_kernel_diagonal_closed_form(depth, s1):
    x = gaussian_inputs(6)
    k = infinite_width_ntk(x, depth, input_lr_scale=s1)
    sq = (x ** 2).sum(1).numpy()
    np.testing.assert_allclose(np.diag(k.gram(300)), ntk_diagonal(sq, 100, depth, 300,
                                                                  input_lr_scale=s1),
                               rtol=1e-12)
    np.testing.assert_allclose(np.diag(k.nngp), sq / 100, rtol=1e-12)  # logit variance r
    # unit rates: Theta(x, x) = w r (d + 1) / 2 + ||x||^2 / 2 + d / 2 + 1
    if s1 == 1.0:
        expect = 300 * sq / 100 * (depth + 1) / 2 + sq / 2 + depth / 2 + 1
        np.testing.assert_allclose(np.diag(k.gram(300)), expect, rtol=1e-12)


def test_kernels_are_psd_and_symmetric():
    x = gaussian_inputs(30)
    k = infinite_width_ntk(x, 4, input_lr_scale=0.01)
    for m in (k.nngp, k.theta_w, k.theta_input, k.theta_bias, k.gram(64)):
        assert np.abs(m - m.T).max() <= 1e-12 * np.abs(m).max()
        assert np.linalg.eigvalsh(m)[0] >= -1e-10 * np.abs(m).max()


def fluctuation(depth, width):
    """Relative std of one finite network's NTK diagonal, sqrt(exp(5 d / w) - 1) (the scale of
    Hanin & Nica 2019): sqrt(d / w)-small fluctuations that averaging over seeds reduces."""
    return math.sqrt(math.expm1(5 * depth / width))


@pytest.mark.parametrize("depth", [1, 2])
def test_wide_network_ntk_diagonal_matches_infinite_width(depth):
    """Empirical NTK diagonal of w = 2048 networks, averaged over 12 seeds, 4 inputs and the 2
    logits, matches the infinite-width value within 3 standard errors of the seed average
    (3 x fluctuation / sqrt(12): 4.3 % at d = 1, 6.1 % at d = 2), plain and effective."""
    x = gaussian_inputs(4, seed=1)
    sq = (x ** 2).sum(1).numpy()
    n_seeds, width = 12, 2048
    tol = 3 * fluctuation(depth, width) / math.sqrt(n_seeds)
    for s1 in (1.0, 0.01):
        per_seed = []
        for seed in range(n_seeds):
            model = make_mlp(100, width, depth, 2, seed, torch.float64)
            emp = empirical_ntk_diagonal(model, x, input_lr_scale=s1)      # (N, C)
            per_seed.append(np.mean(emp.mean(axis=1) / ntk_diagonal(
                sq, 100, depth, width, input_lr_scale=s1)))
        assert abs(np.mean(per_seed) - 1) <= tol, (s1, np.mean(per_seed), tol)
        # the stated fluctuation scale is conservative for this average over inputs/logits
        assert np.std(per_seed) < fluctuation(depth, width)


def test_wide_network_ntk_off_diagonal_matches_infinite_width():
    """The normalised Gram Theta_ij / sqrt(Theta_ii Theta_jj) (off-diagonal entries test the
    B_l and E_l recursion; normalising removes the common finite-width factor), d = 2,
    w = 1024, averaged over 10 seeds: within 0.03 of the infinite-width value everywhere."""
    x = gaussian_inputs(5, seed=2)
    theory = infinite_width_ntk(x, 2, input_lr_scale=0.01).gram(1024)

    def corr(m):
        d = np.sqrt(np.diag(m))
        return m / d[:, None] / d[None, :]

    emp = np.mean([corr(empirical_ntk(make_mlp(100, 1024, 2, 2, s, torch.float64), x,
                                      input_lr_scale=0.01).mean(axis=0)) for s in range(10)],
                  axis=0)
    assert np.abs(emp - corr(theory)).max() <= 0.03
    off = ~np.eye(5, dtype=bool)
    assert corr(theory)[off].min() > 0.2          # non-trivial off-diagonal values
    assert np.abs(corr(theory)[off] - corr(theory)[off].mean()).max() > 0.03  # and varied


# -- Gauss-Newton top eigenvalue given a kernel -----------------------------------------------

def dense_gn_from_kernel(theta, logits):
    """(1/N) J^T H J with an explicit J such that J J^T = theta (x) I_C."""
    n, c = logits.shape
    root = np.linalg.cholesky(theta + 1e-12 * np.eye(n))          # theta = L L^T
    j = np.kron(root, np.eye(c))                                     # (N C, N C)
    h = softmax_hessian(logits)
    hb = np.zeros((n * c, n * c))
    for i in range(n):
        hb[i * c:(i + 1) * c, i * c:(i + 1) * c] = h[i]
    return j.T @ hb @ j / n


def random_psd(n, seed):
    a = np.random.default_rng(seed).standard_normal((n, n + 3))
    return a @ a.T / n + 0.5


@pytest.mark.parametrize("n, c", [(6, 3), (40, 10)])   # dense path and Lanczos path
def test_gn_top_eigenvalue_matches_explicit_jacobian(n, c):
    theta = random_psd(n, 0)
    z = np.random.default_rng(1).standard_normal((n, c)) * 1.5
    expect = np.linalg.eigvalsh(dense_gn_from_kernel(theta, z))[-1]
    assert abs(gn_top_eigenvalue(theta, z) - expect) <= 1e-8 * expect


def test_softmax_hessian_rows():
    z = np.array([[0.0, 0.0, 0.0], [3.0, -1.0, 0.5]])
    h = softmax_hessian(z)
    np.testing.assert_allclose(h[0], (np.eye(3) - 1 / 3) / 3, atol=1e-15)
    np.testing.assert_allclose(h.sum(axis=2), 0, atol=1e-15)  # H 1 = 0


@pytest.mark.parametrize("seed", range(5))
def test_each_bound_step_is_an_exact_inequality(seed):
    """For any PSD theta and any logits: Rayleigh lower <= lambda_1 <= h_hi lambda_max / N
    <= h_hi mean diag (the three inequalities of the derivation, with no approximation)."""
    g = np.random.default_rng(seed)
    n, c = 25, int(g.integers(2, 6))
    theta = random_psd(n, seed)
    z = g.standard_normal((n, c)) * g.uniform(0.1, 3)
    lam = gn_top_eigenvalue(theta, z)
    for alpha in (np.ones(n), g.uniform(0.2, 2, n)):
        assert rayleigh_lower_bound(theta, z, alpha) <= lam * (1 + 1e-10)
    h_hi = np.linalg.eigvalsh(softmax_hessian(z))[:, -1].max()
    up = h_hi * np.linalg.eigvalsh(theta)[-1] / n
    assert lam <= up * (1 + 1e-10) and up <= h_hi * np.trace(theta) / n * (1 + 1e-10)
    assert h_hi <= 0.5 + 1e-15


def test_uniform_softmax_prediction_is_exact():
    """Logits all 0: lambda_1(G) = lambda_max(theta) / (N C) exactly."""
    theta = random_psd(12, 3)
    lam = gn_top_eigenvalue(theta, np.zeros((12, 4)))
    assert abs(lam - np.linalg.eigvalsh(theta)[-1] / 48) <= 1e-12 * lam


# -- predictions and bounds against sampled networks ------------------------------------------

def test_gn_prediction_given_the_logits_of_a_wide_network():
    """A1 alone: with the network's own logits, the infinite-width NTK predicts the measured
    top eigenvalue of G: within 2 % at d = 1, w = 4096 (NTK fluctuation scale 3.5 %) and
    within 10 % at d = 2, w = 2048 (fluctuation scale 7 %)."""
    data = load_dataset("gaussian")
    x, y = sharpness_subset(data, 200)
    for depth, width, tol, seeds in [(1, 4096, 0.02, (0, 1)), (2, 2048, 0.10, (0,))]:
        theta = infinite_width_ntk(x, depth).gram(width)
        for seed in seeds:
            model = make_mlp(100, width, depth, 2, seed, torch.float64)
            measured = sharpness(model, x, y, part="gauss_newton", tol=1e-8).eigenvalue
            with torch.no_grad():
                z = model(x.double()).numpy()
            pred = gn_top_eigenvalue(theta, z)
            assert abs(pred / measured - 1) <= tol, (depth, seed, pred, measured)


def test_bounds_hold_on_sampled_networks():
    """The 90 % band [lower, upper] and the explicit c1 d w <= . <= c2 d w + input + bias
    contain lambda_1 of G and of H of sampled networks (w >= 16 d), plain and effective."""
    data = load_dataset("gaussian")
    x, y = sharpness_subset(data, 200)
    prof = depth_profile(x, 4)
    checked = 0
    for depth, width in [(1, 32), (2, 64), (4, 128)]:
        for s1 in (1.0, 0.01):
            k = infinite_width_ntk(x, depth, input_lr_scale=s1)
            b = sharpness_bounds(x, depth, width, 2, kernels=k, n_draws=32, profile=prof,
                                 max_depth=4)
            assert b["c1"] * depth * width <= b["lower"] * (1 + 1e-9)
            assert b["upper"] <= b["upper_trace"] * (1 + 1e-9)
            assert b["upper_trace"] <= (b["c2"] * depth * width + b["input_term"]
                                        + b["bias_term"]) * (1 + 1e-9)
            sc = None if s1 == 1.0 else layer_lr_scales(depth, s1)
            for seed in (0, 1):
                model = make_mlp(100, width, depth, 2, seed)
                for part in ("gauss_newton", "hessian"):
                    lam = sharpness(model, x, y, part=part, lr_scales=sc, tol=1e-6).eigenvalue
                    assert b["lower"] <= lam <= b["upper"], (depth, width, s1, part, lam, b)
                    checked += 1
    assert checked == 24


def test_predicted_lambda_gn_outputs():
    x = gaussian_inputs(40)
    p = predicted_lambda_gn(x, 2, 64, 2, n_draws=8)
    assert p["q05"] <= p["q50"] <= p["q95"] and p["std"] > 0 and len(p["draws"]) == 8
    assert p == predicted_lambda_gn(x, 2, 64, 2, n_draws=8)  # seeded
    # at w -> infinity the order-w part dominates: lambda_1 / w converges
    big = [predicted_lambda_gn(x, 2, w, 2, n_draws=4)["mean"] / w for w in (10 ** 4, 10 ** 5)]
    assert abs(big[0] / big[1] - 1) < 0.01


def test_depth_profile_for_identical_inputs():
    """All inputs equal: tau_d = (d + 1) / 2 exactly, so t_d = (d + 1) / (2 d), q_d = 1."""
    x = np.tile(np.random.default_rng(0).standard_normal((1, 7)), (4, 1))
    t, q = depth_profile(x, 5)
    d = np.arange(1, 6)
    np.testing.assert_allclose(t, (d + 1) / (2 * d), rtol=1e-12)
    np.testing.assert_allclose(q, 1.0, rtol=1e-12)


def test_stability_limits():
    np.testing.assert_allclose(stability_limit([4.0, 0.5]), [0.5, 4.0])
    assert np.isnan(stability_limit([0.0, -1.0, np.inf, np.nan])).all()
    np.testing.assert_allclose(predicted_stability_limit([1, 2], [10, 10], c=0.5), [0.4, 0.2])
    with pytest.raises(ValueError, match="c=0.0"):
        predicted_stability_limit(1, 1, c=0.0)


@pytest.mark.parametrize("call, pattern", [
    (lambda: infinite_width_ntk(np.zeros((0, 3)), 1), r"non-empty \(N, n0\)"),
    (lambda: infinite_width_ntk(np.ones((2, 3)), 0), r"depth=0 must be an integer >= 1"),
    (lambda: infinite_width_ntk(np.full((2, 3), np.nan), 1), r"non-finite"),
    (lambda: full_lr_scales(2, lr_scales=[1.0, 1.0]), r"lr_scales has 2 entries"),
    (lambda: full_lr_scales(2, input_lr_scale=-0.1), r"input_lr_scale=-0.1"),
    (lambda: ntk_diagonal([1.0], 3, 1, 0), r"width=0"),
    (lambda: predicted_lambda_gn(np.ones((3, 2)), 1, 8, 1), r"n_classes=1"),
    (lambda: sharpness_bounds(np.ones((3, 2)), 1, 8, 2, level=1.0), r"level=1.0"),
    (lambda: rayleigh_lower_bound(np.eye(2), np.zeros((2, 2)), np.array([1.0, -1.0])),
     r"alpha must be >= 0"),
    (lambda: depth_profile(np.zeros((2, 3)), 2), r"all-zero row"),
])
def test_bad_input(call, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        call()


def test_theory_notebook_smoke(tmp_path):
    pm = pytest.importorskip("papermill")
    nb = ROOT / "notebooks" / "theory_bounds.ipynb"
    figs = tmp_path / "figs"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False,
                        parameters={"smoke": True, "figure_dir": str(figs)})
    assert (figs / "theory_bounds.png").stat().st_size > 10_000
