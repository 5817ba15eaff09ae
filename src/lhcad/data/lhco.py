"""Readers for the LHC Olympics 2020 R&D files, and their conversion to an lhcad dataset.

Two files are supported, both pandas DataFrames stored with ``DataFrame.to_hdf`` under key ``"df"``:

``events_anomalydetection.h5`` (raw, Zenodo record 2629073)
    2101 columns per event: 700 particles x (pT [GeV], eta, phi), zero-padded, then the truth
    label (1 = signal). The particles are clustered with the same code as generated events
    (:func:`lhcad.data.jets.build_events`), so both go through one reconstruction.
``events_anomalydetection_v2.features.h5`` (features, Zenodo record 4536377)
    15 columns: ``pxj1, pyj1, pzj1, mj1, tau1j1, tau2j1, tau3j1`` and the same for ``j2``, plus
    ``label`` (GeV). Columns are located by name, so their order in the file does not matter.

Files are read in row chunks (never the whole table at once): fixed-format frames by slicing the
HDF5 datasets ``df/block<i>_values`` with h5py, table-format frames with pandas ``start``/``stop``
(PyTables reads only those rows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lhcad.data import storage
from lhcad.data.jets import JetConfig, build_events, empty_columns, kinematics, massless_from_ptetaphi, particles_from_arrays
from lhcad.data.schema import (
    BACKGROUND_LABEL,
    FEATURE_COLUMNS,
    SIGNAL_LABEL,
    column_dtype,
)
from lhcad.data.storage import DatasetError

__all__ = [
    "FEATURES_FILE_COLUMNS",
    "RAW_N_COLUMNS",
    "RAW_N_PARTICLES",
    "convert_lhco",
    "iter_lhco_features",
    "iter_lhco_raw",
    "read_lhco_features",
    "read_lhco_raw",
]

logger = logging.getLogger(__name__)

Kind = Literal["raw", "features"]

HDF_KEY = "df"
RAW_N_PARTICLES = 700
RAW_N_COLUMNS = 3 * RAW_N_PARTICLES + 1
FEATURES_FILE_COLUMNS: tuple[str, ...] = (
    "pxj1", "pyj1", "pzj1", "mj1", "tau1j1", "tau2j1", "tau3j1",
    "pxj2", "pyj2", "pzj2", "mj2", "tau1j2", "tau2j2", "tau3j2",
    "label",
)
"""Columns of ``events_anomalydetection_v2.features.h5`` (any order)."""

_FILES: dict[str, tuple[str, str]] = {
    "raw": ("events_anomalydetection.h5", "https://zenodo.org/records/2629073"),
    "features": ("events_anomalydetection_v2.features.h5", "https://zenodo.org/records/4536377"),
}
_SAMPLE_OF_LABEL: dict[int, str] = {BACKGROUND_LABEL: "qcd", SIGNAL_LABEL: "signal"}


def _download_hint(kind: Kind) -> str:
    name, url = _FILES[kind]
    return f"the LHC Olympics 2020 R&D file {name} can be downloaded from {url}"


# ------------------------------------------------------------------------------------ pandas HDF5 frames


def _decode_labels(values: np.ndarray, encoding: str) -> list[Any]:
    """Column labels as stored by pandas: byte strings are decoded, numbers become Python ints/floats."""
    return [v.decode(encoding) if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
            for v in values]


def _attr_str(attrs: h5py.AttributeManager, name: str, default: str = "") -> str:
    value = attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


class _PandasFrame:
    """Row-sliced access to a DataFrame written by ``DataFrame.to_hdf`` (fixed or table format).

    Use as a context manager. ``columns`` are the frame's column labels in frame order, ``n_rows``
    its length; :meth:`read` returns rows ``[start, stop)`` as float64 with columns in that order.
    """

    def __init__(self, path: Path, kind: Kind, key: str = HDF_KEY) -> None:
        self.path, self.kind, self.key = path, kind, key
        self._stack = contextlib.ExitStack()
        self._h5: h5py.File | None = None
        self._store: pd.HDFStore | None = None
        self.columns: list[Any] = []
        self.n_rows = 0
        self._blocks: list[tuple[str, np.ndarray]] = []  # (dataset name, frame positions of its columns)

    def __enter__(self) -> _PandasFrame:
        with self._stack:
            self._open()
            self._stack = self._stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def error(self, what: str) -> DatasetError:
        """A :class:`DatasetError` naming the file, the problem and where to download the right one."""
        return DatasetError(f"{self.path}: {what}; {_download_hint(self.kind)}")

    def _open(self) -> None:
        if not self.path.exists():
            raise self.error("file not found")
        if not self.path.is_file():
            raise self.error("not a file")
        if not h5py.is_hdf5(self.path):
            raise self.error("not an HDF5 file (a truncated download, or a different file?)")
        try:
            f = self._stack.enter_context(h5py.File(self.path, "r"))
        except OSError as exc:
            raise self.error(f"cannot be opened as HDF5 ({exc})") from exc
        if self.key not in f or not isinstance(f[self.key], h5py.Group):
            raise self.error(
                f"no pandas DataFrame under key '{self.key}' (top-level keys: {sorted(f.keys())})"
            )
        group = f[self.key]
        pandas_type = _attr_str(group.attrs, "pandas_type")
        if pandas_type == "frame":  # fixed format: read the block datasets directly
            self._h5 = f
            self._open_fixed(group)
        elif pandas_type == "frame_table":  # table format: PyTables reads row ranges natively
            f.close()
            self._store = self._stack.enter_context(pd.HDFStore(self.path, mode="r"))
            self.n_rows = int(self._store.get_storer(self.key).nrows)
            self.columns = list(self._store.select(self.key, start=0, stop=0).columns)
        else:
            raise self.error(f"key '{self.key}' is not a DataFrame written by pandas to_hdf "
                             f"(pandas_type={pandas_type!r})")

    def _open_fixed(self, group: h5py.Group) -> None:
        encoding = _attr_str(group.attrs, "encoding", "UTF-8") or "UTF-8"
        try:
            self.columns = _decode_labels(group["axis0"][()], encoding)
            self.n_rows = len(group["axis1"])
            position = {label: i for i, label in enumerate(self.columns)}
            if len(position) != len(self.columns):
                raise self.error("duplicate column labels")
            for b in range(int(group.attrs["nblocks"])):
                items = _decode_labels(group[f"block{b}_items"][()], encoding)
                values = group[f"block{b}_values"]
                if values.shape != (self.n_rows, len(items)):
                    raise self.error(
                        f"block {b} has shape {values.shape}, expected ({self.n_rows}, {len(items)})"
                    )
                if values.dtype.kind not in "biuf":
                    raise self.error(f"block {b} holds non-numeric data ({values.dtype})")
                self._blocks.append((values.name, np.array([position[i] for i in items], np.int64)))
        except (KeyError, ValueError, TypeError) as exc:
            raise self.error(f"malformed pandas fixed-format frame ({exc!r})") from exc
        covered = np.concatenate([pos for _, pos in self._blocks]) if self._blocks else np.empty(0, np.int64)
        if sorted(covered.tolist()) != list(range(len(self.columns))):
            raise self.error("the frame's blocks do not cover its columns")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as float64, columns in :attr:`columns` order."""
        if self._store is not None:
            return self._store.select(self.key, start=start, stop=stop).to_numpy(np.float64)
        assert self._h5 is not None
        out = np.empty((stop - start, len(self.columns)), np.float64)
        for name, positions in self._blocks:
            out[:, positions] = self._h5[name][start:stop]
        return out


def _row_range(n_rows: int, start: int, n_events: int | None, path: Path) -> tuple[int, int]:
    """Validated ``[lo, hi)`` file rows for ``start`` and ``n_events`` (clipped to the file)."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if n_events is not None and n_events < 0:
        raise ValueError(f"n_events must be >= 0 or None, got {n_events}")
    if start > n_rows:
        raise ValueError(f"start={start} is beyond the end of {path} ({n_rows} events)")
    hi = n_rows if n_events is None else start + n_events
    if hi > n_rows:
        logger.warning("%s has only %d events after start=%d; reading %d, not %d",
                       path, n_rows - start, start, n_rows - start, n_events)
        hi = n_rows
    return start, hi


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _labels(values: np.ndarray, path: Path, row: int) -> np.ndarray:
    """The label column as int8, checked to hold only 0 and 1."""
    bad = ~np.isin(values, (BACKGROUND_LABEL, SIGNAL_LABEL))
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(
            f"{path}: row {row + i} has label {values[i].item()!r}, expected 0 (background) or 1 (signal)"
        )
    return values.astype(np.int8)


def _empty_columns(jet_config: JetConfig | None) -> dict[str, np.ndarray]:
    """Zero-length versions of every column a reader yields."""
    built = empty_columns(jet_config or JetConfig())
    cols = {c: built.get(c, np.empty(0, column_dtype(c))) for c in FEATURE_COLUMNS}  # schema order
    cols.update(built)
    return cols


def _concat(parts: Sequence[dict[str, np.ndarray]], jet_config: JetConfig | None) -> dict[str, np.ndarray]:
    if not parts:
        return _empty_columns(jet_config)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------------------------ raw


@contextlib.contextmanager
def _open_raw(path: Path) -> Iterator[_PandasFrame]:
    """The raw file, checked to have 2101 columns."""
    with _PandasFrame(path, "raw") as frame:
        if len(frame.columns) != RAW_N_COLUMNS:
            hint = (" (this looks like the features file: use read_lhco_features / kind='features')"
                    if set(FEATURES_FILE_COLUMNS) <= set(frame.columns) else "")
            raise frame.error(
                f"has {len(frame.columns)} columns, expected {RAW_N_COLUMNS} "
                f"({RAW_N_PARTICLES} particles x (pT, eta, phi), then the label){hint}"
            )
        yield frame


def _raw_chunk(values: np.ndarray, jet_config: JetConfig, path: Path, row: int) -> dict[str, np.ndarray]:
    """Schema columns of the passing events among raw-file rows ``values`` (n, 2101)."""
    label = _labels(values[:, -1], path, row)
    triplets = values[:, :-1].reshape(len(values), RAW_N_PARTICLES, 3)
    pt, eta, phi = triplets[..., 0], triplets[..., 1], triplets[..., 2]
    present = pt > 0  # zero-padding
    px, py, pz, e = massless_from_ptetaphi(pt[present], eta[present], phi[present])
    particles = particles_from_arrays(px, py, pz, e, present.sum(axis=1))
    passed, built = build_events(particles, jet_config)
    out = _empty_columns(jet_config)
    if passed.any():
        out.update(built)
        out["label"] = label[passed]
    return out


def _iter_raw(
    frame: _PandasFrame, lo: int, hi: int, chunk_size: int, jet_config: JetConfig
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for a in range(lo, hi, chunk_size):
        b = min(a + chunk_size, hi)
        yield b - a, _raw_chunk(frame.read(a, b), jet_config, frame.path, a)


def iter_lhco_raw(
    path: Path | str,
    *,
    n_events: int | None = None,
    start: int = 0,
    chunk_size: int = 10_000,
    jet_config: JetConfig = JetConfig(),
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the schema columns of ``events_anomalydetection.h5``, one chunk of file rows at a time.

    Each chunk of ``chunk_size`` rows is clustered with :func:`~lhcad.data.jets.build_events`; only
    events with two jets passing ``jet_config.trigger_pt`` are yielded (a chunk may be empty).
    Columns are :data:`~lhcad.data.schema.FEATURE_COLUMNS` (``label`` from the file's last column),
    plus images / constituents when ``jet_config`` asks for them.

    Args:
        path: the raw LHC Olympics file.
        n_events: number of file rows to read (default: to the end); failing events are dropped,
            so fewer may come back.
        start: first file row.
        chunk_size: rows read and clustered at once (memory ~ 17 kB per row).
        jet_config: reconstruction settings.

    Raises:
        DatasetError: the file is missing, not HDF5, has no DataFrame under ``"df"``, does not have
            2101 columns, or holds labels other than 0/1 (raised when iteration starts, or at the
            offending chunk).
    """
    _check_chunk_size(chunk_size)
    path = Path(path)
    with _open_raw(path) as frame:
        lo, hi = _row_range(frame.n_rows, start, n_events, path)
        for _, cols in _iter_raw(frame, lo, hi, chunk_size, jet_config):
            yield cols


def read_lhco_raw(
    path: Path | str,
    *,
    n_events: int | None = None,
    start: int = 0,
    chunk_size: int = 10_000,
    jet_config: JetConfig = JetConfig(),
) -> dict[str, np.ndarray]:
    """Schema columns of the passing events among rows ``[start, start + n_events)`` of the raw file.

    The concatenation of :func:`iter_lhco_raw`; see there for the arguments.
    """
    chunks = iter_lhco_raw(path, n_events=n_events, start=start, chunk_size=chunk_size, jet_config=jet_config)
    return _concat(list(chunks), jet_config)


# ------------------------------------------------------------------------------------------- features


@contextlib.contextmanager
def _open_features(path: Path) -> Iterator[_PandasFrame]:
    """The features file, checked to have the 15 named columns."""
    with _PandasFrame(path, "features") as frame:
        missing = [c for c in FEATURES_FILE_COLUMNS if c not in frame.columns]
        if missing:
            shown = frame.columns if len(frame.columns) <= 20 else [*frame.columns[:20], "..."]
            hint = (" (this looks like the raw particle file: use read_lhco_raw / kind='raw')"
                    if len(frame.columns) == RAW_N_COLUMNS else "")
            raise frame.error(
                f"lacks column(s) {missing} (it has {len(frame.columns)} columns: {shown}); expected "
                f"the {len(FEATURES_FILE_COLUMNS)} columns {', '.join(FEATURES_FILE_COLUMNS)}{hint}"
            )
        yield frame


def _features_chunk(
    values: np.ndarray, columns: Sequence[Any], path: Path, row: int
) -> dict[str, np.ndarray]:
    """Schema columns from features-file rows ``values`` whose columns are labelled ``columns``."""
    index = {c: i for i, c in enumerate(columns)}

    def col(name: str) -> np.ndarray:
        return values[:, index[name]]

    label = _labels(col("label"), path, row)
    swap = col("mj2") > col("mj1")  # jet 1 = heavier, as in build_events
    jet: dict[int, dict[str, np.ndarray]] = {}
    for j, (first, second) in ((1, (1, 2)), (2, (2, 1))):
        jet[j] = {
            q: np.where(swap, col(f"{q}j{second}"), col(f"{q}j{first}"))
            for q in ("px", "py", "pz", "m", "tau1", "tau2", "tau3")
        }
        v = jet[j]
        v["e"] = np.sqrt(v["px"] ** 2 + v["py"] ** 2 + v["pz"] ** 2 + v["m"] ** 2)
    _, _, _, mjj, _ = kinematics(*(jet[1][q] + jet[2][q] for q in ("px", "py", "pz", "e")))

    n = len(values)
    out: dict[str, np.ndarray] = {"mjj": mjj.astype(np.float32), "label": label}
    for j, v in jet.items():
        pt, eta, phi, _, _ = kinematics(v["px"], v["py"], v["pz"], v["e"])
        p = f"j{j}_"
        out |= {p + "pt": pt, p + "eta": eta, p + "phi": phi, p + "m": v["m"],
                p + "tau1": v["tau1"], p + "tau2": v["tau2"], p + "tau3": v["tau3"],
                p + "tau4": np.full(n, np.nan), p + "nconst": np.full(n, -1)}
    return {c: out[c].astype(column_dtype(c)) for c in FEATURE_COLUMNS}


def _iter_features(
    frame: _PandasFrame, lo: int, hi: int, chunk_size: int
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    logger.warning(
        "%s has no tau4 and no constituent counts: j1/j2_tau4 are set to NaN and j1/j2_nconst to -1",
        frame.path,
    )
    for a in range(lo, hi, chunk_size):
        b = min(a + chunk_size, hi)
        yield b - a, _features_chunk(frame.read(a, b), frame.columns, frame.path, a)


def iter_lhco_features(
    path: Path | str, *, n_events: int | None = None, start: int = 0, chunk_size: int = 100_000
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the schema columns of ``events_anomalydetection_v2.features.h5`` chunk by chunk.

    See :func:`read_lhco_features` for the mapping.
    """
    _check_chunk_size(chunk_size)
    path = Path(path)
    with _open_features(path) as frame:
        lo, hi = _row_range(frame.n_rows, start, n_events, path)
        for _, cols in _iter_features(frame, lo, hi, chunk_size):
            yield cols


def read_lhco_features(
    path: Path | str, *, n_events: int | None = None, start: int = 0, chunk_size: int = 100_000
) -> dict[str, np.ndarray]:
    """Schema columns of rows ``[start, start + n_events)`` of the LHC Olympics features file.

    Jet kinematics come from (px, py, pz, m): ``E = sqrt(p^2 + m^2)``, ``mjj`` is the mass of the
    summed four-vectors, and jet 1 is the heavier jet (all columns of the two jets are swapped
    together where ``mj2 > mj1``). ``tau1..tau3`` are copied as stored in the file. No event is
    dropped: the file carries no particles to re-apply a trigger to.

    The file has no ``tau4`` and no constituent counts: ``j1_tau4``/``j2_tau4`` are NaN (float32)
    and ``j1_nconst``/``j2_nconst`` are -1 (int32); a warning is logged once per call. Columns are
    found by name, so any column order (and fixed or table format) is read the same way.

    Raises:
        DatasetError: the file is missing, not HDF5, has no DataFrame under ``"df"``, lacks one of
            :data:`FEATURES_FILE_COLUMNS`, or holds labels other than 0/1.
    """
    chunks = iter_lhco_features(path, n_events=n_events, start=start, chunk_size=chunk_size)
    return _concat(list(chunks), None)


# ------------------------------------------------------------------------------------------ conversion


class _ShardWriter:
    """Buffers one sample's events and writes them as shards of ``shard_size`` events."""

    def __init__(self, root: Path, sample: str, shard_size: int, attrs: dict[str, Any]) -> None:
        self.root, self.sample, self.shard_size, self.attrs = root, sample, shard_size, attrs
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self.n_shards = 0
        self.n_events = 0

    def add(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["label"])
        if n == 0:
            return
        self._buffer.append(cols)
        self._buffered += n
        while self._buffered >= self.shard_size:
            merged = {k: np.concatenate([p[k] for p in self._buffer]) for k in self._buffer[0]}
            self._write({k: v[: self.shard_size] for k, v in merged.items()})
            rest = {k: v[self.shard_size:] for k, v in merged.items()}
            self._buffered -= self.shard_size
            self._buffer = [rest] if self._buffered else []

    def close(self, template: dict[str, np.ndarray]) -> None:
        """Write what is left (an empty shard if the sample got no event, so that it still exists)."""
        if self._buffered or self.n_shards == 0:
            parts = self._buffer or [{k: v[:0] for k, v in template.items()}]
            self._write({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        self._buffer, self._buffered = [], 0

    def _write(self, cols: dict[str, np.ndarray]) -> None:
        path = storage.shard_path(self.root, self.sample, self.n_shards)
        digest = storage.write_shard(path, cols, attrs=self.attrs)
        n = len(cols["label"])
        storage.record_shard(self.root, self.sample, self.n_shards,
                             {"file": str(path.relative_to(self.root)), "n_events": n, "sha256": digest})
        self.n_shards += 1
        self.n_events += n


def _prepare_output(out: Path, samples: Sequence[str], overwrite: bool) -> None:
    """Refuse to mix with existing samples, or (``overwrite``) remove them and their shard files."""
    with storage.edit_manifest(out) as manifest:
        present = [s for s in samples if s in manifest["samples"]]
        if not present:
            return
        if not overwrite:
            raise DatasetError(
                f"dataset {out} already holds sample(s) {present}; choose another output directory "
                "or pass overwrite=True (--overwrite) to replace them"
            )
        for s in present:
            for info in manifest["samples"][s].get("shards", {}).values():
                (out / info["file"]).unlink(missing_ok=True)
            del manifest["samples"][s]
        logger.info("removed existing sample(s) %s from %s", present, out)


def convert_lhco(
    src: Path | str,
    out: Path | str,
    *,
    kind: Kind = "raw",
    n_events: int | None = None,
    start: int = 0,
    shard_size: int = 100_000,
    jet_config: JetConfig = JetConfig(),
    chunk_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Convert an LHC Olympics R&D file into an lhcad dataset with samples ``qcd`` and ``signal``.

    The file is streamed in chunks of rows; each sample's events are written as shards of
    ``shard_size`` events (:func:`~lhcad.data.storage.write_shard`) and recorded in the manifest as
    they are completed, so memory stays bounded by one chunk plus one shard per sample. Each
    sample's manifest entry gets a ``config`` describing the source. A sample with no event still
    gets one empty shard, so that both samples always exist.

    Args:
        src: ``events_anomalydetection.h5`` (``kind="raw"``) or
            ``events_anomalydetection_v2.features.h5`` (``kind="features"``).
        out: dataset directory (created if needed).
        n_events, start: file rows to convert (see :func:`iter_lhco_raw`).
        shard_size: events per shard file.
        jet_config: reconstruction settings (raw files only).
        chunk_size: rows read at once (default 10 000 for raw files, 100 000 for features files).
        overwrite: replace ``qcd``/``signal`` samples already in ``out``.
        progress: show a tqdm progress bar over the file rows.

    Returns:
        Number of events written per sample.

    Raises:
        DatasetError: bad input file (see the readers), or ``out`` already holds the samples and
            ``overwrite`` is False.
    """
    if kind not in _FILES:
        raise ValueError(f"kind must be 'raw' or 'features', got {kind!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    chunk_size = chunk_size or (10_000 if kind == "raw" else 100_000)
    _check_chunk_size(chunk_size)
    src, out = Path(src), Path(out)
    cfg = jet_config if kind == "raw" else None

    with (_open_raw(src) if kind == "raw" else _open_features(src)) as frame:
        lo, hi = _row_range(frame.n_rows, start, n_events, src)
        chunks = (_iter_raw(frame, lo, hi, chunk_size, jet_config) if kind == "raw"
                  else _iter_features(frame, lo, hi, chunk_size))
        samples = list(_SAMPLE_OF_LABEL.values())
        _prepare_output(out, samples, overwrite)
        attrs = {"source": src.name, "kind": kind}
        writers = {label: _ShardWriter(out, name, shard_size, attrs)
                   for label, name in _SAMPLE_OF_LABEL.items()}
        with tqdm(total=hi - lo, unit="event", unit_scale=True, desc=f"converting {src.name}",
                  disable=not progress) as bar:
            for n_read, cols in chunks:
                for label, writer in writers.items():
                    sel = cols["label"] == label
                    writer.add({k: v[sel] for k, v in cols.items()})
                bar.update(n_read)
        template = _empty_columns(cfg)
        for writer in writers.values():
            writer.close(template)

    passed = sum(w.n_events for w in writers.values())
    for label, writer in writers.items():
        storage.update_sample(out, writer.sample, {"config": {
            "source": str(src.resolve()),
            "source_record": _FILES[kind][1],
            "kind": kind,
            "label": label,
            "start": lo,
            "rows_read": hi - lo,
            "rows_passed": passed,
            "jet_config": dataclasses.asdict(cfg) if cfg is not None else None,
        }})
    counts = {w.sample: w.n_events for w in writers.values()}
    logger.info("converted %d of %d rows of %s into %s: %s", passed, hi - lo, src, out, counts)
    return counts
