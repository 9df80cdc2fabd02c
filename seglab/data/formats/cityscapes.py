"""Cityscapes' layout (leftImg8bit + gtFine), read in place.

Layout::

    ROOT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png        split: train, val, test
    ROOT/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png         label ids 0..33
    ROOT/gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png      (optional) label id * 1000 + k for objects

``<stem>`` is ``<city>_<sequence>_<frame>``, unique over the cities. Label ids are mapped to the 19 train ids (255
= ignore) by the official table, ``cityscapesscripts.helpers.labels.labels``, which also gives the classes' names
and colours. An instance map's objects (values >= 1000, ``id // 1000`` their label id) become 1..N per image; a
value under 1000 is no object, and so is an object of a class outside the 19 (caravan, trailer: ignored pixels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.formats import (
    Layout,
    MaskSource,
    RemappedMask,
    file_key,
    files_by_stem,
    pair_by_stem,
    require,
)
from seglab.errors import DataError

IMAGES, LABELS = "leftImg8bit", "gtFine"
IMAGE_SUFFIX, LABEL_SUFFIX, INSTANCE_SUFFIX = (
    "_leftImg8bit.png",
    "_gtFine_labelIds.png",
    "_gtFine_instanceIds.png",
)
SPLITS = ("train", "val", "test")
IGNORE = 255


def _labels() -> list[Any]:
    return list(require("cityscapesscripts.helpers.labels", "cityscapes").labels)


def train_id_table() -> np.ndarray:
    """uint8 (max label id + 1,): label id -> train id, 255 for the ids outside the 19 classes (train id 255 or
    -1); a stored value beyond the table is an error (``RemappedMask``)."""
    labels = [lab for lab in _labels() if lab.id >= 0]
    lut = np.full(max(lab.id for lab in labels) + 1, IGNORE, np.uint8)
    for lab in labels:
        if 0 <= lab.trainId < IGNORE:
            lut[lab.id] = lab.trainId
    return lut


def classes() -> dict[str, Any]:
    """The 19 classes in train-id order, with Cityscapes' colours, as classes.yaml would declare them."""
    by_train_id = {lab.trainId: lab for lab in _labels() if 0 <= lab.trainId < IGNORE and lab.id >= 0}
    ordered = [by_train_id[i] for i in range(len(by_train_id))]
    return {
        "names": [lab.name for lab in ordered],
        "colors": [list(lab.color) for lab in ordered],
        "mask_format": "index",
        "ignore_index": IGNORE,
    }


class InstanceIds(MaskSource):
    """A ``*_gtFine_instanceIds.png`` as an instance map: its objects (values >= 1000 of a class among the 19)
    numbered 1..N in the order of their stored ids, 0 elsewhere; computed when read."""

    def __init__(self, path: Path, train_ids: np.ndarray) -> None:
        self.path, self.train_ids = Path(path), train_ids

    def read_mask(self) -> np.ndarray:
        from seglab.data.io import read_mask_raw

        raw = np.asarray(read_mask_raw(self.path))
        if raw.ndim != 2:
            raise DataError(
                f"instance map {self.path} is a colour image; Cityscapes stores 16-bit instance ids"
            )
        raw = raw.astype(np.int64, copy=False)
        label = raw // 1000
        known = np.zeros(raw.shape, bool)
        inside = label < len(self.train_ids)
        known[inside] = self.train_ids[label[inside]] != IGNORE
        objects = (raw >= 1000) & known
        ids = np.unique(raw[objects])
        out = np.zeros(raw.shape, np.uint16)
        out[objects] = np.searchsorted(ids, raw[objects]) + 1
        return out

    @property
    def size(self) -> tuple[int, int]:
        from seglab.data.io import open_image, oriented_size

        with open_image(self.path) as img:
            return oriented_size(img)

    def stat_key(self) -> tuple[str, int, int] | None:
        return file_key(self.path, "cityscapes-instances")

    def __str__(self) -> str:
        return str(self.path)

    __repr__ = __str__


def detect(root: Path) -> bool:
    return (root / IMAGES).is_dir() and (root / LABELS).is_dir()


def read(root: Path) -> Layout:
    lut = train_id_table()
    declared = classes()
    images: dict[str, Path] = {}
    masks: dict[str, Path | MaskSource] = {}
    instances: dict[str, Path | MaskSource] = {}
    split_lists: dict[str, list[str]] = {}
    problems: list[str] = []
    for split in SPLITS:
        imgs = files_by_stem(root / IMAGES / split, (IMAGE_SUFFIX,), "*/*")
        labs = files_by_stem(root / LABELS / split, (LABEL_SUFFIX,), "*/*")
        insts = files_by_stem(root / LABELS / split, (INSTANCE_SUFFIX,), "*/*")
        stems = pair_by_stem(
            imgs,
            labs,
            problems,
            lambda stem, s=split, i=imgs: f"{root / LABELS / s / i[stem].parent.name}/{stem}{LABEL_SUFFIX}",
            lambda stem, s=split, a=labs: f"{root / IMAGES / s / a[stem].parent.name}/{stem}{IMAGE_SUFFIX}",
        )
        for stem in stems:
            if stem in images:
                problems.append(f"{imgs[stem]} and {images[stem]} share the stem {stem!r}; keep one")
                continue
            images[stem], masks[stem] = imgs[stem], RemappedMask(labs[stem], lut, "cityscapes-trainid")
            if stem in insts:
                instances[stem] = InstanceIds(insts[stem], lut)
        if stems:
            split_lists[split] = [s for s in stems if images[s] == imgs[s]]
    if instances:
        for s in sorted(set(images) - set(instances)):
            expected = str(masks[s])[: -len(LABEL_SUFFIX)] + INSTANCE_SUFFIX
            problems.append(
                f"image {images[s]} has no instance map (expected {expected}); add it, or remove the other "
                f"*{INSTANCE_SUFFIX} files"
            )
    return Layout(
        "cityscapes", root, images, masks, instances or None, declared, split_lists or None, problems
    )
