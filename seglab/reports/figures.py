"""The report's figures as matplotlib Figures (Agg canvas: no display, no pyplot state) and PNG bytes.

Each function takes plain report data (lists, arrays), so a figure can be redrawn from ``report.json`` alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

GREY = (128, 128, 128)  # ignore_index pixels in the mask and error panels
ERROR = (214, 39, 40)
BLUE, ORANGE, GREEN = "#4878d0", "#ee854a", "#6acc64"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")  # room for every label
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (rendered in memory: nothing is written until the whole report is ready)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_figure(history: Sequence[dict[str, Any]]) -> Any:
    """Training loss, learning rate, and validation mIoU / pixel accuracy per epoch of ``metrics.jsonl`` records."""
    fig = _figure(12, 3.4)
    loss_ax, lr_ax, val_ax = fig.subplots(1, 3)

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), int | float)]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    loss_ax.plot(*series("train_loss"), "o-", color=BLUE, markersize=3)
    loss_ax.set(title="training loss", xlabel="epoch")
    lr_ax.plot(*series("lr"), "o-", color=ORANGE, markersize=3)
    lr_ax.set(title="learning rate (end of epoch)", xlabel="epoch")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    found = False
    for key, label, colour in (("val_miou", "mIoU", BLUE), ("val_pixel_accuracy", "pixel accuracy", GREEN)):
        x, y = series(key)
        if x:
            found = True
            val_ax.plot(x, y, "o-", color=colour, markersize=3, label=label)
    if found:
        val_ax.legend(loc="lower right", fontsize=8)
        val_ax.set(ylim=(0, 1.02))
    else:
        val_ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=val_ax.transAxes)
    val_ax.set(title="validation", xlabel="epoch")
    for ax in (loss_ax, lr_ax, val_ax):
        ax.grid(alpha=0.3)
    return fig


def classes_figure(
    names: Sequence[str], iou: Sequence[float], dice: Sequence[float], share: Sequence[float]
) -> Any:
    """Grouped bars per class: IoU, Dice and the class's share of the ground-truth pixels."""
    n = len(names)
    fig = _figure(max(6.0, 0.9 * n + 2), 4.0)
    ax = fig.subplots()
    x = np.arange(n)
    w = 0.27
    for k, (values, label, colour) in enumerate(
        ((iou, "IoU", BLUE), (dice, "Dice", ORANGE), (share, "pixel share (truth)", GREEN))
    ):
        v = np.nan_to_num(np.asarray(values, dtype=float))
        bars = ax.bar(x + (k - 1) * w, v, w, label=label, color=colour)
        if n <= 12:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, list(names), rotation=30 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set(
        ylim=(0, 1.12), ylabel="score / share", title="per-class IoU and Dice beside each class's pixel share"
    )
    ax.legend(loc="upper right", fontsize=8, ncols=3)
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_figure(names: Sequence[str], normalised: np.ndarray) -> Any:
    """Row-normalised confusion matrix (rows: true class, sums to 1) as a heat map with the values in the cells."""
    n = len(names)
    side = max(4.5, 0.6 * n + 2.5)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    if n <= 30:
        for (t, p), v in np.ndenumerate(normalised):
            if math.isfinite(v):
                ax.text(
                    p,
                    t,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8 if n <= 12 else 6,
                    color="white" if v > 0.5 else "black",
                )
    ax.set_xticks(range(n), list(names), rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), list(names))
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (row-normalised)")
    return fig


def risk_coverage_figure(coverage: Sequence[float], risk: Sequence[float], aurc: float, score: str) -> Any:
    """Selective risk (error rate of the accepted pixels) against coverage, pixels accepted most certain first,
    beside the ideal ranking (every error last) and no ranking at all (the overall error rate)."""
    fig = _figure(5.0, 4.0)
    ax = fig.subplots()
    cov, rsk = np.asarray(coverage, dtype=float), np.asarray(risk, dtype=float)
    if len(cov):
        ax.plot(np.r_[0.0, cov], np.r_[rsk[0], rsk], color=BLUE, label=f"{score}: AURC {aurc:.4f}")
        error_rate = float(rsk[-1])
        grid = np.linspace(1e-3, 1, 400)
        ideal = np.clip((grid - (1 - error_rate)) / grid, 0, None)
        ax.plot(grid, ideal, ":", color="black", label="ideal ranking")
        ax.axhline(error_rate, ls="--", color=ORANGE, label=f"no ranking (error rate {error_rate:.4f})")
        ax.set_ylim(0, max(float(rsk.max()), error_rate) * 1.1 + 1e-6)
    ax.set(
        xlim=(0, 1),
        xlabel="coverage (share of pixels accepted, most certain first)",
        ylabel="selective risk (error rate)",
        title="error detection: risk-coverage",
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def colour_mask(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int) -> np.ndarray:
    """Class indices (H, W) as RGB uint8 (H, W, 3) in ``palette``'s colours; ignore_index pixels grey."""
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = colours[np.clip(mask, 0, len(colours) - 1)]
    out[mask == ignore_index] = GREY
    return out


def error_map(pred: np.ndarray, truth: np.ndarray, ignore_index: int) -> np.ndarray:
    """RGB uint8 (H, W, 3): white where the prediction is right, red where it is wrong, grey where ignored."""
    out = np.full((*truth.shape, 3), 255, np.uint8)
    out[pred != truth] = ERROR
    out[truth == ignore_index] = GREY
    return out


PANELS = ("image", "truth", "prediction", "errors (red; ignored grey)", "uncertainty (entropy)")


def examples_figure(rows: Sequence[tuple[str, Sequence[np.ndarray]]]) -> Any:
    """One row per example: its label and five RGB/grey panels (image, truth, prediction, errors, uncertainty)."""
    h, w = rows[0][1][0].shape[:2]
    panel = 2.3
    fig = _figure(panel * len(PANELS), panel * len(rows) * max(0.4, min(2.5, h / w)) + 0.4)
    axes = np.asarray(fig.subplots(len(rows), len(PANELS), squeeze=False))
    for r, (label, panels) in enumerate(rows):
        for c, img in enumerate(panels):
            ax = axes[r, c]
            grey = img.ndim == 3 and img.shape[2] == 1
            ax.imshow(
                img[..., 0] if grey else img,
                cmap="gray" if grey else None,
                interpolation="nearest",
                vmin=0,
                vmax=255,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():  # a thin frame: a white error panel still shows its extent
                spine.set_color("#bbbbbb")
            if r == 0:
                ax.set_title(PANELS[c], fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=9)
    return fig
