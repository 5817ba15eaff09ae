"""CPU training speed of lhcad's networks with one torch thread against the default thread count.

    python benchmarks/bench_threads.py [--steps 200] [--busy 1]

Times optimiser steps (batch 200, Adam, BCE) of paper 003's 3 x 64 classifier, the Tag N' Train
dense tagger and the TNT CNN on 40x40 images, first with ``torch.set_num_threads(1)`` and then with
torch's default (one thread per core). ``--busy N`` keeps N other processes spinning on the CPU
while timing, as a second training job (a joblib multirun) or any other work on the machine would.
Printed: ms per step for both settings and the ratio default / one thread (> 1: one thread is
faster). The result decides the ``cpu_threads`` advice in README.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch


def _spin(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():
        x += 1


def _ms_per_step(model: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.rand(x.shape[0])
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).reshape(-1), y)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    from lhcad.models import MLP, TNTCNN

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--busy", type=int, default=0, help="other CPU-bound processes running meanwhile")
    args = ap.parse_args()

    default_threads = torch.get_num_threads()
    cases = {
        "paper 003 classifier 4-64-64-64-1": (lambda: MLP(4, hidden=(64, 64, 64), dropout=0.0), torch.randn(200, 4), args.steps),
        "TNT dense tagger 6-32-32-16-8-1": (lambda: MLP(6), torch.randn(200, 6), args.steps),
        "TNT CNN, 40x40 images": (lambda: TNTCNN(in_channels=1, npix=40), torch.randn(200, 1, 40, 40), max(args.steps // 10, 5)),
    }
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        print(f"torch {torch.__version__}, default threads {default_threads}, busy processes {args.busy}")
        for name, (build, x, steps) in cases.items():
            times = {}
            for threads in (1, default_threads):
                torch.set_num_threads(threads)
                torch.manual_seed(0)
                times[threads] = _ms_per_step(build(), x, steps)
            print(f"{name:36s} 1 thread {times[1]:8.2f} ms/step   {default_threads} threads "
                  f"{times[default_threads]:8.2f} ms/step   ratio {times[default_threads] / times[1]:6.2f}")
    finally:
        stop.set()
        for p in spinners:
            p.join()


if __name__ == "__main__":
    main()
