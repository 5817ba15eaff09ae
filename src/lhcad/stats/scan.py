"""m_jj window scan of the dijet-function bump hunt, and its global significance.

The resonance mass is unknown, so the signal-region hypothesis slides across the spectrum
(:func:`lhcad.windows.scan_windows`: centres 3.1-5.4 TeV by default, +-6% wide, neighbours
overlapping by half). Per window and per selection (no selection, ``none``, and the top fraction
``e`` of events by anomaly score, ``eff_<e>``) the m_jj histogram is fitted with the dijet
function (paper 003, eq. 2.4) with the window's signal region masked, and the SR count is tested
against the fitted prediction with the profile-likelihood Z (eqs. 2.5-2.6): exactly
:class:`lhcad.stats.DijetBumpHunt` at every window (where at least ``min_background`` events are
predicted, see "Sparse fits").

::

    scan = WindowScan.from_config(cfg.search.scan)        # or WindowScan(scan_windows(), efficiencies)
    result = scan.run(mjj, scores, labels)                # one score array, or one per window
    result.local_z, result.best, result.metrics_by_window()
    g = global_significance(result, toys=200, seed=0)     # g.p, g.z, g.trials_factor

**Cost.** Every distinct selection is histogrammed once, on a fine grid (``grid``, 10 GeV) over the
fit range; each window's fit histogram is a rebinning of it (``np.add.reduceat``). The scan makes
one fit per (window, selection), nothing more, so it is linear in windows and efficiencies.

**Fit range and bins.** Every window is fitted over the whole ``fit_range`` (the global
2.8-5.8 TeV of the single-window bump hunt): the 4-parameter dijet function is made to describe
the full falling spectrum, the longest sidebands give the smallest fit uncertainty, each window
has sidebands on both sides inside the data, and the window at 3.3-3.7 TeV reproduces
``sig_bumphunt`` exactly. ``fit_span`` (a fraction of the centre) instead fits only
``SR +- fit_span * centre``, clipped to ``fit_range``: a sliding fit, for spectra that the
function cannot follow over the whole range. The fit bins are ``bin_width`` (100 GeV) wide, built
outwards from the SR edges so that the SR is masked exactly (a bin narrower than half a bin at an
end of the range is merged into its neighbour); the SR itself is split into bins of about
``bin_width``. Each SR must lie in the fit range with at least half a bin on both sides.

**Global significance** (:func:`global_significance`). Background-only pseudo-experiments drawn
from the sideband fit of each selection, with the same maximisation over windows and
efficiencies. The background template of a selection is the dijet fit (SR masked) of the window
where that selection is most significant, integrated over the fine grid; every toy is then scanned
like the data. Correlations:

* window-independent scores (one score array): one toy spectrum per selection serves every
  window, as in the data (the look-elsewhere effect in m_jj is exact);
* nested selections (every ``eff_e`` inside the next larger one, as top-fraction cuts of one score
  are): the toys are nested too, the smallest selection drawn first and each larger one adding an
  independent Poisson increment with mean ``max(template_larger - template_smaller, 0)``, so the
  strong correlation between efficiencies is kept. (Where two fitted templates cross, the larger
  selection's toy mean is raised to the smaller one's; they differ by 2x or more in counts, so
  this is rare and tiny.)
* window-dependent scores (retrained per window): the selections of different windows are drawn
  independently, each from its own window's template (the correlation of neighbouring windows'
  classifiers is unknown). Independent tests give a larger maximum than positively correlated
  ones, so this overestimates the trials factor: a conservative (too small) global Z. So does
  any selection that is not nested in the next larger one (drawn independently).

The toys' fits are a vectorised Newton minimisation of the same Poisson deviance with the exact
Hessian (the covariance that HESSE estimates), started from the template's parameters; a toy fit
that does not converge is redone with :func:`fit_dijet`. Its Z agrees with the Minuit path (which
stops at EDM < 2e-4 and estimates the Hessian numerically) to < 2e-3 in 90% of the fits and < 0.02
wherever at least one event is predicted (tested; reported per call as ``fitter_max_dz``).
Further approximations: the toys are a parametric bootstrap (the template's parameters are fixed,
not drawn from their uncertainty), and each selection's background m_jj is assumed to follow the
dijet function (a selection that sculpts m_jj fails its own sideband fit, in data and toys alike).

**Sparse fits.** Where a selection leaves only a few events at high mass, the fit can dive into
empty bins above the SR and predict almost nothing in it (e.g. 5 observed over 0.01): a large local
Z that the asymptotic formulae do not describe. A (window, selection) whose fitted SR background is
below ``min_background`` (5 events) is therefore not tested (Z NaN), in the data and in every toy
alike, so the test statistic stays the same for both. Measured on background-only toys (30k
events, default scan, 2000 toys): without it P(local Z > 3) reaches 2.5% in the last window at
0.5% (nominal 0.13%) and the trials factor at local Z = 3.5 is 182 for 60 tests; with it every test
is within 1-3x nominal and the trials factor is 91 (58 tests).

The global p-value is the Monte-Carlo estimate ``(k + 1) / (toys + 1)`` (``k`` toys whose largest
local Z reaches the observed one; valid, i.e. uniform or conservative under the background-only
hypothesis, at any number of toys), raised to the local p-value where it is below it, so that the
global Z never exceeds the local Z. When no toy reaches the observed Z (``limited_by_toys``), the
global p is only resolved to ``1 / (toys + 1)`` and the global Z is a lower bound: raise ``toys``
(about 2-5 ms per toy for 10 windows x 6 selections on two shared cores). No asymptotic shortcut
(e.g. a Bonferroni bound ``n_tests * p_local``) is used: the local p-values are not calibrated
enough for it (the trials factors above exceed the number of tests); the toys, scanned like the
data, pay for that.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import xlogy
from scipy.stats import norm

from lhcad.evaluate.selection import select_at_efficiency
from lhcad.stats.fits import SQRT_S, BinnedFit, _DijetModel, dijet_prediction, fit_dijet
from lhcad.stats.significance import profile_likelihood_z
from lhcad.windows import MassWindows, scan_windows

__all__ = [
    "BestWindow",
    "GlobalResult",
    "ScanResult",
    "WindowBins",
    "WindowScan",
    "global_significance",
    "profile_likelihood_z_array",
]

logger = logging.getLogger(__name__)

NAN = float("nan")
DEFAULT_EFFICIENCIES = (0.1, 0.05, 0.03, 0.01, 0.005)
_CONFIG_KEYS = frozenset(
    {"start", "stop", "half_width", "step", "sideband", "grid", "fit_range", "bin_width", "fit_span",
     "n_params", "min_background", "efficiencies", "toys", "seed"}
)  # fmt: skip


def _selection_key(efficiency: float | None) -> str:
    return "none" if efficiency is None else f"eff_{efficiency:g}"


# ------------------------------------------------------------------------------------------- binning


@dataclass(frozen=True)
class WindowBins:
    """The fit histogram of one window, as a rebinning of the scan's fine grid.

    Attributes:
        edges: fit bin edges (GeV), on the fine grid.
        sr: per fit bin, True inside the signal region (masked in the fit).
        fine: the fine bins covered by the fit range.
        starts: first fine bin of each fit bin, counted from ``fine.start`` (``np.add.reduceat``).
    """

    edges: np.ndarray
    sr: np.ndarray
    fine: slice
    starts: np.ndarray

    def rebin(self, fine_counts: np.ndarray) -> np.ndarray:
        """Fit-bin counts from fine-grid counts (last axis; any leading axes, e.g. toys)."""
        return np.add.reduceat(fine_counts[..., self.fine], self.starts, axis=-1)


def _side(inner: int, outer: int, k: int) -> list[int]:
    """Fine-grid edges from ``inner`` towards ``outer`` in steps of ``k``, ending at ``outer``; a
    last bin narrower than half a step is merged into its neighbour."""
    direction = 1 if outer > inner else -1
    edges = list(range(inner, outer, direction * k)) + [outer]
    if len(edges) > 2 and abs(edges[-1] - edges[-2]) < k / 2:
        del edges[-2]
    return edges


def _window_bins(
    window: MassWindows, fine_edges: np.ndarray, k: int, fit_span: float | None
) -> WindowBins:
    grid = fine_edges[1] - fine_edges[0]
    n_fine = len(fine_edges) - 1
    lo, hi = window.signal_region
    a, b = (round((v - fine_edges[0]) / grid) for v in (lo, hi))
    if not np.allclose((fine_edges[0] + a * grid, fine_edges[0] + b * grid), (lo, hi)):
        logger.warning("window %s is not on the %g GeV grid; its SR is snapped to it", window, grid)
    first, last = 0, n_fine
    if fit_span is not None:
        span = fit_span * window.centre / grid
        first, last = max(0, round(a - span)), min(n_fine, round(b + span))
    margin = max(1, k // 2)
    if not (first + margin <= a < b <= last - margin):
        raise ValueError(
            f"the signal region {window.signal_region} must lie inside the fit range "
            f"[{fine_edges[first]:g}, {fine_edges[last]:g}] GeV with at least half a fit bin "
            f"({margin * grid:g} GeV) on both sides; move the scan's start/stop or widen the fit range"
        )
    low = _side(a, first, k)[::-1]
    high = _side(b, last, k)
    n_sr = max(1, round((b - a) / k))
    inner = [a + round(j * (b - a) / n_sr) for j in range(n_sr + 1)]
    idx = np.array(low[:-1] + inner + high[1:])
    sr = np.zeros(len(idx) - 1, bool)
    sr[len(low) - 1 : len(low) - 1 + n_sr] = True
    return WindowBins(edges=fine_edges[idx], sr=sr, fine=slice(first, last), starts=idx[:-1] - first)


def _fine_index(mjj: np.ndarray, fine_edges: np.ndarray) -> np.ndarray:
    """Fine-grid bin of every event (-1 outside ``[edges[0], edges[-1])``)."""
    idx = np.searchsorted(fine_edges, mjj, side="right") - 1
    idx[(mjj < fine_edges[0]) | (mjj >= fine_edges[-1])] = -1
    return idx


def _fine_histogram(fine_idx: np.ndarray, mask: np.ndarray | None, n_bins: int) -> np.ndarray:
    """Counts per fine bin of the selected events (``mask`` None: all events)."""
    idx = fine_idx if mask is None else fine_idx[mask]
    return np.bincount(idx[idx >= 0], minlength=n_bins).astype(np.float64)


# ------------------------------------------------------------------------------------------- the scan


class BestWindow(NamedTuple):
    """The most significant (window, selection) of a scan."""

    index: int
    window: MassWindows
    key: str
    efficiency: float
    z: float


@dataclass(frozen=True, eq=False)
class ScanResult:
    """Local significances of a window scan; arrays are indexed ``[window, selection]``.

    Attributes:
        scan: the scan that made it.
        keys: selection keys, ``none`` first, then ``eff_<e>`` in the scan's order.
        efficiencies: the selections' efficiencies (1.0 for ``none``).
        local_z: profile-likelihood Z of the SR count (NaN where the fit failed).
        n_obs, n_pred, n_pred_unc: observed SR count, fitted prediction and its uncertainty.
        n_signal: true signal events in the SR (NaN without labels).
        chi2ndf: Poisson deviance / ndf of the sideband fit.
        fit_valid: the sideband fit converged with an accurate covariance.
        fits: the sideband fits.
        window_dependent: the selections differ per window (scores given per window).
        fine_counts: the m_jj histogram of every distinct selection on the fine grid, shape
            (selections, fine bins); ``group[w, s]`` says which one a (window, selection) uses and
            ``parent[g]`` the selection that ``g`` is nested in (-1: none, drawn independently).
        n_fits: fits made (windows x selections).
        seconds: wall time of the scan.
    """

    scan: WindowScan
    keys: tuple[str, ...]
    efficiencies: tuple[float, ...]
    local_z: np.ndarray
    n_obs: np.ndarray
    n_pred: np.ndarray
    n_pred_unc: np.ndarray
    n_signal: np.ndarray
    chi2ndf: np.ndarray
    fit_valid: np.ndarray
    fits: tuple[tuple[BinnedFit, ...], ...] = field(repr=False)
    window_dependent: bool
    fine_counts: np.ndarray = field(repr=False)
    group: np.ndarray = field(repr=False)
    parent: np.ndarray = field(repr=False)
    n_fits: int
    seconds: float
    has_labels: bool = False

    @property
    def windows(self) -> tuple[MassWindows, ...]:
        return self.scan.windows

    @property
    def centres(self) -> np.ndarray:
        """Window centres (GeV)."""
        return np.array([w.centre for w in self.windows])

    @property
    def n_tests(self) -> int:
        """(window, selection) pairs with a finite local Z."""
        return int(np.sum(np.isfinite(self.local_z)))

    @property
    def best(self) -> BestWindow | None:
        """The largest local Z (first on ties); None when no fit succeeded."""
        if not np.any(np.isfinite(self.local_z)):
            return None
        w, s = np.unravel_index(int(np.nanargmax(self.local_z)), self.local_z.shape)
        z = float(self.local_z[w, s])
        return BestWindow(int(w), self.windows[w], self.keys[s], self.efficiencies[s], z)

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row per (window, selection)."""
        rows = []
        for w, window in enumerate(self.windows):
            for s, key in enumerate(self.keys):
                rows.append({
                    "window": w, "centre": window.centre, "sr_low": window.signal_region[0],
                    "sr_high": window.signal_region[1], "selection": key, "efficiency": self.efficiencies[s],
                    "z": float(self.local_z[w, s]), "n_obs": float(self.n_obs[w, s]),
                    "n_pred": float(self.n_pred[w, s]), "n_pred_unc": float(self.n_pred_unc[w, s]),
                    "n_signal": float(self.n_signal[w, s]), "chi2ndf": float(self.chi2ndf[w, s]),
                    "fit_valid": bool(self.fit_valid[w, s]),
                })  # fmt: skip
        return rows

    def metrics_by_window(self) -> list[tuple[int, dict[str, float]]]:
        """``(step, metrics)`` per window, ``step`` = the window centre in GeV (an int, for MLflow).

        Keys (``K`` = ``none`` or ``eff_<e>``): ``sig_scan/K`` (local Z), ``scan_nsr_obs/K``,
        ``scan_nsr_pred/K``, ``scan_nsr_pred_unc/K``, ``scan_chi2ndf/K``, ``scan_fit_valid/K``,
        ``scan_nsr_signal/K`` (with labels only), and ``scan/sr_low``, ``scan/sr_high`` (GeV).
        """
        arrays = {"sig_scan": self.local_z, "scan_nsr_obs": self.n_obs, "scan_nsr_pred": self.n_pred,
                  "scan_nsr_pred_unc": self.n_pred_unc, "scan_chi2ndf": self.chi2ndf,
                  "scan_fit_valid": self.fit_valid.astype(float)}  # fmt: skip
        if self.has_labels:
            arrays["scan_nsr_signal"] = self.n_signal
        rows = []
        for w, window in enumerate(self.windows):
            metrics = {
                f"{name}/{key}": float(a[w, s]) for name, a in arrays.items() for s, key in enumerate(self.keys)
            }
            metrics |= {"scan/sr_low": window.signal_region[0], "scan/sr_high": window.signal_region[1]}
            rows.append((round(window.centre), metrics))
        return rows

    def metrics(self) -> dict[str, float]:
        """Summary metrics (no step): the best window and selection, the largest local Z of each
        selection over windows (``sig_scan_max/K``), counts of fits and the scan's time."""
        best = self.best
        out = {
            "scan/best_z": best.z if best else NAN,
            "scan/best_mass": best.window.centre if best else NAN,
            "scan/best_sr_low": best.window.signal_region[0] if best else NAN,
            "scan/best_sr_high": best.window.signal_region[1] if best else NAN,
            "scan/best_efficiency": best.efficiency if best else NAN,
            "scan/n_windows": float(len(self.windows)),
            "scan/n_fits": float(self.n_fits),
            "scan/n_fits_failed": float(np.sum(~self.fit_valid)),
            "scan/time_s": self.seconds,
        }
        for s, key in enumerate(self.keys):
            column = self.local_z[:, s]
            out[f"sig_scan_max/{key}"] = float(np.nanmax(column)) if np.any(np.isfinite(column)) else NAN
        return out


def _check_mjj(mjj: ArrayLike) -> np.ndarray:
    m = np.asarray(mjj, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"m_jj must be 1-D, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{int(np.sum(~np.isfinite(m)))} of {len(m)} m_jj values are NaN or infinite")
    return m


def _score_array(scores: Any, n: int | None) -> np.ndarray:
    """The event scores of an array or :class:`lhcad.scores.Scores` (``n`` of them unless None)."""
    s = np.asarray(getattr(scores, "event", scores), dtype=np.float64)
    if s.ndim != 1 or (n is not None and len(s) != n):
        raise ValueError(f"need one score per event ({n}), got shape {s.shape}")
    return s


def _is_per_window(scores: Any) -> bool:
    if isinstance(scores, Mapping):
        return True
    if isinstance(scores, np.ndarray):
        return scores.ndim == 2
    if isinstance(scores, (list, tuple)) and scores:
        return hasattr(scores[0], "__len__") or hasattr(scores[0], "event")
    return False


@dataclass
class WindowScan:
    """A window scan of the dijet-function bump hunt (module docstring); settings in GeV.

    Args:
        windows: the signal-region hypotheses (:func:`lhcad.windows.scan_windows`).
        efficiencies: selections (top fractions by score) scanned besides ``none``.
        fit_range: m_jj range of the fits; a whole number of ``grid`` bins.
        bin_width: fit bin width (a multiple of ``grid``).
        grid: fine-grid bin width; windows are snapped to it.
        fit_span: None: fit the whole ``fit_range`` for every window; a number: fit
            ``SR +- fit_span * centre`` clipped to ``fit_range``.
        n_params: dijet-function parameters (3 or 4).
        min_background: a (window, selection) whose fitted SR background is below this many events
            is not tested (Z NaN), in the data and in the toys alike (module docstring).
        toys, seed: defaults of :meth:`global_significance`.
    """

    windows: Sequence[MassWindows]
    efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES
    fit_range: Sequence[float] = (2800.0, 5800.0)
    bin_width: float = 100.0
    grid: float = 10.0
    fit_span: float | None = None
    n_params: int = 4
    min_background: float = 5.0
    toys: int = 200
    seed: int = 0
    fine_edges: np.ndarray = field(init=False, repr=False)
    fit_bins: tuple[WindowBins, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.windows = tuple(self.windows)
        if not self.windows:
            raise ValueError("the scan needs at least one window")
        self.efficiencies = tuple(float(e) for e in self.efficiencies)
        effs = self.efficiencies
        if any(not 0.0 < e < 1.0 for e in effs) or len(set(effs)) != len(effs):
            raise ValueError(f"efficiencies must be distinct and in (0, 1), got {self.efficiencies}")
        lo, hi = (float(v) for v in self.fit_range)
        self.fit_range = (lo, hi)
        grid, width = float(self.grid), float(self.bin_width)
        n_fine = round((hi - lo) / grid) if grid > 0 else 0
        k = round(width / grid) if grid > 0 else 0
        if not (lo < hi and n_fine >= 2 and math.isclose(n_fine * grid, hi - lo) and k >= 1
                and math.isclose(k * grid, width)):  # fmt: skip
            raise ValueError(
                f"need fit_range low < high spanning a whole number of grid bins and bin_width a multiple of "
                f"grid, got fit_range={self.fit_range}, grid={self.grid}, bin_width={self.bin_width}"
            )
        if self.fit_span is not None and not float(self.fit_span) > 0:
            raise ValueError(f"fit_span must be positive or None, got {self.fit_span}")
        if self.n_params not in (3, 4):
            raise ValueError(f"n_params must be 3 or 4, got {self.n_params}")
        if not float(self.min_background) >= 0:
            raise ValueError(f"min_background must be >= 0 events, got {self.min_background}")
        if int(self.toys) < 1:
            raise ValueError(f"toys must be >= 1, got {self.toys}")
        self.fine_edges = lo + grid * np.arange(n_fine + 1)
        span = None if self.fit_span is None else float(self.fit_span)
        self.fit_bins = tuple(_window_bins(w, self.fine_edges, k, span) for w in self.windows)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> WindowScan:
        """From the ``search.scan`` block (conf/search/scan.yaml): window settings (``start``,
        ``stop``, ``half_width``, ``step``, ``sideband``, ``grid``; see
        :func:`lhcad.windows.scan_windows`), ``fit_range``, ``bin_width``, ``fit_span``,
        ``n_params``, ``min_background``, ``efficiencies``, ``toys`` and ``seed``; unknown keys are
        refused."""
        unknown = set(cfg) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown search.scan keys {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        get = cfg.get
        grid = get("grid", 10.0)
        windows = scan_windows(
            start=get("start", 3100.0), stop=get("stop", 5400.0), half_width=get("half_width", 0.06),
            step=get("step"), sideband=get("sideband"), grid=grid,
        )  # fmt: skip
        span = get("fit_span")
        return cls(
            windows=windows,
            efficiencies=tuple(float(e) for e in get("efficiencies", DEFAULT_EFFICIENCIES)),
            fit_range=tuple(float(v) for v in get("fit_range", (2800.0, 5800.0))),
            bin_width=float(get("bin_width", 100.0)),
            grid=float(grid),
            fit_span=None if span is None else float(span),
            n_params=int(get("n_params", 4)),
            min_background=float(get("min_background", 5.0)),
            toys=int(get("toys", 200)),
            seed=int(get("seed", 0)),
        )

    @property
    def keys(self) -> tuple[str, ...]:
        """Selection keys: ``none``, then ``eff_<e>``."""
        return ("none", *(_selection_key(e) for e in self.efficiencies))

    def run(
        self,
        mjj: ArrayLike,
        scores: Any,
        labels: ArrayLike | None = None,
        reference: Any = None,
    ) -> ScanResult:
        """Scan with selections at the scan's efficiencies.

        Args:
            mjj: m_jj of the test events (GeV).
            scores: window-independent methods: one score array (or :class:`lhcad.scores.Scores`)
                for every window. Window-dependent methods: one per window, as a sequence aligned
                with :attr:`windows` (or a 2-D array) or a mapping window (or its index) -> scores.
            labels: truth labels (1 = signal) for the ``n_signal`` counts; optional.
            reference: scores of a reference sample, shaped like ``scores``: the cuts keep each
                efficiency of it (:func:`lhcad.evaluate.selection.select_at_efficiency`; the
                background-only closure).
        """
        m = _check_mjj(mjj)
        if not _is_per_window(scores):
            s = _score_array(scores, len(m))
            ref = None if reference is None else _score_array(reference, None)
            return self.run_masks(m, {e: select_at_efficiency(s, e, ref) for e in self.efficiencies}, labels)
        per_window = self._per_window(scores, "scores")
        refs = [None] * len(self.windows) if reference is None else self._per_window(reference, "reference")
        masks = []
        for s, ref in zip(per_window, refs):
            s = _score_array(s, len(m))
            ref = None if ref is None else _score_array(ref, None)
            masks.append({e: select_at_efficiency(s, e, ref) for e in self.efficiencies})
        return self.run_masks(m, masks, labels)

    def _per_window(self, scores: Any, what: str) -> list[Any]:
        if isinstance(scores, Mapping):
            missing = [w for i, w in enumerate(self.windows) if w not in scores and i not in scores]
            if missing:
                raise ValueError(f"{what} per window: {len(missing)} of the {len(self.windows)} windows missing")
            return [scores[w] if w in scores else scores[i] for i, w in enumerate(self.windows)]
        out = list(scores)
        if len(out) != len(self.windows):
            raise ValueError(f"{what} per window: got {len(out)} for {len(self.windows)} windows")
        return out

    def run_masks(
        self,
        mjj: ArrayLike,
        masks: Mapping[float, ArrayLike] | Sequence[Mapping[float, ArrayLike]],
        labels: ArrayLike | None = None,
    ) -> ScanResult:
        """Scan given the selections: ``{efficiency: mask}`` shared by every window, or a sequence of
        such mappings, one per window. ``none`` (all events) is added."""
        start = time.perf_counter()
        m = _check_mjj(mjj)
        window_dependent = not isinstance(masks, Mapping)
        sets = self._per_window(masks, "masks") if window_dependent else [masks] * len(self.windows)
        checked: dict[int, np.ndarray] = {}  # one array per distinct mask object

        def as_mask(value: ArrayLike) -> np.ndarray:
            if id(value) not in checked:
                a = np.asarray(value)
                if a.shape != m.shape or a.dtype != bool:
                    raise ValueError(f"a selection mask must be boolean, one entry per event; got {a.dtype} {a.shape}")
                checked[id(value)] = a
            return checked[id(value)]

        per_window: list[list[np.ndarray | None]] = []
        for selections in sets:
            by_eff = {float(e): v for e, v in selections.items()}
            if set(by_eff) != set(self.efficiencies):
                raise ValueError(f"masks must be at the scan's efficiencies {self.efficiencies}, got {sorted(by_eff)}")
            per_window.append([None, *(as_mask(by_eff[e]) for e in self.efficiencies)])
        y = None if labels is None else np.asarray(labels)
        if y is not None and y.shape != m.shape:
            raise ValueError(f"need one label per event ({len(m)}), got shape {y.shape}")
        return self._scan(m, per_window, y, window_dependent, start)

    def _scan(
        self,
        mjj: np.ndarray,
        per_window: list[list[np.ndarray | None]],
        labels: np.ndarray | None,
        window_dependent: bool,
        start: float,
    ) -> ScanResult:
        n_w, n_s = len(self.windows), 1 + len(self.efficiencies)
        n_fine = len(self.fine_edges) - 1
        fine_idx = _fine_index(mjj, self.fine_edges)
        # distinct selections (by object): window-independent scans share them across windows
        ids: dict[int, int] = {}
        masks: list[np.ndarray | None] = []
        group = np.empty((n_w, n_s), int)
        for w, selections in enumerate(per_window):
            for s, mask in enumerate(selections):
                gid = ids.setdefault(id(mask), len(masks))
                if gid == len(masks):
                    masks.append(mask)
                group[w, s] = gid
        fine = np.stack([_fine_histogram(fine_idx, mask, n_fine) for mask in masks])
        signal = None
        if labels is not None:
            is_signal = labels == 1
            signal = np.stack([_fine_histogram(fine_idx, is_signal if mk is None else mk & is_signal, n_fine)
                               for mk in masks])  # fmt: skip
        parent = _nesting(masks, group, (1.0, *self.efficiencies))

        shape = (n_w, n_s)
        z, n_obs, b, sigma_b, n_sig, chi2 = (np.full(shape, NAN) for _ in range(6))
        valid = np.zeros(shape, bool)
        fits: list[tuple[BinnedFit, ...]] = []
        for w, bins in enumerate(self.fit_bins):
            row = []
            for s in range(n_s):
                counts = bins.rebin(fine[group[w, s]])
                fit = fit_dijet(counts, bins.edges, mask=bins.sr, n_params=self.n_params)
                row.append(fit)
                n_obs[w, s] = counts[bins.sr].sum()
                if signal is not None:
                    n_sig[w, s] = bins.rebin(signal[group[w, s]])[bins.sr].sum()
                valid[w, s] = fit.valid
                if not fit.valid:
                    logger.warning("scan window %s @ %s: fit failed (%s); Z is NaN", self.windows[w].signal_region,
                                   self.keys[s], fit.message)  # fmt: skip
                    continue
                b[w, s], sigma_b[w, s] = dijet_prediction(fit, bins.sr)
                if b[w, s] >= self.min_background:  # else not tested: Z NaN (debug log)
                    z[w, s] = profile_likelihood_z(n_obs[w, s], b[w, s], sigma_b[w, s])
                else:
                    logger.debug("scan window %s @ %s: %.3g background events predicted in the SR, below "
                                 "min_background; not tested", self.windows[w].signal_region, self.keys[s], b[w, s])
                chi2[w, s] = fit.deviance / fit.ndf if fit.ndf > 0 else NAN
            fits.append(tuple(row))
        return ScanResult(
            scan=self, keys=self.keys, efficiencies=(1.0, *self.efficiencies), local_z=z, n_obs=n_obs, n_pred=b,
            n_pred_unc=sigma_b, n_signal=n_sig, chi2ndf=chi2, fit_valid=valid, fits=tuple(fits),
            window_dependent=window_dependent, fine_counts=fine, group=group, parent=parent, n_fits=n_w * n_s,
            seconds=time.perf_counter() - start, has_labels=labels is not None,
        )  # fmt: skip

    def global_significance(self, result: ScanResult) -> GlobalResult:
        """:func:`global_significance` with this scan's ``toys`` and ``seed``."""
        return global_significance(result, toys=self.toys, seed=self.seed)


def _nesting(
    masks: list[np.ndarray | None], group: np.ndarray, efficiencies: tuple[float, ...]
) -> np.ndarray:
    """Per distinct selection, the one it is nested in (the next larger efficiency of its window),
    or -1 where that is ambiguous (shared by several windows with different parents, or a parent
    with several children) or the masks are not nested."""
    order = np.argsort(efficiencies, kind="stable")  # ascending: the smallest selection first
    candidates: dict[int, set[int]] = {}
    for w in range(group.shape[0]):
        for small, large in zip(order[:-1], order[1:]):
            candidates.setdefault(int(group[w, small]), set()).add(int(group[w, large]))
    children: dict[int, set[int]] = {}
    for g, parents in candidates.items():
        for p in parents:
            children.setdefault(p, set()).add(g)
    parent = np.full(len(masks), -1)
    for g, parents in candidates.items():
        if len(parents) != 1:
            continue
        (p,) = parents
        if p == g or len(children[p]) != 1:
            continue
        inner, outer = masks[g], masks[p]
        if outer is None or (inner is not None and not np.any(inner & ~outer)):
            parent[g] = p
    return parent


# ------------------------------------------------------------------------------------------- vectorised fits


def profile_likelihood_z_array(n: ArrayLike, b: ArrayLike, sigma_b: ArrayLike) -> np.ndarray:
    """:func:`lhcad.stats.profile_likelihood_z` element-wise (paper 003, eqs. 2.5-2.6)."""
    n, b, s = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (n, b, sigma_b)))
    ok = np.isfinite(n) & np.isfinite(b) & np.isfinite(s) & (n >= 0) & (b > 0) & (s >= 0)
    n_, b_, s_ = np.where(ok, n, 1.0), np.where(ok, b, 1.0), np.where(ok, s, 0.0)
    s2 = s_ * s_
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(s2 > 0, 0.5 * (b_ - s2 + np.sqrt((s2 - b_) ** 2 + 4.0 * n_ * s2)), b_)
        penalty = np.where(s2 > 0, (u - b_) ** 2 / (2.0 * np.where(s2 > 0, s2, 1.0)), 0.0)
        # log L1 - log L0 = n ln(n/u) - n + u + penalty
        q0 = 2.0 * (xlogy(n_, n_) - xlogy(n_, u) - n_ + u + penalty)
    q0 = np.where(n_ > b_, np.maximum(q0, 0.0), 0.0)
    return np.where(ok, np.sqrt(q0), np.nan)


class _BatchFitter:
    """Dijet fits of many histograms of one window at once: Newton steps on the Poisson deviance
    with the exact Hessian, in the orthonormal parameters of :class:`lhcad.stats.fits._DijetModel`."""

    def __init__(self, bins: WindowBins, n_params: int, min_background: float) -> None:
        self.min_background = min_background
        model = _DijetModel(bins.edges, n_params, SQRT_S)
        self.design = model.design  # (bins, 3 nodes, params)
        self.outer = np.einsum("bkp,bkq->bkpq", model.design, model.design)
        self.weights = model.weights
        self.to_orthonormal = np.linalg.inv(model.to_physical)
        self.used, self.sr = ~bins.sr, bins.sr
        self.n_params = n_params

    def _evaluate(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nodes = self.weights * np.exp(np.clip(np.einsum("bkp,mp->mbk", self.design, theta), -700.0, 700.0))
        return nodes, np.maximum(nodes.sum(axis=-1), 1e-300)

    def _deviance(self, n: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Poisson deviance over the used bins, without its constant ``2 sum(n ln n - n)``."""
        return 2.0 * np.sum(self.used * (mu - xlogy(n, mu)), axis=-1)

    def _derivatives(self, n: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        nodes, mu = self._evaluate(theta)
        jac = np.einsum("mbk,bkp->mbp", nodes, self.design)  # d mu / d theta
        r = self.used * (1.0 - n / mu)
        grad = 2.0 * np.einsum("mb,mbp->mp", r, jac)
        hess = 2.0 * (
            np.einsum("mbk,bkpq->mpq", nodes * r[..., None], self.outer)
            + np.einsum("mb,mbp,mbq->mpq", self.used * n / mu**2, jac, jac)
        )
        return mu, jac, grad, hess

    def fit(
        self, counts: np.ndarray, start: np.ndarray, max_iter: int = 50, tol: float = 1e-9
    ) -> tuple[np.ndarray, ...]:
        """Z, observed SR count, prediction, its uncertainty and a converged flag per histogram.

        ``counts`` (histograms, bins); ``start`` (histograms, params): physical parameters
        ``(log_p0, p1, p2, p3)``, e.g. the template fit's.
        """
        n = np.asarray(counts, np.float64)
        theta = np.asarray(start, np.float64) @ self.to_orthonormal.T
        converged = np.zeros(len(n), bool)
        active = np.isfinite(theta).all(axis=1)
        for _ in range(max_iter):
            idx = np.flatnonzero(active)
            if not len(idx):
                break
            nn, th = n[idx], theta[idx]
            mu, _, grad, hess = self._derivatives(nn, th)
            bad = ~(np.isfinite(hess).all(axis=(1, 2)) & np.isfinite(grad).all(axis=1))
            if bad.any():  # overflowed: stop those (not converged: refitted with Minuit)
                active[idx[bad]] = False
                continue
            dev = self._deviance(nn, mu)
            # Newton step on |eigenvalues| (a descent direction even off the convex region)
            evals, evecs = np.linalg.eigh(hess)
            size = np.abs(evals)
            scale = np.maximum(size, 1e-10 * np.maximum(size.max(axis=1, keepdims=True), 1e-300))
            step = np.einsum("mpq,mq->mp", evecs, np.einsum("mqp,mq->mp", evecs, grad) / scale)
            decrement = np.einsum("mp,mp->m", grad, step)  # = Minuit's EDM (errordef 1) at a PD minimum
            done = (decrement < tol) & (evals[:, 0] > 0)
            converged[idx[done]] = True
            active[idx[done]] = False
            todo = ~done & np.isfinite(decrement)
            active[idx[~np.isfinite(decrement)]] = False
            t = np.ones(len(idx))
            pending = todo.copy()
            for _ in range(40):  # backtracking (Armijo) line search
                if not pending.any():
                    break
                trial = th[pending] - t[pending, None] * step[pending]
                _, mu_new = self._evaluate(trial)
                armijo = dev[pending] - 1e-4 * t[pending] * decrement[pending]
                better = self._deviance(nn[pending], mu_new) <= armijo
                where = np.flatnonzero(pending)
                theta[idx[where[better]]] = trial[better]
                pending[where[better]] = False
                t[where[~better]] *= 0.5
            active[idx[pending]] = False  # no decrease found: stop (converged stays False)
        mu, jac, grad, hess = self._derivatives(n, theta)
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = 2.0 * np.linalg.inv(np.where(converged[:, None, None], hess, np.eye(self.n_params)))
        grad_b = jac[:, self.sr].sum(axis=1)
        var = np.einsum("mp,mpq,mq->m", grad_b, cov, grad_b)
        filled = np.sum((n > 0) & self.used, axis=1) >= self.n_params + 1  # as fit_dijet requires
        ok = converged & filled & np.isfinite(var) & (var >= 0)
        n_obs = n[:, self.sr].sum(axis=1)
        b = mu[:, self.sr].sum(axis=1)
        z = profile_likelihood_z_array(n_obs, b, np.sqrt(np.where(ok, var, 0.0)))
        z = np.where(ok & (b >= self.min_background), z, NAN)
        return z, n_obs, b, np.sqrt(np.where(ok, var, NAN)), converged & filled


def _minuit_z(counts: np.ndarray, bins: WindowBins, n_params: int, min_background: float) -> tuple[float, bool]:
    """Z of the Minuit path for one histogram, and whether the fit is valid."""
    fit = fit_dijet(counts, bins.edges, mask=bins.sr, n_params=n_params)
    if not fit.valid:
        return NAN, False
    b, sigma_b = dijet_prediction(fit, bins.sr)
    return (profile_likelihood_z(float(counts[bins.sr].sum()), b, sigma_b) if b >= min_background else NAN), True


def _templates(result: ScanResult) -> tuple[np.ndarray, np.ndarray]:
    """Background-only template of every distinct selection: physical parameters (selections,
    params; NaN without a valid fit) and expected counts on the fine grid (selections, fine bins).

    The template is the sideband fit (SR masked) of the window where the selection is most
    significant, so that a signal there does not enter the toys.
    """
    n_groups = len(result.fine_counts)
    n_params = result.scan.n_params
    params = np.full((n_groups, n_params), NAN)
    best = np.full(n_groups, -np.inf)
    for w in range(len(result.windows)):
        for s in range(len(result.keys)):
            g, fit = result.group[w, s], result.fits[w][s]
            z = result.local_z[w, s]
            rank = z if np.isfinite(z) else -1.0  # a valid fit without a test still makes a template
            if fit.valid and rank > best[g]:
                best[g], params[g] = rank, fit.params
    model = _DijetModel(result.scan.fine_edges, n_params, SQRT_S)
    to_orthonormal = np.linalg.inv(model.to_physical)
    expected = np.zeros((n_groups, len(result.scan.fine_edges) - 1))
    for g in range(n_groups):
        if np.all(np.isfinite(params[g])):
            expected[g] = model(to_orthonormal @ params[g])
    return params, expected


def _fit_all(
    result: ScanResult, fine: np.ndarray, params: np.ndarray, fitters: Sequence[_BatchFitter]
) -> tuple[np.ndarray, int, int, int]:
    """Local Z of every (toy, window, selection) from fine-grid toy counts (toys, selections, fine
    bins); returns Z (toys, windows, selections) and the numbers of fits, Minuit refits and failed
    fits. A selection without a template (no valid fit on the data) is not fitted (NaN)."""
    n_toys = fine.shape[0]
    n_w, n_s = result.group.shape
    z = np.full((n_toys, n_w, n_s), NAN)
    fits = refits = failed = 0
    for w, (bins, fitter) in enumerate(zip(result.scan.fit_bins, fitters)):
        groups = result.group[w]
        has_template = np.isfinite(params[groups]).all(axis=1)
        if not has_template.any():
            continue
        cols = np.flatnonzero(has_template)
        counts = bins.rebin(fine[:, groups[cols]])  # (toys, selections, bins)
        start = np.broadcast_to(params[groups[cols]], (n_toys, len(cols), params.shape[1]))
        zz, *_, ok = fitter.fit(counts.reshape(-1, counts.shape[-1]), start.reshape(-1, params.shape[1]))
        zz = zz.reshape(n_toys, len(cols))
        fits += zz.size
        for t, c in zip(*np.nonzero(~ok.reshape(n_toys, len(cols)))):
            refits += 1
            zz[t, c], valid = _minuit_z(counts[t, c], bins, result.scan.n_params, result.scan.min_background)
            failed += int(not valid)
        z[:, w, cols] = zz
    return z, fits, refits, failed


def _fitters(scan: WindowScan) -> list[_BatchFitter]:
    return [_BatchFitter(bins, scan.n_params, scan.min_background) for bins in scan.fit_bins]


def _batched_local_z(result: ScanResult) -> np.ndarray:
    """The observed local Z recomputed with the toys' fitter (started from the templates)."""
    params, _ = _templates(result)
    fitters = _fitters(result.scan)
    return _fit_all(result, result.fine_counts[None], params, fitters)[0][0]


def _draw(rng: np.random.Generator, expected: np.ndarray, parent: np.ndarray, n_toys: int) -> np.ndarray:
    """Poisson toys on the fine grid (toys, selections, fine bins); nested selections get nested
    toys (the smallest drawn, each larger one adding a Poisson increment)."""
    n_groups = len(expected)
    child = np.full(n_groups, -1)
    for g, p in enumerate(parent):
        if p >= 0:
            child[p] = g
    out = np.empty((n_toys, *expected.shape))
    for leaf in np.flatnonzero(child < 0):
        g, inner = int(leaf), -1
        while g >= 0:
            if inner < 0:
                out[:, g] = rng.poisson(expected[g], size=(n_toys, expected.shape[1]))
            else:
                increment = np.maximum(expected[g] - expected[inner], 0.0)
                out[:, g] = out[:, inner] + rng.poisson(increment, size=(n_toys, expected.shape[1]))
            g, inner = int(parent[g]), g
    return out


@dataclass(frozen=True, eq=False)
class GlobalResult:
    """Global significance of a scan's most significant (window, selection).

    Attributes:
        p: global p-value, ``max(p_toys, p_local)``.
        z: global Z, ``Phi^-1(1 - p)`` (0 for p >= 0.5); never above ``z_local``.
        trials_factor: ``p / p_local``.
        p_local, z_local: the best local significance.
        p_toys: ``(n_exceed + 1) / (n_toys + 1)``.
        n_toys, n_exceed: pseudo-experiments, and those whose largest local Z reached ``z_local``.
        limited_by_toys: no toy reached ``z_local``: ``p`` is at most the toys' resolution
            ``1 / (n_toys + 1)``, so ``z`` is a lower bound (and ``trials_factor`` an upper one).
        n_tests: (window, selection) pairs with a finite local Z.
        toy_max_z: largest local Z of each pseudo-experiment.
        toy_fits, toy_refits, toy_failed: toy fits made, redone with Minuit, and failed (NaN Z).
        nested_windows: one toy spectrum per selection serves all windows (window-independent).
        independent_draws: chains of nested selections drawn independently of each other (1 for
            window-independent top-fraction selections; 1 + windows for window-dependent ones).
        fitter_max_dz: largest |Z| difference of the toys' fitter and the Minuit fit on the data.
        seconds: wall time.
    """

    p: float
    z: float
    trials_factor: float
    p_local: float
    z_local: float
    p_toys: float
    n_toys: int
    n_exceed: int
    limited_by_toys: bool
    n_tests: int
    toy_max_z: np.ndarray = field(repr=False)
    toy_fits: int
    toy_refits: int
    toy_failed: int
    nested_windows: bool
    independent_draws: int
    fitter_max_dz: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        """``scan/global_*`` metrics and ``scan/trials_factor``."""
        return {
            "scan/global_p": self.p,
            "scan/global_z": self.z,
            "scan/trials_factor": self.trials_factor,
            "scan/global_p_toys": self.p_toys,
            "scan/global_limited_by_toys": float(self.limited_by_toys),
            "scan/global_toys": float(self.n_toys),
            "scan/global_n_exceed": float(self.n_exceed),
            "scan/global_n_tests": float(self.n_tests),
            "scan/global_toy_failed": float(self.toy_failed),
            "scan/global_independent_draws": float(self.independent_draws),
            "scan/global_fitter_max_dz": self.fitter_max_dz,
            "scan/global_time_s": self.seconds,
        }


def global_significance(
    result: ScanResult, toys: int = 200, seed: int = 0, max_fits_per_batch: int = 20_000
) -> GlobalResult:
    """Global p-value, Z and trials factor of ``result.best`` from background-only toys (module docstring).

    Args:
        result: a scan.
        toys: pseudo-experiments; each is scanned over every window and selection.
        seed: seed of the Poisson draws.
        max_fits_per_batch: toys are drawn and fitted in batches of at most this many fits (memory).
    """
    start = time.perf_counter()
    toys = int(toys)
    if toys < 1:
        raise ValueError(f"toys must be >= 1, got {toys}")
    best = result.best
    n_tests = result.n_tests
    chains = len(result.parent) - int(np.sum(result.parent >= 0))
    if best is None:
        return GlobalResult(NAN, NAN, NAN, NAN, NAN, NAN, toys, 0, False, 0, np.full(toys, NAN), 0, 0, 0,
                            not result.window_dependent, chains, NAN, time.perf_counter() - start)  # fmt: skip
    params, expected = _templates(result)
    fitters = _fitters(result.scan)
    observed = _fit_all(result, result.fine_counts[None], params, fitters)[0]
    diff = np.abs(observed[0] - result.local_z)
    fitter_dz = float(np.nanmax(diff)) if np.any(np.isfinite(diff)) else NAN
    if fitter_dz > 0.05:
        logger.warning("the toys' fitter differs from Minuit by up to %.3g in local Z on the data", fitter_dz)

    rng = np.random.default_rng(seed)
    per_toy = result.local_z.size
    batch = max(1, max_fits_per_batch // per_toy)
    maxima, fits, refits, failed = [], 0, 0, 0
    for first in range(0, toys, batch):
        n = min(batch, toys - first)
        z, m, r, f = _fit_all(result, _draw(rng, expected, result.parent, n), params, fitters)
        fits, refits, failed = fits + m, refits + r, failed + f
        largest = np.where(np.isfinite(z), z, -np.inf).reshape(n, -1).max(axis=1)
        maxima.append(np.where(np.isfinite(largest), largest, 0.0))  # no valid fit in a toy: 0
    toy_max = np.concatenate(maxima)
    k = int(np.sum(toy_max >= best.z))
    p_local = float(norm.sf(best.z))
    p_toys = (k + 1) / (toys + 1)
    p = max(p_toys, p_local)
    z = max(0.0, float(norm.isf(p)))
    return GlobalResult(
        p=p, z=min(z, best.z), trials_factor=p / p_local if p_local > 0 else NAN, p_local=p_local, z_local=best.z,
        p_toys=p_toys, n_toys=toys, n_exceed=k, limited_by_toys=k == 0, n_tests=n_tests, toy_max_z=toy_max,
        toy_fits=fits, toy_refits=refits, toy_failed=failed, nested_windows=not result.window_dependent,
        independent_draws=chains, fitter_max_dz=fitter_dz, seconds=time.perf_counter() - start,
    )  # fmt: skip
