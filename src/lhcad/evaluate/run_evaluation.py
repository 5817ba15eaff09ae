"""One evaluation for every method: metrics, curves and figures of a run's scores.

::

    config = EvaluationConfig()
    result = evaluate(test, method.score(test), unused_signal, method.score(unused_signal), config)
    mlflow.log_metrics(result.metrics)
    for name, fig in result.figures.items():
        fig.savefig(out_dir / name)
    np.savez(out_dir / "curves.npz", **result.curves)
    print("\\n".join(result.summary_lines()))

Two samples enter, with different roles:

* ``test``: the held-out part of the sample *as injected* (background plus whatever signal was
  injected, maybe none). Selections at fixed efficiency and mass sculpting use all of it,
  exactly as an analysis would.
* ``signal``: signal events never injected anywhere. ROC, AUC, SIC and background rejection
  compare the test *background* (label 0) against all of them, so these curves do not depend on
  the (possibly tiny or zero) amount of injected signal.

Search statistics (bump hunt, ABCD ...) plug in through :class:`SearchStatistic`.

Closure (``closure=ClosureConfig()``): on labelled events every statistic is evaluated again on the
test background alone, at the score thresholds of the full test sample (``closure/*`` metrics), and
the run is flagged when a significance appears without signal or the selection sculpts the
background m_jj beyond its statistical noise (:class:`Closure`).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from matplotlib.figure import Figure

from lhcad.data.events import Events
from lhcad.evaluate import metrics as m
from lhcad.evaluate.plots import plot_jet_scores, plot_mjj_selections, plot_roc, plot_sic
from lhcad.evaluate.sculpting import jsd, mass_sculpting
from lhcad.evaluate.jet_mass import jet_mass_metrics
from lhcad.evaluate.selection import select_efficiency
from lhcad.scores import Scores

__all__ = [
    "Closure",
    "ClosureConfig",
    "Evaluation",
    "EvaluationConfig",
    "SearchStatistic",
    "StatisticResult",
    "evaluate",
    "has_truth_labels",
    "plot_level",
]

PLOT_LEVELS = ("full", "minimal", "none")
"""Values of ``selection.plots``: ``full`` (every figure), ``minimal`` (``roc.png``, ``sic.png`` and
the dijet bump hunt's ``bumphunt.png``), ``none``; ``auto`` is resolved by the pipeline."""

logger = logging.getLogger(__name__)


def plot_level(value: bool | str) -> str:
    """``full``, ``minimal`` or ``none`` from a ``selection.plots`` value (``True`` = ``full``,
    ``False`` = ``none``)."""
    if value is True:
        return "full"
    if value is False or value is None:
        return "none"
    if value not in PLOT_LEVELS:
        raise ValueError(f"plots must be one of auto, {', '.join(PLOT_LEVELS)} (or true/false), got {value!r}")
    return str(value)


def _efficiencies(values: Iterable[float], name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    bad = [v for v in out if not 0.0 < v <= 1.0]
    if bad:
        raise ValueError(f"{name} must all be in (0, 1], got {bad}")
    return out


@dataclass
class EvaluationConfig:
    """Settings of :func:`evaluate`.

    Attributes:
        efficiencies: fractions of the test sample kept by the selections (mjj plots, sculpting).
        signal_efficiencies: signal efficiencies at which the background rejection 1/eps_B is quoted.
        min_background: fewest background events a cut must keep for its SIC to count (max SIC).
        mjj_bins: number of mjj bins (plots and sculpting JSD).
        mjj_range: mjj range in GeV (plots and sculpting JSD).
        plots: which figures to make (:func:`plot_level`: ``full``, ``minimal``, ``none``, or a bool).
        signal_region: m_jj window [GeV] in which the ``*_sr`` classifier metrics are also quoted
            (None: not computed).
    """

    efficiencies: tuple[float, ...] = (0.1, 0.03, 0.01)
    signal_efficiencies: tuple[float, ...] = (0.3, 0.5)
    min_background: int = 20
    mjj_bins: int = 40
    mjj_range: tuple[float, float] = (1500.0, 6500.0)
    plots: bool | str = True
    signal_region: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.plots = plot_level(self.plots)
        if self.signal_region is not None:
            self.signal_region = tuple(float(v) for v in self.signal_region)  # type: ignore[assignment]
            if len(self.signal_region) != 2 or not self.signal_region[0] < self.signal_region[1]:
                raise ValueError(f"signal_region must be [low, high] in GeV with low < high, got {self.signal_region}")
        # accept any sequence (e.g. an OmegaConf ListConfig from hydra)
        self.efficiencies = _efficiencies(self.efficiencies, "efficiencies")
        self.signal_efficiencies = _efficiencies(self.signal_efficiencies, "signal_efficiencies")
        self.mjj_range = tuple(float(v) for v in self.mjj_range)  # type: ignore[assignment]
        if len(self.mjj_range) != 2 or not self.mjj_range[0] < self.mjj_range[1]:
            raise ValueError(
                f"mjj_range must be (low, high) with low < high, got {self.mjj_range}"
            )
        if int(self.mjj_bins) < 1:
            raise ValueError(f"mjj_bins must be >= 1, got {self.mjj_bins}")
        if int(self.min_background) < 0:
            raise ValueError(f"min_background must be >= 0, got {self.min_background}")
        self.mjj_bins, self.min_background = int(self.mjj_bins), int(self.min_background)


# ------------------------------------------------------------------------------------------- statistics hook


@dataclass
class StatisticResult:
    """What a :class:`SearchStatistic` returns.

    Attributes:
        metrics: scalar results by key, merged into :attr:`Evaluation.metrics` as they are (name
            them yourself, e.g. ``"bump_hunt/significance"``; a key that already exists is an error).
        figures: figures by file name (e.g. ``"bump_hunt_fit.png"``), merged into :attr:`Evaluation.figures`.
        table: rows (flat dicts) for the run summary; each gets ``"statistic": name`` added.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class SearchStatistic(Protocol):
    """The hook for search statistics (bump hunt, ABCD, ...) run on the scored test sample.

    Any object with a ``name`` and this call signature can be passed to :func:`evaluate`::

        class BumpHunt:
            name = "bump_hunt"

            def __call__(self, test: Events, scores: Scores, reference: Scores | None = None) -> StatisticResult:
                ...  # cut on scores.event, fit the mjj spectrum of test, ...
                return StatisticResult(metrics={"bump_hunt/significance": z}, figures={"bump_hunt.png": fig})

    ``test`` is the test sample as injected (its ``label`` column is truth, for checks only) and
    ``scores`` its scores; the statistic must not modify either. With ``reference`` (the closure
    pass: ``test`` is then the test background alone and ``reference`` the full test sample's
    scores) each selection must use the score threshold that keeps its efficiency of
    ``reference`` (see :func:`lhcad.evaluate.selection.select_at_efficiency`), and no figures are wanted.
    Significances are metrics named ``sig_*``: the closure verdict reads those.
    """

    name: str

    def __call__(self, test: Events, scores: Scores, reference: Scores | None = None) -> StatisticResult: ...


# ------------------------------------------------------------------------------------------------- closure


@dataclass
class ClosureConfig:
    """Thresholds of the background-only closure (``search.closure`` in the config).

    Attributes:
        max_z: a closure significance (``closure/sig_*``) above this fails the run.
        max_jsd: floor of the m_jj sculpting limit: ``jsd_mjj/eff_E`` fails the run above
            ``max(max_jsd, jsd_noise_factor * closure/jsd_mjj_noise/eff_E)``.
        jsd_noise_factor: multiple of the JSD of random selections (same number of background
            events) that a selection may reach before it counts as sculpting.
        jsd_noise_trials: random selections averaged for the noise.
        seed: seed of the random selections (fixed: the same scores give the same verdict).
    """

    max_z: float = 3.0
    max_jsd: float = 0.05
    jsd_noise_factor: float = 3.0
    jsd_noise_trials: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_z", "max_jsd", "jsd_noise_factor"):
            value = float(getattr(self, name))
            if not value >= 0:
                raise ValueError(f"ClosureConfig.{name} must be a number >= 0, got {getattr(self, name)!r}")
            setattr(self, name, value)
        if int(self.jsd_noise_trials) < 1:
            raise ValueError(f"ClosureConfig.jsd_noise_trials must be >= 1, got {self.jsd_noise_trials}")
        self.jsd_noise_trials, self.seed = int(self.jsd_noise_trials), int(self.seed)


@dataclass
class Closure:
    """Verdict of the background-only closure.

    Attributes:
        status: ``"pass"``, ``"fail"`` or ``"skipped"`` (no truth labels or no background).
        failures: what failed, e.g. ``"sig_bumphunt/eff_0.01 = 3.4 > 3"``.
        reason: why the closure was skipped.
    """

    status: str
    failures: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def message(self) -> str:
        """One line for the run summary (``WARNING: closure failed: ...`` when it failed)."""
        if self.status == "fail":
            return "WARNING: closure failed: " + "; ".join(self.failures)
        return f"closure {self.status}" + (f": {self.reason}" if self.reason else "")


def has_truth_labels(events: Events) -> bool:
    """Whether the events carry truth labels: a ``label`` column holding only 0 and 1."""
    if "label" not in events:
        return False
    labels = np.asarray(events.labels, dtype=np.float64)
    return bool(np.all((labels == 0) | (labels == 1)))


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes:
        metrics: scalar metrics by key (NaN where not computable; see :func:`evaluate`).
        figures: figures by file name (``roc.png``, ``sic.png``, ``mjj_selections.png``,
            ``jet_scores.png`` and the statistics' figures); empty when plots are off.
        curves: ``eps_s``, ``eps_b``, ``thresholds`` and ``sic`` arrays of the ROC curve (for ``np.savez``),
            and the same with suffix ``_sr`` in the signal region (when ``config.signal_region`` is set).
        table: summary rows: one per selection efficiency, then the statistics' rows.
        config: the configuration used.
        closure: the background-only closure verdict (None when it was not asked for).
        seconds: wall time of the evaluation's phases: ``metrics`` (with the figures made),
            ``statistics`` and ``closure``.
    """

    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    config: EvaluationConfig = field(default_factory=EvaluationConfig)
    closure: Closure | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """A short human-readable table of the main metrics, one line each."""
        rows = self.summary_rows()
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        if self.closure is not None:
            lines.append(self.closure.message)
        return lines

    def summary_markdown(self, title: str = "") -> str:
        """The summary as a markdown table (values rounded for reading; the metrics keep full
        precision), headed by ``title`` and followed by the closure verdict."""
        lines = [f"### {title}", ""] if title else []
        lines += ["| quantity | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in self.summary_rows()]
        if self.closure is not None:
            lines += ["", f"**{self.closure.message}**" if self.closure.status == "fail" else self.closure.message]
        return "\n".join(lines) + "\n"

    def summary_csv(self) -> str:
        """The summary rows as CSV (``quantity,value``; the closure verdict as its last row)."""
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["quantity", "value"])
        writer.writerows(self.summary_rows())
        if self.closure is not None:
            writer.writerow(["closure", self.closure.message])
        return buffer.getvalue()

    def summary_rows(self) -> list[tuple[str, str]]:
        """(quantity, rounded value) rows of the summary: classifier metrics, selections, the
        statistics' rows and the closure rows."""
        get = self.metrics.get
        nan = float("nan")
        rows: list[tuple[str, str]] = [("AUC", _fmt(get("auc", nan)))]
        if "auc_sr" in self.metrics:
            rows.append(("AUC in the signal region", _fmt(get("auc_sr", nan))))
        if "auc_jet1" in self.metrics:
            rows.append(("AUC jet 1 / jet 2", f"{_fmt(get('auc_jet1', nan))} / {_fmt(get('auc_jet2', nan))}"))
        for e in self.config.signal_efficiencies:
            rows.append((f"1/eps_B @ eps_S={e:g}", _fmt(get(f"inv_eps_b/eff_s_{e:g}", nan))))
        rows.append(
            (
                f"max SIC (N_B >= {self.config.min_background})",
                f"{_fmt(get('max_sic', nan))} @ eps_S={_fmt(get('max_sic/eff_s', nan))}",
            )
        )
        for e in self.config.efficiencies:
            rows.append(
                (
                    f"JSD(mjj) @ eff={e:g}",
                    f"{_fmt(get(f'jsd_mjj/eff_{e:g}', nan))}  "
                    f"({_fmt(get(f'n_selected_signal/eff_{e:g}', nan))} signal "
                    f"of {_fmt(get(f'n_selected/eff_{e:g}', nan))} selected)",
                )
            )
        for row in self.table:  # the statistics' rows: significance vs efficiency
            if "statistic" not in row:
                continue
            rest = {k: v for k, v in row.items() if k not in ("statistic", "efficiency")}
            eff = row.get("efficiency", "")
            eff = eff if isinstance(eff, str) else f"eff={_fmt(eff)}"
            values = "  ".join(
                f"{k.removeprefix(row['statistic'] + '_')}={_fmt(v) if isinstance(v, (int, float)) else v}"
                for k, v in rest.items()
            )
            rows.append((f"{row['statistic']} @ {eff}", values))
        if self.closure is not None:
            rows += self._closure_rows()
        return rows

    def _closure_rows(self) -> list[tuple[str, str]]:
        """Compact closure rows: the largest closure significance of each statistic, the JSD limits."""
        if self.closure is None or self.closure.status == "skipped":
            return []
        nan = float("nan")
        largest: dict[str, tuple[float, str]] = {}
        for key, value in self.metrics.items():
            name, _, where = key.removeprefix("closure/sig_").partition("/")
            # the expected significances count true signal: 0 on background by construction
            if key.startswith("closure/sig_") and math.isfinite(value) and not name.endswith("_exp"):
                if value > largest.get(name, (-math.inf, ""))[0]:
                    largest[name] = (value, where)
        zs = "  ".join(f"{n}={_fmt(z)} @ {w}" for n, (z, w) in largest.items())
        rows = [("closure: max Z on background", zs or "NaN")]
        for e in self.config.efficiencies:
            value = self.metrics.get(f"jsd_mjj/eff_{e:g}", nan)
            noise = self.metrics.get(f"closure/jsd_mjj_noise/eff_{e:g}", nan)
            rows.append((f"closure: JSD(mjj) @ eff={e:g}", f"{_fmt(value)}  (noise {_fmt(noise)})"))
        return rows


def _fmt(value: float) -> str:
    """Whole numbers (event counts) in full, everything else to 4 significant digits."""
    value = float(value)
    return f"{int(value)}" if math.isfinite(value) and value.is_integer() else f"{value:.4g}"


def _check_scores(events: Events, scores: Scores, what: str) -> None:
    if len(scores.event) != len(events):
        raise ValueError(f"{what}: {len(scores.event)} scores for {len(events)} events")


def evaluate(
    test: Events,
    test_scores: Scores,
    signal: Events,
    signal_scores: Scores,
    config: EvaluationConfig | None = None,
    statistics: Sequence[SearchStatistic] = (),
    closure: ClosureConfig | None = None,
) -> Evaluation:
    """Evaluate a method's scores the same way for every method.

    Args:
        test: the test sample as injected (background and injected signal; ``label`` column).
        test_scores: scores of ``test``.
        signal: held-out signal events (never injected), for the ROC curve.
        signal_scores: scores of ``signal``.
        config: evaluation settings (default :class:`EvaluationConfig`).
        statistics: search statistics to run on ``(test, test_scores)``, see :class:`SearchStatistic`.
        closure: run the background-only closure with these thresholds (None: no closure).

    Returns:
        An :class:`Evaluation` whose ``metrics`` has the keys (``E`` = each of
        ``config.efficiencies``, ``S`` = each of ``config.signal_efficiencies``, formatted ``f"{x:g}"``):

        * ``auc``, ``inv_eps_b/eff_s_S``, ``max_sic``, ``max_sic/eff_s``, ``n_roc_background``,
          ``n_roc_signal``: test background against all held-out signal;
        * ``auc_sr``, ``inv_eps_b_sr/eff_s_S``, ``max_sic_sr``, ``n_roc_background_sr``,
          ``n_roc_signal_sr`` (with ``config.signal_region``): the same with background and signal
          both inside the m_jj signal region, where a resonance search applies the cut (a score
          that learned m_jj itself gains nothing there);
        * ``auc_jet1``, ``auc_jet2``, ``jet_score_corr_bkg`` (per-jet scores only): per-jet AUCs and
          the Pearson correlation of the jet-1 and jet-2 scores of the test background;
        * ``jsd_mjet/jet{1,2}``, ``eff_s_at_eff_b_0.05/jet{1,2}`` (per-jet scores only): jet-mass
          sculpting of each jet's score (:func:`lhcad.evaluate.jet_mass.jet_mass_metrics`);
        * ``jsd_mjj/eff_E``, ``n_selected/eff_E``, ``n_selected_signal/eff_E``: selections keeping
          the top fraction E of the test sample and the JSD between its background mjj histograms
          before and after;
        * ``n_test``, ``n_test_signal``;
        * the statistics' own keys;
        * with ``closure`` and truth labels: ``closure/<key>`` for every statistic key, evaluated on
          the test background alone at the full sample's score thresholds;
          ``closure/jsd_mjj_noise/eff_E`` (mean JSD of random selections of as many background
          events as ``jsd_mjj/eff_E`` selected); ``closure/fail`` (1 when a closure significance
          exceeds ``closure.max_z`` or a JSD its limit, see :class:`ClosureConfig`; the verdict is
          :attr:`Evaluation.closure`).

        Metrics that cannot be computed (no held-out signal, no background, too few background
        events for the SIC, ...) are NaN, with the reason logged.

    Raises:
        ValueError: scores and events differ in length, or a statistic returns a key that exists.
    """
    t_start = time.perf_counter()
    config = config if config is not None else EvaluationConfig()
    _check_scores(test, test_scores, "test")
    _check_scores(signal, signal_scores, "signal")
    labels = np.asarray(test.labels) if "label" in test else np.full(len(test), -1)
    background = labels == 0
    if "label" in signal and np.any(np.asarray(signal.labels) != 1):
        logger.warning(
            "%d of the %d held-out 'signal' events are labelled background; using them all as signal",
            int(np.sum(np.asarray(signal.labels) != 1)),
            len(signal),
        )
    per_jet = test_scores.per_jet and signal_scores.per_jet
    if test_scores.per_jet != signal_scores.per_jet:
        logger.warning("only one of the test and signal scores is per-jet; per-jet metrics are skipped")

    metrics: dict[str, float] = {}
    # ---- classifier metrics: test background vs held-out signal
    bkg_scores = test_scores.event[background]
    roc = m.roc_curve(bkg_scores, signal_scores.event)
    metrics["auc"] = m.auc(bkg_scores, signal_scores.event)
    if per_jet:
        metrics["auc_jet1"] = m.auc(test_scores.jet1[background], signal_scores.jet1)
        metrics["auc_jet2"] = m.auc(test_scores.jet2[background], signal_scores.jet2)
    for e in config.signal_efficiencies:
        metrics[f"inv_eps_b/eff_s_{e:g}"] = m.rejection_at(roc, e)
    metrics["max_sic"], metrics["max_sic/eff_s"] = m.max_sic(roc, config.min_background)
    if per_jet:
        metrics["jet_score_corr_bkg"] = m.pearson(test_scores.jet1[background], test_scores.jet2[background])
    sr_curves: dict[str, np.ndarray] = {}
    if config.signal_region is not None:
        sr_metrics, sr_curves = _signal_region_metrics(test, test_scores, signal, signal_scores, config)
        metrics |= sr_metrics
    if per_jet:
        metrics |= _jet_mass_metrics(test, test_scores, signal, signal_scores)

    # ---- selections on the test sample as injected
    mjj = np.asarray(test["mjj"], dtype=np.float64)
    jsds = mass_sculpting(
        mjj, labels, test_scores.event, config.efficiencies, config.mjj_bins, config.mjj_range
    )
    table: list[dict[str, Any]] = []
    for e in config.efficiencies:
        selected = select_efficiency(test_scores.event, e)
        n_sel, n_sel_sig = int(selected.sum()), int(np.sum(selected & (labels == 1)))
        metrics[f"jsd_mjj/eff_{e:g}"] = jsds[e]
        metrics[f"n_selected/eff_{e:g}"] = float(n_sel)
        metrics[f"n_selected_signal/eff_{e:g}"] = float(n_sel_sig)
        table.append(
            {"efficiency": e, "n_selected": n_sel, "n_selected_signal": n_sel_sig, "jsd_mjj": jsds[e]}
        )
    metrics["n_test"] = float(len(test))
    metrics["n_test_signal"] = float(np.sum(labels == 1))
    metrics["n_roc_background"] = float(roc.n_background)
    metrics["n_roc_signal"] = float(roc.n_signal)

    sic = m.sic_curve(roc, config.min_background)
    curves = {"eps_s": roc.eps_s, "eps_b": roc.eps_b, "thresholds": roc.thresholds, "sic": sic} | sr_curves

    figures: dict[str, Figure] = {}
    if config.plots != "none":
        figures["roc.png"] = plot_roc(roc)
        figures["sic.png"] = plot_sic(roc, config.min_background)
    if config.plots == "full":
        figures["mjj_selections.png"] = plot_mjj_selections(
            mjj, labels, test_scores.event, config.efficiencies, config.mjj_bins, config.mjj_range
        )
        if per_jet:
            bkg = Scores(*(v[background] for v in (test_scores.event, test_scores.jet1, test_scores.jet2)))
            if len(bkg.event) or len(signal_scores.event):
                figures["jet_scores.png"] = plot_jet_scores(bkg, signal_scores)
            else:
                logger.warning("jet_scores.png skipped: no test background and no held-out signal")

    evaluation = Evaluation(metrics=metrics, figures=figures, curves=curves, table=table, config=config)
    evaluation.seconds["metrics"] = time.perf_counter() - t_start
    t_statistics = time.perf_counter()
    for statistic in statistics:
        _merge(evaluation, statistic.name, statistic(test, test_scores))
    evaluation.seconds["statistics"] = time.perf_counter() - t_statistics
    if closure is not None:
        t_closure = time.perf_counter()
        evaluation.closure = _closure(evaluation, test, test_scores, statistics, closure)
        evaluation.seconds["closure"] = time.perf_counter() - t_closure
    return evaluation


def _closure(
    evaluation: Evaluation,
    test: Events,
    test_scores: Scores,
    statistics: Sequence[SearchStatistic],
    closure: ClosureConfig,
) -> Closure:
    """The background-only closure: adds ``closure/*`` metrics to ``evaluation`` and returns the verdict."""
    reason = ""
    if not has_truth_labels(test):
        reason = "the events carry no truth labels"
    elif not np.any(np.asarray(test.labels) == 0):
        reason = "the test sample holds no background"
    if reason:
        logger.warning("closure skipped: %s", reason)
        return Closure("skipped", reason=reason)
    background = np.asarray(test.labels) == 0
    per_score = (test_scores.event, test_scores.jet1, test_scores.jet2)
    bkg_scores = Scores(*(None if v is None else v[background] for v in per_score))
    bkg = test.take(background)
    for statistic in statistics:
        if "reference" not in inspect.signature(statistic).parameters:
            logger.warning("closure: search statistic '%s' takes no reference scores; skipped", statistic.name)
            continue
        result = statistic(bkg, bkg_scores, reference=test_scores)
        result = StatisticResult(metrics={f"closure/{k}": v for k, v in result.metrics.items()})
        _merge(evaluation, statistic.name, result)
    config, metrics = evaluation.config, evaluation.metrics
    mjj = np.asarray(bkg["mjj"], dtype=np.float64)
    rng = np.random.default_rng(closure.seed)
    for e in config.efficiencies:
        n_bkg = int(metrics[f"n_selected/eff_{e:g}"] - metrics[f"n_selected_signal/eff_{e:g}"])
        noise = _jsd_noise(mjj, n_bkg, config, closure.jsd_noise_trials, rng)
        metrics[f"closure/jsd_mjj_noise/eff_{e:g}"] = noise
    failures = _closure_failures(metrics, config.efficiencies, closure)
    metrics["closure/fail"] = float(bool(failures))
    verdict = Closure("fail" if failures else "pass", failures)
    if failures:
        logger.warning("%s", verdict.message)
    else:
        logger.info("closure passed: no significance above %g, no m_jj sculpting of the background", closure.max_z)
    return verdict


def _jsd_noise(
    mjj: np.ndarray, n: int, config: EvaluationConfig, trials: int, rng: np.random.Generator
) -> float:
    """Mean JSD between ``mjj`` and random subsets of ``n`` of its events (NaN for an empty subset)."""
    if n <= 0 or len(mjj) == 0:
        return float("nan")
    n = min(n, len(mjj))
    subsets = (mjj[rng.choice(len(mjj), size=n, replace=False)] for _ in range(trials))
    return float(np.mean([jsd(mjj, subset, config.mjj_bins, config.mjj_range) for subset in subsets]))


def _closure_failures(
    metrics: Mapping[str, float], efficiencies: Sequence[float], closure: ClosureConfig
) -> list[str]:
    """What fails the closure: significances above ``max_z``, JSDs above their limit."""
    failures = [
        f"{key.removeprefix('closure/')} = {value:.3g} > {closure.max_z:g}"
        for key, value in metrics.items()
        if key.startswith("closure/sig_") and math.isfinite(value) and value > closure.max_z
    ]
    for e in efficiencies:
        value, noise = metrics[f"jsd_mjj/eff_{e:g}"], metrics[f"closure/jsd_mjj_noise/eff_{e:g}"]
        limit = max(closure.max_jsd, closure.jsd_noise_factor * noise if math.isfinite(noise) else 0.0)
        if math.isfinite(value) and value > limit:
            failures.append(f"jsd_mjj/eff_{e:g} = {value:.3g} > {limit:.3g} (random selections: {noise:.3g})")
    return failures


def _jet_mass_metrics(test: Events, test_scores: Scores, signal: Events, signal_scores: Scores) -> dict[str, float]:
    """Jet-mass sculpting of every per-jet score (paper 004, eq. 14); NaN, with the reason logged,
    when the events carry no jet masses or the test sample no background."""
    reason = ""
    if not all(f"j{j}_m" in test and f"j{j}_m" in signal for j in (1, 2)):
        reason = "the events carry no jet masses"
    elif "label" not in test or not np.any(np.asarray(test.labels) == 0) or len(signal) == 0:
        reason = "no test background or no held-out signal"
    if reason:
        logger.warning("jsd_mjet skipped: %s", reason)
        nan = float("nan")
        return {f"{name}/jet{j}": nan for name in ("jsd_mjet", "eff_s_at_eff_b_0.05") for j in (1, 2)}
    return jet_mass_metrics(test, test_scores, signal, signal_scores)


def _signal_region_metrics(
    test: Events, test_scores: Scores, signal: Events, signal_scores: Scores, config: EvaluationConfig
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Classifier metrics with background and signal both inside the m_jj signal region, and the
    curves (``eps_s_sr``, ``eps_b_sr``, ``thresholds_sr``, ``sic_sr``; paper 003's Fig. 2 is drawn
    in the signal region)."""
    lo, hi = config.signal_region  # type: ignore[misc]

    def inside(events: Events) -> np.ndarray:
        mjj = np.asarray(events["mjj"], np.float64)
        return (mjj >= lo) & (mjj < hi)

    bkg = test_scores.event[(np.asarray(test.labels) == 0) & inside(test)]
    sig = signal_scores.event[inside(signal)]
    roc = m.roc_curve(bkg, sig)
    out = {"auc_sr": m.auc(bkg, sig), "n_roc_background_sr": float(len(bkg)), "n_roc_signal_sr": float(len(sig))}
    for e in config.signal_efficiencies:
        out[f"inv_eps_b_sr/eff_s_{e:g}"] = m.rejection_at(roc, e)
    out["max_sic_sr"], _ = m.max_sic(roc, config.min_background)
    curves = {"eps_s_sr": roc.eps_s, "eps_b_sr": roc.eps_b, "thresholds_sr": roc.thresholds}
    return out, curves | {"sic_sr": m.sic_curve(roc, config.min_background)}


def _merge(evaluation: Evaluation, name: str, result: StatisticResult) -> None:
    """Add a statistic's results to ``evaluation``, refusing to overwrite anything."""
    for what, mine, theirs in (
        ("metric", evaluation.metrics, result.metrics),
        ("figure", evaluation.figures, result.figures),
    ):
        clash = sorted(set(mine) & set(theirs))
        if clash:
            raise ValueError(f"search statistic '{name}' returns {what}(s) {clash}, which already exist")
        mine.update(theirs)
    evaluation.table.extend({"statistic": name, **row} for row in result.table)
