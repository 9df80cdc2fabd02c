"""``seglab import-smp``: an smp model as a seglab checkpoint, so that evaluate, calibrate, report, predict, serve
and export take a model trained with segmentation_models_pytorch as they take seglab's own."""

from __future__ import annotations

from pathlib import Path

from seglab.errors import ConfigError
from seglab.files import OutputKind, checkpoint_sidecar_of


def _is_checkpoint(path: Path) -> bool:
    """A seglab checkpoint's weights (its sidecar beside it): a file this command may replace."""
    return checkpoint_sidecar_of(path.with_suffix(".yaml")) is not None


CHECKPOINT_FILE = OutputKind("checkpoint", (".safetensors",), _is_checkpoint)


def import_smp(
    weights: str | Path,
    data: str | Path,
    out: str | Path,
    arch: str | None = None,
    encoder: str | None = None,
    fmt: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Write the smp checkpoint ``weights`` (a ``save_pretrained`` folder or a state-dict file) as the seglab
    checkpoint ``out`` (.safetensors and its sidecar) for the data set ``data``, whose classes (names, palette,
    ignore index) and band count it takes; returns the weights path. The architecture comes from smp's
    config.json, else ``arch``; ``encoder`` names a ``tu-`` timm encoder that a bare state dict does not. Images
    are normalised as smp's encoders expect them: 8-bit, /255, ImageNet mean and std."""
    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.data.normalize import Normalization, default_normalization
    from seglab.data.scan import scan_folder
    from seglab.files import guard_file
    from seglab.models.factory import create_model, resolved_params
    from seglab.models.from_smp import SMP_CLASSES, read_smp_checkpoint

    out = guard_file(out, CHECKPOINT_FILE, overwrite, "import-smp --out")
    ckpt = read_smp_checkpoint(weights)
    named = SMP_CLASSES.get(str(ckpt.config.get("_model_class")))
    arch = arch or named
    if arch is None:
        raise ConfigError(f"smp checkpoint {weights} has no config.json naming its class: give --arch")
    scan = scan_folder(data, format=fmt)
    spec = scan.classes
    if spec is None:
        raise ConfigError(f"data set {data}: its classes are unknown ({'; '.join(scan.problems[:1])})")
    given = {"weights": str(weights), **({"encoder": encoder} if encoder else {})}
    params = resolved_params(arch, given)
    model = create_model(arch, spec.num_classes, scan.in_channels, **given)
    mean, std = default_normalization(scan.in_channels)
    meta = CheckpointMeta(
        arch=arch,
        num_classes=spec.num_classes,
        in_channels=scan.in_channels,
        model_params=params,
        class_names=list(spec.names),
        palette=[list(c) for c in spec.palette],
        mean=mean,
        std=std,
        ignore_index=spec.ignore_index,
        normalize=Normalization.legacy(mean, std, None).to_dict(),
    )
    return save_checkpoint(out, model, meta)


__all__ = ["import_smp"]
