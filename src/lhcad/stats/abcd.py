"""ABCD cut-and-count background estimate for two-jet selections (paper 001, section 4.1).

An event passes when both jets pass their cuts. The background efficiency of the jet-1 cut is
measured in the background-like control sample of events whose jet-2 score is in its bottom
``control_fraction`` (40% in the paper), and vice versa; the predicted count is
``eff1 * eff2 * N``. Its uncertainty is the binomial uncertainty of both efficiencies plus a
relative systematic (3%), added in quadrature. This assumes the two jet scores are independent
on background, which Tag N' Train is built to keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from lhcad.evaluate.selection import select_efficiency

__all__ = ["AbcdEstimate", "abcd_estimate", "jet_cuts_at_efficiency"]


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


def jet_cuts_at_efficiency(
    jet1: ArrayLike, jet2: ArrayLike, efficiency: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-jet pass masks whose conjunction keeps about ``efficiency`` of the events.

    Both jets are cut at the same quantile ``c`` of their own score distribution, with ``c`` set by
    keeping the top ``efficiency`` of ``min(F1(s1), F2(s2))`` (the Tag N' Train event score).
    """
    u1, u2 = _quantile_ranks(np.asarray(jet1, float)), _quantile_ranks(np.asarray(jet2, float))
    event = np.minimum(u1, u2)
    c = float(np.min(event[select_efficiency(event, efficiency)]))
    return u1 >= c, u2 >= c


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
