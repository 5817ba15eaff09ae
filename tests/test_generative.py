"""Generative per-jet taggers (paper 004: vae, disco_vae, oe_vae) and the adversarial AE (paper 002)."""

from __future__ import annotations

import dcor
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from lhcad.cli._paths import CONF_DIR
from lhcad.config import build, register_resolvers
from lhcad.data.dataset import load_dataset
from lhcad.data.events import Events
from lhcad.data.transforms import order_jets
from lhcad.evaluate.jet_mass import JesNuisance, jet_mass_metrics, jet_mass_sculpting, nuisance_aucs
from lhcad.evaluate.metrics import auc
from lhcad.evaluate.sculpting import jsd
from lhcad.inputs import JetFeatures
from lhcad.methods.adv_ae import AdversarialAutoEncoder, mass_bin_classes
from lhcad.methods.ae import AutoEncoder
from lhcad.methods.base import FitContext, Scores
from lhcad.methods.registry import available_methods, build_method
from lhcad.methods.vae import DisCoVAE, OutlierExposureVAE, VariationalAutoEncoder, plane
from lhcad.models.adversarial import probe_adversary
from lhcad.models.dcor import distance_correlation
from lhcad.models.vae import VAE, cyclic_ramp, linear_ramp, vae_score, vae_terms
from train_helpers import all_runs, run_train

# the default inputs (conf/inputs/features.yaml, checked below): scale-free, jet 1 = the harder jet
FEATURES = JetFeatures(["m_over_pt", "sqrt_tau21", "tau21", "tau32", "tau43", "nconst"], jet_order="pt")
# inputs that carry the jets' energy scale, so that a JES shift moves them (m and pT in GeV)
SCALE_FEATURES = JetFeatures(["m", "pt", "sqrt_tau21", "tau21", "tau32", "tau43", "nconst"], jet_order="pt")
METHODS = ["vae", "disco_vae", "oe_vae", "adv_ae"]


# ---------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("n", [2, 17, 300])
def test_distance_correlation_matches_dcor(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = x**2 + rng.normal(size=n)
    got = distance_correlation(torch.tensor(x), torch.tensor(y))
    assert float(got) == pytest.approx(dcor.distance_correlation(x, y), rel=1e-9, abs=1e-6)
    got2 = distance_correlation(torch.tensor(x), torch.tensor(y), squared=True)
    assert float(got2) == pytest.approx(dcor.distance_correlation_sqr(x, y), rel=1e-9, abs=1e-9)


def test_distance_correlation_is_batched_and_differentiable():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 50)), rng.normal(size=(4, 50))
    y[0] = np.exp(x[0])
    batched = distance_correlation(torch.tensor(x), torch.tensor(y))
    assert batched.shape == (4,)
    for i in range(4):
        assert float(batched[i]) == pytest.approx(dcor.distance_correlation(x[i], y[i]), rel=1e-9)
    assert float(batched[0]) > 0.9
    xt = torch.tensor(x[1, :12], requires_grad=True)
    yt = torch.tensor(y[1, :12], requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: distance_correlation(a, b), (xt, yt))
    with pytest.raises(ValueError, match="equal size"):
        distance_correlation(torch.zeros(3), torch.zeros(4))


def test_vae_terms_scores_and_shapes():
    x = torch.randn(7, 6)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VAE.dense(6, latent=3).eval()
    mse, kl = vae_terms(model, x)
    assert mse.shape == kl.shape == (7,) and bool((kl >= 0).all())
    assert torch.allclose(vae_score(model, x, "nll"), mse + kl)
    assert torch.equal(vae_score(model, x, "mse"), vae_score(model, x, "mse"))  # eval: z = mu
    with pytest.raises(ValueError, match="unknown VAE score"):
        vae_score(model, x, "elbo")
    conv = VAE.conv(1, 16, latent=4, channels=(4, 4))
    assert vae_terms(conv, torch.randn(3, 16, 16))[0].shape == (3,)


def test_annealing_schedules():
    assert [linear_ramp(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert linear_ramp(0, 0) == 1.0
    assert [cyclic_ramp(s, 8, 0.5) for s in (0, 2, 4, 7, 8, 10)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]


def test_plane_matches_the_target_distribution():
    rng = np.random.default_rng(0)
    target, values = rng.exponential(100.0, 20000), rng.uniform(0.0, 800.0, 5000)
    idx = plane(target, values, 20000, rng)
    assert jsd(target, values[idx], range=(0, 800)) < 0.01 < jsd(target, values, range=(0, 800))
    with pytest.raises(ValueError, match="planing impossible"):
        plane(target, np.full(10, -5.0), 3, rng)


def test_jet_mass_sculpting_and_nuisance_aucs():
    rng = np.random.default_rng(0)
    mass = rng.exponential(100.0, 20000)
    sculpting, _ = jet_mass_sculpting(mass, mass, np.array([]))
    random, eff_s = jet_mass_sculpting(mass, rng.normal(size=mass.size), rng.normal(size=1000) + 10)
    assert sculpting > 0.5 > 0.05 > random and eff_s == 1.0

    def events(n, m, label):
        cols = {f"j{j}_{f}": np.full(n, v, np.float32) for j in (1, 2) for f, v in (("pt", 1500.0), ("eta", 0.0))}
        cols |= {"j1_phi": np.zeros(n, np.float32), "j2_phi": np.full(n, np.pi, np.float32)}
        cols |= {"j1_m": m.astype(np.float32), "j2_m": (m / 2).astype(np.float32), "mjj": np.full(n, 3000.0, np.float32)}
        return Events(cols | {"label": np.full(n, label, np.int8)})

    test, signal = events(2000, rng.exponential(100.0, 2000), 0), events(500, rng.normal(150, 30, 500), 1)

    def score(ev):  # closeness to a fixed mass: JES-sensitive
        s1 = -np.abs(np.asarray(ev["j1_m"], np.float64) - 150.0)
        return Scores(event=s1, jet1=s1, jet2=-np.abs(np.asarray(ev["j2_m"], np.float64) - 75.0))

    nuisance = nuisance_aucs(score, test, signal)
    assert set(nuisance) == {f"auc_nuisance/{c}" for c in ("up", "nominal", "down", "spread")}
    assert nuisance["auc_nuisance/spread"] > 0.01
    metrics = jet_mass_metrics(test, score(test), signal, score(signal))
    assert set(metrics) == {"jsd_mjet/jet1", "jsd_mjet/jet2", "eff_s_at_eff_b_0.05/jet1", "eff_s_at_eff_b_0.05/jet2"}


def test_mass_bin_classes_are_quantiles():
    classes = mass_bin_classes(np.arange(300.0), 3)
    assert np.bincount(classes).tolist() == [100, 100, 100]


def test_probe_adversary_measures_the_nuisance_left_in_the_loss():
    """A fresh adversary reads the class off the loss when the loss encodes it, and only then."""
    zero = torch.nn.Linear(4, 4)  # reconstructs nothing: the loss is mean(x^2)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 3, 6000))
    noise = torch.from_numpy(rng.normal(size=(6000, 4)).astype(np.float32))
    for x, expect in ((noise * (1.0 + y[:, None].float()), "above"), (noise, "chance")):
        acc = probe_adversary(zero, x[:5000], y[:5000], x[5000:], y[5000:], n_classes=3, seed=1)
        chance = float(torch.bincount(y[5000:]).max()) / 1000
        assert (acc > chance + 0.2) if expect == "above" else (acc < chance + 0.05), (expect, acc, chance)


def test_disco_vae_rejects_unknown_decorrelation_targets():
    with pytest.raises(ValueError, match="decorrelate"):
        DisCoVAE(FEATURES, decorrelate="elbo")
    assert DisCoVAE(FEATURES).decorrelate == "score"


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("override", ["method=vae", "method=disco_vae", "method=oe_vae", "method=oe_vae method.form=kl",
                                      "method=adv_ae", "method=adv_ae method.target=mass_bins", "method=vae inputs=images"])
def test_configs_compose_and_instantiate(override):
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=[*override.split(), "data=tiny"], return_hydra_config=True)
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(cfg)
        built = build(cfg.method, inputs=build(cfg.inputs))
    assert hasattr(built, "jet_scores") and hasattr(built, "extra_metrics")
    if "form=kl" in override:
        assert (built.form, built.lam, built.score_kind, built.samples) == ("kl", 2.0, "kl", ("outliers",))
    assert set(METHODS) <= set(available_methods())


def test_the_fixture_features_are_the_default_inputs():
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=["data=tiny"])
        default = build(cfg.inputs)
    assert (default.names, default.jet_order) == (FEATURES.names, FEATURES.jet_order)


def test_tnt_takes_the_generative_taggers_as_initial():
    tnt = build_method("tnt", FEATURES, {"initial": {"form": "kl"}}, hydra_overrides=["method@method.initial=oe_vae"])
    assert tnt.samples == ("outliers",) and tnt.initial.form == "kl"


# ---------------------------------------------------------------------------------------------- physics on the fixture


@pytest.fixture(scope="module")
def fixture_split(fixture_dir):
    """Training events (qcd + ~9% signal), test events (qcd + signal), held-out signal, outliers."""
    data = load_dataset(fixture_dir, ("qcd", "signal", "outliers"))
    # jet 1 / jet 2 as the pipeline orders them for the default inputs
    data = {name: order_jets(events, FEATURES.jet_order) for name, events in data.items()}
    qcd, sig = data["qcd"], data["signal"]
    train = Events.concat([qcd.take(slice(0, 5200)), sig.take(slice(0, 520))])
    test = Events.concat([qcd.take(slice(5200, None)), sig.take(slice(520, 780))])
    return train, test, sig.take(slice(780, None)), data["outliers"]


def _fit(method, split, seed=0, logged=None):
    """Fit on the training part; the metrics the method reports while fitting go into ``logged``."""
    train, _, _, outliers = split
    logged = {} if logged is None else logged
    method.fit({"train": train}, FitContext(seed=seed, samples={"outliers": outliers},
                                            log_metrics=lambda metrics, step=None: logged.update(metrics)))
    return method


def _evaluate(method, split, logged=None) -> dict[str, float]:
    _, test, signal, _ = split
    test_scores, signal_scores = method.score(test), method.score(signal)
    background = test_scores.event[test.labels == 0]
    metrics = method.extra_metrics(test, test_scores, signal, signal_scores)
    # what the pipeline adds for every per-jet method: jet-mass sculpting and the JES probe
    metrics |= jet_mass_metrics(test, test_scores, signal, signal_scores) | JesNuisance()(method.score, test, signal)
    return dict(logged or {}) | {"auc": auc(background, signal_scores.event)} | metrics


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: one torch thread is fastest and immune to other processes' load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# conf/method/adv_ae.yaml's schedule (the class defaults are paper 002's 1500 rounds)
ADV_SCHEDULE = {"rounds": 60, "decay_every": 20}


@pytest.fixture(scope="module")
def results(fixture_split, one_thread):
    """Every method once (seed 0) on the fixture. The thresholds of the tests below hold for seeds
    0-4 with at least the margin quoted in each (docs/reproductions.md has the numbers)."""
    methods = {
        "ae": AutoEncoder(FEATURES),
        "ae_scale": AutoEncoder(SCALE_FEATURES),
        "vae": VariationalAutoEncoder(FEATURES),
        "disco_vae": DisCoVAE(FEATURES),
        "disco_vae_eq8": DisCoVAE(FEATURES, decorrelate="loss"),
        "oe_vae": OutlierExposureVAE(FEATURES, form="mse"),
        "adv_ae": AdversarialAutoEncoder(FEATURES, schedule=ADV_SCHEDULE),
    }
    out = {}
    for name, method in methods.items():
        logged: dict[str, float] = {}
        out[name] = _evaluate(_fit(method, fixture_split, logged=logged), fixture_split, logged)
    return out


def _jsd(results, name):
    return np.array([results[name][f"jsd_mjet/jet{j}"] for j in (1, 2)])


def test_disco_vae_sculpts_the_jet_mass_less_than_vae(results):
    # seeds 0-4: disco_vae 0.026-0.055, vae 0.27-0.36 per jet (ratio <= 0.2)
    assert (_jsd(results, "disco_vae") < 0.4 * _jsd(results, "vae")).all(), results


def test_disco_vae_decorrelates_the_score_not_the_training_loss(results):
    """Eq. 8 taken literally (dCor with MSE + 0.1 KL) leaves the NLL score (MSE + KL) mass-correlated."""
    # seeds 0-4, mean over the jets: 0.038-0.045 against 0.10-0.21 (ratio <= 0.37)
    assert _jsd(results, "disco_vae").mean() < 0.6 * _jsd(results, "disco_vae_eq8").mean(), results


def test_scale_free_inputs_make_the_autoencoders_blind_to_the_jes(results):
    """A common JES factor leaves m/pT, the tau ratios and n_const unchanged: the AUC cannot move,
    and the adversary cannot read the JES class off the loss before any adversarial training."""
    for name in ("ae", "adv_ae"):
        assert results[name]["auc_nuisance/spread"] < 1e-3, results[name]  # seeds 0-4: 0.0000
    adv = results["adv_ae"]
    for j in (1, 2):  # seeds 0-4: accuracy - chance <= 0.011 (chance = the most frequent class)
        accuracy = adv[f"adv_ae/adversary_acc_pretrain_jet{j}"]
        assert accuracy < adv[f"adv_ae/adversary_chance_jet{j}"] + 0.05, adv


def test_inputs_carrying_the_energy_scale_make_the_ae_jes_sensitive(results):
    # m and pT in GeV: seeds 0-4, spread 0.24-0.27
    assert results["ae_scale"]["auc_nuisance/spread"] > 0.1, results["ae_scale"]


def test_oe_vae_separates_the_signal_better_than_vae(results):
    # seeds 0-4: AUC 0.83-0.85 against 0.67-0.68; JSD jet 1 0.03-0.07 against 0.31-0.36
    assert results["oe_vae"]["auc"] > results["vae"]["auc"] + 0.05, results
    assert results["oe_vae"]["jsd_mjet/jet1"] < results["vae"]["jsd_mjet/jet1"], results


def test_same_seed_same_scores(fixture_split, one_thread):
    _, test, _, _ = fixture_split
    scores = [
        _fit(cls(FEATURES, train={"epochs": 2}, **kw), fixture_split, seed=3).jet_scores(test)[0]
        for cls, kw in ((OutlierExposureVAE, {"form": "kl"}), (OutlierExposureVAE, {"form": "kl"}), (DisCoVAE, {}), (DisCoVAE, {}))
    ]
    np.testing.assert_array_equal(scores[0], scores[1])
    np.testing.assert_array_equal(scores[2], scores[3])
    schedule = {"rounds": 2, "pretrain_ae_epochs": 1, "pretrain_adv_epochs": 1}
    adv = [_fit(AdversarialAutoEncoder(FEATURES, target="mass_bins", schedule=schedule), fixture_split, 3) for _ in range(2)]
    np.testing.assert_array_equal(adv[0].jet_scores(test)[1], adv[1].jet_scores(test)[1])


def test_oe_vae_needs_outliers(fixture_split):
    with pytest.raises(KeyError, match="outliers"):
        OutlierExposureVAE(FEATURES).fit({"train": fixture_split[0]}, FitContext())


# ---------------------------------------------------------------------------------------------- train.py


FAST = ["data=tiny", "progress=false", "signal_frac=0.09"]
SHORT = {"adv_ae": ["method.schedule.rounds=2"]}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_train_py_logs_standard_and_method_metrics(method, tmp_path):
    extra = SHORT.get(method, ["method.train.epochs=3"])
    run_train(tmp_path, *FAST, f"method={method}", *extra)
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert {"auc", "val_loss", "jsd_mjj/eff_0.1", "jsd_mjet/jet1", "eff_s_at_eff_b_0.05/jet2"} <= set(m)
    assert {"auc_nuisance/up", "auc_nuisance/nominal", "auc_nuisance/down", "auc_nuisance/spread"} <= set(m)
    if method == "adv_ae":
        kinds = ("acc_pretrain", "acc_final", "acc_probe", "chance")
        assert {f"adv_ae/adversary_{k}_jet{j}" for k in kinds for j in (1, 2)} <= set(m)


@pytest.mark.slow
@pytest.mark.parametrize("initial", ["vae", "oe_vae"])
def test_train_py_tnt_with_generative_initial_tagger(initial, tmp_path):
    run_train(tmp_path, *FAST, "method=tnt", f"method@method.initial={initial}", "method.initial.train.epochs=2",
              "method.train.epochs=2")
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and "auc" in run.data.metrics
