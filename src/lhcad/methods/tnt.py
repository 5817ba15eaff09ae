"""``tnt``: Tag N' Train (Amram & Mantilla Suarez, arXiv:2002.12376).

Stage 0 trains an initial per-jet tagger (an autoencoder by default) on its own part. Iteration i
takes a fresh part, tags each event with the previous stage's score of the *other* jet
(signal-rich: top ``signal_rich_first`` = 20% in iteration 1, ``signal_rich_later`` = 10% after;
background-rich: bottom ``background_rich`` = 40%), and trains a classifier for this jet on
signal-rich vs background-rich. With ``mjj_window`` the signal-rich set is also required to lie in
that m_jj window (TNT+Mjj); the background-rich set never is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lhcad.data.events import Events
from lhcad.inputs import InputRepresentation
from lhcad.methods._nets import train_classifier, train_config
from lhcad.methods.base import FitContext, Scores
from lhcad.methods.per_jet import JetTaggerPair, check_parts
from lhcad.methods.registry import build_method

__all__ = ["TagNTrain", "tag_events"]


def tag_events(
    other_scores: np.ndarray,
    signal_rich: float,
    background_rich: float,
    mjj: np.ndarray | None = None,
    mjj_window: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Signal-rich / background-rich masks from the other jet's scores (top / bottom fractions).

    Selections are by rank (stable for ties), so the sizes are exactly round(fraction * n).
    """
    if not (0 < signal_rich < 1 and 0 < background_rich < 1 and signal_rich + background_rich <= 1):
        raise ValueError(
            f"signal-rich ({signal_rich}) and background-rich ({background_rich}) fractions must lie in "
            "(0, 1) and add up to at most 1"
        )
    n = len(other_scores)
    order = np.argsort(other_scores, kind="stable")
    sig = np.zeros(n, dtype=bool)
    bkg = np.zeros(n, dtype=bool)
    sig[order[n - round(signal_rich * n) :]] = True
    bkg[order[: round(background_rich * n)]] = True
    if mjj_window is not None:
        lo, hi = (float(v) for v in mjj_window)
        sig &= (mjj >= lo) & (mjj < hi)
    return sig, bkg


class TagNTrain:
    """Tag N' Train with an initial per-jet tagger and ``len(parts) - 1`` iterations."""

    def __init__(
        self,
        inputs: InputRepresentation,
        initial: str | Any = "ae",
        initial_overrides: Mapping[str, Any] | None = None,
        parts: Mapping[str, float] | None = None,
        signal_rich_first: float = 0.2,
        signal_rich_later: float = 0.1,
        background_rich: float = 0.4,
        mjj_window: Sequence[float] | None = None,
        classifier: Mapping[str, Any] | None = None,
        train: Mapping[str, Any] | None = None,
    ) -> None:
        self.inputs = inputs
        self.initial = build_method(initial, inputs, initial_overrides) if isinstance(initial, str) else initial
        if not hasattr(self.initial, "jet_scores"):
            raise ValueError(f"TNT's initial tagger must be a per-jet method, got {type(self.initial).__name__}")
        self.parts = dict(parts or {"initial": 1.0, "iter1": 1.0, "iter2": 1.0, "iter3": 1.0})
        self.iterations = sorted((k for k in self.parts if k.startswith("iter")), key=lambda k: int(k[4:]))
        if "initial" not in self.parts or not self.iterations:
            raise ValueError(f"TNT parts need 'initial' and at least 'iter1', got {list(self.parts)}")
        self.signal_rich_first = float(signal_rich_first)
        self.signal_rich_later = float(signal_rich_later)
        self.background_rich = float(background_rich)
        self.mjj_window = list(mjj_window) if mjj_window is not None else None
        self.classifier = dict(classifier or {"hidden": [32, 32, 16, 8], "dropout": 0.2})
        self.train = train_config(train)
        self.stages: list[Any] = []  # stage 0: the initial method; then one JetTaggerPair per iteration
        self.samples: tuple[str, ...] = tuple(getattr(self.initial, "samples", ()))

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        check_parts(splits, ["initial", *self.iterations], "tnt")
        self.initial.fit({"train": splits["initial"]}, ctx)
        self.stages = [self.initial]
        for it, name in enumerate(self.iterations, start=1):
            events = splits[name]
            previous = self.stages[-1]
            s1, s2 = previous.jet_scores(events)
            frac = self.signal_rich_first if it == 1 else self.signal_rich_later
            taggers, metrics = [], {}
            for j, other in ((1, s2), (2, s1)):
                sig, bkg = tag_events(other, frac, self.background_rich, events["mjj"], self.mjj_window)
                if sig.sum() < 2:
                    raise ValueError(
                        f"TNT iteration {it}: only {int(sig.sum())} signal-rich events for jet {j} "
                        f"(part '{name}' has {len(events)} events); use more events or a wider mjj_window"
                    )
                rows = sig | bkg
                x = self.inputs.jet(events, j)[rows]
                tagger = train_classifier(
                    x, sig[rows], self.classifier, self.train, seed=ctx.seed * 1000 + 10 * it + j,
                    device=ctx.device, desc=f"tnt iter {it} jet {j}", progress=ctx.progress,
                )
                taggers.append(tagger)
                labels = events.labels
                metrics |= {
                    f"tnt/n_signal_rich_jet{j}": float(sig.sum()),
                    f"tnt/n_background_rich_jet{j}": float(bkg.sum()),
                    # truth, for monitoring only: the signal purity the classifier learned from
                    f"tnt/signal_rich_purity_jet{j}": float(labels[sig].mean()),
                    f"tnt/background_rich_purity_jet{j}": float(labels[bkg].mean()) if bkg.any() else float("nan"),
                    f"tnt/val_loss_jet{j}": tagger.val_loss,
                }
            ctx.log_metrics(metrics, it)
            self.stages.append(JetTaggerPair(self.inputs, *taggers))
        # every stage's CDFs from the last training part (never the test sample)
        for stage in self.stages[1:]:
            stage.calibrate(splits[self.iterations[-1]])

    def _final(self) -> JetTaggerPair:
        if len(self.stages) < 2:
            raise RuntimeError("fit() Tag N' Train before scoring")
        return self.stages[-1]

    def score(self, events: Events) -> Scores:
        return self._final().score(events)

    def jet_scores(self, events: Events) -> tuple[np.ndarray, np.ndarray]:
        return self._final().jet_scores(events)

    def score_stages(self, events: Events) -> list[Scores]:
        """Scores of every stage (0 = initial tagger, then one per iteration), for per-iteration metrics."""
        self._final()
        return [stage.score(events) for stage in self.stages]

    @property
    def val_loss(self) -> float:
        """Validation loss of the last iteration's classifiers (signal-rich vs background-rich; label-free)."""
        return self._final().val_loss

    def state(self) -> dict[str, Any]:
        state = {"initial": self.initial.state()}
        state |= {f"iter{i}": stage.state() for i, stage in enumerate(self.stages[1:], start=1)}
        return state
