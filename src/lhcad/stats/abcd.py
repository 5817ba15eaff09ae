"""ABCD cut-and-count background estimate for two-jet selections (paper 001, section 4.1).

An event passes when both jets pass their cuts. The background efficiency of the jet-1 cut is
measured in the background-like control sample of events whose jet-2 score is in its bottom
``control_fraction`` (40% in the paper), and vice versa; the predicted count is
``eff1 * eff2 * N``. Its uncertainty is the binomial uncertainty of both efficiencies plus a
relative systematic (3%), added in quadrature. This assumes the two jet scores are independent
on background, which Tag N' Train is built to keep.

:func:`abcd_validation` checks that assumption without truth: the same prediction for a
background-dominated validation region (both jets in an upper-middle band of their own scores,
neither control-like nor signal-like) must agree with the observed count there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata, spearmanr

from lhcad.evaluate.selection import select_efficiency

__all__ = [
    "AbcdEstimate",
    "AbcdValidation",
    "abcd_estimate",
    "abcd_validation",
    "jet_cuts_at_efficiency",
    "jet_thresholds_at_efficiency",
]


@dataclass(frozen=True)
class AbcdEstimate:
    """An ABCD prediction for one selection.

    Attributes:
        n_total: events before the selection.
        n_obs: events passing both jet cuts.
        eff1, eff2: background efficiencies of the jet-1 / jet-2 cut in the control samples.
        n_pred: predicted background ``eff1 * eff2 * n_total``.
        sigma_stat, sigma_syst: statistical and systematic uncertainty of ``n_pred``.
    """

    n_total: int
    n_obs: int
    eff1: float
    eff2: float
    n_pred: float
    sigma_stat: float
    sigma_syst: float

    @property
    def sigma(self) -> float:
        """Total uncertainty of ``n_pred``."""
        return math.hypot(self.sigma_stat, self.sigma_syst)


def _quantile_ranks(x: np.ndarray) -> np.ndarray:
    """Empirical CDF of ``x`` at each entry (ties share their highest rank)."""
    return rankdata(x, method="max") / len(x)


def jet_thresholds_at_efficiency(jet1: ArrayLike, jet2: ArrayLike, efficiency: float) -> tuple[float, float]:
    """Per-jet score cuts (a jet passes when its score is ``>=`` its cut) keeping about ``efficiency``.

    Both jets are cut at the same quantile ``c`` of their own score distribution, with ``c`` set by
    keeping the top ``efficiency`` of ``min(F1(s1), F2(s2))`` (the Tag N' Train event score); the
    cuts are the lowest scores at or above that quantile. NaN for an empty sample.
    """
    s1, s2 = np.asarray(jet1, float), np.asarray(jet2, float)
    if len(s1) == 0:
        return float("nan"), float("nan")
    u1, u2 = _quantile_ranks(s1), _quantile_ranks(s2)
    event = np.minimum(u1, u2)
    c = float(np.min(event[select_efficiency(event, efficiency)]))
    return float(np.min(s1[u1 >= c])), float(np.min(s2[u2 >= c]))


def jet_cuts_at_efficiency(
    jet1: ArrayLike,
    jet2: ArrayLike,
    efficiency: float,
    reference: tuple[ArrayLike, ArrayLike] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-jet pass masks whose conjunction keeps about ``efficiency`` of the events.

    The cuts are :func:`jet_thresholds_at_efficiency` of ``reference`` (jet-1 and jet-2 scores of
    another sample, e.g. the full test sample for its background alone) or, without it, of the
    scores themselves.
    """
    s1, s2 = np.asarray(jet1, float), np.asarray(jet2, float)
    t1, t2 = jet_thresholds_at_efficiency(*(reference if reference is not None else (s1, s2)), efficiency)
    return s1 >= t1, s2 >= t2


def _efficiency(passed: np.ndarray, control: np.ndarray) -> tuple[float, float]:
    """Fraction of ``control`` events that pass, and its binomial uncertainty."""
    n = int(control.sum())
    if n == 0:
        return float("nan"), float("nan")
    eff = float(np.sum(passed & control)) / n
    return eff, math.sqrt(eff * (1.0 - eff) / n)


def abcd_estimate(
    pass1: ArrayLike,
    pass2: ArrayLike,
    jet1: ArrayLike,
    jet2: ArrayLike,
    control_fraction: float = 0.4,
    systematic: float = 0.03,
) -> AbcdEstimate:
    """Predict the background passing ``pass1 & pass2`` from the per-jet control samples.

    Args:
        pass1, pass2: per-jet cut masks.
        jet1, jet2: per-jet scores (define the control samples: the other jet's lowest
            ``control_fraction``).
        control_fraction: fraction of the other jet's scores forming the control sample.
        systematic: relative systematic uncertainty of the prediction.
    """
    p1, p2 = np.asarray(pass1, bool), np.asarray(pass2, bool)
    if not 0.0 < control_fraction <= 1.0:
        raise ValueError(f"control_fraction must be in (0, 1], got {control_fraction}")
    control_for_1 = _quantile_ranks(np.asarray(jet2, float)) <= control_fraction
    control_for_2 = _quantile_ranks(np.asarray(jet1, float)) <= control_fraction
    (eff1, err1), (eff2, err2) = _efficiency(p1, control_for_1), _efficiency(p2, control_for_2)
    n_total = len(p1)
    n_pred = eff1 * eff2 * n_total
    stat = n_total * math.hypot(err1 * eff2, err2 * eff1)
    return AbcdEstimate(
        n_total=n_total, n_obs=int(np.sum(p1 & p2)), eff1=eff1, eff2=eff2,
        n_pred=n_pred, sigma_stat=stat, sigma_syst=systematic * n_pred,
    )  # fmt: skip


@dataclass(frozen=True)
class AbcdValidation:
    """The ABCD prediction tested where no signal is expected (see :func:`abcd_validation`).

    Attributes:
        estimate: the ABCD estimate of the validation region (its ``n_obs`` and ``n_pred``).
        pull: ``(n_obs - n_pred) / sqrt(n_obs + sigma_stat^2 + sigma_syst^2)``; NaN without events.
        control_corr: Spearman rank correlation of the two jet scores where both are below their
            ``corr_quantile`` (a background-dominated product region); NaN with fewer than 3 events.
        control_corr_unc: its statistical uncertainty ``1 / sqrt(n - 1)``.
    """

    estimate: AbcdEstimate
    pull: float
    control_corr: float
    control_corr_unc: float


def abcd_validation(
    jet1: ArrayLike,
    jet2: ArrayLike,
    band: tuple[float, float] = (0.5, 0.9),
    control_fraction: float = 0.4,
    systematic: float = 0.03,
    corr_quantile: float = 0.7,
) -> AbcdValidation:
    """Truth-free check of the independence ABCD assumes, in a background-dominated region.

    The validation region has both jets in the quantile ``band`` (lower edge excluded) of their own
    scores: above the control samples (bottom ``control_fraction``) and below the signal-like
    corner. Its count is predicted exactly like a signal-region count (:func:`abcd_estimate`), so a
    pull far from 0 means the jet scores are correlated on background and ABCD is biased.
    """
    s1, s2 = np.asarray(jet1, float), np.asarray(jet2, float)
    lo, hi = (float(v) for v in band)
    if not control_fraction <= lo < hi <= 1.0:
        raise ValueError(f"validation band must satisfy control_fraction <= low < high <= 1, got {band}")
    if len(s1) == 0:
        empty = AbcdEstimate(0, 0, *(float("nan"),) * 5)
        return AbcdValidation(empty, float("nan"), float("nan"), float("nan"))
    u1, u2 = _quantile_ranks(s1), _quantile_ranks(s2)
    est = abcd_estimate((u1 > lo) & (u1 <= hi), (u2 > lo) & (u2 <= hi), s1, s2, control_fraction, systematic)
    variance = est.n_obs + est.sigma_stat**2 + est.sigma_syst**2
    pull = (est.n_obs - est.n_pred) / math.sqrt(variance) if variance > 0 else float("nan")
    rect = (u1 <= corr_quantile) & (u2 <= corr_quantile)
    n = int(rect.sum())
    if n < 3 or np.ptp(s1[rect]) == 0 or np.ptp(s2[rect]) == 0:  # no correlation of constants
        corr, unc = float("nan"), float("nan")
    else:
        corr, unc = float(spearmanr(s1[rect], s2[rect]).statistic), 1.0 / math.sqrt(n - 1)
    return AbcdValidation(est, float(pull), corr, unc)
