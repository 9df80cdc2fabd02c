"""Reading images and masks, writing PNGs atomically. Every failure is a DataError naming the file.

Every image and mask is read through ``load_image``: one pixel limit (``max_pixels()``, checked from the header
before decoding), EXIF orientation applied, and for images one mode policy (``image_channels``: 8-bit only)."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from seglab.errors import ConfigError, DataError
from seglab.files import PNG_SOFTWARE, atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_PIXELS = 2**28  # the default of ``max_pixels()``: 268 M pixels, e.g. 16384 x 16384
_OPEN_LOCK = threading.Lock()

# Distinct colours for classes without a palette; index 0 (usually background) is black.
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
)


class NamedBytes(io.BytesIO):
    """Image bytes (an upload) that every reader here takes in place of a path; messages name it ``name``."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__  # Pillow's messages show repr(fp): the name, not <NamedBytes object at 0x...>


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


def max_pixels() -> int:
    """The largest image seglab reads, in pixels: ``$SEGLAB_MAX_PIXELS`` if set, else ``MAX_PIXELS`` (2**28, e.g.
    16384 x 16384). Larger inputs are almost surely a mistake and would exhaust memory. This one limit governs:
    Pillow's own decompression-bomb limit is set from it (so Pillow never refuses or warns below it), and every
    image is checked against it from its header, before any pixel is decoded."""
    value = os.environ.get("SEGLAB_MAX_PIXELS", "").strip().replace("_", "")
    if not value:
        return MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"SEGLAB_MAX_PIXELS={value!r} must be a whole number of pixels, e.g. {MAX_PIXELS}")
    return int(value)


class ImageTooLarge(DataError):
    """An image above ``max_pixels()`` (the service answers it with 413, other bad images with 400)."""


def _too_large(path: Path | NamedBytes, what: str, limit: int) -> DataError:
    return ImageTooLarge(
        f"{path} is {what}, above the limit of {limit:,} pixels; shrink or tile it, or raise the limit with "
        f"the environment variable SEGLAB_MAX_PIXELS"
    )


def check_pixels(path: Path | NamedBytes, size: tuple[int, int]) -> None:
    """DataError if an image of ``size`` (w, h) is empty or above ``max_pixels()``."""
    w, h = size
    limit = max_pixels()
    if w < 1 or h < 1:
        raise DataError(f"{path} is {w}x{h} pixels, an empty image; replace or remove it")
    if w * h > limit:
        raise _too_large(path, f"{w}x{h} = {w * h:,} pixels", limit)


def open_image(path: Path | NamedBytes, formats: Sequence[str] | None = None) -> Image.Image:
    """Open an image lazily (header only); DataError if missing, unreadable, empty or above ``max_pixels()``, or
    with ``formats`` (Pillow format names, e.g. the service's allowlist) in any other format: checked from the
    header, so no other decoder ever runs on the data."""
    limit = max_pixels()
    try:
        # Pillow warns above its limit and refuses above twice it; seglab refuses above the same limit, with a
        # message that says how to raise it, so Pillow's warning is silenced (under a lock: threads that scan
        # a folder must not restore each other's warning filters)
        with _OPEN_LOCK, warnings.catch_warnings():
            Image.MAX_IMAGE_PIXELS = limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"file {path} does not exist") from None
    except Image.DecompressionBombError:
        raise _too_large(path, f"over {2 * limit:,} pixels", limit) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e.__class__.__name__}: {e}; is it a valid image?") from None
    try:
        if formats is not None and img.format not in formats:
            raise DataError(
                f"{path} is in {img.format} format; only {', '.join(formats)} are accepted here: "
                f"convert it to PNG"
            )
        check_pixels(path, img.size)
        check_sample_bits(img, path)
        check_tiff_tiles(img, path)
    except DataError:
        img.close()
        raise
    return img


def check_tiff_tiles(img: Image.Image, path: Path | NamedBytes) -> None:
    """DataError for a TIFF whose tiles hold more pixels than the image (and than 1024 x 1024): libtiff allocates
    a whole tile before decoding it, so a 200-byte 64 x 64 file declaring 16384 x 16384 tiles costs 800 MB."""
    if img.format != "TIFF":
        return
    tags = getattr(img, "tag_v2", {})
    tw, th = tags.get(322), tags.get(323)  # TileWidth, TileLength
    if isinstance(tw, int) and isinstance(th, int) and tw * th > max(img.size[0] * img.size[1], 2**20):
        raise DataError(
            f"{path} is a {img.size[0]}x{img.size[1]} TIFF with {tw}x{th} tiles, larger than the "
            f"image; rewrite it without tiles or with small ones (e.g. 256 x 256)"
        )


# modes in which Pillow hands out 8 bits per sample, even when the file stores more (it keeps the high byte)
_EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr")


def sample_bits(img: Image.Image) -> int:
    """Bits per sample stored in an opened image's file, from its header (nothing is decoded): the PNG bit
    depth (Pillow's raw mode ``...;16B``), TIFF's BitsPerSample; 8 for every other format."""
    if img.format == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(258) or (8,)
        return max(int(b) for b in (bits if isinstance(bits, tuple) else (bits,)))
    if img.format == "PNG" and img.tile:
        args = img.tile[0].args
        rawmode = args[0] if isinstance(args, tuple) else args
        return 16 if isinstance(rawmode, str) and rawmode.endswith(";16B") else 8
    return 8


def check_sample_bits(img: Image.Image, path: Path | NamedBytes) -> None:
    """DataError for a file with more than 8 bits per sample that Pillow opens in an 8-bit mode (16-bit RGB or
    RGBA PNG and TIFF): Pillow would silently keep the high byte, so 12-bit camera data comes out near-black.
    Refused as 16-bit grayscale is (``image_channels``); 16-bit single-channel masks open as I;16 and pass."""
    bits = sample_bits(img)
    if bits > 8 and img.mode in _EIGHT_BIT_MODES:
        raise DataError(
            f"image {path} has {bits} bits per sample ({img.format} {img.mode}); seglab reads 8-bit grayscale or "
            f"RGB images: convert it to 8 bits (choosing how its values map to 0..255)"
        )


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image, read without decoding pixels (for a PNG, Pillow's
    ``getexif`` would decode the image to look for an eXIf chunk after the pixel data: only the header is read)."""
    try:
        exif = Image.Image.getexif(img) if img.format == "PNG" else img.getexif()
        value = exif.get(ExifTags.Base.Orientation, 1)
    except Exception:  # a broken EXIF block: Pillow's exif_transpose would fail on it too, when decoding
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(w, h) of an opened image as seglab reads it: EXIF orientations 5..8 (quarter turns) swap w and h."""
    w, h = img.size
    return (h, w) if _orientation(img) >= 5 else (w, h)


def load_image(path: Path | NamedBytes, formats: Sequence[str] | None = None) -> Image.Image:
    """The one loading function for images and masks: open (header checks, ``open_image``), decode, and apply the
    EXIF orientation (``ImageOps.exif_transpose``) so that pixels come out as photo viewers show them. DataError
    naming the file if it is missing, unreadable, too large, corrupt or truncated (``formats``: see ``open_image``)."""
    img = open_image(path, formats)
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except Image.DecompressionBombError:  # a tiled TIFF's tiles are checked when decoded
        raise _too_large(path, "too large to decode", max_pixels()) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error) as e:
        raise DataError(f"cannot decode {path}: {e}; the file is corrupt or truncated") from None
    return img


def image_channels(img: Image.Image, path: Path | NamedBytes) -> int:
    """1 for grayscale modes, 3 for colour modes; DataError for modes we do not read (16-bit, 32-bit, float).

    The policy for 16-bit and float images is to refuse them, here, in the one place all readers go through:
    mapping their values to 8 bits has no single right answer (full range? the data's own range?), so the user
    chooses it when converting."""
    if img.mode in ("L", "1", "LA", "La"):
        return 1
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "PA", "RGBX", "RGBa"):
        return 3
    depth = {"F": "32-bit float", "I": "32-bit integer"}.get(img.mode, "16-bit" if "16" in img.mode else "")
    raise DataError(
        f"image {path} has mode {img.mode}{f' ({depth})' if depth else ''}; seglab reads 8-bit grayscale or RGB "
        f"images: convert it to 8 bits (choosing how its values map to 0..255)"
    )


def read_image(
    path: Path | NamedBytes, channels: int | None = None, formats: Sequence[str] | None = None
) -> np.ndarray:
    """Image as uint8 (H, W, C) with C = ``channels`` (1 or 3) or, if None, the file's own channel count.

    Training, evaluation and prediction all read images here: the mode is always checked (``image_channels``),
    whatever ``channels`` asks for, and the EXIF orientation is applied (``load_image``). ``formats``: accept
    only these Pillow formats (``open_image``)."""
    if channels not in (None, 1, 3):
        raise ConfigError(f"images are read with 1 or 3 channels, not {channels}")
    img = load_image(path, formats)
    own = image_channels(img, path)
    c = own if channels is None else channels
    if img.mode == "P" and "transparency" in img.info:  # the same pixels, without Pillow's two-line warning
        img = img.convert("RGBA")
    img = img.convert("L" if c == 1 else "RGB")
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    return arr[..., None] if arr.ndim == 2 else arr


def read_mask_raw(path: Path) -> np.ndarray:
    """Mask pixels as stored: (H, W) integers for L/P/I/1 masks, (H, W, 3) uint8 for colour masks."""
    img = load_image(path)
    if img.mode in ("RGB", "RGBA"):
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if img.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        arr = np.array(img)
        return arr.astype(np.uint8) if img.mode == "1" else arr
    raise DataError(
        f"mask {path} has mode {img.mode}; use a single-channel index PNG (L or P) or an RGB colour mask"
    )


def save_png(path: Path, array: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> None:
    """Write uint8 (H, W) or (H, W, 3) as PNG; with ``palette`` an index mask becomes a P-mode image; uint16
    (H, W) (e.g. an instance label map) is written as a 16-bit grayscale PNG."""
    img = png_image(array, palette)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=_png_info()))


def png_bytes(array: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> bytes:
    """The bytes :func:`save_png` would write for ``array`` (the service answers with them)."""
    buf = io.BytesIO()
    png_image(array, palette).save(buf, format="PNG", pnginfo=_png_info())
    return buf.getvalue()


def _png_info():
    """The ``Software: seglab`` text chunk of every PNG seglab writes: how a command recognises its own earlier
    outputs (``seglab.files.is_seglab_png``) and replaces them, but never a user's PNG of the same name."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    return info


def png_image(array: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> Image.Image:
    """The PIL image :func:`save_png` writes (see there)."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint16 and arr.ndim == 2:
        img = Image.fromarray(arr)
    elif palette is not None and arr.ndim == 2 and arr.max(initial=0) < 256:
        img = Image.fromarray(arr.astype(np.uint8), mode="P")
        flat = [v for colour in palette for v in colour][: 256 * 3]
        img.putpalette(flat + [0] * (768 - len(flat)))
    else:
        img = Image.fromarray(arr.astype(np.uint8))
    return img
