"""Folder data sets: ``images/`` and ``masks/`` paired by file stem, optional ``splits/`` and ``classes.yaml``.

Layout::

    DIR/images/a.jpg   DIR/masks/a.png       (paired by stem)
    DIR/splits/train.txt, val.txt, test.txt  (optional: one stem per line; else a seeded random split)
    DIR/classes.yaml                          (optional: names, colors, mask_format, ignore_index, ignore_color)

Masks are single-channel index PNGs (L or P), binary 0/255 masks (read as 0/1), or RGB colour masks mapped
through ``colors`` in classes.yaml. Without classes.yaml the format and the number of classes are inferred from
the masks: masks holding only 0 and 255 are binary, anything else is an index mask with
``num_classes = max label + 1`` (``ignore_index`` excluded).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from seglab.data.io import (
    IMAGE_SUFFIXES,
    default_palette,
    image_channels,
    open_image,
    read_image,
    read_mask_raw,
)
from seglab.errors import DataError

SPLITS = ("train", "val", "test")
MASK_FORMATS = ("auto", "index", "binary", "rgb")


@dataclass
class ClassSpec:
    """What the mask values mean."""

    names: list[str]
    palette: list[tuple[int, int, int]]
    mask_format: str  # index | binary | rgb
    ignore_index: int = 255
    ignore_color: tuple[int, int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


@dataclass
class FolderScan:
    """Everything learnt from one pass over a folder; ``problems`` lists every inconsistency found."""

    root: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    in_channels: int
    classes: ClassSpec | None
    problems: list[str] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    class_pixels: np.ndarray | None = None  # pixels per class, from a deep scan
    ignored_pixels: int = 0
    split_lists: dict[str, list[str]] | None = None  # from splits/, if present

    @property
    def stems(self) -> list[str]:
        return sorted(set(self.images) & set(self.masks))

    def raise_problems(self) -> None:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problems; run `seglab data check {self.root}`)"
            raise DataError(self.problems[0] + (more if len(self.problems) > 1 else ""))

    def split(
        self,
        name: str,
        val_ratio: float = 0.1,
        test_ratio: float = 0.1,
        seed: int = 0,
        lists: dict[str, list[str]] | None = None,
    ) -> list[str]:
        """Stems of split ``name`` (train, val, test or all): from ``lists`` if given, else from splits/ if
        present, else a seeded random split by ratio."""
        stems = self.stems
        if name == "all":
            return stems
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of: train, val, test, all")
        if lists is not None:
            unknown = set(lists) - set(SPLITS)
            listed = [str(s) for s in lists.get(name) or []]
            missing = [s for s in listed if s not in set(stems)]
            if unknown or missing:
                what = (
                    f"split {sorted(unknown)[0]!r}"
                    if unknown
                    else f"stem {missing[0]!r} (no image/mask pair)"
                )
                raise DataError(f"data.splits names an unknown {what} in {self.root}")
            return listed
        if self.split_lists is not None:
            return self.split_lists.get(name, [])
        if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
            raise DataError(
                f"split ratios val={val_ratio}, test={test_ratio} must be in [0, 1) and sum below 1"
            )
        order = [stems[i] for i in np.random.default_rng(seed).permutation(len(stems))]
        n_test = int(round(test_ratio * len(stems)))
        n_val = int(round(val_ratio * len(stems)))
        parts = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        return sorted(parts[name])


def _list_files(folder: Path, problems: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(
                f"{p} is not an image file ({', '.join(IMAGE_SUFFIXES)}); move it out of {folder}"
            )
            continue
        if p.stem in files:
            problems.append(
                f"{files[p.stem].name} and {p.name} in {folder} share the stem {p.stem!r}; keep one"
            )
            continue
        files[p.stem] = p
    return files


def _read_classes_yaml(path: Path, ignore_index: int) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("names"), list) or not data["names"]:
        raise DataError(f"{path} must hold a mapping with a non-empty list 'names' (and optionally 'colors')")
    unknown = set(data) - {"names", "colors", "mask_format", "ignore_index", "ignore_color"}
    if unknown:
        raise DataError(f"{path} has unknown keys {sorted(unknown)}")
    fmt = data.get("mask_format", "auto")
    if fmt not in MASK_FORMATS:
        raise DataError(f"{path}: mask_format {fmt!r} must be one of {', '.join(MASK_FORMATS)}")
    colors = data.get("colors")
    if colors is not None and (
        len(colors) != len(data["names"])
        or not all(
            isinstance(c, list | tuple) and len(c) == 3 and all(0 <= int(v) <= 255 for v in c) for c in colors
        )
    ):
        raise DataError(f"{path}: 'colors' needs one [r, g, b] (0..255) per name ({len(data['names'])})")
    data.setdefault("ignore_index", ignore_index)
    return data


def _value_counts(raw: np.ndarray) -> Counter:
    """Pixel counts per stored value: ints for index masks, (r, g, b) tuples for colour masks."""
    if raw.ndim == 3:
        packed = (raw[..., 0].astype(np.uint32) << 16) | (raw[..., 1].astype(np.uint32) << 8) | raw[..., 2]
        values, counts = np.unique(packed, return_counts=True)
        return Counter(
            {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255): int(c) for v, c in zip(values, counts)}
        )
    values, counts = np.unique(raw, return_counts=True)
    return Counter({int(v): int(c) for v, c in zip(values, counts)})


def scan_folder(root: str | Path, ignore_index: int = 255, deep: bool = False) -> FolderScan:
    """Pair files, read headers, and (when needed or ``deep``) read every mask; collect every problem found.

    ``deep`` also decodes every image (finding corrupt files) and counts class pixels: the `data check` pass.
    Problems that make the folder unusable as a whole (missing folders, no pairs) raise DataError at once.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(
                f"{root} has no {sub}/ folder; a data set needs images/ and masks/ paired by file stem"
            )
    problems: list[str] = []
    images = _list_files(root / "images", problems)
    masks = _list_files(root / "masks", problems)
    for stem in sorted(set(images) - set(masks)):
        problems.append(
            f"image {images[stem]} has no mask (expected masks/{stem}.png); add it or remove the image"
        )
    for stem in sorted(set(masks) - set(images)):
        problems.append(
            f"mask {masks[stem]} has no image (expected images/{stem}.*); add it or remove the mask"
        )
    stems = sorted(set(images) & set(masks))
    if not stems:
        raise DataError(
            f"{root} holds no image/mask pairs (images/ has {len(images)}, masks/ has {len(masks)} files)"
        )

    yaml_path = root / "classes.yaml"
    declared = _read_classes_yaml(yaml_path, ignore_index) if yaml_path.is_file() else None
    if declared is not None:
        ignore_index = int(declared["ignore_index"])

    scan = FolderScan(root, images, masks, in_channels=1, classes=None, problems=problems)
    channels: set[int] = set()
    need_masks = deep or declared is None or declared.get("mask_format", "auto") == "auto"
    value_counts: dict[str, Counter] = {}
    for stem in stems:
        try:
            img = open_image(images[stem])
            channels.add(image_channels(img, images[stem]))
            msk = open_image(masks[stem])
            if img.size != msk.size:
                problems.append(
                    f"image {images[stem]} is {img.size[0]}x{img.size[1]} but mask {masks[stem]} is "
                    f"{msk.size[0]}x{msk.size[1]}; image and mask must have the same size"
                )
                continue
            scan.sizes[img.size] += 1
            if deep:
                read_image(images[stem])
            if need_masks:
                value_counts[stem] = _value_counts(read_mask_raw(masks[stem]))
        except DataError as e:
            problems.append(str(e))
    scan.in_channels = 3 if 3 in channels else 1

    scan.classes = _resolve_classes(declared, value_counts, ignore_index, yaml_path, problems)
    if scan.classes is not None and value_counts:
        _check_values(scan, value_counts, deep)
    splits_dir = root / "splits"
    if splits_dir.is_dir():
        scan.split_lists = {}
        for name in SPLITS:
            f = splits_dir / f"{name}.txt"
            listed = [s.strip() for s in f.read_text().splitlines() if s.strip()] if f.is_file() else []
            missing = [s for s in listed if s not in set(stems)]
            if missing:
                problems.append(
                    f"{f} lists {len(missing)} stems without an image/mask pair, e.g. {missing[0]!r}"
                )
            scan.split_lists[name] = [s for s in listed if s in set(stems)]
    return scan


def _resolve_classes(
    declared: dict[str, Any] | None,
    value_counts: dict[str, Counter],
    ignore_index: int,
    yaml_path: Path,
    problems: list[str],
) -> ClassSpec | None:
    """The mask format and classes: as declared in classes.yaml, else inferred from the masks' values."""
    fmt = declared.get("mask_format", "auto") if declared else "auto"
    seen: Counter = Counter()
    for counts in value_counts.values():
        seen.update(counts)
    if fmt == "auto":
        if any(isinstance(v, tuple) for v in seen):
            fmt = "rgb"
        elif declared is None and set(seen) <= {0, 255} and 255 in seen:
            fmt = "binary"
        else:
            fmt = "index"
    if declared is not None:
        names = [str(n) for n in declared["names"]]
        colors = declared.get("colors")
        if fmt == "rgb" and colors is None:
            problems.append(f"{yaml_path} needs 'colors' (one [r, g, b] per class) to read RGB colour masks")
            return None
        palette = [tuple(int(v) for v in c) for c in colors] if colors else default_palette(len(names))
        ignore_color = declared.get("ignore_color")
        return ClassSpec(names, palette, fmt, ignore_index, tuple(ignore_color) if ignore_color else None)
    if fmt == "rgb":
        problems.append(
            f"masks are RGB colour images; add {yaml_path} with 'names' and 'colors' to map colours"
        )
        return None
    if fmt == "binary":
        return ClassSpec(["background", "foreground"], default_palette(2), "binary", ignore_index)
    labels = [v for v in seen if v != ignore_index]
    n = max(labels) + 1 if labels else 1
    return ClassSpec([f"class{i}" for i in range(n)], default_palette(n), "index", ignore_index)


def _check_values(scan: FolderScan, value_counts: dict[str, Counter], deep: bool) -> None:
    """Report masks whose values fall outside the classes; count class pixels on a deep scan."""
    spec = scan.classes
    assert spec is not None
    pixels = np.zeros(spec.num_classes, np.int64)
    lut = _value_map(spec)
    for stem, counts in value_counts.items():
        for value, count in counts.items():
            label = lut(value)
            if label is None:
                scan.problems.append(_bad_value_message(scan.masks[stem], value, spec))
                break
            if label == spec.ignore_index:
                scan.ignored_pixels += count
            else:
                pixels[label] += count
    if deep:
        scan.class_pixels = pixels


def _value_map(spec: ClassSpec) -> Callable[[Any], int | None]:
    """Stored mask value -> class label (or ignore_index), None for values outside the classes."""
    if spec.mask_format == "rgb":
        colours = {tuple(c): i for i, c in enumerate(spec.palette)}
        if spec.ignore_color is not None:
            colours[tuple(spec.ignore_color)] = spec.ignore_index

        def rgb(v: Any) -> int | None:
            return colours.get(v) if isinstance(v, tuple) else None

        return rgb
    if spec.mask_format == "binary":
        return lambda v: {0: 0, 255: 1}.get(v) if isinstance(v, int) else None
    return lambda v: (
        v if isinstance(v, int) and (0 <= v < spec.num_classes or v == spec.ignore_index) else None
    )


def _bad_value_message(path: Path, value: Any, spec: ClassSpec) -> str:
    if spec.mask_format == "rgb":
        return f"mask {path} has colour {value} that is not in classes.yaml 'colors'; add it or fix the mask"
    if spec.mask_format == "binary":
        return f"mask {path} has value {value} but binary masks hold only 0 and 255; fix the mask"
    if isinstance(value, tuple):
        return (
            f"mask {path} is an RGB image but the data set uses index masks; save it as a single-channel PNG"
        )
    return (
        f"mask {path} has value {value} but the data set has {spec.num_classes} classes "
        f"(0..{spec.num_classes - 1}, ignore_index={spec.ignore_index}); set ignore_index or num_classes"
    )


def decode_mask(raw: np.ndarray, spec: ClassSpec, path: Path) -> np.ndarray:
    """Stored mask -> (H, W) int64 labels in [0, C) or ignore_index; DataError for values outside the classes."""
    if spec.mask_format == "rgb":
        if raw.ndim != 3:
            raise DataError(f"mask {path} is single-channel but the data set uses RGB colour masks")
        packed = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in spec.palette], np.int64)
        labels = np.full(packed.shape, -1, np.int64)
        for label, key in enumerate(keys):
            labels[packed == key] = label
        if spec.ignore_color is not None:
            r, g, b = spec.ignore_color
            labels[packed == ((r << 16) | (g << 8) | b)] = spec.ignore_index
        if (labels < 0).any():
            bad = tuple(int(v) for v in raw[labels < 0][0])
            raise DataError(_bad_value_message(path, bad, spec))
        return labels
    if raw.ndim == 3:
        raise DataError(_bad_value_message(path, (0, 0, 0), spec))
    labels = raw.astype(np.int64)
    if spec.mask_format == "binary":
        bad = (labels != 0) & (labels != 255)
        if bad.any():
            raise DataError(_bad_value_message(path, int(labels[bad][0]), spec))
        return labels // 255
    bad = ((labels < 0) | (labels >= spec.num_classes)) & (labels != spec.ignore_index)
    if bad.any():
        raise DataError(_bad_value_message(path, int(labels[bad][0]), spec))
    return labels


class FolderDataset:
    """A split of a folder data set: ``ds[i]`` -> ``transform(image uint8 (H, W, C), mask int64 (H, W))``.

    Without a transform the numpy arrays come back as they are. ``num_classes`` (e.g. from a checkpoint)
    overrides the inferred class count for index masks. Decoded arrays are cached in memory when ``cache``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        *,
        ignore_index: int = 255,
        val_ratio: float = 0.1,
        test_ratio: float = 0.1,
        split_seed: int = 0,
        split_lists: dict[str, list[str]] | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
        cache: bool = True,
        scan: FolderScan | None = None,
        weight_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.scan = scan if scan is not None else scan_folder(root, ignore_index)
        self.scan.raise_problems()
        spec = self.scan.classes
        assert spec is not None
        if num_classes is not None and num_classes != spec.num_classes:
            if spec.mask_format != "index" or num_classes < spec.num_classes:
                raise DataError(
                    f"{self.scan.root} has {spec.num_classes} classes ({', '.join(spec.names)}) "
                    f"but {num_classes} are expected (e.g. by the checkpoint)"
                )
            spec = ClassSpec(
                [*spec.names, *(f"class{i}" for i in range(spec.num_classes, num_classes))],
                default_palette(num_classes), "index", spec.ignore_index,
            )  # fmt: skip
        self.classes = spec
        self.split = split
        self.stems = self.scan.split(split, val_ratio, test_ratio, split_seed, split_lists)
        self.in_channels = in_channels or self.scan.in_channels
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.weight_fn = weight_fn
        self._weights: dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def ignore_index(self) -> int:
        return self.classes.ignore_index

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded (image uint8 (H, W, C), mask int64 (H, W)) of item ``index``, before any transform."""
        if index in self._cache:
            return self._cache[index]
        stem = self.stems[index]
        image = read_image(self.scan.images[stem], self.in_channels)
        mask = decode_mask(read_mask_raw(self.scan.masks[stem]), self.classes, self.scan.masks[stem])
        if image.shape[:2] != mask.shape:
            raise DataError(f"image {self.scan.images[stem]} and its mask differ in size; they must match")
        if self.cache:
            self._cache[index] = (image, mask)
        return image, mask

    def weight(self, index: int, mask: np.ndarray) -> np.ndarray:
        """``weight_fn(mask)`` (e.g. the U-Net border map), computed on the untransformed mask and cached."""
        assert self.weight_fn is not None
        if index in self._weights:
            return self._weights[index]
        w = np.asarray(self.weight_fn(mask), dtype=np.float32)
        if self.cache:
            self._weights[index] = w
        return w

    def __getitem__(self, index: int) -> Any:
        """(image, mask), or (image, mask, weight) with a ``weight_fn``, through the transform if any."""
        image, mask = self.load(index)
        arrays = (image, mask) if self.weight_fn is None else (image, mask, self.weight(index, mask))
        return arrays if self.transform is None else self.transform(*arrays)
