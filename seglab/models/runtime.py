"""Exported models run in an inference runtime, called like a module: (N, C, H, W) float tensor -> logits.

Two runtimes: ONNX Runtime (:class:`OnnxModel`, ``.onnx`` files, fp32 or int8 QDQ) and OpenVINO
(:class:`OpenVinoModel`, an IR ``.xml`` + ``.bin`` pair or an ``.onnx`` file, fp32 or int8). Both share
:class:`ExportedModel`: the module-like surface every consumer (predict, evaluate, serve, benchmark, the report)
already calls, and the input geometry.

Low level on purpose (it imports nothing of seglab's engine), so both ``seglab.checkpoint`` (which loads
exported models) and ``seglab.engine.export`` (which writes them) can use it. The input geometry a seglab export
records in the file (``GEOMETRY_KEY``: ONNX metadata, OpenVINO runtime info) lets the model replicate-pad inputs
too small for the exported reflect padding (a 1-pixel side), as the PyTorch model does.

The runtime is inferred from the file (:func:`backend_of`); ``backend`` overrides it where the file allows (an
ONNX file runs in either runtime; an IR only in OpenVINO).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seglab.errors import CheckpointError, ConfigError, SeglabError

GEOMETRY_KEY = "seglab.geometry"  # the Segmentor's InputGeometry and pad_mode, as JSON
OV_GEOMETRY_PATH = ["seglab", "geometry"]  # where an OpenVINO IR keeps GEOMETRY_KEY's JSON (runtime info)
BACKENDS = ("torch", "onnxruntime", "openvino")
PROTOBUF_LIMIT = 2**31  # bytes: the largest single-file ONNX model
EXPORTED_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}  # exported file -> its default runtime


class ExportedModel:
    """What every exported model shares: called like a module in eval mode, with the input geometry of the
    export (``geometry``: a dict, or None) and ``static`` (a graph fixed at one H x W). Subclasses set
    ``path``, ``geometry``, ``static``, ``in_channels`` and implement :meth:`_run` (a tensor in, logits out)."""

    backend = ""
    path: Path
    geometry: dict[str, Any] | None
    static: bool
    training = False

    def eval(self) -> ExportedModel:
        return self

    def train(self, mode: bool = True) -> ExportedModel:
        """An exported graph has no training mode; accepted so evaluation loops can restore modes."""
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if not g or g.get("pad_mode") != "reflect" or self.static:
            return self._run(x)
        # Segmentor.forward pads by reflection unless a pad exceeds the image, and then by replication; the
        # exported graph holds only the reflection, so the replication happens here (to the final size).
        h, w = x.shape[-2:]
        oh, ow = (_output_size(g, s) for s in (h, w))
        m = g["margin"]
        if max(m, m + ow - w) < w and max(m, m + oh - h) < h:
            return self._run(x)
        if m:
            raise SeglabError(
                f"{self.path.name} takes inputs of at least {m + 1} x {m + 1} pixels (its reflect padding), "
                f"got {h} x {w}; predict this image with the PyTorch checkpoint"
            )
        return self._run(F.pad(x, (0, ow - w, 0, oh - h), mode="replicate"))[..., :h, :w]


class OnnxModel(ExportedModel):
    """An ONNX model in ONNX Runtime (CPU unless ``providers`` says otherwise). ``threads``: intra-op threads
    (default: ORT's)."""

    backend = "onnxruntime"

    def __init__(
        self, path: str | Path, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SeglabError("running ONNX models needs onnxruntime: pip install 'seglab[onnx]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(
                str(path), opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own types for every kind of bad file
            raise CheckpointError(f"{self.path} is not an ONNX model: {first_line(e)}") from None
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map.get(GEOMETRY_KEY)
        self.geometry = json.loads(meta) if meta else None
        # a static graph (fixed H and W) was traced at its size, fallback padding included: never pad for it
        self.static = all(isinstance(d, int) for d in self.session.get_inputs()[0].shape[2:])

    @property
    def in_channels(self) -> int:
        c = self.session.get_inputs()[0].shape[1]
        return c if isinstance(c, int) else 3

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise SeglabError(
                f"ONNX Runtime cannot run {self.path} on an input of {tuple(x.shape)}: {first_line(e)}"
            ) from None
        return torch.from_numpy(out)


class OpenVinoModel(ExportedModel):
    """An OpenVINO IR (``.xml`` beside its ``.bin``) or an ONNX file compiled by OpenVINO for the CPU.

    ``threads``: inference threads (default: OpenVINO's). ``precision``: the CPU plugin's inference precision
    for the float parts; ``f32`` by default, because OpenVINO otherwise runs fp32 models in bf16 on CPUs that
    have it (a silent accuracy change; ``bf16`` asks for it). An int8 IR runs its quantised layers in int8
    either way."""

    backend = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32") -> None:
        try:
            import openvino as ov
        except ImportError:
            raise SeglabError(
                "running OpenVINO models needs openvino: pip install 'seglab[openvino]'"
            ) from None
        self.path = Path(path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with pages of text
            raise CheckpointError(f"{self.path} is not an OpenVINO or ONNX model: {first_line(e)}") from None
        self.geometry = _ov_geometry(model, self.path)
        shape = model.inputs[0].get_partial_shape()
        self.static = all(d.is_static for d in list(shape)[2:])
        self._channels = shape[1].get_length() if shape[1].is_static else 3
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"OpenVINO cannot compile {self.path}: {first_line(e)}") from None
        self._requests = threading.local()  # an infer request serves one call at a time: one per thread

    @property
    def in_channels(self) -> int:
        return self._channels

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        request = getattr(self._requests, "request", None)
        if request is None:  # this thread's first call (seglab serve predicts in several worker threads)
            request = self._requests.request = self.compiled.create_infer_request()
        try:
            request.infer([x.detach().cpu().float().contiguous().numpy()])
            out = request.get_output_tensor(0).data
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise SeglabError(
                f"OpenVINO cannot run {self.path} on an input of {tuple(x.shape)}: {first_line(e)}"
            ) from None
        return torch.from_numpy(out.copy())  # the request reuses its output buffer


def _ov_geometry(model: Any, path: Path) -> dict[str, Any] | None:
    """The geometry an IR keeps in its runtime info, or an ONNX file in its metadata."""
    if model.has_rt_info(OV_GEOMETRY_PATH):
        return json.loads(model.get_rt_info(OV_GEOMETRY_PATH).astype(str))
    if path.suffix == ".onnx":
        return onnx_geometry(path)
    return None


def onnx_geometry(path: str | Path) -> dict[str, Any] | None:
    """The geometry a seglab ONNX export records in its metadata, or None."""
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    return json.loads(meta[GEOMETRY_KEY]) if GEOMETRY_KEY in meta else None


def backend_of(path: str | Path) -> str:
    """The runtime a file runs in by default: ``onnxruntime`` for ``.onnx``, ``openvino`` for an IR ``.xml``,
    ``torch`` for anything else (a seglab checkpoint)."""
    return EXPORTED_SUFFIXES.get(Path(path).suffix.lower(), "torch")


def check_backend(path: str | Path, backend: str | None) -> str:
    """The runtime that runs ``path``: ``backend`` where the file allows it, else its default; ConfigError (one
    line) for a backend the file cannot run in."""
    default = backend_of(path)
    if backend is None:
        return default
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if default == "openvino" and backend != "openvino":
        raise ConfigError(f"{Path(path).name} is an OpenVINO IR: it runs only with --backend openvino")
    if default == "onnxruntime" and backend == "torch":
        raise ConfigError(
            f"{Path(path).name} is an exported ONNX model: run it with --backend onnxruntime or openvino, or "
            "give the checkpoint it was exported from for torch"
        )
    return backend


def runtime_device(path: str | Path, backend: str | None, device: str) -> str:
    """The device ``path`` runs on in ``backend`` (see :func:`check_backend`): ``device`` for torch; the CPU for
    ONNX Runtime and OpenVINO (``auto`` picks it), where any other device is a ConfigError (one line)."""
    backend = check_backend(path, backend)
    if backend == "torch" or device == "auto" or device.partition(":")[0] == "cpu":
        return device if backend == "torch" else "cpu"
    raise ConfigError(
        f"{Path(path).name} runs in {backend}, on the CPU only here, not on {device!r}; use --device cpu, "
        "or --backend torch with the seglab checkpoint for the GPU"
    )


def load_runtime(path: str | Path, backend: str | None = None, threads: int | None = None) -> ExportedModel:
    """An exported file (``.onnx`` or an IR ``.xml``) in its runtime (``backend`` overrides it, see
    :func:`check_backend`)."""
    backend = check_backend(path, backend)
    if backend_of(path) == "torch":  # a seglab checkpoint runs in a runtime through load_checkpoint
        raise ConfigError(f"{path} is not an exported model (.onnx or an OpenVINO .xml)")
    if not Path(path).is_file():
        raise SeglabError(f"exported model {path} does not exist")
    return OnnxModel(path, threads) if backend == "onnxruntime" else OpenVinoModel(path, threads)


def _torch_export_onnx(
    model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic: bool, opset: int | None
) -> bool:
    """torch.onnx.export ``model`` to ``path`` (weights possibly beside it); returns whether sizes are dynamic."""
    kwargs: dict[str, Any] = {
        "dynamo": True,
        "verbose": False,
        "input_names": ["input"],
        "output_names": ["logits"],
    }
    if opset is not None:
        kwargs["opset_version"] = opset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamic:
            d = torch.export.Dim.DYNAMIC
            try:
                torch.onnx.export(model, (x,), str(path), dynamic_shapes=({0: d, 2: d, 3: d},), **kwargs)
                return True
            except Exception:  # noqa: BLE001 - fall back to the example's size, reported in the result
                pass
        torch.onnx.export(model, (x,), str(path), **kwargs)
    return False


class _StaticSamePad(torch.nn.Module):
    """A TensorFlow-"same" convolution (timm's ``Conv2dSame``) with the constant padding it takes on inputs
    divisible by its stride: ``max((k - 1) * d + 1 - s, 0)``, split as timm splits it (the extra pixel last)."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        c = conv
        self.conv = torch.nn.Conv2d(
            c.in_channels,
            c.out_channels,
            c.kernel_size,
            c.stride,
            0,
            c.dilation,
            c.groups,
            c.bias is not None,
        )
        self.conv.weight, self.conv.bias = c.weight, c.bias  # shared: the same parameters, plain padding
        pads: list[int] = []
        for k, s, d in zip(reversed(c.kernel_size), reversed(c.stride), reversed(c.dilation)):
            total = max((k - 1) * d + 1 - s, 0)
            pads += [total // 2, total - total // 2]
        self.pads = tuple(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pads))


def static_same_padding(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` for a dynamic-size export: a copy whose "same"-padded convolutions (timm's tf_ encoders) pad by
    a constant. timm computes their padding from the input size at every layer; traced with symbolic sizes, the
    nested ceil/mod expressions grow with depth and the exporter spends hours simplifying them (EfficientNet-Lite0:
    > 15 minutes, never finished). A seglab Segmentor pads its input to a multiple of the encoder's output stride,
    so every strided "same" convolution sees a size divisible by its stride, where the padding is constant: the
    same logits (the export's check compares them at another size). Models without an input geometry are
    returned as they are."""
    import copy

    if not dataclasses.is_dataclass(getattr(model, "geometry", None)):
        return model
    same = [n for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame"]
    if not same:
        return model
    model = copy.deepcopy(model)
    for name in same:
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, leaf, _StaticSamePad(getattr(holder, leaf)))
    return model


def write_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic: bool, opset: int | None) -> bool:
    """Write ``model`` as one self-contained ONNX file to ``path`` (the exporter works in a private temporary
    folder, then the model is saved with every weight inside it and the input geometry in its metadata);
    returns whether the sizes are dynamic."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="seglab-onnx-") as work:
        raw = Path(work) / "model.onnx"
        traced = static_same_padding(model) if dynamic else model
        is_dynamic = _torch_export_onnx(traced, x, raw, dynamic, opset)
        proto = onnx.load_model(str(raw), load_external_data=True)
    geometry = getattr(model, "geometry", None)
    if dataclasses.is_dataclass(geometry) and isinstance(getattr(model, "pad_mode", None), str):
        doc = {**dataclasses.asdict(geometry), "pad_mode": model.pad_mode}  # type: ignore[arg-type]
        onnx.helper.set_model_props(proto, {GEOMETRY_KEY: json.dumps(doc)})
    if proto.ByteSize() >= PROTOBUF_LIMIT:
        raise SeglabError(
            f"{type(model).__name__} is {proto.ByteSize() / 2**30:.1f} GiB, beyond the 2 GB of a single ONNX file; "
            "export it with --format torchscript"
        )
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return is_dynamic


def needs_static(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot be exported to ONNX with dynamic sizes, or None. SegNet's max unpooling: ONNX
    MaxUnpool takes its output size as an input, which the exporter records as the example's constant sizes, so
    the graph fails (or is wrong) at any other size."""
    from seglab.layers.sampling import MaxUnpoolUp

    if any(isinstance(m, MaxUnpoolUp) for m in model.modules()):
        return "its max unpooling (SegNet) keeps the example's sizes in the ONNX graph"
    return None


def model_in_runtime(
    model: torch.nn.Module, in_channels: int, backend: str, threads: int | None = None
) -> ExportedModel:
    """``model`` exported to ONNX (fp32, dynamic batch and sizes) in a temporary folder and loaded in ``backend``
    (both runtimes read the file whole, so the folder goes at once): ``--backend`` on a seglab checkpoint.
    A model whose graph exports only at a fixed size (:func:`needs_static`) is refused before any export."""
    why = needs_static(model)
    if why:
        raise ConfigError(
            f"{type(model).__name__} cannot run in {backend} on any image size: {why}; export it with "
            "`seglab export --static --example-size H W` and run that file, or use --backend torch"
        )
    x = torch.randn(1, in_channels, 67, 93, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="seglab-runtime-") as tmp:
        file = Path(tmp) / "model.onnx"
        try:
            dynamic = write_onnx(model.eval(), x, file, True, None)
        except SeglabError:
            raise
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise SeglabError(
                f"{type(model).__name__} does not export to ONNX for {backend}: {first_line(e)}"
            ) from None
        if not dynamic:
            raise ConfigError(
                f"{type(model).__name__} exports to ONNX only at a fixed size, so it cannot run in {backend} on "
                "any image; export it with `seglab export --static --example-size H W` and run that file"
            )
        loaded = load_runtime(file, backend, threads)
    loaded.path = Path(f"{type(model).__name__} in {backend}")
    return loaded


def _output_size(g: dict[str, Any], size: int) -> int:
    """``InputGeometry.output_size`` on the geometry recorded in an exported file."""
    o = max(size, g.get("min_size", 1) - 2 * g.get("margin", 0), 1)
    return o + (g.get("offset", 0) - o) % g.get("multiple", 1)


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name if it has none): one line for the user."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = [
    "BACKENDS",
    "EXPORTED_SUFFIXES",
    "GEOMETRY_KEY",
    "ExportedModel",
    "OnnxModel",
    "OpenVinoModel",
    "backend_of",
    "check_backend",
    "first_line",
    "write_onnx",
    "load_runtime",
    "model_in_runtime",
    "needs_static",
    "onnx_geometry",
    "runtime_device",
]
