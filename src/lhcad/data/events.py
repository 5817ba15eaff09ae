"""An immutable table of events: named numpy columns of equal length.

:class:`Events` is what every method receives. Scalar columns are 1-D, images ``(n, npix, npix)``
and constituents ``(n, K, 4)``; all share the first (event) dimension. Column names follow
:mod:`lhcad.data.schema`. The arrays an :class:`Events` hands out are read-only views (copy one
with ``np.array(events[key])`` to modify it); every operation returns a new :class:`Events`.
``torch.as_tensor`` on such a view warns once that the array is not writable; ``torch.tensor``
(a copy) does not.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DERIVED_JET_FEATURES", "Events", "jet_features", "safe_ratio"]


def _readonly(value: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        raise ValueError(f"column '{name}' is a scalar; Events columns need one entry per event")
    view = arr.view()
    view.flags.writeable = False
    return view


class Events(Mapping[str, np.ndarray]):
    """Equal-length numpy columns, one row per event.

    A read-only mapping ``column name -> array``; ``len(events)`` is the number of events
    (use ``len(events.keys())`` for the number of columns).

    Args:
        columns: mapping column name -> array-like with the event as first dimension.

    Raises:
        ValueError: the columns differ in length, or one is a scalar.
    """

    __slots__ = ("_columns", "_n")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, columns: Mapping[str, ArrayLike] | None = None) -> None:
        cols = {str(k): _readonly(v, str(k)) for k, v in (columns or {}).items()}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Events columns must all have the same number of rows, got {lengths}")
        self._columns: dict[str, np.ndarray] = cols
        self._n: int = next(iter(lengths.values()), 0)

    # ------------------------------------------------------------------ mapping protocol
    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._columns[key]
        except KeyError:
            raise KeyError(f"no column '{key}' in these events; they have {list(self._columns)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        """Number of events (not of columns)."""
        return self._n

    def __contains__(self, key: object) -> bool:
        return key in self._columns

    def keys(self) -> KeysView[str]:
        return self._columns.keys()

    def values(self) -> ValuesView[np.ndarray]:
        return self._columns.values()

    def items(self) -> ItemsView[str, np.ndarray]:
        return self._columns.items()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Events):
            return NotImplemented
        return list(self.keys()) == list(other.keys()) and all(
            self[k].shape == other[k].shape and np.array_equal(self[k], other[k]) for k in self
        )

    def __repr__(self) -> str:
        return f"Events(n={self._n}, columns={list(self._columns)})"

    # ------------------------------------------------------------------ table operations
    @property
    def labels(self) -> np.ndarray:
        """Truth labels (0 background, 1 signal); for evaluation only."""
        return self["label"]

    def take(self, index: ArrayLike | slice) -> Events:
        """Rows selected by an integer index array, a boolean mask of length ``len(self)``, or a slice."""
        if isinstance(index, slice):
            return Events({k: v[index] for k, v in self.items()})
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (self._n,):
                raise IndexError(f"boolean mask has shape {idx.shape}, these events need ({self._n},)")
        elif idx.size == 0:
            idx = idx.astype(np.intp)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"take() needs integer indices or a boolean mask, got dtype {idx.dtype}")
        if idx.ndim != 1:
            raise IndexError(f"take() needs a 1-D index, got shape {idx.shape}")
        return Events({k: v[idx] for k, v in self.items()})

    @staticmethod
    def concat(parts: Sequence[Events]) -> Events:
        """Stack several :class:`Events` with the same columns row-wise, in order."""
        parts = list(parts)
        if not parts:
            raise ValueError("Events.concat needs at least one Events")
        keys = list(parts[0].keys())
        for i, p in enumerate(parts[1:], start=1):
            if set(p.keys()) != set(keys):
                raise ValueError(
                    f"Events.concat: part {i} has different columns than part 0 "
                    f"(only in part 0: {sorted(set(keys) - set(p.keys()))}, "
                    f"only in part {i}: {sorted(set(p.keys()) - set(keys))})"
                )
        out = {}
        for k in keys:
            shapes = {p[k].shape[1:] for p in parts}
            if len(shapes) > 1:
                raise ValueError(f"Events.concat: column '{k}' has per-event shapes {sorted(shapes)}")
            out[k] = np.concatenate([p[k] for p in parts])
        return Events(out)

    def with_columns(self, columns: Mapping[str, ArrayLike] | None = None, /, **more: ArrayLike) -> Events:
        """New :class:`Events` with columns added or replaced (same number of rows)."""
        return Events({**self._columns, **dict(columns or {}), **more})

    def select(self, keys: Iterable[str]) -> Events:
        """New :class:`Events` with only ``keys``, in that order."""
        keys = list(keys)
        missing = [k for k in keys if k not in self._columns]
        if missing:
            raise KeyError(f"no column(s) {missing} in these events; they have {list(self._columns)}")
        return Events({k: self._columns[k] for k in keys})

    def drop(self, keys: Iterable[str]) -> Events:
        """New :class:`Events` without ``keys`` (absent keys are ignored)."""
        gone = set(keys)
        return Events({k: v for k, v in self._columns.items() if k not in gone})


# ---------------------------------------------------------------------------------------------- features


def safe_ratio(num: ArrayLike, den: ArrayLike) -> np.ndarray:
    """``num / den`` in float64, 0 where ``den`` is 0."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)), where=den != 0)


def _tau_ratio(a: str, b: str) -> Any:
    return lambda col: safe_ratio(col(a), col(b))


DERIVED_JET_FEATURES: dict[str, Any] = {
    "tau21": _tau_ratio("tau2", "tau1"),
    "tau32": _tau_ratio("tau3", "tau2"),
    "tau43": _tau_ratio("tau4", "tau3"),
    "sqrt_tau21": lambda col: safe_ratio(np.sqrt(np.asarray(col("tau2"), np.float64)), col("tau1")),
    "m_over_pt": lambda col: safe_ratio(col("m"), col("pt")),
}
"""Per-jet features computed from stored columns: name -> f(column getter) (ratios are 0 where the
denominator is 0). ``m_over_pt`` is the dimensionless jet mass m/pT (scale-free)."""


def jet_features(events: Mapping[str, np.ndarray], j: int, names: Sequence[str]) -> np.ndarray:
    """Per-jet features of jet ``j`` stacked into an ``(n, len(names))`` float32 matrix.

    ``names`` are stored per-jet fields (``m``, ``pt``, ``nconst``, ``tau1`` ... read from ``j{j}_<name>``)
    or derived ones: ``tau21 = tau2/tau1``, ``tau32``, ``tau43``, ``sqrt_tau21 = sqrt(tau2)/tau1``,
    ``m_over_pt = m/pT``.
    """
    if j not in (1, 2):
        raise ValueError(f"jet index must be 1 or 2, got {j!r}")
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of feature names, got the string {names!r}")
    n = len(events)

    def col(field: str) -> np.ndarray:
        key = f"j{j}_{field}"
        if key not in events:
            raise KeyError(
                f"jet feature '{field}' of jet {j} needs column '{key}', which these events lack; "
                f"derived features: {sorted(DERIVED_JET_FEATURES)}; columns: {list(events)}"
            )
        return events[key]

    out = np.empty((n, len(names)), dtype=np.float32)
    for i, name in enumerate(names):
        derive = DERIVED_JET_FEATURES.get(name)
        values = derive(col) if derive is not None else col(name)
        if np.ndim(values) != 1:
            raise ValueError(f"jet feature '{name}' is not a scalar per event (shape {np.shape(values)})")
        out[:, i] = values
    return out
