"""One worker of a shared Optuna study, without the batch barrier of Hydra's Optuna sweeper.

Hydra's Optuna sweeper asks ``n_jobs`` trials, waits for the whole batch, then asks again. A worker
(:class:`OptunaWorkerSweeper`, started by ``lhcad-sweep``, or by hand as one ``train.py -m`` per
worker, docs/cluster.md) asks one trial as soon as its previous one ends; N workers, on one machine
or N SLURM jobs, share one study in an RDB storage (PostgreSQL with ``tracking=postgres``), whose
transactions give every trial its own number and parameters. The same search space, sampler and
objective as ``hparams_search=*``:

- ``n_trials`` is the study's target: workers stop once the study has that many COMPLETE trials
  (a rerun of a finished study does nothing; a larger target continues it). A trial asked when
  the target is already reached by finished and running trials of lower numbers is PRUNED unrun.
- *Killed workers.* Trials run inside ``study.optimize`` with Optuna's heartbeat
  (``heartbeat_s``); a trial whose worker died (SIGKILL, OOM, node failure) is marked FAIL by
  the next worker that asks for a trial once ``grace_s`` has passed, and, with ``retries`` > 0,
  run again with the same parameters as a new trial (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`;
  ``retries: 0`` skips it). Its MLflow run is marked FAILED (orphaned) by the next run on that host.
- *Failing trials* (the job raised) are FAIL; a worker stops after more than
  ``max_failure_rate * n_trials`` of its own (at least one).
- Workers draw from differently seeded samplers (seed, worker index, worker process, trials
  already in the study): no two replay the same start-up sequence, also across machines; a worker
  is therefore not reproducible from the seed alone. TPE's ``constant_liar`` is on.
- Each job runs as in any sweep (its own folder ``<sweep dir>/<trial number>``, nested under the
  worker's MLflow parent run, run name ``-t<trial>``), with the trial's owner recorded
  (:data:`~lhcad.tracking.optuna_sweeper.OWNER_ATTR`).

Worker settings are the sweeper key ``worker`` (``+hydra.sweeper.worker={index: 0, ...}``, see
:class:`WorkerSettings`). Registered with Hydra through the ``hydra.plugins`` entry point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hydra.plugins.sweeper import Sweeper

from lhcad.tracking.optuna_sweeper import _SAMPLER_WHITELIST, _impl_class, process_identity

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from hydra.types import HydraContext, TaskFunction
    from omegaconf import DictConfig

__all__ = ["OptunaWorkerSweeper", "WorkerSettings", "open_study", "worker_seed"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """``hydra.sweeper.worker``: this worker's index (seeds its sampler), Optuna's heartbeat
    interval and grace period (seconds), retries of a trial whose worker died (0: skip it), and
    how often a worker that waits for others' last trials looks again (seconds)."""

    index: int = 0
    heartbeat_s: int = 30
    grace_s: int = 120
    retries: int = 1
    poll_s: float = 5.0


def worker_seed(seed: int | None, index: int, n_trials: int, process: str = "") -> int | None:
    """Sampler seed of worker ``index`` of process ``process`` (host, pid, start time) joining a
    study of ``n_trials`` trials. The process enters because workers of separate ``lhcad-sweep``
    calls (SLURM array tasks) share indices and may start on the same trial count. None stays None."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"lhcad-optuna-worker:{seed}:{index}:{n_trials}:{process}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_study(
    url: str,
    study_name: str,
    directions: list[str],
    settings: WorkerSettings | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    attempts: int = 5,
) -> optuna.Study:
    """Create or load ``study_name`` in the RDB storage ``url`` (with the heartbeat of
    ``settings``). Retried a few times: workers starting together on a fresh database race on
    creating Optuna's tables and the study."""
    import random

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs: dict[str, Any] = {}
    with _quiet_experimental():
        if settings is not None:
            kwargs = {"heartbeat_interval": settings.heartbeat_s, "grace_period": settings.grace_s}
            if settings.retries > 0:
                kwargs["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback(max_retry=settings.retries)
    for attempt in range(1, attempts + 1):
        try:
            with _quiet_experimental():
                storage = RDBStorage(url, **kwargs)
            return optuna.create_study(
                study_name=study_name, storage=storage, sampler=sampler, directions=directions, load_if_exists=True
            )
        except Exception as err:  # noqa: BLE001 - a concurrent creator; the last attempt re-raises
            if attempt == attempts:
                raise
            log.info("opening study %s failed (%s); retrying", study_name, type(err).__name__)
            time.sleep(random.uniform(0.2, 1.0) * attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Optuna's heartbeat API is marked experimental (since v2.8); no warning per use."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@functools.cache
def _worker_impl_class() -> type:
    """The worker engine: lhcad's resumable sweeper impl (owner attribute, ``trial=<n>`` per job)
    with ``sweep`` replaced by the worker loop."""
    import optuna
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.trial import TrialState

    class WorkerSweeperImpl(_impl_class()):  # type: ignore[misc]
        def __init__(self, worker: WorkerSettings, sampler_config: DictConfig, *args: Any) -> None:
            super().__init__(sampler_config, *args)
            self.worker = worker

        def sweep(self, arguments: list[str]) -> None:
            if not self.storage or not self.study_name:
                raise ValueError("an Optuna worker needs hydra.sweeper.storage and hydra.sweeper.study_name")
            self._process_searchspace_config()
            space, fixed, fixed_overrides = create_params_from_overrides(
                self._parse_sweeper_params_config() + list(arguments)
            )
            for name in fixed:
                space.pop(name, None)
            directions = self._get_directions()
            study = open_study(str(self.storage), self.study_name, directions, self.worker)
            study.sampler = self._sampler_for(len(study.get_trials(deepcopy=False)))
            target, w = self.n_trials, self.worker
            allowed_failures = max(1, int(self.max_failure_rate * target))
            log.info("Optuna worker %d on study %s (%s): %d COMPLETE trials wanted", w.index, study.study_name,
                     _redacted(str(self.storage)), target)

            def objective(trial: optuna.Trial) -> float:
                ahead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                         if t.number < trial.number]
                if len(ahead) >= target:
                    raise optuna.TrialPruned(f"surplus: {target} trials are done or running")
                overrides = self._configure_trials([trial], space, fixed, fixed_overrides)
                (ret,) = self.launcher.launch(overrides, initial_job_idx=trial.number)
                return float(ret.return_value)  # a failed job raises its exception: the trial is FAIL

            ended: list[optuna.trial.FrozenTrial] = []
            failures = 0
            while True:
                with _quiet_experimental():
                    optuna.storages.fail_stale_trials(study)  # dead workers' trials: FAIL (+ retry copies)
                states = Counter(t.state for t in study.get_trials(deepcopy=False))
                if states[TrialState.COMPLETE] >= target:
                    break
                if states[TrialState.COMPLETE] + states[TrialState.RUNNING] >= target and not states[TrialState.WAITING]:
                    time.sleep(w.poll_s)  # the last trials run elsewhere; one may still fail
                    continue
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda s, t: ended.append(t)])
                if ended and ended[-1].state == TrialState.FAIL:
                    failures += 1
                    if failures > allowed_failures:
                        raise RuntimeError(
                            f"Optuna worker {w.index}: {failures} of its trials failed (allowed: "
                            f"{allowed_failures} = max(1, max_failure_rate x n_trials)); see the jobs' logs"
                        )
            states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
            mine = Counter(t.state.name for t in ended)
            log.info("Optuna worker %d done: study %s has %s; this worker ran %s", w.index, study.study_name,
                     dict(states), dict(mine))

        def _sampler_for(self, n_trials: int) -> optuna.samplers.BaseSampler:
            """The configured sampler, seeded for this worker; TPE with ``constant_liar``."""
            me = process_identity()
            process = f"{me['host']}:{me['boot']}:{me['pid']}:{me['start']}"
            seed = worker_seed(self.sampler_config.get("seed"), self.worker.index, n_trials, process)
            extra: dict[str, Any] = {"seed": seed}
            if "constant_liar" in self.sampler_config:
                extra["constant_liar"] = True  # concurrent workers: running trials count as bad guesses
            return instantiate(self.sampler_config, **extra, _execution_whitelist_=_SAMPLER_WHITELIST)

    return WorkerSweeperImpl


def _redacted(url: str) -> str:
    from lhcad.tracking.store import redact_uri

    return redact_uri(url)


class OptunaWorkerSweeper(Sweeper):
    """One worker of a shared Optuna study (module docstring): the settings of ``hydra/sweeper:
    optuna`` plus ``worker`` (:class:`WorkerSettings`); ``n_trials`` is the study's target."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        worker: Any = None,
    ) -> None:
        from omegaconf import OmegaConf

        settings = OmegaConf.to_container(worker, resolve=True) if OmegaConf.is_config(worker) else worker
        self.sweeper = _worker_impl_class()(
            WorkerSettings(**(settings or {})), sampler, direction, storage, study_name, n_trials, n_jobs,
            max_failure_rate, custom_search_space, params,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Hydra's sweeper setup (launcher, sweep directory)."""
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study has ``n_trials`` COMPLETE ones."""
        return self.sweeper.sweep(arguments)
