"""Loss values against PyTorch/torchvision references, NumPy formulas and known answers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from seglab.losses import functional as LF
from seglab.metrics import confusion_matrix, dice, iou

N, C, H, W = 2, 4, 5, 6


def data(seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (N, H, W), generator=g)
    if ignore:
        target[0, :2] = 255
    return logits, target


def one_hot_probs(labels, c=C):
    return F.one_hot(labels, c).movedim(-1, 1).double()


def test_cross_entropy_matches_pytorch():
    logits, target = data()
    w = [0.5, 1.0, 2.0, 1.5]
    ours = LF.cross_entropy(logits, target, w, ignore_index=255, label_smoothing=0.1)
    ref = F.cross_entropy(logits, target, torch.tensor(w).double(), ignore_index=255, label_smoothing=0.1)
    assert torch.allclose(ours, ref)


def test_cross_entropy_pixel_weights_match_numpy():
    logits, target = data(1)
    pw = torch.rand(N, H, W, dtype=torch.float64)
    cw = np.array([0.5, 1.0, 2.0, 1.5])
    x, t, p = logits.numpy(), target.numpy(), pw.numpy()
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    num = den = 0.0
    for n, i, j in np.ndindex(N, H, W):
        if t[n, i, j] != 255:
            wt = cw[t[n, i, j]] * p[n, i, j]
            num, den = num - wt * logp[n, t[n, i, j], i, j], den + wt
    assert float(LF.cross_entropy(logits, target, cw.tolist(), pixel_weight=pw)) == pytest.approx(num / den)


def test_binary_cross_entropy_matches_pytorch_on_valid_pixels():
    logits, target = data(2)
    x, t = logits[:, :1], target.clamp_max(1).where(target != 255, 255)
    valid = t != 255
    ours = LF.binary_cross_entropy(x, t, pos_weight=3.0)
    ref = F.binary_cross_entropy_with_logits(
        x[:, 0][valid], t[valid].double(), pos_weight=torch.tensor(3.0, dtype=torch.float64)
    )
    assert torch.allclose(ours, ref)
    # a bool target is a binary target
    b = target.remainder(2)
    assert torch.allclose(LF.binary_cross_entropy(x, b.bool()), LF.binary_cross_entropy(x, b))


def test_sigmoid_focal_loss_matches_torchvision():
    logits, target = data(3, ignore=False)
    x, t = logits[:, :1], target.remainder(2)
    ours = LF.focal_loss(x, t, gamma=2.0, alpha=0.25)
    ref = sigmoid_focal_loss(x, t.unsqueeze(1).double(), alpha=0.25, gamma=2.0, reduction="mean")
    assert torch.allclose(ours, ref)
    ml_target = (torch.rand(N, C, H, W, generator=torch.Generator().manual_seed(0)) > 0.5).long()
    ref = sigmoid_focal_loss(logits, ml_target.double(), alpha=-1, gamma=1.0, reduction="mean")
    assert torch.allclose(LF.focal_loss(logits, ml_target, gamma=1.0), ref)


def test_multiclass_focal_loss_formula_and_cross_entropy_limit():
    logits, target = data(4)
    assert torch.allclose(
        LF.focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target, ignore_index=255)
    )
    alpha = np.array([1.0, 0.5, 2.0, 1.0])
    p = logits.softmax(1).numpy()
    t = target.numpy()
    terms = [
        -alpha[t[n, i, j]] * (1 - p[n, t[n, i, j], i, j]) ** 2 * np.log(p[n, t[n, i, j], i, j])
        for n, i, j in np.ndindex(N, H, W)
        if t[n, i, j] != 255
    ]
    assert float(LF.focal_loss(logits, target, gamma=2.0, alpha=alpha.tolist())) == pytest.approx(
        np.mean(terms)
    )


def numpy_dice(probs, target, smooth, per_image=False, ignore=255):
    p, t = probs.numpy(), target.numpy()
    valid = (t != ignore)[:, None]
    onehot = np.stack([(t == c) for c in range(p.shape[1])], 1) & valid
    p = p * valid
    axes = (2, 3) if per_image else (0, 2, 3)
    inter = (p * onehot).sum(axes)
    score = (2 * inter + smooth) / (p.sum(axes) + onehot.sum(axes) + smooth)
    return 1 - score.mean()


@pytest.mark.parametrize("per_image", [False, True])
def test_dice_loss_matches_numpy_formula(per_image):
    logits, target = data(5)
    ours = LF.dice_loss(logits, target, smooth=0.5, per_image=per_image)
    assert float(ours) == pytest.approx(numpy_dice(logits.softmax(1), target, 0.5, per_image))


def test_dice_loss_of_a_perfect_one_hot_prediction_is_zero():
    _, target = data(6)
    labels = target.where(target != 255, 0)
    for smooth in (0.0, 1.0):
        assert float(LF.dice_loss(one_hot_probs(labels), target, smooth=smooth, from_logits=False)) == 0.0
    assert float(LF.dice_loss(1e4 * one_hot_probs(labels), target)) == 0.0  # saturated logits
    binary = labels.remainder(2)
    assert float(LF.dice_loss(1e4 * (2 * binary - 1).unsqueeze(1).double(), binary)) == 0.0


def test_soft_dice_on_hard_predictions_is_one_minus_metric_dice():
    _, target = data(7)
    pred = torch.randint(0, C, target.shape, generator=torch.Generator().manual_seed(1))
    loss = LF.dice_loss(one_hot_probs(pred), target, smooth=0.0, from_logits=False)
    assert float(loss) == pytest.approx(1 - float(dice(confusion_matrix(pred, target, C), "macro")))


def test_dice_options_class_weights_background_multilabel():
    logits, target = data(8)
    tp, fp, fn = LF.soft_counts(logits, target)
    per_class = 1 - (2 * tp + 1) / (2 * tp + fp + fn + 1)
    w = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    weighted = LF.dice_loss(logits, target, class_weights=w)
    assert torch.allclose(weighted, (per_class * w).sum() / w.sum())
    assert torch.allclose(LF.dice_loss(logits, target, include_background=False), per_class[1:].mean())
    # multilabel = the mean of C independent binary Dice losses on the channels
    ml = (torch.rand(N, C, H, W, generator=torch.Generator().manual_seed(2)) > 0.6).long()
    per_channel = [LF.dice_loss(logits[:, c : c + 1], ml[:, c]) for c in range(C)]
    assert torch.allclose(LF.dice_loss(logits, ml, mode="multilabel"), torch.stack(per_channel).mean())


def test_tversky_special_cases():
    logits, target = data(9)
    assert torch.allclose(
        LF.tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=0.5),
        LF.dice_loss(logits, target, smooth=1.0),
    )
    assert torch.allclose(LF.tversky_loss(logits, target, alpha=1, beta=1), LF.jaccard_loss(logits, target))
    # beta > alpha punishes missed pixels more: an all-background prediction scores worse
    empty = one_hot_probs(torch.zeros_like(target))
    recall_heavy = LF.tversky_loss(
        empty, target, alpha=0.2, beta=0.8, from_logits=False, include_background=False
    )
    precision_heavy = LF.tversky_loss(
        empty, target, alpha=0.8, beta=0.2, from_logits=False, include_background=False
    )
    assert recall_heavy > precision_heavy


def test_lovasz_softmax_on_hard_predictions_is_one_minus_iou():
    _, target = data(10)
    pred = torch.randint(0, C, target.shape, generator=torch.Generator().manual_seed(3))
    per_class_iou = iou(confusion_matrix(pred, target, C))
    present = torch.tensor([(target == c).any() for c in range(C)])
    expected = (1 - per_class_iou[present]).mean()
    assert torch.allclose(LF.lovasz_softmax(one_hot_probs(pred), target, from_logits=False), expected)
    all_classes = (1 - per_class_iou.nan_to_num(1.0)).mean()
    assert torch.allclose(
        LF.lovasz_softmax(one_hot_probs(pred), target, classes="all", from_logits=False), all_classes
    )


@pytest.mark.parametrize("side", [2, 8])
def test_dice_counts_a_rare_class_as_much_as_the_background(side):
    """Why Dice suits imbalanced data: missing a tiny class costs half the loss, whatever its size."""
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, :side, :side] = 1
    fg = side * side
    all_background = one_hot_probs(torch.zeros_like(target), 2)
    loss = LF.dice_loss(all_background, target, smooth=0.0, from_logits=False)
    bg_dice = 2 * (1024 - fg) / (1024 + 1024 - fg)  # the foreground's Dice is 0
    assert float(loss) == pytest.approx(1 - bg_dice / 2)
    assert float(loss) > 0.49  # while the per-pixel error of this prediction is only fg / 1024
