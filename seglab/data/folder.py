"""Folder data sets: ``images/`` and ``masks/`` paired by file stem, optional ``instances/``, ``splits/`` and
``classes.yaml``.

Layout::

    DIR/images/a.jpg   DIR/masks/a.png       (paired by stem)
    DIR/instances/a.png                       (optional: instance label maps, 8- or 16-bit, 0 = none, 1..N)
    DIR/splits/train.txt, val.txt, test.txt  (optional: one stem per line; else a seeded random split)
    DIR/classes.yaml                          (optional: names, colors, mask_format, ignore_index, ignore_color)

Masks are single-channel index PNGs (L or P), binary 0/255 masks (read as 0/1), or RGB colour masks mapped
through ``colors`` in classes.yaml. Without classes.yaml the format and the number of classes are inferred from
the masks: masks holding only 0 and 255 are binary, anything else is an index mask with
``num_classes = max label + 1`` (``ignore_index`` excluded), trusted only when it is plausible (see
``_check_classes``). A classes.yaml with two names, no ``ignore_index`` and ``mask_format`` auto reads 0/255 masks
as binary too. ``scan_folder`` reports every problem it finds; a deep scan caches what it decoded per file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from seglab.data.io import (
    IMAGE_SUFFIXES,
    check_pixels,
    default_palette,
    image_channels,
    load_image,
    open_image,
    oriented_size,
    read_image,
    read_mask_raw,
)
from seglab.errors import ConfigError, DataError, SeglabError
from seglab.files import atomic_write

SPLITS = ("train", "val", "test")
INTERIOR_BOUNDARY = ("background", "interior", "boundary")  # the classes of data.target interior_boundary
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
    # pixels per class of each mask (stem -> int64 (C,), ignored pixels left out), from a deep scan: the sums of
    # a split's masks (e.g. class weights from the training split, see ``class_counts_of``)
    class_counts: dict[str, np.ndarray] | None = None
    ignored_pixels: int = 0
    split_lists: dict[str, list[str]] | None = None  # from splits/, if present
    # the problems (also in ``problems``) about the classes as a whole, as inferred from the masks: their count,
    # or no class but 0 in any mask; moot for a caller that knows the classes (e.g. a checkpoint's num_classes)
    class_problems: list[str] = field(default_factory=list)
    instances: dict[str, Path] | None = None  # instance label maps (instances/), if the folder has them
    objects: dict[str, int] | None = None  # objects per instance map, from a deep scan

    @property
    def stems(self) -> list[str]:
        return sorted(set(self.images) & set(self.masks))

    def class_counts_of(self, stems: list[str]) -> np.ndarray:
        """Pixels per class of each of ``stems``' masks, int64 (len(stems), C), from a deep scan (no mask is read
        again); DataError if the scan was not deep or did not count a stem's mask."""
        counts = self.class_counts or {}
        missing = [s for s in stems if s not in counts]
        if missing:
            raise DataError(
                f"no class counts for mask {missing[0]!r} of {self.root}: they come from a deep scan "
                f"(scan_folder(..., deep=True)) of a folder without problems"
            )
        num_classes = self.classes.num_classes if self.classes is not None else 0
        return np.stack([counts[s] for s in stems]) if stems else np.zeros((0, num_classes), np.int64)

    def raise_problems(self, classes_known: bool = False) -> None:
        """DataError with the first problem (and how many more); ``classes_known`` skips ``class_problems``."""
        problems = [p for p in self.problems if not (classes_known and p in self.class_problems)]
        if problems:
            more = f" (and {len(problems) - 1} more problems; run `seglab data check {self.root}`)"
            raise DataError(problems[0] + (more if len(problems) > 1 else ""))

    def split(
        self,
        name: str,
        val_ratio: float = 0.1,
        test_ratio: float = 0.1,
        seed: int = 0,
        lists: dict[str, list[str]] | None = None,
    ) -> list[str]:
        """Stems of split ``name`` (train, val, test or all): from ``lists`` if given, else from splits/ if
        present (when it has no val.txt, ``val_ratio`` of its train list, seeded, is the validation split), else a
        seeded random split by ratio."""
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
            listed = self.split_lists.get(name, [])
            if name in ("train", "val") and not self.split_lists.get("val") and val_ratio > 0:
                # splits/ without val.txt (an official train/test split): validation is carved from train
                train = self.split_lists.get("train", [])
                order = [train[i] for i in np.random.default_rng(seed).permutation(len(train))]
                n_val = int(round(val_ratio * len(train)))
                listed = sorted(order[:n_val] if name == "val" else order[n_val:])
            return listed
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
    """The image files of ``folder`` by stem; other entries, shared stems and broken symbolic links (dangling
    or looping, which ``is_file`` would skip without a word) are problems."""
    files: dict[str, Path] = {}
    broken: list[str] = []
    for p in sorted(folder.iterdir()):
        if not p.name.startswith(".") and p.is_symlink():
            why = _broken_link(p)
            if why:
                broken.append(f"{p.name} ({why})")
                continue
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
    if broken:
        links = "link leads" if len(broken) == 1 else "links lead"
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        them = "it" if len(broken) == 1 else "them"
        problems.append(
            f"{len(broken)} symbolic {links} nowhere in {folder}: {', '.join(broken[:3])}{more}; repair {them} "
            f"or remove {them}"
        )
    return files


def _broken_link(path: Path) -> str | None:
    """Why the symbolic link ``path`` leads to no file (its target is missing, or the links loop), or None."""
    try:
        path.stat()
    except FileNotFoundError:
        return f"-> {os.readlink(path)}, which does not exist"
    except OSError as e:
        return "a loop of links" if e.errno == errno.ELOOP else f"unreadable: {e.strerror}"
    return None


_YAML_KEYS = ("names", "colors", "mask_format", "ignore_index", "ignore_color")


def _is_colour(c: Any) -> bool:
    return (
        isinstance(c, list)
        and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
    )


def _read_classes_yaml(path: Path) -> dict[str, Any]:
    """classes.yaml, every key checked for its type: one-line DataError naming the file and the key otherwise.
    ``ignore_index`` is present only if the file declares it."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path} must hold a mapping with a non-empty list 'names' (optionally {', '.join(_YAML_KEYS[1:])})"
        )
    unknown = sorted(str(k) for k in set(data) - set(_YAML_KEYS))
    if unknown:
        raise DataError(f"{path} has unknown keys {unknown}; the keys are {', '.join(_YAML_KEYS)}")
    names = data.get("names")
    if not isinstance(names, list) or not names:
        raise DataError(
            f"{path}: 'names' must be a non-empty list of class names, e.g. names: [background, cell]"
        )
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise DataError(f"{path}: 'names' must be strings, but entry {i} is {n!r}; quote it, e.g. '{n}'")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise DataError(f"{path}: 'names' lists {dup!r} twice; every class needs its own name")
    fmt = data.get("mask_format", "auto")
    if not isinstance(fmt, str) or fmt not in MASK_FORMATS:
        raise DataError(f"{path}: 'mask_format' is {fmt!r} but must be one of {', '.join(MASK_FORMATS)}")
    colors = data.get("colors")
    if colors is not None:
        if not isinstance(colors, list) or len(colors) != len(names) or not all(map(_is_colour, colors)):
            bad = next((c for c in colors if not _is_colour(c)), None) if isinstance(colors, list) else colors
            got = f"{len(colors)} entries" if bad is None else repr(bad)
            raise DataError(
                f"{path}: 'colors' needs one [r, g, b] of integers 0..255 per name ({len(names)}), got {got}"
            )
        dup_c = next((c for i, c in enumerate(colors) if c in colors[:i]), None)
        if dup_c is not None:
            raise DataError(
                f"{path}: 'colors' gives {dup_c} to two classes; every class needs its own colour"
            )
    ignore_color = data.get("ignore_color")
    if ignore_color is not None and (not _is_colour(ignore_color) or ignore_color in (colors or [])):
        why = (
            "is the colour of a class"
            if _is_colour(ignore_color)
            else "must be one [r, g, b] of integers 0..255"
        )
        raise DataError(f"{path}: 'ignore_color' {ignore_color!r} {why}")
    if "ignore_index" in data:
        value = data["ignore_index"]
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535
        if not ok or value < len(names):
            why = f"is class {value} ({names[value]!r})" if ok else f"is {value!r}"
            raise DataError(
                f"{path}: 'ignore_index' {why} but must be an integer mask value outside the classes "
                f"0..{len(names) - 1}, e.g. ignore_index: 255"
            )
    return data


def _value_counts(raw: np.ndarray) -> Counter:
    """Pixel counts per stored value: ints for index masks, (r, g, b) tuples for colour masks."""
    if raw.ndim == 3:
        packed = (raw[..., 0].astype(np.uint32) << 16) | (raw[..., 1].astype(np.uint32) << 8) | raw[..., 2]
        values, counts = np.unique(packed, return_counts=True)
        return Counter(
            {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255): int(c) for v, c in zip(values, counts)}
        )
    if raw.dtype in (np.uint8, np.uint16, np.bool_):  # a histogram is much faster than np.unique's sort
        hist = np.bincount(raw.ravel().astype(np.intp, copy=False))
        values = np.flatnonzero(hist)
        return Counter({int(v): int(hist[v]) for v in values})
    values, counts = np.unique(raw, return_counts=True)
    return Counter({int(v): int(c) for v, c in zip(values, counts)})


# ---------------------------------------------------------------------------------------------------------------
# The scan cache: what decoding a file found, so that a second deep scan decodes nothing.

SCAN_CACHE_VERSION = 2  # 2: 16-bit RGB images are refused (check_sample_bits); older caches passed them
MAX_SCAN_CACHES = 64  # data roots with a cache file; the least recently used are dropped


def scan_cache_dir() -> Path:
    """Where scan results are cached: ``$SEGLAB_CACHE_DIR/scan``, by default ``~/.cache/seglab/scan`` (outside
    the data folder, which may be read-only)."""
    root = os.environ.get("SEGLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seglab"
    )
    return Path(root) / "scan"


@dataclass
class _FileInfo:
    """What reading one file found: its (w, h) as seglab reads it, and an image's channels or a mask's values."""

    size: tuple[int, int] = (0, 0)
    channels: int = 0
    objects: int = 0  # an instance map's objects (distinct non-zero ids)
    under: Counter | None = None  # an instance map's object pixels per value of its mask, from a deep scan
    counts: Counter | None = None
    error: str | None = None


Record = tuple[str, dict[str, Any]] | None  # (absolute path, cache entry) to keep in the scan cache


class _ScanCache:
    """Per-file results of decoding (an image's channels and size; a mask's size and value counts), keyed by
    (absolute path, file size, mtime_ns): a file that changed is read again. One JSON file per data root,
    written atomically; an unreadable or corrupt cache is ignored (and rewritten), an unwritable cache folder
    just means no caching. Errors are never cached: a bad file is read again, so its message always names the
    path as given and reflects the current limits."""

    def __init__(self, root: Path) -> None:
        resolved = str(root.resolve())
        digest = hashlib.sha256(resolved.encode()).hexdigest()[:20]
        self.file = scan_cache_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', root.resolve().name)}-{digest}.json"
        self.old: dict[str, Any] = {}
        try:
            data = json.loads(self.file.read_text())
            if data.get("version") == SCAN_CACHE_VERSION and data.get("root") == resolved:
                self.old = dict(data["files"])
                os.utime(self.file)  # used: the last to be dropped (see save)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass
        self.root = resolved
        self.new: dict[str, Any] = {}

    @staticmethod
    def stat(path: Path) -> tuple[str, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return os.path.abspath(path), st.st_size, st.st_mtime_ns

    def get(self, key: tuple[str, int, int] | None, kind: str) -> tuple[_FileInfo, Record] | None:
        """The cached result for the file ``key`` (from ``stat``) if it is unchanged, else None (a miss)."""
        if key is None:
            return None
        entry = self.old.get(key[0])
        if not isinstance(entry, dict) or (entry.get("kind"), entry.get("size"), entry.get("mtime_ns")) != (
            kind,
            key[1],
            key[2],
        ):
            return None
        try:  # a malformed entry is a miss
            info = _FileInfo((int(entry["w"]), int(entry["h"])))
            if kind == "image":
                info.channels = int(entry["channels"])
            elif kind == "instances":
                info.objects = int(entry["objects"])
                if "under" in entry:
                    info.under = Counter({tuple(map(int, v)) if isinstance(v, list) else int(v): int(n)
                                          for v, n in entry["under"]})  # fmt: skip
            else:
                info.counts = Counter(
                    {
                        tuple(map(int, v)) if isinstance(v, list) else int(v): int(n)
                        for v, n in entry["counts"]
                    }
                )
        except (KeyError, TypeError, ValueError):
            return None
        return info, (key[0], entry)

    @staticmethod
    def record(key: tuple[str, int, int] | None, kind: str, **data: Any) -> tuple[str, dict[str, Any]] | None:
        return None if key is None else (key[0], {"kind": kind, "size": key[1], "mtime_ns": key[2], **data})

    def save(self) -> None:
        if self.new == self.old:
            return
        text = json.dumps({"version": SCAN_CACHE_VERSION, "root": self.root, "files": self.new})
        with contextlib.suppress(OSError, SeglabError):  # a read-only cache folder: scan without a cache
            atomic_write(self.file, lambda tmp: tmp.write_text(text))
            # keep the cache folder small: the most recently written MAX_SCAN_CACHES data roots
            caches = sorted(self.file.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
            for old in caches[MAX_SCAN_CACHES:]:
                old.unlink(missing_ok=True)


def _image_info(path: Path, decode: bool, cache: _ScanCache) -> tuple[_FileInfo, Record]:
    """Channels and size of an image: from the cache, by decoding it (``decode``), or from its header."""
    key = cache.stat(path)
    try:
        hit = cache.get(key, "image")
        if hit is not None:
            check_pixels(path, hit[0].size)  # the limit may have changed since
            return hit
        if decode:
            img = load_image(path)
            info = _FileInfo(img.size, image_channels(img, path))
            return info, cache.record(key, "image", w=img.size[0], h=img.size[1], channels=info.channels)
        with open_image(path) as img:
            return _FileInfo(oriented_size(img), image_channels(img, path)), None
    except DataError as e:
        return _FileInfo(error=str(e)), None


def _mask_info(path: Path, read_values: bool, cache: _ScanCache) -> tuple[_FileInfo, Record]:
    """Size (and with ``read_values`` the value counts) of a mask: from the cache, by decoding it, or its header."""
    key = cache.stat(path)
    try:
        hit = cache.get(key, "mask")
        if hit is not None:
            check_pixels(path, hit[0].size)
            return hit
        if read_values:
            raw = read_mask_raw(path)
            counts = _value_counts(raw)
            listed = [[list(v) if isinstance(v, tuple) else v, n] for v, n in counts.items()]
            h, w = raw.shape[:2]
            return _FileInfo((w, h), counts=counts), cache.record(key, "mask", w=w, h=h, counts=listed)
        with open_image(path) as img:
            return _FileInfo(oriented_size(img)), None
    except DataError as e:
        return _FileInfo(error=str(e)), None


def _instance_info(
    path: Path, deep: bool, cache: _ScanCache, mask: Path | None = None
) -> tuple[_FileInfo, Record]:
    """Size (and with ``deep`` the number of objects) of an instance map; an error unless single-channel. With
    ``deep`` and its index ``mask`` of the same size, also the mask values under its objects (``under``; cached
    with the mask's size and mtime, so a changed mask is read again)."""
    key = cache.stat(path)
    mask_key = cache.stat(mask) if mask is not None else None
    try:
        hit = cache.get(key, "instances")
        stale = deep and mask_key is not None and hit is not None and hit[1][1].get("mask") != list(mask_key[1:])
        if hit is not None and not stale:  # (a deep scan compares the objects with the mask as it is now)
            check_pixels(path, hit[0].size)
            return hit
        if not deep:
            with open_image(path) as img:
                if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                    raise DataError(_instance_mode_message(path, img.mode))
                return _FileInfo(oriented_size(img)), None
        raw = read_mask_raw(path)
        if raw.ndim != 2:
            raise DataError(_instance_mode_message(path, "RGB"))
        h, w = raw.shape
        objects = int(np.count_nonzero(np.bincount(raw.ravel().astype(np.intp, copy=False))[1:]))
        info = _FileInfo((w, h), objects=objects, under=_values_under(raw, mask))
        extra = {} if info.under is None or mask_key is None else {
            "under": [[list(v) if isinstance(v, tuple) else v, n] for v, n in info.under.items()],
            "mask": list(mask_key[1:])}  # fmt: skip
        return info, cache.record(key, "instances", w=w, h=h, objects=objects, **extra)
    except DataError as e:
        return _FileInfo(error=str(e)), None


def _values_under(instances: np.ndarray, mask: Path | None) -> Counter | None:
    """Pixel counts per stored value of ``mask`` under the objects (non-zero ids) of ``instances``; None without
    a mask, or for one that cannot be read or differs in size (problems reported on their own)."""
    if mask is None:
        return None
    try:
        raw = read_mask_raw(mask)
    except DataError:
        return None
    if raw.shape[:2] != instances.shape:
        return None
    under = raw[instances > 0]
    return _value_counts(under[None] if under.ndim == 2 else under)


def _instances_on_background(scan: FolderScan, under: dict[str, Counter]) -> list[str]:
    """Instance maps whose objects lie mostly (over half their pixels) on the background (class 0) of their
    masks: the two disagree, e.g. a shifted, flipped or mispaired file. Pixels the mask ignores do not count."""
    spec = scan.classes
    assert spec is not None and scan.instances is not None
    lut = _value_map(spec)
    out = []
    for stem, counts in under.items():
        labels = Counter()
        for value, n in counts.items():
            labels[lut(value)] += n
        total = sum(n for label, n in labels.items() if label is not None and label != spec.ignore_index)
        share = labels[0] / total if total else 0.0
        if share > 0.5:
            out.append(
                f"instance map {scan.instances[stem]}: {100 * share:.0f} % of its object pixels lie on background "
                f"({spec.names[0]!r}) of mask {scan.masks[stem]}; the two disagree (shifted, flipped or paired "
                f"with the wrong file?): fix the one that is wrong"
            )
    return out


def _instance_mode_message(path: Path, mode: str) -> str:
    return (
        f"instance map {path} has mode {mode}; save it as a single-channel 8- or 16-bit PNG of object ids "
        f"(0 = no object)"
    )


def scan_folder(root: str | Path, ignore_index: int = 255, deep: bool = False) -> FolderScan:
    """Pair files, read headers, and (when needed or ``deep``) read every mask; collect every problem found.

    ``deep`` also decodes every image (finding corrupt files) and counts class pixels: the `data check` pass,
    and the check training runs before it starts. What decoding finds is cached per file (see ``_ScanCache``,
    ``scan_cache_dir``), so a second deep scan of an unchanged folder decodes nothing. Sizes are compared as
    seglab reads the files, after EXIF orientation. Problems that make the folder unusable as a whole (missing
    folders, no pairs, a malformed classes.yaml) raise DataError at once.
    """
    root = Path(root)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ConfigError(f"ignore_index must be an integer mask value, e.g. 255, not {ignore_index!r}")
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
    instances = _list_files(root / "instances", problems) if (root / "instances").is_dir() else None
    if instances is not None:
        for stem in stems:
            if stem not in instances:
                problems.append(
                    f"image {images[stem]} has no instance map (expected instances/{stem}.png); add it, or move "
                    f"{root / 'instances'} away if the data set has no instances"
                )
        for stem in sorted(set(instances) - set(stems)):
            problems.append(f"instance map {instances[stem]} has no image/mask pair; add them or remove it")

    yaml_path = root / "classes.yaml"
    declared = _read_classes_yaml(yaml_path) if yaml_path.is_file() else None
    ignore_declared = declared is not None and "ignore_index" in declared
    if declared is not None and ignore_declared:
        ignore_index = int(declared["ignore_index"])

    scan = FolderScan(root, images, masks, in_channels=1, classes=None, problems=problems, instances=instances)
    need_masks = deep or declared is None or declared.get("mask_format", "auto") == "auto"
    cache = _ScanCache(root)

    def read(stem: str) -> tuple[tuple[_FileInfo, Record], ...]:
        out = (_image_info(images[stem], deep, cache), _mask_info(masks[stem], need_masks, cache))
        if instances is not None and stem in instances:
            out += (_instance_info(instances[stem], deep, cache, masks[stem]),)
        return out

    workers = min(4, os.cpu_count() or 1, len(stems))
    if workers > 1:  # decoding (Pillow, NumPy) releases the GIL: threads overlap the files
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(read, stems))
    else:
        results = [read(stem) for stem in stems]

    channels: set[int] = set()
    value_counts: dict[str, Counter] = {}
    objects: dict[str, int] = {}
    under: dict[str, Counter] = {}  # mask values under each instance map's objects (deep scans)
    for stem, result in zip(stems, results):
        for info, record in result:
            if info.error is not None:
                problems.append(info.error)
            elif record is not None:
                cache.new[record[0]] = record[1]
        (img, _), (msk, _) = result[:2]
        if len(result) > 2 and result[2][0].error is None:
            inst = result[2][0]
            if inst.size != msk.size:
                problems.append(
                    f"instance map {instances[stem]} is {inst.size[0]}x{inst.size[1]} but mask {masks[stem]} is "
                    f"{msk.size[0]}x{msk.size[1]}; they must have the same size"
                )
            elif deep:
                objects[stem] = inst.objects
                if inst.under is not None:
                    under[stem] = inst.under
        if img.error is not None or msk.error is not None:
            continue
        channels.add(img.channels)
        if img.size != msk.size:
            problems.append(
                f"image {images[stem]} is {img.size[0]}x{img.size[1]} but mask {masks[stem]} is "
                f"{msk.size[0]}x{msk.size[1]}; image and mask must have the same size"
            )
            continue
        scan.sizes[img.size] += 1
        if msk.counts is not None and need_masks:
            value_counts[stem] = msk.counts
    cache.save()
    scan.in_channels = 3 if 3 in channels else 1
    if instances is not None and deep:
        scan.objects = objects

    scan.classes = _resolve_classes(declared, value_counts, ignore_index, yaml_path, problems)
    if scan.classes is not None and value_counts:
        _check_values(scan, value_counts, deep)
        _check_classes(scan, value_counts, inferred=declared is None)
        if scan.classes.mask_format == "index" and not ignore_declared:
            problems += _binary_masks_read_as_ignore(scan, value_counts)
    if scan.classes is not None and under:
        problems += _instances_on_background(scan, under)
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
    """The mask format and classes: as declared in classes.yaml, else inferred from the masks' values.

    With ``mask_format: auto`` (or no classes.yaml) masks holding only 0 and 255 are binary when there is no
    classes.yaml, or when it names exactly two classes and declares no ``ignore_index``."""
    fmt = declared.get("mask_format", "auto") if declared else "auto"
    seen: Counter = Counter()
    for counts in value_counts.values():
        seen.update(counts)
    if fmt == "auto":
        zero_255 = bool(seen) and set(seen) <= {0, 255} and 255 in seen
        two_names = declared is not None and len(declared["names"]) == 2 and "ignore_index" not in declared
        if any(isinstance(v, tuple) for v in seen):
            fmt = "rgb"
        elif zero_255 and (declared is None or two_names):
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


def _ranges(values: list[int], limit: int = 4) -> str:
    """Sorted ints as compact ranges: [2, 3, 4, 7] -> '2..4, 7' (at most ``limit`` ranges, then '...')."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")


def _check_classes(scan: FolderScan, value_counts: dict[str, Counter], inferred: bool) -> None:
    """Problems with the classes as a whole: an ignore_index that is a class, a single class (or no class but 0
    in any mask), and a class count inferred from the masks that is implausible.

    Without classes.yaml the class count is the largest mask value + 1. That is trusted only if every value
    from 0 to the largest is used by some mask, and if a largest value above 255 (16-bit masks) is not held
    by a tiny share (< 1 %) of the labelled pixels (stray values, or instance ids rather than classes).
    Otherwise one stray pixel would set the class count: the fix is to declare the classes in classes.yaml."""
    spec = scan.classes
    assert spec is not None
    yaml_path = scan.root / "classes.yaml"
    masks_dir = scan.root / "masks"
    ignore = spec.ignore_index
    if (
        inferred
        and spec.mask_format == "index"
        and spec.num_classes > 1
        and _implausible_class_count(scan, value_counts)
    ):
        return  # (an ignore_index inside 0..max is then no class either)
    if 0 <= ignore < spec.num_classes:  # a declared ignore_index was checked with classes.yaml
        where = "the masks' classes" if inferred else f"the classes of {yaml_path}"
        scan.problems.append(
            f"ignore_index {ignore} is class {ignore} of {where} (0..{spec.num_classes - 1}), so that class "
            f"would vanish from training and metrics; set ignore_index (data.ignore_index, --ignore-index, or "
            f"ignore_index: in classes.yaml) to a value no class uses, e.g. 255"
        )
        return
    if spec.num_classes < 2:
        if inferred:
            holds = "only the value 0" + (
                f" (and ignore_index {ignore})" if any(ignore in c for c in value_counts.values()) else ""
            )
            msg = (
                f"every mask in {masks_dir} holds {holds}, so the data set has one class; binary masks must use "
                f"255 for the foreground (0 = background), or declare the classes in {yaml_path} (names: [...])"
            )
        else:
            msg = (
                f"{yaml_path} names one class ({spec.names[0]!r}); a segmentation data set needs at least two "
                f"(e.g. names: [background, {spec.names[0]}])"
            )
        scan.problems.append(msg)
        scan.class_problems.append(msg)
        return
    lut = _value_map(spec)
    present = {lut(v) for c in value_counts.values() for v in c} - {None, ignore}
    if present <= {0}:
        msg = (
            f"no mask in {masks_dir} holds a class other than 0 ({spec.names[0]!r}), so nothing can be learnt or "
            f"measured; label the objects with "
            + (
                f"the colours of classes 1..{spec.num_classes - 1}"
                if spec.mask_format == "rgb"
                else f"their class indices 1..{spec.num_classes - 1}"
            )
            + (
                f", or, for binary 0/255 masks, keep two names and no ignore_index in {yaml_path}"
                if spec.mask_format == "index"
                else ""
            )
        )
        scan.problems.append(msg)
        scan.class_problems.append(msg)


def _implausible_class_count(scan: FolderScan, value_counts: dict[str, Counter]) -> bool:
    """Report (and say True) if the class count inferred from the masks (largest value + 1) is implausible."""
    spec = scan.classes
    assert spec is not None
    ignore = spec.ignore_index
    top = spec.num_classes - 1
    unused = sorted(set(range(top + 1)) - {v for c in value_counts.values() for v in c})
    holders = [stem for stem, c in value_counts.items() if top in c]
    top_px = sum(value_counts[s][top] for s in holders)
    labelled = sum(n for c in value_counts.values() for v, n in c.items() if v != ignore)
    if unused:
        why = f"the values {_ranges(unused)} are in no mask"
    elif top > 255 and top_px < 0.01 * labelled:
        why = (
            f"{top} is held by only {top_px} of {labelled} labelled pixels (a stray value or an instance id?)"
        )
    else:
        return False
    more = f" and {len(holders) - 1} more masks" if len(holders) > 1 else ""
    msg = (
        f"the class count {spec.num_classes} inferred from the largest mask value {top} (in "
        f"{scan.masks[holders[0]]}{more}, {top_px} px) is implausible: {why}; fix the mask, or declare the "
        f"classes in {scan.root / 'classes.yaml'} (names: one per class; ignore_index: {top} if that value marks "
        f"pixels to ignore)"
    )
    scan.problems.append(msg)
    scan.class_problems.append(msg)
    return True


def _binary_masks_read_as_ignore(scan: FolderScan, value_counts: dict[str, Counter]) -> list[str]:
    """Binary 0/255 masks inside an index data set, whose 255 (the default ignore_index) would silently drop the
    object from the loss and the metrics.

    The rule, for an index data set whose ignore_index is not declared in classes.yaml: a mask is reported when
    (1) it holds only 0 and ignore_index (both), (2) other masks label objects with class indices (some mask
    holds a label in 1..C-1), and (3) ignore_index covers at least 0.5 % of the mask and more than 4 times the
    share it covers in those labelled masks taken together. An ordinary mask with a thin ignored border (as in
    VOC), or a data set that ignores a region in every mask, does not pass (3); a data set that means it can say
    so with ``ignore_index:`` in classes.yaml."""
    spec = scan.classes
    assert spec is not None
    ignore = spec.ignore_index
    labelled = [
        c for c in value_counts.values() if any(isinstance(v, int) and 1 <= v < spec.num_classes for v in c)
    ]
    if not labelled:
        return []
    total = sum(sum(c.values()) for c in labelled)
    share = sum(c.get(ignore, 0) for c in labelled) / max(total, 1)
    out = []
    for stem, counts in value_counts.items():
        if set(counts) != {0, ignore}:
            continue
        own = counts[ignore] / sum(counts.values())
        if own >= 0.005 and own > 4 * share:
            out.append(
                f"mask {scan.masks[stem]} holds only 0 and {ignore} ({100 * own:.1f} % of it), but {ignore} is "
                f"ignore_index in this index data set (other masks use classes 1..{spec.num_classes - 1}), so its "
                f"object would be ignored; relabel its {ignore} to the object's class index, or, if {ignore} "
                f"really marks pixels to ignore, declare ignore_index: {ignore} in {scan.root / 'classes.yaml'}"
            )
    return out


def _check_values(scan: FolderScan, value_counts: dict[str, Counter], deep: bool) -> None:
    """Report masks whose values fall outside the classes; count class pixels on a deep scan."""
    spec = scan.classes
    assert spec is not None
    per_image: dict[str, np.ndarray] = {}
    lut = _value_map(spec)
    for stem, counts in value_counts.items():
        own = per_image[stem] = np.zeros(spec.num_classes, np.int64)
        for value, count in counts.items():
            label = lut(value)
            if label is None:
                scan.problems.append(_bad_value_message(scan.masks[stem], value, spec))
                del per_image[stem]
                break
            if label == spec.ignore_index:
                scan.ignored_pixels += count
            else:
                own[label] += count
    if deep:
        scan.class_counts = per_image
        scan.class_pixels = (
            np.sum(list(per_image.values()), axis=0, dtype=np.int64)
            if per_image
            else np.zeros(spec.num_classes, np.int64)
        )


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
        f"(0..{spec.num_classes - 1}, ignore_index={spec.ignore_index}); fix the mask, add the missing classes to "
        f"'names:' in classes.yaml, or, if {value} marks pixels to ignore, set ignore_index: {value} in "
        f"classes.yaml (or data.ignore_index)"
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
        instances: bool = False,
        target: str = "mask",
        boundary_width: int = 2,
    ) -> None:
        self.scan = scan if scan is not None else scan_folder(root, ignore_index)
        self.scan.raise_problems(classes_known=num_classes is not None)
        spec = self.scan.classes
        assert spec is not None
        self.instances, self.target, self.boundary_width = instances, target, boundary_width
        if (instances or target == "interior_boundary") and self.scan.instances is None:
            why = "data.target interior_boundary" if target == "interior_boundary" else "instance evaluation"
            raise DataError(
                f"{why} needs instance maps in {self.scan.root / 'instances'} (one label map per image, paired "
                f"by stem, 0 = no object)"
            )
        if target == "interior_boundary":  # the three classes made from the instance maps
            spec = ClassSpec(list(INTERIOR_BOUNDARY), default_palette(3), "index", spec.ignore_index)
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
        self._instances: dict[int, np.ndarray] = {}

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
        spec = self.scan.classes if self.target == "interior_boundary" else self.classes
        assert spec is not None
        mask = decode_mask(read_mask_raw(self.scan.masks[stem]), spec, self.scan.masks[stem])
        if image.shape[:2] != mask.shape:
            raise DataError(f"image {self.scan.images[stem]} and its mask differ in size; they must match")
        if self.target == "interior_boundary":
            mask = self._target(self.load_instances(index), mask)
        if self.cache:
            self._cache[index] = (image, mask)
        return image, mask

    def load_instances(self, index: int) -> np.ndarray:
        """The instance label map int64 (H, W) of item ``index`` (0 = no object), before any transform."""
        if index in self._instances:
            return self._instances[index]
        assert self.scan.instances is not None
        path = self.scan.instances[self.stems[index]]
        raw = read_mask_raw(path)
        if raw.ndim != 2:
            raise DataError(_instance_mode_message(path, "RGB"))
        inst = raw.astype(np.int64)
        if self.cache:
            self._instances[index] = inst
        return inst

    def _target(self, instances: Any, mask: Any) -> Any:
        """The interior/boundary target of an instance map (NumPy or torch), ignore_index where ``mask`` has it."""
        from seglab.instances.postprocess import interior_boundary_target

        is_tensor = hasattr(instances, "numpy")
        target = interior_boundary_target(instances, width=self.boundary_width)
        ignored = (mask.numpy() if is_tensor else mask) == self.ignore_index
        target[ignored] = self.ignore_index
        if is_tensor:
            import torch

            return torch.from_numpy(target)
        return target

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
        """(image, mask), or (image, mask, weight) with a ``weight_fn``, through the transform if any; with
        ``instances`` the instance map comes last (transformed alike: nearest neighbour, ids kept, 0 filled in).

        With ``target`` interior_boundary the mask is the three-class target, made from the instance map after
        the transform (so the boundary band is ``boundary_width`` px of the augmented image)."""
        image, mask = self.load(index)
        arrays = (image, mask) if self.weight_fn is None else (image, mask, self.weight(index, mask))
        inst = self.load_instances(index) if self.instances or self.target == "interior_boundary" else None
        if self.transform is None:
            out = [*arrays]
        else:
            out = list(self.transform(*arrays, instances=inst))
            if inst is not None:
                inst = out.pop()
                if self.target == "interior_boundary":
                    out[1] = self._target(inst, out[1])
        if self.instances:
            out.append(inst)
        return tuple(out)
