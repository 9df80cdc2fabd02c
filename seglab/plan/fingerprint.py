"""The fingerprint of a data set: what the planner's rules read (``seglab.plan.rules``), measured by one deep scan
and one pass over (a sample of) the training masks, cached.

Everything here is a measurement; nothing is decided. ``fingerprint_data`` fills a ``DataFingerprint``; its
``to_dict``/``from_dict`` round-trip through YAML (the plan file keeps it beside the reasons).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from seglab.data.scan import FolderScan


@dataclass
class ClassObjects:
    """Connected components of one class in the sampled training masks (8-connectivity)."""

    count: int = 0  # components found in the sample
    per_image: float = 0.0  # components per sampled mask that holds the class
    median_area: float = 0.0  # px, at full resolution
    p5_area: float = 0.0  # 5th percentile of the component areas, px
    # the class's typical width, px: twice the mean distance of its pixels to the nearest pixel of another class
    # (a 3-px membrane ~ 2-3, a 40-px nucleus ~ 20); thin structures are what a coarse scale loses
    width: float = 0.0


@dataclass
class DataFingerprint:
    """Measurements of one data set (the training split unless said otherwise)."""

    root: str
    format: str = "folder"
    # images per split as training will see them (splits/ lists, a format's splits, or the seeded ratio split);
    # has_val: the data itself defines a validation split (splits/val.txt or the format's), not a carve
    splits: dict[str, int] = field(default_factory=dict)
    has_val: bool = False
    has_test: bool = False
    # sizes as read (w, h) of the training images: the median and the extremes of the short and long sides;
    # short_p10: the short side 90 % of them reach (one small image must not set the crop of all)
    median_size: tuple[int, int] = (0, 0)
    min_short: int = 0
    short_p10: int = 0
    max_long: int = 0
    aspect: float = 1.0  # median w / h
    bands: int = 3
    dtype: str = "uint8"  # uint8 | uint16 | float32 (the scan's)
    bit_depth: int = 8  # bits the training images' values use: ceil(log2(max + 1)); 32 for float
    band_stats: dict[str, Any] | None = (
        None  # seglab.data.normalize.BandStats.to_dict() of the training images
    )
    # mean HSV saturation (0..1) of sampled training images: 0 for grey (also grey stored as RGB), > 0.15 for
    # most colour photos; 0 for other than 3 bands
    saturation: float = 0.0
    gray_as_rgb: float = 0.0  # share of sampled 3-band images whose bands are equal (grey written as RGB)
    class_names: list[str] = field(default_factory=list)
    ignore_index: int = 255
    class_freq: list[float] = field(
        default_factory=list
    )  # pixel share per class, training split, ignored left out
    class_images: list[float] = field(default_factory=list)  # share of training masks holding each class
    ignored_share: float = 0.0  # share of training pixels at ignore_index
    objects: list[ClassObjects] = field(default_factory=list)  # per class, from the sampled masks
    instances: bool = False  # the data set has instance maps (instances/ or a format's)
    objects_per_image: float = 0.0  # median objects per training instance map (0 without instances)
    touching: float = 0.0  # share of sampled instance objects that touch another object (0 without instances)
    # how much the class layout changes under a vertical flip, 0 (symmetric: microscopy, aerial) .. 1 (photos:
    # sky on top, road at the bottom): the pixel-weighted L1 distance (halved) between each class's distribution
    # over 16 horizontal bands of the image and that distribution flipped
    vflip_asymmetry: float = 0.0
    # the label-resolution ceiling: scale -> the mIoU a perfect model at that scale reaches at full resolution
    # (seglab.plan.ceiling), on ceiling_images sampled training masks
    ceiling: dict[float, float] = field(default_factory=dict)
    # the same for the three-class interior/boundary target made from the instance maps (boundary width 2,
    # ``seglab.instances.postprocess.interior_boundary_target``), on the same masks; empty without instances
    ceiling_target: dict[float, float] = field(default_factory=dict)
    ceiling_images: int = 0
    sampled_masks: int = 0  # masks read for objects, layout and ceiling
    seconds: float = 0.0  # time to fingerprint (0 from the cache is not kept: the first run's)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_images(self) -> int:
        return self.splits.get("train", 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median_size"] = list(self.median_size)
        d["ceiling"] = {float(k): float(v) for k, v in self.ceiling.items()}
        d["ceiling_target"] = {float(k): float(v) for k, v in self.ceiling_target.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataFingerprint:
        d = dict(d)
        d["objects"] = [ClassObjects(**o) for o in d.get("objects", [])]
        d["median_size"] = tuple(d.get("median_size", (0, 0)))
        for key in ("ceiling", "ceiling_target"):
            d[key] = {float(k): float(v) for k, v in (d.get(key) or {}).items()}
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------------
# Measuring: one deep scan, then the training images' headers and statistics and a sample of their masks.

PLAN_CACHE_VERSION = 2  # of the fingerprint files in scan_cache_dir() / "plan"
COLOUR_IMAGES = 32  # training images sampled for the colour saturation
LAYOUT_BANDS = 16  # horizontal bands of the class layout (vflip_asymmetry)
TARGET_WIDTH = 2  # the boundary width of the interior/boundary target whose ceiling is measured (the default)


def fingerprint_data(
    root: str | Path,
    *,
    format: str = "auto",
    ignore_index: int = 255,
    max_masks: int = 64,
    cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> DataFingerprint:
    """The ``DataFingerprint`` of the data set at ``root`` (in its layout ``format``; auto: detected).

    One deep scan (``scan_folder(..., deep=True)``, cached; its problems raise DataError as training's do), then
    the training split as the data defines it before any validation carve: its images' sizes, band statistics
    (``band_stats_of``, cached) and colour (``COLOUR_IMAGES`` of them), its class pixel counts (the scan's), and
    ``max_masks`` evenly spaced masks, decoded as training decodes them, for the objects, the layout and the
    resolution ceiling (and, with instance maps, touching objects and the interior/boundary target's ceiling).

    ``cache``: the measurements are kept as JSON in ``scan_cache_dir() / "plan"``, keyed by every training
    image's, mask's and instance map's (path, size, mtime_ns), the classes, the layout and ``max_masks``: a
    second call reads no image or mask (the splits are counted afresh); any change measures again. An unreadable
    cache is ignored, an unwritable one means no caching. ``progress`` is called with one line per stage."""
    from seglab.data.scan import SPLITS, keyed_cache_file, read_keyed_cache, scan_folder, write_keyed_cache

    if isinstance(max_masks, bool) or not isinstance(max_masks, int) or max_masks < 1:
        raise ConfigError(
            f"max_masks must be a positive integer (the training masks sampled for objects, layout and the "
            f"resolution ceiling), not {max_masks!r}"
        )
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    root = Path(root)
    say(f"scanning {root}: every image and mask (cached after the first time)")
    scan = scan_folder(root, ignore_index, deep=True, format=format)
    scan.raise_problems()
    train = scan.split("train", val_ratio=0.0)
    if not train:
        raise DataError(
            f"{root} has no training images (its training split is empty); list them in splits/train.txt"
        )
    splits = {name: len(scan.split(name, val_ratio=0.0)) for name in SPLITS}
    fresh = {
        "root": str(root),
        "format": scan.format,
        "splits": splits,
        "has_val": scan.split_lists is not None and splits["val"] > 0,  # (without lists, no val: a carve)
        "has_test": splits["test"] > 0,  # listed, or the ratio split's
    }
    key = _cache_key(scan, train, format, max_masks) if cache else None
    file = keyed_cache_file("plan", key)
    cached = read_keyed_cache(file, key) if key is not None else None
    if cached is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            fp = DataFingerprint.from_dict({**cached, **fresh})
            say(f"fingerprint of {root} from the cache ({file})")
            return fp
    measured = _measure(scan, train, max_masks, say)
    measured["seconds"] = round(time.perf_counter() - start, 3)
    fp = DataFingerprint.from_dict({**measured, **fresh})
    if key is not None:
        write_keyed_cache(file, key, measured)
    return fp


def _file_key(path: Any) -> list[Any] | None:
    """(absolute path, size, mtime_ns) of an image, mask or instance map (a format's ``MaskSource`` gives its
    own), or None if it cannot be stat'ed (then nothing is cached)."""
    stat_key = getattr(path, "stat_key", None)
    if stat_key is not None:
        key = stat_key()
        return None if key is None else list(key)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _cache_key(scan: FolderScan, train: list[str], format: str, max_masks: int) -> Any:
    """What the measurements depend on, JSON-ready (compared after a JSON round trip), or None if a file
    cannot be stat'ed."""
    spec = scan.classes
    assert spec is not None
    files = []
    for stem in train:
        paths = [scan.images[stem], scan.masks[stem]]
        if scan.instances is not None:
            paths.append(scan.instances[stem])
        for path in paths:
            k = _file_key(path)
            if k is None:
                return None
            files.append(k)
    classes = [spec.names, spec.palette, spec.mask_format, spec.ignore_index, spec.ignore_color]
    key = [PLAN_CACHE_VERSION, str(scan.root.resolve()), format, scan.format, scan.in_channels, scan.dtype]
    return json.loads(json.dumps([*key, classes, max_masks, files]))


def _evenly(items: list[str], n: int) -> list[str]:
    """``n`` items spread evenly over ``items`` (first and last included), or all of them."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _measure(
    scan: FolderScan, train: list[str], max_masks: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every measurement that reads files (and the class counts), as ``DataFingerprint`` fields."""
    from seglab.data.io import image_header
    from seglab.data.scan import band_stats_of

    spec = scan.classes
    assert spec is not None
    say(f"sizes and band statistics of the {len(train)} training images")
    sizes = np.array([image_header(scan.images[s]).size for s in train], dtype=np.int64)  # (n, 2): w, h
    w, h = sizes[:, 0], sizes[:, 1]
    stats = band_stats_of(scan, train)
    top = max(stats.max)
    out: dict[str, Any] = {
        "median_size": [int(np.median(w)), int(np.median(h))],
        "min_short": int(np.minimum(w, h).min()),
        "short_p10": int(np.percentile(np.minimum(w, h), 10, method="lower")),
        "max_long": int(np.maximum(w, h).max()),
        "aspect": round(float(np.median(w / h)), 4),
        "bands": scan.in_channels,
        "dtype": scan.dtype,
        "bit_depth": 32 if scan.dtype == "float32" else max(1, math.ceil(math.log2(top + 1))),
        "band_stats": stats.to_dict(),
        "class_names": list(spec.names),
        "ignore_index": spec.ignore_index,
    }
    if scan.in_channels == 3:
        colour = _evenly(train, COLOUR_IMAGES)
        say(f"colour of {len(colour)} training images")
        out["saturation"], out["gray_as_rgb"] = _colour(scan, colour, min(stats.min), top)
    counts = scan.class_counts_of(train)  # (n, C) pixels per class, ignored left out
    labelled = int(counts.sum())
    total = int((w * h).sum())
    out["class_freq"] = [float(v) for v in counts.sum(0) / max(labelled, 1)]
    out["class_images"] = [float(v) for v in (counts > 0).mean(0)]
    out["ignored_share"] = float((total - labelled) / max(total, 1))
    if scan.instances is not None:
        out["instances"] = True
        objects = [scan.objects[s] for s in train if scan.objects and s in scan.objects]
        out["objects_per_image"] = float(np.median(objects)) if objects else 0.0
    sample = _evenly(train, max_masks)
    what = "objects, layout, resolution ceiling" + (", touching" if scan.instances is not None else "")
    say(f"{len(sample)} of the {len(train)} training masks: {what}")
    out.update(_masks(scan, sample))
    return out


def _colour(scan: FolderScan, stems: list[str], lo: float, hi: float) -> tuple[float, float]:
    """(mean HSV saturation, share of images whose three bands are equal) of the images of ``stems``; values
    other than 8-bit are first scaled by the training images' range ``lo``..``hi``."""
    from seglab.data.io import read_image

    saturation, gray = [], []
    for stem in stems:
        arr = read_image(scan.images[stem], 3)
        gray.append(bool((arr[..., :1] == arr[..., 1:]).all()))
        x = arr.astype(np.float32)
        if arr.dtype != np.uint8:
            x = np.clip((np.nan_to_num(x, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
        mx, mn = x.max(-1), x.min(-1)
        saturation.append(float(np.mean(np.where(mx > 0, (mx - mn) / np.where(mx > 0, mx, 1), 0))))
    return round(float(np.mean(saturation)), 4), round(float(np.mean(gray)), 4)


def _masks(scan: FolderScan, stems: list[str]) -> dict[str, Any]:
    """Objects per class, the layout's vertical asymmetry, the resolution ceiling and (with instance maps)
    touching objects and the interior/boundary target's ceiling, of the masks of ``stems``, one at a time."""
    from seglab.data.classes import decode_mask
    from seglab.data.io import read_mask_raw
    from seglab.data.scan import instance_mode_message
    from seglab.instances.postprocess import interior_boundary_target
    from seglab.plan.ceiling import SCALES, CeilingMeter

    spec = scan.classes
    assert spec is not None
    c, ignore = spec.num_classes, spec.ignore_index
    objects = _ObjectStats(c)
    layout = np.zeros((c, LAYOUT_BANDS), np.int64)
    meter = CeilingMeter(c, SCALES, ignore)
    target_meter = CeilingMeter(3, SCALES, ignore) if scan.instances is not None else None
    touching = np.zeros(2, np.int64)  # objects touching another, objects
    for stem in stems:
        mask = decode_mask(read_mask_raw(scan.masks[stem]), spec, scan.masks[stem])
        objects.add(mask, ignore)
        layout += _layout(mask, c, ignore)
        meter.add(mask)
        if target_meter is not None:
            assert scan.instances is not None
            inst = read_mask_raw(scan.instances[stem])
            if inst.ndim != 2:
                raise DataError(instance_mode_message(scan.instances[stem], "RGB"))
            inst = inst.astype(np.int64)
            touching += _touching(inst)
            target = interior_boundary_target(inst, width=TARGET_WIDTH)
            target[mask == ignore] = ignore  # as training makes it (FolderDataset)
            target_meter.add(target)
    out: dict[str, Any] = {
        "objects": objects.result(),
        "vflip_asymmetry": round(vflip_asymmetry(layout), 4),
        "ceiling": {s: round(r["miou"], 5) for s, r in meter.compute().items()},
        "ceiling_images": len(stems),
        "sampled_masks": len(stems),
    }
    if target_meter is not None:
        out["ceiling_target"] = {s: round(r["miou"], 5) for s, r in target_meter.compute().items()}
        out["touching"] = round(float(touching[0] / max(touching[1], 1)), 4)
    return out


class _ObjectStats:
    """Connected components (8-connectivity) and widths per class, one mask at a time (``add``)."""

    def __init__(self, num_classes: int) -> None:
        self.areas: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self.holders = np.zeros(num_classes, np.int64)  # masks holding the class
        self.distance = np.zeros(num_classes)  # sum over the class's pixels of the distance to another class
        self.pixels = np.zeros(num_classes, np.int64)  # pixels of those sums

    def add(self, mask: np.ndarray, ignore_index: int) -> None:
        """One (H, W) label map. A class's width counts ignored pixels as its own (no boundary), and only masks
        in which some pixel of another class exists (else the distance is unbounded)."""
        from scipy import ndimage

        ignored = mask == ignore_index
        counts = np.bincount(mask[~ignored].ravel(), minlength=len(self.holders))
        for c in np.flatnonzero(counts):
            own = mask == c
            labels, n = ndimage.label(own, structure=np.ones((3, 3), bool))
            self.areas[c].append(np.bincount(labels.ravel(), minlength=n + 1)[1:])
            self.holders[c] += 1
            body = own | ignored
            # the nearest pixel of another class to a pixel of the body lies within the body's bounding box
            # and one pixel around it (the box's projection of any farther one is nearer, and outside the body)
            rows, cols = np.flatnonzero(body.any(1)), np.flatnonzero(body.any(0))
            box = (
                slice(max(rows[0] - 1, 0), rows[-1] + 2),
                slice(max(cols[0] - 1, 0), cols[-1] + 2),
            )
            if body[box].all():
                continue
            distance = ndimage.distance_transform_edt(body[box])
            self.distance[c] += float(distance[own[box]].sum())
            self.pixels[c] += int(counts[c])

    def result(self) -> list[dict[str, Any]]:
        out = []
        for c, areas in enumerate(self.areas):
            a = np.concatenate(areas) if areas else np.zeros(0, np.int64)
            out.append(
                asdict(
                    ClassObjects(
                        count=len(a),
                        per_image=round(float(len(a) / self.holders[c]), 3) if self.holders[c] else 0.0,
                        median_area=float(np.median(a)) if len(a) else 0.0,
                        p5_area=float(np.percentile(a, 5)) if len(a) else 0.0,
                        width=round(float(2 * self.distance[c] / self.pixels[c]), 3)
                        if self.pixels[c]
                        else 0.0,
                    )
                )
            )
        return out


def _layout(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Pixels per class (C, LAYOUT_BANDS) in each of the mask's horizontal bands, top to bottom."""
    h = mask.shape[0]
    band = (np.arange(h) * LAYOUT_BANDS) // h
    valid = mask != ignore_index
    codes = (mask * LAYOUT_BANDS + band[:, None])[valid]
    return np.bincount(codes, minlength=num_classes * LAYOUT_BANDS).reshape(num_classes, LAYOUT_BANDS)


def vflip_asymmetry(layout: np.ndarray) -> float:
    """``DataFingerprint.vflip_asymmetry`` of a (C, bands) layout (``_layout`` summed over masks): per class,
    half the L1 distance between its distribution over the bands and that distribution flipped upside down,
    weighted by the class's share of the pixels. 0: every class as likely at the bottom as at the top; 1:
    none of a class's pixels has a mirror image in its own class's rows."""
    layout = np.asarray(layout, np.float64)
    n = layout.sum(1)
    if n.sum() == 0:
        return 0.0
    p = layout / np.maximum(n, 1)[:, None]
    per_class = 0.5 * np.abs(p - p[:, ::-1]).sum(1)
    return float((n / n.sum() * per_class).sum())


def _touching(instances: np.ndarray) -> np.ndarray:
    """[objects touching another object (8-neighbourhood), objects] of one instance label map."""
    from scipy import ndimage

    obj = instances > 0
    ids = np.flatnonzero(np.bincount(instances[obj].ravel())) if obj.any() else np.zeros(0, np.int64)
    if len(ids) == 0:
        return np.zeros(2, np.int64)
    larger = ndimage.maximum_filter(instances, size=3, mode="nearest") > instances
    others = np.where(obj, instances, ids[-1] + 1)  # (not int64's max: the filter overflows on it)
    smaller = ndimage.minimum_filter(others, size=3, mode="nearest") < instances
    touching = np.unique(instances[obj & (larger | smaller)])
    return np.array([len(touching), len(ids)], np.int64)
