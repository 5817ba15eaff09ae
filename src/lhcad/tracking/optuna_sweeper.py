"""Resumable Optuna sweeps: Hydra's Optuna sweeper, made safe to run again on a stored study.

``conf/hparams_search/*.yaml`` set ``hydra.sweeper._target_`` to :class:`ResumableOptunaSweeper`
(registered with Hydra by :func:`register_sweeper`, which ``train.py`` calls). Running the same
sweep command again continues the study in ``mlruns/optuna.db``; on top of the stock sweeper:

- *Nothing replayed.* The sampler seed of a session is :func:`resume_seed` (``seed``, number of
  trials already in the study): the configured seed for a fresh study (reproducible as before), a
  seed derived from it and the resume point otherwise, so a resumed session does not redraw the
  start-up sequence of an earlier one.
- *Nothing left RUNNING.* Each trial records the sweeper process that owns it (user attr
  :data:`OWNER_ATTR`: host, boot id, pid namespace, pid, process start time). At the start of a
  session, RUNNING trials whose owner process is gone (killed sweep) are marked FAIL
  (:func:`fail_orphaned_trials`); trials of live processes, other hosts, or with no owner recorded
  are left alone. A sweep interrupted by an exception (Ctrl-C) fails its own in-flight trials.
  Optuna's heartbeat does not help here: it is recorded only by ``Study.optimize``, and the Hydra
  sweeper uses ``ask``/``tell``.
- *Runs named after trials.* Each job gets the override ``trial=<Optuna trial number>``; the
  pipeline appends ``-t<n>`` to the default run name.

Optuna is imported lazily: importing this module (every ``train.py`` start) does not import it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.plugins.sweeper import Sweeper

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from hydra.types import HydraContext, TaskFunction
    from omegaconf import DictConfig

__all__ = [
    "OWNER_ATTR",
    "ResumableOptunaSweeper",
    "fail_orphaned_trials",
    "process_identity",
    "register_sweeper",
    "resume_seed",
]

log = logging.getLogger(__name__)

#: Trial user attribute naming the sweeper process that asked for the trial.
OWNER_ATTR = "lhcad.sweeper_process"

#: The trial-number override each job gets (top-level key ``trial`` of conf/config.yaml).
TRIAL_KEY = "trial"

_SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


def resume_seed(seed: int | None, n_trials: int) -> int | None:
    """Sampler seed of a session that starts on a study holding ``n_trials`` trials.

    ``seed`` itself for a fresh study; otherwise a 32-bit seed derived from (``seed``, ``n_trials``),
    different for every resume point. None (an unseeded sampler) stays None.
    """
    if seed is None or n_trials == 0:
        return seed
    digest = hashlib.sha256(f"lhcad-optuna-resume:{seed}:{n_trials}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ---------------------------------------------------------------------------------------------- trial owners


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc (None elsewhere)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], int(fields[19])


def process_identity() -> dict[str, Any]:
    """Who this process is, precisely enough to tell later whether it is still alive."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    stat = _proc_stat(os.getpid())
    return {
        "host": socket.gethostname(),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pid_ns": pid_ns,
        "pid": os.getpid(),
        "start": stat[1] if stat else None,
    }


def _owner_alive(owner: Mapping[str, Any], me: Mapping[str, Any]) -> bool | None:
    """Whether the process ``owner`` (a :func:`process_identity`) is still running; None when it
    cannot be told from here (another host or pid namespace)."""
    if owner.get("host") != me["host"]:
        return None
    if owner.get("boot") and me["boot"] and owner["boot"] != me["boot"]:
        return False  # this host rebooted since
    if owner.get("pid_ns") != me["pid_ns"]:
        return None
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state == "Z":
        return False  # exited, not yet reaped
    return owner.get("start") is None or start == owner["start"]  # else the pid was reused


def _fail(study: optuna.Study, number: int) -> bool:
    """Mark a RUNNING trial FAIL; False if it finished meanwhile (another process told it)."""
    import optuna

    try:
        frozen = study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return frozen.state == optuna.trial.TrialState.FAIL


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose sweeper process (:data:`OWNER_ATTR`) is gone; returns
    their numbers. Trials of live processes, of other hosts and without an owner are left alone."""
    import optuna

    me = process_identity()
    failed: list[int] = []
    unchecked: dict[str, list[int]] = {"another host or pid namespace": [], "no sweeper process recorded": []}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR)
        if not isinstance(owner, Mapping):
            unchecked["no sweeper process recorded"].append(trial.number)
            continue
        alive = _owner_alive(owner, me)
        if alive is None:
            unchecked["another host or pid namespace"].append(trial.number)
        elif not alive and _fail(study, trial.number):
            failed.append(trial.number)
            log.warning(
                "study %s: trial %d was RUNNING but its sweeper (pid %s on %s) is gone: marked FAIL",
                study.study_name, trial.number, owner.get("pid"), owner.get("host"),
            )
    for why, numbers in unchecked.items():
        if numbers:
            log.info("study %s: RUNNING trials %s left as they are (%s)", study.study_name, numbers, why)
    return failed


# ---------------------------------------------------------------------------------------------- the sweeper


def _existing_study(storage: Any, study_name: str) -> optuna.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None


@functools.cache
def _impl_class() -> type:
    """:class:`ResumableOptunaSweeper`'s engine: the plugin's ``OptunaSweeperImpl`` (imports Optuna)
    with the resume steps around ``sweep`` and the owner / trial number added per trial."""
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    class ResumableSweeperImpl(OptunaSweeperImpl):
        def __init__(self, sampler_config: DictConfig, *args: Any) -> None:
            self.sampler_config = sampler_config
            super().__init__(instantiate(sampler_config, _execution_whitelist_=_SAMPLER_WHITELIST), *args)
            self.asked: list[optuna.Trial] = []

        def sweep(self, arguments: list[str]) -> None:
            self._prepare_resume()
            try:
                super().sweep(arguments)
            except BaseException:
                self._fail_in_flight()
                raise

        def _prepare_resume(self) -> None:
            """Fail orphaned trials of the stored study and reseed the sampler past its trials."""
            if self.storage is None or self.study_name is None:
                return  # a new study every time: nothing to resume
            study = _existing_study(self.storage, self.study_name)
            if study is None:
                return
            fail_orphaned_trials(study)
            n_trials = len(study.get_trials(deepcopy=False))
            seed = self.sampler_config.get("seed")
            new_seed = resume_seed(seed, n_trials)
            if new_seed != seed:
                self.sampler = instantiate(
                    self.sampler_config, seed=new_seed, _execution_whitelist_=_SAMPLER_WHITELIST
                )
                log.info("study %s resumes after %d trials: sampler seed %s (from seed %s)",
                         self.study_name, n_trials, new_seed, seed)

        def _fail_in_flight(self) -> None:
            """After an exception (Ctrl-C) in the sweep: this session's trials still RUNNING end FAIL."""
            import optuna

            if not self.asked:
                return
            try:
                study = self.asked[0].study
                states = (optuna.trial.TrialState.RUNNING,)
                running = {t.number for t in study.get_trials(deepcopy=False, states=states)}
                for number in (t.number for t in self.asked if t.number in running):
                    if _fail(study, number):
                        log.warning("study %s: trial %d interrupted: marked FAIL", study.study_name, number)
            except Exception as err:  # noqa: BLE001 - the original error matters more
                log.warning("could not mark the interrupted trials FAIL: %s", err)

        def _configure_trials(self, trials: list[optuna.Trial], *args: Any) -> Sequence[Sequence[str]]:
            owner = process_identity()
            for trial in trials:
                trial.set_user_attr(OWNER_ATTR, owner)
            self.asked.extend(trials)
            overrides = super()._configure_trials(trials, *args)
            return [(*o, f"{TRIAL_KEY}={t.number}") for o, t in zip(overrides, trials, strict=True)]

    return ResumableSweeperImpl


class ResumableOptunaSweeper(Sweeper):
    """Hydra's Optuna sweeper (same settings as ``hydra/sweeper: optuna``) that resumes a stored
    study without replaying parameter sets, fails the trials a killed sweep left RUNNING, and passes
    each job its trial number as ``trial=<n>`` (see the module docstring)."""

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
    ) -> None:
        self.sweeper = _impl_class()(
            sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
            custom_search_space, params,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Hydra's sweeper setup (launcher, sweep directory)."""
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        """Resume or create the study and run ``n_trials`` more trials."""
        return self.sweeper.sweep(arguments)


def register_sweeper() -> None:
    """Make :class:`ResumableOptunaSweeper` known to Hydra (its plugins are discovered only under
    the ``hydra_plugins`` namespace); call before the Hydra app runs."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(ResumableOptunaSweeper)
