"""``seglab serve`` under hostile clients (issue 26): slow and idle connections, work per request, decoders outside
the allowlist, tokens, Host headers, malformed forms, and start-up checks. The connection-level cases run against
a real ``seglab serve`` process with raw sockets; the rest through FastAPI's test client."""

from __future__ import annotations

import http.client
import io
import math
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from seglab.errors import ConfigError  # noqa: E402
from seglab.serve.app import FORMATS, ServeConfig, create_app, host_check, serve  # noqa: E402

TINY = {"depth": 2, "base_channels": 4}


def encode(shape: tuple[int, int], fmt: str = "PNG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def client(ckpt: Path, **config) -> TestClient:
    return TestClient(create_app(ckpt, ServeConfig(**config)), base_url="http://localhost")


def post(c: TestClient, data: bytes, query: str = "", **headers):
    return c.post(f"/predict{query}", content=data, headers={"Content-Type": "image/png", **headers})


# ---- a real server, raw sockets ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """``seglab serve --port 0 --concurrency 1 --queue 1 --body-timeout 2``: (port, log file)."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seglab",
                "serve",
                str(ckpt),
                "--port",
                "0",
                "--queue",
                "1",
                "--body-timeout",
                "2",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while not (found := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"seglab serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    port = int(found.group(1))
    while True:  # the line is written just before uvicorn starts accepting
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port, log
    proc.terminate()
    proc.wait(10)


def slow_upload(port: int, sent: bytes = b"\x89PNG" + b"\x00" * 96, length: int = 100_000) -> socket.socket:
    """A client that announces ``length`` bytes, sends ``sent`` and then waits."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + sent
    )
    return s


def answer(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes)."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return data + b"<still open>"
    return data


def test_slow_bodies_do_not_take_slots_and_get_408(server) -> None:
    """4 clients that announce 100 kB and send 100 bytes (concurrency 1 + queue 1 = 2 places) leave the slots to a
    valid client; after --body-timeout each gets 408 and its connection is closed, as is an idle connection."""
    port, _ = server
    slow = [slow_upload(port) for _ in range(4)]
    idle = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.3)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/predict", body=encode((40, 50)), headers={"Content-Type": "image/png"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    assert r.read().startswith(b"\x89PNG")
    started = time.monotonic()
    for s in slow:
        reply = answer(s, 10)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"did not arrive within 2 s" in reply and reply.endswith(b"}")  # then closed
    assert answer(idle, 10) == b""  # closed without an answer
    assert time.monotonic() - started < 8
    c.request("GET", "/health")
    assert c.getresponse().read().startswith(b'{"status":"ok","arch":"unet","active":0')


def test_client_leaving_mid_upload_logs_one_line(server) -> None:
    port, log = server
    before = log.read_text()
    s = slow_upload(port)
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 10
    while "disconnected" not in log.read_text()[len(before) :] and time.monotonic() < deadline:
        time.sleep(0.1)
    new = log.read_text()[len(before) :]
    assert new.count("\n") == 1 and "disconnected during its upload after 100 of 100000 bytes" in new, new
    assert "Traceback" not in log.read_text()


def test_over_limit_bodies_get_413_not_a_reset(server) -> None:
    """A body over --max-upload-mb (20 MiB) but within 4 times it is read to its end and dropped, so a client that
    sends it whole before reading gets the 413 (closing at once would reset it mid-send); a far larger one
    is answered 413 from its header alone."""
    port, _ = server
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/predict", body=b"\x00" * (25 << 20), headers={"Content-Type": "image/png"})
    r = c.getresponse()
    assert r.status == 413 and b"26,214,400 bytes, above this service's limit of 20,971,520" in r.read()
    s = slow_upload(port, sent=b"", length=1 << 40)  # a terabyte announced, nothing sent
    reply = answer(s, 10)
    assert reply.startswith(b"HTTP/1.1 413") and b"above this service's limit" in reply, reply[:200]


def test_bad_host_header_on_the_wire(server) -> None:
    port, _ = server
    for host, status in (
        ("evil.example", 400),
        (f"evil.example:{port}", 400),
        (f"localhost:{port}", 200),
        (f"[::1]:{port}", 200),
    ):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/health", headers={"Host": host})
        r = c.getresponse()
        assert r.status == status, (host, r.read())


# ---- bounded work per request ------------------------------------------------------------------------------


def test_work_budget_counts_pixels_times_passes(ckpt) -> None:
    c = client(ckpt, max_work=5_000, samples=8)
    data = encode((37, 45))  # 1,665 pixels
    assert post(c, data).status_code == 200
    r = post(c, data, "?uncertainty=tta")
    assert r.status_code == 413
    assert "45x37 = 1,665 pixels x 4 passes (uncertainty=tta) = 6,660 pixel-passes" in r.json()["detail"]
    assert "limit of 5,000 (--max-work)" in r.json()["detail"]
    r = post(c, data, "?uncertainty=mc-dropout&format=json")
    assert r.status_code == 413 and "x 8 passes" in r.json()["detail"]
    assert c.get("/model").json()["limits"]["max_work"] == 5_000


def test_large_images_are_predicted_in_tiles(ckpt, tmp_path) -> None:
    """Above tile_above pixels the model never sees more than a tile and its context, and the answers are those
    of ``seglab predict --tile --overlap``; below it, those of plain ``seglab predict``."""
    from seglab.engine.predict import predict

    app = create_app(ckpt, ServeConfig(tile=32, overlap=8, tile_above=5_000))
    c = TestClient(app, base_url="http://localhost")
    seen: list[tuple[int, ...]] = []
    app.state.service.model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    large, small = tmp_path / "large.png", tmp_path / "small.png"
    large.write_bytes(encode((120, 150)))
    small.write_bytes(encode((50, 60), seed=1))
    tiled = predict(ckpt, [large], tmp_path / "tiled", progress=False, tile=32, overlap=8)[0]
    whole = predict(ckpt, [small], tmp_path / "whole", progress=False)[0]
    seen.clear()
    assert post(c, large.read_bytes()).content == Path(tiled["mask"]).read_bytes()
    assert seen and max(max(s) for s in seen) <= 32 + 2 * 8
    seen.clear()
    assert post(c, small.read_bytes()).content == Path(whole["mask"]).read_bytes()
    assert seen == [(50, 60)]
    tta = predict(ckpt, [large], tmp_path / "tta", progress=False, uncertainty="tta", tile=32, overlap=8)[0]
    assert post(c, large.read_bytes(), "?uncertainty=tta").content == Path(tta["uncertainty"]).read_bytes()


# ---- formats, forms, names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt", ["EPS", "TGA", "SGI", "PCX", "DDS", "ICO", "GIF", "PPM", "JPEG2000", "XBM", "SPIDER", "QOI"]
)
def test_decoders_outside_the_allowlist_are_refused(ckpt, fmt) -> None:
    img = Image.new("RGB", (20, 16), (10, 200, 30))
    buf = io.BytesIO()
    try:
        (img.convert("F") if fmt == "SPIDER" else img.convert("1") if fmt == "XBM" else img).save(
            buf, format=fmt
        )
    except (OSError, KeyError, ValueError) as e:
        pytest.skip(f"Pillow cannot write {fmt} here: {e}")
    r = post(client(ckpt), buf.getvalue())
    assert r.status_code == 400, r.text
    assert f"is in {Image.open(buf).format} format; only PNG, JPEG" in r.json()["detail"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP", "WEBP"])
def test_allowlisted_formats_are_served(ckpt, fmt) -> None:
    assert fmt in FORMATS
    r = post(client(ckpt), encode((24, 30), fmt))
    assert r.status_code == 200, r.text


def test_forms_with_two_files_and_upload_names(ckpt) -> None:
    c = client(ckpt)
    data = encode((20, 20))
    r = c.post(
        "/predict", files=[("file", ("a.png", data, "image/png")), ("file", ("b.png", data, "image/png"))]
    )
    assert r.status_code == 400 and "holds 2 files ('a.png', 'b.png')" in r.json()["detail"]
    r = c.post(
        "/predict", files=[("file", ("a.png", data, "image/png")), ("other", ("b.png", data, "image/png"))]
    )
    assert r.status_code == 400
    r = c.post("/predict", files={"file": ("notes.png", b"not an image at all", "image/png")})
    detail = r.json()["detail"]
    assert r.status_code == 400 and "upload 'notes.png'" in detail
    assert "NamedBytes" not in detail and "0x" not in detail
    r = post(c, b"not an image at all")
    assert r.status_code == 400 and "NamedBytes" not in r.json()["detail"], r.json()


# ---- tokens and hosts --------------------------------------------------------------------------------------


def test_empty_token_is_refused_at_start_up(run_cli, tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="token is empty"):
        ServeConfig(token="")
    code, _, err = run_cli("serve", tmp_path / "nothing", "--token", "")
    assert code == 2 and err.count("\n") == 1 and "token is empty" in err
    monkeypatch.setenv("SEGLAB_TOKEN", "")
    code, _, err = run_cli("serve", tmp_path / "nothing")
    assert code == 2 and err.count("\n") == 1 and "SEGLAB_TOKEN=''" in err


def test_openapi_and_docs_are_behind_the_token(ckpt) -> None:
    c = client(ckpt, token="s3cret")
    assert c.get("/openapi.json").status_code == 401
    r = c.get("/openapi.json", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and "/predict" in r.json()["paths"]
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    assert client(ckpt).get("/openapi.json").status_code == 200  # an open service is open


@pytest.mark.parametrize(
    ("bound", "allowed", "host", "ok"),
    [
        ("127.0.0.1", [], "127.0.0.1:8000", True),
        ("127.0.0.1", [], "localhost", True),
        ("127.0.0.1", [], "LOCALHOST.:8000", True),
        ("127.0.0.1", [], "[::1]:8000", True),
        ("127.0.0.1", [], "evil.example", False),
        ("127.0.0.1", [], "127.0.0.1.evil.example", False),
        ("127.0.0.1", [], "localhost.evil.example:8000", False),
        ("127.0.0.1", [], "10.1.2.3", False),
        ("127.0.0.1", [], "", False),
        ("127.0.0.1", ["seg.example.org"], "seg.example.org:8000", True),
        ("127.0.0.1", ["*.example.org"], "a.example.org", True),
        ("127.0.0.1", ["*.example.org"], "example.org.evil", False),
        ("127.0.0.1", ["*"], "anything.example", True),
        ("0.0.0.0", [], "10.1.2.3:8000", True),
        ("0.0.0.0", [], "[fe80::1]:8000", True),
        ("0.0.0.0", [], "evil.example", False),
        ("192.168.5.5", [], "192.168.5.5:8000", True),
        ("::1", [], "[::1]:8000", True),
        ("::", [], "[2001:db8::7]", True),
        ("::", [], "localhost.evil.example", False),
    ],
)
def test_host_headers(bound, allowed, host, ok) -> None:
    assert host_check(ServeConfig(host=bound, allowed_hosts=allowed))(host) is ok


def test_bad_host_is_refused_before_anything_else(ckpt) -> None:
    c = TestClient(create_app(ckpt, ServeConfig(token="s3cret")), base_url="http://evil.example")
    for r in (c.get("/"), c.get("/health"), c.post("/predict", content=b"x")):
        assert r.status_code == 400 and "'evil.example' is not served here" in r.json()["detail"]


# ---- start-up checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("add_dropout", 1.5),
        ("add_dropout", -0.1),
        ("add_dropout", math.nan),
        ("add_dropout", 1.0),
        ("body_timeout", 0),
        ("body_timeout", math.nan),
        ("body_timeout", math.inf),
        ("concurrency", 0),
        ("queue", -1),
        ("samples", 0),
        ("max_upload_bytes", 0),
        ("max_pixels", 0),
        ("max_work", 0),
        ("tile", -1),
        ("tile_above", 0),
        ("overlap", -1),
        ("concurrency", 1.5),
        ("queue", True),
        ("allowed_hosts", ["a b"]),
        ("allowed_hosts", "a,,b"),
    ],
)
def test_serve_config_refuses_bad_values(field, value) -> None:
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        ServeConfig(**{field: value})


@pytest.mark.parametrize("port", [-1, 65536, 70000, True, 80.0])
def test_bad_port_is_refused_before_loading(tmp_path, port) -> None:
    with pytest.raises(ConfigError, match=r"port must be within 0\.\.65535"):
        serve(tmp_path / "nothing", port=port)


def test_port_in_use_is_one_line(ckpt) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1:"):
            serve(ckpt, port=taken.getsockname()[1])
