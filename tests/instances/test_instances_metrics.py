"""Instance metrics: hand-worked cases, a brute-force reference on random maps, invariances, the meter."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglab.instances import metrics as M
from seglab.metrics.rand import adapted_rand_error

DSB_T = [Fraction(10 + k, 20) for k in range(10)]  # 0.50, 0.55, ..., 0.95 as exact fractions


def rects(shape: tuple[int, int], *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """A label map from (id, r0, r1, c0, c1) rectangles, later boxes on top."""
    out = np.zeros(shape, dtype=np.int64)
    for i, r0, r1, c0, c1 in boxes:
        out[r0:r1, c0:c1] = i
    return out


# --- hand-worked cases -------------------------------------------------------------------------------------


def two_squares() -> tuple[np.ndarray, np.ndarray]:
    """True 1: 4x4 = 16 px, predicted exactly (pred id 7). True 2: 2x10 = 20 px, predicted by its left
    2x6 = 12 px (pred id 3): IoU 12 / 20 = 0.6."""
    target = rects((10, 20), (1, 5, 9, 0, 4), (2, 0, 2, 10, 20))
    pred = rects((10, 20), (7, 5, 9, 0, 4), (3, 0, 2, 10, 16))
    return pred, target


def test_two_squares_one_perfect_one_iou_06():
    pred, target = two_squares()
    ov = M.overlaps(pred, target)
    assert ov.true_ids.tolist() == [1, 2] and ov.pred_ids.tolist() == [3, 7]
    assert sorted(zip(ov.iou.tolist(), ov.intersection.tolist())) == [(0.6, 12), (1.0, 16)]
    # t = 0.50, 0.55: both pairs match, TP 2, FP 0, FN 0 -> 1
    # t = 0.60 .. 0.95 (8 thresholds): 0.6 is not > 0.6, TP 1, FP 1, FN 1 -> 1/3
    # dsb = (2 * 1 + 8 * 1/3) / 10 = 7/15
    assert M.dsb_score(pred, target) == pytest.approx(7 / 15, abs=1e-15)
    assert M.match_counts(pred, target) == (2, 0, 0)
    assert M.match_counts(pred, target, 0.55) == (2, 0, 0)
    assert M.match_counts(pred, target, 0.6) == (1, 1, 1)  # strictly greater
    assert M.match_counts(pred, target, 0.95) == (1, 1, 1)
    assert M.match_counts(pred, target, 1.0) == (0, 2, 2)  # IoU 1 is not > 1
    # AJI: C = 16 + 12 = 28, U = 16 + 20 = 36 -> 7/9
    assert M.aji(pred, target) == pytest.approx(7 / 9, abs=1e-15)
    # PQ: TP 2, SQ = (1 + 0.6) / 2 = 0.8, RQ = 2 / 2 = 1, PQ = 0.8
    assert M.panoptic_quality(pred, target) == pytest.approx((0.8, 0.8, 1.0), abs=1e-15)
    row = M.image_scores(pred, target)
    assert (row["tp"], row["fp"], row["fn"], row["n_true"], row["n_pred"]) == (2, 0, 0, 2, 2)
    assert (row["aji_c"], row["aji_u"]) == (28, 36)
    assert row["iou_sum"] == pytest.approx(1.6, abs=1e-15)


def test_ious_exactly_at_each_threshold_do_not_match():
    # true object k (k = 0..9) is a 1x20 row; its prediction covers 10 + k of its pixels: IoU (10 + k) / 20,
    # exactly 0.50, 0.55, ..., 0.95. At threshold j, objects k > j match: TP = 9 - j of 10 true, 10 pred,
    # so TP / (TP + FP + FN) = (9 - j) / (20 - (9 - j)) = (9 - j) / (11 + j).
    target = np.zeros((10, 20), dtype=np.int64)
    pred = np.zeros_like(target)
    for k in range(10):
        target[k] = k + 1
        pred[k, : 10 + k] = 20 - k
    assert M.DSB_THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    for j, t in enumerate(M.DSB_THRESHOLDS.tolist()):
        assert M.match_counts(pred, target, t) == (9 - j, j + 1, j + 1), t
    want = sum(Fraction(9 - j, 11 + j) for j in range(10)) / 10
    assert M.dsb_score(pred, target) == pytest.approx(float(want), abs=1e-15)


def test_split_into_equal_halves_matches_nothing():
    # one true 2x10 object (20 px) predicted as two 2x5 halves: IoU 10 / 20 = 0.5 each, not > 0.5
    target = rects((2, 10), (1, 0, 2, 0, 10))
    pred = rects((2, 10), (4, 0, 2, 0, 5), (2, 0, 2, 5, 10))
    assert M.match_counts(pred, target) == (0, 2, 1)
    assert M.dsb_score(pred, target) == 0.0
    # AJI: tie at 0.5 -> pred 2 (smallest id): C = 10, U = 20; pred 4 unused: U += 10 -> 10/30
    row = M.image_scores(pred, target)
    assert (row["aji_c"], row["aji_u"]) == (10, 30)
    assert row["aji"] == pytest.approx(1 / 3, abs=1e-15)
    assert (row["pq"], row["sq"], row["rq"]) == (0.0, 0.0, 0.0)  # RQ = 0 / (0 + 1 + 0.5)


def test_unequal_split():
    # true 2x10 (20 px); pred 1 = left 2x6 (IoU 12/20 = 0.6), pred 2 = right 2x4 (IoU 8/20 = 0.4)
    target = rects((2, 10), (1, 0, 2, 0, 10))
    pred = rects((2, 10), (1, 0, 2, 0, 6), (2, 0, 2, 6, 10))
    # t = 0.50, 0.55: TP 1, FP 1, FN 0 -> 1/2; t >= 0.6: TP 0, FP 2, FN 1 -> 0; dsb = 2 * 0.5 / 10 = 0.1
    assert M.dsb_score(pred, target) == pytest.approx(0.1, abs=1e-15)
    # AJI: true 1 -> pred 1: C = 12, U = 20; pred 2 unused: U += 8 -> 12/28
    assert M.aji(pred, target) == pytest.approx(3 / 7, abs=1e-15)
    # SQ = 0.6, RQ = 1 / (1 + 1/2 + 0) = 2/3, PQ = 0.4
    assert M.panoptic_quality(pred, target) == pytest.approx((0.4, 0.6, 2 / 3), abs=1e-15)


def test_merge_reuses_the_prediction_in_aji():
    # true 1 = 2x6 (12 px), true 2 = 2x4 (8 px), side by side; pred 1 = both (20 px); pred 2 = a 2x2 false
    # positive (4 px) elsewhere. IoU(t1, p1) = 12/20 = 0.6, IoU(t2, p1) = 8/20 = 0.4.
    target = rects((5, 10), (1, 0, 2, 0, 6), (2, 0, 2, 6, 10))
    pred = rects((5, 10), (1, 0, 2, 0, 10), (2, 3, 5, 0, 2))
    # t = 0.50, 0.55: TP 1, FP 1, FN 1 -> 1/3; t >= 0.6: TP 0, FP 2, FN 2 -> 0; dsb = 2/30
    assert M.dsb_score(pred, target) == pytest.approx(1 / 15, abs=1e-15)
    # AJI: t1 -> p1: C 12, U 20; t2 -> p1 again: C 8, U 20; p2 unused: U 4 -> 20/44
    row = M.image_scores(pred, target)
    assert (row["aji_c"], row["aji_u"]) == (20, 44)
    assert row["aji"] == pytest.approx(5 / 11, abs=1e-15)
    # SQ = 0.6, RQ = 1 / (1 + 1/2 + 1/2) = 1/2, PQ = 0.3
    assert (row["pq"], row["sq"], row["rq"]) == pytest.approx((0.3, 0.6, 0.5), abs=1e-15)


@pytest.mark.parametrize(("id_a", "id_b", "c", "u"), [(1, 2, 8, 35), (5, 2, 10, 33)])
def test_aji_ties_take_the_smallest_pred_id(id_a, id_b, c, u):
    # true 2x10 (20 px). a = 2x4 inside it: IoU 8/20 = 0.4. b = 2x5 inside + 1x5 outside: IoU 10/25 = 0.4.
    # a chosen: C 8, U 20, + |b| 15 = 35. b chosen: C 10, U 25, + |a| 8 = 33.
    target = rects((3, 10), (1, 0, 2, 0, 10))
    pred = rects((3, 10), (id_a, 0, 2, 0, 4), (id_b, 0, 3, 4, 9))
    row = M.image_scores(pred, target)
    assert (row["aji_c"], row["aji_u"]) == (c, u)
    assert row["aji"] == pytest.approx(c / u, abs=1e-15)


def test_false_positive():
    # a 4x4 object predicted exactly, plus a 2x2 false positive
    target = rects((8, 8), (1, 0, 4, 0, 4))
    pred = rects((8, 8), (1, 0, 4, 0, 4), (2, 6, 8, 6, 8))
    assert M.match_counts(pred, target) == (1, 1, 0)
    assert M.dsb_score(pred, target) == 0.5  # TP 1, FP 1, FN 0 at every threshold
    assert M.aji(pred, target) == pytest.approx(16 / 20, abs=1e-15)
    assert M.panoptic_quality(pred, target) == pytest.approx((2 / 3, 1.0, 2 / 3), abs=1e-15)


def test_empty_images():
    objects = rects((6, 6), (3, 0, 2, 0, 2), (9, 3, 6, 3, 6))
    empty = np.zeros((6, 6), dtype=np.int64)
    missed = M.image_scores(empty, objects)  # nothing predicted
    assert (missed["tp"], missed["fp"], missed["fn"]) == (0, 0, 2)
    assert [missed[k] for k in ("dsb", "aji", "pq", "sq", "rq")] == [0.0] * 5
    assert (missed["aji_c"], missed["aji_u"]) == (0, 4 + 9)
    spurious = M.image_scores(objects, empty)  # nothing to find
    assert (spurious["tp"], spurious["fp"], spurious["fn"]) == (0, 2, 0)
    assert [spurious[k] for k in ("dsb", "aji", "pq", "sq", "rq")] == [0.0] * 5
    assert math.isnan(spurious["rand_error"])  # every true pixel is background: ignored
    both = M.image_scores(empty, empty)
    assert [both[k] for k in ("dsb", "aji", "pq", "sq", "rq")] == [1.0] * 5
    assert (both["tp"], both["fp"], both["fn"], both["n_true"], both["n_pred"]) == (0, 0, 0, 0, 0)
    assert math.isnan(both["rand_error"])


def test_threshold_below_one_half_is_refused():
    pred, target = two_squares()
    with pytest.raises(ValueError, match="one-to-one"):
        M.match_counts(pred, target, 0.45)


def test_bad_inputs_raise_helpful_errors():
    with pytest.raises(ValueError, match=r"pred \(4, 5\), target \(5, 4\)"):
        M.image_scores(np.zeros((4, 5), int), np.zeros((5, 4), int))
    with pytest.raises(ValueError, match="float"):
        M.overlaps(np.zeros((4, 4), np.float32), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="float"):
        M.aji(torch.zeros(4, 4, dtype=torch.int64), torch.zeros(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="negative"):
        M.dsb_score(-np.ones((2, 2), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        M.dsb_score(np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int))


# --- brute-force reference on random label maps -------------------------------------------------------------


def brute(pred: np.ndarray, target: np.ndarray) -> dict[str, float | int]:
    """The definitions, object by object, with full-image masks and exact fractions."""
    t_ids = [int(i) for i in np.unique(target) if i]
    p_ids = [int(j) for j in np.unique(pred) if j]
    inter = np.zeros((len(t_ids), len(p_ids)), dtype=np.int64)
    union = np.zeros_like(inter)
    for a, i in enumerate(t_ids):
        g = target == i
        for b, j in enumerate(p_ids):
            s = pred == j
            inter[a, b], union[a, b] = (g & s).sum(), (g | s).sum()
    n_t, n_p = len(t_ids), len(p_ids)
    per_t = []
    for t in DSB_T:
        m = inter * t.denominator > t.numerator * union
        assert m.sum(0).max(initial=0) <= 1 and m.sum(1).max(initial=0) <= 1  # one-to-one
        tp = int(m.sum())
        per_t.append(Fraction(tp, n_t + n_p - tp) if n_t + n_p else Fraction(1))
    # AJI, as in Kumar et al.: best IoU per true object (first = smallest pred id on ties), reuse allowed
    c = u = 0
    used: set[int] = set()
    for a, i in enumerate(t_ids):
        area = int((target == i).sum())
        if inter[a].sum() == 0:
            u += area
            continue
        b = max(range(n_p), key=lambda b: Fraction(int(inter[a, b]), int(union[a, b])))
        c, u = c + int(inter[a, b]), u + int(union[a, b])
        used.add(b)
    u += sum(int((pred == j).sum()) for b, j in enumerate(p_ids) if b not in used)
    m = 2 * inter > union
    tp = int(m.sum())
    empty = 1.0 if n_t + n_p == 0 else 0.0
    sq = float(sum(Fraction(int(x), int(y)) for x, y in zip(inter[m], union[m])) / tp) if tp else empty
    rq = tp / (tp + (n_p - tp) / 2 + (n_t - tp) / 2) if n_t + n_p else 1.0
    return {
        "dsb": float(sum(per_t) / len(per_t)),
        "tp": tp,
        "fp": n_p - tp,
        "fn": n_t - tp,
        "aji": c / u if u else 1.0,
        "aji_c": c,
        "aji_u": u,
        "pq": sq * rq,
        "sq": sq,
        "rq": rq,
        "n_true": n_t,
        "n_pred": n_p,
    }


def blobs(rng: np.random.Generator, shape: tuple[int, int], shift: int, level: float) -> np.ndarray:
    """Touching and separate objects: components of thresholded smoothed noise, cut into vertical strips."""
    noise = ndimage.gaussian_filter(rng.random((shape[0] + 8, shape[1] + 8)), 2.5)
    noise = noise[4 + shift : 4 + shift + shape[0], 4 : 4 + shape[1]]
    mask = noise > np.quantile(noise, level)
    comp, _ = ndimage.label(mask)
    cut = (np.arange(shape[1]) // rng.integers(5, 12))[None, :]
    _, labels = np.unique(np.where(mask, comp * 100 + cut, 0), return_inverse=True)
    return labels.reshape(shape)


def random_pair(seed: int, shape: tuple[int, int] = (40, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A target and a prediction of the same noise, shifted and thresholded differently (splits, merges,
    misses, false positives), with ids relabelled to non-consecutive values."""
    rng = np.random.default_rng(seed)
    target = blobs(np.random.default_rng(seed), shape, 0, 0.5)
    # seeds 0, 3: close predictions (high IoUs); 1, 4: shifted by one row; 2, 5: two rows
    level = 0.5 + rng.uniform(-0.04, 0.04) * (1 + seed % 3)
    pred = blobs(np.random.default_rng(seed), shape, seed % 3, level)
    if seed % 2:
        pred = ndimage.grey_erosion(pred, size=2)
    ids = rng.permutation(np.arange(1, 5 * int(pred.max()) + 2))[: pred.max() + 1]
    ids[0] = 0
    return ids[pred], target


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    pred, target = random_pair(seed)
    want = brute(pred, target)
    assert want["n_true"] > 5 and want["n_pred"] > 5 and want["tp"] > 0
    got = M.image_scores(pred, target)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    ov = M.overlaps(pred, target)
    for a, b, i in zip(ov.pair_true, ov.pair_pred, ov.intersection):
        assert i == ((target == ov.true_ids[a]) & (pred == ov.pred_ids[b])).sum() > 0
    assert ov.intersection.sum() == ((pred > 0) & (target > 0)).sum()  # every overlapping pair is there


def test_dsb_thresholds_cover_a_spread_of_ious():
    # the random cases must exercise several thresholds, or the brute-force check proves little
    overlaps = [M.overlaps(*random_pair(s)) for s in range(6)]
    ious = np.concatenate([ov.iou for ov in overlaps])
    assert all(((ious > t) & (ious <= t + 0.05)).any() for t in M.DSB_THRESHOLDS[:-1])
    assert ((ious > 0) & (ious <= 0.5)).sum() > 10  # near misses, splits and merges too


def test_sparse_pair_table_and_huge_ids_agree_with_the_dense_path(monkeypatch):
    pred, target = random_pair(3)
    dense = M.image_scores(pred, target, rand=False)
    huge = M.image_scores(pred * (1 << 40), target * 1_000_003 + (target > 0), rand=False)  # np.unique path
    monkeypatch.setattr(M, "_DENSE_PAIRS", -(10**12))
    sparse = M.image_scores(pred, target, rand=False)
    assert dense == pytest.approx(huge, rel=1e-12) and dense == pytest.approx(sparse, rel=1e-12)


# --- invariances and Rand -----------------------------------------------------------------------------------


def test_relabelling_changes_nothing():
    pred, target = random_pair(4)
    rng = np.random.default_rng(0)
    new_t = rng.choice(np.arange(1, 65536), size=target.max() + 1, replace=False)
    new_p = rng.choice(np.arange(1, 65536), size=pred.max() + 1, replace=False)
    new_t[0] = new_p[0] = 0
    new_t[1] = 60000
    relabelled = M.image_scores(new_p[pred].astype(np.uint16), new_t[target].astype(np.uint16))
    original = M.image_scores(pred, target)
    assert relabelled == pytest.approx(original, rel=1e-12, abs=0, nan_ok=True)


def test_swapping_pred_and_target_keeps_the_symmetric_scores():
    pred, target = random_pair(5)
    a, b = M.image_scores(pred, target), M.image_scores(target, pred)
    assert (a["tp"], a["fp"], a["fn"]) == (b["tp"], b["fn"], b["fp"])
    for key in ("dsb", "pq", "sq", "rq"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert a["aji"] != pytest.approx(b["aji"])  # AJI is not symmetric (and the test case shows it)
    ma, mb = M.InstanceMeter(), M.InstanceMeter()
    ma.update(pred, target)
    mb.update(target, pred)
    assert ma.compute()["f1"] == mb.compute()["f1"]


def test_rand_error_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    pred, target = random_pair(2)
    row = M.image_scores(pred, target)
    assert row["rand_error"] == pytest.approx(skimage_metrics.adapted_rand_error(target, pred)[0], rel=1e-9)
    assert (row["rand_error"], row["rand_precision"], row["rand_recall"]) == adapted_rand_error(pred, target)


# --- InstanceMeter ------------------------------------------------------------------------------------------


def hand_images() -> list[tuple[np.ndarray, np.ndarray]]:
    """(pred, target): two squares (TP 2, FP 0, FN 0), false positive (1, 1, 0), missed (0, 0, 2), empty."""
    fp_t = rects((8, 8), (1, 0, 4, 0, 4))
    fp_p = rects((8, 8), (1, 0, 4, 0, 4), (2, 6, 8, 6, 8))
    missed_t = rects((6, 6), (3, 0, 2, 0, 2), (9, 3, 6, 3, 6))
    empty = np.zeros((5, 5), dtype=np.int64)
    return [two_squares(), (fp_p, fp_t), (np.zeros_like(missed_t), missed_t), (empty, empty)]


def test_meter_pools_counts_and_averages_images():
    meter = M.InstanceMeter()
    for pred, target in hand_images():
        meter.update(pred, target)
    out = meter.compute()
    # pooled at 0.5: TP = 2 + 1 + 0 + 0 = 3, FP = 0 + 1 + 0 + 0 = 1, FN = 0 + 0 + 2 + 0 = 2
    assert out["precision"] == pytest.approx(3 / 4) and out["recall"] == pytest.approx(3 / 5)
    assert out["f1"] == pytest.approx(6 / 9)
    # per-image means: dsb 7/15, 1/2, 0, 1; ap50 1, 1/2, 0, 1; aji 7/9, 4/5, 0, 1; pq 0.8, 2/3, 0, 1
    assert out["dsb_score"] == pytest.approx((7 / 15 + 1 / 2 + 0 + 1) / 4)
    assert out["ap50"] == pytest.approx((1 + 1 / 2 + 0 + 1) / 4)
    assert out["aji"] == pytest.approx((7 / 9 + 4 / 5 + 0 + 1) / 4)
    assert out["pq"] == pytest.approx((0.8 + 2 / 3 + 0 + 1) / 4)
    assert out["sq"] == pytest.approx((0.8 + 1 + 0 + 1) / 4)
    assert out["rq"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert (out["num_images"], out["num_true"], out["num_pred"]) == (4, 5, 4)
    rand = np.array([adapted_rand_error(p, t) for p, t in hand_images()])
    assert np.isnan(rand[3]).all()  # the empty image is skipped, not averaged as NaN
    assert out["rand_error"] == pytest.approx(np.nanmean(rand[:, 0]))
    assert out["rand_recall"] == pytest.approx(np.nanmean(rand[:, 2]))
    assert len(meter) == 4
    meter.reset()
    assert len(meter) == 0 and math.isnan(meter.compute()["dsb_score"]) and meter.compute()["num_images"] == 0


def test_meter_undefined_pooled_scores_are_nan():
    meter = M.InstanceMeter()
    pred, target = hand_images()[2]  # nothing predicted: TP + FP = 0
    meter.update(pred, target)
    out = meter.compute()
    assert math.isnan(out["precision"]) and out["recall"] == 0.0 and out["f1"] == 0.0


def test_meter_batch_equals_images_and_tensors_equal_arrays():
    pairs = [random_pair(s) for s in range(4)]
    preds, targets = np.stack([p for p, _ in pairs]), np.stack([t for _, t in pairs])
    one_by_one, batched, tensors = M.InstanceMeter(), M.InstanceMeter(), M.InstanceMeter()
    for p, t in pairs:
        one_by_one.update(p, t)
    batched.update(preds, targets)
    tensors.update(torch.from_numpy(preds).int(), torch.from_numpy(targets).to(torch.uint8))
    assert batched.rows == one_by_one.rows == tensors.rows
    assert batched.compute() == pytest.approx(one_by_one.compute(), nan_ok=True)
    with pytest.raises(ValueError, match=r"pred \(4, 40, 48\), target \(3, 40, 48\)"):
        batched.update(preds, targets[:3])
    with pytest.raises(ValueError, match="float"):
        batched.update(torch.from_numpy(preds).float(), targets)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        batched.update(preds[None], targets[None])
    assert len(batched) == 4


def test_meter_all_reduce_gathers_rows_independently_of_sharding(monkeypatch):
    import torch.distributed as dist

    pairs = [random_pair(s) for s in range(4)]
    meter = M.InstanceMeter()
    meter.update(*pairs[0])
    before = list(meter.rows)
    meter.all_reduce()  # not initialised: no-op
    assert meter.rows == before
    full, shards = M.InstanceMeter(), [M.InstanceMeter(), M.InstanceMeter()]
    for i, (p, t) in enumerate(pairs):
        full.update(p, t)
        shards[i % 2].update(p, t)  # interleaved shards, as a distributed sampler would give

    def gather(out, obj, group=None):
        out[:] = [shards[0].rows, shards[1].rows]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather_object", gather)
    shards[0].all_reduce()
    assert len(shards[0]) == 4
    assert shards[0].compute() == pytest.approx(full.compute(), rel=1e-12, nan_ok=True)
