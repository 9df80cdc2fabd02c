"""Segmentation losses: pure functions and thin module wrappers."""

from seglab.losses.functional import check_target, dice_loss
from seglab.losses.modules import DiceCELoss

__all__ = ["DiceCELoss", "check_target", "dice_loss"]
