"""SLURM through Hydra's submitit launcher: ``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml).

:class:`SlurmLauncher` is the plugin's launcher (each batch of a multirun or sweep is one SLURM job
array; every job unpickles the sweep's Hydra state and runs ``train.py``'s task, with the job's
``on_job_start`` callbacks, on a node) with its own wait for the jobs, so that one failed job never
stops the others:

- Every job of the batch is waited for. A job whose task raised comes back as Hydra's FAILED
  ``JobReturn`` (as under joblib); a job that ended without a result (time limit, out of memory,
  ``scancel``, node failure, ``sys.exit``) becomes a FAILED ``JobReturn`` holding a
  :class:`SlurmJobFailed` that names its SLURM state. Each failure is logged with the job's SLURM
  log file, and the sweeper then reports it as it does under joblib (Optuna: the trial is FAIL).
- Job states come from ``squeue`` / ``scontrol`` and the result files, not ``sacct``: clusters
  without accounting (slurmdbd) work too.
- MLflow runs left RUNNING by jobs that died without a result (SIGKILL after the time limit, OOM)
  are marked FAILED (``error=orphaned``) once the batch is over, with the failed jobs' logs.
- Ctrl-C or SIGTERM of the sweeping process cancels the batch's job array (``scancel``).

Jobs find the parent run through ``<sweep dir>/mlflow_parent_run_id`` and the store through
``tracking.*`` of their config, exactly as under joblib: the sweep directory (``hydra.sweep.dir``,
which holds the id file and ``.submitit/`` with the pickles and logs) and the venv must be on a file
system every node mounts; the store must be reachable from the nodes (``tracking=postgres`` or
``tracking=server``; a sqlite file on NFS is not safe). docs/cluster.md has the details.

Registered with Hydra through the ``hydra.plugins`` entry point in pyproject.toml.
"""

from __future__ import annotations

import getpass
import logging
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
from omegaconf import OmegaConf

if TYPE_CHECKING:  # pragma: no cover
    import submitit

__all__ = ["SlurmJobFailed", "SlurmLauncher"]

log = logging.getLogger(__name__)

#: SLURM states after which no result file can appear: fail the job at once.
_NO_RESULT_STATES = frozenset(
    {"TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"}
)
#: Seconds a job that left the queue COMPLETED / FAILED (or unknown) gets for its result file to
#: show up (network file systems cache directory listings). ``LHCAD_SLURM_RESULT_GRACE_S`` overrides.
RESULT_GRACE_S = 30.0
_POLL_S = 1.0  # seconds between looks at the result files
_MAX_SQUEUE_S = 30.0  # longest interval between squeue calls


class SlurmJobFailed(RuntimeError):
    """A SLURM job that ended without a result (killed, timed out, out of memory, exited)."""


def _result_grace() -> float:
    try:
        return float(os.environ.get("LHCAD_SLURM_RESULT_GRACE_S", RESULT_GRACE_S))
    except ValueError:
        return RESULT_GRACE_S


def _squeue_ids() -> set[str] | None:
    """Ids (``<array>_<task>`` for array tasks) of this user's jobs in the queue; None if squeue failed."""
    cmd = ["squeue", "--noheader", "--array", "--format=%i", "--user", getpass.getuser()]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("%s failed (%s); the SLURM jobs count as queued", shlex.join(cmd), err)
        return None
    return {line.strip() for line in out.splitlines() if line.strip()}


def _scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` fields of a finished job (empty once SLURM forgot it, MinJobAge)."""
    try:
        out = subprocess.run(
            ["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return {k: fields[k] for k in ("JobState", "Reason", "ExitCode", "NodeList") if k in fields}


def _scancel(array_id: str) -> None:
    """Cancel a job array (its running jobs get SIGTERM: their MLflow runs end KILLED)."""
    try:
        subprocess.run(["scancel", array_id], capture_output=True, timeout=60, check=True)
        log.warning("cancelled SLURM job array %s", array_id)
    except (OSError, subprocess.SubprocessError) as err:
        log.error("could not cancel SLURM job array %s (%s): cancel it with `scancel %s`", array_id, err, array_id)


class SlurmLauncher(_SubmititSlurmLauncher):
    """Hydra's submitit SLURM launcher that waits for every job, reports each failed one with its
    SLURM log and never lets one failure stop the others (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """The job, on its node: SIGTERM (``scancel``, the time limit, preemption) ends its MLflow run
        KILLED through RunTracker's handler. submitit ignores SIGTERM (it requeues on SIGUSR2), and
        RunTracker leaves another handler alone, so the default action is put back first."""
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the batch as one job array and wait for all of it."""
        jobs = self._submit(job_overrides, initial_job_idx)
        log.info("submitted SLURM job array %s (%d jobs)", jobs[0].job_id.split("_")[0], len(jobs))
        try:
            returns = self._wait(jobs, job_overrides, initial_job_idx)
        except BaseException:  # Ctrl-C / SIGTERM of the sweep: its jobs must not run on unattended
            self._cancel(jobs)
            raise
        failed = [(i, r) for i, r in enumerate(returns) if r.status != JobStatus.COMPLETED]
        if failed:
            log.error(
                "%d of %d SLURM jobs failed; their logs:\n%s",
                len(failed), len(returns),
                "\n".join(f"  #{initial_job_idx + i}: {jobs[i].paths.stderr}" for i, _ in failed),
            )
        return returns

    # the plugin's launch() up to the submission (hydra-submitit-launcher 1.4.0rc3)
    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[submitit.Job[Any]]:
        import submitit

        assert self.config is not None
        assert len(job_overrides) > 0
        params = self.params
        specific_init_keys = {"max_num_timeout", "python"}
        init_params = {"folder": params["submitit_folder"]}
        init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k in specific_init_keys})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in baseparams else f"{self._EXECUTOR}_{k}": v
                for k, v in params.items()
                if k not in specific_init_keys | {"submitit_folder"}
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return executor.map_array(self, *zip(*job_params))

    def _wait(
        self, jobs: list[submitit.Job[Any]], job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        """Poll until every job has a result or has left the queue without one: result files every
        second (a stat each), ``squeue`` less and less often (every 2 s at first, then up to 30 s)."""
        returns: list[JobReturn | None] = [None] * len(jobs)
        left_queue: dict[int, float] = {}
        grace, squeue_every, next_squeue = _result_grace(), 2.0, time.monotonic() + 2.0
        while True:
            for i, job in enumerate(jobs):
                if returns[i] is None and job.paths.result_pickle.exists():
                    returns[i] = self._collect(job, list(job_overrides[i]), initial_job_idx + i)
            pending = [i for i, r in enumerate(returns) if r is None]
            if not pending:
                break
            if time.monotonic() >= next_squeue or left_queue:
                queued = _squeue_ids()
                squeue_every = min(squeue_every * 1.5, _MAX_SQUEUE_S)
                next_squeue = time.monotonic() + squeue_every
                for i in pending if queued is not None else []:
                    job = jobs[i]
                    if job.job_id in queued:
                        continue
                    state = _scontrol_job(job.job_id)
                    since = left_queue.setdefault(i, time.monotonic())
                    if state.get("JobState") in _NO_RESULT_STATES or time.monotonic() - since > grace:
                        returns[i] = self._no_result(job, list(job_overrides[i]), initial_job_idx + i, state)
                        left_queue.pop(i)
            time.sleep(_POLL_S)
        done = [r for r in returns if r is not None]
        failed = [
            f"#{initial_job_idx + i} SLURM {jobs[i].job_id} ({jobs[i].paths.stderr})"
            for i, r in enumerate(done)
            if isinstance(r._return_value, SlurmJobFailed)
        ]
        if failed:
            self._fail_leftover_runs("its SLURM job ended without closing the run; jobs that did: " + "; ".join(failed))
        return done

    def _cancel(self, jobs: list[submitit.Job[Any]]) -> None:
        """Cancel the batch, wait (at most a minute) until its jobs are gone, mark runs they left
        RUNNING FAILED; a second Ctrl-C stops the wait."""
        array_id = jobs[0].job_id.split("_")[0]
        _scancel(array_id)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                queued = _squeue_ids()
                if queued is not None and not any(j.job_id in queued for j in jobs):
                    break
                time.sleep(1)
            self._fail_leftover_runs(f"its SLURM job array {array_id} was cancelled when the sweep was stopped")
        except BaseException:  # noqa: BLE001 - the first interruption is what propagates
            log.warning("stopped waiting for the cancelled SLURM jobs of array %s", array_id)

    def _collect(self, job: submitit.Job[Any], overrides: list[str], idx: int) -> JobReturn:
        """The JobReturn of a job with a result file (a FAILED one names its SLURM log)."""
        try:
            ret = job.results()[0]
        except Exception as err:  # the job's Python raised outside Hydra's run_job
            return self._failed(job, overrides, idx, err)
        if ret.status == JobStatus.FAILED:
            err = ret._return_value
            log.error("job #%d (SLURM %s) failed: %s; log: %s", idx, job.job_id, err, job.paths.stderr)
            if isinstance(err, BaseException):
                err.add_note(f"SLURM job {job.job_id}, log: {job.paths.stderr}")
        return ret

    def _no_result(self, job: submitit.Job[Any], overrides: list[str], idx: int, state: dict[str, str]) -> JobReturn:
        """A FAILED JobReturn for a job that left the queue without a result."""
        desc = ", ".join(f"{k}={v}" for k, v in state.items()) or "state unknown (no longer in scontrol)"
        err = SlurmJobFailed(f"SLURM job {job.job_id} ended without a result ({desc}); log: {job.paths.stderr}")
        return self._failed(job, overrides, idx, err)

    def _failed(self, job: submitit.Job[Any], overrides: list[str], idx: int, err: BaseException) -> JobReturn:
        where = "" if str(job.paths.stderr) in str(err) else f"; log: {job.paths.stderr}"
        log.error("job #%d (SLURM %s) failed: %s%s", idx, job.job_id, err, where)
        return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=err, task_name="train")

    def _fail_leftover_runs(self, detail: str) -> None:
        """Mark FAILED (``error=orphaned``, ``error_detail``) the sweep's MLflow runs still RUNNING
        once every job of the batch has ended: their jobs died without closing them."""
        from lhcad.tracking.multirun import PARENT_RUN_ID_FILE
        from lhcad.tracking.store import ORPHANED, _client, tracking_uri

        assert self.config is not None
        id_file = Path(str(self.config.hydra.sweep.dir)) / PARENT_RUN_ID_FILE
        mlruns_dir = OmegaConf.select(self.config, "tracking.mlruns_dir", default=None)
        if not id_file.is_file() or not mlruns_dir:
            return
        from mlflow.entities import RunTag

        try:
            parent_id = id_file.read_text().strip()
            client = _client(tracking_uri(str(mlruns_dir)))
            exp_id = client.get_run(parent_id).info.experiment_id
            leftover = client.search_runs(
                [exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'"
            )
            for run in leftover:
                tags = [RunTag("error", ORPHANED), RunTag("error_detail", detail[:7900])]
                client.log_batch(run.info.run_id, tags=tags, synchronous=True)
                client.set_terminated(run.info.run_id, status="FAILED")
                log.warning("MLflow run %s (%s) marked FAILED: %s", run.info.run_id, run.info.run_name, detail)
        except Exception:  # never hide the jobs' own results behind this
            log.warning("could not mark the MLflow runs of the failed SLURM jobs FAILED", exc_info=True)
