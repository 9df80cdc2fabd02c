"""Every image kind of issue 28 read by ``read_image`` with exact values, against the library that wrote it (or a
reference reader): 16-bit PNG (Pillow, imagecodecs), 16-bit and float TIFF of 1 and 5 bands (tifffile: contig and
planar, deflate and LZW, multi-page), ``.npy``, the real BBBC039 TIFFs; orientation as Pillow applies it; and
what is still refused, in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from seglab.data.io import image_header, read_image
from seglab.errors import DataError

RNG = np.random.default_rng(28)
BBBC039 = Path(__file__).resolve().parents[3] / "shared" / "data" / "bbbc039-nuclei"


def u16(*shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def one_line(e: pytest.ExceptionInfo, path) -> str:
    text = str(e.value)
    assert "\n" not in text and str(path) in text, text
    return text


def test_16_bit_gray_png_written_by_pillow(tmp_path):
    arr = u16(7, 9)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint16 and out.shape == (7, 9, 1) and (out[..., 0] == arr).all()


def test_16_bit_rgb_png_written_by_imagecodecs(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    arr = u16(7, 9, 3)
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(arr))
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint16 and (out == arr).all()


@pytest.mark.parametrize("compression", ["zlib", "lzw"])
@pytest.mark.parametrize("bands, planar", [(1, None), (5, "contig"), (5, "separate")])
def test_16_bit_tiff_of_1_and_5_bands(tmp_path, bands, planar, compression):
    arr = u16(11, 13, bands)
    path = tmp_path / "a.tif"
    if planar == "separate":
        tifffile.imwrite(
            path,
            np.moveaxis(arr, -1, 0),
            photometric="minisblack",
            planarconfig="separate",
            compression=compression,
        )
    else:
        data = arr[..., 0] if bands == 1 else arr
        tifffile.imwrite(path, data, photometric="minisblack", planarconfig=planar, compression=compression)
    assert image_header(path).bands == bands
    out = read_image(path, bands)
    assert out.dtype == np.uint16 and out.shape == (11, 13, bands) and (out == arr).all()


@pytest.mark.parametrize("writer", ["tifffile", "pillow"])
def test_multi_page_tiff_pages_are_bands(tmp_path, writer):
    arr = u16(4, 10, 12)  # 4 pages of one sample each
    path = tmp_path / "a.tif"
    if writer == "tifffile":
        tifffile.imwrite(path, arr, photometric="minisblack")
    else:
        pages = [Image.fromarray(a) for a in arr]
        pages[0].save(path, save_all=True, append_images=pages[1:])
    assert len(tifffile.TiffFile(path).pages) == 4
    out = read_image(path, 4)
    assert out.shape == (10, 12, 4) and (out == np.moveaxis(arr, 0, -1)).all()


def test_float32_tiff_and_float64_npy(tmp_path):
    arr = RNG.normal(0, 1e3, (6, 8, 2)).astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="minisblack", planarconfig="contig")
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.float32 and (out == arr).all()
    wide = RNG.normal(0, 1, (6, 8, 3))
    np.save(tmp_path / "b.npy", wide)
    out = read_image(tmp_path / "b.npy")
    assert out.dtype == np.float32 and (out == wide.astype(np.float32)).all()
    np.save(tmp_path / "c.npy", wide[..., 0])
    assert read_image(tmp_path / "c.npy").shape == (6, 8, 1)


def test_bbbc039_first_image_is_what_tifffile_reads():
    images = sorted((BBBC039 / "images").glob("*.tif")) if BBBC039.is_dir() else []
    if not images:
        pytest.skip(f"{BBBC039} is not available")
    out = read_image(images[0], 1)
    ref = tifffile.imread(images[0])
    assert out.dtype == np.uint16 and out.shape == (*ref.shape, 1) and (out[..., 0] == ref).all()
    assert 255 < ref.max() < 4096  # 12-bit values: nothing is mapped to 8 bits


@pytest.mark.parametrize("orientation", range(2, 9))
def test_tiff_orientation_is_applied_as_pillow_applies_it(tmp_path, orientation):
    """The same picture as an 8-bit PNG with that EXIF orientation (turned by Pillow's ImageOps.exif_transpose:
    the reference) and as 16-bit and 8-bit TIFFs with that orientation tag: the same pixels, in the same places.
    (Pillow itself decodes an 8-bit TIFF of orientation 5..8 into scrambled pixels: tifffile reads those.)"""
    small = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(small).save(tmp_path / "a.png", exif=exif)
    with Image.open(tmp_path / "a.png") as img:
        ref = np.array(ImageOps.exif_transpose(img))
    tag = [(274, "H", 1, orientation, True)]
    tifffile.imwrite(tmp_path / "a16.tif", small.astype(np.uint16) * 256 + 7, extratags=tag)
    tifffile.imwrite(tmp_path / "a8.tif", small, extratags=tag)
    out = read_image(tmp_path / "a16.tif")
    assert out.shape[:2] == ref.shape and (out[..., 0] == ref.astype(np.uint16) * 256 + 7).all()
    assert image_header(tmp_path / "a16.tif").size == (ref.shape[1], ref.shape[0])
    out8 = read_image(tmp_path / "a8.tif", 1)
    assert out8.dtype == np.uint8 and out8.shape[:2] == ref.shape and (out8[..., 0] == ref).all()


def test_complex_numbers_are_refused(tmp_path):
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, np.ones((4, 4), np.complex64))
    with pytest.raises(DataError, match="holds complex numbers") as e:
        read_image(path)
    one_line(e, path)


def test_a_time_by_channel_stack_is_refused(tmp_path):
    path = tmp_path / "tc.tif"
    tifffile.imwrite(path, u16(3, 2, 8, 8), imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(DataError, match="save each image of the stack as its own file") as e:
        read_image(path)
    one_line(e, path)


def test_a_band_count_other_than_expected_is_refused(tmp_path):
    path = tmp_path / "b.tif"
    tifffile.imwrite(path, u16(8, 8, 4), photometric="minisblack", planarconfig="contig")
    with pytest.raises(DataError, match="has 4 band\\(s\\) of uint16, but 5 are expected") as e:
        read_image(path, 5)
    one_line(e, path)


def test_the_bytes_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    tifffile.imwrite(
        path, np.zeros((16, 16, 13), np.float32), photometric="minisblack", planarconfig="contig"
    )
    monkeypatch.setenv("SEGLAB_MAX_BYTES", str(16 * 16 * 13 * 4 - 1))
    with pytest.raises(
        DataError, match="13 band\\(s\\) of float32, 13,312 bytes decoded, above the limit"
    ) as e:
        image_header(path)
    assert "SEGLAB_MAX_BYTES" in one_line(e, path)
    monkeypatch.setenv("SEGLAB_MAX_BYTES", str(16 * 16 * 13 * 4))
    assert read_image(path).shape == (16, 16, 13)
