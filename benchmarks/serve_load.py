"""Load on ``seglab serve``: concurrent clients on 127.0.0.1 for a bounded time, valid and malformed uploads mixed,
beside a bare FastAPI endpoint (the same model, forward + argmax + PNG, no limits) under the same load.

Each of ``--clients`` threads sends, for ``--duration`` seconds, requests in a fixed rotation: valid image uploads
(the mask as PNG, and the JSON answer with shares) and malformed ones (empty body, bytes that are no image, a
truncated PNG, a text content type, a body over the upload limit, a PNG over the pixel limit, an unknown
parameter). A watcher asks ``/health`` every 0.5 s and samples the server's memory. Every valid answer is compared
with the mask ``seglab predict`` writes for the same image (byte for byte).

Prints, per server: requests/s, p50/p95 latency of valid and of malformed requests, the answers by status code,
whether every malformed request got a 4xx, whether every valid 200 was correct, /health failures, whether the
server was still up at the end, and its peak resident memory (VmHWM).

    .venv/bin/python benchmarks/serve_load.py                      # about 1 minute
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/demo/run --clients 16 --duration 60
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/demo/run --backend openvino   # another runtime
"""

import argparse
import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 1.0  # the service's --max-upload-mb here
LIMIT_PIXELS = 1_000_000  # and its --max-pixels


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def requests_mix(image: bytes) -> list[tuple[str, str, dict[str, str], bytes, bool]]:
    """(name, path, headers, body, valid) of every kind of request, in the order the clients rotate through."""
    big = png(np.zeros((1200, 1200, 3), np.uint8))  # 1.44 M pixels, a few KB
    image_type = {"Content-Type": "image/png"}
    return [
        ("valid: mask PNG", "/predict", image_type, image, True),
        ("valid: JSON", "/predict?format=json", image_type, image, True),
        ("empty body", "/predict", image_type, b"", False),
        ("not an image", "/predict", image_type, b"GIF89a but not really" * 10, False),
        ("truncated PNG", "/predict", image_type, image[: len(image) // 2], False),
        ("text content type", "/predict", {"Content-Type": "text/plain"}, b"hello", False),
        ("over the byte limit", "/predict", image_type, os.urandom(int(LIMIT_MB * 2**20) + 1), False),
        ("over the pixel limit", "/predict", image_type, big, False),
        ("unknown parameter", "/predict?file=/etc/passwd", image_type, image, False),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    """Start a server whose output goes to ``log`` (a pipe nobody reads would fill and stall it)."""
    with log.open("wb") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"server {' '.join(command)} did not start: {log.read_text()[-2000:]}")


def demo_checkpoint(folder: Path) -> str:
    """The demo's U-Net (depth 4, width 16) with random weights, saved as ``folder/best``: the served model."""
    import torch

    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.data.synthetic import CLASSES, PALETTE
    from seglab.models.factory import create_model

    params = {"depth": 4, "base_channels": 16}
    torch.manual_seed(0)
    model = create_model("unet", num_classes=len(CLASSES), in_channels=3, **params)
    meta = CheckpointMeta(
        arch="unet",
        num_classes=len(CLASSES),
        in_channels=3,
        model_params=params,
        class_names=list(CLASSES),
        palette=[list(c) for c in PALETTE],
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    return str(save_checkpoint(folder / "best", model, meta))


def run_threads(threads: list[threading.Thread]) -> float:
    """Start every thread, wait for all of them, and return the seconds that took."""
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def memory_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def load(
    port: int, proc: subprocess.Popen, clients: int, duration: float, expected: bytes, mix: list
) -> dict:
    """Run the clients and the watcher; returns the records and the server's numbers."""
    records: list[tuple[str, int, float, bool]] = []  # (kind, status, seconds, correct)
    lock = threading.Lock()
    stop = time.monotonic() + duration
    health_failures = 0

    def client(k: int) -> None:
        i = k  # clients start at different places in the rotation
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop:
            name, path, headers, body, valid = mix[i % len(mix)]
            i += 1
            t = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                status = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                status, data = 0, b""  # connection error
            seconds = time.perf_counter() - t
            correct = True
            if valid and status == 200:
                if "json" in path:
                    correct = base64.b64decode(json.loads(data)["mask_png"]) == expected
                else:
                    correct = data == expected
            with lock:
                records.append((name, status, seconds, correct))

    def watcher() -> None:
        nonlocal health_failures
        while time.monotonic() < stop:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status != 200:
                    health_failures += 1
            except OSError:
                health_failures += 1
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    threads.append(threading.Thread(target=watcher))
    elapsed = run_threads(threads)
    alive = proc.poll() is None
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health")
        alive = alive and c.getresponse().status == 200
    except OSError:
        alive = False
    peak = memory_kb(proc.pid, "VmHWM") if proc.poll() is None else 0
    return {
        "records": records,
        "elapsed": elapsed,
        "health_failures": health_failures,
        "alive": alive,
        "peak_mb": peak / 1024,
    }


def summary(name: str, r: dict) -> list[str]:
    recs = r["records"]
    valid_names = {"valid: mask PNG", "valid: JSON"}
    ok = [s for n, st, s, _ in recs if n in valid_names and st == 200]
    bad = [s for n, st, s, _ in recs if n not in valid_names]
    codes = Counter(st for _, st, _, _ in recs)
    malformed_4xx = all(400 <= st < 500 for n, st, _, _ in recs if n not in valid_names)
    correct = all(c for n, st, _, c in recs if n in valid_names and st == 200)

    def pct(xs: list[float], q: float) -> str:
        return f"{1000 * np.percentile(xs, q):.0f}" if xs else "-"

    code_text = ", ".join(f"{c if c else 'conn. error'}: {n}" for c, n in sorted(codes.items()))
    return [
        f"| {name} | {len(recs) / r['elapsed']:.1f} | {len(ok) / r['elapsed']:.1f} | {pct(ok, 50)} | "
        f"{pct(ok, 95)} | {pct(bad, 50)} | {pct(bad, 95)} | {code_text} | {'yes' if malformed_4xx else 'NO'} | "
        f"{'yes' if correct else 'NO'} | {r['health_failures']} | {'yes' if r['alive'] else 'NO'} | "
        f"{r['peak_mb']:.0f} |"
    ]


def per_kind(r: dict) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    for name, status, _, _ in r["records"]:
        out[name][status] += 1
    return out


def bare_server(checkpoint: str, port: int, backend: str | None = None) -> None:
    """The reference: the same model (in the same runtime) behind a bare FastAPI endpoint (forward, argmax, PNG),
    no limits or checks."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request, Response
    from fastapi.responses import JSONResponse

    from seglab.checkpoint import load_checkpoint
    from seglab.data.io import png_bytes

    model, meta = load_checkpoint(checkpoint, backend=backend)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        body = await request.body()
        image = np.array(Image.open(io.BytesIO(body)).convert("RGB"))
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(meta.mean)[:, None, None]) / torch.tensor(meta.std)[:, None, None]
        with torch.inference_mode():
            labels = model(x)[0].argmax(0).byte().numpy()
        mask = png_bytes(labels, meta.palette)
        if request.query_params.get("format") == "json":
            return JSONResponse({"mask_png": base64.b64encode(mask).decode()})
        return Response(mask, media_type="image/png")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", help="a run folder or .safetensors (default: the demo's U-Net, random weights)"
    )
    p.add_argument("--image", help="the valid upload (default: a 256x256 SyntheticShapes image)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per server (default: 20)")
    p.add_argument("--concurrency", type=int, default=1, help="seglab serve --concurrency (default: 1)")
    p.add_argument("--queue", type=int, default=8, help="seglab serve --queue (default: 8)")
    p.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "openvino"),
        help="seglab serve --backend: the runtime the model runs in (default: the checkpoint file's own); the "
        "answers are checked against seglab predict --backend on the same runtime",
    )
    p.add_argument("--bare-server", nargs=2, metavar=("CKPT", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], int(args.bare_server[1]), args.backend)
        return

    import torch

    from seglab.bench.latency import device_name
    from seglab.engine.predict import predict

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = demo_checkpoint(tmp / "model")  # not beside the data
    image_path = Path(args.image) if args.image else None
    if image_path is None:
        from seglab.data.synthetic import write_folder

        root = write_folder(tmp / "data", num_images=1, size=256)
        image_path = next((root / "images").iterdir())
    (record,) = predict(
        checkpoint, [image_path], tmp / "pred", progress=False, write_overlay=False, backend=args.backend
    )
    expected = Path(record["mask"]).read_bytes()
    mix = requests_mix(image_path.read_bytes())

    results = {}
    backend_flag = ["--backend", args.backend] if args.backend else []
    port = free_port()
    seglab = [
        sys.executable,
        "-m",
        "seglab",
        "serve",
        checkpoint,
        "--port",
        str(port),
        "--max-upload-mb",
        str(LIMIT_MB),
        "--max-pixels",
        str(LIMIT_PIXELS),
        "--concurrency",
        str(args.concurrency),
        "--queue",
        str(args.queue),
        *backend_flag,
    ]
    bare = free_port()  # a port of its own (port + 1 may be some client's ephemeral port)
    bare_command = [sys.executable, __file__, "--bare-server", checkpoint, str(bare), *backend_flag]
    for name, command, at in (
        ("seglab serve" + (f" --backend {args.backend}" if args.backend else ""), seglab, port),
        ("bare FastAPI endpoint", bare_command, bare),
    ):
        proc = start(command, at, tmp / f"server-{at}.log")
        try:
            results[name] = load(at, proc, args.clients, args.duration, expected, mix)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # still busy with a request: no graceful end
                proc.kill()
                proc.wait()

    w, h = Image.open(image_path).size
    print(
        f"\nmachine: {device_name(torch.device('cpu'))}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"{args.clients} clients for {args.duration:.0f} s per server; valid upload {w}x{h} "
        f"({len(mix[0][3]):,} bytes); seglab serve --concurrency {args.concurrency} --queue {args.queue} "
        f"--backend {args.backend or 'of the file'} "
        f"--max-upload-mb {LIMIT_MB:g} --max-pixels {LIMIT_PIXELS:,}; 2 of every {len(mix)} requests valid\n"
    )
    print(
        "| server | requests/s | valid 200/s | valid p50 ms | valid p95 ms | malformed p50 ms | malformed p95 ms "
        "| answers by code | malformed all 4xx | valid all correct | /health failures | up at the end "
        "| peak memory MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print("\n".join(summary(name, r)))
    print("\nanswers by request kind (status: count)\n")
    kinds = [m[0] for m in mix]
    print("| request | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for kind in kinds:
        cells = [
            ", ".join(f"{s or 'conn. error'}: {n}" for s, n in sorted(per_kind(r)[kind].items()))
            for r in results.values()
        ]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
