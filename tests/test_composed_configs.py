"""The composed config of every method, frozen: a refactoring of conf/ (config groups, defaults
lists) must leave what each method receives unchanged. Regenerate the snapshot only for an
intended change of a default:

    .venv/bin/python tests/test_composed_configs.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lhcad.config import register_resolvers
from lhcad.paths import CONF_DIR

SNAPSHOT = Path(__file__).parent / "data" / "composed_method_configs.json"
METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))


def composed(method: str) -> dict:
    """``cfg.method`` of ``train.py method=<method> data=tiny``, resolved, without the inputs node."""
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=[f"method={method}", "data=tiny"], return_hydra_config=True)
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(cfg)
        node = OmegaConf.to_container(cfg.method, resolve=True)
    node.pop("inputs", None)
    return node


@pytest.mark.parametrize("method", METHODS)
def test_composed_method_config_is_unchanged(method):
    expected = json.loads(SNAPSHOT.read_text())
    assert method in expected, f"new method {method!r}: add it to the snapshot (see module docstring)"
    assert composed(method) == expected[method]


@pytest.mark.parametrize("method", METHODS)
def test_registry_composes_like_hydra(method):
    """lhcad.methods.registry (TNT's initial tagger is built through it) reads a method file's
    defaults list (other methods, config groups such as /training@train) exactly as Hydra does."""
    from lhcad.methods.registry import method_config

    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=[f"method={method}", "data=tiny"])
    hydra_node = OmegaConf.to_container(cfg.method, resolve=False)
    ours = OmegaConf.to_container(method_config(method), resolve=False)
    assert ours == hydra_node


if __name__ == "__main__" and "--write" in sys.argv:
    SNAPSHOT.write_text(json.dumps({m: composed(m) for m in METHODS}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
