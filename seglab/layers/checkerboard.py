"""Checkerboard artifacts, measured: how much of a map is a period-2 pattern.

A stride-2 transposed convolution with a 3x3 kernel gives the four output phases (even/odd row x even/odd
column) different numbers of kernel taps, so even a constant input comes out as a checkerboard. The score
below puts a number on it, so the claim "resize-convolution does not do this" is a test, not a picture.
"""

from __future__ import annotations

import torch
from torch import Tensor


def checkerboard_score(y: Tensor, border: int = 1, reduction: str = "mean", eps: float = 1e-10) -> Tensor:
    """Share of each map's variance that is a period-2 pattern: 0 = none, 1 = nothing but a checkerboard.

    Each (H, W) map (the last two dims of ``y``) is split into its four phase sub-grids y[a::2, b::2];
    the score is the variance between the phase means (weighted by their sizes) over the total variance,
    in [0, 1] by the law of total variance. For even H and W this is exactly the energy of the 2-D DFT at
    the Nyquist frequencies (pi, 0), (0, pi) and (pi, pi) over all energy except the mean's.
    ``border`` pixels are cut off every side first, so zero-padding effects at the edges do not count.
    A constant map scores 0 (``eps``, relative to the mean square, guards the division).
    ``reduction``: "mean" (a scalar over all maps) or "none" (one score per map, shape ``y.shape[:-2]``).
    Not trainable; computed in float64.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if border:
        y = y[..., border:-border, border:-border]
    if y.shape[-2] < 2 or y.shape[-1] < 2:
        raise ValueError(f"need at least 2x2 pixels after cutting the border, got {tuple(y.shape[-2:])}")
    y = y.detach().to(torch.float64)
    mean = y.mean(dim=(-2, -1))
    total = (y - mean[..., None, None]).pow(2).mean(dim=(-2, -1))
    between = torch.zeros_like(total)
    for a in (0, 1):
        for b in (0, 1):
            phase = y[..., a::2, b::2]
            share = phase.shape[-2] * phase.shape[-1] / (y.shape[-2] * y.shape[-1])
            between = between + share * (phase.mean(dim=(-2, -1)) - mean).pow(2)
    score = between / (total + eps * y.pow(2).mean(dim=(-2, -1)) + torch.finfo(torch.float64).tiny)
    return score.mean() if reduction == "mean" else score


__all__ = ["checkerboard_score"]
