"""The REST service through FastAPI's test client: every route, every error code, and answers byte-identical to
the files ``seglab predict`` writes for the same image."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from seglab.errors import ConfigError  # noqa: E402
from seglab.serve.app import ServeConfig, create_app  # noqa: E402

TINY = {"depth": 2, "base_channels": 4}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def client(ckpt: Path) -> TestClient:
    return local(create_app(ckpt, ServeConfig(max_upload_bytes=200_000, max_pixels=100_000)))


def local(app) -> TestClient:
    """A test client that names the service as a browser on this machine does (``Host: localhost``)."""
    return TestClient(app, base_url="http://localhost")


def post(client: TestClient, data: bytes, query: str = "", kind: str = "image/png", **kw):
    return client.post(f"/predict{query}", content=data, headers={"Content-Type": kind, **kw})


def test_health_model_and_viewer(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["arch"] == "unet"
    m = client.get("/model").json()
    assert m["classes"] == ["bg", "cat", "dog"] and m["palette"][1] == [255, 0, 0]
    assert m["in_channels"] == 3 and m["mean"] == [0.5] * 3 and m["std"] == [0.25] * 3
    assert m["metrics"] == {"miou": 0.5} and set(m["uncertainty"]) == {"tta", "mc-dropout"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="opacity"' in page.text and 'id="legend"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets


@pytest.fixture(scope="module")
def predicted(ckpt: Path, image_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What ``seglab predict`` writes for ``image_file``: plain, with TTA and with MC dropout (8 samples)."""
    from seglab.engine.predict import predict
    from seglab.uncertainty.config import UncertaintyConfig

    out = tmp_path_factory.mktemp("pred")
    (plain,) = predict(ckpt, [image_file], out / "plain", progress=False)
    (tta,) = predict(
        ckpt, [image_file], out / "tta", progress=False, uncertainty=UncertaintyConfig(method="tta")
    )
    (mc,) = predict(
        ckpt,
        [image_file],
        out / "mc",
        progress=False,
        uncertainty=UncertaintyConfig(method="mc-dropout", samples=8),
    )
    return {
        "mask": Path(plain["mask"]),
        "overlay": Path(plain["overlay"]),
        "tta": Path(tta["uncertainty"]),
        "tta_mask": Path(tta["mask"]),
        "mc": Path(mc["uncertainty"]),
    }


def test_png_answers_are_the_files_seglab_predict_writes(client, image_file, predicted) -> None:
    data = image_file.read_bytes()
    r = post(client, data)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == predicted["mask"].read_bytes()
    assert post(client, data, "?overlay=1").content == predicted["overlay"].read_bytes()
    assert post(client, data, "?uncertainty=tta").content == predicted["tta"].read_bytes()
    assert post(client, data, "?uncertainty=mc-dropout").content == predicted["mc"].read_bytes()
    # a multipart form upload gives the same answer
    form = client.post("/predict", files={"file": ("photo.png", data, "image/png")})
    assert form.status_code == 200 and form.content == predicted["mask"].read_bytes()


def test_json_answer(client, image_file, predicted) -> None:
    r = post(client, image_file.read_bytes(), "?format=json&overlay=1&uncertainty=tta")
    assert r.status_code == 200
    doc = r.json()
    labels = np.array(Image.open(predicted["tta_mask"]))
    assert (doc["width"], doc["height"]) == (45, 37)
    counts = np.bincount(labels.ravel(), minlength=3)
    assert doc["pixels"] == dict(zip(["bg", "cat", "dog"], counts.tolist()))
    assert doc["shares"] == pytest.approx({n: c / labels.size for n, c in zip(["bg", "cat", "dog"], counts)})
    assert sum(doc["shares"].values()) == pytest.approx(1.0)
    assert base64.b64decode(doc["mask_png"]) == predicted["tta_mask"].read_bytes()
    assert base64.b64decode(doc["uncertainty_png"]) == predicted["tta"].read_bytes()
    colour = np.array(Image.open(io.BytesIO(base64.b64decode(doc["color_png"]))))
    assert colour.shape == (37, 45, 4)
    assert (colour[..., 3] == np.where(labels == 0, 0, 255)).all()  # background transparent
    assert (colour[labels == 2][:, :3] == [0, 0, 255]).all()
    assert doc["uncertainty"]["method"] == "tta" and 0 <= doc["uncertainty"]["mean_entropy"] <= np.log(3)
    assert "overlay_png" in doc


def _png(shape: tuple[int, ...], dtype=np.uint8, noise: bool = False) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 200, shape) if noise else np.zeros(shape)
    Image.fromarray(pixels.astype(dtype)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "query", "kind", "status", "words"),
    [
        (b"", "", "image/png", 400, "empty"),
        (b"not an image at all", "", "image/png", 400, "cannot read"),
        (_png((20, 20, 3), noise=True)[:300], "", "image/png", 400, "corrupt or truncated"),
        (_png((20, 20, 3)), "", "text/plain", 400, "not an image"),
        (_png((20, 20, 3)), "", "", 400, "not an image"),
        # 16-bit is read now; a 1-band image is not what this 3-band model takes (named before decoding)
        (_png((20, 20), np.uint16), "", "image/png", 400, "1 band(s) of uint16, but this model takes 3-band"),
        (_png((400, 300, 3)), "", "image/png", 413, "120,000 pixels"),
        (b"\x00" * 200_001, "", "image/png", 413, "200,000"),
        (_png((20, 20, 3)), "?path=/etc/passwd", "image/png", 400, "unknown parameter 'path'"),
        (_png((20, 20, 3)), "?format=tiff", "image/png", 400, "format='tiff'"),
        (_png((20, 20, 3)), "?uncertainty=ensemble", "image/png", 400, "uncertainty='ensemble'"),
        (_png((20, 20, 3)), "?overlay=1&uncertainty=tta", "image/png", 400, "one picture"),
    ],
)
def test_bad_requests(client, body, query, kind, status, words) -> None:
    r = post(client, body, query, kind)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.get("/health").json()["status"] == "ok"  # the service stays up


def test_multipart_without_a_file_and_chunked_oversize(client) -> None:
    r = client.post("/predict", data={"path": "/etc/passwd"}, files={})
    assert r.status_code == 400
    r = client.post("/predict", content=b"x=1", headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 400

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b"\x00" * 10_000

    r = client.post("/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "200,000" in r.json()["detail"]


def test_mc_dropout_needs_dropout(tmp_path, image_file) -> None:
    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.models.factory import create_model

    model = create_model("unet", num_classes=2, in_channels=3, **TINY)
    meta = CheckpointMeta(
        arch="unet",
        num_classes=2,
        in_channels=3,
        model_params=TINY,
        class_names=["a", "b"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    client = local(create_app(save_checkpoint(tmp_path / "best", model, meta)))
    r = post(client, image_file.read_bytes(), "?uncertainty=mc-dropout")
    assert r.status_code == 400 and "no dropout layers" in r.json()["detail"]
    assert post(client, image_file.read_bytes(), "?uncertainty=tta").status_code == 200
    assert client.get("/model").json()["palette"][:2] == [[0, 0, 0], [230, 25, 75]]  # the default colours


def test_token(ckpt, image_file) -> None:
    client = local(create_app(ckpt, ServeConfig(token="s3cret")))
    data = image_file.read_bytes()
    assert post(client, data).status_code == 401
    assert post(client, data, Authorization="Bearer wrong").status_code == 401
    assert client.get("/model").status_code == 401
    assert client.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert post(client, data, Authorization="Bearer s3cret").status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_busy_service_answers_503_and_runs_off_the_event_loop(ckpt, image_file) -> None:
    """concurrency 1, queue 0: while one prediction is held in its worker thread, the event loop still answers
    /health and turns a second prediction away with 503; afterwards predictions work again."""
    import httpx

    app = create_app(ckpt, ServeConfig(concurrency=1, queue=0))
    service = app.state.service
    started, release = threading.Event(), threading.Event()
    original = service.predict

    def held(*args, **kwargs):
        started.set()
        assert release.wait(10)
        return original(*args, **kwargs)

    service.predict = held
    data = image_file.read_bytes()
    headers = {"Content-Type": "image/png"}

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            first = asyncio.create_task(c.post("/predict", content=data, headers=headers))
            while not started.is_set():
                await asyncio.sleep(0.01)
            health = await c.get("/health")
            second = await c.post("/predict", content=data, headers=headers)
            release.set()
            done = await first
            again = await c.post("/predict", content=data, headers=headers)
            return [
                health.status_code,
                health.json()["active"],
                second.status_code,
                done.status_code,
                again.status_code,
            ]

    assert asyncio.run(scenario()) == [200, 1, 503, 200, 200]


def test_serve_cli_bad_checkpoint(run_cli, tmp_path) -> None:
    code, _, err = run_cli("serve", tmp_path / "nothing", "--port", "0")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    with pytest.raises(ConfigError, match="concurrency must be >= 1"):
        ServeConfig(concurrency=0)  # the command line refuses it in argparse already
