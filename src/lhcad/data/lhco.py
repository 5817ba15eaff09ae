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
import fcntl
import logging
import shlex
from collections.abc import Iterator, Mapping, Sequence
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
    "LHCO_SAMPLES",
    "MISSING_COLUMNS",
    "RAW_N_COLUMNS",
    "RAW_N_PARTICLES",
    "check_output_dir",
    "check_samples_present",
    "convert_hint",
    "convert_lhco",
    "iter_lhco_features",
    "iter_lhco_raw",
    "missing_sample_hint",
    "mixed_sources",
    "read_lhco_features",
    "read_lhco_raw",
    "sample_origin",
    "sample_provenance",
    "unavailable_columns",
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

LHCO_SAMPLES: tuple[str, ...] = tuple(_SAMPLE_OF_LABEL.values())
"""Samples a conversion writes (``qcd`` = label 0, ``signal`` = label 1)."""

MISSING_COLUMNS: dict[str, tuple[str, ...]] = {
    "raw": (),
    "features": ("j1_tau4", "j2_tau4", "j1_nconst", "j2_nconst"),
}
"""Stored columns that hold placeholders (NaN / -1), not measurements, per kind of source file."""

CONVERTER = "lhcad-convert-lhco"
"""``config.origin`` of a converted sample in the manifest."""

_LOCK = ".convert.lock"


def check_output_dir(out: Path | str) -> Path:
    """``out`` as a Path, or a :class:`DatasetError` in one sentence when it cannot be a directory
    (it, or the nearest existing parent, is a file)."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is an existing file" if path == out else f"lies under the existing file {path}"
                raise DatasetError(
                    f"output path {out} {what}, not a directory: give a directory for the dataset"
                )
            break
    return out


@dataclasses.dataclass
class _Source:
    """One input file of a conversion: where, what, which rows, and what it gave per sample."""

    path: Path
    kind: str
    sha256: str
    size: int
    start: int
    stop: int
    rows_passed: int = 0
    n_events: dict[str, int] = dataclasses.field(default_factory=dict)

    def record(self, sample: str) -> dict[str, Any]:
        """The manifest record of this file in ``sample``'s ``sources``."""
        return {
            "file": self.path.name, "path": str(self.path.resolve()), "sha256": self.sha256,
            "size": self.size, "kind": self.kind, "record": _FILES[self.kind][1],
            "start": self.start, "stop": self.stop, "rows_passed": self.rows_passed,
            "n_events": self.n_events.get(sample, 0),
        }


def _legacy_sources(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``sources`` of a sample converted before they were recorded (from its ``config``)."""
    if entry.get("sources") is not None:
        return list(entry["sources"])
    config = entry.get("config") or {}
    if config.get("kind") not in _FILES or "source" not in config:
        return []
    start = int(config.get("start", 0))
    return [{
        "file": Path(config["source"]).name, "path": config["source"], "sha256": None, "size": None,
        "kind": config["kind"], "record": config.get("source_record"), "start": start,
        "stop": start + int(config.get("rows_read", 0)), "rows_passed": config.get("rows_passed"),
        "n_events": int(sum(s["n_events"] for s in entry.get("shards", {}).values())),
    }]


def sample_origin(entry: Mapping[str, Any]) -> str:
    """``"converted"`` (by lhcad-convert-lhco), ``"generated"`` (by lhcad-generate) or ``"unknown"``
    for one sample's manifest entry."""
    config = entry.get("config") or {}
    if entry.get("sources") or config.get("origin") == CONVERTER or config.get("kind") in _FILES:
        return "converted"
    if "config_hash" in entry or "pythia" in config:
        return "generated"
    return "unknown"


def _same_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two source records name the same file (checksum, else path) with overlapping rows."""
    if a.get("sha256") and b.get("sha256"):
        same = a["sha256"] == b["sha256"]
    else:
        same = a.get("path") == b.get("path")
    return same and max(a["start"], b["start"]) < min(a["stop"], b["stop"])


def _check_duplicates(new: Sequence[_Source], existing: Sequence[Mapping[str, Any]], out: Path) -> None:
    """No file's rows may enter the dataset twice (within this call, or already converted)."""
    records = [s.record("") for s in new]
    for i, rec in enumerate(records):
        for other in records[:i]:
            if _same_rows(rec, other):
                raise DatasetError(
                    f"{rec['path']} and {other['path']} are the same file (sha256 {rec['sha256'][:12]}...) "
                    f"with overlapping rows: each event would be converted twice; give each file once"
                )
        for old in existing:
            if _same_rows(rec, old):
                raise DatasetError(
                    f"rows {rec['start']}-{rec['stop']} of {rec['path']} are already in {out} (converted "
                    f"from {old['path']}, rows {old['start']}-{old['stop']}); nothing was changed"
                )


def _check_appendable(
    out: Path, sample: str, entry: Mapping[str, Any], kind: str, cfg: JetConfig | None
) -> None:
    """An existing sample may only grow by files of the same kind, converted the same way."""
    config = entry.get("config") or {}
    origin = sample_origin(entry)
    if origin != "converted":
        made = "generated by lhcad-generate" if origin == "generated" else "not made by lhcad-convert-lhco"
        raise DatasetError(
            f"sample '{sample}' of {out} was {made}; converted events cannot be appended to it "
            "(convert into another directory, or pass --overwrite to replace the whole dataset)"
        )
    if config.get("kind") != kind:
        raise DatasetError(
            f"sample '{sample}' of {out} was converted from a {config.get('kind')} file; a {kind} file "
            "has other columns and cannot be appended to it (convert it into another directory)"
        )
    old_cfg = config.get("jet_config")
    if cfg is not None and old_cfg is not None and old_cfg != dataclasses.asdict(cfg):
        diff = sorted(k for k, v in dataclasses.asdict(cfg).items() if old_cfg.get(k) != v)
        raise DatasetError(
            f"sample '{sample}' of {out} was converted with other jet settings (differ in: {', '.join(diff)}); "
            "append with the same --images / --constituents, or convert into another directory"
        )


def _remove_all_samples(out: Path, manifest: dict[str, Any]) -> list[str]:
    """``--overwrite``: drop every sample (converted or generated) and delete its shard files."""
    removed = sorted(manifest["samples"])
    for name in removed:
        for info in manifest["samples"][name].get("shards", {}).values():
            (out / info["file"]).unlink(missing_ok=True)
        sample_dir = out / name
        if sample_dir.is_dir():
            for stale in sample_dir.glob("shard_*.h5"):  # left by an interrupted run
                stale.unlink()
            with contextlib.suppress(OSError):
                sample_dir.rmdir()
    manifest["samples"].clear()
    return removed


def _plan_output(
    out: Path, kind: str, cfg: JetConfig | None, sources: Sequence[_Source], overwrite: bool, append: bool
) -> dict[str, list[str]]:
    """Check (and with ``overwrite`` empty) the output; returns the shard keys each sample has now."""
    with storage.edit_manifest(out) as manifest:
        samples = manifest["samples"]
        if overwrite:
            removed = _remove_all_samples(out, manifest)
            if removed:
                logger.info("--overwrite: removed sample(s) %s from %s", removed, out)
            return {}
        present = [s for s in LHCO_SAMPLES if s in samples]
        if present and not append:
            raise DatasetError(
                f"dataset {out} already holds sample(s) {present}; pass --append (append=True) to add "
                "this file's events to them, --overwrite (overwrite=True) to replace the whole dataset, "
                "or choose another output directory"
            )
        existing: list[dict[str, Any]] = []
        for s in present:
            _check_appendable(out, s, samples[s], kind, cfg)
            existing += _legacy_sources(samples[s])
        _check_duplicates(sources, existing, out)
        return {s: sorted(samples[s].get("shards", {}), key=int) for s in present}


class _ShardWriter:
    """Buffers one sample's events and writes them as shards of ``shard_size`` events.

    Shards are written to disk (atomically) but not recorded in the manifest: :attr:`records`
    collects them for one manifest transaction at the end of the conversion.
    """

    def __init__(self, root: Path, sample: str, shard_size: int, first_index: int) -> None:
        self.root, self.sample, self.shard_size = root, sample, shard_size
        self.attrs: dict[str, Any] = {}
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self.index = first_index
        self.records: dict[str, dict[str, Any]] = {}
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

    def flush(self) -> None:
        """Write what is buffered (at the end of each source file: a shard holds one file's events)."""
        if self._buffered:
            self._write({k: np.concatenate([p[k] for p in self._buffer]) for k in self._buffer[0]})
        self._buffer, self._buffered = [], 0

    def write_empty(self, template: dict[str, np.ndarray]) -> None:
        """One empty shard with every column, so that a sample without events still exists."""
        self._write({k: v[:0] for k, v in template.items()})

    def _write(self, cols: dict[str, np.ndarray]) -> None:
        path = storage.shard_path(self.root, self.sample, self.index)
        digest = storage.write_shard(path, cols, attrs=self.attrs)
        n = len(cols["label"])
        self.records[str(self.index)] = {"file": str(path.relative_to(self.root)), "n_events": n, "sha256": digest}
        self.index += 1
        self.n_events += n


@contextlib.contextmanager
def _conversion_lock(out: Path) -> Iterator[None]:
    """One conversion at a time per output directory (shard numbering assumes it)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / _LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError(f"another lhcad-convert-lhco is writing to {out}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sample_config(kind: str, label: int, cfg: JetConfig | None, sources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A converted sample's ``config``; the per-file fields of old manifests only for a single file."""
    config: dict[str, Any] = {
        "origin": CONVERTER, "kind": kind, "label": label, "source_record": _FILES[kind][1],
        "jet_config": dataclasses.asdict(cfg) if cfg is not None else None,
    }
    if len(sources) == 1:
        src = sources[0]
        config |= {"source": src["path"], "start": src["start"], "rows_read": src["stop"] - src["start"],
                   "rows_passed": src["rows_passed"]}
    return config


def _commit(
    out: Path, writers: Mapping[int, _ShardWriter], planned: Mapping[str, list[str]], sources: Sequence[_Source],
    kind: str, cfg: JetConfig | None,
) -> dict[str, int]:
    """Record every new shard and source in one manifest transaction; returns the samples' totals.

    Refuses (saving nothing) when a sample changed during the conversion or its counts do not add
    up: old events + new events = the sum over its sources = the sum over its shards.
    """
    totals: dict[str, int] = {}
    with storage.edit_manifest(out) as manifest:
        for label, writer in writers.items():
            sample = writer.sample
            entry = manifest["samples"].setdefault(sample, {})
            shards = entry.setdefault("shards", {})
            if sorted(shards, key=int) != planned.get(sample, []):
                raise DatasetError(f"sample '{sample}' of {out} changed during the conversion; run it again")
            n_old = sum(int(s["n_events"]) for s in shards.values())
            old_sources = _legacy_sources(entry)  # before the new shards count
            shards.update(writer.records)
            entry["sources"] = old_sources + [s.record(sample) for s in sources]
            entry["config"] = _sample_config(kind, label, cfg, entry["sources"])
            entry["missing_columns"] = list(MISSING_COLUMNS[kind])
            n_shards = sum(int(s["n_events"]) for s in shards.values())
            n_sources = sum(int(s["n_events"]) for s in entry["sources"])
            if not n_shards == n_sources == n_old + writer.n_events:
                raise DatasetError(
                    f"sample '{sample}' of {out}: event counts do not add up (shards {n_shards}, sources "
                    f"{n_sources}, before {n_old} + converted {writer.n_events}); the manifest was not changed"
                )
            totals[sample] = n_shards
    return totals


def _warn_empty(out: Path, totals: Mapping[str, int], sources: Sequence[_Source], kind: str) -> None:
    other = {"qcd": "background (label 0)", "signal": "signal (label 1)"}
    for sample, n in totals.items():
        if n == 0:
            files = ", ".join(s.path.name for s in sources)
            logger.warning(
                "sample '%s' of %s is EMPTY: %s had no %s events; runs need both qcd and signal, so add a "
                "file with such events: `%s FILE %s --kind %s --append`",
                sample, out, files, other[sample], CONVERTER, shlex.quote(str(out)), kind,
            )


def convert_lhco(
    src: Path | str | Sequence[Path | str],
    out: Path | str,
    *,
    kind: Kind = "raw",
    n_events: int | None = None,
    start: int = 0,
    shard_size: int = 100_000,
    jet_config: JetConfig = JetConfig(),
    chunk_size: int | None = None,
    overwrite: bool = False,
    append: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Convert LHC Olympics R&D files into an lhcad dataset with samples ``qcd`` and ``signal``.

    Each file is streamed in chunks of rows; events go to ``qcd`` (label 0) or ``signal`` (label 1)
    and are written as shards of ``shard_size`` events (a shard never spans two files). All new
    shards are recorded in the manifest in one transaction at the end, with per sample the files
    it came from (``sources``: name, path, sha256, size, rows, events contributed), its ``config``
    and ``missing_columns`` (the placeholder columns of the features file). An interrupted
    conversion therefore leaves the manifest as it was. Several files of the same kind may be
    given at once (e.g. per-label files), or added later with ``append``; the same rows of a file
    (same sha256) never enter a dataset twice. A sample that ends up without events gets one empty
    shard and a warning.

    Args:
        src: one file or several, all ``events_anomalydetection.h5``-like (``kind="raw"``) or all
            ``events_anomalydetection_v2.features.h5``-like (``kind="features"``).
        out: dataset directory (created if needed).
        n_events, start: rows to convert of each file (see :func:`iter_lhco_raw`).
        shard_size: events per shard file.
        jet_config: reconstruction settings (raw files only).
        chunk_size: rows read at once (default 10 000 for raw files, 100 000 for features files).
        overwrite: first remove every sample of ``out`` (converted or generated) and its shards.
        append: add the events to the ``qcd``/``signal`` samples ``out`` already holds (same kind
            and jet settings; refused for generated samples).
        progress: show a tqdm progress bar over the file rows.

    Returns:
        Number of events added per sample by this call.

    Raises:
        DatasetError: a bad input file (see the readers; all are checked before ``out`` is
            touched), ``out`` is a file, ``out`` already holds the samples and neither
            ``append`` nor ``overwrite`` is set, or an append that does not fit (see above).
    """
    if kind not in _FILES:
        raise ValueError(f"kind must be 'raw' or 'features', got {kind!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if overwrite and append:
        raise ValueError("overwrite and append exclude each other")
    chunk_size = chunk_size or (10_000 if kind == "raw" else 100_000)
    _check_chunk_size(chunk_size)
    paths = [Path(src)] if isinstance(src, (str, Path)) else [Path(s) for s in src]
    if not paths:
        raise ValueError("no source file given")
    out = check_output_dir(out)
    cfg = jet_config if kind == "raw" else None
    opener = _open_raw if kind == "raw" else _open_features

    with contextlib.ExitStack() as stack:
        frames = [stack.enter_context(opener(p)) for p in paths]  # every file checked first
        sources = []
        for path, frame in zip(paths, frames):
            lo, hi = _row_range(frame.n_rows, start, n_events, path)
            sources.append(_Source(path, kind, storage.sha256_file(path), path.stat().st_size, lo, hi))
        _check_duplicates(sources, [], out)
        stack.enter_context(_conversion_lock(out))
        planned = _plan_output(out, kind, cfg, sources, overwrite, append)
        writers = {
            label: _ShardWriter(out, name, shard_size, max((int(k) + 1 for k in planned.get(name, [])), default=0))
            for label, name in _SAMPLE_OF_LABEL.items()
        }
        for source, frame in zip(sources, frames):
            chunks = (_iter_raw(frame, source.start, source.stop, chunk_size, jet_config) if kind == "raw"
                      else _iter_features(frame, source.start, source.stop, chunk_size))
            before = {label: w.n_events for label, w in writers.items()}
            for w in writers.values():
                w.attrs = {"source": source.path.name, "kind": kind}
            with tqdm(total=source.stop - source.start, unit="event", unit_scale=True,
                      desc=f"converting {source.path.name}", disable=not progress) as bar:
                for n_read, cols in chunks:
                    for label, writer in writers.items():
                        sel = cols["label"] == label
                        writer.add({k: v[sel] for k, v in cols.items()})
                    bar.update(n_read)
            for w in writers.values():
                w.flush()
            source.n_events = {w.sample: w.n_events - before[label] for label, w in writers.items()}
            source.rows_passed = sum(source.n_events.values())
        template = _empty_columns(cfg)
        for name, writer in ((w.sample, w) for w in writers.values()):
            if not planned.get(name) and not writer.records:  # a new sample without events still exists
                writer.write_empty(template)
        totals = _commit(out, writers, planned, sources, kind, cfg)

    added = {w.sample: w.n_events for w in writers.values()}
    for source in sources:
        logger.info("converted %d of %d rows of %s into %s: %s", source.rows_passed,
                    source.stop - source.start, source.path, out, source.n_events)
    _warn_empty(out, totals, sources, kind)
    manifest = storage.load_manifest(out)
    mixed = mixed_sources(out, sorted(manifest["samples"]))
    if mixed:
        logger.warning("%s", mixed)
    return added


# ------------------------------------------------------------------------------ what a dataset holds


def convert_hint(root: Path | str) -> str:
    """How to make the dataset ``root`` from the LHC Olympics R&D files: both command lines, for
    a missing dataset (``data=lhco``)."""
    out = shlex.quote(str(root))
    features, raw = _FILES["features"], _FILES["raw"]
    return (
        f"convert the LHC Olympics R&D file with `{CONVERTER} {features[0]} {out} --kind features` "
        f"(jet features, {features[1]}; no tau43 or nconst inputs) or "
        f"`{CONVERTER} {raw[0]} {out} --kind raw` (particles, {raw[1]}; every input, slow)"
    )


def _entries(root: Path | str, samples: Sequence[str]) -> dict[str, dict[str, Any]]:
    manifest = storage.load_manifest(root)
    return {s: manifest["samples"][s] for s in samples if s in manifest["samples"]}


def unavailable_columns(root: Path | str, samples: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Per sample of ``samples`` in the dataset, the stored columns that hold placeholders instead
    of values (``missing_columns`` in the manifest; for samples converted before it was recorded,
    derived from the source kind). Samples the dataset lacks are left out."""
    out: dict[str, tuple[str, ...]] = {}
    for sample, entry in _entries(root, samples).items():
        if "missing_columns" in entry:
            out[sample] = tuple(entry["missing_columns"])
        else:
            out[sample] = MISSING_COLUMNS.get((entry.get("config") or {}).get("kind"), ())
    return out


_TAG_LENGTH = 500


def _provenance(entry: Mapping[str, Any]) -> str:
    origin = sample_origin(entry)
    config = entry.get("config") or {}
    if origin == "converted":
        sources = _legacy_sources(entry)
        shown = [s for s in sources if s.get("n_events")] or sources
        parts = []
        for s in shown:
            digest = f"sha256 {s['sha256'][:12]}" if s.get("sha256") else "no checksum recorded"
            parts.append(f"{s['file']} ({s['kind']}, {digest}, rows {s['start']}-{s['stop']})")
        text = "converted from " + "; ".join(parts) if parts else "converted (no source recorded)"
    elif origin == "generated":
        text = (f"generated by lhcad-generate (sample {config.get('sample')}, seed {config.get('seed')}, "
                f"config {entry.get('config_hash')})")
    else:
        text = "unknown origin"
    return text if len(text) <= _TAG_LENGTH else text[: _TAG_LENGTH - 3] + "..."


def sample_provenance(root: Path | str, samples: Sequence[str]) -> dict[str, str]:
    """Per sample, a one-line provenance for an MLflow tag (at most 500 characters), e.g.
    ``converted from events_anomalydetection_v2.features.h5 (features, sha256 3f2a..., rows 0-1100000)``
    or ``generated by lhcad-generate (sample sim, seed 1, config 9c1e...)``; ``missing`` for a sample
    the dataset lacks."""
    entries = _entries(root, samples)
    return {s: _provenance(entries[s]) if s in entries else "missing" for s in samples}


def mixed_sources(root: Path | str, samples: Sequence[str]) -> str | None:
    """A one-line warning when ``samples`` mix events converted from LHC Olympics files with
    events generated by lhcad-generate; ``None`` when they do not."""
    origins = {s: sample_origin(e) for s, e in _entries(root, samples).items()}
    converted = [s for s, o in origins.items() if o == "converted"]
    generated = [s for s, o in origins.items() if o == "generated"]
    if not converted or not generated:
        return None
    return (
        f"dataset {root} mixes sources: {', '.join(converted)} converted from LHC Olympics files, "
        f"{', '.join(generated)} generated by lhcad-generate (lhcad's own Pythia simulation and "
        "reconstruction, not the LHC Olympics detector simulation)"
    )


def missing_sample_hint(root: Path | str, sample: str) -> str:
    """What to do about a sample that the dataset ``root`` lacks (the text after 'no sample X')."""
    path = shlex.quote(str(root))
    entries = _entries(root, [*LHCO_SAMPLES, "sim", "outliers"]) if (Path(root) / storage.MANIFEST).is_file() else {}
    converted = [s for s, e in entries.items() if sample_origin(e) == "converted"]
    if not converted:
        generate = f"make it with `lhcad-generate sample={sample} out={path}` (see README, 'Data')"
        if sample in LHCO_SAMPLES:
            return f"{generate}, or {convert_hint(root)}"
        return f"{generate}; the LHC Olympics files have no '{sample}' sample"
    if sample in LHCO_SAMPLES:
        kind = (entries[converted[0]].get("config") or {}).get("kind", "raw")
        return f"add a file holding its events with `{CONVERTER} FILE {path} --kind {kind} --append`"
    return (
        f"{root} holds LHC Olympics events converted by {CONVERTER} ({', '.join(converted)}), and the LHC "
        f"Olympics R&D files have no '{sample}' sample, so no conversion makes one; use a method that needs "
        f"only qcd and signal, or add lhcad's own simulation with `lhcad-generate sample={sample} out={path}` "
        "(the run then mixes converted and generated events, and is tagged and warned so)"
    )


def check_samples_present(root: Path | str, samples: Sequence[str]) -> None:
    """Raise a :class:`DatasetError` naming the first sample of ``samples`` that ``root`` lacks (or
    holds without shards), with :func:`missing_sample_hint`; nothing when all are there."""
    manifest = storage.load_manifest(root)
    have = sorted(k for k, v in manifest["samples"].items() if v.get("shards"))
    for sample in samples:
        if sample not in have:
            raise DatasetError(
                f"dataset {Path(root)} has no sample '{sample}' (it has {have}); "
                + missing_sample_hint(root, sample)
            )
