import numpy as np
import pytest
import yaml
from PIL import Image

from seglab.data.check import check, format_check
from seglab.data.folder import FolderDataset, scan_folder
from seglab.errors import DataError


def make_folder(root, masks, images=None, mode="L", classes=None, image_mode="RGB"):
    """Write images/<i>.png and masks/<i>.png from arrays; returns root."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, m in enumerate(masks):
        h, w = m.shape[:2]
        img = images[i] if images is not None else rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).convert(image_mode).save(root / "images" / f"{i:02d}.png")
        mimg = Image.fromarray(m.astype(np.uint8), mode="RGB" if m.ndim == 3 else "L")
        if mode == "P":
            mimg = Image.fromarray(m.astype(np.uint8), mode="P")
            mimg.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        mimg.save(root / "masks" / f"{i:02d}.png")
    if classes is not None:
        (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    return root


def test_index_masks_L_and_P_with_ignore(tmp_path):
    m = np.array([[0, 1, 2, 255], [2, 2, 1, 0]])
    for mode in ("L", "P"):
        root = make_folder(tmp_path / mode, [m, m], mode=mode)
        ds = FolderDataset(root, "all")
        assert ds.classes.mask_format == "index" and ds.num_classes == 3
        image, mask = ds[0]
        assert mask.dtype == np.int64 and np.array_equal(mask, m), mode
        assert image.shape == (2, 4, 3) and ds.in_channels == 3


def test_binary_masks_read_as_0_1_and_grayscale_images(tmp_path):
    m = np.array([[0, 255], [255, 255]])
    root = make_folder(tmp_path / "b", [m], image_mode="L")
    ds = FolderDataset(root, "all")
    assert ds.classes.mask_format == "binary" and ds.num_classes == 2 and ds.in_channels == 1
    image, mask = ds[0]
    assert np.array_equal(mask, m // 255) and image.shape == (2, 2, 1)


def test_rgb_colour_masks_through_palette(tmp_path):
    colours = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    rgb = np.array(colours, np.uint8)[labels]
    rgb[0, 0] = [255, 255, 255]
    classes = {"names": ["bg", "red", "blue"], "colors": colours, "ignore_color": [255, 255, 255]}
    ds = FolderDataset(make_folder(tmp_path / "c", [rgb], classes=classes), "all")
    expected = labels.copy()
    expected[0, 0] = 255
    assert ds.classes.mask_format == "rgb" and np.array_equal(ds[0][1], expected)


def test_unknown_colour_is_named(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[1, 1] = [9, 9, 9]
    root = make_folder(
        tmp_path / "c", [rgb], classes={"names": ["bg", "x"], "colors": [[0, 0, 0], [1, 1, 1]]}
    )
    with pytest.raises(DataError, match=r"masks/00.png has colour \(9, 9, 9\)"):
        FolderDataset(root, "all")


def test_value_outside_declared_classes(tmp_path):
    root = make_folder(tmp_path / "v", [np.array([[0, 1], [3, 0]])], classes={"names": ["a", "b"]})
    with pytest.raises(DataError, match=r"masks/00.png has value 3 but the data set has 2 classes"):
        FolderDataset(root, "all")


def test_random_split_is_seeded_disjoint_and_complete(tmp_path):
    root = make_folder(tmp_path / "s", [np.eye(2)] * 20)
    scan = scan_folder(root)
    parts = {name: scan.split(name, 0.2, 0.1, seed=1) for name in ("train", "val", "test")}
    assert [len(parts[n]) for n in ("train", "val", "test")] == [14, 4, 2]
    assert sorted(sum(parts.values(), [])) == scan.stems
    assert parts == {name: scan.split(name, 0.2, 0.1, seed=1) for name in parts}
    assert parts["val"] != scan.split("val", 0.2, 0.1, seed=2)


def test_split_files(tmp_path):
    root = make_folder(tmp_path / "s", [np.eye(2)] * 4)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("00\n01\n02\n")
    (root / "splits" / "test.txt").write_text("03\n")
    assert FolderDataset(root, "train").stems == ["00", "01", "02"]
    assert FolderDataset(root, "val").stems == []
    (root / "splits" / "val.txt").write_text("99\n")
    with pytest.raises(DataError, match="val.txt lists 1 stems without an image/mask pair"):
        FolderDataset(root, "train")


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "does not exist"),
        ("no_masks_dir", "has no masks/ folder"),
        ("empty", "holds no image/mask pairs"),
        ("unpaired", "images/02.png has no mask"),
        ("size", "images/00.png is 4x4 but mask .*masks/00.png is 3x3"),
        ("corrupt", "cannot read .*images/01.png"),
        ("truncated", "images/01.png"),
    ],
)
def test_bad_folders_name_the_culprit(tmp_path, breakage, message):
    root = tmp_path / "d"
    if breakage != "missing":
        make_folder(root, [np.eye(4)] * 2)
    if breakage == "no_masks_dir":
        for p in (root / "masks").iterdir():
            p.unlink()
        (root / "masks").rmdir()
    elif breakage == "empty":
        for p in [*(root / "masks").iterdir(), *(root / "images").iterdir()]:
            p.unlink()
    elif breakage == "unpaired":
        Image.new("RGB", (4, 4)).save(root / "images" / "02.png")
    elif breakage == "size":
        Image.new("L", (3, 3)).save(root / "masks" / "00.png")
    elif breakage == "corrupt":
        (root / "images" / "01.png").write_bytes(b"not a png at all")
    elif breakage == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "images" / "01.png"
        )
        data = (root / "images" / "01.png").read_bytes()
        (root / "images" / "01.png").write_bytes(data[: len(data) // 2])
        Image.new("L", (64, 64)).save(root / "masks" / "01.png")
    if breakage == "truncated":  # only a full decode finds it: data check, or loading the item
        scan = check(root)
        assert any("01.png" in p for p in scan.problems)
        with pytest.raises(DataError, match=message):
            FolderDataset(root, "all")[1]
        return
    with pytest.raises(DataError, match=message):
        FolderDataset(root, "all")[0]


def test_check_reports_every_problem_in_one_pass(tmp_path):
    root = make_folder(tmp_path / "d", [np.array([[0, 1], [1, 1]])] * 3, classes={"names": ["a", "b"]})
    Image.new("RGB", (2, 2)).save(root / "images" / "extra.png")
    Image.fromarray(np.array([[0, 5], [1, 1]], np.uint8)).save(root / "masks" / "01.png")
    Image.new("L", (3, 3)).save(root / "masks" / "02.png")
    scan = check(root)
    text = "\n".join(scan.problems)
    assert len(scan.problems) == 3, text
    assert "extra.png has no mask" in text and "01.png has value 5" in text and "02.png is 3x3" in text
    assert "3 problem(s)" in format_check(scan)


def test_isbi_membrane_through_the_folder_loader(isbi_dir):
    ds = FolderDataset(isbi_dir, "all", cache=False)
    assert len(ds) == 30 and ds.in_channels == 1
    assert ds.classes.mask_format == "binary" and ds.num_classes == 2
    counts = np.zeros(2, np.int64)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (512, 512, 1) and mask.shape == (512, 512)
        raw = np.array(Image.open(isbi_dir / "masks" / f"{ds.stems[i]}.png"))
        assert np.array_equal(mask, (raw == 255).astype(np.int64))
        counts += np.bincount(mask.ravel(), minlength=2)
    membrane = counts[0] / counts.sum()
    assert 0.20 < membrane < 0.24  # docs/recipes/isbi2012.md: ~22 % membrane, ~78 % cell interior
    scan = check(isbi_dir)
    assert scan.problems == [] and np.array_equal(scan.class_pixels, counts)


def test_explicit_split_lists_beat_split_files(tmp_path):
    root = make_folder(tmp_path / "s", [np.eye(2)] * 5)
    lists = {"train": ["00", "01", "02"], "val": ["03"], "test": ["04"]}
    assert FolderDataset(root, "test", split_lists=lists).stems == ["04"]
    assert FolderDataset(root, "train", split_lists=lists).stems == ["00", "01", "02"]
    with pytest.raises(DataError, match="unknown stem '07'"):
        FolderDataset(root, "val", split_lists={"val": ["07"]})
    with pytest.raises(DataError, match="unknown split 'tset'"):
        FolderDataset(root, "val", split_lists={"tset": ["00"]})


def test_validation_is_carved_from_an_official_train_list(tmp_path):
    """splits/ with train.txt and test.txt only (LabelMeFacade's official split): val_ratio of train, seeded."""
    from seglab.data.folder import scan_folder
    from seglab.data.synthetic import write_folder

    root = write_folder(tmp_path / "d", num_images=30, size=16)
    stems = sorted(p.stem for p in (root / "images").iterdir())
    (root / "splits" / "val.txt").unlink(missing_ok=True)
    (root / "splits" / "train.txt").write_text("\n".join(stems[:20]) + "\n")
    (root / "splits" / "test.txt").write_text("\n".join(stems[20:]) + "\n")
    scan = scan_folder(root, 255)
    train, val = scan.split("train", val_ratio=0.1, seed=3), scan.split("val", val_ratio=0.1, seed=3)
    assert len(val) == 2 and sorted(train + val) == stems[:20] and not set(train) & set(val)
    assert scan.split("val", val_ratio=0.1, seed=3) == val != scan.split("val", val_ratio=0.1, seed=4)
    assert scan.split("test", val_ratio=0.1) == stems[20:]
    assert scan.split("train", val_ratio=0) == stems[:20] and scan.split("val", val_ratio=0) == []
    from seglab.data.check import check, format_check

    assert "val 0, test 10 (training carves data.val_ratio of train as val)" in format_check(check(root))
