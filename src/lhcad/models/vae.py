"""Variational autoencoders (paper 004, section II): Gaussian posterior, reparameterisation trick.

The dense VAE follows paper 004's FCN-VAE (encoder 256-128-64 with ReLU, dense layers to the
posterior mean and log-variance, latent size 10, mirrored decoder, linear output); on jet
images the convolutional encoder/decoder of :class:`~lhcad.models.ConvAutoencoder` is used.
In training mode the latent vector is sampled, ``z = mu + sigma * eps``; in eval mode ``z = mu``,
so scores are deterministic.

Per-sample terms (:func:`vae_terms`): ``mse`` = mean squared reconstruction error over the input
dimensions, ``kl`` = ``D_KL(N(mu, sigma^2) || N(0, 1))`` summed over the latent dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lhcad.models.autoencoders import ConvAutoencoder, _dense_stack
from lhcad.models.cnn import as_image_batch

__all__ = ["SCORES", "VAE", "cyclic_ramp", "linear_ramp", "score_from_terms", "vae_score", "vae_terms"]

#: anomaly scores of a VAE: nll = mse + kl, mse, kl
SCORES = ("nll", "mse", "kl")


class VAE(nn.Module):
    """Encoder to ``2 * latent`` numbers (posterior mean and log-variance), decoder from ``latent``.

    Build with :meth:`dense` (``(n, d)`` inputs) or :meth:`conv` (``(n, C, npix, npix)`` images).
    ``forward(x)`` returns ``(reconstruction, mu, logvar)``, the reconstruction shaped like ``x``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: int, image: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.encoder, self.decoder, self.latent = encoder, decoder, int(latent)
        self.image = image  # (channels, npix) for image inputs

    @classmethod
    def dense(cls, n_inputs: int, hidden: Sequence[int] = (256, 128, 64), latent: int = 10) -> VAE:
        widths = [n_inputs, *hidden]
        encoder = nn.Sequential(_dense_stack(widths), nn.ReLU(), nn.Linear(widths[-1], 2 * latent))
        decoder = _dense_stack([latent, *hidden[::-1], n_inputs])
        return cls(encoder, decoder, latent)

    @classmethod
    def conv(cls, in_channels: int = 1, npix: int = 40, latent: int = 10, channels: Sequence[int] = (16, 8, 8)) -> VAE:
        ae = ConvAutoencoder(in_channels, npix, latent, channels)
        head = ae.encoder[-1]
        ae.encoder[-1] = nn.Linear(head.in_features, 2 * latent)
        return cls(ae.encoder, ae.decoder, latent, image=(in_channels, npix))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance."""
        if self.image is not None:
            x = as_image_batch(x, *self.image)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-20.0, 20.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(z).reshape(x.shape), mu, logvar


def vae_terms(model: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample reconstruction MSE and latent KL divergence of ``x``."""
    recon, mu, logvar = model(x)
    mse = (recon - x).square().flatten(1).mean(dim=1)
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)
    return mse, kl


def score_from_terms(mse: torch.Tensor, kl: torch.Tensor, kind: str = "nll") -> torch.Tensor:
    """Per-sample anomaly score from the terms of :func:`vae_terms`: ``nll`` (mse + kl), ``mse`` or ``kl``."""
    if kind == "nll":
        return mse + kl
    if kind == "mse":
        return mse
    if kind == "kl":
        return kl
    raise ValueError(f"unknown VAE score {kind!r}; choose one of {SCORES}")


def vae_score(model: VAE, x: torch.Tensor, kind: str = "nll") -> torch.Tensor:
    """Per-sample anomaly score: ``nll`` (mse + kl), ``mse`` or ``kl``."""
    mse, kl = vae_terms(model, x)
    return score_from_terms(mse, kl, kind)


def linear_ramp(step: int, ramp_steps: int) -> float:
    """Annealing factor rising linearly from 0 to 1 over ``ramp_steps`` steps, then 1."""
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)


def cyclic_ramp(step: int, cycle_steps: int, ramp_fraction: float = 0.5) -> float:
    """Cyclic annealing (Fu et al. 2019): in every cycle, 0 -> 1 over its first ``ramp_fraction``, then 1."""
    if cycle_steps <= 0:
        return 1.0
    return linear_ramp(step % cycle_steps, int(round(ramp_fraction * cycle_steps)))
