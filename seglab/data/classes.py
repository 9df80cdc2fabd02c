"""What the mask values mean: ``ClassSpec``, reading and checking ``classes.yaml``, inferring the classes from
the masks' values, and decoding a stored mask into class labels.

Masks are single-channel index PNGs (L or P), binary 0/255 masks (read as 0/1), or RGB colour masks mapped
through ``colors`` in classes.yaml. Without classes.yaml the format and the number of classes are inferred from
the masks: masks holding only 0 and 255 are binary, anything else is an index mask with
``num_classes = max label + 1`` (``ignore_index`` excluded; whether that count is plausible is checked by the
scan, see ``seglab.data.scan``). A classes.yaml with two names, no ``ignore_index`` and ``mask_format`` auto reads
0/255 masks as binary too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from seglab.data.io import default_palette
from seglab.errors import DataError

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


_YAML_KEYS = ("names", "colors", "mask_format", "ignore_index", "ignore_color")


def _is_colour(c: Any) -> bool:
    return (
        isinstance(c, list)
        and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
    )


def read_classes_yaml(path: Path) -> dict[str, Any]:
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
    _check_colours(path, data, len(names))
    _check_ignore_index(path, data, names)
    return data


def _check_colours(path: Path, data: dict[str, Any], num_names: int) -> None:
    """classes.yaml's ``colors`` (one distinct [r, g, b] per name) and ``ignore_color`` (no class's colour)."""
    colors = data.get("colors")
    if colors is not None:
        if not isinstance(colors, list) or len(colors) != num_names or not all(map(_is_colour, colors)):
            bad = next((c for c in colors if not _is_colour(c)), None) if isinstance(colors, list) else colors
            got = f"{len(colors)} entries" if bad is None else repr(bad)
            raise DataError(
                f"{path}: 'colors' needs one [r, g, b] of integers 0..255 per name ({num_names}), got {got}"
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


def _check_ignore_index(path: Path, data: dict[str, Any], names: list[str]) -> None:
    """classes.yaml's ``ignore_index``, if declared: an integer mask value outside the classes."""
    if "ignore_index" not in data:
        return
    value = data["ignore_index"]
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535
    if not ok or value < len(names):
        why = f"is class {value} ({names[value]!r})" if ok else f"is {value!r}"
        raise DataError(
            f"{path}: 'ignore_index' {why} but must be an integer mask value outside the classes "
            f"0..{len(names) - 1}, e.g. ignore_index: 255"
        )


def resolve_classes(
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


def value_map(spec: ClassSpec) -> Callable[[Any], int | None]:
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


def bad_value_message(path: Path, value: Any, spec: ClassSpec) -> str:
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
            raise DataError(bad_value_message(path, bad, spec))
        return labels
    if raw.ndim == 3:
        raise DataError(bad_value_message(path, (0, 0, 0), spec))
    labels = raw.astype(np.int64)
    if spec.mask_format == "binary":
        bad = (labels != 0) & (labels != 255)
        if bad.any():
            raise DataError(bad_value_message(path, int(labels[bad][0]), spec))
        return labels // 255
    bad = ((labels < 0) | (labels >= spec.num_classes)) & (labels != spec.ignore_index)
    if bad.any():
        raise DataError(bad_value_message(path, int(labels[bad][0]), spec))
    return labels
