"""16-bit RGB(A) images, which Pillow opens as 8-bit RGB (keeping the high byte: 12-bit camera data comes out
near-black), are refused in one line by the one reader, as 16-bit grayscale is (issue 26)."""

import struct
import zlib

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
def test_16_bit_colour_pngs_are_refused_in_one_line(tmp_path, channels):
    path = write_png(tmp_path / "a.png", twelve_bit(channels))
    with pytest.raises(DataError, match=REFUSED) as info:
        read_image(path)
    assert str(info.value).startswith(f"image {path} has 16 bits per sample") and "\n" not in str(info.value)
    with pytest.raises(DataError, match=REFUSED):  # the service opens uploads with the same reader
        open_image(NamedBytes(path.read_bytes(), "upload.png"))


def test_16_bit_rgb_tiff_is_refused(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, twelve_bit(3), photometric="rgb")
    with pytest.raises(DataError, match=REFUSED):
        read_image(path)


def test_8_bit_rgb_and_16_bit_single_channel_masks_still_read(tmp_path):
    rgb = (np.arange(8 * 9 * 3) % 256).astype(np.uint8).reshape(8, 9, 3)
    assert (read_image(write_png(tmp_path / "rgb8.png", rgb)) == rgb).all()
    ids = np.arange(72, dtype=np.uint16).reshape(8, 9) * 900  # instance ids above 255
    assert (read_mask_raw(write_png(tmp_path / "ids.png", ids)) == ids).all()


def test_a_16_bit_rgb_colour_mask_is_refused(tmp_path):
    with pytest.raises(DataError, match="has 16 bits per sample"):
        read_mask_raw(write_png(tmp_path / "m.png", twelve_bit(3)))


def test_data_check_and_training_name_a_16_bit_rgb_image(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        save_png(root / "images" / f"{i}.png", np.full((8, 9, 3), 120, np.uint8))
        save_png(root / "masks" / f"{i}.png", np.eye(8, 9, dtype=np.uint8))
    assert check(root).problems == []
    write_png(root / "images" / "1.png", twelve_bit(3))  # replaced: a new size and mtime
    problems = check(root).problems
    assert len(problems) == 1 and problems[0].startswith(f"image {root / 'images' / '1.png'} has 16 bits")
    from seglab.data.folder import scan_folder

    with pytest.raises(DataError, match="1.png has 16 bits per sample"):  # training's scan raises it
        scan_folder(root).raise_problems()


def test_predict_skips_and_names_a_16_bit_rgb_image(tiny_ckpt, tmp_path, run_cli):
    src = tmp_path / "in"
    src.mkdir()
    save_png(src / "ok.png", np.full((16, 16, 3), 90, np.uint8))
    write_png(src / "deep.png", twelve_bit(3, (16, 16)))
    code, _, err = run_cli("predict", tiny_ckpt, src, "--out", tmp_path / "out", "--no-progress")
    assert code == 2 and "skipped deep.png: image" in err and "has 16 bits per sample (PNG RGB)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok_mask.png", "ok_overlay.png"]
