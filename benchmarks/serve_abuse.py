"""Hostile clients beside valid ones on ``seglab serve`` (127.0.0.1 only; bounded; it stops by itself).

One ``seglab serve`` (the demo's U-Net size, random weights, default limits, a token) is started; ``--clients``
valid clients upload a 256x256 PNG in a loop (with the token, each answer compared with ``seglab predict``'s mask,
byte for byte) through a series of phases of ``--seconds`` each:

1. unloaded: the valid clients alone (the reference throughput);
2. 16 slow-body clients: each announces ``Content-Length: 100000``, sends 100 bytes and waits (again and again);
3. idle connections: ``--idle`` connections that send nothing;
4. large uploads: 4000x4000 PNGs (a few KB each) with and without ``?uncertainty=tta``, then the largest
   uploads the default ``--max-work`` admits (one pass over 2048x2048, TTA over 1024x1024, 8 MC dropout samples
   over 724x724; the server runs with ``--add-dropout 0.1``): this phase lasts
   until those are answered;
5. decoders outside the allowlist: EPS, TGA, SGI, PCX, DDS, JPEG 2000, ICO, GIF, PPM, QOI uploads;
6. bad hosts and tokens: a foreign ``Host`` header, no token, a wrong token, ``/model`` and ``/openapi.json``
   without the token;
7. all of 2-6 at once (the large uploads: the 4000x4000 ones only).

Prints a markdown table: per phase, valid requests/s (and % of unloaded), valid p95 latency, whether every valid
answer was right, the server's peak resident memory during the phase (VmRSS sampled every 0.1 s), and what each
abuse got (status codes; for idle connections, how many the server closed and after how long). Then the server's
VmHWM, whether it was up at the end and whether its log holds a traceback.

    .venv/bin/python benchmarks/serve_abuse.py                  # about 2-3 minutes on 2 cores
    .venv/bin/python benchmarks/serve_abuse.py --seconds 5      # a quick look
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import demo_checkpoint, free_port, memory_kb, png, run_threads, start  # noqa: E402

TOKEN = "abuse-benchmark-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Phase:
    """Shared state of one phase: a stop time, the valid clients' records and the abusers' answers."""

    def __init__(self, seconds: float, open_ended: bool = False) -> None:
        self.stop = time.monotonic() + seconds
        self.open_ended = open_ended  # it lasts until an abuser sets ``done``
        self.valid: list[tuple[int, float, bool]] = []  # (status, seconds, correct)
        self.abuse: dict[str, Counter] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()  # set when the phase ends (a long phase sets it itself)

    def running(self) -> bool:
        return not self.done.is_set() and (self.open_ended or time.monotonic() < self.stop)

    def record(self, kind: str, outcome: object) -> None:
        with self.lock:
            self.abuse.setdefault(kind, Counter())[outcome] += 1


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 300,
) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return 0, b""  # connection error
    finally:
        c.close()


def valid_client(port: int, phase: Phase, image: bytes, expected: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Content-Type": "image/png", **AUTH}
    while phase.running():
        t = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=image, headers=headers)
            r = conn.getresponse()
            status, data = r.status, r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            status, data = 0, b""
        with phase.lock:
            phase.valid.append((status, time.perf_counter() - t, status == 200 and data == expected))
    conn.close()


def slow_client(port: int, phase: Phase) -> None:
    """Announce 100,000 bytes, send 100, wait for the answer; again until the phase ends."""
    while phase.running():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"\x89PNG" * 25
        )
        s.settimeout(0.2)
        reply = b""
        while phase.running():
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            reply += chunk
        s.close()
        if reply.startswith(b"HTTP/1.1 "):
            phase.record("16 slow bodies", int(reply[9:12]))
        elif not phase.running():
            phase.record("16 slow bodies", "waiting at the end")
        else:
            phase.record("16 slow bodies", "closed, no answer")


def idle_clients(port: int, phase: Phase, count: int) -> None:
    """``count`` connections that send nothing; each one the server closes is noted (after how long) and replaced."""
    sel = selectors.DefaultSelector()

    def open_one() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_READ, time.monotonic())

    for _ in range(count):
        open_one()
    while phase.running():
        for key, _ in sel.select(timeout=0.2):
            opened = key.data
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
            phase.record(f"{count} idle connections", f"closed after {round(time.monotonic() - opened)} s")
            open_one()
    for key in list(sel.get_map().values()):
        phase.record(f"{count} idle connections", "open at the end")
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()


def big_png(side: int) -> bytes:
    """A ``side`` x ``side`` PNG of a few KB (flat colour bands: tiny to send, huge to decode)."""
    bands = np.repeat(np.arange(side, dtype=np.uint16)[:, None] * 7 // side * 36, side, axis=1).astype(
        np.uint8
    )
    return png(np.stack([bands, bands.T, np.full_like(bands, 90)], axis=-1))


def large_uploads(port: int, phase: Phase, admitted: bool) -> None:
    """4000x4000 with and without TTA (over the work budget: 413 at once); with ``admitted`` also the largest
    uploads the default budget admits, each answered in full; then the phase ends."""
    headers = {"Content-Type": "image/png", **AUTH}
    jobs = [("4000x4000", 4000, ""), ("4000x4000 ?uncertainty=tta", 4000, "?uncertainty=tta")]
    if admitted:
        jobs += [
            ("2048x2048 (max work)", 2048, ""),
            ("1024x1024 ?uncertainty=tta (max work)", 1024, "?uncertainty=tta"),
            ("724x724 ?uncertainty=mc-dropout (max work)", 724, "?uncertainty=mc-dropout"),
        ]
    images = {side: big_png(side) for side in {s for _, s, _ in jobs}}
    first = True
    while first or (not admitted and phase.running()):
        first = False
        for name, side, query in jobs:
            t = time.perf_counter()
            status, _ = request(port, "POST", f"/predict{query}", images[side], headers, timeout=600)
            seconds = time.perf_counter() - t
            phase.record(
                f"{name} ({len(images[side]) // 1024} KB)",
                f"{status} in {seconds:.1f} s" if seconds >= 1 else status,
            )
    if admitted:
        phase.done.set()


def foreign_formats() -> dict[str, bytes]:
    img = Image.new("RGB", (64, 48), (10, 200, 30))
    out = {}
    for fmt in ("EPS", "TGA", "SGI", "PCX", "DDS", "JPEG2000", "ICO", "GIF", "PPM", "QOI"):
        buf = io.BytesIO()
        try:
            img.save(buf, format=fmt)
        except (OSError, KeyError, ValueError):
            continue  # this Pillow cannot write it
        out[fmt] = buf.getvalue()
    return out


def decoders(port: int, phase: Phase) -> None:
    files = foreign_formats()
    while phase.running():
        for fmt, data in files.items():
            status, _ = request(port, "POST", "/predict", data, {"Content-Type": "image/png", **AUTH})
            phase.record("formats outside the list", f"{fmt} {status}")


def hosts_and_tokens(port: int, phase: Phase, image: bytes) -> None:
    kinds: list[tuple[str, str, str, dict[str, str]]] = [
        ("Host: evil.example (with the token)", "POST", "/predict", {"Host": "evil.example", **AUTH}),
        ("Host: localhost.evil.example", "GET", "/health", {"Host": f"localhost.evil.example:{port}"}),
        ("no token", "POST", "/predict", {}),
        ("wrong token", "POST", "/predict", {"Authorization": "Bearer guess"}),
        ("/model without token", "GET", "/model", {}),
        ("/openapi.json without token", "GET", "/openapi.json", {}),
    ]
    while phase.running():
        for name, method, path, headers in kinds:
            body = image if method == "POST" else None
            status, _ = request(port, method, path, body, {"Content-Type": "image/png", **headers})
            phase.record(name, status)


def run_phase(
    name: str,
    port: int,
    pid: int,
    seconds: float,
    clients: int,
    image: bytes,
    expected: bytes,
    abusers: list[Callable[[Phase], None]],
    open_ended: bool = False,
) -> dict:
    phase = Phase(seconds, open_ended)
    peak = [0]

    def watch() -> None:
        while phase.running():
            peak[0] = max(peak[0], memory_kb(pid, "VmRSS"))
            time.sleep(0.1)

    threads = [
        threading.Thread(target=valid_client, args=(port, phase, image, expected)) for _ in range(clients)
    ]
    threads += [threading.Thread(target=a, args=(phase,)) for a in abusers]
    threads.append(threading.Thread(target=watch))
    elapsed = run_threads(threads)
    ok = [s for st, s, _ in phase.valid if st == 200]
    print(f"  {name}: {len(ok) / elapsed:.1f} valid/s over {elapsed:.0f} s", file=sys.stderr)
    return {
        "name": name,
        "elapsed": elapsed,
        "valid": phase.valid,
        "abuse": phase.abuse,
        "peak_mb": peak[0] / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", help="a run folder or .safetensors (default: the demo's U-Net, random weights)"
    )
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase (default: 15)")
    p.add_argument("--clients", type=int, default=4, help="valid client threads (default: 4)")
    p.add_argument("--slow", type=int, default=16, help="slow-body clients (default: 16)")
    p.add_argument("--idle", type=int, default=200, help="idle connections (default: 200)")
    p.add_argument("--skip-admitted", action="store_true", help="leave out the largest admitted uploads")
    p.add_argument(
        "--phases", help="run only these phases, e.g. 1,2,5 (1: unloaded, always run; default: all)"
    )
    args = p.parse_args()

    import torch

    from seglab.bench.latency import device_name
    from seglab.engine.predict import predict

    tmp = Path(tempfile.mkdtemp(prefix="serve-abuse-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = demo_checkpoint(tmp / "model")
    from seglab.data.synthetic import write_folder

    image_path = next((write_folder(tmp / "data", num_images=1, size=256) / "images").iterdir())
    (record,) = predict(checkpoint, [image_path], tmp / "pred", progress=False, write_overlay=False)
    expected, image = Path(record["mask"]).read_bytes(), image_path.read_bytes()

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "seglab",
        "serve",
        checkpoint,
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--add-dropout",
        "0.1",
    ]
    log = tmp / "server.log"
    proc = start(command, port, log)
    idle_mb = memory_kb(proc.pid, "VmRSS") / 1024
    slow = [lambda ph: slow_client(port, ph)] * args.slow
    idle = [lambda ph: idle_clients(port, ph, args.idle)]
    dec = [lambda ph: decoders(port, ph)]
    bad = [lambda ph: hosts_and_tokens(port, ph, image)]
    phases = [
        ("unloaded", []),
        (f"{args.slow} slow bodies", slow),
        (f"{args.idle} idle connections", idle),
        ("large uploads", [lambda ph: large_uploads(port, ph, not args.skip_admitted)]),
        ("decoders outside the list", dec),
        ("bad hosts and tokens", bad),
        ("all at once", slow + idle + dec + bad + [lambda ph: large_uploads(port, ph, False)]),
    ]
    if args.phases:
        keep = {1, *(int(k) for k in args.phases.split(","))}
        phases = [ph for k, ph in enumerate(phases, 1) if k in keep]
    results = []
    try:
        for name, abusers in phases:
            open_ended = name == "large uploads" and not args.skip_admitted
            results.append(
                run_phase(
                    name, port, proc.pid, args.seconds, args.clients, image, expected, abusers, open_ended
                )
            )
        alive = proc.poll() is None and request(port, "GET", "/health", timeout=10)[0] == 200
        hwm = memory_kb(proc.pid, "VmHWM") / 1024 if proc.poll() is None else 0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()

    base = len([1 for st, _, _ in results[0]["valid"] if st == 200]) / results[0]["elapsed"]
    print(
        f"\nmachine: {device_name(torch.device('cpu'))}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"`seglab serve CKPT --token T --add-dropout 0.1` (default limits) on the demo's U-Net (depth 4, "
        f"width 16); {args.clients} valid clients (256x256 PNG) for {args.seconds:g} s per phase\n"
    )
    print(
        "| phase | valid 200/s | % of unloaded | valid p95 ms | valid all correct | peak RSS MB | "
        "what the abuse got |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ok = [s for st, s, _ in r["valid"] if st == 200]
        rate = len(ok) / r["elapsed"]
        others = Counter(st for st, _, _ in r["valid"] if st != 200)
        correct = all(c for st, _, c in r["valid"] if st == 200) and not others
        p95 = f"{1000 * np.percentile(ok, 95):.0f}" if ok else "-"
        abuse = (
            "; ".join(
                f"{kind}: " + ", ".join(f"{o}: {n}" for o, n in sorted(c.items(), key=str))
                for kind, c in r["abuse"].items()
            )
            or "-"
        )
        extra = f" (non-200: {dict(others)})" if others else ""
        print(
            f"| {r['name']} | {rate:.2f} | {100 * rate / base if base else 0:.0f} % | {p95} | "
            f"{'yes' if correct else 'NO'}{extra} | {r['peak_mb']:.0f} | {abuse} |"
        )
    print(
        f"\nserver: idle {idle_mb:.0f} MB, peak (VmHWM) {hwm:.0f} MB; up at the end: {'yes' if alive else 'NO'}; "
        f"tracebacks in its log: {text.count('Traceback')}"
    )


if __name__ == "__main__":
    main()
