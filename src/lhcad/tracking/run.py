"""One MLflow run: :class:`RunTracker` (lifecycle, run status, logging of params, metrics, tags
and artifacts), config flattening for params, and provenance tags (git commit, host, pid, user).

While a run is active, SIGTERM (``kill``, SLURM, ``docker stop``) raises
:class:`~lhcad.tracking.signals.Terminated` in the main thread, a KeyboardInterrupt: the run ends
KILLED with the signal as its reason, like Ctrl-C.

``mlflow`` is imported lazily (it takes seconds); importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lhcad.tracking.signals import (
    Terminated,
    deliver_pending,
    install_sigterm_handler,
    restore_sigterm_handler,
    sigterm_deferred,
    take_pending,
)
from lhcad.tracking.store import (
    PARENT_ROLE,
    ROLE_TAG,
    _abs_dir,
    _client,
    ensure_store,
    process_tags,
    refresh_child_counts,
    tracking_uri,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from mlflow.tracking import MlflowClient

__all__ = [
    "MAX_PARAM_LENGTH",
    "TRUNCATION_MARKER",
    "RunTracker",
    "flatten_config",
    "current_sweep_dir",
    "git_commit",
]

log = logging.getLogger(__name__)

#: Longest param value logged; longer values are cut and end with :data:`TRUNCATION_MARKER`.
MAX_PARAM_LENGTH = 500
TRUNCATION_MARKER = "...[truncated]"

_MAX_KEY_LENGTH = 250  # MLflow's limit for param / metric / tag keys
_MAX_TAG_LENGTH = 8000  # MLflow's limit for tag values
_MAX_ERROR_TAG_LENGTH = 500
_PARAMS_PER_BATCH = 100  # MLflow: at most 100 params (and 100 tags) per log_batch call
_METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _to_container(cfg: Any) -> Any:
    """Plain dicts/lists from an OmegaConf node (resolved where possible); other values as they are."""
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception as exc:  # unresolvable interpolation, e.g. ${hydra:...} outside Hydra
            log.debug("config not resolvable (%s); logging it unresolved", exc)
            return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def flatten_config(cfg: Mapping[str, Any], sep: str = ".") -> dict[str, str]:
    """Flatten nested mappings and lists into ``{"a.b.0": "value"}`` with string values.

    OmegaConf configs are resolved first (unresolved if that fails). Empty containers are kept
    as ``"{}"`` / ``"[]"``; values longer than :data:`MAX_PARAM_LENGTH` characters are cut and
    end with :data:`TRUNCATION_MARKER`.
    """
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        node = _to_container(node)
        if isinstance(node, Mapping):
            items: Any = node.items()
            if not node and prefix:
                out[prefix] = "{}"
        elif isinstance(node, (list, tuple)):
            items = enumerate(node)
            if not node and prefix:
                out[prefix] = "[]"
        else:
            out[prefix] = _truncate(str(node), MAX_PARAM_LENGTH)
            return
        for key, value in items:
            walk(value, f"{prefix}{sep}{key}" if prefix else str(key))

    walk(cfg, "")
    return out


def _sanitize_key(key: str) -> str:
    """Make ``key`` acceptable to MLflow (allowed characters, no empty/relative path parts)."""
    cleaned = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [("_" * len(p) if p in {".", ".."} else p) for p in cleaned.split("/") if p]
    return "/".join(parts)[:_MAX_KEY_LENGTH] or "_"


def git_commit(repo_dir: str | os.PathLike[str] | None = None) -> str | None:
    """Commit hash of ``HEAD`` of the checkout holding ``repo_dir`` (default: this package's source).

    Returns None outside a git checkout, without git, or on any git error.
    """
    out = _git(repo_dir, "rev-parse", "HEAD")
    return out if out and re.fullmatch(r"[0-9a-f]{40,64}", out) else None


def _git_dirty(repo_dir: str | os.PathLike[str] | None = None) -> bool | None:
    """Whether tracked files differ from ``HEAD`` (None if unknown). Takes no index lock."""
    out = _git(repo_dir, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out)


def _git(repo_dir: str | os.PathLike[str] | None, *args: str) -> str | None:
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        res = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("git %s failed: %s", " ".join(args), exc)
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip()


def _default_tags() -> dict[str, str]:
    """Provenance tags that MLflow's fluent API would set (the client API sets none)."""
    tags = {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
        **process_tags(),  # lhcad.host, lhcad.pid, lhcad.proc_start: who owns the run (orphan check)
    }
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        dirty = _git_dirty()
        if dirty is not None:
            tags["lhcad.git_dirty"] = str(dirty).lower()
    return tags


def _str_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {_sanitize_key(k): _truncate(str(v), _MAX_TAG_LENGTH) for k, v in tags.items()}


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _terminate(client: MlflowClient, run_id: str, status: str, attempts: int = 3) -> None:
    """``set_terminated`` with a few retries (sqlite may be busy under many parallel jobs)."""
    for attempt in range(1, attempts + 1):
        try:
            client.set_terminated(run_id, status=status)
            return
        except Exception:
            if attempt == attempts:
                raise
            log.warning("could not mark run %s %s (attempt %d); retrying", run_id, status, attempt)
            time.sleep(attempt)


def _exit_status(exc: BaseException | None) -> str:
    """MLflow run status for a block that ended with ``exc`` (None: success)."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, SystemExit):
        return "FINISHED" if exc.code in (None, 0) else "FAILED"
    if isinstance(exc, Exception):
        return "FAILED"
    return "KILLED"  # KeyboardInterrupt (Terminated included) and other BaseExceptions


def _record_error(
    client: MlflowClient,
    run_id: str,
    exc_type: type[BaseException] | None,
    exc: BaseException,
    tb: TracebackType | None,
) -> None:
    """Tag ``error`` (one line; ``killed_by`` for a signal) and log the traceback as ``error.txt``."""
    try:
        message = " ".join(traceback.format_exception_only(exc_type, exc)[-1].split())
        tags = {"error": _truncate(message, _MAX_ERROR_TAG_LENGTH)}
        if isinstance(exc, Terminated):
            tags["killed_by"] = exc.signal_name
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.log_text(run_id, "".join(traceback.format_exception(exc_type, exc, tb)), "error.txt")
    except Exception:
        log.exception("could not record the error of run %s", run_id)


def current_sweep_dir() -> Path | None:
    """Absolute sweep directory of the current Hydra multirun job (None outside a multirun)."""
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
    return sweep_dir


def _refused_parent(client: MlflowClient, parent_run_id: str) -> str | None:
    """Why a job must not be nested under ``parent_run_id`` (None: it may).

    A multirun parent must still be RUNNING and belong to this job's sweep folder: a stale or
    foreign parent-run-id file in the sweep folder must not put the job under another sweep.
    """
    try:
        parent = client.get_run(parent_run_id)
    except Exception as err:
        return f"no such run in this store ({type(err).__name__})"
    if parent.data.tags.get(ROLE_TAG) != PARENT_ROLE:
        return None
    if parent.info.status != "RUNNING":
        return f"its sweep has ended ({parent.info.status})"
    mine, theirs = current_sweep_dir(), parent.data.tags.get("lhcad.sweep_dir")
    if mine is not None and theirs and Path(theirs) != mine:
        return f"it is the parent of sweep {theirs}, this job belongs to {mine}"
    return None


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------


class RunTracker:
    """Context manager around one MLflow run in the store at ``mlruns_dir``.

    On entry the store and experiment are ensured (runs orphaned by dead processes of this host
    are marked FAILED) and a run is created (with provenance tags, ``mlflow.parentRunId`` when
    ``parent_run_id`` is given and the parent is valid, and ``tags``). On exit the run is
    FINISHED on success, FAILED on an exception (with an ``error`` tag and an ``error.txt``
    traceback artifact) and KILLED on KeyboardInterrupt and on SIGTERM (:class:`Terminated`,
    tag ``killed_by``); exceptions are never swallowed. While the run is active SIGTERM raises
    :class:`Terminated` (main thread; the previous handler is restored on exit). An instance
    may be entered again after it exited: each ``with`` block is a new run.
    """

    def __init__(
        self,
        mlruns_dir: str | os.PathLike[str],
        experiment: str,
        run_name: str | None = None,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self.mlruns_dir = _abs_dir(mlruns_dir)
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags: dict[str, Any] = dict(tags or {})
        self.uri = tracking_uri(self.mlruns_dir)
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._run_id: str | None = None
        self._artifact_uri: str | None = None
        self._active = False
        self._sigterm_token: Any = None
        self._nested_under: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> RunTracker:
        if self._active:
            raise RuntimeError(f"run {self._run_id} is still active; RunTracker is not re-entrant")
        self._sigterm_token = install_sigterm_handler()  # before the run exists: no RUNNING leftover
        try:
            with sigterm_deferred():  # a SIGTERM now waits until the run exists, then ends it
                self._open()
        except BaseException as err:
            restore_sigterm_handler(self._sigterm_token)
            self._sigterm_token = None
            deliver_pending(err)
            raise
        log.info("MLflow run %s (%s) in experiment %r", self._run_id, self.run_name, self.experiment)
        stop = take_pending()
        if stop is not None:
            self.__exit__(Terminated, stop, None)
            raise stop
        return self

    def _open(self) -> None:
        """Ensure the store, check the parent and create the run."""
        self.uri, self.experiment_id = ensure_store(self.mlruns_dir, self.experiment)
        self._client = _client(self.uri)
        tags = _default_tags()
        self._nested_under = None
        if self.parent_run_id:
            refused = _refused_parent(self._client, self.parent_run_id)
            if refused is None:
                tags["mlflow.parentRunId"] = self._nested_under = self.parent_run_id
            else:
                log.warning("not nesting the run under parent run %s: %s", self.parent_run_id, refused)
                tags["lhcad.parent_refused"] = _truncate(f"{self.parent_run_id}: {refused}", _MAX_TAG_LENGTH)
        tags.update(_str_tags(self.tags))
        run = self._client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
        self._run_id = run.info.run_id
        self._artifact_uri = run.info.artifact_uri
        self.run_name = run.info.run_name
        self._active = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not self._active:
            return False
        self._active = False
        try:
            with sigterm_deferred():  # a SIGTERM now waits until the status is written
                self._close(exc_type, exc, tb)
        finally:
            restore_sigterm_handler(self._sigterm_token)
            self._sigterm_token = None
        deliver_pending(exc)
        return False

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Record the error (if any), set the final status and recount the parent's children."""
        status = _exit_status(exc)
        client, run_id = self.client, self.run_id
        if exc is not None and status != "FINISHED":
            _record_error(client, run_id, exc_type, exc, tb)
        if exc is None:
            _terminate(client, run_id, status)
        else:
            try:
                _terminate(client, run_id, status)
            except Exception:  # never mask the original exception
                log.exception("could not mark run %s %s", run_id, status)
        if isinstance(exc, Terminated):
            log.warning("MLflow run %s %s (%s)", run_id, status, exc)
        else:
            log.info("MLflow run %s %s", run_id, status)
        if self._nested_under:
            try:  # a child that ends after its sweep (e.g. on another host) keeps the counts right
                refresh_child_counts(client, self._nested_under)
            except Exception:
                log.debug("could not recount the children of run %s", self._nested_under, exc_info=True)

    # ---- properties ------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """Id of the current (or last) run; raises before the first ``with``."""
        if self._run_id is None:
            raise RuntimeError("RunTracker has no run yet: use it as a context manager")
        return self._run_id

    @property
    def client(self) -> MlflowClient:
        """The ``MlflowClient`` bound to this store."""
        if self._client is None:
            raise RuntimeError("RunTracker has no run yet: use it as a context manager")
        return self._client

    @property
    def artifact_uri(self) -> str:
        """Artifact root of the run (an absolute local path in this store)."""
        self.run_id  # noqa: B018 - raises before the first run
        assert self._artifact_uri is not None
        return self._artifact_uri

    # ---- logging ---------------------------------------------------------------------------

    def log_params(self, cfg: Mapping[str, Any]) -> None:
        """Log ``cfg`` flattened (see :func:`flatten_config`), in batches of at most 100.

        Keys are made MLflow-safe. A key already logged with the same value is skipped; one
        already logged with another value is skipped with a warning (MLflow params are
        immutable and the whole batch would be refused).
        """
        flat = {_sanitize_key(k): v for k, v in flatten_config(cfg).items()}
        existing = self.client.get_run(self.run_id).data.params
        for key in [k for k in flat if k in existing]:
            value = flat.pop(key)
            if existing[key] != value:
                log.warning("param %r already logged as %r; not changing it to %r", key, existing[key], value)
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat.items()]
        for chunk in _chunks(params, _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=list(chunk), synchronous=True)

    def log_config(self, cfg: Mapping[str, Any], artifact_file: str = "config.yaml") -> None:
        """Log ``cfg`` as flattened params and in full as a YAML artifact."""
        self.log_params(cfg)
        self.log_text(_to_yaml(cfg), artifact_file)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (default 0). None values are skipped; NaN is kept."""
        from mlflow.entities import Metric

        ts = _now_ms()
        batch = []
        for key, value in metrics.items():
            if value is None:
                continue
            if hasattr(value, "item"):  # numpy scalars, 1-element arrays / tensors
                value = value.item()
            batch.append(Metric(_sanitize_key(key), float(value), ts, int(step or 0)))
        for chunk in _chunks(batch, _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=list(chunk), synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values converted to strings, cut at MLflow's 8000-character limit)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _str_tags(tags).items()]
        for chunk in _chunks(items, _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=list(chunk), synchronous=True)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` to the artifact ``artifact_file`` (a relative path, e.g. ``"a/b.txt"``)."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str, dpi: int = 100) -> None:
        """Save a matplotlib figure as PNG to ``artifact_file``; the figure is not closed."""
        self._log_via_file(artifact_file, lambda p: fig.savefig(p, format="png", dpi=dpi))

    def log_arrays(self, arrays: Mapping[str, np.ndarray], artifact_file: str) -> None:
        """Save arrays with ``numpy.savez_compressed`` to ``artifact_file`` (``.npz``)."""
        import numpy as np

        def write(path: Path) -> None:
            with open(path, "wb") as fh:  # a file object: savez would append ".npz" to a path
                np.savez_compressed(fh, **{str(k): np.asarray(v) for k, v in arrays.items()})

        self._log_via_file(artifact_file, write)

    def log_torch_state(self, state: Mapping[str, Any], artifact_file: str) -> None:
        """``torch.save`` a mapping (e.g. of ``state_dict``s) to ``artifact_file``."""
        import torch

        self._log_via_file(artifact_file, lambda p: torch.save(dict(state), p))

    def log_file(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a local file (or directory) into the run's artifacts under ``artifact_path``."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def _log_via_file(self, artifact_file: str, write: Callable[[Path], Any]) -> None:
        rel = Path(artifact_file)
        if rel.is_absolute() or ".." in rel.parts or not rel.name:
            raise ValueError(f"artifact_file must be a relative file path, got {artifact_file!r}")
        with tempfile.TemporaryDirectory(prefix="lhcad-artifact-") as tmp:
            local = Path(tmp) / rel.name
            write(local)
            parent = rel.parent.as_posix()
            self.client.log_artifact(self.run_id, str(local), None if parent == "." else parent)


def _to_yaml(cfg: Mapping[str, Any]) -> str:
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        try:
            return OmegaConf.to_yaml(cfg, resolve=True)
        except Exception:
            return OmegaConf.to_yaml(cfg)
    import yaml

    return yaml.safe_dump(_plain(cfg), sort_keys=False)


def _plain(node: Any) -> Any:
    """Mappings/sequences as dicts/lists, other non-YAML scalars as strings."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    if node is None or isinstance(node, (bool, int, str)):
        return node
    if isinstance(node, float):
        return node if math.isfinite(node) else str(node)
    return str(node)
