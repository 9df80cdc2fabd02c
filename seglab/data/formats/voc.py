"""Pascal VOC's segmentation layout (VOCdevkit/VOC2007, VOC2012), read in place.

Layout (``ROOT`` is the VOC2012 folder)::

    ROOT/JPEGImages/<stem>.jpg
    ROOT/SegmentationClass/<stem>.png    palette PNG of class indices 0..20; 255 = the objects' boundary = ignore
    ROOT/SegmentationObject/<stem>.png   (optional) object ids 1..N; its 255 boundary -> 0 (no object)
    ROOT/ImageSets/Segmentation/{train,val,test}.txt   the splits (trainval.txt is train + val: not read)

JPEGImages/ also holds the detection images, which have no segmentation: an image without an annotation is a
problem only when a split lists it. The classes are VOC's 21 (torchvision's names, ``__background__`` called
``background``) in the devkit's colours; a classes.yaml in ``ROOT`` names others (the scan reads it first).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.formats import Layout, RemappedMask, files_by_stem

IMAGES, CLASSES, OBJECTS = "JPEGImages", "SegmentationClass", "SegmentationObject"
SPLITS_DIR = Path("ImageSets") / "Segmentation"
BOUNDARY = 255  # VOC's "void": the band drawn around every object, and hard pixels


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC devkit's colour of each index 0..n-1 (``VOClabelcolormap.m`` in VOCdevkit's VOCcode): the bits of
    the index interleaved into the colours' high bits, bit 0 to red, 1 to green, 2 to blue, three bits per step
    from bit 7 down. Index 255 (the boundary) is (224, 224, 192)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


@lru_cache(maxsize=1)
def voc_classes() -> tuple[str, ...]:
    """VOC's 21 class names, from torchvision (its VOC-label weights' categories)."""
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    names = FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    return tuple("background" if n == "__background__" else str(n) for n in names)


def detect(root: Path) -> bool:
    return (root / IMAGES).is_dir() and (root / CLASSES).is_dir()


def _split_lists(root: Path, images: dict[str, Path], masks: dict[str, Path], problems: list[str]) -> Any:
    """The stems of ImageSets/Segmentation/{train,val,test}.txt that have an image and an annotation; a listed
    stem without them is a problem (one line per list file), and is left out."""
    folder = root / SPLITS_DIR
    files = {name: folder / f"{name}.txt" for name in ("train", "val", "test")}
    if not any(f.is_file() for f in files.values()):
        return None
    lists: dict[str, list[str]] = {}
    for name, f in files.items():
        listed = [s.strip() for s in f.read_text().splitlines() if s.strip()] if f.is_file() else []
        # a line may carry a second column (the classification lists' "stem  1"): the stem is the first word
        listed = [s.split()[0] for s in listed]
        no_mask = [s for s in listed if s in images and s not in masks]
        missing = [s for s in listed if s not in images and s not in masks]
        if no_mask:
            problems.append(
                f"{f} lists {len(no_mask)} images without an annotation, e.g. {images[no_mask[0]]} (expected "
                f"{root / CLASSES / no_mask[0]}.png); add the annotations or remove them from the list"
            )
        if missing:
            problems.append(
                f"{f} lists {len(missing)} stems with no image in {root / IMAGES}, e.g. {missing[0]!r}; remove "
                f"them from the list or add their files"
            )
        lists[name] = [s for s in listed if s in images and s in masks]
    return lists


def read(root: Path) -> Layout:
    images = files_by_stem(root / IMAGES, (".jpg",))
    masks = files_by_stem(root / CLASSES, (".png",))
    problems = [
        f"annotation {masks[s]} has no image (expected {root / IMAGES / s}.jpg); add it or remove the annotation"
        for s in sorted(set(masks) - set(images))
    ]
    split_lists = _split_lists(root, images, masks, problems)
    paired = {s: images[s] for s in masks if s in images}
    instances = None
    if (root / OBJECTS).is_dir():
        objects = files_by_stem(root / OBJECTS, (".png",))
        lut = np.arange(256, dtype=np.uint8)
        lut[BOUNDARY] = 0  # the boundary band is no object
        instances = {s: RemappedMask(p, lut, "voc-objects") for s, p in objects.items() if s in paired}
        problems += [
            f"image {images[s]} has no object map (expected {root / OBJECTS / s}.png); add it, or move "
            f"{root / OBJECTS} away if the data set has no instances"
            for s in sorted(set(paired) - set(objects))
        ]
    names = voc_classes()
    declared = {
        "names": list(names),
        "colors": [list(c) for c in voc_colormap(len(names))],
        "mask_format": "index",
        "ignore_index": BOUNDARY,
    }
    return Layout("voc", root, paired, dict(masks), instances, declared, split_lists, problems)
