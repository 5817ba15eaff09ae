"""Building a :class:`~lhcad.data.generate.GenerationConfig` from ``conf/generate.yaml``.

Used by ``lhcad-generate`` (on the config Hydra composed) and by the training pipeline when a run
generates its dataset on first use (``data.generate=true``: the same file's settings with the
run's sample, size, directory, seed and workers).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lhcad.data.generate import GenerationConfig
from lhcad.data.jets import JetConfig
from lhcad.paths import CONF_DIR

__all__ = ["config_from_hydra", "default_generation_config"]


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


def default_generation_config(
    sample: str, n_events: int, out: str | Path, *, seed: int, workers: int, images: bool
) -> GenerationConfig:
    """``conf/generate.yaml`` (read as a file, without Hydra) with these settings replaced."""
    base = OmegaConf.load(Path(CONF_DIR) / "generate.yaml")
    base.pop("defaults", None)
    base.pop("hydra", None)
    base.sample = sample
    base.n_events = int(n_events)
    base.out = str(out)
    base.seed = int(seed)
    base.workers = int(workers)
    base.jets.images = bool(images)
    return config_from_hydra(base)
