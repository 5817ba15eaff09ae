"""Standard evaluation plots; every function returns a :class:`matplotlib.figure.Figure`.

Figures are created directly (``Figure()``, not ``pyplot``), so they need no GUI backend, are not
registered with pyplot and are freed when no longer referenced; save them with ``fig.savefig``
(rendered by Agg). They are made and drawn in the mplhep CMS style (:func:`hep_style`) without
touching the global matplotlib settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import matplotlib.style
import mplhep
import numpy as np
import sklearn.metrics
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from lhcad.evaluate.metrics import RocCurve, pearson, sic_curve
from lhcad.evaluate.selection import select_efficiency
from lhcad.scores import EmpiricalCDF, Scores

__all__ = ["hep_style", "plot_jet_scores", "plot_mjj_selections", "plot_roc", "plot_sic"]

MAX_CURVE_POINTS = 2000


@contextlib.contextmanager
def hep_style() -> Iterator[None]:
    """Context in which new figures get the mplhep CMS style (rcParams restored on exit)."""
    with matplotlib.style.context(mplhep.style.CMS):
        yield


class _HepFigure(Figure):
    """A Figure that is also *drawn* in :func:`hep_style`.

    Some settings (the math fonts) are read when the figure is rendered, not when its artists are
    made; without this, a figure saved outside the style would mix fonts and warn about them.
    """

    def draw(self, renderer: RendererBase) -> None:
        with hep_style():
            super().draw(renderer)


def _figure(width: float) -> Figure:
    return _HepFigure(figsize=(width, 7), layout="constrained")


def _downsample(roc: RocCurve, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` points of ``roc``, spread evenly in eps_S and along the curve."""
    n = len(roc)
    if n <= max_points:
        return np.arange(n)
    half = max_points // 2
    along = np.linspace(0, n - 1, half).astype(np.intp)
    in_eps_s = np.searchsorted(roc.eps_s, np.linspace(0.0, 1.0, max_points - half))
    return np.unique(np.clip(np.concatenate([along, in_eps_s]), 0, n - 1))


def _as_curves(rocs: RocCurve | Mapping[str, RocCurve]) -> Mapping[str, RocCurve]:
    return {"": rocs} if isinstance(rocs, RocCurve) else rocs


def _trapezoid_auc(roc: RocCurve) -> float:
    return float(sklearn.metrics.auc(roc.eps_b, roc.eps_s)) if len(roc) > 1 else float("nan")


def plot_roc(rocs: RocCurve | Mapping[str, RocCurve]) -> Figure:
    """Background rejection ``1/eps_B`` (log scale) against signal efficiency ``eps_S``.

    ``rocs`` is one curve or several by label; the legend shows each AUC. The dashed line is a
    random classifier (``1/eps_B = 1/eps_S``).
    """
    with hep_style():
        fig = _figure(8)
        ax = fig.subplots()
        grid = np.linspace(1e-3, 1.0, 500)
        ax.plot(grid, 1.0 / grid, "k--", lw=1, label="random")
        for label, roc in _as_curves(rocs).items():
            idx = _downsample(roc)
            eps_s, eps_b = roc.eps_s[idx], roc.eps_b[idx]
            keep = eps_b > 0
            name = f"AUC = {_trapezoid_auc(roc):.3f}"
            name = f"{label} ({name})" if label else name
            ax.plot(eps_s[keep], 1.0 / eps_b[keep], label=name)
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel(r"Signal efficiency $\epsilon_S$")
        ax.set_ylabel(r"Background rejection $1/\epsilon_B$")
        ax.legend(loc="upper right")
    return fig


def plot_sic(rocs: RocCurve | Mapping[str, RocCurve], min_background: int) -> Figure:
    """Significance improvement ``eps_S/sqrt(eps_B)`` against ``eps_S``.

    Points keeping fewer than ``min_background`` background events are left out (see
    :func:`lhcad.evaluate.metrics.sic_curve`); the dashed line is a random classifier.
    """
    with hep_style():
        fig = _figure(11)
        ax = fig.subplots()
        grid = np.linspace(0.0, 1.0, 200)
        ax.plot(grid, np.sqrt(grid), "k--", lw=1, label="random")
        for label, roc in _as_curves(rocs).items():
            idx = _downsample(roc)
            sic = sic_curve(roc, min_background)[idx]
            keep = np.isfinite(sic)
            ax.plot(roc.eps_s[idx][keep], sic[keep], label=label or "SIC")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(r"Signal efficiency $\epsilon_S$")
        ax.set_ylabel(r"SIC $\epsilon_S/\epsilon_B^{1/2}$")
        # outside the axes: the SIC peak can be anywhere, a legend inside may cover it
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title=rf"$N_B \geq {min_background}$")
    return fig


def _stairs(ax: Axes, values: np.ndarray, edges: np.ndarray, **kwargs: object) -> bool:
    """Histogram ``values`` as steps on ``ax``; True if any bin is filled."""
    counts, _ = np.histogram(values, bins=edges)
    ax.stairs(counts, edges, **kwargs)
    return bool(np.any(counts > 0))


def plot_mjj_selections(
    mjj: ArrayLike,
    labels: ArrayLike,
    event_scores: ArrayLike,
    efficiencies: Iterable[float],
    bins: int = 40,
    range: tuple[float, float] = (1500.0, 6500.0),  # noqa: A002
) -> Figure:
    """Background (left) and signal (right) mjj histograms before and after each selection (log y).

    Each selection keeps the top fraction ``efficiency`` of all events by event score (as in
    :func:`lhcad.evaluate.sculpting.mass_sculpting`).
    """
    mjj = np.asarray(mjj, dtype=np.float64)
    labels = np.asarray(labels)
    scores = np.asarray(event_scores, dtype=np.float64)
    edges = np.linspace(range[0], range[1], bins + 1)
    selections = {float(e): select_efficiency(scores, e) for e in efficiencies}
    with hep_style():
        fig = _figure(16)
        axes = fig.subplots(1, 2, sharex=True)
        for ax, (title, label) in zip(axes, (("Background", 0), ("Signal", 1))):
            truth = labels == label
            any_counts = _stairs(ax, mjj[truth], edges, color="k", lw=2, label=f"all ({int(truth.sum())})")
            for eff, mask in selections.items():
                n = int(np.sum(truth & mask))
                any_counts |= _stairs(ax, mjj[truth & mask], edges, label=rf"$\epsilon = {eff:g}$ ({n})")
            if any_counts:
                ax.set_yscale("log")
                low, high = ax.get_ylim()
                ax.set_ylim(low, high * 300)  # headroom: the legend sits above the histograms
            else:
                ax.text(0.5, 0.5, f"no {title.lower()} events", transform=ax.transAxes, ha="center")
            ax.set_title(title)
            ax.set_xlabel(r"$m_{jj}$ [GeV]")
            ax.set_ylabel("Events / bin")
            ax.legend(loc="upper right", fontsize="small", ncols=2)
    return fig


def plot_jet_scores(
    background: Scores, signal: Scores, reference: Sequence[np.ndarray] | None = None
) -> Figure:
    """Jet-1 against jet-2 score, as their CDF values ``F1, F2`` in [0, 1], for background and signal.

    ``Fj`` is the empirical CDF of jet j's scores on ``reference`` (a pair of jet-1 and jet-2
    arrays; default: the background jets, or the signal jets if there is no background), so
    background is flat in each axis and signal gathers at high ``F1, F2``.

    Raises:
        ValueError: the scores are not per-jet.
    """
    if not (background.per_jet and signal.per_jet):
        raise ValueError("plot_jet_scores needs per-jet Scores (jet1 and jet2) for background and signal")
    if reference is None:
        ref = background if len(background.event) else signal
        reference = (ref.jet1, ref.jet2)
    if any(len(r) == 0 for r in reference):
        raise ValueError("plot_jet_scores: no jets to build the reference CDFs from")
    cdf1, cdf2 = EmpiricalCDF(reference[0]), EmpiricalCDF(reference[1])
    with hep_style():
        fig = _figure(16)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (title, scores) in zip(axes, (("Background", background), ("Signal", signal))):
            ax.set_xlabel(r"$F_1$(jet-1 score)")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(title)
            if len(scores.event) == 0:
                ax.text(0.5, 0.5, f"no {title.lower()} events", transform=ax.transAxes, ha="center")
                continue
            f1, f2 = cdf1(scores.jet1), cdf2(scores.jet2)
            *_, image = ax.hist2d(f1, f2, bins=25, range=[[0, 1], [0, 1]], norm=LogNorm(), cmap="viridis")
            fig.colorbar(image, ax=ax, label="Events")
            computable = len(f1) >= 3 and np.ptp(scores.jet1) > 0 and np.ptp(scores.jet2) > 0
            rho = pearson(scores.jet1, scores.jet2) if computable else float("nan")  # evaluate logs why not
            ax.set_title(rf"{title} ($\rho$ = {rho:.2f})")
        axes[0].set_ylabel(r"$F_2$(jet-2 score)")
    return fig
