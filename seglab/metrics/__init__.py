"""Segmentation metrics: pure functions on confusion matrices and a streaming meter."""

from seglab.metrics.functional import confusion_matrix, dice, iou, pixel_accuracy, summarize
from seglab.metrics.meter import ConfusionMatrix

__all__ = ["ConfusionMatrix", "confusion_matrix", "dice", "iou", "pixel_accuracy", "summarize"]
