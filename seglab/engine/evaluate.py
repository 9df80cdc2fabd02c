"""Evaluation: a checkpoint on a folder data set -> pixel accuracy, per-class IoU and Dice, mIoU (table + JSON);
with ``uncertainty`` also calibration (ECE, NLL, Brier, reliability diagram) and error detection (AUROC, AURC).
``calibrate`` fits a checkpoint's temperature on a split and records it in the sidecar.

Scores are always taken at the label's own resolution, and every image is predicted on its own, whatever else
is in its batch. The loaders of evaluate, calibrate and training-time validation record each item's sizes
(``pad_collate(..., sizes=True)``), and for a model trained with ``data.resize`` they resize the images but not
the masks. Each batch is split by :func:`label_groups` into groups of one image size and one mask size, whose
images are cropped to their own (resized) extent, so no padding reaches the model, and whose logits are
upsampled bilinearly to the masks' size before the argmax (:func:`upsample_logits`), or, for the uncertainty
metrics, before the softmax. (A loader of plain (images, masks) batches is evaluated as its batches come.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from seglab.engine.device import resolve_device
from seglab.engine.distributed import Dist, ShardSampler, process_group
from seglab.files import OutputKind, guard_file, is_png, json_with, run_lock, run_root
from seglab.metrics import ConfusionMatrix

if TYPE_CHECKING:
    from seglab.checkpoint import CheckpointMeta
    from seglab.data.folder import FolderDataset
    from seglab.instances.infer import InstanceParams
    from seglab.uncertainty.calibration import UncertaintyMeter
    from seglab.uncertainty.config import UncertaintyConfig
    from seglab.uncertainty.predictors import Predictor


def label_groups(
    batch: Sequence[torch.Tensor],
) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[int, int] | None]]:
    """(images, masks, size) per group of a loader's batch. A batch (images, masks) is one group with size None:
    images and masks are padded alike. A batch (images, masks, sizes) from ``pad_collate(..., sizes=True)``
    gives one group per distinct (image size, mask size), in order of first appearance: its images cropped to
    their own size (h, w), its masks to theirs (H, W), so nothing of either is padding; size = (H, W), to which
    the group's logits are upsampled (:func:`upsample_logits`)."""
    images, masks = batch[0], batch[1]
    if len(batch) < 3:
        yield images, masks, None
        return
    keys = [tuple(row) for row in batch[2].tolist()]
    if len(set(keys)) == 1 and keys[0] == (*images.shape[-2:], *masks.shape[-2:]):  # nothing padded: as it is
        yield images, masks, keys[0][2:]
        return
    for key in dict.fromkeys(keys):
        h, w, mh, mw = key
        index = torch.tensor([i for i, k in enumerate(keys) if k == key])
        yield images[index, :, :h, :w], masks[index, :mh, :mw], (mh, mw)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Logits (N, C, h, w) upsampled bilinearly (align_corners False) to ``size`` (H, W); as they are for None or
    their own size."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def label_logits(
    model: Any, loader: Any, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits at the masks' size, masks) per group (:func:`label_groups`) of ``loader``'s batches; ``model`` as it
    is (a loaded checkpoint is in eval mode)."""
    for batch in loader:
        for images, masks, size in label_groups(batch):
            yield upsample_logits(model(images.to(device)), size), masks


@torch.inference_mode()
def run_evaluation(
    model: torch.nn.Module,
    loader: Any,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    progress: bool = False,
    *,
    tile: int | None = None,
    overlap: int = 32,
    meters: Sequence[Any] = (),
) -> ConfusionMatrix:
    """Accumulate the confusion matrix of ``model`` over ``loader`` of (images, masks) batches (and update any
    further ``meters``, e.g. a RandMeter). With ``tile``, overlap-tile inference (see ``seglab.inference.tiling``).

    Batches (images, masks, sizes) of resized images (``data.resize``) are scored at the masks' resolution: each
    image's logits, cropped to its own size, are upsampled bilinearly to its mask's size before the argmax."""
    from seglab.inference import TiledModel

    net = model if tile is None else TiledModel(model, tile, overlap)
    was_training = model.training
    model.eval()
    meter = ConfusionMatrix(num_classes, ignore_index)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(
            loader, desc="evaluate", leave=False, dynamic_ncols=True, disable=None
        )  # no bar in a log file
    for batch in loader:
        for images, masks, size in label_groups(batch):
            images, masks = images.to(device), masks.to(device)
            logits = upsample_logits(net(images), size)
            meter.update(logits, masks)
            for m in meters:
                m.update(logits, masks)
    model.train(was_training)
    return meter


@torch.inference_mode()
def run_uncertainty_evaluation(
    predictor: Predictor,
    loader: Any,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    n_bins: int = 15,
    progress: bool = False,
    meters: Sequence[Any] = (),
) -> tuple[ConfusionMatrix, UncertaintyMeter]:
    """The confusion matrix of ``predictor``'s masks and the calibration / error-detection meter over ``loader``
    (and any further ``meters``, updated with the masks). Batches with sizes (resized images) are scored at the
    masks' resolution: the predictor upsamples every pass's logits to the mask's size before the softmax."""
    from seglab.uncertainty.calibration import UncertaintyMeter

    cm = ConfusionMatrix(num_classes, ignore_index)
    meter = UncertaintyMeter(num_classes, ignore_index, n_bins=n_bins)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(
            loader, desc="evaluate", leave=False, dynamic_ncols=True, disable=None
        )  # no bar in a log file
    for batch in loader:
        for images, masks, size in label_groups(batch):
            result = predictor(images.to(device), size)
            labels = result.mask.cpu()
            cm.update(labels, masks)
            meter.update(result, masks.to(device))
            for m in meters:
                m.update(labels, masks)
    return cm, meter


def resolve_format(data: str | Path, data_format: str = "auto") -> str:
    """``data_format`` checked, and ``auto`` resolved to the layout detected in ``data`` (from its structure alone,
    before any model is loaded; DataError naming the folder when none fits)."""
    from seglab.data.formats import check_format, detect

    data_format = check_format(data_format)
    return detect(Path(data)) if data_format == "auto" else data_format


def split_dataset(
    meta: CheckpointMeta, data: str | Path, split: str, transform: Any = None, data_format: str = "auto"
) -> FolderDataset:
    """``split`` of the data set ``data`` (read in place in its layout ``data_format``; auto: detected) as
    ``meta``'s model was trained on it (classes, channels, split ratios, target), not cached; DataError if the
    split is empty. Without ``transform`` items are the decoded arrays (``ds.load(i)``)."""
    from seglab.data.folder import FolderDataset
    from seglab.data.scan import scan_folder
    from seglab.errors import DataError

    ds = FolderDataset(
        data,
        split,
        transform,
        scan=scan_folder(data, meta.ignore_index, format=data_format),
        ignore_index=meta.ignore_index,
        num_classes=meta.num_classes,
        in_channels=meta.in_channels,
        cache=False,
        target=meta.target,
        boundary_width=meta.boundary_width,
        **meta.split,
    )
    if len(ds) == 0:
        raise DataError(f"the {split} split of {data} is empty; choose --split val, train or all")
    return ds


def _split_loader(
    meta: CheckpointMeta,
    data: str | Path,
    split: str,
    batch_size: int,
    dist: Dist | None = None,
    data_format: str = "auto",
) -> tuple[Any, int]:
    """A DataLoader over ``split`` of the folder data set ``data``, transformed as ``meta`` says (this rank's shard
    when ``dist`` is distributed); and the split's size. Every batch carries the items' sizes (see
    :func:`label_groups`); with ``meta.resize`` the images are resized, the masks are not."""
    from torch.utils.data import DataLoader

    from seglab.config import DataConfig
    from seglab.data.transforms import build_transform, pad_collate

    transform = build_transform(
        DataConfig(resize=meta.resize),
        meta.in_channels,
        train=False,
        normalization=meta.normalization,  # the checkpoint's (old ones: their mean, std and stretch)
    )
    ds = split_dataset(meta, data, split, transform, data_format)
    sampler = ShardSampler(len(ds), dist.rank, dist.world_size) if dist is not None and dist.enabled else None
    collate = pad_collate(meta.ignore_index, sizes=True)  # each image is scored on its own, unpadded
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate), len(ds)


def _rand_meter(meta: CheckpointMeta, rand_class: str | int | None) -> Any:
    """A RandMeter over the connected components of ``rand_class`` (name or index), or None."""
    if rand_class is None:
        return None
    from seglab.data.io import class_index
    from seglab.metrics import RandMeter

    return RandMeter(class_index(meta.class_names, rand_class))


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    *,
    batch_size: int = 8,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    uncertainty: UncertaintyConfig | str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    rand_class: str | int | None = None,
    timeout: float = 600.0,
    instances: str | None = None,
    instance_class: str | int | None = None,
    instance_params: InstanceParams | None = None,
    per_image: bool = False,
    overwrite: bool = False,
    data_format: str = "auto",
    backend: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of the data set ``data``, read in place in its layout ``data_format``
    (auto: detected from its structure; the report records which, as ``format``); writes the report as JSON to
    ``out`` (default: ``eval-<split>.json`` beside the checkpoint) and returns it. ``out`` (a .json path) may hold an
    earlier evaluation report; anything else there is refused before any work (``overwrite``: replace a file of
    another kind, never a checkpoint, state or data-set file; see ``seglab.files.guard_file``).

    Distributed (torchrun, or ``seglab evaluate --nproc N``): each rank evaluates a shard of the split, the
    counts are summed over the ranks (``timeout``: seconds a collective may wait), and rank 0 writes the report:
    the numbers of one process, exactly for the confusion matrix and the Rand error.

    ``tile``/``overlap``: overlap-tile inference. ``rand_class`` (a class name or index): also the mean
    adapted Rand error over images of the connected components of that class (the ISBI 2012 cell regions).

    With ``uncertainty`` (an UncertaintyConfig or a method name: deterministic, mc-dropout, tta, ensemble) the
    masks come from that predictor, the report gains an ``uncertainty`` section (ECE with equal-width and
    equal-mass bins, NLL, Brier, error-detection AUROC/AURC of entropy, mutual information and confidence,
    reliability data) and the reliability diagram is written beside the report as ``<report>-reliability.png``.

    With ``instances`` (components, watershed or learned; see ``seglab.instances``) every image's probabilities
    (as ``seglab predict`` computes them, with the same post-processing) become an instance label map, scored
    against the folder's ``instances/`` maps, or without them the connected components of the object class (the
    ISBI 2012 cells): the report gains an ``instances`` section (DSB score, precision/recall/F1 at IoU 0.5, AJI,
    PQ, adapted Rand error; see ``seglab.instances.metrics``). ``instance_class``: the object class of a model
    of more than two classes; ``instance_params``: the post-processing settings.

    With ``per_image`` every image is predicted on its own, as ``seglab predict`` does (the path of
    ``instances``), scored by its own ConfusionMatrix (merged into the split's), and the report gains
    ``images``: per image of the split (every rank's, in split order) its ``index``, ``stem``, ``miou`` (over the
    classes in its truth or its prediction) and ``pixel_accuracy`` (NaN for an image with only ignored pixels).

    ``backend`` (torch, onnxruntime or openvino; default: the file's own, see ``seglab.models.runtime``): the
    runtime the model runs in, on every path above (the report records it as ``backend``).
    """
    from seglab.checkpoint import checkpoint_paths
    from seglab.files import ensure_dir
    from seglab.models.runtime import runtime_device

    out_path = Path(out) if out else checkpoint_paths(checkpoint)[0].parent / f"eval-{split}.json"
    check_report_path(out_path, uncertainty is not None, overwrite)  # before any work
    if out is not None:  # the default lies beside the checkpoint
        ensure_dir(out_path.parent, "report folder")
    inst = None if instances is None else (instances, instance_class, instance_params)
    if not checkpoint_paths(checkpoint)[0].is_file():  # a missing checkpoint is named first, before the data
        from seglab.checkpoint import read_meta

        read_meta(checkpoint)
    data_format = resolve_format(data, data_format)
    device = runtime_device(checkpoint_paths(checkpoint)[0], backend, device)
    with process_group(resolve_device(device), timeout) as (dist, dev):
        return _evaluate(
            checkpoint,
            data,
            split,
            batch_size,
            out_path,
            dev,
            progress and dist.is_main,
            uncertainty,
            tile,
            overlap,
            rand_class,
            dist,
            inst,
            per_image,
            data_format,
            backend,
        )


def _evaluate(  # noqa: C901 - one pass over the split feeds each optional meter (uncertainty, instances)
    checkpoint: str | Path,
    data: str | Path,
    split: str,
    batch_size: int,
    out_path: Path,
    dev: torch.device,
    progress: bool,
    uncertainty: UncertaintyConfig | str | None,
    tile: int | None,
    overlap: int,
    rand_class: str | int | None,
    dist: Dist,
    inst: tuple[str, str | int | None, InstanceParams | None] | None = None,
    per_image: bool = False,
    data_format: str = "auto",
    backend: str | None = None,
) -> dict[str, Any]:
    from seglab.checkpoint import checkpoint_paths, load_checkpoint
    from seglab.files import write_json
    from seglab.models.runtime import check_backend

    section: dict[str, Any] | None = None
    meter: Any = None
    inst_section: dict[str, Any] | None = None
    rows: list[dict[str, Any]] | None = None
    if isinstance(uncertainty, str):
        from seglab.uncertainty.config import UncertaintyConfig

        uncertainty = UncertaintyConfig(method=uncertainty)
    if inst is not None or per_image:
        cm, rand_meter, meter, inst_section, rows, meta, num_images = _image_evaluation(
            checkpoint,
            data,
            split,
            dev,
            progress,
            uncertainty,
            tile,
            overlap,
            rand_class,
            dist,
            inst,
            per_image,
            data_format,
            backend,
        )
    elif uncertainty is None:
        model, meta = load_checkpoint(checkpoint, device=str(dev), backend=backend)
        loader, num_images = _split_loader(meta, data, split, batch_size, dist, data_format)
        rand_meter = _rand_meter(meta, rand_class)
        cm = run_evaluation(
            model,
            loader,
            meta.num_classes,
            meta.ignore_index,
            dev,
            progress,
            tile=tile,
            overlap=overlap,
            meters=[rand_meter] if rand_meter else [],
        )
    else:
        from seglab.inference import build_predictor

        predictor, meta = build_predictor(checkpoint, uncertainty, str(dev), tile, overlap, backend)
        loader, num_images = _split_loader(meta, data, split, batch_size, dist, data_format)
        rand_meter = _rand_meter(meta, rand_class)
        cm, meter = run_uncertainty_evaluation(
            predictor,
            loader,
            meta.num_classes,
            meta.ignore_index,
            dev,
            uncertainty.bins,
            progress,
            [rand_meter] if rand_meter else [],
        )
    if meter is not None:
        from seglab.uncertainty.calibration import reliability_png

        assert uncertainty is not None
        if dist.enabled:
            meter.all_reduce()
        diagram = reliability_path(out_path)
        section = {
            "method": uncertainty.method,
            "description": uncertainty.describe(),
            "temperature": meta.temperature,
            **meter.compute(),
            "reliability_png": str(diagram),
        }
        if dist.is_main:
            reliability_png(diagram, section["reliability"], f"{uncertainty.describe()}, {split} split")
    if dist.enabled:
        for m in (cm, rand_meter):
            if m is not None:
                m.all_reduce()
    report = {
        "checkpoint": str(checkpoint_paths(checkpoint)[0]),
        "backend": check_backend(checkpoint_paths(checkpoint)[0], backend),
        "data": str(data),
        "format": data_format,
        "split": split,
        "num_images": num_images,
        "classes": meta.class_names,
        **cm.compute(),
        "confusion_matrix": cm.matrix.tolist(),
    }
    if rand_meter is not None:
        report.update(rand_meter.compute(), rand_class=meta.class_names[rand_meter.class_index])
    if inst_section is not None:
        if dist.enabled:
            inst_section["meter"].all_reduce()
        report["instances"] = {
            **{k: v for k, v in inst_section.items() if k != "meter"},
            **inst_section["meter"].compute(),
        }
    if rows is not None:
        report["images"] = _gather_rows(rows) if dist.enabled else rows
    if tile is not None:
        report.update(tile=tile, overlap=overlap)
    if section is not None:
        report["uncertainty"] = section
    if dist.is_main:
        write_json(out_path, report)
    dist.barrier()  # the report exists when any rank returns
    report["report_path"] = str(out_path)
    return report


EVAL_REPORT = OutputKind(
    "evaluation report",
    (".json",),
    json_with("checkpoint", "split", "miou", "confusion_matrix", without=("examples", "model")),
)
RELIABILITY_PNG = OutputKind("reliability diagram", (".png",), is_png)


def check_report_path(out_path: Path, uncertainty: bool = False, overwrite: bool = False) -> None:
    """The guard of evaluate's outputs: the JSON report at ``out_path`` and, with ``uncertainty``, the reliability
    diagram beside it (``seglab.files.guard_file``)."""
    guard_file(out_path, EVAL_REPORT, overwrite, "evaluate --out")
    if uncertainty:
        guard_file(reliability_path(out_path), RELIABILITY_PNG, overwrite, "evaluate --out")


def reliability_path(out_path: Path) -> Path:
    """Where the reliability diagram of the report ``out_path`` goes."""
    return out_path.with_name(f"{out_path.stem}-reliability.png")


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's per-image rows (``torch.distributed`` all-gather), in split order."""
    import torch.distributed as torch_dist

    gathered: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, rows)
    return sorted((row for part in gathered for row in part), key=lambda row: row["index"])


def _image_evaluation(
    checkpoint: str | Path,
    data: str | Path,
    split: str,
    dev: torch.device,
    progress: bool,
    uncertainty: UncertaintyConfig | None,
    tile: int | None,
    overlap: int,
    rand_class: str | int | None,
    dist: Dist,
    inst: tuple[str, str | int | None, InstanceParams | None] | None,
    per_image: bool,
    data_format: str = "auto",
    backend: str | None = None,
) -> tuple[Any, ...]:
    """Image by image: probabilities as ``predict`` computes them (whole image, or tiled, or from the uncertainty
    predictor) -> the image's confusion matrix (their argmax; merged into the split's, and with ``per_image`` a
    row of its scores), Rand meter, uncertainty meter, and with ``inst`` the instance labels of its method scored
    by an InstanceMeter against the true instances."""
    from dataclasses import asdict

    from seglab.checkpoint import load_checkpoint
    from seglab.inference import image_probs

    net: Any  # the checkpoint's model, or the uncertainty predictor (image_probs takes either)
    unc: UncertaintyMeter | None = None
    if uncertainty is None:
        net, meta = load_checkpoint(checkpoint, device=str(dev), backend=backend)
    else:
        from seglab.inference import build_predictor
        from seglab.uncertainty.calibration import UncertaintyMeter

        net, meta = build_predictor(checkpoint, uncertainty, str(dev), tile, overlap, backend)
        unc = UncertaintyMeter(meta.num_classes, meta.ignore_index, n_bins=uncertainty.bins)
    if inst is not None:
        from seglab.inference import instance_object_class
        from seglab.instances.infer import InstanceParams, instances_from_probs
        from seglab.instances.metrics import InstanceMeter
        from seglab.metrics.rand import label_components

        method, instance_class, params = inst
        params = params or InstanceParams()
        obj = instance_object_class(meta, method, instance_class)
    ds = split_dataset(meta, data, split, data_format=data_format)
    if inst is not None:
        objects = meta.class_names[obj or 0]
        truth_from = "instances/" if ds.scan.instances is not None else f"connected components of {objects}"
        inst_meter = InstanceMeter()
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    rand_meter = _rand_meter(meta, rand_class)
    rows: list[dict[str, Any]] | None = [] if per_image else None
    indices: Any = list(ShardSampler(len(ds), dist.rank, dist.world_size)) if dist.enabled else range(len(ds))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(
            indices, desc="evaluate", leave=False, dynamic_ncols=True, disable=None
        )  # no bar in a log file
    for i in indices:
        image, mask = ds.load(i)
        target = torch.from_numpy(mask)[None]
        probs, result = image_probs(net, meta, image, dev, tile, overlap)
        if unc is not None:
            unc.update(result, target.to(dev))
        one = ConfusionMatrix(meta.num_classes, meta.ignore_index)
        one.update(probs[None], target.to(probs.device))
        cm.merge(one)
        if rows is not None:
            scores = one.compute()
            rows.append(
                {
                    "index": i,
                    "stem": ds.stems[i],
                    "miou": scores["miou"],
                    "pixel_accuracy": scores["pixel_accuracy"],
                }
            )
        if rand_meter is not None:
            rand_meter.update(probs[None], target.to(probs.device))
        if inst is not None:
            truth = ds.load_instances(i) if ds.scan.instances is not None else label_components(mask == obj)
            labels = instances_from_probs(probs, method, target=meta.target, object_class=obj, params=params)
            inst_meter.update(labels, truth)
    section = None
    if inst is not None:
        section = {
            "method": method,
            "params": asdict(params),
            "truth": truth_from,
            "meter": inst_meter,
            "object_class": "1 - background" if obj is None else meta.class_names[obj],
        }
    return cm, rand_meter, unc, section, rows, meta, len(ds)


def calibrate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "val",
    *,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    max_pixels: int | None = 4_000_000,
    data_format: str = "auto",
) -> dict[str, Any]:
    """Fit ``checkpoint``'s temperature on ``split`` of ``data`` (LBFGS on the NLL of all valid pixels, up to a
    seeded random subset of ``max_pixels``) and record it in the checkpoint's sidecar (rewritten atomically;
    the weights are untouched). ``predict`` and ``evaluate`` then divide the logits by it. Returns the
    temperature and the NLL/ECE on the fitting pixels before and after. ``data`` is read in place in its layout
    ``data_format`` (auto: detected)."""
    from seglab.checkpoint import checkpoint_paths

    weights, _ = checkpoint_paths(checkpoint)
    run = run_root(weights.parent) if weights.parent.is_dir() else None
    with run_lock(run) if run == weights.parent.resolve() else contextlib.nullcontext():  # one writer per run
        return _calibrate(checkpoint, data, split, batch_size, device, progress, max_pixels, data_format)


def _calibrate(
    checkpoint: str | Path,
    data: str | Path,
    split: str,
    batch_size: int,
    device: str,
    progress: bool,
    max_pixels: int | None,
    data_format: str = "auto",
) -> dict[str, Any]:
    import yaml

    from seglab.checkpoint import FORMAT, checkpoint_paths, load_checkpoint, sha256_file, write_sidecar
    from seglab.files import atomic_write, read_yaml_file
    from seglab.uncertainty.calibration import collect_logits, fit_temperature, temperature_report

    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=str(dev))
    loader, num_images = _split_loader(
        meta, data, split, batch_size, data_format=resolve_format(data, data_format)
    )
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(
            loader, desc="calibrate", leave=False, dynamic_ncols=True, disable=None
        )  # no bar in a log file
    # the logits at the labels' resolution (upsampled for a checkpoint with resize), then only the pixels
    logits, labels = collect_logits(
        torch.nn.Identity(), label_logits(model, loader, dev), dev, meta.ignore_index, max_pixels
    )
    temperature = fit_temperature(logits, labels, ignore_index=None)
    weights, sidecar = checkpoint_paths(checkpoint)
    doc = read_yaml_file(sidecar)
    if (
        isinstance(doc, dict)
        and doc.get("format") == FORMAT
        and doc.get("weights_sha256") == sha256_file(weights)
    ):
        doc["temperature"] = temperature  # the sidecar as it is, with the new temperature
        atomic_write(sidecar, lambda tmp: tmp.write_text(yaml.safe_dump(doc, sort_keys=False)))
    else:  # missing or stale: the checkpoint's own description (its weights' header), with the temperature
        meta.temperature = temperature
        write_sidecar(weights, meta)
    return {
        "checkpoint": str(checkpoint_paths(checkpoint)[0]),
        "sidecar": str(sidecar),
        "data": str(data),
        "split": split,
        "num_images": num_images,
        "pixels": len(labels),
        "temperature": temperature,
        **temperature_report(logits, labels, temperature),
    }


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
        f"pixel accuracy {report['pixel_accuracy']:.4f} (pixel error {1 - report['pixel_accuracy']:.4f}) on "
        f"{report['num_images']} images ({report['split']})"
        + (f", overlap-tile {report['tile']}+{report['overlap']}" if "tile" in report else "")
    )
    if "rand_error" in report:
        lines.append(
            f"adapted Rand error {report['rand_error']:.4f} (precision {report['rand_precision']:.4f}, "
            f"recall {report['rand_recall']:.4f}) on the connected components of {report['rand_class']}"
        )
    inst = report.get("instances")
    if inst:
        lines.append(
            f"instances ({inst['method']}, truth: {inst['truth']}): DSB score {inst['dsb_score']:.4f}  "
            f"F1@0.5 {inst['f1']:.4f} (P {inst['precision']:.4f}, R {inst['recall']:.4f})  AJI {inst['aji']:.4f}  "
            f"PQ {inst['pq']:.4f}  adapted Rand error {inst['rand_error']:.4f}; {inst['num_true']} true, "
            f"{inst['num_pred']} predicted objects"
        )
    u = report.get("uncertainty")
    if u:
        lines.append(
            f"calibration, {u['description']} (T={u['temperature']:.3g}): ECE {u['ece']:.4f} "
            f"(equal-mass {u['ece_adaptive']:.4f})  NLL {u['nll']:.4f}  Brier {u['brier']:.4f}"
        )
        lines.append(
            f"error detection: AUROC {u['auroc_entropy']:.4f} (entropy), {u['auroc_mutual_information']:.4f} "
            f"(mutual information); AURC {u['aurc_entropy']:.4f} (entropy)"
        )
        lines.append(f"reliability diagram: {u['reliability_png']}")
    return "\n".join(lines)
