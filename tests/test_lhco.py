"""Readers of the LHC Olympics 2020 R&D files, on small files written by pandas in the same layouts.

The raw-layout file holds real Pythia 8 QCD dijet events (final-state visible particles as
massless (pT, eta, phi), zero-padded to 700), so the reader is checked against the reconstruction
(:func:`build_events`) run directly on the same particles.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pandas as pd
import pytest
import vector

from lhcad.cli.convert_lhco import main as convert_main
from lhcad.data import storage
from lhcad.data.jets import JetConfig, build_events, massless_from_ptetaphi, particles_from_arrays
from lhcad.data.lhco import (
    FEATURES_FILE_COLUMNS,
    RAW_N_COLUMNS,
    RAW_N_PARTICLES,
    convert_lhco,
    iter_lhco_features,
    iter_lhco_raw,
    read_lhco_features,
    read_lhco_raw,
)
from lhcad.data.schema import CONSTITUENT_KEYS, FEATURE_COLUMNS, IMAGE_KEYS
from lhcad.data.storage import DatasetError

N_EVENTS = 48
SIGNAL_EVERY = 3  # rows with index % 3 == 0 get label 1

PYTHIA_SETTINGS = (
    "Beams:eCM = 13000.",
    "HardQCD:all = on",
    "PhaseSpace:pTHatMin = 1100.",
    "PartonLevel:MPI = off",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowInfo = 0",
    "Next:numberShowProcess = 0",
    "Init:showChangedSettings = off",
    "Init:showChangedParticleData = off",
    "Init:showProcesses = off",
    "Random:setSeed = on",
    "Random:seed = 20200",
)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pythia_particles() -> list[np.ndarray]:
    """Per event, the (pT, eta, phi) of its visible final-state particles (at most 700), float64."""
    pythia8mc = pytest.importorskip("pythia8mc")
    pythia = pythia8mc.Pythia("", False)
    for setting in PYTHIA_SETTINGS:
        assert pythia.readString(setting)
    assert pythia.init()
    prt = pythia.nextBatch(N_EVENTS).prt
    aid = abs(prt.id)
    prt = prt[(prt.status > 0) & (aid != 12) & (aid != 14) & (aid != 16)]
    events = []
    for px, py, pz in zip(ak.to_list(prt.p.px), ak.to_list(prt.p.py), ak.to_list(prt.p.pz)):
        px, py, pz = np.asarray(px), np.asarray(py), np.asarray(pz)
        pt = np.hypot(px, py)
        keep = pt > 0
        trip = np.stack([pt, np.arcsinh(pz / np.where(keep, pt, 1.0)), np.arctan2(py, px)], axis=1)[keep]
        events.append(trip[:RAW_N_PARTICLES])
    assert len(events) == N_EVENTS
    return events


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return (np.arange(N_EVENTS) % SIGNAL_EVERY == 0).astype(np.int8)


def raw_table(events: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """The (n, 2101) raw-file table: 700 x (pT, eta, phi) zero-padded, then the label."""
    table = np.zeros((len(events), RAW_N_COLUMNS))
    for i, trip in enumerate(events):
        table[i, : 3 * len(trip)] = trip.ravel()
    table[:, -1] = labels
    return table


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory, pythia_particles, labels) -> Path:
    path = tmp_path_factory.mktemp("lhco") / "events_anomalydetection.h5"
    pd.DataFrame(raw_table(pythia_particles, labels)).to_hdf(path, key="df", format="fixed")
    return path


def reference(
    events: list[np.ndarray], cfg: JetConfig = JetConfig()
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """build_events run directly on the particles (no file involved)."""
    flat = np.concatenate(events)
    px, py, pz, e = massless_from_ptetaphi(flat[:, 0], flat[:, 1], flat[:, 2])
    return build_events(particles_from_arrays(px, py, pz, e, [len(t) for t in events]), cfg)


@pytest.fixture(scope="module")
def raw_reference(pythia_particles) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return reference(pythia_particles)


def assert_columns_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(want) <= set(got)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def assert_columns_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ------------------------------------------------------------------------------------------------- raw


def test_raw_matches_build_events_on_same_particles(raw_file, raw_reference, labels):
    passed, want = raw_reference
    # the 1.2 TeV trigger must both keep and drop some of these pTHat > 1.1 TeV events
    assert 0 < passed.sum() < N_EVENTS
    got = read_lhco_raw(raw_file)
    assert list(got) == list(FEATURE_COLUMNS)
    assert len(got["label"]) == passed.sum()
    assert_columns_close(got, want)
    np.testing.assert_array_equal(got["label"], labels[passed])
    assert got["label"].dtype == np.int8
    # physics sanity of what came back
    assert np.all(np.maximum(got["j1_pt"], got["j2_pt"]) > 1200)
    assert np.all(got["j1_m"] >= got["j2_m"])
    assert np.all(got["j1_nconst"] > 0) and np.all(got["j2_nconst"] > 0)
    assert np.all(got["mjj"] > 2000)


def test_raw_images_and_constituents(raw_file, pythia_particles):
    cfg = JetConfig(images=True, image_npix=16, n_constituents=5)
    passed, want = reference(pythia_particles, cfg)
    got = read_lhco_raw(raw_file, jet_config=cfg, chunk_size=20)
    n = passed.sum()
    for key in IMAGE_KEYS:
        assert got[key].shape == (n, 16, 16)
        np.testing.assert_allclose(got[key].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    for key in CONSTITUENT_KEYS:
        assert got[key].shape == (n, 5, 4)
    assert_columns_close(got, want)


def test_raw_chunked_equals_single_chunk(raw_file):
    whole = read_lhco_raw(raw_file, chunk_size=10_000)
    chunks = list(iter_lhco_raw(raw_file, chunk_size=7))
    assert len(chunks) == -(-N_EVENTS // 7)
    assert all(list(c) == list(FEATURE_COLUMNS) for c in chunks)
    assert_columns_equal(read_lhco_raw(raw_file, chunk_size=7), whole)
    assert_columns_equal({k: np.concatenate([c[k] for c in chunks]) for k in whole}, whole)


def test_raw_reads_the_table_chunk_by_chunk(raw_file, monkeypatch):
    """Only ``chunk_size`` rows of df/block0_values are ever read at once."""
    reads: list[tuple[int, ...]] = []
    getitem = h5py.Dataset.__getitem__

    def spy(self, selection):
        value = getitem(self, selection)
        if self.name.endswith("_values"):
            reads.append(np.shape(value))
        return value

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    read_lhco_raw(raw_file, start=3, chunk_size=10)
    assert reads == [(10, RAW_N_COLUMNS)] * 4 + [(5, RAW_N_COLUMNS)]


@pytest.mark.parametrize(("start", "n_events"), [(0, 10), (13, 20), (40, None), (47, 1)])
def test_raw_start_and_n_events_select_rows(raw_file, raw_reference, start, n_events):
    passed, _ = raw_reference
    whole = read_lhco_raw(raw_file)
    stop = N_EVENTS if n_events is None else start + n_events
    # index, in the full read, of each passing row in [start, stop)
    position = np.cumsum(passed) - 1
    rows = np.arange(start, stop)[passed[start:stop]]
    got = read_lhco_raw(raw_file, start=start, n_events=n_events, chunk_size=6)
    assert_columns_equal(got, {k: v[position[rows]] for k, v in whole.items()})


def test_raw_row_range_clipped_and_checked(raw_file, raw_reference, caplog):
    passed, _ = raw_reference
    with caplog.at_level(logging.WARNING, logger="lhcad.data.lhco"):
        got = read_lhco_raw(raw_file, start=40, n_events=100)
    assert len(got["label"]) == passed[40:].sum()
    assert "has only 8 events after start=40" in caplog.text
    with pytest.raises(ValueError, match="beyond the end"):
        read_lhco_raw(raw_file, start=N_EVENTS + 1)
    empty = read_lhco_raw(raw_file, start=N_EVENTS, jet_config=JetConfig(n_constituents=3))
    assert all(len(v) == 0 for v in empty.values())
    assert empty["j1_constituents"].shape == (0, 3, 4)


def test_raw_multi_block_frame(tmp_path, pythia_particles, labels, raw_file):
    """A frame whose label column is int (a separate pandas block) reads the same."""
    df = pd.DataFrame(raw_table(pythia_particles, labels))
    df[RAW_N_COLUMNS - 1] = df[RAW_N_COLUMNS - 1].astype(np.int64)
    path = tmp_path / "int_label.h5"
    df.to_hdf(path, key="df", format="fixed")
    with h5py.File(path) as f:
        assert "df/block1_values" in f
    assert_columns_equal(read_lhco_raw(path, chunk_size=11), read_lhco_raw(raw_file))


def test_raw_bad_label_rejected(tmp_path, pythia_particles, labels):
    table = raw_table(pythia_particles[:5], labels[:5])
    table[3, -1] = 2.0
    path = tmp_path / "bad_label.h5"
    pd.DataFrame(table).to_hdf(path, key="df", format="fixed")
    with pytest.raises(DatasetError, match="row 3 has label 2.0"):
        read_lhco_raw(path)


# -------------------------------------------------------------------------------------------- features

# (pt, eta, phi, m, tau1, tau2, tau3) of jet 1 and jet 2 as stored in the file; rows 1 and 3 have the
# heavier jet second. Taus encode which file jet they belong to (x.1 = file jet 1, x.2 = file jet 2).
FEATURE_ROWS = [
    ((1500.0, 0.3, 0.5, 500.0, 0.51, 0.31, 0.21), (1400.0, -0.8, -2.6, 100.0, 0.52, 0.32, 0.22), 1),
    ((1300.0, 1.1, 3.0, 80.0, 0.61, 0.41, 0.11), (1350.0, -0.2, -0.1, 450.0, 0.62, 0.42, 0.12), 0),
    ((2000.0, -1.5, -3.1, 250.0, 0.71, 0.51, 0.31), (900.0, 2.0, 0.1, 20.0, 0.72, 0.52, 0.32), 0),
    ((1250.0, 0.0, 1.0, 10.0, 0.81, 0.61, 0.41), (1210.0, 0.4, -2.0, 300.0, 0.82, 0.62, 0.42), 1),
]


def features_frame() -> pd.DataFrame:
    data: dict[str, list[float]] = {c: [] for c in FEATURES_FILE_COLUMNS}
    for jets_ in FEATURE_ROWS:
        *jets, label = jets_
        for j, (pt, eta, phi, m, t1, t2, t3) in enumerate(jets, start=1):
            for name, value in (("px", pt * np.cos(phi)), ("py", pt * np.sin(phi)), ("pz", pt * np.sinh(eta)),
                                ("m", m), ("tau1", t1), ("tau2", t2), ("tau3", t3)):
                data[f"{name}j{j}"].append(value)
        data["label"].append(float(label))
    return pd.DataFrame(data)


@pytest.fixture
def features_file(tmp_path) -> Path:
    path = tmp_path / "events_anomalydetection_v2.features.h5"
    features_frame().to_hdf(path, key="df", format="fixed")
    return path


def test_features_mapping_and_heavier_jet_swap(features_file, caplog):
    with caplog.at_level(logging.WARNING, logger="lhcad.data.lhco"):
        got = read_lhco_features(features_file)
    assert list(got) == list(FEATURE_COLUMNS)
    fields = ("pt", "eta", "phi", "m", "tau1", "tau2", "tau3")
    for i, (jet1, jet2, label) in enumerate(FEATURE_ROWS):
        heavy, light = (jet2, jet1) if jet2[3] > jet1[3] else (jet1, jet2)
        for j, jet in ((1, heavy), (2, light)):
            for field, value in zip(fields, jet):
                assert got[f"j{j}_{field}"][i] == pytest.approx(value, rel=1e-5, abs=1e-5), (i, j, field)
        assert got["label"][i] == label
    # swapped in rows 1 and 3
    np.testing.assert_array_equal(got["j1_tau1"], np.float32([0.51, 0.62, 0.71, 0.82]))
    assert got["label"].dtype == np.int8 and got["j1_pt"].dtype == np.float32
    # tau4 and nconst are absent from the file
    for j in (1, 2):
        assert got[f"j{j}_tau4"].dtype == np.float32 and np.isnan(got[f"j{j}_tau4"]).all()
        assert got[f"j{j}_nconst"].dtype == np.int32 and (got[f"j{j}_nconst"] == -1).all()
    warnings = [r for r in caplog.records if r.name == "lhcad.data.lhco" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tau4" in warnings[0].getMessage() and "nconst" in warnings[0].getMessage()


def test_features_mjj_is_invariant_mass(features_file):
    got = read_lhco_features(features_file)
    jets = [vector.array({"pt": [r[j][0] for r in FEATURE_ROWS], "eta": [r[j][1] for r in FEATURE_ROWS],
                          "phi": [r[j][2] for r in FEATURE_ROWS], "mass": [r[j][3] for r in FEATURE_ROWS]})
            for j in (0, 1)]
    np.testing.assert_allclose(got["mjj"], (jets[0] + jets[1]).mass, rtol=1e-6)


def test_features_warns_once_when_chunked(features_file, caplog):
    with caplog.at_level(logging.WARNING, logger="lhcad.data.lhco"):
        chunks = list(iter_lhco_features(features_file, chunk_size=1))
    assert len(chunks) == len(FEATURE_ROWS)
    assert sum(r.name == "lhcad.data.lhco" for r in caplog.records) == 1
    assert_columns_equal({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]},
                         read_lhco_features(features_file))


@pytest.mark.parametrize("fmt", ["fixed", "table"])
def test_features_reordered_columns_map_identically(tmp_path, features_file, fmt):
    df = features_frame()
    df["label"] = df["label"].astype(np.int64)  # own pandas block, as a re-saved file might have
    rng = np.random.default_rng(0)
    columns = list(rng.permutation(df.columns))
    assert columns != list(FEATURES_FILE_COLUMNS)
    path = tmp_path / f"reordered_{fmt}.h5"
    df[columns].to_hdf(path, key="df", format=fmt)
    assert_columns_equal(read_lhco_features(path), read_lhco_features(features_file))


def test_features_start_and_n_events(features_file):
    whole = read_lhco_features(features_file)
    got = read_lhco_features(features_file, start=1, n_events=2)
    assert_columns_equal(got, {k: v[1:3] for k, v in whole.items()})


# ------------------------------------------------------------------------------------------ conversion


def test_convert_raw_round_trips_through_storage(tmp_path, raw_file, raw_reference, labels):
    passed, _ = raw_reference
    out = tmp_path / "dataset"
    cfg = JetConfig(n_constituents=4)
    counts = convert_lhco(raw_file, out, kind="raw", shard_size=5, chunk_size=9, jet_config=cfg,
                          progress=False)
    expected = read_lhco_raw(raw_file, jet_config=cfg)
    n_signal = int((labels[passed] == 1).sum())
    n_qcd = int((labels[passed] == 0).sum())
    assert n_signal > 0 and n_qcd > 0
    assert counts == {"qcd": n_qcd, "signal": n_signal}
    manifest = json.loads((out / "manifest.json").read_text())
    for sample, label, n in (("qcd", 0, n_qcd), ("signal", 1, n_signal)):
        got = storage.read_sample(out, sample)
        sel = expected["label"] == label
        assert_columns_equal({k: got[k] for k in expected}, {k: v[sel] for k, v in expected.items()})
        entry = manifest["samples"][sample]
        assert entry["n_events"] == n
        assert len(entry["shards"]) == -(-n // 5)
        assert all(s["n_events"] <= 5 for s in entry["shards"].values())
        config = entry["config"]
        assert config["kind"] == "raw" and config["label"] == label
        assert config["source"] == str(raw_file.resolve())
        assert config["jet_config"]["n_constituents"] == 4 and config["jet_config"]["trigger_pt"] == 1200.0
        assert config["rows_read"] == N_EVENTS


def test_convert_features_and_overwrite(tmp_path, features_file):
    out = tmp_path / "dataset"
    counts = convert_lhco(features_file, out, kind="features", progress=False)
    assert counts == {"qcd": 2, "signal": 2}
    expected = read_lhco_features(features_file)
    for sample, label in (("qcd", 0), ("signal", 1)):
        got = storage.read_sample(out, sample)
        assert_columns_equal(got, {k: v[expected["label"] == label] for k, v in expected.items()})
        assert storage.sample_info(out, sample)["config"]["jet_config"] is None
    with pytest.raises(DatasetError, match="already holds sample"):
        convert_lhco(features_file, out, kind="features", progress=False)
    counts = convert_lhco(features_file, out, kind="features", n_events=1, overwrite=True, progress=False)
    assert counts == {"qcd": 0, "signal": 1}
    assert len(storage.read_sample(out, "signal")["label"]) == 1
    assert len(storage.read_sample(out, "qcd")["label"]) == 0  # empty sample still exists, with all columns
    assert set(storage.read_sample(out, "qcd")) == set(FEATURE_COLUMNS)


def test_cli_converts_raw_with_constituents(tmp_path, raw_file, raw_reference):
    passed, _ = raw_reference
    out = tmp_path / "cli"
    rc = convert_main([str(raw_file), str(out), "--n-events", "20", "--constituents", "3", "--no-progress"])
    assert rc == 0
    qcd, signal = storage.read_sample(out, "qcd"), storage.read_sample(out, "signal")
    assert len(qcd["label"]) + len(signal["label"]) == passed[:20].sum()
    assert qcd["j1_constituents"].shape[1:] == (3, 4)
    with pytest.raises(SystemExit):
        convert_main([str(raw_file), str(out), "--kind", "features", "--images"])


def test_cli_reports_bad_input(tmp_path, caplog):
    rc = convert_main([str(tmp_path / "nope.h5"), str(tmp_path / "out"), "--no-progress"])
    assert rc == 1
    assert "file not found" in caplog.text
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(("reader", "record"), [(read_lhco_raw, "2629073"), (read_lhco_features, "4536377")])
def test_missing_file(tmp_path, reader, record):
    path = tmp_path / "events.h5"
    with pytest.raises(DatasetError, match="file not found") as info:
        reader(path)
    assert str(path) in str(info.value) and f"zenodo.org/records/{record}" in str(info.value)


@pytest.mark.parametrize(("reader", "record"), [(read_lhco_raw, "2629073"), (read_lhco_features, "4536377")])
def test_not_hdf5(tmp_path, reader, record):
    path = tmp_path / "events.h5"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(DatasetError, match="not an HDF5 file") as info:
        reader(path)
    assert record in str(info.value)


def test_hdf5_without_df_key(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["events"] = np.zeros((3, 2101))
    msg = r"no pandas DataFrame under key 'df' \(top-level keys: \['events'\]\)"
    with pytest.raises(DatasetError, match=msg):
        read_lhco_raw(path)


def test_raw_wrong_column_count(tmp_path):
    path = tmp_path / "short.h5"
    pd.DataFrame(np.zeros((3, 301))).to_hdf(path, key="df", format="fixed")
    with pytest.raises(DatasetError, match="has 301 columns, expected 2101") as info:
        read_lhco_raw(path)
    assert "700 particles" in str(info.value) and "2629073" in str(info.value)


def test_raw_reader_on_features_file_points_to_features_reader(features_file):
    with pytest.raises(DatasetError, match="has 15 columns, expected 2101.*read_lhco_features"):
        read_lhco_raw(features_file)


def test_features_missing_columns(tmp_path, raw_file):
    path = tmp_path / "no_tau.h5"
    features_frame().drop(columns=["tau3j1", "tau3j2"]).to_hdf(path, key="df", format="fixed")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['tau3j1', 'tau3j2'\]") as info:
        read_lhco_features(path)
    assert "4536377" in str(info.value)
    with pytest.raises(DatasetError, match="looks like the raw particle file"):
        read_lhco_features(raw_file)


def test_convert_bad_input_leaves_no_output(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        convert_lhco(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
