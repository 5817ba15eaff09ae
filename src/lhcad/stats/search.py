"""Search statistics run on every scored test sample (see :class:`lhcad.evaluate.SearchStatistic`).

Each is evaluated before any selection (key ``none``, bump hunts only) and after keeping the top
fraction ``e`` of events by anomaly score (key ``eff_<e:g>``):

* :class:`DijetBumpHunt` (``sig_bumphunt/...``): dijet-function fit with the signal region masked,
  profile-likelihood significance of the SR count (paper 003, section 2.3);
* :class:`CubicGaussianBumpHunt` (``sig_tnt_bumphunt/...``): cubic background plus a Gaussian
  signal at the hypothesised mass, likelihood ratio against background only (paper 001);
* :class:`AbcdCount` (``sig_abcd_obs/...``, ``sig_abcd_exp/...``): ABCD cut-and-count for per-jet
  scores (paper 001, eq. 4.1).

Called with ``reference`` (the background-only closure of :func:`lhcad.evaluate.evaluate`), a
statistic cuts at the score thresholds that keep each efficiency of ``reference`` instead of
re-selecting the top fraction of the sample it gets (:func:`select_at_efficiency`), and makes no
figures.

A fit that fails or a statistic that does not apply gives NaN metrics and a logged reason; so does
ABCD when its truth-free validation region shows that the two jet scores are not independent.
Truth labels are used only for the reported true signal counts and the expected ABCD significance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lhcad.data.events import Events
from lhcad.evaluate.run_evaluation import StatisticResult, plot_level
from lhcad.evaluate.selection import select_at_efficiency
from lhcad.scores import Scores
from lhcad.stats.abcd import abcd_estimate, abcd_validation, jet_cuts_at_efficiency
from lhcad.stats.fits import BinnedFit, dijet_prediction, fit_cubic_gaussian, fit_dijet
from lhcad.stats.significance import abcd_significance, likelihood_ratio_z, profile_likelihood_z

__all__ = ["AbcdCount", "CubicGaussianBumpHunt", "DijetBumpHunt", "select_at_efficiency"]

logger = logging.getLogger(__name__)

NAN = float("nan")
DEFAULT_EFFICIENCIES = (0.1, 0.05, 0.03, 0.01, 0.005)
# Default fit window: the generated QCD m_jj peaks at 2.6-2.7 TeV (trigger turn-on) and falls
# smoothly above ~2.75 TeV; 2.8-5.8 TeV in 30 bins of 100 GeV starts above the turn-on, keeps
# >= ~10 events per bin up to the end on the 30k-event test sample and puts the default SR
# 3.3-3.7 TeV exactly on bin edges (paper 003 used 2.6-5 TeV, 30 bins, on a spectrum with an
# earlier turn-on).
DEFAULT_FIT_RANGE = (2800.0, 5800.0)
DEFAULT_BINS = 30


def _check_efficiencies(values: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if any(not 0.0 < v <= 1.0 for v in out):
        raise ValueError(f"efficiencies must be in (0, 1], got {out}")
    return out


def _selections(
    scores: Scores, efficiencies: Sequence[float], with_none: bool, reference: Scores | None = None
) -> Iterator[tuple[str, float, np.ndarray]]:
    """(key, efficiency, mask): no selection (``none``, efficiency 1) first if ``with_none``; the cuts
    keep each efficiency of ``reference`` when given (:func:`select_at_efficiency`)."""
    if with_none:
        yield "none", 1.0, np.ones(len(scores.event), bool)
    ref = reference.event if reference is not None else None
    for e in efficiencies:
        yield f"eff_{e:g}", e, select_at_efficiency(scores.event, e, ref)


def _labels(test: Events) -> np.ndarray:
    """Truth labels, or -1 (unknown) for events that carry none."""
    return np.asarray(test.labels) if "label" in test else np.full(len(test), -1)


def _closure_note(reference: Scores | None) -> str:
    return " (background-only closure)" if reference is not None else ""


def _edges(fit_range: Sequence[float], bins: int) -> np.ndarray:
    lo, hi = (float(v) for v in fit_range)
    if not lo < hi or int(bins) < 2:
        raise ValueError(f"need fit_range low < high and bins >= 2, got {fit_range}, {bins}")
    return np.linspace(lo, hi, int(bins) + 1)


def _fmt_text(**values: float) -> str:
    return ", ".join(f"{k} = {v:.3g}" for k, v in values.items())


@dataclass
class _BumpHunt:
    """Shared settings of the bump hunts: binning, efficiencies, plots (``plots``: a
    :func:`lhcad.evaluate.plot_level` value; one figure ``<name>.png`` with a panel per selection at
    ``full``, and at ``minimal`` for the bump hunt whose ``minimal_plot`` is set)."""

    fit_range: Sequence[float] = DEFAULT_FIT_RANGE
    bins: int = DEFAULT_BINS
    efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES
    plots: bool | str = True
    edges: np.ndarray = field(init=False, repr=False)
    minimal_plot = False

    def __post_init__(self) -> None:
        level = plot_level(self.plots)
        self.plots = level == "full" or (level == "minimal" and self.minimal_plot)
        self.efficiencies = _check_efficiencies(self.efficiencies)
        self.fit_range = tuple(float(v) for v in self.fit_range)
        self.edges = _edges(self.fit_range, self.bins)

    def _histogram(self, mjj: np.ndarray) -> np.ndarray:
        return np.histogram(mjj, bins=self.edges)[0].astype(np.float64)

    def __call__(self, test: Events, scores: Scores, reference: Scores | None = None) -> StatisticResult:
        mjj = np.asarray(test["mjj"], dtype=np.float64)
        labels = _labels(test)
        result = StatisticResult()
        note = _closure_note(reference)
        panels: list[tuple[str, BinnedFit, str]] = []
        for key, e, sel in _selections(scores, self.efficiencies, with_none=True, reference=reference):
            metrics, fit, text = self._evaluate(mjj[sel], labels[sel])
            if not fit.valid:
                logger.warning("%s @ %s%s: fit failed (%s); significance NaN", self.name, key, note, fit.message)
            elif fit.message:
                logger.warning("%s @ %s%s: %s; uncertainties are NaN", self.name, key, note, fit.message)
            result.metrics |= {f"{name}/{key}": value for name, value in metrics.items()}
            result.table.append({"efficiency": key if key == "none" else e, **metrics})
            panels.append((key, fit, text))
        if self.plots and reference is None:
            result.figures[f"{self.name}.png"] = self._plot(panels)
        return result

    def _plot(self, panels: Sequence[tuple[str, BinnedFit, str]]) -> Figure:
        raise NotImplementedError

    def _evaluate(self, mjj: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], BinnedFit, str]:
        raise NotImplementedError


@dataclass
class DijetBumpHunt(_BumpHunt):
    """Dijet-function fit with the signal region masked; profile-likelihood Z of the SR count.

    The SR is the set of bins whose centre lies in ``signal_region`` (align it with the bin edges).
    The prediction ``b`` in those bins and its uncertainty ``sigma_b`` (fit covariance) enter the
    likelihood of paper 003, eqs. 2.5-2.6.

    Metrics (``K`` = ``none`` or ``eff_<e>``): ``sig_bumphunt/K``, ``bumphunt_nsr_obs/K``,
    ``bumphunt_nsr_pred/K``, ``bumphunt_nsr_pred_unc/K``, ``bumphunt_nsr_signal/K`` (truth),
    ``bumphunt_chi2ndf/K`` (Poisson deviance / ndf of the sideband fit), ``bumphunt_fit_valid/K``.
    """

    signal_region: Sequence[float] = (3300.0, 3700.0)
    n_params: int = 4
    name: str = "bumphunt"
    minimal_plot = True  # the one bump-hunt figure of plots=minimal
    sr_bins: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = (float(v) for v in self.signal_region)
        self.signal_region = (lo, hi)
        centres = 0.5 * (self.edges[:-1] + self.edges[1:])
        self.sr_bins = (centres > lo) & (centres < hi)
        if not self.sr_bins.any() or self.sr_bins.all():
            raise ValueError(
                f"signal region {self.signal_region} must cover some but not all bins of {self.fit_range}"
            )
        covered = (self.edges[:-1][self.sr_bins][0], self.edges[1:][self.sr_bins][-1])
        if not np.allclose(covered, self.signal_region):
            logger.warning("signal region %s not on bin edges; using bins %s", self.signal_region, covered)

    def _evaluate(self, mjj: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], BinnedFit, str]:
        counts = self._histogram(mjj)
        fit = fit_dijet(counts, self.edges, mask=self.sr_bins, n_params=self.n_params)
        n_obs = float(counts[self.sr_bins].sum())
        in_sr = (mjj >= self.edges[:-1][self.sr_bins][0]) & (mjj < self.edges[1:][self.sr_bins][-1])
        b, sigma_b = dijet_prediction(fit, self.sr_bins) if fit.valid else (NAN, NAN)
        z = profile_likelihood_z(n_obs, b, sigma_b) if fit.valid else NAN
        metrics = {
            "sig_bumphunt": z,
            "bumphunt_nsr_obs": n_obs,
            "bumphunt_nsr_pred": b,
            "bumphunt_nsr_pred_unc": sigma_b,
            "bumphunt_nsr_signal": float(np.sum(labels[in_sr] == 1)),
            "bumphunt_chi2ndf": fit.deviance / fit.ndf if fit.valid and fit.ndf > 0 else NAN,
            "bumphunt_fit_valid": float(fit.valid),
        }
        return metrics, fit, _fmt_text(Z=z, n_SR=n_obs, b_SR=b, sigma_b=sigma_b)

    def _plot(self, panels: Sequence[tuple[str, BinnedFit, str]]) -> Figure:
        from lhcad.stats.plots import plot_bump_fits

        return plot_bump_fits(panels, "dijet-function fit, signal region masked", self.signal_region)


@dataclass
class CubicGaussianBumpHunt(_BumpHunt):
    """Cubic background plus a Gaussian signal of fixed ``mass``/``width`` (paper 001, section 4.1).

    ``Z = sqrt(-2 ln(L_b / L_s+b))`` of the background-only and signal+background fits to all bins
    (0 unless the fitted yield is positive). The cubic needs a window narrow enough for it to follow
    the falling spectrum, hence its own (narrower) ``fit_range``.

    Metrics: ``sig_tnt_bumphunt/K``, ``tnt_bumphunt_yield/K`` and ``..._yield_unc/K`` (fitted
    signal events), ``tnt_bumphunt_signal/K`` (truth: signal events in the fit range),
    ``tnt_bumphunt_chi2ndf/K`` (signal+background fit), ``tnt_bumphunt_fit_valid/K``.
    """

    fit_range: Sequence[float] = (2900.0, 4500.0)
    bins: int = 16
    mass: float = 3500.0
    width: float = 100.0
    name: str = "tnt_bumphunt"

    def _evaluate(self, mjj: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], BinnedFit, str]:
        counts = self._histogram(mjj)
        background_only, fit = self._fits(counts)
        valid = fit.valid and background_only.valid
        if fit.valid and not background_only.valid:
            fit = _invalidated(fit, f"background-only fit: {background_only.message}")
        s, s_err = fit.param("yield") if valid else (NAN, NAN)
        z = likelihood_ratio_z(background_only.deviance - fit.deviance, s) if valid else NAN
        in_range = (mjj >= self.edges[0]) & (mjj < self.edges[-1])
        metrics = {
            "sig_tnt_bumphunt": z,
            "tnt_bumphunt_yield": s,
            "tnt_bumphunt_yield_unc": s_err,
            "tnt_bumphunt_signal": float(np.sum(labels[in_range] == 1)),
            "tnt_bumphunt_chi2ndf": fit.deviance / fit.ndf if valid and fit.ndf > 0 else NAN,
            "tnt_bumphunt_fit_valid": float(valid),
        }
        return metrics, fit, _fmt_text(Z=z, yield_=s, unc=s_err).replace("yield_", "yield")

    def _fits(self, counts: np.ndarray) -> tuple[BinnedFit, BinnedFit]:
        """Background-only and signal+background fits, each also started from the other's minimum.

        Where the cubic dips below zero the likelihood has kinks and local minima; restarting
        from the other fit and keeping the lower deviance makes ``q0`` robust at low counts.
        """
        args = (counts, self.edges, self.mass, self.width)
        b_only = fit_cubic_gaussian(*args, signal=False)
        s_plus_b = _best(fit_cubic_gaussian(*args), fit_cubic_gaussian(*args, start=b_only.params))
        b_only = _best(b_only, fit_cubic_gaussian(*args, signal=False, start=s_plus_b.params))
        return b_only, s_plus_b

    def _plot(self, panels: Sequence[tuple[str, BinnedFit, str]]) -> Figure:
        from lhcad.stats.plots import plot_bump_fits

        return plot_bump_fits(panels, f"cubic + Gaussian at {self.mass:g} GeV")


def _best(a: BinnedFit, b: BinnedFit) -> BinnedFit:
    """The valid fit with the lower deviance (``a`` if neither is valid)."""
    if not b.valid or not np.isfinite(b.params).all():
        return a
    return b if not a.valid or b.deviance < a.deviance else a


def _invalidated(fit: BinnedFit, message: str) -> BinnedFit:
    from dataclasses import replace

    return replace(fit, valid=False, message=message)


@dataclass
class AbcdCount:
    """ABCD cut-and-count for per-jet scores (paper 001, eq. 4.1); NaN for event-level methods.

    At each efficiency both jets are cut at the same quantile of their own score (see
    :func:`lhcad.stats.abcd.jet_cuts_at_efficiency`). Metrics: ``sig_abcd_obs/K``,
    ``sig_abcd_exp/K`` (eq. 4.1; the expected one uses the true signal count), ``sig_abcd_pl/K``
    (profile-likelihood Z of the same count), ``abcd_nobs/K``, ``abcd_npred/K``,
    ``abcd_npred_unc/K``, ``abcd_nbkg_true/K`` (truth, for closure).

    ABCD assumes the two jet scores are independent on background. Every call checks that without
    truth (:func:`lhcad.stats.abcd.abcd_validation`): the prediction for both jets in the quantile
    ``validation_band`` of their own scores is compared with the observed count. When
    ``|pull| > max_validation_pull`` every ``sig_abcd_*`` is NaN (with a logged warning); the
    counts are still reported. Metrics ``abcd/validation_pull``, ``abcd/validation_obs``,
    ``abcd/validation_pred``, ``abcd/validation_pred_unc``, ``abcd/control_corr`` and
    ``abcd/control_corr_unc`` (Spearman correlation of the jet scores where both are below their
    0.7 quantile) and ``abcd/valid`` (1 or 0).
    """

    efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES
    control_fraction: float = 0.4
    systematic: float = 0.03
    max_validation_pull: float = 2.0
    validation_band: Sequence[float] = (0.5, 0.9)
    name: str = "abcd"

    def __post_init__(self) -> None:
        self.efficiencies = _check_efficiencies(self.efficiencies)
        band = tuple(float(v) for v in self.validation_band)
        if len(band) != 2 or not self.control_fraction <= band[0] < band[1] <= 1.0:
            raise ValueError(
                f"validation_band must be [low, high] with control_fraction <= low < high <= 1, got {band}"
            )
        self.validation_band = band
        if not self.max_validation_pull > 0:
            raise ValueError(f"max_validation_pull must be positive, got {self.max_validation_pull}")

    def __call__(self, test: Events, scores: Scores, reference: Scores | None = None) -> StatisticResult:
        result = StatisticResult()
        per_jet = scores.per_jet and (reference is None or reference.per_jet)
        if not per_jet:
            logger.warning("%s: the method gives no per-jet scores; ABCD significances are NaN", self.name)
            result.metrics |= dict.fromkeys(_VALIDATION_KEYS, NAN)
        else:
            result.metrics |= self._validate(scores, reference)
        valid = result.metrics["abcd/valid"] == 1.0
        labels = _labels(test)
        for key, e, _ in _selections(scores, self.efficiencies, with_none=False):
            if per_jet:
                metrics = self._evaluate(scores, labels, e, reference)
            else:
                metrics = dict.fromkeys(_ABCD_KEYS, NAN)
            if not valid:
                metrics |= {k: NAN for k in metrics if k.startswith("sig_")}
            result.metrics |= {f"{name}/{key}": value for name, value in metrics.items()}
            result.table.append({"efficiency": e, **metrics})
        checks = {k.replace("/", "_"): result.metrics[k] for k in _VALIDATION_KEYS}
        result.table.append({"efficiency": "validation", **checks})
        return result

    def _validate(self, scores: Scores, reference: Scores | None) -> dict[str, float]:
        """The validation-region metrics; warns when the independence assumption fails."""
        check = abcd_validation(
            scores.jet1, scores.jet2, tuple(self.validation_band), self.control_fraction, self.systematic
        )
        est = check.estimate
        valid = math.isfinite(check.pull) and abs(check.pull) <= self.max_validation_pull
        if not valid:
            logger.warning(
                "%s%s: validation-region pull %.3g (observed %d, predicted %.1f) is beyond +-%g: the jet "
                "scores are not independent on background; sig_abcd_* are NaN",
                self.name, _closure_note(reference), check.pull, est.n_obs, est.n_pred,
                self.max_validation_pull,
            )  # fmt: skip
        values = (check.pull, est.n_obs, est.n_pred, est.sigma, check.control_corr, check.control_corr_unc)
        return dict(zip(_VALIDATION_KEYS, (*map(float, values), float(valid)), strict=True))

    def _evaluate(
        self, scores: Scores, labels: np.ndarray, efficiency: float, reference: Scores | None
    ) -> dict[str, Any]:
        ref = (reference.jet1, reference.jet2) if reference is not None else None
        pass1, pass2 = jet_cuts_at_efficiency(scores.jet1, scores.jet2, efficiency, ref)
        est = abcd_estimate(pass1, pass2, scores.jet1, scores.jet2, self.control_fraction, self.systematic)
        selected = pass1 & pass2
        obs, exp = abcd_significance(est.n_obs, est.n_pred, est.sigma, float(np.sum(labels[selected] == 1)))
        pl = profile_likelihood_z(est.n_obs, est.n_pred, est.sigma) if est.n_pred > 0 else NAN
        if not math.isfinite(est.n_pred) or est.n_pred <= 0:
            note = _closure_note(reference)
            logger.warning("%s @ eff=%g%s: no background predicted; Z is NaN", self.name, efficiency, note)
        return dict(
            zip(
                _ABCD_KEYS,
                (obs, exp, pl, float(est.n_obs), est.n_pred, est.sigma, float(np.sum(labels[selected] == 0))),
            )
        )


_ABCD_KEYS = (
    "sig_abcd_obs", "sig_abcd_exp", "sig_abcd_pl",
    "abcd_nobs", "abcd_npred", "abcd_npred_unc", "abcd_nbkg_true",
)  # fmt: skip
_VALIDATION_KEYS = (
    "abcd/validation_pull", "abcd/validation_obs", "abcd/validation_pred", "abcd/validation_pred_unc",
    "abcd/control_corr", "abcd/control_corr_unc", "abcd/valid",
)  # fmt: skip
