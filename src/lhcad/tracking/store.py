"""The MLflow store: a sqlite backend and an artifact root under ``<mlruns_dir>``.

Layout of a tracking directory::

    <mlruns_dir>/mlflow.db      sqlite backend store (absolute ``sqlite:////...`` URI)
    <mlruns_dir>/artifacts/     artifact root of every experiment created here
    <mlruns_dir>/.store.lock    file lock serialising store creation across processes

``mlflow`` is imported lazily (it takes seconds); importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

__all__ = ["ensure_store", "tracking_uri", "ui_command"]

log = logging.getLogger(__name__)

_DB_NAME = "mlflow.db"
_ARTIFACTS_DIR = "artifacts"
_LOCK_NAME = ".store.lock"


def _abs_dir(mlruns_dir: str | os.PathLike[str]) -> Path:
    return Path(mlruns_dir).expanduser().resolve()


def tracking_uri(mlruns_dir: str | os.PathLike[str]) -> str:
    """Absolute sqlite URI of the store in ``mlruns_dir``: ``sqlite:////abs/mlruns/mlflow.db``."""
    return "sqlite:///" + (_abs_dir(mlruns_dir) / _DB_NAME).as_posix()


def ui_command(mlruns_dir: str | os.PathLike[str]) -> str:
    """Shell command that opens the MLflow UI on the store in ``mlruns_dir``."""
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri(mlruns_dir))}"


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


def ensure_store(mlruns_dir: str | os.PathLike[str], experiment: str) -> tuple[str, str]:
    """Create the store in ``mlruns_dir`` and the experiment ``experiment`` if missing.

    Process-safe: creation runs under an exclusive file lock on ``<mlruns_dir>/.store.lock``
    (concurrent first use of a fresh sqlite store otherwise races on the schema migration and
    fails with "database is locked"). Idempotent and cheap once the store exists. A deleted
    experiment of that name is restored. Returns ``(tracking_uri, experiment_id)``.
    """
    root = _abs_dir(mlruns_dir)
    artifacts = root / _ARTIFACTS_DIR
    artifacts.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(root)
    with _file_lock(root / _LOCK_NAME):
        client = _client(uri)  # creates the tables (schema migration) on first use
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=str(artifacts))
            log.info("created MLflow experiment %r (id %s) in %s", experiment, exp_id, uri)
            return uri, exp_id
        if exp.lifecycle_stage == "deleted":
            log.warning("restoring deleted MLflow experiment %r (id %s)", experiment, exp.experiment_id)
            client.restore_experiment(exp.experiment_id)
        if not _same_location(exp.artifact_location, artifacts):
            log.warning(
                "experiment %r stores artifacts in %s, not under %s",
                experiment,
                exp.artifact_location,
                artifacts,
            )
        return uri, exp.experiment_id


def _same_location(location: str, path: Path) -> bool:
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        location = unquote(urlparse(location).path)
    return Path(location) == path
