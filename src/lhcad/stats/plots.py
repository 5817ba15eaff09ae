"""Bump-hunt figures: the m_jj histogram, the fit, the masked signal region and the residuals.

Made like :mod:`lhcad.evaluate.plots`: plain :class:`~matplotlib.figure.Figure` objects (no
pyplot) in the mplhep CMS style.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lhcad.evaluate.plots import _HepFigure, hep_style
from lhcad.stats.fits import BinnedFit

__all__ = ["plot_bump_fit"]


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
