"""m_jj windows of the sideband methods: signal region, sidebands, region codes and CWoLa weights.

Bottom layer (shared value types): imports nothing from lhcad, so the sideband methods
(:mod:`lhcad.methods.sideband`, :mod:`lhcad.methods.salad`) and the sideband reweighter
(:mod:`lhcad.methods.reweighting`) share them without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["OUTSIDE", "SB_HIGH", "SB_LOW", "SR", "MassWindows", "scan_windows", "sideband_weights"]

OUTSIDE, SR, SB_LOW, SB_HIGH = 0, 1, 2, 3
"""Region codes of :meth:`MassWindows.region`."""


def _interval(value: Sequence[float], what: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{what} must be an interval [low, high] with low < high, got {list(value)}")
    return lo, hi


@dataclass(frozen=True)
class MassWindows:
    """Signal region and the two sidebands in m_jj [GeV]; intervals are half-open ``[low, high)``."""

    signal_region: tuple[float, float]
    sideband_low: tuple[float, float]
    sideband_high: tuple[float, float]

    @classmethod
    def from_config(cls, signal_region: Sequence[float], sidebands: Sequence[Sequence[float]]) -> MassWindows:
        if len(sidebands) != 2:
            raise ValueError(f"give two sidebands, [[low, high], [low, high]] below and above the SR, got {sidebands}")
        sr = _interval(signal_region, "signal_region")
        low, high = sorted((_interval(sb, "a sideband") for sb in sidebands))
        if not (low[1] <= sr[0] and sr[1] <= high[0]):
            raise ValueError(
                f"sidebands {low} and {high} must lie below and above the signal region {sr} without overlapping it"
            )
        return cls(sr, low, high)

    @property
    def centre(self) -> float:
        """Middle of the signal region (GeV)."""
        return 0.5 * (self.signal_region[0] + self.signal_region[1])

    def widened(self, extension: float) -> MassWindows:
        """The same SR with each sideband extended outwards by ``extension`` GeV (SALAD's long sidebands)."""
        ext = float(extension)
        if ext < 0:
            raise ValueError(f"the sideband extension must be >= 0 GeV, got {ext:g}")
        lo, hi = self.sideband_low, self.sideband_high
        return MassWindows(self.signal_region, (lo[0] - ext, lo[1]), (hi[0], hi[1] + ext))

    def region(self, mjj: np.ndarray) -> np.ndarray:
        """Per-event region code: ``SR``, ``SB_LOW``, ``SB_HIGH`` or ``OUTSIDE`` (int8)."""
        m = np.asarray(mjj, np.float64)
        out = np.full(m.shape, OUTSIDE, np.int8)
        for code, (lo, hi) in ((SR, self.signal_region), (SB_LOW, self.sideband_low), (SB_HIGH, self.sideband_high)):
            out[(m >= lo) & (m < hi)] = code
        return out


def sideband_weights(region: np.ndarray, what: str = "data", base: np.ndarray | None = None) -> np.ndarray:
    """CWoLa weights of SR/SB events: SR events keep their ``base`` weight (default 1); each
    sideband is scaled to half the SR's total weight.

    Events outside the windows get weight 0.

    Raises:
        ValueError: the SR or one of the sidebands has no events.
    """
    region = np.asarray(region)
    base = np.ones(region.shape) if base is None else np.asarray(base, np.float64)
    totals = {code: float(base[region == code].sum()) for code in (SR, SB_LOW, SB_HIGH)}
    empty = [name for code, name in ((SR, "signal region"), (SB_LOW, "lower sideband"), (SB_HIGH, "upper sideband"))
             if totals[code] <= 0]
    if empty:
        raise ValueError(f"the {what} have no events in the {', '.join(empty)}; use more events or wider windows")
    w = np.zeros(region.shape, np.float64)
    w[region == SR] = base[region == SR]
    for code in (SB_LOW, SB_HIGH):
        w[region == code] = base[region == code] * totals[SR] / (2.0 * totals[code])
    return w


def scan_windows(
    start: float = 3100.0,
    stop: float = 5400.0,
    half_width: float = 0.06,
    step: float | None = None,
    sideband: float | None = None,
    grid: float | None = 10.0,
) -> list[MassWindows]:
    """Signal-region hypotheses of an m_jj scan, each with its two sidebands.

    Widths follow the dijet mass resolution, so everything is relative to the window's centre ``c``:

    * centres ``c_k = start * (1 + step)^k`` for all ``c_k <= stop`` (geometric: the same step in
      units of the resolution everywhere);
    * signal region ``[c (1 - half_width), c (1 + half_width)]`` (default +-6%, about the dijet mass
      resolution; at 3.5 TeV 3290-3710 GeV, close to the fixed default window 3.3-3.7 TeV);
    * sidebands of width ``sideband * c`` directly below and above the signal region.

    ``step`` defaults to ``half_width``: neighbouring signal regions then overlap by half their
    width, every mass lies in two windows, and a resonance is never more than a quarter of a window
    width (``step / 2`` relative) from the nearest centre. ``sideband`` defaults to ``half_width``
    (each sideband half as wide as the signal region, like the default 200 GeV around 400 GeV).
    Every edge is rounded to a multiple of ``grid`` GeV (None: no rounding), so that the windows
    fall on the edges of a fine histogram.

    Raises:
        ValueError: a non-positive or inconsistent setting, or a window that rounding empties.
    """
    step = half_width if step is None else step
    sideband = half_width if sideband is None else sideband
    start, stop, half_width, step, sideband = map(float, (start, stop, half_width, step, sideband))
    if not (0.0 < start <= stop and np.isfinite(stop)):
        raise ValueError(f"need 0 < start <= stop, got start={start:g}, stop={stop:g}")
    if not (0.0 < half_width < 1.0 and step > 0.0 and 0.0 < sideband and half_width + sideband < 1.0):
        raise ValueError(
            f"need 0 < half_width < 1, step > 0 and sideband > 0 with half_width + sideband < 1, "
            f"got half_width={half_width:g}, step={step:g}, sideband={sideband:g}"
        )
    if grid is not None and not float(grid) > 0.0:
        raise ValueError(f"grid must be positive (GeV) or None, got {grid}")

    def snap(value: float) -> float:
        return value if grid is None else float(round(value / float(grid)) * float(grid))

    n = int(np.floor(np.log(stop / start) / np.log1p(step) + 1e-9)) + 1
    windows = []
    for c in start * (1.0 + step) ** np.arange(n):
        lo, hi = snap(c * (1.0 - half_width)), snap(c * (1.0 + half_width))
        sb_lo, sb_hi = snap(c * (1.0 - half_width - sideband)), snap(c * (1.0 + half_width + sideband))
        if not sb_lo < lo < hi < sb_hi:
            raise ValueError(f"the window at {c:.0f} GeV is empty after rounding to {grid} GeV; use a finer grid")
        windows.append(MassWindows((lo, hi), (sb_lo, lo), (hi, sb_hi)))
    return windows
