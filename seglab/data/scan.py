"""The scan of a folder data set: pair files by stem, probe each file, check what was found, resolve the
classes and read the splits; a JSON cache of what decoding found per file.

Layout::

    DIR/images/a.jpg   DIR/masks/a.png       (paired by stem)
    DIR/instances/a.png                       (optional: instance label maps, 8- or 16-bit, 0 = none, 1..N)
    DIR/splits/train.txt, val.txt, test.txt  (optional: one stem per line; else a seeded random split)
    DIR/classes.yaml                          (optional: names, colors, mask_format, ignore_index, ignore_color)

``scan_folder`` reports every problem it finds; a deep scan caches what it decoded per file. What the mask
values mean (classes.yaml, class inference) is ``seglab.data.classes``; a class count inferred from the masks is
trusted only when it is plausible (see ``_check_classes``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglab.data.classes import ClassSpec, bad_value_message, read_classes_yaml, resolve_classes, value_map
from seglab.data.formats import MaskSource, check_format, detect, read_layout
from seglab.data.io import (
    IMAGE_SUFFIXES,
    check_pixels,
    image_header,
    max_bytes,
    open_image,
    oriented_size,
    read_image,
    read_mask_raw,
)
from seglab.errors import ConfigError, DataError, SeglabError
from seglab.files import atomic_write

if TYPE_CHECKING:
    from seglab.data.normalize import BandStats

SPLITS = ("train", "val", "test")


@dataclass
class FolderScan:
    """Everything learnt from one pass over a folder; ``problems`` lists every inconsistency found."""

    root: Path
    images: dict[str, Path]
    masks: dict[str, Path | MaskSource]  # a MaskSource for layouts whose masks are not files of classes
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
    instances: dict[str, Path | MaskSource] | None = None  # instance label maps (instances/), if any
    objects: dict[str, int] | None = None  # objects per instance map, from a deep scan
    # the images' type as read: "uint8" when every image is 8-bit, else "float32" if any is float, else "uint16"
    dtype: str = "uint8"
    stats: BandStats | None = None  # of the training split's images (``band_stats_of``), set by `data check`
    format: str = (
        "folder"  # the layout read (seglab.data.formats): folder, voc, cityscapes, ade20k, coco, labelme
    )

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

SCAN_CACHE_VERSION = 3  # 2: 16-bit RGB images refused; 3: an image's bands and dtype (16-bit, float)
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
    channels: int = 0  # an image's bands
    dtype: str = "uint8"  # an image's type as ``read_image`` gives it
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
    def stat(path: Path | MaskSource) -> tuple[str, int, int] | None:
        if isinstance(path, MaskSource):
            return path.stat_key()
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
                info.channels, info.dtype = int(entry["channels"]), str(entry["dtype"])
            elif kind == "instances":
                info.objects = int(entry["objects"])
                if "under" in entry:
                    info.under = Counter(
                        {
                            tuple(map(int, v)) if isinstance(v, list) else int(v): int(n)
                            for v, n in entry["under"]
                        }
                    )
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


STATS_CACHE_VERSION = 1  # of the band statistics files in scan_cache_dir() / "stats"


def keyed_cache_file(folder: str, key: Any) -> Path:
    """The file of ``key`` (JSON data) in the cache folder ``scan_cache_dir() / folder``."""
    return scan_cache_dir() / folder / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.json"


def read_keyed_cache(file: Path, key: Any) -> Any | None:
    """The value stored in ``file`` under exactly ``key``, or None (absent, another key, unreadable); a hit is
    touched, so the least recently used files are the ones ``write_keyed_cache`` drops."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        data = json.loads(file.read_text())
        if data.get("key") == json.loads(json.dumps(key)):
            os.utime(file)
            return data["value"]
    return None


def write_keyed_cache(file: Path, key: Any, value: Any) -> None:
    """Store ``value`` under ``key`` atomically, keeping the MAX_SCAN_CACHES most recent files of the folder; an
    unwritable cache folder just means no caching."""
    text = json.dumps({"key": key, "value": value})
    with contextlib.suppress(OSError, SeglabError):
        atomic_write(file, lambda tmp: tmp.write_text(text))
        caches = sorted(file.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in caches[MAX_SCAN_CACHES:]:
            old.unlink(missing_ok=True)


def band_stats_of(scan: FolderScan, stems: list[str]) -> BandStats:
    """``BandStats`` of the images of ``stems`` (``normalize.band_stats`` over ``read_image`` of each, with the
    data set's bands): the statistics of ``data.normalize`` dataset, and what `data check` prints.

    Cached in ``scan_cache_dir() / "stats"``, keyed by every image's (absolute path, size, mtime_ns), the bands
    and a version: a second run, or `data check` after training, reads no image again; any change reads them all.
    An unreadable cache is ignored, an unwritable one just means no caching."""
    from seglab.data.normalize import BandStats, band_stats

    if not stems:
        raise DataError(
            f"no images in {scan.root} to compute the band statistics of (an empty training split?)"
        )
    paths = [scan.images[s] for s in stems]
    keys = [_ScanCache.stat(p) for p in paths]
    key = [STATS_CACHE_VERSION, scan.in_channels, keys]
    file = keyed_cache_file("stats", key)
    if None not in keys:
        cached = read_keyed_cache(file, key)
        if cached is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return BandStats.from_dict(cached)
    stats = band_stats([read_image(p, scan.in_channels) for p in paths])
    if None not in keys:
        write_keyed_cache(file, key, stats.to_dict())
    return stats


def _image_info(path: Path, decode: bool, cache: _ScanCache) -> tuple[_FileInfo, Record]:
    """Bands, type and size of an image: from the cache, by decoding it (``decode``), or from its header."""
    key = cache.stat(path)
    try:
        hit = cache.get(key, "image")
        if hit is not None:
            info = hit[0]
            check_pixels(path, info.size)  # the limits may have changed since
            if info.size[0] * info.size[1] * info.channels * np.dtype(info.dtype).itemsize > max_bytes():
                image_header(path)  # raises, naming the bytes limit
            return hit
        header = image_header(path)
        info = _FileInfo(header.size, header.bands, header.dtype)
        if not decode:
            return info, None
        arr = read_image(path)  # decoding finds corrupt and truncated files
        info = _FileInfo((arr.shape[1], arr.shape[0]), arr.shape[2], str(arr.dtype))
        w, h = info.size
        return info, cache.record(key, "image", w=w, h=h, channels=info.channels, dtype=info.dtype)
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
        if isinstance(path, MaskSource):
            return _FileInfo(path.size), None
        with open_image(
            path, check_bits=False
        ) as img:  # (a 16-bit colour mask's values are checked when read)
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
        stale = (
            deep and mask_key is not None and hit is not None and hit[1][1].get("mask") != list(mask_key[1:])
        )
        if hit is not None and not stale:  # (a deep scan compares the objects with the mask as it is now)
            check_pixels(path, hit[0].size)
            return hit
        if not deep and isinstance(path, MaskSource):
            return _FileInfo(path.size), None
        if not deep:
            with open_image(path) as img:
                if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                    raise DataError(instance_mode_message(path, img.mode))
                return _FileInfo(oriented_size(img)), None
        raw = read_mask_raw(path)
        if raw.ndim != 2:
            raise DataError(instance_mode_message(path, "RGB"))
        h, w = raw.shape
        objects = int(np.count_nonzero(np.bincount(raw.ravel().astype(np.intp, copy=False))[1:]))
        info = _FileInfo((w, h), objects=objects, under=_values_under(raw, mask))
        extra = (
            {}
            if info.under is None or mask_key is None
            else {
                "under": [[list(v) if isinstance(v, tuple) else v, n] for v, n in info.under.items()],
                "mask": list(mask_key[1:]),
            }
        )
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
    lut = value_map(spec)
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


def instance_mode_message(path: Path, mode: str) -> str:
    return (
        f"instance map {path} has mode {mode}; save it as a single-channel 8- or 16-bit PNG of object ids "
        f"(0 = no object)"
    )


def scan_folder(
    root: str | Path, ignore_index: int = 255, deep: bool = False, format: str = "auto"
) -> FolderScan:
    """Pair files, read headers, and (when needed or ``deep``) read every mask; collect every problem found.

    ``deep`` also decodes every image (finding corrupt files) and counts class pixels: the `data check` pass,
    and the check training runs before it starts. What decoding finds is cached per file (see ``_ScanCache``,
    ``scan_cache_dir``), so a second deep scan of an unchanged folder decodes nothing. Sizes are compared as
    seglab reads the files, after EXIF orientation. Problems that make the folder unusable as a whole (missing
    folders, no pairs, a malformed classes.yaml) raise DataError at once.

    The steps, in order (each adds its problems to the scan's list): ``_pair`` the files by stem (or the
    ``format``'s own layout, ``seglab.data.formats``: ``auto`` detects it), ``_probe`` each file,
    ``_check_probes`` (sizes, channels, cache entries), ``_find_classes``, ``_read_splits``. A classes.yaml in the
    root overrides the classes a format declares.
    """
    root = Path(root)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ConfigError(f"ignore_index must be an integer mask value, e.g. 255, not {ignore_index!r}")
    problems: list[str] = []
    fmt = check_format(format)
    fmt = detect(root) if fmt == "auto" else fmt
    layout = None if fmt == "folder" else read_layout(root, fmt)
    if layout is None:
        images, masks, instances = _pair(root, problems)
    else:
        images, masks, instances = layout.images, layout.masks, layout.instances
        problems += layout.problems
        if not set(images) & set(masks):
            raise DataError(f"{root} ({fmt} layout) holds no image with its annotation")
    yaml_path = root / "classes.yaml"
    declared = read_classes_yaml(yaml_path) if yaml_path.is_file() else None
    if declared is None and layout is not None:
        declared = layout.declared
    if declared is not None and "ignore_index" in declared:
        ignore_index = int(declared["ignore_index"])
    scan = FolderScan(
        root, images, masks, in_channels=1, classes=None, problems=problems, instances=instances, format=fmt
    )
    need_masks = deep or declared is None or declared.get("mask_format", "auto") == "auto"
    cache = _ScanCache(root)
    found = _check_probes(scan, _probe(scan, deep, need_masks, cache), cache, deep, need_masks)
    cache.save()
    _find_classes(scan, declared, found, ignore_index, deep)
    if layout is not None and layout.split_lists is not None:
        _keep_listed(
            scan, {name: (f"{fmt} split {name!r}", listed) for name, listed in layout.split_lists.items()}
        )
    else:
        _read_splits(scan)
    return scan


def _pair(root: Path, problems: list[str]) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path] | None]:
    """Step 1: the images, masks and (if instances/ exists) instance maps of ``root`` by stem; a file without
    its partner is a problem, a missing folder or no image/mask pair at all a DataError."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(
                f"{root} has no {sub}/ folder; a data set needs images/ and masks/ paired by file stem"
            )
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
    return images, masks, instances


def _probe(
    scan: FolderScan, deep: bool, need_masks: bool, cache: _ScanCache
) -> list[tuple[tuple[_FileInfo, Record], ...]]:
    """Step 2: per stem, what its image, its mask and its instance map (if any) hold, from the cache, their
    headers or (``deep``, ``need_masks``) by decoding them; a few threads overlap the files."""
    images, masks, instances = scan.images, scan.masks, scan.instances

    def read(stem: str) -> tuple[tuple[_FileInfo, Record], ...]:
        out = (_image_info(images[stem], deep, cache), _mask_info(masks[stem], need_masks, cache))
        if instances is not None and stem in instances:
            out += (_instance_info(instances[stem], deep, cache, masks[stem]),)
        return out

    stems = scan.stems
    workers = min(4, os.cpu_count() or 1, len(stems))
    if workers > 1:  # decoding (Pillow, NumPy) releases the GIL: threads overlap the files
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(read, stems))
    return [read(stem) for stem in stems]


@dataclass
class _Probed:
    """What the probes found that the class checks need, per stem."""

    value_counts: dict[str, Counter] = field(default_factory=dict)  # a mask's stored values (masks read)
    objects: dict[str, int] = field(default_factory=dict)  # an instance map's objects (deep scans)
    under: dict[str, Counter] = field(default_factory=dict)  # mask values under its objects (deep scans)


def _check_probes(
    scan: FolderScan,
    results: list[tuple[tuple[_FileInfo, Record], ...]],
    cache: _ScanCache,
    deep: bool,
    need_masks: bool,
) -> _Probed:
    """Step 3: each probe's error is a problem, its result a cache entry; an image (and an instance map) must
    have the size of its mask. Sets the scan's sizes, channels and (deep) objects."""
    found = _Probed()
    bands: dict[str, tuple[int, str]] = {}  # stem -> (bands, dtype) of the images read
    for stem, result in zip(scan.stems, results):
        for info, record in result:
            if info.error is not None:
                scan.problems.append(info.error)
            elif record is not None:
                cache.new[record[0]] = record[1]
        (img, _), (msk, _) = result[:2]
        if len(result) > 2 and result[2][0].error is None:
            _check_instance_probe(scan, stem, result[2][0], msk, deep, found)
        if img.error is not None or msk.error is not None:
            continue
        bands[stem] = (img.channels, img.dtype)
        if img.size != msk.size:
            scan.problems.append(
                f"image {scan.images[stem]} is {img.size[0]}x{img.size[1]} but mask {scan.masks[stem]} is "
                f"{msk.size[0]}x{msk.size[1]}; image and mask must have the same size"
            )
            continue
        scan.sizes[img.size] += 1
        if msk.counts is not None and need_masks:
            found.value_counts[stem] = msk.counts
    _set_bands(scan, bands)
    if scan.instances is not None and deep:
        scan.objects = found.objects
    return found


def _set_bands(scan: FolderScan, bands: dict[str, tuple[int, str]]) -> None:
    """The scan's ``dtype`` and ``in_channels``: 8-bit images as always (3 if any is colour, else 1: grayscale and
    RGB convert); any other set must have one band count, and the first image that differs is a problem."""
    dtypes = {d for _, d in bands.values()}
    scan.dtype = "uint8" if dtypes <= {"uint8"} else "float32" if "float32" in dtypes else "uint16"
    counts = Counter(c for c, _ in bands.values())
    if scan.dtype == "uint8":
        scan.in_channels = 3 if 3 in counts else 1
        return
    common = counts.most_common(1)[0][0]
    scan.in_channels = common
    example = next(stem for stem, (c, _) in bands.items() if c == common)
    for stem, (c, dtype) in bands.items():
        if c != common:
            scan.problems.append(
                f"image {scan.images[stem]} has {c} band(s) of {dtype} but the data set's images have {common} (e.g. "
                f"{scan.images[example]}); every image of a data set must have the same bands: fix or remove it"
            )
            break


def _check_instance_probe(
    scan: FolderScan, stem: str, inst: _FileInfo, msk: _FileInfo, deep: bool, found: _Probed
) -> None:
    """An instance map must have its mask's size; a deep scan keeps its objects and the mask values under them."""
    assert scan.instances is not None
    if inst.size != msk.size:
        scan.problems.append(
            f"instance map {scan.instances[stem]} is {inst.size[0]}x{inst.size[1]} but mask {scan.masks[stem]} "
            f"is {msk.size[0]}x{msk.size[1]}; they must have the same size"
        )
    elif deep:
        found.objects[stem] = inst.objects
        if inst.under is not None:
            found.under[stem] = inst.under


def _find_classes(
    scan: FolderScan, declared: dict[str, Any] | None, found: _Probed, ignore_index: int, deep: bool
) -> None:
    """Step 4: the classes (declared in classes.yaml or inferred), then every mask's values and the instance
    maps checked against them; a deep scan counts class pixels."""
    value_counts = found.value_counts
    scan.classes = resolve_classes(
        declared, value_counts, ignore_index, scan.root / "classes.yaml", scan.problems
    )
    if scan.classes is not None and value_counts:
        _check_values(scan, value_counts, deep)
        _check_classes(scan, value_counts, inferred=declared is None)
        ignore_declared = declared is not None and "ignore_index" in declared
        if scan.classes.mask_format == "index" and not ignore_declared:
            scan.problems += _binary_masks_read_as_ignore(scan, value_counts)
    if scan.classes is not None and found.under:
        scan.problems += _instances_on_background(scan, found.under)


def _read_splits(scan: FolderScan) -> None:
    """Step 5: splits/{train,val,test}.txt if splits/ exists; a listed stem without an image/mask pair is a
    problem (and left out)."""
    splits_dir = scan.root / "splits"
    if not splits_dir.is_dir():
        return
    lists = {}
    for name in SPLITS:
        f = splits_dir / f"{name}.txt"
        lists[name] = (
            str(f),
            [s.strip() for s in f.read_text().splitlines() if s.strip()] if f.is_file() else [],
        )
    _keep_listed(scan, lists)


def _keep_listed(scan: FolderScan, lists: dict[str, tuple[str, list[str]]]) -> None:
    """The scan's split lists: per split (its source, for messages; its stems), the stems that have an
    image/mask pair; a listed stem without one is a problem (and left out)."""
    stems = set(scan.stems)
    scan.split_lists = {}
    for name, (source, listed) in lists.items():
        missing = [s for s in listed if s not in stems]
        if missing:
            scan.problems.append(
                f"{source} lists {len(missing)} stems without an image/mask pair, e.g. {missing[0]!r}"
            )
        scan.split_lists[name] = [s for s in listed if s in stems]


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
        msg = _one_class_message(scan, value_counts, inferred)
        scan.problems.append(msg)
        scan.class_problems.append(msg)
        return
    lut = value_map(spec)
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


def _one_class_message(scan: FolderScan, value_counts: dict[str, Counter], inferred: bool) -> str:
    """Why a data set of one class (every mask holds only 0, or classes.yaml names one) cannot be trained."""
    spec = scan.classes
    assert spec is not None
    yaml_path = scan.root / "classes.yaml"
    ignore = spec.ignore_index
    if inferred:
        holds = "only the value 0" + (
            f" (and ignore_index {ignore})" if any(ignore in c for c in value_counts.values()) else ""
        )
        return (
            f"every mask in {scan.root / 'masks'} holds {holds}, so the data set has one class; binary masks "
            f"must use 255 for the foreground (0 = background), or declare the classes in {yaml_path} "
            f"(names: [...])"
        )
    return (
        f"{yaml_path} names one class ({spec.names[0]!r}); a segmentation data set needs at least two "
        f"(e.g. names: [background, {spec.names[0]}])"
    )


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
    lut = value_map(spec)
    for stem, counts in value_counts.items():
        own = per_image[stem] = np.zeros(spec.num_classes, np.int64)
        for value, count in counts.items():
            label = lut(value)
            if label is None:
                scan.problems.append(bad_value_message(scan.masks[stem], value, spec))
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
