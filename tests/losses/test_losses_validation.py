"""Input validation: wrong dtypes, shapes and labels fail with messages that name the fix."""

import pytest
import torch

from seglab.losses import DiceCELoss, check_target, cross_entropy, dice_loss, infer_mode

LOGITS = torch.zeros(2, 3, 4, 4)
TARGET = torch.zeros(2, 4, 4, dtype=torch.long)


def test_valid_inputs_pass_and_modes_are_inferred():
    assert check_target(LOGITS, TARGET.where(TARGET != 0, 255)) == "multiclass"
    assert check_target(LOGITS[:, :1], TARGET) == "binary"
    assert check_target(LOGITS[:, :1], TARGET.unsqueeze(1).bool()) == "binary"
    assert check_target(LOGITS, torch.rand(2, 3, 4, 4)) == "multilabel"
    assert infer_mode(LOGITS, torch.zeros(2, 3, 4, 4)) == "multilabel"
    # non-int64 integer targets are fine too
    assert torch.isfinite(cross_entropy(LOGITS, TARGET.to(torch.uint8)))


@pytest.mark.parametrize(
    ("logits", "target", "mode", "message"),
    [
        (LOGITS, TARGET.float(), None, "integer class indices.*target.long"),
        (LOGITS, TARGET.bool(), "multiclass", "integer class indices"),
        (LOGITS, torch.zeros(2, 3, 4, 4, dtype=torch.long), "multiclass", "one-hot target"),
        (LOGITS, TARGET[:, :3], None, r"do not match: expected \(N, C, H, W\) and \(N, H, W\)"),
        (LOGITS, TARGET[:1], None, "do not match"),
        (LOGITS, TARGET + 3, None, "label 3 outside 0..2"),
        (LOGITS, TARGET - 1, None, "label -1 outside 0..2"),
        (LOGITS[:, :1], TARGET + 2, None, "label 2 outside 0..1"),
        (LOGITS[:, :1], TARGET, "multiclass", "C >= 2"),
        (LOGITS, TARGET, "binary", "one logit channel"),
        (LOGITS, torch.full((2, 3, 4, 4), 2.0), None, r"multilabel target values must be in \[0, 1\]"),
        (LOGITS.long(), TARGET, None, "logits must be a float"),
        (LOGITS, TARGET, "softmax", "mode must be one of"),
    ],
)
def test_bad_inputs_raise_helpful_errors(logits, target, mode, message):
    with pytest.raises(ValueError, match=message):
        check_target(logits, target, 255, mode)


def test_ignore_index_is_the_only_out_of_range_label_allowed():
    target = TARGET.clone()
    target[0, 0, 0] = 255
    check_target(LOGITS, target, 255)
    with pytest.raises(ValueError, match="label 255 outside 0..2"):
        check_target(LOGITS, target, ignore_index=None)
    with pytest.raises(ValueError, match="label 255"):
        dice_loss(LOGITS, target, ignore_index=-100)


def test_losses_validate_before_computing():
    with pytest.raises(ValueError, match="outside"):
        DiceCELoss()(LOGITS, TARGET + 5)
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        dice_loss(LOGITS, TARGET, class_weights=[1.0, 2.0])
