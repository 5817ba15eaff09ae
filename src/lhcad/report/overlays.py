"""Overlay plots of a comparison: one figure per signal_frac, one curve per configuration.

* ``overlay_roc_f<f>.png`` / ``overlay_sic_f<f>.png``: ROC (1/eps_B against eps_S) and SIC from each
  run's ``curves.npz``; the seeds of a configuration are **averaged**: eps_B (and the SIC) of each
  seed at a common grid of eps_S, then the mean (vertical averaging). ``curves.npz`` files with
  ``eps_s_sr`` / ``eps_b_sr`` / ``sic_sr`` (curves in the m_jj signal region; not logged yet) also
  give ``overlay_roc_sr_f<f>.png`` / ``overlay_sic_sr_f<f>.png``.
* ``overlay_z_f<f>.png``: every significance ``sig_<statistic>`` against the selection efficiency
  (a panel per statistic; "no selection" at efficiency 1), mean ± std over seeds.
* ``overlay_jsd_f<f>.png``: the m_jj sculpting JSD against the selection efficiency, mean ± std
  over seeds, with the JSD of random selections of the same size (``closure/jsd_mjj_noise``) dashed.

Figures are made without pyplot (``Figure()``, rendered by Agg) in the mplhep CMS style of the
per-run plots, with the legend outside the axes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lhcad.report.table import ComparisonRow, ComparisonTable, MetricColumn

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

    from lhcad.report.collect import RunRecord

__all__ = ["CURVES_FILE", "load_curves", "overlay_plots"]

log = logging.getLogger(__name__)

CURVES_FILE = "curves.npz"
_GRID = np.linspace(0.0, 1.0, 401)[1:]  # eps_S at which the seeds' curves are averaged
_MAX_TITLE = 70


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow's artifact download progress bars off (they would fill the log of a multirun)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def load_curves(client: MlflowClient, records: Iterable[RunRecord]) -> dict[str, dict[str, np.ndarray]]:
    """``curves.npz`` of each run (run id -> arrays); runs without it are left out (logged)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="lhcad-report-") as tmp, _no_progress_bars():
        for record in records:
            try:
                path = client.download_artifacts(record.run_id, CURVES_FILE, str(Path(tmp, record.run_id)))
                with np.load(path) as data:
                    out[record.run_id] = {k: np.asarray(data[k]) for k in data.files}
            except Exception as err:  # noqa: BLE001 - a run without curves only drops out of the overlays
                log.info("run %s (%s): no %s for the overlays (%s)", record.run_id, record.name, CURVES_FILE,
                         err)  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- helpers


def _hep_style():  # noqa: ANN202 - a context manager
    from lhcad.evaluate.plots import hep_style

    return hep_style()


def _file_tag(signal_frac: str) -> str:
    return "f" + re.sub(r"[^0-9A-Za-z.\-]", "_", signal_frac)


def _title(what: str, signal_frac: str, rows: Sequence[ComparisonRow]) -> str:
    names = ", ".join(dict.fromkeys(r.method for r in rows))
    title = f"{what}, signal_frac = {signal_frac}: {names}"
    short = f"{what}, signal_frac = {signal_frac}: {len(rows)} configurations"
    return title if len(title) <= _MAX_TITLE else short


def _labels(rows: Sequence[ComparisonRow]) -> dict[int, str]:
    """Legend label of each row: method [variant], with the inputs when they differ between rows."""
    several_inputs = len({r.inputs for r in rows}) > 1
    out = {}
    for row in rows:
        label = row.label + (f" ({row.inputs})" if several_inputs else "")
        n = len(row.records)
        out[id(row)] = label + (f", {n} seeds" if n > 1 else "")
    return out


def _colors(rows: Sequence[ComparisonRow]) -> dict[int, str]:
    """One colour per row (the style's cycle, then tab20), the same in every figure of a signal_frac."""
    import matplotlib

    cycle = [p["color"] for p in matplotlib.rcParams["axes.prop_cycle"]]
    cycle += [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    return {id(row): cycle[i % len(cycle)] for i, row in enumerate(rows)}


def _legend_outside(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small", borderaxespad=0.0)


def _at_grid(eps_s: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` at the first ROC point reaching each eps_S of the grid (NaN beyond the curve)."""
    if len(eps_s) == 0:
        return np.full(len(_GRID), np.nan)
    idx = np.searchsorted(eps_s, _GRID, side="left")
    out = np.asarray(values, dtype=np.float64)[np.clip(idx, 0, len(eps_s) - 1)]
    out[idx >= len(eps_s)] = np.nan
    return out


def _mean_curve(
    row: ComparisonRow, curves: Mapping[str, Mapping[str, np.ndarray]], suffix: str, what: str
) -> np.ndarray | None:
    """Mean over the row's seeds of eps_B (``what="eps_b"``) or the SIC at the grid; None without curves."""
    per_seed = []
    for record in row.records:
        arrays = curves.get(record.run_id, {})
        eps_s, values = arrays.get(f"eps_s{suffix}"), arrays.get(f"{what}{suffix}")
        if eps_s is not None and values is not None and len(eps_s) == len(values):
            per_seed.append(_at_grid(np.asarray(eps_s, np.float64), values))
    return np.mean(per_seed, axis=0) if per_seed else None


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=90)
    return path


# ---------------------------------------------------------------------------------------------- figures


@contextlib.contextmanager
def _single_axes(rows: Sequence[ComparisonRow]) -> Iterator[tuple[Figure, Axes, dict[int, str], dict[int, str]]]:
    """A one-axes overlay figure in the HEP style, with each row's legend label and colour."""
    labels = _labels(rows)
    with _hep_style():
        colors = _colors(rows)
        fig = Figure(figsize=(13, 7), layout="constrained")
        yield fig, fig.subplots(), labels, colors


def _curve_overlay(
    rows: Sequence[ComparisonRow], series: Mapping[int, tuple[np.ndarray, str]], baseline: np.ndarray,
    title: str, ylabel: str, path: Path, *, logy: bool,
) -> Path | None:  # fmt: skip
    """One curve per row against eps_S (``series``: row id -> (y on the common grid, legend note)),
    the random classifier dashed; None when no row has a curve."""
    if not series:
        return None
    with _single_axes(rows) as (fig, ax, labels, colors):
        ax.plot(_GRID, baseline, "k--", lw=1, label="random")
        for row in rows:
            if id(row) in series:
                y, note = series[id(row)]
                keep = np.isfinite(y)
                ax.plot(_GRID[keep], y[keep], color=colors[id(row)], label=labels[id(row)] + note)
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlim(0, 1)
        ax.set_xlabel(r"Signal efficiency $\epsilon_S$")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize="small")
        _legend_outside(ax)
        return _save(fig, path)


def _note(row: ComparisonRow, key: str, what: str) -> str:
    value = row.values.get(key)
    return f" ({what} {value.text()})" if value is not None and value.n else ""


_CURVE_KINDS = {
    # kind: (curve in curves.npz, y from it, random classifier, metric in the legend, y label, log y)
    "roc": ("eps_b", lambda eps_b: np.divide(1.0, eps_b, out=np.full_like(eps_b, np.nan), where=eps_b > 0),
            lambda grid: 1.0 / grid, ("auc", "AUC"), r"Background rejection $1/\epsilon_B$", True),
    "sic": ("sic", lambda sic: sic, np.sqrt, ("max_sic", "max"), r"SIC $\epsilon_S/\epsilon_B^{1/2}$", False),
}  # fmt: skip


def plot_curves(
    kind: str, rows: Sequence[ComparisonRow], curves: Mapping[str, Mapping[str, np.ndarray]], signal_frac: str,
    path: Path, suffix: str = "",
) -> Path | None:  # fmt: skip
    """ROC (``kind="roc"``: 1/eps_B against eps_S) or SIC (``"sic"``: eps_S / sqrt(eps_B)) overlay,
    seeds averaged, one curve per row; ``suffix="_sr"`` for the signal-region curves. None when no
    row has curves."""
    curve, to_y, random, (metric, what), ylabel, logy = _CURVE_KINDS[kind]
    series = {}
    for row in rows:
        values = _mean_curve(row, curves, suffix, curve)
        if values is not None:
            series[id(row)] = (to_y(values), _note(row, metric + suffix, what))
    where = " in the SR" if suffix == "_sr" else ""
    title = _title(f"{kind.upper()}{where}", signal_frac, rows)
    return _curve_overlay(rows, series, random(_GRID), title, ylabel, path, logy=logy)


def _errorbars(ax: Axes, row: ComparisonRow, columns: Sequence[MetricColumn], label: str, color: str) -> bool:
    """Mean ± std of ``columns`` against their efficiency; False when the row has no finite value."""
    points = [
        (c.efficiency, row.values[c.key].mean, row.values[c.key].std)
        for c in columns
        if c.efficiency is not None and row.values[c.key].n
    ]
    if not points:
        return False
    x, y, err = (np.array(v, dtype=np.float64) for v in zip(*sorted(points)))
    yerr = np.where(np.isfinite(err), err, 0.0)
    ax.errorbar(x, y, yerr=yerr, marker="o", ms=5, capsize=3, color=color, label=label)
    return True


def plot_z(table: ComparisonTable, rows: Sequence[ComparisonRow], signal_frac: str, path: Path) -> Path | None:
    """Significance against selection efficiency, a panel per ``sig_<statistic>``; None without any."""
    stats = table.statistics
    if not stats:
        return None
    labels = _labels(rows)
    ncols = min(3, len(stats))
    nrows = math.ceil(len(stats) / ncols)
    with _hep_style():
        colors = _colors(rows)
        fig = Figure(figsize=(6.5 * ncols + 4, 5.5 * nrows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        handles: dict[str, object] = {}
        for ax, stat in zip(axes, stats):
            for row in rows:
                _errorbars(ax, row, table.columns_of("sig", stat), labels[id(row)], colors[id(row)])
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("selection efficiency (1 = none)", fontsize="small")
            ax.set_ylabel("Z", fontsize="small")
            ax.set_title(f"sig_{stat}", fontsize="small")
            ax.tick_params(labelsize="x-small")
            handles |= dict(zip(*reversed(ax.get_legend_handles_labels())))
        for ax in axes[len(stats):]:
            ax.set_visible(False)
        if not handles:
            return None
        order = [labels[id(r)] for r in rows if labels[id(r)] in handles]
        fig.legend([handles[k] for k in order], order, loc="outside right upper", fontsize="x-small")
        title = _title("Significance vs efficiency", signal_frac, rows) + " (mean ± std over seeds)"
        fig.suptitle(title, fontsize="small")
        return _save(fig, path)


def plot_jsd(
    table: ComparisonTable, rows: Sequence[ComparisonRow], signal_frac: str, path: Path
) -> Path | None:
    """m_jj sculpting JSD against selection efficiency, with the random-selection noise; None without any."""
    columns = table.columns_of("jsd_mjj")
    if not columns:
        return None
    with _single_axes(rows) as (fig, ax, labels, colors):
        drawn = [_errorbars(ax, row, columns, labels[id(row)], colors[id(row)]) for row in rows]
        if not any(drawn):
            return None
        noise = []
        for c in columns:
            key = f"closure/jsd_mjj_noise/eff_{c.efficiency:g}"
            values = [r.metrics.get(key, math.nan) for row in rows for r in row.records]
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                noise.append((c.efficiency, float(np.mean(finite))))
        if noise:
            x, y = zip(*sorted(noise))
            ax.plot(x, y, "k--", lw=1, label="random selections (noise)")
        ax.set_xscale("log")
        ax.set_xlabel("selection efficiency")
        ax.set_ylabel(r"JSD($m_{jj}$) background after / before")
        ax.set_title(_title("m_jj sculpting", signal_frac, rows) + " (mean ± std)", fontsize="small")
        _legend_outside(ax)
        return _save(fig, path)


def overlay_plots(
    table: ComparisonTable, curves: Mapping[str, Mapping[str, np.ndarray]], out_dir: Path
) -> list[Path]:
    """Every overlay figure of ``table`` (per signal_frac) written to ``out_dir``; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_frac: dict[str, list[ComparisonRow]] = {}
    for row in table.rows:
        by_frac.setdefault(row.signal_frac, []).append(row)
    suffixes = sorted({k[len("eps_s"):] for arrays in curves.values() for k in arrays if k.startswith("eps_s")})
    written: list[Path | None] = []
    for frac, rows in by_frac.items():
        tag = _file_tag(frac)
        for suffix in suffixes:
            for kind in _CURVE_KINDS:
                written.append(plot_curves(kind, rows, curves, frac, out_dir / f"overlay_{kind}{suffix}_{tag}.png", suffix))
        written.append(plot_z(table, rows, frac, out_dir / f"overlay_z_{tag}.png"))
        written.append(plot_jsd(table, rows, frac, out_dir / f"overlay_jsd_{tag}.png"))
    return [p for p in written if p is not None]
