"""Segmentation losses: pure functions, thin module wrappers, a registry and the U-Net weight map.

One ``ignore_index`` policy everywhere: ignored pixels add nothing to any numerator or denominator and
get zero gradient. ``make_loss(name_or_mapping, class_weights=None, **options)`` builds a loss from a config
value, its cross-entropy terms with the class weights.
"""

from seglab.losses.functional import (
    binary_cross_entropy,
    check_target,
    cross_entropy,
    dice_loss,
    focal_loss,
    global_batch,
    infer_mode,
    jaccard_loss,
    lovasz_softmax,
    soft_counts,
    trusted_labels,
    tversky_loss,
)
from seglab.losses.modules import (
    LOSSES,
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    DiceCELoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszSoftmaxLoss,
    TverskyLoss,
    WeightedSumLoss,
    list_losses,
    make_loss,
)
from seglab.losses.weights import balanced_class_weights, median_frequency_weights, unet_weight_map

__all__ = [
    "LOSSES",
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "LovaszSoftmaxLoss",
    "TverskyLoss",
    "WeightedSumLoss",
    "balanced_class_weights",
    "binary_cross_entropy",
    "check_target",
    "trusted_labels",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
    "global_batch",
    "infer_mode",
    "jaccard_loss",
    "list_losses",
    "lovasz_softmax",
    "make_loss",
    "median_frequency_weights",
    "soft_counts",
    "tversky_loss",
    "unet_weight_map",
]
