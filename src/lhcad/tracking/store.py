"""The MLflow store: a sqlite backend and an artifact root under ``<mlruns_dir>``, and the
clean-up of runs whose process is gone (orphans).

Layout of a tracking directory::

    <mlruns_dir>/mlflow.db      sqlite backend store (absolute ``sqlite:////...`` URI)
    <mlruns_dir>/artifacts/     artifact root of every experiment created here
    <mlruns_dir>/.store.lock    file lock serialising store creation across processes

Every run records the process that owns it (tags ``lhcad.host``, ``lhcad.pid`` and, on Linux,
``lhcad.proc_start`` and ``lhcad.pid_ns``). A process killed by SIGKILL (or the OOM killer, a power
cut) leaves its runs RUNNING; :func:`ensure_store`, called at every start, marks those of this host
whose process no longer exists FAILED with the tag ``error=orphaned`` (:func:`mark_orphaned_runs`).

Other stores (``tracking.uri``, README "Running on a cluster", docs/cluster.md): a PostgreSQL
backend (``postgresql://user@host:port/db``, artifacts in ``tracking.artifact_root``, default
``<mlruns_dir>/artifacts``) or an MLflow tracking server (``http://host:port``, artifacts wherever
the server puts them). The setting is per process: :class:`TrackingStoreCallback` (registered by
``conf/tracking/*.yaml``) applies the config's value in every Hydra run, sweep and job, and
:func:`configure_store` does it in plain Python; :func:`tracking_uri` and :func:`ensure_store` then
use it wherever ``<mlruns_dir>`` was passed. Unset, everything is the sqlite default above.

``mlflow`` is imported lazily (it takes seconds); importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient
    from omegaconf import DictConfig

__all__ = [
    "ORPHANED",
    "StoreSettings",
    "TrackingStoreCallback",
    "artifact_location",
    "child_counts",
    "configure_from_config",
    "configure_store",
    "ensure_store",
    "is_server_uri",
    "mark_orphaned_runs",
    "process_tags",
    "redact_uri",
    "store_settings",
    "tracking_uri",
    "ui_command",
]

log = logging.getLogger(__name__)

_DB_NAME = "mlflow.db"
_ARTIFACTS_DIR = "artifacts"
_LOCK_NAME = ".store.lock"

HOST_TAG = "lhcad.host"
PID_TAG = "lhcad.pid"
PROC_START_TAG = "lhcad.proc_start"  # "<boot id>:<start time in clock ticks>": tells a reused pid apart
PID_NS_TAG = "lhcad.pid_ns"  # the pid namespace: containers sharing a hostname do not see each other's pids
ROLE_TAG = "lhcad.role"
PARENT_ROLE = "multirun-parent"
PARENT_TAG = "mlflow.parentRunId"
COUNT_TAGS = ("n_children", "n_finished", "n_failed", "n_killed", "n_running")
#: Value of the ``error`` tag of a run marked FAILED because its process is gone.
ORPHANED = "orphaned"
_UNKNOWN_CAUSE = "killed by SIGKILL, out of memory, or the machine stopped"


def _abs_dir(mlruns_dir: str | os.PathLike[str]) -> Path:
    return Path(mlruns_dir).expanduser().resolve()


# --------------------------------------------------------------------------------------------
# which store: the sqlite default under <mlruns_dir>, or tracking.uri (PostgreSQL, a server)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSettings:
    """The process's store settings: ``uri`` (None: sqlite under ``<mlruns_dir>``) and
    ``artifact_root`` (None: ``<mlruns_dir>/artifacts``, or the server's own for ``http(s)://``)."""

    uri: str | None = None
    artifact_root: str | None = None


_settings = StoreSettings()


def configure_store(uri: str | None = None, artifact_root: str | None = None) -> StoreSettings:
    """Set this process's tracking URI and artifact root (None / "" = the defaults); returns them.

    ``postgres://`` is accepted and written ``postgresql://`` (the only spelling SQLAlchemy knows).
    """
    global _settings
    uri = str(uri).strip() if uri else None
    if uri and uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://") :]
    if uri and uri.startswith("file:"):
        raise ValueError(f"tracking.uri={uri}: MLflow 3 refuses file stores; use tracking.mlruns_dir for sqlite")
    _settings = StoreSettings(uri or None, str(artifact_root).strip() if artifact_root else None)
    return _settings


def store_settings() -> StoreSettings:
    """The settings :func:`configure_store` last set (the defaults if never called)."""
    return _settings


def configure_from_config(config: Any) -> StoreSettings:
    """:func:`configure_store` from ``tracking.uri`` / ``tracking.artifact_root`` of a config."""
    from omegaconf import OmegaConf

    return configure_store(
        OmegaConf.select(config, "tracking.uri", default=None),
        OmegaConf.select(config, "tracking.artifact_root", default=None),
    )


def _scheme(uri: str) -> str:
    """``postgresql`` for ``postgresql+psycopg2://...``, ``http``, ``sqlite``, "" for a plain path."""
    head, sep, _ = uri.partition(":")
    return head.split("+")[0].lower() if sep and len(head) > 1 else ""


def is_server_uri(uri: str) -> bool:
    """Whether ``uri`` names an MLflow tracking server (``http://`` / ``https://``)."""
    return _scheme(uri) in ("http", "https")


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for logs and messages)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def tracking_uri(mlruns_dir: str | os.PathLike[str]) -> str:
    """The configured ``tracking.uri`` (:func:`configure_store`), else the absolute sqlite URI of the
    store in ``mlruns_dir``: ``sqlite:////abs/mlruns/mlflow.db``."""
    if _settings.uri:
        return _settings.uri
    return "sqlite:///" + (_abs_dir(mlruns_dir) / _DB_NAME).as_posix()


def artifact_location(mlruns_dir: str | os.PathLike[str]) -> str | None:
    """Artifact location of experiments created here: ``tracking.artifact_root`` (a path is made
    absolute), else None for a tracking server (its ``--artifacts-destination``), else
    ``<mlruns_dir>/artifacts``."""
    root = _settings.artifact_root
    if root:
        return root if _scheme(root) else str(_abs_dir(root))
    if _settings.uri and is_server_uri(_settings.uri):
        return None
    return str(_abs_dir(mlruns_dir) / _ARTIFACTS_DIR)


UI_PORT = 5000


def ui_command(mlruns_dir: str | os.PathLike[str], experiment_id: str | None = None) -> str:
    """Shell command that opens the MLflow UI on the store in ``mlruns_dir``, runnable from a fresh
    shell (this interpreter's ``mlflow``, one worker), followed by the URL of the runs table in
    "Model training" mode (for a tracking server: its address; passwords are not shown)."""
    uri = tracking_uri(mlruns_dir)
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning" if experiment_id else ""
    if is_server_uri(uri):
        return f"{uri.rstrip('/')}/{page}"
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = str(mlflow) if mlflow.is_file() else "mlflow"
    return (
        f"{shlex.quote(exe)} ui --backend-store-uri {shlex.quote(redact_uri(uri))} --port {UI_PORT} --workers 1"
        f"  then open http://127.0.0.1:{UI_PORT}/{page}"
    )


class TrackingStoreCallback(Callback):
    """Hydra callback: applies ``tracking.uri`` / ``tracking.artifact_root`` to this process.

    Registered by ``conf/tracking/*.yaml``. ``on_job_start`` sets them from each job's config in
    the process that runs it (a single run, a joblib worker, a SLURM job), before the job's code;
    :class:`~lhcad.tracking.multirun.MultirunParentRun`, whose ``on_multirun_start`` runs before
    this one's, applies them itself before it creates the parent run.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Sweep: the settings of the sweep's config."""
        configure_from_config(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Each job, in the process that runs it: the settings of the job's config."""
        configure_from_config(config)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created if missing); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        log.debug("fcntl unavailable; store creation is not locked")
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_store(
    mlruns_dir: str | os.PathLike[str], experiment: str, *, mark_orphans: bool = True
) -> tuple[str, str]:
    """Create the store (:func:`tracking_uri`) and the experiment ``experiment`` if missing.

    Process-safe: creation runs under an exclusive lock, for sqlite a file lock on
    ``<mlruns_dir>/.store.lock`` (concurrent first use of a fresh sqlite store otherwise races on
    the schema migration and fails with "database is locked"), for PostgreSQL an advisory lock
    held on the server (jobs on several nodes); a tracking server serialises its own writes.
    Idempotent and cheap once the store exists. A deleted experiment of that name is restored.
    New experiments keep their artifacts in :func:`artifact_location`. With ``mark_orphans``
    (default), runs left RUNNING by a dead process of this host are then marked FAILED
    (:func:`mark_orphaned_runs`). Returns ``(tracking_uri, experiment_id)``.
    """
    root = _abs_dir(mlruns_dir)
    uri = tracking_uri(root)
    artifacts = artifact_location(root)
    if artifacts is not None and not _scheme(artifacts):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    with _store_lock(uri, root):
        client = _client(uri)  # creates the tables (schema migration) on first use
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = _create_experiment(client, experiment, artifacts)
            log.info("created MLflow experiment %r (id %s) in %s", experiment, exp_id, redact_uri(uri))
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                log.warning("restoring deleted MLflow experiment %r (id %s)", experiment, exp_id)
                client.restore_experiment(exp_id)
            if artifacts is not None and not _same_location(exp.artifact_location, artifacts):
                log.warning(
                    "experiment %r stores artifacts in %s, not under %s",
                    experiment,
                    exp.artifact_location,
                    artifacts,
                )
        if mark_orphans:  # under the lock: concurrent starts do not mark the same run twice
            try:
                mark_orphaned_runs(client)
            except Exception:  # never stop a run for this
                log.warning("could not check %s for orphaned runs", redact_uri(uri), exc_info=True)
    return uri, exp_id


def _create_experiment(client: MlflowClient, name: str, artifacts: str | None) -> str:
    """Create experiment ``name``; if another process created it meanwhile (no lock against a
    tracking server), its id."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException as err:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        log.debug("experiment %r was created by another process (%s)", name, err.error_code)
        return exp.experiment_id


#: pg_advisory_lock key of store creation (any fixed 64-bit number; "lhcad" in ASCII)
_PG_LOCK_KEY = 0x6C68636164


@contextlib.contextmanager
def _store_lock(uri: str, root: Path) -> Iterator[None]:
    """The lock :func:`ensure_store` holds: a file lock in ``root`` for sqlite, a PostgreSQL
    advisory lock for ``postgresql://``, none for a tracking server."""
    scheme = _scheme(uri)
    if scheme == "sqlite":
        root.mkdir(parents=True, exist_ok=True)
        with _file_lock(root / _LOCK_NAME):
            yield
    elif scheme == "postgresql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
        finally:
            engine.dispose()
    else:
        yield


def _same_location(location: str, target: str | Path) -> bool:
    if _scheme(str(target)):
        return location.rstrip("/") == str(target).rstrip("/")
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        location = unquote(urlparse(location).path)
    return Path(location) == Path(target)


# --------------------------------------------------------------------------------------------
# processes that own runs, and runs whose process is gone
# --------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str | None] | None:
    """``(state, "<boot id>:<start time>")`` of process ``pid`` from /proc (None where unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime 22
    if len(fields) < 20:
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return fields[0], None
    return fields[0], f"{boot}:{fields[19]}"


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_tags() -> dict[str, str]:
    """Tags naming this process: ``lhcad.host``, ``lhcad.pid`` and (Linux) ``lhcad.proc_start``,
    ``lhcad.pid_ns``."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    stat = _proc_stat(os.getpid())
    if stat is not None and stat[1] is not None:
        tags[PROC_START_TAG] = stat[1]
    namespace = _pid_namespace()
    if namespace is not None:
        tags[PID_NS_TAG] = namespace
    return tags


def process_gone(pid: int, proc_start: str | None = None) -> bool:
    """Whether process ``pid`` of this host no longer exists: no such pid, a zombie, or (when
    ``proc_start`` is given and /proc readable) a pid now used by a process started later.
    Unknown cases (no permission, no /proc) count as alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, under another user
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, start = stat
    if state in ("Z", "X"):  # exited, not yet reaped by its parent
        return True
    return proc_start is not None and start is not None and start != proc_start


def child_counts(client: MlflowClient, parent_run_id: str) -> dict[str, int]:
    """Number of runs tagged with ``parent_run_id`` as parent, in total and per status."""
    statuses = [r.info.status for r in _search(client, f"tags.`{PARENT_TAG}` = '{_quote(parent_run_id)}'")]
    return {
        "n_children": len(statuses),
        "n_finished": statuses.count("FINISHED"),
        "n_failed": statuses.count("FAILED"),
        "n_killed": statuses.count("KILLED"),
        "n_running": statuses.count("RUNNING"),
    }


def tag_child_counts(client: MlflowClient, parent_run_id: str) -> dict[str, int]:
    """Count the children of ``parent_run_id`` (:func:`child_counts`) and set them as its tags."""
    from mlflow.entities import RunTag

    counts = child_counts(client, parent_run_id)
    client.log_batch(parent_run_id, tags=[RunTag(k, str(v)) for k, v in counts.items()], synchronous=True)
    return counts


def refresh_child_counts(client: MlflowClient, parent_run_id: str) -> None:
    """Recount the children of an *ended* parent that has count tags (a child ended after it)."""
    parent = client.get_run(parent_run_id)
    if parent.info.status != "RUNNING" and "n_children" in parent.data.tags:
        tag_child_counts(client, parent_run_id)


def mark_orphaned_runs(client: MlflowClient, causes: Mapping[str, str] | None = None) -> list[str]:
    """Mark FAILED the RUNNING runs whose process on this host is gone; returns their ids.

    Only runs tagged with this host and a pid are considered; runs of other hosts (or of another
    pid namespace: containers with one hostname), of live processes and without the tags are
    never touched. Each orphan gets ``error=orphaned`` and ``error_detail`` (host, pid, and the
    likely cause: ``causes[parent run id]`` for the children of a known parent). Multirun parents
    among them, and ended parents of orphaned children, get their children counts
    (``n_children``, ``n_failed``, ...) recounted.
    """
    from mlflow.entities import RunTag, ViewType

    host, namespace = socket.gethostname(), _pid_namespace()
    running_here = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{_quote(host)}'"
    candidates = _search(client, running_here, ViewType.ACTIVE_ONLY)
    orphans: list[Run] = []
    for run in candidates:
        tags = run.data.tags
        try:
            pid = int(tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if PID_NS_TAG in tags and tags[PID_NS_TAG] != namespace:  # its pids are not ours to check
            continue
        if not process_gone(pid, tags.get(PROC_START_TAG)):
            continue
        run_id = run.info.run_id
        cause = (causes or {}).get(tags.get(PARENT_TAG, ""), _UNKNOWN_CAUSE)
        detail = (
            f"process {pid} on {host} ended without closing the run ({cause}); marked FAILED at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} by process {os.getpid()}"
        )
        try:
            if client.get_run(run_id).info.status != "RUNNING":  # ended just before its process did
                continue
            tags_out = [RunTag("error", ORPHANED), RunTag("error_detail", detail)]
            client.log_batch(run_id, tags=tags_out, synchronous=True)
            client.set_terminated(run_id, status="FAILED")
        except Exception:  # e.g. deleted meanwhile: the others are still marked
            log.warning("could not mark orphaned MLflow run %s FAILED", run_id, exc_info=True)
            continue
        orphans.append(run)
        log.warning("MLflow run %s (%s) marked FAILED: orphaned (%s)", run_id, run.info.run_name, detail)
    _recount_parents(client, orphans)
    return [r.info.run_id for r in orphans]


def _recount_parents(client: MlflowClient, orphans: list[Run]) -> None:
    """Children counts of the orphaned multirun parents and of the ended parents of orphans."""
    parents = [r.info.run_id for r in orphans if r.data.tags.get(ROLE_TAG) == PARENT_ROLE]
    others = {r.data.tags[PARENT_TAG] for r in orphans if PARENT_TAG in r.data.tags} - set(parents)
    for parent_id in parents:
        tag_child_counts(client, parent_id)
    for parent_id in sorted(others):
        try:
            refresh_child_counts(client, parent_id)
        except Exception:  # the parent may be in another store or deleted
            log.debug("could not recount the children of run %s", parent_id, exc_info=True)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _search(client: MlflowClient, filter_string: str, view: int | None = None) -> list[Run]:
    """All runs of every experiment matching ``filter_string`` (``view``: default all, deleted too)."""
    from mlflow.entities import ViewType

    view = ViewType.ALL if view is None else view
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs: list[Run] = []
    token = None
    while exp_ids:
        page = client.search_runs(
            exp_ids, filter_string, run_view_type=view, max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs
