"""Full Tag N' Train pipeline on dense features at paper scale: wall time, events/s, peak memory.

    python benchmarks/bench_train.py [--data data/lhco_like/default] [--per-stage 200000] [--test 300000]

Paper scale (arXiv:2002.12376 section 4): 200k events per stage (autoencoders, then three TNT
iterations) and 300k test events. The events are drawn *with replacement* from the dataset given
(the default generated dataset if present, else the test fixture): this measures the speed and
memory of the pipeline at that size, not physics. Everything runs in this process on CPU: input
building, training with early stopping, scoring and the full evaluation (no MLflow I/O).
Printed ratios: wall time / 180 s goal and peak memory / 2 GiB goal (both should be < 1).
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
import warnings
from pathlib import Path

import numpy as np

GOAL_SECONDS = 180.0
GOAL_BYTES = 2 * 1024**3


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="lhcad dataset directory (default: data/lhco_like/default or the fixture)")
    ap.add_argument("--per-stage", type=int, default=200_000)
    ap.add_argument("--test", type=int, default=300_000)
    ap.add_argument("--signal-frac", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)

    from lhcad.cli._paths import REPO_ROOT
    from lhcad.data import inject_signal, load_dataset, split
    from lhcad.evaluate import EvaluationConfig, evaluate
    from lhcad.inputs import JetFeatures
    from lhcad.methods.base import FitContext
    from lhcad.methods.tnt import TagNTrain

    default = REPO_ROOT / "data" / "lhco_like" / "default"
    root = Path(args.data) if args.data else (default if (default / "manifest.json").is_file() else REPO_ROOT / "tests/data/fixture")
    data = load_dataset(root, ("qcd", "signal"))
    rss_loaded = _peak_rss_bytes()

    n_total = 4 * args.per_stage + args.test
    rng = np.random.default_rng(0)
    n_sig = round(args.signal_frac * n_total)
    # paper-scale sample by resampling (with replacement): background then signal, then the usual injection
    qcd = data["qcd"].take(rng.integers(0, len(data["qcd"]), n_total - n_sig))
    signal = data["signal"].take(rng.integers(0, len(data["signal"]), n_sig + 50_000))
    t0 = time.perf_counter()
    sample, unused = inject_signal(qcd, signal, args.signal_frac, n_total, rng)
    spec = {"initial": args.per_stage, "iter1": args.per_stage, "iter2": args.per_stage,
            "iter3": args.per_stage, "test": args.test}
    parts = split(sample, spec, rng)
    test = parts.pop("test")
    inputs = JetFeatures(["m", "sqrt_tau21", "tau21", "tau32", "tau43", "nconst"])
    train = {"epochs": args.epochs}
    # the paper's scheme (a fresh part per iteration); other settings as in conf/method/tnt.yaml
    method = TagNTrain(inputs, initial={"train": train}, train=train, folds=None, iterations=3)
    t_fit = time.perf_counter()
    method.fit(parts, FitContext(device=args.device, seed=0, progress=False))
    fit_s = time.perf_counter() - t_fit
    t_eval = time.perf_counter()
    evaluation = evaluate(test, method.score(test), unused, method.score(unused), EvaluationConfig(plots=True))
    eval_s = time.perf_counter() - t_eval
    wall = time.perf_counter() - t0
    peak = _peak_rss_bytes()

    import torch

    print(f"dataset resampled: {root} ({len(data['qcd'])} qcd, {len(data['signal'])} signal)")
    print(f"events: {n_total} ({4} x {args.per_stage} training stages + {args.test} test), signal_frac {args.signal_frac}")
    print(f"torch threads: {torch.get_num_threads()}, device: {args.device}")
    print(f"wall time: {wall:.1f} s (fit {fit_s:.1f} s, evaluation {eval_s:.1f} s)")
    print(f"throughput: {n_total / wall:.0f} events/s end to end")
    print(f"peak RSS: {peak / 2**20:.0f} MiB (after loading the dataset: {rss_loaded / 2**20:.0f} MiB)")
    print(f"AUC: {evaluation.metrics['auc']:.3f} (jet 1 {evaluation.metrics['auc_jet1']:.3f}, jet 2 {evaluation.metrics['auc_jet2']:.3f})")
    print(f"ratio wall / goal ({GOAL_SECONDS:.0f} s): {wall / GOAL_SECONDS:.2f}")
    print(f"ratio peak memory / goal (2 GiB): {peak / GOAL_BYTES:.2f}")


if __name__ == "__main__":
    main()
