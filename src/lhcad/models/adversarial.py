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

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lhcad.models.autoencoders import reconstruction_error
from lhcad.models.training import History, resolve_device, seeded

__all__ = [
    "AdversarialConfig",
    "AdversarialHistory",
    "Adversary",
    "adversary_input",
    "probe_adversary",
    "train_adversarial",
]

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


@dataclass
class AdversarialHistory(History):
    """:class:`~lhcad.models.training.History` of the autoencoder plus the adversary's record.

    Accuracies and cross entropies are measured on the held-out rows (NaN without them):
    ``*_pretrain`` after the pretraining (steps 1-2, before any adversarial round), ``*_final``
    after the last round. ``adversary_chance`` is the accuracy of always guessing the most frequent
    class of the held-out rows: an adversary at chance cannot tell the classes apart from the loss,
    so the nuisance is invisible to it and adversarial training can remove nothing.
    """

    adversary_acc_pretrain: float = float("nan")
    adversary_acc_final: float = float("nan")
    adversary_ce_pretrain: float = float("nan")
    adversary_ce_final: float = float("nan")
    adversary_chance: float = float("nan")
    #: a fresh adversary trained on the final autoencoder's losses (:func:`probe_adversary`)
    adversary_acc_probe: float = float("nan")
    #: adversary accuracy on the held-out rows after every round (pretraining = round 0)
    adversary_acc: list[float] = field(default_factory=list)


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
def _evaluate(
    ae: nn.Module, adversary: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float, float]:
    """(mean reconstruction error, adversary cross entropy, adversary accuracy) in eval mode."""
    ae.eval()
    adversary.eval()
    errors = reconstruction_error(ae, x)
    logits = adversary(adversary_input(errors))
    accuracy = float((logits.argmax(dim=1) == y).double().mean())
    return float(errors.mean()), float(nn.functional.cross_entropy(logits, y)), accuracy


def probe_adversary(
    ae: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    n_classes: int = 3,
    hidden: Sequence[int] = (20, 20),
    like: nn.Module | None = None,
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 500,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a *fresh* adversary trained on ``ae``'s (frozen) losses.

    The adversary inside :func:`train_adversarial` can be beaten without the nuisance information
    leaving the loss: the autoencoder only has to move its losses where that adversary is wrong.
    A new adversary trained from scratch on the final losses measures what information is left.
    It is an ``Adversary(n_classes, hidden)``, or a re-initialised copy of ``like``.
    """
    generator = torch.Generator().manual_seed(seed)
    with seeded(seed):
        if like is None:
            probe = Adversary(n_classes, hidden=tuple(hidden))
        else:
            probe = copy.deepcopy(like)
            for layer in probe.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        probe = probe.to(x_train.device)
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
        for _ in range(epochs):
            _epoch(ae, probe, x_train, y_train, optimizer, "adv", 0.0, batch_size, generator)
    return _evaluate(ae, probe, x_val, y_val)[2]


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
) -> AdversarialHistory:
    """Train ``ae`` and ``adversary`` in place with paper 002's schedule; returns the AE's history.

    ``classes`` are integer nuisance classes in ``[0, n_classes)``. ``History.val_loss`` holds the
    reconstruction loss of the held-out rows after every round (pretraining counts as round 0);
    the final weights are kept (no early stopping), as in the paper. The history also records the
    adversary's held-out accuracy before the first adversarial round and after the last one.
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
    history = AdversarialHistory(
        [], [], best_epoch=-1, stopped_early=False, n_train=len(xt), n_val=len(xv), seconds=0.0
    )
    if n_val:
        history.adversary_chance = float(torch.bincount(yv).max()) / n_val
    start = time.perf_counter()

    def record(train_loss: float) -> tuple[float, float]:
        """Log one round; returns the adversary's held-out (cross entropy, accuracy)."""
        history.train_loss.append(train_loss)
        history.lr.append(opt_ae.param_groups[0]["lr"])
        history.best_epoch = len(history.train_loss) - 1
        if not n_val:
            return float("nan"), float("nan")
        mse, ce, acc = _evaluate(ae, adversary, xv, yv)
        history.val_loss.append(mse)
        history.adversary_acc.append(acc)
        return ce, acc

    with seeded(seed):
        loss = float("nan")
        for _ in range(config.pretrain_ae_epochs):
            loss = _epoch(ae, adversary, xt, yt, opt_ae, "ae", config.alpha, config.batch_size, generator)
        for _ in range(config.pretrain_adv_epochs):
            _epoch(ae, adversary, xt, yt, opt_adv, "adv", config.alpha, config.batch_size, generator)
        history.adversary_ce_pretrain, history.adversary_acc_pretrain = record(loss)
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
    mse, ce, acc = _evaluate(ae, adversary, xv, yv) if n_val else (float("nan"),) * 3
    history.adversary_ce_final, history.adversary_acc_final = ce, acc
    if n_val:
        history.adversary_acc_probe = probe_adversary(
            ae, xt, yt, xv, yv, like=adversary, epochs=max(1, config.pretrain_adv_epochs),
            lr=config.adv_lr, batch_size=config.batch_size, seed=seed + 1,
        )
    ae.eval()
    log.info(
        "%s: %d rounds in %.1f s on %s, val reconstruction %.4g, adversary cross entropy %.4g (chance %.4g), "
        "accuracy %.3f before the adversarial rounds, %.3f after, %.3f of a fresh adversary (chance %.3f)",
        desc, config.rounds, history.seconds, dev, mse, ce, float(np.log(int(y.max()) + 1)),
        history.adversary_acc_pretrain, acc, history.adversary_acc_probe, history.adversary_chance,
    )
    return history
