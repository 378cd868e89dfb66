"""Infinite-width theory of lambda_1 at initialisation: NTK, Gauss-Newton prediction, bounds.

Setting (the one :mod:`milr.models` builds): ReLU MLP, depth d hidden layers of width w,
standard parameterisation, He initialisation (hidden and input weights N(0, 2/fan_in),
read-out N(0, 1/fan_in), zero biases), biases trained, per-layer learning-rate multipliers
``s_1`` (input layer), ``s_2..s_d`` (hidden), ``s_{d+1}`` (read-out).

Everything below is **our derivation** (see ``notebooks/theory_bounds.ipynb`` for the
step-by-step version with every assumption); the paper proves bounds of the form
lambda_1 = Theta(d w) but its constants are not recoverable, so none of these constants is
the paper's.

Infinite-width recursion (Jacot et al. 2018; Arora et al. 2019; arc-cosine kernels of Cho &
Saul 2009). With ``E_l(x, x') = E[relu(u) relu(v)]`` and ``D_l(x, x') = E[1{u>0} 1{v>0}]``
for ``(u, v) ~ N(0, Sigma_l)``:

    Sigma_1 = (2 / n0) x . x'          Sigma_{l+1} = 2 E_l          (l = 1 .. d-1)
    B_d = D_d                          B_l = 2 D_l B_{l+1}          (backward, l < d)
    Theta(x, x') = w [ s_{d+1} E_d + sum_{l=2}^{d} s_l B_l E_{l-1} ]            (order w)
                 + s_1 B_1 (x . x') + sum_{l=1}^{d} s_l B_l + s_{d+1}           (order 1)

per logit, and Theta_{kk'} = 0 for k != k' (the kernel is ``Theta (x) I_C``). The logits
at initialisation are a Gaussian process with covariance ``E_d`` (the NNGP kernel), i.i.d.
across the C outputs. On the diagonal (``r = ||x||^2 / n0``): ``E_l = r``, ``B_l = 1/2``, so
``Theta(x, x) = w r (s_{d+1} + (s_2 + .. + s_d) / 2) + s_1 ||x||^2 / 2 + (s_1 + .. + s_d)/2
+ s_{d+1}``, which is ``w r (d + 1) / 2 + ...`` with unit hidden rates: of order d w.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .config import check_float, check_int, check_split_rows
from .data import DATASETS, load_dataset
from .sharpness import SUBSET_SEED, sharpness_subset

__all__ = [
    "relu_expectations",
    "InfiniteWidthNTK",
    "infinite_width_ntk",
    "ntk_diagonal",
    "empirical_ntk",
    "empirical_ntk_diagonal",
    "softmax_hessian",
    "gn_top_eigenvalue",
    "predicted_lambda_gn",
    "sharpness_bounds",
    "depth_profile",
    "rayleigh_lower_bound",
    "stability_limit",
    "predicted_stability_limit",
    "full_lr_scales",
    "top_eigenvalue_psd",
    "TheoryTask",
    "theory_tasks",
    "THEORY_KIND",
]


def full_lr_scales(depth: int, input_lr_scale: float = 1.0,
                   lr_scales: Sequence[float] | None = None) -> np.ndarray:
    """Per-layer multipliers ``(s_1, ..., s_{d+1})`` as a float64 array ``(depth + 1,)``.

    ``lr_scales`` (length depth + 1) wins if given; otherwise the input layer gets
    ``input_lr_scale`` and every other layer 1 (as :func:`milr.models.layer_lr_scales`).
    Raises ``ValueError`` on a wrong length or a negative entry.
    """
    depth = check_int("depth", depth)
    if lr_scales is None:
        s = [check_float("input_lr_scale", input_lr_scale, 0.0)] + [1.0] * depth
    else:
        s = [check_float(f"lr_scales[{i}]", v, 0.0) for i, v in enumerate(lr_scales)]
        if len(s) != depth + 1:
            raise ValueError(f"lr_scales has {len(s)} entries, need depth + 1 = {depth + 1}")
    return np.asarray(s, dtype=np.float64)


def relu_expectations(s11: np.ndarray, s22: np.ndarray, s12: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``E[relu(u) relu(v)]`` and ``E[1{u>0} 1{v>0}]`` for ``(u, v) ~ N(0, [[s11, s12],
    [s12, s22]])``, elementwise over arrays of equal shape (closed forms, Cho & Saul 2009):

        E[relu relu] = sqrt(s11 s22) (sin t + (pi - t) cos t) / (2 pi),  E[1 1] = (pi - t)/(2 pi)

    with ``t = arccos(s12 / sqrt(s11 s22))`` (the correlation is clipped to [-1, 1]). Where a
    variance is 0 both expectations are 0 (u or v is then 0 almost surely). Float64 in and out.
    """
    s11, s22, s12 = (np.asarray(a, dtype=np.float64) for a in (s11, s22, s12))
    norm = np.sqrt(s11 * s22)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(norm > 0, s12 / np.where(norm > 0, norm, 1.0), 0.0)
    t = np.arccos(np.clip(rho, -1.0, 1.0))
    e_relu = norm * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)
    e_step = np.where(norm > 0, (np.pi - t) / (2 * np.pi), 0.0)
    return e_relu, e_step


@dataclass
class InfiniteWidthNTK:
    """The infinite-width kernels of one ReLU MLP architecture on N inputs (float64).

    nngp: ``(N, N)`` covariance of each logit at initialisation (E_d).
    theta_w: ``(N, N)`` coefficient of w in the NTK (the hidden and read-out weights).
    theta_input: ``(N, N)`` input-layer weight term ``s_1 B_1 (x . x')`` (order 1).
    theta_bias: ``(N, N)`` bias terms (order 1).
    depth, lr_scales: the architecture's d and (s_1 .. s_{d+1}).
    NTK per logit at width w: ``gram(w) = w theta_w + theta_input + theta_bias``.
    """
    nngp: np.ndarray
    theta_w: np.ndarray
    theta_input: np.ndarray
    theta_bias: np.ndarray
    depth: int
    lr_scales: np.ndarray

    def logit_root(self) -> np.ndarray:
        """A factor L ``(N, N)`` with ``L L^T = nngp`` (cached), to draw logits."""
        if getattr(self, "_root", None) is None:
            self._root = _psd_root(self.nngp)
        return self._root

    def gram(self, width: int) -> np.ndarray:
        """The NTK Gram matrix ``(N, N)`` per logit at width ``width`` (>= 1)."""
        width = check_int("width", width)
        return width * self.theta_w + self.theta_input + self.theta_bias


def _as_x(x) -> np.ndarray:
    x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be a non-empty (N, n0) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains non-finite values")
    return x


def infinite_width_ntk(x, depth: int, input_lr_scale: float = 1.0,
                       lr_scales: Sequence[float] | None = None) -> InfiniteWidthNTK:
    """The infinite-width NNGP and NTK of a He-initialised ReLU MLP on inputs ``x (N, n0)``.

    ``depth`` >= 1 hidden layers; multipliers from :func:`full_lr_scales` (default: every
    layer at 1, i.e. the plain Hessian; ``input_lr_scale=0.01`` gives the effective one).
    Cost O(d N^2) plus one ``(N, n0) x (n0, N)`` product. Source: the recursion in this
    module's docstring (our derivation for this parameterisation; Jacot et al. 2018).
    Raises ``ValueError`` on bad ``x``, depth or multipliers.
    """
    x = _as_x(x)
    s = full_lr_scales(depth, input_lr_scale, lr_scales)
    n0 = x.shape[1]
    gram_x = x @ x.T
    sigma = 2.0 / n0 * gram_x
    e_list, d_list = [], []
    for _ in range(depth):
        diag = np.diag(sigma)
        e, dstep = relu_expectations(diag[:, None], diag[None, :], sigma)
        e_list.append(e)
        d_list.append(dstep)
        sigma = 2.0 * e
    # backward: B_d = D_d, B_l = 2 D_l B_{l+1}
    b_list = [None] * depth
    b_list[depth - 1] = d_list[depth - 1]
    for l in range(depth - 2, -1, -1):
        b_list[l] = 2.0 * d_list[l] * b_list[l + 1]
    # layer index l = 1..d maps to list index l-1; s[0] = s_1 (input), s[d] = read-out
    theta_w = s[depth] * e_list[depth - 1]
    for l in range(2, depth + 1):
        theta_w = theta_w + s[l - 1] * b_list[l - 1] * e_list[l - 2]
    theta_input = s[0] * b_list[0] * gram_x
    theta_bias = np.full_like(gram_x, s[depth])
    for l in range(1, depth + 1):
        theta_bias = theta_bias + s[l - 1] * b_list[l - 1]
    return InfiniteWidthNTK(e_list[depth - 1], theta_w, theta_input, theta_bias, depth, s)


def ntk_diagonal(sq_norm, n0: int, depth: int, width: int, input_lr_scale: float = 1.0,
                 lr_scales: Sequence[float] | None = None) -> np.ndarray:
    """Closed form of the infinite-width NTK diagonal ``Theta(x, x)`` given ``||x||^2``:

        Theta(x, x) = w r (s_{d+1} + sum_{l=2}^{d} s_l / 2) + s_1 ||x||^2 / 2
                      + sum_{l=1}^{d} s_l / 2 + s_{d+1},          r = ||x||^2 / n0.

    ``sq_norm``: array of ``||x||^2`` (any shape); returns the same shape, float64.
    Source: the recursion with E_l(x, x) = r and B_l(x, x) = 1/2 (our derivation).
    """
    n0 = check_int("n0", n0)
    width = check_int("width", width)
    s = full_lr_scales(depth, input_lr_scale, lr_scales)
    q = np.asarray(sq_norm, dtype=np.float64)
    r = q / n0
    d = len(s) - 1
    return (width * r * (s[d] + 0.5 * s[1:d].sum()) + 0.5 * s[0] * q
            + 0.5 * s[:d].sum() + s[d])


def empirical_ntk(model, x: torch.Tensor, input_lr_scale: float = 1.0,
                  lr_scales: Sequence[float] | None = None) -> np.ndarray:
    """The finite-width NTK of ``model`` at its current parameters, per logit:
    ``Theta_kk(x_i, x_j) = sum_l s_l <d f_k(x_i)/d theta_l, d f_k(x_j)/d theta_l>``,
    an ``(C, N, N)`` float64 array (cross-logit blocks k != k' are not computed).

    ``x``: ``(N, n0)``. One backward pass per (input, logit) and the N x N inner products
    of the gradients: keep N small (tests use a few inputs). Nothing is modified.
    """
    depth = len(model.layers) - 1
    s = full_lr_scales(depth, input_lr_scale, lr_scales)
    if x.ndim != 2 or x.shape[1] != model.n0:
        raise ValueError(f"x must be (N, {model.n0}), got {tuple(x.shape)}")
    dtype = next(model.parameters()).dtype
    params = list(model.parameters())
    weights = torch.cat([torch.full((p.numel(),), float(s[li]), dtype=torch.float64)
                         for li, layer in enumerate(model.layers)
                         for p in layer.parameters()])
    n, c = x.shape[0], model.n_classes
    out = np.zeros((c, n, n))
    for k in range(c):                       # one logit at a time: memory N x n_params
        grads = torch.empty(n, weights.numel(), dtype=torch.float64)
        for i in range(n):
            logit = model(x[i:i + 1].to(dtype))[0, k]
            g = torch.autograd.grad(logit, params)
            grads[i] = torch.cat([t.reshape(-1) for t in g]).double()
        out[k] = ((grads * weights) @ grads.T).numpy()
    return out


def empirical_ntk_diagonal(model, x: torch.Tensor, input_lr_scale: float = 1.0,
                           lr_scales: Sequence[float] | None = None) -> np.ndarray:
    """The finite-width NTK diagonal ``Theta_kk(x_i, x_i) = sum_l s_l ||d f_k(x_i) / d
    theta_l||^2``, ``(N, C)`` float64. Memory: one gradient at a time (fine for very wide
    nets, unlike :func:`empirical_ntk`). One backward pass per (input, logit)."""
    depth = len(model.layers) - 1
    s = full_lr_scales(depth, input_lr_scale, lr_scales)
    if x.ndim != 2 or x.shape[1] != model.n0:
        raise ValueError(f"x must be (N, {model.n0}), got {tuple(x.shape)}")
    dtype = next(model.parameters()).dtype
    layer_of = [li for li, layer in enumerate(model.layers) for _ in layer.parameters()]
    params = list(model.parameters())
    out = np.zeros((x.shape[0], model.n_classes))
    for i in range(x.shape[0]):
        logits = model(x[i:i + 1].to(dtype))[0]
        for k in range(model.n_classes):
            g = torch.autograd.grad(logits[k], params, retain_graph=k + 1 < model.n_classes)
            out[i, k] = sum(float(s[li]) * float((t.double() ** 2).sum())
                            for li, t in zip(layer_of, g))
    return out


def softmax_hessian(logits: np.ndarray) -> np.ndarray:
    """Curvature of cross-entropy in the logits, ``diag(p) - p p^T`` per row: ``(N, C, C)``
    float64 from logits ``(N, C)`` (independent of the label)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {z.shape}")
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return np.einsum("ic,cd->icd", p, np.eye(p.shape[1])) - np.einsum("ic,id->icd", p, p)


def _sqrt_psd(h: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(h)
    return np.einsum("icd,id,ied->ice", vecs, np.sqrt(np.clip(vals, 0, None)), vecs)


def gn_top_eigenvalue(theta: np.ndarray, logits: np.ndarray) -> float:
    """Top eigenvalue of the Gauss-Newton part of the mean cross-entropy Hessian when the
    per-logit NTK Gram is ``theta (N, N)`` (the same for every logit, no cross-logit terms)
    and the logits are ``logits (N, C)``:

        lambda_1(G) = lambda_max( (1/N) H^{1/2} (Theta (x) I_C) H^{1/2} ),

    H = blockdiag of :func:`softmax_hessian`. (G = (1/N) J^T H J and (1/N) H^{1/2} J J^T
    H^{1/2} share their non-zero spectrum, and J J^T = Theta (x) I_C at infinite width.)
    Dense eigen-decomposition of the (N C, N C) matrix for N C <= 200, else Lanczos
    (``eigsh``, ``which='LA'``, seeded) with O(N^2 C) products; tol 1e-9. Returns a float
    (loss per unit parameter squared, like lambda_1).
    """
    theta = np.asarray(theta, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    n = theta.shape[0]
    if theta.shape != (n, n) or z.ndim != 2 or z.shape[0] != n:
        raise ValueError(f"theta must be (N, N) and logits (N, C); got {theta.shape}, "
                         f"{z.shape}")
    c = z.shape[1]
    hs = _sqrt_psd(softmax_hessian(z))                        # (N, C, C)

    def mv(u):
        a = np.matmul(hs, u.reshape(n, c, 1))[..., 0]
        a = theta @ a
        return (np.matmul(hs, a[..., None])[..., 0] / n).ravel()

    if n * c <= 200:
        # dense: M[(i,c),(j,e)] = sum_{c',e'} hs_i[c,c'] theta_ij [c'=e'] hs_j[e',e] / N
        m = np.einsum("icd,ij,jde->icje", hs, theta, hs).reshape(n * c, n * c) / n
        return float(np.linalg.eigvalsh(0.5 * (m + m.T))[-1])
    from scipy.sparse.linalg import LinearOperator, eigsh

    op = LinearOperator((n * c, n * c), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n * c)
    return float(eigsh(op, k=1, which="LA", v0=v0, tol=1e-9, ncv=min(n * c, 16))[0][-1])


def _psd_root(k: np.ndarray) -> np.ndarray:
    """A factor L with L L^T = k (+ 1e-10 mean(diag) I): Cholesky, or eigh if that fails."""
    jitter = 1e-10 * float(np.mean(np.diag(k))) * np.eye(len(k))
    try:
        return np.linalg.cholesky(k + jitter)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(k)
        return vecs * np.sqrt(np.clip(vals, 0, None))


def _gp_logits(nngp: np.ndarray, n_classes: int, n_draws: int, seed: int,
               root: np.ndarray | None = None) -> np.ndarray:
    """``(n_draws, N, C)`` logit draws from the NNGP, i.i.d. across logits (seeded)."""
    root = _psd_root(nngp) if root is None else root
    g = np.random.default_rng(seed)
    return np.einsum("nm,dmc->dnc", root, g.standard_normal((n_draws, nngp.shape[0],
                                                               n_classes)))


def top_eigenvalue_psd(a: np.ndarray) -> float:
    """Largest eigenvalue of a symmetric ``(N, N)`` float64 matrix (dense for N <= 200, else
    seeded Lanczos to 1e-12)."""
    a = np.asarray(a, dtype=np.float64)
    if len(a) <= 200:
        return float(np.linalg.eigvalsh(a)[-1])
    from scipy.sparse.linalg import eigsh

    v0 = np.random.default_rng(0).standard_normal(len(a))
    return float(eigsh(a, k=1, which="LA", v0=v0, tol=1e-12, ncv=min(len(a), 16))[0][-1])


def predicted_lambda_gn(x, depth: int, width: int, n_classes: int,
                        input_lr_scale: float = 1.0, lr_scales: Sequence[float] | None = None,
                        n_draws: int = 16, seed: int = 0,
                        kernels: InfiniteWidthNTK | None = None) -> dict:
    """Infinite-width prediction of lambda_1 of the Gauss-Newton part at initialisation,
    for the mean cross-entropy on ``x (N, n0)`` with ``n_classes`` logits.

    At infinite width the NTK is deterministic (:func:`infinite_width_ntk`) and the logits
    are a Gaussian process (the NNGP), so lambda_1(G) has a distribution over
    initialisations: we sample ``n_draws`` logit matrices (seeded) and apply
    :func:`gn_top_eigenvalue` to each.

    Returns a dict: ``mean``, ``std``, ``q05``, ``q50``, ``q95`` over the draws, and
    ``uniform`` = lambda_max(Theta) / (N C), the value when every logit is 0 (softmax
    uniform, H = (I - 11^T / C) / C): all in loss per parameter squared.
    Raises ``ValueError`` on bad sizes. Source: our derivation (module docstring).
    """
    n_classes = check_int("n_classes", n_classes, 2)
    n_draws = check_int("n_draws", n_draws)
    k = kernels or infinite_width_ntk(x, depth, input_lr_scale, lr_scales)
    theta = k.gram(width)
    n = theta.shape[0]
    draws = _gp_logits(k.nngp, n_classes, n_draws, seed, k.logit_root())
    vals = np.array([gn_top_eigenvalue(theta, z) for z in draws])
    uniform = top_eigenvalue_psd(theta) / (n * n_classes)
    q = np.quantile(vals, [0.05, 0.5, 0.95])
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if n_draws > 1 else 0.0,
            "q05": float(q[0]), "q50": float(q[1]), "q95": float(q[2]), "uniform": uniform,
            "draws": vals.tolist()}


def depth_profile(x, max_depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Order-w kernel of the *normalised* data, per layer, for d = 1 .. max_depth.

    At order w the NTK factorises as ``theta_w(x_i, x_j) = sqrt(r_i r_j) tau_d(rho_ij)``
    (r = ||x||^2 / n0, rho the input cosine; unit hidden and read-out rates), because the
    He recursion preserves the diagonal. Returns two float64 arrays ``(max_depth,)``:
    ``t_d = mean_ij tau_d(rho_ij) / d`` (kernel mass per layer) and
    ``q_d = min_i mean_j tau_d(rho_ij) / mean_ij tau_d(rho_ij)`` (worst row over mean row).
    ``min_d t_d q_d^2`` is the data constant of the lower bound (:func:`sharpness_bounds`).
    Cost O(max_depth^2 N^2).
    """
    max_depth = check_int("max_depth", max_depth)
    x = _as_x(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("x has an all-zero row; its correlation with other inputs is undefined")
    xn = x / norms * math.sqrt(x.shape[1])
    t, q = np.empty(max_depth), np.empty(max_depth)
    for d in range(1, max_depth + 1):
        a = infinite_width_ntk(xn, d).theta_w.mean(axis=1)
        t[d - 1] = a.mean() / d
        q[d - 1] = a.min() / a.mean()
    return t, q


def rayleigh_lower_bound(theta: np.ndarray, logits: np.ndarray, alpha: np.ndarray) -> float:
    """Lower bound on lambda_1 of the Gauss-Newton part from one test direction.

    For weights ``alpha (N,) >= 0`` and ``g = J^T (alpha (x) e)`` (move every logit e by
    alpha_i), with ``J_i J_j^T = theta_ij I_C`` (infinite width):

        lambda_1 >= g^T G g / g^T g = lambda_max( sum_i u_i^2 H_i ) / (N alpha^T theta alpha),
        u = theta alpha,

    maximised over unit e by taking the top eigenvector. Float64; ``theta (N, N)``,
    ``logits (N, C)``. Source: Rayleigh quotient (our derivation).
    """
    theta = np.asarray(theta, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if (alpha < 0).any():
        raise ValueError("alpha must be >= 0")
    u = theta @ alpha
    h = softmax_hessian(logits)
    m = np.einsum("i,icd->cd", u ** 2, h)
    return float(np.linalg.eigvalsh(m)[-1] / (len(alpha) * float(alpha @ u)))


def sharpness_bounds(x, depth: int, width: int, n_classes: int, input_lr_scale: float = 1.0,
                     lr_scales: Sequence[float] | None = None, n_draws: int = 64,
                     seed: int = 0, level: float = 0.9, max_depth: int | None = None,
                     kernels: InfiniteWidthNTK | None = None,
                     profile: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Our lower and upper bounds on lambda_1 of the Gauss-Newton part at initialisation,
    in the infinite-width limit, on the data ``x (N, n0)`` (loss per parameter squared).

    Derivation (step by step in ``notebooks/theory_bounds.ipynb``; our own: the paper's
    constants are not recoverable). Theta is the per-logit NTK Gram
    (:func:`infinite_width_ntk`), H_i the softmax Hessians of the logits, r_i = ||x_i||^2/n0.

    * ``upper`` = h_hi lambda_max(Theta) / N, since (1/N) H^{1/2}(Theta (x) I)H^{1/2} <=
      (lambda_max(Theta) / N) H; ``h_hi = max_i lambda_max(H_i)`` (<= 1/2 for any logits).
    * ``upper_trace`` = h_hi mean_i Theta_ii (trace >= top eigenvalue), in closed form
      (:func:`ntk_diagonal`) = ``c2 d w + input_term + bias_term`` at most, with
      ``c2 = h_hi mean_i r_i`` (using (d + 1) / 2 <= d for unit hidden rates), ``input_term =
      h_hi s_1 mean_i ||x_i||^2 / 2`` and ``bias_term = h_hi (sum_{l<=d} s_l / 2 + s_{d+1})``.
    * ``lower`` = the larger of two Rayleigh quotients (:func:`rayleigh_lower_bound`), with
      alpha = 1 and alpha_i = r_i^{-1/2}.
    * ``c1 d w``: at order w, alpha_i = r_i^{-1/2} gives ``lambda_1 >= w d t_d q_d^2
      lambda_max(mean_i r_i H_i)`` (:func:`depth_profile`), so ``c1 = h_lo min_{d'} t_d'
      q_d'^2`` with ``h_lo = lambda_max(mean_i r_i H_i)``, the minimum over
      d' <= max(depth, max_depth) (valid for every depth in that range); up to a factor
      1 + O((s_1 ||x||^2 + d) / (d w)) from the order-1 parts of Theta.

    The curvature factors depend on the random logits at initialisation (NNGP draws): the
    lower quantities use the ``(1 - level) / 2`` quantile and the upper ones the
    ``(1 + level) / 2`` quantile over ``n_draws`` seeded draws, so each side holds with
    probability about ``(1 + level) / 2`` over initialisations, at infinite width.

    ``kernels`` and ``profile`` (the output of :func:`depth_profile` up to at least
    ``max(depth, max_depth)``) may be passed in to avoid recomputing them over a grid.

    Returns a dict of floats: ``lower``, ``upper``, ``upper_trace``, ``c1``, ``c2``,
    ``input_term``, ``bias_term``, ``h_lo``, ``h_hi``, ``gamma`` (= min_d t_d q_d^2), ``r_bar``.
    Raises ``ValueError`` on bad arguments.
    """
    width = check_int("width", width)
    n_classes = check_int("n_classes", n_classes, 2)
    n_draws = check_int("n_draws", n_draws, 2)
    level = check_float("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    x = _as_x(x)
    k = kernels or infinite_width_ntk(x, depth, input_lr_scale, lr_scales)
    s = k.lr_scales
    theta = k.gram(width)
    n, n0 = x.shape
    sq = (x ** 2).sum(axis=1)
    r = sq / n0
    draws = _gp_logits(k.nngp, n_classes, n_draws, seed, k.logit_root())
    ones, inv_sqrt_r = np.ones(n), 1.0 / np.sqrt(np.where(r > 0, r, np.inf))
    lows, his, h_los = [], [], []
    for z in draws:
        h = softmax_hessian(z)
        lows.append(max(rayleigh_lower_bound(theta, z, ones),
                        rayleigh_lower_bound(theta, z, inv_sqrt_r)))
        his.append(float(np.linalg.eigvalsh(h)[:, -1].max()))
        h_los.append(float(np.linalg.eigvalsh(np.einsum("i,icd->cd", r, h) / n)[-1]))
    q_lo, q_hi = (1 - level) / 2, (1 + level) / 2
    lower = float(np.quantile(lows, q_lo))
    h_hi = float(np.quantile(his, q_hi))
    h_lo = float(np.quantile(h_los, q_lo))
    upper = h_hi * top_eigenvalue_psd(theta) / n
    upper_trace = h_hi * float(ntk_diagonal(sq, n0, depth, width, lr_scales=s).mean())
    md = max(depth, max_depth or depth)
    t, q = depth_profile(x, md) if profile is None else profile
    if len(t) < md:
        raise ValueError(f"profile covers depths <= {len(t)}, need {md}")
    t, q = np.asarray(t)[:md], np.asarray(q)[:md]
    gamma = float((t * q ** 2).min())
    r_bar = float(r.mean())
    return {"lower": lower, "upper": upper, "upper_trace": upper_trace,
            "c1": h_lo * gamma, "c2": h_hi * r_bar,
            "input_term": float(h_hi * 0.5 * s[0] * sq.mean()),
            "bias_term": h_hi * (0.5 * float(s[:depth].sum()) + float(s[depth])),
            "h_lo": h_lo, "h_hi": h_hi, "gamma": gamma, "r_bar": r_bar}


def stability_limit(lambda_1) -> np.ndarray:
    """Gradient-descent stability limit ``2 / lambda_1`` (a learning rate), elementwise.

    On a quadratic with top curvature lambda_1 > 0, GD at a constant rate eta diverges iff
    eta > 2 / lambda_1 (classical; Cohen et al. 2021 for networks). Non-positive or non-finite
    lambda_1 gives NaN (no limit from curvature)."""
    lam = np.asarray(lambda_1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(lam) & (lam > 0), 2.0 / lam, np.nan)


def predicted_stability_limit(depth, width, c: float = 1.0) -> np.ndarray:
    """The theory's scaling of the stability limit, ``2 / (c d w)`` = Theta(1 / (d w)),
    elementwise over arrays of depth and width (``c`` in loss per parameter squared per unit
    of d w, e.g. a fitted or bound constant; must be > 0)."""
    c = check_float("c", c, 0.0, lo_open=True)
    dw = np.asarray(depth, dtype=np.float64) * np.asarray(width, dtype=np.float64)
    return 2.0 / (c * dw)


# --------------------------------------------------------------------------- sweep tasks

THEORY_KIND = "sharpness_theory"


@functools.lru_cache(maxsize=4)
def _cached_kernels(dataset: str, n_subset: int, depth: int, input_lr_scale: float):

    x, _ = sharpness_subset(load_dataset(dataset), n_subset)
    x = x.double().numpy()
    return x, infinite_width_ntk(x, depth, input_lr_scale)


@functools.lru_cache(maxsize=4)
def _cached_profile(dataset: str, n_subset: int, max_depth: int):

    x, _ = sharpness_subset(load_dataset(dataset), n_subset)
    return depth_profile(x.double().numpy(), max_depth)


@dataclass(frozen=True)
class TheoryTask:
    """Infinite-width prediction and bounds for lambda_1 of one architecture on the same
    data subset as :class:`milr.sharpness.SharpnessTask` (deterministic: no network seed).

    dataset, depth, width: the architecture; n_subset: the subset size (same rule as the
    measurements); input_lr_scale: s_1 (1 for the plain Hessian, the trials' factor for the
    effective sharpness); n_draws: NNGP logit draws of :func:`predicted_lambda_gn`;
    bound_draws, level, max_depth: of :func:`sharpness_bounds`; draw_seed: seed of the draws.
    The kernels of one (data set, depth, s_1) are cached in the process, so a sweep over
    widths computes them once.
    """
    dataset: str
    depth: int
    width: int
    n_subset: int = 1000
    input_lr_scale: float = 1.0
    n_draws: int = 8
    bound_draws: int = 32
    level: float = 0.9
    max_depth: int = 8
    draw_seed: int = 0
    kind = THEORY_KIND

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is not known; allowed: "
                             f"{', '.join(DATASETS)}")
        for name, lo in (("depth", 1), ("width", 1), ("n_draws", 2),
                         ("bound_draws", 2), ("max_depth", 1), ("draw_seed", 0)):
            set_(name, check_int(name, getattr(self, name), lo))
        set_("n_subset", check_split_rows("n_subset", self.n_subset, self.dataset, "train"))
        set_("input_lr_scale", check_float("input_lr_scale", self.input_lr_scale, 0.0, 1.0))
        set_("level", check_float("level", self.level, 0.0, 1.0, lo_open=True, hi_open=True))

    def record_config(self) -> dict:
        """Flat JSON configuration keying the record."""
        from dataclasses import asdict


        d = asdict(self)
        d["subset"] = f"train[randperm(seed={SUBSET_SEED})[:n_subset]]"
        d["loss"] = "mean_cross_entropy"
        return d

    def compute(self, device=None) -> dict:
        """Prediction (``pred_*``), bounds and kernel summaries (floats); ``device`` unused
        (numpy float64 on the CPU)."""
        x, k = _cached_kernels(self.dataset, self.n_subset, self.depth,
                               float(self.input_lr_scale))
        c = load_dataset(self.dataset).n_classes
        pred = predicted_lambda_gn(x, self.depth, self.width, c, kernels=k,
                                   n_draws=self.n_draws, seed=self.draw_seed)
        md = max(self.depth, self.max_depth)
        b = sharpness_bounds(x, self.depth, self.width, c, kernels=k, n_draws=self.bound_draws,
                             seed=self.draw_seed, level=self.level, max_depth=self.max_depth,
                             profile=_cached_profile(self.dataset, self.n_subset, md))
        theta = k.gram(self.width)
        out = {f"pred_{key}": v for key, v in pred.items() if key != "draws"}
        out.update(b)
        out["ntk_diag_mean"] = float(np.diag(theta).mean())
        out["ntk_top_over_n"] = top_eigenvalue_psd(theta) / len(theta)
        out["n_classes"] = c
        return out


def theory_tasks(datasets, depths, widths, input_lr_scales=(1.0,), min_width_over_depth=1.0,
                 **options) -> list[TheoryTask]:
    """:class:`TheoryTask` for every (data set, depth, width, s_1) with w >= depth (the same
    grid rule as the measurements); ``options`` are the other fields. Validated up front."""
    mwd = check_float("min_width_over_depth", min_width_over_depth, 0.0)
    tasks = []
    for ds in datasets:
        for s1 in input_lr_scales:
            for d in depths:
                for w in widths:
                    t = TheoryTask(ds, d, w, input_lr_scale=s1, **options)
                    if t.width >= mwd * t.depth:
                        tasks.append(t)
    return tasks
