"""MLflow run tracking: a sqlite store under ``<mlruns_dir>``, one run per job, parent runs per sweep.

The package's modules:

- :mod:`lhcad.tracking.store`: tracking URI (sqlite by default, ``tracking.uri`` for PostgreSQL or
  a tracking server), store and experiment creation (locked), the client, and
  :func:`mark_orphaned_runs` (runs left RUNNING by a dead process of this host -> FAILED);
- :mod:`lhcad.tracking.run`: :class:`RunTracker` (one run's lifecycle and status, params, metrics,
  tags, artifacts), :func:`flatten_config`, :func:`git_commit`;
- :mod:`lhcad.tracking.signals`: SIGTERM -> :class:`Terminated` (a KeyboardInterrupt) while a run
  or sweep is active;
- :mod:`lhcad.tracking.multirun`: :class:`MultirunParentRun` (Hydra callback: one parent run per
  sweep) and :func:`parent_run_id_for_job`;
- :mod:`lhcad.tracking.optuna_sweeper` (resumable Hydra Optuna sweeper), ``optuna_worker``
  (``lhcad-sweep``'s workers) and ``slurm`` (the SLURM launcher).

How a run ends: FINISHED; FAILED on an exception (tag ``error``, ``error.txt``); KILLED on Ctrl-C
or SIGTERM (tag ``killed_by=SIGTERM``); after SIGKILL (or the OOM killer) it stays RUNNING until
the next start against the store on that host marks it FAILED with ``error=orphaned``.

Layout of a tracking directory::

    <mlruns_dir>/mlflow.db      sqlite backend store (absolute ``sqlite:////...`` URI)
    <mlruns_dir>/artifacts/     artifact root of every experiment created here
    <mlruns_dir>/.store.lock    file lock serialising store creation across processes

``tracking.uri`` replaces the sqlite store by PostgreSQL (``postgresql://...``) or an MLflow
tracking server (``http://host:port``) for every run, sweep and job of a process
(:class:`~lhcad.tracking.store.TrackingStoreCallback`, :func:`~lhcad.tracking.store.configure_store`);
artifacts then go to ``tracking.artifact_root`` (docs/cluster.md).

``mlflow`` is imported lazily (it takes seconds); importing this package does not import it.
Everything goes through an explicit ``MlflowClient(tracking_uri=...)``, so nothing depends on
MLflow's global state (``mlflow.set_tracking_uri``, the fluent active run).

Typical use inside a Hydra job::

    with RunTracker(cfg.tracking.mlruns_dir, cfg.tracking.experiment, run_name,
                    parent_run_id=parent_run_id_for_job()) as run:
        run.log_config(cfg)
        run.log_metrics({"val_loss": 0.3}, step=epoch)
"""

from lhcad.tracking.multirun import (
    PARENT_RUN_ID_FILE,
    MultirunParentRun,
    SweepDirInUse,
    parent_run_id_for_job,
)
from lhcad.tracking.run import (
    MAX_PARAM_LENGTH,
    TRUNCATION_MARKER,
    RunTracker,
    flatten_config,
    git_commit,
)
from lhcad.tracking.signals import Terminated
from lhcad.tracking.store import (
    ORPHANED,
    TrackingStoreCallback,
    configure_store,
    ensure_store,
    mark_orphaned_runs,
    tracking_uri,
    ui_command,
)

__all__ = [
    "MAX_PARAM_LENGTH",
    "ORPHANED",
    "PARENT_RUN_ID_FILE",
    "TRUNCATION_MARKER",
    "MultirunParentRun",
    "RunTracker",
    "SweepDirInUse",
    "Terminated",
    "TrackingStoreCallback",
    "configure_store",
    "ensure_store",
    "flatten_config",
    "git_commit",
    "mark_orphaned_runs",
    "parent_run_id_for_job",
    "tracking_uri",
    "ui_command",
]
