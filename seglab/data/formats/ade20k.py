"""ADE20K's SceneParsing layout (ADEChallengeData2016, the 150-class benchmark), read in place.

Layout::

    ROOT/images/training/<stem>.jpg        ROOT/annotations/training/<stem>.png
    ROOT/images/validation/<stem>.jpg      ROOT/annotations/validation/<stem>.png

Splits: training -> train, validation -> val. An annotation holds 0..150: 0 is "other" (no class of the 150)
and is ignored, v is class v - 1 (MMSegmentation's ``reduce_zero_label``): read through a ``RemappedMask``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.formats import Layout, MaskSource, RemappedMask, files_by_stem, pair_by_stem
from seglab.data.io import default_palette

IMAGES, ANNOTATIONS = "images", "annotations"
SPLITS = {"training": "train", "validation": "val"}
IGNORE = 255

# The 150 classes in the SceneParsing devkit's order: objectInfo150.txt (github.com/CSAILVision/sceneparsing),
# the first of each row's names, as MMSegmentation's ADE20KDataset names them (mmseg/datasets/ade.py; it takes
# "television receiver" for row 90). No package owns this table. The devkit's colours (color150.mat) are not
# text, and MMSegmentation's copy gives two classes one colour, so the palette is seglab's default.
CLASSES: tuple[str, ...] = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)


def reduce_zero_label() -> np.ndarray:
    """uint8 (151,): 0 -> 255 (ignore), v -> v - 1; a value above 150 is an error (``RemappedMask``)."""
    lut = np.arange(-1, len(CLASSES), dtype=np.int64)
    lut[0] = IGNORE
    return lut.astype(np.uint8)


def detect(root: Path) -> bool:
    return any((root / IMAGES / s).is_dir() and (root / ANNOTATIONS / s).is_dir() for s in SPLITS)


def read(root: Path) -> Layout:
    lut = reduce_zero_label()
    images: dict[str, Path] = {}
    masks: dict[str, Path | MaskSource] = {}
    split_lists: dict[str, list[str]] = {}
    problems: list[str] = []
    for folder, split in SPLITS.items():
        imgs = files_by_stem(root / IMAGES / folder, (".jpg", ".jpeg", ".png"))
        anns = files_by_stem(root / ANNOTATIONS / folder, (".png",))
        pairs = pair_by_stem(
            imgs,
            anns,
            problems,
            lambda stem, f=folder: f"{root / ANNOTATIONS / f / stem}.png",
            lambda stem, f=folder: f"{root / IMAGES / f / stem}.jpg",
        )
        listed = []
        for stem in pairs:
            if stem in images:
                problems.append(f"{imgs[stem]} and {images[stem]} share the stem {stem!r}; keep one")
                continue
            images[stem], masks[stem] = imgs[stem], RemappedMask(anns[stem], lut, "ade20k-reduce-zero")
            listed.append(stem)
        split_lists[split] = listed
    declared = {
        "names": list(CLASSES),
        "colors": [list(c) for c in default_palette(len(CLASSES))],
        "mask_format": "index",
        "ignore_index": IGNORE,
    }
    return Layout("ade20k", root, images, masks, None, declared, split_lists, problems)
