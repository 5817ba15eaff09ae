"""Simulation reweighted to the data with a classifier trained in the m_jj sidebands (DCTR).

:class:`SidebandReweighter` is step 1-2 of SALAD (paper 003, eq. 2.2): a parameterised classifier
``g(x, m_jj)`` learns data (1) against simulation (0) in the *long* sidebands, the CWoLa sidebands
widened outwards (300 GeV in the paper), where the signal is small. Its odds
``w = g / (1 - g) = exp(logit)`` reweight simulated events anywhere in m_jj, the signal region
included (interpolation in the m_jj parameter). Classes are balanced in training, so the odds
estimate the density ratio data/simulation without a prior factor.

``salad`` uses it for its SR simulation; ``sa_cwola`` with ``reweight_sim=true`` for the simulation
term of eq. 2.3 (the option of paper 003's footnote 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sklearn.metrics

from lhcad.data.events import Events
from lhcad.inputs import DijetFeatures
from lhcad.methods._nets import JetTagger, train_classifier, train_config
from lhcad.methods.base import FitContext
from lhcad.models.training import TrainConfig
from lhcad.windows import OUTSIDE, SR, MassWindows

__all__ = ["SidebandReweighter", "weighted_auc"]


def weighted_auc(
    background: np.ndarray, signal: np.ndarray, background_weights: np.ndarray | None = None
) -> float:
    """AUC of ``signal`` against ``background`` scores with optional per-event background weights."""
    if len(background) == 0 or len(signal) == 0:
        return float("nan")
    y = np.concatenate([np.zeros(len(background)), np.ones(len(signal))])
    s = np.concatenate([background, signal])
    w = None if background_weights is None else np.concatenate([background_weights, np.ones(len(signal))])
    return float(sklearn.metrics.roc_auc_score(y, s, sample_weight=w))


class SidebandReweighter:
    """``g(x, m_jj)``: data against simulation in the long sidebands, and its clipped odds as weights.

    Built from a method's ``reweighter`` settings (conf/reweighter/default.yaml) by :meth:`from_settings`.

    Args:
        features: :class:`~lhcad.inputs.DijetFeatures` names of ``x`` (m_jj is added as the parameter).
        windows: the CWoLa windows (:class:`~lhcad.windows.MassWindows`).
        long_sideband_extension: GeV added outwards to each sideband.
        max_weight: weights are clipped to ``[1 / max_weight, max_weight]``.
        classifier: network settings of ``g`` (dense).
        train: training settings of ``g``.
    """

    def __init__(
        self,
        features: Sequence[str],
        windows: MassWindows,
        *,
        long_sideband_extension: float,
        max_weight: float,
        classifier: Mapping[str, Any],
        train: Mapping[str, Any] | TrainConfig,
    ) -> None:
        if not float(max_weight) > 1.0:
            raise ValueError(f"the reweighter's max_weight must be > 1, got {max_weight!r}")
        self.long_windows = windows.widened(long_sideband_extension)
        self.inputs = DijetFeatures([*features, "mjj"])
        self.max_log_weight = float(np.log(float(max_weight)))
        self.classifier = dict(classifier)
        self.train = train if isinstance(train, TrainConfig) else train_config(train)
        self.tagger: JetTagger | None = None

    @classmethod
    def from_settings(
        cls,
        features: Sequence[str],
        windows: MassWindows,
        settings: Mapping[str, Any] | None,
        classifier: Mapping[str, Any],
        train: TrainConfig,
    ) -> SidebandReweighter:
        """From a method's ``reweighter`` settings (``long_sideband_extension``, ``max_weight``); a
        missing or null ``classifier`` / ``train`` means the method's own."""
        given = {k: v for k, v in dict(settings or {}).items() if v is not None}
        return cls(features, windows, **{"classifier": classifier, "train": train, **given})

    def in_long_sidebands(self, events: Events) -> np.ndarray:
        """Mask of the events in either long sideband."""
        region = self.long_windows.region(events["mjj"])
        return (region != SR) & (region != OUTSIDE)

    def fit(self, data: Events, sim: Events, ctx: FitContext, prefix: str) -> dict[str, float]:
        """Train ``g`` on the long-sideband events of ``data`` and ``sim``; returns counts to log."""
        d, s = data.take(self.in_long_sidebands(data)), sim.take(self.in_long_sidebands(sim))
        if len(d) < 2 or len(s) < 2:
            raise ValueError(f"{prefix}: {len(d)} data and {len(s)} simulated events in the long sidebands; use more events")
        x = np.concatenate([self.inputs.event(d), self.inputs.event(s)])
        y = np.concatenate([np.ones(len(d)), np.zeros(len(s))]).astype(np.float32)
        self.tagger = train_classifier(
            x, y, self.classifier, self.train, seed=ctx.seed * 1000 + 501, device=ctx.device,
            desc=f"{prefix} reweighter", progress=ctx.progress,
        )
        return {f"{prefix}/n_long_sb_data": float(len(d)), f"{prefix}/n_long_sb_sim": float(len(s)),
                f"{prefix}/reweighter_val_loss": self.tagger.val_loss}

    def log_odds(self, events: Events) -> np.ndarray:
        """``log(g / (1 - g))`` of ``events`` (the classifier's logit)."""
        if self.tagger is None:
            raise RuntimeError("fit() the reweighter before using it")
        return np.asarray(self.tagger(self.inputs.event(events)), np.float64)

    def weights(self, sim: Events) -> np.ndarray:
        """Clipped DCTR weights ``g / (1 - g)`` of simulated events (unnormalised)."""
        return np.exp(np.clip(self.log_odds(sim), -self.max_log_weight, self.max_log_weight))

    def summary(self, w: np.ndarray, prefix: str) -> dict[str, float]:
        """Weight summary to log: max and min relative to the mean, Kish N_eff / N, fraction clipped."""
        rel = w / w.mean()
        return {
            f"{prefix}/weight_max": float(rel.max()),
            f"{prefix}/weight_min": float(rel.min()),
            f"{prefix}/weight_neff_fraction": float(w.sum() ** 2 / np.sum(w**2) / len(w)),
            f"{prefix}/weight_clipped_fraction": float(np.mean(np.abs(np.log(w)) >= self.max_log_weight * (1 - 1e-9))),
        }

    def closure(self, data: Events, sim: Events, prefix: str) -> dict[str, float]:
        """AUC of ``g`` for data against simulation in the long sidebands, without and with the weights.

        Use events ``g`` never saw (test part, held-out simulation); 0.5 after reweighting = closure.
        """
        d, s = data.take(self.in_long_sidebands(data)), sim.take(self.in_long_sidebands(sim))
        g_data, g_sim = self.log_odds(d), self.log_odds(s)
        return {
            f"{prefix}/sb_auc_before": weighted_auc(g_sim, g_data),
            f"{prefix}/sb_auc_after": weighted_auc(g_sim, g_data, self.weights(s)),
        }

    def state(self) -> dict[str, Any]:
        if self.tagger is None:
            raise RuntimeError("fit() the reweighter before saving it")
        return self.tagger.state()
