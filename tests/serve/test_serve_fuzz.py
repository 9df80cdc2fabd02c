"""``seglab serve`` and its image reader under a third round of hostile uploads (issue 26's re-run fuzz list):
tile bombs in TIFF headers, multi-frame uploads, repeated parameters, the Authorization scheme, the viewer's
security headers, server paths in ``/model``, and one-line messages for forms and oversized headers."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from seglab.data.io import NamedBytes, read_image  # noqa: E402
from seglab.errors import DataError  # noqa: E402
from seglab.serve.app import ServeConfig, create_app  # noqa: E402

TINY = {"depth": 2, "base_channels": 4}


@pytest.fixture(scope="module")
def client(ckpt: Path) -> TestClient:
    return TestClient(create_app(ckpt, ServeConfig(token="T")), base_url="http://localhost")


AUTH = {"Authorization": "Bearer T"}


def post(c: TestClient, data: bytes, query: str = "", kind: str = "image/png", **headers):
    return c.post(f"/predict{query}", content=data, headers={"Content-Type": kind, **AUTH, **headers})


def noise(seed: int, size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def tiled_tiff(w: int, h: int, tile: int) -> bytes:
    """A deflate-compressed RGB TIFF of w x h whose header declares tile x tile tiles (and 11 bytes of data)."""
    data = zlib.compress(b"\x00" * 10)
    entries = [
        (256, 4, w),
        (257, 4, h),
        (258, 3, "bps"),
        (259, 3, 8),
        (262, 3, 2),
        (277, 3, 3),
        (284, 3, 1),
        (322, 4, tile),
        (323, 4, tile),
        (324, 4, "data"),
        (325, 4, len(data)),
    ]
    bps = 8 + 2 + 12 * len(entries) + 4
    offsets = {"bps": bps, "data": bps + 6}
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        value = offsets.get(value, value)  # type: ignore[arg-type]
        count = 3 if tag == 258 else 1
        out += (
            struct.pack("<HHIHH", tag, kind, count, value, 0)
            if kind == 3 and count == 1
            else struct.pack("<HHII", tag, kind, count, value)
        )
    return out + struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8) + data


def test_tiff_tiles_larger_than_the_image_are_refused_before_decoding(client) -> None:
    """A 200-byte 64 x 64 TIFF declaring 8192 x 8192 tiles made libtiff allocate 200 MB (16384: 800 MB) for one
    tile; eight such uploads decode at once while they wait for a slot."""
    bomb = tiled_tiff(64, 64, 8192)
    with pytest.raises(DataError, match=r"64x64 TIFF with 8192x8192 tiles"):
        read_image(NamedBytes(bomb, "bomb.tif"), 3)
    r = post(client, bomb, kind="image/tiff")
    assert r.status_code == 400 and "8192x8192 tiles" in r.json()["detail"]
    tifffile = pytest.importorskip("tifffile")
    for shape in ((40, 50, 3), (300, 280, 3)):  # tiles larger than a small image, and an image of many tiles
        pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        buf = io.BytesIO()
        tifffile.imwrite(buf, pixels, tile=(256, 256), photometric="rgb")
        assert np.array_equal(read_image(NamedBytes(buf.getvalue(), "ok.tif"), 3), pixels)
        assert post(client, buf.getvalue(), kind="image/tiff").status_code == 200


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_multi_frame_uploads_predict_the_first_frame_and_say_so(client, fmt) -> None:
    kw = {"lossless": True} if fmt == "WEBP" else {}
    first, second = noise(0), noise(1)
    several = encode(first, fmt, save_all=True, append_images=[second], **kw)
    # the overlay shows the image predicted (a random model's masks can be one class whatever the image)
    one = post(client, encode(first, fmt, **kw), "?overlay=1")
    other = post(client, encode(second, fmt, **kw), "?overlay=1")
    r = post(client, several, "?overlay=1")
    assert r.status_code == 200 and one.content != other.content
    assert r.content == one.content
    assert "several frames" in r.headers["x-seglab-note"] and "first" in r.headers["x-seglab-note"]
    doc = post(client, several, "?format=json").json()
    assert "the first was predicted" in doc["note"]
    single = post(client, encode(first, fmt, **kw), "?format=json")
    assert "note" not in single.json() and "x-seglab-note" not in single.headers


@pytest.mark.parametrize(
    "query", ["?format=png&format=json", "?format=bogus&format=json", "?overlay=1&overlay=0&format=json"]
)
def test_repeated_parameters_are_refused(client, query) -> None:
    """Only the last value was checked and used: ?format=bogus&format=json answered 200."""
    r = post(client, encode(noise(0), "PNG"), query)
    assert r.status_code == 400
    assert re.fullmatch(r"parameter \w+ is given 2 times; give it once", r.json()["detail"])


def test_bearer_scheme_is_case_insensitive_and_other_tokens_still_fail(ckpt) -> None:
    """RFC 9110: the scheme is case-insensitive ('bearer T' got 401); a non-ASCII token never matched (the
    header's bytes were re-encoded as UTF-8 after Starlette decoded them as latin-1)."""
    c = TestClient(create_app(ckpt, ServeConfig(token="tökén")), base_url="http://localhost")
    body = encode(noise(0), "PNG")

    def status(auth: bytes) -> int:
        return c.post(
            "/predict", content=body, headers={"Content-Type": "image/png", "Authorization": auth}
        ).status_code

    token = "tökén".encode()
    for good in (b"Bearer " + token, b"bearer " + token, b"BEARER  " + token):
        assert status(good) == 200, good
    for bad in (
        b"Bearer t\xc3\xb6k\xc3\xa9",
        b"Bearer " + token + b"x",
        b"Basic " + token,
        token,
        b"Bearer" + token,
        b"Bearer",
        b"Token " + token,
    ):
        assert status(bad) == 401, bad


def test_viewer_page_sends_security_headers(client) -> None:
    """The viewer holds the token: no framing (clickjacking), no sniffing, and a CSP that runs only its own
    inline script, by hash."""
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    csp = dict(p.strip().split(" ", 1) for p in r.headers["content-security-policy"].split(";"))
    assert (
        csp["default-src"] == "'none'"
        and csp["frame-ancestors"] == "'none'"
        and csp["connect-src"] == "'self'"
    )
    scripts = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert scripts and csp["script-src"] == " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts
    )


def test_model_does_not_show_server_paths(ckpt) -> None:
    """``model_params`` may hold the encoder weights file a run started from: /model named its directories."""
    app = create_app(ckpt, ServeConfig())
    meta = app.state.service.meta
    meta.model_params = {
        **TINY,
        "weights": "/home/alice/secret/enc.pth",
        "encoder": {"weights": "C:\\a\\b.pt"},
        "names": ["x/y"],
        "pkg": "pkg:some_module/models/w.pth",
    }
    doc = TestClient(app, base_url="http://localhost").get("/model").json()
    assert doc["model_params"] == {
        **TINY,
        "weights": "enc.pth",
        "encoder": {"weights": "b.pt"},
        "names": ["y"],
        "pkg": "pkg:some_module/models/w.pth",
    }
    assert doc["checkpoint"] == ckpt.name and "/" not in str(doc["checkpoint"])


def test_palette_transparency_is_read_without_pillows_two_line_warning() -> None:
    """A palette PNG whose transparency is a byte string made Pillow print a two-line UserWarning on the
    server's log; the pixels are the palette colours either way."""
    rng = np.random.default_rng(0)
    pal = Image.fromarray(rng.integers(0, 4, (16, 16), dtype=np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    data = encode(pal, "PNG", transparency=bytes([0, 128, 255, 10]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, grey = read_image(NamedBytes(data, "p.png"), 3), read_image(NamedBytes(data, "p.png"), 1)
    expected = np.array(pal.convert("RGB"))
    assert np.array_equal(rgb, expected)
    assert np.array_equal(grey[..., 0], np.array(Image.fromarray(expected).convert("L")))


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", b"x")
        + chunk(b"IEND", b"")
    )


def test_an_image_above_pillows_limit_names_the_service_limit_not_a_server_variable(ckpt) -> None:
    """A 65535 x 65535 header told the client to set SEGLAB_MAX_PIXELS, an environment variable of the server."""
    c = TestClient(create_app(ckpt, ServeConfig(max_pixels=10**6)), base_url="http://localhost")
    r = c.post("/predict", content=_png_header(65535, 65535), headers={"Content-Type": "image/png"})
    assert r.status_code == 413
    assert (
        r.json()["detail"]
        == "the upload is above this service's limit of 1,000,000 pixels; send a smaller image"
    )


def test_a_form_field_file_without_a_filename_is_named(client) -> None:
    """``curl -F file=<img.png`` sends the image as a text field: the answer said the form held no file 'file'."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
        + encode(noise(0), "PNG")[:200]
        + b"\r\n--B--\r\n"
    )
    r = post(client, body, kind="multipart/form-data; boundary=B")
    assert r.status_code == 400 and "field 'file' has no filename" in r.json()["detail"]
    assert "curl -F file=@image.png" in r.json()["detail"]
