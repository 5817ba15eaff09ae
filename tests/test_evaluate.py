"""Tests of lhcad.evaluate: metrics, selections, sculpting, plots and the full evaluation."""

from __future__ import annotations

import logging
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from lhcad.data import Events, inject_signal, load_dataset
from lhcad.evaluate import (
    ClosureConfig,
    Evaluation,
    EvaluationConfig,
    SearchStatistic,
    StatisticResult,
    auc,
    evaluate,
    jsd,
    mass_sculpting,
    max_sic,
    pearson,
    plot_jet_scores,
    plot_mjj_selections,
    plot_roc,
    plot_sic,
    rejection_at,
    roc_curve,
    select_efficiency,
    sic_curve,
    threshold_at_efficiency,
)
from lhcad.methods.base import EmpiricalCDF, Scores, combine_jet_scores

EXPECTED_KEYS = {
    "auc",
    "auc_jet1",
    "auc_jet2",
    "inv_eps_b/eff_s_0.3",
    "inv_eps_b/eff_s_0.5",
    "max_sic",
    "max_sic/eff_s",
    "jsd_mjj/eff_0.1",
    "jsd_mjj/eff_0.03",
    "jsd_mjj/eff_0.01",
    "jet_score_corr_bkg",
    "jsd_mjet/jet1",
    "jsd_mjet/jet2",
    "eff_s_at_eff_b_0.05/jet1",
    "eff_s_at_eff_b_0.05/jet2",
    "n_selected/eff_0.1",
    "n_selected/eff_0.03",
    "n_selected/eff_0.01",
    "n_selected_signal/eff_0.1",
    "n_selected_signal/eff_0.03",
    "n_selected_signal/eff_0.01",
    "n_test",
    "n_test_signal",
    "n_roc_background",
    "n_roc_signal",
}
PER_JET_KEYS = {"auc_jet1", "auc_jet2", "jet_score_corr_bkg"} | {f"{k}/jet{j}" for k in ("jsd_mjet", "eff_s_at_eff_b_0.05") for j in (1, 2)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data(fixture_dir) -> dict[str, Events]:
    return load_dataset(fixture_dir, ("qcd", "signal"))


def mass_window_scores(events: Events) -> tuple[np.ndarray, np.ndarray]:
    """Per-jet scores that know the signal: closeness of jet 1 to 500 GeV and jet 2 to 100 GeV."""
    return -np.abs(np.asarray(events["j1_m"]) - 500.0), -np.abs(np.asarray(events["j2_m"]) - 100.0)


def per_jet_scores(events: Events, reference: Events) -> Scores:
    r1, r2 = mass_window_scores(reference)
    return combine_jet_scores(*mass_window_scores(events), EmpiricalCDF(r1), EmpiricalCDF(r2))


def toy_events(n: int, n_signal: int = 0, seed: int = 0) -> Events:
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[:n_signal] = 1
    return Events({"mjj": rng.uniform(1500.0, 6500.0, n), "label": labels})


# ---------------------------------------------------------------------------------------------- metrics


def test_auc_of_perfect_and_reversed_scores():
    background, signal = np.arange(10.0), np.arange(10.0) + 100.0
    assert auc(background, signal) == 1.0
    assert auc(signal, background) == 0.0


def test_auc_constant_scores_is_half():
    assert auc(np.zeros(50), np.zeros(20)) == 0.5


def test_auc_with_an_empty_side_is_nan_and_says_why(caplog):
    with caplog.at_level(logging.WARNING, logger="lhcad.evaluate"):
        assert math.isnan(auc(np.arange(5.0), np.empty(0)))
    assert "no signal events" in caplog.text


def test_auc_of_random_scores_on_fixture_is_half(data):
    rng = np.random.default_rng(7)
    value = auc(rng.random(len(data["qcd"])), rng.random(len(data["signal"])))
    assert abs(value - 0.5) < 0.03  # the statistical spread is ~0.006


def test_auc_of_a_mass_window_score_on_fixture(data):
    def score(events: Events) -> np.ndarray:
        return -np.abs(np.asarray(events["j1_m"]) - 500.0)

    assert auc(score(data["qcd"]), score(data["signal"])) > 0.8


def test_roc_curve_shape_and_counts():
    rng = np.random.default_rng(0)
    roc = roc_curve(rng.normal(0, 1, 300), rng.normal(1, 1, 200))
    assert (roc.n_background, roc.n_signal) == (300, 200)
    assert len(roc.eps_b) == len(roc.eps_s) == len(roc.thresholds)
    assert np.all(np.diff(roc.eps_b) >= 0) and np.all(np.diff(roc.eps_s) >= 0)
    assert (roc.eps_b[0], roc.eps_s[0]) == (0.0, 0.0)
    assert (roc.eps_b[-1], roc.eps_s[-1]) == (1.0, 1.0)


def test_rejection_at_hand_computed_example():
    # cuts from tight to loose: (eps_b, eps_s) = (0, .25) (0, .5) (.25, .5) (.25, .75) (.5, .75) (.5, 1) ...
    roc = roc_curve([1.0, 2.0, 3.0, 4.0], [2.5, 3.5, 5.0, 6.0])
    assert rejection_at(roc, 0.5) == math.inf
    assert rejection_at(roc, 0.75) == pytest.approx(4.0)
    assert rejection_at(roc, 0.6) == pytest.approx(4.0)  # vertical segment at eps_b = 0.25
    assert rejection_at(roc, 1.0) == pytest.approx(2.0)


def test_rejection_at_interpolates_along_a_diagonal_segment():
    # a tie between one background and one signal event at 2: the curve goes (0, .5) -> (.5, 1)
    roc = roc_curve([1.0, 2.0], [2.0, 3.0])
    assert rejection_at(roc, 0.75) == pytest.approx(4.0)


def test_rejection_at_unreachable_or_invalid():
    assert math.isnan(rejection_at(roc_curve([1.0, 2.0], []), 0.5))
    roc = roc_curve([1.0, 2.0], [3.0])
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="signal efficiency"):
            rejection_at(roc, bad)


def test_sic_is_nan_below_min_background():
    rng = np.random.default_rng(1)
    roc = roc_curve(rng.normal(0, 1, 100), rng.normal(2, 1, 100))
    sic = sic_curve(roc, min_background=20)
    too_few = roc.eps_b * roc.n_background < 20
    assert too_few.any() and (~too_few).any()
    assert np.all(np.isnan(sic[too_few]))
    assert np.all(np.isfinite(sic[~too_few]))
    np.testing.assert_allclose(sic[~too_few], roc.eps_s[~too_few] / np.sqrt(roc.eps_b[~too_few]))
    # without a minimum, only the cuts keeping no background at all are undefined
    sic = sic_curve(roc, min_background=0)
    assert not np.any(np.isinf(sic))
    np.testing.assert_array_equal(np.isnan(sic), roc.eps_b == 0)


def test_max_sic_hand_computed_example():
    # 100 background scores 0..99; half the signal above all of them, half below
    roc = roc_curve(np.arange(100.0), np.r_[np.full(10, 200.0), np.full(10, -1.0)])
    value, eps_s = max_sic(roc, min_background=20)
    assert value == pytest.approx(0.5 / math.sqrt(0.2))
    assert eps_s == pytest.approx(0.5)
    value, _ = max_sic(roc, min_background=1)
    assert value == pytest.approx(0.5 / math.sqrt(0.01))


def test_max_sic_nan_when_no_cut_keeps_enough_background(caplog):
    roc = roc_curve(np.arange(10.0), np.arange(10.0) + 5)
    with caplog.at_level(logging.WARNING, logger="lhcad.evaluate"):
        value, eps_s = max_sic(roc, min_background=20)
    assert math.isnan(value) and math.isnan(eps_s)
    assert "background" in caplog.text


def test_pearson():
    x = np.arange(10.0)
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson([1.0, 2.0], [2.0, 1.0]))


def test_pearson_constant_input_is_nan_and_says_why(caplog):
    with caplog.at_level(logging.WARNING, logger="lhcad.evaluate"):
        assert math.isnan(pearson(np.ones(10), np.arange(10.0)))
    assert "constant" in caplog.text


# ---------------------------------------------------------------------------------------------- selection


def test_select_efficiency_keeps_the_highest_scores():
    rng = np.random.default_rng(3)
    scores = rng.random(1001)
    for eff in (0.1, 0.03, 0.5, 1.0):
        mask = select_efficiency(scores, eff)
        assert mask.dtype == bool and mask.shape == scores.shape
        assert mask.sum() == round(eff * len(scores))
        assert scores[mask].min() > scores[~mask].max(initial=-np.inf)
        assert threshold_at_efficiency(scores, eff) == scores[mask].min()


def test_select_efficiency_ties_keep_exact_count_and_earlier_events():
    mask = select_efficiency(np.array([1.0, 5.0, 5.0, 5.0, 0.0]), 0.4)
    np.testing.assert_array_equal(mask, [False, True, True, False, False])
    # large enough for numpy's unstable sorts to reorder ties
    scores = np.r_[np.zeros(5000), np.ones(5000)]
    mask = select_efficiency(scores, 0.6)
    np.testing.assert_array_equal(np.flatnonzero(mask), np.r_[np.arange(1000), np.arange(5000, 10000)])


def test_select_efficiency_keeps_at_least_one_event():
    assert select_efficiency(np.arange(10.0), 0.01).tolist() == [False] * 9 + [True]
    assert select_efficiency(np.empty(0), 0.1).shape == (0,)


@pytest.mark.parametrize("eff", [0.0, -0.1, 1.1, float("nan")])
def test_select_efficiency_rejects_invalid_efficiency(eff):
    with pytest.raises(ValueError, match="efficiency"):
        select_efficiency(np.arange(5.0), eff)


# ---------------------------------------------------------------------------------------------- sculpting


def test_jsd_identical_disjoint_and_symmetric():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 2000), rng.normal(0.5, 1, 1500)
    assert jsd(a, a, 20, (-4, 4)) == pytest.approx(0.0, abs=1e-12)
    assert jsd([0.5, 0.7], [3.5, 3.9], 4, (0, 4)) == pytest.approx(1.0)
    assert jsd(a, b, 20, (-4, 4)) == pytest.approx(jsd(b, a, 20, (-4, 4)))
    assert 0.0 < jsd(a, b, 20, (-4, 4)) < 1.0


def test_jsd_is_the_divergence_not_the_distance():
    # p = (1, 0), q = (1/2, 1/2): JSD = 1/2 [log2(4/3)] + 1/4 [log2(2/3) + log2(2)] = 0.3113 (distance 0.558)
    expected = 0.5 * math.log2(4 / 3) + 0.25 * (math.log2(2 / 3) + 1.0)
    assert jsd([0.5], [0.5, 1.5], 2, (0, 2)) == pytest.approx(expected)


def test_jsd_of_an_empty_histogram_is_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="lhcad.evaluate"):
        assert math.isnan(jsd([1.0, 2.0], [10.0], 5, (0, 5)))
    assert "empty" in caplog.text


def test_mass_sculpting_mjj_correlated_score_sculpts_more_than_random(data):
    sample, _ = inject_signal(data["qcd"], data["signal"], 0.01, None, 11)
    mjj, labels = sample["mjj"], sample.labels
    effs = (0.1, 0.03)
    correlated = mass_sculpting(mjj, labels, mjj, effs, 40, (1500.0, 6500.0))
    noise = np.random.default_rng(0).random(len(sample))
    random = mass_sculpting(mjj, labels, noise, effs, 40, (1500.0, 6500.0))
    assert set(correlated) == set(effs)
    for eff in effs:
        assert correlated[eff] > 5 * random[eff]
        assert 0.0 <= random[eff] < 0.1


def test_mass_sculpting_selects_from_all_events_not_only_background():
    # the 10 signal events have the highest scores: a 10% cut keeps no background at all
    mjj = np.linspace(2000.0, 3000.0, 100)
    labels = np.r_[np.ones(10, int), np.zeros(90, int)]
    scores = np.r_[np.full(10, 9.0), np.zeros(90)]
    assert math.isnan(mass_sculpting(mjj, labels, scores, (0.1,), 10, (2000.0, 3000.0))[0.1])
    assert math.isfinite(mass_sculpting(mjj, labels, scores, (0.2,), 10, (2000.0, 3000.0))[0.2])


# ---------------------------------------------------------------------------------------------- plots


def test_plot_roc_downsamples_large_curves():
    rng = np.random.default_rng(5)
    roc = roc_curve(rng.normal(0, 1, 20_000), rng.normal(1, 1, 5_000))
    assert len(roc) > 2000
    fig = plot_roc(roc)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    curve = ax.get_lines()[-1]
    assert len(curve.get_xdata()) <= 2000
    assert any("AUC" in t.get_text() for t in ax.get_legend().get_texts())
    assert len(plot_sic(roc, 20).axes[0].get_lines()[-1].get_xdata()) <= 2000


def test_plots_do_not_change_global_style():
    before = dict(matplotlib.rcParams)
    labels = np.r_[np.zeros(45, int), np.ones(5, int)]
    plot_mjj_selections(np.linspace(2000, 4000, 50), labels, np.arange(50.0), (0.1,))
    assert dict(matplotlib.rcParams) == before


def test_plot_jet_scores_needs_per_jet_scores():
    with pytest.raises(ValueError, match="per-jet"):
        plot_jet_scores(Scores(np.zeros(3)), Scores(np.zeros(3)))


# ---------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def run(data):
    """A run on the fixture: 1% signal injected, scores from the mass-window per-jet score."""
    rng = np.random.default_rng(0)
    reference, rest = data["qcd"].take(slice(0, 2000)), data["qcd"].take(slice(2000, None))
    test, unused_signal = inject_signal(rest, data["signal"], 0.01, 4000, rng)
    return test, per_jet_scores(test, reference), unused_signal, per_jet_scores(unused_signal, reference)


def test_evaluate_end_to_end(run, tmp_path):
    test, test_scores, signal, signal_scores = run
    result = evaluate(test, test_scores, signal, signal_scores, EvaluationConfig())
    assert isinstance(result, Evaluation)
    assert set(result.metrics) == EXPECTED_KEYS
    assert result.metrics["auc"] > 0.7
    assert result.metrics["auc_jet1"] > 0.7
    assert result.metrics["n_test"] == 4000 and result.metrics["n_test_signal"] == 40
    assert result.metrics["n_roc_background"] == 3960
    assert result.metrics["n_roc_signal"] == len(signal) == 3000 - 40
    assert result.metrics["n_selected/eff_0.01"] == 40
    assert 0 < result.metrics["n_selected_signal/eff_0.01"] <= 40
    assert result.metrics["inv_eps_b/eff_s_0.3"] > result.metrics["inv_eps_b/eff_s_0.5"] > 1
    assert result.metrics["max_sic"] > 1
    effs = (0.1, 0.03, 0.01)
    sculpting = mass_sculpting(test["mjj"], test.labels, test_scores.event, effs, 40, (1500.0, 6500.0))
    for eff, value in sculpting.items():
        assert result.metrics[f"jsd_mjj/eff_{eff:g}"] == value
        assert 0 < value < 1

    assert set(result.figures) == {"roc.png", "sic.png", "mjj_selections.png", "jet_scores.png"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    result.figures["roc.png"].savefig(tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 0

    assert {"eps_s", "eps_b", "sic"} <= set(result.curves)
    assert len(result.curves["eps_s"]) == len(result.curves["eps_b"]) == len(result.curves["sic"])
    assert [row["efficiency"] for row in result.table] == [0.1, 0.03, 0.01]

    lines = result.summary_lines()
    assert any(line.startswith("AUC ") and f"{result.metrics['auc']:.4g}" in line for line in lines)
    assert any("JSD" in line and "0.03" in line for line in lines)


def test_evaluate_event_level_scores_have_no_per_jet_keys(run):
    test, test_scores, signal, signal_scores = run
    result = evaluate(
        test, Scores(test_scores.event), signal, Scores(signal_scores.event), EvaluationConfig(plots=False)
    )
    assert set(result.metrics) == EXPECTED_KEYS - PER_JET_KEYS
    assert result.figures == {}
    expected = auc(test_scores.event[test.labels == 0], signal_scores.event)
    assert result.metrics["auc"] == pytest.approx(expected)


def test_signal_region_metrics_remove_what_a_score_gains_from_mjj_alone(run):
    """A score that is m_jj itself finds the 3.5 TeV signal against the inclusive background, but
    not among the events of the signal region, where a resonance search cuts on it."""
    test, _, signal, _ = run
    config = EvaluationConfig(plots=False, signal_region=(3300.0, 3700.0))
    result = evaluate(test, Scores(np.asarray(test["mjj"], float)), signal, Scores(np.asarray(signal["mjj"], float)), config)
    metrics = result.metrics
    assert metrics["auc"] > 0.7  # 0.74 on the fixture
    assert abs(metrics["auc_sr"] - 0.5) < 0.05  # 0.49
    in_sr = (test["mjj"] >= 3300) & (test["mjj"] < 3700) & (test.labels == 0)
    assert metrics["n_roc_background_sr"] == in_sr.sum()
    assert {"inv_eps_b_sr/eff_s_0.3", "inv_eps_b_sr/eff_s_0.5", "max_sic_sr", "n_roc_signal_sr"} <= set(metrics)
    assert any("signal region" in line for line in result.summary_lines())
    with pytest.raises(ValueError, match="signal_region"):
        EvaluationConfig(signal_region=(3700.0, 3300.0))


class DummyStatistic:
    name = "dummy"

    def __call__(self, test: Events, scores: Scores, reference: Scores | None = None) -> StatisticResult:
        fig = Figure()
        fig.subplots().hist(np.asarray(test["mjj"]))
        metrics = {"dummy/n_events": float(len(test))}
        if reference is not None:
            metrics["dummy/n_reference"] = float(len(reference.event))
        return StatisticResult(metrics=metrics, figures={"dummy.png": fig}, table=[{"n": len(scores.event)}])


def test_search_statistic_results_are_merged(run):
    test, test_scores, signal, signal_scores = run
    statistic = DummyStatistic()
    assert isinstance(statistic, SearchStatistic)
    result = evaluate(test, test_scores, signal, signal_scores, EvaluationConfig(plots=False), [statistic])
    assert result.metrics["dummy/n_events"] == len(test)
    assert isinstance(result.figures["dummy.png"], Figure)
    assert {"statistic": "dummy", "n": len(test)} in result.table


def test_closure_reruns_statistics_on_the_background_with_the_full_sample_as_reference(run):
    test, test_scores, signal, signal_scores = run
    config = EvaluationConfig(plots=False)
    result = evaluate(test, test_scores, signal, signal_scores, config, [DummyStatistic()], ClosureConfig())
    n_background = int(np.sum(test.labels == 0))
    assert result.metrics["dummy/n_events"] == len(test) and "dummy/n_reference" not in result.metrics
    assert result.metrics["closure/dummy/n_events"] == n_background
    assert result.metrics["closure/dummy/n_reference"] == len(test)
    assert set(result.figures) == {"dummy.png"}  # closure figures are dropped
    rows = [row for row in result.table if row.get("statistic") == "dummy"]
    assert rows == [{"statistic": "dummy", "n": len(test)}]
    for e in config.efficiencies:
        assert 0 < result.metrics[f"closure/jsd_mjj_noise/eff_{e:g}"] < 1
    assert result.closure.status == ("fail" if result.metrics["closure/fail"] else "pass")


def test_closure_skips_a_statistic_without_reference_scores(run, caplog):
    test, test_scores, signal, signal_scores = run

    class Old(DummyStatistic):
        def __call__(self, test: Events, scores: Scores) -> StatisticResult:
            return StatisticResult(metrics={"dummy/n_events": float(len(test))})

    with caplog.at_level(logging.WARNING, logger="lhcad.evaluate"):
        result = evaluate(test, test_scores, signal, signal_scores, EvaluationConfig(plots=False), [Old()], ClosureConfig())
    assert "dummy/n_events" in result.metrics and "closure/dummy/n_events" not in result.metrics
    assert "takes no reference scores" in caplog.text and result.closure.status in ("pass", "fail")


def test_search_statistic_may_not_overwrite_metrics(run):
    test, test_scores, signal, signal_scores = run

    class Clashing(DummyStatistic):
        def __call__(self, test: Events, scores: Scores) -> StatisticResult:
            return StatisticResult(metrics={"auc": 1.0})

    with pytest.raises(ValueError, match="auc"):
        evaluate(test, test_scores, signal, signal_scores, EvaluationConfig(plots=False), [Clashing()])


def test_evaluate_without_injected_signal(data):
    reference = data["qcd"].take(slice(0, 2000))
    test, signal = inject_signal(data["qcd"].take(slice(2000, None)), data["signal"], 0.0, 2000, 1)
    result = evaluate(test, per_jet_scores(test, reference), signal, per_jet_scores(signal, reference))
    assert result.metrics["n_test_signal"] == 0
    assert all(result.metrics[f"n_selected_signal/eff_{e}"] == 0 for e in ("0.1", "0.03", "0.01"))
    for key in ("auc", "auc_jet1", "inv_eps_b/eff_s_0.3", "max_sic", "jsd_mjj/eff_0.1"):
        assert math.isfinite(result.metrics[key]), key
    assert result.metrics["auc"] > 0.7


def test_evaluate_edge_cases_give_nan_not_errors(caplog):
    config = EvaluationConfig()
    # constant scores: AUC 0.5
    test, signal = toy_events(100, 3), toy_events(50, 50)
    result = evaluate(test, Scores(np.zeros(100)), signal, Scores(np.zeros(50)), config)
    assert result.metrics["auc"] == 0.5
    # no held-out signal: the ROC metrics are NaN, the selections still work
    with caplog.at_level(logging.WARNING, logger="lhcad.evaluate"):
        result = evaluate(test, Scores(np.arange(100.0)), toy_events(0), Scores(np.empty(0)), config)
    assert math.isnan(result.metrics["auc"]) and math.isnan(result.metrics["max_sic"])
    assert math.isfinite(result.metrics["jsd_mjj/eff_0.1"])
    assert "no signal events" in caplog.text
    # tiny per-jet sample with too few entries for a correlation
    tiny = Scores(np.array([0.1, 0.2]), np.array([1.0, 2.0]), np.array([2.0, 1.0]))
    one = Scores(np.ones(1), np.ones(1), np.ones(1))
    result = evaluate(toy_events(2), tiny, toy_events(1, 1), one, config)
    assert math.isnan(result.metrics["jet_score_corr_bkg"]) and math.isnan(result.metrics["max_sic"])
    assert result.metrics["auc"] == 1.0
    # empty test sample
    result = evaluate(toy_events(0), Scores(np.empty(0)), toy_events(5, 5), Scores(np.ones(5)), config)
    assert math.isnan(result.metrics["auc"]) and result.metrics["n_selected/eff_0.1"] == 0
    assert result.summary_lines()


def test_evaluate_checks_score_lengths():
    with pytest.raises(ValueError, match="scores"):
        evaluate(toy_events(10), Scores(np.zeros(9)), toy_events(5, 5), Scores(np.zeros(5)))


def test_evaluation_config_validation():
    config = EvaluationConfig(efficiencies=[0.2, 0.05], mjj_range=[1000, 5000])
    assert config.efficiencies == (0.2, 0.05) and config.mjj_range == (1000.0, 5000.0)
    with pytest.raises(ValueError, match="efficiencies"):
        EvaluationConfig(efficiencies=(0.1, 1.5))
    with pytest.raises(ValueError, match="mjj_range"):
        EvaluationConfig(mjj_range=(5000.0, 1000.0))
