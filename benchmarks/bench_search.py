"""Cost of k-fold scoring and of the m_jj window scan: wall time and peak memory per run.

    python benchmarks/bench_search.py                          # ae on the default dataset
    python benchmarks/bench_search.py --method tnt --data full # paper scale (1M QCD)

Runs ``train.py`` four times in one go (one process each, in a fresh working directory): plain,
``kfold.k=5``, ``search=scan``, and both (``experiment=search``), and prints for each the run's
``time/total_s``, ``time/fit_s`` and ``time/scan_s``, the process's peak RSS, and the ratios to the
plain run. k-fold fits the method k times on (k-1)/k of the sample instead of once on its training
part, so its cost is about k x (k-1)/k / (1 - holdout) of the plain fit; a window-independent
method's scan adds one fit per (window, selection) and the toys, a window-dependent one is
retrained per window (x the number of windows). Nothing grows faster than linearly in the number
of folds or windows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = {"tiny": ["data=tiny"], "default": ["data=lhco_like"], "full": ["data=lhco_like", "data.scale=full"]}
VARIANTS = {
    "plain": [],
    "kfold5": ["kfold.k=5"],
    "scan": ["search=scan"],
    "kfold5+scan": ["experiment=search"],
}


_MEASURE = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)
"""Runs a command in a fresh process and reports the peak RSS of that command alone."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="ae")
    p.add_argument("--data", choices=sorted(DATA), default="default")
    p.add_argument("--signal-frac", default="0.01")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    workdir = Path(f"/tmp/bench_search-{time.strftime('%Y%m%d-%H%M%S')}")
    workdir.mkdir(parents=True)
    env = {**os.environ, "LHCAD_HOME": str(REPO)}
    rows = {}
    for name, extra in VARIANTS.items():
        cmd = [sys.executable, "-c", _MEASURE, sys.executable, str(REPO / "train.py"), *DATA[args.data], f"method={args.method}",
               f"signal_frac={args.signal_frac}", "progress=false", "selection.plots=none",
               f"tracking.mlruns_dir={workdir / 'mlruns'}", f"tracking.run_name={name}", *extra, *args.overrides]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        peak = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_KIB")]
        rows[name] = {"wall": wall, "rss": int(peak[-1]) / 1024**2 if peak else float("nan")}
    from mlflow.tracking import MlflowClient

    from lhcad.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(workdir / "mlruns"))
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        if run.info.run_name in rows:
            m = run.data.metrics
            rows[run.info.run_name] |= {k: m.get(f"time/{k}_s", 0.0) for k in ("total", "fit", "scan")}
    base = rows.get("plain", {})
    print(f"{args.method} on data={args.data}, signal_frac={args.signal_frac}")
    print(f"{'variant':<13} {'total s':>8} {'fit s':>8} {'scan s':>7} {'wall s':>7} {'peak GiB':>8} {'total / plain':>14}")
    for name, r in rows.items():
        ratio = r.get("total", float("nan")) / base["total"] if base.get("total") else float("nan")
        print(f"{name:<13} {r.get('total', float('nan')):8.1f} {r.get('fit', float('nan')):8.1f} "
              f"{r.get('scan', 0.0):7.1f} {r['wall']:7.1f} {r['rss']:8.2f} {ratio:14.2f}")  # fmt: skip
    print("peak GiB: the largest process of that train.py run (ru_maxrss).")


if __name__ == "__main__":
    main()
