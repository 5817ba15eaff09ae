"""Binned Poisson-likelihood fits of m_jj spectra with iminuit.

Two background models:

* :func:`fit_dijet`: the dijet function (paper 003, eq. 2.4)
  ``f(m) = p0 (1 - x)^p1 / x^(p2 + p3 ln x)``, ``x = m / sqrt(s)``, fitted with the signal region
  masked; its prediction in the masked bins and the uncertainty from the fit covariance feed the
  profile-likelihood significance of :mod:`lhcad.stats.significance`.
* :func:`fit_cubic_gaussian`: a cubic polynomial plus a Gaussian signal at a fixed mass and width
  (paper 001, section 4.1), fitted to all bins with the signal yield free or fixed to zero.

Both minimise the Poisson deviance ``2 sum(mu - n + n ln(n / mu))`` (= -2 ln L up to a constant,
so it copes with empty bins and doubles as a goodness-of-fit statistic) with Minuit (MIGRAD, then
HESSE for the covariance). A fit that does not converge is returned with ``valid=False`` and the
reason in ``message``; callers turn it into NaN, never into a silent number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from iminuit import Minuit
from numpy.typing import ArrayLike
from scipy.special import ndtr

__all__ = [
    "SQRT_S",
    "BinnedFit",
    "dijet_function",
    "dijet_prediction",
    "fit_cubic_gaussian",
    "fit_dijet",
    "gaussian_bin_fractions",
    "poisson_deviance",
]

logger = logging.getLogger(__name__)

SQRT_S = 13000.0  # GeV, LHC Run 2
_SIMPSON = np.array([1.0, 4.0, 1.0]) / 6.0  # bin integrals from (low, centre, high) nodes
_LOG_MAX = 700.0  # exp() overflow guard


@dataclass(frozen=True)
class BinnedFit:
    """Result of a binned fit.

    Attributes:
        edges: bin edges (GeV).
        counts: observed counts per bin.
        used: bins entering the likelihood (False for masked bins).
        params: best-fit parameters (names in ``names``).
        cov: their covariance (NaN when HESSE failed).
        names: parameter names.
        background: fitted background per bin (all bins, masked ones extrapolated).
        signal: fitted signal per bin (zeros for background-only models).
        deviance: Poisson deviance over the used bins at the minimum.
        ndf: used bins minus free parameters.
        valid: MIGRAD converged (dijet fits: and the covariance is accurate).
        message: why the fit is not valid or its covariance is NaN ("" when all is well).
    """

    edges: np.ndarray
    counts: np.ndarray
    used: np.ndarray
    params: np.ndarray
    cov: np.ndarray
    names: tuple[str, ...]
    background: np.ndarray
    signal: np.ndarray
    deviance: float
    ndf: int
    valid: bool
    message: str = ""

    @property
    def expected(self) -> np.ndarray:
        """Background plus signal per bin."""
        return self.background + self.signal

    def param(self, name: str) -> tuple[float, float]:
        """Value and standard error of parameter ``name``."""
        i = self.names.index(name)
        return float(self.params[i]), float(np.sqrt(self.cov[i, i]))


# ------------------------------------------------------------------------------------------------ helpers


def poisson_deviance(counts: np.ndarray, expected: np.ndarray) -> float:
    """``2 sum(mu - n + n ln(n/mu))``: -2 ln(L / L_saturated) of independent Poisson bins."""
    mu = np.maximum(expected, 1e-300)
    n = counts
    log_term = np.where(n > 0, n * np.log(np.where(n > 0, n, 1.0) / mu), 0.0)
    return float(2.0 * np.sum(mu - n + log_term))


def _continued_deviance(counts: np.ndarray, expected: np.ndarray, floor: float = 1e-3) -> float:
    """:func:`poisson_deviance` continued linearly below ``mu = floor`` (and flat below 0 for empty bins).

    For models whose expectation can turn negative (a polynomial): the cost keeps rising, with a
    gradient pointing back to the physical region, instead of sitting on a flat floor that traps
    the minimiser. Where all expectations are above ``floor`` it equals the Poisson deviance.
    """
    n, mu = counts, expected
    low = mu < floor
    if not np.any(low):
        return poisson_deviance(n, mu)
    at_floor = np.where(n > 0, 2.0 * (floor - n + n * np.log(np.where(n > 0, n, 1.0) / floor)), 2.0 * floor)
    slope = 2.0 * (1.0 - n / floor)
    continued = np.where(n > 0, at_floor + slope * (mu - floor), 2.0 * np.maximum(mu, 0.0))
    return poisson_deviance(n[~low], mu[~low]) + float(np.sum(continued[low]))


def _nodes(edges: np.ndarray) -> np.ndarray:
    """(bins, 3) array of the low edge, centre and high edge of each bin."""
    return np.stack([edges[:-1], 0.5 * (edges[:-1] + edges[1:]), edges[1:]], axis=1)


def _check_histogram(counts: ArrayLike, edges: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    n, e = np.asarray(counts, dtype=np.float64), np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) != len(n) + 1 or np.any(np.diff(e) <= 0):
        raise ValueError(f"need increasing edges, one more than the {len(n)} counts; got {len(e)} edges")
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError("counts must be finite and non-negative")
    return n, e


def _minimise(
    cost: Callable[..., float],
    start: np.ndarray,
    names: tuple[str, ...],
    fixed: tuple[str, ...] = (),
    need_covariance: bool = True,
) -> tuple[Minuit, bool, str]:
    """MIGRAD (retried once after SIMPLEX) then HESSE on a deviance; returns (minuit, valid, message).

    Without ``need_covariance`` a converged fit is valid even if HESSE is inaccurate (the
    covariance is then NaN).
    """
    m = Minuit(cost, start, name=names)
    m.errordef = Minuit.LEAST_SQUARES  # a deviance: 1-sigma = +1
    m.strategy = 1
    for name in fixed:
        m.fixed[name] = True
    m.migrad(ncall=20000, iterate=10)
    if not m.valid:  # rough start or kinks: a derivative-free pass, then again
        m.simplex(ncall=20000).migrad(ncall=20000, iterate=10)
    if not m.valid:
        fmin = m.fmin
        reasons = [k for k in ("is_above_max_edm", "has_reached_call_limit") if getattr(fmin, k)]
        return m, False, "MIGRAD did not converge" + (f" ({', '.join(reasons)})" if reasons else "")
    m.hesse()
    if not m.fmin.has_accurate_covar or m.fmin.hesse_failed:
        message = "covariance not accurate (HESSE failed or matrix forced positive-definite)"
        return m, not need_covariance, message
    return m, True, ""


def _covariance(m: Minuit) -> np.ndarray:
    if m.covariance is None or not m.fmin.has_accurate_covar:
        return np.full((len(m.values), len(m.values)), np.nan)
    return np.asarray(m.covariance, dtype=np.float64)


# --------------------------------------------------------------------------------------------- dijet fit

_DIJET_NAMES = ("log_p0", "p1", "p2", "p3")


def dijet_function(mjj: ArrayLike, params: ArrayLike, sqrt_s: float = SQRT_S) -> np.ndarray:
    """``p0 (1 - x)^p1 / x^(p2 + p3 ln x)`` with ``x = mjj / sqrt_s``; ``params`` = (p0, p1, p2[, p3])."""
    p = np.zeros(4)
    p[: len(np.atleast_1d(params))] = params
    x = np.asarray(mjj, dtype=np.float64) / sqrt_s
    return p[0] * (1.0 - x) ** p[1] / x ** (p[2] + p[3] * np.log(x))


def _dijet_design(m: np.ndarray, n_params: int, sqrt_s: float) -> np.ndarray:
    """Columns of ``ln f = log_p0 + p1 ln(1-x) - p2 ln x - p3 (ln x)^2`` (linear in the parameters)."""
    x = m / sqrt_s
    cols = [np.ones_like(x), np.log1p(-x), -np.log(x), -np.log(x) ** 2]
    return np.stack(cols[:n_params], axis=-1)


class _DijetModel:
    """Expected counts per bin of the dijet function, bin-integrated with Simpson's rule.

    The parameters of ``ln f`` are nearly degenerate over a fit window, so Minuit works with
    orthonormalised ones, ``theta' = R theta`` (``R`` from a QR decomposition of the design at the
    bin centres); :meth:`physical` maps back.
    """

    def __init__(self, edges: np.ndarray, n_params: int, sqrt_s: float) -> None:
        nodes = _nodes(edges)
        design = _dijet_design(nodes, n_params, sqrt_s)  # (bins, 3, n_params)
        _, r = np.linalg.qr(design[:, 1, :])
        self.to_physical = np.linalg.inv(r)  # theta = to_physical @ theta'
        self.design = design @ self.to_physical  # design of the orthonormal parameters
        self.weights = _SIMPSON[None, :] * np.diff(edges)[:, None]  # (bins, 3)

    def node_values(self, theta: np.ndarray) -> np.ndarray:
        return self.weights * np.exp(np.clip(self.design @ theta, -_LOG_MAX, _LOG_MAX))

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        return self.node_values(theta).sum(axis=1)

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """d(expected counts)/d(theta), shape (bins, n_params)."""
        return np.einsum("bk,bkp->bp", self.node_values(theta), self.design)

    def physical(self, theta: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters ``(log_p0, p1, p2, p3)`` and their covariance from orthonormal ones."""
        t = self.to_physical
        return t @ theta, t @ cov @ t.T


def _dijet_start(model: _DijetModel, counts: np.ndarray, used: np.ndarray) -> np.ndarray | None:
    """Weighted linear least squares of ln(n / width) on the centre design (None: too few filled bins)."""
    n_params = model.design.shape[-1]
    ok = used & (counts > 0)
    if ok.sum() < n_params + 1:
        return None
    X = model.design[ok, 1, :]
    y = np.log(counts[ok] / model.weights[ok].sum(axis=1))
    w = np.sqrt(counts[ok])
    theta, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    return theta


def fit_dijet(
    counts: ArrayLike,
    edges: ArrayLike,
    mask: ArrayLike | None = None,
    n_params: int = 4,
    sqrt_s: float = SQRT_S,
) -> BinnedFit:
    """Fit the dijet function to a histogram, leaving out the bins where ``mask`` is True.

    Parameters are ``(log_p0, p1, p2, p3)`` (the first ``n_params``, 3 or 4); ``log_p0`` is the log of
    the normalisation in counts/GeV. ``background`` holds the prediction in every bin.
    """
    n, e = _check_histogram(counts, edges)
    if n_params not in (3, 4):
        raise ValueError(f"n_params must be 3 or 4, got {n_params}")
    used = np.ones(len(n), bool) if mask is None else ~np.asarray(mask, dtype=bool)
    names = _DIJET_NAMES[:n_params]
    model = _DijetModel(e, n_params, sqrt_s)
    start = _dijet_start(model, n, used)
    ndf = int(used.sum()) - n_params
    if start is None:
        return _failed(n, e, used, names, ndf, f"fewer than {n_params + 1} filled bins outside the mask")

    def cost(theta: np.ndarray) -> float:
        return poisson_deviance(n[used], model(theta)[used])

    m, valid, message = _minimise(cost, start, tuple(f"q{i}" for i in range(n_params)))
    theta = np.asarray(m.values, dtype=np.float64)
    params, cov = model.physical(theta, _covariance(m))
    return BinnedFit(
        edges=e, counts=n, used=used, params=params, cov=cov, names=names,
        background=model(theta), signal=np.zeros_like(n), deviance=float(m.fval), ndf=ndf,
        valid=valid, message=message,
    )  # fmt: skip


def dijet_prediction(fit: BinnedFit, bins: ArrayLike, sqrt_s: float = SQRT_S) -> tuple[float, float]:
    """Background predicted by a dijet fit in ``bins`` (mask or indices) and its uncertainty.

    The uncertainty propagates the fit covariance linearly: ``sigma^2 = J C J^T`` with ``J`` the
    gradient of the summed prediction with respect to the parameters.
    """
    model = _DijetModel(fit.edges, len(fit.params), sqrt_s)
    sel = np.zeros(len(fit.counts), bool)
    sel[np.asarray(bins)] = True
    to_orthonormal = np.linalg.inv(model.to_physical)  # propagate in the well-conditioned basis
    theta, cov = to_orthonormal @ fit.params, to_orthonormal @ fit.cov @ to_orthonormal.T
    b = float(model(theta)[sel].sum())
    grad = model.jacobian(theta)[sel].sum(axis=0)
    var = float(grad @ cov @ grad)
    return b, float(np.sqrt(var)) if var >= 0 else float("nan")


def _failed(
    n: np.ndarray, e: np.ndarray, used: np.ndarray, names: tuple[str, ...], ndf: int, message: str
) -> BinnedFit:
    k = len(names)
    return BinnedFit(
        edges=e, counts=n, used=used, params=np.full(k, np.nan), cov=np.full((k, k), np.nan), names=names,
        background=np.full_like(n, np.nan), signal=np.zeros_like(n), deviance=float("nan"), ndf=ndf,
        valid=False, message=message,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- cubic + Gaussian fit

_CUBIC_NAMES = ("c0", "c1", "c2", "c3", "yield")


def gaussian_bin_fractions(edges: ArrayLike, mass: float, width: float) -> np.ndarray:
    """Fraction of a Gaussian(mass, width) in each bin."""
    z = (np.asarray(edges, dtype=np.float64) - mass) / width
    return np.diff(ndtr(z))


class _CubicGaussianModel:
    """``width_i/<width> * sum_k c_k t^k`` (t in [-1, 1] over the range) plus ``yield * gaussian``."""

    def __init__(self, edges: np.ndarray, mass: float, width: float) -> None:
        lo, hi = edges[0], edges[-1]
        t = 2.0 * (_nodes(edges) - lo) / (hi - lo) - 1.0
        scale = np.diff(edges) / np.mean(np.diff(edges))
        powers = t[..., None] ** np.arange(4)  # (bins, 3 nodes, 4 powers)
        self.design = np.einsum("bk,bkp->bp", _SIMPSON[None, :] * scale[:, None], powers)
        self.shape = gaussian_bin_fractions(edges, mass, width)

    def background(self, theta: np.ndarray) -> np.ndarray:
        return self.design @ theta[:4]

    def signal(self, theta: np.ndarray) -> np.ndarray:
        return theta[4] * self.shape


def fit_cubic_gaussian(
    counts: ArrayLike,
    edges: ArrayLike,
    mass: float,
    width: float,
    signal: bool = True,
    start: ArrayLike | None = None,
) -> BinnedFit:
    """Fit a cubic background plus a Gaussian signal of fixed ``mass`` and ``width`` (GeV) to all bins.

    Parameters are ``(c0, c1, c2, c3, yield)``; ``yield`` (signal events, any sign) is fixed to 0
    when ``signal`` is False. Where the polynomial dips below zero the deviance is continued
    linearly (see :func:`_continued_deviance`), so a negative expectation is never a minimum.
    The fit is valid when MIGRAD converges; an inaccurate HESSE leaves the covariance NaN
    (``message`` says so). ``start`` (the five parameters) overrides the default start, a linear
    least-squares fit of the cubic alone.
    """
    n, e = _check_histogram(counts, edges)
    used = np.ones(len(n), bool)
    model = _CubicGaussianModel(e, float(mass), float(width))
    ndf = len(n) - (5 if signal else 4)
    if int(np.sum(n > 0)) < 5:
        return _failed(n, e, used, _CUBIC_NAMES, ndf, "fewer than 5 filled bins")
    if start is None:
        coef, *_ = np.linalg.lstsq(model.design / np.sqrt(n + 1)[:, None], n / np.sqrt(n + 1), rcond=None)
        start = np.append(coef, 0.0)
    start = np.array(start, dtype=np.float64)
    if not signal:
        start[4] = 0.0

    def cost(theta: np.ndarray) -> float:
        return _continued_deviance(n, model.background(theta) + model.signal(theta))

    fixed = () if signal else ("yield",)
    m, valid, message = _minimise(cost, start, _CUBIC_NAMES, fixed=fixed, need_covariance=False)
    theta = np.asarray(m.values, dtype=np.float64)
    cov = _covariance(m)
    if not signal:
        cov[4, :] = cov[:, 4] = 0.0
    return BinnedFit(
        edges=e, counts=n, used=used, params=theta, cov=cov, names=_CUBIC_NAMES,
        background=np.maximum(model.background(theta), 0.0), signal=model.signal(theta),
        deviance=float(m.fval), ndf=ndf, valid=valid, message=message,
    )  # fmt: skip
