"""Checkpoints: weights in safetensors plus a YAML sidecar that says what they mean.

``best.safetensors`` + ``best.yaml``: the sidecar records the architecture arguments, class names, palette,
input normalisation and resize, split, metrics and the weights' SHA-256, so evaluate and predict need nothing
else.
Both files are written to a temporary name, fsynced and renamed.

The weights file also carries the same description in its safetensors header (metadata key ``seglab``), so it is
self-contained: a save interrupted between the two files leaves a sidecar whose SHA-256 no longer matches, and
``read_meta`` then reads the description from the weights file itself instead of failing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from seglab.config import check_resize
from seglab.errors import CheckpointError, ConfigError
from seglab.files import atomic_write
from seglab.models.torch_files import torch_load_problem  # noqa: F401  (re-exported: seglab.engine.state)

if TYPE_CHECKING:
    from seglab.data.normalize import Normalization

FORMAT = "seglab-checkpoint/1"


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild a model and use it on new images."""

    arch: str
    num_classes: int
    in_channels: int
    model_params: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    ignore_index: int = 255
    split: dict[str, Any] = field(
        default_factory=dict
    )  # val_ratio, test_ratio, split_seed of the training run
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    temperature: float = 1.0  # logits are divided by it at inference (fitted by `seglab calibrate`)
    # data.resize of the training run ({short: N}, {long: N}, {scale: F} or None): predict, evaluate, calibrate
    # and the uncertainty predictors resize images before the model and bring its logits back to the image's
    # (the label's) own size; checkpoints written before it existed read as None (no resize)
    resize: dict[str, Any] | None = None
    # data.target of the training run: "interior_boundary" models predict background / interior / boundary, made
    # from instance maps (seglab.instances); evaluate builds the same target from instances/
    target: str = "mask"
    boundary_width: int = 2
    stretch: list[float] | None = None  # data.stretch: percentiles of each image spread over 0..255 first
    # the resolved data.normalize (seglab.data.normalize.Normalization.to_dict); None in checkpoints written
    # before it existed: those normalise as ``mean``, ``std`` and ``stretch`` say (Normalization.legacy)
    normalize: dict[str, Any] | None = None

    @property
    def normalization(self) -> Normalization:
        """How images are normalised for this model (the one object every inference path applies)."""
        from seglab.data.normalize import Normalization

        if self.normalize:
            return Normalization.from_dict(self.normalize)
        return Normalization.legacy(self.mean, self.std, self.stretch)


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a checkpoint given as a run folder (its best), a .safetensors, .yaml or bare stem.

    An exported ``model.onnx`` has the sidecar ``model.onnx.yaml``, an OpenVINO IR ``model.xml`` (beside its
    ``model.bin``) the sidecar ``model.xml.yaml`` (both written by `seglab export`).
    """
    from seglab.models.runtime import EXPORTED_SUFFIXES

    path = Path(path)
    exported = path if path.suffix in EXPORTED_SUFFIXES else None
    if path.suffix == ".yaml" and Path(path.stem).suffix in EXPORTED_SUFFIXES:
        exported = path.with_suffix("")
    if exported is not None:
        return exported, exported.with_name(exported.name + ".yaml")
    if path.is_dir():
        path = path / "best.safetensors"
    if path.suffix in (".safetensors", ".yaml"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".yaml")


def sha256_file(path: str | Path) -> str:
    """The SHA-256 (hex) of a file, read in 1 MiB chunks: what a sidecar's ``weights_sha256`` records. An
    OpenVINO IR's ``.xml`` holds the graph and its ``.bin`` beside it the weights: both are hashed, in that order,
    so a swapped ``.bin`` is caught too."""
    path = Path(path)
    parts = [path] + (
        [path.with_suffix(".bin")] if path.suffix == ".xml" and path.with_suffix(".bin").is_file() else []
    )
    h = hashlib.sha256()
    for part in parts:
        with part.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: Any, meta: CheckpointMeta) -> Path:
    """Write ``<path>.safetensors`` (with ``meta`` in its header) and ``<path>.yaml`` atomically; returns the
    weights path. ``model`` is a module or a state dict."""
    from safetensors.torch import save_file

    weights, _ = checkpoint_paths(path)
    tensors = model if isinstance(model, dict) else model.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"seglab": yaml.safe_dump({"format": FORMAT, **dataclasses.asdict(meta)}, sort_keys=False)}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp), metadata=header))
    write_sidecar(weights, meta)
    return weights


def _embedded_doc(weights: Path) -> dict[str, Any] | None:
    """The description a seglab weights file carries in its safetensors header, or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            text = (f.metadata() or {}).get("seglab")
        doc = yaml.safe_load(text) if text else None
    except Exception:  # not a safetensors file, truncated, or a header without our key
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def write_sidecar(weights: Path, meta: CheckpointMeta, extra: dict[str, Any] | None = None) -> None:
    """Write the YAML sidecar that describes the weights file ``weights`` (with its SHA-256, and ``extra`` keys,
    e.g. the input sizes an exported ONNX graph takes)."""
    _, sidecar = checkpoint_paths(weights)
    doc = {
        "format": FORMAT,
        "weights": weights.name,
        "weights_sha256": sha256_file(weights),
        **dataclasses.asdict(meta),
        **(extra or {}),
    }
    atomic_write(sidecar, lambda tmp: tmp.write_text(yaml.safe_dump(doc, sort_keys=False)))


def read_meta(path: str | Path) -> CheckpointMeta:
    """The sidecar of a checkpoint, validated; CheckpointError if ``path`` is not a seglab checkpoint."""
    weights, sidecar = checkpoint_paths(path)
    if not weights.is_file():
        raise CheckpointError(
            f"checkpoint {weights} does not exist; pass a run folder or a .safetensors file"
        )
    embedded = _embedded_doc(weights) if weights.suffix == ".safetensors" else None
    if not sidecar.is_file():
        if embedded is None:
            raise CheckpointError(
                f"{weights} has no sidecar {sidecar.name}; a seglab checkpoint is both files"
            )
        doc = embedded  # the weights file describes itself
    else:
        try:
            doc = yaml.safe_load(sidecar.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            if embedded is None:
                raise CheckpointError(
                    f"{sidecar} is not a seglab checkpoint sidecar (format {FORMAT} expected)"
                )
            doc = embedded
        elif doc.get("weights_sha256") != sha256_file(weights):
            if embedded is None:
                raise CheckpointError(
                    f"{weights} does not match {sidecar.name} (SHA-256 differs); the pair is incomplete"
                )
            doc = embedded  # the sidecar is stale (an interrupted save): the weights' own header is right
    names = {f.name for f in dataclasses.fields(CheckpointMeta)}
    try:
        meta = CheckpointMeta(**{k: v for k, v in doc.items() if k in names})
    except TypeError as e:
        raise CheckpointError(f"{sidecar} is incomplete: {e}") from None
    try:
        meta.resize = check_resize(meta.resize, "resize")
    except ConfigError as e:
        raise CheckpointError(f"{sidecar}: {e}") from None
    return meta


def load_checkpoint(
    path: str | Path, device: str = "cpu", backend: str | None = None, threads: int | None = None
) -> tuple[Any, CheckpointMeta]:
    """Rebuild the model of a checkpoint, load its weights, put it in eval mode; returns (model, meta).

    An exported file (``.onnx``, an OpenVINO ``.xml``) runs in its runtime (``seglab.models.runtime``), called
    like a module. ``backend`` overrides the runtime: an ONNX file in ``openvino``, or a seglab checkpoint in
    ``onnxruntime`` / ``openvino`` (exported to ONNX in a temporary folder first, fp32, dynamic sizes).
    ``threads``: the runtime's threads (default: torch's). The runtimes run on the CPU: ``device`` must be it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from seglab.models.factory import create_model
    from seglab.models.runtime import check_backend, load_runtime, model_in_runtime, runtime_device

    meta = read_meta(path)
    weights, _ = checkpoint_paths(path)
    backend = check_backend(weights, backend)
    runtime_device(weights, backend, device)  # an exported runtime on a GPU: one line
    threads = threads or _torch_threads()
    if weights.suffix != ".safetensors":  # an exported model, in its runtime
        return load_runtime(weights, backend, threads), meta
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {e}") from None
    params = dict(meta.model_params)
    if "weights" in params:  # the checkpoint's own weights replace them: never download or read a stale path
        params["weights"] = None
    model = create_model(meta.arch, num_classes=meta.num_classes, in_channels=meta.in_channels, **params)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{weights} does not fit a {meta.arch} model: {str(e).splitlines()[0]}"
        ) from None
    if backend != "torch":
        return model_in_runtime(model, meta.in_channels, backend, threads), meta
    return model.to(device).eval(), meta


def _torch_threads() -> int:
    """Torch's CPU threads: what a runtime uses unless told otherwise, so every backend gets the same CPUs."""
    import torch

    return torch.get_num_threads()
