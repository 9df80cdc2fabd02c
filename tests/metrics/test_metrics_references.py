"""Parity with scikit-learn and torchmetrics on random maps with ignored pixels and absent classes.

Where a reference's policy differs from ours (it scores a class absent from both maps 0, we say NaN and
leave it out of the means), the tests show the difference is exactly that class.
"""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torchmetrics.classification import (
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from seglab.metrics import (
    confusion_matrix,
    dice,
    iou,
    mean_accuracy,
    per_image_scores,
    precision,
    recall,
    summarize,
)

C = 6  # class 5 never occurs; class 4 only in the prediction


def random_maps(seed=0, shape=(3, 9, 11), ignore=255):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, shape, generator=g)
    pred = torch.randint(0, 5, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.15] = ignore
    return pred, target


def sk_cm(pred, target, ignore):
    keep = np.ones(target.numel(), bool) if ignore is None else (target != ignore).reshape(-1).numpy()
    return skm.confusion_matrix(
        target.reshape(-1).numpy()[keep], pred.reshape(-1).numpy()[keep], labels=range(C)
    )


CASES = [(i, d) for i in (255, None, -1, 0, 100_000) for d in (torch.int64, torch.int32)]
CASES += [(255, torch.uint8), (None, torch.uint8)]


@pytest.mark.parametrize(("ignore", "dtype"), CASES)
def test_confusion_matrix_matches_sklearn(ignore, dtype):
    pred, target = random_maps(ignore=255 if ignore is None else ignore)
    if ignore is None:
        target = target.clamp_max(C - 1)  # no ignored pixels then: 255 -> an ordinary class
    if ignore == 0:  # an in-range ignore_index: those pixels are dropped like any other ignored ones
        target[target == 255] = 0
    cm = confusion_matrix(pred.to(dtype), target.to(dtype), C, ignore_index=ignore)
    assert cm.dtype == torch.int64
    assert np.array_equal(cm.numpy(), sk_cm(pred, target, ignore))


@pytest.mark.parametrize("ignore", [255, 100_000])
def test_per_image_confusion_matrices_match_sklearn(ignore):
    pred, target = random_maps(ignore=ignore)
    cms = confusion_matrix(pred, target, C, ignore, per_image=True)
    for i in range(pred.shape[0]):
        assert np.array_equal(cms[i].numpy(), sk_cm(pred[i], target[i], ignore))


def test_bad_labels_are_reported():
    pred, target = random_maps()
    with pytest.raises(ValueError, match="pred holds label 6"):
        confusion_matrix(torch.where(pred == 4, 6, pred), target, C)
    for per_image in (False, True):
        with pytest.raises(ValueError, match="target holds label 7"):
            confusion_matrix(pred, torch.where(target == 3, 7, target), C, per_image=per_image)
        with pytest.raises(ValueError, match="target holds label -2"):
            confusion_matrix(pred, torch.where(target == 3, -2, target), C, per_image=per_image)
        with pytest.raises(ValueError, match="target holds label 300"):
            confusion_matrix(pred, torch.where(target == 3, 300, target), C, per_image=per_image)
    with pytest.raises(ValueError, match="target holds label 7"):
        confusion_matrix(pred, torch.where(target == 3, 7, target), C, ignore_index=100_000)
    # validate="target" (used for argmax labels) still checks the target, not the prediction
    with pytest.raises(ValueError, match="target holds label 7"):
        confusion_matrix(pred, torch.where(target == 3, 7, target), C, validate="target")
    confusion_matrix(torch.where(pred == 4, 5, pred), target, C, validate="target")
    with pytest.raises(ValueError, match="integer labels"):
        confusion_matrix(pred.float(), target, C)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(pred[:1], target, C)


def absent_classes(cm):
    return (cm.sum(0) + cm.sum(1) == 0).numpy()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # class 4: on purpose
def test_per_class_scores_match_sklearn_outside_absent_classes():
    pred, target = random_maps(seed=1)
    cm = confusion_matrix(pred, target, C)
    keep = (target != 255).reshape(-1)
    t, p = target.reshape(-1)[keep].numpy(), pred.reshape(-1)[keep].numpy()
    absent = absent_classes(cm)
    assert absent.tolist() == [False] * 5 + [True]
    ref = {
        "iou": skm.jaccard_score(t, p, labels=range(C), average=None, zero_division=0),
        "dice": skm.f1_score(t, p, labels=range(C), average=None, zero_division=0),
        "precision": skm.precision_score(t, p, labels=range(C), average=None, zero_division=0),
        "recall": skm.recall_score(t, p, labels=range(C), average=None, zero_division=0),
    }
    ours = {"iou": iou(cm), "dice": dice(cm), "precision": precision(cm), "recall": recall(cm)}
    for name, values in ours.items():
        values = values.numpy()
        assert np.isnan(values[absent]).all(), name  # ours: undefined
        assert (ref[name][absent] == 0).all(), name  # sklearn: zero_division
        assert np.allclose(values[~absent], ref[name][~absent]), name
    # the same numbers once our absent score is set to sklearn's zero_division
    assert np.allclose(iou(cm, absent=0.0).numpy(), ref["iou"])
    # sklearn's balanced accuracy is the mean recall over ground-truth classes: our mean class accuracy
    assert mean_accuracy(cm) == pytest.approx(skm.balanced_accuracy_score(t, p))
    assert summarize(cm)["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p))


@pytest.mark.parametrize("average", ["none", "macro", "micro", "weighted"])
def test_iou_and_dice_match_torchmetrics(average):
    pred, target = random_maps(seed=2)
    cm = confusion_matrix(pred, target, C)
    jac = MulticlassJaccardIndex(C, average=average, ignore_index=255)
    f1 = MulticlassF1Score(C, average=average, ignore_index=255)
    ref_iou, ref_dice = jac(pred, target).double(), f1(pred, target).double()
    ours_iou, ours_dice = iou(cm, average), dice(cm, average)
    if average == "none":  # torchmetrics scores the absent class 0; we leave it undefined
        absent = torch.from_numpy(absent_classes(cm))
        assert ours_iou[absent].isnan().all() and (ref_iou[absent] == 0).all()
        assert ours_dice[absent].isnan().all() and (ref_dice[absent] == 0).all()
        ours_iou, ours_dice = ours_iou.nan_to_num(0.0), ours_dice.nan_to_num(0.0)
    # macro: torchmetrics also drops classes absent from both maps, so the means agree exactly
    assert torch.allclose(ours_iou, ref_iou, atol=1e-6)
    assert torch.allclose(ours_dice, ref_dice, atol=1e-6)


def test_precision_recall_match_torchmetrics():
    pred, target = random_maps(seed=3)
    cm = confusion_matrix(pred, target, C)
    for ours, ref in (
        (precision(cm, absent=0.0), MulticlassPrecision(C, average="none", ignore_index=255)),
        (recall(cm, absent=0.0), MulticlassRecall(C, average="none", ignore_index=255)),
    ):
        assert torch.allclose(ours, ref(pred, target).double(), atol=1e-6)


def test_per_image_dice_matches_torchmetrics_samplewise():
    pred, target = random_maps(seed=4, shape=(4, 8, 8))
    scores = per_image_scores(confusion_matrix(pred, target, C, per_image=True), absent=0.0)
    n = pred.shape[0]
    ref = MulticlassF1Score(C, average="none", multidim_average="samplewise", ignore_index=255)
    assert torch.allclose(scores["dice"], ref(pred.reshape(n, -1), target.reshape(n, -1)).double(), atol=1e-6)
    # NaN policy: per-image means leave out the classes absent from that image; torchmetrics' macro too
    means = per_image_scores(confusion_matrix(pred, target, C, per_image=True))["mean_dice"]
    ref_macro = MulticlassF1Score(C, average="macro", multidim_average="samplewise", ignore_index=255)
    assert torch.allclose(means, ref_macro(pred.reshape(n, -1), target.reshape(n, -1)).double(), atol=1e-6)
    # ... and averaging per image is not the global Dice
    global_mean = float(dice(confusion_matrix(pred, target, C), "macro"))
    assert abs(float(means.mean()) - global_mean) > 1e-3
