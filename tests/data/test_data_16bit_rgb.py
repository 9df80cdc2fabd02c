"""16-bit RGB(A) images, which Pillow opens as 8-bit RGB (keeping the high byte: 12-bit camera data comes out
near-black), were refused in one line (issue 26); since issue 28 the one reader reads them exactly, in uint16
(imagecodecs for PNG, tifffile for TIFF). 16-bit colour *masks* are still refused: a mask is class indices or
8-bit colours."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from seglab.data.check import check
from seglab.data.io import NamedBytes, open_image, read_image, read_mask_raw, save_png
from seglab.errors import DataError

REFUSED = r"has 16 bits per sample \((PNG|TIFF) RGBA?\); seglab reads 8-bit grayscale or RGB images: convert it to 8 bits"


def write_png(path, array):
    """A PNG of uint8 or uint16 (H, W[, C]) pixels, written by hand: Pillow cannot write 16-bit colour PNGs."""
    a = np.asarray(array)
    h, w = a.shape[:2]
    depth = 16 if a.dtype == np.uint16 else 8
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[a.shape[2] if a.ndim == 3 else 1]  # PNG colour types: L, LA, RGB, RGBA
    rows = b"".join(b"\0" + a[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def twelve_bit(channels, size=(8, 9)):
    """12-bit camera data in 16-bit samples: as 8 bits (the high byte) it is 0..15, near-black."""
    return (np.random.default_rng(0).random((*size, channels)) * 4095).astype(np.uint16)


@pytest.mark.parametrize("channels", [3, 4, 2], ids=["rgb", "rgba", "gray-alpha"])
def test_16_bit_colour_pngs_are_read_exactly(tmp_path, channels):
    """Every 16-bit sample as written (the alpha dropped, as for 8-bit images); the service's uploads alike."""
    arr = twelve_bit(channels)
    path = write_png(tmp_path / "a.png", arr)
    want = arr[..., :1] if channels == 2 else arr[..., :3]
    for source in (path, NamedBytes(path.read_bytes(), "upload.png")):
        out = read_image(source)
        assert out.dtype == np.uint16 and out.shape == want.shape and (out == want).all()
    with pytest.raises(DataError, match=REFUSED):  # Pillow alone would keep the high byte: refused
        open_image(NamedBytes(path.read_bytes(), "upload.png"))


def test_16_bit_rgb_tiff_is_read_exactly(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, twelve_bit(3), photometric="rgb")
    out = read_image(path)
    assert out.dtype == np.uint16 and (out == tifffile.imread(path)).all() and (out == twelve_bit(3)).all()


def test_8_bit_rgb_and_16_bit_single_channel_masks_still_read(tmp_path):
    rgb = (np.arange(8 * 9 * 3) % 256).astype(np.uint8).reshape(8, 9, 3)
    assert (read_image(write_png(tmp_path / "rgb8.png", rgb)) == rgb).all()
    ids = np.arange(72, dtype=np.uint16).reshape(8, 9) * 900  # instance ids above 255
    assert (read_mask_raw(write_png(tmp_path / "ids.png", ids)) == ids).all()


def test_a_16_bit_colour_mask_reads_as_its_8_bit_colours_or_is_refused(tmp_path):
    """LabelMeFacade's masks are 16-bit RGBA PNGs of 8-bit colours x 257: read exactly; other values refused."""
    colours = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint16)
    rgba = np.concatenate([colours * 257, np.full((20, 30, 1), 65535, np.uint16)], axis=2)
    assert np.array_equal(read_mask_raw(write_png(tmp_path / "m.png", rgba)), colours.astype(np.uint8))
    with pytest.raises(DataError, match="not 8-bit colours"):
        read_mask_raw(write_png(tmp_path / "n.png", twelve_bit(3)))


def test_data_check_reads_a_16_bit_rgb_data_set(tmp_path):
    """The scan's type follows the images (one 16-bit image makes the set uint16, read without a problem), and
    data check prints the band statistics of the 16-bit values, not of their high bytes."""
    root = tmp_path / "d"
    for i in range(3):
        save_png(root / "images" / f"{i}.png", np.full((8, 9, 3), 120, np.uint8))
        save_png(root / "masks" / f"{i}.png", np.eye(8, 9, dtype=np.uint8))
    scan = check(root)
    assert scan.problems == [] and scan.dtype == "uint8" and scan.stats.max == [120.0] * 3
    write_png(root / "images" / "1.png", twelve_bit(3))  # replaced: a new size and mtime
    scan = check(root)
    assert scan.problems == [] and scan.dtype == "uint16" and scan.in_channels == 3
    assert scan.stats.max == [float(v) for v in twelve_bit(3).reshape(-1, 3).max(0)]


def test_labelmefacade_masks_of_16_bit_rgba_read_as_its_palette():
    """../shared/data/labelmefacade ships its colour masks as 16-bit RGBA PNGs: every pixel is one of the nine
    colours of its classes.yaml, as its README says."""
    import yaml

    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "labelmefacade"
    if not (root / "masks").is_dir():
        pytest.skip(f"{root} is not available")
    palette = {tuple(c) for c in yaml.safe_load((root / "classes.yaml").read_text())["colors"]}
    mask = sorted((root / "masks").glob("*.png"))[0]
    colours = {tuple(int(v) for v in c) for c in np.unique(read_mask_raw(mask).reshape(-1, 3), axis=0)}
    assert colours <= palette and len(colours) >= 3
