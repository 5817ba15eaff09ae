"""Anomaly scores of a set of events, and the per-jet -> event combination.

Bottom layer (shared value types): imports nothing from lhcad, so methods, the per-run evaluation
and the statistics all use these without depending on each other.

Per-jet methods give one score per jet; their event score is ``min(F1(s1), F2(s2))`` with ``Fj``
the empirical CDF of jet j's scores on a calibration sample, so that a cut on the event score at
efficiency e selects exactly "both jets above percentile X" (Tag N' Train, section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EmpiricalCDF", "Scores", "combine_jet_scores"]


@dataclass(frozen=True)
class Scores:
    """Anomaly scores of a set of events: larger = more signal-like.

    ``event`` is always set; ``jet1``/``jet2`` are set by per-jet methods (jet 1 as the inputs order
    the jets: the harder jet by default, see ``inputs.jet_order``).
    """

    event: np.ndarray
    jet1: np.ndarray | None = None
    jet2: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.event)
        for name in ("jet1", "jet2"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"Scores.{name} has {len(value)} entries but event has {n}")
        if (self.jet1 is None) != (self.jet2 is None):
            raise ValueError("per-jet Scores need both jet1 and jet2")
        for name in ("event", "jet1", "jet2"):
            value = getattr(self, name)
            if value is not None and not np.all(np.isfinite(value)):
                bad = int(np.sum(~np.isfinite(value)))
                raise FloatingPointError(
                    f"{bad} of {len(value)} {name} scores are NaN or infinite: the model diverged "
                    "(try a lower learning rate) or its inputs contain NaN"
                )

    @property
    def per_jet(self) -> bool:
        return self.jet1 is not None

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The non-empty score arrays by name (for saving as .npz)."""
        return {k: v for k, v in (("event", self.event), ("jet1", self.jet1), ("jet2", self.jet2)) if v is not None}


class EmpiricalCDF:
    """Empirical CDF of a reference sample: ``F(x)`` = fraction of reference values <= x."""

    def __init__(self, reference: np.ndarray) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.size == 0:
            raise ValueError("the reference sample of an empirical CDF is empty")
        self.sorted = np.sort(reference)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.sorted, np.asarray(x, dtype=np.float64), side="right") / len(self.sorted)


def combine_jet_scores(jet1: np.ndarray, jet2: np.ndarray, cdf1: EmpiricalCDF, cdf2: EmpiricalCDF) -> Scores:
    """Per-jet scores -> :class:`Scores` with event score ``min(F1(s1), F2(s2))``.

    Cutting the event score at x keeps exactly the events whose jets both have ``F > x``, i.e. both
    above their x-quantile on the calibration sample.
    """
    event = np.minimum(cdf1(jet1), cdf2(jet2))
    return Scores(event=event, jet1=np.asarray(jet1, np.float64), jet2=np.asarray(jet2, np.float64))
