"""Generation throughput: end-to-end lhcad generation vs bare ``pythia.next()``, one worker.

    python benchmarks/bench_generate.py [--sample qcd] [--events 2000] [--repeats 3] [--breakdown]

Both are measured in this run, interleaved, with the same Pythia settings, so the printed ratio
(bare time per event / end-to-end time per event; goal >= 0.8) does not depend on how busy the
machine is. "End-to-end" is everything a worker does per generated event: ``nextBatch``,
visible final-state selection, anti-kt clustering, N-subjettiness, and the HDF5 shard write.
``--breakdown`` also splits the end-to-end time into its stages (milliseconds per generated event).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

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
    ap.add_argument("--breakdown", action="store_true", help="also split the end-to-end time into stages")
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
        if args.breakdown:
            _breakdown(plan_shards(cfg)[0], args.events, 1e3 / bare_rate)
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


STAGES = {
    "visible final state": ("lhcad.data.generate", "visible_final_state"),
    "trigger pre-selection bound": ("lhcad.data.jets", "jet_pt_upper_bound"),
    "N-subjettiness (kt axes + arithmetic)": ("lhcad.data.jets", "nsubjettiness"),
    "reconstruction (build_events)": ("lhcad.data.generate", "build_events"),
    "shard write (HDF5 + journal)": ("lhcad.data.storage", "write_shard"),
}


@contextlib.contextmanager
def _timed(seconds: dict[str, float]) -> Iterator[None]:
    """Wrap the stage functions (and FastJet's clustering) so that each call adds to ``seconds``."""
    import importlib

    import fastjet

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - t0
        return timed

    saved = []
    for name, (module, attr) in STAGES.items():
        mod = importlib.import_module(module)
        saved.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, wrap(name, getattr(mod, attr)))
    cluster = fastjet.ClusterSequence

    def clustering(data: Any, jetdef: Any) -> Any:
        kind = "anti-kt clustering" if jetdef.jet_algorithm() == fastjet.antikt_algorithm else "kt reclustering"
        return wrap(kind, cluster)(data, jetdef)

    saved.append((fastjet, "ClusterSequence", cluster))
    fastjet.ClusterSequence = clustering
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


def _breakdown(task, n_events: int, bare_ms: float) -> None:
    """Where the end-to-end time of one shard goes, in ms per generated event."""
    seconds: dict[str, float] = defaultdict(float)
    shard = replace(task, n_events=n_events, seed=task.seed + 999)
    with _timed(seconds):
        t0 = time.perf_counter()
        record = generate_shard(shard, report=lambda n: None)
        total = time.perf_counter() - t0 - _init_seconds(shard)
    per = 1e3 / record["n_generated"]
    build = seconds["reconstruction (build_events)"]
    inside = sum(seconds[k] for k in ("trigger pre-selection bound", "anti-kt clustering",
                                       "N-subjettiness (kt axes + arithmetic)"))
    rows = [
        ("Pythia nextBatch and the loop (rest)", total - build - seconds["visible final state"]
         - seconds["shard write (HDF5 + journal)"]),
        ("visible final state", seconds["visible final state"]),
        ("trigger pre-selection bound", seconds["trigger pre-selection bound"]),
        ("anti-kt clustering", seconds["anti-kt clustering"]),
        ("N-subjettiness (kt axes + arithmetic)", seconds["N-subjettiness (kt axes + arithmetic)"]),
        ("  of which kt reclustering", seconds["kt reclustering"]),
        ("jets, constituents, columns (rest of build_events)", build - inside),
        ("shard write (HDF5 + journal)", seconds["shard write (HDF5 + journal)"]),
    ]
    print(f"where the end-to-end time goes, ms per generated event ({record['n_generated']} generated):")
    print(f"  {'bare pythia.next() (for scale)':52s} {bare_ms:7.3f}")
    for name, sec in rows:
        print(f"  {name:52s} {sec * per:7.3f}")
    print(f"  {'total end-to-end':52s} {total * per:7.3f}   overhead over bare {total * per - bare_ms:+.3f}")


def _init_seconds(task) -> float:
    """Time Pythia's initialisation alone (generate_shard includes it; the bare loop does not)."""
    t0 = time.perf_counter()
    make_pythia(task.settings, task.seed)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
