"""``salad``: Simulation Assisted Likelihood-free Anomaly Detection (paper 003, eqs. 2.1-2.2).

1. A parameterised classifier ``g(x, m_jj)`` learns data (1) against simulation (0) in the long
   sidebands (the CWoLa sidebands widened by ``reweighter.long_sideband_extension`` on each side,
   300 GeV in the paper), where the signal is small (eq. 2.2); see
   :class:`~lhcad.methods.reweighting.SidebandReweighter`.
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

from lhcad.data.events import Events
from lhcad.inputs import InputRepresentation
from lhcad.methods.base import FitContext
from lhcad.methods.registry import FROM_CONFIG, configured
from lhcad.methods.reweighting import weighted_auc
from lhcad.methods.sideband import SidebandMethod, TrainingSet
from lhcad.scores import Scores
from lhcad.windows import SR

__all__ = ["SALAD", "weighted_auc"]


class SALAD(SidebandMethod):
    """SALAD: SR data against simulation reweighted by a sideband-trained data/simulation classifier.

    Args (besides those of :class:`~lhcad.methods.sideband.SidebandMethod`):
        reweighter: settings of :class:`~lhcad.methods.reweighting.SidebandReweighter`
            (``long_sideband_extension``, ``max_weight``, ``classifier``, ``train``; its training
            settings default to the classifier's).
        reweight: false gives the unweighted "data vs. simulation" classifier.
    """

    name = "salad"
    trains_on_sim = True

    def __init__(
        self,
        inputs: InputRepresentation,
        *,
        reweighter: Mapping[str, Any] = FROM_CONFIG,
        reweight: bool = FROM_CONFIG,
        **kwargs: Any,
    ) -> None:
        super().__init__(inputs, **kwargs)
        self.reweighter = self.build_reweighter(reweighter)
        self.reweight = bool(configured(self.name, reweight=reweight)["reweight"])

    def weights(self, sim: Events) -> np.ndarray:
        """Unnormalised DCTR weights ``g / (1 - g)`` of simulated events, clipped (1 without reweighting)."""
        return self.reweighter.weights(sim) if self.reweight else np.ones(len(sim))

    # ------------------------------------------------------------------ SidebandMethod
    def training_set(self, data: Events, sim: Events | None, ctx: FitContext) -> TrainingSet:
        assert sim is not None
        info = self.reweighter.fit(data, sim, ctx, self.name) if self.reweight else {}
        data_sr = data.take(self.windows.region(data["mjj"]) == SR)
        sim_sr = sim.take(self.windows.region(sim["mjj"]) == SR)
        if len(data_sr) < 2 or len(sim_sr) < 2:
            raise ValueError(f"salad: {len(data_sr)} data and {len(sim_sr)} simulated events in the SR; use more events")
        w = self.weights(sim_sr)
        if self.reweight:
            info |= self.reweighter.summary(w, self.name)
        info[f"{self.name}/n_sr_sim"] = float(len(sim_sr))
        ts = TrainingSet.concat([
            self.labelled(data_sr, 1, np.ones(len(data_sr))),
            self.labelled(sim_sr, 0, w * (len(data_sr) / w.sum())),  # simulation carries the data's SR weight
        ])
        ts.info = info
        return ts

    def extra_metrics(self, test: Events, test_scores: Scores, signal: Events, signal_scores: Scores) -> dict[str, float]:
        out = super().extra_metrics(test, test_scores, signal, signal_scores)
        if self.reweight and self.reweighter.tagger is not None and self.sim_eval is not None:
            out |= self.reweighter.closure(test, self.sim_eval, self.name)
        return out

    def state(self) -> dict[str, Any]:
        out = super().state()
        if self.reweighter.tagger is not None:
            out["reweighter"] = self.reweighter.state()
        return out
