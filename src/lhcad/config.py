"""Config helpers for the training app: resolvers, early validation, dataset location.

The config tree's location (``REPO_ROOT``, ``CONF_DIR``) is defined in :mod:`lhcad.paths` (bottom
layer, for modules below this one) and re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lhcad.data.dataset import check_signal_frac
from lhcad.paths import CONF_DIR, REPO_ROOT

__all__ = [
    "CLOSURE_MODES",
    "CONF_DIR",
    "REPO_ROOT",
    "ConfigError",
    "check_train_settings",
    "closure_mode",
    "register_resolvers",
    "split_spec",
    "validate",
]


CLOSURE_MODES = ("auto", "rerun", "off")
"""Values of the top-level ``closure`` key (see conf/config.yaml)."""


class ConfigError(ValueError):
    """A run's configuration cannot work; the message says what to change."""


def _repo_root() -> str:
    return str(REPO_ROOT)


def _unique_stamp(pattern: str = "%H-%M-%S") -> str:
    """The current time as ``pattern``, then ``-<microseconds>-<pid>``: unique per process and moment."""
    now = datetime.now()
    return f"{now.strftime(pattern)}-{now.microsecond:06d}-{os.getpid()}"


def register_resolvers() -> None:
    """Register lhcad's OmegaConf resolvers: ``${lhcad_repo:}`` (the repository root) and
    ``${lhcad_stamp:%H-%M-%S}`` (``13-05-09-123456-4242``: time, microseconds, pid) for run and
    sweep folders that runs started in the same second never share. The stamp is cached in the
    config like Hydra's ``${now:}``, so the jobs of a sweep get their sweeper's value (Hydra
    copies the cache into every job's config, joblib workers included)."""
    OmegaConf.register_resolver("lhcad_repo", _repo_root, replace=True)
    OmegaConf.register_resolver("lhcad_stamp", _unique_stamp, use_cache=True, replace=True)


def validate(cfg: DictConfig) -> None:
    """Checks that need no data: fail in one sentence before anything is started."""
    try:
        check_signal_frac(cfg.signal_frac)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    n = cfg.get("n_events")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"n_events must be a positive integer or null (all the background), got {n!r}")
    threads = cfg.get("cpu_threads", "auto")
    if threads not in (None, "auto") and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"cpu_threads must be 'auto', a positive integer or null (torch's default), got {threads!r}")
    reserve = cfg.get("background_reserve", 0.0)
    if reserve is not None and not (isinstance(reserve, (int, float)) and not isinstance(reserve, bool) and 0 <= reserve < 1):
        raise ConfigError(f"background_reserve must be a fraction in [0, 1), got {reserve!r}")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    device = cfg.get("device", "auto")
    if not isinstance(device, str) or not device:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    minimum = cfg.get("min_events_per_part", 1)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ConfigError(f"min_events_per_part must be a positive integer, got {minimum!r}")
    closure_mode(cfg)
    check_train_settings(cfg.get("method") or {}, "method")
    holdout = dict(cfg.holdout)
    if "test" not in holdout or not 0 < float(holdout["test"]) < 1:
        raise ConfigError(f"holdout.test must be a fraction in (0, 1), got {holdout.get('test')!r}")
    if sum(float(v) for v in holdout.values()) >= 1:
        raise ConfigError(f"holdout fractions {holdout} leave no events for training")


_POSITIVE_INTS = ("epochs", "batch_size")
_FRACTIONS = ("val_fraction",)


def check_train_settings(node: Mapping[str, Any], path: str) -> None:
    """Every ``train`` block in a method config (nested ones too, e.g. TNT's initial tagger):
    ``epochs`` and ``batch_size`` positive integers, ``lr`` positive, ``val_fraction`` in [0, 1)."""
    if not isinstance(node, Mapping):
        return
    for key, value in node.items():
        if key == "train" and isinstance(value, Mapping):
            _check_train_block(value, f"{path}.train")
        elif isinstance(value, Mapping):
            check_train_settings(value, f"{path}.{key}")


def _check_train_block(train: Mapping[str, Any], path: str) -> None:
    for key in _POSITIVE_INTS:
        value = train.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{path}.{key} must be a positive integer, got {value!r}")
    lr = train.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ConfigError(f"{path}.lr must be a positive number, got {lr!r}")
    for key in _FRACTIONS:
        value = train.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise ConfigError(f"{path}.{key} must be a fraction in [0, 1), got {value!r}")


def closure_mode(cfg: Mapping[str, Any]) -> str:
    """The top-level ``closure`` setting: ``auto`` (default), ``rerun`` or ``off`` (YAML's bare
    ``off`` reads as false and counts as ``off``)."""
    mode = cfg.get("closure", "auto")
    if mode is False:
        return "off"
    if mode not in CLOSURE_MODES:
        raise ConfigError(f"closure must be one of {', '.join(CLOSURE_MODES)}, got {mode!r}")
    return str(mode)


def split_spec(holdout: Mapping[str, float], parts: Mapping[str, float]) -> dict[str, float]:
    """Fractions of the drawn sample per part: held-out parts as given, the rest shared by the
    method's parts in proportion to their relative sizes."""
    clash = sorted(set(holdout) & set(parts))
    if clash:
        raise ConfigError(f"method parts {clash} clash with the held-out parts {sorted(holdout)}")
    weights = {k: float(v) for k, v in parts.items()}
    if not weights or any(w <= 0 for w in weights.values()):
        raise ConfigError(f"method parts need positive relative sizes, got {dict(parts)}")
    share = 1.0 - sum(float(v) for v in holdout.values())
    total = sum(weights.values())
    spec = {k: share * w / total for k, w in weights.items()}
    spec |= {k: float(v) for k, v in holdout.items()}
    return spec


def dataset_root(data: Mapping[str, Any], needs_images: bool) -> Path:
    """Directory of the run's dataset; generated image datasets live next to feature-only ones."""
    root = Path(str(data["root"]))
    if needs_images and data.get("generate", False):
        root = root.with_name(root.name + "-images")
    return root


TRUSTED_TARGETS = ("lhcad.*",)
"""``_target_`` prefixes a config may instantiate (Hydra's execution whitelist)."""


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` restricted to lhcad's own classes (``TRUSTED_TARGETS``)."""
    from hydra.utils import instantiate

    return instantiate(node, _execution_whitelist_=list(TRUSTED_TARGETS), _convert_="all", **kwargs)
