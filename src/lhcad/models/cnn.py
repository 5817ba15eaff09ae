"""Convolutional jet-image classifier of Tag N' Train (arXiv:2002.12376, section 3.2)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TNTCNN", "as_image_batch"]


def as_image_batch(x: torch.Tensor, in_channels: int, npix: int) -> torch.Tensor:
    """``(n, npix, npix)`` -> ``(n, 1, npix, npix)`` when ``in_channels == 1``; check the shape."""
    if x.dim() == 3 and in_channels == 1:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != (in_channels, npix, npix):
        raise ValueError(
            f"expected images of shape (n, {in_channels}, {npix}, {npix})"
            + (f" or (n, {npix}, {npix})" if in_channels == 1 else "")
            + f", got {tuple(x.shape)}"
        )
    return x


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding="same")


class TNTCNN(nn.Module):
    """Conv32-Conv8-MaxPool-Conv8-Conv4-MaxPool-Dense16-Dense1 with ReLU; returns logits ``(n,)``.

    3x3 kernels with "same" padding, 2x2 max pooling. ``dropout`` (0 = none) is applied to the
    flattened features and after the 16-unit dense layer.
    """

    def __init__(self, in_channels: int = 1, npix: int = 40, dropout: float = 0.0) -> None:
        super().__init__()
        if npix < 4:
            raise ValueError(f"TNTCNN needs npix >= 4 (two 2x2 poolings), got {npix}")
        self.in_channels = in_channels
        self.npix = npix
        side = npix // 2 // 2
        self.features = nn.Sequential(
            _conv(in_channels, 32), nn.ReLU(),
            _conv(32, 8), nn.ReLU(),
            nn.MaxPool2d(2),
            _conv(8, 8), nn.ReLU(),
            _conv(8, 4), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        head: list[nn.Module] = [nn.Flatten()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head += [nn.Linear(4 * side * side, 16), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(16, 1))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_image_batch(x, self.in_channels, self.npix)
        return self.head(self.features(x)).squeeze(-1)
