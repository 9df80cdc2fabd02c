"""Evaluation: a checkpoint on a folder data set -> pixel accuracy, per-class IoU and Dice, mIoU (table + JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seglab.metrics import ConfusionMatrix


@torch.inference_mode()
def run_evaluation(
    model: torch.nn.Module,
    loader: Any,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    progress: bool = False,
) -> ConfusionMatrix:
    """Accumulate the confusion matrix of ``model`` over ``loader`` of (images, masks) batches."""
    was_training = model.training
    model.eval()
    meter = ConfusionMatrix(num_classes, ignore_index)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="evaluate", leave=False, dynamic_ncols=True)
    for images, masks in loader:
        logits = model(images.to(device))
        meter.update(logits.argmax(1).cpu(), masks)
    model.train(was_training)
    return meter


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    *,
    batch_size: int = 8,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of the folder data set ``data``; writes the report as JSON to ``out``
    (default: ``eval-<split>.json`` beside the checkpoint) and returns it."""
    from torch.utils.data import DataLoader

    from seglab.checkpoint import checkpoint_paths, load_checkpoint
    from seglab.config import DataConfig
    from seglab.data.folder import FolderDataset
    from seglab.data.transforms import build_transform, pad_collate
    from seglab.engine.train import resolve_device
    from seglab.errors import DataError
    from seglab.files import write_json

    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=str(dev))
    transform = build_transform(DataConfig(mean=meta.mean, std=meta.std), meta.in_channels, train=False)
    ds = FolderDataset(
        data, split, transform, ignore_index=meta.ignore_index, num_classes=meta.num_classes,
        in_channels=meta.in_channels, cache=False, **meta.split,
    )  # fmt: skip
    if len(ds) == 0:
        raise DataError(f"the {split} split of {data} is empty; choose --split val, train or all")
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=pad_collate(meta.ignore_index))
    cm = run_evaluation(model, loader, meta.num_classes, meta.ignore_index, dev, progress)
    report = {
        "checkpoint": str(checkpoint_paths(checkpoint)[0]), "data": str(data), "split": split,
        "num_images": len(ds), "classes": meta.class_names, **cm.compute(), "confusion_matrix": cm.matrix.tolist(),
    }  # fmt: skip
    out_path = Path(out) if out else checkpoint_paths(checkpoint)[0].parent / f"eval-{split}.json"
    write_json(out_path, report)
    report["report_path"] = str(out_path)
    return report


def format_table(report: dict[str, Any]) -> str:
    """The per-class IoU/Dice table and the summary lines, as plain text."""
    names = report["classes"]
    width = max(10, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}", "-" * (width + 18)]
    for name, iou, dice in zip(names, report["iou"], report["dice"]):
        lines.append(f"{name:<{width}}  {iou:7.4f}  {dice:7.4f}")
    lines.append("-" * (width + 18))
    lines.append(f"{'mean':<{width}}  {report['miou']:7.4f}  {report['mean_dice']:7.4f}")
    lines.append(
        f"pixel accuracy {report['pixel_accuracy']:.4f} on {report['num_images']} images ({report['split']})"
    )
    return "\n".join(lines)
