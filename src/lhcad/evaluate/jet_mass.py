"""Jet-mass sculpting of per-jet taggers and their robustness to the jet-energy scale.

* :func:`jet_mass_sculpting` (paper 004, eq. 14 and Fig. 15): for each jet, the JSD between the
  background jet-mass histogram before and after a cut on that jet's score at background
  efficiency ``eff_b`` (5% by default), and the signal efficiency of the same cut.
* :func:`nuisance_aucs` (paper 002, Table 1): the AUC with the test background and the signal both
  shifted to the JES class up / nominal / down, and their spread (max - min); :class:`JesNuisance`
  is the probe the pipeline runs for every method (``search.probes``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from lhcad.data.events import Events
from lhcad.data.transforms import DEFAULT_JES_SHIFT, apply_jes
from lhcad.evaluate.metrics import auc
from lhcad.evaluate.sculpting import jsd
from lhcad.evaluate.selection import select_efficiency, threshold_at_efficiency
from lhcad.scores import Scores

__all__ = ["JES_CLASSES", "JesNuisance", "jet_mass_metrics", "jet_mass_sculpting", "nuisance_aucs"]

logger = logging.getLogger(__name__)

#: nuisance class name -> JES direction
JES_CLASSES = {"up": 1, "nominal": 0, "down": -1}


def jet_mass_sculpting(
    background_mass: np.ndarray,
    background_scores: np.ndarray,
    signal_scores: np.ndarray,
    eff_b: float = 0.05,
    bins: int = 40,
) -> tuple[float, float]:
    """(JSD of the background mass before / after the cut at ``eff_b``, signal efficiency of the cut).

    The cut keeps the ``round(eff_b * n)`` most anomalous background jets; the signal efficiency is
    the fraction of signal jets scoring at least the lowest kept background score. The histograms
    share ``bins`` bins over the range of the background masses.
    """
    mass = np.asarray(background_mass, np.float64)
    kept = select_efficiency(background_scores, eff_b)
    value = jsd(mass, mass[kept], bins=bins, range=(float(mass.min()), float(mass.max())))
    threshold = threshold_at_efficiency(background_scores, eff_b)
    signal = np.asarray(signal_scores, np.float64)
    eff_s = float(np.mean(signal >= threshold)) if signal.size else float("nan")
    return value, eff_s


def jet_mass_metrics(
    test: Events, test_scores: Scores, signal: Events, signal_scores: Scores, eff_b: float = 0.05, bins: int = 40
) -> dict[str, float]:
    """``jsd_mjet/jet{j}`` and ``eff_s_at_eff_b_{eff_b}/jet{j}`` from a per-jet method's scores."""
    if not test_scores.per_jet or not signal_scores.per_jet:
        raise ValueError("jet-mass sculpting needs per-jet scores")
    background = test.labels == 0
    metrics = {}
    for j in (1, 2):
        value, eff_s = jet_mass_sculpting(
            test[f"j{j}_m"][background], getattr(test_scores, f"jet{j}")[background],
            getattr(signal_scores, f"jet{j}"), eff_b, bins,
        )
        metrics[f"jsd_mjet/jet{j}"] = value
        metrics[f"eff_s_at_eff_b_{eff_b:g}/jet{j}"] = eff_s
    return metrics


def nuisance_aucs(
    score: Callable[[Events], Scores], test: Events, signal: Events, shift: float = DEFAULT_JES_SHIFT
) -> dict[str, float]:
    """``auc_nuisance/{up,nominal,down}`` and ``auc_nuisance/spread`` (max - min) of event scores.

    Every jet of the test background and of ``signal`` is scaled by ``1 + c * shift`` for the JES
    class ``c`` (:func:`~lhcad.data.transforms.apply_jes`), and the AUC of ``score`` computed.
    """
    background = test.take(test.labels == 0)
    metrics = {}
    for name, c in JES_CLASSES.items():
        factor = 1.0 + c * shift
        b = score(apply_jes(background, factor, factor)).event
        s = score(apply_jes(signal, factor, factor)).event
        metrics[f"auc_nuisance/{name}"] = auc(b, s)
    values = [metrics[f"auc_nuisance/{name}"] for name in JES_CLASSES]
    metrics["auc_nuisance/spread"] = float(np.max(values) - np.min(values))
    return metrics


class JesNuisance:
    """Probe of a method's robustness to the jet-energy scale, run on every method's scores
    (``search.probes``): :func:`nuisance_aucs` with every jet scaled by ``1 +- shift``."""

    name = "jes_nuisance"

    def __init__(self, shift: float = DEFAULT_JES_SHIFT) -> None:
        if not 0 < float(shift) < 1:
            raise ValueError(f"JesNuisance.shift must be in (0, 1), got {shift!r}")
        self.shift = float(shift)

    def __call__(self, score: Callable[[Events], Scores], test: Events, signal: Events) -> dict[str, float]:
        """``auc_nuisance/{up,nominal,down,spread}`` of ``score`` on ``test``'s background and
        ``signal``; NaN, with the reason logged, without truth labels or held-out signal."""
        if "label" not in test or not np.any(np.asarray(test.labels) == 0) or len(signal) == 0:
            logger.warning("jes_nuisance probe skipped: no labelled test background or no held-out signal")
            return {f"auc_nuisance/{name}": float("nan") for name in (*JES_CLASSES, "spread")}
        return nuisance_aucs(score, test, signal, self.shift)
