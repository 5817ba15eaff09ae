"""Cluster engines, for real: SLURM through the submitit launcher, PostgreSQL as MLflow backend and
Optuna storage, an MLflow tracking server. No mocks: the services are those `tools/services.sh up`
starts (PostgreSQL, munge, slurmctld + slurmd on this host; `make test-ci` runs it first, as root),
the MLflow server is started here. Without the services each test skips with one line saying what
is missing; with LHCAD_REQUIRE_SERVICES=1 (CI) that is a failure instead.

Every job runs on the committed fixture (`data=tiny`) with the plumbing settings of test_train's
FAST, as a subprocess in a temporary folder, and every test gets fresh PostgreSQL databases.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from train_helpers import run_train

FAST = ["data=tiny", "progress=false", "method.train.epochs=8", "selection.plots=false"]
PG_HOST = os.environ.get("LHCAD_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("LHCAD_PG_PORT", "5432"))
PG_USER = os.environ.get("LHCAD_PG_USER", "lhcad")
PG_PASSWORD = os.environ.get("LHCAD_PG_PASSWORD", "lhcad")
REQUIRE = os.environ.get("LHCAD_REQUIRE_SERVICES") == "1"
SWEEP = [sys.executable, "-m", "lhcad.cli.sweep"]

pytestmark = pytest.mark.timeout(400)


def _missing(what: str) -> NoReturn:
    """Skip (one line) -- or fail, where CI requires the services."""
    hint = "start the services with `sudo tools/services.sh up`"
    if REQUIRE:
        pytest.fail(f"{what}; LHCAD_REQUIRE_SERVICES=1 forbids skipping: {hint}", pytrace=False)
    pytest.skip(f"{what}; {hint}")


def _pg_uri(db: str, password: bool = False) -> str:
    auth = f"{PG_USER}:{PG_PASSWORD}" if password else PG_USER
    return f"postgresql://{auth}@{PG_HOST}:{PG_PORT}/{db}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(_pg_uri("postgres", password=True), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


# ---------------------------------------------------------------------------------------------- services


@pytest.fixture(scope="session")
def postgres() -> None:
    """A PostgreSQL server where the lhcad role may create databases."""
    try:
        _pg_admin("SELECT 1")
        return
    except Exception as err:  # noqa: BLE001 - any reason: not usable
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    _missing(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} as {PG_USER} ({reason})")


@pytest.fixture
def pg_db(postgres: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Factory of fresh databases (dropped afterwards); libpq gets the password from PGPASSWORD."""
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"t_{tag}_{uuid.uuid4().hex[:8]}"
        _pg_admin(f"CREATE DATABASE {name}")
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception:  # noqa: BLE001 - leftovers are harmless
            pass


@pytest.fixture(scope="session")
def slurm() -> None:
    """A SLURM cluster with an idle node that this user can submit to."""
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        out = None
        reason = f"no SLURM client (sinfo: {err})"
    if out is not None:
        if out.returncode == 0 and {"idle", "mixed"} & set(out.stdout.split()):
            return
        reason = f"no SLURM node ready (sinfo: {' '.join((out.stdout + out.stderr).split()) or 'no output'})"
    _missing(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(pg_db: Callable[[str], str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on a fresh PostgreSQL database, artifacts served from tmp_path/server-artifacts."""
    import urllib.request

    port, artifacts = _free_port(), tmp_path / "server-artifacts"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", _pg_uri(pg_db("srv")),
           "--serve-artifacts", "--artifacts-destination", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, artifacts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str) -> list[Any]:
    c = _client(uri)
    return list(c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000))


def _study(db: str) -> Any:
    import optuna

    return optuna.load_study(study_name="ae_val_loss_f0.01", storage=_pg_uri(db, password=True))


# ---------------------------------------------------------------------------------------------- SLURM


def test_slurm_multirun_lands_under_one_parent_in_postgres(tmp_path, slurm, pg_db, monkeypatch):
    """Four jobs through SLURM end as 4 FINISHED children of one parent run in PostgreSQL; a fifth,
    failing job (first, so that its slot frees early) is reported with its SLURM log and stops none
    of them."""
    monkeypatch.setenv("LHCAD_SLURM_RESULT_GRACE_S", "3")  # local disk: no NFS cache to wait for
    db = pg_db("slurm")
    proc = run_train(
        tmp_path, "-m", *FAST, "method=ae", "tracking=postgres", f"tracking.postgres.mlflow_db={db}",
        "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10", "method.train.lr=-1,0.001,0.002,0.003,0.004",  # lr < 0: refused
        expect_ok=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]  # a failed job fails the sweep, as under joblib
    assert "1 of 5 SLURM jobs failed" in out, out[-3000:]
    (log_line,) = [line for line in out.splitlines() if "job #0 (SLURM" in line and "failed" in line]
    log_path = Path(log_line.rsplit("log: ", 1)[1].strip())
    assert log_path.is_file() and ".submitit" in log_path.parts
    job_logs = "".join(p.read_text() for p in log_path.parent.glob("*_log.*"))
    assert "method.train.lr must be a positive number" in job_logs  # the job's own one sentence

    runs = _runs(_pg_uri(db))
    (parent,) = [r for r in runs if r.data.tags.get("lhcad.role") == "multirun-parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    assert sorted(r.info.status for r in children) == ["FINISHED"] * 4
    assert sorted(r.data.params["method.train.lr"] for r in children) == ["0.001", "0.002", "0.003", "0.004"]
    assert parent.data.tags["n_children"] == "4" and parent.data.tags["n_finished"] == "4"
    # each child ran in a SLURM job (its own process, a submitit result), artifacts in tracking.artifact_root
    sweep_dir = Path(parent.data.tags["lhcad.sweep_dir"])
    assert len(list(sweep_dir.glob(".submitit/*/*_result.pkl"))) == 5  # the refused job returns its failure too
    assert len({r.data.tags["lhcad.pid"] for r in children} | {parent.data.tags["lhcad.pid"]}) == 5
    for r in children:
        assert r.info.artifact_uri.startswith(str(tmp_path / "mlruns" / "artifacts"))
        assert (Path(r.info.artifact_uri) / "config.yaml").is_file()


# ---------------------------------------------------------------------------------------------- Optuna workers


def test_four_workers_finish_one_study_in_postgres(tmp_path, pg_db):
    """lhcad-sweep --workers 4: 12 COMPLETE trials, distinct numbers and parameter sets, each one
    MLflow run; the workers ran side by side."""
    ml, op = pg_db("wml"), pg_db("wop")
    proc = subprocess.run(
        [*SWEEP, "--workers", "4", "--n-trials", "12", "--heartbeat", "2", "--grace", "10", "--poll", "1",
         "hparams_search=ae_optuna", *FAST, "tracking=postgres",
         f"tracking.postgres.mlflow_db={ml}", f"tracking.postgres.optuna_db={op}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=380,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    trials = _study(op).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 12 and len(trials) == 12, [(t.number, t.state.name) for t in trials]
    assert len({t.number for t in trials}) == 12
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 12, params
    owners = {t.user_attrs["lhcad.sweeper_process"]["pid"] for t in trials}
    assert len(owners) >= 3  # the work was shared
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # side by side

    runs = _runs(_pg_uri(ml))
    parents = [r for r in runs if r.data.tags.get("lhcad.role") == "multirun-parent"]
    jobs = [r for r in runs if r.data.tags.get("lhcad.role") != "multirun-parent"]
    assert len(parents) == 4 and all(r.info.status == "FINISHED" for r in parents)
    assert sorted(r.info.run_name.rsplit("-t", 1)[1] for r in jobs) == sorted(str(t.number) for t in trials)
    assert all(r.info.status == "FINISHED" for r in jobs)
    by_number = {t.number: t for t in trials}
    for r in jobs:
        trial = by_number[int(r.info.run_name.rsplit("-t", 1)[1])]
        assert float(r.data.params["method.train.lr"]) == pytest.approx(trial.params["method.train.lr"])
        assert float(r.data.metrics["val_loss"]) == pytest.approx(trial.value)


def test_killed_worker_trial_fails_is_retried_and_the_study_completes(tmp_path, pg_db):
    """SIGKILL a worker mid-trial: its trial ends FAIL (heartbeat), runs again with the same
    parameters, its MLflow run is marked FAILED (orphaned), and the study gets all its trials."""
    import optuna

    ml, op = pg_db("kml"), pg_db("kop")
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(
        [*SWEEP, "--workers", "2", "--n-trials", "4", "--heartbeat", "1", "--grace", "3", "--retries", "1",
         "--poll", "1", "hparams_search=ae_optuna", *FAST, "tracking=postgres",
         f"tracking.postgres.mlflow_db={ml}", f"tracking.postgres.optuna_db={op}"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        victim = None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                running = _study(op).get_trials(states=(optuna.trial.TrialState.RUNNING,))
                started = {r.info.run_name: r for r in _runs(_pg_uri(ml)) if r.info.status == "RUNNING"}
            except Exception:  # noqa: BLE001 - study or experiment not created yet
                continue
            for t in running:  # the trial's job has begun: its MLflow run exists
                if "lhcad.sweeper_process" in t.user_attrs and any(n.endswith(f"-t{t.number}") for n in started):
                    victim = t
                    break
        assert victim is not None, (tmp_path / "sweep.log").read_text()[-4000:]
        os.kill(victim.user_attrs["lhcad.sweeper_process"]["pid"], signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert rc == 0, out[-4000:]
    assert "was killed by SIGKILL" in out

    trials = {t.number: t for t in _study(op).get_trials()}
    assert trials[victim.number].state.name == "FAIL"
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state.name == "COMPLETE" and retry.params == victim.params
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 4
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials.values())

    runs = {r.info.run_name: r for r in _runs(_pg_uri(ml))}
    (killed,) = [r for n, r in runs.items() if n.endswith(f"-t{victim.number}")]
    assert killed.info.status == "FAILED" and killed.data.tags["error"] == "orphaned"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


# ---------------------------------------------------------------------------------------------- MLflow server


def _write_run(uri: str, mlruns: str, name: str, n_keys: int, n_steps: int) -> None:
    """One writer process: a run through ``uri`` with n_keys metrics at n_steps steps and an artifact."""
    from lhcad.tracking import RunTracker, configure_store

    configure_store(uri)
    with RunTracker(mlruns, "concurrency", name) as run:
        run.log_params({"writer": name})
        for step in range(n_steps):
            run.log_metrics({f"m{k:02d}": step + k / 100 for k in range(n_keys)}, step=step)
        run.log_text(f"written by {name}\n", "note.txt")


def test_eight_concurrent_runs_log_every_metric_through_the_server(tmp_path, mlflow_server):
    """8 processes log at once through `mlflow server` (PostgreSQL backend, served artifacts):
    every metric value arrives; a train.py run logs through it with tracking=server."""
    url, artifacts = mlflow_server
    n_writers, n_keys, n_steps = 8, 20, 25
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_cluster import _write_run; "
            "_write_run(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))")
    writers = [
        subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), url, str(tmp_path / "mlruns"),
                          f"writer-{i}", str(n_keys), str(n_steps)], stderr=subprocess.PIPE, text=True)
        for i in range(n_writers)
    ]
    errors = [w.communicate(timeout=300)[1] for w in writers]
    assert [w.returncode for w in writers] == [0] * n_writers, "\n".join(e[-2000:] for e in errors)

    client = _client(url)
    (exp,) = [e for e in client.search_experiments() if e.name == "concurrency"]
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(f"writer-{i}" for i in range(n_writers))
    assert all(r.info.status == "FINISHED" for r in runs)
    arrived = 0
    for r in runs:
        for k in range(n_keys):
            history = client.get_metric_history(r.info.run_id, f"m{k:02d}")
            assert sorted((m.step, m.value) for m in history) == [(s, s + k / 100) for s in range(n_steps)]
            arrived += len(history)
        assert (artifacts / exp.experiment_id / r.info.run_id / "artifacts" / "note.txt").is_file()
    assert arrived == n_writers * n_keys * n_steps  # 4000 metric values
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store

    run_train(tmp_path, *FAST, "method=ae", "tracking=server", f"tracking.server={url}", "tracking.experiment=via-server")
    (exp,) = [e for e in client.search_experiments() if e.name == "via-server"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "auc" in run.data.metrics
    stored = artifacts / exp.experiment_id / run.info.run_id / "artifacts"
    assert (stored / "config.yaml").is_file() and (stored / "summary.md").is_file()
    assert not (tmp_path / "mlruns").exists()
