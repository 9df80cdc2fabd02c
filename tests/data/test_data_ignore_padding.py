"""Mask padding uses the run's ignore index (classes.yaml's when it declares one), never data.ignore_index's
default 255; and a crop larger than the images warns once (issue 26)."""

import warnings

import numpy as np
import pytest
import torch
import yaml

from seglab.config import Config, DataConfig
from seglab.data.synthetic import write_folder
from seglab.data.transforms import build_transform, crop_padding_note, pad_collate

IGNORE = 9  # not 255: padding with the default would put a label outside the classes


def _transform(ignore_index=IGNORE, **data):
    return build_transform(DataConfig(**data), 3, train=True, ignore_index=ignore_index)


def test_crop_pads_masks_with_the_given_ignore_index_not_the_configs():
    torch.manual_seed(0)
    image, mask = np.full((32, 32, 3), 100, np.uint8), np.ones((32, 32), np.int64)
    _, out = _transform(crop_size=48)(image, mask)  # data.ignore_index is 255 in this DataConfig
    assert out.shape == (48, 48)
    assert set(out.unique().tolist()) == {1, IGNORE}
    assert int((out == IGNORE).sum()) == 48 * 48 - 32 * 32  # exactly the padded pixels


@pytest.mark.parametrize(
    "aug", [{"scale": (0.6, 0.6)}, {"rotation": 45.0}, {"elastic": 8.0}], ids=["scale", "rotation", "elastic"]
)
def test_geometry_fills_masks_with_the_ignore_index(aug):
    torch.manual_seed(0)
    weight = np.ones((32, 32), np.float32)
    transform, filled = _transform(**aug), 0
    for _ in range(5):
        _, out, w = transform(np.zeros((32, 32, 3), np.uint8), np.ones((32, 32), np.int64), weight)
        assert set(out.unique().tolist()) <= {1, IGNORE}
        assert (w[out == IGNORE] == 0).all() and (w[out == 1] == 1).all()  # the weight map follows the index
        filled += int((out == IGNORE).sum())
    assert filled > 0


def test_without_an_ignore_index_the_configs_is_used():
    torch.manual_seed(0)
    _, out = build_transform(DataConfig(crop_size=40, ignore_index=7), 1, train=True)(
        np.zeros((32, 32, 1), np.uint8), np.zeros((32, 32), np.int64)
    )
    assert set(out.unique().tolist()) == {0, 7}


def test_collate_pads_masks_with_the_ignore_index():
    batch = [
        (torch.zeros(3, 4, 4), torch.ones(4, 4, dtype=torch.long)),
        (torch.zeros(3, 6, 5), torch.ones(6, 5, dtype=torch.long)),
    ]
    images, masks = pad_collate(IGNORE)(batch)
    assert masks.shape == (2, 6, 5) and int((masks[0] == IGNORE).sum()) == 30 - 16
    assert set(masks.unique().tolist()) == {1, IGNORE} and images.shape == (2, 3, 6, 5)


@pytest.fixture(scope="module")
def ignore9_dir(tmp_path_factory):
    """Synthetic 32 px data whose classes.yaml declares ignore_index 9 (data.ignore_index stays 255)."""
    root = write_folder(tmp_path_factory.mktemp("ignore9") / "data", num_images=12, size=32)
    classes = yaml.safe_load((root / "classes.yaml").read_text())
    (root / "classes.yaml").write_text(yaml.safe_dump({**classes, "ignore_index": IGNORE}, sort_keys=False))
    return root


def _config(root, out, crop, scale):
    return Config().override(
        [
            f"data.root={root}",
            f"train.out_dir={out}",
            "train.epochs=1",
            "train.batch_size=4",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            f"data.crop_size={crop}",
            f"data.scale={scale}",
            "train.amp=off",
        ]
    )


@pytest.mark.parametrize(
    "crop, scale",
    [(48, "[0.6, 1.0]"), ("null", "[0.75, 1.25]")],
    ids=["crop-larger-than-images", "scale-jitter"],
)
def test_training_pads_with_the_data_sets_ignore_index_and_warns_once_for_a_large_crop(
    ignore9_dir, tmp_path, crop, scale
):
    from seglab.engine.data import build_data
    from seglab.engine.train import train

    cfg = _config(ignore9_dir, tmp_path / "run", crop, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counted in the run below
        data = build_data(cfg, torch.device("cpu"))
    assert data.spec.ignore_index == IGNORE
    torch.manual_seed(0)
    masks = [data.train[i][1] for i in range(len(data.train))]
    values = set(torch.cat([m.flatten() for m in masks]).unique().tolist())
    assert IGNORE in values and values <= {0, 1, 2, 3, IGNORE}, values  # padding is 9, never 255
    if crop == 48:
        assert all(int((m == IGNORE).sum()) >= 48 * 48 - 32 * 32 for m in masks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg)  # today: "Target 255 is out of bounds"
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    notes = [str(w.message) for w in caught if "data.crop_size" in str(w.message)]
    if crop == 48:
        assert len(notes) == 1, notes
        assert notes[0].startswith("data.crop_size 48 is larger than 12 of 12 images (the smallest is 32x32)")
        assert "set data.crop_size to at most 32" in notes[0]
    else:
        assert notes == []


def test_crop_padding_note_names_crop_and_image_sizes_and_only_when_the_crop_does_not_fit():
    sizes = {(64, 48): 3, (40, 30): 1}
    assert crop_padding_note(sizes, 30, None) is None
    assert crop_padding_note(sizes, None, None) is None
    note = crop_padding_note(sizes, 32, None)
    assert note is not None and "larger than 1 of 4 images (the smallest is 40x30)" in note
    assert "at most 30" in note and "data.resize" in note
    # sizes are those after data.resize: short side 24 makes 64x48 -> 32x24 and 40x30 -> 32x24
    note = crop_padding_note(sizes, 30, {"short": 24})
    assert note is not None and "larger than 4 of 4 images (the smallest is 32x24 after data.resize)" in note
    assert crop_padding_note(sizes, 24, {"short": 24}) is None
