"""MLflow run tracking: a sqlite store under ``<mlruns_dir>``, one run per job, parent runs per sweep.

The package has three modules:

- :mod:`lhcad.tracking.store`: tracking URI, store and experiment creation (file-locked), the client;
- :mod:`lhcad.tracking.run`: :class:`RunTracker` (one run's lifecycle and status, params, metrics,
  tags, artifacts), :func:`flatten_config`, :func:`git_commit`;
- :mod:`lhcad.tracking.multirun`: :class:`MultirunParentRun` (Hydra callback: one parent run per
  sweep) and :func:`parent_run_id_for_job`.

Layout of a tracking directory::

    <mlruns_dir>/mlflow.db      sqlite backend store (absolute ``sqlite:////...`` URI)
    <mlruns_dir>/artifacts/     artifact root of every experiment created here
    <mlruns_dir>/.store.lock    file lock serialising store creation across processes

``mlflow`` is imported lazily (it takes seconds); importing this package does not import it.
Everything goes through an explicit ``MlflowClient(tracking_uri=...)``, so nothing depends on
MLflow's global state (``mlflow.set_tracking_uri``, the fluent active run).

Typical use inside a Hydra job::

    with RunTracker(cfg.tracking.mlruns_dir, cfg.tracking.experiment, run_name,
                    parent_run_id=parent_run_id_for_job()) as run:
        run.log_config(cfg)
        run.log_metrics({"val_loss": 0.3}, step=epoch)
"""

from lhcad.tracking.multirun import PARENT_RUN_ID_FILE, MultirunParentRun, parent_run_id_for_job
from lhcad.tracking.run import MAX_PARAM_LENGTH, TRUNCATION_MARKER, RunTracker, flatten_config, git_commit
from lhcad.tracking.store import ensure_store, tracking_uri, ui_command

__all__ = [
    "MAX_PARAM_LENGTH",
    "PARENT_RUN_ID_FILE",
    "TRUNCATION_MARKER",
    "MultirunParentRun",
    "RunTracker",
    "ensure_store",
    "flatten_config",
    "git_commit",
    "parent_run_id_for_job",
    "tracking_uri",
    "ui_command",
]
