"""Export: a checkpoint (or a model) to ONNX or TorchScript, and running an exported ONNX model in ONNX Runtime.

ONNX goes through PyTorch's torch.export-based exporter with the batch, height and width dynamic (the
Segmentor's padding to its stride is exported as shape arithmetic, so any H x W works); where a model does not
export with dynamic sizes it is exported for the example size only and the result says so. TorchScript is
``torch.jit.trace`` (the traced graph keeps the example's padding, so it takes inputs of the example's size and
is marked static). ``OnnxModel`` (in :mod:`seglab.models.onnx_model`, re-exported here) wraps an ONNX Runtime
session as a callable (N, C, H, W) -> logits.

An ONNX export is one self-contained file (weights inside, no external-data file), so ``m.onnx`` and its
sidecar ``m.onnx.yaml`` can be copied anywhere; that caps a model at protobuf's 2 GB, far above any model here.
The model's input geometry (stride multiple, margin, pad mode) is stored in the file's metadata, so
``OnnxModel`` can replicate-pad inputs too small for the exported reflect padding (a 1-pixel side), as the
PyTorch model does.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seglab.errors import CheckpointError, ConfigError, SeglabError
from seglab.files import OutputKind, checkpoint_sidecar_of, guard_file
from seglab.models.onnx_model import GEOMETRY_KEY, OnnxModel, first_line

FORMATS = ("onnx", "torchscript")
PROTOBUF_LIMIT = 2**31  # bytes: the largest single-file ONNX model


@dataclass
class ExportResult:
    path: Path
    format: str
    dynamic: bool  # batch, height and width may differ from the example's
    example_shape: tuple[int, ...]
    max_abs_diff: float | None = (
        None  # exported vs PyTorch on a random input of an odd size (None: not checked)
    )


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


def _export_onnx(
    model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic: bool, opset: int | None
) -> bool:
    """Write ``model`` as one self-contained ONNX file to ``path`` (the exporter works in a private temporary
    folder, then the model is saved with every weight inside it and the input geometry in its metadata);
    returns whether the sizes are dynamic."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="seglab-onnx-") as work:
        raw = Path(work) / "model.onnx"
        is_dynamic = _torch_export_onnx(model, x, raw, dynamic, opset)
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


def export_model(
    model: torch.nn.Module,
    out: str | Path,
    fmt: str = "onnx",
    example_size: tuple[int, int] = (67, 93),
    in_channels: int = 3,
    dynamic: bool = True,
    check: bool = True,
    opset: int | None = None,
    overwrite: bool = False,
    batch: int = 1,
) -> ExportResult:
    """Export ``model`` (put in eval mode) to ``out`` as ``fmt`` ("onnx" or "torchscript").

    ``example_size`` (H, W) is the traced input (odd by default, so the padding path is exported), of ``batch``
    images (what a static export then takes). With
    ``check`` the exported model runs on a random input of another odd size (the example's for static exports)
    and the largest absolute logit difference to PyTorch is recorded in the result.

    ``out`` is checked before any work (``seglab.files.guard_file``): an earlier export of the format is replaced,
    a file of another kind only with ``overwrite``, a checkpoint, state or data-set file never. The file is written
    under a temporary name and renamed once it is complete; a dynamic ONNX graph is first run at a second size,
    and a graph that holds the example's sizes after all (an exporter that baked them in) is exported static.
    A SegNet with max unpooling is refused with ``dynamic`` before anything is written (see :func:`needs_static`).
    """
    from seglab.files import atomic_write, ensure_dir

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    guard_file(out, ONNX_FILE if fmt == "onnx" else TORCHSCRIPT_FILE, overwrite, "export --out")
    why = needs_static(model) if fmt == "onnx" and dynamic else None
    if why:
        raise ConfigError(
            f"{type(model).__name__} cannot be exported with a dynamic input size: {why}; export it with --static "
            "(and --example-size H W, the size it will run at)"
        )
    why = _example_problem(model, example_size) if fmt == "onnx" and dynamic else None
    if why:
        raise ConfigError(
            f"--example-size {example_size[0]} {example_size[1]} cannot trace a dynamic ONNX graph of "
            f"{type(model).__name__}: {why}; give an odd size such as the default 67 93, or export with --static"
        )
    ensure_dir(out.parent)
    model = model.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, *example_size, generator=gen)
    h2 = example_size[0] - 4 if example_size[0] > 4 else example_size[0] + 4  # a second size, never below 1
    xc = torch.randn(2, in_channels, h2, example_size[1] + 6, generator=gen)
    is_dynamic = False
    try:
        if fmt == "onnx":
            holder: dict[str, bool] = {}

            def write(tmp: Path) -> None:
                holder["dyn"] = _export_onnx(model, x, tmp, dynamic, opset)
                if holder["dyn"] and not _runs_at(tmp, xc):  # sizes baked in after all: the example's only
                    holder["dyn"] = _export_onnx(model, x, tmp, False, opset)

            atomic_write(out, write)
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
        if not is_dynamic:
            xc = torch.randn(*x.shape, generator=gen)
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

    overwrite = kwargs.get("overwrite", False)
    if fmt == "onnx":  # the file, then its sidecar: both checked before any work
        guard_file(Path(out), ONNX_FILE, overwrite, "export --out")
        guard_file(Path(f"{out}.yaml"), ONNX_SIDECAR, overwrite, "export --out")
    model, meta = load_checkpoint(checkpoint)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"{checkpoint} is already an exported ONNX model; export the run folder or .safetensors file it was "
            "exported from"
        )
    result = export_model(model, out, fmt, in_channels=meta.in_channels, **kwargs)
    if fmt == "onnx":
        write_sidecar(result.path, meta, extra=_size_note(model, result))
    return result


def needs_static(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot be exported to ONNX with dynamic sizes, or None. SegNet's max unpooling: ONNX
    MaxUnpool takes its output size as an input, which the exporter records as the example's constant sizes, so
    the graph fails (or is wrong) at any other size."""
    from seglab.layers.sampling import MaxUnpoolUp

    if any(isinstance(m, MaxUnpoolUp) for m in model.modules()):
        return "its max unpooling (SegNet) keeps the example's sizes in the ONNX graph"
    return None


def _example_problem(model: torch.nn.Module, example_size: tuple[int, int]) -> str | None:
    """Why a Segmentor traced at ``example_size`` gives a dynamic graph that is wrong at other sizes, or None.
    The trace keeps the padding branch the example takes: none at all (a size the network takes as it is), so
    the graph fails at every size that needs padding; or replication (reflect padding larger than the example),
    so the graph pads every size by replication and its logits differ from PyTorch's."""
    g, pad_mode = getattr(model, "geometry", None), getattr(model, "pad_mode", None)
    if not dataclasses.is_dataclass(g) or not isinstance(pad_mode, str):
        return None
    h, w = example_size
    m = g.margin
    pads = (m, m + g.output_size(w) - w, m, m + g.output_size(h) - h)
    if not any(pads):
        if g.multiple > 1:
            return (
                f"it needs no padding (a multiple of {g.multiple}), so the graph would take no size that does"
            )
        return None
    if pad_mode == "reflect" and not (max(pads[:2]) < w and max(pads[2:]) < h):
        return "it is too small for reflect padding, so the graph would pad every size by replication"
    return None


def plain_min_size(geometry: Any, pad_mode: str | None) -> int:
    """The smallest side every size from which on the exported graph runs in plain ONNX Runtime: reflect padding
    needs each pad smaller than the side (PyTorch falls back to replication; the graph does not, seglab's
    ``OnnxModel`` does it before the graph). 1 for other pad modes."""
    if pad_mode != "reflect" or geometry is None:
        return 1
    period = 2 * (geometry.multiple + geometry.margin) + geometry.min_size + 1
    fits = [
        max(geometry.margin, geometry.margin + geometry.output_size(n) - n) < n for n in range(1, 4 * period)
    ]
    last_bad = max((n for n, ok in enumerate(fits, start=1) if not ok), default=0)
    return last_bad + 1


def _size_note(model: torch.nn.Module, result: ExportResult) -> dict[str, Any]:
    """What the sidecar of an ONNX export says about the sizes the graph takes in plain ONNX Runtime."""
    if not result.dynamic:
        return {"onnx_input_size": list(result.example_shape[-2:])}
    return {
        "onnx_min_size": plain_min_size(getattr(model, "geometry", None), getattr(model, "pad_mode", None))
    }


def _runs_at(path: Path, x: torch.Tensor) -> bool:
    """Whether the ONNX file ``path`` runs on ``x`` in ONNX Runtime (True when onnxruntime is not installed)."""
    try:
        model = OnnxModel(path)
    except SeglabError:
        return True
    try:
        model(x)
    except SeglabError:
        return False
    return True


def _is_onnx(path: Path) -> bool:
    """An earlier ONNX export: its sidecar names it, or the file parses as an ONNX model."""
    if checkpoint_sidecar_of(Path(f"{path}.yaml")) == path.name:
        return True
    try:
        import onnx

        return len(onnx.load_model(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # noqa: BLE001 - not ONNX (or no onnx package): not recognised
        return False


def _is_torchscript(path: Path) -> bool:
    """An earlier TorchScript export: a zip holding TorchScript's constants.pkl (a torch.save file has none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def _is_export_sidecar(path: Path) -> bool:
    """The sidecar of an earlier ONNX export ``<name>.onnx.yaml`` (it names ``<name>.onnx``)."""
    return checkpoint_sidecar_of(path) == path.name[: -len(".yaml")]


ONNX_FILE = OutputKind("ONNX model", (".onnx",), _is_onnx)
TORCHSCRIPT_FILE = OutputKind("TorchScript model", (".pt", ".pth", ".ts"), _is_torchscript)
ONNX_SIDECAR = OutputKind("ONNX model sidecar", (".onnx.yaml",), _is_export_sidecar)


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` file (a zip with data.pkl but no TorchScript code, or a bare pickle)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n.split("/", 1)[-1] for n in z.namelist()]
        return "data.pkl" in names and "constants.pkl" not in names
    with path.open("rb") as f:
        return f.read(1) == b"\x80"  # a pickle's PROTO opcode


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript file in eval mode; CheckpointError (one line) for anything else. A ``torch.save`` pickle is
    refused without being unpickled: it may hold code, and seglab never runs code from a file."""
    path = Path(path)
    if _is_pickle(path):
        raise CheckpointError(
            f"{path} holds pickled Python objects (torch.save), not a TorchScript model; seglab loads only "
            "TorchScript, safetensors or ONNX files and never runs code from a file"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", FutureWarning
            )  # TorchScript is deprecated in favour of torch.export
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path} is not a TorchScript model: {first_line(e)}") from None


def load_exported(path: str | Path, threads: int | None = None) -> Any:
    """An exported model as a callable: ``.onnx`` in ONNX Runtime, anything else as TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    return load_torchscript(path)


__all__ = [
    "FORMATS",
    "ExportResult",
    "OnnxModel",
    "export_checkpoint",
    "export_model",
    "load_exported",
    "load_torchscript",
]
