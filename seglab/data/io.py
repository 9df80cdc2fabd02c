"""Reading images and masks, writing PNGs atomically. Every failure is a DataError naming the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.errors import ConfigError, DataError
from seglab.files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_PIXELS = 20_000 * 20_000  # beyond this an input is almost surely a mistake (and would exhaust memory)

# Distinct colours for classes without a palette; index 0 (usually background) is black.
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)  # fmt: skip


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The first ``num_classes`` default colours (repeating a hashed colour beyond the table)."""
    out = list(DEFAULT_PALETTE[:num_classes])
    for i in range(len(out), num_classes):
        out.append(((i * 97) % 256, (i * 57 + 80) % 256, (i * 29 + 160) % 256))
    return out


def class_index(names: Sequence[str], cls: str | int) -> int:
    """The index of a class given by name or index (a string of digits counts as an index)."""
    if isinstance(cls, int) or str(cls).isdigit():
        i = int(cls)
        if 0 <= i < len(names):
            return i
    elif cls in names:
        return list(names).index(cls)
    raise ConfigError(
        f"unknown class {cls!r}; the classes are {', '.join(f'{i}={n}' for i, n in enumerate(names))}"
    )


def open_image(path: Path) -> Image.Image:
    """Open an image lazily (header only); DataError if missing, unreadable or absurdly large."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"file {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read {path}: {e.__class__.__name__}: {e}; is it a valid image?") from None
    w, h = img.size
    if w * h > MAX_PIXELS or w < 1 or h < 1:
        raise DataError(f"{path} is {w}x{h} pixels, outside the supported range (1 .. {MAX_PIXELS} pixels)")
    return img


def _load(path: Path) -> Image.Image:
    img = open_image(path)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode {path}: {e}; the file is corrupt or truncated") from None
    return img


def image_channels(img: Image.Image, path: Path) -> int:
    """1 for grayscale modes, 3 for colour modes; DataError for modes we do not read (e.g. 16-bit)."""
    if img.mode in ("L", "1", "LA"):
        return 1
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "PA"):
        return 3
    raise DataError(
        f"image {path} has mode {img.mode}; seglab reads 8-bit grayscale or RGB images (convert it)"
    )


def read_image(path: Path, channels: int | None = None) -> np.ndarray:
    """Image as uint8 (H, W, C) with C = ``channels`` (1 or 3) or, if None, the file's own channel count."""
    img = _load(path)
    c = image_channels(img, path) if channels is None else channels
    img = img.convert("L" if c == 1 else "RGB")
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    return arr[..., None] if arr.ndim == 2 else arr


def read_mask_raw(path: Path) -> np.ndarray:
    """Mask pixels as stored: (H, W) integers for L/P/I/1 masks, (H, W, 3) uint8 for colour masks."""
    img = _load(path)
    if img.mode in ("RGB", "RGBA"):
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if img.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        arr = np.array(img)
        return arr.astype(np.uint8) if img.mode == "1" else arr
    raise DataError(
        f"mask {path} has mode {img.mode}; use a single-channel index PNG (L or P) or an RGB colour mask"
    )


def save_png(path: Path, array: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> None:
    """Write uint8 (H, W) or (H, W, 3) as PNG; with ``palette`` an index mask becomes a P-mode image."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if palette is not None and arr.ndim == 2 and arr.max(initial=0) < 256:
        img = Image.fromarray(arr.astype(np.uint8), mode="P")
        flat = [v for colour in palette for v in colour][: 256 * 3]
        img.putpalette(flat + [0] * (768 - len(flat)))
    else:
        img = Image.fromarray(arr.astype(np.uint8))
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
