"""The REST service: a checkpoint behind FastAPI, served by uvicorn (``seglab serve``).

Routes: ``GET /`` (the web viewer), ``GET /health``, ``GET /model``, ``GET /openapi.json``, ``POST /predict``. A
request runs ``seglab.inference.predict_image``, the per-image path of ``seglab predict``, so a mask from the
service is byte for byte the ``<stem>_mask.png`` that ``seglab predict`` writes for the same image (for an image
above ``tile_above`` pixels, the one ``seglab predict --tile TILE --overlap OVERLAP`` writes).

Hostile clients are bounded, each by one limit (see :class:`ServeConfig`):

* time: a request's head and body must arrive within ``body_timeout`` seconds (408, connection closed; a
  connection that sends no request head in that time is closed), and a request waits for a prediction slot only
  once its body has arrived, so slow or idle clients never take the place of others;
* bytes and pixels: a body above ``max_upload_bytes``, an image above ``max_pixels`` or decoding to more than
  ``max_bytes`` (pixels x bands x bytes per sample; all three read from its header,
  before decoding) gets 413;
* work: pixels x passes (TTA: flips x scales; MC dropout: samples) above ``max_work`` gets 413, and an image
  above ``tile_above`` pixels is predicted in tiles of ``tile``, so its memory is bounded by the tile;
* decoders: only the formats of ``FORMATS`` are decoded (checked from the header); anything else gets 400;
* queue: at most ``concurrency`` images are predicted at a time, in worker threads (never on the event loop), and
  at most ``queue`` more wait; beyond that a request gets 503 at once;
* callers: with ``token``, a request without ``Authorization: Bearer <token>`` gets 401 (``/`` and ``/health``
  stay open; ``/openapi.json`` does not); a ``Host`` header other than the bound address, the local names and
  ``allowed_hosts`` gets 400 (a DNS-rebinding page cannot reach a local service).

An empty, undecodable or non-image upload, a form with more than one file, or an unknown parameter gets 400. No
request names a file: images come in the body.
"""

import asyncio
import base64
import hmac
import ipaddress
import math
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from seglab.errors import ConfigError, DataError, SeglabError

UNCERTAINTY = ("tta", "mc-dropout")  # the ?uncertainty= methods: both need only the one checkpoint
PARAMS = {"format": ("png", "json"), "overlay": ("0", "1"), "uncertainty": ("none", *UNCERTAINTY)}
IMAGE_TYPES = ("image/", "application/octet-stream", "multipart/form-data")
# an over-limit body of at most DRAIN x the byte limit is read to its end (and dropped) before the 413, so that a
# client still sending reads the answer instead of a reset; a larger one is answered at once, the connection closed
DRAIN = 4
# the formats an upload may have (MPO: the multi-picture JPEG of many cameras; TIFF through tifffile, 16-bit
# colour PNG through imagecodecs, NPY: a NumPy array, never a pickle); no other decoder runs
FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "WEBP", "NPY")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


@dataclass
class ServeConfig:
    """The service's limits and options (``seglab serve`` flags); every value is checked here (ConfigError).

    ``max_bytes``: the decoded image's bytes (pixels x bands x bytes per sample; default ``max_pixels`` x 4, so an
    RGB or RGBA upload of ``max_pixels`` fits, a 16-bit or multi-band one of as many bytes). ``max_work``: pixels
    x passes of one request (1 pass; TTA: flips x scales; MC dropout: ``samples``).
    ``tile``, ``tile_above``, ``overlap``: an image of more than ``tile_above`` pixels is predicted tile by tile
    (``tile`` 0: never). ``backend``: the runtime the model runs in (``seglab.models.runtime``; the runtimes run
    on the CPU). ``body_timeout``: seconds for a request's head and body to arrive. ``host``: the address
    bound; ``Host`` headers naming it or a local name are answered, and those of ``allowed_hosts`` (``*``: any,
    ``*.example.org``: its subdomains). Bound to every address (0.0.0.0 or ::), any IP address and this machine's
    host name are answered too (a DNS-rebinding page cannot name an IP address it does not serve)."""

    device: str = "cpu"
    backend: str | None = None  # torch, onnxruntime or openvino (default: the checkpoint file's own)
    token: str | None = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 4096 * 4096
    max_bytes: int | None = None  # None: max_pixels x 4
    max_work: int = 4 * 2**20
    tile: int = 256
    tile_above: int = 512 * 512
    overlap: int = 32
    concurrency: int = 1
    queue: int = 8
    samples: int = 8  # MC dropout passes
    add_dropout: float = 0.0  # MC dropout on a model without dropout layers: Dropout2d(P) before the head
    body_timeout: float = 10.0
    host: str = "127.0.0.1"
    allowed_hosts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (
            self.max_bytes is None
            and isinstance(self.max_pixels, int)
            and not isinstance(self.max_pixels, bool)
        ):
            self.max_bytes = self.max_pixels * 4
        lowest = {
            "max_upload_bytes": 1,
            "max_pixels": 1,
            "max_bytes": 1,
            "max_work": 1,
            "tile": 0,
            "tile_above": 1,
            "overlap": 0,
            "concurrency": 1,
            "queue": 0,
            "samples": 1,
        }
        for name, low in lowest.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"serve {name.replace('_', '-')} must be >= {low} (a whole number), got {value!r}"
                )
        if not _number(self.add_dropout) or not 0 <= self.add_dropout < 1:
            raise ConfigError(f"serve add-dropout must be within [0, 1), got {self.add_dropout!r}")
        if not _number(self.body_timeout) or not 0 < self.body_timeout < math.inf:
            raise ConfigError(
                f"serve body-timeout must be a number of seconds > 0, got {self.body_timeout!r}"
            )
        if self.token is not None and not self.token.strip():
            raise ConfigError(
                "the token is empty (--token '' or SEGLAB_TOKEN=''), which would serve without one; "
                "give a token, or unset both to serve openly"
            )
        if isinstance(self.allowed_hosts, str):
            self.allowed_hosts = self.allowed_hosts.split(",")
        hosts = [h.strip().lower().rstrip(".") for h in self.allowed_hosts]
        if any(not h or any(c in h for c in "/ ,") for h in hosts):
            raise ConfigError(
                f"serve allowed-hosts must be host names (e.g. seg.example.org, *.example.org or *), "
                f"got {self.allowed_hosts!r}"
            )
        self.allowed_hosts = [h[1:-1] if h.startswith("[") and h.endswith("]") else h for h in hosts]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


class HTTPError(Exception):
    """An answer other than 200: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ClientGone(Exception):
    """The client closed its connection before its upload arrived: logged in one line, nothing is answered."""


class Service:
    """The loaded checkpoint and the predictors built from it; ``predict`` is synchronous (run it in a thread)."""

    def __init__(self, checkpoint: str | Path, config: ServeConfig) -> None:
        from seglab.checkpoint import checkpoint_paths, load_checkpoint
        from seglab.engine.device import resolve_device
        from seglab.inference import palette_of
        from seglab.models.runtime import check_backend, runtime_device

        self.config = config
        self.checkpoint = checkpoint_paths(checkpoint)[0]
        self.backend = check_backend(self.checkpoint, config.backend)
        self.device = resolve_device(runtime_device(self.checkpoint, self.backend, config.device))
        self.model, self.meta = load_checkpoint(checkpoint, device=str(self.device), backend=self.backend)
        # MC dropout samples a PyTorch model's dropout layers; TTA only calls the model, in any runtime
        self.methods = list(UNCERTAINTY) if self.backend == "torch" else ["tta"]
        self.palette = palette_of(self.meta)
        self._predictors: dict[tuple[str, int | None], Any] = {}
        self._locks = {
            m: threading.Lock() for m in UNCERTAINTY
        }  # a stochastic predictor serves one at a time
        self._build = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` answers: everything a client needs to read the masks."""
        m, c = self.meta, self.config
        return {
            "checkpoint": self.checkpoint.name,
            "backend": self.backend,
            "arch": m.arch,
            "model_params": _without_paths(m.model_params),
            "classes": m.class_names,
            "palette": self.palette,
            "num_classes": m.num_classes,
            "in_channels": m.in_channels,
            "mean": m.mean,
            "std": m.std,
            "normalize": m.normalization.to_dict(),
            "resize": m.resize,
            "stretch": m.stretch,
            "temperature": m.temperature,
            "metrics": m.metrics,
            "epoch": m.epoch,
            "uncertainty": self.methods,
            "limits": {
                "max_upload_bytes": c.max_upload_bytes,
                "max_pixels": c.max_pixels,
                "max_bytes": c.max_bytes,
                "max_work": c.max_work,
                "passes": {k: self.passes(k) for k in UNCERTAINTY},
                "formats": list(FORMATS),
                "tile": c.tile,
                "tile_above": c.tile_above,
                "concurrency": c.concurrency,
                "queue": c.queue,
                "body_timeout": c.body_timeout,
            },
        }

    def uncertainty_config(self, method: str) -> Any:
        from seglab.uncertainty.config import UncertaintyConfig

        return UncertaintyConfig(
            method=method, samples=self.config.samples, add_dropout=self.config.add_dropout
        )

    def passes(self, method: str | None) -> int:
        """Forward passes over the image per request of ``method`` (None: 1; TTA: flips x scales; MC dropout:
        samples): the factor of the work budget."""
        if method is None:
            return 1
        cfg = self.uncertainty_config(method)
        return cfg.samples if method == "mc-dropout" else len(cfg.flips) * len(cfg.scales)

    def predictor(self, method: str, tile: int | None = None) -> Any:
        """The uncertainty predictor of ``method`` (tiled with ``tile``), built once (its own copy of the model)."""
        with self._build:
            if (method, tile) not in self._predictors:
                from seglab.inference import build_predictor

                self._predictors[method, tile] = build_predictor(
                    self.checkpoint,
                    self.uncertainty_config(method),
                    str(self.device),
                    tile,
                    self.config.overlap,
                    self.backend,
                )[0]
            return self._predictors[method, tile]

    def tile_for(self, pixels: int) -> int | None:
        """The tile size an image of ``pixels`` is predicted with (None: whole, as ``seglab predict``)."""
        return self.config.tile if self.config.tile and pixels > self.config.tile_above else None

    def check(self, body: bytes, name: str, method: str | None) -> tuple[int, bool]:
        """The upload's pixel count, read from its header (``image_header``: nothing decoded), and whether it holds
        several frames (an animation, a multi-page TIFF of several samples a page: the first is predicted): 400 if
        empty, not an image, not in ``FORMATS`` or of other bands than the model takes; 413 above ``max_pixels``,
        above ``max_bytes`` decoded or, times the passes of ``method``, above ``max_work``."""
        from seglab.data.io import ImageTooLarge, NamedBytes, TooManyBytes, image_header, max_pixels

        if not body:
            raise HTTPError(400, "the upload is empty; send an image file")
        try:
            header = image_header(NamedBytes(body, name), FORMATS)
        except ImageTooLarge as e:  # above seglab's limits (SEGLAB_MAX_PIXELS/BYTES, on the server)
            if isinstance(e, TooManyBytes):
                raise HTTPError(413, f"{e}".split("; shrink")[0] + "; send a smaller image") from None
            limit = min(self.config.max_pixels, max_pixels())
            raise HTTPError(
                413, f"{name} is above this service's limit of {limit:,} pixels; send a smaller image"
            ) from None
        except DataError as e:
            raise HTTPError(400, str(e)) from None
        (w, h), several = header.size, header.frames > 1
        want = self.meta.in_channels
        converts = header.reader == "pillow" and header.dtype == "uint8" and want in (1, 3)  # as read_image
        if header.bands != want and not converts:
            raise HTTPError(
                400,
                f"{name} has {header.bands} band(s) of {header.dtype}, but this model takes {want}-band images; "
                f"send an image of {want} band(s)",
            )
        c, passes = self.config, self.passes(method)
        if w * h > c.max_pixels:
            raise HTTPError(
                413,
                f"{name} is {w}x{h} = {w * h:,} pixels, above this service's limit of "
                f"{c.max_pixels:,}; send a smaller image",
            )
        if c.max_bytes is not None and header.nbytes > c.max_bytes:
            raise HTTPError(
                413,
                f"{name} is {w}x{h} pixels of {header.bands} band(s) of {header.dtype} = {header.nbytes:,} bytes "
                f"decoded, above this service's limit of {c.max_bytes:,} (--max-bytes); send a smaller image",
            )
        if w * h * passes > c.max_work:
            raise HTTPError(
                413,
                f"{name} is {w}x{h} = {w * h:,} pixels x {passes} passes (uncertainty={method}) = "
                f"{w * h * passes:,} pixel-passes, above this service's limit of {c.max_work:,} "
                f"(--max-work); send a smaller image or ask without uncertainty",
            )
        return w * h, several

    def decode(self, body: bytes, name: str) -> np.ndarray:
        """The upload as (H, W, C) in its own type (uint8, uint16, float32), read as ``seglab predict`` reads
        files; HTTPError 400 / 413."""
        from seglab.data.io import ImageTooLarge, NamedBytes, read_image

        try:
            return read_image(NamedBytes(body, name), self.meta.in_channels, FORMATS)
        except DataError as e:
            raise HTTPError(413 if isinstance(e, ImageTooLarge) else 400, str(e)) from None

    def predict(
        self,
        image: np.ndarray,
        *,
        uncertainty: str | None,
        overlay: bool,
        as_json: bool,
        note: str | None = None,
    ) -> tuple[bytes, str]:
        """(body, media type) of one prediction: the palette mask PNG (or the overlay, or the uncertainty map) or
        JSON with the class shares and those PNGs in base64. An image above ``tile_above`` pixels is predicted
        tile by tile (as ``seglab predict --tile``)."""
        from seglab.data.io import png_bytes
        from seglab.inference import overlay as blend
        from seglab.inference import predict_image, shown

        tile, overlap = self.tile_for(image.shape[0] * image.shape[1]), self.config.overlap
        if uncertainty is None:
            p = predict_image(self.model, self.meta, image, self.device, tile=tile, overlap=overlap)
        else:
            try:
                with self._locks[uncertainty]:
                    p = predict_image(self.predictor(uncertainty, tile), self.meta, image, self.device)
            except SeglabError as e:  # e.g. MC dropout on a model without dropout layers
                raise HTTPError(
                    400, f"uncertainty={uncertainty} is not available for this model: {e}"
                ) from None
        pictures: dict[str, bytes] = {}
        if overlay:
            pictures["overlay_png"] = png_bytes(blend(shown(image, self.meta), p.labels, self.palette))
        if p.result is not None:
            from seglab.uncertainty.build import heatmap

            pictures["uncertainty_png"] = png_bytes(heatmap(p.result.entropy[0], self.meta.num_classes))
        if not as_json:
            key = "overlay_png" if overlay else "uncertainty_png" if uncertainty else None
            return (pictures[key] if key else png_bytes(p.labels, self.palette)), "image/png"
        counts = _class_counts(p.labels, self.meta.num_classes)
        doc: dict[str, Any] = {
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "classes": self.meta.class_names,
            "palette": self.palette,
            "pixels": dict(zip(self.meta.class_names, map(int, counts))),
            "shares": dict(zip(self.meta.class_names, (float(c) / p.labels.size for c in counts))),
            "mask_png": png_bytes(p.labels, self.palette),
            "color_png": png_bytes(self.color_layer(p.labels)),
            **pictures,
        }
        if image.dtype != np.uint8 or image.shape[2] not in (
            1,
            3,
        ):  # a browser cannot show it: send what to show
            doc["image_png"] = base64.b64encode(png_bytes(shown(image, self.meta))).decode("ascii")
        if note:
            doc["note"] = note
        if p.result is not None:
            doc["uncertainty"] = {
                "method": uncertainty,
                "mean_entropy": float(p.result.entropy.mean()),
                "mean_mutual_information": float(p.result.mutual_information.mean()),
            }
        for key, value in list(doc.items()):
            if isinstance(value, bytes):
                doc[key] = base64.b64encode(value).decode("ascii")
        from seglab.files import to_json

        return to_json(doc).encode(), "application/json"

    def color_layer(self, labels: np.ndarray) -> np.ndarray:
        """RGBA (H, W, 4): each class in its palette colour, background (class 0) transparent: the layer the
        viewer lays over the photo with its opacity slider (as ``overlay`` leaves class 0 unblended)."""
        lut = np.array([[*c, 255] for c in self.palette], np.uint8)
        lut[0, 3] = 0
        return lut[labels]


def _class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class of uint8 labels (H, W), in blocks of rows (``np.bincount`` makes an int64 copy)."""
    rows = max(1, (1 << 20) // max(1, labels.shape[1]))
    counts = np.zeros(num_classes, np.int64)
    for r in range(0, labels.shape[0], rows):
        counts += np.bincount(labels[r : r + rows].ravel(), minlength=num_classes)[:num_classes]
    return counts


def _without_paths(value: Any) -> Any:
    """Model parameters as ``GET /model`` shows them: a local file (e.g. the encoder ``weights`` the run started
    from) by its name only, never the server's directories."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and not value.startswith("pkg:") and ("/" in value or "\\" in value):
        return value.replace("\\", "/").rstrip("/").rpartition("/")[2]
    return value


def host_name(header: str) -> str:
    """The name of a ``Host`` header, lower case, without port, brackets or a trailing dot."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1 : host.index("]")] if "]" in host else host
    if host.count(":") > 1:  # an IPv6 address without brackets (a bound address, not a valid header)
        return host
    name, _, port = host.rpartition(":")
    return (name if name and port.isdigit() else host).rstrip(".")


def host_check(config: ServeConfig) -> Callable[[str], bool]:
    """Whether a ``Host`` header names this service: the bound address, a local name, an ``allowed_hosts``
    entry; bound to every address, also any IP address and this machine's host name."""
    names = {*LOCAL_HOSTS, host_name(config.host), *config.allowed_hosts}
    everywhere = config.host in ANY_ADDRESS
    if everywhere:
        names.add(socket.gethostname().lower())
    suffixes = tuple(n[1:] for n in names if n.startswith("*."))

    def ok(header: str) -> bool:
        name = host_name(header)
        if "*" in names or name in names or (suffixes and name.endswith(suffixes)):
            return True
        if everywhere:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    return ok


class HostCheck:
    """ASGI middleware answering 400 to a request whose ``Host`` header does not name this service (DNS
    rebinding: a web page whose name resolves to 127.0.0.1 would otherwise reach a local, token-less service).
    A request without a Host header (HTTP/1.0; no browser sends one) passes."""

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app, self.ok = app, host_check(config)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            if host is not None and not self.ok(host):
                from fastapi.responses import JSONResponse

                shown = repr(host[:100])
                detail = (
                    f"host {shown} is not served here (a guard against DNS rebinding); use the address the "
                    f"service was started on, or start it with --allowed-hosts {host_name(host)[:100]}"
                )
                await JSONResponse({"detail": detail}, 400, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _stderr(line: str) -> None:
    print(f"seglab: {line}", file=sys.stderr, flush=True)


def create_app(
    checkpoint: str | Path, config: ServeConfig | None = None, log: Callable[[str], None] | None = None
) -> Any:
    """The FastAPI application serving ``checkpoint`` (loaded now: a bad checkpoint fails here, not per request).
    ``log`` (default: standard error) gets one line per client that left mid-upload."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
    except ImportError:
        raise ConfigError("seglab serve needs FastAPI and uvicorn: pip install 'seglab[serve]'") from None

    config = config or ServeConfig()
    log = log or _stderr
    service = Service(checkpoint, config)
    state = {"active": 0, "served": 0}
    slots = asyncio.Semaphore(config.concurrency)
    app = FastAPI(
        title="seglab",
        description=f"{service.meta.arch} on {', '.join(service.meta.class_names)}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(HostCheck, config=config)
    app.state.service = service
    viewer = resources.files("seglab.serve").joinpath("viewer.html").read_text(encoding="utf-8")
    viewer_headers = security_headers(viewer)

    @app.exception_handler(HTTPError)
    async def _error(_request: Request, e: HTTPError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 503 else None
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else headers
        # 408 and 413 leave a body unread: the connection cannot carry another request
        headers = {"Connection": "close"} if e.status in (408, 413) else headers
        return JSONResponse({"detail": e.message}, status_code=e.status, headers=headers)

    @app.exception_handler(ClientGone)
    async def _gone(_request: Request, e: ClientGone) -> Response:
        log(str(e))
        return Response(status_code=400)  # nobody reads it

    def authorise(request: Request) -> None:
        if config.token is None:
            return
        # the scheme is case-insensitive (RFC 9110), spaces around the token are not part of it; the header's
        # bytes (decoded as latin-1 by Starlette) are compared with the token's UTF-8 bytes
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        right = hmac.compare_digest(given.strip().encode("latin-1"), config.token.strip().encode("utf-8"))
        if scheme.lower() != "bearer" or not right:
            raise HTTPError(
                401, "this service needs a token: send the header 'Authorization: Bearer <token>'"
            )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(viewer, headers=viewer_headers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "arch": service.meta.arch,
            "active": state["active"],
            "served": state["served"],
        }

    @app.get("/model")
    async def model(request: Request) -> dict[str, Any]:
        authorise(request)
        return service.describe()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> dict[str, Any]:
        authorise(request)  # it names the model and its classes, as /model does
        return app.openapi()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        authorise(request)
        options = _options(request)
        body, name = await _upload(request, config.max_upload_bytes, config.body_timeout)
        # checked from the header before waiting for a slot: a bad upload is answered at once
        pixels, several = await run_in_threadpool(service.check, body, name, options["uncertainty"])
        note = f"{name} holds several frames (an animation or a multi-page file); the first was predicted"
        headers, options["note"] = ({"X-Seglab-Note": note}, note) if several else ({}, None)
        if state["active"] >= config.concurrency + config.queue:
            raise HTTPError(503, f"busy: {state['active']} requests in progress or waiting; retry shortly")
        state["active"] += 1
        try:
            # a small image is decoded while it waits; a large one only in its slot (bounded memory)
            small = service.tile_for(pixels) is None
            image = await run_in_threadpool(service.decode, body, name) if small else None
            async with slots:
                if image is None:
                    image = await run_in_threadpool(service.decode, body, name)
                del body
                content, media = await run_in_threadpool(service.predict, image, **options)
            del image
            if not small or options["uncertainty"]:  # full-size buffers were freed: give their pages back
                await run_in_threadpool(release_memory)
            state["served"] += 1
            return Response(content, media_type=media, headers=headers)
        finally:
            state["active"] -= 1

    return app


def security_headers(page: str) -> dict[str, str]:
    """The viewer's headers: a Content-Security-Policy that runs only the page's own inline scripts (by hash) and
    talks only to this service, no framing (clickjacking: the page holds the token), no MIME sniffing."""
    import hashlib
    import re

    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    digests = (base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts)
    hashes = " ".join(f"'sha256-{d}'" for d in digests) or "'none'"
    csp = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def _options(request: Any) -> dict[str, Any]:
    """The query parameters of ``POST /predict`` (400 for an unknown one or value: nothing else is read)."""
    q = request.query_params
    for key in q:
        if key not in PARAMS:
            raise HTTPError(400, f"unknown parameter {key[:100]!r}; /predict takes {', '.join(PARAMS)}")
        if len(values := q.getlist(key)) > 1:  # which one would count is a guess: refused
            raise HTTPError(400, f"parameter {key} is given {len(values)} times; give it once")
        if q[key] not in PARAMS[key]:
            raise HTTPError(400, f"{key}={q[key][:100]!r} is not one of {', '.join(PARAMS[key])}")
    method = q.get("uncertainty", "none")
    if q.get("format", "png") == "png" and q.get("overlay") == "1" and method != "none":
        raise HTTPError(
            400,
            "format=png answers with one picture; ask for overlay=1 or uncertainty, or use "
            "format=json for both",
        )
    return {
        "uncertainty": None if method == "none" else method,
        "overlay": q.get("overlay") == "1",
        "as_json": q.get("format") == "json",
    }


async def _upload(request: Any, limit: int, timeout: float) -> tuple[bytes, str]:
    """The image bytes of a request (raw body of an image type, or the one file of a multipart form) and a name
    for messages; 413 beyond ``limit`` bytes (read no further), 408 if the body has not arrived within
    ``timeout`` seconds, 400 for another content type or a form without exactly one file; ClientGone if the
    client leaves first."""
    from starlette.requests import ClientDisconnect

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind.startswith(IMAGE_TYPES):
        raise HTTPError(
            400,
            f"content type {kind[:100] or 'none'!r} is not an image; send the image's bytes with "
            "Content-Type image/png (or image/jpeg ...) or as a multipart form field 'file'",
        )
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > limit
    if too_large and int(declared) > DRAIN * limit:
        raise HTTPError(
            413, f"the upload is {int(declared):,} bytes, above this service's limit of {limit:,}"
        )
    body, seen = bytearray(), 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > DRAIN * limit:
                    break
                if seen <= limit:
                    body += chunk
    except TimeoutError:
        if seen > limit:  # 413 even though the rest never came
            too_large = True
        else:
            raise HTTPError(
                408,
                f"the upload did not arrive within {timeout:g} s ({len(body):,} of "
                f"{int(declared) if declared.isdigit() else 'unknown'} bytes came); send the "
                f"whole body at once (this service's --body-timeout)",
            ) from None
    except ClientDisconnect:
        client = request.client
        who = f"{client.host}:{client.port}" if client else "a client"
        raise ClientGone(
            f"{who} disconnected during its upload after {len(body):,} of "
            f"{declared if declared.isdigit() else 'unknown'} bytes; nothing predicted"
        ) from None
    if (
        too_large or seen > limit
    ):  # read to its end (up to DRAIN x limit), so a client still sending reads this
        if declared.isdigit() and int(declared) > limit:
            raise HTTPError(
                413, f"the upload is {int(declared):,} bytes, above this service's limit of {limit:,}"
            )
        raise HTTPError(413, f"the upload is over this service's limit of {limit:,} bytes")
    if kind != "multipart/form-data":
        return bytes(body), "the upload"
    return await _form_file(request, body)


async def _form_file(request: Any, body: bytearray) -> tuple[bytes, str]:
    """The one file of a multipart form already read into ``body``, and a name for messages; 400 otherwise."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield bytes(body)
        yield b""

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=16, max_fields=16).parse()
    except MultiPartException as e:
        raise HTTPError(400, f"cannot read the multipart form: {e}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files and "file" in form:  # a part without a filename is a text field: its bytes are gone
            raise HTTPError(
                400,
                "the form's field 'file' has no filename, so it was read as text, not as a file; "
                "send it as a file (curl -F file=@image.png)",
            )
        if len(files) != 1:
            names = ", ".join(repr((f.filename or "")[:60]) for f in files[:4])
            raise HTTPError(
                400,
                f"the multipart form holds {len(files)} files{f' ({names})' if files else ''}; "
                "send one image per request, as field 'file'",
            )
        data = await files[0].read()
        return data, f"upload {(files[0].filename or 'file')[:100]!r}"
    finally:
        await form.close()


def check_port(port: Any) -> None:
    """ConfigError unless ``port`` is a whole number in 0..65535 (0: any free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"serve port must be within 0..65535 (0: any free port), got {port!r}")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: any free port); ConfigError in one line if it cannot be."""
    check_port(port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port "
            f"(0: any free one) or --host"
        ) from None
    return sock


def head_timeout_protocol(timeout: float) -> Any:
    """uvicorn's h11 protocol, closing a connection whose next request head has not arrived ``timeout`` seconds
    after it opened or after its last answer (uvicorn alone waits forever for a first request)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeout(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(timeout, self._expire)

        def _expire(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeout


def _libc() -> Any:
    """glibc, or None (another C library: nothing to tune)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


LIBC = _libc()


def release_memory() -> None:
    """Give the free pages of every malloc arena back to the system (glibc's ``malloc_trim``): called after a
    large request, whose buffers would otherwise stay resident, scattered over the worker threads' arenas."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    log: Any = print,
) -> None:
    """Load ``checkpoint`` and serve it with uvicorn on ``host``:``port`` until interrupted (every argument is
    checked before the checkpoint is loaded; a port that cannot be bound is a ConfigError)."""
    check_port(port)
    config = replace(config or ServeConfig(), host=host)
    if LIBC is not None:  # two malloc arenas for all worker threads (glibc makes up to 8 per core), so that
        LIBC.mallopt(-8, 2)  # release_memory finds freed pages together (M_ARENA_MAX)
    app = create_app(checkpoint, config, log)
    sock = listen(host, port)
    import uvicorn

    try:
        if host not in LOCAL_HOSTS and config.token is None:
            log(f"warning: serving on {host} without --token: anyone who reaches this port can use the model")
        bound = sock.getsockname()[1]
        where = f"[{host}]" if ":" in host else host
        log(
            f"serving {app.state.service.checkpoint} ({app.state.service.backend}) on http://{where}:{bound}/ "
            "(viewer at /, API at /predict)"
        )
        settings = uvicorn.Config(app, log_level="warning", http=head_timeout_protocol(config.body_timeout))
        uvicorn.Server(settings).run(sockets=[sock])
    finally:
        sock.close()
