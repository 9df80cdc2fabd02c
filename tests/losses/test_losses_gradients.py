"""Loss gradients: gradcheck on tiny float64 inputs, and the ignore_index policy seen through the gradient."""

import pytest
import torch
from torch.autograd import gradcheck

from seglab.losses import functional as LF

N, C, H, W = 2, 3, 3, 4


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def multiclass(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (N, H, W), generator=g)
    target[0, 0, :2] = 255
    return logits, target


def binary(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, 1, H, W, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N, H, W), generator=g)
    target[1, 2, 1:] = 255
    return logits, target


def multilabel(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N, C, H, W), generator=g)
    target[0, 1, 0] = 255
    return logits, target


PIXEL_W = torch.rand(N, H, W, generator=torch.Generator().manual_seed(9), dtype=torch.float64) + 0.5

LOSSES = {
    "ce": (multiclass, lambda x, t: LF.cross_entropy(x, t, [1.0, 2.0, 0.5], label_smoothing=0.1)),
    "ce_pixel_weight": (multiclass, lambda x, t: LF.cross_entropy(x, t, pixel_weight=PIXEL_W)),
    "bce": (binary, lambda x, t: LF.binary_cross_entropy(x, t, pos_weight=2.0, label_smoothing=0.1)),
    "bce_multilabel": (multilabel, lambda x, t: LF.binary_cross_entropy(x, t)),
    "focal": (multiclass, lambda x, t: LF.focal_loss(x, t, gamma=2.0, alpha=[0.5, 1.0, 2.0])),
    "focal_binary": (binary, lambda x, t: LF.focal_loss(x, t, gamma=1.5, alpha=0.25)),
    "dice": (multiclass, lambda x, t: LF.dice_loss(x, t, smooth=0.5)),
    "dice_per_image_weighted": (
        multiclass,
        lambda x, t: LF.dice_loss(x, t, per_image=True, class_weights=[1, 2, 3], include_background=False),
    ),
    "dice_binary": (binary, lambda x, t: LF.dice_loss(x, t)),
    "dice_multilabel": (multilabel, lambda x, t: LF.dice_loss(x, t, smooth=0.0)),
    "dice_pixel_weight": (multiclass, lambda x, t: LF.dice_loss(x, t, pixel_weight=PIXEL_W)),
    "tversky_focal": (multiclass, lambda x, t: LF.tversky_loss(x, t, alpha=0.3, beta=0.7, gamma=1.5)),
    "jaccard": (multiclass, lambda x, t: LF.jaccard_loss(x, t)),
    "lovasz": (multiclass, lambda x, t: LF.lovasz_softmax(x, t)),
    "lovasz_per_image_all": (multiclass, lambda x, t: LF.lovasz_softmax(x, t, classes="all", per_image=True)),
    "lovasz_binary": (binary, lambda x, t: LF.lovasz_softmax(x, t)),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck(name):
    make, fn = LOSSES[name]
    logits, target = make()
    logits.requires_grad_(True)
    assert gradcheck(lambda x: fn(x, target), (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_ignored_pixels_change_nothing(name):
    make, fn = LOSSES[name]
    logits, target = make()
    ignored = (target == 255) if target.dim() == logits.dim() else (target == 255).unsqueeze(1)
    ignored = ignored.expand_as(logits)
    assert ignored.any()
    scrambled = torch.where(ignored, 50 * torch.randn_like(logits), logits)
    x1, x2 = logits.clone().requires_grad_(True), scrambled.clone().requires_grad_(True)
    l1, l2 = fn(x1, target), fn(x2, target)
    l1.backward()
    l2.backward()
    assert torch.allclose(l1, l2, atol=1e-12)  # invariant to the ignored pixels' logits
    assert (x1.grad[ignored] == 0).all()  # and they get no gradient
    assert torch.allclose(x1.grad, x2.grad, atol=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_ignored_batch_gives_finite_zero_gradient(name):
    make, fn = LOSSES[name]
    logits, target = make()
    target = torch.full_like(target, 255)
    x = logits.clone().requires_grad_(True)
    loss = fn(x, target)
    loss.backward()
    assert torch.isfinite(loss) and (x.grad == 0).all()
