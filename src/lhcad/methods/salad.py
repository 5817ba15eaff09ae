"""``salad``: Simulation Assisted Likelihood-free Anomaly Detection (paper 003, eqs. 2.1-2.2).

1. A parameterised classifier ``g(x, m_jj)`` learns data (1) against simulation (0) in the long
   sidebands (the CWoLa sidebands widened by ``long_sideband_extension`` on each side, 300 GeV in
   the paper), where the signal is small (eq. 2.2).
2. Its odds ``w = g / (1 - g)`` (DCTR weights; ``exp(logit)``) interpolated into the SR make the
   simulation look like the data's background there. They are clipped to
   ``[1 / max_weight, max_weight]`` and normalised so that the simulation has the data's SR weight.
3. The anomaly score ``f(x)`` learns SR data (1) against reweighted SR simulation (0) (eq. 2.1).

``reweight=false`` skips step 2: the "Data vs. Sim." classifier of paper 003 Fig. 2.

Diagnostics besides the SR-vs-SB AUC of :mod:`lhcad.methods.sideband`:

* ``salad/sb_auc_before`` / ``salad/sb_auc_after``: AUC of ``g`` for data against simulation in the
  long sidebands on events no network saw (the test part and the held-out simulation), with the
  simulation unweighted and weighted by ``w``. Good reweighting brings the second to 0.5.
* ``salad/weight_max``, ``salad/weight_neff_fraction`` (Kish effective sample size over the number of
  SR simulation events) and ``salad/weight_clipped_fraction``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import sklearn.metrics

from lhcad.data.events import Events
from lhcad.inputs import DijetFeatures, InputRepresentation
from lhcad.methods._nets import JetTagger, train_classifier, train_config
from lhcad.methods.base import FitContext, Scores
from lhcad.methods.sideband import OUTSIDE, SR, MassWindows, SidebandMethod, TrainingSet

__all__ = ["SALAD", "weighted_auc"]


def weighted_auc(
    background: np.ndarray, signal: np.ndarray, background_weights: np.ndarray | None = None
) -> float:
    """AUC of ``signal`` against ``background`` scores with optional per-event background weights."""
    y = np.concatenate([np.zeros(len(background)), np.ones(len(signal))])
    s = np.concatenate([background, signal])
    w = None if background_weights is None else np.concatenate([background_weights, np.ones(len(signal))])
    if len(background) == 0 or len(signal) == 0:
        return float("nan")
    return float(sklearn.metrics.roc_auc_score(y, s, sample_weight=w))


class SALAD(SidebandMethod):
    """SALAD: SR data against simulation reweighted by a sideband-trained data/simulation classifier.

    Args (besides those of :class:`~lhcad.methods.sideband.SidebandMethod`):
        long_sideband_extension: GeV added outwards to each sideband for training ``g``.
        reweighter: network settings of ``g`` (dense, on ``features`` plus m_jj; also with images).
        reweighter_train: training settings of ``g`` (default: those of the classifier).
        max_weight: weights are clipped to ``[1 / max_weight, max_weight]`` before normalising.
        reweight: false gives the unweighted "data vs. simulation" classifier.
    """

    name = "salad"
    trains_on_sim = True

    def __init__(
        self,
        inputs: InputRepresentation,
        long_sideband_extension: float = 300.0,
        reweighter: Mapping[str, Any] | None = None,
        reweighter_train: Mapping[str, Any] | None = None,
        max_weight: float = 20.0,
        reweight: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(inputs, **kwargs)
        self.long_windows: MassWindows = self.windows.widened(long_sideband_extension)
        self.reweighter_cfg = dict(reweighter or self.classifier)
        self.reweighter_train = train_config(reweighter_train) if reweighter_train else self.train
        if not float(max_weight) > 1.0:
            raise ValueError(f"salad's max_weight must be > 1, got {max_weight!r}")
        self.max_log_weight = float(np.log(float(max_weight)))
        self.reweight = bool(reweight)
        self.g_inputs = DijetFeatures([*self.features, "mjj"])
        self.reweighter: JetTagger | None = None

    # ------------------------------------------------------------------ reweighting
    def _in_long_sidebands(self, events: Events) -> np.ndarray:
        region = self.long_windows.region(events["mjj"])
        return (region != SR) & (region != OUTSIDE)

    def _log_odds(self, events: Events) -> np.ndarray:
        assert self.reweighter is not None
        return np.asarray(self.reweighter(self.g_inputs.event(events)), np.float64)

    def weights(self, sim: Events) -> np.ndarray:
        """Unnormalised DCTR weights ``g / (1 - g)`` of simulated events, clipped (1 without reweighting)."""
        if not self.reweight:
            return np.ones(len(sim))
        return np.exp(np.clip(self._log_odds(sim), -self.max_log_weight, self.max_log_weight))

    def _fit_reweighter(self, data: Events, sim: Events, ctx: FitContext) -> dict[str, float]:
        d, s = data.take(self._in_long_sidebands(data)), sim.take(self._in_long_sidebands(sim))
        if len(d) < 2 or len(s) < 2:
            raise ValueError(f"salad: {len(d)} data and {len(s)} simulated events in the long sidebands; use more events")
        x = np.concatenate([self.g_inputs.event(d), self.g_inputs.event(s)])
        y = np.concatenate([np.ones(len(d)), np.zeros(len(s))]).astype(np.float32)
        self.reweighter = train_classifier(
            x, y, self.reweighter_cfg, self.reweighter_train, seed=ctx.seed * 1000 + 501, device=ctx.device,
            desc="salad reweighter", progress=ctx.progress,
        )
        return {"salad/n_long_sb_data": float(len(d)), "salad/n_long_sb_sim": float(len(s)),
                "salad/reweighter_val_loss": self.reweighter.val_loss}

    # ------------------------------------------------------------------ SidebandMethod
    def training_set(self, data: Events, sim: Events | None, ctx: FitContext) -> TrainingSet:
        assert sim is not None
        info = self._fit_reweighter(data, sim, ctx) if self.reweight else {}
        data_sr = data.take(self.windows.region(data["mjj"]) == SR)
        sim_sr = sim.take(self.windows.region(sim["mjj"]) == SR)
        if len(data_sr) < 2 or len(sim_sr) < 2:
            raise ValueError(f"salad: {len(data_sr)} data and {len(sim_sr)} simulated events in the SR; use more events")
        w = self.weights(sim_sr)
        clipped = float(np.mean(np.abs(np.log(w)) >= self.max_log_weight * (1 - 1e-9))) if self.reweight else 0.0
        rel = w / w.mean()
        info |= {
            "salad/weight_max": float(rel.max()),
            "salad/weight_min": float(rel.min()),
            "salad/weight_neff_fraction": float(w.sum() ** 2 / np.sum(w**2) / len(w)),
            "salad/weight_clipped_fraction": clipped,
            "salad/n_sr_sim": float(len(sim_sr)),
        }
        ts = TrainingSet.concat([
            self.labelled(data_sr, 1, np.ones(len(data_sr))),
            self.labelled(sim_sr, 0, w * (len(data_sr) / w.sum())),  # simulation carries the data's SR weight
        ])
        ts.info = info
        return ts

    def extra_metrics(self, test: Events, test_scores: Scores, signal: Events, signal_scores: Scores) -> dict[str, float]:
        out = super().extra_metrics(test, test_scores, signal, signal_scores)
        if self.reweighter is None or self.sim_eval is None:
            return out
        d = test.take(self._in_long_sidebands(test))
        s = self.sim_eval.take(self._in_long_sidebands(self.sim_eval))
        g_data, g_sim = self._log_odds(d), self._log_odds(s)
        out["salad/sb_auc_before"] = weighted_auc(g_sim, g_data)
        out["salad/sb_auc_after"] = weighted_auc(g_sim, g_data, self.weights(s))
        return out

    def state(self) -> dict[str, Any]:
        out = super().state()
        if self.reweighter is not None:
            out["reweighter"] = self.reweighter.state()
        return out

