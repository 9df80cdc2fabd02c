"""Segmentation metrics: pure functions on confusion matrices and label maps, and streaming meters.

One policy everywhere: ``ignore_index`` pixels are dropped before counting, and a class absent from both
the ground truth and the prediction scores NaN (configurable via ``absent``) and is excluded from means.
"""

from seglab.metrics.boundary import boundary_counts, boundary_f1, boundary_iou
from seglab.metrics.functional import (
    class_accuracy,
    confusion_matrix,
    dice,
    fw_iou,
    iou,
    mean_accuracy,
    per_image_scores,
    pixel_accuracy,
    pixel_error,
    precision,
    recall,
    summarize,
)
from seglab.metrics.meter import BoundaryMeter, ConfusionMatrix, RandMeter, logits_to_labels
from seglab.metrics.rand import adapted_rand_error, label_components

__all__ = [
    "BoundaryMeter",
    "ConfusionMatrix",
    "RandMeter",
    "adapted_rand_error",
    "boundary_counts",
    "boundary_f1",
    "boundary_iou",
    "class_accuracy",
    "confusion_matrix",
    "dice",
    "fw_iou",
    "iou",
    "label_components",
    "logits_to_labels",
    "mean_accuracy",
    "per_image_scores",
    "pixel_accuracy",
    "pixel_error",
    "precision",
    "recall",
    "summarize",
]
