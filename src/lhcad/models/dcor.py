"""Distance correlation (Szekely et al.) in torch: batched and differentiable, for DisCo regularisers.

The V-statistic (biased) estimator of Szekely, Rizzo & Bakirov (2007), identical to
``dcor.distance_correlation`` for 1-d samples; used by DisCo (Kasieczka & Shih, arXiv:2001.05310)
and DisCo-VAE (paper 004, eqs. 7-10). Cost and memory are O(n^2) per sample of size n.
"""

from __future__ import annotations

import torch

__all__ = ["distance_correlation"]

#: keeps ``sqrt`` differentiable when a distance variance is exactly zero
_EPS = 1e-12


def _centred_distances(x: torch.Tensor) -> torch.Tensor:
    """Double-centred pairwise distance matrices ``A_ij`` of ``(..., n)`` samples -> ``(..., n, n)``."""
    a = (x.unsqueeze(-1) - x.unsqueeze(-2)).abs()
    return a - a.mean(dim=-1, keepdim=True) - a.mean(dim=-2, keepdim=True) + a.mean(dim=(-2, -1), keepdim=True)


def distance_correlation(x: torch.Tensor, y: torch.Tensor, *, squared: bool = False) -> torch.Tensor:
    """Distance correlation of two 1-d samples (paper 004 eq. 9), in [0, 1]; 0 iff independent.

    Args:
        x, y: ``(n,)`` or batched ``(..., n)`` tensors (the last dimension is the sample); the
            leading dimensions broadcast. Gradients flow to both.
        squared: return ``dCor^2`` (DisCo's original regulariser) instead of ``dCor``.

    Returns:
        one value per leading index (a scalar for 1-d inputs).
    """
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"distance correlation needs samples of equal size, got {x.shape[-1]} and {y.shape[-1]}")
    if x.shape[-1] < 2:
        raise ValueError("distance correlation needs at least two entries per sample")
    dtype = torch.promote_types(x.dtype, y.dtype)
    a, b = _centred_distances(x.to(dtype)), _centred_distances(y.to(dtype))
    xy = (a * b).mean(dim=(-2, -1))
    xx = a.square().mean(dim=(-2, -1))
    yy = b.square().mean(dim=(-2, -1))
    dcor2 = xy.clamp_min(0) / (xx * yy).clamp_min(_EPS).sqrt()
    return dcor2 if squared else (dcor2 + _EPS).sqrt()
