"""Network building and training shared by the methods: per-jet taggers on top of lhcad.models."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from lhcad.inputs import InputRepresentation, Scaler
from lhcad.models import MLP, TNTCNN, ConvAutoencoder, DenseAutoencoder
from lhcad.models.vae import vae_score
from lhcad.models.training import (
    History,
    TrainConfig,
    bce_loss,
    fit,
    predict,
    reconstruction_error,
    reconstruction_loss,
    seeded,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "JetTagger",
    "balanced_weights",
    "build_autoencoder",
    "build_classifier",
    "train_autoencoder",
    "train_classifier",
    "settings_from_mapping",
    "train_config",
]


def settings_from_mapping(cls: type[T], cfg: Mapping[str, Any], what: str) -> T:
    """Dataclass ``cls`` from a config mapping; unknown or missing keys are an error naming them."""
    cfg = dict(cfg)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}  # type: ignore[arg-type]
    missing = sorted(required - set(cfg))
    if missing:
        raise ValueError(f"missing {what} setting(s) {missing} (their values live in conf/)")
    return cls(**cfg)


def train_config(cfg: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a config mapping (unknown or missing keys are an error)."""
    cfg = dict(cfg)
    if "betas" in cfg:
        cfg["betas"] = tuple(float(b) for b in cfg["betas"])
    return settings_from_mapping(TrainConfig, cfg, "training")


def _seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with its initial weights drawn from ``seed`` (global RNG state untouched)."""
    with seeded(seed):
        return factory()


def build_autoencoder(shape: tuple[int, ...], dense: Mapping[str, Any], conv: Mapping[str, Any], seed: int) -> nn.Module:
    """Dense autoencoder for ``(d,)`` inputs, convolutional one for ``(C, npix, npix)`` images."""
    if len(shape) == 1:
        return _seeded(seed, lambda: DenseAutoencoder(shape[0], hidden=tuple(dense["hidden"]), latent=int(dense["latent"])))
    return _seeded(seed, lambda: ConvAutoencoder(in_channels=shape[0], npix=shape[-1], latent=int(conv["latent"])))


def build_classifier(shape: tuple[int, ...], cfg: Mapping[str, Any], seed: int) -> nn.Module:
    """Tag N' Train's dense tagger for ``(d,)`` inputs, its CNN for ``(C, npix, npix)`` images."""
    if len(shape) == 1:
        return _seeded(seed, lambda: MLP(shape[0], hidden=tuple(cfg["hidden"]), dropout=float(cfg["dropout"])))
    return _seeded(seed, lambda: TNTCNN(in_channels=shape[0], npix=shape[-1]))


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-event weights giving both classes the same total weight (mean weight 1)."""
    labels = np.asarray(labels)
    n, n1 = len(labels), int(labels.sum())
    n0 = n - n1
    if n1 == 0 or n0 == 0:
        raise ValueError(f"a classifier needs events of both classes, got {n1} positive and {n0} negative")
    return np.where(labels == 1, n / (2.0 * n1), n / (2.0 * n0)).astype(np.float32)


@dataclass
class JetTagger:
    """A trained network with its input scaling: ``tagger(x)`` -> one score per row (larger = more anomalous).

    ``kind`` is "reconstruction" (autoencoder: score = per-jet MSE), "logit" (classifier output) or
    "vae_nll" / "vae_mse" / "vae_kl" (a VAE's anomaly score, :func:`lhcad.models.vae.vae_score`).
    """

    model: nn.Module
    scaler: Scaler
    kind: str
    history: History
    device: str = "cpu"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(self.scaler(x))
        if self.kind == "reconstruction":
            return predict(self.model, xs, device=self.device, fn=reconstruction_error)
        if self.kind.startswith("vae_"):
            score = self.kind.removeprefix("vae_")
            return predict(self.model, xs, device=self.device, fn=lambda m, xb: vae_score(m, xb, score))
        return predict(self.model, xs, device=self.device)

    @property
    def val_loss(self) -> float:
        return float(min(self.history.val_loss)) if self.history.val_loss else float("nan")

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "scaler": self.scaler.state(), "kind": self.kind}


def train_autoencoder(
    x: np.ndarray,
    inputs: InputRepresentation,
    dense: Mapping[str, Any],
    conv: Mapping[str, Any],
    train: TrainConfig,
    *,
    seed: int,
    device: str,
    desc: str,
    progress: bool,
) -> JetTagger:
    """Fit scaling and an autoencoder on ``x`` (one jet's inputs)."""
    scaler = Scaler.fit(x)
    model = build_autoencoder(tuple(x.shape[1:]), dense, conv, seed)
    history = fit(
        model, reconstruction_loss, (torch.from_numpy(scaler(x)),),
        config=train, seed=seed, device=device, desc=desc, progress=progress,
    )
    return JetTagger(model, scaler, "reconstruction", history, device)


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    classifier: Mapping[str, Any],
    train: TrainConfig,
    *,
    seed: int,
    device: str,
    desc: str,
    progress: bool,
    weights: np.ndarray | None = None,
) -> JetTagger:
    """Fit scaling and a binary classifier (weighted BCE; classes balanced unless ``weights`` given)."""
    y = np.asarray(y, dtype=np.float32)
    w = balanced_weights(y) if weights is None else np.asarray(weights, dtype=np.float32)
    scaler = Scaler.fit(x)
    model = build_classifier(tuple(x.shape[1:]), classifier, seed)
    history = fit(
        model, bce_loss, (torch.from_numpy(scaler(x)), torch.from_numpy(y), torch.from_numpy(w)),
        config=train, seed=seed, device=device, desc=desc, progress=progress,
    )
    return JetTagger(model, scaler, "logit", history, device)
