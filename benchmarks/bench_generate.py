"""Generation throughput: end-to-end lhcad generation vs bare ``pythia.next()``, one worker.

    python benchmarks/bench_generate.py [--sample qcd] [--events 2000] [--repeats 3]

Both are measured in this run, interleaved, with the same Pythia settings, so the printed ratio
(bare time per event / end-to-end time per event; goal >= 0.8) does not depend on how busy the
machine is. "End-to-end" is everything a worker does per generated event: ``nextBatch``,
visible final-state selection, anti-kt clustering, N-subjettiness, and the HDF5 shard write.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import replace

from lhcad.cli.generate import config_from_hydra
from lhcad.data.generate import GenerationConfig, generate_shard, plan_shards
from lhcad.data.pythia import make_pythia


def _config(sample: str, n: int, out: str) -> GenerationConfig:
    from hydra import compose, initialize_config_dir

    from lhcad.cli._paths import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR):
        cfg = compose("generate", overrides=[f"sample={sample}", f"n_events={n}", f"out={out}", "workers=1"])
    return config_from_hydra(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default="qcd")
    ap.add_argument("--events", type=int, default=2000, help="generated events per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also compare peak memory for N and 4N events")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as out:
        cfg = _config(args.sample, args.events, out)
        task = plan_shards(cfg)[0]
        bare_t, e2e_t, bare_n, e2e_n, accepted = 0.0, 0.0, 0, 0, 0
        for rep in range(args.repeats):
            pythia = make_pythia(task.settings, task.seed + rep)
            t0 = time.perf_counter()
            for _ in range(args.events):
                pythia.next()
            bare_t += time.perf_counter() - t0
            bare_n += args.events

            # end-to-end: a real shard of the same settings, timed from Pythia init to the rename
            shard = replace(plan_shards(cfg)[0], n_events=args.events, seed=task.seed + 100 + rep)
            t0 = time.perf_counter()
            record = generate_shard(shard, report=lambda n: None)
            e2e_t += time.perf_counter() - t0 - _init_seconds(shard)
            e2e_n += record["n_generated"]
            accepted += record["n_events"]
        bare_rate, e2e_rate = bare_n / bare_t, e2e_n / e2e_t
        print(f"sample={args.sample}  generated events per measurement={args.events}  repeats={args.repeats}")
        print(f"bare pythia.next():      {bare_rate:8.1f} events/s per worker")
        print(f"lhcad end-to-end:        {e2e_rate:8.1f} generated events/s per worker "
              f"({accepted / e2e_t:.1f} accepted/s, trigger efficiency {accepted / e2e_n:.2f})")
        print(f"ratio end-to-end / bare: {e2e_rate / bare_rate:8.3f}   (goal >= 0.8)")
    if args.memory:
        _memory(args.sample)


def _memory(sample: str) -> None:
    """Peak RSS of a one-worker generation of N and 4N events, each in a fresh process."""
    import subprocess
    import sys

    probe = (
        "import resource, runpy, sys\n"
        "sys.argv = ['lhcad-generate', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('lhcad.cli.generate', run_name='__main__')\n"
        "finally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    peaks = []
    for n in (1000, 4000):
        with tempfile.TemporaryDirectory() as out:
            res = subprocess.run(
                [sys.executable, "-c", probe, f"sample={sample}", f"n_events={n}", f"out={out}", "workers=1",
                 "progress=false"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
        peaks.append(int(res.stderr.rsplit("MAXRSS", 1)[1].split()[0]) / 1024)
    print(f"peak RSS, 1000 events:   {peaks[0]:8.1f} MiB")
    print(f"peak RSS, 4000 events:   {peaks[1]:8.1f} MiB   ratio {peaks[1] / peaks[0]:.3f} (flat = 1)")


def _init_seconds(task) -> float:
    """Time Pythia's initialisation alone (generate_shard includes it; the bare loop does not)."""
    t0 = time.perf_counter()
    make_pythia(task.settings, task.seed)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
