"""N-band images through the whole pipeline: a 5-band set whose class is visible in band 4 only (issue 28).

Every band of ``write_multiband`` holds the same bright rectangles on the same noise, but only band 4's are the
mask's; the others are decoys. A model that scores well must have read band 4 where band 4 belongs; the same
model on the same images with bands 1 and 4 swapped must fall to chance. So a pipeline that drops, reorders or
averages bands cannot pass by accident."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from seglab.config import Config, DataConfig
from seglab.data.check import check
from seglab.data.normalize import Normalization, parse_spec, resolve
from seglab.data.synthetic import write_multiband
from seglab.data.transforms import BandJitter, build_transform
from seglab.errors import ConfigError


@pytest.fixture(scope="module")
def multiband(tmp_path_factory):
    return write_multiband(tmp_path_factory.mktemp("mb") / "data", num_images=24, size=48)


@pytest.fixture(scope="module")
def multiband_run(multiband):
    from seglab.engine.train import train

    cfg = Config().override(
        [
            f"data.root={multiband}",
            f"train.out_dir={multiband.parent / 'run'}",
            "train.epochs=12",
            "train.batch_size=4",
            "train.lr=0.01",
            "train.progress=false",
            "model.params={depth: 2, base_channels: 8}",
        ]
    )
    return train(cfg)


def swapped_copy(root, dest):
    """The data set of ``root`` with bands 1 and 4 of every image swapped (masks and splits as they are)."""
    import shutil

    shutil.copytree(root, dest)
    for path in (dest / "images").iterdir():
        arr = tifffile.imread(path)  # (5, H, W), as written
        arr[[0, 3]] = arr[[3, 0]]
        tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="separate")
    return dest


def test_the_scan_reads_five_bands_of_uint16(multiband):
    scan = check(multiband)
    assert scan.problems == [] and scan.in_channels == 5 and scan.dtype == "uint16"
    assert scan.stats.bands == 5 and scan.stats.images == 16  # splits/train.txt only


def test_a_model_learns_the_one_band_that_holds_the_class_and_fails_when_it_is_moved(
    multiband_run, multiband, tmp_path
):
    from seglab.checkpoint import load_checkpoint
    from seglab.engine.evaluate import evaluate

    _, meta = load_checkpoint(multiband_run.best_checkpoint)
    norm = meta.normalization
    assert (
        meta.in_channels == 5 and norm.mode == "dataset" and len(norm.lo) == 5 and meta.normalize is not None
    )
    assert meta.stretch is None and meta.mean == norm.mean
    good = evaluate(
        multiband_run.best_checkpoint, multiband, "test", out=tmp_path / "good.json", progress=False
    )
    val = evaluate(multiband_run.best_checkpoint, multiband, "val", out=tmp_path / "val.json", progress=False)
    assert good["miou"] > 0.9 and val["miou"] > 0.9, (good["miou"], val["miou"])
    moved = swapped_copy(multiband, tmp_path / "swapped")
    bad = evaluate(multiband_run.best_checkpoint, moved, "test", out=tmp_path / "bad.json", progress=False)
    assert bad["miou"] < 0.6, bad["miou"]  # decoy rectangles where the class was: near chance


def test_geometry_moves_every_band_and_the_mask_alike():
    """Training transforms on a 5-band float image: whatever the random geometry did, it did it to each band as
    it did to the mask (each band is the mask scaled by its own factor, so band / factor == mask everywhere)."""
    cfg = DataConfig(rotation=30, scale=(0.8, 1.2), crop_size=24, elastic=3.0, rot90=True, color_jitter=0.0)
    norm = resolve(parse_spec({"mode": "range", "range": [0, 10]}), "float32", 5, None, [0.0] * 5, [1.0] * 5)
    transform = build_transform(cfg, 5, train=True, ignore_index=255, normalization=norm)
    mask = np.zeros((32, 32), np.int64)
    mask[4:20, 8:28] = 1
    mask[22:30, 2:10] = 1
    factors = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
    image = mask[..., None].astype(np.float32) * factors  # (H, W, 5), range 0..10 -> unit 0..0.5
    for seed in range(5):
        torch.manual_seed(seed)
        img, out = transform(image, mask)
        assert img.shape == (5, 24, 24) and img.dtype == torch.float32
        labelled = out != 255
        for b in range(5):
            band = img[b] * 10 / float(factors[b])  # back to the mask's 0/1 (nearest neighbour for the mask)
            agree = (band.round() == out.float())[labelled & ((band - band.round()).abs() < 0.01)]
            assert agree.float().mean() > 0.97, (seed, b)
        assert torch.allclose(img[1] / 2, img[0], atol=1e-6) and torch.allclose(img[4] / 5, img[0], atol=1e-6)


def test_band_jitter_changes_each_band_on_its_own_and_stays_finite():
    torch.manual_seed(0)
    x = torch.rand(5, 16, 16) * 1.4 - 0.2  # a unit range with values beyond 0..1 (dataset normalisation)
    from torchvision import tv_tensors

    out = BandJitter(0.5)(tv_tensors.Image(x.clone())).as_subclass(torch.Tensor)
    assert torch.isfinite(out).all() and out.shape == x.shape
    ratios = [float((out[b] - out[b].mean()).std() / (x[b] - x[b].mean()).std()) for b in range(5)]
    assert len({round(r, 3) for r in ratios}) == 5  # a contrast of its own per band
    same = BandJitter(0.0)(tv_tensors.Image(x.clone())).as_subclass(torch.Tensor)
    assert torch.allclose(same, x, atol=1e-6)


def test_float_training_transform_never_goes_through_8_bits():
    """A 16-bit image whose values differ by less than 1/255 of its range keeps them apart after the transform."""
    cfg = DataConfig(color_jitter=0.2, invert=0.5)
    norm = resolve(parse_spec({"mode": "range", "range": [0, 65535]}), "uint16", 1, None, [0.5], [0.25])
    transform = build_transform(cfg, 1, train=True, normalization=norm)
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64, 1) // 8 + 1000  # 512 levels within 1/128
    img, _ = transform(image, np.zeros((64, 64), np.int64))
    assert img.dtype == torch.float32 and len(torch.unique(img)) > 400


def test_eight_bit_transform_without_a_normalization_is_the_old_one():
    """build_transform(cfg, ...) alone (the old callers) resolves data.normalize for 8-bit images: imagenet."""
    t = build_transform(DataConfig(), 3, train=False)
    assert t.normalization == Normalization("imagenet", [0.0] * 3, [255.0] * 3, t.mean, t.std)
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img, _ = t(image, np.zeros((8, 8), np.int64))
    mean, std = torch.tensor(t.mean).view(3, 1, 1), torch.tensor(t.std).view(3, 1, 1)
    assert torch.allclose(img, (torch.from_numpy(image).permute(2, 0, 1) / 255 - mean) / std, atol=1e-6)
    with pytest.raises(ConfigError, match="data.normalize dataset needs the training images' statistics"):
        build_transform(DataConfig(normalize="dataset"), 3, train=False)
