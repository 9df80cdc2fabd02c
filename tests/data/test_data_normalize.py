"""seglab.data.normalize: each mode against its formula computed with NumPy, and the 8-bit modes bit for bit as
seglab normalised before 16-bit images existed."""

from __future__ import annotations

import numpy as np
import pytest

from seglab.data.normalize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalization,
    band_stats,
    describe,
    effective_mode,
    needs_stats,
    parse_spec,
    resolve,
    stretch_image,
)
from seglab.errors import ConfigError

RNG = np.random.default_rng(0)


def twelve_bit(h: int = 40, w: int = 50, bands: int = 1) -> np.ndarray:
    """A 12-bit camera's values in a 16-bit image: mostly dark, a few bright objects."""
    img = RNG.normal(160, 20, (h, w, bands))
    img[10:20, 10:25] += RNG.uniform(500, 3500)
    return np.clip(img, 100, 4095).astype(np.uint16)


def test_imagenet_keeps_uint8_and_gives_the_old_input_bit_for_bit():
    img = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    norm = resolve(parse_spec("auto"), "uint8", 3)
    assert norm.mode == "imagenet" and norm.unit(img) is img
    old = (img.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    x = norm.unit(img).astype(np.float32) / 255
    new = (x - np.float32(norm.mean)) / np.float32(norm.std)
    assert np.array_equal(old, new)


def test_stretch_is_the_image_mode_and_stays_the_256_bin_lut():
    img = RNG.integers(20, 120, (30, 30, 1), dtype=np.uint8)
    norm = resolve(parse_spec(None, stretch=[1, 99]), "uint8", 1)
    assert norm.mode == "image" and norm.percentiles == [1, 99]
    assert np.array_equal(norm.unit(img), stretch_image(img, [1, 99]))
    legacy = Normalization.legacy([0.45], [0.23], [1, 99])
    assert np.array_equal(legacy.unit(img), stretch_image(img, [1, 99]))


def test_dataset_mode_is_a_z_score_per_band_with_the_training_statistics():
    images = [twelve_bit(bands=2) for _ in range(3)]
    stats = band_stats(images)
    norm = resolve(parse_spec("auto"), "uint16", 2, stats)
    assert norm.mode == "dataset"
    pixels = np.concatenate([i.reshape(-1, 2) for i in images]).astype(np.float64)
    for b in range(2):
        lo, hi = np.percentile(pixels[:, b], [0.5, 99.5], method="inverted_cdf")
        assert (norm.lo[b], norm.hi[b]) == (lo, hi)
    x = images[0]
    model_input = (norm.unit(x) - np.float32(norm.mean)) / np.float32(norm.std)
    z = (x - pixels.mean(0)) / pixels.std(0)
    np.testing.assert_allclose(model_input, z, atol=1e-4)


def test_the_16_bit_default_is_not_a_division_by_65535():
    """A 12-bit camera's range over 0..1 of the unit range, where /65535 would leave it under 0.07."""
    image = twelve_bit()
    unit = resolve(parse_spec("auto"), "uint16", 1, band_stats([image])).unit(image)
    assert unit.dtype == np.float32
    assert abs(np.percentile(unit, 0.5, method="inverted_cdf")) < 1e-6
    assert abs(np.percentile(unit, 99.5, method="inverted_cdf") - 1) < 1e-6
    assert image.max() / 65535 < 0.07


def test_range_and_image_modes_and_clip():
    x = twelve_bit()
    norm = resolve(parse_spec({"mode": "range", "range": [0, 4095], "clip": True}), "uint16", 1)
    np.testing.assert_allclose(norm.unit(x), x / 4095, rtol=1e-6)
    per_image = resolve(parse_spec({"mode": "image", "percentiles": [2, 98]}), "float32", 1)
    f = x.astype(np.float32)
    lo, hi = np.percentile(f, [2, 98], method="inverted_cdf")
    np.testing.assert_allclose(per_image.unit(f), (f - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    clipped = resolve(parse_spec({"mode": "range", "range": [150, 200], "clip": True}), "uint16", 1)
    assert clipped.unit(x).min() == 0.0 and clipped.unit(x).max() == 1.0


def test_no_data_values_become_the_low_end():
    f = np.full((4, 4, 1), 5.0, np.float32)
    f[0, 0, 0], f[1, 1, 0] = np.nan, np.inf
    norm = resolve(parse_spec({"mode": "range", "range": [0, 10]}), "float32", 1)
    unit = norm.unit(f)
    assert unit[0, 0, 0] == 0.0 and unit[1, 1, 0] == 0.0 and unit[2, 2, 0] == 0.5


def test_display_picks_bands_and_refuses_others_in_one_line():
    x = np.stack([np.full((3, 3), v, np.float32) for v in (0.0, 0.25, 0.5, 0.75, 1.0)], -1)
    norm = resolve(parse_spec({"mode": "range", "range": [0, 1]}), "float32", 5)
    shown = norm.display(x, [3, 2, 1])
    assert shown.dtype == np.uint8 and shown.shape == (3, 3, 3)
    assert list(shown[0, 0]) == [191, 128, 64]
    assert norm.display(x).shape == (3, 3, 3) and list(norm.display(x)[0, 0]) == [0, 64, 128]
    with pytest.raises(ConfigError, match="bands 1..5"):
        norm.display(x, [5])


@pytest.mark.parametrize(
    ("spec", "stretch", "message"),
    [
        ("zscore", None, "must be one of"),
        ({"mode": "image", "percentiles": [99, 1]}, None, "0 <= lo < hi <= 100"),
        ({"mode": "range"}, None, "needs range"),
        ({"mode": "dataset", "percentiles": [2, 97]}, None, "two of"),
        ({"mode": "dataset", "gamma": 2}, None, "unknown key"),
        ("dataset", [1, 99], "cannot be combined"),
    ],
)
def test_bad_specs_are_one_line_config_errors(spec, stretch, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec, stretch)


def test_imagenet_is_refused_for_16_bit_images_and_auto_picks_dataset():
    assert effective_mode(parse_spec("auto"), "uint16") == "dataset"
    assert needs_stats(parse_spec("auto"), "float32") and not needs_stats(parse_spec("auto"), "uint8")
    with pytest.raises(ConfigError, match="divides 8-bit values by 255"):
        effective_mode(parse_spec("imagenet"), "uint16")


def test_round_trip_and_description():
    norm = resolve(parse_spec("auto"), "uint16", 1, band_stats([twelve_bit()]))
    assert Normalization.from_dict(norm.to_dict()) == norm
    assert describe(norm, "uint16").startswith("dataset (the training images' 0.5th..99.5th percentiles)")


def test_a_bad_normalize_is_refused_when_the_config_is_loaded():
    from seglab.config import Config

    with pytest.raises(ConfigError, match="data.normalize must be one of"):
        Config.from_dict({"data": {"normalize": "zscore"}})
    assert Config.from_dict({"data": {"normalize": {"mode": "range", "range": [0, 4095]}}}).data.normalize
