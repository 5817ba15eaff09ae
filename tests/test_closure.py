"""Background-only closure: the statistics again on the test background at the full sample's cuts,
the closure verdict (metrics, summary line, MLflow tag) and ``closure=rerun``."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from lhcad.cli._paths import CONF_DIR
from lhcad.config import ConfigError, build, closure_mode, register_resolvers, validate
from lhcad.data import Events, inject_signal, load_dataset
from lhcad.evaluate import ClosureConfig, EvaluationConfig, evaluate, select_efficiency
from lhcad.methods.base import Scores
from lhcad.stats import DijetBumpHunt, jet_cuts_at_efficiency, select_at_efficiency
from train_helpers import all_runs, run_train

SEARCH = OmegaConf.load(Path(CONF_DIR) / "search" / "default.yaml")
FAST = ["data=tiny", "progress=false", "method.train.epochs=8", "selection.plots=false"]


@pytest.fixture(scope="module")
def data(fixture_dir: Path) -> dict[str, Events]:
    return load_dataset(fixture_dir, ("qcd", "signal"))


@pytest.fixture(scope="module")
def statistics() -> list:
    cfg = OmegaConf.create({"search": SEARCH, "selection": {"plots": False}})
    return [build(node) for node in cfg.search.statistics]


def closure_config() -> ClosureConfig:
    return ClosureConfig(**OmegaConf.to_container(SEARCH.closure))


def run_closure(data, statistics, seed: int, make_scores, signal_frac: float = 0.0):
    """Evaluate ``make_scores(test, rng)`` on 6000 fixture events with the default search config."""
    rng = np.random.default_rng(seed)
    test, signal = inject_signal(data["qcd"], data["signal"], signal_frac, 6000, rng)
    scores = make_scores(test, rng)
    zeros = np.zeros(len(signal))
    held = Scores(zeros, zeros, zeros) if scores.per_jet else Scores(zeros)
    return evaluate(test, scores, signal, held, EvaluationConfig(plots=False), statistics, closure_config())


def sculpting_score(test: Events, rng: np.random.Generator) -> Scores:
    """A score that prefers m_jj near 3.5 TeV: its selections carve a bump out of pure background."""
    mjj = np.asarray(test["mjj"], np.float64)
    return Scores(-np.abs(mjj - 3500.0) / 400.0 + rng.normal(0.0, 1.0, len(mjj)))


def random_jet_scores(test: Events, rng: np.random.Generator) -> Scores:
    j1, j2 = rng.random(len(test)), rng.random(len(test))
    return Scores(np.minimum(j1, j2), j1, j2)


def signal_jet_scores(test: Events, rng: np.random.Generator) -> Scores:
    """Per-jet scores that know the signal but not m_jj."""
    labels = np.asarray(test.labels)
    j1, j2 = rng.normal(size=len(test)) + 2.5 * labels, rng.normal(size=len(test)) + 2.5 * labels
    return Scores(np.minimum(j1, j2), j1, j2)


def closure_z(metrics: dict[str, float]) -> list[float]:
    return [v for k, v in metrics.items() if k.startswith("closure/sig_") and math.isfinite(v)]


# ---------------------------------------------------------------------------------------------- thresholds


def test_select_at_efficiency_on_its_reference_is_select_efficiency():
    rng = np.random.default_rng(0)
    tied = rng.integers(0, 50, 1000).astype(float)  # many ties at every threshold
    for e in (0.1, 0.03, 0.01):
        assert np.array_equal(select_at_efficiency(tied, e, tied), select_efficiency(tied, e))
        assert np.array_equal(select_at_efficiency(tied, e), select_efficiency(tied, e))


def test_select_at_efficiency_applies_the_reference_cut_to_a_subset():
    rng = np.random.default_rng(1)
    scores, subset = rng.normal(size=5000), rng.random(5000) < 0.7
    for e in (0.1, 0.01):
        kept = select_at_efficiency(scores[subset], e, scores)
        assert np.array_equal(kept, select_efficiency(scores, e)[subset])
    # ties: the subset keeps the same fraction of the events at the cut value
    tied = np.r_[np.zeros(900), np.ones(100)]  # keeping 5% takes half of the ones
    kept = select_at_efficiency(tied[::2], 0.05, tied)
    assert kept.sum() == 25 and kept[-50:].sum() == 25


def test_jet_cuts_with_a_reference_are_the_reference_cuts():
    rng = np.random.default_rng(2)
    j1, j2, subset = rng.normal(size=8000), rng.normal(size=8000), rng.random(8000) < 0.9
    for e in (0.1, 0.01):
        full1, full2 = jet_cuts_at_efficiency(j1, j2, e)
        sub1, sub2 = jet_cuts_at_efficiency(j1[subset], j2[subset], e, reference=(j1, j2))
        assert np.array_equal(sub1, full1[subset]) and np.array_equal(sub2, full2[subset])


def test_bump_hunt_with_a_reference_counts_the_background_of_the_full_selection(data):
    rng = np.random.default_rng(3)
    test, _ = inject_signal(data["qcd"], data["signal"], 0.05, 6000, rng)
    scores = Scores(rng.normal(size=len(test)) + 2.0 * np.asarray(test.labels))
    background = np.asarray(test.labels) == 0
    hunt = DijetBumpHunt(plots=True)
    result = hunt(test.take(background), Scores(scores.event[background]), reference=scores)
    assert result.figures == {}  # the closure pass makes no figures
    mjj = np.asarray(test["mjj"])
    in_sr = (mjj >= 3300.0) & (mjj < 3700.0)
    for e in (0.1, 0.01):
        expected = np.sum(select_efficiency(scores.event, e) & background & in_sr)
        assert result.metrics[f"bumphunt_nsr_obs/eff_{e:g}"] == expected
        assert result.metrics[f"bumphunt_nsr_signal/eff_{e:g}"] == 0


# ---------------------------------------------------------------------------------------------- verdict


@pytest.mark.parametrize("seed", range(5))
def test_sculpting_selection_fails_the_closure(data, statistics, seed):
    result = run_closure(data, statistics, seed, sculpting_score)
    metrics = result.metrics
    assert result.closure is not None and result.closure.status == "fail"
    assert metrics["closure/fail"] == 1.0
    # measured over seeds 0-4: largest closure Z 3.4-6.7, JSD 22-26x the random-selection JSD at 10%
    assert max(closure_z(metrics)) > 2.5
    assert metrics["jsd_mjj/eff_0.1"] > 10 * metrics["closure/jsd_mjj_noise/eff_0.1"]
    assert any(f.startswith("jsd_mjj/eff_0.1 = ") for f in result.closure.failures)
    last = result.summary_lines()[-1]
    assert last.startswith("WARNING: closure failed:") and "jsd_mjj/eff_0.1" in last


@pytest.mark.parametrize("seed", range(5))
def test_unsculpted_selection_passes_the_closure(data, statistics, seed):
    result = run_closure(data, statistics, seed, random_jet_scores)
    metrics = result.metrics
    assert result.closure is not None and result.closure.status == "pass", result.closure.failures
    assert metrics["closure/fail"] == 0.0
    zs = closure_z(metrics)
    assert len(zs) >= 20 and max(zs) < 3.0  # measured: 27 finite, largest 0.8-2.8
    for e in ("0.1", "0.03", "0.01"):  # measured 0.7-1.4
        assert metrics[f"jsd_mjj/eff_{e}"] < 1.8 * metrics[f"closure/jsd_mjj_noise/eff_{e}"]
    assert {"closure/sig_bumphunt/none", "closure/sig_tnt_bumphunt/eff_0.01", "closure/sig_abcd_obs/eff_0.03",
            "closure/abcd/validation_pull"} <= set(metrics)
    assert result.summary_lines()[-1] == "closure pass"
    assert not any(k.startswith("closure/") and k.endswith(".png") for k in result.figures)


@pytest.mark.parametrize("seed", range(5))
def test_a_real_signal_is_significant_and_still_closes(data, statistics, seed):
    result = run_closure(data, statistics, seed, signal_jet_scores, signal_frac=0.02)
    metrics = result.metrics
    main = [v for k, v in metrics.items() if k.startswith("sig_") and "exp" not in k and math.isfinite(v)]
    assert max(main) > 4  # measured 7.0-8.6
    assert result.closure.status == "pass" and max(closure_z(metrics)) < 3.0  # measured 0.5-2.6


def test_closure_is_skipped_without_truth_labels(data, statistics, caplog):
    rng = np.random.default_rng(0)
    test = data["qcd"].take(np.arange(3000))
    scores = random_jet_scores(test, rng)
    held = Scores(np.zeros(5), np.zeros(5), np.zeros(5))
    signal = data["signal"].take(np.arange(5))
    for unlabelled in (test.drop(["label"]), test.with_columns(label=np.full(len(test), -1, np.int8))):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lhcad.evaluate"):
            result = evaluate(
                unlabelled, scores, signal, held, EvaluationConfig(plots=False), statistics, closure_config()
            )
        assert result.closure.status == "skipped"
        assert "closure skipped: the events carry no truth labels" in caplog.text
        assert not any(k.startswith("closure/") for k in result.metrics)
        assert result.summary_lines()[-1] == "closure skipped: the events carry no truth labels"


def test_no_closure_unless_asked(data, statistics):
    rng = np.random.default_rng(0)
    test = data["qcd"].take(np.arange(3000))
    held = Scores(np.zeros(5), np.zeros(5), np.zeros(5))
    result = evaluate(test, random_jet_scores(test, rng), data["signal"].take(np.arange(5)), held,
                      EvaluationConfig(plots=False), statistics)
    assert result.closure is None and not any(k.startswith("closure/") for k in result.metrics)


def test_closure_config_validation():
    assert ClosureConfig(max_z="2.5").max_z == 2.5
    with pytest.raises(ValueError, match="max_jsd"):
        ClosureConfig(max_jsd=-0.1)
    with pytest.raises(ValueError, match="jsd_noise_trials"):
        ClosureConfig(jsd_noise_trials=0)


# ---------------------------------------------------------------------------------------------- config


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        return compose("config", overrides=["data=tiny", *overrides])


def test_closure_setting_is_validated():
    assert closure_mode(_compose()) == "auto"
    assert closure_mode(_compose("closure=rerun")) == "rerun"
    assert closure_mode(OmegaConf.create("closure: off")) == "off"  # YAML's bare off is false
    with pytest.raises(ConfigError, match=r"closure must be one of auto, rerun, off, got 'sometimes'"):
        validate(_compose("closure=sometimes"))


def test_closure_thresholds_come_from_the_search_config():
    from lhcad.pipeline import _closure_config

    cfg = _compose("search.closure.max_z=2.5")
    assert _closure_config(cfg) == ClosureConfig(max_z=2.5, max_jsd=SEARCH.closure.max_jsd,
                                                 jsd_noise_factor=SEARCH.closure.jsd_noise_factor,
                                                 jsd_noise_trials=SEARCH.closure.jsd_noise_trials)
    assert _closure_config(_compose("closure=off")) is None


def test_unknown_closure_value_is_one_clear_sentence(tmp_path):
    proc = run_train(tmp_path, "data=tiny", "closure=sometimes", expect_ok=False)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "closure must be one of auto, rerun, off, got 'sometimes'" in out and "Traceback" not in out


# ---------------------------------------------------------------------------------------------- train.py


@pytest.mark.slow
def test_every_run_logs_the_closure_and_tags_its_verdict(tmp_path):
    proc = run_train(tmp_path, *FAST, "method=ae", "signal_frac=0.09")
    (run,) = all_runs(tmp_path)
    m, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    expected = (
        "closure/sig_bumphunt/none", "closure/sig_bumphunt/eff_0.01", "closure/sig_tnt_bumphunt/eff_0.03",
        "closure/sig_abcd_obs/eff_0.03", "closure/jsd_mjj_noise/eff_0.01", "closure/fail",
        "abcd/validation_pull", "abcd/control_corr", "abcd/valid", "closure/abcd/validation_pull",
    )  # fmt: skip
    assert set(expected) <= set(m), sorted(set(expected) - set(m))
    assert tags["closure"] == ("fail" if m["closure/fail"] else "pass")
    assert m["closure/bumphunt_nsr_signal/eff_0.1"] == 0  # background only
    out = proc.stdout + proc.stderr
    assert "closure pass" in out if tags["closure"] == "pass" else "WARNING: closure failed:" in out


@pytest.mark.slow
def test_closure_off_logs_no_closure(tmp_path):
    run_train(tmp_path, *FAST, "method=ae", "signal_frac=0.09", "closure=off")
    (run,) = all_runs(tmp_path)
    assert run.data.tags["closure"] == "off"
    assert not any(k.startswith("closure/") for k in run.data.metrics)


@pytest.mark.slow
def test_closure_rerun_adds_a_background_only_sibling_under_the_same_parent(tmp_path):
    run_train(tmp_path, "-m", *FAST, "method=ae", "signal_frac=0.09", "closure=rerun")
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("lhcad.role") == "multirun-parent"]
    (main,) = [r for r in runs if r.info.run_name == "ae-f0.09-s0"]
    (sibling,) = [r for r in runs if r.info.run_name == "ae-f0.09-s0-closure"]
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert sibling.data.tags["closure_of"] == main.info.run_id
    assert sibling.data.tags["signal_frac"] == "0" and sibling.data.metrics["n_test_signal"] == 0
    assert sibling.data.params["signal_frac"] == "0.0" and sibling.data.params["closure"] == "auto"
    for r in (main, sibling):
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["closure"] in ("pass", "fail")
    assert "closure_of" not in main.data.tags


@pytest.mark.slow
def test_no_closure_rerun_for_a_method_that_learns_from_injected_signal(tmp_path):
    proc = run_train(tmp_path, *FAST, "method=supervised", "signal_frac=0.09", "closure=rerun")
    runs = {r.info.run_name: r for r in all_runs(tmp_path)}
    assert list(runs) == ["supervised-f0.09-s0"] and runs["supervised-f0.09-s0"].info.status == "FINISHED"
    assert "closure rerun skipped: supervised learns from injected signal" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_failing_closure_rerun_leaves_the_main_run_standing(tmp_path, monkeypatch, caplog):
    """A fault injected into the sibling's training: it is marked FAILED, the main run stands."""
    from lhcad import pipeline
    from train_helpers import compose_config

    real = pipeline.fit_and_evaluate

    def failing_at_zero_signal(prep, **kwargs):
        if float(prep.cfg.signal_frac) == 0:
            raise RuntimeError("injected fault")
        return real(prep, **kwargs)

    monkeypatch.setattr(pipeline, "fit_and_evaluate", failing_at_zero_signal)
    monkeypatch.chdir(tmp_path)
    cfg = compose_config([*FAST, "method=ae", "signal_frac=0.09", "closure=rerun", f"tracking.mlruns_dir={tmp_path}/mlruns"])
    with open_dict(cfg):
        del cfg["hydra"]  # as train.py sees it: Hydra's own node stays in HydraConfig
    with caplog.at_level(logging.ERROR, logger="lhcad.pipeline"):
        result = pipeline.run(cfg)
    runs = {r.info.run_name: r for r in all_runs(tmp_path)}
    assert runs["ae-f0.09-s0"].info.status == "FINISHED" and runs["ae-f0.09-s0"].info.run_id == result.run_id
    assert runs["ae-f0.09-s0-closure"].info.status == "FAILED" and result.closure_run_id is None
    assert "closure rerun at signal_frac=0 failed: injected fault" in caplog.text
