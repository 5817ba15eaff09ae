"""Search statistics: significance formulae, fits, closure, injection and a pyhf cross-check."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lhcad.config import build
from lhcad.data.dataset import load_dataset
from lhcad.data.events import Events
from lhcad.evaluate import EvaluationConfig, evaluate
from lhcad.methods.base import Scores
from lhcad.stats import (
    AbcdCount,
    CubicGaussianBumpHunt,
    DijetBumpHunt,
    abcd_estimate,
    asimov_z,
    dijet_function,
    dijet_prediction,
    fit_cubic_gaussian,
    fit_dijet,
    gaussian_bin_fractions,
    jet_cuts_at_efficiency,
    profile_likelihood_z,
)

# Dijet-function parameters (p0 per GeV, p1, p2, p3) close to a fit of the generated QCD m_jj;
# TRUE_P0 is rescaled per test to the wanted number of events.
TRUE_SHAPE = (1.0, -10.83, 29.76, 8.0)
EDGES = np.linspace(2800.0, 5800.0, 31)
CENTRES = 0.5 * (EDGES[:-1] + EDGES[1:])
SR_BINS = (CENTRES > 3300.0) & (CENTRES < 3700.0)
SR_EDGES = np.array([3300.0, 3700.0])


def smooth_expectation(edges: np.ndarray, n_events: float) -> np.ndarray:
    """Expected counts of the dijet shape, ``n_events`` in all (fine-grid integral, not the fit's rule)."""
    fine = np.linspace(edges[0], edges[-1], 30 * (len(edges) - 1) + 1)
    density = dijet_function(fine, TRUE_SHAPE)
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(fine))])
    per_bin = np.diff(np.interp(edges, fine, cumulative))
    return per_bin * n_events / per_bin.sum()


def _modifier(name: str, kind: str, data: object) -> dict:
    return {"name": name, "type": kind, "data": data}


def _pyhf_z(n: float, b: float, sigma_b: float) -> float:
    """Discovery Z from pyhf: one bin, unit signal scaled by mu, background with a Gaussian constraint."""
    pyhf = pytest.importorskip("pyhf")
    spec = {
        "channels": [
            {
                "name": "sr",
                "samples": [
                    {"name": "signal", "data": [1.0], "modifiers": [_modifier("mu", "normfactor", None)]},
                    {"name": "bkg", "data": [b], "modifiers": [_modifier("unc", "staterror", [sigma_b])]},
                ],
            }
        ]
    }
    model = pyhf.Model(spec, poi_name="mu")
    bounds = model.config.suggested_bounds()
    bounds[model.config.poi_index] = (-b, 10 * n + 10)
    q0 = pyhf.infer.test_statistics.q0(
        0.0, [n, *model.config.auxdata], model, model.config.suggested_init(), bounds,
        model.config.suggested_fixed(),
    )
    return math.sqrt(max(float(q0), 0.0))


# ------------------------------------------------------------------------------------------- significance


def test_profile_likelihood_z_limits():
    # no uncertainty: the Asimov formula sqrt(2(n ln(n/b) - (n - b)))
    assert profile_likelihood_z(30, 20, 0.0) == pytest.approx(math.sqrt(2 * (30 * math.log(1.5) - 10)))
    assert asimov_z(10, 100) == pytest.approx(math.sqrt(2 * (110 * math.log(1.1) - 10)))
    assert profile_likelihood_z(10, 20, 2.0) == 0.0  # deficit
    # a larger background uncertainty never increases the significance
    zs = [profile_likelihood_z(150, 100, s) for s in (0.0, 5.0, 10.0, 20.0, 50.0)]
    assert all(a > b for a, b in zip(zs, zs[1:]))
    assert math.isnan(profile_likelihood_z(10, 0.0, 1.0))


def test_profile_likelihood_z_agrees_with_pyhf():
    pyhf = pytest.importorskip("pyhf")
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-6))
    try:
        worst = 0.0
        for b in (5.0, 50.0, 500.0):
            for rel in (0.01, 0.1, 0.3):
                for excess in (-1.0, 0.5, 2.0, 4.0):
                    n = float(max(0, round(b + excess * math.sqrt(b + (rel * b) ** 2))))
                    worst = max(worst, abs(profile_likelihood_z(n, b, rel * b) - _pyhf_z(n, b, rel * b)))
    finally:
        pyhf.set_backend("numpy", "scipy")
    assert worst < 0.1  # measured: < 1e-8


# ------------------------------------------------------------------------------------------- fits


def test_dijet_fit_recovers_asimov_and_covers_prediction():
    expected = smooth_expectation(EDGES, 20_000)
    fit = fit_dijet(expected, EDGES, mask=SR_BINS)
    assert fit.valid, fit.message
    b, sigma_b = dijet_prediction(fit, SR_BINS)
    assert b == pytest.approx(expected[SR_BINS].sum(), rel=2e-3)
    assert 0 < sigma_b < 0.05 * b
    assert fit.deviance < 0.1


def test_dijet_fit_failure_is_reported(caplog):
    fit = fit_dijet(np.zeros(30), EDGES, mask=SR_BINS)
    assert not fit.valid and "filled bins" in fit.message
    test = Events({"mjj": np.array([3000.0, 3500.0]), "label": np.zeros(2, int)})
    with caplog.at_level(logging.WARNING, logger="lhcad.stats.search"):
        result = DijetBumpHunt(efficiencies=(0.5,), plots=False)(test, Scores(np.array([0.1, 0.2])))
    assert math.isnan(result.metrics["sig_bumphunt/none"])
    assert result.metrics["bumphunt_fit_valid/none"] == 0.0
    assert "fit failed" in caplog.text


def test_background_only_closure_on_smooth_spectrum():
    """No signal: Z > 2 (one-sided, nominal 2.3%) in at most ~5% of pseudo-experiments."""
    rng = np.random.default_rng(1)
    expected = smooth_expectation(EDGES, 3000)  # ~ a 10% selection of the test sample
    zs = []
    for _ in range(200):
        counts = rng.poisson(expected).astype(float)
        fit = fit_dijet(counts, EDGES, mask=SR_BINS)
        assert fit.valid, fit.message
        zs.append(profile_likelihood_z(counts[SR_BINS].sum(), *dijet_prediction(fit, SR_BINS)))
    zs = np.asarray(zs)
    assert np.mean(np.abs(zs) > 2) <= 0.05  # measured: 0.015
    assert np.mean(zs == 0) == pytest.approx(0.5, abs=0.1)  # half are deficits


def test_injected_bump_found_with_expected_significance():
    """120 Gaussian signal events on 3000: mean Z within 0.35 of the Asimov Z; the fitted yield covers it."""
    rng = np.random.default_rng(2)
    n_signal, mass, width = 120.0, 3500.0, 100.0
    background = smooth_expectation(EDGES, 3000)
    signal = n_signal * gaussian_bin_fractions(EDGES, mass, width)
    asimov = fit_dijet(background + signal, EDGES, mask=SR_BINS)
    b, sigma_b = dijet_prediction(asimov, SR_BINS)
    z_expected = asimov_z(signal[SR_BINS].sum(), b, sigma_b)
    zs, pulls = [], []
    for _ in range(100):
        counts = rng.poisson(background + signal).astype(float)
        fit = fit_dijet(counts, EDGES, mask=SR_BINS)
        zs.append(profile_likelihood_z(counts[SR_BINS].sum(), *dijet_prediction(fit, SR_BINS)))
        window = (EDGES[:-1] >= 2900.0) & (EDGES[1:] <= 4500.0)
        window_edges = EDGES[np.r_[window, False] | np.r_[False, window]]
        sb = fit_cubic_gaussian(counts[window], window_edges, mass, width)  # the TNT-paper fit
        assert sb.valid, sb.message
        s_hat, s_err = sb.param("yield")
        pulls.append((s_hat - signal[window].sum()) / s_err)
    assert z_expected == pytest.approx(3.0, abs=0.6)  # sanity of the setup
    assert np.mean(zs) == pytest.approx(z_expected, abs=0.35)
    pulls = np.asarray(pulls)
    assert abs(np.mean(pulls)) < 0.35  # unbiased yield
    assert 0.55 <= np.mean(np.abs(pulls) < 1) <= 0.82  # the 1-sigma interval covers the truth ~68%


# ------------------------------------------------------------------------------------------- ABCD


def test_abcd_closure_and_signal():
    rng = np.random.default_rng(3)
    n_bkg, n_sig = 50_000, 300
    j1 = np.r_[rng.normal(size=n_bkg), rng.normal(2.5, 1.0, n_sig)]
    j2 = np.r_[rng.normal(size=n_bkg), rng.normal(2.5, 1.0, n_sig)]
    labels = np.r_[np.zeros(n_bkg, int), np.ones(n_sig, int)]
    pass1, pass2 = jet_cuts_at_efficiency(j1[:n_bkg], j2[:n_bkg], 0.01)
    est = abcd_estimate(pass1, pass2, j1[:n_bkg], j2[:n_bkg])
    assert abs(est.n_obs - est.n_pred) < 3 * math.hypot(est.sigma, math.sqrt(est.n_pred))
    assert est.sigma_syst == pytest.approx(0.03 * est.n_pred)

    test = Events({"mjj": np.full(len(labels), 3500.0), "label": labels})
    result = AbcdCount(efficiencies=(0.01,))(test, Scores(np.minimum(j1, j2), j1, j2))
    assert result.metrics["sig_abcd_obs/eff_0.01"] > 3
    assert result.metrics["sig_abcd_exp/eff_0.01"] > 3
    true_background = result.metrics["abcd_nbkg_true/eff_0.01"]
    assert true_background == pytest.approx(result.metrics["abcd_npred/eff_0.01"], rel=0.2)


def test_abcd_needs_per_jet_scores(caplog):
    test = Events({"mjj": np.full(100, 3500.0), "label": np.zeros(100, int)})
    with caplog.at_level(logging.WARNING, logger="lhcad.stats.search"):
        result = AbcdCount(efficiencies=(0.1,))(test, Scores(np.arange(100.0)))
    assert math.isnan(result.metrics["sig_abcd_obs/eff_0.1"])
    assert "per-jet" in caplog.text
    assert math.isnan(result.metrics["abcd/valid"]) and math.isnan(result.metrics["abcd/validation_pull"])


ABCD_EFFS = ("0.1", "0.05", "0.03", "0.01", "0.005")


def _abcd(j1: np.ndarray, j2: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    test = Events({"mjj": np.full(len(j1), 3500.0), "label": labels})
    return AbcdCount()(test, Scores(np.minimum(j1, j2), j1, j2)).metrics


@pytest.mark.parametrize("seed", range(5))
def test_abcd_with_independent_jet_scores_is_valid(seed):
    rng = np.random.default_rng(seed)
    n_bkg, n_sig = 30_000, 300
    m = _abcd(rng.random(n_bkg), rng.random(n_bkg), np.zeros(n_bkg, int))  # background only
    assert m["abcd/valid"] == 1.0
    assert abs(m["abcd/validation_pull"]) < 2.0  # measured 0.0-1.5
    assert abs(m["abcd/control_corr"]) < 4 * m["abcd/control_corr_unc"]
    assert m["abcd/control_corr_unc"] == pytest.approx(1 / math.sqrt(0.49 * n_bkg), rel=0.05)
    zs = np.array([m[f"sig_abcd_obs/eff_{e}"] for e in ABCD_EFFS])
    assert np.all(np.isfinite(zs)) and np.all(np.abs(zs) < 3.5)  # measured |Z| <= 2.3
    # with signal in both jets: valid and significant
    labels = np.r_[np.zeros(n_bkg, int), np.ones(n_sig, int)]
    j1 = np.r_[rng.normal(size=n_bkg), rng.normal(2.5, 1.0, n_sig)]
    j2 = np.r_[rng.normal(size=n_bkg), rng.normal(2.5, 1.0, n_sig)]
    m = _abcd(j1, j2, labels)
    assert m["abcd/valid"] == 1.0
    assert m["sig_abcd_obs/eff_0.01"] > 5  # measured 10.4-11.1


@pytest.mark.parametrize("seed", range(5))
def test_abcd_with_correlated_jet_scores_is_silent(seed, caplog):
    """A Gaussian copula with rho = 0.5 on background: ABCD would claim ~100 events over ~1 at 1%."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]], size=20_000)
    with caplog.at_level(logging.WARNING, logger="lhcad.stats.search"):
        m = _abcd(norm.cdf(z[:, 0]), norm.cdf(z[:, 1]), np.zeros(len(z), int))
    assert m["abcd/valid"] == 0.0
    assert m["abcd/validation_pull"] > 10  # measured 27.6-29.7
    assert m["abcd/control_corr"] > 10 * m["abcd/control_corr_unc"]  # measured 0.29 +- 0.009
    for e in ABCD_EFFS:
        assert all(math.isnan(m[f"{k}/eff_{e}"]) for k in ("sig_abcd_obs", "sig_abcd_exp", "sig_abcd_pl"))
        assert math.isfinite(m[f"abcd_nobs/eff_{e}"]) and math.isfinite(m[f"abcd_npred/eff_{e}"])
    assert m["abcd_nobs/eff_0.01"] > 20 * m["abcd_npred/eff_0.01"]  # what ABCD would have called signal
    assert "validation-region pull" in caplog.text and "not independent" in caplog.text


def test_abcd_validation_band_is_checked():
    with pytest.raises(ValueError, match="validation_band"):
        AbcdCount(validation_band=(0.3, 0.8))  # overlaps the 40% control samples
    with pytest.raises(ValueError, match="validation_band"):
        AbcdCount(validation_band=(0.5,))


# ------------------------------------------------------------------------------------------- on the fixture


@pytest.fixture(scope="module")
def fixture_qcd(fixture_dir: Path) -> Events:
    return load_dataset(fixture_dir, ("qcd",))["qcd"]


def test_closure_on_fixture_qcd_with_random_scores(fixture_qcd):
    """Background only, random scores: the bump hunts find nothing (|Z| > 2 in about 5% or fewer)."""
    rng = np.random.default_rng(4)
    hunts = (DijetBumpHunt(plots=False), CubicGaussianBumpHunt(plots=False))
    zs = []
    for _ in range(20):
        s1, s2 = rng.random(len(fixture_qcd)), rng.random(len(fixture_qcd))
        for hunt in hunts:
            metrics = hunt(fixture_qcd, Scores(np.minimum(s1, s2))).metrics
            zs += [v for k, v in metrics.items() if k.startswith("sig_")]
    zs = np.asarray(zs)
    finite = zs[np.isfinite(zs)]
    assert len(finite) >= 0.9 * len(zs)  # fits converge
    assert np.mean(np.abs(finite) > 2) <= 0.05  # measured: 0.025 (0.02-0.023 over 50 seeds)


def test_default_search_config_runs_in_evaluate(fixture_dir: Path, fixture_qcd):
    root = Path(__file__).parents[1] / "conf"
    cfg = OmegaConf.create(
        {"search": OmegaConf.load(root / "search" / "default.yaml"), "selection": {"plots": True}}
    )
    statistics = [build(node) for node in cfg.search.statistics]
    signal = load_dataset(fixture_dir, ("signal",))["signal"]
    rng = np.random.default_rng(5)
    test = Events.concat([fixture_qcd, signal.take(np.arange(100))])
    labels = np.asarray(test.labels)
    j1, j2 = rng.normal(size=len(test)) + 2 * labels, rng.normal(size=len(test)) + 2 * labels
    scores = Scores(np.minimum(j1, j2), j1, j2)
    held = Scores(rng.normal(size=len(signal)) + 2)
    held = Scores(held.event, held.event, held.event)
    result = evaluate(test, scores, signal, held, EvaluationConfig(plots=False), statistics)
    for key in ("sig_bumphunt/none", "sig_bumphunt/eff_0.03", "sig_tnt_bumphunt/eff_0.03",
                "sig_abcd_obs/eff_0.03", "sig_abcd_exp/eff_0.005"):
        assert key in result.metrics
    assert result.metrics["sig_bumphunt/eff_0.1"] > 2
    assert {"bumphunt.png", "tnt_bumphunt.png"} <= set(result.figures)  # one figure per bump hunt
    lines = "\n".join(result.summary_lines())
    assert "bumphunt @ eff=0.03" in lines and "abcd @ eff=0.005" in lines
