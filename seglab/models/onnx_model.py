"""An exported ONNX model run in ONNX Runtime, called like a module: (N, C, H, W) -> logits.

Low level on purpose (it imports nothing of seglab's engine), so both ``seglab.checkpoint`` (which loads
``.onnx`` checkpoints) and ``seglab.engine.export`` (which writes them) can use it. The input geometry a seglab
export records in the file's metadata (``GEOMETRY_KEY``) lets :class:`OnnxModel` replicate-pad inputs too small
for the exported reflect padding (a 1-pixel side), as the PyTorch model does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seglab.errors import CheckpointError, SeglabError

GEOMETRY_KEY = "seglab.geometry"  # ONNX metadata: the Segmentor's InputGeometry and pad_mode, as JSON


class OnnxModel:
    """An ONNX model in ONNX Runtime (CPU unless ``providers`` says otherwise), called like a module:
    float tensor (N, C, H, W) in, logits tensor out. ``threads``: intra-op threads (default: ORT's).

    A seglab export records its input geometry; an input too small for the exported reflect padding (a side
    of 1 pixel) is then padded here by replication to the size the network takes, as the PyTorch model does."""

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
        self.training = False
        meta = self.session.get_modelmeta().custom_metadata_map.get(GEOMETRY_KEY)
        self.geometry: dict[str, Any] | None = json.loads(meta) if meta else None
        # a static graph (fixed H and W) was traced at its size, fallback padding included: never pad for it
        self.static = all(isinstance(d, int) for d in self.session.get_inputs()[0].shape[2:])

    @property
    def in_channels(self) -> int:
        c = self.session.get_inputs()[0].shape[1]
        return c if isinstance(c, int) else 3

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        """An exported graph has no training mode; accepted so evaluation loops can restore modes."""
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise SeglabError(
                f"ONNX Runtime cannot run {self.path} on an input of {tuple(x.shape)}: {first_line(e)}"
            ) from None
        return torch.from_numpy(out)

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


def _output_size(g: dict[str, Any], size: int) -> int:
    """``InputGeometry.output_size`` on the geometry recorded in an exported file."""
    o = max(size, g.get("min_size", 1) - 2 * g.get("margin", 0), 1)
    return o + (g.get("offset", 0) - o) % g.get("multiple", 1)


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name if it has none): one line for the user."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["GEOMETRY_KEY", "OnnxModel", "first_line"]
