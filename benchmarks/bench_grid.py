"""The paper grid through ``train.py -m``: wall time, peak memory, per-phase seconds, slowest runs.

    python benchmarks/bench_grid.py                                # 10 methods x 4 fractions x 3 seeds
    python benchmarks/bench_grid.py --data full                    # paper scale (1M QCD + 100k signal)
    python benchmarks/bench_grid.py --data tiny --methods ae,tnt --fractions 0.01 --seeds 0

The grid runs as one Hydra multirun (nested under one MLflow parent run, logged as usual) in a
fresh working directory, with the launcher given (``joblib`` with ``--jobs`` processes by default;
``basic`` runs the jobs one after the other in one process). Afterwards the script reads every
child run from the MLflow store and prints:

* the total wall time and the peak resident memory of the largest process (``ru_maxrss`` of the
  children, which includes the launcher's workers once they have exited);
* the seconds of every phase (``time/<phase>_s``: load, fit, score, evaluate, statistics, closure,
  probes, plots, logging) summed over the grid, and what the phases leave over of ``time/total_s``
  (process start, store, params) next to the wall time;
* the ten slowest runs;
* the ratio of the wall time to the 3-hour goal (or of an extrapolation, for a partial grid).
* for a subset that runs every method (``--fractions 0.01 --seeds 0``, say), the paper grid's
  wall time extrapolated from it: a run's cost hardly depends on the fraction or the seed.

``--data`` picks ``data=lhco_like`` at ``data.scale`` default (100k QCD, generated into
``data/lhco_like/default`` on first use) or full (1M QCD, paper scale), or the committed fixture
(``tiny``). Generation is not timed here (``benchmarks/bench_generate.py``): the samples a method
needs are generated before the clock starts (``--no-prepare`` skips that).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ae", "vae", "oe_vae", "disco_vae", "adv_ae", "tnt", "cwola", "sa_cwola", "salad", "supervised")
FRACTIONS = (0.0, 0.001, 0.003, 0.01)
SEEDS = (0, 1, 2)
PHASES = ("load", "fit", "score", "evaluate", "statistics", "closure", "probes", "plots", "logging")
GOAL_SECONDS = 3 * 3600.0
PAPER_GRID = len(METHODS) * len(FRACTIONS) * len(SEEDS)
DATA = {
    "tiny": ["data=tiny"],
    "default": ["data=lhco_like", "data.scale=default"],
    "full": ["data=lhco_like", "data.scale=full"],
}


def _csv(values: str, kind: type) -> list:
    return [kind(v) for v in values.split(",") if v]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=sorted(DATA), default="default")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
    p.add_argument("--seeds", default=",".join(str(s) for s in SEEDS))
    p.add_argument("--launcher", choices=("joblib", "basic"), default="joblib")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="joblib processes")
    p.add_argument("--workdir", type=Path, default=None, help="working directory (default: a new one under /tmp)")
    p.add_argument("--no-prepare", action="store_true", help="do not generate missing samples first")
    p.add_argument("overrides", nargs="*", help="further train.py overrides, e.g. selection.plots=none")
    return p.parse_args()


def _train(workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LHCAD_HOME": str(REPO)}  # the datasets under the repository's data/
    cmd = [sys.executable, str(REPO / "train.py"), *overrides]
    return subprocess.run(cmd, cwd=workdir, env=env, text=True, capture_output=True)


def _prepare(args: argparse.Namespace) -> None:
    """Generate every sample the grid reads before the clock starts (lhcad-generate resumes)."""
    if args.data == "tiny" or args.no_prepare:
        return
    from omegaconf import OmegaConf

    sizes = OmegaConf.load(REPO / "conf" / "data" / "lhco_like.yaml").sizes[args.data]
    root = REPO / "data" / "lhco_like" / args.data
    for sample, n in sizes.items():
        cmd = [sys.executable, "-m", "lhcad.cli.generate", f"sample={sample}", f"n_events={n}", f"out={root}", "seed=0"]
        print("preparing:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)


def _runs(mlruns: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    from lhcad.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(mlruns))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def main() -> None:
    args = _parse()
    methods, fractions, seeds = _csv(args.methods, str), _csv(args.fractions, float), _csv(args.seeds, int)
    n_grid = len(methods) * len(fractions) * len(seeds)
    workdir = args.workdir or Path(f"/tmp/bench_grid-{time.strftime('%Y%m%d-%H%M%S')}")
    workdir.mkdir(parents=True, exist_ok=True)
    experiment = f"bench_grid_{args.data}"
    _prepare(args)

    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"] if args.launcher == "joblib" else []
    overrides = [
        "-m", *DATA[args.data], f"method={','.join(methods)}", f"signal_frac={','.join(f'{f:g}' for f in fractions)}",
        f"seed={','.join(str(s) for s in seeds)}", "progress=false", f"tracking.experiment={experiment}",
        "tracking.mlruns_dir=" + str(workdir / "mlruns"), *launcher, *args.overrides,
    ]  # fmt: skip
    print(f"{n_grid} runs in {workdir}: train.py {' '.join(overrides)}", flush=True)
    t0 = time.perf_counter()
    proc = _train(workdir, *overrides)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)

    runs = _runs(workdir / "mlruns", experiment)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    phases: dict[str, float] = defaultdict(float)
    for r in finished:
        for phase in (*PHASES, "total"):
            phases[phase] += r.data.metrics.get(f"time/{phase}_s", 0.0)
    print(f"\nruns: {len(finished)} finished, {len(runs) - len(finished)} not, of {n_grid} "
          f"({args.launcher}, {args.jobs if args.launcher == 'joblib' else 1} process(es), data={args.data})")  # fmt: skip
    print(f"wall time: {wall:.0f} s ({wall / 3600:.2f} h); peak RSS of one process: {peak:.2f} GiB")
    print("seconds summed over the runs:")
    for phase in PHASES:
        print(f"  {phase:<11} {phases[phase]:9.0f}")
    outside = phases["total"] - sum(phases[p] for p in PHASES)
    print(f"  {'other':<11} {outside:9.0f}   (time/total_s minus the phases: store, params, run bookkeeping)")
    print(f"  {'total_s':<11} {phases['total']:9.0f}   (per-run time; the wall time also holds process start-up)")
    slow = sorted(finished, key=lambda r: r.data.metrics.get("time/total_s", 0.0), reverse=True)[:10]
    print("ten slowest runs:")
    for r in slow:
        m = r.data.metrics
        top = max(PHASES, key=lambda p: m.get(f"time/{p}_s", 0.0))
        print(f"  {r.info.run_name:<28} {m.get('time/total_s', float('nan')):7.0f} s  (most in {top})")
    estimate = wall * n_grid / max(len(finished), 1)
    print(f"\nwall time / 3 h goal: {estimate / GOAL_SECONDS:.2f}"
          + ("" if len(finished) == n_grid else f" (extrapolated from {len(finished)} of {n_grid} runs)"))  # fmt: skip
    if n_grid < PAPER_GRID and set(methods) == set(METHODS):
        # a subset with every method once per (fraction, seed): a run's cost hardly depends on either
        full = wall * PAPER_GRID / n_grid
        print(f"the paper grid ({PAPER_GRID} runs) at this rate: {full:.0f} s ({full / 3600:.2f} h), "
              f"{full / GOAL_SECONDS:.2f} of the 3 h goal (extrapolated from {n_grid} runs, every method)")


if __name__ == "__main__":
    main()
