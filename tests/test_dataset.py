"""Dataset assembly: Events, signal injection, splits, correlation and JES transforms."""

from __future__ import annotations

import numpy as np
import pytest

from lhcad.data.dataset import inject_signal, load_dataset, split
from lhcad.data.events import Events, jet_features
from lhcad.data.storage import DatasetError, record_shards, shard_path, write_shard
from lhcad.data.transforms import (
    DEFAULT_JES_SHIFT,
    apply_jes,
    atlas_run1_jer,
    correlate_mass,
    jes_variations,
    paper002_shift,
)

N_BKG, N_SIG = 4000, 600


def table(n: int, label: int, offset: int = 0) -> Events:
    """Arange-based events; ``uid`` identifies every row uniquely across samples via ``offset``."""
    i = np.arange(n)
    return Events({
        "uid": i + offset,
        "label": np.full(n, label, np.int8),
        "mjj": (3000.0 + i).astype(np.float32),
        "j1_m": (100.0 + i % 400).astype(np.float32),
        "j2_m": (50.0 + i % 50).astype(np.float32),
        "j1_image": np.broadcast_to(i[:, None, None] % 7, (n, 4, 4)).astype(np.float32),
    })


@pytest.fixture
def bkg() -> Events:
    return table(N_BKG, 0)


@pytest.fixture
def sig() -> Events:
    return table(N_SIG, 1, offset=1_000_000)


def physical_events(n: int = 3000, seed: int = 7) -> Events:
    """Jets with consistent kinematics: mjj computed here from (pt, eta, phi, m)."""
    r = np.random.default_rng(seed)
    pt1, pt2 = r.uniform(1200, 2000, n), r.uniform(300, 1800, n)
    eta1, eta2 = r.uniform(-2, 2, n), r.uniform(-2, 2, n)
    phi1 = r.uniform(-np.pi, np.pi, n)
    phi2 = phi1 + np.pi + r.normal(0, 0.2, n)
    m1, m2 = r.uniform(100, 600, n), r.uniform(10, 100, n)
    cons = r.uniform(1, 100, (n, 5, 4)).astype(np.float32)
    taus = {f"j{j}_tau{k}": r.uniform(0.1, 1, n).astype(np.float32) for j in (1, 2) for k in (1, 2, 3, 4)}
    ev = {
        "mjj": mjj_reference(pt1, eta1, phi1, m1, pt2, eta2, phi2, m2).astype(np.float32),
        "label": np.zeros(n, np.int8),
        "j1_pt": pt1, "j1_eta": eta1, "j1_phi": phi1, "j1_m": m1,
        "j2_pt": pt2, "j2_eta": eta2, "j2_phi": phi2, "j2_m": m2,
        "j1_constituents": cons, "j2_constituents": cons.copy(),
        "j1_image": r.dirichlet(np.ones(16), n).reshape(n, 4, 4).astype(np.float32),
        "j1_nconst": r.integers(5, 80, n).astype(np.int32),
        **taus,
    }
    return Events({k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in ev.items()})


def mjj_reference(pt1, eta1, phi1, m1, pt2, eta2, phi2, m2) -> np.ndarray:
    p = []
    for pt, eta, phi, m in ((pt1, eta1, phi1, m1), (pt2, eta2, phi2, m2)):
        pt, eta, phi, m = (np.asarray(x, np.float64) for x in (pt, eta, phi, m))
        e = np.sqrt((pt * np.cosh(eta)) ** 2 + m**2)
        p.append(np.stack([e, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)]))
    tot = p[0] + p[1]
    return np.sqrt(tot[0] ** 2 - tot[1] ** 2 - tot[2] ** 2 - tot[3] ** 2)


# ---------------------------------------------------------------------------------------------- Events


def test_events_basics() -> None:
    ev = table(10, 0)
    assert len(ev) == 10 and len(ev.keys()) == 6 and "mjj" in ev
    assert np.array_equal(ev.labels, np.zeros(10))
    assert np.array_equal(ev.take(np.array([3, 1]))["uid"], [3, 1])
    assert np.array_equal(ev.take(ev["uid"] % 2 == 0)["uid"], [0, 2, 4, 6, 8])
    assert len(ev.take([])) == 0
    assert ev.take(np.arange(10)) == ev
    assert list(ev.select(["mjj", "uid"]).keys()) == ["mjj", "uid"]
    both = Events.concat([ev, ev.take(np.arange(3))])
    assert len(both) == 13 and both["j1_image"].shape == (13, 4, 4)
    ev2 = ev.with_columns(extra=np.ones(10))
    assert "extra" in ev2 and "extra" not in ev
    with pytest.raises(ValueError):
        ev["mjj"][0] = 1.0  # read-only


def test_events_errors_name_columns() -> None:
    with pytest.raises(ValueError, match="mjj.*5.*j1_m.*4"):
        Events({"mjj": np.zeros(5), "j1_m": np.zeros(4)})
    ev = table(5, 0)
    with pytest.raises(ValueError, match="extra"):
        ev.with_columns(extra=np.zeros(3))
    with pytest.raises(ValueError, match="only in part 1"):
        Events.concat([ev, ev.select(["mjj"])])
    with pytest.raises(KeyError, match="nope"):
        ev.select(["nope"])
    with pytest.raises(IndexError, match="mask"):
        ev.take(np.ones(3, bool))


def test_jet_features_derived_and_zero_guard() -> None:
    ev = Events({
        "j1_tau1": np.array([0.5, 0.0, 0.4]), "j1_tau2": np.array([0.25, 0.3, 0.0]),
        "j1_tau3": np.array([0.1, 0.1, 0.2]), "j1_tau4": np.array([0.05, 0.0, 0.1]),
        "j1_m": np.array([100.0, 200.0, 300.0]), "j1_nconst": np.array([10, 20, 30], np.int32),
    })
    x = jet_features(ev, 1, ["m", "tau21", "tau32", "tau43", "sqrt_tau21", "nconst"])
    assert x.dtype == np.float32 and x.shape == (3, 6)
    np.testing.assert_allclose(x[:, 0], [100, 200, 300])
    np.testing.assert_allclose(x[:, 1], [0.5, 0.0, 0.0])  # tau1 = 0 -> 0
    np.testing.assert_allclose(x[:, 2], [0.4, 1 / 3, 0.0], rtol=1e-6)  # tau2 = 0 -> 0
    np.testing.assert_allclose(x[:, 3], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(x[:, 4], [np.sqrt(0.25) / 0.5, 0.0, 0.0])
    np.testing.assert_allclose(x[:, 5], [10, 20, 30])
    with pytest.raises(KeyError, match="j2_m"):
        jet_features(ev, 2, ["m"])


def test_load_dataset(tmp_path) -> None:
    for name, ev in (("qcd", table(30, 0)), ("signal", table(10, 1))):
        for i, rows in enumerate((slice(0, 20), slice(20, None))):
            part = ev.take(rows)
            if len(part):
                path = shard_path(tmp_path, name, i)
                digest = write_shard(path, dict(part.items()))
                info = {"file": str(path.relative_to(tmp_path)), "sha256": digest, "n_events": len(part)}
                record_shards(tmp_path, name, {i: info})
    data = load_dataset(tmp_path, columns=["mjj", "label"])
    assert list(data) == ["qcd", "signal"]
    assert len(data["qcd"]) == 30 and len(data["signal"]) == 10
    assert list(data["qcd"].keys()) == ["mjj", "label"]
    assert data["qcd"] == table(30, 0).select(["mjj", "label"])
    with pytest.raises(DatasetError, match="no sample 'sim'"):
        load_dataset(tmp_path, samples=("sim",))


# ---------------------------------------------------------------------------------------------- injection


@pytest.mark.parametrize(
    ("signal_frac", "n_events", "n_sig"),
    [(0.0, 1000, 0), (0.003, 1000, 3), (0.001, 1500, 2), (0.01, 2000, 20), (0.1, 3333, 333),
     (0.25, 2400, 600)],
)
def test_injection_exact_and_partition(
    bkg: Events, sig: Events, signal_frac: float, n_events: int, n_sig: int
) -> None:
    sample, unused = inject_signal(bkg, sig, signal_frac, n_events, np.random.default_rng(1))
    assert n_sig == round(signal_frac * n_events)
    assert len(sample) == n_events
    assert int(sample.labels.sum()) == n_sig
    assert int((sample.labels == 0).sum()) == n_events - n_sig
    # injected + unused signal is exactly the signal sample: nothing lost, nothing duplicated
    injected = sample["uid"][sample.labels == 1]
    both = np.concatenate([injected, unused["uid"]])
    assert len(both) == N_SIG and np.array_equal(np.sort(both), sig["uid"])
    assert np.all(unused.labels == 1)
    # background drawn without replacement, rows kept intact
    bkg_uid = sample["uid"][sample.labels == 0]
    assert len(np.unique(bkg_uid)) == len(bkg_uid) and np.all(bkg_uid < N_BKG)
    assert np.array_equal(sample["mjj"], 3000.0 + sample["uid"] % 1_000_000)
    assert np.array_equal(sample["j1_image"][:, 0, 0], (sample["uid"] % 1_000_000) % 7)


def test_injection_shuffled_and_default_size(bkg: Events, sig: Events) -> None:
    sample, _ = inject_signal(bkg, sig, 0.1, 2000, np.random.default_rng(3))
    pos = np.flatnonzero(sample.labels == 1)
    assert pos.min() < 200 and pos.max() > 1800  # signal spread over the sample, not appended
    full, _ = inject_signal(bkg, sig, 0.1, None, 5)
    assert int((full.labels == 0).sum()) == N_BKG  # all background used
    assert int(full.labels.sum()) == round(0.1 * len(full))
    zero, unused = inject_signal(bkg, sig, 0.0, None, 5)
    assert len(zero) == N_BKG and zero.labels.sum() == 0 and len(unused) == N_SIG


def test_injection_reproducible(bkg: Events, sig: Events) -> None:
    a, _ = inject_signal(bkg, sig, 0.05, 1000, np.random.default_rng(11))
    b, _ = inject_signal(bkg, sig, 0.05, 1000, np.random.default_rng(11))
    c, _ = inject_signal(bkg, sig, 0.05, 1000, np.random.default_rng(12))
    assert a == b and not np.array_equal(a["uid"], c["uid"])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_injection_bad_fraction(bkg: Events, sig: Events, bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\).*got " + ("nan" if bad != bad else str(bad))):
        inject_signal(bkg, sig, bad, 1000, np.random.default_rng(0))


def test_injection_not_enough_events(bkg: Events, sig: Events) -> None:
    msg = r"needs 900 signal events but only 600 are available.*lower n_events or signal_frac"
    with pytest.raises(ValueError, match=msg):
        inject_signal(bkg, sig, 0.3, 3000, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"needs 4950 background events but only 4000 are available"):
        inject_signal(bkg, sig, 0.01, 5000, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"all the background.*signal events but only 600"):
        inject_signal(bkg, sig, 0.2, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="only in signal"):
        inject_signal(bkg, sig.with_columns(extra=np.zeros(N_SIG)), 0.1, 100, 0)


# ---------------------------------------------------------------------------------------------- splits


def test_split_fractions_disjoint_and_covering(bkg: Events) -> None:
    parts = split(bkg, {"ae": 0.2, "iter1": 0.2, "iter2": 0.2, "test": 0.4}, np.random.default_rng(0))
    assert list(parts) == ["ae", "iter1", "iter2", "test"]
    assert [len(p) for p in parts.values()] == [800, 800, 800, 1600]
    uids = np.concatenate([p["uid"] for p in parts.values()])
    assert len(np.unique(uids)) == N_BKG  # disjoint and, since fractions add up to 1, covering


def test_split_counts_and_reproducibility(bkg: Events) -> None:
    spec = {"train": 1000, "val": 250, "test": 500}
    a = split(bkg, spec, np.random.default_rng(4))
    b = split(bkg, spec, np.random.default_rng(4))
    c = split(bkg, spec, np.random.default_rng(5))
    assert {k: len(v) for k, v in a.items()} == spec
    uids = np.concatenate([p["uid"] for p in a.values()])
    assert len(np.unique(uids)) == len(uids) == 1750
    assert all(a[k] == b[k] for k in spec)
    assert not np.array_equal(a["train"]["uid"], c["train"]["uid"])


def test_split_errors(bkg: Events) -> None:
    with pytest.raises(ValueError, match=r"add up to 5000 events but only 4000 are available"):
        split(bkg, {"a": 3000, "b": 2000}, 0)
    with pytest.raises(ValueError, match=r"add up to 1.2, more than 1"):
        split(bkg, {"a": 0.7, "b": 0.5}, 0)
    with pytest.raises(ValueError, match="mixes event counts"):
        split(bkg, {"a": 100, "b": 0.5}, 0)
    with pytest.raises(ValueError, match="'a': -5"):
        split(bkg, {"a": -5}, 0)


# ---------------------------------------------------------------------------------------------- transforms


def test_correlate_mass() -> None:
    ev = physical_events()
    out = correlate_mass(ev, 0.1)
    for j in (1, 2):
        expect = (ev[f"j{j}_m"].astype(np.float64) + 0.1 * ev["mjj"].astype(np.float64)).astype(np.float32)
        assert np.array_equal(out[f"j{j}_m"], expect)
    for key in ev:
        if key not in ("j1_m", "j2_m"):
            assert np.array_equal(out[key], ev[key])
    assert np.all(out["j1_m"] - out["j2_m"] == pytest.approx(ev["j1_m"] - ev["j2_m"], abs=1e-3))
    assert correlate_mass(ev, 0.0) == ev


def test_apply_jes_common_factor_scales_consistently() -> None:
    ev = physical_events()
    out = apply_jes(ev, 1.1, 1.1)
    for key in ("j1_pt", "j1_m", "j2_pt", "j2_m", "mjj"):
        np.testing.assert_allclose(out[key], ev[key].astype(np.float64) * 1.1, rtol=1e-6)
    cons, cons0 = out["j1_constituents"], ev["j1_constituents"]
    np.testing.assert_allclose(cons[..., [0, 3]], cons0[..., [0, 3]] * 1.1, rtol=1e-6)
    assert np.array_equal(out["j1_constituents"][..., 1:3], ev["j1_constituents"][..., 1:3])
    for key in ("j1_eta", "j1_phi", "j1_tau2", "j1_image", "j1_nconst"):
        assert np.array_equal(out[key], ev[key])
    # mjj scaled by the common factor agrees with mjj recomputed from the scaled jets
    ref = mjj_reference(*(out[f"j{j}_{x}"] for j in (1, 2) for x in ("pt", "eta", "phi", "m")))
    np.testing.assert_allclose(out["mjj"], ref, rtol=2e-6)


def test_apply_jes_different_factors_recomputes_mjj() -> None:
    ev = physical_events()
    n = len(ev)
    f1 = np.full(n, 1.05)
    f2 = np.where(np.arange(n) % 2 == 0, 0.9, 1.05)
    out = apply_jes(ev, f1, f2, reorder=False)
    ref = mjj_reference(
        ev["j1_pt"] * f1, ev["j1_eta"], ev["j1_phi"], ev["j1_m"] * f1,
        ev["j2_pt"] * f2, ev["j2_eta"], ev["j2_phi"], ev["j2_m"] * f2,
    )
    np.testing.assert_allclose(out["mjj"], ref, rtol=2e-6)
    np.testing.assert_allclose(out["j2_pt"], ev["j2_pt"] * f2, rtol=1e-6)


def test_apply_jes_reorders_swapped_jets() -> None:
    ev = Events({
        "mjj": np.array([3000.0, 3000.0], np.float32),
        "j1_pt": np.array([1500.0, 1500.0]), "j1_eta": np.zeros(2), "j1_phi": np.zeros(2),
        "j1_m": np.array([100.0, 300.0]),
        "j2_pt": np.array([1400.0, 1400.0]), "j2_eta": np.zeros(2), "j2_phi": np.full(2, np.pi),
        "j2_m": np.array([95.0, 50.0]),
    })
    out = apply_jes(ev, 0.9, 1.1)  # event 0: 90 < 104.5 -> swap; event 1 stays
    np.testing.assert_allclose(out["j1_m"], [104.5, 270.0])
    np.testing.assert_allclose(out["j1_pt"], [1540.0, 1350.0])
    np.testing.assert_allclose(out["j2_phi"], [0.0, np.pi])


def test_jes_variations_classes_and_scaling() -> None:
    ev = physical_events(6000)
    out = jes_variations(ev, rng=np.random.default_rng(0))
    cls = out["nuisance"]
    assert cls.dtype == np.int8 and set(np.unique(cls)) == {-1, 0, 1}
    counts = np.bincount(cls + 1, minlength=3) / len(ev)
    np.testing.assert_allclose(counts, 1 / 3, atol=0.03)
    factor = 1.0 + DEFAULT_JES_SHIFT * cls
    for key in ("j1_pt", "j1_m", "j2_pt", "j2_m", "mjj"):
        np.testing.assert_allclose(out[key], ev[key] * factor, rtol=1e-6)
    e_scaled = ev["j2_constituents"][..., 3] * factor[:, None]
    np.testing.assert_allclose(out["j2_constituents"][..., 3], e_scaled, rtol=1e-6)
    ref = mjj_reference(*(out[f"j{j}_{x}"] for j in (1, 2) for x in ("pt", "eta", "phi", "m")))
    np.testing.assert_allclose(out["mjj"], ref, rtol=2e-6)
    for key in ("j1_tau1", "j1_image", "label"):
        assert np.array_equal(out[key], ev[key])
    # reproducible from the seed, different for another seed
    assert np.array_equal(jes_variations(ev, rng=np.random.default_rng(0))["nuisance"], cls)
    assert not np.array_equal(jes_variations(ev, rng=np.random.default_rng(1))["nuisance"], cls)


def test_jes_variations_options_and_errors() -> None:
    ev = physical_events(3000)
    up = jes_variations(ev, 0.05, classes=np.ones(len(ev), np.int8))
    np.testing.assert_allclose(up["mjj"], ev["mjj"] * 1.05, rtol=1e-6)
    skewed = jes_variations(ev, rng=1, fractions=(0.0, 0.5, 0.5))
    assert (skewed["nuisance"] >= 0).all()
    per_jet = jes_variations(ev, paper002_shift, classes=np.full(len(ev), -1))
    np.testing.assert_allclose(per_jet["j1_pt"], ev["j1_pt"] * (1 - paper002_shift(ev["j1_pt"])), rtol=1e-6)
    assert np.all(per_jet["j1_m"] >= per_jet["j2_m"])
    ref = mjj_reference(*(per_jet[f"j{j}_{x}"] for j in (1, 2) for x in ("pt", "eta", "phi", "m")))
    np.testing.assert_allclose(per_jet["mjj"], ref, rtol=2e-6)
    np.testing.assert_allclose(atlas_run1_jer([30, 60, 250, 999, 1000, 5000, 20000]),
                               [0.145, 0.115, 0.05, 0.05, 0.04, 0.04, 0.04])
    with pytest.raises(ValueError, match="already"):
        jes_variations(up, rng=0)
    with pytest.raises(ValueError, match="rng"):
        jes_variations(ev)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        jes_variations(ev, 1.2, rng=0)
    with pytest.raises(ValueError, match="adding up to 1"):
        jes_variations(ev, rng=0, fractions=(0.5, 0.5, 0.5))
