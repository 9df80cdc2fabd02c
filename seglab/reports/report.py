"""The report of a training run: one self-contained ``report.html`` (every figure embedded as a base64 PNG, inline
CSS, no script, no link: it opens offline), each figure beside it as PNG, and ``report.json`` (its numbers).

Sections: training curves (``metrics.jsonl``), per-class IoU and Dice beside each class's pixel share, the
row-normalised confusion matrix, calibration (reliability diagram) and error detection (risk-coverage, AURC),
the best, median and worst images by per-image mIoU, and a model card.

One code path: every number comes from ``seglab.engine.evaluate.evaluate`` (the function ``seglab evaluate``
runs) with ``per_image=True`` and an uncertainty predictor, so the report adds no second metric. Only the three
example images are predicted again (``image_probs`` with the same predictor) to draw them.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglab.errors import CheckpointError, ConfigError
from seglab.files import (
    OutputKind,
    check_out_dir,
    file_head,
    guard_dir,
    guard_file,
    is_png,
    json_with,
    run_lock,
    run_root,
)

if TYPE_CHECKING:
    from seglab.checkpoint import CheckpointMeta
    from seglab.config import Config
    from seglab.uncertainty.config import UncertaintyConfig

FIGURES = ("curves", "classes", "confusion", "reliability", "risk_coverage", "examples")
HISTORY_KEYS = ("epoch", "train_loss", "lr", "val_miou", "val_pixel_accuracy", "seconds")
UNCERTAINTY_KEYS = (
    "method",
    "description",
    "temperature",
    "ece",
    "ece_adaptive",
    "nll",
    "brier",
    "accuracy",
    "auroc_entropy",
    "aurc_entropy",
    "risk_coverage_entropy",
)


def write_report(
    checkpoint: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    *,
    out: str | Path,
    device: str = "cpu",
    uncertainty: UncertaintyConfig | str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    display_bands: Sequence[int] | None = None,
    data_format: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a run folder or a .safetensors file) on ``split`` of ``data`` (default: the run's
    ``config.yaml`` data.root, in its data.format; ``data_format`` None: that, or auto for another ``data``)
    with ``uncertainty`` (default: deterministic, one softmax pass) and write the report
    into folder ``out``: evaluate's own ``eval-<split>.json``, then :func:`render_report`. Returns the paths and
    the numbers. A folder this call created is removed again if it fails. ``out`` is checked before any work
    (:func:`check_report_dir`); inside a run folder the run's lock is held throughout (one writer per run).
    ``display_bands`` (0-based, one or three): the bands the example pictures show of a multi-band image."""
    from seglab.checkpoint import read_meta
    from seglab.engine.evaluate import evaluate
    from seglab.inference.palette import check_display_bands

    weights, run_dir = _run_files(checkpoint)
    check_display_bands(read_meta(weights), display_bands)  # a clear CheckpointError before any work
    cfg = _run_config(run_dir)
    if data is None:
        if cfg is None or not cfg.data.root:
            raise ConfigError(
                f"{run_dir} has no config.yaml naming data.root; pass the data set with --data DIR"
            )
        data = cfg.data.root
        data_format = data_format or cfg.data.format
    out = check_report_dir(out, overwrite, "report --out")
    unc = _uncertainty(uncertainty)
    created = not out.exists()
    with report_lock(out):
        try:
            evaluation = evaluate(
                weights,
                data,
                split,
                out=out / f"eval-{split}.json",
                device=device,
                progress=progress,
                uncertainty=unc,
                per_image=True,
                overwrite=overwrite,
                data_format=data_format or "auto",
            )
            return render_report(
                evaluation,
                out,
                uncertainty=unc,
                device=device,
                overwrite=overwrite,
                display_bands=display_bands,
            )
        except BaseException:
            if created:  # no half-made report folder
                shutil.rmtree(out, ignore_errors=True)
            raise


REPORT_HTML = OutputKind("HTML report", (".html",), lambda p: b"<title>seglab report" in file_head(p))
REPORT_JSON = OutputKind(
    "report's numbers", (".json",), json_with("checkpoint", "uncertainty", "images", "model")
)
FIGURE_PNG = OutputKind("report figure", (".png",), is_png)


def check_report_dir(out: str | Path, overwrite: bool = False, option: str = "--report") -> Path:
    """Check, before any work, that folder ``out`` may receive a report (``seglab.files.guard_dir``: never a data
    set; a run folder or a folder inside one is fine) and that every file it writes there is absent or an earlier
    report's (``overwrite``: also replace files of another kind, never a checkpoint, state or data-set file)."""
    check_out_dir(out, "report folder")
    out = guard_dir(out, "report folder", option, run_folder=True)
    guard_file(out / "report.html", REPORT_HTML, overwrite, option)
    guard_file(out / "report.json", REPORT_JSON, overwrite, option)
    for name in FIGURES:
        guard_file(out / f"{name}.png", FIGURE_PNG, overwrite, option)
    return out


def report_lock(out: str | Path) -> Any:
    """The lock of the run folder that report folder ``out`` is or lies in (one writer per run), else a no-op."""
    run = run_root(out)
    return run_lock(run) if run is not None else contextlib.nullcontext()


def render_report(
    evaluation: dict[str, Any],
    out: str | Path,
    *,
    uncertainty: UncertaintyConfig | str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    display_bands: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write the report of an evaluate report ``evaluation`` (computed with ``per_image=True`` and
    ``uncertainty``) into folder ``out``. ``uncertainty``: the predictor that evaluation used (default: its
    method), to draw the best, median and worst images again. Everything is rendered in memory first and each file
    written atomically, report.html last: a failure leaves no partial file. Returns the paths and the numbers.
    ``out`` is checked first (:func:`check_report_dir`); inside a run folder the run's lock is held."""
    if "images" not in evaluation or "uncertainty" not in evaluation:
        raise ConfigError(
            "a report needs an evaluation with per-image scores and uncertainty: "
            "evaluate(..., per_image=True, uncertainty='deterministic')"
        )
    out = check_report_dir(out, overwrite)
    with report_lock(out):
        return _render_report(evaluation, out, uncertainty, device, display_bands)


def _render_report(
    evaluation: dict[str, Any],
    out: Path,
    uncertainty: UncertaintyConfig | str | None,
    device: str,
    display_bands: Sequence[int] | None = None,
) -> dict[str, Any]:
    from seglab.checkpoint import checkpoint_paths, read_meta
    from seglab.files import atomic_write, ensure_dir, write_json
    from seglab.inference import check_display_bands, palette_of
    from seglab.reports import figures as F
    from seglab.reports.html import render_html
    from seglab.uncertainty.calibration import reliability_figure

    weights, _ = checkpoint_paths(evaluation["checkpoint"])
    meta = read_meta(weights)
    check_display_bands(meta, display_bands)
    run_dir = weights.parent
    cfg = _run_config(run_dir)
    history = _history(run_dir)
    u = evaluation["uncertainty"]
    unc = _uncertainty(uncertainty or u["method"])
    examples, first_size = _examples(evaluation, meta, unc, device, display_bands)

    names = list(evaluation["classes"])
    cm = np.asarray(evaluation["confusion_matrix"], dtype=np.float64)
    rows = cm.sum(1)
    share = rows / max(rows.sum(), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(rows[:, None] > 0, cm / rows[:, None], np.nan)
    rc = u["risk_coverage_entropy"]
    title = f"{u['description']}, {evaluation['split']} split"
    figs = {
        "classes": F.classes_figure(names, evaluation["iou"], evaluation["dice"], share.tolist()),
        "confusion": F.confusion_figure(names, normalised),
        "reliability": reliability_figure(u["reliability"], title),
        "risk_coverage": F.risk_coverage_figure(rc["coverage"], rc["risk"], u["aurc_entropy"], "entropy"),
        "examples": F.examples_figure([(e["label"], e["panels"]) for e in examples]),
    }
    pngs = {name: F.png_bytes(fig) for name, fig in figs.items()}
    if history:
        pngs = {"curves": F.png_bytes(F.curves_figure(history)), **pngs}

    numbers: dict[str, Any] = {
        "checkpoint": str(weights),
        "data": evaluation["data"],
        "split": evaluation["split"],
        "num_images": evaluation["num_images"],
        "classes": names,
        "palette": palette_of(meta),
        **{k: evaluation[k] for k in ("miou", "mean_dice", "pixel_accuracy", "iou", "dice")},
        "pixel_share": share.tolist(),
        "confusion_matrix": evaluation["confusion_matrix"],
        "confusion_normalised": normalised.tolist(),
        "uncertainty": {k: u[k] for k in UNCERTAINTY_KEYS},
        "examples": [{k: v for k, v in e.items() if k not in ("label", "panels")} for e in examples],
        "images": evaluation["images"],
        "training": _training(history, meta),
        "model": _model_card(meta, weights, cfg, first_size),
        "evaluation": evaluation.get("report_path"),
    }
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else None
    html = render_html(numbers, pngs, config_text)

    ensure_dir(out, "report folder")
    paths = {name: out / f"{name}.png" for name in FIGURES if name in pngs}
    for name, path in paths.items():
        atomic_write(path, lambda tmp, data=pngs[name]: tmp.write_bytes(data))
    numbers["figures"] = {name: str(p) for name, p in paths.items()}
    write_json(out / "report.json", numbers)
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return {**numbers, "html": str(out / "report.html"), "json": str(out / "report.json")}


def _run_files(checkpoint: str | Path) -> tuple[Path, Path]:
    """(weights, run folder) of a run folder or a checkpoint file; CheckpointError naming the fix."""
    from seglab.checkpoint import checkpoint_paths

    path = Path(checkpoint)
    if path.is_dir() and not (path / "best.safetensors").is_file():
        raise CheckpointError(
            f"{path} holds no checkpoint (best.safetensors); pass a run folder of seglab train "
            "or a .safetensors file"
        )
    weights, _ = checkpoint_paths(path)
    if not path.exists() and not weights.is_file():
        raise CheckpointError(f"run folder {path} does not exist; pass a run folder or a .safetensors file")
    return weights, weights.parent


def _run_config(run_dir: Path) -> Config | None:
    """The run's resolved ``config.yaml``, or None (a checkpoint without its run folder, an unreadable config)."""
    from seglab.config import Config
    from seglab.errors import SeglabError

    try:
        return Config.load(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    except SeglabError:
        return None


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """The epochs of ``metrics.jsonl`` (a line cut short by a kill is dropped); [] without a training log."""
    from seglab.engine.state import read_history

    return read_history(run_dir / "metrics.jsonl", 1 << 62)


def _uncertainty(uncertainty: UncertaintyConfig | str | None) -> UncertaintyConfig:
    from seglab.uncertainty.config import UncertaintyConfig

    if isinstance(uncertainty, UncertaintyConfig):
        return uncertainty
    method = uncertainty or "deterministic"
    if method == "ensemble":
        raise ConfigError(
            "an ensemble report needs the members: pass uncertainty=UncertaintyConfig(method="
            "'ensemble', ensemble=[...]) or --ensemble CKPT ..."
        )
    return UncertaintyConfig(method=method)


def pick_examples(images: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, row) of the best, median and worst image by mIoU (images with no defined mIoU left out; ties go
    to the earlier image)."""
    scored = sorted(
        (r for r in images if r["miou"] is not None and math.isfinite(r["miou"])),
        key=lambda r: (r["miou"], -r["index"]),
    )
    if not scored:
        raise ConfigError("no image of the split has a defined mIoU (every pixel is ignore_index)")
    return [("best", scored[-1]), ("median", scored[(len(scored) - 1) // 2]), ("worst", scored[0])]


def _examples(
    evaluation: dict[str, Any],
    meta: CheckpointMeta,
    unc: UncertaintyConfig,
    device: str,
    display_bands: Sequence[int] | None = None,
) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """The best, median and worst images predicted again as evaluate predicted them (``image_probs``, the same
    predictor): rows of panels image / truth / prediction / errors / entropy; and the split's first image size.
    The image panel of a 16-bit, float or multi-band image shows it through the checkpoint's normalisation
    (``seglab.inference.shown``; ``display_bands``)."""
    from seglab.engine.device import resolve_device
    from seglab.engine.evaluate import split_dataset
    from seglab.inference import build_predictor, image_probs, palette_of, shown
    from seglab.models.runtime import runtime_device
    from seglab.reports import figures as F
    from seglab.uncertainty.build import heatmap

    backend = evaluation.get(
        "backend"
    )  # the runtime evaluate ran the model in (older reports: the file's own)
    dev = resolve_device(runtime_device(evaluation["checkpoint"], backend, device))
    tile, overlap = evaluation.get("tile"), evaluation.get("overlap", 32)
    predictor, _ = build_predictor(evaluation["checkpoint"], unc, str(dev), tile, overlap, backend)
    ds = split_dataset(
        meta, evaluation["data"], evaluation["split"], data_format=evaluation.get("format", "auto")
    )
    palette = palette_of(meta)
    out = []
    for label, row in pick_examples(evaluation["images"]):
        image, truth = ds.load(row["index"])
        probs, result = image_probs(predictor, meta, image, dev, tile, overlap)
        pred = probs.argmax(0).cpu().numpy()
        panels = [
            shown(image, meta, display_bands),
            F.colour_mask(truth, palette, meta.ignore_index),
            F.colour_mask(pred, palette, meta.ignore_index),
            F.error_map(pred, truth, meta.ignore_index),
            heatmap(result.entropy[0], meta.num_classes),
        ]
        text = f"{label}: {row['stem']}\nmIoU {row['miou']:.3f}"
        out.append({"rank": label, **row, "label": text, "panels": panels})
    first = ds.load(0)[0].shape[:2]
    return out, (int(first[0]), int(first[1]))


def _training(history: list[dict[str, Any]], meta: CheckpointMeta) -> dict[str, Any]:
    seconds = [r["seconds"] for r in history if isinstance(r.get("seconds"), int | float)]
    return {
        "log": bool(history),
        "epochs": len(history) if history else meta.epoch,
        "seconds": float(sum(seconds)) if seconds else None,
        "best_metrics": meta.metrics,
        "history": [{k: r[k] for k in HISTORY_KEYS if k in r} for r in history],
    }


def _model_card(
    meta: CheckpointMeta, weights: Path, cfg: Config | None, first_size: tuple[int, int]
) -> dict[str, Any]:
    """Architecture, parameters and MACs at the training input size, and the weights' SHA-256 (checked against
    the sidecar's)."""
    import yaml

    from seglab.bench.cost import count_cost
    from seglab.checkpoint import checkpoint_paths, load_checkpoint, sha256_file
    from seglab.data.transforms import resized_size

    size, source = resized_size(*first_size, meta.resize), "the first image of the split"
    if meta.resize:
        source += f", resized by data.resize {meta.resize}"
    if cfg is not None and cfg.data.crop_size:
        size, source = (cfg.data.crop_size, cfg.data.crop_size), "data.crop_size"
    model, _ = load_checkpoint(weights, device="cpu")
    params = macs = None
    if hasattr(model, "parameters"):  # an exported ONNX model has none to count
        cost = count_cost(model, size, meta.in_channels)
        params, macs = cost.params, cost.macs
    sha = sha256_file(weights)
    _, sidecar = checkpoint_paths(weights)
    recorded = (
        (yaml.safe_load(sidecar.read_text()) or {}).get("weights_sha256") if sidecar.is_file() else None
    )
    card = {
        "arch": meta.arch,
        "encoder": meta.model_params.get("encoder"),
        "model_params": meta.model_params,
        "in_channels": meta.in_channels,
        "num_classes": meta.num_classes,
        "params": params,
        "macs": macs,
        "input_size": list(size),
        "input_size_from": source,
        "data_root": cfg.data.root if cfg else None,
        "temperature": meta.temperature,
        "epoch": meta.epoch,
        "weights": str(weights),
        "sha256": sha,
        "sha256_matches_sidecar": None if recorded is None else recorded == sha,
    }
    if cfg is not None and cfg.plan is not None:
        card["plan"] = plan_card(cfg)
    return card


def plan_card(cfg: Config) -> dict[str, Any]:
    """The model card's Plan part of a planned run: the data kind, the time limit, and one row per choice of the
    plan (the config keys it set, as in ``plan.reasons``: "data.crop_size, train.batch_size"), with the values
    trained, the reason, and the plan's own values of the keys that flags or --set changed (a row of their own
    for changed keys the plan gave no reason for)."""
    plan = cfg.plan or {}
    used = cfg.to_dict()
    overridden = dict(plan.get("overridden") or {})
    reasons = plan.get("reasons") or {}
    groups = [
        ([k.strip() for k in str(keys).split(",") if k.strip()], reason) for keys, reason in reasons.items()
    ]
    groups = [(keys, reason) for keys, reason in groups if keys]
    named = {k for keys, _ in groups for k in keys}
    groups += [([k], None) for k in overridden if k not in named]
    rows = []
    for keys, reason in groups:
        values = {}
        for key in keys:
            node: Any = used
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            values[key] = node
        row = {"keys": keys, "values": values, "reason": reason}
        planned = {k: overridden[k] for k in keys if k in overridden}
        if planned:
            row["planned"] = planned
        rows.append(row)
    return {"kind": plan.get("kind"), "time_limit": plan.get("time_limit"), "rows": rows}
