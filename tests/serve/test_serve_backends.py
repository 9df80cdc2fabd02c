"""``seglab serve`` with an exported model or ``--backend``: ``/model`` names the runtime, ``/predict`` answers the
mask ``seglab predict`` writes with the same file and backend (byte for byte) and PyTorch's mask, TTA works and
MC dropout (which needs a PyTorch model's dropout layers) is answered 400 in one line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")
from exported import export_both  # noqa: E402 - tests/exported.py
from fastapi.testclient import TestClient  # noqa: E402

from seglab.errors import ConfigError  # noqa: E402
from seglab.serve.app import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def exported(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return export_both(ckpt, tmp_path_factory.mktemp("serve-exported"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(path)
    return path


def client(checkpoint: Path, **config) -> TestClient:
    return TestClient(create_app(checkpoint, ServeConfig(**config)), base_url="http://localhost")


def post(c: TestClient, data: bytes, query: str = ""):
    return c.post(f"/predict{query}", content=data, headers={"Content-Type": "image/png"})


def predicted_mask(checkpoint: Path, image: Path, out: Path, backend: str | None = None) -> bytes:
    from seglab.engine.predict import predict

    (record,) = predict(checkpoint, [image], out, progress=False, write_overlay=False, backend=backend)
    return Path(record["mask"]).read_bytes()


def test_an_ir_is_served_as_predict_runs_it(ckpt, exported, image_file, tmp_path):
    _, xml = exported
    c = client(xml)
    model = c.get("/model").json()
    assert model["backend"] == "openvino" and model["checkpoint"] == "m.xml"
    assert model["uncertainty"] == ["tta"] and model["classes"] == ["bg", "cat", "dog"]
    r = post(c, image_file.read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == predicted_mask(xml, image_file, tmp_path / "ir")
    torch_mask = predicted_mask(ckpt, image_file, tmp_path / "torch")
    np.testing.assert_array_equal(
        np.array(Image.open(io.BytesIO(r.content))), np.array(Image.open(io.BytesIO(torch_mask)))
    )
    r = post(c, image_file.read_bytes(), "?uncertainty=tta&format=json")
    assert r.status_code == 200 and r.json()["uncertainty"]["method"] == "tta"
    r = post(c, image_file.read_bytes(), "?uncertainty=mc-dropout")
    assert r.status_code == 400 and "\n" not in r.json()["detail"]
    assert "MC dropout samples the dropout layers of a PyTorch model" in r.json()["detail"]


def test_serve_runs_a_file_in_the_backend_it_names(ckpt, exported, image_file, tmp_path):
    onnx_file, _ = exported
    for path, backend in ((onnx_file, "openvino"), (ckpt, "onnxruntime")):
        c = client(path, backend=backend, concurrency=2)
        assert c.get("/model").json()["backend"] == backend
        r = post(c, image_file.read_bytes())
        assert r.status_code == 200
        assert r.content == predicted_mask(path, image_file, tmp_path / backend, backend)
    assert client(ckpt).get("/model").json()["backend"] == "torch"


def test_a_backend_or_device_the_file_cannot_take_is_refused_before_serving(ckpt, exported):
    onnx_file, xml = exported
    for path, config, message in (
        (xml, {"backend": "onnxruntime"}, "m.xml is an OpenVINO IR: it runs only with --backend openvino"),
        (onnx_file, {"backend": "torch"}, "m.onnx is an exported ONNX model"),
        (ckpt, {"backend": "tensorrt"}, "unknown backend 'tensorrt'"),
        (xml, {"device": "cuda"}, "runs in openvino, on the CPU only here, not on 'cuda'; use --device cpu"),
    ):
        with pytest.raises(ConfigError) as info:
            create_app(path, ServeConfig(**config))
        assert message in str(info.value) and "\n" not in str(info.value)
