"""The REST service: a checkpoint behind FastAPI, served by uvicorn (``seglab serve``).

Routes: ``GET /`` (the web viewer), ``GET /health``, ``GET /model``, ``POST /predict``. A request runs
``seglab.engine.predict.predict_image``, the per-image path of ``seglab predict``, so a mask from the service is
byte for byte the ``<stem>_mask.png`` that ``seglab predict`` writes for the same image.

Limits: a request body above ``max_upload_bytes`` or an image above ``max_pixels`` (read from its header, before
decoding) gets 413; an empty, undecodable or non-image upload, or an unknown parameter, 400; with ``token`` set,
a request without ``Authorization: Bearer <token>`` 401 (``/`` and ``/health`` stay open). At most
``concurrency`` images are predicted at a time, in worker threads (never on the event loop), and at most
``queue`` more wait; beyond that a request gets 503 at once. No request names a file: images come in the body.
"""

import asyncio
import base64
import hmac
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from seglab.errors import ConfigError, DataError, SeglabError

UNCERTAINTY = ("tta", "mc-dropout")  # the ?uncertainty= methods: both need only the one checkpoint
PARAMS = {"format": ("png", "json"), "overlay": ("0", "1"), "uncertainty": ("none", *UNCERTAINTY)}
IMAGE_TYPES = ("image/", "application/octet-stream", "multipart/form-data")


@dataclass
class ServeConfig:
    """The service's limits and options (``seglab serve`` flags)."""

    device: str = "cpu"
    token: str | None = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 4096 * 4096
    concurrency: int = 1
    queue: int = 8
    samples: int = 8  # MC dropout passes
    add_dropout: float = 0.0  # MC dropout on a model without dropout layers: Dropout2d(P) before the head

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "concurrency", "samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve {name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.queue < 0:
            raise ConfigError(f"serve queue must be >= 0, got {self.queue}")


class HTTPError(Exception):
    """An answer other than 200: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Service:
    """The loaded checkpoint and the predictors built from it; ``predict`` is synchronous (run it in a thread)."""

    def __init__(self, checkpoint: str | Path, config: ServeConfig) -> None:
        from seglab.checkpoint import checkpoint_paths, load_checkpoint
        from seglab.engine.device import resolve_device
        from seglab.engine.predict import palette_of

        self.config = config
        self.checkpoint = checkpoint_paths(checkpoint)[0]
        self.device = resolve_device(config.device)
        self.model, self.meta = load_checkpoint(checkpoint, device=str(self.device))
        self.palette = palette_of(self.meta)
        self._predictors: dict[str, Any] = {}
        self._locks = {
            m: threading.Lock() for m in UNCERTAINTY
        }  # a stochastic predictor serves one at a time
        self._build = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` answers: everything a client needs to read the masks."""
        m = self.meta
        return {
            "checkpoint": self.checkpoint.name, "arch": m.arch, "model_params": m.model_params,
            "classes": m.class_names, "palette": self.palette, "num_classes": m.num_classes,
            "in_channels": m.in_channels, "mean": m.mean, "std": m.std, "resize": m.resize, "stretch": m.stretch,
            "temperature": m.temperature, "metrics": m.metrics, "epoch": m.epoch, "uncertainty": list(UNCERTAINTY),
            "limits": {"max_upload_bytes": self.config.max_upload_bytes, "max_pixels": self.config.max_pixels,
                       "concurrency": self.config.concurrency, "queue": self.config.queue},
        }  # fmt: skip

    def predictor(self, method: str) -> Any:
        """The uncertainty predictor of ``method``, built once (its own copy of the model)."""
        with self._build:
            if method not in self._predictors:
                from seglab.uncertainty.build import build_predictor
                from seglab.uncertainty.config import UncertaintyConfig

                cfg = UncertaintyConfig(
                    method=method, samples=self.config.samples, add_dropout=self.config.add_dropout
                )
                self._predictors[method] = build_predictor(self.checkpoint, cfg, str(self.device))[0]
            return self._predictors[method]

    def decode(self, body: bytes, name: str) -> np.ndarray:
        """The upload as uint8 (H, W, C), read as ``seglab predict`` reads files; HTTPError 400 / 413."""
        from seglab.data.io import ImageTooLarge, NamedBytes, open_image, oriented_size, read_image

        if not body:
            raise HTTPError(400, "the upload is empty; send an image file")
        try:
            with open_image(NamedBytes(body, name)) as img:
                w, h = oriented_size(img)
            if w * h > self.config.max_pixels:
                raise HTTPError(413, f"{name} is {w}x{h} = {w * h:,} pixels, above this service's limit of "
                                     f"{self.config.max_pixels:,}; send a smaller image")  # fmt: skip
            return read_image(NamedBytes(body, name), self.meta.in_channels)
        except DataError as e:
            raise HTTPError(413 if isinstance(e, ImageTooLarge) else 400, str(e)) from None

    def predict(
        self, image: np.ndarray, *, uncertainty: str | None, overlay: bool, as_json: bool
    ) -> tuple[bytes, str]:
        """(body, media type) of one prediction: the palette mask PNG (or the overlay, or the uncertainty map) or
        JSON with the class shares and those PNGs in base64."""
        from seglab.data.io import png_bytes
        from seglab.engine.predict import overlay as blend
        from seglab.engine.predict import predict_image

        if uncertainty is None:
            p = predict_image(self.model, self.meta, image, self.device)
        else:
            try:
                with self._locks[uncertainty]:
                    p = predict_image(self.predictor(uncertainty), self.meta, image, self.device)
            except SeglabError as e:  # e.g. MC dropout on a model without dropout layers
                raise HTTPError(
                    400, f"uncertainty={uncertainty} is not available for this model: {e}"
                ) from None
        pictures: dict[str, bytes] = {}
        if overlay:
            pictures["overlay_png"] = png_bytes(blend(image, p.labels, self.palette))
        if p.result is not None:
            from seglab.uncertainty.build import heatmap

            pictures["uncertainty_png"] = png_bytes(heatmap(p.result.entropy[0], self.meta.num_classes))
        if not as_json:
            key = "overlay_png" if overlay else "uncertainty_png" if uncertainty else None
            return (pictures[key] if key else png_bytes(p.labels, self.palette)), "image/png"
        counts = np.bincount(p.labels.ravel(), minlength=self.meta.num_classes)
        doc: dict[str, Any] = {
            "width": int(image.shape[1]), "height": int(image.shape[0]), "classes": self.meta.class_names,
            "palette": self.palette, "pixels": dict(zip(self.meta.class_names, map(int, counts))),
            "shares": dict(zip(self.meta.class_names, (float(c) / p.labels.size for c in counts))),
            "mask_png": png_bytes(p.labels, self.palette), "color_png": png_bytes(self.color_layer(p.labels)),
            **pictures,
        }  # fmt: skip
        if p.result is not None:
            doc["uncertainty"] = {"method": uncertainty, "mean_entropy": float(p.result.entropy.mean()),
                                  "mean_mutual_information": float(p.result.mutual_information.mean())}  # fmt: skip
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


def create_app(checkpoint: str | Path, config: ServeConfig | None = None) -> Any:
    """The FastAPI application serving ``checkpoint`` (loaded now: a bad checkpoint fails here, not per request)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
    except ImportError:
        raise ConfigError("seglab serve needs FastAPI and uvicorn: pip install 'seglab[serve]'") from None

    config = config or ServeConfig()
    service = Service(checkpoint, config)
    state = {"active": 0, "served": 0}
    slots = asyncio.Semaphore(config.concurrency)
    app = FastAPI(title="seglab", description=f"{service.meta.arch} on {', '.join(service.meta.class_names)}",
                  docs_url=None, redoc_url=None)  # fmt: skip
    app.state.service = service
    viewer = resources.files("seglab.serve").joinpath("viewer.html").read_text(encoding="utf-8")

    @app.exception_handler(HTTPError)
    async def _error(_request: Request, e: HTTPError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 503 else None
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else headers
        return JSONResponse({"detail": e.message}, status_code=e.status, headers=headers)

    def authorise(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
            raise HTTPError(
                401, "this service needs a token: send the header 'Authorization: Bearer <token>'"
            )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(viewer)

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

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        authorise(request)
        options = _options(request)
        if state["active"] >= config.concurrency + config.queue:
            raise HTTPError(503, f"busy: {state['active']} requests in progress or waiting; retry shortly")
        state["active"] += 1
        try:
            body, name = await _upload(request, config.max_upload_bytes)
            # decoded before waiting for a slot: a bad upload is answered at once, not after the queue
            image = await run_in_threadpool(service.decode, body, name)
            async with slots:
                content, media = await run_in_threadpool(service.predict, image, **options)
            state["served"] += 1
            return Response(content, media_type=media)
        finally:
            state["active"] -= 1

    return app


def _options(request: Any) -> dict[str, Any]:
    """The query parameters of ``POST /predict`` (400 for an unknown one or value: nothing else is read)."""
    q = request.query_params
    for key in q:
        if key not in PARAMS:
            raise HTTPError(400, f"unknown parameter {key!r}; /predict takes {', '.join(PARAMS)}")
        if q[key] not in PARAMS[key]:
            raise HTTPError(400, f"{key}={q[key]!r} is not one of {', '.join(PARAMS[key])}")
    method = q.get("uncertainty", "none")
    if q.get("format", "png") == "png" and q.get("overlay") == "1" and method != "none":
        raise HTTPError(400, "format=png answers with one picture; ask for overlay=1 or uncertainty, or use "
                             "format=json for both")  # fmt: skip
    return {"uncertainty": None if method == "none" else method, "overlay": q.get("overlay") == "1",
            "as_json": q.get("format") == "json"}  # fmt: skip


async def _upload(request: Any, limit: int) -> tuple[bytes, str]:
    """The image bytes of a request (raw body of an image type, or the first file of a multipart form) and a name
    for messages; 413 beyond ``limit`` bytes (read no further), 400 for another content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind.startswith(IMAGE_TYPES):
        raise HTTPError(400, f"content type {kind or 'none'!r} is not an image; send the image's bytes with "
                             "Content-Type image/png (or image/jpeg ...) or as a multipart form field 'file'")  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPError(
            413, f"the upload is {int(declared):,} bytes, above this service's limit of {limit:,}"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPError(413, f"the upload is over this service's limit of {limit:,} bytes")
    if kind != "multipart/form-data":
        return bytes(body), "the upload"
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield bytes(body)
        yield b""

    try:
        form = await MultiPartParser(request.headers, stream()).parse()
    except MultiPartException as e:
        raise HTTPError(400, f"cannot read the multipart form: {e}") from None
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise HTTPError(400, "the multipart form holds no file; send the image as field 'file'")
    upload = form.get("file") if isinstance(form.get("file"), UploadFile) else files[0]
    data = await upload.read()
    await form.close()
    return data, f"upload {upload.filename or 'file'!r}"


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log: Any = print) -> None:  # fmt: skip
    """Load ``checkpoint`` and serve it with uvicorn until interrupted."""
    app = create_app(checkpoint, config)
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and (config is None or config.token is None):
        log(f"warning: serving on {host} without --token: anyone who reaches this port can use the model")
    log(f"serving {app.state.service.checkpoint} on http://{host}:{port}/ (viewer at /, API at /predict)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
