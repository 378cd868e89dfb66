"""Sharpness lambda_1: the top eigenvalue of the training-loss Hessian, computed matrix-free.

The paper (Sec. 5) compares eta* with the sharpness lambda_1 at initialisation, the largest
eigenvalue of the Hessian of the training loss. Everything here is matrix-free: the Hessian
is only ever applied to vectors (Hessian-vector products, HVPs), and the top eigenvalue is
found with a Lanczos iteration that stops once the eigenvalue (not its eigenvector) is known
to the accuracy asked for; scipy's ARPACK (``eigsh``, ``which='LA'``) and plain power
iteration are the fallback, the baselines and the tests' second algorithms.

Our choices (documented in the README, "Sharpness and theory"):

* **Loss**: the loss training uses (:func:`milr.train.run_trial`): mean cross-entropy of the
  logits over the samples, ``L = (1/N) sum_i CE(f(x_i), y_i)``.
* **Data**: one fixed subset of the *training* split, the first ``n_subset`` rows of a
  seed-0 permutation (:func:`sharpness_subset`), the same for every network and seed.
  ``n_subset`` is recorded beside every result.
* **Network**: the very network whose eta* is measured: :func:`milr.models.make_mlp` with
  the trial's seed, dtype, read-out initialisation and biases; its float32 weights are cast
  exactly to float64 for the HVPs.
* **Operators** (``part``): ``"hessian"``, the full Hessian H; ``"gauss_newton"``, its
  Gauss-Newton part ``G = (1/N) sum_i J_i^T H_CE(i) J_i`` (J_i the Jacobian of the logits,
  ``H_CE = diag(p) - p p^T`` the softmax curvature). With ``lr_scales`` the operator becomes
  ``P^{1/2} A P^{1/2}`` with P the per-layer learning-rate multipliers: the *effective*
  sharpness that decides the stability of gradient descent when layers train at different
  rates (GD with rates eta*P on a quadratic is stable iff eta * lambda_max(P H) < 2, and
  P H is similar to P^{1/2} H P^{1/2}).
* **Solver**: Lanczos with full reorthogonalisation (:func:`lanczos_top_eigenvalue`): the
  algebraically largest eigenvalue, with its sign, not the largest in magnitude; seeded
  Gaussian start vector; it stops when an error bound on the eigenvalue is <= tol * |lambda|
  on two consecutive steps, and falls back to ARPACK (``eigsh(which='LA', k=1)``,
  :func:`arpack_top_eigenvalue`) past its basis cap. Products run in float64 by default;
  float32 products (``dtype``/``hvp_dtype``) keep the Lanczos arithmetic in float64.

HVPs use double backward, ``grad(grad(L) . v)``, rebuilt for every product, so no autograd
graph outlives a product and memory stays flat over any number of products.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import (check_bias, check_dataset, check_float, check_grid, check_int,
                     check_readout_gain, check_split_rows, drop_network_defaults,
                     network_options)
from .data import Dataset, load_dataset
from .models import MLP, layer_lr_scales, make_mlp
from .train import torch_dtype

__all__ = [
    "EigenResult",
    "LossHessian",
    "sharpness_subset",
    "parameter_scales",
    "lanczos_top_eigenvalue",
    "arpack_top_eigenvalue",
    "power_iteration_top_eigenvalue",
    "top_eigenvalue",
    "sharpness",
    "SharpnessTask",
    "sharpness_tasks",
    "SUBSET_SEED",
    "PARTS",
    "METHODS",
]

KIND = "sharpness"
#: Seed of the permutation of the training split whose first n_subset rows form the subset.
SUBSET_SEED = 0
PARTS = ("hessian", "gauss_newton")
METHODS = ("lanczos", "arpack", "power")
HVP_DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------- data subset


def sharpness_subset(data: Dataset, n_subset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed sharpness subset: first ``n_subset`` rows of a seed-0 permutation of the
    *training* split (our choice: the loss whose curvature matters is the training loss; one
    subset for every network and seed makes lambda_1 values comparable).

    Returns ``(x, y)``: ``(n_subset, n0)`` inputs in the data set's dtype and ``(n_subset,)``
    int64 labels. Raises ``ValueError`` unless ``1 <= n_subset <= n_train``.
    """
    n = len(data.y_train)
    n_subset = check_int("n_subset", n_subset, 1, n)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))[:n_subset]
    return data.x_train[idx], data.y_train[idx]


# --------------------------------------------------------------------------- operators


def parameter_scales(model: MLP, lr_scales: Sequence[float] | None) -> torch.Tensor | None:
    """Per-parameter learning-rate multipliers as one flat vector, ``(n_params,)``.

    ``lr_scales`` has one entry per layer (``depth + 1``: input layer, hidden layers,
    read-out; see :func:`milr.models.layer_lr_scales`); weight and bias of a layer share it.
    ``None`` returns ``None`` (all ones). Raises ``ValueError`` on a wrong length or a
    negative or non-finite entry.
    """
    if lr_scales is None:
        return None
    scales = [check_float(f"lr_scales[{i}]", s, 0.0) for i, s in enumerate(lr_scales)]
    if len(scales) != len(model.layers):
        raise ValueError(f"lr_scales has {len(scales)} entries; the network has "
                         f"{len(model.layers)} layers (depth + 1)")
    parts = []
    for layer, s in zip(model.layers, scales):
        for p in layer.parameters():
            parts.append(torch.full((p.numel(),), s, dtype=torch.float64))
    return torch.cat(parts)


class LossHessian:
    """The Hessian (or its Gauss-Newton part) of the mean cross-entropy on ``(x, y)``, as a
    matrix-free operator on flat parameter vectors.

    Parameters
    ----------
    model: the network; it is copied (in ``dtype``, on ``device``), never modified.
    x: ``(N, n0)`` inputs; y: ``(N,)`` int64 labels.
    part: ``"hessian"`` (full Hessian) or ``"gauss_newton"`` (G = (1/N) sum J^T H_CE J).
    lr_scales: optional per-layer multipliers (length depth + 1); the operator is then
        ``P^{1/2} A P^{1/2}`` (effective sharpness; see the module docstring).
    dtype: dtype of the products (float64 default; float32 for speed on big nets).
    device: where the products run.
    chunk_size: optional number of samples per forward/backward pass; the loss is a mean, so
        ``A v = sum_c (N_c / N) A_c v`` (memory scales with the chunk, not with N).

    ``matvec(v)`` takes and returns float64 numpy arrays of shape ``(n,)``; ``n_products``
    counts the products applied. Raises ``ValueError`` on bad shapes, labels or options.
    """

    def __init__(self, model: MLP, x: torch.Tensor, y: torch.Tensor, part: str = "hessian",
                 lr_scales: Sequence[float] | None = None, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", chunk_size: int | None = None):
        if part not in PARTS:
            raise ValueError(f"part={part!r} must be one of {PARTS}")
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise ValueError(f"x must be (N, n0) and y (N,) with N >= 1; got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        if x.shape[1] != model.n0:
            raise ValueError(f"x has {x.shape[1]} features; the network expects n0={model.n0}")
        if int(y.min()) < 0 or int(y.max()) >= model.n_classes:
            raise ValueError(f"labels y must lie in [0, {model.n_classes - 1}]")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype} must be torch.float32 or torch.float64")
        self.part = part
        self.dtype = dtype
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(device=self.device, dtype=dtype)
        self.params = list(self.model.parameters())
        for p in self.params:
            p.requires_grad_(True)
        self.n = sum(p.numel() for p in self.params)
        self.x = x.to(device=self.device, dtype=dtype)
        self.y = y.to(device=self.device)
        self.N = len(y)
        cs = self.N if chunk_size is None else check_int("chunk_size", chunk_size, 1)
        self.chunks = [(i, min(i + cs, self.N)) for i in range(0, self.N, cs)]
        scales = parameter_scales(self.model, lr_scales)
        self.sqrt_scales = None if scales is None else scales.sqrt().to(self.device, dtype)
        self.n_products = 0

    # -- flat <-> per-parameter
    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in self.params:
            out.append(v[i:i + p.numel()].view_as(p))
            i += p.numel()
        return out

    def _hvp_chunk(self, xs, ys, vs, weight: float) -> list[torch.Tensor]:
        loss = F.cross_entropy(self.model(xs), ys) * weight
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vs))
        return list(torch.autograd.grad(dot, self.params))

    def _gnvp_chunk(self, xs, ys, vs, weight: float) -> list[torch.Tensor]:
        from torch.func import functional_call, jvp, vjp

        names = [n for n, _ in self.model.named_parameters()]
        prm = {n: p.detach() for n, p in zip(names, self.params)}
        tangent = dict(zip(names, vs))

        def f(pr):
            return functional_call(self.model, pr, (xs,))

        logits, jv = jvp(f, (prm,), (tangent,))           # (n_c, C) each
        p = torch.softmax(logits, dim=1)
        u = (p * jv - p * (p * jv).sum(dim=1, keepdim=True)) * (weight / len(xs))
        _, pull = vjp(f, prm)
        (g,) = pull(u)
        return [g[n] for n in names]

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """The product ``A v`` for a flat tensor ``v`` of shape ``(n,)`` (torch in, torch out,
        in the operator's dtype and device)."""
        if v.shape != (self.n,):
            raise ValueError(f"v must have shape ({self.n},), got {tuple(v.shape)}")
        v = v.to(device=self.device, dtype=self.dtype)
        if self.sqrt_scales is not None:
            v = v * self.sqrt_scales
        vs = self._split(v)
        chunk_fn = self._hvp_chunk if self.part == "hessian" else self._gnvp_chunk
        out = None
        for a, b in self.chunks:
            part = chunk_fn(self.x[a:b], self.y[a:b], vs, (b - a) / self.N)
            flat = torch.cat([t.reshape(-1) for t in part]).detach()
            out = flat if out is None else out + flat
        if self.sqrt_scales is not None:
            out = out * self.sqrt_scales
        self.n_products += 1
        return out

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``A v`` for a float64 numpy vector ``(n,)``; returns float64 numpy ``(n,)``."""
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
        return self.apply(t).detach().to("cpu", torch.float64).numpy()

    def dense(self) -> np.ndarray:
        """The dense ``(n, n)`` matrix, built column by column from n products (tests only;
        raises ``ValueError`` for n > 5000)."""
        if self.n > 5000:
            raise ValueError(f"dense() needs n <= 5000 parameters, the network has {self.n}")
        eye = np.eye(self.n)
        return np.stack([self.matvec(eye[i]) for i in range(self.n)], axis=1)


# --------------------------------------------------------------------------- eigen-solvers


@dataclass
class EigenResult:
    """Top (algebraically largest) eigenvalue of a symmetric operator.

    eigenvalue: lambda_1, in the operator's units (for the loss Hessian: loss per unit
        parameter squared; 2 / lambda_1 is then a learning rate). NaN if nothing was found.
    residual_norm: ``||A v - lambda_1 v||`` for the returned unit vector v (same units).
    n_hvp: operator products used (for ARPACK and power iteration including the one that
        measures the residual).
    converged: the solver met its tolerance (Lanczos: error bound <= tol * |lambda_1|;
        ARPACK and power iteration: residual <= tol * |lambda_1|).
    method: ``"lanczos"``, ``"arpack"``, ``"power"``, or a fallback ``"lanczos->arpack"``,
        ``"arpack->power"`` (see the solvers); tol: the tolerance asked for.
    wall_time: seconds. error_bound: Lanczos's bound on ``lambda_max - eigenvalue`` (same
        units; NaN for the other solvers). history: power iteration's Rayleigh quotients, one
        per product (only with ``history=True``). eigenvector: the unit vector (not
        serialised).
    """

    eigenvalue: float
    residual_norm: float
    n_hvp: int
    converged: bool
    method: str
    tol: float
    wall_time: float
    error_bound: float = math.nan
    history: list = field(default_factory=list)
    eigenvector: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("eigenvector", "history")}
        if self.history:
            d["history"] = list(self.history)
        return d


def _check_solver_args(n, tol, seed, maxiter):
    n = check_int("n", n, 1)
    tol = check_float("tol", tol, 0.0, 1.0, lo_open=True, hi_open=True)
    seed = check_int("seed", seed, 0)
    if maxiter is not None:
        maxiter = check_int("maxiter", maxiter, 1)
    return n, tol, seed, maxiter


def _start_vector(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(n)
    return v / np.linalg.norm(v)


def _counted(matvec, count):
    def mv(v):
        count[0] += 1
        return np.asarray(matvec(np.asarray(v, dtype=np.float64).ravel()), dtype=np.float64)
    return mv


#: Default cap on the Lanczos basis (vectors kept for the full reorthogonalisation): memory
#: is (cap + 1) n float64 numbers; past it the run falls back to ARPACK (restarted).
LANCZOS_MAX_BASIS = 40


def _ritz_bound(theta, resid):
    """Error bound on lambda_max - theta[0] from the two top Ritz pairs (see
    :func:`lanczos_top_eigenvalue`): ``min(r1, r1^2 / gap)``, gap = theta1 - (theta2 + r2)."""
    r1 = resid[0]
    if len(theta) < 2:
        return r1
    gap = theta[0] - (theta[1] + resid[1])
    return min(r1, r1 * r1 / gap) if gap > 0 else r1


def lanczos_top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], n: int,
                           tol: float = 1e-6, seed: int = 0, maxiter: int | None = None,
                           ncv: int | None = 8, fallback: bool = True) -> EigenResult:
    """Algebraically largest eigenvalue of a symmetric ``n x n`` operator by Lanczos with full
    reorthogonalisation, stopped as soon as the *eigenvalue* is known to relative accuracy
    ``tol`` (not its eigenvector, which is what ARPACK's residual test converges).

    Parameters
    ----------
    matvec: ``v (n,) float64 -> A v (n,) float64``; A must be symmetric (products rounded in
        float32 are fine: all Lanczos arithmetic is float64 and uses the products as returned).
    n: dimension, >= 1. tol: relative accuracy asked of lambda_1, in (0, 1).
    seed: seed of the Gaussian start vector (same seed, same answer and HVP count).
    maxiter: Lanczos steps (= products = basis vectors kept) before the fallback; default
        ``min(n, LANCZOS_MAX_BASIS)`` (memory: maxiter + 1 vectors of n float64).
    ncv: ARPACK basis size of the fallback. fallback: ``False`` returns the best Ritz pair
        with ``converged=False`` instead of falling back.

    Method (textbook Lanczos, Parlett, *The Symmetric Eigenvalue Problem*, ch. 13; our
    choices for the bound and the stop). Step k applies A to the newest basis vector,
    orthogonalises the product against *all* basis vectors (classical Gram-Schmidt, twice)
    and records every coefficient, so ``A Q_k = Q_{k+1} H_k`` holds exactly for the products
    as returned (H_k is (k+1) x k, tridiagonal up to rounding). The Ritz pairs
    (theta_i, y_i = Q_k s_i) come from the symmetric part of the top k x k block, theta_1
    being the largest (``which='LA'``: the algebraically largest, with its sign), and each
    residual ``r_i = ||A y_i - theta_i y_i|| = ||H_k s_i - theta_i [s_i; 0]||`` costs no
    product. Error bound (Kato-Temple, with the gap estimated from the second Ritz pair):

        0 <= lambda_1 - theta_1 <= eps_k = min(r_1, r_1^2 / gap),  gap = theta_1 - (theta_2 + r_2)

    (theta_1 <= lambda_1 always, a Rayleigh quotient; an eigenvalue lies within r_2 of
    theta_2, taken to be lambda_2; eps_k = r_1 when gap <= 0). Stop at step k when
    ``eps_k <= tol |theta_1|`` *and*, as a safety check that does not rely on the estimated
    gap, theta_1 has settled: ``|theta_1(k) - theta_1(k-1)| <= tol |theta_1(k)|``; or when
    the basis spans an invariant subspace (r_1 = 0: exact). On the known spectra of the tests
    and the networks of ``make bench`` the actual error stays below ~0.4 tol (the bound
    itself is never beaten). What no Krylov method
    can exclude remains: an eigenvalue above theta_1 whose eigenvector is (nearly) orthogonal
    to the start vector; a seeded Gaussian start makes this improbable, not impossible.

    Returns an :class:`EigenResult` with method ``"lanczos"``, ``error_bound = eps_k`` (the
    absolute bound), ``residual_norm = r_1`` and the products used (no extra product: the
    residual comes from H_k). Without convergence after ``maxiter`` steps it falls back to
    :func:`arpack_top_eigenvalue` started from the best Ritz vector (method
    ``"lanczos->arpack"``, HVPs of both counted). Non-finite products end the run with NaN
    and ``converged=False``. Source: DESIGN.md habits (``which='LA'``, seeded start, stated
    tolerance, residual, HVP count).
    """
    n, tol, seed, maxiter = _check_solver_args(n, tol, seed, maxiter)
    m = min(n, LANCZOS_MAX_BASIS if maxiter is None else maxiter)
    t0 = time.perf_counter()
    count = [0]
    mv = _counted(matvec, count)
    q = np.empty((m + 1, n))
    h = np.zeros((m + 1, m))
    q[0] = _start_vector(n, seed)
    lam, vec, res, bound, conv = math.nan, None, math.nan, math.nan, False
    prev_theta = math.inf
    for k in range(m):
        w = mv(q[k])
        if not np.isfinite(w).all():
            lam, vec, res, bound = math.nan, None, math.nan, math.nan
            break
        basis = q[:k + 1]
        c = basis @ w
        w -= basis.T @ c
        c2 = basis @ w
        w -= basis.T @ c2
        h[:k + 1, k] = c + c2
        beta = float(np.linalg.norm(w))
        h[k + 1, k] = beta
        t = h[:k + 1, :k + 1]
        vals, vecs = np.linalg.eigh(0.5 * (t + t.T))
        top = [k - i for i in range(min(2, k + 1))]
        theta = [float(vals[i]) for i in top]
        resid = [float(np.linalg.norm(h[:k + 2, :k + 1] @ vecs[:, i]
                                      - vals[i] * np.r_[vecs[:, i], 0.0])) for i in top]
        lam, res, bound = theta[0], resid[0], _ritz_bound(theta, resid)
        scale = float(np.abs(vals).max())
        invariant = beta <= 1e-14 * scale or beta == 0.0
        ok = bound <= tol * abs(lam)
        settled = abs(lam - prev_theta) <= tol * abs(lam)
        if invariant or (ok and settled):
            vec = basis.T @ vecs[:, -1]
            conv = ok or invariant
            break
        prev_theta = lam
        q[k + 1] = w / beta
    else:
        vec = q[:m].T @ vecs[:, -1]
    if vec is not None:
        vec = vec / np.linalg.norm(vec)
    del q
    if not conv and fallback and vec is not None:
        r = arpack_top_eigenvalue(mv, n, tol, seed, ncv=ncv, v0=vec)
        r.method, r.n_hvp, r.wall_time = "lanczos->arpack", count[0], time.perf_counter() - t0
        return r
    return EigenResult(lam, res, count[0], conv, "lanczos", tol, time.perf_counter() - t0,
                       error_bound=bound, eigenvector=vec)


def arpack_top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], n: int,
                          tol: float = 1e-6, seed: int = 0, maxiter: int | None = None,
                          ncv: int | None = 8, v0: np.ndarray | None = None) -> EigenResult:
    """Algebraically largest eigenvalue of a symmetric ``n x n`` operator by implicitly
    restarted Lanczos (scipy ``eigsh`` / ARPACK, ``k=1``, ``which='LA'``): the fallback of
    :func:`lanczos_top_eigenvalue` and a second algorithm for the tests.

    Parameters
    ----------
    matvec: ``v (n,) float64 -> A v (n,) float64``; A must be symmetric.
    n: dimension, >= 1. tol: ARPACK's relative tolerance in (0, 1) (converged when the Ritz
        residual <= tol * |lambda|: a test on the eigenvector, much stricter than the
        eigenvalue's accuracy, which is about residual^2 / gap). seed: seed of the Gaussian
        start vector (same seed, same answer). maxiter: ARPACK restarts (default scipy's
        10 n). ncv: Lanczos basis size (default scipy's, 20 for large n). v0: start vector
        instead of the seeded one (the fallback passes its best Ritz vector).

    For n <= 2 (ARPACK needs k < n) the matrix is built from n products and solved densely.
    A run that hits ``maxiter`` returns its best Ritz pair with ``converged=False``; it does
    not raise. On an ARPACK breakdown error (the zero operator, a start vector spanning an
    invariant subspace) it falls back to :func:`power_iteration_top_eigenvalue` and reports
    ``method="arpack->power"``. ``residual_norm`` is measured with one more product (counted).
    Source: DESIGN.md habits (``which='LA'``, seeded start, stated tolerance).
    """
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    n, tol, seed, maxiter = _check_solver_args(n, tol, seed, maxiter)
    t0 = time.perf_counter()
    count = [0]
    mv = _counted(matvec, count)

    if n <= 2:
        a = np.stack([mv(e) for e in np.eye(n)], axis=1)
        vals, vecs = np.linalg.eigh(0.5 * (a + a.T))
        lam, vec, conv = float(vals[-1]), vecs[:, -1], True
    else:
        op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
        kw = {} if ncv is None else {"ncv": min(check_int("ncv", ncv, 3), n)}
        start = _start_vector(n, seed) if v0 is None else np.asarray(v0, dtype=np.float64)
        try:
            vals, vecs = eigsh(op, k=1, which="LA", v0=start, tol=tol, maxiter=maxiter, **kw)
            lam, vec, conv = float(vals[-1]), vecs[:, -1], True
        except ArpackNoConvergence as exc:
            conv = False
            if len(exc.eigenvalues):
                lam, vec = float(exc.eigenvalues[-1]), exc.eigenvectors[:, -1]
            else:
                lam, vec = math.nan, None
        except ArpackError:
            # ARPACK stops on an exact breakdown (e.g. the zero operator, or a start vector
            # in an invariant subspace): fall back to power iteration, and say so.
            r = power_iteration_top_eigenvalue(mv, n, tol, seed, maxiter)
            r.method, r.n_hvp, r.wall_time = "arpack->power", count[0], \
                time.perf_counter() - t0
            return r
    if vec is not None:
        vec = vec / np.linalg.norm(vec)
        res = float(np.linalg.norm(mv(vec) - lam * vec))
    else:
        res = math.nan
    return EigenResult(lam, res, count[0], conv, "arpack", tol, time.perf_counter() - t0,
                       eigenvector=vec)


def _power(mv, n, tol, v, maxiter, shift, hist):
    """Power iteration on A - shift I from unit v; returns (theta of A, v, residual, conv)."""
    theta, res = math.nan, math.nan
    for _ in range(maxiter):
        w = mv(v)
        theta = float(v @ w)
        r = w - theta * v
        res = float(np.linalg.norm(r))
        hist.append(theta)
        if res <= tol * abs(theta):
            return theta, v, res, True
        ws = w - shift * v
        nrm = float(np.linalg.norm(ws))
        if nrm == 0.0 or not math.isfinite(nrm):
            return theta, v, res, nrm == 0.0
        v = ws / nrm
    return theta, v, res, False


def power_iteration_top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], n: int,
                                   tol: float = 1e-6, seed: int = 0,
                                   maxiter: int | None = None,
                                   history: bool = False) -> EigenResult:
    """Algebraically largest eigenvalue by plain power iteration (baseline, same interface
    as :func:`lanczos_top_eigenvalue`).

    Phase 1 iterates ``v <- A v / ||A v||``, which finds the eigenvalue of largest magnitude.
    If that Rayleigh quotient is negative (or phase 1 did not converge), phase 2 iterates on
    ``A - s I`` with ``s = -||A||`` estimated in phase 1 (every eigenvalue of A - s I is then
    >= 0, and its dominant one is lambda_max - s), from a fresh start vector.
    Convergence (both phases): residual ``||A v - theta v|| <= tol * |theta|``, the same
    criterion as ARPACK's. ``maxiter`` (default 1000) caps the products of each phase.
    Source: our choice (the textbook method, as in pytorch-hessian-eigenthings).
    """
    n, tol, seed, maxiter = _check_solver_args(n, tol, seed, maxiter)
    maxiter = 1000 if maxiter is None else maxiter
    t0 = time.perf_counter()
    count = [0]
    hist: list[float] = []

    def mv(v):
        count[0] += 1
        return np.asarray(matvec(v), dtype=np.float64)

    theta, v, res, conv = _power(mv, n, tol, _start_vector(n, seed), maxiter, 0.0, hist)
    if not (conv and theta >= 0):
        # a negative eigenvalue dominates (or phase 1 stalled, e.g. on +/- lambda):
        # shift the spectrum so that the algebraically largest eigenvalue dominates.
        w = mv(v)
        s = -float(np.linalg.norm(w))
        hist.append(float(v @ w))
        theta, v, res, conv = _power(mv, n, tol, _start_vector(n, seed + 1), maxiter, s, hist)
    return EigenResult(theta, res, count[0], conv, "power", tol, time.perf_counter() - t0,
                       history=hist if history else [], eigenvector=v)


def top_eigenvalue(matvec, n, method: str = "lanczos", tol: float = 1e-6, seed: int = 0,
                   maxiter: int | None = None, ncv: int | None = 8) -> EigenResult:
    """Dispatch to :func:`lanczos_top_eigenvalue` (``"lanczos"``; ``ncv`` for its fallback),
    :func:`arpack_top_eigenvalue` (``"arpack"``, with ``ncv``) or
    :func:`power_iteration_top_eigenvalue` (``"power"``). ``ValueError`` on another method."""
    if method == "lanczos":
        return lanczos_top_eigenvalue(matvec, n, tol, seed, maxiter, ncv)
    if method == "arpack":
        return arpack_top_eigenvalue(matvec, n, tol, seed, maxiter, ncv)
    if method == "power":
        return power_iteration_top_eigenvalue(matvec, n, tol, seed, maxiter)
    raise ValueError(f"method={method!r} must be one of {METHODS}")


def sharpness(model: MLP, x: torch.Tensor, y: torch.Tensor, *, part: str = "hessian",
              lr_scales: Sequence[float] | None = None, method: str = "lanczos",
              tol: float = 1e-6, seed: int = 0, maxiter: int | None = None,
              dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
              chunk_size: int | None = None, ncv: int | None = 8) -> EigenResult:
    """lambda_1 of the mean cross-entropy on ``(x, y)`` at the network's current parameters.

    ``x``: ``(N, n0)``, ``y``: ``(N,)``. ``part``, ``lr_scales``, ``dtype``, ``device`` and
    ``chunk_size`` define the operator (:class:`LossHessian`); ``method``, ``tol``, ``seed``,
    ``maxiter`` and ``ncv`` (ARPACK's basis) the solver (:func:`top_eigenvalue`). With ``lr_scales`` the result is the
    effective sharpness lambda_max(P^{1/2} H P^{1/2}). Raises ``ValueError`` on bad input.
    """
    op = LossHessian(model, x, y, part=part, lr_scales=lr_scales, dtype=dtype, device=device,
                     chunk_size=chunk_size)
    return top_eigenvalue(op.matvec, op.n, method=method, tol=tol, seed=seed, maxiter=maxiter,
                          ncv=ncv)


# --------------------------------------------------------------------------- sweep tasks


@dataclass(frozen=True)
class SharpnessTask:
    """lambda_1 at initialisation of one network (one configuration, one seed).

    dataset, depth, width, seed: the network, built exactly as the eta* trials build it
        (:func:`milr.models.make_mlp` with this seed and ``weights_dtype``).
    n_subset: size of the fixed training subset (:func:`sharpness_subset`; default 1000).
    input_lr_scale: input-layer learning-rate multiplier of the effective sharpness (the
        eta* trials' ``input_lr_scale``; default 0.01).
    tol: relative tolerance (default 1e-5): for ``solver="lanczos"`` the accuracy of
        lambda_1 (error bound <= tol |lambda_1|, :func:`lanczos_top_eigenvalue`), for
        ``"arpack"`` and ``"power"`` the Ritz residual (<= tol |lambda_1|, stricter).
        solver: ``"lanczos"`` (default), ``"arpack"`` or ``"power"``. Records made before
        ``"arpack"`` existed hold ARPACK's answers under ``solver="lanczos"``; they agree
        with this Lanczos within 1e-4 relative (README, Performance: λ1), so they keep their
        keys. solver_seed: start-vector seed; ncv: ARPACK's basis size (default 8; used by
        ``"arpack"`` and by Lanczos's fallback).
    gauss_newton: also compute the Gauss-Newton part's top eigenvalues (plain and effective).
    weights_dtype: dtype the network is built in (the trials' dtype, default float32; its
        weights are cast exactly to ``hvp_dtype``). hvp_dtype: dtype of the products
        (default float64).
    readout_gain, bias: the network's read-out initialisation and biases, as in
        :class:`milr.config.TrialConfig` (give the trials' values: lambda_1 is of the very
        network whose eta* is measured); left out of the record's configuration at their
        defaults (1.0, True), so earlier records keep their keys.
    chunk_size: samples per pass (memory only; does not change the result beyond rounding,
        so it is not part of the record's configuration).
    """

    dataset: str
    depth: int
    width: int
    seed: int
    n_subset: int = 1000
    input_lr_scale: float = 0.01
    tol: float = 1e-5
    solver: str = "lanczos"
    solver_seed: int = 0
    ncv: int = 8
    gauss_newton: bool = False
    weights_dtype: str = "float32"
    hvp_dtype: str = "float64"
    readout_gain: float = 1.0
    bias: bool = True
    chunk_size: int | None = None
    kind = KIND

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        check_dataset(self.dataset)
        set_("depth", check_int("depth", self.depth))
        set_("width", check_int("width", self.width))
        set_("seed", check_int("seed", self.seed, 0))
        set_("n_subset", check_split_rows("n_subset", self.n_subset, self.dataset, "train"))
        set_("input_lr_scale", check_float("input_lr_scale", self.input_lr_scale, 0.0, 1.0))
        set_("tol", check_float("tol", self.tol, 0.0, 1.0, lo_open=True, hi_open=True))
        if self.solver not in METHODS:
            raise ValueError(f"solver={self.solver!r} must be one of {METHODS}")
        set_("solver_seed", check_int("solver_seed", self.solver_seed, 0))
        set_("ncv", check_int("ncv", self.ncv, 3))
        if not isinstance(self.gauss_newton, bool):
            raise TypeError(f"gauss_newton={self.gauss_newton!r} must be True or False")
        for name in ("weights_dtype", "hvp_dtype"):
            if getattr(self, name) not in HVP_DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {HVP_DTYPES}")
        set_("readout_gain", check_readout_gain(self.readout_gain))
        set_("bias", check_bias(self.bias))
        if self.chunk_size is not None:
            set_("chunk_size", check_int("chunk_size", self.chunk_size))

    def record_config(self) -> dict:
        """Flat JSON configuration keying the record (seed included; chunk_size left out, and
        readout_gain and bias at their defaults: :func:`milr.config.drop_network_defaults`)."""
        d = drop_network_defaults(asdict(self))
        d.pop("chunk_size")
        d["loss"] = "mean_cross_entropy"
        d["subset"] = f"train[randperm(seed={SUBSET_SEED})[:n_subset]]"
        return d

    def build(self, device: str | torch.device = "cpu"):
        """The network and the subset: ``(model, x, y, data)`` (model in ``weights_dtype``)."""
        data = load_dataset(self.dataset)
        x, y = sharpness_subset(data, self.n_subset)
        model = make_mlp(data.input_dim, self.width, self.depth, data.n_classes, self.seed,
                         torch_dtype(self.weights_dtype), device, **network_options(self))
        return model, x, y, data

    def compute(self, device: str | torch.device = "cpu") -> dict:
        """lambda_1 (full Hessian), lambda_1_eff (P^{1/2} H P^{1/2}) and, with
        ``gauss_newton``, lambda_1_gn and lambda_1_gn_eff, each with its residual, HVP count
        and convergence flag; plus the loss at initialisation on the subset and n_params."""
        model, x, y, data = self.build(device)
        dt = torch_dtype(self.hvp_dtype)
        scales = layer_lr_scales(self.depth, self.input_lr_scale)
        out: dict = {"n_params": sum(p.numel() for p in model.parameters()),
                     "n0": data.input_dim, "n_classes": data.n_classes}
        with torch.no_grad():
            logits = model.to(dt)(x.to(device=device, dtype=dt))
            out["loss0"] = float(F.cross_entropy(logits, y.to(device)))
            out["logit_second_moment"] = float((logits ** 2).mean())
        jobs = [("lambda_1", "hessian", None), ("lambda_1_eff", "hessian", scales)]
        if self.gauss_newton:
            jobs += [("lambda_1_gn", "gauss_newton", None),
                     ("lambda_1_gn_eff", "gauss_newton", scales)]
        for name, part, sc in jobs:
            r = sharpness(model, x, y, part=part, lr_scales=sc, method=self.solver,
                          tol=self.tol, seed=self.solver_seed, dtype=dt, device=device,
                          chunk_size=self.chunk_size, ncv=self.ncv)
            out[name] = r.eigenvalue
            out[f"{name}_residual"] = r.residual_norm
            out[f"{name}_n_hvp"] = r.n_hvp
            out[f"{name}_converged"] = r.converged
            out[f"{name}_wall_time"] = r.wall_time
        return out


def sharpness_tasks(datasets: Iterable[str], depths: Iterable[int], widths: Iterable[int],
                    seeds: Iterable[int], min_width_over_depth: float = 1.0,
                    **options) -> list[SharpnessTask]:
    """All lambda_1 tasks of a grid (data sets x depths x widths x seeds), validated up front.

    Same grid rule as :func:`milr.sweep.eta_star_tasks`: networks with
    ``width < min_width_over_depth * depth`` are left out (default w >= d). ``options`` are
    fields of :class:`SharpnessTask` (n_subset, input_lr_scale, tol, solver, ...).
    Raises ``ValueError``/``TypeError`` naming the first bad parameter; nothing is computed.
    """
    datasets, depths, widths, seeds = check_grid(datasets, depths, widths, seeds)
    mwd = check_float("min_width_over_depth", min_width_over_depth, 0.0)
    allowed = {f for f in SharpnessTask.__dataclass_fields__} - {"dataset", "depth", "width",
                                                                  "seed"}
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)}; allowed: {sorted(allowed)}")
    tasks = []
    for ds in datasets:
        for d in depths:
            for w in widths:
                probe = SharpnessTask(ds, d, w, seeds[0], **options)
                if probe.width < mwd * probe.depth:
                    continue
                tasks.extend(SharpnessTask(ds, d, w, s, **options) for s in seeds)
    return tasks
