"""Classifier metrics of anomaly scores: ROC curve, AUC, SIC, background rejection, correlation.

Conventions: larger scores are more signal-like; ``eps_b`` / ``eps_s`` are the fractions of
background / signal events kept by a cut ``score >= threshold``. Metrics that cannot be computed
(empty samples, constant inputs, too few background events) are NaN, with the reason logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.stats
import sklearn.metrics
from numpy.typing import ArrayLike

__all__ = ["RocCurve", "auc", "max_sic", "pearson", "rejection_at", "roc_curve", "sic_curve"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RocCurve:
    """A ROC curve: background and signal efficiencies of the cuts ``score >= thresholds``.

    The arrays run from the tightest cut (``thresholds[0] = inf``, nothing kept) to the loosest
    (everything kept); ``eps_b`` and ``eps_s`` are non-decreasing. They are empty when either
    sample was empty.
    """

    eps_b: np.ndarray
    eps_s: np.ndarray
    thresholds: np.ndarray
    n_background: int
    n_signal: int

    def __len__(self) -> int:
        return len(self.eps_s)

    @property
    def empty(self) -> bool:
        """True when the curve has no points (an input sample was empty)."""
        return len(self.eps_s) == 0


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {arr.shape}")
    return arr


def _labelled(
    background_scores: ArrayLike, signal_scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Truth labels and scores of both samples, and why they cannot be compared (or None)."""
    b = _as_scores(background_scores, "background_scores")
    s = _as_scores(signal_scores, "signal_scores")
    y = np.concatenate([np.zeros(len(b), np.int8), np.ones(len(s), np.int8)])
    missing = [name for name, v in (("background", b), ("signal", s)) if len(v) == 0]
    why = f"no {' and no '.join(missing)} events" if missing else None
    return y, np.concatenate([b, s]), why


def roc_curve(background_scores: ArrayLike, signal_scores: ArrayLike) -> RocCurve:
    """ROC curve of background against signal scores (every threshold, via ``sklearn.metrics.roc_curve``).

    An empty sample gives an empty curve (with a logged warning); every metric of it is NaN.
    """
    y, s, why = _labelled(background_scores, signal_scores)
    n_b, n_s = int(np.sum(y == 0)), int(np.sum(y == 1))
    if why is not None:
        logger.warning("ROC curve is empty: %s", why)
        empty = np.empty(0, dtype=np.float64)
        return RocCurve(empty, empty, empty, n_b, n_s)
    fpr, tpr, thresholds = sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    return RocCurve(eps_b=fpr, eps_s=tpr, thresholds=thresholds, n_background=n_b, n_signal=n_s)


def auc(background_scores: ArrayLike, signal_scores: ArrayLike) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``): 1 perfect, 0.5 random.

    NaN (with a logged warning) when either sample is empty.
    """
    y, s, why = _labelled(background_scores, signal_scores)
    if why is not None:
        logger.warning("AUC is NaN: %s", why)
        return float("nan")
    return float(sklearn.metrics.roc_auc_score(y, s))


def sic_curve(roc: RocCurve, min_background: int) -> np.ndarray:
    """Significance improvement ``eps_s / sqrt(eps_b)`` at every point of ``roc``.

    NaN where the cut keeps fewer than ``min_background`` background events
    (``eps_b * n_background < min_background``) and where ``eps_b`` is 0, so that the curve is not
    driven by a handful of background events.
    """
    if min_background < 0:
        raise ValueError(f"min_background must be >= 0, got {min_background}")
    eps_b, eps_s = roc.eps_b, roc.eps_s
    valid = (eps_b > 0) & (eps_b * roc.n_background >= min_background)
    sic = np.full(len(eps_s), np.nan)
    np.divide(eps_s, np.sqrt(eps_b), out=sic, where=valid)
    return sic


def rejection_at(roc: RocCurve, eps_s: float) -> float:
    """Background rejection ``1 / eps_b`` at signal efficiency ``eps_s``.

    ``eps_b`` is interpolated linearly along the curve (taking the lowest ``eps_b`` where the curve
    reaches ``eps_s`` exactly). Returns ``inf`` where ``eps_b`` is 0, NaN where the curve does not
    reach ``eps_s`` (e.g. an empty curve).
    """
    if not 0.0 < eps_s <= 1.0:
        raise ValueError(f"signal efficiency must be in (0, 1], got {eps_s!r}")
    if roc.empty or eps_s > roc.eps_s[-1]:
        why = "is empty" if roc.empty else "does not reach it"
        logger.warning("1/eps_B at eps_S=%g is NaN: the ROC curve %s", eps_s, why)
        return float("nan")
    # first point with eps_s >= target; eps_s is sorted, so the previous point is the last one below
    j = int(np.searchsorted(roc.eps_s, eps_s, side="left"))
    if roc.eps_s[j] == eps_s or j == 0:
        eps_b = float(roc.eps_b[j])
    else:
        s0, s1 = roc.eps_s[j - 1], roc.eps_s[j]
        b0, b1 = roc.eps_b[j - 1], roc.eps_b[j]
        eps_b = float(b0 + (b1 - b0) * (eps_s - s0) / (s1 - s0))
    return float("inf") if eps_b == 0.0 else 1.0 / eps_b


def max_sic(roc: RocCurve, min_background: int) -> tuple[float, float]:
    """Largest SIC (see :func:`sic_curve`) and the signal efficiency where it occurs.

    ``(nan, nan)`` (with a logged warning) when no point keeps ``min_background`` background events.
    """
    sic = sic_curve(roc, min_background)
    if not np.any(np.isfinite(sic)):
        logger.warning(
            "max SIC is NaN: %s",
            "the ROC curve is empty"
            if roc.empty
            else f"no cut keeps >= {min_background} of the {roc.n_background} background events",
        )
        return float("nan"), float("nan")
    i = int(np.nanargmax(sic))
    return float(sic[i]), float(roc.eps_s[i])


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson correlation coefficient of two equal-length samples.

    NaN (with a logged warning) for fewer than 3 entries or a constant sample.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"pearson needs samples of equal length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        logger.warning("Pearson correlation is NaN: only %d entries (need >= 3)", len(x))
        return float("nan")
    constant = [name for name, v in (("first", x), ("second", y)) if np.ptp(v) == 0]
    if constant:
        logger.warning("Pearson correlation is NaN: the %s sample is constant", " and ".join(constant))
        return float("nan")
    return float(scipy.stats.pearsonr(x, y).statistic)
