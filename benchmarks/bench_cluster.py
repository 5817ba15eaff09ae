"""What the cluster engines cost on this machine: SLURM vs joblib, a tracking server vs sqlite, and
how many concurrent writers sqlite and PostgreSQL take.

    python benchmarks/bench_cluster.py [--jobs 4] [--repeats 3] [--writers 2 4 8 16] [--steps 50] [--keys 20]
    (needs `sudo tools/services.sh up`: PostgreSQL and SLURM; parts whose service is missing are skipped)

1. Launcher overhead: the same ``--jobs`` train.py jobs (``data=tiny``, 8 epochs, sqlite store) as a
   multirun through joblib (2 at a time) and through SLURM (1 CPU each: 2 at a time on 2 cores);
   seconds per job of the whole sweep, and for SLURM the per-job queue-to-start latency and the
   job's own run time (from submitit's logs and result files).
2. Logging: one train.py job logged to sqlite and through an `mlflow server` (PostgreSQL backend,
   served artifacts), alternated ``--repeats`` times after a first run of each that creates the
   store (timed apart: sqlite's schema migration): seconds per job; and one writer logging
   ``--keys`` metrics at ``--steps`` steps (one log_batch per step): metric values per second into
   sqlite, PostgreSQL and the server.
3. Concurrent writers: N processes (``--writers``) start together (after imports and run creation)
   and each logs ``--keys`` x ``--steps`` values, one batch per step, into one sqlite file or one
   PostgreSQL database: errors, wall time, aggregate values/s, and the median / p95 / max latency of
   one batch. "Sustains" = no error and p95 batch latency under 1 s.

Prints tables; the numbers of a run are in docs/cluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, str(REPO / "train.py")]
FAST = ["data=tiny", "progress=false", "method=ae", "method.train.epochs=8", "selection.plots=false",
        "closure=off", "~hydra.callbacks.comparison"]
PG = {"host": os.environ.get("LHCAD_PG_HOST", "127.0.0.1"), "port": os.environ.get("LHCAD_PG_PORT", "5432"),
      "user": os.environ.get("LHCAD_PG_USER", "lhcad"), "password": os.environ.get("LHCAD_PG_PASSWORD", "lhcad")}
ENV = {**os.environ, "PGPASSWORD": PG["password"], "PYTHONUNBUFFERED": "1"}


def pg_uri(db: str) -> str:
    return f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{db}"


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://{PG['user']}:{PG['password']}@{PG['host']}:{PG['port']}/postgres",
                         autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def fresh_db(tag: str) -> str:
    name = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
    pg_admin(f"CREATE DATABASE {name}")
    return name


def have_postgres() -> bool:
    try:
        pg_admin("SELECT 1")
        return True
    except Exception as err:  # noqa: BLE001
        print(f"(PostgreSQL not reachable: {str(err).splitlines()[0]})")
        return False


def have_slurm() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return False
    return bool({"idle", "mixed"} & set(out.split()))


def run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env={**ENV, **(extra_env or {})}, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return dt, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------- 1. launchers


def _stamp(line: str) -> float:
    """Epoch seconds of a submitit log line 'submitit INFO (2026-11-27 18:32:50,063) - ...'."""
    m = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\)", line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000


def bench_launchers(work: Path, n_jobs: int) -> None:
    seeds = ",".join(str(i) for i in range(n_jobs))
    rows = []
    for name, launcher in (
        ("joblib (2 workers)", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
        ("slurm (1 CPU/job)", ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]),
    ):
        cwd = work / name.split()[0]
        cwd.mkdir()
        submitted = time.time()
        dt, _ = run([*TRAIN, "-m", *FAST, f"seed={seeds}", *launcher], cwd)
        extra = ""
        if name.startswith("slurm"):
            starts, runs = [], []
            for out in cwd.glob("multirun/*/*/.submitit/*/*_log.out"):
                lines = out.read_text().splitlines()
                start = _stamp(next(line for line in lines if "Starting with JobEnvironment" in line))
                end = _stamp(next(line for line in lines if "Exiting after successful completion" in line))
                starts.append(start)
                runs.append(end - start)
            waits = sorted(s - submitted for s in starts)
            extra = (f"first job started {waits[0]:.1f} s after the sweep began; job time in SLURM "
                     f"(start to result) median {statistics.median(runs):.1f} s")
        rows.append((name, dt, dt / n_jobs, extra))
    print(f"\n## 1. Launcher: {n_jobs} train.py jobs (data=tiny, 8 epochs, sqlite), whole sweep wall time\n")
    print("| launcher | sweep wall s | s per job | notes |\n|---|---:|---:|---|")
    for name, dt, per, extra in rows:
        print(f"| {name} | {dt:.1f} | {per:.2f} | {extra} |")
    print(f"\nSLURM overhead per job: {(rows[1][1] - rows[0][1]) / n_jobs:+.2f} s "
          f"({rows[1][1] / rows[0][1]:.2f}x the joblib sweep)")


# ---------------------------------------------------------------------------------------------- 2. logging


def start_server(work: Path, db: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", pg_uri(db),
         "--serve-artifacts", "--artifacts-destination", str(work / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not start: {(work / 'server.log').read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


WRITER = r"""
import json, sys, time
from pathlib import Path
from lhcad.tracking import RunTracker, configure_store
uri, mlruns, name, keys, steps, ready, go, out = sys.argv[1:]
keys, steps = int(keys), int(steps)
configure_store(None if uri == "sqlite" else uri)
latencies, errors = [], []
with RunTracker(mlruns, "bench", name) as run:
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    t0 = time.time()
    for step in range(steps):
        t = time.perf_counter()
        try:
            run.log_metrics({f"m{k:02d}": step + k / 100 for k in range(keys)}, step=step)
        except Exception as err:
            errors.append(f"{type(err).__name__}: {str(err)[:200]}")
        latencies.append(time.perf_counter() - t)
    t1 = time.time()
Path(out).write_text(json.dumps({"t0": t0, "t1": t1, "end": time.time(), "lat": latencies, "errors": errors}))
"""


def writers(work: Path, uri: str, n: int, keys: int, steps: int) -> dict[str, Any]:
    """N concurrent writer processes (released together); returns the measurements."""
    tag = uuid.uuid4().hex[:6]
    go = work / f"go-{tag}"
    procs, outs, readies = [], [], []
    for i in range(n):
        ready, out = work / f"ready-{tag}-{i}", work / f"out-{tag}-{i}.json"
        readies.append(ready)
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, uri, str(work / "mlruns"), f"w{i}", str(keys),
                                       str(steps), str(ready), str(go), str(out)], env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 600
    while not all(r.exists() for r in readies):
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            break
        time.sleep(0.1)
    go.touch()
    failed = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            failed.append(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
    results = [json.loads(o.read_text()) for o in outs if o.exists()]
    lat = sorted(x for r in results for x in r["lat"])
    errors = [e for r in results for e in r["errors"]] + failed
    wall = (max(r["t1"] for r in results) - min(r["t0"] for r in results)) if results else float("nan")
    values = sum(len(r["lat"]) - len(r["errors"]) for r in results) * keys
    return {
        "n": n, "errors": errors, "wall": wall, "values_per_s": values / wall if results else 0.0,
        "p50": lat[len(lat) // 2] if lat else float("nan"),
        "p95": lat[int(len(lat) * 0.95)] if lat else float("nan"),
        "max": lat[-1] if lat else float("nan"),
    }


def bench_logging(work: Path, repeats: int, keys: int, steps: int, server_url: str, pg_db: str) -> None:
    times: dict[str, list[float]] = {"sqlite": [], "server": []}
    first: dict[str, float] = {}
    for store in times:  # the first run creates the store / experiment: timed apart
        (work / f"job-{store}").mkdir()
    for rep in range(repeats + 1):
        for store in ("sqlite", "server"):
            extra = [] if store == "sqlite" else ["tracking=server", f"tracking.server={server_url}"]
            dt, _ = run([*TRAIN, *FAST, f"seed={rep}", *extra], work / f"job-{store}")
            if rep == 0:
                first[store] = dt
            else:
                times[store].append(dt)
    print(f"\n## 2. Logging: one train.py job (data=tiny, 8 epochs), {repeats} alternated repeats after a first "
          "run that creates the store\n")
    print("| store | first run s | s per job (each repeat) | mean |\n|---|---:|---|---:|")
    for store, ts in times.items():
        print(f"| {store} | {first[store]:.1f} | {', '.join(f'{t:.1f}' for t in ts)} | {statistics.mean(ts):.1f} |")
    print(f"\nserver - sqlite: {statistics.mean(times['server']) - statistics.mean(times['sqlite']):+.1f} s per job")

    print(f"\nOne writer, {keys} metrics x {steps} steps (one log_batch per step):\n")
    print("| store | values/s | batch p50 ms | batch p95 ms |\n|---|---:|---:|---:|")
    wdir = work / "single"
    wdir.mkdir()
    for name, uri in (("sqlite", "sqlite"), ("postgresql", pg_uri(pg_db)), ("server (PostgreSQL)", server_url)):
        r = writers(wdir, uri, 1, keys, steps)
        print(f"| {name} | {r['values_per_s']:.0f} | {r['p50'] * 1e3:.1f} | {r['p95'] * 1e3:.1f} |")


# ---------------------------------------------------------------------------------------------- 3. writers


def bench_concurrency(work: Path, counts: list[int], keys: int, steps: int, stores: dict[str, str]) -> None:
    print(f"\n## 3. Concurrent writers: each {keys} metrics x {steps} steps, one batch per step, released together\n")
    print("| store | writers | errors | wall s | values/s | batch p50 ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, uri in stores.items():
        for n in counts:
            wdir = work / f"conc-{name.split()[0]}-{n}"
            wdir.mkdir()
            if uri.startswith("postgresql"):
                uri = pg_uri(fresh_db("conc"))
            r = writers(wdir, uri, n, keys, steps)
            print(f"| {name} | {n} | {len(r['errors'])} | {r['wall']:.1f} | {r['values_per_s']:.0f} | "
                  f"{r['p50'] * 1e3:.1f} | {r['p95'] * 1e3:.1f} | {r['max'] * 1e3:.0f} |", flush=True)
            for e in sorted(set(r["errors"]))[:3]:
                print(f"|  | | error: {e[:150]} | | | | | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--writers", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--skip", nargs="*", default=[], choices=["launchers", "logging", "concurrency"])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    print(f"# bench_cluster on {socket.gethostname()} ({os.cpu_count()} CPUs), load {os.getloadavg()[0]:.1f}, "
          f"work dir {work}")
    pg, sl = have_postgres(), have_slurm()
    try:
        if "launchers" not in args.skip:
            if sl:
                bench_launchers(work, args.jobs)
            else:
                print("\n(1. skipped: no SLURM; sudo tools/services.sh up)")
        if not pg:
            print("\n(2., 3. skipped: no PostgreSQL; sudo tools/services.sh up)")
            return
        if "logging" not in args.skip:
            srv_db = fresh_db("srv")
            server, url = start_server(work, srv_db)
            try:
                bench_logging(work, args.repeats, args.keys, args.steps, url, fresh_db("one"))
            finally:
                stop_server(server)
        if "concurrency" not in args.skip:
            bench_concurrency(work, args.writers, args.keys, args.steps,
                              {"sqlite (one file)": "sqlite", "postgresql": "postgresql"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            import psycopg

            with psycopg.connect(f"postgresql://{PG['user']}:{PG['password']}@{PG['host']}:{PG['port']}/postgres",
                                 autocommit=True) as conn:
                for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_%'").fetchall():
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception:  # noqa: BLE001
            pass
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
