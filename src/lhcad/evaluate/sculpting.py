"""Mass sculpting: how much a selection on the anomaly score distorts the background mjj spectrum.

A score correlated with mjj turns the smoothly falling background into a bump after the cut,
which a bump hunt then mistakes for signal. The distortion is measured by the Jensen-Shannon
divergence between the background mjj histograms before and after the selection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import scipy.spatial.distance
from numpy.typing import ArrayLike

from lhcad.evaluate.selection import select_efficiency

__all__ = ["jsd", "mass_sculpting"]

logger = logging.getLogger(__name__)

Bins = int | ArrayLike
Range = tuple[float, float] | None


def jsd(
    a_values: ArrayLike, b_values: ArrayLike, bins: Bins = 40, range: Range = None  # noqa: A002
) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between the normalized histograms of two samples.

    0 for identical histograms, 1 for histograms without common bins. ``bins`` and ``range`` are as
    in ``numpy.histogram``; without ``range`` both samples share the range of their union. Values
    outside the range are ignored. NaN (with a logged warning) if either histogram is empty.
    """
    a = np.asarray(a_values, dtype=np.float64).ravel()
    b = np.asarray(b_values, dtype=np.float64).ravel()
    if range is None and np.ndim(bins) == 0:
        both = np.concatenate([a, b])
        if both.size == 0:
            logger.warning("JSD is NaN: both samples are empty")
            return float("nan")
        range = (float(both.min()), float(both.max()))
    edges = np.histogram_bin_edges(np.empty(0), bins=bins, range=range)
    ha, _ = np.histogram(a, bins=edges)
    hb, _ = np.histogram(b, bins=edges)
    empty = [name for name, h in (("first", ha), ("second", hb)) if h.sum() == 0]
    if empty:
        logger.warning(
            "JSD is NaN: the %s histogram is empty (%d and %d values, range [%g, %g])",
            " and ".join(empty),
            a.size,
            b.size,
            edges[0],
            edges[-1],
        )
        return float("nan")
    # jensenshannon normalizes p and q itself and returns the distance, sqrt(divergence)
    distance = scipy.spatial.distance.jensenshannon(ha.astype(np.float64), hb.astype(np.float64), base=2)
    return float(np.clip(distance**2, 0.0, 1.0))


def mass_sculpting(
    mjj: ArrayLike,
    labels: ArrayLike,
    event_scores: ArrayLike,
    efficiencies: Iterable[float],
    bins: Bins = 40,
    range: Range = None,  # noqa: A002
) -> dict[float, float]:
    """JSD between the background mjj histogram before and after a selection, per efficiency.

    Each selection keeps the top fraction ``efficiency`` of *all* events (the sample as injected,
    signal included) by event score; the JSD compares the background (label 0) events before and
    after it. Note that the JSD of a small selected sample is biased upwards by its statistical
    fluctuations: compare against a random score of the same sample size.

    Returns:
        efficiency -> JSD (NaN where no background event is selected).
    """
    mjj = np.asarray(mjj, dtype=np.float64)
    labels = np.asarray(labels)
    scores = np.asarray(event_scores, dtype=np.float64)
    if not len(mjj) == len(labels) == len(scores):
        raise ValueError(
            "mjj, labels and event_scores must have equal lengths, "
            f"got {len(mjj)}, {len(labels)}, {len(scores)}"
        )
    background = labels == 0
    if range is None and np.ndim(bins) == 0 and np.any(background):
        range = (float(mjj[background].min()), float(mjj[background].max()))
    out = {}
    for eff in efficiencies:
        selected = select_efficiency(scores, eff)
        out[float(eff)] = jsd(mjj[background], mjj[background & selected], bins, range)
    return out
