"""The interface every method implements.

A method is built from its config with ``hydra.utils.instantiate`` and used as::

    method.fit(splits, ctx)          # splits: name -> Events (the parts the method asked for)
    scores = method.score(events)    # Scores(event, jet1, jet2)

Per-jet methods give one score per jet; their event score is ``min(F1(s1), F2(s2))`` with ``Fj``
the empirical CDF of jet j's scores on a calibration sample, so that a cut on the event score at
efficiency e selects exactly "both jets above percentile X" (Tag N' Train, section 4).

:class:`Scores`, :class:`EmpiricalCDF` and :func:`combine_jet_scores` live in :mod:`lhcad.scores`
(shared value types, bottom layer) and are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lhcad.data.events import Events
from lhcad.scores import EmpiricalCDF, Scores, combine_jet_scores  # re-exported

__all__ = ["SPARE_BACKGROUND", "EmpiricalCDF", "FitContext", "Method", "Scores", "combine_jet_scores"]

SPARE_BACKGROUND = "qcd_spare"
"""A name a method may list in ``samples`` to get the background events kept out of the run's sample
(``background_reserve`` and whatever the draw left over): independent of every part, e.g. the
pure-background reference of idealised CWoLa. The pipeline provides it; it is not read from disk."""


@dataclass
class FitContext:
    """What a method gets besides its events.

    Attributes:
        device: torch device string ("cpu", "cuda").
        rng: numpy Generator for every random choice the method makes.
        seed: integer seed (for torch generators derived per model).
        samples: extra samples a method may use (e.g. ``sim``, ``outliers``), by name.
        log_metrics: callback ``(metrics, step)`` that records metrics of the run (MLflow).
        progress: show progress bars.
        config: the resolved run config, for methods that need global settings.
    """

    device: str = "cpu"
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    seed: int = 0
    samples: Mapping[str, Events] = field(default_factory=dict)
    log_metrics: Callable[[Mapping[str, float], int | None], None] = lambda metrics, step=None: None
    progress: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("lhcad.methods"))


@runtime_checkable
class Method(Protocol):
    """What the pipeline needs of a method."""

    #: parts of the training share this method needs, name -> relative size (e.g. {"train": 1})
    parts: Mapping[str, float]
    #: extra samples the method reads from the dataset besides qcd/signal (e.g. ("sim",)),
    #: or SPARE_BACKGROUND
    samples: tuple[str, ...]

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None: ...

    def score(self, events: Events) -> Scores: ...


# Optional, called by the pipeline when a method defines them:
#   val_loss: float                      label-free objective for sweeps
#   state() -> dict                      weights to save as an artifact
#   jet_scores(events) -> (s1, s2)       per-jet methods (usable as TNT's initial tagger)
#   score_stages(events) -> [Scores]     iterative methods: metrics per stage (step = stage)
#   extra_metrics(test, test_scores, signal, signal_scores) -> dict[str, float]
#                                        method-specific metrics, logged with the standard ones
