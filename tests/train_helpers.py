"""Running `train.py` as a user would (subprocess in a working directory) and reading its MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lhcad.cli._paths import REPO_ROOT

TRAIN = str(REPO_ROOT / "train.py")


def run_train(cwd: Path, *overrides: str, expect_ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LHCAD_HOME"}
    proc = subprocess.run(
        [sys.executable, TRAIN, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(overrides)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def client(cwd: Path):
    from mlflow.tracking import MlflowClient

    from lhcad.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(cwd / "mlruns"))


def all_runs(cwd: Path):
    c = client(cwd)
    exps = c.search_experiments()
    return c.search_runs([e.experiment_id for e in exps], max_results=1000)


def compose_config(overrides: list[str]):
    """``conf/config.yaml`` composed as ``train.py <overrides>`` would, with Hydra's own config set
    (so Hydra's choices, e.g. ``method@method.initial``, are readable as in a run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lhcad.config import register_resolvers
    from lhcad.paths import CONF_DIR

    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg
