"""Hydra multirun: one MLflow parent run per sweep, with the sweep's jobs nested under it.

:class:`MultirunParentRun` (a Hydra callback) creates the parent run and writes its id to the
sweep directory; each job finds it there with :func:`parent_run_id_for_job`.
``mlflow`` is imported lazily (it takes seconds); importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback

from lhcad.tracking.run import _default_tags, _exit_status, _str_tags, _terminate
from lhcad.tracking.store import _client, ensure_store, tracking_uri

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient
    from omegaconf import DictConfig

__all__ = ["PARENT_RUN_ID_FILE", "MultirunParentRun", "parent_run_id_for_job"]

log = logging.getLogger(__name__)

#: Name of the file in a Hydra sweep directory that holds the sweep's parent run id.
PARENT_RUN_ID_FILE = "mlflow_parent_run_id"


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


class MultirunParentRun(Callback):
    """Hydra callback: one MLflow parent run per ``--multirun`` sweep.

    Reads ``tracking.mlruns_dir`` and ``tracking.experiment`` from the app config. At the start
    of the sweep it creates the store (once, before any job runs) and a RUNNING parent run, and
    writes its id to ``<sweep dir>/mlflow_parent_run_id``, where jobs in other processes find
    it with :func:`parent_run_id_for_job`. At the end it tags the children counts and ends the
    parent (FINISHED; FAILED / KILLED if the sweep itself raised). Register it with
    ``hydra.callbacks.mlflow_parent: {_target_: lhcad.tracking.MultirunParentRun}``.
    """

    def __init__(self) -> None:
        self._uri: str | None = None
        self._experiment_id: str | None = None
        self._run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Ensure the store, create the parent run and publish its id in the sweep directory."""
        from omegaconf import OmegaConf

        mlruns_dir = OmegaConf.select(config, "tracking.mlruns_dir")
        experiment = OmegaConf.select(config, "tracking.experiment")
        if not mlruns_dir or not experiment:
            log.warning("no tracking.mlruns_dir / tracking.experiment in the config: no parent run")
            return
        sweep_dir = _sweep_dir(config)
        name = sweep_dir.name or OmegaConf.select(config, "tracking.run_name", default=None)
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        self._uri, self._experiment_id = ensure_store(str(mlruns_dir), str(experiment))
        client = _client(self._uri)
        tags = _default_tags()
        tags.update(
            {
                "lhcad.role": "multirun-parent",
                "lhcad.sweep_dir": str(sweep_dir),
                "lhcad.sweep_overrides": " ".join(str(o) for o in overrides),
            }
        )
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        if sweeper:
            tags["lhcad.sweeper"] = str(sweeper)
        run = client.create_run(self._experiment_id, run_name=name, tags=_str_tags(tags))
        self._run_id = run.info.run_id
        _write_atomic(sweep_dir / PARENT_RUN_ID_FILE, self._run_id + "\n")
        log.info("MLflow parent run %s (%s) for sweep %s", self._run_id, name, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Tag children counts (``n_children``, ``n_failed``, ...) and end the parent run."""
        status = _exit_status(sys.exc_info()[1])  # Hydra calls this in a `finally`
        sweep_dir = _sweep_dir(config)
        run_id = self._run_id
        if run_id is None:
            id_file = sweep_dir / PARENT_RUN_ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else None
        if run_id is None:
            log.warning("no MLflow parent run for sweep %s", sweep_dir)
            return
        if self._uri is None:
            from omegaconf import OmegaConf

            self._uri = tracking_uri(str(OmegaConf.select(config, "tracking.mlruns_dir")))
        client = _client(self._uri)
        try:
            counts = _child_counts(client, run_id)
            client.log_batch(
                run_id,
                tags=[_run_tag(k, str(v)) for k, v in counts.items()],
                synchronous=True,
            )
            for name in ("multirun.yaml", "optimization_results.yaml"):
                if (sweep_dir / name).is_file():
                    client.log_artifact(run_id, str(sweep_dir / name))
        finally:
            _terminate(client, run_id, status)
        log.info("MLflow parent run %s %s (%s)", run_id, status, counts)
        self._run_id = None


def _run_tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)


def _child_counts(client: MlflowClient, parent_run_id: str) -> dict[str, int]:
    """Number of runs tagged with ``parent_run_id`` as parent, in total and per status."""
    from mlflow.entities import ViewType

    statuses: list[str] = []
    filt = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    token = None
    while True:
        page = client.search_runs(
            exp_ids, filt, run_view_type=ViewType.ALL, max_results=1000, page_token=token
        )
        statuses += [r.info.status for r in page]
        token = page.token
        if not token:
            break
    return {
        "n_children": len(statuses),
        "n_finished": statuses.count("FINISHED"),
        "n_failed": statuses.count("FAILED"),
        "n_killed": statuses.count("KILLED"),
        "n_running": statuses.count("RUNNING"),
    }


def parent_run_id_for_job() -> str | None:
    """Parent run id of the current Hydra multirun job, read from the sweep directory.

    None outside Hydra, in single-run mode, or when the sweep has no parent run (callback not
    registered or failed).
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hc.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(hc.runtime.cwd) / sweep_dir
    id_file = sweep_dir / PARENT_RUN_ID_FILE
    try:
        run_id = id_file.read_text().strip()
    except OSError:
        log.info("no %s: the run gets no MLflow parent", id_file)
        return None
    return run_id or None
