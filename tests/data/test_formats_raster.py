"""The raster layouts read in place (VOC, Cityscapes, ADE20K): real files written as each benchmark ships them,
read back through the scan and FolderDataset and compared with the source labels; the known traps (VOC's 255
boundary, Cityscapes' label ids, ADE20K's 0) asserted against the formats' own tables."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from seglab.cli import main
from seglab.data.folder import FolderDataset
from seglab.data.formats import detect
from seglab.data.formats.voc import voc_colormap
from seglab.data.io import read_mask_raw
from seglab.data.scan import scan_folder
from seglab.errors import ConfigError

FACADE = Path(__file__).resolve().parents[3] / "shared" / "data" / "labelmefacade"
needs_facade = pytest.mark.skipif(not FACADE.is_dir(), reason="../shared/data/labelmefacade is not here")

# VOC's colours of a few indices, as the devkit's documentation and every VOC PNG show them
VOC_KNOWN_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 15: (192, 128, 128), 255: (224, 224, 192)}


# ---- VOC: LabelMeFacade written as VOC -------------------------------------------------------------------------


def _facade_indices(stem: str, colours: list[list[int]], width: int = 64) -> tuple[Image.Image, np.ndarray]:
    """A LabelMeFacade image and its mask as class indices (by the colours of its classes.yaml), ~``width`` px."""
    img = Image.open(FACADE / "images" / f"{stem}.jpg").convert("RGB")
    size = (width, round(width * img.height / img.width))
    rgb = np.array(Image.open(FACADE / "masks" / f"{stem}.png").convert("RGB").resize(size, Image.NEAREST))
    index = np.full(rgb.shape[:2], -1, np.int64)
    for i, c in enumerate(colours):
        index[(rgb == c).all(axis=2)] = i
    assert (index >= 0).all(), f"{stem}: a colour outside classes.yaml"
    return img.resize(size, Image.BILINEAR), index.astype(np.uint8)


def _save_voc_png(path: Path, index: np.ndarray) -> None:
    """A palette PNG as VOC's are: class indices with the devkit's 256 colours."""
    img = Image.fromarray(index, mode="P")
    img.putpalette([v for c in voc_colormap(256) for v in c])
    img.save(path)


@pytest.fixture
def voc_tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, list[str]], dict]:
    """Four LabelMeFacade images as VOC2012: JPEGImages/, SegmentationClass/ palette PNGs with a 255 band on the
    objects' boundaries (as VOC draws them), SegmentationObject/ (the windows as objects), ImageSets splits.
    Returns the root, the expected index masks (255 on the band), the splits and the facade's classes."""
    facade = yaml.safe_load((FACADE / "classes.yaml").read_text())
    stems = (FACADE / "splits" / "train.txt").read_text().split()[:4]
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    expected = {}
    for stem in stems:
        img, index = _facade_indices(stem, facade["colors"])
        img.save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        voc = index.copy()
        voc[find_boundaries(index, mode="inner")] = 255
        _save_voc_png(root / "SegmentationClass" / f"{stem}.png", voc)
        objects = connected_components(index == facade["names"].index("window"), connectivity=1).astype(
            np.uint8
        )
        objects[(voc == 255) & (objects > 0)] = 255  # the band covers the objects' edges in both maps
        Image.fromarray(objects, mode="L").save(root / "SegmentationObject" / f"{stem}.png")
        expected[stem] = voc
    splits = {"train": stems[:3], "val": stems[3:]}
    for name, listed in {**splits, "trainval": stems}.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{s}\n" for s in listed))
    return root, expected, splits, facade


@needs_facade
def test_voc_labelmefacade_reads_back_with_the_255_boundary_ignored(voc_tree) -> None:
    root, expected, splits, facade = voc_tree
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": facade["names"], "mask_format": "index"}))
    assert detect(root) == "voc"
    scan = scan_folder(root, deep=True)
    assert scan.format == "voc" and scan.problems == []
    assert scan.classes.names == facade["names"]  # the classes.yaml beside it wins over VOC's 21
    assert scan.classes.num_classes == 9 and scan.classes.ignore_index == 255  # 255 is no class
    assert scan.split_lists == {"train": splits["train"], "val": splits["val"], "test": []}
    ds = FolderDataset(root, "all", cache=False)
    for i, stem in enumerate(ds.stems):
        _, mask = ds.load(i)
        np.testing.assert_array_equal(mask, expected[stem])
        band = expected[stem] == 255
        assert band.any() and (mask[band] == ds.ignore_index).all()
    assert FolderDataset(root, "train").stems == sorted(splits["train"])
    assert FolderDataset(root, "val").stems == splits["val"]


@needs_facade
def test_voc_declares_the_21_classes_of_torchvision_and_the_devkit_palette(voc_tree) -> None:
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    root, expected, _, _ = voc_tree
    scan = scan_folder(root, deep=True)
    categories = FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    assert scan.classes.names == ["background", *categories[1:]] and scan.classes.num_classes == 21
    assert scan.classes.ignore_index == 255 and scan.classes.mask_format == "index"
    for index, colour in VOC_KNOWN_COLOURS.items():
        assert voc_colormap(256)[index] == colour
        if index < 21:
            assert tuple(scan.classes.palette[index]) == colour
    ds = FolderDataset(root, "all", cache=False)
    for i, stem in enumerate(ds.stems):
        np.testing.assert_array_equal(ds.load(i)[1], expected[stem])


@needs_facade
def test_voc_object_maps_read_with_their_boundary_as_no_object(voc_tree) -> None:
    root, _, _, _ = voc_tree
    scan = scan_folder(root, deep=True)
    for stem, source in scan.instances.items():
        stored = np.array(Image.open(root / "SegmentationObject" / f"{stem}.png"))
        got = read_mask_raw(source)
        assert (got[stored == 255] == 0).all()
        keep = stored != 255
        np.testing.assert_array_equal(got[keep], stored[keep])
    assert sum(scan.objects.values()) > 0


@needs_facade
def test_voc_problems_name_the_file(voc_tree) -> None:
    root, _, splits, _ = voc_tree
    orphan = splits["train"][0]
    (root / "JPEGImages" / f"{orphan}.jpg").unlink()  # an annotation without its image
    unlabelled = "2007_000001"
    Image.new("RGB", (64, 48)).save(root / "JPEGImages" / f"{unlabelled}.jpg")  # listed, no annotation
    Image.new("RGB", (64, 48)).save(root / "JPEGImages" / "2007_000002.jpg")  # a detection image: no problem
    val = root / "ImageSets" / "Segmentation" / "val.txt"
    val.write_text(val.read_text() + f"{unlabelled}\nghost\n")
    problems = scan_folder(root).problems
    assert len(problems) == 3, problems
    no_image, no_annotation, missing = problems
    assert f"SegmentationClass/{orphan}.png has no image" in no_image
    assert str(val) in no_annotation and f"JPEGImages/{unlabelled}.jpg" in no_annotation
    assert str(val) in missing and "'ghost'" in missing
    assert all("\n" not in p for p in problems)


# ---- Cityscapes ------------------------------------------------------------------------------------------------


@pytest.fixture
def cityscapes_tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """gtFine + leftImg8bit for two training cities and one validation city: 16x8 label-id maps (ids from the
    official table) and instance-id maps with two cars (26001, 26002). Returns the root, the label ids and the
    instance ids by stem."""
    from cityscapesscripts.helpers.labels import name2label

    root = tmp_path / "cityscapes"
    ids = [
        name2label[n].id for n in ("road", "car", "unlabeled", "ego vehicle", "sky", "building", "caravan")
    ]
    rng = np.random.default_rng(0)
    labels, instances = {}, {}
    for split, city, k in (("train", "aachen", 0), ("train", "bremen", 1), ("val", "frankfurt", 0)):
        stem = f"{city}_000000_{k:06d}"
        lab = rng.choice(ids, size=(8, 16)).astype(np.uint8)
        lab[:, :4] = name2label["car"].id
        inst = lab.astype(np.int32)  # stuff: the label id (< 1000)
        inst[:, :2], inst[:, 2:4] = 26001, 26002  # two cars
        inst[lab == name2label["caravan"].id] = 29000  # an object of a class outside the 19
        for folder, suffix, arr in (
            ("gtFine", "gtFine_labelIds", lab),
            ("gtFine", "gtFine_instanceIds", inst.astype(np.uint16)),
            ("leftImg8bit", "leftImg8bit", rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)),
        ):
            (root / folder / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / folder / split / city / f"{stem}_{suffix}.png")
        labels[stem], instances[stem] = lab, inst
    return root, labels, instances


def test_cityscapes_label_ids_read_as_train_ids_by_the_official_table(cityscapes_tree) -> None:
    from cityscapesscripts.helpers.labels import id2label, labels

    root, label_ids, _ = cityscapes_tree
    assert detect(root) == "cityscapes"
    scan = scan_folder(root, deep=True)
    assert scan.format == "cityscapes" and scan.problems == []
    train = sorted((lab for lab in labels if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId)
    assert scan.classes.names == [lab.name for lab in train] and scan.classes.num_classes == 19
    assert [tuple(c) for c in scan.classes.palette] == [lab.color for lab in train]
    assert scan.split_lists == {
        "train": ["aachen_000000_000000", "bremen_000000_000001"],
        "val": ["frankfurt_000000_000000"],
    }
    ds = FolderDataset(root, "all", cache=False)
    for i, stem in enumerate(ds.stems):
        mask = ds.load(i)[1]
        ids = label_ids[stem]
        official = np.vectorize(lambda v: id2label[int(v)].trainId)(ids)
        np.testing.assert_array_equal(mask, np.where(np.isin(official, (255, -1)), 255, official))
        assert (mask[ids == 7] == 0).all() and (mask[ids == 26] == 13).all()  # road, car
        assert (mask[np.isin(ids, (0, 1))] == 255).all()  # unlabeled, ego vehicle: ignored
    assert FolderDataset(root, "val").stems == ["frankfurt_000000_000000"]


def test_cityscapes_instance_ids_become_objects_1_to_n(cityscapes_tree) -> None:
    root, _, instance_ids = cityscapes_tree
    scan = scan_folder(root, deep=True)
    assert scan.objects == dict.fromkeys(instance_ids, 2)
    ds = FolderDataset(root, "all", cache=False, instances=True)
    for i, stem in enumerate(ds.stems):
        got, ids = ds.load_instances(i), instance_ids[stem]
        assert (got[ids == 26001] == 1).all() and (got[ids == 26002] == 2).all()
        assert (got[(ids != 26001) & (ids != 26002)] == 0).all()  # stuff and the caravan: no object


def test_cityscapes_problems_name_the_file(cityscapes_tree) -> None:
    root, _, _ = cityscapes_tree
    image = root / "leftImg8bit" / "train" / "bremen" / "bremen_000000_000001_leftImg8bit.png"
    image.unlink()
    problems = scan_folder(root).problems
    assert len(problems) == 1 and "bremen_000000_000001_gtFine_labelIds.png has no image" in problems[0]
    assert str(image) in problems[0]


def test_cityscapes_without_its_package_names_the_extra(cityscapes_tree, monkeypatch, capsys) -> None:
    root, _, _ = cityscapes_tree
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)  # the import fails
    with pytest.raises(ConfigError, match=r"cityscapesscripts: pip install 'seglab\[formats\]'"):
        scan_folder(root)
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seglab[formats]" in err and "cityscapes" in err


# ---- ADE20K ----------------------------------------------------------------------------------------------------


@pytest.fixture
def ade_tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """ADEChallengeData2016: two training and one validation image, annotations with values 0..150."""
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(1)
    stored = {}
    for folder, stem in (
        ("training", "ADE_train_00000001"),
        ("training", "ADE_train_00000002"),
        (
            "validation",
            "ADE_val_00000001",
        ),
    ):
        for sub in ("images", "annotations"):
            (root / sub / folder).mkdir(parents=True, exist_ok=True)
        ann = rng.integers(0, 151, (12, 10), dtype=np.uint8)
        ann[0, :3] = (0, 1, 150)
        Image.fromarray(ann, mode="L").save(root / "annotations" / folder / f"{stem}.png")
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
            root / "images" / folder / f"{stem}.jpg"
        )
        stored[stem] = ann
    return root, stored


def test_ade20k_zero_is_ignored_and_one_is_class_0(ade_tree) -> None:
    root, stored = ade_tree
    assert detect(root) == "ade20k"
    scan = scan_folder(root, deep=True)
    assert scan.format == "ade20k" and scan.problems == []
    assert scan.classes.num_classes == 150 and scan.classes.ignore_index == 255
    assert scan.classes.names[:3] == ["wall", "building", "sky"] and scan.classes.names[-1] == "flag"
    assert scan.split_lists == {
        "train": ["ADE_train_00000001", "ADE_train_00000002"],
        "val": ["ADE_val_00000001"],
    }
    ds = FolderDataset(root, "all", cache=False)
    for i, stem in enumerate(ds.stems):
        mask, ann = ds.load(i)[1], stored[stem].astype(np.int64)
        assert tuple(mask[0, :3]) == (255, 0, 149)  # 0 ("other") ignored; 1 is class 0; 150 is class 149
        np.testing.assert_array_equal(mask, np.where(ann == 0, 255, ann - 1))
    assert FolderDataset(root, "train").stems == ["ADE_train_00000001", "ADE_train_00000002"]


def test_ade20k_problems_name_the_file(ade_tree) -> None:
    root, _ = ade_tree
    (root / "images" / "validation" / "ADE_val_00000001.jpg").unlink()
    bad = root / "annotations" / "training" / "ADE_train_00000002.png"
    Image.fromarray(np.full((12, 10), 151, np.uint8), mode="L").save(bad)  # beyond the 150 classes
    problems = scan_folder(root, deep=True).problems
    assert len(problems) == 2, problems
    assert "annotations/validation/ADE_val_00000001.png has no image" in problems[0]
    assert str(bad) in problems[1] and "151" in problems[1]
