"""Data set layouts read in place: seglab's own folder layout and the public benchmarks' and annotation tools'.

Every layout comes down to what the folder scan pairs (``seglab.data.scan``): images by stem, a mask per image, an
optional instance map per image, the classes (as classes.yaml would declare them) and the splits. A mask that is
not one stored file of class indices is a ``MaskSource``: a stored file through a table of values (Cityscapes'
label ids to train ids, ADE20K's reduced labels), or shapes drawn from annotations (COCO, LabelMe). The scan, its
cache, ``FolderDataset`` and ``seglab data convert`` take a MaskSource wherever they take a mask path.

Formats (``data.format``): ``folder`` (``images/`` + ``masks/``), ``voc``, ``cityscapes``, ``ade20k``, ``coco``,
``labelme``; ``auto`` detects the layout from the folder's structure (``detect``). Each format's module has
``detect(root) -> bool`` and ``read(root) -> Layout``; the docs of each are in docs/formats/.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglab.config import FORMATS  # data.format's values: with the config, which sits below data
from seglab.errors import ConfigError, DataError

# the order ``detect`` tries them in: the most specific structure first, seglab's own layout before the others
DETECT_ORDER = ("folder", "voc", "cityscapes", "ade20k", "coco", "labelme")


class MaskSource:
    """A mask or instance map that is not one stored file of class indices (see the module doc). ``read_mask``
    gives its raw values (H, W) as ``read_mask_raw`` gives a file's; ``size`` is (w, h) without decoding
    anything heavy; ``stat_key`` identifies it for the scan cache (changes when its files change); ``str`` names
    the file(s) it comes from, for messages."""

    def read_mask(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def size(self) -> tuple[int, int]:
        raise NotImplementedError

    def stat_key(self) -> tuple[str, int, int] | None:
        raise NotImplementedError


def file_key(path: Path, tag: str) -> tuple[str, int, int] | None:
    """A scan-cache key for something read from ``path``: (absolute path + ``#tag``, size, mtime_ns)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}#{tag}", st.st_size, st.st_mtime_ns


class RemappedMask(MaskSource):
    """A stored single-channel mask read through a value table: ``lut[value]`` (e.g. Cityscapes label ids to
    train ids, 255 where a value is no class). ``tag`` names the table in the cache key."""

    def __init__(self, path: Path, lut: np.ndarray, tag: str) -> None:
        self.path, self.lut, self.tag = Path(path), np.asarray(lut), tag

    def read_mask(self) -> np.ndarray:
        from seglab.data.io import read_mask_raw

        raw = read_mask_raw(self.path)
        if raw.ndim != 2:
            raise DataError(
                f"mask {self.path} is a colour image; this format stores single-channel label PNGs"
            )
        if raw.size and int(raw.max()) >= len(self.lut):
            bad = int(raw.max())
            raise DataError(
                f"mask {self.path} holds the value {bad}, which the {self.tag} table does not know"
            )
        return self.lut[raw]

    @property
    def size(self) -> tuple[int, int]:
        from seglab.data.io import open_image, oriented_size

        with open_image(self.path) as img:
            return oriented_size(img)

    def stat_key(self) -> tuple[str, int, int] | None:
        return file_key(self.path, self.tag)

    def __str__(self) -> str:
        return str(self.path)

    __repr__ = __str__


@dataclass
class Layout:
    """What a format found in a data root: the pairs by stem, the classes as classes.yaml would declare them
    (None: inferred from the masks, as for the folder layout), the splits it defines, and every problem found
    (one line each, naming the file)."""

    format: str
    root: Path
    images: dict[str, Path]
    masks: dict[str, Path | MaskSource]
    instances: dict[str, Path | MaskSource] | None = None
    declared: dict[str, Any] | None = None
    split_lists: dict[str, list[str]] | None = None
    problems: list[str] = field(default_factory=list)


def _module(fmt: str) -> Any:
    return importlib.import_module(f"seglab.data.formats.{fmt}")


def check_format(fmt: Any) -> str:
    """``data.format`` checked: one of ``FORMATS``."""
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return str(fmt)


def detect(root: Path) -> str:
    """The layout of ``root``, from its structure alone (no file is decoded); DataError naming what was expected
    when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    for fmt in DETECT_ORDER[1:]:
        if _module(fmt).detect(root):
            return fmt
    if (root / "images").is_dir() or (root / "masks").is_dir():
        return "folder"  # half of seglab's own layout: the scan names what is missing
    raise DataError(
        f"cannot tell the layout of {root}: expected images/ + masks/ (seglab's folder layout), JPEGImages/ + "
        f"SegmentationClass/ (VOC), leftImg8bit/ + gtFine/ (Cityscapes), images/ + annotations/ by training/"
        f"validation (ADE20K), annotations/*.json + images (COCO) or LabelMe JSON files beside their images; "
        f"see docs/formats/"
    )


def read_layout(root: Path, fmt: str = "auto") -> Layout:
    """The ``Layout`` of ``root`` in format ``fmt`` (``auto``: ``detect``). Not for ``folder``: the scan pairs
    seglab's own layout itself (``seglab.data.scan._pair``)."""
    fmt = check_format(fmt)
    if fmt == "auto":
        fmt = detect(root)
    if fmt == "folder":
        raise ValueError("the folder layout is paired by seglab.data.scan")
    if not Path(root).is_dir():
        raise DataError(f"data folder {root} does not exist")
    return _module(fmt).read(Path(root))


def require(package: str, fmt: str) -> Any:
    """Import ``package`` for format ``fmt``, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(
            f"the {fmt} format needs the package {package.split('.')[0]}: pip install 'seglab[formats]'"
        ) from None


def files_by_stem(folder: Path, suffixes: tuple[str, ...], pattern: str = "*") -> dict[str, Path]:
    """The files of ``folder`` matching ``pattern`` (e.g. ``*/*`` one level down) whose name ends in one of
    ``suffixes`` (case-insensitive), by stem: the name less that suffix. Hidden files are left out."""
    if not folder.is_dir():
        return {}
    out = {}
    for p in sorted(folder.glob(pattern)):
        suffix = next((x for x in suffixes if p.name.lower().endswith(x.lower())), None)
        if suffix and p.is_file() and not p.name.startswith("."):
            out[p.name[: -len(suffix)]] = p
    return out


def pair_by_stem(
    images: dict[str, Path],
    annotations: dict[str, Path],
    problems: list[str],
    expected_annotation: Callable[[str], str],
    expected_image: Callable[[str], str],
) -> list[str]:
    """The stems with both an image and an annotation; an image without its annotation, and an annotation without
    its image, are one problem line each (``expected_*``: where the partner of a stem was looked for)."""
    for stem in sorted(set(images) - set(annotations)):
        problems.append(
            f"image {images[stem]} has no annotation (expected {expected_annotation(stem)}); add it or remove the "
            f"image"
        )
    for stem in sorted(set(annotations) - set(images)):
        problems.append(
            f"annotation {annotations[stem]} has no image (expected {expected_image(stem)}); add it or remove the "
            f"annotation"
        )
    return sorted(set(images) & set(annotations))
