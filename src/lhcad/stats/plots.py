"""Bump-hunt figures: the m_jj histogram, the fit, the masked signal region and the residuals.

Made like :mod:`lhcad.evaluate.plots`: plain :class:`~matplotlib.figure.Figure` objects (no
pyplot) in the mplhep CMS style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from lhcad.evaluate.plots import _HepFigure, hep_style
from lhcad.stats.fits import BinnedFit

if TYPE_CHECKING:
    from lhcad.stats.scan import GlobalResult, ScanResult

__all__ = ["plot_bump_fit", "plot_bump_fits", "plot_local_z"]


def plot_bump_fit(
    fit: BinnedFit,
    title: str = "",
    signal_region: tuple[float, float] | None = None,
    text: str = "",
) -> Figure:
    """Counts with Poisson errors and the fitted background (and signal), residuals below.

    Args:
        fit: a fit from :mod:`lhcad.stats.fits`; bins not used in the fit are drawn hollow.
        title: figure title (e.g. the selection).
        signal_region: shaded (masked) m_jj window in GeV.
        text: annotation (e.g. the significance).
    """
    edges, n, used = fit.edges / 1000.0, fit.counts, fit.used
    centres = 0.5 * (edges[:-1] + edges[1:])
    with hep_style():
        fig = _HepFigure(figsize=(9, 9), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        err = np.sqrt(n)
        top.errorbar(centres[used], n[used], yerr=err[used], fmt="ko", ms=4, label="data")
        if np.any(~used):
            top.errorbar(
                centres[~used], n[~used], yerr=err[~used], fmt="o", mfc="none", mec="k", ecolor="k", ms=4,
                label="data (masked)",
            )  # fmt: skip
        if np.all(np.isfinite(fit.background)):
            top.stairs(fit.background, edges, color="C0", lw=2, label="background fit")
            if np.any(fit.signal != 0):
                top.stairs(fit.expected, edges, color="C3", lw=2, ls="--", label="signal + background")
            scale = np.sqrt(np.maximum(fit.background, 1e-9))
            colours = np.where(used, "C0", "0.6")
            bottom.bar(centres, (n - fit.background) / scale, width=np.diff(edges), color=colours)
        else:
            text = f"{text}\nfit failed: {fit.message}".strip()
        for ax in (top, bottom):
            if signal_region is not None:
                ax.axvspan(signal_region[0] / 1000.0, signal_region[1] / 1000.0, color="0.85", zorder=0)
        top.set_yscale("log")
        top.set_ylim(bottom=0.5)
        top.set_ylabel("Events / bin")
        top.legend(loc="upper right", fontsize="small", title=title or None)
        if text:
            top.text(0.04, 0.05, text, transform=top.transAxes, fontsize="small")
        bottom.axhline(0.0, color="k", lw=1)
        bottom.set_ylabel(r"$(n - b)/b^{1/2}$")
        bottom.set_xlabel(r"$m_{jj}$ [TeV]")
        bottom.set_xlim(edges[0], edges[-1])
    return fig


def plot_bump_fits(
    panels: Sequence[tuple[str, BinnedFit, str]],
    title: str = "",
    signal_region: tuple[float, float] | None = None,
    ncols: int = 3,
) -> Figure:
    """All selections of one bump hunt in one figure: a panel per ``(selection, fit, text)`` with
    the counts, the fitted background (and signal) and the masked signal region; ``text`` (e.g. the
    significance) is the panel's title, so that nothing covers the data."""
    nrows = max(1, math.ceil(len(panels) / ncols))
    with hep_style():
        # a fixed layout: the constrained one costs more than drawing the panels (2.1 s against 0.8 s)
        fig = _HepFigure(figsize=(6 * ncols, 4.5 * nrows + 0.8))
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.45 / (4.5 * nrows + 0.8) * 2, top=1 - 1.3 / (4.5 * nrows + 0.8),
                            hspace=0.45, wspace=0.28)  # fmt: skip
        axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
        for ax, (key, fit, text) in zip(axes, panels):
            edges, n, used = fit.edges / 1000.0, fit.counts, fit.used
            centres = 0.5 * (edges[:-1] + edges[1:])
            if signal_region is not None:
                ax.axvspan(signal_region[0] / 1000.0, signal_region[1] / 1000.0, color="0.85", zorder=0)
            ax.errorbar(centres[used], n[used], yerr=np.sqrt(n[used]), fmt="ko", ms=3)
            if np.any(~used):
                ax.errorbar(centres[~used], n[~used], yerr=np.sqrt(n[~used]), fmt="o", mfc="none", mec="k", ecolor="k", ms=3)
            if np.all(np.isfinite(fit.background)):
                ax.stairs(fit.background, edges, color="C0", lw=2)
                if np.any(fit.signal != 0):
                    ax.stairs(fit.expected, edges, color="C3", lw=2, ls="--")
            else:
                text = f"fit failed: {fit.message}"
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.5)
            ax.set_title(f"{key}\n{text}", fontsize=11)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylabel("Events / bin", fontsize=13)
            ax.tick_params(labelsize=11, which="both")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        for ax in axes[-ncols:]:
            ax.set_xlabel(r"$m_{jj}$ [TeV]", fontsize=13)
        if title:
            fig.text(0.5, 1 - 0.55 / (4.5 * nrows + 0.8), title, ha="center", fontsize=14)
    return fig


def plot_local_z(result: ScanResult, global_result: GlobalResult | None = None, title: str = "") -> Figure:
    """Local Z of a window scan against the window centre, one line per selection (``none``
    dashed); the most significant point is starred and, with ``global_result``, the global Z and
    trials factor are quoted."""
    centres = result.centres / 1000.0
    best = result.best
    finite = result.local_z[np.isfinite(result.local_z)]
    top = max(5.5, float(finite.max()) if finite.size else 0.0)
    with hep_style():
        fig = _HepFigure(figsize=(10, 7.5))  # a fixed layout: the constrained one is slow
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.11, top=0.86)
        ax = fig.subplots()
        for s, key in enumerate(result.keys):
            style = dict(color="k", ls="--") if key == "none" else dict(color=f"C{(s - 1) % 10}", ls="-")
            ax.plot(centres, result.local_z[:, s], marker="o", ms=5, lw=1.5, label=key, **style)
        for level in (3.0, 5.0):
            ax.axhline(level, color="0.6", ls=":", lw=1)
        lines = []
        if best is not None:
            ax.plot(best.window.centre / 1000.0, best.z, marker="*", ms=20, color="gold", mec="k", ls="none", zorder=5)
            lo, hi = best.window.signal_region
            lines.append(f"max local Z = {best.z:.2f} ({best.key}, SR {lo / 1000:.2f}-{hi / 1000:.2f} TeV)")
        if global_result is not None:
            g = global_result
            if g.limited_by_toys:
                lines.append(f"global Z $\\geq$ {g.z:.2f} (no background toy of {g.n_toys} reached it)")
            else:
                lines.append(f"global Z = {g.z:.2f} (p = {g.p:.2g}, trials factor {g.trials_factor:.3g}, {g.n_toys} toys)")
        fig.text(0.1, 0.985, "\n".join([title, *lines] if title else lines), va="top", fontsize=14)
        ax.set_ylim(0.0, 1.3 * top)
        ax.set_xlim(centres[0] - 0.1, centres[-1] + 0.1)
        ax.set_xlabel(r"signal-region centre $m_{jj}$ [TeV]")
        ax.set_ylabel("local Z")
        ax.legend(loc="upper right", fontsize="x-small", ncol=3)
    return fig
