"""Tag N' Train on jet images next to dense TNT, on the same events: time per run and physics.

    python benchmarks/bench_tnt_images.py [--signal-frac 0.01] [--seeds 0] [--scale default] [--device auto]

Runs ``train_and_evaluate`` (no MLflow) for ``method=tnt`` with ``inputs=features`` and
``inputs=images`` on the generated LHC-Olympics-like dataset (``data.scale``; the image dataset
``data/lhco_like/<scale>-images`` is generated on first use: about 20 minutes for the default
scale on two cores) and prints one table row per run: AUC, stage AUCs, bump-hunt Z with no
selection and at 3% / 1%, fit and total seconds, and the ratio of image to dense time. On CPU the
CNNs dominate; on a GPU pass ``--device cuda``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lhcad.cli._paths import CONF_DIR
    from lhcad.pipeline import train_and_evaluate

    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        t0 = time.perf_counter()
        out = train_and_evaluate(cfg)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--signal-frac", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--scale", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--inputs", nargs="+", default=["features", "images"])
    args = ap.parse_args()
    os.environ.setdefault("LHCAD_HOME", str(REPO))
    logging.basicConfig(level=logging.WARNING)
    from lhcad.config import register_resolvers

    register_resolvers()
    print("| inputs | seed | AUC | stage AUCs | Z none / 3% / 1% | fit s | total s |")
    print("|---|---|---|---|---|---|---|")
    seconds: dict[str, float] = {}
    for inputs in args.inputs:
        for seed in args.seeds:
            out, wall = _run([
                "method=tnt", f"inputs={inputs}", f"signal_frac={args.signal_frac}", f"seed={seed}",
                f"data.scale={args.scale}", f"device={args.device}", "progress=false", "selection.plots=false",
            ])  # fmt: skip
            m = out.metrics
            stages = " → ".join(f"{row['auc']:.3f}" for row in out.stage_metrics)
            z = " / ".join(f"{m.get(f'sig_bumphunt/{k}', float('nan')):.2f}" for k in ("none", "eff_0.03", "eff_0.01"))
            print(f"| {inputs} | {seed} | {m['auc']:.3f} | {stages} | {z} | {m['time/fit_s']:.0f} | {wall:.0f} |", flush=True)
            seconds[inputs] = seconds.get(inputs, 0.0) + wall
    if {"features", "images"} <= set(seconds):
        print(f"\nimage / dense wall time: {seconds['images'] / seconds['features']:.1f}")


if __name__ == "__main__":
    main()
