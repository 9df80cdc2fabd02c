"""Export: a checkpoint (or a model) to ONNX or TorchScript, and running an exported ONNX model in ONNX Runtime.

ONNX goes through PyTorch's torch.export-based exporter with the batch, height and width dynamic (the
Segmentor's padding to its stride is exported as shape arithmetic, so any H x W works); where a model does not
export with dynamic sizes it is exported for the example size only and the result says so. TorchScript is
``torch.jit.trace`` (the traced graph keeps the example's padding, so it takes inputs of the example's size and
is marked static). ``OnnxModel`` wraps an ONNX Runtime session as a callable (N, C, H, W) -> logits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seglab.errors import ConfigError, SeglabError

FORMATS = ("onnx", "torchscript")


@dataclass
class ExportResult:
    path: Path
    format: str
    dynamic: bool  # batch, height and width may differ from the example's
    example_shape: tuple[int, ...]
    max_abs_diff: float | None = (
        None  # exported vs PyTorch on a random input of an odd size (None: not checked)
    )


def _export_onnx(
    model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic: bool, opset: int | None
) -> bool:
    """Write ``model`` as ONNX to ``path``; returns whether the sizes are dynamic."""
    kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "input_names": ["input"],
                              "output_names": ["logits"]}  # fmt: skip
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


def export_model(
    model: torch.nn.Module,
    out: str | Path,
    fmt: str = "onnx",
    example_size: tuple[int, int] = (67, 93),
    in_channels: int = 3,
    dynamic: bool = True,
    check: bool = True,
    opset: int | None = None,
) -> ExportResult:
    """Export ``model`` (put in eval mode) to ``out`` as ``fmt`` ("onnx" or "torchscript").

    ``example_size`` (H, W) is the traced input (odd by default, so the padding path is exported). With
    ``check`` the exported model runs on a random input of another odd size (the example's for static exports)
    and the largest absolute logit difference to PyTorch is recorded in the result.
    """
    from seglab.files import atomic_write

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    model = model.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, *example_size, generator=gen)
    is_dynamic = False
    try:
        if fmt == "onnx":
            holder: dict[str, bool] = {}
            atomic_write(out, lambda tmp: holder.update(dyn=_export_onnx(model, x, tmp, dynamic, opset)))
            is_dynamic = holder["dyn"]
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, (x,), check_trace=False)
                atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp)))
    except SeglabError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise SeglabError(
            f"{type(model).__name__} could not be exported to {fmt}: {str(e).splitlines()[0]}"
        ) from None
    result = ExportResult(out, fmt, is_dynamic, tuple(x.shape))
    if check:
        shape = (2, in_channels, example_size[0] - 4, example_size[1] + 6) if is_dynamic else tuple(x.shape)
        xc = torch.randn(*shape, generator=gen)
        with torch.inference_mode():
            ref = model(xc)
            got = load_exported(out)(xc)
        result.max_abs_diff = float((got - ref).abs().max())
    return result


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, fmt: str = "onnx", **kwargs: Any
) -> ExportResult:
    """Load a seglab checkpoint and :func:`export_model` it (its in_channels as the example's). An ONNX export
    gets the checkpoint's sidecar as ``<out>.yaml``, so `seglab predict` and `evaluate` can run it."""
    from seglab.checkpoint import load_checkpoint, write_sidecar

    model, meta = load_checkpoint(checkpoint)
    result = export_model(model, out, fmt, in_channels=meta.in_channels, **kwargs)
    if fmt == "onnx":
        write_sidecar(result.path, meta)
    return result


class OnnxModel:
    """An ONNX model in ONNX Runtime (CPU unless ``providers`` says otherwise), called like a module:
    float tensor (N, C, H, W) in, logits tensor out. ``threads``: intra-op threads (default: ORT's)."""

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
        self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.training = False

    @property
    def in_channels(self) -> int:
        c = self.session.get_inputs()[0].shape[1]
        return c if isinstance(c, int) else 3

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        """An exported graph has no training mode; accepted so evaluation loops can restore modes."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def load_exported(path: str | Path, threads: int | None = None) -> Any:
    """An exported model as a callable: ``.onnx`` in ONNX Runtime, anything else as TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
        return torch.jit.load(str(path)).eval()


__all__ = ["FORMATS", "ExportResult", "OnnxModel", "export_checkpoint", "export_model", "load_exported"]
