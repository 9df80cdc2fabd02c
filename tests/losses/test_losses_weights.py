"""The U-Net border weight map and balanced class weights."""

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from seglab.losses import balanced_class_weights, cross_entropy, median_frequency_weights, unet_weight_map


def two_squares(gap=2):
    """Two 8 x 8 squares side by side, ``gap`` background columns apart."""
    mask = np.zeros((16, 24), np.int64)
    mask[4:12, 2:10] = 1
    mask[4:12, 10 + gap : 18 + gap] = 1
    return mask


def test_gap_between_touching_squares_gets_the_highest_weight():
    mask = two_squares(gap=2)
    w = unet_weight_map(mask)
    gap = np.zeros_like(mask, bool)
    gap[4:12, 10:12] = True
    assert w[gap].min() > w[~gap].max()  # every gap pixel outweighs every other pixel
    # the formula at a gap pixel: 1 px to the left square, 2 px to the right one
    w_bg = mask.size / (2 * (mask == 0).sum())
    assert w[8, 10] == pytest.approx(w_bg + 10 * math.exp(-((1 + 2) ** 2) / (2 * 5**2)), rel=1e-6)
    # far from both squares the border term has vanished
    assert w[0, 23] == pytest.approx(w_bg, abs=0.01)


def test_class_term_balances_frequencies():
    mask = two_squares()
    w = unet_weight_map(mask, w0=0.0)
    counts = np.bincount(mask.ravel())
    assert np.allclose(np.unique(w), sorted(mask.size / (2 * counts)))
    assert np.isclose(w[mask == 1].sum(), w[mask == 0].sum())  # each class weighs the same in total


def test_one_object_has_no_border_term_and_touching_binary_squares_merge():
    single = np.zeros((12, 12), np.int64)
    single[3:9, 3:9] = 1
    assert np.allclose(unet_weight_map(single), unet_weight_map(single, w0=0.0))
    touching = two_squares(gap=0)  # one connected component in a binary mask...
    assert np.allclose(unet_weight_map(touching), unet_weight_map(touching, w0=0.0))
    instances = touching.copy()
    instances[:, 10:] *= 2  # ...but two objects in an instance mask
    instances[:, 10] = 0  # with the one-pixel background line U-Net's labels draw between cells
    w = unet_weight_map(instances, instances=True)
    assert w[8, 10] == w.max()


def test_ignored_pixels_get_zero_weight_and_class_weights_are_used():
    mask = two_squares()
    mask[0, :] = 255
    w = unet_weight_map(mask, class_weights=[1.0, 3.0])
    assert (w[0] == 0).all()
    assert np.allclose(w[mask == 1], 3.0)
    assert np.allclose(w[15, 23], 1.0, atol=0.01)


def test_balanced_weights_match_sklearn():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 5)
    ours = balanced_class_weights(np.bincount(labels))
    assert np.allclose(ours, compute_class_weight("balanced", classes=np.arange(3), y=labels))
    assert balanced_class_weights([4, 0, 4])[1] == 0.0


def test_weight_map_feeds_cross_entropy():
    mask = two_squares()
    w = torch.from_numpy(unet_weight_map(mask))[None]
    target = torch.from_numpy(mask)[None]
    logits = torch.zeros(1, 2, *mask.shape)
    logits[:, 1] = torch.from_numpy(mask).float() * 20 - 10  # confidently right everywhere...
    logits[0, 1, 4:12, 10:12] = 10.0  # ...except on the gap, which it fills in
    per_pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    expected = (per_pixel * w).sum() / w.sum()
    assert torch.allclose(cross_entropy(logits, target, pixel_weight=w), expected)
    assert cross_entropy(logits, target, pixel_weight=w) > 3 * cross_entropy(logits, target)


def test_median_frequency_weights_hand_worked_example():
    # three images of 8 labelled pixels, four classes (d in none):
    #   image 0: a 6, b 2   image 1: a 4, c 4   image 2: a 8
    # freq(a) = 18 / 24 (in all three images), freq(b) = 2 / 8 (image 0 only), freq(c) = 4 / 8 (image 1 only);
    # median over the present classes = 1/2 -> weights 2/3, 2, 1; d absent -> 0
    counts = [[6, 2, 0, 0], [4, 0, 4, 0], [8, 0, 0, 0]]
    w = median_frequency_weights(counts)
    assert np.allclose(w, [2 / 3, 2.0, 1.0, 0.0], rtol=0, atol=1e-12)
    # not the global frequency: b is 2 / 24 of all pixels, yet only the images holding b count
    assert not np.allclose(w[:3], np.median([18 / 24, 2 / 24, 4 / 24]) / np.array([18, 2, 4]) * 24)


def test_median_frequency_weights_invariants():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (12, 5)) * (rng.random((12, 5)) < 0.6)
    counts[:, 3] = 0  # a class in no image
    w = median_frequency_weights(counts)
    assert w[3] == 0 and (w[[0, 1, 2, 4]] > 0).all()
    assert np.allclose(median_frequency_weights(counts * 7), w)  # counts' scale does not matter
    assert np.allclose(median_frequency_weights(counts[rng.permutation(12)]), w)  # nor the images' order
    # the median of the present classes' weights is 1 for an odd number of them
    assert np.median(median_frequency_weights(counts[:, [0, 1, 2]])) == pytest.approx(1.0)
    assert np.array_equal(median_frequency_weights(np.zeros((2, 3))), np.zeros(3))
    with pytest.raises(ValueError, match="images, classes"):
        median_frequency_weights([1, 2, 3])
