"""k-fold scoring: every drawn event is scored by a model that never saw it.

The drawn sample is cut into ``k`` disjoint folds (:func:`fold_indices`); the pipeline fits the
method on the other ``k - 1`` folds and scores the held-out one. Scores of different fold models
are not comparable as they come (an autoencoder's loss scale, a classifier's calibration differ
from fold to fold), so each fold's scores are mapped through the empirical CDF of that fold
model's scores on its own held-out fold (:func:`to_fold_percentiles`): at the small signal
fractions of a search that fold is background-like, it was never trained on, and it holds no
truth. After the mapping a score is "the fraction of this fold's events scoring at most as high",
the same scale in every fold, so a cut on the merged scores keeps about the same fraction of every
fold. Held-out signal events (never injected) are split the same way, each scored by one fold
model and mapped through that fold's CDF, so background and signal are treated alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lhcad.scores import EmpiricalCDF, Scores

__all__ = ["fold_indices", "merge_scores", "to_fold_percentiles"]


def fold_indices(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``k`` disjoint, sorted index arrays covering ``range(n)`` (sizes differ by at most one),
    from one seeded permutation."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k-fold needs an integer k >= 2, got {k!r}")
    if n < k:
        raise ValueError(f"cannot cut {n} events into {k} folds")
    return [np.sort(part) for part in np.array_split(rng.permutation(n), k)]


def to_fold_percentiles(scores: Scores, reference: Scores) -> Scores:
    """``scores`` mapped through the empirical CDFs of ``reference`` (the same fold model's scores
    on its held-out fold): the event score and, for per-jet scores, each jet's score separately."""
    if scores.per_jet != reference.per_jet:
        raise ValueError("scores and reference must both be per-jet or both event-level")

    def mapped(values: np.ndarray | None, ref: np.ndarray | None) -> np.ndarray | None:
        return None if values is None or ref is None else EmpiricalCDF(ref)(values)

    return Scores(
        event=EmpiricalCDF(reference.event)(scores.event),
        jet1=mapped(scores.jet1, reference.jet1),
        jet2=mapped(scores.jet2, reference.jet2),
    )


def merge_scores(parts: Sequence[Scores]) -> Scores:
    """The folds' scores concatenated in fold order (per-jet only if every part is)."""
    if not parts:
        raise ValueError("no scores to merge")
    per_jet = all(p.per_jet for p in parts)
    return Scores(
        event=np.concatenate([p.event for p in parts]),
        jet1=np.concatenate([p.jet1 for p in parts]) if per_jet else None,  # type: ignore[misc]
        jet2=np.concatenate([p.jet2 for p in parts]) if per_jet else None,  # type: ignore[misc]
    )
