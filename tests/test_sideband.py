"""Weak supervision with sidebands (paper 003): windows, weights, inputs, training sets, and the
physics of CWoLa / SA-CWoLa / SALAD / optimal CWoLa on the fixture, through `train.py` and MLflow."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics

from lhcad.data import draw_sample, load_dataset
from lhcad.inputs import DijetFeatures, JetFeatures, JetImages
from lhcad.methods.base import FitContext
from lhcad.methods.salad import SALAD, weighted_auc
from lhcad.methods.sideband import CWoLa, CWoLaIdeal, SACWoLa
from lhcad.windows import OUTSIDE, SB_HIGH, SB_LOW, SR, MassWindows, sideband_weights
from lhcad.pipeline import apply_transforms
from train_helpers import all_runs, run_train

WINDOWS = dict(signal_region=[3300.0, 3700.0], sidebands=[[3100.0, 3300.0], [3700.0, 3900.0]])
QUICK = {"epochs": 3, "batch_size": 200, "patience": 0, "val_fraction": 0.1}


@pytest.fixture(scope="module")
def samples(fixture_dir):
    return load_dataset(fixture_dir, ("qcd", "signal", "sim"))


# ---------------------------------------------------------------------------------------------- windows and weights


def test_windows_regions_are_half_open_and_widen_outwards():
    w = MassWindows.from_config(**WINDOWS)
    mjj = np.array([3099.9, 3100.0, 3299.9, 3300.0, 3699.9, 3700.0, 3899.9, 3900.0])
    assert w.region(mjj).tolist() == [OUTSIDE, SB_LOW, SB_LOW, SR, SR, SB_HIGH, SB_HIGH, OUTSIDE]
    long = w.widened(300.0)
    assert long.signal_region == w.signal_region
    assert long.sideband_low == (2800.0, 3300.0) and long.sideband_high == (3700.0, 4200.0)
    assert long.region(np.array([2850.0, 4150.0])).tolist() == [SB_LOW, SB_HIGH]


@pytest.mark.parametrize(
    "sr, sbs, match",
    [
        ([3300, 3700], [[3100, 3400], [3700, 3900]], "without overlapping"),
        ([3300, 3700], [[3100, 3300]], "two sidebands"),
        ([3700, 3300], [[3100, 3300], [3700, 3900]], "low < high"),
    ],
)
def test_windows_reject_inconsistent_definitions(sr, sbs, match):
    with pytest.raises(ValueError, match=match):
        MassWindows.from_config(sr, sbs)


def test_sideband_halves_share_the_signal_region_weight():
    region = np.array([SR] * 30 + [SB_LOW] * 10 + [SB_HIGH] * 40 + [OUTSIDE] * 5)
    w = sideband_weights(region)
    assert w[region == SR].sum() == pytest.approx(30)
    assert w[region == SB_LOW].sum() == pytest.approx(15) == w[region == SB_HIGH].sum()
    assert np.all(w[region == OUTSIDE] == 0)
    with pytest.raises(ValueError, match="upper sideband"):
        sideband_weights(np.array([SR, SB_LOW]))
    base = np.linspace(0.5, 2.0, len(region))  # e.g. DCTR weights: kept within a region, balanced across
    wb = sideband_weights(region, base=base)
    assert wb[region == SR].sum() == pytest.approx(base[region == SR].sum())
    assert wb[region == SB_LOW].sum() == pytest.approx(wb[region == SB_HIGH].sum())
    assert wb[region == SB_LOW].sum() + wb[region == SB_HIGH].sum() == pytest.approx(wb[region == SR].sum())
    low = region == SB_LOW
    np.testing.assert_allclose(wb[low] / base[low], wb[low][0] / base[low][0])


# ---------------------------------------------------------------------------------------------- inputs


def test_dijet_features_are_paper_003_inputs_in_tev(samples):
    qcd = samples["qcd"]
    x = DijetFeatures().event(qcd)
    m1, m2 = qcd["j1_m"].astype(np.float64), qcd["j2_m"].astype(np.float64)
    np.testing.assert_allclose(x[:, 0], np.minimum(m1, m2) / 1000, rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], np.abs(m1 - m2) / 1000, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(x[:, 2], qcd["j1_tau2"] / qcd["j1_tau1"], rtol=1e-5)
    np.testing.assert_allclose(x[:, 3], qcd["j2_tau2"] / qcd["j2_tau1"], rtol=1e-5)
    assert set(DijetFeatures().columns) == {"j1_m", "j2_m", "j1_tau1", "j1_tau2", "j2_tau1", "j2_tau2"}
    with pytest.raises(ValueError, match="unknown dijet feature 'tau99'"):
        DijetFeatures(["tau99"])
    with pytest.raises(TypeError, match="whole events"):
        DijetFeatures().jet(qcd, 1)


def test_sideband_methods_take_event_features_and_never_mjj():
    assert CWoLa(JetFeatures(["m", "tau21"])).event_inputs.names == list(DijetFeatures.DEFAULT)
    images = JetImages(40)
    assert CWoLa(images).event_inputs is images  # two-channel CNN on both jets
    with pytest.raises(ValueError, match="must not be a classifier input"):
        CWoLa(JetFeatures(["m"]), features=["mj_lighter", "mjj"])
    with pytest.raises(ValueError, match="lam"):
        SACWoLa(JetFeatures(["m"]), lam=-0.1)
    assert CWoLa(JetFeatures(["m"]), diagnose_on_sim=False).samples == ()
    assert SACWoLa(JetFeatures(["m"]), diagnose_on_sim=False).samples == ("sim",)
    ideal = CWoLaIdeal(JetFeatures(["m"]))
    assert ideal.needs_spare_background and ideal.samples == ("sim",)  # the spare background is no sample
    assert not CWoLa(JetFeatures(["m"])).needs_spare_background


# ---------------------------------------------------------------------------------------------- training sets


def test_sa_cwola_adds_simulation_with_flipped_labels_and_relative_weight_lambda(samples):
    data, sim, ctx = samples["qcd"], samples["sim"], FitContext()
    plain = CWoLa(JetFeatures(["m"]), **WINDOWS).training_set(data, sim, ctx)
    zero = SACWoLa(JetFeatures(["m"]), lam=0.0, **WINDOWS).training_set(data, sim, ctx)
    np.testing.assert_array_equal(plain.x, zero.x)
    np.testing.assert_array_equal(plain.w, zero.w)

    lam = 0.4
    ts = SACWoLa(JetFeatures(["m"]), lam=lam, **WINDOWS).training_set(data, sim, ctx)
    n = len(plain.y)
    data_w, sim_w, sim_y, sim_x = ts.w[:n], ts.w[n:], ts.y[n:], ts.x[n:]
    assert sim_w.sum() == pytest.approx(lam * data_w.sum())
    # flipped labels: simulated SR events are class 0, simulated SB events class 1
    region = MassWindows.from_config(**WINDOWS).region(sim["mjj"])
    sr_rows = DijetFeatures().event(sim.take(region == SR))
    assert int((sim_y == 0).sum()) == len(sr_rows)
    np.testing.assert_array_equal(sim_x[sim_y == 0], sr_rows)
    # within the simulation the two sidebands carry equal weight, together that of the SR
    assert sim_w[sim_y == 1].sum() == pytest.approx(sim_w[sim_y == 0].sum())


def test_sa_cwola_can_reweight_its_simulation_term_to_the_data(samples):
    """Paper 003 footnote 1: the simulation term with SALAD's weights; balancing and lambda hold."""
    data, sim = samples["qcd"], samples["sim"]
    method = SACWoLa(JetFeatures(["m"]), lam=0.5, reweight_sim=True, train=QUICK, **WINDOWS)
    ctx = FitContext(samples={"sim": sim})
    ts = method.training_set(data, sim, ctx)
    n_data = len(CWoLa(JetFeatures(["m"]), **WINDOWS).data_term(data).y)
    sim_w, sim_y = ts.w[n_data:], ts.y[n_data:]
    assert sim_w.sum() == pytest.approx(0.5 * ts.w[:n_data].sum())
    assert sim_w[sim_y == 1].sum() == pytest.approx(sim_w[sim_y == 0].sum())
    # the SR simulation weights follow g/(1-g), not a constant
    region = MassWindows.from_config(**WINDOWS).region(sim["mjj"])
    dctr = method.reweighter.weights(sim.take(region == SR))
    np.testing.assert_allclose(sim_w[sim_y == 0] / dctr, (sim_w[sim_y == 0] / dctr)[0], rtol=1e-6)
    assert dctr.std() > 0.01
    assert {"sa_cwola/weight_neff_fraction", "sa_cwola/n_long_sb_sim"} <= set(ts.info)


def test_cwola_ideal_compares_signal_region_with_spare_background(samples):
    draw = draw_sample(samples["qcd"], samples["signal"], 0.05, 5000, 0)
    method = CWoLaIdeal(JetFeatures(["m"]), **WINDOWS)
    with pytest.raises(ValueError, match="background_reserve"):
        method.training_set(draw.sample, None, FitContext())
    ctx = FitContext(spare_background=draw.unused_background)
    ts = method.training_set(draw.sample, None, ctx)
    windows = MassWindows.from_config(**WINDOWS)
    n_sr = int((windows.region(draw.sample["mjj"]) == SR).sum())
    n_ref = int((windows.region(draw.unused_background["mjj"]) == SR).sum())
    assert int(ts.y.sum()) == n_sr and len(ts.y) == n_sr + n_ref
    assert ts.w[ts.y == 0].sum() == pytest.approx(ts.w[ts.y == 1].sum())


def test_draw_sample_leaves_the_undrawn_background_aside(samples):
    qcd = samples["qcd"]
    draw = draw_sample(qcd, samples["signal"], 0.1, 3000, 7)
    assert len(draw.unused_background) == len(qcd) - int((draw.sample.labels == 0).sum())
    key = ("mjj", "j1_m", "j2_m")
    drawn = {tuple(r) for r in np.stack([draw.sample[k] for k in key], 1)}
    spare = {tuple(r) for r in np.stack([draw.unused_background[k] for k in key], 1)}
    assert not drawn & spare


def test_alpha_transform_shifts_jet_masses_of_every_sample(samples):
    out = apply_transforms(samples, {"alpha": 0.1})
    for name, events in samples.items():
        np.testing.assert_allclose(out[name]["j2_m"], events["j2_m"] + 0.1 * events["mjj"], rtol=1e-5)
        np.testing.assert_array_equal(out[name]["mjj"], events["mjj"])
    assert apply_transforms(samples, {"alpha": 0.0})["qcd"] is samples["qcd"]


def test_weighted_auc_matches_sklearn_and_clipping_bounds_salad_weights(samples):
    rng = np.random.default_rng(0)
    b, s, wb = rng.normal(0, 1, 500), rng.normal(0.5, 1, 300), rng.uniform(0.1, 3, 500)
    y = np.r_[np.zeros(500), np.ones(300)]
    expect = sklearn.metrics.roc_auc_score(y, np.r_[b, s], sample_weight=np.r_[wb, np.ones(300)])
    assert weighted_auc(b, s, wb) == pytest.approx(expect)

    data, sim = samples["qcd"], samples["sim"]
    method = SALAD(JetFeatures(["m"]), reweighter={"max_weight": 1.5}, train=QUICK, **WINDOWS)
    method.fit({"train": data}, FitContext(samples={"sim": sim}))
    w = method.weights(sim)
    assert w.min() >= 1 / 1.5 - 1e-9 and w.max() <= 1.5 + 1e-9
    assert np.all(SALAD(JetFeatures(["m"]), reweight=False, **WINDOWS).weights(sim) == 1.0)


# ---------------------------------------------------------------------------------------------- physics, through train.py

# the fixture has ~1.5k SR+SB training events: the classifier needs more passes over them than
# paper 003's 10 epochs on ~10^5 events to learn the m_jj dependence that alpha = 0.1 plants
SMALL_SAMPLE = ["data=tiny", "progress=false", "selection.plots=false", "search.statistics=[]",
                "holdout.test=0.2", "holdout.val=0", "method.train.epochs=100", "method.train.patience=15",
                "++method.sim_holdout=0.5"]  # ++: multirun validates on the default method


@pytest.mark.slow
def test_sa_cwola_is_blind_to_the_mass_dependence_cwola_learns(tmp_path):
    """Background only, alpha = 0.1: CWoLa learns SR vs SB from the jet masses; SA-CWoLa does not."""
    run_train(tmp_path, "-m", *SMALL_SAMPLE, "transform.alpha=0.1", "signal_frac=0", "method=cwola,sa_cwola", "seed=0,1")
    runs = [r for r in all_runs(tmp_path) if "method" in r.data.tags]
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for seed in ("0", "1"):
        auc = {r.data.tags["method"]: r.data.metrics["sr_vs_sb_auc/sim"] for r in runs if r.data.tags["seed"] == seed}
        assert auc["cwola"] > 0.55, auc
        assert abs(auc["sa_cwola"] - 0.5) < abs(auc["cwola"] - 0.5), auc


@pytest.mark.slow
def test_salad_reweighting_closes_the_sideband_gap_between_data_and_simulation(tmp_path):
    run_train(tmp_path, *SMALL_SAMPLE, "transform.alpha=0.1", "signal_frac=0.05", "method=salad")
    (run,) = all_runs(tmp_path)
    m = run.data.metrics
    assert m["salad/sb_auc_before"] > 0.53, m  # the simulation really mismodels the data
    assert abs(m["salad/sb_auc_after"] - 0.5) < abs(m["salad/sb_auc_before"] - 0.5), m
    assert 0 < m["salad/weight_neff_fraction"] <= 1 and m["salad/weight_max"] >= 1


@pytest.mark.slow
def test_sacwola_fig2_experiment_runs_all_four_methods_on_the_same_events(tmp_path):
    run_train(tmp_path, "-m", "experiment=sacwola_fig2", "data=tiny", "progress=false", "selection.plots=false",
              "signal_frac=0.1", "method=cwola,sa_cwola,salad,cwola_ideal")
    runs = all_runs(tmp_path)
    children = {r.data.tags["method"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"cwola", "sa_cwola", "salad", "cwola_ideal"}
    assert all(r.info.status == "FINISHED" for r in runs)
    counts = set()
    for name, run in children.items():
        m = run.data.metrics
        assert run.data.tags["alpha"] == "0.1" and run.data.params["transform.alpha"] == "0.1"
        assert {"auc", "max_sic", "jsd_mjj/eff_0.1", "sig_bumphunt/none", "sr_vs_sb_auc/sim",
                "sr_vs_sb_auc/test_background", "val_loss"} <= set(m), name
        assert m["auc"] > 0.6, (name, m["auc"])  # 10% signal: every method finds it
        counts.add((m["n_events/train"], m["n_events/test"], run.data.tags["dataset_checksum"]))
    assert len(counts) == 1  # same events for all four
    assert children["cwola_ideal"].data.metrics["cwola_ideal/n_reference_sr"] > 100
    assert "salad/sb_auc_after" in children["salad"].data.metrics


def test_cwola_ideal_without_spare_background_is_one_clear_sentence(tmp_path):
    proc = run_train(tmp_path, "data=tiny", "progress=false", "method=cwola_ideal", expect_ok=False)
    assert proc.returncode == 2
    assert "set background_reserve" in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("background_reserve", 1.0, "background_reserve must be a fraction in \\[0, 1\\)"),
        ("cpu_threads", 0, "cpu_threads must be 'auto'"),
    ],
)
def test_run_level_settings_are_validated_before_anything_runs(key, value, match):
    from omegaconf import OmegaConf

    from lhcad.config import ConfigError, validate

    cfg = OmegaConf.create({"signal_frac": 0.01, "n_events": None, "holdout": {"test": 0.3}, key: value})
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_train_and_evaluate_without_mlflow_returns_fit_time_metrics(tmp_path, monkeypatch):
    """The library path used by scripts: no MLflow store, and the method's own fit-time summaries
    (SALAD's weight summary) come back with the final metrics."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lhcad.cli._paths import CONF_DIR
    from lhcad.config import register_resolvers
    from lhcad.pipeline import train_and_evaluate

    monkeypatch.setenv("LHCAD_HOME", str(tmp_path))
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=["method=salad", "data=tiny", "progress=false", "selection.plots=false",
                                           "search.statistics=[]", "signal_frac=0.05", "method.train.epochs=3"],
                      return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # as in a job: the run config without Hydra's own section
        out = train_and_evaluate(cfg)
    assert out.method.name == "salad"
    assert {"salad/weight_neff_fraction", "salad/n_sr_sim", "n_events/train"} <= out.reported
    assert 0 < out.metrics["salad/weight_neff_fraction"] <= 1
    assert 0.5 < out.metrics["auc_sr"] <= 1  # 5% signal: found even after 3 epochs
    assert not (tmp_path / "mlruns").exists()
