"""``train.py`` / ``lhcad-train``: train and evaluate one method, logged to MLflow (Hydra app on conf/).

    python train.py method=tnt signal_frac=0.01
    python train.py -m method=ae,tnt signal_frac=0.01,0.09          # nested under one parent run
    python train.py -m hparams_search=tnt_optuna                    # Optuna sweep
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from lhcad.config import TRUSTED_TARGETS, ConfigError, register_resolvers
from lhcad.data.storage import DatasetError
from lhcad.paths import CONF_DIR

log = logging.getLogger("lhcad")

register_resolvers()

SWEEP_TARGETS = ("optuna.samplers.*", "hydra_plugins.*")
"""Targets the sweep configs instantiate besides lhcad's own."""


@hydra.main(config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> float | None:
    """Run one job; returns the configured objective (for Optuna sweeps)."""
    from lhcad.pipeline import run

    try:
        return run(cfg).objective
    except (ConfigError, DatasetError) as err:
        # bad input: one clear sentence, no traceback, exit 2 (checked before any run exists)
        log.error("%s", err)
        if _multirun():
            raise  # a job of a sweep: the launcher records it as failed and runs the others
        sys.exit(2)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def main() -> None:
    """Console entry point: the Hydra app, allowed to instantiate lhcad's classes and Optuna's samplers
    (Hydra's execution whitelist; callbacks and sweepers are built from config too)."""
    from hydra.utils import execution_whitelist

    from lhcad.tracking import Terminated
    from lhcad.tracking.optuna_sweeper import register_sweeper
    from lhcad.tracking.signals import keep_dropped_interrupts

    keep_dropped_interrupts()  # a Ctrl-C landing in a finalizer is delivered again, not dropped
    register_sweeper()  # hydra.sweeper._target_ of conf/hparams_search (Hydra finds no plugin outside hydra_plugins)
    try:
        with execution_whitelist([*TRUSTED_TARGETS, *SWEEP_TARGETS]):
            app()
    except Terminated as stop:  # SIGTERM during a run or sweep: its MLflow runs are marked KILLED
        log.error("stopped by %s; the MLflow run is marked KILLED", stop.signal_name)
        stop.exit()  # 128 + 15, no traceback
    except KeyboardInterrupt:  # Ctrl-C: the same, with the shell's code for SIGINT
        log.error("interrupted (Ctrl-C); a running MLflow run is marked KILLED")
        sys.exit(128 + 2)


if __name__ == "__main__":
    main()
