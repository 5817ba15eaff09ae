"""Kills, orphans and collisions: what a run leaves behind when its process is ended from outside,
and that runs / sweeps started at the same moment never share a folder or a parent run.

Real `train.py` processes (data=tiny) and real MLflow sqlite stores in tmp_path; no mocking.
Independent subprocess cases of one test run concurrently.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from lhcad.tracking import PARENT_RUN_ID_FILE, MultirunParentRun, RunTracker, ensure_store, tracking_uri
from train_helpers import TRAIN

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"),
]

_BASE = [
    "data=tiny", "progress=false", "selection.plots=false", "closure=off", "tracking.log_models=false", "method=ae"
]
LONG = [*_BASE, "method.train.epochs=100000", "method.train.patience=100000"]  # trains until it is stopped
SHORT = [*_BASE, "n_events=3000", "method.train.epochs=1"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
_RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32}) \((.*?)\) in experiment")


def _client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cwd / "mlruns"))


def _all_runs(cwd: Path) -> list:
    c = _client(cwd)
    return list(c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LHCAD_HOME", "HYDRA_FULL_ERROR")}


class Proc:
    """A `train.py` process in its own session (so that it and its workers can be cleaned up)."""

    def __init__(self, cwd: Path, argv: list[str], name: str = "train") -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.cwd, self.log = cwd, cwd / f"{name}.out"
        with open(self.log, "w") as fh:
            self.p = subprocess.Popen(
                argv, cwd=cwd, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    @classmethod
    def train(cls, cwd: Path, *overrides: str, name: str = "train") -> Proc:
        return cls(cwd, [sys.executable, TRAIN, *overrides], name)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str], count: int = 1, timeout: float = 120) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in the output, waiting for them."""
        deadline = time.monotonic() + timeout
        while True:
            found = list(pattern.finditer(self.output()))
            if len(found) >= count:
                return found[:count]
            if self.p.poll() is not None or time.monotonic() > deadline:
                rc = self.p.poll()
                raise AssertionError(f"no {pattern.pattern!r} x{count} (rc {rc}):\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def ready(self, n_runs: int) -> bool:
        """Whether ``n_runs`` runs of this process are RUNNING with their config logged (no waiting)."""
        found = _RUN_LINE.findall(self.output())
        if self.p.poll() is not None:
            raise AssertionError(f"exited with {self.p.returncode}:\n{self.output()[-4000:]}")
        if len(found) < n_runs:
            return False
        c = _client(self.cwd)
        for run_id, _ in found[:n_runs]:
            run = c.get_run(run_id)
            if run.info.status != "RUNNING" or not (_artifact_path(run) / "config.yaml").is_file():
                return False
        return True

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.output()[-4000:]}") from None

    def cleanup(self) -> None:
        """SIGKILL the process and its workers (its process group) if it still runs."""
        if self.p.poll() is None:  # not reaped: the group id is still this process's
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(timeout=30)


@pytest.fixture
def procs() -> Iterator[Callable[[Proc], Proc]]:
    started: list[Proc] = []
    yield lambda p: started.append(p) or p
    for p in started:
        p.cleanup()


def _artifact_path(run) -> Path:
    return Path(run.info.artifact_uri.removeprefix("file://"))


def _wait_running(cwd: Path, run_id: str, artifact: str | None = None, timeout: float = 60) -> None:
    """Until the run is RUNNING (and has ``artifact``, when given)."""
    c, deadline = _client(cwd), time.monotonic() + timeout
    while True:
        run = c.get_run(run_id)
        has = artifact is None or (_artifact_path(run) / artifact).is_file()
        if run.info.status == "RUNNING" and has:
            return
        assert time.monotonic() < deadline, f"run {run_id}: {run.info.status}, {artifact} present: {has}"
        time.sleep(0.1)


def _artifacts(cwd: Path, run_id: str) -> set[str]:
    return {a.path for a in _client(cwd).list_artifacts(run_id)}


def _killed_by_sigterm(rc: int) -> bool:
    return rc in (-signal.SIGTERM, 128 + signal.SIGTERM)


# ---------------------------------------------------------------------------------------------- SIGTERM


_SIGTERM_IN_TRACKER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from lhcad.tracking import RunTracker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = {"raised": None}
    tracker = RunTracker(sys.argv[1], "exp", "sig")
    try:
        with tracker:
            tracker.log_text("partial", "partial.txt")
            with RunTracker(sys.argv[1], "exp", "inner", parent_run_id=tracker.run_id) as inner:
                out["inner"] = inner.run_id
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
    except BaseException as exc:
        out["raised"] = type(exc).__name__
        out["keyboard_interrupt"] = isinstance(exc, KeyboardInterrupt)
    out["run_id"] = tracker.run_id
    out["handler_restored"] = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    print(json.dumps(out), flush=True)
    """
)


def test_sigterm_inside_a_tracker_is_an_interrupt_that_kills_the_run(tmp_path: Path) -> None:
    """SIGTERM raises an exception handled like Ctrl-C in the tracked block (nested trackers too);
    the runs end KILLED with the signal as their reason, keep their artifacts, and the previous
    handler is back afterwards."""
    mlruns = tmp_path / "mlruns"
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_IN_TRACKER, str(mlruns)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["raised"] == "Terminated" and out["keyboard_interrupt"]
    assert out["handler_restored"]
    c = _client(tmp_path)
    for run_id in (out["run_id"], out["inner"]):
        run = c.get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["killed_by"] == "SIGTERM"
        assert "SIGTERM" in run.data.tags["error"]
    assert {"partial.txt", "error.txt"} <= _artifacts(tmp_path, out["run_id"])


_SIGTERM_WHILE_CLOSING = textwrap.dedent(
    """
    import json, os, signal, sys
    import lhcad.tracking.run as run_module
    from lhcad.tracking import RunTracker, Terminated
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    terminate = run_module._terminate

    def terminate_under_signal(*args, **kwargs):  # SIGTERM arrives while the status is written
        os.kill(os.getpid(), signal.SIGTERM)
        return terminate(*args, **kwargs)

    run_module._terminate = terminate_under_signal
    out = {"after_inner": False}
    outer, inner = RunTracker(sys.argv[1], "exp", "outer"), RunTracker(sys.argv[1], "exp", "inner")
    try:
        with outer:
            with inner:
                pass
            out["after_inner"] = True
    except Terminated:
        out["outer_stopped"] = True
    out["ids"] = [outer.run_id, inner.run_id]
    last = RunTracker(sys.argv[1], "exp", "last")
    print(json.dumps(out), flush=True)
    with last:
        print(last.run_id, flush=True)
    print("not reached", flush=True)
    """
)


def test_sigterm_while_a_run_is_closed_is_held_back_until_its_status_is_written(tmp_path: Path) -> None:
    """A SIGTERM that arrives while a run's status is written does not leave it RUNNING: the run
    ends as it would have (FINISHED), then the signal stops the enclosing run or the process."""
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_WHILE_CLOSING, str(tmp_path / "mlruns")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == -signal.SIGTERM, (proc.stdout, proc.stderr[-3000:])  # the default action
    assert "not reached" not in proc.stdout
    out, last_id = json.loads(lines[-2]), lines[-1]
    assert out.get("outer_stopped") and not out["after_inner"]
    c = _client(tmp_path)
    outer, inner = (c.get_run(i) for i in out["ids"])
    assert inner.info.status == "FINISHED"
    assert outer.info.status == "KILLED" and outer.data.tags["killed_by"] == "SIGTERM"
    assert c.get_run(last_id).info.status == "FINISHED"


_SIGTERM_IN_A_FINALIZER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from lhcad.tracking import RunTracker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    class Finalized:
        def __del__(self):  # Python drops exceptions raised here ("Exception ignored in ...")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):
                pass

    out = {"raised": None, "reached_end": False}
    tracker = RunTracker(sys.argv[1], "exp", "fin")
    try:
        with tracker:
            Finalized()
            time.sleep(10)
            out["reached_end"] = True
    except BaseException as exc:
        out["raised"] = type(exc).__name__
    out["run_id"] = tracker.run_id
    print(json.dumps(out), flush=True)
    """
)


def test_sigterm_landing_in_a_finalizer_still_stops_the_run(tmp_path: Path) -> None:
    """Python drops an exception raised in a finalizer (e.g. SQLAlchemy's weakref callbacks): the
    signal is delivered again, the run still ends KILLED, and nothing is printed about it."""
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_IN_A_FINALIZER, str(tmp_path / "mlruns")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["raised"] == "Terminated" and not out["reached_end"]
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    run = _client(tmp_path).get_run(out["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["killed_by"] == "SIGTERM"


def test_sigterm_ends_runs_and_multirun_parents_killed(tmp_path: Path, procs) -> None:
    """`kill <pid>` (SIGTERM) of a run, of a sweep with the basic launcher and of a sweep with the
    joblib launcher: nothing stays RUNNING, runs end KILLED with the signal as their reason and the
    artifacts they had, and the process exits as killed by SIGTERM without a traceback."""
    joblib = procs(Proc.train(tmp_path / "joblib", "-m", *LONG, *JOBLIB, "seed=0,1"))
    single = procs(Proc.train(tmp_path / "single", *LONG))
    basic = procs(Proc.train(tmp_path / "basic", "-m", *LONG, "seed=0,1"))

    pending, deadline = [(single, 1), (basic, 1), (joblib, 2)], time.monotonic() + 180
    while pending:  # each gets SIGTERM as soon as its jobs train (the others still start)
        assert time.monotonic() < deadline, [p.output()[-2000:] for p, _ in pending]
        for p, n_jobs in list(pending):
            if p.ready(n_jobs):
                p.p.send_signal(signal.SIGTERM)
                pending.remove((p, n_jobs))
        time.sleep(0.2)
    for p in (single, basic, joblib):
        rc = p.finish(timeout=90)
        out = p.output()
        assert _killed_by_sigterm(rc), (rc, out[-3000:])
        assert "Traceback" not in out, out[-3000:]
        assert "SIGTERM" in out

    (run,) = _all_runs(single.cwd)
    assert run.info.status == "KILLED", run.data.tags
    assert run.data.tags["killed_by"] == "SIGTERM" and "SIGTERM" in run.data.tags["error"]
    assert run.data.tags["lhcad.pid"] == str(single.p.pid)
    assert run.data.tags["lhcad.host"] == socket.gethostname()
    assert {"config.yaml", "error.txt"} <= _artifacts(single.cwd, run.info.run_id)

    for p, n_jobs in ((basic, 1), (joblib, 2)):
        runs = _all_runs(p.cwd)
        (parent,) = [r for r in runs if r.data.tags.get("lhcad.role") == "multirun-parent"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == n_jobs == len(runs) - 1
        assert parent.info.status == "KILLED" and parent.data.tags["killed_by"] == "SIGTERM"
        assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
        assert all(r.data.tags.get("error") for r in children)
        t = parent.data.tags
        assert t["n_children"] == str(n_jobs) and t["n_running"] == "0"
        assert int(t["n_killed"]) + int(t["n_failed"]) == n_jobs
    (child,) = [r for r in _all_runs(basic.cwd) if "mlflow.parentRunId" in r.data.tags]
    assert child.info.status == "KILLED" and child.data.tags["killed_by"] == "SIGTERM"


# ---------------------------------------------------------------------------------------------- orphans


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_runs_of_dead_processes_on_this_host_are_marked_orphaned(tmp_path: Path) -> None:
    """The next start against a store marks FAILED (error=orphaned) the RUNNING runs whose process
    on this host is gone (pid dead, or reused by another process), recounts the children of their
    multirun parents, and leaves live, foreign-host (or other pid namespace), untagged and ended
    runs alone."""
    mlruns = tmp_path / "mlruns"
    _, exp = ensure_store(mlruns, "exp")
    c = _client(tmp_path)
    host, dead = socket.gethostname(), str(_dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:

        def run(name: str, status: str = "RUNNING", pid: str | None = dead, **tags: str) -> str:
            """A run of process ``pid`` on this host (None: no host/pid tags), left in ``status``."""
            owner = {} if pid is None else {"lhcad.host": host, "lhcad.pid": pid}
            r = c.create_run(exp, run_name=name, tags={**owner, **tags})
            if status != "RUNNING":
                c.set_terminated(r.info.run_id, status)
            return r.info.run_id

        me = str(os.getpid())
        ids = {
            "dead": run("dead"),
            "reused": run("reused", pid=me, **{"lhcad.proc_start": "0:0"}),  # my pid, another process
            "live": run("live", pid=str(sleeper.pid)),
            "me": run("me", pid=me),
            "foreign": run("foreign", pid=None, **{"lhcad.host": host + "-elsewhere", "lhcad.pid": dead}),
            "container": run("container", **{"lhcad.pid_ns": "pid:[1]"}),
            "untagged": run("untagged", pid=None),
            "ended": run("ended", "FINISHED"),
        }
        # a sweep whose sweeper died: parent and child both left RUNNING
        ids["parent"] = run("parent", **{"lhcad.role": "multirun-parent"})
        ids["child"] = run("child", **{"mlflow.parentRunId": ids["parent"]})
        ids["child_ok"] = run("child_ok", "FINISHED", **{"mlflow.parentRunId": ids["parent"]})
        # an ended sweep that counted a child as running (its worker was killed later)
        counts = {"n_children": "1", "n_finished": "0", "n_failed": "0", "n_killed": "0", "n_running": "1"}
        ids["done_parent"] = run("done_parent", "FAILED", **{"lhcad.role": "multirun-parent", **counts})
        ids["late_child"] = run("late_child", **{"mlflow.parentRunId": ids["done_parent"]})

        ensure_store(mlruns, "exp")  # the next start

        runs = {name: c.get_run(run_id) for name, run_id in ids.items()}
        for name in ("dead", "reused", "parent", "child", "late_child"):
            r = runs[name]
            assert r.info.status == "FAILED", name
            assert r.data.tags["error"] == "orphaned", name
            detail = r.data.tags["error_detail"]
            assert host in detail and r.data.tags["lhcad.pid"] in detail, detail
        for name in ("live", "me", "foreign", "container", "untagged"):
            assert runs[name].info.status == "RUNNING", name
            assert "error" not in runs[name].data.tags, name
        assert runs["ended"].info.status == "FINISHED" and "error" not in runs["ended"].data.tags
        assert runs["done_parent"].info.status == "FAILED"
        for name, expected in (("parent", (2, 1, 1, 0)), ("done_parent", (1, 0, 1, 0))):
            t = runs[name].data.tags
            assert tuple(int(t[k]) for k in ("n_children", "n_finished", "n_failed", "n_running")) == expected, name
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigkill_leaves_a_sweep_running_until_the_next_start_marks_it_orphaned(tmp_path: Path, procs) -> None:
    """SIGKILL cannot be handled: the sweep's parent and its job stay RUNNING. The next `train.py`
    against the same store marks both FAILED (error=orphaned) and recounts the parent's children."""
    sweep = procs(Proc.train(tmp_path, "-m", *LONG, "seed=0,1", name="sweep"))
    (m,) = sweep.wait_for(_RUN_LINE)
    _wait_running(tmp_path, m.group(1), artifact="config.yaml")
    os.killpg(sweep.p.pid, signal.SIGKILL)
    assert sweep.finish(timeout=30) == -signal.SIGKILL
    before = _all_runs(tmp_path)
    assert len(before) == 2 and all(r.info.status == "RUNNING" for r in before)  # what SIGKILL leaves

    nxt = procs(Proc.train(tmp_path, *SHORT, "seed=5", name="next"))
    assert nxt.finish(timeout=180) == 0, nxt.output()[-3000:]
    runs = {r.info.run_id: r for r in _all_runs(tmp_path)}
    (parent,) = [r for r in runs.values() if r.data.tags.get("lhcad.role") == "multirun-parent"]
    child = runs[m.group(1)]
    (new,) = [r for r in runs.values() if r.data.tags.get("seed") == "5"]
    assert new.info.status == "FINISHED"
    for r in (parent, child):
        assert r.info.status == "FAILED"
        assert r.data.tags["error"] == "orphaned"
        detail = r.data.tags["error_detail"]
        assert str(sweep.p.pid) in detail and socket.gethostname() in detail, detail
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    t = parent.data.tags
    assert (t["n_children"], t["n_failed"], t["n_finished"], t["n_running"]) == ("1", "1", "0", "0")


# ---------------------------------------------------------------------------------------------- collisions


_AT_ONCE = textwrap.dedent(
    """
    import os, runpy, sys, time
    train, go = sys.argv[1], sys.argv[2]
    import lhcad.cli.train, lhcad.pipeline, mlflow.tracking  # the slow imports before the start line
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    sys.argv = [train, *sys.argv[3:]]
    runpy.run_path(train, run_name="__main__")
    """
)


def _start_at_once(procs, cwd: Path, argvs: list[list[str]]) -> list[Proc]:
    """Start `train.py` with each argv, all released in the same instant just after a second ticks."""
    go = cwd / "go"
    started = [
        procs(Proc(cwd, [sys.executable, "-c", _AT_ONCE, TRAIN, str(go), *argv], name=f"p{i}"))
        for i, argv in enumerate(argvs)
    ]
    for p in started:
        p.wait_for(re.compile(r"^ready$", re.M))
    time.sleep(1.02 - time.time() % 1)  # right after a second boundary: all start in the same second
    go.touch()
    return started


def test_runs_started_in_the_same_second_get_their_own_output_folders(tmp_path: Path, procs) -> None:
    """Six runs released together: six output folders, each with its own .hydra config and log."""
    n = 6
    # signal_frac=1.5 stops each run right after Hydra made its output folder (a one-line error)
    started = _start_at_once(procs, tmp_path, [["data=tiny", "signal_frac=1.5", f"seed={i}"] for i in range(n)])
    for p in started:
        assert p.finish(timeout=120) == 2, p.output()[-2000:]
    dirs = sorted(d for d in (tmp_path / "outputs").glob("*/*") if d.is_dir())
    assert len(dirs) == n, dirs
    seeds = []
    for d in dirs:
        overrides = OmegaConf.load(d / ".hydra" / "overrides.yaml")
        (seed,) = [o for o in overrides if str(o).startswith("seed=")]
        seeds.append(seed)
        log = (d / "train.log").read_text()
        assert log.count(" ERROR ") == 1, log  # its own one-line error, no other run's
    assert sorted(seeds) == [f"seed={i}" for i in range(n)]


def test_sweeps_started_at_once_get_their_own_folders_and_parents(tmp_path: Path, procs) -> None:
    """Two sweeps released together (basic and joblib launcher): two sweep folders, each with its
    own parent-run-id file, and every job nested under the parent of its own sweep."""
    sweeps = {"1,2": [], "3,4": JOBLIB}
    argvs = [["-m", *SHORT, f"seed={seeds}", *extra] for seeds, extra in sweeps.items()]
    started = _start_at_once(procs, tmp_path, argvs)
    for p in started:
        assert p.finish(timeout=240) == 0, p.output()[-3000:]
    id_files = sorted((tmp_path / "multirun").glob(f"*/*/{PARENT_RUN_ID_FILE}"))
    assert len(id_files) == 2, id_files
    runs = _all_runs(tmp_path)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("lhcad.role") == "multirun-parent"}
    assert {f.read_text().strip() for f in id_files} == set(parents)
    for f in id_files:
        parent = parents[f.read_text().strip()]
        assert parent.data.tags["lhcad.sweep_dir"] == str(f.parent) and parent.info.status == "FINISHED"
        seeds = next(s for s in sweeps if f"seed={s}" in parent.data.tags["lhcad.sweep_overrides"])
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["seed"] for r in children) == seeds.split(",")
        assert all(r.info.status == "FINISHED" for r in children)
        assert parent.data.tags["n_children"] == "2" and parent.data.tags["n_finished"] == "2"
    assert len(runs) == 6


# ---------------------------------------------------------------------------------------------- parent link


def _callback_config(mlruns: Path, sweep_dir: Path) -> DictConfig:
    return OmegaConf.create(
        {
            "tracking": {"mlruns_dir": str(mlruns), "experiment": "exp"},
            "hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": ["seed=0,1"]}},
        }
    )


def test_a_sweep_folder_in_use_by_a_running_sweep_is_refused(tmp_path: Path) -> None:
    """The parent-run-id file is never overwritten while the sweep that wrote it runs; a second
    sweep into that folder is stopped (and its end does not touch the first sweep's parent). A
    folder whose sweep has ended can be used again."""
    mlruns, sweep_dir = tmp_path / "mlruns", tmp_path / "multirun" / "fixed"
    cfg = _callback_config(mlruns, sweep_dir)
    first = MultirunParentRun()
    first.on_multirun_start(config=cfg, config_name="config")
    id_file = sweep_dir / PARENT_RUN_ID_FILE
    first_id = id_file.read_text().strip()

    second = MultirunParentRun()
    with pytest.raises(SystemExit, match="in use"):  # Hydra swallows a callback's exceptions, not SystemExit
        second.on_multirun_start(config=cfg, config_name="config")
    second.on_multirun_end(config=cfg, config_name="config")  # Hydra calls it in a `finally`
    assert id_file.read_text().strip() == first_id
    c = _client(tmp_path)
    assert c.get_run(first_id).info.status == "RUNNING"
    assert len(_all_runs(tmp_path)) == 1

    first.on_multirun_end(config=cfg, config_name="config")
    assert c.get_run(first_id).info.status == "FINISHED"
    third = MultirunParentRun()
    third.on_multirun_start(config=cfg, config_name="config")  # the folder is free again
    assert id_file.read_text().strip() not in ("", first_id)
    third.on_multirun_end(config=cfg, config_name="config")


def test_a_job_is_not_nested_under_the_parent_of_another_sweep(tmp_path: Path) -> None:
    """A job whose sweep folder is not the parent's (a stale or foreign parent-run-id file) starts
    un-nested, with the refused parent recorded, instead of joining the other sweep."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lhcad.config import register_resolvers
    from lhcad.paths import CONF_DIR

    mlruns = tmp_path / "mlruns"
    other = MultirunParentRun()
    other.on_multirun_start(config=_callback_config(mlruns, tmp_path / "sweep-a"), config_name="config")
    other_id = (tmp_path / "sweep-a" / PARENT_RUN_ID_FILE).read_text().strip()

    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose(
            "config",
            overrides=["data=tiny", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep-b'}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.mode == RunMode.MULTIRUN
    saved = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(cfg)
        with RunTracker(mlruns, "exp", "job", parent_run_id=other_id) as job:
            pass
    finally:
        HydraConfig.instance().cfg = saved
    tags = _client(tmp_path).get_run(job.run_id).data.tags
    assert "mlflow.parentRunId" not in tags
    assert other_id in tags["lhcad.parent_refused"]
    other.on_multirun_end(config=_callback_config(mlruns, tmp_path / "sweep-a"), config_name="config")
