"""Physics of the committed fixture dataset (made by tests/data/make_fixture.sh)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from lhcad.data.storage import load_manifest, read_sample


@pytest.fixture(scope="module")
def samples(fixture_dir):
    return {s: read_sample(fixture_dir, s) for s in ("qcd", "signal", "sim", "outliers")}


def _jet_features(d):
    cols = []
    for j in (1, 2):
        cols += [d[f"j{j}_m"], d[f"j{j}_tau2"] / d[f"j{j}_tau1"], d[f"j{j}_tau3"] / d[f"j{j}_tau2"],
                 d[f"j{j}_nconst"].astype(np.float32)]
    return np.stack(cols, axis=1)


def test_fixture_sizes_and_manifest(fixture_dir, samples):
    manifest = load_manifest(fixture_dir)
    for name, d in samples.items():
        assert len(d["mjj"]) == manifest["samples"][name]["n_events"] >= 2000
        assert manifest["samples"][name]["config"]["seed"] == 2026


def test_signal_resonances_in_the_fixture(samples):
    sig, qcd = samples["signal"], samples["qcd"]
    assert 480 < np.median(sig["j1_m"]) < 520 and 90 < np.median(sig["j2_m"]) < 115
    assert 3350 < np.median(sig["mjj"]) < 3600
    for j in (1, 2):
        assert (qcd[f"j{j}_tau2"] / qcd[f"j{j}_tau1"]).mean() > (sig[f"j{j}_tau2"] / sig[f"j{j}_tau1"]).mean() + 0.1


def test_sim_differs_from_data_somewhat_but_not_trivially(samples):
    """A data-vs-sim classifier on jet features separates them weakly (the SALAD/SA-CWoLa setting)."""
    q, s = samples["qcd"], samples["sim"]
    X = np.concatenate([_jet_features(q), _jet_features(s)])
    y = np.r_[np.zeros(len(q["mjj"])), np.ones(len(s["mjj"]))]
    idx = np.random.default_rng(0).permutation(len(y))
    train, test = idx[: len(y) // 2], idx[len(y) // 2:]
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=0).fit(X[train], y[train])
    auc = roc_auc_score(y[test], clf.predict_proba(X[test])[:, 1])
    assert 0.55 < auc < 0.75
    # the same spectrum: both are QCD with the same trigger
    assert abs(np.median(q["mjj"]) - np.median(s["mjj"])) < 100


def test_outliers_are_two_pronged_away_from_the_signal_masses(samples):
    o, qcd = samples["outliers"], samples["qcd"]
    assert (o["j1_tau2"] / o["j1_tau1"]).mean() < (qcd["j1_tau2"] / qcd["j1_tau1"]).mean() - 0.1
    masses = set(np.unique(np.concatenate([o["truth_mx"], o["truth_my"]])).tolist())
    assert len(masses) >= 6 and not masses & {500.0, 100.0}
