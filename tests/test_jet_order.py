"""Jet ordering and scale-free per-jet inputs: which jet is jet 1, and what that does on background."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from lhcad.data import load_dataset
from lhcad.data.events import Events
from lhcad.data.transforms import order_jets
from lhcad.inputs import DijetFeatures, JetFeatures
from lhcad.pipeline import apply_transforms


def _events(n: int = 6, seed: int = 0) -> Events:
    rng = np.random.default_rng(seed)
    cols = {"mjj": rng.uniform(3000, 4000, n), "label": np.zeros(n, np.int8)}
    for j in (1, 2):
        cols |= {f"j{j}_{f}": rng.uniform(1, 2, n) for f in ("pt", "m", "tau1", "tau2", "tau3", "tau4", "nconst")}
    return Events(cols)


def test_pt_order_puts_the_harder_jet_first_and_moves_whole_jets() -> None:
    ev = _events(200)
    out = order_jets(ev, "pt")
    assert np.all(out["j1_pt"] >= out["j2_pt"])
    swapped = ev["j2_pt"] > ev["j1_pt"]
    assert 0 < swapped.sum() < len(ev)
    for f in ("m", "tau1", "nconst"):
        np.testing.assert_array_equal(out[f"j1_{f}"], np.where(swapped, ev[f"j2_{f}"], ev[f"j1_{f}"]))
        np.testing.assert_array_equal(out[f"j2_{f}"], np.where(swapped, ev[f"j1_{f}"], ev[f"j2_{f}"]))
    np.testing.assert_array_equal(out["mjj"], ev["mjj"])
    assert order_jets(ev, "mass") is ev


def test_unknown_jet_order_is_refused() -> None:
    with pytest.raises(ValueError, match="jet order"):
        order_jets(_events(), "eta")
    with pytest.raises(ValueError, match="jet_order"):
        JetFeatures(["tau21"], jet_order="energy")


def test_m_over_pt_is_the_dimensionless_mass() -> None:
    ev = _events(50)
    x = JetFeatures(["m_over_pt"]).jet(ev, 2)[:, 0]
    np.testing.assert_allclose(x, ev["j2_m"] / ev["j2_pt"], rtol=1e-6)
    assert set(JetFeatures(["m_over_pt"]).columns) == {"j1_m", "j1_pt", "j2_m", "j2_pt"}


def test_dijet_features_keep_jet_1_the_heavier_jet_in_any_order() -> None:
    """Paper 003's event features (tau21 of the heavier / lighter jet) must not depend on the order
    the per-jet inputs choose."""
    ev = _events(300, seed=3)
    feats = DijetFeatures(["mj_lighter", "mj_diff", "tau21_j1", "tau21_j2"])
    pt_ordered = order_jets(ev, "pt")  # some events now have the lighter jet first
    assert np.any(pt_ordered["j1_m"] < pt_ordered["j2_m"])
    np.testing.assert_array_equal(feats.event(ev), feats.event(pt_ordered))


def test_pipeline_applies_the_inputs_jet_order_to_every_sample() -> None:
    samples = {"qcd": _events(100, 1), "sim": _events(100, 2)}
    out = apply_transforms(samples, {"alpha": 0.0}, "pt")
    assert all(np.all(ev["j1_pt"] >= ev["j2_pt"]) for ev in out.values())


@pytest.mark.parametrize("seed", range(5))
def test_mass_order_correlates_background_jets_and_pt_order_does_not(fixture_dir, seed) -> None:
    """The heavier / lighter jet's m/pT are correlated on QCD by the ordering alone (0.45 on the
    whole fixture); in pT order they are not. Checked on half the fixture, for 5 random halves."""
    qcd = load_dataset(fixture_dir, ("qcd",))["qcd"]
    half = qcd.take(np.random.default_rng(seed).permutation(len(qcd))[: len(qcd) // 2])
    f = JetFeatures(["m_over_pt"])
    r_mass = pearsonr(f.jet(half, 1)[:, 0], f.jet(half, 2)[:, 0])[0]
    pt = order_jets(half, "pt")
    r_pt = pearsonr(f.jet(pt, 1)[:, 0], f.jet(pt, 2)[:, 0])[0]
    assert r_mass > 0.3
    assert abs(r_pt) < 0.08  # ~ 3.5 sigma of the 4000-event statistical spread (1/sqrt(4000) = 0.016)


def test_random_order_is_a_fixed_coin_flip_per_event() -> None:
    ev = _events(4000, seed=5)
    a, b = order_jets(ev, "random"), order_jets(ev, "random")
    np.testing.assert_array_equal(a["j1_pt"], b["j1_pt"])
    swapped = a["j1_pt"] != ev["j1_pt"]
    assert 0.45 < swapped.mean() < 0.55
    # the flip does not follow the jets' kinematics
    assert abs(np.corrcoef(swapped, ev["j1_pt"] > ev["j2_pt"])[0, 1]) < 0.1
