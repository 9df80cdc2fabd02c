"""Export: a checkpoint (or a model) to ONNX or TorchScript, and running an exported ONNX model in ONNX Runtime.

ONNX goes through PyTorch's torch.export-based exporter with the batch, height and width dynamic (the
Segmentor's padding to its stride is exported as shape arithmetic, so any H x W works); where a model does not
export with dynamic sizes it is exported for the example size only and the result says so. TorchScript is
``torch.jit.trace`` (the traced graph keeps the example's padding, so it takes inputs of the example's size and
is marked static). ``OnnxModel`` (in :mod:`seglab.models.runtime`, re-exported here) wraps an ONNX Runtime
session as a callable (N, C, H, W) -> logits.

An ONNX export is one self-contained file (weights inside, no external-data file), so ``m.onnx`` and its
sidecar ``m.onnx.yaml`` can be copied anywhere; that caps a model at protobuf's 2 GB, far above any model here.
The model's input geometry (stride multiple, margin, pad mode) is stored in the file's metadata, so
``OnnxModel`` can replicate-pad inputs too small for the exported reflect padding (a 1-pixel side), as the
PyTorch model does.

OpenVINO (``openvino``): the ONNX export converted by ``openvino.convert_model`` and saved as an IR ``m.xml`` +
``m.bin`` (fp32 weights, the geometry in its runtime info). ``int8`` (ONNX or OpenVINO): post-training
quantisation on calibration images (:mod:`seglab.engine.quantize`).

Every file is written into a private folder beside ``out`` and renamed into place once complete (an IR's ``.bin``
before its ``.xml``, a sidecar last). Before the rename, :func:`export_checkpoint` measures the export's fidelity
on a labelled split (pixel agreement of its masks with the PyTorch model's, and both mIoUs, through the inference
path of `seglab evaluate`) and refuses an int8 model that loses more than ``max_miou_drop`` mIoU points, so a
refused export leaves no file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seglab.errors import CheckpointError, ConfigError, DataError, SeglabError
from seglab.files import OutputKind, checkpoint_sidecar_of, file_head, guard_file
from seglab.models.runtime import OnnxModel, OpenVinoModel, first_line, needs_static, write_onnx

if TYPE_CHECKING:
    from seglab.checkpoint import CheckpointMeta
    from seglab.engine.quantize import Quantize

FORMATS = ("onnx", "torchscript", "openvino")
MAX_MIOU_DROP = 1.0  # mIoU points an int8 export may lose against PyTorch by default


@dataclass
class Fidelity:
    """How an export's masks compare with the PyTorch model's on a labelled split: ``pixel_agreement`` (the
    fraction of all mask pixels where both predict the same class) and the mIoU of each (0..1), scored as
    `seglab evaluate` scores them."""

    data: str
    split: str
    images: int
    pixel_agreement: float
    miou_pytorch: float
    miou_exported: float

    @property
    def miou_drop(self) -> float:
        """mIoU points (percent) the export loses against PyTorch (negative: it gains)."""
        return 100 * (self.miou_pytorch - self.miou_exported)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "miou_drop_points": round(self.miou_drop, 4)}

    def describe(self) -> str:
        return (
            f"fidelity on the {self.split} split of {self.data} ({self.images} images): pixel agreement "
            f"{100 * self.pixel_agreement:.2f}%, mIoU {100 * self.miou_exported:.2f} (PyTorch "
            f"{100 * self.miou_pytorch:.2f}, drop {self.miou_drop:.2f} points)"
        )


@dataclass
class ExportResult:
    path: Path
    format: str
    dynamic: bool  # batch, height and width may differ from the example's
    example_shape: tuple[int, ...]
    max_abs_diff: float | None = (
        None  # exported vs PyTorch on a random input of an odd size (None: not checked)
    )
    int8: bool = False
    quantization: dict[str, Any] | None = None  # how it was quantised (what the sidecar records)
    fidelity: Fidelity | None = None  # measured by export_checkpoint (None: skipped, see fidelity_skipped)
    fidelity_skipped: str | None = None  # why the fidelity was not measured


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
    quantize: Quantize | None = None,
) -> ExportResult:
    """Export ``model`` (put in eval mode) to ``out`` as ``fmt``: "onnx", "torchscript" or "openvino" (an IR:
    ``out`` is the .xml, its weights go beside it as .bin).

    ``example_size`` (H, W) is the traced input (odd by default, so the padding path is exported), of ``batch``
    images (what a static export then takes). With
    ``check`` the exported model runs on a random input of another odd size (the example's for static exports)
    and the largest absolute logit difference to PyTorch is recorded in the result. ``quantize`` (onnx or
    openvino; :class:`seglab.engine.quantize.Quantize`): an int8 model, calibrated on its images.

    ``out`` is checked before any work (``seglab.files.guard_file``): an earlier export of the format is replaced,
    a file of another kind only with ``overwrite``, a checkpoint, state or data-set file never. The files are
    written into a private folder beside ``out`` and renamed into place once complete; a dynamic ONNX graph is
    first run at a second size, and a graph that holds the example's sizes after all (an exporter that baked them
    in) is exported static.
    A SegNet with max unpooling is refused with ``dynamic`` before anything is written (see :func:`needs_static`).
    """
    out = Path(out)
    _check_request(fmt, dynamic, quantize is not None)
    for path, kind in _guard_order(out, fmt, sidecar=False):
        guard_file(path, kind, overwrite, "export --out")
    model = model.eval()
    _check_model(model, fmt, dynamic, example_size)
    with _staging(out) as stage:
        result = _export_staged(
            model, stage / out.name, fmt, example_size, in_channels, dynamic, check, opset, batch, quantize
        )
        _publish(stage, out, fmt, sidecar=False)
    result.path = out
    return result


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    *,
    int8: bool = False,
    calibration: str | Path | None = None,
    calibration_images: int | None = None,
    per_tensor: bool = False,
    exclude_ends: bool = False,
    data: str | Path | None = None,
    split: str = "test",
    fidelity_images: int | None = None,
    max_miou_drop: float = MAX_MIOU_DROP,
    fidelity: bool = True,
    data_format: str = "auto",
    example_size: tuple[int, int] = (67, 93),
    dynamic: bool = True,
    check: bool = True,
    opset: int | None = None,
    overwrite: bool = False,
    batch: int = 1,
) -> ExportResult:
    """Load a seglab checkpoint and export it as :func:`export_model` does (its in_channels as the example's).
    An ONNX or OpenVINO export gets the checkpoint's sidecar as ``<out>.yaml``, so `seglab predict`, `evaluate`,
    `benchmark` and `serve` can run it.

    ``int8`` (onnx or openvino): post-training quantisation calibrated on ``calibration_images`` (default 64;
    fewer if the split has fewer) images of the train split of the data set ``calibration`` (see
    :mod:`seglab.engine.quantize`), with ``per_tensor`` weight scales and/or the first and last layers in float
    (``exclude_ends``).

    Fidelity (``fidelity``; onnx and openvino): the export, loaded from its sidecar as `seglab evaluate` loads
    it, and the PyTorch model predict ``split`` of ``data`` (default: the run folder's ``config.yaml``
    ``data.root``; without one the measurement is skipped and the result says why), the first
    ``fidelity_images`` images of it (default: all); the result's :class:`Fidelity` (pixel agreement, both
    mIoUs) goes into the sidecar as ``fidelity``. An int8 export that loses more than ``max_miou_drop`` mIoU
    points is refused (ConfigError naming the drop and what to try) and nothing is written.
    """
    from seglab.checkpoint import load_checkpoint, write_sidecar
    from seglab.engine.quantize import CALIBRATION_IMAGES, CalibrationImages, Quantize

    out = Path(out)
    _check_request(fmt, dynamic, int8)
    _check_int8_options(int8, calibration, calibration_images, per_tensor, exclude_ends)
    if fidelity_images is not None and fidelity_images < 1:
        raise ConfigError(f"--fidelity-images must be at least 1, got {fidelity_images}")
    if not max_miou_drop >= 0 or max_miou_drop == float("inf"):
        raise ConfigError(f"--max-miou-drop must be a finite number >= 0 (mIoU points), got {max_miou_drop}")
    sidecar = fmt != "torchscript"
    for path, kind in _guard_order(out, fmt, sidecar):  # every file, checked before any work
        guard_file(path, kind, overwrite, "export --out")
    model, meta = load_checkpoint(checkpoint)
    if not isinstance(model, torch.nn.Module):
        kind = "OpenVINO" if getattr(model, "backend", "") == "openvino" else "ONNX"
        raise ConfigError(
            f"{checkpoint} is already an exported {kind} model; export the run folder or .safetensors file it "
            "was exported from"
        )
    model = model.eval()
    _check_model(model, fmt, dynamic, example_size)
    source = (
        _fidelity_source(checkpoint, meta, fmt, data, split, data_format) if fidelity else "not asked for"
    )
    quantize = None
    if int8:
        assert calibration is not None
        images = CalibrationImages(meta, calibration, calibration_images or CALIBRATION_IMAGES)
        quantize = Quantize(images, per_tensor, exclude_ends)
    with _staging(out) as stage:
        staged = stage / out.name
        result = _export_staged(
            model, staged, fmt, example_size, meta.in_channels, dynamic, check, opset, batch, quantize
        )
        extra = {**_size_note(model, result), **({"int8": result.quantization} if result.int8 else {})}
        if sidecar:  # the export is loaded from its sidecar, as evaluate loads it
            write_sidecar(staged, meta, extra)
        if isinstance(source, str):
            result.fidelity_skipped = source + ("; the int8 accuracy cost is unmeasured" if quantize else "")
        else:
            result.fidelity = measure_fidelity(model, staged, *source, limit=fidelity_images)
            if quantize is not None:
                _check_drop(result.fidelity, max_miou_drop, fmt, quantize)
        if sidecar:
            doc = result.fidelity.to_dict() if result.fidelity else f"skipped ({result.fidelity_skipped})"
            write_sidecar(staged, meta, {**extra, "fidelity": doc})
        _publish(stage, out, fmt, sidecar)
    result.path = out
    return result


def measure_fidelity(
    reference: torch.nn.Module,
    exported: str | Path,
    data: str | Path,
    split: str = "test",
    data_format: str = "auto",
    limit: int | None = None,
) -> Fidelity:
    """The :class:`Fidelity` of the export ``exported`` (a file with its sidecar, loaded by ``load_checkpoint``:
    what `seglab evaluate` runs) against ``reference`` (the PyTorch model) on the first ``limit`` images (None:
    all) of ``split`` of ``data``: the images through evaluate's loader (the checkpoint's normalisation and
    resize), the logits upsampled to each label's size, scored by evaluate's ConfusionMatrix."""
    from seglab.checkpoint import load_checkpoint
    from seglab.engine.evaluate import _split_loader, label_groups, upsample_logits
    from seglab.metrics import ConfusionMatrix
    from seglab.metrics.meter import logits_to_labels

    model, meta = load_checkpoint(exported)
    loader, n = _split_loader(meta, data, split, 1, None, data_format)
    n = min(n, limit) if limit else n
    cms = [ConfusionMatrix(meta.num_classes, meta.ignore_index) for _ in range(2)]
    agree = total = 0
    with torch.inference_mode():
        for _, batch in zip(range(n), loader):
            for images, masks, size in label_groups(batch):
                ref = logits_to_labels(upsample_logits(reference(images), size), masks)
                got = logits_to_labels(upsample_logits(model(images), size), masks)
                cms[0].update(ref, masks)
                cms[1].update(got, masks)
                agree += int((ref == got).sum())
                total += ref.numel()
    m_ref, m_got = (float(cm.compute()["miou"]) for cm in cms)
    return Fidelity(str(data), split, n, agree / max(total, 1), m_ref, m_got)


def _check_request(fmt: str, dynamic: bool, int8: bool) -> None:
    """The format, and int8 where it can be done; ConfigError (one line) otherwise."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if int8 and fmt == "torchscript":
        raise ConfigError("--int8 exports to --format onnx or openvino; TorchScript has no int8 export")
    if int8 and not dynamic:
        raise ConfigError(
            "--int8 calibrates on images at their own sizes, which a --static graph does not take; export "
            "without --static"
        )


def _check_int8_options(
    int8: bool,
    calibration: str | Path | None,
    calibration_images: int | None,
    per_tensor: bool,
    exclude_ends: bool,
) -> None:
    """The int8 options go together: --int8 needs --calibration, the others need --int8."""
    if int8 and calibration is None:
        raise ConfigError(
            "--int8 needs --calibration DATA: a data set whose training images calibrate the activation ranges "
            "(e.g. the one the model was trained on)"
        )
    if not int8:
        given = [
            flag
            for flag, value in (
                ("--calibration", calibration is not None),
                ("--calibration-images", calibration_images is not None),
                ("--per-tensor", per_tensor),
                ("--exclude-ends", exclude_ends),
            )
            if value
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} only apply to an int8 export; add --int8 or leave them out"
            )
    if calibration_images is not None and calibration_images < 1:
        raise ConfigError(f"--calibration-images must be at least 1, got {calibration_images}")


def _check_drop(f: Fidelity, max_drop: float, fmt: str, q: Quantize) -> None:
    """ConfigError (one line: the drop and what to try) when the int8 export loses more than ``max_drop``."""
    if f.miou_drop <= max_drop:
        return
    tries = [f"more --calibration-images (it used {len(q.images)})"]
    if not q.exclude_ends:
        tries.append("--exclude-ends (the first and last layers in float)")
    if not q.per_tensor:
        tries.append("--per-tensor")
    advice = tries[0] if len(tries) == 1 else f"{', '.join(tries[:-1])} or {tries[-1]}"
    raise ConfigError(
        f"the int8 {fmt} export loses {f.miou_drop:.2f} mIoU points on the {f.split} split of {f.data} (PyTorch "
        f"{100 * f.miou_pytorch:.2f}, int8 {100 * f.miou_exported:.2f}), more than --max-miou-drop {max_drop:g}; "
        f"nothing was written. Try {advice}"
    )


def _fidelity_source(
    checkpoint: str | Path,
    meta: CheckpointMeta,
    fmt: str,
    data: str | Path | None,
    split: str,
    data_format: str,
) -> tuple[Path, str, str] | str:
    """(data set, split, layout) to measure the fidelity on, or why it is skipped: ``data``, else the run's own
    data set (the run folder's config.yaml data.root, in its data.format). A ``data`` that is not a data set or
    has an empty split is an error; the run's own, a reason to skip."""
    from seglab.engine.evaluate import resolve_format, split_dataset

    if fmt == "torchscript":
        return "a TorchScript export is traced at one input size; measure an onnx or openvino export"
    explicit = data is not None
    if data is None:
        data, run_format = _run_data(checkpoint)
        if data is None:
            return "no labelled data set: pass --data DIR to measure it"
        if not Path(data).is_dir():
            return f"the run's data set {data} is not there; pass --data DIR to measure it"
        data_format = run_format or data_format
    data = Path(data)
    try:
        data_format = resolve_format(data, data_format)
        split_dataset(meta, data, split, None, data_format)
    except DataError as e:
        if explicit:
            raise DataError(f"--data {data}: {e}") from None
        return f"the run's data set {data}: {e}"
    return data, split, data_format


def _run_data(checkpoint: str | Path) -> tuple[str | None, str | None]:
    """(data.root, data.format) of the run folder the checkpoint lies in (its config.yaml), or (None, None)."""
    from seglab.checkpoint import checkpoint_paths
    from seglab.files import read_yaml_file

    doc = read_yaml_file(checkpoint_paths(checkpoint)[0].parent / "config.yaml")
    section = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(section, dict) or not section.get("root"):
        return None, None
    fmt = section.get("format")
    return str(section["root"]), str(fmt) if fmt else None


def _check_model(model: torch.nn.Module, fmt: str, dynamic: bool, example_size: tuple[int, int]) -> None:
    """What keeps ``model`` from a dynamic ONNX graph (onnx and openvino go through one), before any work."""
    if fmt == "torchscript" or not dynamic:
        return
    why = needs_static(model)
    if why:
        raise ConfigError(
            f"{type(model).__name__} cannot be exported with a dynamic input size: {why}; export it with --static "
            "(and --example-size H W, the size it will run at)"
        )
    why = _example_problem(model, example_size)
    if why:
        raise ConfigError(
            f"--example-size {example_size[0]} {example_size[1]} cannot trace a dynamic ONNX graph of "
            f"{type(model).__name__}: {why}; give an odd size such as the default 67 93, or export with --static"
        )


def _export_staged(
    model: torch.nn.Module,
    path: Path,
    fmt: str,
    example_size: tuple[int, int],
    in_channels: int,
    dynamic: bool,
    check: bool,
    opset: int | None,
    batch: int,
    quantize: Quantize | None,
) -> ExportResult:
    """Write the export to ``path`` (in the staging folder; an int8 or OpenVINO export goes through an fp32 ONNX
    file beside it, removed again) and check it against PyTorch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, *example_size, generator=gen)
    h2 = example_size[0] - 4 if example_size[0] > 4 else example_size[0] + 4  # a second size, never below 1
    xc = torch.randn(2, in_channels, h2, example_size[1] + 6, generator=gen)
    is_dynamic = False
    info = None
    try:
        if fmt == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, (x,), check_trace=False)
                torch.jit.save(traced, str(path))
        else:
            plain = fmt == "onnx" and quantize is None
            onnx_path = path if plain else path.with_name(f"{path.stem}.fp32.onnx")
            is_dynamic = write_onnx(model, x, onnx_path, dynamic, opset)
            if is_dynamic and not _runs_at(onnx_path, xc):  # sizes baked in after all: the example's only
                is_dynamic = write_onnx(model, x, onnx_path, False, opset)
            if quantize is not None and not is_dynamic:
                raise ConfigError(
                    f"{type(model).__name__} exports to ONNX only at a fixed size, and --int8 calibrates on "
                    "images at their own sizes; export it without --int8"
                )
            if fmt == "onnx" and quantize is not None:
                from seglab.engine.quantize import quantize_onnx

                info = quantize_onnx(onnx_path, path, quantize)
            elif fmt == "openvino":
                info = _write_ir(onnx_path, path, quantize)
            if not plain:
                onnx_path.unlink()
    except SeglabError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise SeglabError(f"{type(model).__name__} could not be exported to {fmt}: {first_line(e)}") from None
    result = ExportResult(path, fmt, is_dynamic, tuple(x.shape), int8=quantize is not None, quantization=info)
    if check:
        if not is_dynamic:
            xc = torch.randn(*x.shape, generator=gen)
        with torch.inference_mode():
            ref = model(xc)
            got = load_exported(path)(xc)
        result.max_abs_diff = float((got - ref).abs().max())
    return result


def _write_ir(onnx_path: Path, xml: Path, quantize: Quantize | None) -> dict[str, Any] | None:
    """The ONNX model ``onnx_path`` converted by OpenVINO (int8 by NNCF with ``quantize``) and saved as the IR
    ``xml`` + its ``.bin`` (fp32 weights: no fp16 compression), the input geometry in its runtime info."""
    try:
        import openvino as ov
    except ImportError:
        raise SeglabError("OpenVINO export needs openvino: pip install 'seglab[openvino]'") from None
    from seglab.models.runtime import OV_GEOMETRY_PATH, onnx_geometry

    model = ov.convert_model(str(onnx_path))
    info = None
    if quantize is not None:
        from seglab.engine.quantize import quantize_ov

        model, info = quantize_ov(model, quantize)
    geometry = onnx_geometry(onnx_path)
    if geometry is not None:
        model.set_rt_info(json.dumps(geometry), OV_GEOMETRY_PATH)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return info


def output_files(out: Path, fmt: str, sidecar: bool = True) -> list[tuple[Path, OutputKind]]:
    """The files an export of ``fmt`` to ``out`` writes, in the order they are renamed into place (an IR's .bin
    before its .xml, the sidecar last), each with its output kind."""
    out = Path(out)
    if fmt == "torchscript":
        return [(out, TORCHSCRIPT_FILE)]
    if fmt == "openvino":
        files = [(out.with_suffix(".bin"), OPENVINO_WEIGHTS), (out, OPENVINO_FILE)]
        side = OPENVINO_SIDECAR
    else:
        files, side = [(out, ONNX_FILE)], ONNX_SIDECAR
    return files + ([(Path(f"{out}.yaml"), side)] if sidecar else [])


def _guard_order(out: Path, fmt: str, sidecar: bool) -> list[tuple[Path, OutputKind]]:
    """:func:`output_files` with ``out`` itself first (a wrong suffix is named on the path the user gave)."""
    files = output_files(out, fmt, sidecar)
    return sorted(files, key=lambda f: f[0] != out)


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A private folder beside ``out`` (same file system, so the renames are atomic) for the files of one
    export; removed with whatever is left in it. A full disk is one line."""
    from seglab.files import disk_full, ensure_dir, no_space_message

    ensure_dir(out.parent)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise SeglabError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        yield stage
    except BaseException as e:
        if disk_full(out.parent, e):
            raise SeglabError(no_space_message(out)) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out: Path, fmt: str, sidecar: bool) -> None:
    """Rename the staged files into place in :func:`output_files`' order, each fsynced first; then the folder."""
    from seglab.files import fsync_path

    umask = os.umask(0)
    os.umask(umask)
    for path, _ in output_files(out, fmt, sidecar):
        staged = stage / path.name
        os.chmod(staged, 0o666 & ~umask)
        fsync_path(staged)
        os.replace(staged, path)
    fsync_path(out.parent)


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
    """The sidecar of an earlier export ``<name>.onnx.yaml`` or ``<name>.xml.yaml`` (it names ``<name>.onnx`` or
    ``<name>.xml``)."""
    return checkpoint_sidecar_of(path) == path.name[: -len(".yaml")]


def _is_ir(path: Path) -> bool:
    """An earlier OpenVINO IR ``<name>.xml``: its sidecar names it, or the XML's root element is an IR's
    ``<net>``."""
    if checkpoint_sidecar_of(Path(f"{path}.yaml")) == path.name:
        return True
    head = file_head(path, 512).lstrip()
    return head.startswith(b"<?xml") and b"<net " in head


def _is_ir_weights(path: Path) -> bool:
    """The ``.bin`` of an earlier OpenVINO IR: the ``.xml`` of its name beside it is one (the weights file says
    nothing of itself)."""
    xml = path.with_suffix(".xml")
    return xml.is_file() and _is_ir(xml)


ONNX_FILE = OutputKind("ONNX model", (".onnx",), _is_onnx)
TORCHSCRIPT_FILE = OutputKind("TorchScript model", (".pt", ".pth", ".ts"), _is_torchscript)
ONNX_SIDECAR = OutputKind("ONNX model sidecar", (".onnx.yaml",), _is_export_sidecar)
OPENVINO_FILE = OutputKind("OpenVINO IR", (".xml",), _is_ir)
OPENVINO_WEIGHTS = OutputKind("OpenVINO IR weights file", (".bin",), _is_ir_weights)
OPENVINO_SIDECAR = OutputKind("OpenVINO IR sidecar", (".xml.yaml",), _is_export_sidecar)


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
    """An exported model as a callable: ``.onnx`` in ONNX Runtime, an IR ``.xml`` in OpenVINO, anything else as
    TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    if path.suffix == ".xml":
        return OpenVinoModel(path, threads)
    return load_torchscript(path)


__all__ = [
    "FORMATS",
    "MAX_MIOU_DROP",
    "ExportResult",
    "Fidelity",
    "OnnxModel",
    "export_checkpoint",
    "export_model",
    "measure_fidelity",
    "output_files",
    "load_exported",
    "load_torchscript",
]
