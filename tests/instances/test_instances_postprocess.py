"""Instance post-processing: components, distance watershed, learned separation, targets, display."""

import numpy as np
import pytest
import torch

from seglab.instances.postprocess import (
    components,
    instance_overlay,
    instance_palette,
    interior_boundary_target,
    learned,
    watershed,
)


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


SHAPE = (40, 72)
D1 = disc(SHAPE, 20, 23, 15)
D2 = disc(SHAPE, 20, 49, 15)  # overlaps D1: a figure-eight with a neck of half-width ~7.5 px
EIGHT = D1 | D2


def two_disc_instances():
    """D1 -> 1, D2 -> 2, the overlap split at the middle column."""
    inst = np.zeros(SHAPE, np.int64)
    xx = np.mgrid[: SHAPE[0], : SHAPE[1]][1]
    inst[D1 & (xx < 36)] = 1
    inst[D2 & (xx >= 36)] = 2
    return inst


def assert_matches_discs(labels, discs, min_iou):
    assert labels.dtype == np.int32
    assert labels.max() == len(discs)
    assert set(np.unique(labels)) == set(range(len(discs) + 1))
    for d in discs:
        ids, counts = np.unique(labels[d], return_counts=True)
        k = ids[np.argmax(counts)]
        assert k > 0
        assert iou(labels == k, d) > min_iou


# ----------------------------------------------------------------------------------------- components
def test_components_touching_discs_merge():
    lab = components(EIGHT)
    assert lab.dtype == np.int32 and lab.shape == SHAPE
    assert lab.max() == 1
    np.testing.assert_array_equal(lab > 0, EIGHT)


def test_components_separate_discs_and_min_size():
    m = disc((40, 80), 20, 15, 10) | disc((40, 80), 20, 60, 10)
    m[2:4, 38:40] = True  # 4-px blob
    lab = components(m)
    assert lab.max() == 3
    lab = components(m, min_size=5)
    assert lab.max() == 2
    assert not lab[2:4, 38:40].any()
    np.testing.assert_array_equal(np.unique(lab), [0, 1, 2])


def test_components_probability_equals_mask():
    rng = np.random.default_rng(0)
    p = rng.random((32, 32)).astype(np.float32)
    np.testing.assert_array_equal(components(p, threshold=0.7), components(p >= 0.7))
    np.testing.assert_array_equal(components(p.astype(np.float64), threshold=0.3), components(p >= 0.3))


def test_components_connectivity_diagonal():
    m = np.eye(5, dtype=bool)
    assert components(m, connectivity=1).max() == 5
    assert components(m, connectivity=2).max() == 1


# ----------------------------------------------------------------------------------------- watershed
def test_watershed_splits_figure_eight():
    lab = watershed(EIGHT)
    assert_matches_discs(lab, [D1, D2], 0.8)
    np.testing.assert_array_equal(lab > 0, EIGHT)  # every foreground pixel labelled


def test_watershed_single_disc_not_oversegmented():
    d = disc((48, 48), 24, 24, 18)
    lab = watershed(d, h=2.0)
    assert lab.max() == 1
    np.testing.assert_array_equal(lab > 0, d)


def test_watershed_labels_exactly_mask_minus_small():
    m = EIGHT.copy()
    m[1:3, 1:3] = True  # 4-px blob, no h-maximum of its own -> still an object unless min_size drops it
    m[35:38, 65:70] = True  # 15-px bar
    lab = watershed(m)
    assert lab.max() == 4
    np.testing.assert_array_equal(lab > 0, m)
    lab = watershed(m, min_size=10)
    assert lab.max() == 3
    expected = m.copy()
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(lab > 0, expected)


def test_watershed_seed_count_matches_global_h_maxima():
    from scipy import ndimage
    from skimage.morphology import h_maxima

    rng = np.random.default_rng(3)
    m = np.zeros((96, 96), bool)
    for cy, cx, r in zip(rng.integers(5, 91, 25), rng.integers(5, 91, 25), rng.integers(3, 10, 25)):
        m |= disc(m.shape, cy, cx, r)
    dist = ndimage.distance_transform_edt(m)
    seeds, n_seeds = ndimage.label(h_maxima(dist, 2.0), structure=np.ones((3, 3)))
    comps, n_comps = ndimage.label(m)
    n_unseeded = n_comps - len(np.unique(comps[seeds > 0]))
    lab = watershed(m)
    assert lab.max() == n_seeds + n_unseeded
    assert lab.max() > components(m).max()  # some touching discs were split
    np.testing.assert_array_equal(lab > 0, m)


def test_watershed_diagonal_components_stay_apart():
    m = np.zeros((20, 20), bool)
    m[0:9, 0:9] = True
    m[9:18, 9:18] = True  # touches the first square at one corner only
    lab = watershed(m, connectivity=1)
    assert lab.max() == 2
    np.testing.assert_array_equal(lab[0:9, 0:9], 1)
    np.testing.assert_array_equal(lab[9:18, 9:18], 2)
    assert watershed(m, connectivity=2).max() == 2  # one component, two peaks


def test_watershed_min_distance_splits():
    lab = watershed(EIGHT, min_distance=8)
    assert_matches_discs(lab, [D1, D2], 0.8)
    np.testing.assert_array_equal(lab > 0, EIGHT)


def test_watershed_sigma_still_splits():
    assert_matches_discs(watershed(EIGHT, sigma=1.0), [D1, D2], 0.8)


def test_watershed_fill_labels_every_pixel():
    m = EIGHT.copy()
    m[1:3, 1:3] = True
    n_objects = watershed(m).max()
    lab = watershed(m, fill=True)
    assert lab.dtype == np.int32
    assert (lab > 0).all()
    assert lab.max() == n_objects == 3
    # the objects themselves are kept, only background is shared out
    plain = watershed(m)
    np.testing.assert_array_equal(lab[m], plain[m])
    # min_size drops the blob first, then the two discs fill the image
    lab = watershed(m, fill=True, min_size=10)
    assert (lab > 0).all() and lab.max() == 2


def test_watershed_fill_probability_splits_along_membrane():
    # two cells separated by a vertical membrane (low probability) at columns 15-16; fill=True gives the
    # membrane to the cells, split at its middle
    p = np.ones((20, 32), np.float32)
    p[:, 15] = 0.2
    p[:, 16] = 0.1
    lab = watershed(p, fill=True)
    assert lab.max() == 2 and (lab > 0).all()
    np.testing.assert_array_equal(lab[:, :16], 1)
    np.testing.assert_array_equal(lab[:, 16:], 2)


def test_watershed_fill_follows_probability_ridge_not_midline():
    # an asymmetric membrane (columns 12-20, least foreground probability at column 18): fill=True with
    # probabilities splits on the ridge of 1 - p, not at the midline (column 16) of the gap
    p = np.ones((10, 32), np.float32)
    p[:, 12:21] = [0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.05, 0.3, 0.45]
    lab = watershed(p, fill=True)
    np.testing.assert_array_equal(lab[:, :18], 1)
    np.testing.assert_array_equal(lab[:, 18:], 2)
    # with a bool mask, background goes to the nearest object
    lab = watershed(p >= 0.5, fill=True)
    np.testing.assert_array_equal(lab[:, :16], 1)
    np.testing.assert_array_equal(lab[:, 17:], 2)


def test_watershed_empty():
    lab = watershed(np.zeros((8, 8), bool), fill=True)
    assert lab.dtype == np.int32 and not lab.any()


# ----------------------------------------------------------------------------------------- learned
def test_learned_from_three_class_target():
    inst = two_disc_instances()
    target = interior_boundary_target(inst, width=2)
    interior = (target == 1).astype(np.float32)
    foreground = (target > 0).astype(np.float32)
    lab = learned(interior, foreground)
    assert_matches_discs(lab, [inst == 1, inst == 2], 0.9)
    np.testing.assert_array_equal(lab > 0, inst > 0)


def test_learned_unseeded_component_becomes_object():
    inst = two_disc_instances()
    target = interior_boundary_target(inst, width=2)
    interior = (target == 1).astype(np.float32)
    foreground = (target > 0).astype(np.float32)
    foreground[2:6, 2:6] = 0.9  # no interior there
    lab = learned(interior, foreground)
    assert lab.max() == 3
    assert len(np.unique(lab[2:6, 2:6])) == 1 and lab[2, 2] > 0
    lab = learned(interior, foreground, min_size=20)
    assert lab.max() == 2 and not lab[2:6, 2:6].any()


def test_learned_min_seed_size():
    interior = np.zeros((10, 20), np.float32)
    interior[4:6, 3:7] = 1.0  # 8-px seed
    interior[5, 14] = 1.0  # 1-px seed
    foreground = np.zeros((10, 20), np.float32)
    foreground[2:8, 1:18] = 1.0  # one component holding both seeds
    assert learned(interior, foreground).max() == 2
    lab = learned(interior, foreground, min_seed_size=2)
    assert lab.max() == 1
    np.testing.assert_array_equal(lab > 0, foreground > 0)


def test_learned_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        learned(np.zeros((4, 4)), np.zeros((4, 5)))


# ----------------------------------------------------------------------------------------- target
def test_interior_boundary_target_hand_worked():
    inst = np.array(
        [
            [1, 1, 1, 2, 2, 2, 2, 0],
            [1, 1, 1, 2, 2, 2, 2, 0],
            [0, 0, 1, 2, 2, 0, 0, 0],
        ]
    )
    expected = np.array(
        [
            [1, 1, 2, 2, 1, 1, 2, 0],
            [2, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 2, 2, 2, 0, 0, 0],
        ]
    )
    out = interior_boundary_target(inst, width=1)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_interior_boundary_target_image_edge_is_not_boundary():
    np.testing.assert_array_equal(interior_boundary_target(np.full((6, 6), 3), width=2), np.ones((6, 6)))
    inst = np.zeros((8, 8), np.int64)
    inst[:, :4] = 1  # touches top, bottom, left edges
    out = interior_boundary_target(inst, width=1)
    np.testing.assert_array_equal(out[:, :3], 1)
    np.testing.assert_array_equal(out[:, 3], 2)
    np.testing.assert_array_equal(out[:, 4:], 0)


def test_interior_boundary_target_classes_and_width():
    inst = two_disc_instances()
    for width in (1, 2, 3):
        out = interior_boundary_target(inst, width=width)
        np.testing.assert_array_equal(out == 0, inst == 0)
        assert set(np.unique(out[inst > 0])) == {1, 2}
    # a lone square far from the edge: boundary band of `width` px inside the outline
    sq = np.zeros((40, 40), np.int64)
    sq[10:30, 10:30] = 5
    out = interior_boundary_target(sq, width=2)
    expected = np.zeros((40, 40), np.int64)
    expected[10:30, 10:30] = 2
    expected[12:28, 12:28] = 1
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="width"):
        interior_boundary_target(inst, width=0)
    with pytest.raises(ValueError, match="instances"):
        interior_boundary_target(inst.astype(np.float32))


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call",
    [
        lambda x: components(x),
        lambda x: watershed(x),
        lambda x: learned(x, x),
        lambda x: interior_boundary_target(x.astype(np.int64)),
    ],
)
def test_three_d_input_raises(call):
    with pytest.raises(ValueError, match=r"2-D.*\(1, 8, 8\)"):
        call(np.zeros((1, 8, 8), np.float32))


def test_probabilities_outside_unit_interval_raise():
    p = np.full((8, 8), 0.5, np.float32)
    p[0, 0] = 1.5
    with pytest.raises(ValueError, match="foreground"):
        components(p)
    with pytest.raises(ValueError, match="foreground"):
        watershed(p)
    with pytest.raises(ValueError, match="interior"):
        learned(p, np.full((8, 8), 0.5))
    q = np.full((8, 8), 0.5, np.float32)
    q[0, 0] = np.nan
    with pytest.raises(ValueError, match="foreground"):
        components(q)
    # tiny rounding error is accepted
    q[0, 0] = 1.0 + 1e-6
    assert components(q).max() == 1


# ----------------------------------------------------------------------------------------- display
def test_instance_palette():
    pal = instance_palette(40)
    assert pal.shape == (41, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(pal[0], [0, 0, 0])
    assert len({tuple(c) for c in pal}) == 41
    np.testing.assert_array_equal(pal, instance_palette(40))
    assert not np.array_equal(pal, instance_palette(40, seed=1))
    # adjacent ids clearly different
    assert (np.abs(pal[1:-1].astype(int) - pal[2:].astype(int)).sum(axis=1) > 100).all()
    assert instance_palette(0).shape == (1, 3)


def test_instance_overlay():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    labels = two_disc_instances()
    out = instance_overlay(image, labels, alpha=0.5)
    assert out.shape == (*SHAPE, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[labels == 0], image[labels == 0])
    pal = instance_palette(2)
    # the two objects touch at column 35/36: both sides are outline, each in its own full colour
    np.testing.assert_array_equal(out[20, 35], pal[1])
    np.testing.assert_array_equal(out[20, 36], pal[2])
    # interior pixel: blended
    expected = np.round(0.5 * image[20, 23].astype(np.float32) + 0.5 * pal[1]).astype(np.uint8)
    np.testing.assert_array_equal(out[20, 23], expected)
    # without outline, the touching pixels are blended too
    plain = instance_overlay(image, labels, alpha=0.5, outline=False)
    assert not np.array_equal(plain[20, 35], pal[1])
    # grayscale (H, W, 1)
    gray = instance_overlay(image[:, :, :1], labels)
    assert gray.shape == (*SHAPE, 3)
    np.testing.assert_array_equal(gray[0, 0], np.repeat(image[0, 0, :1], 3))
    with pytest.raises(ValueError, match="image"):
        instance_overlay(image.astype(np.float32), labels)


# ----------------------------------------------------------------------------------------- tensors
def test_tensors_match_arrays():
    inst = two_disc_instances()
    target = interior_boundary_target(inst, width=2)
    interior = (target == 1).astype(np.float32)
    foreground = (target > 0).astype(np.float32)
    t = torch.from_numpy
    np.testing.assert_array_equal(components(t(EIGHT)), components(EIGHT))
    np.testing.assert_array_equal(watershed(t(foreground)), watershed(foreground))
    np.testing.assert_array_equal(watershed(t(foreground), fill=True), watershed(foreground, fill=True))
    np.testing.assert_array_equal(learned(t(interior), t(foreground)), learned(interior, foreground))
    np.testing.assert_array_equal(interior_boundary_target(t(inst), width=2), target)
    image = np.zeros((*SHAPE, 3), np.uint8)
    np.testing.assert_array_equal(instance_overlay(t(image), t(inst)), instance_overlay(image, inst))
