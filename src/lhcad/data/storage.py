"""On-disk layout of an lhcad dataset: sharded HDF5 files plus a JSON manifest.

    <dataset>/
      manifest.json            generation config, per-shard counts and sha256 checksums, per sample
      qcd/shard_00000.h5       one HDF5 file per shard; one 1-D dataset per column,
      qcd/shard_00001.h5       images (n, 40, 40) and constituents (n, K, 4) as their own datasets
      signal/shard_00000.h5
      ...

Shards are written to a temporary file and renamed into place, and the manifest is rewritten
atomically under a file lock, so a killed writer never leaves a corrupt shard or manifest behind
(a temporary manifest it left is removed by the next lock holder).
:func:`read_sample` checks every shard against the manifest before returning anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

MANIFEST = "manifest.json"
FORMAT = "lhcad-dataset"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """A dataset on disk is missing, incomplete or does not match its manifest."""


def generate_hint(root: Path | str, sample: str) -> str:
    """How to make a sample that is not there."""
    from lhcad.data.generation_config import command_value  # the generator's layer, on demand

    cmd = " ".join(["lhcad-generate", f"sample={sample}", shlex.quote(f"out={command_value(str(root))}")])
    return (
        f"make it with `{cmd}` (see README, 'Data'), "
        f"or convert the LHC Olympics files with `lhcad-convert-lhco SRC {shlex.quote(str(root))}`"
    )


def regenerate_hint(root: Path | str, sample: str, entry: Mapping[str, Any]) -> str:
    """The exact command that redoes a sample's missing or bad shards, from its manifest entry."""
    config = entry.get("config") or {}
    if "pythia" in config:  # made by lhcad-generate
        from lhcad.data.generation_config import regenerate_command  # the generator's layer, on demand

        cmd = regenerate_command(root, sample, entry)
        if cmd is not None:
            return f"re-run `{cmd}` (it keeps the complete shards and redoes the others)"
        return (
            f"re-run the lhcad-generate command that made it (sample={sample}, out={root}, "
            f"seed={config.get('seed')}, shard_size={config.get('shard_size')} and the physics settings "
            f"recorded in {Path(root) / MANIFEST})"
        )
    files = [str(src.get("path") or src.get("name")) for src in entry.get("sources") or []]
    if not files and config.get("source"):
        files = [str(config["source"])]
    if files:  # made by lhcad-convert-lhco
        return (
            f"convert {', '.join(files)} again with `lhcad-convert-lhco` (see README, 'The real LHC "
            "Olympics R&D files'; --overwrite replaces every sample of the directory)"
        )
    return "re-run the command that made it (see README, 'Data')"


def shard_path(root: Path | str, sample: str, index: int) -> Path:
    """Path of shard ``index`` of ``sample`` under ``root``."""
    return Path(root) / sample / f"shard_{index:05d}.h5"


def sha256_file(path: Path | str, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_shard(path: Path | str, columns: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> str:
    """Write one shard atomically (temporary file + rename) and return its sha256.

    Every array must have the same first dimension. Arrays are stored chunked and compressed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of a shard must have equal length, got {lengths}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for name, arr in columns.items():
                arr = np.ascontiguousarray(arr)
                chunks = (min(len(arr), 4096 if arr.ndim == 1 else 256), *arr.shape[1:]) if len(arr) else None
                f.create_dataset(
                    name, data=arr, chunks=chunks, compression="gzip" if len(arr) else None,
                    compression_opts=4 if len(arr) else None, shuffle=bool(len(arr)), track_times=False,
                )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def read_shard(path: Path | str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """All (or the named) arrays of one shard file."""
    with h5py.File(path, "r") as f:
        names = list(f.keys()) if columns is None else list(columns)
        missing = [c for c in names if c not in f]
        if missing:
            raise DatasetError(f"{path} has no column(s) {missing}; it holds {sorted(f.keys())}")
        return {c: f[c][()] for c in names}


# ---------------------------------------------------------------------------------------------- manifest


@contextlib.contextmanager
def manifest_lock(root: Path | str) -> Iterator[None]:
    """Exclusive lock on a dataset's manifest (several writers may share one directory).

    The manifest's temporary file is only ever written under this lock, so one found on taking
    it was left by a writer that died mid-write; it is removed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".manifest.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for stale in root.glob(f".{MANIFEST}.tmp-*"):
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_manifest(root: Path | str, *, must_exist: bool = True) -> dict[str, Any]:
    """Parsed manifest of a dataset (an empty one if absent and ``must_exist`` is False)."""
    path = Path(root) / MANIFEST
    if not path.exists():
        if must_exist:
            raise DatasetError(
                f"no lhcad dataset at {Path(root).resolve()} (no {MANIFEST}); "
                + generate_hint(root, "qcd")
            )
        return {"format": FORMAT, "version": FORMAT_VERSION, "samples": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); regenerate the dataset") from exc
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an lhcad dataset manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {manifest.get('version')}, this lhcad reads {FORMAT_VERSION}")
    return manifest


def save_manifest(root: Path | str, manifest: Mapping[str, Any]) -> None:
    """Write the manifest atomically (call under :func:`manifest_lock`)."""
    atomic_write_bytes(Path(root) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


@contextlib.contextmanager
def edit_manifest(root: Path | str) -> Iterator[dict[str, Any]]:
    """Read-modify-write the manifest under the lock: yields it (empty if absent), saves it on success.

    Every sample entry's ``n_events`` is recomputed from its shards before saving.
    """
    with manifest_lock(root):
        manifest = load_manifest(root, must_exist=False)
        yield manifest
        for entry in manifest["samples"].values():
            entry["n_events"] = int(sum(s["n_events"] for s in entry.get("shards", {}).values()))
        save_manifest(root, manifest)


def update_sample(root: Path | str, sample: str, update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into one sample's manifest entry; returns the new entry."""
    with edit_manifest(root) as manifest:
        entry = manifest["samples"].setdefault(sample, {})
        entry.update(update)
    return entry


def record_shards(root: Path | str, sample: str, records: Mapping[int | str, Mapping[str, Any]]) -> None:
    """Add (or replace) finished shards, ``{index: record}``, in a sample's manifest entry (one rewrite)."""
    if not records:
        return
    with edit_manifest(root) as manifest:
        shards = manifest["samples"].setdefault(sample, {}).setdefault("shards", {})
        shards.update({str(index): dict(info) for index, info in records.items()})


# ---------------------------------------------------------------------------------------------- reading


def sample_info(root: Path | str, sample: str) -> dict[str, Any]:
    """Manifest entry of ``sample``, with a clear error when the dataset lacks it."""
    manifest = load_manifest(root)
    if sample not in manifest["samples"] or not manifest["samples"][sample].get("shards"):
        have = sorted(k for k, v in manifest["samples"].items() if v.get("shards"))
        raise DatasetError(
            f"dataset {Path(root).resolve()} has no sample '{sample}' (it has {have}); "
            + generate_hint(root, sample)
        )
    return manifest["samples"][sample]


def verify_sample(root: Path | str, sample: str) -> list[Path]:
    """Check every shard of a sample against the manifest (presence, checksum); return their paths in order."""
    root = Path(root)
    entry = sample_info(root, sample)
    shards = entry["shards"]
    paths = []
    for key in sorted(shards, key=int):
        info = shards[key]
        path = root / info["file"]
        if not path.exists():
            raise DatasetError(
                f"shard {path} listed in {root / MANIFEST} is missing; "
                + regenerate_hint(root, sample, entry)
            )
        digest = sha256_file(path)
        if digest != info["sha256"]:
            raise DatasetError(
                f"shard {path} is corrupt or was modified (sha256 {digest[:12]}... does not match the "
                f"manifest's {info['sha256'][:12]}...); " + regenerate_hint(root, sample, entry)
            )
        paths.append(path)
    requested = entry.get("n_requested")
    if requested is not None and entry["n_events"] < requested:
        log.warning(
            "sample '%s' in %s is incomplete (%d of %d requested events); %s", sample, root,
            entry["n_events"], requested, regenerate_hint(root, sample, entry),
        )
    return paths


def read_sample(
    root: Path | str, name: str, columns: Sequence[str] | None = None, *, verify: bool = True
) -> dict[str, np.ndarray]:
    """Columns of sample ``name`` in dataset ``root`` as a mapping column -> numpy array.

    Scalar columns are 1-D arrays of length n_events; images are (n, npix, npix) and constituents
    (n, K, 4) arrays under their own keys (``j1_image``, ``j1_constituents``, ...).

    Args:
        root: dataset directory (holding ``manifest.json``).
        name: sample name, e.g. ``"qcd"`` or ``"signal"``.
        columns: subset of columns to read (default: all).
        verify: check every shard's sha256 against the manifest first.

    Raises:
        DatasetError: the dataset or sample is missing, a shard is missing, truncated or modified.
    """
    root = Path(root)
    if verify:
        paths = verify_sample(root, name)
    else:
        shards = sample_info(root, name)["shards"]
        paths = [root / shards[key]["file"] for key in sorted(shards, key=int)]
    parts: list[dict[str, np.ndarray]] = []
    for path in paths:
        try:
            parts.append(read_shard(path, columns))
        except (OSError, KeyError) as exc:
            raise DatasetError(
                f"cannot read shard {path} ({exc}); delete it and "
                + regenerate_hint(root, name, sample_info(root, name))
            ) from exc
    keys = list(parts[0])
    for path, part in zip(paths, parts):
        if list(part) != keys:
            raise DatasetError(f"shard {path} has columns {list(part)}, expected {keys}")
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}
