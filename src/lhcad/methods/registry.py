"""Method configs by name, composed by Hydra from ``conf/`` (the one place where defaults live).

* :func:`method_config` / :func:`build_method`: ``conf/method/<name>.yaml`` as ``train.py
  method=<name>`` composes it (defaults lists, config groups, nested methods such as TNT's
  ``method.initial``), for scripts and tests.
* :data:`FROM_CONFIG` and :func:`configured`: how a method's constructor gets the settings it was
  not given. Every keyword of a method's ``__init__`` defaults to :data:`FROM_CONFIG`, "the value in
  ``conf/method/<name>.yaml``"; the constructor passes its keywords to :func:`configured`, which
  fills them in. Python thus declares each setting's type, and the YAML its default.

Hydra's compose API is used in a private initialisation on ``conf/``; a Hydra already initialised
(``train.py``, a test's ``initialize_config_dir``) is restored afterwards.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf

from lhcad.config import build
from lhcad.inputs import InputRepresentation
from lhcad.paths import CONF_DIR

__all__ = ["FROM_CONFIG", "available_methods", "build_method", "configured", "method_config", "training_config"]


class _FromConfig:
    """Type of :data:`FROM_CONFIG`."""

    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG: Any = _FromConfig()
"""Default of a method constructor's keywords: the value in the method's ``conf/method/<name>.yaml``
(typed ``Any`` so that a keyword keeps its own annotation, e.g. ``lam: float = FROM_CONFIG``)."""

#: values that can stand in a config node (what the YAML holds); others (objects) are kept aside
_PLAIN = (str, int, float, bool, type(None), Mapping, list, tuple)


@contextmanager
def _conf() -> Iterator[None]:
    """Hydra initialised on ``conf/`` for the compose API; a Hydra initialised before is restored."""
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(CONF_DIR):
            yield
    finally:
        restore_gh_from_backup(backup)


def available_methods() -> list[str]:
    """Names of the options of the ``method`` config group (``conf/method/*.yaml``)."""
    with _conf():
        return sorted(GlobalHydra.instance().config_loader().get_group_options("method"))


@functools.lru_cache(maxsize=None)
def _composed(name: str, overrides: tuple[str, ...] = ()) -> DictConfig:
    """The whole config of ``train.py method=<name> <overrides>`` (cached; callers copy it)."""
    known = available_methods()
    if name not in known:
        raise ValueError(f"unknown method {name!r}; choose one of {known}")
    with _conf():
        return compose("config", overrides=[f"method={name}", *overrides])


def _editable(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A private copy of the composed config, open to new keys and to objects."""
    cfg = copy.deepcopy(_composed(name, tuple(overrides)))
    OmegaConf.set_struct(cfg, False)
    cfg._set_flag("allow_objects", True)
    return cfg


def method_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``cfg.method`` of ``train.py method=<name> <overrides>``, unresolved and still attached to
    the whole config (so ``${search.signal_region}`` and the like resolve).

    ``overrides`` are command-line overrides, e.g. ``["method@method.initial=vae",
    "method.initial.dense.latent=2"]``.
    """
    return _editable(name, overrides).method


def build_method(
    name: str,
    inputs: InputRepresentation,
    overrides: Mapping[str, Any] | None = None,
    hydra_overrides: Sequence[str] = (),
) -> Any:
    """Method ``name`` built on ``inputs``, as the pipeline builds it, with ``overrides`` (a mapping
    of settings, merged into the method's config like ``method.<key>=...`` on the command line) and
    ``hydra_overrides`` (command-line overrides, e.g. ``["method@method.initial=vae"]`` to pick TNT's
    initial tagger).
    """
    cfg = _editable(name, hydra_overrides)
    cfg.method = OmegaConf.merge(cfg.method, dict(overrides or {}))
    return build(cfg.method, inputs=inputs)


def configured(method: str, **given: Any) -> dict[str, Any]:
    """The settings ``given`` to method ``method``'s constructor, completed from its config.

    A value :data:`FROM_CONFIG` becomes the config's; a mapping is merged key by key over the
    config's (``train={"epochs": 3}`` changes only the epochs); any other value is kept as given.
    Interpolations in the config (``${search.signal_region}``, the reweighter's
    ``${..classifier}``) resolve with the given values in place. Values come back as plain Python
    (dicts, lists), in the order given.
    """
    cfg = _editable(method)
    node = cfg.method
    for key, value in given.items():
        if value is FROM_CONFIG:
            if key not in node:
                raise TypeError(f"{method}: conf/method/{method}.yaml has no {key!r} to default to; pass {key}=...")
        elif isinstance(value, Mapping) and OmegaConf.is_dict(node.get(key)):
            node[key] = OmegaConf.merge(node[key], value)
        elif isinstance(value, _PLAIN):
            node[key] = value
    out = {}
    for key, value in given.items():
        if value is FROM_CONFIG or isinstance(value, Mapping):
            item = node[key]
            value = OmegaConf.to_container(item, resolve=True) if OmegaConf.is_config(item) else item
        out[key] = value
    return out


def training_config(option: str = "tnt", **changes: Any) -> Any:
    """A :class:`~lhcad.models.training.TrainConfig` of ``conf/training/<option>.yaml`` with
    ``changes`` (for scripts and tests that train a network outside a method)."""
    from lhcad.methods._nets import train_config

    with _conf():
        cfg = compose(f"training/{option}").training  # a group's option lands at the group's package
    return train_config({**OmegaConf.to_container(cfg, resolve=True), **changes})
