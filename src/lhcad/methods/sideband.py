"""Weak supervision with m_jj sidebands (paper 003, arXiv:2009.02205): ``cwola``, ``sa_cwola``, ``cwola_ideal``.

All three train one event-level classifier ``f(x)`` whose output is the anomaly score; ``m_jj``
only defines the signal region (SR) and the sidebands (SB) and is never an input:

* :class:`CWoLa` (CWoLa hunting): SR events (label 1) against SB events (label 0) of the data.
  The lower and upper sidebands get equal total weight, together equal to the SR's.
* :class:`SACWoLa`: CWoLa plus paper 003's eq. 2.3 term: background-only simulation enters with
  *flipped* labels (SR 0, SB 1) and relative weight ``lam``, which penalises a classifier that
  learns the SR-vs-SB differences the background has without any signal.
* :class:`CWoLaIdeal`: the "optimal CWoLa" reference of paper 003 Fig. 2: SR data against an
  independent pure-background sample in the SR (background events not drawn into the run's
  sample; uses truth, a reference only).

SALAD (:mod:`lhcad.methods.salad`) shares the base class :class:`SidebandMethod`.
The windows (:class:`~lhcad.windows.MassWindows`, the region codes, :func:`~lhcad.windows.sideband_weights`)
live in :mod:`lhcad.windows` and are re-exported here.

Every method reports how much of the m_jj dependence it learned: the AUC of its classifier for SR
against SB events of background only (``sr_vs_sb_auc/sim`` on held-out simulation,
``sr_vs_sb_auc/test_background`` on the test part's true background); 0.5 is ideal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lhcad.data.dataset import split
from lhcad.data.events import Events
from lhcad.evaluate import auc
from lhcad.inputs import DijetFeatures, InputRepresentation
from lhcad.methods._nets import JetTagger, train_classifier, train_config
from lhcad.methods.base import FitContext, Method
from lhcad.methods.per_jet import check_parts
from lhcad.methods.registry import FROM_CONFIG, configured
from lhcad.methods.reweighting import SidebandReweighter
from lhcad.scores import Scores
from lhcad.windows import SB_HIGH, SB_LOW, SR, MassWindows, sideband_weights

log = logging.getLogger(__name__)

__all__ = [
    "CWoLa",
    "CWoLaIdeal",
    "MassWindows",
    "SACWoLa",
    "SidebandMethod",
    "TrainingSet",
    "sideband_weights",
]

# ---------------------------------------------------------------------------------------------- base


@dataclass
class TrainingSet:
    """Inputs, labels and per-event weights of one classifier, plus counts worth logging."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    info: dict[str, float]

    @staticmethod
    def concat(parts: Sequence[TrainingSet]) -> TrainingSet:
        info: dict[str, float] = {}
        for p in parts:
            info |= p.info
        return TrainingSet(
            np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
            np.concatenate([p.w for p in parts]), info,
        )

    def normalised(self) -> TrainingSet:
        """Weights scaled to mean 1 (the loss is ``mean(w * bce)``, so this keeps the learning rate's meaning)."""
        return TrainingSet(self.x, self.y, self.w / self.w.mean(), self.info)


class SidebandMethod(Method):
    """What the sideband methods share: windows, inputs, one classifier, the SR-vs-SB diagnostics.

    Subclasses set ``name`` and implement :meth:`training_set`; this class trains the classifier
    on it, scores events with it and computes the diagnostics.

    Args:
        inputs: the run's input representation. Per-jet dense features are replaced by the
            event-level ``features`` (paper 003's four by default); ``inputs=images`` trains the
            two-channel CNN on both jets' images.
        features: :class:`~lhcad.inputs.DijetFeatures` names used with dense inputs; never m_jj.
        signal_region, sidebands: m_jj windows [GeV].
        parts: the training parts (``{"train": 1.0}``).
        classifier: network settings (``hidden``, ``dropout``; CNN for images).
        train: optimiser and stopping settings (:class:`~lhcad.models.training.TrainConfig`).
        sim_holdout: fraction of the ``sim`` sample kept out of any training, for the diagnostics.
        diagnose_on_sim: read the ``sim`` sample for ``sr_vs_sb_auc/sim`` even when the method
            does not train on it (cwola, cwola_ideal); false skips that metric.

    A setting not given is the one in ``conf/method/<name>.yaml`` (the windows: conf/search).
    """

    name = "sideband"
    window_dependent = True  # trained on the signal region against its sidebands
    trains_on_sim = False

    def __init__(
        self,
        inputs: InputRepresentation,
        *,
        features: Sequence[str] = FROM_CONFIG,
        signal_region: Sequence[float] = FROM_CONFIG,
        sidebands: Sequence[Sequence[float]] = FROM_CONFIG,
        parts: Mapping[str, float] = FROM_CONFIG,
        classifier: Mapping[str, Any] = FROM_CONFIG,
        train: Mapping[str, Any] = FROM_CONFIG,
        sim_holdout: float = FROM_CONFIG,
        diagnose_on_sim: bool = FROM_CONFIG,
    ) -> None:
        settings = configured(
            self.name, features=features, signal_region=signal_region, sidebands=sidebands, parts=parts,
            classifier=classifier, train=train, sim_holdout=sim_holdout, diagnose_on_sim=diagnose_on_sim,
        )
        features, sim_holdout = settings["features"], settings["sim_holdout"]
        features = list(features)
        if "mjj" in features:
            raise ValueError(
                f"{self.name}: m_jj defines the signal region and sidebands and must not be a classifier input; "
                f"remove it from method.features ({features})"
            )
        self.features = features
        self.event_inputs = self._event_inputs(inputs, features)
        self.windows = MassWindows.from_config(settings["signal_region"], settings["sidebands"])
        self.parts = dict(settings["parts"])
        self.classifier = dict(settings["classifier"])
        self.train = train_config(settings["train"])
        if not 0.0 <= float(sim_holdout) < 1.0:
            raise ValueError(f"sim_holdout must be a fraction in [0, 1), got {sim_holdout!r}")
        self.sim_holdout = float(sim_holdout)
        self.diagnose_on_sim = bool(settings["diagnose_on_sim"])
        self.samples: tuple[str, ...] = ("sim",) if (self.trains_on_sim or self.diagnose_on_sim) else ()
        self.tagger: JetTagger | None = None
        self.sim_eval: Events | None = None

    @staticmethod
    def _event_inputs(inputs: InputRepresentation, features: Sequence[str]) -> InputRepresentation:
        if getattr(inputs, "kind", "") == "image" or isinstance(inputs, DijetFeatures):
            return inputs
        return DijetFeatures(features)

    def build_reweighter(self, settings: Mapping[str, Any]) -> SidebandReweighter:
        """SALAD's sideband reweighter on this method's features and windows; ``settings`` (the
        method's ``reweighter``) completed from its config, classifier and training settings
        defaulting to this method's."""
        settings = configured(self.name, reweighter=settings, classifier=self.classifier)["reweighter"]
        return SidebandReweighter.from_settings(self.features, self.windows, settings, self.classifier, self.train)

    # ------------------------------------------------------------------ to implement
    def training_set(self, data: Events, sim: Events | None, ctx: FitContext) -> TrainingSet:
        """Inputs, labels and weights of the classifier from the training part and the training sim."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def x(self, events: Mapping[str, np.ndarray]) -> np.ndarray:
        """Classifier inputs of ``events``."""
        return self.event_inputs.event(events)

    def labelled(self, events: Events, label: int, weights: np.ndarray) -> TrainingSet:
        """``events`` with weight > 0 as a :class:`TrainingSet` of one label."""
        keep = np.flatnonzero(weights > 0)
        chosen = events.take(keep)
        return TrainingSet(self.x(chosen), np.full(len(keep), label, np.float32), weights[keep], {})

    def split_sim(self, ctx: FitContext) -> tuple[Events | None, Events | None]:
        """(training sim, held-out sim); the same split for every method at a given seed."""
        sim = ctx.samples.get("sim")
        if sim is None:
            return None, None
        if self.sim_holdout == 0.0:
            return sim, None
        parts = split(sim, {"train": 1.0 - self.sim_holdout, "eval": self.sim_holdout}, np.random.default_rng([ctx.seed, 3]))
        return parts["train"], parts["eval"]

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        check_parts(splits, list(self.parts), self.name)
        sim_train, self.sim_eval = self.split_sim(ctx)
        if self.trains_on_sim and sim_train is None:
            raise KeyError(f"{self.name} trains on the 'sim' sample, which the pipeline did not provide")
        data = splits["train"]
        region = self.windows.region(data["mjj"])
        info = {
            f"{self.name}/n_sr_data": float(np.sum(region == SR)),
            f"{self.name}/n_sb_data": float(np.sum((region == SB_LOW) | (region == SB_HIGH))),
            f"{self.name}/n_signal_sr_truth": float(np.sum((region == SR) & (data.labels == 1))),
        }
        ts = self.training_set(data, sim_train, ctx).normalised()
        self.tagger = train_classifier(
            ts.x, ts.y, self.classifier, self.train, seed=ctx.seed * 1000 + 500, device=ctx.device,
            desc=self.name, progress=ctx.progress, weights=ts.w.astype(np.float32),
        )
        ctx.log_metrics({**info, **ts.info, f"{self.name}/val_loss": self.tagger.val_loss}, None)
        log.info("%s: trained on %d weighted events (%s)", self.name, len(ts.y),
                 ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in {**info, **ts.info}.items()))

    def score(self, events: Events) -> Scores:
        if self.tagger is None:
            raise RuntimeError(f"fit() {self.name} before scoring")
        return Scores(event=np.asarray(self.tagger(self.x(events)), np.float64))

    def sr_vs_sb_auc(self, events: Events, scores: np.ndarray | None = None) -> float:
        """AUC of the classifier for SR (positive) against SB (negative) events of ``events``."""
        region = self.windows.region(events["mjj"])
        s = self.score(events).event if scores is None else np.asarray(scores)
        return auc(s[(region == SB_LOW) | (region == SB_HIGH)], s[region == SR])

    def extra_metrics(self, test: Events, test_scores: Scores, signal: Events, signal_scores: Scores) -> dict[str, float]:
        """SR-vs-SB AUC of the classifier on background only (0.5 = no m_jj dependence learned)."""
        bkg = test.labels == 0
        out = {"sr_vs_sb_auc/test_background": self.sr_vs_sb_auc(test.take(bkg), test_scores.event[bkg])}
        if self.sim_eval is not None:
            out["sr_vs_sb_auc/sim"] = self.sr_vs_sb_auc(self.sim_eval)
        return out

    @property
    def val_loss(self) -> float:
        return self.tagger.val_loss if self.tagger is not None else float("nan")

    def state(self) -> dict[str, Any]:
        if self.tagger is None:
            raise RuntimeError(f"fit() {self.name} before saving it")
        return {"classifier": self.tagger.state()}


# ---------------------------------------------------------------------------------------------- methods


class CWoLa(SidebandMethod):
    """CWoLa hunting: classifier for SR against sidebands in data (paper 003 eq. 2.3 with lambda = 0)."""

    name = "cwola"

    def data_term(self, data: Events) -> TrainingSet:
        region = self.windows.region(data["mjj"])
        w = sideband_weights(region, "data")
        return TrainingSet.concat([
            self.labelled(data, 1, np.where(region == SR, w, 0.0)),
            self.labelled(data, 0, np.where(region != SR, w, 0.0)),
        ])

    def training_set(self, data: Events, sim: Events | None, ctx: FitContext) -> TrainingSet:
        return self.data_term(data)


class SACWoLa(CWoLa):
    """Simulation-augmented CWoLa (paper 003 eq. 2.3).

    Simulated (background-only) events join the CWoLa training with flipped labels: SR simulation
    as 0, SB simulation as 1. Their weights follow the same SB balancing, scaled so that the
    simulation carries ``lam`` times the data's total weight (per event ``lam`` when the two samples
    have equal size, as in the paper's code). ``lam = 0`` is CWoLa.

    ``reweight_sim=True`` first reweights the simulation to the data with SALAD's sideband-trained
    ``g / (1 - g)`` (:class:`~lhcad.methods.reweighting.SidebandReweighter`, settings in
    ``reweighter``), the option of paper 003's footnote 1: the simulation term then penalises the
    SR-vs-SB differences of a background that looks like the data's, not like the simulation's.
    """

    name = "sa_cwola"
    trains_on_sim = True

    def __init__(
        self,
        inputs: InputRepresentation,
        *,
        lam: float = FROM_CONFIG,
        reweight_sim: bool = FROM_CONFIG,
        reweighter: Mapping[str, Any] = FROM_CONFIG,
        **kwargs: Any,
    ) -> None:
        settings = configured(self.name, lam=lam, reweight_sim=reweight_sim)
        lam = float(settings["lam"])
        if not (np.isfinite(lam) and lam >= 0):
            raise ValueError(f"sa_cwola's lam (weight of the simulation term) must be >= 0, got {lam!r}")
        self.lam = lam
        super().__init__(inputs, **kwargs)
        self.reweighter = self.build_reweighter(reweighter) if settings["reweight_sim"] else None

    def training_set(self, data: Events, sim: Events | None, ctx: FitContext) -> TrainingSet:
        data_ts = self.data_term(data)
        if self.lam == 0.0:
            return data_ts
        assert sim is not None
        info: dict[str, float] = {}
        base = None
        if self.reweighter is not None:
            info |= self.reweighter.fit(data, sim, ctx, self.name)
            base = self.reweighter.weights(sim)
            info |= self.reweighter.summary(base, self.name)
        region = self.windows.region(sim["mjj"])
        w = sideband_weights(region, "simulated events", base)
        w *= self.lam * data_ts.w.sum() / w.sum()
        sim_ts = TrainingSet.concat([
            self.labelled(sim, 0, np.where(region == SR, w, 0.0)),  # flipped: SR simulation is "SB-like"
            self.labelled(sim, 1, np.where(region != SR, w, 0.0)),
        ])
        info |= {f"{self.name}/n_sim": float(len(sim_ts.y)),
                 f"{self.name}/sim_weight_fraction": sim_ts.w.sum() / (sim_ts.w.sum() + data_ts.w.sum())}
        sim_ts.info = info
        return TrainingSet.concat([data_ts, sim_ts])

    def extra_metrics(self, test: Events, test_scores: Scores, signal: Events, signal_scores: Scores) -> dict[str, float]:
        out = super().extra_metrics(test, test_scores, signal, signal_scores)
        if self.reweighter is not None and self.reweighter.tagger is not None and self.sim_eval is not None:
            out |= self.reweighter.closure(test, self.sim_eval, self.name)
        return out

    def state(self) -> dict[str, Any]:
        out = super().state()
        if self.reweighter is not None and self.reweighter.tagger is not None:
            out["reweighter"] = self.reweighter.state()
        return out


class CWoLaIdeal(SidebandMethod):
    """Optimal CWoLa (paper 003 Fig. 2): SR data against independent pure background in the SR.

    The reference background is the run's spare background (``qcd`` events kept out of the
    sample: ``background_reserve`` or an ``n_events`` below the number available), restricted to the SR by m_jj and to
    true background by its labels. It removes the SR-SB differences of the background, so it is the
    upper bound of CWoLa and of SALAD (whose reweighted simulation it replaces by perfect
    background). Uses truth: a reference, not a search.
    """

    name = "cwola_ideal"
    needs_spare_background = True

    def training_set(self, data: Events, sim: Events | None, ctx: FitContext) -> TrainingSet:
        spare = ctx.spare_background
        if spare is None or len(spare) == 0:
            raise ValueError(
                "cwola_ideal needs background events kept out of the run's sample as its pure-background "
                "reference: set background_reserve (e.g. 0.3) or n_events below the dataset's background count"
            )
        in_sr = self.windows.region(data["mjj"]) == SR
        ref_sr = (self.windows.region(spare["mjj"]) == SR) & (spare.labels == 0)
        if ref_sr.sum() < 2 or in_sr.sum() < 2:
            raise ValueError(
                f"cwola_ideal has {int(in_sr.sum())} data and {int(ref_sr.sum())} spare background events in the "
                "signal region; raise background_reserve or lower n_events to leave more spare background"
            )
        n_data, n_ref = int(in_sr.sum()), int(ref_sr.sum())
        ts = TrainingSet.concat([
            self.labelled(data, 1, in_sr.astype(np.float64)),
            self.labelled(spare, 0, ref_sr * (n_data / n_ref)),  # both classes the same total weight
        ])
        ts.info = {"cwola_ideal/n_reference_sr": float(n_ref)}
        return ts
