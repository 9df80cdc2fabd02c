"""SyntheticShapes: the built-in data set, generated deterministically from a seed (no files, no downloads).

Each RGB image has a textured, noisy background and several circles, rectangles and triangles that may touch
or overlap (later shapes occlude earlier ones). Object colours are drawn from one shared range for every
class, so colour says nothing about the class: a model has to learn shape. Background dominates and the
triangle class is rare (about 3 % of pixels).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from seglab.errors import ConfigError

CLASSES: tuple[str, ...] = ("background", "circle", "rectangle", "triangle")
PALETTE: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25))
# Probability that an object is a circle, rectangle or triangle: triangles are the rare class.
SHAPE_PROBS = (0.45, 0.45, 0.10)


@dataclass(frozen=True)
class SyntheticShapes:
    """A deterministic, indexable data set: ``ds[i]`` -> (image uint8 (H, W, 3), mask uint8 (H, W)).

    Item ``i`` depends only on ``(seed, i, size)``, so any subset can be regenerated anywhere.
    """

    num_images: int = 1000
    size: int = 128
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 6
    noise: float = 12.0

    classes = CLASSES
    palette = PALETTE

    def __post_init__(self) -> None:
        if self.size < 16 or self.size > 4096:
            raise ConfigError(f"SyntheticShapes size must be within 16..4096, got {self.size}")
        if self.num_images < 1:
            raise ConfigError(f"SyntheticShapes needs num_images >= 1, got {self.num_images}")

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        return render(np.random.default_rng([self.seed, index]), self.size, self)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bilinearly to (size, size, channels)."""
    coarse = rng.normal(size=(cells + 1, cells + 1, channels))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = (t - i0)[:, None]
    rows = coarse[i0] * (1 - f)[..., None] + coarse[i0 + 1] * f[..., None]  # (size, cells+1, ch)
    cols = rows[:, i0] * (1 - f.T)[..., None] + rows[:, i0 + 1] * f.T[..., None]
    return cols


def _shape_mask(rng: np.random.Generator, kind: int, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """Boolean mask of one random shape of ``kind`` (1 circle, 2 rectangle, 3 triangle)."""
    s = size / 128.0
    cy, cx = rng.uniform(0.1 * size, 0.9 * size, size=2)
    if kind == 1:
        r = rng.uniform(9, 22) * s
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    theta = rng.uniform(0, np.pi)
    c, si = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * si
    v = -(xx - cx) * si + (yy - cy) * c
    if kind == 2:
        h, w = rng.uniform(8, 22, size=2) * s
        return (np.abs(u) <= w) & (np.abs(v) <= h)
    r = rng.uniform(13, 28) * s  # circumradius of an equilateral triangle
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):  # three half-planes whose normals point to the vertices
        a = theta + 2 * np.pi * k / 3
        inside &= (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a) <= r / 2
    return inside


def render(rng: np.random.Generator, size: int, spec: SyntheticShapes) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its index mask from ``rng``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg_colour = rng.uniform(40, 215, size=3)
    image = bg_colour + 28 * _smooth_noise(rng, size, 4, 3)
    stripes = np.sin((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) * rng.uniform(0.2, 0.6))
    image += rng.uniform(0, 14) * stripes[..., None]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(spec.min_objects, spec.max_objects + 1)):
        kind = int(rng.choice(3, p=SHAPE_PROBS)) + 1
        inside = _shape_mask(rng, kind, yy, xx, size)
        while True:  # same colour range for every class, but visibly different from the background
            colour = rng.uniform(0, 255, size=3)
            if np.linalg.norm(colour - bg_colour) > 90:
                break
        shade = 18 * ((xx - xx.mean()) * rng.uniform(-1, 1) + (yy - yy.mean()) * rng.uniform(-1, 1)) / size
        image[inside] = colour + shade[inside][:, None]
        mask[inside] = kind
    image += rng.normal(0, spec.noise, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_folder(
    out: str | Path,
    num_images: int = 1000,
    size: int = 128,
    seed: int = 0,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    overwrite: bool = False,
) -> Path:
    """Write SyntheticShapes as a folder data set (images/, masks/, classes.yaml, splits/).

    The folder is built under a temporary name and renamed, so a failure leaves nothing half-written. ``out`` must
    not lie in a data set or a run folder; with ``overwrite`` it may be an earlier SyntheticShapes folder (see
    :func:`is_synthetic_folder`), which is then replaced, but nothing else: never a run or another data set.
    """
    from seglab.files import ensure_dir

    out = Path(out)
    _check_out(out, overwrite)
    ds = SyntheticShapes(num_images=num_images, size=size, seed=seed)
    ensure_dir(out.parent, "parent folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_items(tmp, ds, num_images, val_ratio, test_ratio)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a folder's usual permissions, not the 0700 of a temporary one
        if out.exists():  # the old folder goes aside first: a failure in between leaves one of them in place
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    """DataError unless ``out`` may take the folder: not a file, not in a run or data set, and empty or (with
    ``overwrite``) an earlier SyntheticShapes folder."""
    from seglab.errors import DataError
    from seglab.files import data_set_root, run_root

    if out.exists() and not out.is_dir():
        raise DataError(f"data folder {out} is blocked by a file of that name; choose another --out")
    for what, root in (("run folder", run_root(out)), ("data set", data_set_root(out.parent))):
        if root is not None:
            where = f"is a {what}" if root == out.resolve() else f"lies in the {what} {root}"
            raise DataError(
                f"data synth --out {out} {where}; seglab never writes a data set there: choose a folder outside it"
            )
    if out.exists() and any(out.iterdir()):
        if not is_synthetic_folder(out):
            raise DataError(
                f"{out} exists and is not a SyntheticShapes folder of seglab (--overwrite replaces only those); "
                "choose another --out"
            )
        if not overwrite:
            raise DataError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


def _write_items(
    tmp: Path, ds: SyntheticShapes, num_images: int, val_ratio: float, test_ratio: float
) -> None:
    """The images, masks, classes.yaml and splits/ of ``ds`` into the folder ``tmp``."""
    from seglab.data.io import save_png

    width = len(str(num_images - 1))
    stems = [f"{i:0{width}d}" for i in range(num_images)]
    for stem, (image, mask) in zip(stems, ds):
        save_png(tmp / "images" / f"{stem}.png", image)
        save_png(tmp / "masks" / f"{stem}.png", mask, PALETTE)
    classes = {"names": list(CLASSES), "colors": [list(c) for c in PALETTE], "mask_format": "index"}
    (tmp / "classes.yaml").write_text(yaml.safe_dump(classes, sort_keys=False))
    n_test, n_val = round(test_ratio * num_images), round(val_ratio * num_images)
    parts = {
        "test": stems[:n_test],
        "val": stems[n_test : n_test + n_val],
        "train": stems[n_test + n_val :],
    }
    (tmp / "splits").mkdir()
    for name, part in parts.items():
        (tmp / "splits" / f"{name}.txt").write_text("".join(s + "\n" for s in part))


def is_synthetic_folder(path: str | Path) -> bool:
    """Whether folder ``path`` is a SyntheticShapes folder as :func:`write_folder` writes it: its classes.yaml
    is that data set's (names, colours, mask format) and it holds nothing but images/, masks/, classes.yaml and
    splits/ (an empty folder counts too)."""
    from seglab.files import read_yaml_file

    path = Path(path)
    names = {p.name for p in path.iterdir()}
    if not names:
        return True
    if not names <= {"classes.yaml", "images", "masks", "splits"} or "classes.yaml" not in names:
        return False
    doc = read_yaml_file(path / "classes.yaml")
    expected = {"names": list(CLASSES), "colors": [list(c) for c in PALETTE], "mask_format": "index"}
    return doc == expected and all((path / n).is_dir() for n in names - {"classes.yaml"})


def write_multiband(
    out: str | Path,
    num_images: int = 24,
    size: int = 48,
    bands: int = 5,
    signal_band: int = 3,
    seed: int = 0,
    dtype: str = "uint16",
) -> Path:
    """A binary folder data set of ``bands``-band TIFFs (``dtype`` uint16 or float32) in which the objects of the
    masks are visible only in band ``signal_band`` (0-based): every band holds the same kind of bright
    rectangles on the same noise, but those of the other bands are decoys drawn independently of the mask. So
    every band has the same statistics, and a pipeline that drops, reorders or averages bands scores at chance
    (tests/data/test_data_multiband.py). Split 2/3 train, 1/6 val, 1/6 test (splits/)."""
    import tifffile

    from seglab.data.io import save_png
    from seglab.files import ensure_dir

    out = Path(out)
    for sub in ("images", "masks", "splits"):
        ensure_dir(out / sub)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def rectangles() -> np.ndarray:
        area = np.zeros((size, size), bool)
        for _ in range(rng.integers(2, 5)):
            h, w = rng.integers(size // 6, size // 3, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            area |= (yy >= y) & (yy < y + h) & (xx >= x) & (xx < x + w)
        return area

    stems = [f"{i:03d}" for i in range(num_images)]
    for stem in stems:
        mask = rectangles()
        layers = [mask if b == signal_band else rectangles() for b in range(bands)]
        image = np.stack([1000.0 + 800.0 * m + rng.normal(0, 120, m.shape) for m in layers], axis=0)
        data = image.astype(np.float32) if dtype == "float32" else np.clip(image, 0, 65535).astype(np.uint16)
        tifffile.imwrite(
            out / "images" / f"{stem}.tif", data, photometric="minisblack", planarconfig="separate"
        )
        save_png(out / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
    n_eval = max(1, num_images // 6)
    parts = {"test": stems[:n_eval], "val": stems[n_eval : 2 * n_eval], "train": stems[2 * n_eval :]}
    for name, part in parts.items():
        (out / "splits" / f"{name}.txt").write_text("".join(s + "\n" for s in part))
    return out
