"""The method contract (``lhcad.methods.base.Method``), checked in process for every
``conf/method/*.yaml``, and the pipeline that relies on it alone (no ``hasattr``, no method names).

A new method needs no edit here: its yaml is picked up by the parametrisation.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

import lhcad.config
import lhcad.pipeline
from lhcad.config import build
from lhcad.data import load_dataset
from lhcad.data.events import Events
from lhcad.data.schema import SAMPLES
from lhcad.methods.base import FitContext, Method
from lhcad.paths import CONF_DIR
from lhcad.scores import Scores

METHOD_CONFIGS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))
RESERVED_PARTS = {"test", "val"}  # the pipeline's own holdout parts
from train_helpers import compose_config


def _compose(overrides: list[str]):
    return compose_config(overrides)


def _build(method: str, inputs: str = "features") -> Method:
    cfg = _compose([f"method={method}", f"inputs={inputs}", "data=tiny"])
    return build(cfg.method, inputs=build(cfg.inputs))


@pytest.fixture(scope="module")
def few_events(fixture_dir) -> Events:
    qcd = load_dataset(fixture_dir, ("qcd",))["qcd"]
    return qcd.take(np.arange(50))


def test_every_method_config_is_checked():
    assert len(METHOD_CONFIGS) >= 12 and {"ae", "tnt", "cwola_ideal", "supervised"} <= set(METHOD_CONFIGS)


@pytest.mark.parametrize("inputs", ["features", "images"])
@pytest.mark.parametrize("method", METHOD_CONFIGS)
def test_method_config_builds_a_method_that_meets_the_contract(method, inputs, few_events):
    built = _build(method, inputs)
    assert isinstance(built, Method)
    assert not inspect.isabstract(type(built))

    # name: a class attribute (the pipeline reads it before building, outside Hydra)
    assert isinstance(type(built).name, str) and type(built).name and built.name == type(built).name

    # parts: a non-empty mapping of positive sizes, never the pipeline's own holdout parts
    assert isinstance(built.parts, Mapping) and built.parts
    assert all(isinstance(k, str) for k in built.parts) and not set(built.parts) & RESERVED_PARTS
    assert all(float(v) > 0 for v in built.parts.values()), built.parts

    # samples: extra dataset samples, known and besides qcd/signal; spare background: a flag
    assert isinstance(built.samples, tuple) and len(set(built.samples)) == len(built.samples)
    assert set(built.samples) <= set(SAMPLES) - {"qcd", "signal"}, built.samples
    assert isinstance(built.needs_spare_background, bool)

    # the interface, with the base class's signatures
    for member in ("fit", "score", "state", "score_stages", "extra_metrics"):
        assert list(inspect.signature(getattr(built, member)).parameters) == list(
            inspect.signature(getattr(Method, member)).parameters
        )[1:], member
    assert isinstance(inspect.getattr_static(type(built), "val_loss"), property)

    # before fit: score raises RuntimeError; the optional members give their type or raise the same
    with pytest.raises(RuntimeError, match="fit"):
        built.score(few_events)
    for member, kind in (("score_stages", list), ("state", dict)):
        call = (lambda: built.score_stages(few_events)) if member == "score_stages" else built.state
        try:
            value = call()
        except RuntimeError:
            continue
        assert isinstance(value, kind), member
    try:
        assert isinstance(built.val_loss, float)
    except RuntimeError:
        pass


def test_cwola_ideal_asks_for_the_spare_background_and_the_others_do_not():
    asking = {m for m in METHOD_CONFIGS if _build(m).needs_spare_background}
    assert asking == {"cwola_ideal"}


# ---------------------------------------------------------------------------------------------- defaults


class HeavierJetMass(Method):
    """The least a method can be: ``name``, ``parts``, ``fit`` and ``score`` (score: m of jet 1)."""

    name = "heavier_jet_mass"

    def __init__(self, inputs=None, parts: Mapping[str, float] | None = None) -> None:
        self.parts = dict(parts or {"train": 1.0})
        self.fitted = False

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        self.fitted = True

    def score(self, events: Events) -> Scores:
        if not self.fitted:
            raise RuntimeError("fit() heavier_jet_mass before scoring")
        return Scores(event=np.asarray(events["j1_m"], np.float64))


def test_method_is_abstract_and_its_optional_members_have_defaults(few_events):
    with pytest.raises(TypeError):
        Method()  # type: ignore[abstract]
    method = HeavierJetMass()
    assert method.samples == () and method.needs_spare_background is False
    assert math.isnan(method.val_loss) and method.state() == {} and method.score_stages(few_events) == []
    scores = Scores(event=np.zeros(len(few_events)))
    assert method.extra_metrics(few_events, scores, few_events, scores) == {}


def test_a_new_method_runs_through_the_pipeline_unchanged(tmp_path, monkeypatch):
    """Adding a method needs no pipeline edit: a minimal Method (defined in this test module, as
    ``_target_``) gets the standard metrics, val_loss NaN and no stage metrics."""
    monkeypatch.setenv("LHCAD_HOME", str(tmp_path))
    target = f"{__name__}.{HeavierJetMass.__name__}"  # trusted here; a real method lives under lhcad.methods
    monkeypatch.setattr(lhcad.config, "TRUSTED_TARGETS", (*lhcad.config.TRUSTED_TARGETS, target))
    overrides = ["method=ae", "data=tiny", "progress=false", "selection.plots=false", "search.statistics=[]"]
    cfg = _compose([*overrides, "signal_frac=0.05"])
    with open_dict(cfg):
        cfg.method = {"_target_": target, "inputs": "${inputs}"}
        del cfg["hydra"]
    out = lhcad.pipeline.train_and_evaluate(cfg)
    assert isinstance(out.method, HeavierJetMass) and out.method.fitted
    assert out.stage_metrics == [] and math.isnan(out.metrics["val_loss"])
    assert 0.5 < out.metrics["auc"] <= 1  # the signal's X (500 GeV) is heavier than QCD jets
    assert out.metrics["n_events/train"] > 0


# ---------------------------------------------------------------------------------------------- pipeline


def test_pipeline_holds_no_method_name_and_no_hasattr():
    source = inspect.getsource(lhcad.pipeline)
    assert "hasattr(" not in source
    assert not re.search(r"getattr\(\s*(out\.)?method\b", source)
    names = set(METHOD_CONFIGS) | {"tnt", "cwola", "tag n' train", "qcd_spare"}
    names |= {name.lower() for name in ("TagNTrain", "CWoLa", "SALAD", "Supervised", "AutoEncoder")}
    lower = source.lower()
    found = sorted(n for n in names if re.search(rf"(?<![a-z0-9]){re.escape(n)}(?![a-z0-9])", lower))
    assert not found, f"pipeline.py names methods: {found}"


WINDOW_DEPENDENT = {"cwola", "sa_cwola", "salad", "cwola_ideal", "tnt_mjj"}


@pytest.mark.parametrize("method", METHOD_CONFIGS)
def test_window_dependence_is_declared(method):
    """Methods trained on the m_jj signal region and sidebands say so: a window scan retrains them
    per window and scores the others once."""
    assert _build(method).window_dependent is (method in WINDOW_DEPENDENT)
