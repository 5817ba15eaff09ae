"""Dense classifier: the Tag N' Train tagger on jet features (arXiv:2002.12376)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected network with ReLU and dropout after every hidden layer; returns logits.

    The defaults are the Tag N' Train dense tagger, 32-32-16-8-1 with dropout 0.2.
    With ``n_outputs == 1`` the output has shape ``(n,)``, otherwise ``(n, n_outputs)``.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int] = (32, 32, 16, 8),
        dropout: float = 0.2,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if n_inputs < 1 or n_outputs < 1:
            raise ValueError(f"MLP needs n_inputs >= 1 and n_outputs >= 1, got {n_inputs}, {n_outputs}")
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self.n_outputs == 1 else out
