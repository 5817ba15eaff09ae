"""Jet reconstruction physics: N-subjettiness, images, constituents, the dijet selection."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import fastjet
import numpy as np
import pytest

from lhcad.data.jets import (
    JetConfig,
    build_events,
    jet_images,
    jet_pt_upper_bound,
    kinematics,
    nsubjettiness,
    particles_from_arrays,
)


def _jet_from_prongs(rng, prongs, n_per_prong=25, spread=0.03, pt_total=1500.0):
    """Massless particles clustered around the given (eta, phi) prong axes with equal pT per prong."""
    eta, phi, pt = [], [], []
    for e0, p0 in prongs:
        eta.append(e0 + rng.normal(0, spread, n_per_prong))
        phi.append(p0 + rng.normal(0, spread, n_per_prong))
        w = rng.exponential(1.0, n_per_prong)
        pt.append(pt_total / len(prongs) * w / w.sum())
    eta, phi, pt = map(np.concatenate, (eta, phi, pt))
    return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)


def _jets(builder_args):
    parts = [_jet_from_prongs(*a) for a in builder_args]
    counts = [len(p[0]) for p in parts]
    px, py, pz, e = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return particles_from_arrays(px, py, pz, e, counts)


def test_two_prong_jets_have_much_lower_tau21_than_one_prong():
    rng = np.random.default_rng(1)
    one = _jets([(rng, [(0.0, 0.0)]) for _ in range(20)])
    two = _jets([(rng, [(0.0, 0.0), (0.25, 0.3)]) for _ in range(20)])
    t_one, t_two = nsubjettiness(one), nsubjettiness(two)
    tau21_one = t_one[:, 1] / t_one[:, 0]
    tau21_two = t_two[:, 1] / t_two[:, 0]
    assert tau21_two.mean() < 0.5 * tau21_one.mean()
    assert tau21_two.max() < tau21_one.min()
    # tau1 of a two-prong jet is set by the prong separation: about dR/2 = 0.2
    assert 0.12 < t_two[:, 0].mean() < 0.25


def test_nsubjettiness_matches_fastjet_contrib(qcd_particles):
    """Our vectorised tau_N equals fastjet-contrib's Nsubjettiness(KT_Axes, NormalizedMeasure(1, 1))."""
    cs = fastjet.ClusterSequence(qcd_particles[:40], fastjet.JetDefinition(fastjet.antikt_algorithm, 1.0))
    jets_c = cs.constituents(500.0)
    jets_c = ak.flatten(jets_c, axis=1)  # one entry per jet
    jets_c = jets_c[ak.num(jets_c) >= 4]
    jets_c = ak.zip({f: jets_c[f] for f in ("px", "py", "pz", "E")}, with_name="Momentum4D")
    ours = nsubjettiness(jets_c, beta=1.0, R0=1.0)
    ref_cs = fastjet.ClusterSequence(jets_c, fastjet.JetDefinition(fastjet.kt_algorithm, 1000.0))
    ref = ak.to_numpy(ref_cs.njettiness("NormalizedMeasure", "KT_Axes", [1, 2, 3, 4], 1.0, 1.0))
    assert len(ours) > 30
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_images_are_normalised_centred_and_oriented(qcd_particles):
    passed, cols = build_events(qcd_particles, JetConfig(images=True))
    img = cols["j1_image"]
    assert img.shape == (passed.sum(), 40, 40) and img.dtype == np.float32
    np.testing.assert_allclose(img.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    mean = img.mean(axis=0)
    # hardest constituent flipped into the upper-left quadrant: that quadrant carries the most intensity
    quads = [mean[:20, :20].sum(), mean[:20, 20:].sum(), mean[20:, :20].sum(), mean[20:, 20:].sum()]
    assert np.argmax(quads) == 0
    # principal axis rotated vertical: spread along rows (phi) exceeds spread along columns (eta)
    idx = np.arange(40) - 19.5
    var_rows = (mean.sum(axis=1) * idx**2).sum()
    var_cols = (mean.sum(axis=0) * idx**2).sum()
    assert var_rows > var_cols


def test_image_pixelisation_of_a_single_particle():
    img = jet_images(np.array([5.0]), np.array([-0.3]), np.array([0.2]), np.array([0]), 1)
    assert img.sum() == pytest.approx(1.0)
    # one particle is its own centroid: it lands in the central pixels
    r, c = np.unravel_index(np.argmax(img[0]), img[0].shape)
    assert r in (19, 20) and c in (19, 20)


def test_dijet_selection_and_columns(qcd_particles):
    cfg = JetConfig(n_constituents=20)
    passed, cols = build_events(qcd_particles, cfg)
    n = passed.sum()
    assert 0.3 < passed.mean() < 0.95  # trigger efficiency of pTHat > 1.1 TeV QCD
    assert np.all(np.maximum(cols["j1_pt"], cols["j2_pt"]) > cfg.trigger_pt)
    assert np.all(cols["j1_m"] >= cols["j2_m"])
    # mjj equals the invariant mass of the two jets rebuilt from (pt, eta, phi, m)
    def p4(j):
        pt, eta, phi, m = (cols[f"j{j}_{f}"].astype(np.float64) for f in ("pt", "eta", "phi", "m"))
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        return px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)
    s = [a + b for a, b in zip(p4(1), p4(2))]
    mjj = np.sqrt(s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2)
    np.testing.assert_allclose(cols["mjj"], mjj, rtol=1e-4)
    # constituents: hardest first, zero padded, pT sum below the jet pT-ish scale
    c = cols["j1_constituents"]
    assert c.shape == (n, 20, 4)
    assert np.all(np.diff(c[:, :, 0], axis=1) <= 0)
    short = cols["j1_nconst"] < 20
    if short.any():
        row = np.argmax(short)
        assert np.all(c[row, cols["j1_nconst"][row]:] == 0)
    assert np.all(np.abs(c[:, 0, 1]) < 1.0) and np.all(np.abs(c[:, 0, 2]) < 1.0)
    # normalised N-subjettiness lies in [0, 1]; more axes describe a jet better on average
    # (with exclusive-kt axes tau2 > tau1 can happen for single jets, as in fastjet-contrib)
    for j in (1, 2):
        t1, t2, t3 = cols[f"j{j}_tau1"], cols[f"j{j}_tau2"], cols[f"j{j}_tau3"]
        assert np.all((t1 > 0) & (t1 <= 1))
        assert np.mean(t2 / t1) < 0.9 and np.mean(t3) < np.mean(t2) < np.mean(t1)


def test_kinematics_of_massless_vectors():
    pt, eta, phi, m, rap = kinematics(*[np.array([v]) for v in (3.0, 4.0, 0.0, 5.0)])
    assert pt[0] == pytest.approx(5.0) and eta[0] == pytest.approx(0.0) and m[0] == pytest.approx(0.0, abs=1e-6)
    assert phi[0] == pytest.approx(np.arctan2(4, 3)) and rap[0] == pytest.approx(0.0)


REFERENCE = Path(__file__).parent / "data" / "jets_reference.npz"


@pytest.mark.parametrize("sample", ["qcd", "signal"])
def test_reconstruction_reproduces_the_reference_columns(sample):
    """Stored Pythia particles reconstruct to the stored columns (tests/data/make_jets_reference.py):
    counts and the selection exactly, features to float32 rounding (FastJet's sums may be
    ordered differently on another CPU)."""
    ref = np.load(REFERENCE)
    f = {c: ref[f"{sample}/particles/{c}"].astype(np.float64) for c in ("px", "py", "pz", "E")}
    particles = particles_from_arrays(f["px"], f["py"], f["pz"], f["E"], ref[f"{sample}/particles/counts"])
    passed, cols = build_events(particles, JetConfig(images=True, image_npix=16, n_constituents=8))
    np.testing.assert_array_equal(passed, ref[f"{sample}/passed"])
    stored = {k.split("/", 2)[2]: ref[k] for k in ref.files if k.startswith(f"{sample}/columns/")}
    assert sorted(cols) == sorted(stored)
    for name, want in stored.items():
        assert cols[name].dtype == want.dtype and cols[name].shape == want.shape, name
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(cols[name], want, err_msg=name)
        else:
            np.testing.assert_allclose(cols[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_jet_pt_bound_lies_above_every_jet(qcd_particles):
    """The trigger pre-selection's bound is above the pT of every anti-kt jet (and not far above)."""
    px, py = (ak.to_numpy(ak.flatten(qcd_particles[c])) for c in ("px", "py"))
    bound = jet_pt_upper_bound(px, py, ak.to_numpy(ak.num(qcd_particles)))
    jets = fastjet.ClusterSequence(qcd_particles, fastjet.JetDefinition(fastjet.antikt_algorithm, 1.0)).inclusive_jets(0.0)
    lead = ak.to_numpy(ak.fill_none(ak.max(np.hypot(jets.px, jets.py), axis=1), 0.0))
    assert np.all(bound >= lead)
    assert np.median(bound[lead > 0] / lead[lead > 0]) < 1.3  # tight enough to drop events far below the trigger
