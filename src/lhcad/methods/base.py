"""The interface every method implements: :class:`Method`, and :class:`FitContext`, what it gets
besides its events.

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

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lhcad.data.events import Events
from lhcad.scores import EmpiricalCDF, Scores, combine_jet_scores  # re-exported

__all__ = ["EmpiricalCDF", "FitContext", "Method", "Scores", "combine_jet_scores"]


@dataclass
class FitContext:
    """What a method gets besides its events.

    Attributes:
        device: torch device string ("cpu", "cuda").
        seed: integer seed (for torch generators derived per model).
        samples: the extra dataset samples the method asked for in ``samples`` (e.g. ``sim``,
            ``outliers``), by name.
        spare_background: the background events kept out of the run's sample
            (``background_reserve`` and whatever the draw left over), independent of every part;
            provided when the method sets ``needs_spare_background``, else None.
        log_metrics: callback ``(metrics, step)`` that records metrics of the run (MLflow).
        progress: show progress bars.
    """

    device: str = "cpu"
    seed: int = 0
    samples: Mapping[str, Events] = field(default_factory=dict)
    spare_background: Events | None = None
    log_metrics: Callable[[Mapping[str, float], int | None], None] = lambda metrics, step=None: None
    progress: bool = False


class Method(ABC):
    """Base class of every method: what the pipeline asks of it, and nothing else.

    Required (abstract: ``fit``, ``score``):
        name: str                        class attribute: the method's name (run names outside
                                         Hydra, metric prefixes), e.g. "cwola"
        parts: Mapping[str, float]       training parts it needs (usually set in ``__init__``):
                                         name -> positive relative size, e.g. ``{"train": 1.0}``;
                                         the pipeline cuts them from the run's sample without
                                         reuse, next to ``test`` (and ``val``)
        fit(parts, ctx) -> None          train on ``parts`` (name -> Events) with a :class:`FitContext`
        score(events) -> Scores          larger = more signal-like; raises RuntimeError before fit

    Optional, with these defaults:
        samples: tuple[str, ...] = ()    extra dataset samples besides qcd/signal (of
                                         :data:`lhcad.data.schema.SAMPLES`: "sim", "outliers"),
                                         given in ``ctx.samples``
        needs_spare_background = False   True: ``ctx.spare_background`` holds the background kept
                                         out of the run's sample (e.g. cwola_ideal's reference);
                                         the pipeline refuses to run if there is none
        min_training_signal = 0          injected signal events its training parts need (the
                                         supervised reference learns from truth labels); fewer is
                                         refused before the run starts
        window_dependent = False         True: training uses the m_jj signal region / sidebands
                                         (``search.signal_region``, ``search.sidebands``), so a
                                         window scan (``search=scan``) retrains it per window
        val_loss -> float = NaN          (a property) label-free objective for sweeps
        state() -> dict = {}             weights to save as the run's model artifact ({} = none)
        score_stages(events) -> [Scores] = []
                                         scores of every stage of an iterative method (TNT: stage 0
                                         = initial tagger), logged as ``stage/*`` metrics with
                                         step = stage; [] = no stage metrics
        extra_metrics(test, test_scores, signal, signal_scores) -> dict[str, float] = {}
                                         method-specific metrics, logged next to the standard ones
    The pipeline reads the optional members only after ``fit``; before it, an override that needs
    the fitted models raises RuntimeError, like ``score``.

    Per-jet methods (:class:`~lhcad.methods.per_jet.PerJetMethod`) also give
    ``jet_scores(events) -> (s1, s2)``, which makes them usable as TNT's initial tagger.

    Adding a method = one module + one yaml + its tests:
        1. ``src/lhcad/methods/<name>.py``: a subclass of :class:`Method` (or of ``PerJetMethod`` /
           ``SidebandMethod``) taking ``inputs`` first, setting ``name`` and ``parts``, with ``fit``
           and ``score`` and whichever optional members it needs. Its settings are typed keywords
           defaulting to ``FROM_CONFIG``, filled in by ``configured(self.name, ...)``
           (:mod:`lhcad.methods.registry`): the YAML holds the defaults, Python the types.
        2. ``conf/method/<name>.yaml``: ``_target_`` to the class and every setting's default (see
           ae.yaml); shared blocks through its defaults list (``/training@train: tnt``).
        3. ``tests/``: its behaviour; tests/test_method_contract.py checks the contract of every
           ``conf/method/*.yaml`` without further edits. The pipeline needs no change.
    """

    name: str
    parts: Mapping[str, float]
    samples: tuple[str, ...] = ()
    needs_spare_background: bool = False
    min_training_signal: int = 0
    window_dependent: bool = False

    @abstractmethod
    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        """Train on the parts the method asked for (``splits``: part name -> Events)."""

    @abstractmethod
    def score(self, events: Events) -> Scores:
        """Scores of ``events`` (larger = more signal-like)."""

    @property
    def val_loss(self) -> float:
        """The method's own label-free validation loss (NaN: none)."""
        return float("nan")

    def state(self) -> dict[str, Any]:
        """Weights to save as the run's model artifact ({}: nothing to save)."""
        return {}

    def score_stages(self, events: Events) -> list[Scores]:
        """Scores of every stage of an iterative method ([]: not iterative)."""
        return []

    def extra_metrics(
        self, test: Events, test_scores: Scores, signal: Events, signal_scores: Scores
    ) -> dict[str, float]:
        """Method-specific metrics on the test sample and the held-out signal ({}: none)."""
        return {}
