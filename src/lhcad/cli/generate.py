"""``lhcad-generate``: write one sample of an lhcad dataset with Pythia 8 + FastJet (Hydra app)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from lhcad.cli._paths import CONF_DIR
from lhcad.data.generate import GenerationConfig, generate
from lhcad.data.jets import JetConfig


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


@hydra.main(config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    generate(config_from_hydra(cfg), progress=bool(cfg.progress))


if __name__ == "__main__":
    main()
