"""Assembling the events of a run: load samples, inject signal, split without reuse.

Typical use::

    rng = np.random.default_rng(seed)
    data = load_dataset(root)                                   # {"qcd": Events, "signal": Events}
    sample, unused_signal = inject_signal(data["qcd"], data["signal"], 0.01, None, rng)
    parts = split(sample, {"train": 0.5, "val": 0.1, "test": 0.4}, rng)

Every random choice comes from the ``rng`` passed in, so a run is reproducible from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from lhcad.data.events import Events
from lhcad.data.storage import DatasetError, read_sample, sample_info

__all__ = [
    "Draw",
    "as_rng",
    "check_signal_frac",
    "draw_sample",
    "inject_signal",
    "load_dataset",
    "split",
    "stored_columns",
]

_FRACTION_TOLERANCE = 1e-9


def as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    """A numpy Generator from a Generator (returned as is) or an integer seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an integer seed (for reproducibility), got {rng!r}")


def load_dataset(
    root: Path | str,
    samples: Sequence[str] = ("qcd", "signal"),
    columns: Sequence[str] | None = None,
    *,
    verify: bool = True,
) -> dict[str, Events]:
    """Read samples of a dataset as :class:`Events`.

    Args:
        root: dataset directory (with ``manifest.json``).
        samples: sample names to read.
        columns: columns to read from every sample (default: all).
        verify: check shard checksums against the manifest.

    Raises:
        lhcad.data.storage.DatasetError: the dataset or a sample is missing or corrupt.
    """
    if isinstance(samples, str):
        samples = (samples,)
    return {name: Events(read_sample(root, name, columns, verify=verify)) for name in samples}


def stored_columns(root: Path | str, sample: str) -> frozenset[str]:
    """Column names sample ``sample`` of dataset ``root`` stores (read from its first shard's
    index, without loading any event)."""
    shards = sample_info(root, sample)["shards"]
    first = Path(root) / shards[min(shards, key=int)]["file"]
    try:
        with h5py.File(first, "r") as f:
            return frozenset(f.keys())
    except OSError as exc:
        raise DatasetError(f"cannot read shard {first} ({exc})") from exc


# ---------------------------------------------------------------------------------------------- injection


def check_signal_frac(signal_frac: float) -> float:
    """``signal_frac`` as a float, or a ValueError saying it must lie in [0, 1)."""
    if (
        isinstance(signal_frac, bool)
        or not isinstance(signal_frac, Real)
        or not 0.0 <= float(signal_frac) < 1.0  # False for NaN
    ):
        raise ValueError(
            f"signal_frac must be a number in [0, 1) (0 gives a background-only sample), got {signal_frac!r}"
        )
    return float(signal_frac)


def _max_events(n_background: int, signal_frac: float) -> int:
    """Largest n with n - round(signal_frac * n) <= n_background (that count is non-decreasing in n)."""
    n = math.floor((n_background + 0.5) / (1.0 - signal_frac)) + 1
    while n > 0 and n - round(signal_frac * n) > n_background:
        n -= 1
    return n


def _interleave(
    a: Events, a_rows: np.ndarray, b: Events, b_rows: np.ndarray, from_a: np.ndarray
) -> Events:
    """Rows ``a_rows`` of ``a`` and ``b_rows`` of ``b`` placed where ``from_a`` is True / False."""
    out = {}
    for key in a:
        col_a, col_b = a[key], b[key]
        if col_a.shape[1:] != col_b.shape[1:]:
            raise ValueError(
                f"column '{key}' has per-event shape {col_a.shape[1:]} in the signal but {col_b.shape[1:]} "
                "in the background"
            )
        col = np.empty((len(from_a), *col_a.shape[1:]), dtype=np.result_type(col_a, col_b))
        col[from_a] = col_a[a_rows]
        col[~from_a] = col_b[b_rows]
        out[key] = col
    return Events(out)


class Draw(NamedTuple):
    """A run's sample and what was left out of it (see :func:`draw_sample`)."""

    sample: Events
    #: every signal event not injected (original order), for ROC curves
    unused_signal: Events
    #: every background event not drawn (original order): independent of the sample, e.g. the pure
    #: background reference of idealised CWoLa
    unused_background: Events


def inject_signal(
    background: Events,
    signal: Events,
    signal_frac: float,
    n_events: int | None,
    rng: np.random.Generator | int,
) -> tuple[Events, Events]:
    """Draw a shuffled sample with an exact number of signal events: ``(sample, unused_signal)``.

    See :func:`draw_sample`, which also returns the background events not drawn.
    """
    draw = draw_sample(background, signal, signal_frac, n_events, rng)
    return draw.sample, draw.unused_signal


def draw_sample(
    background: Events,
    signal: Events,
    signal_frac: float,
    n_events: int | None,
    rng: np.random.Generator | int,
) -> Draw:
    """Draw a shuffled sample with an exact number of signal events.

    The sample has ``n_sig = round(signal_frac * n_events)`` signal events (Python's ``round``, half
    to even) and ``n_events - n_sig`` background events, all drawn without replacement.

    Args:
        background: background events (e.g. ``qcd``).
        signal: signal events; must have the same columns as ``background``.
        signal_frac: fraction of signal in the sample, in [0, 1); 0 gives a background-only control sample.
        n_events: sample size; ``None`` uses every background event (the largest sample the
            background allows at this ``signal_frac``).
        rng: numpy Generator or integer seed.

    Returns:
        :class:`Draw`: the shuffled sample, the signal events not injected and the background
        events not drawn (both in their original order).

    Raises:
        ValueError: ``signal_frac`` outside [0, 1); ``n_events`` not a positive integer; the
            columns differ; or more signal or background events are needed than exist.
    """
    frac = check_signal_frac(signal_frac)
    rng = as_rng(rng)
    if set(background.keys()) != set(signal.keys()):
        raise ValueError(
            "background and signal must have the same columns to be mixed "
            f"(only in background: {sorted(set(background.keys()) - set(signal.keys()))}, "
            f"only in signal: {sorted(set(signal.keys()) - set(background.keys()))})"
        )
    defaulted = n_events is None
    if defaulted:
        n_events = _max_events(len(background), frac)
        if n_events == 0:
            raise ValueError("the background sample is empty; cannot draw a sample from it")
    elif isinstance(n_events, bool) or not isinstance(n_events, Integral) or n_events < 1:
        raise ValueError(f"n_events must be a positive integer or None (all background), got {n_events!r}")
    n_events = int(n_events)
    n_sig = round(frac * n_events)
    n_bkg = n_events - n_sig
    what = f"n_events={n_events}{' (all the background)' if defaulted else ''} at signal_frac={frac:g}"
    if n_sig > len(signal):
        raise ValueError(
            f"{what} needs {n_sig} signal events but only {len(signal)} are available; "
            "lower n_events or signal_frac, or generate more signal events"
        )
    if n_bkg > len(background):
        raise ValueError(
            f"{what} needs {n_bkg} background events but only {len(background)} are available; "
            "lower n_events (or pass None to use all the background), or generate more background events"
        )

    sig_perm = rng.permutation(len(signal))
    sig_rows = sig_perm[:n_sig]
    unused_rows = np.sort(sig_perm[n_sig:])
    bkg_rows = rng.choice(len(background), size=n_bkg, replace=False)
    from_signal = np.zeros(n_events, dtype=bool)
    from_signal[rng.permutation(n_events)[:n_sig]] = True
    # keep the column order of the background sample
    signal_ordered = signal.select(background.keys())
    sample = _interleave(signal_ordered, sig_rows, background, bkg_rows, from_signal)
    spare = np.ones(len(background), dtype=bool)
    spare[bkg_rows] = False
    return Draw(sample, signal.take(unused_rows), background.take(np.flatnonzero(spare)))


# ---------------------------------------------------------------------------------------------- splits


def _split_sizes(spec: Mapping[str, float | int], n: int) -> list[int]:
    if not spec:
        raise ValueError("split spec is empty; give at least one name -> fraction or count")
    bad = {k: v for k, v in spec.items() if isinstance(v, bool) or not isinstance(v, Real)}
    if bad:
        raise TypeError(f"split sizes must be fractions (float) or event counts (int), got {bad}")
    is_count = [isinstance(v, Integral) for v in spec.values()]
    if any(is_count) and not all(is_count):
        raise ValueError(
            f"split spec {dict(spec)} mixes event counts (int) and fractions (float); "
            "give all sizes as counts or all as fractions"
        )
    if all(is_count):
        negative = {k: v for k, v in spec.items() if v < 0}
        if negative:
            raise ValueError(f"split counts must be >= 0, got {negative}")
        total = sum(int(v) for v in spec.values())
        if total > n:
            raise ValueError(
                f"split counts {dict(spec)} add up to {total} events but only {n} are available"
            )
        return [int(v) for v in spec.values()]
    invalid = {k: v for k, v in spec.items() if not 0.0 <= float(v) <= 1.0}
    if invalid:
        raise ValueError(f"split fractions must lie in [0, 1], got {invalid}")
    cumulative = np.cumsum([float(v) for v in spec.values()])
    if cumulative[-1] > 1.0 + _FRACTION_TOLERANCE:
        raise ValueError(f"split fractions {dict(spec)} add up to {cumulative[-1]:.6g}, more than 1")
    bounds = np.concatenate([[0], np.rint(np.minimum(cumulative, 1.0) * n).astype(np.int64)])
    return np.diff(bounds).tolist()


def split(
    events: Events, spec: Mapping[str, float | int], rng: np.random.Generator | int
) -> dict[str, Events]:
    """Disjoint random splits of ``events``, named and sized by ``spec``, in ``spec`` order.

    Sizes are either all fractions of ``len(events)`` (floats adding up to at most 1; split
    boundaries are rounded cumulatively, so fractions adding up to 1 use every event) or all event
    counts (ints adding up to at most ``len(events)``). Mixing the two is rejected, because
    "a fraction of what is left after the counts" and "a fraction of all" are both plausible readings.
    Events in each split keep their original relative order. No event is in two splits.

    Raises:
        ValueError: the sizes ask for more events than exist, fractions add up to more than 1,
            a size is negative, or counts and fractions are mixed.
    """
    rng = as_rng(rng)
    sizes = _split_sizes(spec, len(events))
    perm = rng.permutation(len(events))
    out: dict[str, Events] = {}
    start = 0
    for name, size in zip(spec, sizes):
        out[name] = events.take(np.sort(perm[start : start + size]))
        start += size
    return out
