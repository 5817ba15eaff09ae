"""Resuming an Optuna sweep (the same ``train.py -m hparams_search=...`` command run again).

Nothing repeated: a resumed study samples no parameter set it already has, while a fresh study with
the same seed reproduces. Nothing left hanging: a trial whose sweeper process was killed ends FAIL
instead of RUNNING forever. Each trial's MLflow run is named after its Optuna trial number.

Real Hydra, real Optuna and MLflow (sqlite) in a temporary working directory; no mocks.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_helpers import TRAIN, all_runs, run_train

# 2000 events, a few epochs: a trial takes seconds; closure and models off (not what is tested here)
SWEEP = (
    "-m", "hparams_search=ae_optuna", "data=tiny", "progress=false", "selection.plots=false",
    "n_events=2000", "closure=off", "tracking.log_models=false",
)
RUN_NAME = "ae-f0.01-s0"  # the default run name of method=ae, signal_frac=0.01, seed=0


def _study(cwd: Path):
    import optuna

    storage = f"sqlite:///{cwd / 'mlruns' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _param_sets(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


def _children(cwd: Path):
    return [r for r in all_runs(cwd) if "mlflow.parentRunId" in r.data.tags]


def _complete(study):
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


# ------------------------------------------------------------------------------- rerun after a finished sweep


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Path:
    """A 2-trial sweep, then the same command again: 2 more trials in the same study."""
    cwd = tmp_path_factory.mktemp("resumed")
    run_train(cwd, *SWEEP, "method.train.epochs=2", "hydra.sweeper.n_trials=2")
    run_train(cwd, *SWEEP, "method.train.epochs=2", "hydra.sweeper.n_trials=2")
    return cwd


@pytest.mark.slow
def test_resumed_study_replays_no_parameter_set(resumed):
    study = _study(resumed)
    assert [t.number for t in _complete(study)] == [0, 1, 2, 3]
    params = _param_sets(_complete(study))
    assert len(set(params)) == 4, f"resumed trials repeat earlier ones: {params}"


@pytest.mark.slow
def test_each_trial_run_is_named_after_its_trial_number(resumed):
    children = _children(resumed)
    assert sorted(r.info.run_name for r in children) == [f"{RUN_NAME}-t{n}" for n in range(4)]
    study = _study(resumed)
    by_name = {r.info.run_name: r for r in children}
    for t in study.trials:  # the run of trial n holds trial n's objective and parameters
        run = by_name[f"{RUN_NAME}-t{t.number}"]
        assert run.data.metrics["val_loss"] == pytest.approx(t.value)
        assert float(run.data.params["method.train.lr"]) == pytest.approx(t.params["method.train.lr"])
        assert run.data.params["trial"] == str(t.number)


@pytest.mark.slow
def test_fresh_study_with_the_same_seed_reproduces(resumed, tmp_path):
    run_train(tmp_path, *SWEEP, "method.train.epochs=2", "hydra.sweeper.n_trials=2")
    assert _param_sets(_study(tmp_path).trials) == _param_sets(_study(resumed).trials[:2])


# --------------------------------------------------------------------------------- rerun after a killed sweep


def _sqlite_rows(path: Path, query: str) -> list[tuple]:
    """Rows of a read-only query on a store another process writes; [] while it does not exist yet."""
    if not path.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(query).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


def _wait_until_trial_runs(proc: subprocess.Popen, cwd: Path, number: int, log: Path,
                           timeout: float = 300) -> None:
    """Until Optuna trial `number` is RUNNING and its job's MLflow run has started (besides the parent)."""
    optuna_db, mlflow_db = cwd / "mlruns" / "optuna.db", cwd / "mlruns" / "mlflow.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before trial {number} was caught running:\n"
                        f"{log.read_text()[-3000:]}")
        trial = _sqlite_rows(optuna_db, f"SELECT state FROM trials WHERE number = {number}")
        running = _sqlite_rows(mlflow_db, "SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'")
        if trial == [("RUNNING",)] and running and running[0][0] >= 2:
            return
        time.sleep(0.05)
    pytest.fail(f"trial {number} not running after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop_sweep_during_trial(cwd: Path, args: tuple[str, ...], number: int, sig: signal.Signals) -> None:
    """Start the sweep and send `sig` to its process group while trial `number` runs."""
    log = cwd / f"sweep_{sig.name}.log"
    env = {k: v for k, v in os.environ.items() if k != "LHCAD_HOME"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, TRAIN, *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_until_trial_runs(proc, cwd, number, log)
            os.killpg(proc.pid, sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.slow
def test_killed_sweep_resumes_with_the_killed_trial_failed_and_nothing_replayed(tmp_path):
    args = (*SWEEP, "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
            "method.train.epochs=4")
    _stop_sweep_during_trial(tmp_path, args, 1, signal.SIGKILL)
    assert [t.state.name for t in _study(tmp_path).trials] == ["COMPLETE", "RUNNING"]  # killed during trial 1

    proc = run_train(tmp_path, *args)  # the same command again
    study = _study(tmp_path)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE", 4: "COMPLETE"}
    params = _param_sets(_complete(study))
    assert len(set(params)) == len(params) == 4, f"resumed trials repeat earlier ones: {params}"
    children = {r.info.run_name: r.info.status for r in _children(tmp_path)}
    finished = sorted(name for name, status in children.items() if status == "FINISHED")
    assert finished == [f"{RUN_NAME}-t{n}" for n in (0, 2, 3, 4)]
    assert f"{RUN_NAME}-t1" in children  # the killed trial's run (its status is the tracker's business)
    assert "trial 1 was RUNNING" in proc.stdout + proc.stderr  # the resume says which trial it failed


@pytest.mark.slow
def test_interrupted_sweep_fails_its_running_trial(tmp_path):
    args = (*SWEEP, "hydra.sweeper.n_trials=3", "method.train.epochs=4")
    _stop_sweep_during_trial(tmp_path, args, 1, signal.SIGINT)  # Ctrl-C
    assert [t.state.name for t in _study(tmp_path).trials] == ["COMPLETE", "FAIL"]


# ------------------------------------------------------------------------------------------------- the pieces


def test_resume_seed_keeps_a_fresh_study_and_differs_per_resume_point():
    from lhcad.tracking.optuna_sweeper import resume_seed

    assert resume_seed(7, 0) == 7  # fresh study: the configured seed, as before
    assert resume_seed(None, 5) is None  # unseeded sampler stays unseeded
    seeds = {resume_seed(7, n) for n in range(1, 200)}
    assert len(seeds) == 199 and 7 not in seeds
    assert resume_seed(7, 3) == resume_seed(7, 3)  # deterministic
    assert all(0 <= s < 2**32 for s in seeds)  # valid numpy seeds


def test_only_trials_of_a_gone_sweeper_process_are_failed(tmp_path):
    import optuna

    from lhcad.tracking.optuna_sweeper import OWNER_ATTR, fail_orphaned_trials, process_identity

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    me = process_identity()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    owners = {
        "dead": me | {"pid": int(dead.stdout), "start": None},  # exited (and reaped) process on this host
        "reused_pid": me | {"start": (me["start"] or 0) + 1},  # this pid, but a different process start
        "alive": me,  # this very process
        "elsewhere": me | {"host": socket.gethostname() + "-other"},  # cannot be checked from here
        "legacy": None,  # no owner recorded (a sweeper before this fix)
    }
    numbers = {}
    for label, owner in owners.items():
        trial = study.ask()
        if owner is not None:
            trial.set_user_attr(OWNER_ATTR, owner)
        numbers[label] = trial.number
    done = study.ask()
    done.set_user_attr(OWNER_ATTR, owners["dead"])
    study.tell(done, 1.0)

    failed = fail_orphaned_trials(study)

    expected_failed = {"dead"} | ({"reused_pid"} if me["start"] is not None else set())
    assert sorted(failed) == sorted(numbers[k] for k in expected_failed)
    states = {t.number: t.state.name for t in study.trials}
    for label, n in numbers.items():
        assert states[n] == ("FAIL" if label in expected_failed else "RUNNING"), label
    assert states[done.number] == "COMPLETE"
    assert fail_orphaned_trials(study) == []  # idempotent
