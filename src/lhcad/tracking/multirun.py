"""Hydra multirun: one MLflow parent run per sweep, with the sweep's jobs nested under it.

:class:`MultirunParentRun` (a Hydra callback) creates the parent run and writes its id to the
sweep directory; each job finds it there with :func:`parent_run_id_for_job`. The id file is
never overwritten while the sweep that wrote it runs (a second sweep into that folder is
stopped), and a job is only nested under a parent whose sweep folder is its own (RunTracker).
``mlflow`` is imported lazily (it takes seconds); importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback

from lhcad.tracking.run import _default_tags, _exit_status, _record_error, _str_tags, _terminate, current_sweep_dir
from lhcad.tracking.signals import (
    Terminated,
    deliver_pending,
    install_sigterm_handler,
    restore_sigterm_handler,
    sigterm_deferred,
    take_pending,
)
from lhcad.tracking.store import (
    HOST_TAG,
    PARENT_ROLE,
    PID_TAG,
    ROLE_TAG,
    _client,
    _file_lock,
    configure_from_config,
    ensure_store,
    mark_orphaned_runs,
    process_tags,
    tag_child_counts,
    tracking_uri,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient
    from omegaconf import DictConfig

__all__ = [
    "PARENT_RUN_ID_FILE",
    "MultirunParentRun",
    "SweepDirInUse",
    "current_sweep_dir",
    "parent_run_id_for_job",
]

log = logging.getLogger(__name__)

#: Name of the file in a Hydra sweep directory that holds the sweep's parent run id.
PARENT_RUN_ID_FILE = "mlflow_parent_run_id"
_ID_LOCK = ".mlflow_parent_run_id.lock"


class SweepDirInUse(SystemExit):
    """A sweep started in the folder of a sweep that still runs. A SystemExit: Hydra only warns
    about a callback's exceptions, and the sweep must stop before its jobs join the other one."""


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sweep_dir(config: DictConfig) -> Path:
    from omegaconf import OmegaConf

    sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
    if not sweep_dir.is_absolute():
        cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
        sweep_dir = Path(cwd or os.getcwd()) / sweep_dir
    return sweep_dir


def _read_id(id_file: Path) -> str | None:
    try:
        return id_file.read_text().strip() or None
    except OSError:
        return None


class MultirunParentRun(Callback):
    """Hydra callback: one MLflow parent run per ``--multirun`` sweep.

    Reads ``tracking.mlruns_dir`` and ``tracking.experiment`` from the app config. At the start
    of the sweep it creates the store (once, before any job runs) and a RUNNING parent run, and
    writes its id to ``<sweep dir>/mlflow_parent_run_id``, where jobs in other processes find
    it with :func:`parent_run_id_for_job`; a folder whose id file names a parent that is still
    RUNNING is refused (:class:`SweepDirInUse`). During the sweep SIGTERM raises
    :class:`~lhcad.tracking.run.Terminated` in the sweeping process. At the end it marks the jobs
    of dead processes FAILED (orphaned), tags the children counts and ends the parent (FINISHED;
    FAILED / KILLED, with ``error`` and ``killed_by``, if the sweep itself raised). Register it
    with ``hydra.callbacks.mlflow_parent: {_target_: lhcad.tracking.MultirunParentRun}``.
    """

    def __init__(self) -> None:
        self._uri: str | None = None
        self._experiment_id: str | None = None
        self._run_id: str | None = None
        self._started = False  # on_multirun_start ran: end only the run it created
        self._sigterm_token: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Ensure the store, create the parent run and publish its id in the sweep directory."""
        self._sigterm_token = install_sigterm_handler()  # restored in on_multirun_end
        self._started, self._run_id = True, None
        with sigterm_deferred():  # a SIGTERM now waits until the parent run exists
            self._start(config)
        stop = take_pending()
        if stop is not None:
            raise stop  # not swallowed by Hydra (a KeyboardInterrupt): on_multirun_end ends the parent

    def _start(self, config: DictConfig) -> None:
        from omegaconf import OmegaConf

        mlruns_dir = OmegaConf.select(config, "tracking.mlruns_dir")
        experiment = OmegaConf.select(config, "tracking.experiment")
        if not mlruns_dir or not experiment:
            log.warning("no tracking.mlruns_dir / tracking.experiment in the config: no parent run")
            return
        sweep_dir = _sweep_dir(config)
        name = sweep_dir.name or OmegaConf.select(config, "tracking.run_name", default=None)
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        configure_from_config(config)  # tracking.uri / artifact_root: this callback runs before TrackingStoreCallback
        self._uri, self._experiment_id = ensure_store(str(mlruns_dir), str(experiment))
        client = _client(self._uri)
        tags = _default_tags()
        tags.update(
            {
                ROLE_TAG: PARENT_ROLE,
                "lhcad.sweep_dir": str(sweep_dir),
                "lhcad.sweep_overrides": " ".join(str(o) for o in overrides),
            }
        )
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        if sweeper:
            tags["lhcad.sweeper"] = str(sweeper)
        id_file = sweep_dir / PARENT_RUN_ID_FILE
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(sweep_dir / _ID_LOCK):  # check and publish as one step
            previous = _read_id(id_file)
            if previous is not None and _is_running(client, previous):
                raise SweepDirInUse(
                    f"sweep folder {sweep_dir} is in use by the running sweep of MLflow run {previous}; "
                    "wait for it to end or choose another hydra.sweep.dir"
                )
            run = client.create_run(self._experiment_id, run_name=name, tags=_str_tags(tags))
            self._run_id = run.info.run_id
            _write_atomic(id_file, self._run_id + "\n")
        if previous is not None:
            log.info("sweep folder %s: replaced the id of the ended parent run %s", sweep_dir, previous)
        log.info("MLflow parent run %s (%s) for sweep %s", self._run_id, name, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Tag children counts (``n_children``, ``n_failed``, ...) and end the parent run."""
        exc_type, exc, tb = sys.exc_info()  # Hydra calls this in a `finally`
        try:
            with sigterm_deferred():  # a SIGTERM now waits until the parent's status is written
                self._end(config, exc_type, exc, tb)
        finally:
            restore_sigterm_handler(self._sigterm_token)
            self._sigterm_token = None
        deliver_pending(exc)

    def _end(
        self,
        config: DictConfig,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        status = _exit_status(exc)
        sweep_dir = _sweep_dir(config)
        if self._uri is None:
            from omegaconf import OmegaConf

            mlruns_dir = OmegaConf.select(config, "tracking.mlruns_dir")
            if not mlruns_dir:
                return
            self._uri = tracking_uri(str(mlruns_dir))
        client = _client(self._uri)
        run_id = self._run_id
        if run_id is None and not self._started:  # a fresh instance: the run this process started
            run_id = _own_parent(client, sweep_dir / PARENT_RUN_ID_FILE)
        self._started = False
        if run_id is None:
            log.warning("no MLflow parent run of this process for sweep %s", sweep_dir)
            return
        counts: dict[str, int] = {}
        try:
            if exc is not None and status != "FINISHED":
                _record_error(client, run_id, exc_type, exc, tb)
            cause = None
            if isinstance(exc, Terminated):
                cause = f"its sweep was stopped by {exc.signal_name} and the launcher ended the job's process"
            try:  # jobs whose worker died count as FAILED, not RUNNING
                mark_orphaned_runs(client, {run_id: cause} if cause else None)
            except Exception:
                log.warning("could not check for orphaned jobs", exc_info=True)
            counts = tag_child_counts(client, run_id)
            for name in ("multirun.yaml", "optimization_results.yaml"):
                if (sweep_dir / name).is_file():
                    client.log_artifact(run_id, str(sweep_dir / name))
        finally:
            _terminate(client, run_id, status)
            self._run_id = None
        if isinstance(exc, Terminated):
            log.warning("MLflow parent run %s %s (%s; %s)", run_id, status, exc, counts)
        else:
            log.info("MLflow parent run %s %s (%s)", run_id, status, counts)


def _is_running(client: MlflowClient, run_id: str) -> bool:
    """Whether ``run_id`` is a RUNNING run of this store (orphans were marked FAILED before)."""
    try:
        return client.get_run(run_id).info.status == "RUNNING"
    except Exception:  # not in this store: a stale file
        return False


def _own_parent(client: MlflowClient, id_file: Path) -> str | None:
    """The parent run id in ``id_file`` if this process created that run (else None)."""
    run_id = _read_id(id_file)
    if run_id is None:
        return None
    try:
        tags = client.get_run(run_id).data.tags
    except Exception:
        return None
    mine = process_tags()
    if tags.get(HOST_TAG) != mine[HOST_TAG] or tags.get(PID_TAG) != mine[PID_TAG]:
        log.warning("%s names run %s of another process: not ending it", id_file, run_id)
        return None
    return run_id


def parent_run_id_for_job() -> str | None:
    """Parent run id of the current Hydra multirun job, read from the sweep directory.

    None outside Hydra, in single-run mode, or when the sweep has no parent run (callback not
    registered or failed). RunTracker checks that the parent belongs to this job's sweep.
    """
    sweep_dir = current_sweep_dir()
    if sweep_dir is None:
        return None
    id_file = sweep_dir / PARENT_RUN_ID_FILE
    run_id = _read_id(id_file)
    if run_id is None:
        log.info("no %s: the run gets no MLflow parent", id_file)
    return run_id
