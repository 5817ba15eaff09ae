"""Unit checks of the method building blocks: score combination, TNT tagging, inputs, splits, registry."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from lhcad.config import ConfigError, split_spec
from lhcad.data import load_dataset
from lhcad.data.events import Events
from lhcad.inputs import JetFeatures, JetImages, Scaler
from lhcad.methods.base import EmpiricalCDF, FitContext, Scores, combine_jet_scores
from lhcad.methods.registry import build_method, method_config
from lhcad.methods.tnt import tag_events


@pytest.fixture(scope="module")
def fixture_data(fixture_dir):
    return load_dataset(fixture_dir, ("qcd", "signal"))


def test_event_score_cut_is_both_jets_above_percentile():
    rng = np.random.default_rng(1)
    s1, s2 = rng.normal(size=20000), rng.exponential(size=20000)
    scores = combine_jet_scores(s1, s2, EmpiricalCDF(s1), EmpiricalCDF(s2))
    for x in (0.5, 0.8, 0.95):
        both = (s1 > np.quantile(s1, x)) & (s2 > np.quantile(s2, x))
        cut = scores.event > x
        assert np.array_equal(cut, both)
    # independent jets: keeping both above X keeps (1 - X)^2 of the events
    assert np.mean(scores.event > 0.9) == pytest.approx(0.01, abs=0.002)


def test_scores_reject_nan_with_a_reason():
    with pytest.raises(FloatingPointError, match="diverged"):
        Scores(event=np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="both jet1 and jet2"):
        Scores(event=np.zeros(2), jet1=np.zeros(2))


def test_tag_events_sizes_and_mjj_window_on_signal_rich_only():
    rng = np.random.default_rng(2)
    other = rng.normal(size=1000)
    mjj = rng.uniform(2500, 4500, size=1000)
    sig, bkg = tag_events(other, 0.2, 0.4)
    assert sig.sum() == 200 and bkg.sum() == 400 and not np.any(sig & bkg)
    assert other[sig].min() > other[bkg].max()
    sig_w, bkg_w = tag_events(other, 0.2, 0.4, mjj, (3300, 3700))
    assert np.array_equal(bkg_w, bkg)  # never restricted
    assert np.all((mjj[sig_w] >= 3300) & (mjj[sig_w] < 3700))
    assert 0 < sig_w.sum() < sig.sum()
    with pytest.raises(ValueError, match="add up to at most 1"):
        tag_events(other, 0.7, 0.4)


def test_split_spec_shares_the_training_fraction():
    spec = split_spec({"test": 0.3, "val": 0.1}, {"initial": 1, "iter1": 1, "iter2": 2})
    assert spec["test"] == 0.3 and spec["val"] == 0.1
    assert spec["iter2"] == pytest.approx(0.3) and spec["initial"] == pytest.approx(0.15)
    assert sum(spec.values()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="clash"):
        split_spec({"test": 0.3}, {"test": 1})


def test_features_of_real_events_and_nan_is_a_clear_error(fixture_data):
    qcd = fixture_data["qcd"]
    inputs = JetFeatures(["m", "tau21", "nconst"])
    x = inputs.jet(qcd, 1)
    assert x.shape == (len(qcd), 3)
    assert np.array_equal(x[:, 0], qcd["j1_m"])
    assert inputs.event(qcd).shape == (len(qcd), 6)
    assert set(inputs.columns) == {"j1_m", "j1_tau1", "j1_tau2", "j1_nconst", "j2_m", "j2_tau1", "j2_tau2", "j2_nconst"}
    broken = qcd.with_columns(j2_tau4=np.where(np.arange(len(qcd)) < 5, np.nan, qcd["j2_tau4"]))
    with pytest.raises(ValueError, match=r"5 of 8000 events have NaN .* \['tau43'\]"):
        JetFeatures(["m", "tau43"]).jet(broken, 2)
    with pytest.raises(KeyError, match="jets.images=true"):
        JetImages().jet(qcd, 1)


def test_scaler_standardises_on_training_data(fixture_data):
    x = JetFeatures(["m", "nconst"]).jet(fixture_data["qcd"], 1)
    z = Scaler.fit(x)(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-3)


def test_registry_builds_methods_and_names_the_choices():
    ae = build_method("ae", JetFeatures(["m"]), {"dense": {"hidden": [8], "latent": 1}})
    assert ae.dense == {"hidden": [8], "latent": 1}
    tnt_mjj = OmegaConf.to_container(method_config("tnt_mjj"))  # tnt's defaults merged in
    assert tnt_mjj["mjj_window"] == "${search.signal_region}" and tnt_mjj["signal_rich_first"] == 0.2
    with pytest.raises(ValueError, match=r"unknown method 'nope'; choose one of \[.*'tnt'"):
        build_method("nope", JetFeatures(["m"]))


def test_supervised_without_signal_says_so(fixture_data):
    method = build_method("supervised", JetFeatures(["m"]))
    background_only = Events(fixture_data["qcd"])
    with pytest.raises(ValueError, match="needs signal events"):
        method.fit({"train": background_only}, FitContext())


# ---------------------------------------------------------------------------------------------- cross-fitted TNT


@pytest.mark.parametrize("n, k", [(10, 2), (1003, 5), (7, 7)])
def test_crossfit_folds_are_disjoint_cover_everything_and_are_seeded(n, k):
    from lhcad.methods.tnt import crossfit_folds

    folds = crossfit_folds(n, k, seed=4)
    sizes = np.bincount(folds, minlength=k)
    assert len(folds) == n and sizes.sum() == n and sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(folds, crossfit_folds(n, k, seed=4))
    assert n < 10 or not np.array_equal(folds, crossfit_folds(n, k, seed=5))


def test_crossfitted_tnt_never_trains_on_the_fold_it_scores(fixture_data, monkeypatch):
    """Each fold classifier's training rows exclude its held-out fold, and the k calibrated
    classifiers form each jet's stage-1 tagger."""
    import lhcad.methods.tnt as tnt_module

    events = Events.concat([fixture_data["qcd"], fixture_data["signal"].take(slice(0, 400))])
    parts = {"initial": events.take(slice(0, 2000)), "train": events.take(slice(2000, None))}
    features = JetFeatures(["m_over_pt", "tau21", "tau32", "nconst"], jet_order="pt")
    seen: list[np.ndarray] = []
    real = tnt_module.train_classifier

    def recording(x, y, *args, **kwargs):
        seen.append(np.asarray(x))
        return real(x, y, *args, **kwargs)

    monkeypatch.setattr(tnt_module, "train_classifier", recording)
    method = build_method("tnt", features, {"folds": 3, "iterations": 1, "train": {"epochs": 2},
                                            "initial": {"train": {"epochs": 2}}})
    method.fit(parts, FitContext(seed=2))
    folds = tnt_module.crossfit_folds(len(parts["train"]), 3, seed=2)
    assert len(seen) == 6  # 2 jets x 3 folds, jet 1 first
    for i, x in enumerate(seen):
        j, f = 1 + i // 3, i % 3
        rows = {r.tobytes() for r in features.jet(parts["train"], j)}
        held = {r.tobytes() for r in features.jet(parts["train"].take(folds == f), j)}
        trained = {r.tobytes() for r in x}
        assert trained <= rows and not trained & held
    stage = method.stages[-1]
    assert all(len(t.members) == 3 for t in stage.taggers.values())
    scores = method.score(parts["initial"])
    assert np.all((scores.jet1 >= 0) & (scores.jet1 <= 1))  # a mean of CDFs


def test_tnt_parts_follow_folds_and_iterations():
    features = JetFeatures(["tau21"])
    assert build_method("tnt", features).parts == {"initial": 1.0, "train": 3.0}
    paper = build_method("tnt", features, {"folds": None, "iterations": 3})
    assert paper.parts == {"initial": 1.0, "iter1": 1.0, "iter2": 1.0, "iter3": 1.0}
    with pytest.raises(ValueError, match="folds must be at least 2"):
        build_method("tnt", features, {"folds": 1})
    with pytest.raises(ValueError, match="parts must be"):
        build_method("tnt", features, {"parts": {"initial": 1.0, "iter1": 1.0}})


# ---------------------------------------------------------------------------------------------- defaults in one place


def _settings(obj, depth: int = 0):
    """Comparable view of a built method's settings (attributes, nested objects by their attributes)."""
    import dataclasses
    from collections.abc import Mapping

    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if isinstance(obj, Mapping):
        return {k: _settings(v, depth) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_settings(v, depth) for v in obj]
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "__dict__") and depth < 3:
        return {"class": type(obj).__name__} | {k: _settings(v, depth + 1) for k, v in vars(obj).items()}
    return repr(obj)


def _method_classes():
    from hydra.utils import get_class

    from lhcad.methods.registry import available_methods

    return {name: get_class(str(method_config(name)._target_)) for name in available_methods()}


def test_method_constructors_hold_no_defaults_of_their_own():
    """Every keyword of a method's constructor (and of its bases in lhcad.methods) defaults to
    FROM_CONFIG, the value in its conf/method/<name>.yaml: Python carries the types only."""
    import inspect

    from lhcad.methods.registry import FROM_CONFIG

    for name, cls in _method_classes().items():
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or not klass.__module__.startswith("lhcad.methods"):
                continue
            for p in inspect.signature(init).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    assert p.default is FROM_CONFIG, f"{klass.__name__}({p.name}={p.default!r}) for method {name}"


@pytest.mark.parametrize("name", ["ae", "vae", "disco_vae", "oe_vae", "adv_ae", "supervised", "tnt", "cwola",
                                  "sa_cwola", "salad", "cwola_ideal"])
def test_a_method_built_in_python_has_its_config_settings(name):
    """``Class(inputs)`` without settings equals the method built from conf/method/<name>.yaml."""
    features = JetFeatures(["m_over_pt", "tau21"])
    cls = _method_classes()[name]
    assert cls.name == name  # the constructor's defaults come from the config of this name
    assert _settings(cls(features)) == _settings(build_method(name, features))


def test_settings_given_in_python_are_merged_over_the_config():
    from lhcad.methods.ae import AutoEncoder
    from lhcad.methods.registry import training_config
    from lhcad.methods.salad import SALAD
    from lhcad.methods.sideband import CWoLa

    features = JetFeatures(["m"])
    assert AutoEncoder(features, train={"epochs": 3}).train == training_config("tnt", epochs=3)
    assert CWoLa(features, train={"epochs": 3}).train == training_config("paper003", epochs=3)
    small = {"hidden": [8], "dropout": 0.0}
    salad = SALAD(features, classifier=small, reweighter={"max_weight": 1.5})
    assert salad.reweighter.classifier == small  # conf/reweighter: classifier ${..classifier}
    assert salad.reweighter.max_log_weight == pytest.approx(np.log(1.5))
    assert salad.reweighter.long_windows.sideband_low[0] == 3100.0 - 300.0  # long_sideband_extension
    assert salad.reweighter.train == salad.train  # reweighter train null: the method's


def test_tnt_initial_tagger_is_a_composed_config_built_on_the_same_inputs():
    from hydra import compose, initialize_config_dir

    from lhcad.config import build, register_resolvers
    from lhcad.methods.vae import OutlierExposureVAE, VariationalAutoEncoder
    from lhcad.paths import CONF_DIR

    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=["method=tnt", "method@method.initial=vae", "method.initial.dense.latent=2"])
    inputs = build(cfg.inputs)
    tnt = build(cfg.method, inputs=inputs)  # as the pipeline builds it
    assert type(tnt.initial) is VariationalAutoEncoder and tnt.initial.dense["latent"] == 2
    assert tnt.initial.inputs is inputs and tnt.inputs is inputs
    # from Python: choices as Hydra overrides, settings merged into method.initial
    features = JetFeatures(["tau21"])
    tnt = build_method("tnt", features, {"initial": {"form": "kl"}}, hydra_overrides=["method@method.initial=oe_vae"])
    assert type(tnt.initial) is OutlierExposureVAE and tnt.initial.form == "kl" and tnt.initial.inputs is features
    assert tnt.samples == ("outliers",)
    from lhcad.methods.tnt import TagNTrain

    assert TagNTrain(features, initial={"dense": {"latent": 2}}).initial.dense == {"hidden": [32, 16], "latent": 2}
    with pytest.raises(ValueError, match=r"method@method\.initial=vae"):
        TagNTrain(features, initial="vae")  # what `method.initial=vae` on the command line passes
