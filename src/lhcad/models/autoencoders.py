"""Autoencoders for unsupervised anomaly scores: dense (jet features) and convolutional (jet images).

The convolutional one follows Tag N' Train (arXiv:2002.12376, section 3.2): 3x3 convolutions each
followed by max pooling, a dense layer to a 16-d latent space, and the mirror image with upsampling
in place of pooling. The anomaly score is the per-sample reconstruction error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lhcad.models.cnn import as_image_batch

__all__ = ["ConvAutoencoder", "DenseAutoencoder", "reconstruction_error"]


def _dense_stack(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers through ``widths`` with ReLU between them and a linear last layer."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseAutoencoder(nn.Module):
    """``n_inputs -> hidden -> latent -> reversed(hidden) -> n_inputs``; ReLU, linear latent and output."""

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (32, 16), latent: int = 3) -> None:
        super().__init__()
        widths = [n_inputs, *hidden, latent]
        self.encoder = _dense_stack(widths)
        self.decoder = _dense_stack(widths[::-1])
        self.n_inputs = n_inputs
        self.latent = latent

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder for ``(n, C, npix, npix)`` images (or ``(n, npix, npix)`` if C = 1).

    Encoder: for each entry of ``channels`` a 3x3 "same" convolution + ReLU + 2x2 max pooling
    (40 -> 20 -> 10 -> 5 for the defaults), then a dense layer to ``latent``. The decoder mirrors
    it with nearest-neighbour upsampling back to the exact sizes of the encoder, so any
    ``npix >= 2**len(channels)`` works. The output is linear (standardised pixels) and has the
    shape of the input.
    """

    def __init__(
        self,
        in_channels: int = 1,
        npix: int = 40,
        latent: int = 16,
        channels: Sequence[int] = (16, 8, 8),
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("ConvAutoencoder needs at least one convolutional layer")
        sizes = [npix]
        for _ in channels:
            sizes.append(sizes[-1] // 2)
        if sizes[-1] < 1:
            raise ValueError(f"npix={npix} is too small for {len(channels)} 2x2 poolings")
        self.in_channels, self.npix, self.latent = in_channels, npix, latent
        widths = [in_channels, *channels]
        flat = widths[-1] * sizes[-1] ** 2

        enc: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            enc += [nn.Conv2d(c_in, c_out, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, latent))

        dec: list[nn.Module] = [
            nn.Linear(latent, flat),
            nn.ReLU(),
            nn.Unflatten(1, (widths[-1], sizes[-1], sizes[-1])),
        ]
        for i in reversed(range(len(channels))):
            dec += [
                nn.Upsample(size=(sizes[i], sizes[i]), mode="nearest"),
                nn.Conv2d(widths[i + 1], widths[i], 3, padding="same"),
            ]
            if i > 0:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(as_image_batch(x, self.in_channels, self.npix))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encode(x))
        return out.reshape(x.shape)


def reconstruction_error(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of ``model(x)`` w.r.t. ``x`` (mean over all non-batch dims)."""
    return (model(x) - x).square().flatten(1).mean(dim=1)
