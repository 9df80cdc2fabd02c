"""int8 post-training quantisation of an exported model: the calibration images, ONNX Runtime's static
quantisation and OpenVINO's (NNCF).

Calibration images are training images of a data set, read (``FolderDataset.load``: ``read_image``) and made
into the model input by ``seglab.inference.image_tensor``, the function `seglab predict` feeds the model through:
the checkpoint's normalisation and resize, at the size the model sees at inference (the exported graph has
dynamic sizes, so images of different sizes calibrate one at a time).

ONNX Runtime (``quantize_static``): QDQ format (QuantizeLinear/DequantizeLinear pairs that the CPU provider fuses
into integer kernels), int8 symmetric weights per output channel, uint8 asymmetric activations, full 8-bit range
(no ``reduce_range``), MinMax calibration. These are ORT's own choices for x86 CPUs with VNNI (its documentation
and ``quantize_static``'s docstring: "x86/x64 CPU with VNNI: activation_type=QUInt8, weight_type=QInt8,
reduce_range=False"): VNNI's VPDPBUSD multiplies unsigned bytes by signed bytes, so u8 activations times s8
weights is its native form, and VNNI accumulates without the 16-bit saturation that ``reduce_range`` guards
against on older CPUs. The fp32 model is first run through ORT's ``quant_pre_process`` (ORT's basic graph
optimisation, constants of the padding arithmetic folded, then ONNX shape inference, so the quantiser knows every
tensor; batch norm is already folded by torch's exporter; ORT's symbolic shape inference is skipped because the
exported graph's dynamic padding arithmetic defeats it).

OpenVINO: ``nncf.quantize`` on the IR with its default preset (symmetric int8 weights per channel and
activations, FakeQuantize nodes that the CPU plugin runs as int8), on the same images.

``per_tensor``: one scale per weight tensor (ORT ``per_channel=False``, NNCF weights ``per_channel=False``).
``exclude_ends``: the first and the last layer (convolution or matrix product, in graph order) stay in float
(ORT ``nodes_to_exclude``, NNCF ``ignored_scope``): the layers that most often carry a quantised model's loss.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seglab.errors import ConfigError, DataError, SeglabError

CALIBRATION_IMAGES = 64  # the default number of calibration images
ONNX_LAYERS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # the layers --exclude-ends looks for
OV_LAYERS = (
    "Convolution",
    "GroupConvolution",
    "ConvolutionBackpropData",
    "GroupConvolutionBackpropData",
    "MatMul",
)


class CalibrationImages:
    """``count`` training images of a data set as model inputs (1, C, h, w), read anew on every pass (NNCF may
    iterate twice; nothing of the set is held in memory). Evenly spread over the train split (the checkpoint's
    split ratios), so a split sorted by name is sampled through."""

    def __init__(
        self, meta: Any, data: str | Path, count: int = CALIBRATION_IMAGES, data_format: str = "auto"
    ):
        from seglab.engine.evaluate import resolve_format, split_dataset

        if count < 1:
            raise ConfigError(f"--calibration-images must be at least 1, got {count}")
        data = Path(data)
        if not data.is_dir():
            raise DataError(f"--calibration {data} is not a folder; give a data set with training images")
        self.meta = meta
        self.data = data
        try:
            self.dataset = split_dataset(meta, data, "train", None, resolve_format(data, data_format))
        except DataError as e:
            if not str(e).startswith("the train split of"):
                raise
            raise DataError(
                f"--calibration {data} has no training images (its train split, by the checkpoint's split "
                "ratios, is empty); give a data set with images in its train split"
            ) from None
        n = len(self.dataset)
        count = min(count, n)
        self.indices = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[torch.Tensor]:
        from seglab.inference.image import image_tensor

        norm = self.meta.normalization
        for i in self.indices:
            image, _ = self.dataset.load(i)
            yield image_tensor(norm.unit(image), norm.mean, norm.std, torch.device("cpu"), self.meta.resize)


@dataclass
class Quantize:
    """How to quantise an export: the calibration inputs (an iterable of (1, C, h, w) tensors that may be
    iterated more than once), per-tensor weight scales, and whether the first and last layers stay in float."""

    images: Any
    per_tensor: bool = False
    exclude_ends: bool = False

    def describe(self, runtime: str, excluded: list[str]) -> dict[str, Any]:
        """What the sidecar records of the quantisation."""
        weights = "per-tensor" if self.per_tensor else "per-channel"
        doc: dict[str, Any] = {"runtime": runtime, "calibration_images": len(self.images)}
        if runtime == "onnxruntime":
            doc.update(
                format="QDQ",
                weights=f"int8 symmetric {weights}",
                activations="uint8 asymmetric",
                calibration_method="MinMax",
            )
        else:
            doc.update(tool="nncf", preset="default (performance: symmetric)", weights=f"int8 {weights}")
        if isinstance(self.images, CalibrationImages):
            doc["calibration"] = str(self.images.data)
        doc["float_layers"] = excluded
        return doc


def onnx_end_layers(proto: Any) -> list[str]:
    """The names of the first and the last weighted layer of an ONNX graph (in its topological node order)."""
    names = [n.name for n in proto.graph.node if n.op_type in ONNX_LAYERS]
    return list(dict.fromkeys(names[:1] + names[-1:]))


def ov_end_layers(model: Any) -> list[str]:
    """The friendly names of the first and the last weighted layer of an OpenVINO model (in execution order)."""
    names = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in OV_LAYERS]
    return list(dict.fromkeys(names[:1] + names[-1:]))


class _Reader:
    """The calibration images as ONNX Runtime's CalibrationDataReader wants them: {input name: array}, then
    None."""

    def __init__(self, images: Any, input_name: str) -> None:
        self.images = iter(images)
        self.input_name = input_name

    def get_next(self) -> dict[str, Any] | None:
        x = next(self.images, None)
        return None if x is None else {self.input_name: x.numpy()}


def quantize_onnx(fp32: Path, out: Path, q: Quantize) -> dict[str, Any]:
    """The fp32 ONNX model ``fp32`` quantised to int8 by ONNX Runtime into ``out`` (self-contained, the fp32
    file's metadata kept); returns what the sidecar records of it."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise SeglabError("int8 ONNX export needs onnxruntime: pip install 'seglab[onnx]'") from None
    from seglab.models.runtime import first_line

    with tempfile.TemporaryDirectory(prefix="seglab-int8-") as work:
        pre = Path(work) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001 - ORT's optimiser raises its own types
            raise SeglabError(
                f"ONNX Runtime cannot prepare the model for quantisation: {first_line(e)}"
            ) from None
        proto = onnx.load_model(str(pre), load_external_data=False)
        excluded = onnx_end_layers(proto) if q.exclude_ends else []
        try:
            with _quiet():
                quantize_static(
                    str(pre),
                    str(out),
                    _Reader(q.images, proto.graph.input[0].name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=not q.per_tensor,
                    reduce_range=False,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except SeglabError:
            raise
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise SeglabError(f"ONNX Runtime could not quantise the model: {first_line(e)}") from None
    _keep_metadata(fp32, out)
    return q.describe("onnxruntime", excluded)


def _keep_metadata(src: Path, dst: Path) -> None:
    """Copy the seglab metadata (the input geometry) of ``src`` into ``dst`` where the quantiser dropped it."""
    import onnx

    from seglab.models.runtime import GEOMETRY_KEY

    meta = {p.key: p.value for p in onnx.load_model(str(src), load_external_data=False).metadata_props}
    proto = onnx.load_model(str(dst), load_external_data=False)
    have = {p.key for p in proto.metadata_props}
    if GEOMETRY_KEY in meta and GEOMETRY_KEY not in have:
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **meta})
        onnx.save_model(proto, str(dst), save_as_external_data=False)


def quantize_ov(model: Any, q: Quantize) -> tuple[Any, dict[str, Any]]:
    """The OpenVINO model ``model`` quantised to int8 by NNCF (default preset); returns it and what the sidecar
    records of it."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )
    except ImportError:
        raise SeglabError("int8 OpenVINO export needs nncf: pip install 'seglab[openvino]'") from None
    from seglab.models.runtime import first_line

    excluded = ov_end_layers(model) if q.exclude_ends else []
    advanced = None
    if q.per_tensor:
        advanced = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=False)
        )
    try:
        with _quiet():
            quantized = nncf.quantize(
                model,
                nncf.Dataset(q.images, lambda x: x.numpy()),
                subset_size=len(q.images),
                ignored_scope=nncf.IgnoredScope(names=excluded) if excluded else None,
                advanced_parameters=advanced,
            )
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise SeglabError(f"NNCF could not quantise the model: {first_line(e)}") from None
    return quantized, q.describe("openvino", excluded)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log lines or progress bars from the quantisers (ORT logs its calibration, NNCF draws rich bars)."""
    loggers = [logging.getLogger(n) for n in ("nncf", "root", "onnxruntime")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


__all__ = [
    "CALIBRATION_IMAGES",
    "CalibrationImages",
    "Quantize",
    "onnx_end_layers",
    "ov_end_layers",
    "quantize_onnx",
    "quantize_ov",
]
