"""Thin nn.Module wrappers around seglab.losses.functional."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.losses.functional import check_target, dice_loss


class DiceCELoss(nn.Module):
    """ce_weight * cross-entropy + dice_weight * soft Dice, both ignoring ``ignore_index`` pixels."""

    def __init__(
        self, ce_weight: float = 1.0, dice_weight: float = 1.0, ignore_index: int | None = 255
    ) -> None:
        super().__init__()
        self.ce_weight, self.dice_weight, self.ignore_index = ce_weight, dice_weight, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_target(logits, target, self.ignore_index)
        loss = logits.new_zeros(())
        if self.ce_weight:
            ignore = -100 if self.ignore_index is None else self.ignore_index
            loss = loss + self.ce_weight * F.cross_entropy(logits, target, ignore_index=ignore)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, target, self.ignore_index)
        return loss
