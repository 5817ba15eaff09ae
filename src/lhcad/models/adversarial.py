"""Adversarially-trained autoencoder (paper 002, section 4.1): the alternating training schedule.

An adversary (two hidden layers of 20 ReLU units, softmax over the classes) sees the autoencoder's
per-sample reconstruction loss (its logarithm here) and predicts a nuisance class; the autoencoder
minimises ``L_AE - alpha * L_adv``. Paper 002's schedule, all counts in :class:`AdversarialConfig`:

1. train the autoencoder alone for ``pretrain_ae_epochs`` (3),
2. train the adversary alone for ``pretrain_adv_epochs`` (3),
3. one epoch of the autoencoder on ``L_AE - alpha * L_adv`` with the adversary frozen,
4. one epoch of the adversary with the autoencoder frozen,
5. repeat 3-4 ``rounds`` times (1500), multiplying the learning rates by ``decay_factor`` (0.75)
   every ``decay_every`` (100) rounds; batches of 500, learning rate 0.01, alpha = 100.

Batches are slices of a seeded permutation of tensors on the device; the global RNG is untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lhcad.models.autoencoders import reconstruction_error
from lhcad.models.training import History, resolve_device, seeded

__all__ = ["AdversarialConfig", "Adversary", "adversary_input", "train_adversarial"]

log = logging.getLogger(__name__)


@dataclass
class AdversarialConfig:
    """Paper 002's alternating schedule (defaults are the paper's values)."""

    alpha: float = 100.0
    pretrain_ae_epochs: int = 3
    pretrain_adv_epochs: int = 3
    rounds: int = 1500
    batch_size: int = 500
    lr: float = 0.01
    adv_lr: float = 0.01
    decay_every: int = 100
    decay_factor: float = 0.75
    #: random part held out to monitor the reconstruction loss (no early stopping)
    val_fraction: float = 0.1


class Adversary(nn.Module):
    """``1 -> 20 -> 20 -> n_classes`` with ReLU; returns logits (softmax in the cross entropy)."""

    def __init__(self, n_classes: int = 3, hidden: Sequence[int] = (20, 20), n_inputs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adversary_input(errors: torch.Tensor) -> torch.Tensor:
    """What the adversary sees of the per-sample reconstruction errors: ``log(error)`` as a column."""
    return torch.log(errors.clamp_min(1e-8)).unsqueeze(1)


def _epoch(
    ae: nn.Module, adversary: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
    mode: str, alpha: float, batch_size: int, generator: torch.Generator,
) -> float:
    """One pass: ``mode`` "ae" (pure reconstruction), "adv" (adversary) or "joint" (L_AE - alpha L_adv)."""
    ae.train(mode != "adv")
    adversary.train(mode == "adv")
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    total = 0.0
    for start in range(0, len(x), batch_size):
        idx = perm[start : start + batch_size]
        errors = reconstruction_error(ae, x[idx])
        if mode == "ae":
            loss = errors.mean()
        elif mode == "adv":
            loss = nn.functional.cross_entropy(adversary(adversary_input(errors.detach())), y[idx])
        else:
            l_adv = nn.functional.cross_entropy(adversary(adversary_input(errors)), y[idx])
            loss = errors.mean() - alpha * l_adv
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
    return total / len(x)


@torch.no_grad()
def _evaluate(ae: nn.Module, adversary: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean reconstruction error, adversary cross entropy) in eval mode."""
    ae.eval()
    adversary.eval()
    errors = reconstruction_error(ae, x)
    return float(errors.mean()), float(nn.functional.cross_entropy(adversary(adversary_input(errors)), y))


def train_adversarial(
    ae: nn.Module,
    adversary: nn.Module,
    x: torch.Tensor | np.ndarray,
    classes: torch.Tensor | np.ndarray,
    config: AdversarialConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    desc: str = "adversarial ae",
    progress: bool = False,
) -> History:
    """Train ``ae`` and ``adversary`` in place with paper 002's schedule; returns the AE's history.

    ``classes`` are integer nuisance classes in ``[0, n_classes)``. ``History.val_loss`` holds the
    reconstruction loss of the held-out rows after every round (pretraining counts as round 0);
    the final weights are kept (no early stopping), as in the paper.
    """
    dev = torch.device(resolve_device(device))
    ae.to(dev)
    adversary.to(dev)
    x = torch.as_tensor(x, dtype=torch.float32).to(dev)
    y = torch.as_tensor(np.asarray(classes), dtype=torch.long).to(dev)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} nuisance classes")
    generator = torch.Generator().manual_seed(seed)
    n_val = int(round(config.val_fraction * len(x)))
    perm = torch.randperm(len(x), generator=generator).to(dev)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    xt, yt, xv, yv = x[train_idx], y[train_idx], x[val_idx], y[val_idx]

    opt_ae = torch.optim.Adam(ae.parameters(), lr=config.lr)
    opt_adv = torch.optim.Adam(adversary.parameters(), lr=config.adv_lr)
    history = History([], [], best_epoch=-1, stopped_early=False, n_train=len(xt), n_val=len(xv), seconds=0.0)
    start = time.perf_counter()

    def record(train_loss: float) -> None:
        history.train_loss.append(train_loss)
        history.lr.append(opt_ae.param_groups[0]["lr"])
        if n_val:
            history.val_loss.append(_evaluate(ae, adversary, xv, yv)[0])
        history.best_epoch = len(history.train_loss) - 1

    with seeded(seed):
        loss = float("nan")
        for _ in range(config.pretrain_ae_epochs):
            loss = _epoch(ae, adversary, xt, yt, opt_ae, "ae", config.alpha, config.batch_size, generator)
        for _ in range(config.pretrain_adv_epochs):
            _epoch(ae, adversary, xt, yt, opt_adv, "adv", config.alpha, config.batch_size, generator)
        record(loss)
        bar = tqdm(range(config.rounds), desc=desc, disable=not progress, leave=False, unit="round")
        for r in bar:
            if r > 0 and config.decay_every > 0 and r % config.decay_every == 0:
                for opt in (opt_ae, opt_adv):
                    for group in opt.param_groups:
                        group["lr"] *= config.decay_factor
            loss = _epoch(ae, adversary, xt, yt, opt_ae, "joint", config.alpha, config.batch_size, generator)
            adv_loss = _epoch(ae, adversary, xt, yt, opt_adv, "adv", config.alpha, config.batch_size, generator)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {loss} in round {r + 1}; lower alpha or the learning rate")
            record(loss)
            bar.set_postfix(total=f"{loss:.4g}", adv=f"{adv_loss:.4g}")
        bar.close()
    ae.eval()
    adversary.eval()
    history.seconds = time.perf_counter() - start
    mse, ce = _evaluate(ae, adversary, xv, yv) if n_val else (float("nan"), float("nan"))
    log.info(
        "%s: %d rounds in %.1f s on %s, val reconstruction %.4g, adversary cross entropy %.4g (chance %.4g)",
        desc, config.rounds, history.seconds, dev, mse, ce, float(np.log(int(y.max()) + 1)),
    )
    return history
