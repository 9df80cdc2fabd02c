"""LabelMe: one LabelMe JSON per image (polygons, rectangles, circles), read in place (docs/formats/labelme.md).

Accepted trees::

    DIR/a.json + DIR/a.jpg                       (JSONs beside their images)
    DIR/annotations/a.json + DIR/images/a.jpg    (or the images beside the JSONs, or wherever imagePath points)

A pixel belongs to a shape when its centre lies inside it, LabelMe's coordinates being pixel positions (pixel
(col, row) is the point (x, y) = (col, row), as labelme's own labelme2voc reads them): polygons through
``skimage.draw.polygon2mask``, circles (centre, a point on the circle) through ``skimage.draw.disk`` (centres
closer than the radius), rectangles (two corners) every centre within them, edges included. Shapes are drawn in
order of decreasing pixel area (ties: file order), the rule of the COCO format too, in the mask and the instance
map alike. Classes: 0 = background (or a label ``_background_``/``background`` the data set uses), then the
labels found over the data set, sorted; a classes.yaml in DIR names them instead. ``__ignore__`` shapes are
ignore (as in labelme2voc). Instances: shapes sharing a ``group_id`` and a label are one object (labelme's
rule); every other shape is its own object. point, points, line and linestrip shapes cover no area: not drawn.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.formats import Layout, MaskSource, file_key
from seglab.errors import DataError

AREA_SHAPES = ("polygon", "rectangle", "circle")
NO_AREA = ("point", "points", "line", "linestrip")  # not drawn, not a problem (keypoints, lines)
BACKGROUND = ("_background_", "background")  # a label drawing class 0
IGNORE = "__ignore__"  # a label drawing the ignore value (labelme2voc's)
_LOCK = threading.Lock()
_SHAPES: dict[str, tuple[tuple[str, int, int] | None, list[dict[str, Any]]]] = {}  # abs path -> (key, shapes)


def _is_labelme(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


def _json_dir(root: Path) -> Path | None:
    """root/annotations or root, whichever holds LabelMe JSONs (the first JSON, by name, decides)."""
    for folder in (root / "annotations", root):
        first = (
            min((p for p in folder.glob("*.json") if p.is_file()), default=None) if folder.is_dir() else None
        )
        if first is not None and _is_labelme(first):
            return folder
    return None


def detect(root: Path) -> bool:
    """LabelMe JSONs (``shapes`` and ``imagePath``) in the root or in root/annotations."""
    return _json_dir(root) is not None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read LabelMe JSON {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list) or "imagePath" not in data:
        raise DataError(f"{path} is not a LabelMe JSON: it needs 'shapes' (a list) and 'imagePath'")
    return data


def _shapes(path: Path) -> list[dict[str, Any]]:
    """The shapes of a LabelMe JSON, parsed once per process unless the file changes (imageData not kept)."""
    key, name = file_key(path, "labelme"), str(Path(path).resolve())
    with _LOCK:
        hit = _SHAPES.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    shapes = [s for s in _read_json(path)["shapes"] if isinstance(s, dict)]
    with _LOCK:
        _SHAPES[name] = (key, shapes)
    return shapes


def _find_image(root: Path, path: Path, image_path: str) -> Path | None:
    """imagePath relative to the JSON, else its name in the JSON's folder, root/images or the root."""
    name = Path(image_path.replace("\\", "/")).name
    for p in (path.parent / image_path, path.parent / name, root / "images" / name, root / name):
        if name and p.is_file():
            return p
    return None


def read(root: Path) -> Layout:
    """Images by JSON stem, masks and instance maps drawn from the shapes, the classes gathered (or classes.yaml's)."""
    from seglab.data.classes import read_classes_yaml
    from seglab.data.io import IMAGE_SUFFIXES

    folder = _json_dir(root)
    if folder is None:
        raise DataError(
            f"{root} holds no LabelMe JSON (with 'shapes' and 'imagePath'), nor does {root}/annotations"
        )
    layout = Layout("labelme", root, {}, {}, {}, problems=[])
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    labels: set[str] = set()
    for path in sorted(p for p in folder.glob("*.json") if p.is_file()):
        try:
            data = _read_json(path)
        except DataError as e:
            layout.problems.append(str(e))
            continue
        image = _find_image(root, path, str(data["imagePath"]))
        if image is None:
            layout.problems.append(
                f"{path}: its image {data['imagePath']!r} is missing (seglab does not read the embedded imageData: "
                f"save the image beside the JSON or in {root / 'images'})"
            )
            continue
        found[path.stem] = (image, data)
        layout.problems += _check_shapes(path, data)
        labels |= {str(s.get("label")) for s in data["shapes"] if _drawable(s)}
    yaml_path = root / "classes.yaml"
    if yaml_path.is_file():
        names = [str(n) for n in read_classes_yaml(yaml_path)["names"]]
    else:
        bg = next((b for b in BACKGROUND if b in labels), "background")
        names = [bg, *sorted(labels - {bg, IGNORE})]
    index = {n: i for i, n in enumerate(names)}
    for b in BACKGROUND:
        index.setdefault(b, 0)
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12]
    for stem, (image, data) in found.items():
        for label in sorted(
            {str(s.get("label")) for s in data["shapes"] if _drawable(s)} - set(index) - {IGNORE}
        ):
            layout.problems.append(
                f"{folder / (stem + '.json')}: label {label!r} is not in {yaml_path}; add it"
            )
        path = folder / f"{stem}.json"
        size = (data.get("imageWidth"), data.get("imageHeight"))
        layout.images[stem] = image
        layout.masks[stem] = LabelMeMask(path, "mask", size, index, digest)
        assert layout.instances is not None
        layout.instances[stem] = LabelMeMask(path, "instances", size, index, digest)
    named = {p.resolve() for p, _ in found.values()}
    for d in {p.parent for p, _ in found.values()}:
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and p.resolve() not in named:
                layout.problems.append(f"image {p} has no LabelMe JSON in {folder}; annotate it or remove it")
    layout.declared = {
        "names": names,
        "mask_format": "index",
        "ignore_index": 255 if len(names) < 255 else 65535,
    }
    return layout


def _drawable(shape: dict[str, Any]) -> bool:
    return str(shape.get("shape_type") or "polygon") in AREA_SHAPES


def _check_shapes(path: Path, data: dict[str, Any]) -> list[str]:
    """One line per shape that cannot be drawn as it is: an unknown type, a degenerate polygon (< 3 points or no
    area), a rectangle or circle without its two points, a point beyond the image (pixel i spans i - 0.5 .. i +
    0.5)."""
    w, h = data.get("imageWidth"), data.get("imageHeight")
    problems = []
    if not all(isinstance(v, int) and v > 0 for v in (w, h)):
        return [f"{path}: imageWidth and imageHeight must be the image's size in pixels, not {w!r}, {h!r}"]
    for i, s in enumerate(data["shapes"]):
        kind = str(s.get("shape_type") or "polygon")
        where = f"{path}: shape {i} ({kind} {s.get('label')!r})"
        if kind in NO_AREA:
            continue
        if kind not in AREA_SHAPES:
            problems.append(
                f"{where}: shape type {kind!r} is not read (polygon, rectangle, circle); redraw it"
            )
            continue
        xy = _points(s)
        if xy is None or (kind == "polygon" and (len(xy) < 3 or _area(xy) == 0)):
            n = "unreadable" if xy is None else len(xy)
            problems.append(f"{where} is degenerate ({n} points, no area); redraw or remove it")
        elif kind != "polygon" and (len(xy) != 2 or np.all(xy[0] == xy[1])):
            problems.append(f"{where} needs two distinct points, has {len(xy)}; redraw or remove it")
        elif xy.min() < -0.5 or xy[:, 0].max() > w - 0.5 or xy[:, 1].max() > h - 0.5:
            problems.append(f"{where} lies outside the {w}x{h} image; move its points inside")
    return problems


def _points(shape: dict[str, Any]) -> np.ndarray | None:
    try:
        xy = np.asarray(shape.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return xy if xy.ndim == 2 and xy.shape[1] == 2 and np.isfinite(xy).all() else None


def _area(xy: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1))))


def rasterise(shape: dict[str, Any], hw: tuple[int, int]) -> np.ndarray | None:
    """The pixels (bool (H, W)) whose centres lie inside ``shape`` (see the module doc); None if it covers none
    or cannot be drawn."""
    from skimage.draw import disk, polygon2mask

    kind, xy = str(shape.get("shape_type") or "polygon"), _points(shape)
    if kind not in AREA_SHAPES or xy is None or len(xy) < (3 if kind == "polygon" else 2):
        return None
    if kind == "polygon":
        m = polygon2mask(hw, xy[:, ::-1])
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = xy[:2].min(0), xy[:2].max(0)
        m = np.zeros(hw, bool)
        m[
            max(int(np.ceil(y0)), 0) : int(np.floor(y1)) + 1, max(int(np.ceil(x0)), 0) : int(np.floor(x1)) + 1
        ] = True
    else:
        (cx, cy), (px, py) = xy[0], xy[1]
        m = np.zeros(hw, bool)
        m[disk((cy, cx), float(np.hypot(px - cx, py - cy)), shape=hw)] = True
    return m if m.any() else None


class LabelMeMask(MaskSource):
    """The semantic mask (``kind`` mask) or instance map (``kind`` instances) of one LabelMe JSON, drawn on demand.
    ``size`` is the JSON's imageWidth x imageHeight (the scan compares it with the image's)."""

    def __init__(
        self, path: Path, kind: str, size: tuple[Any, Any], index: dict[str, int], digest: str
    ) -> None:
        self.path, self.kind, self.index, self.digest = Path(path), kind, index, digest
        ok = all(isinstance(v, int) and v > 0 for v in size)  # else a problem, and a size no image has
        self._size = (int(size[0]), int(size[1])) if ok else (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def stat_key(self) -> tuple[str, int, int] | None:
        return file_key(self.path, f"labelme:{self.kind}:{self.digest}")

    def read_mask(self) -> np.ndarray:
        w, h = self._size
        return draw(_shapes(self.path), (h, w), self.index)[self.kind == "instances"]

    def __str__(self) -> str:
        return str(self.path)

    __repr__ = __str__


def draw(
    shapes: list[dict[str, Any]], hw: tuple[int, int], index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(semantic mask, instance map) (H, W) of one JSON's shapes: larger shapes first (ties: file order), so
    smaller ones stay on top; labels outside ``index`` are not drawn; ``__ignore__`` = ignore / no object."""
    ignore = 255 if max(index.values(), default=0) < 255 else 65535
    sem = np.zeros(hw, np.uint8 if ignore == 255 else np.uint16)
    inst = np.zeros(hw, np.int32)
    objects: dict[Any, int] = {}
    drawn = []
    for i, s in enumerate(shapes):
        label = str(s.get("label"))
        m = rasterise(s, hw) if label in index or label == IGNORE else None
        if m is None:
            continue
        cls = ignore if label == IGNORE else index[label]
        obj = 0
        if cls not in (0, ignore):  # labelme's rule: one object per (label, group_id), else per shape
            key = (label, s["group_id"]) if s.get("group_id") is not None else i
            obj = objects.setdefault(key, len(objects) + 1)
        drawn.append((-int(m.sum()), i, m, cls, obj))
    for _, _, m, cls, obj in sorted(drawn, key=lambda t: t[:2]):
        sem[m], inst[m] = cls, obj
    return sem, inst.astype(np.uint16) if len(objects) < 65536 else inst
