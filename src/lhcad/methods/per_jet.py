"""Shared machinery of per-jet methods: one tagger per jet, event score from the two jets' CDFs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lhcad.data.events import Events
from lhcad.inputs import InputRepresentation
from lhcad.methods._nets import JetTagger
from lhcad.methods.base import Method
from lhcad.methods.registry import FROM_CONFIG, configured
from lhcad.scores import EmpiricalCDF, Scores, combine_jet_scores

__all__ = ["JetTaggerPair", "PerJetMethod", "check_parts"]


class JetTaggerPair:
    """Two per-jet taggers (jet 1, jet 2) and the CDFs that turn their scores into an event score."""

    def __init__(self, inputs: InputRepresentation, jet1: JetTagger, jet2: JetTagger) -> None:
        self.inputs = inputs
        self.taggers = {1: jet1, 2: jet2}
        self.cdfs: dict[int, EmpiricalCDF] = {}

    def jet_scores(self, events: Events) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores of jet 1 and jet 2 (larger = more signal-like)."""
        return self.taggers[1](self.inputs.jet(events, 1)), self.taggers[2](self.inputs.jet(events, 2))

    def calibrate(self, events: Events) -> None:
        """Learn each jet's score CDF on ``events`` (a training part, never the test sample)."""
        s1, s2 = self.jet_scores(events)
        self.cdfs = {1: EmpiricalCDF(s1), 2: EmpiricalCDF(s2)}

    def score(self, events: Events) -> Scores:
        if not self.cdfs:
            raise RuntimeError("calibrate() the tagger pair before scoring events")
        s1, s2 = self.jet_scores(events)
        return combine_jet_scores(s1, s2, self.cdfs[1], self.cdfs[2])

    @property
    def val_loss(self) -> float:
        return float(np.mean([t.val_loss for t in self.taggers.values()]))

    def state(self) -> dict[str, Any]:
        return {f"jet{j}": t.state() for j, t in self.taggers.items()}


def check_parts(parts: Mapping[str, Events], needed: list[str], method: str) -> None:
    """Clear error when the pipeline did not provide the parts a method asked for."""
    missing = [p for p in needed if p not in parts]
    if missing:
        raise KeyError(f"{method} needs the parts {needed}, missing {missing} (got {list(parts)})")
    empty = [p for p in needed if len(parts[p]) == 0]
    if empty:
        raise ValueError(f"{method}: parts {empty} are empty; use more events (n_events) or larger method.parts")


class PerJetMethod(Method):
    """What every per-jet method shares once ``fit`` has set ``self.pair``: scores, loss, weights;
    and the settings of its per-jet networks.

    Args:
        inputs: the run's input representation.
        parts: the training parts (``{"train": 1.0}``).
        dense: network settings for per-jet feature vectors (``hidden``, ``latent``).
        conv: network settings for jet images (``latent``).

    A setting not given is the one in ``conf/method/<name>.yaml``
    (:data:`~lhcad.methods.registry.FROM_CONFIG`). Subclasses set ``name``, take their own settings
    as keywords, pass the rest on to this constructor, and implement ``fit`` (which must end with
    ``self.pair`` calibrated).
    """

    name: str = "per-jet method"
    pair: JetTaggerPair | None = None

    def __init__(
        self,
        inputs: InputRepresentation,
        parts: Mapping[str, float] = FROM_CONFIG,
        dense: Mapping[str, Any] = FROM_CONFIG,
        conv: Mapping[str, Any] = FROM_CONFIG,
    ) -> None:
        settings = configured(self.name, parts=parts, dense=dense, conv=conv)
        self.inputs = inputs
        self.parts = dict(settings["parts"])
        self.dense = dict(settings["dense"])
        self.conv = dict(settings["conv"])

    def score(self, events: Events) -> Scores:
        return self._fitted().score(events)

    def jet_scores(self, events: Events) -> tuple[np.ndarray, np.ndarray]:
        return self._fitted().jet_scores(events)

    @property
    def val_loss(self) -> float:
        """Mean best validation loss of the two jets' models (the method's own, label-free objective)."""
        return self._fitted().val_loss

    def state(self) -> dict[str, Any]:
        return self._fitted().state()

    def _fitted(self) -> JetTaggerPair:
        if self.pair is None:
            raise RuntimeError(f"fit() {self.name} before scoring")
        return self.pair
