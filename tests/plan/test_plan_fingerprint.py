"""The data fingerprint (seglab.plan.fingerprint) and the resolution ceiling (seglab.plan.ceiling) on small
generated folders whose answers are known: square objects, a top/bottom layout, grey and red images, touching
instances, a thin line; the cache; the YAML round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from seglab.errors import ConfigError, DataError
from seglab.plan.ceiling import ceiling
from seglab.plan.fingerprint import DataFingerprint, fingerprint_data


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(tmp_path / "cache"))


def write_set(
    root: Path,
    masks: list[np.ndarray],
    images: list[np.ndarray] | None = None,
    instances: list[np.ndarray] | None = None,
) -> Path:
    """A folder data set of ``masks`` (uint8 label maps), grey images unless given, no splits/ (with fewer than
    5 images the seeded ratio split puts every one in train)."""
    for sub in ("images", "masks") + (("instances",) if instances is not None else ()):
        (root / sub).mkdir(parents=True)
    for i, mask in enumerate(masks):
        image = images[i] if images is not None else np.full(mask.shape, 100 + i, np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{i:02d}.png")
        if instances is not None:
            Image.fromarray(instances[i].astype(np.uint8)).save(root / "instances" / f"{i:02d}.png")
    return root


def square_ring_distances(side: int) -> list[int]:
    """Distance of each pixel of a side x side square to the nearest pixel outside it: 1 + its ring."""
    return [1 + min(i, j, side - 1 - i, side - 1 - j) for i in range(side) for j in range(side)]


def test_square_objects_and_a_line(tmp_path):
    masks = []
    for shift in (0, 2):
        m = np.zeros((40, 48), np.uint8)
        for y, x in ((3, 3), (3, 20), (20, 30 + shift)):  # three 5 x 5 squares of class 1
            m[y : y + 5, x : x + 5] = 1
        m[34, 4 + shift : 24 + shift] = 2  # a 20-px line of class 2, 1 px wide
        masks.append(m)
    fp = fingerprint_data(write_set(tmp_path / "d", masks))
    square, line = fp.objects[1], fp.objects[2]
    assert (square.count, square.per_image, square.median_area, square.p5_area) == (6, 3.0, 25.0, 25.0)
    assert square.width == pytest.approx(2 * np.mean(square_ring_distances(5)), abs=1e-3)  # 2.8
    assert (line.count, line.median_area, line.width) == (2, 20.0, 2.0)  # every pixel 1 px from another class
    assert fp.objects[0].count == 2  # the background, one component per mask
    n = 40 * 48 * 2
    assert fp.class_freq == pytest.approx([(n - 6 * 25 - 40) / n, 6 * 25 / n, 40 / n])
    assert fp.class_images == [1.0, 1.0, 1.0] and fp.ignored_share == 0.0
    assert (fp.median_size, fp.min_short, fp.max_long, fp.aspect) == ((48, 40), 40, 48, pytest.approx(1.2))
    assert (fp.bands, fp.dtype, fp.bit_depth) == (1, "uint8", 7)  # grey values 100, 101 < 128
    assert (fp.saturation, fp.gray_as_rgb, fp.instances, fp.touching) == (0.0, 0.0, False, 0.0)
    assert fp.splits == {"train": 2, "val": 0, "test": 0} and not fp.has_val and not fp.has_test
    assert fp.ceiling[1.0] == 1.0 and fp.ceiling[0.25] < fp.ceiling[0.5] < 1.0 and fp.ceiling_target == {}
    assert fp.sampled_masks == fp.ceiling_images == 2


def test_ignored_pixels_count_as_the_class_for_its_width(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[5:10, 5:10] = 1
    m[10, 5:10] = 255  # an ignored row under the square: no boundary there
    fp = fingerprint_data(write_set(tmp_path / "d", [m, m]))
    # the square and the ignored row are one 6 x 5 body: the square's rows are 1 + min(ring) from another class
    expected = [1 + min(i, j, 5 - i, 4 - j) for i in range(5) for j in range(5)]
    assert fp.objects[1].width == pytest.approx(2 * np.mean(expected), abs=1e-3)
    assert fp.ignored_share == pytest.approx(5 / 400)


@pytest.mark.parametrize("centred, asymmetry", [(False, 1.0), (True, 0.0)])
def test_vflip_asymmetry(tmp_path, centred, asymmetry):
    m = np.zeros((32, 24), np.uint8)
    if centred:
        m[8:24, 4:20] = 1  # symmetric under a vertical flip, and so is the background around it
    else:
        m[16:] = 1  # class 0 on top, class 1 at the bottom
    fp = fingerprint_data(write_set(tmp_path / "d", [m, m]))
    assert fp.vflip_asymmetry == pytest.approx(asymmetry)


@pytest.mark.parametrize("colour, saturation, gray", [("grey", 0.0, 1.0), ("red", 1.0, 0.0)])
def test_saturation_and_grey_as_rgb(tmp_path, colour, saturation, gray):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    if colour == "grey":  # grey values written as RGB: three equal bands
        image = np.repeat(np.random.default_rng(0).integers(1, 255, (16, 16, 1), dtype=np.uint8), 3, axis=2)
    else:
        image = np.zeros((16, 16, 3), np.uint8)
        image[..., 0] = 255
    fp = fingerprint_data(write_set(tmp_path / "d", [mask, mask], images=[image, image]))
    assert fp.bands == 3 and (fp.saturation, fp.gray_as_rgb) == (saturation, gray)


def test_touching_objects_and_the_target_ceiling(tmp_path):
    inst = np.zeros((32, 32), np.uint8)
    inst[2:8, 2:8] = 1
    inst[8:14, 8:14] = 2  # touches object 1 only at a corner: 8-neighbours
    inst[20:28, 20:28] = 3  # alone
    fp = fingerprint_data(write_set(tmp_path / "d", [(inst > 0) * 1] * 2, instances=[inst, inst]))
    assert fp.instances and fp.objects_per_image == 3.0
    assert fp.touching == pytest.approx(2 / 3, abs=1e-4)
    assert fp.ceiling_target[1.0] == 1.0 and fp.ceiling_target[0.25] < fp.ceiling_target[0.5] < 1.0
    assert fp.ceiling_target[0.5] < fp.ceiling[0.5]  # the 2-px boundary band suffers more than the blobs


def reference_ceiling(masks: list[torch.Tensor], num_classes: int, scale: float) -> dict:
    """benchmarks/resolution_ceiling.py's measurement before it moved into the package (ignore_index 255)."""
    from seglab.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, 255)
    pixels = 0
    for mask in masks:
        h, w = mask.shape
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        pixels += size[0] * size[1]
        if scale == 1:
            cm.update(mask[None], mask[None])
            continue
        onehot = F.one_hot(mask.clamp(max=num_classes - 1), num_classes).permute(2, 0, 1)[None].float()
        low = F.interpolate(onehot, size=size, mode="bilinear", antialias=True, align_corners=False)
        back = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        cm.update(back, mask[None])
    return {**cm.compute(), "pixels": pixels / len(masks)}


def test_ceiling_equals_the_old_benchmark_on_random_masks():
    g = torch.Generator().manual_seed(0)
    masks = []
    for h, w in ((37, 53), (64, 64), (50, 31), (1, 9), (33, 33)):  # blobs of 5 classes, and a 1-row mask
        low = torch.rand(1, 5, max(1, h // 6), max(1, w // 6), generator=g)
        masks.append(F.interpolate(low, size=(h, w), mode="bilinear").argmax(1)[0])
    scales = (1.0, 0.75, 0.5, 0.375, 0.25, 0.1)
    got = ceiling(masks, 5, scales)
    for s in scales:
        ref = reference_ceiling(masks, 5, s)
        assert got[s]["miou"] == pytest.approx(ref["miou"], abs=1e-9)
        assert got[s]["iou"] == pytest.approx(ref["iou"], abs=1e-9)
        assert got[s]["pixels"] == ref["pixels"]
    assert got[1.0]["miou"] == 1.0 and got[0.1]["miou"] < got[0.5]["miou"] < got[0.75]["miou"] < 1
    # a checkerboard: classes tied in every low-resolution pixel, broken alike (first class) where the weights
    # are exact binary fractions (at 0.1 they are not, and near-ties may round either way in either sum)
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(40), indexing="ij")
    board = [((yy // 2 + xx // 2) % 5).long()]
    got = ceiling(board, 5, (0.75, 0.5, 0.375, 0.25))
    for s, r in got.items():
        assert r["iou"] == pytest.approx(reference_ceiling(board, 5, s)["iou"], abs=1e-9)


def test_ceiling_of_a_thin_line_and_of_ignored_pixels():
    line = np.zeros((32, 32), np.int64)
    line[:, 15] = 1  # 1 px wide: at half resolution its share of any pixel is at most 1/2
    r = ceiling([line], 2, (1.0, 0.5))
    assert r[1.0]["iou"] == [1.0, 1.0] and r[0.5]["iou"][1] < 0.5
    half = np.zeros((32, 32), np.int64)
    half[16:] = 255  # the bottom half ignored: no class there, so it takes nothing from class 0
    r = ceiling([half], 2, (1.0, 0.5, 0.25), ignore_index=255)
    assert all(r[s]["iou"][0] == 1.0 and r[s]["miou"] == 1.0 for s in r)
    with pytest.raises(ValueError, match="scales"):
        ceiling([line], 2, (0.0,))


def readers_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    import seglab.data.io
    import seglab.data.scan

    def refuse(*args, **kwargs):
        raise AssertionError("a file was read")

    for module in (seglab.data.io, seglab.data.scan):
        for name in ("read_image", "read_mask_raw", "image_header"):
            monkeypatch.setattr(module, name, refuse)


def test_cache_reads_nothing_and_measures_a_changed_mask_again(tmp_path, monkeypatch):
    m = np.zeros((24, 24), np.uint8)
    m[4:12, 4:12] = 1
    root = write_set(tmp_path / "d", [m, m])
    first = fingerprint_data(root)
    with monkeypatch.context() as patched:
        readers_raise(patched)
        lines: list[str] = []
        again = fingerprint_data(root, progress=lines.append)
        assert again == first and "from the cache" in lines[-1]  # (seconds too: the first run's)
        with pytest.raises(AssertionError, match="a file was read"):
            fingerprint_data(root, max_masks=1)  # another key: measured
    m2 = m.copy()
    m2[14:22, 14:22] = 1  # twice the objects in one mask
    Image.fromarray(m2).save(root / "masks" / "01.png")
    changed = fingerprint_data(root)
    assert changed.class_freq[1] == pytest.approx(3 * 64 / (2 * 576)) != first.class_freq[1]
    assert changed.objects[1].count == 3
    cached = sorted(tmp_path.glob("cache/scan/plan/*.json"), key=lambda p: p.stat().st_mtime_ns)[-1]
    cached.write_text("{not json")
    assert replace(fingerprint_data(root), seconds=0) == replace(changed, seconds=0)
    assert json.loads(cached.read_text())["value"]["class_freq"] == changed.class_freq  # measured, rewritten
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(root / "images" / "00.png"))  # a file: no cache folder there
    assert replace(fingerprint_data(root), seconds=0) == replace(changed, seconds=0)  # (not cached, no error)


def test_problems_and_bad_arguments_are_one_line_errors(tmp_path):
    root = write_set(tmp_path / "d", [np.eye(8, dtype=np.uint8)] * 2)
    with pytest.raises(ConfigError, match="max_masks"):
        fingerprint_data(root, max_masks=0)
    (root / "masks" / "01.png").unlink()
    with pytest.raises(DataError, match="has no mask"):
        fingerprint_data(root)


def test_round_trip_through_yaml(tmp_path):
    inst = np.zeros((16, 16), np.uint8)
    inst[2:7, 2:7], inst[7:12, 7:12] = 1, 2
    fp = fingerprint_data(write_set(tmp_path / "d", [(inst > 0) * 1] * 2, instances=[inst, inst]))
    text = yaml.safe_dump(fp.to_dict())  # plain types only: safe_dump refuses NumPy scalars
    back = DataFingerprint.from_dict(yaml.safe_load(text))
    assert back == fp and back.ceiling_target == fp.ceiling_target and back.ceiling_target


def test_short_side_of_most_images(tmp_path):
    # 19 images 80x64 and one 40x32: the smallest short side is 32, the one 90 % reach is 64 (np.percentile,
    # "lower", of the 20 short sides)
    masks = [np.zeros((64, 80), np.uint8) for _ in range(19)] + [np.zeros((32, 40), np.uint8)]
    for m in masks:
        m[8:16, 8:24] = 1
    root = write_set(tmp_path / "d", masks)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("".join(f"{i:02d}\n" for i in range(20)))
    fp = fingerprint_data(root)
    assert fp.splits["train"] == 20 and (fp.min_short, fp.short_p10) == (32, 64)
    assert fp.short_p10 == int(np.percentile([64] * 19 + [32], 10, method="lower"))
