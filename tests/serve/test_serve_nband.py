"""The service on 16-bit, float and multi-band uploads: 16-bit PNG and TIFF, a 5-band TIFF and .npy to a model
of that many bands, answered with the mask ``seglab predict`` writes (byte for byte); a band count the model does
not take is refused from the header (400, naming both); the decoded-bytes limit (``--max-bytes``, 413)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from nband import dataset_norm, make_checkpoint, twelve_bit  # noqa: E402 - tests/nband.py

from seglab.cli import build_parser  # noqa: E402
from seglab.engine.predict import predict  # noqa: E402
from seglab.serve.app import ServeConfig, create_app  # noqa: E402


def local(app) -> TestClient:
    return TestClient(app, base_url="http://localhost")


def post(client: TestClient, data: bytes, query: str = "", name: str = "x.tif"):
    files = {"file": (name, data, "application/octet-stream")}
    return client.post(f"/predict{query}", files=files)


def tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("nband")
    return {b: make_checkpoint(root / str(b), dataset_norm(b), seed=b) for b in (1, 3, 5)}


def same_as_predict(client: TestClient, ckpt: Path, body: bytes, name: str, tmp: Path) -> None:
    """The served mask is the bytes of the mask file ``seglab predict`` writes for the same file."""
    (tmp / name).write_bytes(body)
    [record] = predict(ckpt, [tmp / name], tmp / f"out-{name}", progress=False)
    r = post(client, body, name=name)
    assert r.status_code == 200, r.text
    assert r.content == Path(record["mask"]).read_bytes()
    labels = np.array(Image.open(io.BytesIO(r.content)))
    assert 0 < labels.mean() < 1  # a mask of both classes: the normalisation shows


def test_sixteen_bit_png_and_tiff(models, tmp_path) -> None:
    one, three = twelve_bit((40, 48, 1), seed=11), twelve_bit((40, 48, 3), seed=12)
    png = io.BytesIO()
    Image.fromarray(one[..., 0]).save(png, format="PNG")  # 16-bit grayscale PNG
    client = local(create_app(models[1], ServeConfig()))
    same_as_predict(client, models[1], png.getvalue(), "g16.png", tmp_path)
    same_as_predict(client, models[1], tiff_bytes(one[..., 0], compression="zlib"), "g16.tif", tmp_path)
    client = local(create_app(models[3], ServeConfig()))
    same_as_predict(client, models[3], tiff_bytes(three, photometric="rgb"), "rgb16.tif", tmp_path)
    doc = post(client, tiff_bytes(three, photometric="rgb"), "?format=json&overlay=1").json()
    shown = np.array(Image.open(io.BytesIO(base64.b64decode(doc["image_png"]))))
    np.testing.assert_array_equal(shown, dataset_norm(3).display(three))  # what the viewer shows of it
    assert client.get("/model").json()["normalize"] == dataset_norm(3).to_dict()


def test_five_band_tiff_and_npy(models, tmp_path) -> None:
    raw = twelve_bit((36, 40, 5), seed=13)
    client = local(create_app(models[5], ServeConfig()))
    body = tiff_bytes(raw, photometric="minisblack", planarconfig="contig")
    same_as_predict(client, models[5], body, "five.tif", tmp_path)
    npy = io.BytesIO()
    np.save(npy, raw)
    same_as_predict(client, models[5], npy.getvalue(), "five.npy", tmp_path)
    # three bands to a five-band model: refused from the header, both counts named
    r = post(client, tiff_bytes(raw[..., :3], photometric="rgb"))
    assert r.status_code == 400 and "3 band(s)" in r.json()["detail"] and "5-band" in r.json()["detail"]
    rgb8 = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb8, format="PNG")
    r = post(client, rgb8.getvalue(), name="x.png")
    assert r.status_code == 400 and "5-band" in r.json()["detail"]


def test_max_bytes(models) -> None:
    raw = twelve_bit((36, 40, 5), seed=14)  # 36 x 40 x 5 x 2 = 14,400 bytes decoded
    body = tiff_bytes(raw, photometric="minisblack", planarconfig="contig")
    small = local(create_app(models[5], ServeConfig(max_bytes=14_399)))
    r = post(small, body)
    assert (
        r.status_code == 413 and "14,400 bytes" in r.json()["detail"] and "--max-bytes" in r.json()["detail"]
    )
    assert post(local(create_app(models[5], ServeConfig(max_bytes=14_400))), body).status_code == 200
    # the default keeps the limits of RGB and RGBA uploads: max_pixels x 4 bytes
    assert ServeConfig(max_pixels=1000).max_bytes == 4000 and ServeConfig().max_bytes == 4096 * 4096 * 4
    assert small.get("/model").json()["limits"]["max_bytes"] == 14_399
    args = build_parser().parse_args(["serve", "ck", "--max-bytes", "123"])
    assert args.max_bytes == 123
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "ck", "--max-bytes", "0"])
