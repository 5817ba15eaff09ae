"""Selections at a fixed efficiency: keep the most signal-like fraction of a sample."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["n_kept", "select_at_efficiency", "select_efficiency", "threshold_at_efficiency"]


def _check_efficiency(efficiency: float) -> float:
    if isinstance(efficiency, bool) or not 0.0 < float(efficiency) <= 1.0:  # False for NaN
        raise ValueError(f"selection efficiency must be in (0, 1], got {efficiency!r}")
    return float(efficiency)


def n_kept(n: int, efficiency: float) -> int:
    """Events kept out of ``n`` at ``efficiency``: ``round(efficiency * n)``, at least 1 if n > 0."""
    efficiency = _check_efficiency(efficiency)
    return max(1, round(efficiency * n)) if n > 0 else 0


def _top_order(scores: ArrayLike) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if np.any(np.isnan(s)):
        raise ValueError(f"{int(np.sum(np.isnan(s)))} of {len(s)} scores are NaN; cannot rank them")
    # stable sort of -s: highest score first, ties in the order of the events
    return np.argsort(-s, kind="stable")


def select_efficiency(scores: ArrayLike, efficiency: float) -> np.ndarray:
    """Boolean mask keeping the ``round(efficiency * n)`` highest-scoring events (at least one if n > 0).

    Exactly that many events are kept whatever the ties: among equal scores the earlier events win.

    Raises:
        ValueError: ``efficiency`` outside (0, 1], or NaN scores.
    """
    order = _top_order(scores)
    mask = np.zeros(len(order), dtype=bool)
    mask[order[: n_kept(len(order), efficiency)]] = True
    return mask


def threshold_at_efficiency(scores: ArrayLike, efficiency: float) -> float:
    """Lowest score kept by :func:`select_efficiency` (a cut ``scores >= t`` keeps at least as many events).

    NaN for an empty sample.
    """
    order = _top_order(scores)
    k = n_kept(len(order), efficiency)
    if k == 0:
        return float("nan")
    return float(np.asarray(scores, dtype=np.float64)[order[k - 1]])


def select_at_efficiency(
    scores: np.ndarray, efficiency: float, reference: np.ndarray | None = None
) -> np.ndarray:
    """Mask of the events passing the score cut that keeps ``efficiency`` of ``reference``.

    The cut is the lowest score ``t`` that :func:`select_efficiency` keeps on
    ``reference``; where that selection keeps only part of the reference events tied at ``t``, the
    same fraction of the events at ``t`` is kept here, earliest first. Without ``reference`` (or
    with ``scores`` as their own reference) this is exactly ``select_efficiency(scores, efficiency)``.
    """
    if reference is None:
        return select_efficiency(scores, efficiency)
    s, ref = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    t = threshold_at_efficiency(ref, efficiency)
    if math.isnan(t):
        return np.zeros(len(s), bool)
    tied_fraction = (n_kept(len(ref), efficiency) - int(np.sum(ref > t))) / int(np.sum(ref == t))
    mask = s > t
    tied = np.flatnonzero(s == t)
    mask[tied[: round(tied_fraction * len(tied))]] = True
    return mask
