"""Reading images and masks, writing PNGs atomically. Every failure is a DataError naming the file.

Every image is read through ``read_image`` (its header through ``image_header``): 8-bit images through Pillow,
as they always were; 16-bit, float and multi-band images (TIFF through ``tifffile``, 16-bit colour PNG through
``imagecodecs``, ``.npy`` through NumPy) in their own type, uint16 or float32, never mapped to 8 bits here (that
is the normalisation's job, ``seglab.data.normalize``). Masks are read through ``load_image`` (Pillow). The
limits hold for all of them, from the header, before any pixel is decoded: ``max_pixels()`` (a pixel count) and
``max_bytes()`` (pixels x bands x bytes per sample), and the EXIF/TIFF orientation is applied."""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from seglab.errors import ConfigError, DataError
from seglab.files import PNG_SOFTWARE, atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
MAX_PIXELS = 2**28  # the default of ``max_pixels()``: 268 M pixels, e.g. 16384 x 16384
MAX_BYTES = 2**30  # the default of ``max_bytes()``: 1 GiB decoded, e.g. MAX_PIXELS of 8-bit RGB (and RGBA)
IMAGE_DTYPES = ("uint8", "uint16", "float32")  # what ``read_image`` gives; other numbers become float32
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
    return _env_limit("SEGLAB_MAX_PIXELS", MAX_PIXELS, "pixels")


def max_bytes() -> int:
    """The most bytes a decoded image may take (pixels x bands x bytes per sample): ``$SEGLAB_MAX_BYTES`` if set,
    else ``MAX_BYTES`` (1 GiB: ``MAX_PIXELS`` of 8-bit RGB fits, so the pixel limit stays the one that binds for
    photos). It bounds what the pixel count alone does not: 13 bands of float32 take 52 bytes a pixel."""
    return _env_limit("SEGLAB_MAX_BYTES", MAX_BYTES, "bytes")


def _env_limit(name: str, default: int, unit: str) -> int:
    """A positive whole number from the environment variable ``name`` (``_`` separators allowed), else
    ``default``; ConfigError naming the variable for anything else."""
    value = os.environ.get(name, "").strip().replace("_", "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r} must be a whole number of {unit}, e.g. {default}")
    return int(value)


class ImageTooLarge(DataError):
    """An image above ``max_pixels()`` (the service answers it with 413, other bad images with 400)."""


class TooManyBytes(ImageTooLarge):
    """An image that decodes to more than ``max_bytes()`` (its pixels x bands x bytes per sample)."""


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


def open_image(
    path: Path | NamedBytes, formats: Sequence[str] | None = None, check_bits: bool = True
) -> Image.Image:
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
        if check_bits:
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
    return _decoded(open_image(path, formats), path)


def _decoded(img: Image.Image, path: Path | NamedBytes) -> Image.Image:
    """An image opened by ``open_image``, decoded and turned by its EXIF orientation (see ``load_image``)."""
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except Image.DecompressionBombError:  # a tiled TIFF's tiles are checked when decoded
        raise _too_large(path, "too large to decode", max_pixels()) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error) as e:
        raise DataError(f"cannot decode {path}: {e}; the file is corrupt or truncated") from None
    return img


def image_channels(img: Image.Image, path: Path | NamedBytes) -> int:
    """1 for Pillow's grayscale modes, 3 for its colour modes (the 8-bit images read through Pillow); DataError
    for the modes ``read_image`` does not take from Pillow (they are read in their own type, see there)."""
    if img.mode in ("L", "1", "LA", "La"):
        return 1
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "PA", "RGBX", "RGBa"):
        return 3
    if img.mode in ("I;16", "I;16L", "I;16B", "I", "F"):
        return 1
    raise DataError(
        f"image {path} has mode {img.mode}, which seglab does not read; convert it to PNG or TIFF"
    )


@dataclass(frozen=True)
class ImageHeader:
    """What an image file holds, from its header: (w, h) as seglab reads it (orientation applied), its bands,
    and the type ``read_image`` gives (one of ``IMAGE_DTYPES``); ``reader``: "pillow", "tiff", "png16" or "npy"."""

    size: tuple[int, int]
    bands: int
    dtype: str
    format: str
    reader: str = "pillow"
    orientation: int = 1
    axes: str = "YXS"  # the tifffile series axes of a TIFF read by tifffile
    frames: int = 1  # an animation's frames, a TIFF's pages of several samples each: the first is read

    @property
    def nbytes(self) -> int:
        return self.size[0] * self.size[1] * self.bands * np.dtype(self.dtype).itemsize


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def _head(path: Path | NamedBytes, n: int = 8) -> bytes:
    if isinstance(path, NamedBytes):
        return path.getvalue()[:n]
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise DataError(f"file {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _own_dtype(dtype: np.dtype, path: Path | NamedBytes) -> str:
    """The type ``read_image`` gives for samples of ``dtype``: uint8 and uint16 as they are, bool as uint8,
    every other real number as float32; DataError for complex numbers and anything else."""
    if dtype.kind == "c":
        raise DataError(
            f"image {path} holds complex numbers ({dtype}); seglab reads real-valued images: save the magnitude "
            f"(np.abs) or the real part"
        )
    if dtype in (np.uint8, np.bool_):
        return "uint8"
    if dtype == np.uint16:
        return "uint16"
    if dtype.kind in "uif":
        return "float32"
    raise DataError(f"image {path} holds samples of type {dtype}, not numbers seglab reads")


def _check_bytes(path: Path | NamedBytes, header: ImageHeader) -> None:
    check_pixels(path, header.size)
    limit = max_bytes()
    if header.nbytes > limit:
        w, h = header.size
        raise TooManyBytes(
            f"{path} is {w}x{h} pixels of {header.bands} band(s) of {header.dtype}, {header.nbytes:,} bytes "
            f"decoded, above the limit of {limit:,} bytes; shrink or tile it, or raise the limit with the "
            f"environment variable SEGLAB_MAX_BYTES"
        )


def _tiff_layout(axes: str, shape: Sequence[int], path: Path | NamedBytes) -> tuple[int, int, int, int]:
    """(h, w, bands, frames) of a tifffile series: the Y and X axes, and at most one other axis of length > 1
    (samples, channels, pages ...) as the bands; pages of several samples each are frames (the first is read, as
    for an animation). DataError for any other stack (e.g. time x channels of one sample)."""
    extra = [(a, n) for a, n in zip(axes, shape) if a not in "YX" and n > 1]
    frames = 1
    if len(extra) == 2 and extra[1][0] == "S":
        frames, extra = extra[0][1], extra[1:]
    if "Y" not in axes or "X" not in axes or len(extra) > 1:
        raise DataError(
            f"image {path} is a TIFF of shape {tuple(shape)} (axes {axes}); seglab reads one 2-D image of one or "
            f"more bands per file: save each image of the stack as its own file"
        )
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    return h, w, extra[0][1] if extra else 1, frames


def _tiff_header(path: Path | NamedBytes) -> ImageHeader:
    """The header of a TIFF through tifffile. 8-bit TIFFs of at most three bands (or RGBA, CMYK) go on to Pillow,
    which applies their photometric interpretation (palette, YCbCr, CMYK) as it always did."""
    import tifffile

    if isinstance(path, NamedBytes):
        path.seek(0)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.pages[0] if len(series.pages) else tif.pages.first
            axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
            tiled = page.is_tiled
            tile = (page.tilewidth, page.tilelength)
            orientation = int(page.tags.valueof(274, 1) or 1)
            samples, photometric = page.samplesperpixel, int(page.photometric)
            alpha = bool(page.extrasamples) and page.extrasamples[0] in (1, 2)
    except DataError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, KeyError ... on a broken file
        raise DataError(f"cannot read {path}: {e.__class__.__name__}: {e}; is it a valid TIFF?") from None
    own = _own_dtype(dtype, path)
    h, w, bands, frames = _tiff_layout(axes, shape, path)
    if tiled and tile[0] * tile[1] > max(w * h, 2**20):
        raise DataError(
            f"{path} is a {w}x{h} TIFF with {tile[0]}x{tile[1]} tiles, larger than the image; rewrite it without "
            f"tiles or with small ones (e.g. 256 x 256)"
        )
    pillow = (
        own == "uint8"
        and bands == samples
        and (samples <= 3 or (samples == 4 and (alpha or photometric == 5)))
        and orientation
        < 5  # Pillow decodes a TIFF turned a quarter (5..8) into scrambled pixels: tifffile does
    )
    orientation = orientation if 1 <= orientation <= 8 else 1
    size = (h, w) if orientation >= 5 else (w, h)
    bands = 3 if pillow and bands > 1 else bands
    return ImageHeader(size, bands, own, "TIFF", "pillow" if pillow else "tiff", orientation, axes, frames)


def _npy_header(path: Path | NamedBytes) -> ImageHeader:
    """The header of a ``.npy`` array, (H, W) or (H, W, bands), read without its data (no pickles, ever)."""
    try:
        f = path if isinstance(path, NamedBytes) else open(path, "rb")  # noqa: SIM115 - closed below
        try:
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version[0] == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
        finally:
            if f is not path:
                f.close()
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}; is it a NumPy .npy file?") from None
    if dtype.hasobject:
        raise DataError(f"image {path} is a NumPy array of Python objects; save it as numbers")
    if len(shape) not in (2, 3):
        raise DataError(
            f"image {path} is a NumPy array of shape {shape}; seglab reads (H, W) or (H, W, bands) arrays (bands "
            f"last)"
        )
    bands = shape[2] if len(shape) == 3 else 1
    if bands < 1:
        raise DataError(f"image {path} is a NumPy array of shape {shape}, with no band")
    return ImageHeader((int(shape[1]), int(shape[0])), int(bands), _own_dtype(dtype, path), "NPY", "npy")


def image_header(path: Path | NamedBytes, formats: Sequence[str] | None = None) -> ImageHeader:
    """The header of an image (nothing is decoded), with every check ``read_image`` makes before decoding: the
    file exists and is readable, its format is in ``formats`` (Pillow's format names, and "NPY"), its size is
    within ``max_pixels()`` and ``max_bytes()``, its samples are real numbers, its tiles are sane."""
    return _header(path, formats)[0]


def _header(
    path: Path | NamedBytes, formats: Sequence[str] | None = None, keep_open: bool = False
) -> tuple[ImageHeader, Image.Image | None]:
    """``image_header``'s work; with ``keep_open`` also the Pillow image it opened for a file Pillow decodes (so
    ``read_image`` does not open it again), else None."""
    head = _head(path)
    fmt = "TIFF" if head.startswith(_TIFF_MAGIC) else "NPY" if head.startswith(b"\x93NUMPY") else None
    if formats is not None and fmt is not None and fmt not in formats:
        raise DataError(
            f"{path} is in {fmt} format; only {', '.join(formats)} are accepted here: convert it to PNG"
        )
    if fmt is not None:
        header = _tiff_header(path) if fmt == "TIFF" else _npy_header(path)
        _check_bytes(path, header)
        return header, None
    img = open_image(path, formats, check_bits=False)
    try:
        header = _pillow_header(img, path)
        _check_bytes(path, header)
    except BaseException:
        _release(img)
        raise
    if keep_open and header.reader == "pillow":
        return header, img
    _release(img)
    return header, None


def _release(img: Image.Image) -> None:
    """Let go of an opened image as ``with`` does: its file is closed only if Pillow opened it (an upload's bytes
    stay readable for the decoder that reads them next)."""
    img.__exit__(None, None, None)


def _pillow_header(img: Image.Image, path: Path | NamedBytes) -> ImageHeader:
    """The header of an image Pillow opened: a 16-bit colour PNG is for imagecodecs (Pillow would keep the high
    byte); 16-bit grey and float modes keep their type."""
    if img.format == "PNG" and sample_bits(img) > 8 and img.mode in _EIGHT_BIT_MODES:
        bands = 1 if img.mode in ("LA", "La", "L") else 3
        return ImageHeader(oriented_size(img), bands, "uint16", "PNG", "png16", _orientation(img))
    check_sample_bits(img, path)
    own = {"I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I": "float32", "F": "float32"}
    frames = int(getattr(img, "n_frames", 1) or 1)
    size, bands = oriented_size(img), image_channels(img, path)
    return ImageHeader(size, bands, own.get(img.mode, "uint8"), str(img.format), "pillow", frames=frames)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) turned as EXIF/TIFF ``orientation`` (1..8) says, as Pillow's ``ImageOps.exif_transpose`` turns
    an image (FLIP_LEFT_RIGHT, ROTATE_180, FLIP_TOP_BOTTOM, TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _decode(path: Path | NamedBytes, header: ImageHeader) -> np.ndarray:
    """The samples of a file that Pillow does not read in its own type, as (H, W, bands)."""
    if isinstance(path, NamedBytes):
        path.seek(0)
    if header.reader == "npy":
        arr = np.load(path, allow_pickle=False)
        return arr[..., None] if arr.ndim == 2 else arr
    if header.reader == "png16":
        import imagecodecs

        data = path.getvalue() if isinstance(path, NamedBytes) else Path(path).read_bytes()
        arr = imagecodecs.png_decode(data)
        arr = arr[..., None] if arr.ndim == 2 else arr
        arr = arr[..., :1] if arr.shape[2] == 2 else arr[..., :3]  # alpha dropped, as for 8-bit images
        return _orient(arr, header.orientation)
    import tifffile

    with tifffile.TiffFile(path) as tif:
        arr = tif.series[0].asarray()
    if header.frames > 1:  # the first page of several samples
        first = next(i for i, (a, n) in enumerate(zip(header.axes, arr.shape)) if a not in "YXS" and n > 1)
        arr = np.take(arr, 0, axis=first)
        header = dataclasses.replace(header, axes=header.axes[:first] + header.axes[first + 1 :])
    keep = [i for i, (a, n) in enumerate(zip(header.axes, arr.shape)) if a in "YX" or n > 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(header.axes[i] for i in keep)
    arr = np.moveaxis(arr, [axes.index("Y"), axes.index("X")], [0, 1])
    return _orient(arr[..., None] if arr.ndim == 2 else arr, header.orientation)


def read_image(
    path: Path | NamedBytes, channels: int | None = None, formats: Sequence[str] | None = None
) -> np.ndarray:
    """The one reading function for images: (H, W, C) in the file's own type, uint8, uint16 or float32 (other
    integers and floats as float32), C = the file's bands. Train, evaluate, predict, serve, the report and
    ``data check`` all read images here, with the header checks of ``image_header`` first.

    ``channels`` (the data set's or the model's band count): 8-bit images are converted between grayscale
    and RGB as before (``channels`` 1 or 3); any other image must have exactly that many bands (DataError)."""
    header, opened = _header(path, formats, keep_open=True)
    if header.reader == "pillow":
        if channels not in (None, 1, 3) and header.dtype == "uint8":
            if opened is not None:
                _release(opened)
            raise _band_mismatch(path, header, channels)
        img = load_image(path, formats) if opened is None else _decoded(opened, path)  # (None: a TIFF)
        if header.dtype != "uint8":  # 16-bit and float single-band images Pillow reads in their own type
            arr = np.array(img).astype(header.dtype)[..., None]
        else:
            c = header.bands if channels is None else channels
            if img.mode == "P" and "transparency" in img.info:  # the same pixels, without Pillow's warning
                img = img.convert("RGBA")
            img = img.convert("L" if c == 1 else "RGB")
            arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
            return arr[..., None] if arr.ndim == 2 else arr
    else:
        try:
            arr = _decode(path, header)
        except DataError:
            raise
        except MemoryError:
            raise _too_large(path, "too large to decode", max_pixels()) from None
        except Exception as e:
            raise DataError(
                f"cannot decode {path}: {e.__class__.__name__}: {e}; the file is corrupt or truncated"
            ) from None
        arr = np.array(arr, dtype=header.dtype)  # a writable, native-order copy in the type seglab uses
    if channels is not None and arr.shape[2] != channels:
        raise _band_mismatch(path, header, channels)
    return arr


def _band_mismatch(path: Path | NamedBytes, header: ImageHeader, channels: int) -> DataError:
    return DataError(
        f"image {path} has {header.bands} band(s) of {header.dtype}, but {channels} are expected (the data set's "
        f"other images, or the model's input); every image must have the same bands"
    )


# the GeoTIFF tags that place an image on the earth: pixel scale, tie points, transformation, the GeoKey
# directory with its double and ASCII parameters, and GDAL's metadata (its nodata value belongs to the image)
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112)


def read_geotags(path: Path | NamedBytes) -> list[tuple[int, int, int, Any]]:
    """The GeoTIFF tags of a TIFF as tifffile ``extratags`` (code, type, count, value), to write them back on a
    mask of the same grid (``save_geotiff``); [] for any other file or a TIFF without them."""
    if not _head(path).startswith(_TIFF_MAGIC):
        return []
    import tifffile

    if isinstance(path, NamedBytes):
        path.seek(0)
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages.first.tags
            return [(t.code, t.dtype, t.count, t.value) for t in tags.values() if t.code in GEOTIFF_TAGS]
    except Exception:  # read_image has said what is wrong with the file
        return []


def save_geotiff(path: Path, array: np.ndarray, geotags: Sequence[tuple[int, int, int, Any]]) -> None:
    """Write a uint8 (H, W) mask as a deflate-compressed TIFF with ``geotags`` (``read_geotags`` of its image):
    the mask opens in QGIS on the image's grid and CRS."""
    import tifffile

    arr = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    atomic_write(
        path,
        lambda tmp: tifffile.imwrite(
            tmp, arr, compression="zlib", extratags=list(geotags), software=PNG_SOFTWARE, metadata=None
        ),
    )


def read_mask_raw(path: Path) -> np.ndarray:
    """Mask pixels as stored: (H, W) integers for L/P/I/1 masks, (H, W, 3) uint8 for colour masks. A mask of
    another layout (``seglab.data.formats.MaskSource``: a value table over a file, or drawn annotations) gives
    its own values."""
    read_mask = getattr(path, "read_mask", None)
    if read_mask is not None:
        return read_mask()
    img = open_image(path, check_bits=False)
    if img.format == "PNG" and sample_bits(img) > 8 and img.mode in _EIGHT_BIT_MODES:  # a 16-bit colour mask
        _release(img)
        return _eight_bit_colours(path, _decode(path, image_header(path)))
    try:
        check_sample_bits(img, path)
    except DataError:
        _release(img)
        raise
    img = _decoded(img, path)
    if img.mode in ("RGB", "RGBA"):
        return np.array(img.convert("RGB"), dtype=np.uint8)
    if img.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        arr = np.array(img)
        return arr.astype(np.uint8) if img.mode == "1" else arr
    raise DataError(
        f"mask {path} has mode {img.mode}; use a single-channel index PNG (L or P) or an RGB colour mask"
    )


def _eight_bit_colours(path: Path | NamedBytes, arr: np.ndarray) -> np.ndarray:
    """A 16-bit colour mask as its 8-bit colours: every value must be an 8-bit value scaled to 16 bits (v x 257,
    as image tools widen 8-bit colours), so the colours are exact; DataError otherwise (no colour is guessed)."""
    if arr.shape[2] != 3 or np.any(arr % 257):
        raise DataError(
            f"mask {path} is a 16-bit {'colour' if arr.shape[2] == 3 else 'grey-alpha'} PNG whose values are not "
            f"8-bit colours (v x 257); save it as an 8-bit RGB or index PNG"
        )
    return (arr // 257).astype(np.uint8)


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
