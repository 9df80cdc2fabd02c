"""COCO and LabelMe read in place: DSB 2018 nuclei written with pycocotools (RLE, polygons) and as LabelMe JSON,
read back through scan_folder + FolderDataset and compared with the source instance maps; the overlap and crowd
rules; the problems `data check` reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.data.folder import FolderDataset
from seglab.data.scan import scan_folder
from seglab.errors import ConfigError

mask_utils = pytest.importorskip("pycocotools.mask")
measure = pytest.importorskip("skimage.measure")

DSB = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018-nuclei"
CROP = 128  # px: three 128x128 crops keep the test fast


@pytest.fixture(scope="module")
def nuclei() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Three small DSB images (cropped) with their instance maps renumbered 1..N in order of appearance."""
    if not DSB.is_dir():
        pytest.skip(f"{DSB} not present")
    stems = sorted(p.stem for p in (DSB / "images").glob("*.png"))
    out = []
    for stem in stems:
        img = Image.open(DSB / "images" / f"{stem}.png")
        if img.size != (256, 256):
            continue
        image = np.array(img.convert("RGB"))[:CROP, :CROP]
        raw = np.array(Image.open(DSB / "instances" / f"{stem}.png"))[:CROP, :CROP]
        ids = [i for i in dict.fromkeys(raw.ravel().tolist()) if i != 0]
        inst = np.zeros(raw.shape, np.int64)
        for n, i in enumerate(ids, 1):
            inst[raw == i] = n
        if len(ids) >= 3:
            out.append((stem, image, inst))
        if len(out) == 3:
            return out
    pytest.skip("fewer than three 256x256 DSB images")


def _contours(m: np.ndarray) -> list[np.ndarray]:
    """The outlines of a binary mask as (row, col) points, in pixel positions (pixel centre (r, c) = (r, c))."""
    return [c - 1 for c in measure.find_contours(np.pad(m, 1).astype(float), 0.5)]


def _uncompressed(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of 0s."""
    flat = m.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"counts": np.diff(np.concatenate([[0], edges])).tolist(), "size": list(m.shape)}


def _coco(items: list, file_names: list[str], polygons: bool, ann_id: int = 1) -> dict:
    images, anns = [], []
    for iid, ((_, _, inst), name) in enumerate(zip(items, file_names), 1):
        h, w = inst.shape
        images.append({"id": iid, "file_name": name, "width": w, "height": h})
        for obj in range(1, int(inst.max()) + 1):
            m = inst == obj
            if (
                polygons
            ):  # COCO's coordinates: pixel (r, c) spans c..c+1, r..r+1: its centre is (c + .5, r + .5)
                seg = [(c[:, ::-1] + 0.5).ravel().tolist() for c in _contours(m)]
            elif iid == 1:
                seg = _uncompressed(m)
            else:
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                seg = {"counts": rle["counts"].decode("ascii"), "size": rle["size"]}
            anns.append({"id": ann_id, "image_id": iid, "category_id": 7, "segmentation": seg, "iscrowd": 0})
            anns[-1]["area"], anns[-1]["bbox"] = int(m.sum()), [0, 0, 1, 1]
            ann_id += 1
    return {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "nucleus"}]}


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _items(root: Path, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ds = FolderDataset(root, split, instances=True, cache=False)
    return {s: (ds[i][1], ds[i][2]) for i, s in enumerate(ds.stems)}


def test_coco_rle_reads_back_identical(tmp_path: Path, nuclei: list) -> None:
    """Tree (a): instances_train/val JSONs, images in images/train/ and val/; compressed and uncompressed RLE."""
    train, val = nuclei[:2], nuclei[2:]
    for stem, image, _ in train:
        _save(tmp_path / "images" / "train" / f"{stem}.png", image)
    for stem, image, _ in val:
        _save(tmp_path / "val2017" / f"{stem}.png", image)
    (tmp_path / "annotations").mkdir()
    for name, items, start in (("train2017", train, 1), ("val2017", val, 1000)):
        data = _coco(items, [f"{s}.png" for s, _, _ in items], polygons=False, ann_id=start)
        (tmp_path / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))
    scan = scan_folder(tmp_path, deep=True)
    assert scan.format == "coco" and scan.problems == []
    assert scan.classes is not None and scan.classes.names == ["background", "nucleus"]
    assert scan.split_lists == {"train": sorted(s for s, _, _ in train), "val": [val[0][0]]}
    got = {**_items(tmp_path, "train"), **_items(tmp_path, "val")}
    for stem, _, inst in nuclei:
        mask, objects = got[stem]
        np.testing.assert_array_equal(np.asarray(objects), inst)
        np.testing.assert_array_equal(np.asarray(mask), (inst > 0).astype(np.int64))


def test_coco_polygons_one_json_with_splits(tmp_path: Path, nuclei: list) -> None:
    """Tree (b): one JSON + images/ + splits/; the outlines (find_contours) read back exactly under
    pycocotools' rule (a pixel is covered when its centre lies inside), so more than IoU >= 0.98."""
    for stem, image, _ in nuclei:
        _save(tmp_path / "images" / f"{stem}.png", image)
    (tmp_path / "annotations").mkdir()
    data = _coco(nuclei, [f"{s}.png" for s, _, _ in nuclei], polygons=True)
    (tmp_path / "annotations" / "nuclei.json").write_text(json.dumps(data))
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("\n".join(s for s, _, _ in nuclei))
    scan = scan_folder(tmp_path)
    assert scan.format == "coco" and scan.problems == []
    assert scan.split_lists is not None and scan.split_lists["train"] == sorted(s for s, _, _ in nuclei)
    got = _items(tmp_path, "all")
    for stem, _, inst in nuclei:  # hole-free outlines, pixel centres at (c + .5, r + .5): exact, not just IoU
        mask, objects = (np.asarray(a) for a in got[stem])
        np.testing.assert_array_equal(objects, inst)
        np.testing.assert_array_equal(mask, (inst > 0).astype(np.int64))


def _labelme(shapes: list[dict], name: str, hw: tuple[int, int]) -> dict:
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"../images/{name}",
            "imageData": None, "imageHeight": hw[0], "imageWidth": hw[1]}  # fmt: skip


def test_labelme_contours_read_back(tmp_path: Path, nuclei: list) -> None:
    """LabelMe JSONs in annotations/ (one polygon per contour, a group_id joining an object's contours), images in
    images/: under the pixel-centre rule an object without holes reads back exactly."""
    (tmp_path / "annotations").mkdir()
    for stem, image, inst in nuclei:
        _save(tmp_path / "images" / f"{stem}.png", image)
        shapes = []
        for obj in range(1, int(inst.max()) + 1):
            for c in _contours(inst == obj):
                points = c[:-1, ::-1].tolist()  # (x, y) = (col, row): LabelMe's pixel positions
                shapes.append(
                    {"label": "nucleus", "points": points, "group_id": obj, "shape_type": "polygon"}
                )
        data = _labelme(shapes, f"{stem}.png", inst.shape)
        (tmp_path / "annotations" / f"{stem}.json").write_text(json.dumps(data))
    scan = scan_folder(tmp_path, deep=True)
    assert scan.format == "labelme" and scan.problems == []
    assert scan.classes is not None and scan.classes.names == ["background", "nucleus"]
    got = _items(tmp_path, "all")
    for stem, _, inst in nuclei:  # pixel centres inside the outlines (pixel positions): exact
        mask, objects = (np.asarray(a) for a in got[stem])
        np.testing.assert_array_equal(objects, inst)
        np.testing.assert_array_equal(mask, (inst > 0).astype(np.int64))


def _blank(root: Path, name: str, hw: tuple[int, int] = (40, 50)) -> None:
    _save(root / "images" / name, np.zeros((*hw, 3), np.uint8))


def _square(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@pytest.mark.parametrize("small_first", [True, False])
def test_coco_overlap_order_and_crowd(tmp_path: Path, small_first: bool) -> None:
    """A small object on a large one stays visible in both maps whatever the JSON's order; a crowd region is
    ignore (255) in the mask and no object (0) in the instance map; categories become 1..K by id."""
    _blank(tmp_path, "a.png")
    crowd = np.zeros((40, 50), np.uint8)
    crowd[30:38, 40:48] = 1
    anns = [
        {"id": 5, "image_id": 1, "category_id": 20, "segmentation": [_square(0, 0, 30, 30)], "iscrowd": 0},
        {"id": 9, "image_id": 1, "category_id": 3, "segmentation": [_square(10, 10, 20, 20)], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": _uncompressed(crowd), "iscrowd": 1},
    ]
    if small_first:
        anns = anns[::-1]
    cats = [{"id": 20, "name": "large"}, {"id": 3, "name": "small"}]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}], "annotations": anns}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps({**data, "categories": cats}))
    scan = scan_folder(tmp_path)
    assert scan.problems == [] and scan.classes is not None
    assert scan.classes.names == ["background", "small", "large"]
    (_, mask, inst), *_ = [FolderDataset(tmp_path, "train", instances=True)[0]]
    mask, inst = np.asarray(mask), np.asarray(inst)
    assert mask[15, 15] == 1 and mask[5, 5] == 2 and mask[35, 45] == 255 and mask[39, 0] == 0
    assert inst[15, 15] == 2 and inst[5, 5] == 1 and inst[35, 45] == 0  # objects numbered by annotation id
    # pycocotools' rule: pixel (r, c) is covered when its centre (c + .5, r + .5) lies inside: 0..30 covers 30 px
    assert (mask == 2).sum() + (mask == 1).sum() == 30 * 30 and (mask == 1).sum() == 10 * 10


def test_labelme_overlap_rectangle_circle_and_classes(tmp_path: Path) -> None:
    """Shapes drawn by decreasing area whatever the file order; rectangles and circles by pixel centres; class
    names gathered over the data set (sorted, background first); classes.yaml names them instead."""
    _blank(tmp_path, "a.png")
    _blank(tmp_path, "b.png")
    (tmp_path / "annotations").mkdir()
    small = {"label": "spot", "points": [[12, 12], [14, 12]], "shape_type": "circle", "group_id": None}
    large = {"label": "plate", "points": [[0, 0], [29, 19]], "shape_type": "rectangle", "group_id": None}
    pt = {"label": "mark", "points": [[3, 3]], "shape_type": "point", "group_id": None}
    for name, shapes in (("a", [small, large, pt]), ("b", [large, small])):
        (tmp_path / "annotations" / f"{name}.json").write_text(
            json.dumps(_labelme(shapes, f"{name}.png", (40, 50)))
        )
    scan = scan_folder(tmp_path)
    assert scan.format == "labelme" and scan.problems == []
    assert scan.classes is not None and scan.classes.names == ["background", "plate", "spot"]
    ds = FolderDataset(tmp_path, "all", instances=True)
    for i in range(2):
        _, mask, inst = (np.asarray(a) for a in ds[i])
        assert (mask == 1).sum() + (mask == 2).sum() == 30 * 20  # corners included: x 0..29, y 0..19
        rows, cols = np.mgrid[:40, :50]
        disk = (rows - 12) ** 2 + (cols - 12) ** 2 < 2**2  # centre (12, 12), radius 2: centres closer than 2
        np.testing.assert_array_equal(mask == 2, disk)
        assert set(np.unique(inst[mask == 2])) == {1 if i == 0 else 2}
    (tmp_path / "classes.yaml").write_text("names: [background, spot, plate, other]\n")
    scan = scan_folder(tmp_path)
    assert scan.problems == [] and scan.classes is not None and scan.classes.num_classes == 4
    assert np.asarray(FolderDataset(tmp_path, "all")[0][1])[12, 12] == 1


def test_coco_problems_name_the_json(tmp_path: Path) -> None:
    _blank(tmp_path, "a.png")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 99, "segmentation": [_square(1, 1, 9, 9)], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5, 9, 9]], "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 1, "segmentation": [_square(40, 30, 60, 45)], "iscrowd": 0},
        {"id": 5, "image_id": 8, "category_id": 1, "segmentation": [_square(1, 1, 9, 9)], "iscrowd": 0},
    ]
    images = [
        {"id": 1, "file_name": "a.png", "width": 50, "height": 40},
        {"id": 2, "file_name": "gone.png", "width": 50, "height": 40},
        {"id": 3, "file_name": "b.png", "width": 60, "height": 40},
    ]
    _blank(tmp_path, "b.png")
    _blank(tmp_path, "stray.png")
    js = tmp_path / "annotations" / "instances_train.json"
    js.parent.mkdir()
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    empty = js.with_name("instances_val2017.json")
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    problems = scan_folder(tmp_path).problems
    assert sum(str(empty) in p and "split 'val' is empty" in p for p in problems) == 1
    expect = [
        "annotation 1 (image id 1, a.png) has category id 99",
        "annotation 2 (image id 1, a.png) has a degenerate polygon",
        "annotation 3 (image id 1, a.png) has a degenerate polygon",
        "annotation 4 (image id 1, a.png) has a polygon outside the 50x40 image",
        "annotation 5 refers to image id 8",
        "image id 2 (gone.png) is missing",
    ]
    for text in expect:
        assert sum(text in p and str(js) in p for p in problems) == 1, (text, problems)
    assert any("is 50x40 but mask" in p and f"{js} (image id 3)" in p for p in problems)
    assert any("stray.png is in no COCO JSON" in p for p in problems)
    assert len(problems) == len(expect) + 3


def test_labelme_problems_name_the_json(tmp_path: Path) -> None:
    _blank(tmp_path, "a.png")
    _blank(tmp_path, "c.png", (30, 50))
    (tmp_path / "annotations").mkdir()
    shapes = [
        {"label": "x", "points": [[1, 1], [5, 5]], "shape_type": "polygon"},
        {"label": "x", "points": [[1, 1], [60, 5], [5, 9]], "shape_type": "polygon"},
        {"label": "x", "points": [[1, 1], [8, 5], [5, 9]], "shape_type": "polygon"},
    ]
    for name, hw in (("a", (40, 50)), ("b", (40, 50)), ("c", (40, 50))):
        (tmp_path / "annotations" / f"{name}.json").write_text(
            json.dumps(_labelme(shapes, f"{name}.png", hw))
        )
    problems = scan_folder(tmp_path).problems
    a = tmp_path / "annotations" / "a.json"
    assert sum(f"{a}: shape 0 (polygon 'x') is degenerate" in p for p in problems) == 1, problems
    assert sum(f"{a}: shape 1 (polygon 'x') lies outside the 50x40 image" in p for p in problems) == 1
    assert any(
        str(tmp_path / "annotations" / "b.json") in p and "'../images/b.png' is missing" in p
        for p in problems
    )
    assert any("is 50x30 but mask" in p and "c.json is 50x40" in p for p in problems)


def test_missing_pycocotools_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _blank(tmp_path, "a.png")
    (tmp_path / "annotations").mkdir()
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}], "annotations": []}
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps({**data, "categories": []}))
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.mask"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        ConfigError, match=r"^the coco format needs the package pycocotools: pip install"
    ) as e:
        scan_folder(tmp_path)
    assert "\n" not in str(e.value)
