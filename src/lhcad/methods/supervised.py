"""``supervised``: truth-label classifiers, the reference of Tag N' Train Fig. 2.

``variant="both"``: one classifier on both jets (event score = its output).
``variant="separate"``: one classifier per jet, combined like the per-jet methods.
Classes are weighted to equal total weight. Uses truth labels: a reference, never a search.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lhcad.data.events import Events
from lhcad.inputs import InputRepresentation
from lhcad.methods._nets import JetTagger, train_classifier, train_config
from lhcad.methods.base import FitContext, Method
from lhcad.methods.per_jet import JetTaggerPair, check_parts
from lhcad.methods.registry import FROM_CONFIG, configured
from lhcad.scores import Scores

__all__ = ["Supervised"]

VARIANTS = ("both", "separate")


class Supervised(Method):
    """Fully supervised reference classifier(s) trained on the injected training part's truth labels."""

    name = "supervised"
    min_training_signal = 2  # learns from the injected signal's truth labels

    def __init__(
        self,
        inputs: InputRepresentation,
        *,
        variant: str = FROM_CONFIG,
        parts: Mapping[str, float] = FROM_CONFIG,
        classifier: Mapping[str, Any] = FROM_CONFIG,
        train: Mapping[str, Any] = FROM_CONFIG,
    ) -> None:
        """``variant``: :data:`VARIANTS`; ``classifier``: network settings; ``train``: training
        settings. A setting not given is the one in conf/method/supervised.yaml."""
        settings = configured(self.name, variant=variant, parts=parts, classifier=classifier, train=train)
        if settings["variant"] not in VARIANTS:
            raise ValueError(f"supervised variant must be one of {VARIANTS}, got {settings['variant']!r}")
        self.inputs = inputs
        self.variant = str(settings["variant"])
        self.parts = dict(settings["parts"])
        self.classifier = dict(settings["classifier"])
        self.train = train_config(settings["train"])
        self.event_tagger: JetTagger | None = None
        self.pair: JetTaggerPair | None = None

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        check_parts(splits, ["train"], "supervised")
        events = splits["train"]
        labels = events.labels
        if labels.sum() < 2:
            raise ValueError(
                f"the supervised reference needs signal events to learn from, but the training part has "
                f"{int(labels.sum())}; raise signal_frac or n_events"
            )
        common = dict(train=self.train, device=ctx.device, progress=ctx.progress)
        if self.variant == "both":
            self.event_tagger = train_classifier(
                self.inputs.event(events), labels, self.classifier, seed=ctx.seed * 1000, desc="supervised", **common
            )
            ctx.log_metrics({"supervised/val_loss": self.event_tagger.val_loss}, None)
            return
        taggers = [
            train_classifier(
                self.inputs.jet(events, j), labels, self.classifier, seed=ctx.seed * 1000 + j,
                desc=f"supervised jet {j}", **common,
            )
            for j in (1, 2)
        ]
        self.pair = JetTaggerPair(self.inputs, *taggers)
        self.pair.calibrate(events)
        ctx.log_metrics({"supervised/val_loss": self.pair.val_loss}, None)

    def score(self, events: Events) -> Scores:
        fitted = self._fitted()
        if isinstance(fitted, JetTaggerPair):
            return fitted.score(events)
        return Scores(event=np.asarray(fitted(self.inputs.event(events)), np.float64))

    @property
    def val_loss(self) -> float:
        return self._fitted().val_loss

    def state(self) -> dict[str, Any]:
        return self._fitted().state()

    def _fitted(self) -> JetTagger | JetTaggerPair:
        """The event classifier (``both``) or the jet classifiers (``separate``)."""
        fitted = self.event_tagger if self.event_tagger is not None else self.pair
        if fitted is None:
            raise RuntimeError("fit() the supervised classifier before scoring")
        return fitted
