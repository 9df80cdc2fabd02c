"""COCO: images plus COCO JSON files of polygons or RLE, read in place through pycocotools (docs/formats/coco.md).

Accepted trees::

    DIR/annotations/instances_train*.json, instances_val*.json, instances_test*.json   (one JSON per split)
    DIR/images/<split>*/ or DIR/<split>*/ or DIR/images/                              (images by file_name)

    DIR/annotations/<any>.json + DIR/images/ + DIR/splits/{train,val,test}.txt        (one JSON; splits optional)

Semantic masks: 0 = background, 1..K = the JSON's categories sorted by id, ``iscrowd`` regions = ignore.
Instances: 1..N = the image's non-crowd annotations by annotation id; crowd regions 0. Overlaps: annotations are
drawn in order of decreasing pixel area (ties: increasing annotation id), the same order in both maps, so a small
object lying on a large one stays visible whatever the JSON's order. Each JSON is parsed once per process
(``_load``), however many images it describes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.formats import Layout, MaskSource, file_key, require
from seglab.errors import DataError

SPLITS = ("train", "val", "test")
_SPLIT_JSON = re.compile(r"^instances_(train|val|test)")
_LOCK = threading.Lock()
_FILES: dict[str, tuple[tuple[str, int, int] | None, _CocoFile]] = {}  # abs path -> (file key, parsed JSON)
_MAX_FILES = 4  # JSONs kept parsed at once (a data set has one per split)


def _jsons(root: Path) -> list[Path]:
    folder = root / "annotations"
    return sorted(p for p in folder.glob("*.json") if p.is_file()) if folder.is_dir() else []


def _split_jsons(jsons: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in jsons:
        m = _SPLIT_JSON.match(p.name)
        if m:
            out.setdefault(m.group(1), []).append(p)
    return out


def _looks_like_labelme(path: Path) -> bool:
    """A LabelMe JSON (``shapes`` and ``imagePath`` keys) in annotations/ is not COCO; only the head is read."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    return b'"shapes"' in head and b'"imagePath"' in head


def detect(root: Path) -> bool:
    """annotations/ holding instances_<split>*.json, or exactly one (non-LabelMe) JSON, beside an image folder."""
    jsons = _jsons(root)
    if not jsons or not (_split_jsons(jsons) or (len(jsons) == 1 and not _looks_like_labelme(jsons[0]))):
        return False
    return (root / "images").is_dir() or any(
        d.is_dir() and d.name.startswith(SPLITS) for d in root.iterdir() if d.name != "annotations"
    )


@dataclass
class _CocoFile:
    """One parsed COCO JSON: pycocotools' index, the problems found in it, and per image the annotations to draw
    (checked, degenerate polygons left out)."""

    path: Path
    coco: Any
    problems: list[str] = field(default_factory=list)
    drawable: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def _load(path: Path) -> _CocoFile:
    """The parsed JSON ``path``, from this process's cache unless the file changed (size, mtime)."""
    key = file_key(path, "coco")
    name = os.path.abspath(path)
    with _LOCK:
        hit = _FILES.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        parsed = _parse(Path(path))
        _FILES.pop(name, None)
        while len(_FILES) >= _MAX_FILES:
            _FILES.pop(next(iter(_FILES)))
        _FILES[name] = (key, parsed)
        return parsed


def _parse(path: Path) -> _CocoFile:
    coco_mod = require("pycocotools.coco", "coco")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read COCO JSON {path}: {str(e).splitlines()[0]}") from None
    ok = isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "categories"))
    if not ok or not isinstance(data.get("annotations", []), list):
        raise DataError(
            f"{path} is not a COCO JSON: it needs the lists 'images', 'annotations' and 'categories'"
        )
    data.setdefault("annotations", [])
    coco = coco_mod.COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: an image, annotation or category lacks the key {e}; fix the JSON") from None
    out = _CocoFile(path, coco)
    for ann in data["annotations"]:
        checked = _check_annotation(out, ann)
        if checked is not None:
            out.drawable.setdefault(int(ann["image_id"]), []).append(checked)
    return out


def _check_annotation(f: _CocoFile, ann: dict[str, Any]) -> dict[str, Any] | None:
    """``ann`` as it will be drawn (degenerate polygons left out), or None (a problem is recorded) when it cannot
    be drawn: unknown image or category, no segmentation, an RLE of another size."""
    where = f"{f.path}: annotation {ann.get('id')}"
    img = f.coco.imgs.get(ann["image_id"])
    if img is None:
        f.problems.append(f"{where} refers to image id {ann['image_id']}, which 'images' does not list")
        return None
    where += f" (image id {img['id']}, {img.get('file_name')})"
    if ann["category_id"] not in f.coco.cats:
        f.problems.append(f"{where} has category id {ann['category_id']}, which 'categories' does not list")
        return None
    seg, w, h = ann.get("segmentation"), img.get("width"), img.get("height")
    if isinstance(seg, dict):
        if list(seg.get("size", [])) != [h, w]:
            f.problems.append(
                f"{where}: its RLE is of size {seg.get('size')} but the image is {h}x{w} (h x w)"
            )
            return None
        return ann
    if not isinstance(seg, list) or not seg:
        f.problems.append(f"{where} has no segmentation (polygons or RLE); add one or remove the annotation")
        return None
    polygons = []
    for poly in seg:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2) if len(poly) % 2 == 0 else np.zeros((0, 2))
        area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1)))
        if len(xy) < 3 or area == 0:
            f.problems.append(
                f"{where} has a degenerate polygon ({len(poly)} numbers, area {area:g}); left out"
            )
            continue
        if xy.min() < 0 or xy[:, 0].max() > w or xy[:, 1].max() > h:
            f.problems.append(f"{where} has a polygon outside the {w}x{h} image (x 0..{w}, y 0..{h})")
        polygons.append(poly)
    return {**ann, "segmentation": polygons} if polygons else None


def _locate(root: Path, split: str | None) -> list[Path]:
    """Where a JSON's images may be: images/<split>*/, <split>*/, images/ (split None: images/ only)."""
    dirs = []
    if split is not None:
        for parent in (root / "images", root):
            if parent.is_dir():
                dirs += sorted(d for d in parent.iterdir() if d.is_dir() and d.name.startswith(split))
    return [*dirs, root / "images"]


def _has(folder: Path, name: str, listings: dict[Path, set[str]]) -> bool:
    """Whether ``folder`` holds the file ``name`` (a file_name with folders: stat it; else one listing per
    folder, kept in ``listings``, so a JSON of many images stats no file one by one)."""
    if "/" in name:
        return (folder / name).is_file()
    if folder not in listings:
        listings[folder] = {e.name for e in os.scandir(folder) if e.is_file()} if folder.is_dir() else set()
    return name in listings[folder]


def read(root: Path) -> Layout:
    """The images, drawn masks and instance maps, categories as classes and splits of a COCO tree."""
    jsons = _jsons(root)
    by_split = _split_jsons(jsons)
    if not by_split and len(jsons) != 1:
        raise DataError(
            f"{root / 'annotations'} holds {len(jsons)} JSON files; name them instances_train*.json, "
            f"instances_val*.json, instances_test*.json (one per split) or keep one JSON plus splits/"
        )
    for split, paths in by_split.items():
        if len(paths) > 1:
            raise DataError(f"{paths[0]} and {paths[1]} are both split {split!r}; keep one JSON per split")
    sources = [(s, by_split[s][0]) for s in SPLITS if s in by_split] if by_split else [(None, jsons[0])]
    files = [(s, _load(p)) for s, p in sources]
    problems = [p for _, f in files for p in f.problems]
    names, cat_index, digest = _categories(files, problems)
    layout = Layout("coco", root, {}, {}, {}, split_lists={} if by_split else None, problems=problems)
    listings: dict[Path, set[str]] = {}
    for split, f in files:
        dirs = _locate(root, split)
        stems = _add_images(layout, f, dirs, listings, (cat_index, digest))
        if layout.split_lists is not None and split is not None:
            layout.split_lists[split] = stems
            if not stems:
                problems.append(f"{f.path} lists no image that was found: split {split!r} is empty")
    named = {layout.images[s].resolve() for s in layout.images}
    for folder, entries in sorted(listings.items()):
        for entry in sorted(entries):
            p = folder / entry
            if p.suffix.lower() in _suffixes() and p.resolve() not in named:
                problems.append(
                    f"image {p} is in no COCO JSON of {root / 'annotations'}; add it or remove it"
                )
    ignore = 255 if len(names) < 255 else 65535
    layout.declared = {"names": names, "mask_format": "index", "ignore_index": ignore}
    return layout


def _suffixes() -> tuple[str, ...]:
    from seglab.data.io import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _categories(files: list[tuple[str | None, _CocoFile]], problems: list[str]) -> tuple[list[str], Any, str]:
    """Class names (background, then the categories by id), category id -> class index, and a digest of the
    table (in the scan cache's keys: masks change when the table does). Two JSONs naming one id differently is
    a problem."""
    cats: dict[int, str] = {}
    for _, f in files:
        for cid, cat in sorted(f.coco.cats.items()):
            name = str(cat.get("name", cid))
            if cid in cats and cats[cid] != name:
                problems.append(f"{f.path} names category id {cid} {name!r} but another JSON {cats[cid]!r}")
            cats.setdefault(cid, name)
    ids = sorted(cats)
    names = ["background"]
    for cid in ids:
        name = cats[cid]
        names.append(name if name not in names else f"{name} ({cid})")
    index = {cid: i + 1 for i, cid in enumerate(ids)}
    digest = hashlib.sha256(json.dumps([[c, cats[c]] for c in ids]).encode()).hexdigest()[:12]
    return names, index, digest


def _add_images(
    layout: Layout, f: _CocoFile, dirs: list[Path], listings: dict[Path, set[str]], table: tuple[Any, str]
) -> list[str]:
    """Each image of ``f`` found in ``dirs`` into ``layout`` with its mask sources; its stems."""
    stems = []
    for iid, img in sorted(f.coco.imgs.items()):
        name = str(img.get("file_name", ""))
        size = (img.get("width"), img.get("height"))
        if not all(isinstance(v, int) and v > 0 for v in size):
            layout.problems.append(f"{f.path}: image id {iid} ({name}) has no valid width and height")
            continue
        found = next((d / name for d in dirs if _has(d, name, listings)), None)
        if found is None:
            looked = ", ".join(str(d) for d in dirs)
            layout.problems.append(f"{f.path}: image id {iid} ({name}) is missing: not found in {looked}")
            continue
        stem = Path(name).stem
        if stem in layout.images:
            layout.problems.append(f"{f.path}: image id {iid} ({name}) has the stem of {layout.images[stem]}")
            continue
        layout.images[stem] = found
        layout.masks[stem] = CocoMask(f.path, iid, "mask", table)
        assert layout.instances is not None
        layout.instances[stem] = CocoMask(f.path, iid, "instances", table)
        stems.append(stem)
    return stems


class CocoMask(MaskSource):
    """The semantic mask (``kind`` mask) or instance map (``kind`` instances) of image ``image_id`` of a COCO
    JSON, drawn on demand from the JSON (parsed once per process)."""

    def __init__(self, path: Path, image_id: int, kind: str, table: tuple[dict[int, int], str]) -> None:
        self.path, self.image_id, self.kind = Path(path), image_id, kind
        self.cat_index, self.digest = table

    @property
    def size(self) -> tuple[int, int]:
        img = _load(self.path).coco.imgs[self.image_id]
        return int(img["width"]), int(img["height"])

    def stat_key(self) -> tuple[str, int, int] | None:
        return file_key(self.path, f"coco:{self.image_id}:{self.kind}:{self.digest}")

    def read_mask(self) -> np.ndarray:
        f = _load(self.path)
        w, h = self.size
        return draw(f.drawable.get(self.image_id, []), (h, w), self.cat_index)[self.kind == "instances"]

    def __str__(self) -> str:
        return f"{self.path} (image id {self.image_id})"

    __repr__ = __str__


def draw(
    anns: list[dict[str, Any]], shape: tuple[int, int], cat_index: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(semantic mask, instance map) (H, W) of one image's annotations: pycocotools rasterises each (polygons,
    RLE); larger annotations first (ties by id), so smaller ones stay on top; crowd = ignore / no object."""
    mask_utils = require("pycocotools.mask", "coco")
    h, w = shape
    k = max(cat_index.values(), default=0)
    ignore = 255 if k < 255 else 65535
    sem = np.zeros(shape, np.uint8 if ignore == 255 else np.uint16)
    objects = sorted((a for a in anns if not a.get("iscrowd")), key=lambda a: a["id"])
    inst = np.zeros(shape, np.uint16 if len(objects) < 65536 else np.int32)
    number = {a["id"]: i + 1 for i, a in enumerate(objects)}
    drawn = []
    for ann in anns:
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons: their union
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        else:  # RLE, uncompressed (counts a list) or compressed
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
        m = mask_utils.decode(rle).astype(bool)
        drawn.append((-int(m.sum()), ann["id"], m, ann))
    for _, _, m, ann in sorted(drawn, key=lambda t: t[:2]):
        crowd = bool(ann.get("iscrowd"))
        sem[m] = ignore if crowd else cat_index[ann["category_id"]]
        inst[m] = 0 if crowd else number[ann["id"]]
    return sem, inst
