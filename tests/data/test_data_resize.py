"""data.resize in the transforms (image bilinear + antialias, mask nearest at pixel centres, training only),
pad_collate's per-item sizes, the deep scan's per-image class counts and `data check`'s median-frequency weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from seglab.config import DataConfig
from seglab.data.check import check, format_check
from seglab.data.folder import scan_folder
from seglab.data.transforms import build_transform, pad_collate, resized_size
from seglab.errors import DataError
from seglab.losses import median_frequency_weights


@pytest.mark.parametrize(
    ("hw", "resize", "expected"),
    [
        ((512, 683), {"short": 256}, (256, 342)),  # 683 / 2 = 341.5, rounded half up
        ((683, 512), {"short": 256}, (342, 256)),
        ((512, 683), {"long": 100}, (75, 100)),  # 512 * 100 / 683 = 74.96
        ((40, 40), {"long": 24}, (24, 24)),
        ((33, 17), {"scale": 0.5}, (17, 9)),  # 16.5 -> 17, 8.5 -> 9
        ((33, 17), {"scale": 2.0}, (66, 34)),
        ((3, 1000), {"short": 1}, (1, 333)),
        ((1, 1000), {"scale": 0.1}, (1, 100)),  # never below one pixel
        ((30, 50), None, (30, 50)),
    ],
)
def test_resized_size_known_answers(hw, resize, expected):
    assert resized_size(*hw, resize) == expected


def pair(h=37, w=52, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (h, w)).astype(np.int64)
    return image, mask


def test_train_resize_moves_image_bilinearly_and_mask_by_nearest_pixel_centre():
    image, mask = pair()
    cfg = DataConfig(resize={"short": 20}, hflip=False, vflip=False, mean=[0.0] * 3, std=[1.0] * 3)
    x, y = build_transform(cfg, 3, train=True)(image, mask)
    h, w = resized_size(37, 52, cfg.resize)
    assert (h, w) == (20, 28) and x.shape == (3, h, w) and y.shape == (h, w)
    # the image: torch's antialiased bilinear resize on the 0..255 values (uint8 rounding: within one level)
    ref = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].double(),
        size=(h, w),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0]
    assert (x.double() * 255 - ref).abs().max() <= 1.0 + 1e-6
    # the mask: output pixel i takes input pixel floor((i + 0.5) * H / h), no label invented
    rows = np.floor((np.arange(h) + 0.5) * 37 / h).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * 52 / w).astype(int)
    assert np.array_equal(y.numpy(), mask[rows][:, cols])


def test_resize_comes_before_the_augmentation_and_moves_weight_maps_with_the_mask():
    image, mask = pair(40, 60, seed=1)
    weight = np.arange(40 * 60, dtype=np.float32).reshape(40, 60)
    cfg = DataConfig(resize={"scale": 0.5}, crop_size=16, hflip=True, vflip=True)
    torch.manual_seed(0)
    x, y, wt = build_transform(cfg, 3, train=True)(image, mask, weight)
    assert x.shape == (3, 16, 16) and y.shape == wt.shape == (16, 16)  # the crop is in resized pixels
    # the weight of each pixel is the weight of the source pixel its label came from
    src = wt.long().numpy()
    assert np.array_equal(y.numpy(), mask.reshape(-1)[src])


def test_eval_resize_touches_the_image_only():
    image, mask = pair()
    cfg = DataConfig(resize={"long": 26})
    x, y = build_transform(cfg, 3, train=False)(image, mask)
    x_train, _ = build_transform(DataConfig(resize={"long": 26}, hflip=False, vflip=False), 3, train=True)(
        image, mask
    )
    assert x.shape == (3, 19, 26) and torch.equal(x, x_train)  # the image as training resizes it
    assert torch.equal(y, torch.from_numpy(mask))  # the mask keeps its own size


def test_pad_collate_records_each_items_sizes_and_pads_masks_to_their_own_size():
    t = build_transform(DataConfig(resize={"scale": 0.5}), 3, train=False)
    items = [t(*pair(37, 52)), t(*pair(20, 64, seed=2))]
    images, masks, sizes = pad_collate(255, sizes=True)(items)
    assert sizes.tolist() == [[19, 26, 37, 52], [10, 32, 20, 64]]
    assert images.shape == (2, 3, 19, 32) and masks.shape == (2, 37, 64)
    assert torch.equal(masks[1, :20, :64], items[1][1]) and (masks[1, 20:] == 255).all()
    assert (images[1, :, 10:] == 0).all() and torch.equal(images[0, :, :, :26], items[0][0])
    assert len(pad_collate(255)(items)) == 2  # without sizes: as before


def write_rgb_folder(root, masks, palette, names, train=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(np.zeros((*m.shape, 3), np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.asarray(palette, np.uint8)[m]).save(root / "masks" / f"{i}.png")
    (root / "classes.yaml").write_text(
        yaml.safe_dump({"names": names, "colors": palette, "mask_format": "rgb"})
    )
    if train is not None:
        (root / "splits").mkdir()
        (root / "splits" / "train.txt").write_text("".join(f"{s}\n" for s in train))
    return root


def test_deep_scan_counts_class_pixels_per_mask(tmp_path):
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (8 + i, 10)) for i in range(4)]
    masks[2][:] = 0  # one mask of one class
    root = write_rgb_folder(tmp_path / "d", masks, [[0, 0, 0], [128, 0, 0], [0, 0, 128]], ["a", "b", "c"])
    scan = scan_folder(root, deep=True)
    for i, m in enumerate(masks):
        assert scan.class_counts[str(i)].tolist() == np.bincount(m.ravel(), minlength=3).tolist()
    assert np.array_equal(
        scan.class_counts_of(["1", "3"]), np.stack([scan.class_counts["1"], scan.class_counts["3"]])
    )
    assert np.array_equal(sum(scan.class_counts.values()), scan.class_pixels)
    again = scan_folder(root, deep=True)  # from the scan cache: the same counts, no mask decoded
    assert all(np.array_equal(again.class_counts[s], scan.class_counts[s]) for s in scan.class_counts)
    with pytest.raises(DataError, match="deep scan"):
        scan_folder(root, deep=False).class_counts_of(["0"])


def test_data_check_prints_median_frequency_weights_of_the_training_split(tmp_path):
    # masks of 2 x 4 pixels; classes: a, b, c, d (d in no training mask)
    masks = [
        np.array([[0, 0, 0, 1], [0, 0, 0, 1]]),
        np.array([[0, 0, 2, 2], [0, 0, 2, 2]]),
        np.array([[0, 0, 0, 0], [0, 0, 0, 0]]),
        np.array([[3, 3, 3, 3], [3, 3, 3, 3]]),
    ]
    palette = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [0, 0, 128]]
    root = write_rgb_folder(tmp_path / "d", masks, palette, ["a", "b", "c", "d"], train=["0", "1", "2"])
    text = format_check(check(root))
    # freq: a 18/24 (in all three), b 2/8, c 4/8 -> median 1/2 -> weights 2/3, 2, 1; d in no training mask: 0
    expected = median_frequency_weights([[6, 2, 0, 0], [4, 0, 4, 0], [8, 0, 0, 0]])
    assert np.allclose(expected, [2 / 3, 2, 1, 0])
    assert "median-frequency weight (splits/train.txt, 3 masks)" in text
    for line, w in zip([line for line in text.splitlines() if " px " in line][:4], expected):
        assert line.split()[-1] == f"{w:.3f}"
