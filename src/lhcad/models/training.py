"""One training loop for every network: Adam + Keras-style lr decay + early stopping.

Tensors are moved to the device once and sliced into batches by a seeded permutation (no
per-sample ``DataLoader``). Reproducibility: :func:`fit` draws everything random (validation
split, batch order, dropout masks) from its ``seed`` inside a forked RNG, so the global torch
RNG is left untouched; the model's initial weights are the caller's business, e.g.::

    with seeded(seed):
        model = MLP(6)
    config = TrainConfig(epochs=30, batch_size=200, lr=1e-3, betas=(0.8, 0.99), lr_decay=5e-4,
                         patience=5, val_fraction=0.1)
    history = fit(model, bce_loss, (x, y, w), config=config, seed=seed)
    scores = predict(model, x_test)

On CPU the same seed and data give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lhcad.models.autoencoders import reconstruction_error

__all__ = [
    "History",
    "LossFn",
    "TrainConfig",
    "bce_loss",
    "mean_loss",
    "fit",
    "make_optimizer",
    "predict",
    "reconstruction_loss",
    "resolve_device",
    "seeded",
]

log = logging.getLogger(__name__)

#: ``loss_fn(model, batch) -> scalar mean loss of the batch``
LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]

ArrayLike = torch.Tensor | np.ndarray

#: rows per forward pass when computing the validation loss
VAL_CHUNK = 2048


@dataclass(kw_only=True)
class TrainConfig:
    """Optimiser and stopping settings. Types only: the values live in ``conf/training/*.yaml``
    (``tnt.yaml``: Tag N' Train section 3.2; ``paper003.yaml``: the SA-CWoLa / SALAD code), composed
    into each method's ``train``; ``lhcad.methods.registry.training_config("tnt", epochs=3)`` gives
    one outside a method. ``weight_decay`` and ``min_delta`` are not in those files: off unless set.
    """

    epochs: int
    batch_size: int
    lr: float
    betas: tuple[float, float]
    #: Keras-style time decay per optimiser step: ``lr / (1 + lr_decay * step)``
    lr_decay: float
    #: epochs without improvement of the validation loss before stopping; <= 0 never stops early
    patience: int
    #: random part of the given data held out for early stopping (when no val_inputs are given)
    val_fraction: float
    weight_decay: float = 0.0
    #: smallest decrease of the validation loss that counts as an improvement
    min_delta: float = 0.0


@dataclass
class History:
    """What happened during :func:`fit`. Epochs are counted from 0 in ``best_epoch``."""

    train_loss: list[float]
    val_loss: list[float]
    best_epoch: int
    stopped_early: bool
    n_train: int
    n_val: int
    seconds: float
    #: learning rate at the end of each epoch
    lr: list[float] = field(default_factory=list)


def set_cpu_threads(n: int | None) -> None:
    """Set torch's intra-op CPU threads; ``None`` keeps torch's default (one per core).

    The small networks here gain little from several threads and lose badly when the cores are
    shared with other work (see ``benchmarks/bench_threads.py``).
    """
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cpu_threads must be a positive integer or null (torch's default), got {n!r}")
    torch.set_num_threads(n)


def resolve_device(device: str | torch.device) -> str:
    """``"auto"`` -> ``"cuda"`` if available else ``"cpu"``; check that other devices exist."""
    name = str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown torch device {name!r} (use 'cpu', 'cuda', 'cuda:N' or 'auto')") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n_gpus = torch.cuda.device_count()
            raise RuntimeError(f"device {name!r} requested but only {n_gpus} GPU(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available; use 'cpu' or 'auto'")
    return name


def _cuda_devices(device: torch.device | None = None) -> list[int]:
    """The CUDA devices whose RNG state a forked RNG saves and restores.

    All visible GPUs when training on one or when CUDA is already in use; none otherwise, so
    that CPU-only work never initialises CUDA.
    """
    on_gpu = device is not None and device.type == "cuda"
    if torch.cuda.is_available() and (on_gpu or torch.cuda.is_initialized()):
        return list(range(torch.cuda.device_count()))
    return []


@contextlib.contextmanager
def _forked_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed)
        yield


def seeded(seed: int) -> contextlib.AbstractContextManager[None]:
    """Context manager: run the block with the torch RNG seeded, and restore the global RNG after.

    Use it to make model initialisation reproducible: ``with seeded(s): model = MLP(6)``.
    """
    return _forked_rng(seed)


def make_optimizer(
    model: nn.Module, config: TrainConfig
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam with the config's betas and weight decay, and a per-step Keras-style decay scheduler.

    Call ``scheduler.step()`` after every ``optimizer.step()``; after N steps the learning rate
    is ``lr / (1 + lr_decay * N)``.
    """
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
    )
    decay = config.lr_decay
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + decay * step))
    return optimizer, scheduler


def bce_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Binary cross-entropy on logits for ``(x, y)`` or ``(x, y, w)``; weighted as Keras: ``mean(w * l)``."""
    x, y, *rest = batch
    logits = model(x)
    losses = nn.functional.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")
    if rest:
        losses = losses * rest[0]
    return losses.mean()


def reconstruction_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean squared reconstruction error of an autoencoder on ``(x,)`` (or ``(x, w)``, weighted)."""
    x, *rest = batch
    errors = reconstruction_error(model, x)
    if rest:
        errors = errors * rest[0]
    return errors.mean()


def _model_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.get_default_dtype()


def _as_float(x: torch.Tensor | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a tensor; floating-point values cast to ``dtype`` (labels and indices are kept)."""
    x = torch.as_tensor(x)
    return x.to(dtype) if x.is_floating_point() else x


def _as_tuple(
    inputs: ArrayLike | Sequence[ArrayLike], what: str, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Inputs as a tuple of tensors of the same length, checked for NaN/inf."""
    items = (inputs,) if isinstance(inputs, (torch.Tensor, np.ndarray)) else tuple(inputs)
    if not items:
        raise ValueError(f"{what} is empty: give a tensor or a tuple of tensors")
    tensors = tuple(_as_float(t, dtype) for t in items)
    lengths = {len(t) for t in tensors}
    if len(lengths) != 1:
        raise ValueError(f"the tensors of {what} have different lengths: {[len(t) for t in tensors]}")
    for i, t in enumerate(tensors):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise FloatingPointError(
                f"{what}[{i}] contains {bad} NaN or infinite values; check the inputs for NaN before training"
            )
    return tensors


def _split(
    tensors: tuple[torch.Tensor, ...], fraction: float, generator: torch.Generator
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Random (train, val) split of the rows; val is empty if it would have fewer than 2 rows."""
    n = len(tensors[0])
    n_val = int(round(fraction * n))
    if n_val < 2 or n - n_val < 1:
        return tensors, ()
    perm = torch.randperm(n, generator=generator).to(tensors[0].device)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return tuple(t[train_idx] for t in tensors), tuple(t[val_idx] for t in tensors)


def mean_loss(
    model: nn.Module, loss_fn: LossFn, inputs: tuple[torch.Tensor, ...], *, batch_size: int = VAL_CHUNK
) -> float:
    """Mean loss over ``inputs`` in eval mode without gradients, in chunks weighted by their size."""
    n = len(inputs[0])
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=inputs[0].device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            chunk = tuple(t[start : start + batch_size] for t in inputs)
            total += loss_fn(model, chunk).double() * len(chunk[0])
    return float(total) / n


def _train_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    tensors: tuple[torch.Tensor, ...],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over the shuffled training rows; returns the mean batch loss (weighted by size)."""
    n = len(tensors[0])
    model.train()
    perm = torch.randperm(n, generator=generator).to(tensors[0].device)
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        loss = loss_fn(model, tuple(t[idx] for t in tensors))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach().double() * len(idx)
    return float(total) / n


def _check_finite(value: float, what: str, epoch: int) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{what} loss is {value} in epoch {epoch + 1}: "
            "lower the learning rate or check the inputs for NaN"
        )


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: ArrayLike | Sequence[ArrayLike],
    *,
    config: TrainConfig,
    seed: int,
    device: str | torch.device = "cpu",
    desc: str = "training",
    progress: bool = False,
    val_inputs: ArrayLike | Sequence[ArrayLike] | None = None,
) -> History:
    """Train ``model`` in place with Adam and early stopping on the validation loss.

    Args:
        model: moved to ``device``; left in eval mode with the weights of the best epoch.
        loss_fn: ``loss_fn(model, batch)`` -> mean loss of ``batch``, the tuple of row slices of
            ``inputs`` (e.g. ``(x,)`` for an autoencoder, ``(x, y, w)`` for a weighted classifier).
        inputs: a tensor or a tuple of tensors with the same number of rows (numpy arrays are
            converted; floating-point ones are cast to the dtype of the model's parameters).
        config: optimiser and stopping settings.
        seed: seeds the validation split, the batch order and dropout (global RNG untouched).
        device: "cpu", "cuda", "auto", ...; see :func:`resolve_device`.
        desc: label of the progress bar and the log line.
        progress: show a tqdm bar over epochs.
        val_inputs: validation data; if None, ``config.val_fraction`` of ``inputs`` is held out.
            With fewer than 2 validation rows, training runs all epochs without early stopping.

    Raises:
        FloatingPointError: the inputs contain NaN/inf or the loss became NaN/inf.
    """
    dev = torch.device(resolve_device(device))
    model.to(dev)
    dtype = _model_dtype(model)
    tensors = tuple(t.to(dev) for t in _as_tuple(inputs, "inputs", dtype))
    generator = torch.Generator().manual_seed(seed)
    if val_inputs is None:
        train, val = _split(tensors, config.val_fraction, generator)
    else:
        train, val = tensors, tuple(t.to(dev) for t in _as_tuple(val_inputs, "val_inputs", dtype))
    if not val:
        log.info(
            "%s: no validation rows (%d rows in all), training %d epochs without early stopping",
            desc, len(tensors[0]), config.epochs,
        )

    start = time.perf_counter()
    with _forked_rng(seed, dev):
        history = _run(model, loss_fn, train, val, config, generator, desc, progress)
    history.seconds = time.perf_counter() - start
    model.eval()
    best = f", best epoch {history.best_epoch + 1} (val loss {min(history.val_loss):.5g})" if val else ""
    log.info(
        "%s: %d epochs in %.1f s on %s, %d train / %d val rows%s%s",
        desc, len(history.train_loss), history.seconds, dev, history.n_train, history.n_val, best,
        ", stopped early" if history.stopped_early else "",
    )
    return history


def _run(
    model: nn.Module,
    loss_fn: LossFn,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    config: TrainConfig,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> History:
    """The epoch loop of :func:`fit`."""
    if len(train[0]) == 0:
        raise ValueError("no training rows")
    optimizer, scheduler = make_optimizer(model, config)
    n_val = len(val[0]) if val else 0
    history = History(
        [], [], best_epoch=-1, stopped_early=False, n_train=len(train[0]), n_val=n_val, seconds=0.0
    )
    best_loss, best_state, waited = math.inf, None, 0
    bar = tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        train_loss = _train_epoch(model, loss_fn, train, optimizer, scheduler, config.batch_size, generator)
        _check_finite(train_loss, "training", epoch)
        history.train_loss.append(train_loss)
        history.lr.append(optimizer.param_groups[0]["lr"])
        if not val:
            history.best_epoch = epoch
            bar.set_postfix(train=f"{train_loss:.4g}")
            continue
        val_loss = mean_loss(model, loss_fn, val)
        _check_finite(val_loss, "validation", epoch)
        history.val_loss.append(val_loss)
        bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
        if val_loss < best_loss - config.min_delta:
            best_loss, best_state, waited = val_loss, _state_copy(model), 0
            history.best_epoch = epoch
        else:
            waited += 1
            if 0 < config.patience <= waited:
                history.stopped_early = True
                log.debug("stopping after epoch %d: no improvement for %d epochs", epoch + 1, waited)
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


@torch.no_grad()
def predict(
    model: nn.Module,
    x: ArrayLike,
    *,
    batch_size: int = 8192,
    device: str | torch.device | None = None,
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """``fn(model, x)`` in eval mode without gradients, in chunks, as a float64 numpy array.

    ``fn`` defaults to ``model(xb)`` (logits for the classifiers here); use
    ``fn=reconstruction_error`` for autoencoder scores. ``device`` None keeps the model where it
    is; otherwise the model is moved there. Floating-point inputs are cast to the dtype of the
    model's parameters.
    """
    if device is None:
        param = next(model.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
    else:
        dev = torch.device(resolve_device(device))
        model.to(dev)
    x = _as_float(x, _model_dtype(model))
    fn = fn or (lambda m, xb: m(xb))
    model.eval()
    outputs = [
        fn(model, x[start : start + batch_size].to(dev)).detach().to("cpu", torch.float64)
        for start in range(0, len(x), batch_size)
    ]
    if not outputs:
        return np.empty((0,), dtype=np.float64)
    return torch.cat(outputs).numpy()
