"""Adapted Rand error (ISBI 2012 / CREMI) against pair counting by brute force and scikit-image."""

import itertools

import numpy as np
import pytest
import torch

from seglab.metrics import adapted_rand_error, confusion_matrix, label_components, pixel_error


def brute_force(pred, target, ignore=(0,)):
    """Rand precision/recall/error by enumerating ordered pairs of distinct, non-ignored pixels."""
    p, t = np.asarray(pred).ravel(), np.asarray(target).ravel()
    idx = [i for i in range(t.size) if t[i] not in ignore]
    both = same_p = same_t = 0
    for i, j in itertools.permutations(idx, 2):
        sp, st = p[i] == p[j], t[i] == t[j]
        both, same_p, same_t = both + (sp and st), same_p + sp, same_t + st
    prec, rec = both / same_p, both / same_t
    return 1 - 2 * prec * rec / (prec + rec), prec, rec


def random_labels(seed, shape=(6, 7), k=4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, size=shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pair_counting(seed):
    pred, target = random_labels(seed), random_labels(seed + 10)
    err, prec, rec = adapted_rand_error(pred, target)
    ref = brute_force(pred, target)
    assert (err, prec, rec) == pytest.approx(ref)


def test_split_and_merge_known_answers():
    target = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [3, 3, 3, 3]])
    assert adapted_rand_error(target, target) == pytest.approx((0.0, 1.0, 1.0))
    merged = np.where(target > 0, 9, 0)  # every cell merged: recall stays 1, precision drops
    err, prec, rec = adapted_rand_error(merged, target)
    # true same-segment ordered pairs: 3 cells x 4 pixels -> 3 * 12 = 36; predicted: 12 pixels -> 132
    assert rec == 1.0 and prec == pytest.approx(36 / 132)
    split = np.arange(16).reshape(4, 4)  # every pixel its own segment: no pair together
    assert adapted_rand_error(split, target)[2] == 0.0


def test_membrane_pixels_in_the_ground_truth_are_ignored():
    target = np.array([[1, 1, 0, 2, 2]])
    pred_a = np.array([[5, 5, 5, 6, 6]])  # disagree only on the membrane pixel
    pred_b = np.array([[5, 5, 6, 6, 6]])
    assert adapted_rand_error(pred_a, target) == adapted_rand_error(pred_b, target)


def test_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    pred, target = random_labels(3, (20, 20), 6), random_labels(4, (20, 20), 5)
    err, prec, rec = adapted_rand_error(pred, target)
    ref_err, ref_prec, ref_rec = skm.adapted_rand_error(target, pred)
    assert err == pytest.approx(ref_err)
    # scikit-image returns precision and recall swapped w.r.t. its docstring (its issue #6485), and so its
    # alpha weights the other side: alpha there is 1 - alpha here
    assert (prec, rec) == pytest.approx((ref_rec, ref_prec))
    assert adapted_rand_error(pred, target, alpha=0.3)[0] == pytest.approx(
        skm.adapted_rand_error(target, pred, alpha=0.7)[0]
    )


def test_label_components_and_connectivity():
    mask = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    four = label_components(mask)
    assert four.max() == 3 and four[0, 0] == four[1, 1] and four[2, 2] != four[3, 3]
    assert label_components(torch.from_numpy(mask), connectivity=2).max() == 1
    # ISBI usage: components of the cell interior (1), membranes (0) ignored in the ground truth
    err, _, _ = adapted_rand_error(label_components(mask), label_components(mask))
    assert err == 0.0


def test_pixel_error_is_the_misclassified_share():
    target = torch.tensor([[1, 1, 0, 0, 1]])
    pred = torch.tensor([[1, 0, 0, 1, 1]])
    assert pixel_error(confusion_matrix(pred, target, 2)) == pytest.approx(2 / 5)
