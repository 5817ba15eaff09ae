"""``tnt``: Tag N' Train (Amram & Mantilla Suarez, arXiv:2002.12376).

Stage 0 trains an initial per-jet tagger (an autoencoder by default) on its own ``initial`` part.
Each iteration tags events with the previous stage's score of the *other* jet (signal-rich: top
``signal_rich_first`` = 20% in iteration 1, ``signal_rich_later`` = 10% after; background-rich:
bottom ``background_rich`` = 40%) and trains a classifier for this jet on signal-rich vs
background-rich. With ``mjj_window`` the signal-rich set is also required to lie in that m_jj
window (TNT+Mjj); the background-rich set never is.

Where the iterations train (the ``train`` part):

* ``folds = null``, the paper's scheme: ``train`` is cut into one fresh part per iteration.
* ``folds = k`` (the default, cross-fitting): every iteration uses the whole ``train`` part, cut
  into k seeded folds. For each fold a classifier is trained on the other k-1 folds and scores the
  held-out fold, so every event gets an out-of-fold score from a model that never saw it, mapped
  through that fold's CDF so that the folds' scores are comparable before the next tagging. New
  events are scored by the mean of the k calibrated classifiers. Each classifier sees (k-1)/k of
  ``train`` instead of 1/n of it: at the default scale and 1% signal, the paper's scheme has ~160
  signal events per part, the paper's own "too little signal" regime (docs/reproductions.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lhcad.config import build
from lhcad.data.events import Events
from lhcad.inputs import InputRepresentation
from lhcad.methods._nets import JetTagger, train_classifier, train_config
from lhcad.methods.base import FitContext, Method
from lhcad.methods.per_jet import JetTaggerPair, check_parts
from lhcad.methods.registry import FROM_CONFIG, configured
from lhcad.scores import EmpiricalCDF, Scores

__all__ = ["FoldEnsemble", "TagNTrain", "crossfit_folds", "tag_events"]


def crossfit_folds(n: int, k: int, seed: int) -> np.ndarray:
    """Fold index (0 .. k-1) of each of ``n`` events: a seeded permutation dealt round-robin, so
    the folds are disjoint, cover every event and differ in size by at most one."""
    return np.random.default_rng([int(seed), 7919]).permutation(n) % int(k)


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


class FoldEnsemble:
    """The k fold classifiers of one jet and stage: score = mean of each one's held-out-fold CDF."""

    def __init__(self, members: Sequence[tuple[JetTagger, EmpiricalCDF]]) -> None:
        if not members:
            raise ValueError("a fold ensemble needs at least one member")
        self.members = list(members)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.mean([cdf(tagger(x)) for tagger, cdf in self.members], axis=0)

    @property
    def val_loss(self) -> float:
        return float(np.mean([tagger.val_loss for tagger, _ in self.members]))

    def state(self) -> dict[str, Any]:
        return {f"fold{f}": {**tagger.state(), "cdf": cdf.sorted} for f, (tagger, cdf) in enumerate(self.members)}


def _initial_tagger(initial: Method | Mapping[str, Any], inputs: InputRepresentation) -> Method:
    """TNT's initial tagger: a built per-jet method, or built here from its config node on ``inputs``."""
    if isinstance(initial, Mapping):
        initial = build({k: v for k, v in initial.items() if k != "inputs"}, inputs=inputs)
    if not isinstance(initial, Method):
        raise ValueError(
            f"TNT's initial tagger must be a method, got {initial!r}; choose its config on the command line "
            "with method@method.initial=<name> (e.g. method@method.initial=vae), not method.initial=<name>"
        )
    if not hasattr(initial, "jet_scores"):
        raise ValueError(f"TNT's initial tagger must be a per-jet method, got {type(initial).__name__}")
    return initial


class TagNTrain(Method):
    """Tag N' Train: an initial per-jet tagger trained on the ``initial`` part, then ``iterations``
    iterations on the ``train`` part: cross-fitted over ``folds`` folds, or (``folds=None``, the
    paper's scheme) each on its own fresh share of ``train``."""

    name = "tnt"

    def __init__(
        self,
        inputs: InputRepresentation,
        *,
        initial: Method | Mapping[str, Any] = FROM_CONFIG,
        parts: Mapping[str, float] = FROM_CONFIG,
        signal_rich_first: float = FROM_CONFIG,
        signal_rich_later: float = FROM_CONFIG,
        background_rich: float = FROM_CONFIG,
        mjj_window: Sequence[float] | None = FROM_CONFIG,
        classifier: Mapping[str, Any] = FROM_CONFIG,
        train: Mapping[str, Any] = FROM_CONFIG,
        folds: int | None = FROM_CONFIG,
        iterations: int = FROM_CONFIG,
    ) -> None:
        """``initial``: the initial per-jet tagger. In a config, a method config composed at
        ``method.initial`` (``method@method.initial=vae`` picks another) that Hydra builds first,
        on the same ``inputs``; in Python, a built method, or a mapping of settings merged over the
        config's (``{"dense": {"latent": 2}}``) and built here on ``inputs``. A setting not given
        is the one in conf/method/tnt.yaml."""
        settings = configured(
            self.name, initial=initial, parts=parts, signal_rich_first=signal_rich_first,
            signal_rich_later=signal_rich_later, background_rich=background_rich, mjj_window=mjj_window,
            classifier=classifier, train=train, folds=folds, iterations=iterations,
        )
        self.inputs = inputs
        self.initial: Method = _initial_tagger(settings["initial"], inputs)
        folds, iterations = settings["folds"], int(settings["iterations"])
        self.folds = int(folds) if folds else None
        if self.folds is not None and self.folds < 2:
            raise ValueError(f"TNT folds must be at least 2 (or null for a fresh part per iteration), got {folds}")
        if iterations < 1:
            raise ValueError(f"TNT iterations must be at least 1, got {iterations}")
        sizes = dict(settings["parts"])
        if set(sizes) != {"initial", "train"} or min(float(v) for v in sizes.values()) <= 0:
            raise ValueError(f"TNT parts must be {{initial: <size>, train: <size>}} with positive sizes, got {sizes}")
        self.iterations = [f"iter{i}" for i in range(1, iterations + 1)]
        # the pipeline's parts: cross-fitted, one `train` part; otherwise `train` cut into one fresh
        # part per iteration
        self.parts = (
            {"initial": float(sizes["initial"]), "train": float(sizes["train"])}
            if self.folds is not None
            else {"initial": float(sizes["initial"])} | {it: float(sizes["train"]) / len(self.iterations) for it in self.iterations}
        )
        self.signal_rich_first = float(settings["signal_rich_first"])
        self.signal_rich_later = float(settings["signal_rich_later"])
        self.background_rich = float(settings["background_rich"])
        window = settings["mjj_window"]
        self.mjj_window = list(window) if window is not None else None
        self.window_dependent = self.mjj_window is not None  # TNT+Mjj: the signal-rich set lies in the SR
        self.classifier = dict(settings["classifier"])
        self.train = train_config(settings["train"])
        self.stages: list[Any] = []  # stage 0: the initial method; then one JetTaggerPair per iteration
        self.samples: tuple[str, ...] = tuple(self.initial.samples)  # e.g. oe_vae's outliers

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        if self.folds is not None:
            self._fit_crossfitted(splits, ctx)
            return
        check_parts(splits, ["initial", *self.iterations], "tnt")
        self.initial.fit({"train": splits["initial"]}, ctx)
        self.stages = [self.initial]
        for it, name in enumerate(self.iterations, start=1):
            events = splits[name]
            previous = self.stages[-1]
            s1, s2 = previous.jet_scores(events)
            taggers, metrics = [], {}
            for j, other in ((1, s2), (2, s1)):
                sig, bkg = self._tag(other, it, events["mjj"], j, f"part '{name}'")
                rows = sig | bkg
                x = self.inputs.jet(events, j)[rows]
                tagger = train_classifier(
                    x, sig[rows], self.classifier, self.train, seed=ctx.seed * 1000 + 10 * it + j,
                    device=ctx.device, desc=f"tnt iter {it} jet {j}", progress=ctx.progress,
                )
                taggers.append(tagger)
                metrics |= self._tag_metrics(j, sig, bkg, events.labels) | {f"tnt/val_loss_jet{j}": tagger.val_loss}
            ctx.log_metrics(metrics, it)
            self.stages.append(JetTaggerPair(self.inputs, *taggers))
        # every stage's CDFs from the last training part (never the test sample)
        for stage in self.stages[1:]:
            stage.calibrate(splits[self.iterations[-1]])

    def _tag(self, other: np.ndarray, it: int, mjj: np.ndarray, j: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        frac = self.signal_rich_first if it == 1 else self.signal_rich_later
        sig, bkg = tag_events(other, frac, self.background_rich, mjj, self.mjj_window)
        if sig.sum() < 2:
            raise ValueError(
                f"TNT iteration {it}: only {int(sig.sum())} signal-rich events for jet {j} "
                f"({where} has {len(other)} events); use more events or a wider mjj_window"
            )
        return sig, bkg

    @staticmethod
    def _tag_metrics(j: int, sig: np.ndarray, bkg: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {
            f"tnt/n_signal_rich_jet{j}": float(sig.sum()),
            f"tnt/n_background_rich_jet{j}": float(bkg.sum()),
            # truth, for monitoring only: the signal purity the classifier learned from
            f"tnt/signal_rich_purity_jet{j}": float(labels[sig].mean()),
            f"tnt/background_rich_purity_jet{j}": float(labels[bkg].mean()) if bkg.any() else float("nan"),
        }

    def _fit_crossfitted(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        """Every iteration on the whole ``train`` part, k classifiers per jet, out-of-fold tagging."""
        check_parts(splits, ["initial", "train"], "tnt")
        k = int(self.folds)  # type: ignore[arg-type]
        self.initial.fit({"train": splits["initial"]}, ctx)
        self.stages = [self.initial]
        events = splits["train"]
        if len(events) < 2 * k:
            raise ValueError(f"TNT with {k} folds needs at least {2 * k} training events, got {len(events)}")
        fold = crossfit_folds(len(events), k, ctx.seed)
        x = {j: self.inputs.jet(events, j) for j in (1, 2)}
        mjj, labels = np.asarray(events["mjj"]), events.labels
        scores = dict(zip((1, 2), self.initial.jet_scores(events)))  # never trained on these events
        for it in range(1, len(self.iterations) + 1):
            new = {j: np.empty(len(events)) for j in (1, 2)}
            ensembles, metrics = {}, {}
            for j, other in ((1, 2), (2, 1)):
                members = []
                sig_all, bkg_all = np.zeros(len(events), bool), np.zeros(len(events), bool)
                for f in range(k):
                    train_rows, held = np.flatnonzero(fold != f), fold == f
                    sig, bkg = self._tag(scores[other][train_rows], it, mjj[train_rows], j, f"folds other than {f}")
                    if f == 0:  # one representative tagging for the monitoring metrics
                        sig_all[train_rows[sig]], bkg_all[train_rows[bkg]] = True, True
                    rows = sig | bkg
                    tagger = train_classifier(
                        x[j][train_rows][rows], sig[rows], self.classifier, self.train,
                        seed=ctx.seed * 1000 + 100 * f + 10 * it + j, device=ctx.device,
                        desc=f"tnt iter {it} jet {j} fold {f}", progress=ctx.progress,
                    )
                    raw = tagger(x[j][held])
                    cdf = EmpiricalCDF(raw)
                    new[j][held] = cdf(raw)
                    members.append((tagger, cdf))
                ensembles[j] = FoldEnsemble(members)
                metrics |= self._tag_metrics(j, sig_all, bkg_all, labels)
                metrics[f"tnt/val_loss_jet{j}"] = ensembles[j].val_loss
            ctx.log_metrics(metrics, it)
            scores = new
            self.stages.append(JetTaggerPair(self.inputs, ensembles[1], ensembles[2]))  # type: ignore[arg-type]
        # event-score CDFs on the initial part: no classifier saw it
        for stage in self.stages[1:]:
            stage.calibrate(splits["initial"])

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
