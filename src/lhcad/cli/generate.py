"""``lhcad-generate``: write one sample of an lhcad dataset with Pythia 8 + FastJet (Hydra app).

Exit status: 0 done; 2 bad request (unknown sample, a configuration that conflicts with the
dataset on disk, an output path that is a file, a setting Pythia rejects); 1 a worker process
died; 130 / 143 stopped by Ctrl-C / SIGTERM. Every failure is one line, never a traceback;
an interrupted run logs the exact command that resumes it.
"""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from omegaconf import DictConfig

from lhcad.data.generate import GenerationError, WorkerDied, generate
from lhcad.data.generation_config import config_from_hydra
from lhcad.data.pythia import PythiaError
from lhcad.data.storage import DatasetError
from lhcad.paths import CONF_DIR

# config_from_hydra: re-exported from lhcad.data.generation_config
__all__ = ["app", "config_from_hydra", "main"]

log = logging.getLogger("lhcad.cli.generate")


@hydra.main(config_path=CONF_DIR, config_name="generate")
def app(cfg: DictConfig) -> None:
    """Generate (or resume) the sample ``cfg`` describes."""
    try:
        gen_cfg = config_from_hydra(cfg)
    except (TypeError, ValueError) as err:
        log.error("%s", err)
        sys.exit(2)
    try:
        generate(gen_cfg, progress=bool(cfg.progress))
    except WorkerDied:
        sys.exit(1)  # generate() logged what happened and the command that resumes
    except (GenerationError, DatasetError, PythiaError) as err:
        log.error("%s", err)
        sys.exit(2)
    except KeyboardInterrupt as err:  # generate() logged the command that resumes
        sys.exit(128 + getattr(err, "signum", signal.SIGINT))


def main() -> None:
    """Console entry point (a Ctrl-C before or after the job is quiet too)."""
    try:
        app()
    except KeyboardInterrupt:
        print("lhcad-generate: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
