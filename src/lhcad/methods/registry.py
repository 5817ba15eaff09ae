"""Build a method from its config file by name (used for nested methods, e.g. TNT's initial tagger)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lhcad.config import CONF_DIR, build
from lhcad.inputs import InputRepresentation

__all__ = ["available_methods", "build_method", "method_config"]

METHOD_DIR = Path(CONF_DIR) / "method"


def available_methods() -> list[str]:
    """Names of the method configs in ``conf/method``."""
    return sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))


def method_config(name: str) -> DictConfig:
    """The config of method ``name`` (``conf/method/<name>.yaml`` with its defaults merged in)."""
    path = METHOD_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown method {name!r}; choose one of {available_methods()}")
    cfg = OmegaConf.load(path)
    parts = [_default_entry(entry) for entry in cfg.pop("defaults", []) if entry != "_self_"]
    merged = OmegaConf.merge(*parts, cfg) if parts else cfg
    return merged  # type: ignore[return-value]


def _default_entry(entry: Any) -> DictConfig:
    """One entry of a method file's defaults list, as Hydra composes it: another method's name
    (``cwola``) or an absolute config group placed at a key (``/training@train: tnt``)."""
    if isinstance(entry, str):
        return method_config(entry)
    ((key, option),) = dict(entry).items()
    group, _, package = str(key).lstrip("/").partition("@")
    node = OmegaConf.load(Path(CONF_DIR) / group / f"{option}.yaml")
    return OmegaConf.create({package or group: node})


def build_method(name: str, inputs: InputRepresentation, overrides: Mapping[str, Any] | None = None) -> Any:
    """Instantiate method ``name`` on ``inputs`` with config ``overrides`` merged in."""
    cfg = method_config(name)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(dict(overrides)))
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("inputs", None)  # the caller's input representation replaces the ${inputs} reference
    return build(OmegaConf.create(plain), inputs=inputs)
