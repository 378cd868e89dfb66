"""Power-law fits in log-log space: log y = log c - alpha log x."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PowerLawFit", "fit_power_law", "interval_text"]


@dataclass
class PowerLawFit:
    """y ~ c * x**(-alpha), fitted by least squares on (log x, log y).

    alpha: the exponent (positive when y falls with x), dimensionless.
    log_c: intercept in natural log; ``c = exp(log_c)`` in the units of y.
    alpha_lo, alpha_hi: bootstrap percentile interval of alpha at level ``ci`` (pairs resampled
        with replacement, ``n_boot`` times, seeded); NaN when fewer than 3 points.
    r2: coefficient of determination of the log-log fit.
    n_used: points used; n_dropped: points dropped as non-finite or non-positive (for eta*:
        the searches that never reached t; :attr:`n_left_out`, :attr:`n_total` and
        :meth:`left_out_text` report them).
    empty_reason: ``""`` for a real fit; otherwise why there is none (fewer than two usable
        points, or every usable x equal), and every statistic is NaN. Test it with
        :attr:`empty` rather than with NaN checks.
    """

    alpha: float
    log_c: float
    alpha_lo: float
    alpha_hi: float
    r2: float
    n_used: int
    n_dropped: int
    ci: float
    empty_reason: str = ""

    @property
    def empty(self) -> bool:
        """True when there was nothing to fit (see ``empty_reason``)."""
        return bool(self.empty_reason)

    @property
    def c(self) -> float:
        return math.exp(self.log_c)

    @property
    def n_left_out(self) -> int:
        """Points left out of the fit (= ``n_dropped``). For eta* against d w these are the
        searches that never reached the threshold (eta* NaN): leaving them out is survivor
        selection at small d w, so every figure and the scorecard quote this count."""
        return int(self.n_dropped)

    @property
    def n_total(self) -> int:
        """Points given to the fit: ``n_used + n_left_out``."""
        return int(self.n_used) + int(self.n_dropped)

    def left_out_text(self, what: str = "searches", why: str = "never reached t") -> str:
        """``3 of 72 searches never reached t: left out`` (``""`` when none was): how the
        figures and the scorecard report :attr:`n_left_out`."""
        if not self.n_dropped:
            return ""
        return f"{self.n_left_out} of {self.n_total} {what} {why}: left out"

    def predict(self, x) -> np.ndarray:
        """c * x**(-alpha) for an array of x > 0."""
        return np.exp(self.log_c) * np.asarray(x, dtype=float) ** (-self.alpha)

    def label(self, name: str = "\u03b1") -> str:
        """Legend text such as ``α = 0.54 [0.46, 0.61] (95% CI), R² = 0.66``: the bootstrap
        percentile interval as it is (it need not be symmetric about alpha). An empty fit
        reads ``α: not enough data (...)``, never a number."""
        if self.empty:
            return f"{name}: not enough data ({self.empty_reason})"
        ci = interval_text(self.alpha_lo, self.alpha_hi)
        ci = f"{ci} ({self.ci:.0%} CI)" if ci else ""
        return f"{name} = {self.alpha:.2f}{ci}, R\u00b2 = {self.r2:.2f}"

    def to_dict(self) -> dict:
        return asdict(self)


def interval_text(lo, hi) -> str:
    """`` [lo, hi]`` to two decimals (leading space), or ``""`` when a bound is missing or
    not finite: how figures and the scorecard quote a bootstrap interval."""
    ok = all(v is not None and math.isfinite(float(v)) for v in (lo, hi))
    return f" [{float(lo):.2f}, {float(hi):.2f}]" if ok else ""


def _ols(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def fit_power_law(x, y, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Fit ``y = c * x**(-alpha)`` in log space, with a bootstrap interval for alpha.

    Parameters
    ----------
    x, y: 1-D array-likes of equal length (e.g. x = depth * width, y = eta*).
    n_boot: bootstrap resamples (>= 0; 0 skips the interval).
    ci: interval level in (0, 1).
    seed: seed of the bootstrap.

    Points with a non-finite or non-positive x or y are dropped and counted in ``n_dropped``
    (a ``RuntimeWarning`` reports them); never a crash. With fewer than 2 usable points, or
    all usable x equal, there is nothing to fit: the result has every statistic NaN and
    ``empty_reason`` saying why (so notebooks can still show it), and a ``RuntimeWarning``
    says the same.

    Raises ``ValueError`` if x and y differ in length or ``ci`` is outside (0, 1).
    Source: our choice (fit log eta* on log d*w, never a plotting library's log-x option).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must be in (0, 1)")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    n_dropped = int((~ok).sum())
    if n_dropped:
        warnings.warn(f"fit_power_law: dropped {n_dropped} non-finite or non-positive point(s)",
                      RuntimeWarning, stacklevel=2)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = lx.size
    nan = math.nan
    reason = ""
    if n < 2:
        reason = f"{n} usable point{'s' if n != 1 else ''}, need at least 2"
    elif np.ptp(lx) == 0:
        reason = f"all {n} usable x are equal ({float(np.exp(lx[0])):.6g})"
    if reason:
        warnings.warn(f"fit_power_law: nothing to fit: {reason}; every statistic is NaN",
                      RuntimeWarning, stacklevel=2)
        return PowerLawFit(nan, nan, nan, nan, nan, n, n_dropped, ci, reason)
    slope, intercept = _ols(lx, ly)
    resid = ly - (slope * lx + intercept)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else nan
    lo = hi = nan
    if n >= 3 and n_boot > 0:
        rng = np.random.default_rng(seed)
        slopes = []
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            if np.ptp(lx[idx]) == 0:
                continue
            slopes.append(_ols(lx[idx], ly[idx])[0])
        if slopes:
            q = np.quantile(-np.asarray(slopes), [(1 - ci) / 2, (1 + ci) / 2])
            lo, hi = float(q[0]), float(q[1])
    return PowerLawFit(-slope, intercept, lo, hi, r2, n, n_dropped, ci)
