"""``lhcad-generate``: write one sample of an lhcad dataset with Pythia 8 + FastJet (Hydra app)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lhcad.data.generate import generate
from lhcad.data.generation_config import config_from_hydra
from lhcad.paths import CONF_DIR

__all__ = ["config_from_hydra", "main"]  # config_from_hydra: re-exported from lhcad.data.generation_config


@hydra.main(config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    generate(config_from_hydra(cfg), progress=bool(cfg.progress))


if __name__ == "__main__":
    main()
