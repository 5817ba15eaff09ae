"""What to generate (:class:`GenerationConfig`), built from ``conf/generate.yaml``, and back.

Used by ``lhcad-generate`` (on the config Hydra composed) and by the training pipeline when a run
generates its dataset on first use (``data.generate=true``: the same file's settings with the
run's sample, size, directory, seed and workers). :func:`generate_command` and
:func:`regenerate_command` write the ``lhcad-generate`` command line that makes a configuration
(for the hints in messages), with every key that differs from ``conf/generate.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lhcad.data.jets import JetConfig
from lhcad.data.pythia import check_outlier_masses, sample_settings
from lhcad.data.schema import BACKGROUND_LABEL, SAMPLES, SIGNAL_LABEL

SAMPLE_LABELS = {"qcd": BACKGROUND_LABEL, "sim": BACKGROUND_LABEL, "signal": SIGNAL_LABEL, "outliers": SIGNAL_LABEL}


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate and where.

    Attributes:
        sample: qcd, signal, sim or outliers.
        n_events: number of accepted (triggered, two-jet) events wanted.
        out: dataset directory.
        seed: dataset seed; shard seeds derive from it.
        workers: parallel processes (0 = all cores).
        shard_size: accepted events per shard file (part of the sample's identity).
        batch_size: events per ``Pythia.nextBatch`` call (does not change the events).
        jets: reconstruction settings.
        physics: masses, pT-hat cut, simulation and outlier settings (see conf/generate.yaml).
    """

    sample: str
    n_events: int
    out: str
    seed: int = 0
    workers: int = 0
    shard_size: int = 1000
    batch_size: int = 100
    jets: JetConfig = field(default_factory=JetConfig)
    physics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sample not in SAMPLES:
            raise ValueError(f"unknown sample '{self.sample}'; choose one of {', '.join(SAMPLES)}")
        if self.n_events <= 0:
            raise ValueError(f"n_events must be positive, got {self.n_events}")
        if self.shard_size <= 0 or self.batch_size <= 0:
            raise ValueError("shard_size and batch_size must be positive")
        if self.sample == "outliers":
            check_outlier_masses(self.physics["outlier_masses"], self.physics["outlier_exclude"], self.physics["m_wprime"])

    def identity(self) -> dict[str, Any]:
        """Everything that determines the events of a shard (stored in the manifest)."""
        ident: dict[str, Any] = {
            "sample": self.sample,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "label": SAMPLE_LABELS[self.sample],
            "jets": asdict(self.jets),
            "pythia": sample_settings(self.sample, self.physics, 0),
        }
        if self.sample == "outliers":
            ident["outlier_masses"] = [list(map(float, p)) for p in self.physics["outlier_masses"]]
        return ident

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
from lhcad.data.jets import JetConfig
from lhcad.paths import CONF_DIR

__all__ = [
    "command_value",
    "config_from_hydra",
    "default_generation_config",
    "generate_command",
    "regenerate_command",
]


def config_from_hydra(cfg: DictConfig) -> GenerationConfig:
    """Turn the composed ``conf/generate.yaml`` into a :class:`GenerationConfig`."""
    return GenerationConfig(
        sample=cfg.sample,
        n_events=int(cfg.n_events),
        out=str(cfg.out),
        seed=int(cfg.seed),
        workers=int(cfg.workers),
        shard_size=int(cfg.shard_size),
        batch_size=int(cfg.batch_size),
        jets=JetConfig(**OmegaConf.to_container(cfg.jets, resolve=True)),
        physics=OmegaConf.to_container(cfg.physics, resolve=True),
    )


def _base() -> DictConfig:
    """``conf/generate.yaml`` read as a file, without Hydra's own keys."""
    base = OmegaConf.load(Path(CONF_DIR) / "generate.yaml")
    base.pop("defaults", None)
    base.pop("hydra", None)
    return base


def default_generation_config(
    sample: str, n_events: int, out: str | Path, *, seed: int, workers: int, images: bool
) -> GenerationConfig:
    """``conf/generate.yaml`` (read as a file, without Hydra) with these settings replaced."""
    base = _base()
    base.sample = sample
    base.n_events = int(n_events)
    base.out = str(out)
    base.seed = int(seed)
    base.workers = int(workers)
    base.jets.images = bool(images)
    return config_from_hydra(base)


# ------------------------------------------------------------------------------------ command lines

_PLAIN = re.compile(r"(?:[A-Za-z_/]|\.\.?/)[\w/.+-]*", re.ASCII)
_KEYWORDS = {"true", "false", "null", "inf", "nan"}


def command_value(v: Any) -> str:
    """``v`` in Hydra's override syntax (strings quoted unless plain)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        if _PLAIN.fullmatch(v) and v.lower() not in _KEYWORDS:
            return v
        # in quoted values a backslash escapes only a quote or a backslash run before a quote / the end
        s = re.sub(r'\\+(?="|$)', lambda m: m.group(0) * 2, v).replace('"', '\\"').replace("${", "\\${")
        return f'"{s}"'
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{command_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(command_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as a command-line value")


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types (1100 and 1100.0 make different Pythia strings)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _overrides(prefix: str, value: Mapping[str, Any], default: Mapping[str, Any]) -> list[str]:
    """Hydra overrides turning ``default`` into ``value`` (nested mappings key by key)."""
    words = []
    for key, v in value.items():
        if key not in default:
            words.append(f"+{prefix}.{key}={command_value(v)}")
        elif isinstance(v, Mapping) and isinstance(default[key], Mapping):
            words += _overrides(f"{prefix}.{key}", v, default[key])
        elif not _same(v, default[key]):
            words.append(f"{prefix}.{key}={command_value(v)}")
    words += [f"~{prefix}.{key}" for key in default if key not in value]
    return words


def generate_command(cfg: GenerationConfig, *, run_settings: bool = True) -> str:
    """The ``lhcad-generate`` command line that makes (or resumes) ``cfg``.

    Always names sample, n_events, out, seed and shard_size; jet and physics settings (and, with
    ``run_settings``, workers and batch_size) only where they differ from ``conf/generate.yaml``.
    """
    base = OmegaConf.to_container(_base(), resolve=True)
    words = [f"sample={cfg.sample}", f"n_events={cfg.n_events}", f"out={command_value(str(cfg.out))}",
             f"seed={cfg.seed}", f"shard_size={cfg.shard_size}"]
    if run_settings:
        words += [f"{k}={getattr(cfg, k)}" for k in ("workers", "batch_size") if getattr(cfg, k) != base[k]]
    words += _overrides("jets", asdict(cfg.jets), base["jets"])
    words += _overrides("physics", cfg.physics, base["physics"])
    return " ".join(["lhcad-generate", *map(shlex.quote, words)])


def regenerate_command(root: Path | str, sample: str, entry: Mapping[str, Any]) -> str | None:
    """The ``lhcad-generate`` command that completes a generated sample from its manifest entry.

    None when the entry does not say (a converted sample, or a manifest from before the physics
    settings were recorded whose Pythia settings the current defaults do not reproduce).
    """
    config = entry.get("config") or {}
    if "pythia" not in config or "seed" not in config:
        return None
    base = OmegaConf.to_container(_base(), resolve=True)
    physics = entry.get("physics")
    if physics is None:  # older manifests: the defaults, with the recorded outlier masses
        physics = dict(base["physics"])
        recorded = config.get("outlier_masses")
        if recorded is not None and recorded != [list(map(float, p)) for p in physics["outlier_masses"]]:
            physics["outlier_masses"] = recorded
    shard_size = int(config["shard_size"])
    shards = entry.get("shards", {})
    extent = max((int(k) * shard_size + int(s["n_events"]) for k, s in shards.items()), default=0)
    try:
        cfg = GenerationConfig(
            sample=sample, n_events=max(int(entry.get("n_requested") or 0), extent), out=str(root),
            seed=int(config["seed"]), workers=int(base["workers"]), shard_size=shard_size,
            batch_size=int(base["batch_size"]), jets=JetConfig(**config["jets"]), physics=physics,
        )
        if cfg.identity_hash() != entry.get("config_hash"):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return generate_command(cfg, run_settings=False)
