"""Draw every new figure of docs/course.md and write the numbers its prose quotes (numbers.json).

    .venv/bin/python scripts/course_figures.py                    # the full run (about 6 min on 2 idle cores)
    .venv/bin/python scripts/course_figures.py --quick --out /tmp/course   # the smoke run CI makes (< 60 s)
    .venv/bin/python scripts/course_figures.py --update-doc       # docs/course.md's numbers and tables

The full run writes docs/figures/course/*.png and docs/figures/course/numbers.json. The numbers come in two
groups: ``exact`` (counts, receptive fields, cost tables, checkerboard scores, worked metric examples: the
same in the quick and the full run, and tests/test_course.py checks that the quick run still gives them) and
``measured`` (what the short trainings on SyntheticShapes reached: they depend on the budget and the machine).
``--update-doc`` copies numbers.json into docs/course.md: every ``<!-- n:KEY -->VALUE<!-- /n -->`` gets the
value with the same number of decimals, every ``<!-- table:NAME -->`` block the table rendered here; the test
fails when the page and numbers.json disagree. The figures the course reuses are drawn elsewhere:
docs/figures/upsampling.png by scripts/layers_figure.py, isbi2012.png by scripts/isbi_figure.py and
instances.png by benchmarks/instances.py.

Every training uses seglab's own trainer (``seglab.train``) on a SyntheticShapes folder written to a temporary
folder, with fixed epochs and seeds, fp32 (no amp probe), so a run depends only on the machine's kernels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from seglab.files import atomic_write, jsonable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "figures" / "course"
DOC = ROOT / "docs" / "course.md"
DSB_IMAGE = "88d5a03f8ecd459f076a06e0d5035149193bfdd727c30905de19054dcb9018ae"  # 38 nuclei, many touching
BACKBONES = ("unet", "vgg", "mobilenet", "resnet18", "resnet50", "mobilenetv3_large_100", "efficientnet_b0")
CLASS_NAMES = ("background", "circle", "rectangle", "triangle")
RARE = 3  # triangle: the rare class of SyntheticShapes
DPI = 80


@dataclass(frozen=True)
class Budget:
    """How much the trained part of the run does."""

    num_images: int  # SyntheticShapes images (80 % train, 10 % val, 10 % test)
    size: int  # their side in pixels
    epochs: int
    batch_size: int
    bench_size: int  # the side of the input the FPS are timed on
    bench_iters: int
    mc_samples: int  # MC dropout passes


FULL = Budget(
    num_images=1000, size=64, epochs=12, batch_size=16, bench_size=256, bench_iters=10, mc_samples=20
)
QUICK = Budget(num_images=40, size=32, epochs=1, batch_size=8, bench_size=64, bench_iters=2, mc_samples=3)

# The trained models: run name -> (arch, model params, loss). The three U-Nets differ only in the loss; the
# run names are the labels of the speed/accuracy plot.
UNET = "{depth: 3, base_channels: 16, dropout: 0.1}"
DICE_CE = "{ce: 1.0, dice: 1.0}"
RUNS = {
    "unet-ce": ("unet", UNET, "ce"),
    "unet-dice": ("unet", UNET, "dice"),
    "unet": ("unet", UNET, DICE_CE),
    "unet-small": ("unet", "{depth: 3, base_channels: 8, dropout: 0.1}", DICE_CE),
    "lraspp": ("lraspp", "{encoder: mobilenet, base_channels: 8, inter_channels: 32}", DICE_CE),
    "deeplabv3plus": ("deeplabv3plus", "{encoder: mobilenet, base_channels: 8, channels: 64}", DICE_CE),
}
LOSS_RUNS = {"CE": "unet-ce", "Dice": "unet-dice", "Dice+CE": "unet"}
PARETO_RUNS = ("unet", "unet-small", "lraspp", "deeplabv3plus")


def log(message: str) -> None:
    print(message, flush=True)


def picture(fig: Any, cell: Any, array: Any, title: str) -> None:
    """An image panel without axes in ``cell`` of ``fig``'s grid."""
    a = fig.add_subplot(cell)
    a.imshow(array, interpolation="nearest")
    a.set_title(title, fontsize=9)
    a.axis("off")


def save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    plt.close(fig)
    log(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def exact_float(v: float) -> float:
    return round(float(v), 10)


def measured_float(v: float) -> float:
    return float(f"{float(v):.6g}")


# ------------------------------------------------------------------------------------------------ 1. tasks


def tasks(out: Path, data: Path, numbers: dict[str, Any]) -> None:
    """One DSB 2018 image: boxes (detection), one class (semantic), one label per nucleus (instances)."""
    from matplotlib.patches import Rectangle
    from scipy import ndimage

    from seglab.data.io import read_image, read_mask_raw
    from seglab.instances import components, instance_overlay, watershed

    root = data / "dsb2018-nuclei"
    if not (root / "images" / f"{DSB_IMAGE}.png").is_file():
        log(f"skipped tasks.png: {root} is not there")
        return
    image = read_image(root / "images" / f"{DSB_IMAGE}.png", 3)
    truth = read_mask_raw(root / "instances" / f"{DSB_IMAGE}.png").astype(np.int32)
    semantic = truth > 0
    blobs, split = components(semantic), watershed(semantic)
    boxes = [b for b in ndimage.find_objects(truth) if b is not None]
    ex = numbers["exact"]
    ex["tasks.nuclei"], ex["tasks.blobs"], ex["tasks.watershed"] = (
        len(boxes),
        int(blobs.max()),
        int(split.max()),
    )

    semantic_rgb = image.copy()
    semantic_rgb[semantic] = (0.5 * image[semantic] + 0.5 * np.array([255, 60, 60])).astype(np.uint8)
    panels = [
        (image, f"detection: {len(boxes)} boxes"),
        (semantic_rgb, "semantic: one class, a label per pixel"),
        (instance_overlay(image, truth), f"instances: {len(boxes)} nuclei"),
        (instance_overlay(image, blobs), f"semantic -> connected blobs: {int(blobs.max())}"),
        (instance_overlay(image, split), f"semantic -> watershed: {int(split.max())}"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(17, 3.9), layout="constrained")
    for ax, (arr, title) in zip(axes, panels):
        ax.imshow(arr)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    for sl in boxes:
        y, x = sl
        axes[0].add_patch(
            Rectangle(
                (x.start - 0.5, y.start - 0.5),
                x.stop - x.start,
                y.stop - y.start,
                fill=False,
                edgecolor="yellow",
                linewidth=1,
            )
        )
    fig.suptitle(
        "DSB 2018 test image 88d5a03f: the same nuclei as boxes, as a class, as objects", fontsize=11
    )
    save(fig, out / "tasks.png")


# --------------------------------------------------------------------------------------------- 2. backbones


def backbones(numbers: dict[str, Any]) -> None:
    """Parameters, GMACs at 512x512 and feature pyramid of every native encoder and four timm ones."""
    from seglab.bench.cost import count_cost
    from seglab.models.encoders import EncoderSpec, build_encoder

    ex = numbers["exact"]
    for name in BACKBONES:
        encoder = build_encoder(EncoderSpec(name=name))
        cost = count_cost(encoder, 512, 3)
        ex[f"backbone.{name}.params"] = cost.params
        ex[f"backbone.{name}.gmacs"] = exact_float(cost.gmacs)
        ex[f"backbone.{name}.channels"] = [f.channels for f in encoder.feature_info]
        ex[f"backbone.{name}.reductions"] = [f.reduction for f in encoder.feature_info]


# ------------------------------------------------------------------------------------ 3. full resolution


def unet_field(depth: int) -> int:
    """Receptive field of the native U-Net encoder's deepest features (two 3x3 convs per level, 2x2 pool)."""
    from seglab.layers import stack_receptive_field

    layers: list[tuple[int, int, int]] = []
    for level in range(depth):
        if level:
            layers.append((2, 2, 1))
        layers += [(3, 1, 1), (3, 1, 1)]
    return stack_receptive_field(layers)


def measured_field(model: torch.nn.Module, side: int) -> int:
    """Side of the input square that reaches ``model``'s centre output pixel (eval mode, back-propagated)."""
    from seglab.layers import effective_receptive_field

    field = effective_receptive_field(model.eval(), (1, 3, side, side)).numpy()
    rows = np.nonzero(field.any(1))[0]
    return int(rows.max() - rows.min() + 1)


def cost(out: Path, numbers: dict[str, Any]) -> None:
    """The course's full-resolution stack beside a U-Net of similar widths: MACs and memory by resolution."""
    from seglab.bench.cost import course_comparison
    from seglab.layers import stack_receptive_field
    from seglab.models.factory import create_model

    torch.manual_seed(0)  # the weights of the two models whose fields are measured
    plain, unet = course_comparison(512, num_classes=10)
    ex = numbers["exact"]
    for key, c in (("plain_fcn", plain), ("unet", unet)):
        ex[f"cost.{key}.params"], ex[f"cost.{key}.macs"] = c.params, c.macs
        ex[f"cost.{key}.activation_mib"] = exact_float(c.activation_bytes / 2**20)
        by_res: dict[int, list[float]] = {}
        for layer in c.layers:
            side = layer.out_shape[-1]
            row = by_res.setdefault(side, [0.0, 0.0])
            row[0] += layer.macs
            row[1] += layer.activation_bytes
        ex[f"cost.{key}.by_resolution"] = {str(k): [int(v[0]), int(v[1])] for k, v in sorted(by_res.items())}
    convs = sum(1 for layer in plain.layers if layer.compute)
    ex["cost.plain_fcn.receptive_field"] = stack_receptive_field([(3, 1, 1)] * convs)
    ex["cost.unet.deepest_field"] = unet_field(4)
    ex["cost.unet.field"] = measured_field(
        create_model("unet", num_classes=10, depth=4, base_channels=16), 384
    )
    ex["cost.plain_fcn.field"] = measured_field(create_model("plain_fcn", num_classes=10), 64)
    ex["cost.macs_ratio"] = exact_float(plain.macs / unet.macs)
    ex["cost.memory_ratio"] = exact_float(plain.activation_bytes / unet.activation_bytes)
    ex["cost.params_ratio"] = exact_float(unet.params / plain.params)

    sides = [512, 256, 128, 64]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    width = 0.38
    for i, (key, label, colour) in enumerate(
        (
            ("plain_fcn", "plain_fcn (full resolution)", "tab:red"),
            ("unet", "U-Net (depth 4, base 16)", "tab:blue"),
        )
    ):
        res = ex[f"cost.{key}.by_resolution"]
        macs = [res.get(str(s), [0, 0])[0] / 1e9 for s in sides]
        mem = [res.get(str(s), [0, 0])[1] / 2**20 for s in sides]
        xs = np.arange(len(sides)) + (i - 0.5) * width
        axes[0].bar(xs, macs, width, label=f"{label}: {sum(macs):.1f} GMACs", color=colour)
        axes[1].bar(xs, mem, width, label=f"{label}: {sum(mem):.0f} MiB", color=colour)
    for ax, ylabel in zip(axes, ("GMACs per 512x512 image", "activation memory per image (MiB, fp32)")):
        ax.set_xticks(range(len(sides)), [f"{s}x{s}\n(1/{512 // s})" for s in sides])
        ax.set_xlabel("resolution of the layer's output")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    plain_field, unet_side = ex["cost.plain_fcn.field"], ex["cost.unet.field"]
    fig.suptitle(
        "Where the cost is: an output pixel of the full-resolution stack sees "
        f"{plain_field}x{plain_field} input pixels, one of the U-Net {unet_side}x{unet_side}",
        fontsize=11,
    )
    save(fig, out / "cost.png")


# -------------------------------------------------------------------------------------- 4. checkerboard


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkerboard(numbers: dict[str, Any]) -> None:
    """The checkerboard scores of docs/figures/upsampling.png, computed as scripts/layers_figure.py does."""
    from seglab.layers import checkerboard_score

    fig_script = load_script("layers_figure")
    layers = fig_script.upsamplers()
    keys = ("nearest", "bilinear", "transposed", "resize_conv")
    inputs = {"image": fig_script.test_image(), "constant": torch.full((1, 1, 12, 12), 0.5)}
    for label, x in inputs.items():
        with torch.no_grad():
            for key, layer in zip(keys, layers.values()):
                numbers["exact"][f"checkerboard.{label}.{key}"] = exact_float(checkerboard_score(layer(x)))


# ------------------------------------------------------------------------------------ 5. atrous, separable


def atrous(out: Path, numbers: dict[str, Any]) -> None:
    """Which input pixels one output pixel sees, measured by back-propagation, for single and stacked atrous
    convolutions."""
    from torch import nn

    from seglab.layers import AtrousConv2d, effective_receptive_field, receptive_field

    def stack(*rates: int) -> nn.Module:
        return nn.Sequential(*(AtrousConv2d(1, 1, 3, dilation=d, norm="none", act="none") for d in rates))

    cases = [
        ("3x3, rate 1", stack(1)),
        ("3x3, rate 2", stack(2)),
        ("3x3, rate 3", stack(3)),
        ("three 3x3, rates 1, 1, 1", stack(1, 1, 1)),
        ("three 3x3, rates 1, 2, 4", stack(1, 2, 4)),
        ("three 3x3, rates 2, 2, 2", stack(2, 2, 2)),
    ]
    keys = ("d1", "d2", "d3", "stack_111", "stack_124", "stack_222")
    side = 19
    fig, axes = plt.subplots(1, len(cases), figsize=(16, 3.3), layout="constrained")
    ex = numbers["exact"]
    for ax, key, (title, module) in zip(axes, keys, cases):
        field = effective_receptive_field(module, (1, 1, side, side)).numpy()
        rows, cols = np.nonzero(field)
        extent = int(rows.max() - rows.min() + 1)
        ex[f"atrous.{key}.field"] = extent
        ex[f"atrous.{key}.seen"] = int(field.sum())
        ax.imshow(field, cmap="Blues", vmin=0, vmax=1.3)
        ax.set_xticks(np.arange(-0.5, side, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, side, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.5)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        weights = 9 * len(module)
        ax.set_title(
            f"{title}\nfield {extent}x{extent}, sees {int(field.sum())} px, {weights} weights", fontsize=9
        )
    ex["atrous.formula"] = [receptive_field(3, d) for d in (1, 2, 3)]
    fig.suptitle(
        "Input pixels that reach the centre output pixel (back-propagated from it), on 19x19 inputs",
        fontsize=11,
    )
    save(fig, out / "atrous.png")


def separable(numbers: dict[str, Any]) -> None:
    """Weights and multiplications of standard vs separable convolutions: the course's example and a 3x3 layer
    of a real decoder."""
    from seglab.layers import CONV_KINDS, conv_cost

    examples = {
        "course": dict(in_channels=3, out_channels=256, kernel_size=5, input_size=12),
        "decoder": dict(in_channels=256, out_channels=256, kernel_size=3, input_size=64, padding=1),
    }
    for name, kw in examples.items():
        for kind in CONV_KINDS:
            c = conv_cost(kind, **kw)
            numbers["exact"][f"separable.{name}.{kind}.params"] = c.params
            numbers["exact"][f"separable.{name}.{kind}.mults"] = c.mults


# -------------------------------------------------------------------------------------------- 7. metrics


def overlap_rgb(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    rgb = np.full((*truth.shape, 3), 245, np.uint8)
    rgb[truth & pred] = (60, 170, 60)  # true positive
    rgb[truth & ~pred] = (220, 50, 50)  # missed
    rgb[pred & ~truth] = (60, 100, 240)  # false alarm
    return rgb


def metrics(out: Path, numbers: dict[str, Any]) -> None:
    """IoU and Dice of the same one-pixel-per-axis shift on a large and a small disc, and Dice against IoU."""
    from seglab.metrics import confusion_matrix, dice, iou

    yy, xx = np.mgrid[0:64, 0:64]

    def disc(cy: float, cx: float, r: float) -> np.ndarray:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    examples = {"large": (disc(32, 32, 20), disc(35, 35, 20)), "small": (disc(32, 32, 5), disc(35, 35, 5))}
    crops = {"large": np.s_[:, :], "small": np.s_[20:48, 20:48]}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    ex = numbers["exact"]
    for ax, (name, (truth, pred)) in zip(axes, examples.items()):
        cm = confusion_matrix(torch.from_numpy(pred).long(), torch.from_numpy(truth).long(), num_classes=2)
        i, d = float(iou(cm)[1]), float(dice(cm)[1])
        ex[f"metrics.{name}.iou"], ex[f"metrics.{name}.dice"] = exact_float(i), exact_float(d)
        ex[f"metrics.{name}.pixels"] = int(truth.sum())
        ax.imshow(overlap_rgb(truth, pred)[crops[name]], interpolation="nearest")
        zoom = " (zoomed)" if name == "small" else ""
        ax.set_title(
            f"{name} disc{zoom}, {int(truth.sum())} px; prediction 3 px off on each axis\n"
            f"IoU {i:.3f}   Dice {d:.3f}",
            fontsize=10,
        )
        ax.axis("off")
    axes[0].text(1, 62, "green: hit   red: missed   blue: false alarm", fontsize=8)
    u = np.linspace(0, 1, 101)
    axes[2].plot(u, 2 * u / (1 + u), "k-", label="Dice = 2 IoU / (1 + IoU)")
    axes[2].plot(u, u, "k:", linewidth=1, label="Dice = IoU")
    for name, marker in (("large", "o"), ("small", "s")):
        axes[2].plot(
            ex[f"metrics.{name}.iou"], ex[f"metrics.{name}.dice"], marker, ms=9, label=f"{name} disc"
        )
    axes[2].set(xlabel="IoU", ylabel="Dice", xlim=(0, 1), ylim=(0, 1), title="the same overlap, two scales")
    axes[2].set_aspect("equal")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=9, loc="lower right")
    save(fig, out / "metrics.png")


# ------------------------------------------------------------------------------------------- trained part


def train_runs(data: Path, work: Path, budget: Budget, threads: int) -> dict[str, Any]:
    """Train every model of RUNS with seglab's trainer; returns run name -> TrainResult."""
    from seglab.config import Config
    from seglab.engine.train import train

    results = {}
    for name, (arch, params, loss) in RUNS.items():
        cfg = Config().override(
            [
                f"data.root={data}",
                f"train.out_dir={work / name}",
                f"train.epochs={budget.epochs}",
                f"train.batch_size={budget.batch_size}",
                f"model.arch={arch}",
                f"model.params={params}",
                f"train.loss={loss}",
                "train.seed=0",
                "train.amp=off",
                "train.progress=false",
                "train.tensorboard=false",
                f"train.threads={threads}",
            ]
        )
        t0 = time.perf_counter()
        results[name] = train(cfg)
        log(
            f"trained {name}: val mIoU {results[name].best_metrics.get('miou', float('nan')):.4f} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    return results


def split_items(data: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    from seglab.data.io import read_image, read_mask_raw

    stems = (data / "splits" / f"{split}.txt").read_text().split()
    return [
        (read_image(data / "images" / f"{s}.png", 3), read_mask_raw(data / "masks" / f"{s}.png"))
        for s in stems
    ]


def batch(items: list[tuple[np.ndarray, np.ndarray]], meta: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from seglab.inference import image_tensor

    images = torch.cat([image_tensor(im, meta.mean, meta.std, torch.device("cpu")) for im, _ in items])
    return images, torch.from_numpy(np.stack([m for _, m in items]).astype(np.int64))


def colour(mask: np.ndarray) -> np.ndarray:
    from seglab.data.synthetic import PALETTE

    return np.asarray(PALETTE, np.uint8)[mask]


def losses_figure(
    out: Path, data: Path, runs: Path, reports: dict[str, dict], numbers: dict[str, Any]
) -> None:
    """Per-class IoU of the three losses, and their predictions on the test images with the most triangle."""
    from seglab.checkpoint import load_checkpoint

    me = numbers["measured"]
    for label, run in LOSS_RUNS.items():
        rep = reports[run]
        key = label.lower().replace("+", "_")
        me[f"loss.{key}.miou"] = measured_float(rep["miou"])
        for c, name in enumerate(CLASS_NAMES):
            value = rep["iou"][c]
            me[f"loss.{key}.iou.{name}"] = measured_float(math.nan if value is None else value)
    test = split_items(data, "test")
    order = sorted(range(len(test)), key=lambda i: -int((test[i][1] == RARE).sum()))[:2]
    preds = {}
    for label, run in LOSS_RUNS.items():
        model, meta = load_checkpoint(runs / run)
        images, _ = batch([test[i] for i in order], meta)
        with torch.no_grad():
            preds[label] = model(images).argmax(1).numpy()

    fig = plt.figure(figsize=(15, 6.6), layout="constrained")
    grid = fig.add_gridspec(2, 6, width_ratios=[2.2, 1, 1, 1, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    width = 0.26
    for i, (label, colour_) in enumerate(zip(LOSS_RUNS, ("tab:gray", "tab:orange", "tab:blue"))):
        key = label.lower().replace("+", "_")
        values = [me[f"loss.{key}.iou.{n}"] for n in CLASS_NAMES]
        ax.bar(
            np.arange(4) + (i - 1) * width,
            values,
            width,
            color=colour_,
            label=f"{label}: mIoU {me[f'loss.{key}.miou']:.3f}",
        )
    share = me["data.triangle_share"]
    ax.set_xticks(range(4), [*CLASS_NAMES[:3], f"triangle\n({100 * share:.1f} % of pixels)"])
    ax.set(ylabel="test IoU", ylim=(0, 1), title="test IoU per class, same U-Net, same budget")
    ax.legend(fontsize=9, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    for row, i in enumerate(order):
        image, truth = test[i]
        panels = [(image, "image"), (colour(truth), "truth (yellow: triangle)")]
        panels += [(colour(preds[label][row]), label) for label in LOSS_RUNS]
        for col, (arr, title) in enumerate(panels, start=1):
            picture(fig, grid[row, col], arr, title)
    fig.suptitle(
        "Cross-entropy, Dice and Dice + cross-entropy on SyntheticShapes: the rare class", fontsize=11
    )
    save(fig, out / "losses.png")


def stitch(paths: list[Path], out: Path) -> None:
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (sum(im.width for im in images), height), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    atomic_write(out, lambda tmp: canvas.save(tmp, format="PNG"))
    log(f"wrote {out} ({out.stat().st_size // 1024} KB)")


def uncertainty(out: Path, data: Path, runs: Path, budget: Budget, numbers: dict[str, Any]) -> None:
    """MC dropout entropy and mutual information of the CE U-Net; its reliability before and after a
    temperature fitted on the validation split."""
    from seglab.checkpoint import load_checkpoint
    from seglab.uncertainty import MCDropout
    from seglab.uncertainty.calibration import (
        calibration_bins,
        collect_logits,
        error_detection_auroc,
        fit_temperature,
        reliability_diagram,
        reliability_png,
        temperature_report,
        valid_pixels,
    )

    me = numbers["measured"]
    model, meta = load_checkpoint(runs / LOSS_RUNS["CE"])
    val, test = split_items(data, "val"), split_items(data, "test")
    val_logits, val_labels = collect_logits(model, [batch(val, meta)], ignore_index=None)
    temperature = fit_temperature(val_logits, val_labels, ignore_index=None)
    images, masks = batch(test, meta)
    with torch.no_grad():
        logits = model(images)
    flat, labels = valid_pixels(logits, masks, None)
    report = temperature_report(flat, labels, temperature)
    me["unc.temperature"] = measured_float(temperature)
    dice_model, dice_meta = load_checkpoint(runs / LOSS_RUNS["Dice"])  # the "Try this" of section 8
    dice_logits, dice_labels = collect_logits(dice_model, [batch(val, dice_meta)], ignore_index=None)
    me["unc.dice_temperature"] = measured_float(fit_temperature(dice_logits, dice_labels, ignore_index=None))
    for k, v in report.items():
        me[f"unc.{k}"] = measured_float(v)
    parts = []
    for key, t in (("before", 1.0), ("after", temperature)):
        probs = (flat.double() / t).softmax(1)
        conf, pred = probs.max(1)
        rel = reliability_diagram(*calibration_bins(conf, pred == labels, 15))
        path = Path(tempfile.mkdtemp(prefix="course-reliability-")) / f"{key}.png"
        title = (
            f"before: T = 1, ECE {report['ece_before']:.4f}"
            if key == "before"
            else f"after: T = {temperature:.2f}, ECE {report['ece_after']:.4f}"
        )
        reliability_png(path, rel, title)
        parts.append(path)
    stitch(parts, out / "reliability.png")
    for p in parts:
        shutil.rmtree(p.parent, ignore_errors=True)

    result = MCDropout(model, samples=budget.mc_samples, seed=0)(images)
    wrong = (result.mask != masks).numpy()
    ent, mi = result.entropy.numpy(), result.mutual_information.numpy()
    me["unc.error_rate"] = measured_float(wrong.mean())
    me["unc.entropy_wrong"], me["unc.entropy_right"] = (
        measured_float(ent[wrong].mean()),
        measured_float(ent[~wrong].mean()),
    )
    me["unc.mi_wrong"], me["unc.mi_right"] = (
        measured_float(mi[wrong].mean()),
        measured_float(mi[~wrong].mean()),
    )
    me["unc.auroc_entropy"] = measured_float(error_detection_auroc(result.entropy, result.mask != masks))
    me["unc.auroc_mi"] = measured_float(
        error_detection_auroc(result.mutual_information, result.mask != masks)
    )
    me["unc.samples"] = budget.mc_samples

    order = sorted(range(len(test)), key=lambda i: -int(wrong[i].sum()))[:3]
    mi_top = float(np.quantile(mi, 0.999)) or 1e-6
    fig, axes = plt.subplots(
        len(order), 6, figsize=(15, 2.6 * len(order) + 0.6), layout="constrained", squeeze=False
    )
    for row, i in enumerate(order):
        image, truth = test[i]
        err = np.where(
            wrong[i][..., None], np.array([220, 50, 50], np.uint8), (image * 0.35).astype(np.uint8)
        )
        panels = [
            (image, "image", None),
            (colour(truth), "truth", None),
            (colour(result.mask[i].numpy()), f"prediction (mean of {budget.mc_samples})", None),
            (err, f"errors ({int(wrong[i].sum())} px)", None),
            (ent[i], "predictive entropy (0 .. log 4)", (0, math.log(4))),
            (mi[i], f"mutual information (0 .. {mi_top:.2f})", (0, mi_top)),
        ]
        for ax, (arr, title, scale) in zip(axes[row], panels):
            if scale is None:
                ax.imshow(arr, interpolation="nearest")
            else:
                ax.imshow(arr, cmap="viridis", vmin=scale[0], vmax=scale[1], interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    title = f"MC dropout ({budget.mc_samples} passes) of the CE U-Net: the test images with the most errors"
    fig.suptitle(title, fontsize=11)
    save(fig, out / "uncertainty.png")


def try_it(out: Path, data: Path, result: Any, report: dict, numbers: dict[str, Any]) -> None:
    """The Dice + CE U-Net: its learning curve and its predictions on four test images."""
    from seglab.checkpoint import load_checkpoint

    me = numbers["measured"]
    history = result.history
    me["tryit.val_miou"] = [measured_float(h["val_miou"]) for h in history]
    me["tryit.train_loss"] = [measured_float(h["train_loss"]) for h in history]
    me["tryit.test_miou"] = measured_float(report["miou"])
    me["tryit.test_pixel_accuracy"] = measured_float(report["pixel_accuracy"])
    me["tryit.epochs"] = len(history)
    model, meta = load_checkpoint(result.best_checkpoint)
    test = split_items(data, "test")[:4]
    images, _ = batch(test, meta)
    with torch.no_grad():
        preds = model(images).argmax(1).numpy()

    fig = plt.figure(figsize=(14, 5.2), layout="constrained")
    grid = fig.add_gridspec(3, 5, width_ratios=[2.4, 1, 1, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, me["tryit.val_miou"], "o-", label="validation mIoU")
    ax.set(xlabel="epoch", ylabel="validation mIoU", ylim=(0, 1), title=f"test mIoU {report['miou']:.3f}")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(epochs, me["tryit.train_loss"], "s--", color="tab:orange", label="training loss (Dice + CE)")
    twin.set_ylabel("training loss")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=9, loc="center right")
    for col, ((image, truth), pred) in enumerate(zip(test, preds), start=1):
        for row, (arr, title) in enumerate(
            ((image, "test image"), (colour(truth), "truth"), (colour(pred), "U-Net"))
        ):
            picture(fig, grid[row, col], arr, title)
    fig.suptitle(
        "seglab.train on SyntheticShapes: a U-Net (depth 3, base 16) with Dice + cross-entropy", fontsize=11
    )
    save(fig, out / "tryit.png")


def pareto(out: Path, data: Path, runs: Path, budget: Budget, threads: int, numbers: dict[str, Any]) -> None:
    """FPS against test mIoU of four trained models, drawn by `seglab benchmark --checkpoints ... --data`."""
    from seglab.bench.report import pareto_front
    from seglab.bench.run import run_benchmark

    work = Path(tempfile.mkdtemp(prefix="course-bench-"))
    try:
        result = run_benchmark(
            checkpoints=[str(runs / r) for r in PARETO_RUNS],
            data=data,
            split="test",
            out=work,
            sizes=(budget.bench_size,),
            batch_sizes=(1,),
            warmup=2,
            iters=budget.bench_iters,
            threads=threads,
        )
        shutil.copy(result["outputs"]["png"], out / "pareto.png")
        log(f"wrote {out / 'pareto.png'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    me = numbers["measured"]
    rows = result["rows"]
    front = pareto_front([(r["fps"], r["miou"]) for r in rows])
    for i, r in enumerate(rows):
        me[f"pareto.{r['model']}.miou"] = measured_float(r["miou"])
        me[f"pareto.{r['model']}.fps"] = measured_float(r["fps"])
        me[f"pareto.{r['model']}.gmacs"] = measured_float(r["gmacs"])
        me[f"pareto.{r['model']}.params"] = int(r["params"])
        me[f"pareto.{r['model']}.front"] = i in front
    me["pareto.size"] = budget.bench_size
    me["pareto.device"] = result["protocol"].get("device_name", "")
    me["pareto.threads"] = result["protocol"].get("threads")


def trained(out: Path, budget: Budget, threads: int, numbers: dict[str, Any]) -> None:
    from seglab.data.synthetic import write_folder
    from seglab.engine.evaluate import evaluate

    work = Path(tempfile.mkdtemp(prefix="course-"))
    try:
        data = write_folder(work / "data", num_images=budget.num_images, size=budget.size)
        train_masks = [m for _, m in split_items(data, "train")]
        me = numbers["measured"]
        share = float(np.mean([(m == RARE).mean() for m in train_masks]))
        me["data.triangle_share"], me["data.triangle_percent"] = (
            measured_float(share),
            measured_float(100 * share),
        )
        me["data.images"], me["data.size"], me["data.epochs"] = budget.num_images, budget.size, budget.epochs
        results = train_runs(data, work / "runs", budget, threads)
        reports = {
            name: evaluate(r.best_checkpoint, data, "test", progress=False, out=work / f"{name}-test.json")
            for name, r in results.items()
        }
        for name, r in results.items():
            me[f"train.{name}.seconds"] = measured_float(r.seconds)
        losses_figure(out, data, work / "runs", reports, numbers)
        uncertainty(out, data, work / "runs", budget, numbers)
        try_it(out, data, results["unet"], reports["unet"], numbers)
        pareto(out, data, work / "runs", budget, threads, numbers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------ doc tables


def _m(n: float) -> str:
    return f"{n / 1e6:.2f} M"


def table_backbones(ex: dict[str, Any]) -> str:
    lines = [
        "| encoder | where from | parameters | GMACs at 512x512 | features: channels @ stride |",
        "|---|---|---:|---:|---|",
    ]
    for name in BACKBONES:
        feats = ", ".join(
            f"{c} @ {r}" for c, r in zip(ex[f"backbone.{name}.channels"], ex[f"backbone.{name}.reductions"])
        )
        kind = "native" if name in ("unet", "vgg", "mobilenet") else "timm"
        lines.append(
            f"| `{name}` | {kind} | {_m(ex[f'backbone.{name}.params'])} | "
            f"{ex[f'backbone.{name}.gmacs']:.2f} | {feats} |"
        )
    return "\n".join(lines)


def table_cost(ex: dict[str, Any]) -> str:
    lines = [
        "| model (10 classes, 512x512 input) | parameters | MACs | activation memory "
        "| MACs at full resolution |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("plain_fcn", "`plain_fcn`: 7 convs at 512x512"),
        ("unet", "`unet`, depth 4, base 16"),
    ):
        full = ex[f"cost.{key}.by_resolution"]["512"][0] / ex[f"cost.{key}.macs"]
        lines.append(
            f"| {label} | {ex[f'cost.{key}.params']:,} | {ex[f'cost.{key}.macs'] / 1e9:.2f} G | "
            f"{ex[f'cost.{key}.activation_mib']:.0f} MiB | {100 * full:.0f} % |"
        )
    return "\n".join(lines)


def table_separable(ex: dict[str, Any]) -> str:
    lines = [
        "| layer | convolution | weights | multiplications | fewer multiplications |",
        "|---|---|---:|---:|---:|",
    ]
    titles = {"course": "12x12x3 -> 8x8x256, 5x5, no padding", "decoder": "64x64x256 -> 64x64x256, 3x3"}
    for name, title in titles.items():
        base = ex[f"separable.{name}.standard.mults"]
        for kind in ("standard", "depthwise_separable", "spatially_separable"):
            mults = ex[f"separable.{name}.{kind}.mults"]
            params = ex[f"separable.{name}.{kind}.params"]
            lines.append(
                f"| {title} | {kind.replace('_', ' ')} | {params:,} | {mults:,} | {base / mults:.1f}x |"
            )
    return "\n".join(lines)


def table_losses(me: dict[str, Any]) -> str:
    lines = [
        "| loss | background | circle | rectangle | **triangle (rare)** | mIoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in LOSS_RUNS:
        key = label.lower().replace("+", "_")
        cells = [f"{me[f'loss.{key}.iou.{n}']:.3f}" for n in CLASS_NAMES]
        cells[RARE] = f"**{cells[RARE]}**"
        lines.append(f"| {label} | {' | '.join(cells)} | {me[f'loss.{key}.miou']:.3f} |")
    return "\n".join(lines)


def table_pareto(me: dict[str, Any]) -> str:
    size = me["pareto.size"]
    lines = [
        f"| model | parameters | GMACs at {size}x{size} | FPS at {size}x{size} | test mIoU | on the front |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for run in PARETO_RUNS:
        lines.append(
            f"| `{run}` | {me[f'pareto.{run}.params']:,} | {me[f'pareto.{run}.gmacs']:.3f} | "
            f"{me[f'pareto.{run}.fps']:.0f} | {me[f'pareto.{run}.miou']:.3f} | "
            f"{'yes' if me[f'pareto.{run}.front'] else 'no'} |"
        )
    return "\n".join(lines)


def render_tables(numbers: dict[str, Any]) -> dict[str, str]:
    """The Markdown tables of docs/course.md, by name, from numbers.json."""
    ex, me = numbers["exact"], numbers["measured"]
    return {
        "backbones": table_backbones(ex),
        "cost": table_cost(ex),
        "separable": table_separable(ex),
        "losses": table_losses(me),
        "pareto": table_pareto(me),
    }


NUMBER = re.compile(r"<!-- n:([\w.\-]+) -->(.*?)<!-- /n -->")
TABLE = re.compile(r"<!-- table:(\w+) -->\n(.*?)\n<!-- /table -->", re.S)


def lookup(numbers: dict[str, Any], key: str) -> Any:
    """``exact.KEY``, ``measured.KEY``, ``run.KEY``, or KEY in exact or measured; ``KEY[i]``: list item."""
    index = None
    if m := re.fullmatch(r"(.*)\[(-?\d+)\]", key):
        key, index = m.group(1), int(m.group(2))
    group, _, rest = key.partition(".")
    if group in ("exact", "measured", "run"):
        value = numbers[group][rest]
    else:
        value = numbers["exact"][key] if key in numbers["exact"] else numbers["measured"][key]
    return value if index is None else value[index]


def format_like(quoted: str, value: float) -> str:
    """``value`` written as ``quoted`` is: thousands separators, decimals and a trailing x or % kept."""
    text = quoted.strip()
    suffix = text[-1] if text and text[-1] in "x%" else ""
    body = text[: len(text) - len(suffix)]
    decimals = len(body.split(".")[1]) if "." in body else 0
    sep = "," if "," in body else ""
    return f"{value:{sep}.{decimals}f}{suffix}"


def update_doc(doc: Path, numbers: dict[str, Any]) -> None:
    text = doc.read_text()

    def number(m: re.Match) -> str:
        return f"<!-- n:{m.group(1)} -->{format_like(m.group(2), lookup(numbers, m.group(1)))}<!-- /n -->"

    text = NUMBER.sub(number, text)
    tables = render_tables(numbers)
    text = TABLE.sub(lambda m: f"<!-- table:{m.group(1)} -->\n{tables[m.group(1)]}\n<!-- /table -->", text)
    doc.write_text(text)
    log(f"updated {doc}")


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the short variant (tiny data, one epoch)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the figures and numbers.json")
    ap.add_argument("--data", type=Path, default=SHARED, help="the shared data sets (for the DSB image)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--update-doc", action="store_true", help="only copy OUT/numbers.json into docs/course.md"
    )
    args = ap.parse_args()
    if args.update_doc:
        update_doc(DOC, json.loads((args.out / "numbers.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, Any] = {"exact": {}, "measured": {}, "run": {}}
    t0 = time.perf_counter()
    seconds = numbers["run"]
    parts = {
        "tasks": lambda: tasks(args.out, args.data, numbers),
        "backbones": lambda: backbones(numbers),
        "cost": lambda: cost(args.out, numbers),
        "checkerboard": lambda: checkerboard(numbers),
        "atrous": lambda: atrous(args.out, numbers),
        "separable": lambda: separable(numbers),
        "metrics": lambda: metrics(args.out, numbers),
        "trained": lambda: trained(args.out, budget, args.threads, numbers),
    }
    for name, part in parts.items():
        t = time.perf_counter()
        part()
        seconds[f"seconds.{name}"] = round(time.perf_counter() - t, 1)
    seconds.update(
        mode="quick" if args.quick else "full",
        budget=budget.__dict__,
        threads=args.threads,
        torch=torch.__version__,
        seconds=round(time.perf_counter() - t0, 1),
    )
    path = args.out / "numbers.json"
    text = json.dumps(jsonable(numbers), indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    log(f"wrote {path}; {seconds['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
