"""IoU, Dice and friends on hand-made 4x4 masks whose answers are counted by hand in the comments."""

import math

import pytest
import torch

from seglab.metrics import (
    class_accuracy,
    confusion_matrix,
    dice,
    fw_iou,
    iou,
    mean_accuracy,
    pixel_accuracy,
    pixel_error,
    precision,
    recall,
    summarize,
)

# Binary: A (target) and B (prediction), 4 foreground pixels each, overlapping in 2.
A = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
B = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])

# Multiclass with 4 classes and ignored pixels (255). Class 3 is predicted only on ignored pixels, so it is
# absent from both maps once those are dropped.
T = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]])
P = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [2, 1, 3, 3], [0, 2, 3, 1]])
# class 0: GT {00,01,10,11}, pred {00,01,10,30}       -> TP 3, FP 1, FN 1: IoU 3/5, Dice 6/8
# class 1: GT {02,03,12,13}, pred {02,03,11,12,13,21} -> TP 4, FP 2, FN 0: IoU 4/6, Dice 8/10
# class 2: GT {20,21,30,31}, pred {20,31}             -> TP 2, FP 0, FN 2: IoU 2/4, Dice 4/6
IOU = [3 / 5, 4 / 6, 2 / 4]
DICE = [6 / 8, 8 / 10, 4 / 6]


def close(actual, expected):
    return all(
        (math.isnan(a) and math.isnan(e)) or a == pytest.approx(e, abs=1e-12)
        for a, e in zip(actual, expected, strict=True)
    )


def test_binary_iou_and_dice_by_hand():
    cm = confusion_matrix(B, A, 2)
    assert cm.tolist() == [[10, 2], [2, 2]]  # cm[t, p]: 10 bg-bg, 2 missed, 2 false alarms, 2 hits
    # foreground: |A n B| = 2, |A u B| = 6; background: 10 shared, union 14
    assert close(iou(cm).tolist(), [10 / 14, 2 / 6])
    assert close(dice(cm).tolist(), [2 * 10 / 24, 2 * 2 / 8])
    assert pixel_accuracy(cm) == 12 / 16
    assert pixel_error(cm) == 4 / 16


def test_multiclass_by_hand_with_ignore_and_absent_class():
    cm = confusion_matrix(P, T, 4, ignore_index=255)
    assert int(cm.sum()) == 12  # the four 255 pixels are dropped
    assert close(iou(cm).tolist(), [*IOU, math.nan])
    assert close(dice(cm).tolist(), [*DICE, math.nan])
    assert close(precision(cm).tolist(), [3 / 4, 4 / 6, 2 / 2, math.nan])
    assert close(recall(cm).tolist(), [3 / 4, 4 / 4, 2 / 4, math.nan])
    assert pixel_accuracy(cm) == pytest.approx(9 / 12)
    assert mean_accuracy(cm) == pytest.approx((3 / 4 + 1 + 2 / 4) / 3)
    assert fw_iou(cm) == pytest.approx((4 * 3 / 5 + 4 * 4 / 6 + 4 * 2 / 4) / 12)
    s = summarize(cm)
    assert s["miou"] == pytest.approx(sum(IOU) / 3)  # the absent class is excluded, not counted as 0 or 1
    assert s["mean_dice"] == pytest.approx(sum(DICE) / 3)


def test_dice_equals_two_iou_over_one_plus_iou_per_class():
    cm = confusion_matrix(P, T, 4)
    i, d = iou(cm)[:3], dice(cm)[:3]
    assert torch.allclose(d, 2 * i / (1 + i))


def test_absent_policy_is_configurable():
    cm = confusion_matrix(P, T, 4)
    assert summarize(cm, absent=0.0)["miou"] == pytest.approx(sum(IOU) / 4)
    assert summarize(cm, absent=1.0)["miou"] == pytest.approx((sum(IOU) + 1) / 4)
    assert iou(cm, absent=1.0)[3] == 1.0


def test_class_present_on_one_side_only_is_defined_not_absent():
    target = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 2], [1, 1]])  # class 2 hallucinated once, never in the ground truth
    cm = confusion_matrix(pred, target, 3)
    assert iou(cm)[2] == 0.0 and dice(cm)[2] == 0.0
    assert precision(cm)[2] == 0.0 and recall(cm)[2] == 0.0
    assert math.isnan(float(class_accuracy(cm)[2]))  # FCN "mean accuracy" counts ground-truth classes only
    assert mean_accuracy(cm) == pytest.approx((1 / 2 + 1) / 2)
    missed = confusion_matrix(torch.zeros(2, 2, dtype=torch.long), target, 3)  # class 1 never predicted
    assert iou(missed)[1] == 0.0 and precision(missed)[1] == 0.0 and recall(missed)[1] == 0.0


def test_averages_micro_macro_weighted():
    cm = confusion_matrix(P, T, 4)
    assert float(iou(cm, "macro")) == pytest.approx(sum(IOU) / 3)
    assert float(iou(cm, "micro")) == pytest.approx(9 / (9 + 3 + 3))  # sum TP / sum (TP + FP + FN)
    assert float(dice(cm, "micro")) == pytest.approx(pixel_accuracy(cm))  # single-label: micro F1 = accuracy
    assert float(iou(cm, "weighted")) == pytest.approx(fw_iou(cm))
    with pytest.raises(ValueError, match="average"):
        iou(cm, "samples")


def test_per_image_matrices_and_scores_by_hand():
    pred, target = torch.stack([B, A]), torch.stack([A, A])  # image 0: IoU_fg 1/3, image 1: perfect
    cms = confusion_matrix(pred, target, 2, per_image=True)
    assert cms.shape == (2, 2, 2)
    assert close(iou(cms)[:, 1].tolist(), [2 / 6, 1.0])
    assert torch.equal(cms.sum(0), confusion_matrix(pred, target, 2))
    # global (micro over images) foreground IoU 6/10 differs from the mean of per-image IoUs (1/3 + 1) / 2
    assert float(iou(cms.sum(0))[1]) == pytest.approx(6 / 10)
    assert float(iou(cms)[:, 1].mean()) == pytest.approx(2 / 3)
