"""Module wrappers and make_loss: names and weighted sums from config values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.errors import ConfigError
from seglab.losses import (
    LOSSES,
    CrossEntropyLoss,
    DiceCELoss,
    DiceLoss,
    TverskyLoss,
    WeightedSumLoss,
    make_loss,
)
from seglab.losses import functional as LF


def data(channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, 5, 6, generator=g)
    target = torch.randint(0, max(channels, 2), (2, 5, 6), generator=g)
    target[0, 0] = 255
    return logits, target


def test_registry_offers_every_loss_by_name():
    assert {"ce", "bce", "dice", "dice_ce", "focal", "tversky", "jaccard", "lovasz"} <= set(LOSSES.list())
    logits, target = data()
    for name in LOSSES.list():
        if name == "bce":
            continue  # needs sigmoid outputs; checked below
        loss = make_loss(name, ignore_index=255)
        value = loss(logits, target)
        assert value.dim() == 0 and torch.isfinite(value), name


def test_dice_ce_keeps_its_original_signature_and_value():
    logits, target = data()
    loss = DiceCELoss(0.7, 0.3, 255)
    expected = 0.7 * LF.cross_entropy(logits, target) + 0.3 * LF.dice_loss(logits, target)
    assert torch.allclose(loss(logits, target), expected)
    assert set(loss.components) == {"ce", "dice"}
    assert torch.allclose(DiceCELoss(1.0, 0.0)(logits, target), LF.cross_entropy(logits, target))


def test_mapping_spec_is_a_weighted_sum_with_options():
    logits, target = data()
    loss = make_loss({"ce": 1.0, "dice": {"weight": 0.5, "smooth": 0.0}, "lovasz": 0.25}, ignore_index=255)
    assert isinstance(loss, WeightedSumLoss)
    expected = (
        LF.cross_entropy(logits, target)
        + 0.5 * LF.dice_loss(logits, target, smooth=0.0)
        + 0.25 * LF.lovasz_softmax(logits, target)
    )
    assert torch.allclose(loss(logits, target), expected)


def test_config_errors_name_the_choices():
    with pytest.raises(ConfigError, match="unknown loss 'dcie'.*dice_ce"):
        make_loss("dcie")
    with pytest.raises(ConfigError, match="no option 'smoth'.*smooth"):
        make_loss("dice", smoth=1.0)
    with pytest.raises(ConfigError, match="no option 'beta2'"):
        make_loss({"tversky": {"beta2": 0.7}})
    with pytest.raises(ConfigError, match="weight"):
        make_loss({"ce": "heavy"})


def test_single_channel_logits_switch_to_sigmoid_losses():
    logits, target = data(channels=1)  # targets in {0, 1, 255}
    assert torch.allclose(CrossEntropyLoss()(logits, target), LF.binary_cross_entropy(logits, target))
    expected = LF.binary_cross_entropy(logits, target) + LF.dice_loss(logits, target, mode="binary")
    assert torch.allclose(DiceCELoss()(logits, target), expected)
    assert torch.allclose(
        make_loss("bce", pos_weight=2.0)(logits, target),
        LF.binary_cross_entropy(logits, target, pos_weight=2.0),
    )


def test_pixel_weight_goes_to_the_per_pixel_terms_only():
    logits, target = data()
    pw = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(1))
    loss = DiceCELoss()(logits, target, pixel_weight=pw)
    expected = LF.cross_entropy(logits, target, pixel_weight=pw) + LF.dice_loss(logits, target)
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="none of the terms"):
        make_loss({"dice": 1.0})(logits, target, pixel_weight=pw)


def test_class_weights_are_buffers_that_follow_the_module():
    loss = make_loss("ce", weight=[1.0, 2.0, 3.0])
    assert "weight" in dict(loss.named_buffers())
    loss = loss.double()
    assert loss.weight.dtype == torch.float64
    logits, target = data()
    ref = LF.cross_entropy(logits.double(), target, [1.0, 2.0, 3.0])
    assert torch.allclose(loss(logits.double(), target), ref)
    assert isinstance(make_loss("tversky", alpha=0.1, beta=0.9, smooth=0.5), TverskyLoss)
    # a region loss's class weights are its own option (make_loss's class_weights weight the cross-entropy)
    dice = make_loss({"dice": {"class_weights": [0.0, 1.0, 1.0], "per_image": True}})
    assert isinstance(dice.losses["dice"], DiceLoss)
    assert torch.allclose(
        dice(logits, target), LF.dice_loss(logits, target, class_weights=[0.0, 1.0, 1.0], per_image=True)
    )


def test_make_loss_builds_the_cross_entropy_with_the_class_weights():
    # worked example: pixel 1 logits (0, 0), class 0: -log 1/2; pixel 2 logits (0, ln 3), class 1: -log 3/4
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    w = [1.0, 3.0]
    by_hand = (1 * math.log(2) + 3 * math.log(4 / 3)) / (1 + 3)  # mean weighted by the pixels' class weights
    ce = make_loss("ce", class_weights=w, ignore_index=255)
    assert isinstance(ce, CrossEntropyLoss) and ce.weight.tolist() == w  # built with them, a buffer
    value = ce(logits, target)
    assert value.item() == pytest.approx(by_hand, rel=1e-6)
    assert torch.allclose(value, F.cross_entropy(logits, target, weight=torch.tensor(w)))
    assert not torch.allclose(value, F.cross_entropy(logits, target))  # the weights do change it
    # every cross-entropy term gets them (dice_ce's too); the region terms keep their own (none)
    summed = make_loss({"ce": 1.0, "dice_ce": 0.5, "dice": 0.5}, class_weights=np.array(w), ignore_index=255)
    assert summed.losses["ce"].weight.tolist() == w
    assert summed.losses["dice_ce"].losses["ce"].weight.tolist() == w
    assert summed.losses["dice"].class_weights is None
    assert summed.losses["dice_ce"].losses["dice"].class_weights is None
    assert make_loss("dice_ce", class_weights=w).losses["ce"].weight.tolist() == w


def test_make_loss_refuses_bad_class_weights_in_one_line():
    cases = [
        ([-1.0, 2.0], "class_weights must be a list of one finite weight >= 0 per class"),
        ([0.0, 0.0], "not all 0"),
        ([1.0, math.inf], "finite"),
        (np.array([1.0, np.nan]), "finite"),
        ([], "class_weights must be"),
        ("balanced", "class_weights must be a list"),  # names are resolved from the data by train
        ([[1.0, 2.0]], "class_weights must be"),
    ]
    for bad, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            make_loss("ce", class_weights=bad)
        assert "\n" not in str(e.value), bad
    with pytest.raises(ConfigError, match="train.class_weights weights the .*train.loss dice has none"):
        make_loss("dice", class_weights=[1.0, 2.0], prefix="train.")
    with pytest.raises(ConfigError, match="class_weights weights the cross-entropy term, but loss .*"):
        make_loss({"dice": 1.0, "lovasz": 1.0}, class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="both weight the cross-entropy"):
        make_loss({"dice_ce": {"class_weights": [1.0, 1.0]}}, class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="both weight the cross-entropy"):
        make_loss("ce", weight=[1.0, 1.0], class_weights=[1.0, 2.0])
