"""The composed config of every method, frozen: a refactoring of conf/ (config groups, defaults
lists) must leave what each method receives unchanged. Regenerate the snapshot only for an
intended change of a default:

    .venv/bin/python tests/test_composed_configs.py --write

The snapshot predates TNT's initial tagger as a composed config: it holds ``initial: ae`` (a method
name) and ``initial_overrides: {}``, which :func:`effective` expands into the snapshot's own ``ae``
config before comparing, so the frozen values of ``ae`` are what ``method.initial`` must hold now.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lhcad.methods.registry import available_methods, method_config
from lhcad.paths import CONF_DIR

SNAPSHOT = Path(__file__).parent / "data" / "composed_method_configs.json"
METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))
from train_helpers import compose_config


def _compose(overrides: list[str]):
    return compose_config(overrides)


def _without_inputs(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` without ``inputs`` (the run's input representation), also in nested method configs."""
    return {
        k: _without_inputs(v) if isinstance(v, dict) and "_target_" in v else v for k, v in node.items() if k != "inputs"
    }


def composed(method: str, *overrides: str) -> dict:
    """``cfg.method`` of ``train.py method=<method> data=tiny``, resolved, without the inputs nodes."""
    cfg = _compose([f"method={method}", "data=tiny", *overrides])
    return _without_inputs(OmegaConf.to_container(cfg.method, resolve=True))


def effective(snapshot: dict[str, dict], method: str) -> dict:
    """The snapshot's config of ``method`` with a nested method given by name (``initial: ae`` plus
    ``initial_overrides``) expanded into the snapshot's config of that method."""
    node = dict(snapshot[method])
    if isinstance(node.get("initial"), str):
        nested = OmegaConf.merge(snapshot[node.pop("initial")], node.pop("initial_overrides", None) or {})
        node["initial"] = OmegaConf.to_container(nested)
    return node


@pytest.fixture(scope="module")
def snapshot() -> dict[str, dict]:
    return json.loads(SNAPSHOT.read_text())


@pytest.mark.parametrize("method", METHODS)
def test_composed_method_config_is_unchanged(method, snapshot):
    assert method in snapshot, f"new method {method!r}: add it to the snapshot (see module docstring)"
    assert composed(method) == effective(snapshot, method)


def test_only_tnt_names_its_initial_tagger_in_the_snapshot(snapshot):
    """The expansion in :func:`effective` touches TNT and TNT+Mjj only; every other method is
    compared with its frozen entry as it is."""
    expanded = {m for m in snapshot if effective(snapshot, m) != snapshot[m]}
    assert expanded == {"tnt", "tnt_mjj"}
    assert all(snapshot[m]["initial_overrides"] == {} for m in expanded)


def test_the_initial_tagger_is_picked_and_tweaked_on_the_command_line(snapshot):
    """``method@method.initial=<name>`` composes another method config at ``method.initial``;
    ``method.initial.<key>=...`` changes its settings; the rest of TNT stays as it was."""
    node = composed("tnt", "method@method.initial=vae", "method.initial.dense.latent=2")
    expected_vae = OmegaConf.to_container(OmegaConf.merge(snapshot["vae"], {"dense": {"latent": 2}}))
    assert node.pop("initial") == expected_vae
    assert node == {k: v for k, v in effective(snapshot, "tnt").items() if k != "initial"}
    cfg = _compose(["method=tnt_mjj", "method@method.initial=oe_vae", "data=tiny"])
    assert HydraConfig.get().runtime.choices["method@method.initial"] == "oe_vae"
    assert HydraConfig.get().runtime.choices["method"] == "tnt_mjj"
    assert cfg.method.initial._target_ == "lhcad.methods.vae.OutlierExposureVAE"
    assert cfg.method.mjj_window == [3300.0, 3700.0]


@pytest.mark.parametrize("method", ["ae", "tnt", "tnt_mjj", "salad"])
def test_the_registry_composes_like_train_py(method):
    """lhcad.methods.registry (scripts, tests, constructor defaults) uses Hydra's compose API on
    the same tree: its config of a method is the one ``train.py`` composes."""
    ours = _without_inputs(OmegaConf.to_container(method_config(method), resolve=True))
    assert ours == composed(method)
    tweaked = method_config("tnt", ["method@method.initial=vae", "method.initial.beta=0.5"])
    assert tweaked.initial._target_ == "lhcad.methods.vae.VariationalAutoEncoder" and tweaked.initial.beta == 0.5
    assert available_methods() == METHODS


if __name__ == "__main__" and "--write" in sys.argv:
    SNAPSHOT.write_text(json.dumps({m: composed(m) for m in METHODS}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
