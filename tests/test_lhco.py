"""Readers of the LHC Olympics 2020 R&D files, on small files written by pandas in the same layouts.

The raw-layout file holds real Pythia 8 QCD dijet events (final-state visible particles as
massless (pT, eta, phi), zero-padded to 700), so the reader is checked against the reconstruction
(:func:`build_events`) run directly on the same particles.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pandas as pd
import pytest
import vector
from omegaconf import OmegaConf

from lhcad.cli.convert_lhco import build_parser
from lhcad.cli.convert_lhco import main as convert_main
from lhcad.config import ConfigError
from lhcad.data import Events, storage
from lhcad.data.jets import JetConfig, build_events, massless_from_ptetaphi, particles_from_arrays
from lhcad.data.lhco import (
    FEATURES_FILE_COLUMNS,
    RAW_N_COLUMNS,
    RAW_N_PARTICLES,
    check_samples_present,
    convert_hint,
    convert_lhco,
    iter_lhco_features,
    iter_lhco_raw,
    mixed_sources,
    read_lhco_features,
    read_lhco_raw,
    sample_provenance,
)
from lhcad.data.schema import CONSTITUENT_KEYS, FEATURE_COLUMNS, IMAGE_KEYS
from lhcad.data.storage import DatasetError
from lhcad.inputs import JetFeatures, check_inputs_available
from lhcad.paths import CONF_DIR, REPO_ROOT

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


# ------------------------------------------------------------------ LHC Olympics files as users have them

DEFAULT_INPUTS = ["m_over_pt", "sqrt_tau21", "tau21", "tau32", "tau43", "nconst"]  # conf/inputs/features.yaml
FEATURES_FILE_INPUTS = ["m_over_pt", "sqrt_tau21", "tau21", "tau32"]
FIXTURE = Path(__file__).parent / "data" / "fixture"


def label_file(tmp_path: Path, label: int, name: str) -> Path:
    """A features-layout file holding only the rows of one label (as the per-process files do)."""
    df = features_frame()
    path = tmp_path / name
    df[df["label"] == label].reset_index(drop=True).to_hdf(path, key="df", format="fixed")
    return path


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_features_dataset_records_missing_columns_and_default_inputs_adapt(tmp_path, features_file, caplog):
    out = tmp_path / "lhco"
    convert_lhco(features_file, out, kind="features", progress=False)
    for sample in ("qcd", "signal"):
        assert manifest_of(out)["samples"][sample]["missing_columns"] == ["j1_tau4", "j2_tau4", "j1_nconst", "j2_nconst"]
    assert DEFAULT_INPUTS == list(OmegaConf.load(Path(CONF_DIR) / "inputs" / "features.yaml").names)
    events = Events(storage.read_sample(out, "qcd"))
    with pytest.raises(ValueError, match="NaN"):  # what every per-jet method hit before
        JetFeatures(DEFAULT_INPUTS).event(events)
    with caplog.at_level(logging.WARNING, logger="lhcad.inputs"):
        names = check_inputs_available(out, ("qcd", "signal"), DEFAULT_INPUTS)
    assert names == FEATURES_FILE_INPUTS
    notes = [r.getMessage() for r in caplog.records if r.name == "lhcad.inputs"]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "tau43, nconst" in notes[0] and "inputs.names" in notes[0]
    x = JetFeatures(names).event(events)
    assert np.isfinite(x).all() and (x.std(axis=0) > 0).all()  # no NaN, no dead (constant) input
    # a dataset converted before missing_columns was recorded is recognised by its source kind
    manifest = manifest_of(out)
    for entry in manifest["samples"].values():
        del entry["missing_columns"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert check_inputs_available(out, ("qcd", "signal"), DEFAULT_INPUTS) == FEATURES_FILE_INPUTS


def test_explicit_inputs_the_dataset_lacks_are_a_config_error(tmp_path, features_file):
    out = tmp_path / "lhco"
    convert_lhco(features_file, out, kind="features", progress=False)
    with pytest.raises(ConfigError) as info:
        check_inputs_available(out, ("qcd", "signal"), ["m_over_pt", "tau21", "nconst"])
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert "inputs.names" in message and "nconst" in message
    working = re.search(r"'inputs\.names=\[(.*)\]'", message).group(1).split(",")
    assert working == ["m_over_pt", "tau21"]
    assert check_inputs_available(out, ("qcd", "signal"), working) == working
    # the same preset list chosen explicitly (e.g. by an override) is not adapted either
    with pytest.raises(ConfigError, match="inputs.names"):
        check_inputs_available(out, ("qcd",), DEFAULT_INPUTS, explicit=True)
    # dijet (event-level) features: tau43 of either jet needs tau4
    with pytest.raises(ConfigError, match=r"'method.features=\[mj_lighter,tau21_j1\]'"):
        check_inputs_available(out, ("qcd",), ["mj_lighter", "tau21_j1", "tau43_j2"], key="method.features")
    with pytest.raises(ConfigError, match="no other feature"):
        check_inputs_available(out, ("qcd",), ["nconst"], explicit=False)


def test_generated_and_raw_datasets_keep_every_input(tmp_path, raw_file):
    assert check_inputs_available(FIXTURE, ("qcd", "signal", "sim"), DEFAULT_INPUTS) == DEFAULT_INPUTS
    out = tmp_path / "raw"
    convert_lhco(raw_file, out, kind="raw", progress=False)
    assert manifest_of(out)["samples"]["qcd"]["missing_columns"] == []
    assert check_inputs_available(out, ("qcd", "signal"), ["m", "tau43", "nconst"]) == ["m", "tau43", "nconst"]


def hinted_commands(text: str) -> list[list[str]]:
    """The lhcad-convert-lhco command lines quoted in ``text`` (between backticks or in comments)."""
    found = re.findall(r"`(lhcad-convert-lhco [^`]*)`", text)
    found += re.findall(r"^#\s+(lhcad-convert-lhco .*)$", text, flags=re.M)
    return [shlex.split(cmd) for cmd in found]


def test_convert_hint_commands_parse(tmp_path):
    root = tmp_path / "data dir" / "lhco"
    hint = convert_hint(root)
    commands = hinted_commands(hint)
    assert len(commands) == 2
    kinds = set()
    for argv in commands:
        assert argv[0] == "lhcad-convert-lhco"
        args = build_parser().parse_args(argv[1:])
        assert args.out == str(root) and len(args.src) == 1
        kinds.add((args.kind, args.src[0]))
    assert kinds == {("features", "events_anomalydetection_v2.features.h5"), ("raw", "events_anomalydetection.h5")}
    # the commands quoted in conf/data/lhco.yaml parse too, and write where data=lhco reads
    yaml_text = (Path(CONF_DIR) / "data" / "lhco.yaml").read_text()
    yaml_commands = hinted_commands(yaml_text)
    assert len(yaml_commands) >= 2 and "--out" not in yaml_text
    for argv in yaml_commands:
        args = build_parser().parse_args(argv[1:])
        assert args.out == "data/lhco"
    assert {build_parser().parse_args(a[1:]).kind for a in yaml_commands} == {"features", "raw"}


def test_convert_per_label_files_at_once(tmp_path, features_file):
    qcd_file = label_file(tmp_path, 0, "qcd_features.h5")
    signal_file = label_file(tmp_path, 1, "signal_features.h5")
    out = tmp_path / "both"
    rc = convert_main([str(qcd_file), str(signal_file), str(out), "--kind", "features", "--no-progress"])
    assert rc == 0
    whole = read_lhco_features(features_file)
    for sample, label in (("qcd", 0), ("signal", 1)):
        assert_columns_equal(storage.read_sample(out, sample), {k: v[whole["label"] == label] for k, v in whole.items()})
        entry = manifest_of(out)["samples"][sample]
        assert [(s["file"], s["n_events"]) for s in entry["sources"]] == [("qcd_features.h5", 2 * (1 - label)),
                                                                          ("signal_features.h5", 2 * label)]
        assert entry["n_events"] == 2
    with pytest.raises(DatasetError, match="same file"):  # one file twice in one call
        convert_lhco([qcd_file, qcd_file], tmp_path / "twice", kind="features", progress=False)
    assert not (tmp_path / "twice").exists()


def test_convert_one_label_file_warns_then_append_completes(tmp_path, raw_file, caplog):
    qcd_file = label_file(tmp_path, 0, "qcd_features.h5")
    signal_file = label_file(tmp_path, 1, "signal_features.h5")
    out = tmp_path / "lhco"
    with caplog.at_level(logging.WARNING, logger="lhcad.data.lhco"):
        assert convert_lhco(signal_file, out, kind="features", progress=False) == {"qcd": 0, "signal": 2}
    empty = [r.getMessage() for r in caplog.records if "EMPTY" in r.getMessage()]
    assert len(empty) == 1 and "'qcd'" in empty[0] and "--append" in empty[0]

    with pytest.raises(DatasetError, match="--append"):
        convert_lhco(qcd_file, out, kind="features", progress=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lhcad.data.lhco"):
        rc = convert_main([str(qcd_file), str(out), "--kind", "features", "--append", "--no-progress"])
    assert rc == 0 and "EMPTY" not in caplog.text
    manifest = manifest_of(out)
    for sample in ("qcd", "signal"):
        entry = manifest["samples"][sample]
        assert entry["n_events"] == 2 == len(storage.read_sample(out, sample)["label"])
        assert sum(s["n_events"] for s in entry["sources"]) == entry["n_events"]
        assert [s["file"] for s in entry["sources"]] == ["signal_features.h5", "qcd_features.h5"]
        assert entry["sources"][1]["sha256"] == storage.sha256_file(qcd_file)
        assert entry["sources"][1]["size"] == qcd_file.stat().st_size
    assert (storage.read_sample(out, "qcd")["label"] == 0).all()

    before = (out / "manifest.json").read_bytes()
    renamed = tmp_path / "copy_of_qcd.h5"  # same bytes under another name: still a duplicate
    shutil.copy(qcd_file, renamed)
    with pytest.raises(DatasetError, match="already in"):
        convert_lhco(renamed, out, kind="features", append=True, progress=False)
    with pytest.raises(DatasetError, match="converted from a features file"):
        convert_lhco(raw_file, out, kind="raw", append=True, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    # other rows of a file already converted may be added: here, none overlap
    part = tmp_path / "part.h5"
    features_frame().to_hdf(part, key="df", format="fixed")
    convert_lhco(part, out, kind="features", n_events=2, append=True, progress=False)
    with pytest.raises(DatasetError, match="already in"):
        convert_lhco(part, out, kind="features", start=1, append=True, progress=False)
    convert_lhco(part, out, kind="features", start=2, append=True, progress=False)
    assert storage.sample_info(out, "qcd")["n_events"] + storage.sample_info(out, "signal")["n_events"] == 8


def test_interrupted_append_leaves_the_manifest_unchanged(tmp_path, features_file):
    out = tmp_path / "lhco"
    convert_lhco(features_file, out, kind="features", progress=False)
    before = (out / "manifest.json").read_bytes()
    bad = features_frame()
    bad.loc[3, "label"] = 2.0  # found only when the last chunk is read
    path = tmp_path / "bad_last_row.h5"
    bad.to_hdf(path, key="df", format="fixed")
    with pytest.raises(DatasetError, match="row 3 has label 2.0"):
        convert_lhco(path, out, kind="features", chunk_size=1, shard_size=1, append=True, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    assert len(storage.read_sample(out, "qcd")["label"]) == 2


def add_generated_sample(root: Path, sample: str) -> None:
    """Copy a sample made by lhcad-generate (from the test fixture) into ``root``."""
    shutil.copytree(FIXTURE / sample, root / sample)
    with storage.edit_manifest(root) as manifest:
        manifest["samples"][sample] = manifest_of(FIXTURE)["samples"][sample]


def test_provenance_mixed_sources_and_overwrite_removes_stale_samples(tmp_path, features_file, caplog):
    out = tmp_path / "lhco"
    convert_lhco(features_file, out, kind="features", progress=False)
    digest = storage.sha256_file(features_file)[:12]
    # sim / outliers: the hint no longer says to convert (which never makes them)
    with pytest.raises(DatasetError) as info:
        check_samples_present(out, ("qcd", "signal", "sim"))
    message = str(info.value)
    assert "no sample 'sim'" in message and "no conversion makes one" in message
    assert f"lhcad-generate sample=sim out={out}" in message and "mixes converted and generated" in message
    check_samples_present(out, ("qcd", "signal"))

    add_generated_sample(out, "sim")
    prov = sample_provenance(out, ("qcd", "signal", "sim", "outliers"))
    assert prov["qcd"] == f"converted from {features_file.name} (features, sha256 {digest}, rows 0-4)"
    assert prov["sim"].startswith("generated by lhcad-generate (sample sim, seed 2026, config 7bc63c54e86a9f58")
    assert prov["outliers"] == "missing"
    assert all(len(v) <= 500 for v in prov.values())
    assert mixed_sources(out, ("qcd", "signal")) is None
    mixed = mixed_sources(out, ("qcd", "signal", "sim"))
    assert mixed is not None and "qcd, signal converted" in mixed and "sim generated" in mixed
    assert mixed_sources(FIXTURE, ("qcd", "signal", "sim")) is None
    assert len(storage.read_sample(out, "sim")["label"]) == 8000

    # --overwrite replaces the whole dataset: no stale generated sample survives
    rc = convert_main([str(features_file), str(out), "--kind", "features", "--overwrite", "--no-progress", "--n-events", "3"])
    assert rc == 0
    assert sorted(manifest_of(out)["samples"]) == ["qcd", "signal"] and not (out / "sim").exists()
    assert sample_provenance(out, ("qcd",))["qcd"].endswith("rows 0-3)")
    with pytest.raises(DatasetError, match="no sample 'sim'"):
        storage.read_sample(out, "sim")
    # converting next to a generated sample warns that the dataset mixes sources
    mixed_dir = tmp_path / "mixed"
    add_generated_sample(mixed_dir, "sim")
    with pytest.raises(DatasetError) as info:  # not converted: generate, or convert (with a command that parses)
        check_samples_present(mixed_dir, ("qcd",))
    assert "lhcad-generate sample=qcd" in str(info.value)
    assert build_parser().parse_args(hinted_commands(str(info.value))[0][1:]).out == str(mixed_dir)
    with pytest.raises(DatasetError) as info:  # a generated dataset without outliers: conversion is no answer
        check_samples_present(mixed_dir, ("sim", "outliers"))
    assert "lhcad-generate sample=outliers" in str(info.value) and "lhcad-convert-lhco" not in str(info.value)
    with caplog.at_level(logging.WARNING, logger="lhcad.data.lhco"):
        convert_lhco(features_file, mixed_dir, kind="features", progress=False)
    assert "mixes sources" in caplog.text
    generated = tmp_path / "generated"
    add_generated_sample(generated, "qcd")
    before = (generated / "manifest.json").read_bytes()
    with pytest.raises(DatasetError, match="generated by lhcad-generate"):  # never appended to a generated sample
        convert_lhco(features_file, generated, kind="features", append=True, progress=False)
    assert (generated / "manifest.json").read_bytes() == before


def test_provenance_of_a_legacy_converted_sample(tmp_path, features_file):
    out = tmp_path / "lhco"
    convert_lhco(features_file, out, kind="features", progress=False)
    manifest = manifest_of(out)
    for entry in manifest["samples"].values():  # as written before sources were recorded
        del entry["sources"], entry["missing_columns"], entry["config"]["origin"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    prov = sample_provenance(out, ("signal",))["signal"]
    assert prov == f"converted from {features_file.name} (features, no checksum recorded, rows 0-4)"
    # appending to it still works, and refuses the file it came from (same path)
    with pytest.raises(DatasetError, match="already in"):
        convert_lhco(features_file, out, kind="features", append=True, progress=False)
    convert_lhco(label_file(tmp_path, 1, "more_signal.h5"), out, kind="features", append=True, progress=False)
    entry = manifest_of(out)["samples"]["signal"]
    assert [s["n_events"] for s in entry["sources"]] == [2, 2] and entry["n_events"] == 4


@pytest.mark.parametrize("under", [False, True])
def test_cli_output_path_that_is_a_file(tmp_path, features_file, capsys, under):
    existing = tmp_path / "lhco.txt"
    existing.write_text("not a dataset")
    out = existing / "dataset" if under else existing
    rc = convert_main([str(features_file), str(out), "--kind", "features", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "existing file" in err and str(existing) in err
    assert existing.read_text() == "not a dataset"
    with pytest.raises(DatasetError, match="existing file"):
        convert_lhco(features_file, out, kind="features", progress=False)
