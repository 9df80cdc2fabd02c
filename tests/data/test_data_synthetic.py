import numpy as np
import pytest

from seglab.data.folder import FolderDataset
from seglab.data.synthetic import CLASSES, SyntheticShapes, write_folder


def test_deterministic_per_seed_and_index():
    a, b = SyntheticShapes(num_images=5, seed=3), SyntheticShapes(num_images=50, seed=3)
    for i in range(5):
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])
    c = SyntheticShapes(num_images=5, seed=4)
    assert not np.array_equal(a[0][0], c[0][0])


def test_shapes_dtypes_and_labels():
    image, mask = SyntheticShapes(num_images=1, size=96)[0]
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= set(range(len(CLASSES)))
    with pytest.raises(IndexError):
        SyntheticShapes(num_images=1)[1]


def test_realistic_imbalance_and_colour_not_class():
    ds = SyntheticShapes(num_images=150, size=64)
    images = np.stack([ds[i][0] for i in range(len(ds))]).reshape(-1, 3).astype(float)
    masks = np.stack([ds[i][1] for i in range(len(ds))]).reshape(-1)
    freq = np.bincount(masks, minlength=4) / masks.size
    assert freq[0] > 0.7, "background dominates"
    assert 0.002 < freq[3] < 0.05 and freq[3] < freq[1] / 3 and freq[3] < freq[2] / 3, "triangles are rare"
    # Colour is not the class: the per-class colour distributions overlap almost completely
    # (every class spans most of the RGB range and their means are close).
    means = np.stack([images[masks == k].mean(0) for k in (1, 2, 3)])
    assert np.abs(means - means.mean(0)).max() < 25
    for k in (1, 2, 3):
        lo, hi = np.percentile(images[masks == k], [5, 95], axis=0)
        assert (hi - lo).min() > 150


def test_write_folder_round_trip(tmp_path):
    out = write_folder(tmp_path / "d", num_images=10, size=32, val_ratio=0.2, test_ratio=0.2)
    assert sorted(p.name for p in out.iterdir()) == ["classes.yaml", "images", "masks", "splits"]
    ds = SyntheticShapes(num_images=10, size=32)
    train = FolderDataset(out, "train")
    assert len(train) == 6 and len(FolderDataset(out, "val")) == 2 and len(FolderDataset(out, "test")) == 2
    assert train.classes.names == list(CLASSES) and train.classes.mask_format == "index"
    for i, stem in enumerate(train.stems):
        image, mask = train[i]
        ref_image, ref_mask = ds[int(stem)]
        assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask)
    with pytest.raises(Exception, match="not empty"):
        write_folder(out, num_images=2, size=32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"
