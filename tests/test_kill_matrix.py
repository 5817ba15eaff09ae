"""Kills: SIGINT, SIGTERM and SIGKILL x {a train.py run, a multirun, an Optuna sweep}.

Each case starts ``train.py`` in its own session (process group), waits until a run is training,
sends the signal to the whole group (as Ctrl-C in a terminal, ``kill`` or SLURM would reach it),
then checks the final state after the next start against the same store:

* no process of the group is left alive;
* no MLflow run is left RUNNING: a run stopped by SIGINT or SIGTERM is KILLED (tag ``killed_by`` or
  ``error``), a run whose process was SIGKILLed is FAILED with ``error=orphaned``;
* no temporary file is left in the working directory or the store;
* an Optuna sweep run again completes its trials with no trial left RUNNING and no parameter set
  repeated.

The cases run concurrently (a thread pool of subprocesses). ``lhcad-generate`` under the same
three signals is covered by tests/test_generate_kill.py (shards, workers, resume commands).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lhcad.tracking import ensure_store
from train_helpers import TRAIN, all_runs

LONG = ["data=tiny", "progress=false", "method=ae", "method.train.epochs=400", "method.train.patience=1000",
        "selection.plots=none", "closure=off"]  # fmt: skip
TARGETS = {
    "run": LONG,
    "multirun": ["-m", *LONG, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "optuna": ["-m", *LONG, "hparams_search=ae_optuna", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.sampler.n_startup_trials=1"],  # fmt: skip
}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
CASES = [(t, s) for t in TARGETS for s in SIGNALS]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LHCAD_HOME"}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


_RUN_LINE = re.compile(r"MLflow run (\w+) \(.*\) in experiment")


def _wait_training(cwd: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until a run is RUNNING and its config is logged (training has started). The store is read
    only once train.py has said it created a run: a client opening a store that is still being
    created would race it on the schema migration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train.py exited early with {proc.returncode}:\n{(cwd / 'train.out').read_text()[-3000:]}")
        if _RUN_LINE.search((cwd / "train.out").read_text(errors="replace")):
            runs = [r for r in all_runs(cwd) if r.info.status == "RUNNING" and "method" in r.data.tags]
            if any((Path(r.info.artifact_uri.removeprefix("file://")) / "config.yaml").is_file() for r in runs):
                time.sleep(1.0)  # into the epochs
                return
        time.sleep(0.5)
    raise AssertionError("no run started training in time")


def _case(root: Path, target: str, name: str) -> dict:
    cwd = root / f"{target}-{name}"
    cwd.mkdir(parents=True)
    with open(cwd / "train.out", "w") as out:
        proc = subprocess.Popen([sys.executable, TRAIN, *TARGETS[target]], cwd=cwd, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_training(cwd, proc)
        os.killpg(proc.pid, SIGNALS[name])
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:  # workers exit after the driver
        time.sleep(0.2)
    result = {"rc": rc, "alive": _group_alive(proc.pid), "cwd": cwd, "output": (cwd / "train.out").read_text()}
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    ensure_store(cwd / "mlruns", "lhcad")  # the next start against the store
    if target == "optuna":
        with open(cwd / "rerun.out", "w") as out:
            quick = [a.replace("epochs=400", "epochs=2") for a in TARGETS[target]]
            result["rerun_rc"] = subprocess.run([sys.executable, TRAIN, *quick],
                                                cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                                timeout=600).returncode  # fmt: skip
    return result


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case: pool.submit(_case, root, *case) for case in CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("target", "name"), CASES)
def test_kill_leaves_nothing_running_and_nothing_behind(outcomes, target, name):
    result = outcomes[(target, name)]
    cwd, output = result["cwd"], result["output"]
    assert not result["alive"], f"processes of the group survived {name}"
    if name != "SIGKILL":
        assert "Traceback" not in output, output[-3000:]
        assert result["rc"] != 0
    runs = all_runs(cwd)
    stopped = [r for r in runs if r.info.status != "FINISHED"]
    assert stopped, "the signal stopped no run"
    for run in runs:
        tags = run.data.tags
        assert run.info.status != "RUNNING", f"{run.info.run_name} left RUNNING after {name}"
        if run.info.status == "KILLED":
            assert name != "SIGKILL" and ("killed_by" in tags or "error" in tags), tags
        elif run.info.status == "FAILED":
            assert tags.get("error") == "orphaned" or name != "SIGKILL", tags  # only a dead process's run
    leftovers = [p for p in cwd.rglob("*") if ".tmp" in p.name and p.is_file()]
    assert not leftovers, leftovers


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIGNALS))
def test_killed_optuna_sweep_completes_on_rerun_without_repeats(outcomes, name):
    import optuna

    result = outcomes[("optuna", name)]
    assert result["rerun_rc"] == 0, (result["cwd"] / "rerun.out").read_text()[-3000:]
    storage = f"sqlite:///{result['cwd'] / 'mlruns' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states, states
    complete = [tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 2 and len(set(complete)) == len(complete)  # no parameter set replayed


_DROPPED_CTRL_C = """
import sys, time
from lhcad.tracking.signals import keep_dropped_interrupts
if sys.argv[1] == "keep":
    keep_dropped_interrupts()
class Finalized:
    def __del__(self):
        raise KeyboardInterrupt  # as when Ctrl-C arrives while a finalizer runs
Finalized()
try:
    time.sleep(3)
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
print("ran on")
"""


@pytest.mark.parametrize("mode", ["keep", "python"])
def test_ctrl_c_landing_in_a_finalizer_is_not_lost(mode):
    """Python prints and drops a KeyboardInterrupt raised in a finalizer (a sweep then runs on as
    if Ctrl-C never came); train.py delivers it again."""
    proc = subprocess.run([sys.executable, "-c", _DROPPED_CTRL_C, mode], capture_output=True, text=True, timeout=60)
    if mode == "keep":
        assert proc.returncode == 130 and "interrupted" in proc.stdout and "Exception ignored" not in proc.stderr
    else:  # what happens without it: the reason for keep_dropped_interrupts
        assert proc.returncode == 0 and "ran on" in proc.stdout and "Exception ignored" in proc.stderr
