"""The tools around the layouts read in place (issue 29): data.format, `data check` naming the layout, `data
convert` to the folder layout, and its promise: converting and reading in place give identical training batches.

The VOC tree is written here with Pillow (JPEGImages/*.jpg, SegmentationClass and SegmentationObject palette PNGs
whose objects carry VOC's 255 boundary band, ImageSets/Segmentation/{train,val}.txt); the known answers are the
arrays it was written from.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seglab.config import Config
from seglab.errors import ConfigError

STEMS = [f"2007_{i:06d}" for i in range(8)]
TRAIN, VAL = STEMS[:6], STEMS[6:]
H, W = 40, 48


def _voc_arrays(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (H, W, 3), class indices with a 255 band around each object, object ids with the same band."""
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    classes = np.zeros((H, W), np.uint8)
    objects = np.zeros((H, W), np.uint8)
    boxes = [(4, 4, 18, 20), (20, 22, 36, 44)] if i % 2 else [(6, 10, 30, 40)]
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        label = 1 + (3 * i + 7 * k) % 20
        classes[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = 255  # VOC's boundary: ignore
        objects[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = 255
        classes[y0:y1, x0:x1] = label
        objects[y0:y1, x0:x1] = k + 1
        image[y0:y1, x0:x1] //= 2
    return image, classes, objects


def _palette_png(path: Path, values: np.ndarray) -> None:
    from seglab.data.formats.voc import voc_colormap

    img = Image.fromarray(values, mode="P")
    img.putpalette([v for c in voc_colormap(256) for v in c])
    img.save(path)


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for i, stem in enumerate(STEMS):
        image, classes, objects = _voc_arrays(i)
        Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
        _palette_png(root / "SegmentationClass" / f"{stem}.png", classes)
        _palette_png(root / "SegmentationObject" / f"{stem}.png", objects)
    # a detection-only image (no annotation): VOC has thousands; not a pair, not a problem
    Image.fromarray(_voc_arrays(99)[0]).save(root / "JPEGImages" / "2008_000001.jpg")
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(s + "\n" for s in TRAIN))
    (lists / "val.txt").write_text("".join(s + "\n" for s in VAL))
    return root


def _cfg(root: Path, fmt: str = "auto") -> Config:
    return Config().override(
        [
            f"data.root={root}",
            f"data.format={fmt}",
            "data.crop_size=32",
            "data.scale=[0.75, 1.25]",
            "data.rotation=15",
            "data.color_jitter=0.2",
            "data.cache=false",
            "data.num_workers=0",
            "train.batch_size=3",
            "train.seed=5",
        ]
    )


def _batches(cfg: Config, n: int) -> tuple[list, list, object]:
    from seglab.engine.data import build_data

    data = build_data(cfg, torch.device("cpu"))
    data.sampler.set_epoch(1)
    train = [b for _, b in zip(range(n), data.train_loader)]
    val = list(data.val_loader)
    return train, val, data


def test_converting_to_the_folder_layout_and_reading_voc_in_place_give_identical_training_batches(
    voc_dir, tmp_path
):
    from seglab.data.convert import convert

    out = tmp_path / "converted"
    r = convert(voc_dir, out)
    assert (r.format, r.pairs, r.instances, r.splits) == ("voc", 8, 8, {"train": 6, "val": 2, "test": 0})
    in_place, in_place_val, a = _batches(_cfg(voc_dir), 2)
    folder, folder_val, b = _batches(_cfg(out), 2)
    assert (a.train.scan.format, b.train.scan.format) == ("voc", "folder")
    assert a.class_names == b.class_names and len(a.class_names) == 21
    assert len(in_place) == len(folder) == 2 and len(in_place_val) == len(folder_val) == 1
    for x, y in zip(in_place + in_place_val, folder + folder_val):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert u.dtype == v.dtype and torch.equal(u, v)
    masks = torch.cat([m.flatten() for _, m in in_place])
    assert (
        255 in masks.tolist() and int(masks[masks != 255].max()) <= 20
    )  # the boundary is ignored, not a class
    # and data.format named instead of detected reads the same
    named, _, _ = _batches(_cfg(voc_dir, "voc"), 1)
    assert all(torch.equal(u, v) for u, v in zip(named[0], in_place[0]))


def test_convert_writes_the_decoded_masks_linked_images_classes_and_splits(voc_dir, tmp_path):
    from seglab.data.convert import convert, format_summary

    out = tmp_path / "converted"
    r = convert(voc_dir, out)
    assert sorted(p.stem for p in (out / "images").iterdir()) == STEMS  # not the detection-only image
    for i, stem in enumerate(STEMS):
        _, classes, objects = _voc_arrays(i)
        image = out / "images" / f"{stem}.jpg"
        assert os.path.samefile(image, voc_dir / "JPEGImages" / f"{stem}.jpg")  # a hard link, extension kept
        mask = Image.open(out / "masks" / f"{stem}.png")
        assert mask.mode == "P" and np.array_equal(np.array(mask), classes)  # 255 stays: ignore_index
        inst = np.array(Image.open(out / "instances" / f"{stem}.png"))
        assert np.array_equal(inst, np.where(objects == 255, 0, objects))  # the boundary is no object
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    categories = FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    classes_yaml = yaml.safe_load((out / "classes.yaml").read_text())
    assert classes_yaml["names"][1:] == categories[1:] and classes_yaml["names"][0] == "background"
    assert (classes_yaml["mask_format"], classes_yaml["ignore_index"]) == ("index", 255)
    assert classes_yaml["colors"][1] == [128, 0, 0] and classes_yaml["colors"][15] == [192, 128, 128]  # VOC's
    assert (out / "splits" / "train.txt").read_text().split() == TRAIN
    assert (out / "splits" / "val.txt").read_text().split() == VAL
    assert (r.linked, r.copied) == (8, 0)
    text = format_summary(r)
    assert "8 images (8 hard links)" in text and "21 classes, ignore_index 255" in text
    mark = json.loads((out / "convert.json").read_text())
    assert mark["complete"] and mark["format"] == "voc" and f"masks/{STEMS[0]}.png" in mark["files"]


def test_convert_copies_when_links_are_refused(voc_dir, tmp_path, monkeypatch):
    from seglab.data import convert as convert_module

    def no_link(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(convert_module.os, "link", no_link)
    out = tmp_path / "converted"
    r = convert_module.convert(voc_dir, out)
    assert (r.linked, r.copied) == (0, 8)
    first = out / "images" / f"{STEMS[0]}.jpg"
    assert not os.path.samefile(first, voc_dir / "JPEGImages" / f"{STEMS[0]}.jpg")
    assert first.read_bytes() == (voc_dir / "JPEGImages" / f"{STEMS[0]}.jpg").read_bytes()


def test_convert_links_the_files_behind_symbolic_links(voc_dir, tmp_path):
    """JPEGImages/ of symbolic links (as benchmarks/formats_speed.py writes it): images/ holds hard links to the
    files themselves, not links to the links."""
    from seglab.data.convert import convert

    store = tmp_path / "store"
    store.mkdir()
    for stem in STEMS:
        jpg = voc_dir / "JPEGImages" / f"{stem}.jpg"
        jpg.rename(store / jpg.name)
        jpg.symlink_to(store / jpg.name)
    r = convert(voc_dir, tmp_path / "out")
    image = tmp_path / "out" / "images" / f"{STEMS[0]}.jpg"
    assert r.linked == 8 and not image.is_symlink() and os.path.samefile(image, store / image.name)


def test_convert_refuses_a_non_empty_folder_and_updates_its_own_earlier_output(voc_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, stdout, err = run_cli("data", "convert", voc_dir, "--out", out)
    assert code == 2 and err.count("\n") == 1 and err.startswith("seglab: error: data convert --out")
    assert "not empty" in err and sorted(os.listdir(out)) == ["notes.txt"]  # nothing written
    code, _, err = run_cli("data", "convert", voc_dir, "--out", voc_dir / "converted")
    assert code == 2 and "lies in the source" in err and not (voc_dir / "converted").exists()

    fresh = tmp_path / "fresh"
    code, stdout, err = run_cli("data", "convert", voc_dir, "--out", fresh, "--no-progress")
    assert code == 0 and "converted" in stdout and "voc layout" in stdout and err == ""
    # the source loses a pair: converting again into the earlier output updates it and drops the stale files
    gone = VAL[-1]
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png"), ("SegmentationObject", ".png")):
        (voc_dir / sub / f"{gone}{ext}").unlink()
    (voc_dir / "ImageSets" / "Segmentation" / "val.txt").write_text(VAL[0] + "\n")
    code, stdout, _ = run_cli("data", "convert", voc_dir, "--out", fresh, "--no-progress")
    assert code == 0 and "removed 3 files" in stdout
    assert not any(
        (fresh / sub / f"{gone}{ext}").exists() for sub, ext in [("images", ".jpg"), ("masks", ".png")]
    )
    assert (fresh / "splits" / "val.txt").read_text().split() == [VAL[0]]
    code, stdout, _ = run_cli("data", "check", fresh)
    assert code == 0 and stdout.splitlines()[0] == "format: folder (detected)"


def test_data_check_says_which_layout_it_read(voc_dir, shapes_dir, run_cli):
    code, stdout, _ = run_cli("data", "check", voc_dir)
    lines = stdout.splitlines()
    assert code == 0 and lines[0] == "format: voc (detected)" and lines[-1] == "no problems found"
    assert "splits (the voc lists): train 6, val 2, test 0" in stdout
    code, stdout, _ = run_cli("data", "check", voc_dir, "--format", "voc")
    assert code == 0 and stdout.splitlines()[0] == "format: voc (data.format)"
    code, stdout, _ = run_cli("data", "check", shapes_dir)
    assert code == 0 and stdout.splitlines()[0] == "format: folder (detected)"
    code, _, err = run_cli("data", "check", voc_dir, "--format", "folder")  # the wrong layout named: one line
    assert code == 2 and err.count("\n") == 1 and "images" in err
    code, _, err = run_cli("data", "check", voc_dir, "--format", "vocx")
    assert code == 2 and "invalid choice" in err


def test_data_format_is_checked_and_set_by_train_format(tmp_path, voc_dir):
    with pytest.raises(ConfigError, match="data.format must be one of auto, folder, voc"):
        Config().override(["data.format=pascal"])
    from seglab.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--data", str(voc_dir), "--format", "voc"])
    assert _train_config(args).data.format == "voc"
    assert Config().data.format == "auto"


def test_a_missing_formats_extra_is_named_in_one_line(tmp_path, monkeypatch, run_cli):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "annotations": [],
        "categories": [{"id": 1, "name": "cell"}],
    }
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.mask"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if the package were not installed
    for argv in (("data", "check", root), ("data", "convert", root, "--out", tmp_path / "out")):
        code, stdout, err = run_cli(*argv)
        assert code == 2 and stdout == "" and err.count("\n") == 1, err
        assert "the coco format needs the package pycocotools: pip install 'seglab[formats]'" in err


def test_train_evaluate_calibrate_and_report_read_the_layout_in_place(voc_dir, tmp_path, run_cli):
    from seglab.data.convert import convert

    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--data", voc_dir, "--format", "voc", "--out", run, "--epochs", 1, "--batch-size", 3,
        "--set", "model.params={depth: 2, base_channels: 4}", "--set", "train.amp=off", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["format"] == "voc"
    folder = convert(voc_dir, tmp_path / "converted").out
    reports = {}
    for name, root, flags in (
        ("voc", voc_dir, ()),
        ("named", voc_dir, ("--format", "voc")),
        ("folder", folder, ()),
    ):
        out = tmp_path / f"eval-{name}.json"
        code, _, err = run_cli(
            "evaluate", run, "--data", root, "--split", "val", "--out", out, "--no-progress", *flags
        )
        assert code == 0, err
        reports[name] = json.loads(out.read_text())
    assert [r["format"] for r in reports.values()] == ["voc", "voc", "folder"]
    assert reports["voc"]["num_images"] == 2
    # the same pixels scored: in place and converted give the same confusion matrix
    assert (
        reports["voc"]["confusion_matrix"]
        == reports["folder"]["confusion_matrix"]
        == reports["named"]["confusion_matrix"]
    )
    code, _, err = run_cli(
        "evaluate", run, "--data", voc_dir, "--format", "folder", "--out", tmp_path / "x.json"
    )
    assert code == 2 and err.count("\n") == 1
    code, stdout, err = run_cli("calibrate", run, "--data", voc_dir, "--format", "voc", "--no-progress")
    assert code == 0 and "of 2 images (val)" in stdout, err
    code, _, err = run_cli("report", run, "--split", "val", "--out", tmp_path / "report", "--no-progress")
    assert code == 0, err  # data.root and data.format from the run's config.yaml
    assert json.loads((tmp_path / "report" / "eval-val.json").read_text())["format"] == "voc"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under NumPy 2
def test_convert_writes_16_bit_instance_maps_above_255_objects_from_coco_rle(tmp_path):
    """300 objects of a COCO JSON (RLE from pycocotools), drawn by the coco layout: converted, the instance map is
    a 16-bit PNG holding ids 1..300 where the annotations lie, and the mask is the category's index."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from seglab.data.convert import convert

    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "images" / "a.png")
    expected = np.zeros((64, 64), np.uint16)
    anns = []
    for k in range(300):
        y, x = 3 * (k // 20), 3 * (k % 20)
        m = np.zeros((64, 64), np.uint8)
        m[y : y + 2, x : x + 2] = 1
        expected[m == 1] = k + 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": k + 1, "image_id": 1, "category_id": 7, "segmentation": rle, "area": 4,
                     "bbox": [x, y, 2, 2], "iscrowd": 0})  # fmt: skip
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": anns,
        "categories": [{"id": 7, "name": "cell"}],
    }
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    r = convert(root, tmp_path / "out")
    assert (r.format, r.pairs, r.instances, r.splits) == ("coco", 1, 1, {"train": 1})
    inst = Image.open(tmp_path / "out" / "instances" / "a.png")
    assert inst.mode.startswith("I") and np.array_equal(np.array(inst), expected)
    mask = np.array(Image.open(tmp_path / "out" / "masks" / "a.png"))
    assert np.array_equal(mask, (expected > 0).astype(np.uint8))  # background 0, the one category 1
    assert yaml.safe_load((tmp_path / "out" / "classes.yaml").read_text())["names"][1] == "cell"
