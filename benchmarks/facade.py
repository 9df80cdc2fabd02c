"""LabelMeFacade, 100 training photos, 10 CPU-minutes of training: smp's U-Net against seglab's recipes, in one run.

Three models, trained one after the other on the same machine for the same wall-clock budget (``--budget``,
default 10m), each scored on the 845 official test photos at the labels' full resolution, per class:

1. **smp baseline**, the issue's protocol, written out here: ``smp.Unet("resnet18", encoder_weights=None,
   classes=9)``; the 100 training photos downscaled by 2 (bilinear; masks nearest), random 256x256 crops and
   horizontal flips, batch 8, Adam 1e-3 with cosine annealing over the wall budget (the rate is set from the time
   spent before every step), cross-entropy, ImageNet normalisation; tested on the 845 photos downscaled by 2,
   logits upsampled bilinearly to full size before the argmax. It trains on all 100 photos and takes the last
   weights (no validation).
2. **seglab from scratch**: ``configs/labelmefacade-scratch.yaml`` (validation carved from the 100 photos; the
   best epoch on it is kept) with ``train.time_limit`` = the budget.
3. **seglab, pretrained Lite0 encoder**: ``configs/labelmefacade-pretrained.yaml``, the same way.

The seglab models are evaluated by ``seglab.evaluate`` (which scores at the labels' resolution); smp's logits go
through the same ``ConfusionMatrix``. Prints a Markdown table (mIoU, pixel accuracy, IoU of every class, steps)
and writes ``docs/figures/facade.png``: three test photos, truth, and each model's prediction.

    .venv/bin/python benchmarks/facade.py                 # about 40 minutes on 2 cores
    .venv/bin/python benchmarks/facade.py --budget 2m --test-limit 50    # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "labelmefacade"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def machine() -> str:
    from seglab.bench.latency import device_name

    return f"{device_name(torch.device('cpu'))}, {os.cpu_count()} cores"


def dataset(split: str):
    from seglab.data.folder import FolderDataset

    return FolderDataset(DATA, split, None, ignore_index=255, cache=False)


def half(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(3, H/2, W/2) normalised image (bilinear, antialiased) and the (H/2, W/2) mask (nearest)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    size = (round(x.shape[2] / 2), round(x.shape[3] / 2))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    if mask is None:
        return x, None
    m = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return x, m


def train_smp(budget: float, seed: int = 0) -> tuple[torch.nn.Module, int]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ds = dataset("train")
    items = [half(*ds.load(i)) for i in range(len(ds))]
    model = smp.Unet("resnet18", encoder_weights=None, classes=9).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, steps = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < budget:
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        xs, ms = [], []
        for i in rng.integers(len(items), size=8):
            x, m = items[i]
            top = int(rng.integers(0, max(1, x.shape[1] - 256 + 1)))
            left = int(rng.integers(0, max(1, x.shape[2] - 256 + 1)))
            x, m = x[:, top : top + 256, left : left + 256], m[top : top + 256, left : left + 256]
            if rng.random() < 0.5:
                x, m = x.flip(-1), m.flip(-1)
            xs.append(x)
            ms.append(m)
        loss = F.cross_entropy(model(torch.stack(xs)), torch.stack(ms), ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return model.eval(), steps


@torch.inference_mode()
def evaluate_smp(model: torch.nn.Module, limit: int | None) -> dict:
    from seglab.metrics import ConfusionMatrix

    ds = dataset("test")
    cm = ConfusionMatrix(9, 255)
    for i in range(min(len(ds), limit or len(ds))):
        image, mask = ds.load(i)
        x, _ = half(image)
        h, w = x.shape[1:]
        ph, pw = -h % 32, -w % 32  # smp's U-Net needs multiples of 32: reflect-pad, crop back
        logits = model(F.pad(x[None], (0, pw, 0, ph), mode="reflect"))[..., :h, :w]
        logits = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        cm.update(logits, torch.from_numpy(mask)[None])
    return {**cm.compute(), "num_images": min(len(ds), limit or len(ds))}


def train_seglab(config: Path, out: Path, budget: float) -> tuple[Path, int]:
    from seglab.config import Config
    from seglab.engine.train import train

    cfg = Config.load(config).override(
        [f"train.out_dir={out}", f"train.time_limit={budget}", "train.progress=false"]
    )
    result = train(cfg, overwrite=True)
    return result.best_checkpoint, result.history[-1]["steps"]


def evaluate_seglab(checkpoint: Path, out: Path, limit: int | None) -> dict:
    from seglab.engine.evaluate import evaluate

    if limit is None:
        return evaluate(checkpoint, DATA, "test", out=out, progress=False)
    import shutil
    import tempfile

    # a quick look: the first `limit` test photos, through the same evaluate()
    tmp = Path(tempfile.mkdtemp(prefix="facade-"))
    for name in ("images", "masks"):
        (tmp / name).mkdir()
    stems = (DATA / "splits" / "test.txt").read_text().split()[:limit]
    for s in stems:
        (tmp / "images" / f"{s}.jpg").symlink_to(DATA / "images" / f"{s}.jpg")
        (tmp / "masks" / f"{s}.png").symlink_to(DATA / "masks" / f"{s}.png")
    shutil.copy(DATA / "classes.yaml", tmp / "classes.yaml")
    return evaluate(checkpoint, tmp, "all", out=out, progress=False)


def figure(models: dict[str, object], path: Path, stems: list[str]) -> None:
    """Three test photos: photo | truth | each model's prediction, in the data set's palette."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from seglab.data.folder import FolderDataset
    from seglab.engine.predict import predict
    from seglab.files import atomic_write

    ds = FolderDataset(DATA, "test", None, ignore_index=255, cache=False)
    palette = np.array(ds.classes.palette, dtype=np.uint8)
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(stems), cols, figsize=(3.2 * cols, 2.5 * len(stems)))
    for r, stem in enumerate(stems):
        image, mask = ds.load(ds.stems.index(stem))
        panels = [("photo", image), ("truth", palette[mask])]
        for name, model in models.items():
            if isinstance(model, torch.nn.Module):  # smp
                x, _ = half(image)
                h, w = x.shape[1:]
                with torch.inference_mode():
                    lg = model(F.pad(x[None], (0, -w % 32, 0, -h % 32), mode="reflect"))[..., :h, :w]
                    pred = F.interpolate(lg, size=mask.shape, mode="bilinear").argmax(1)[0].numpy()
            else:
                out = Path(str(model)).parent / "figure-pred"
                predict(model, [DATA / "images" / f"{stem}.jpg"], out, write_overlay=False, progress=False)
                pred = np.asarray(Image.open(out / f"{stem}_mask.png"))  # palette PNG: class indices
            panels.append((name, palette[pred]))
        for c, (title, img) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="10m", help="training wall time per model (default: 10m)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "facade")
    p.add_argument("--test-limit", type=int, help="score only the first N test photos (quick look)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=["smp", "scratch", "pretrained"],
        default=["smp", "scratch", "pretrained"],
    )
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "facade.png")
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not available")

    from seglab.config import parse_duration

    budget = parse_duration(args.budget, "--budget")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, models = {}, {}
    if "smp" in args.only:
        t = time.perf_counter()
        model, steps = train_smp(budget)
        rows["smp Unet(resnet18), scratch"] = {
            **evaluate_smp(model, args.test_limit),
            "steps": steps,
            "train_s": time.perf_counter() - t,
        }
        models["smp"] = model
    for name in ("scratch", "pretrained"):
        if name not in args.only:
            continue
        t = time.perf_counter()
        ckpt, steps = train_seglab(ROOT / "configs" / f"labelmefacade-{name}.yaml", args.out / name, budget)
        train_s = time.perf_counter() - t
        report = evaluate_seglab(ckpt, args.out / f"eval-{name}.json", args.test_limit)
        rows[f"seglab {name}"] = {**report, "steps": steps, "train_s": train_s}
        models[f"seglab {name}"] = ckpt
        print(f"{name}: mIoU {report['miou']:.4f}", file=sys.stderr)

    names = list(dataset("train").classes.names)
    print(
        f"\nLabelMeFacade, {args.budget} of training per model on {machine()}, torch {torch.__version__}; "
        f"{next(iter(rows.values()))['num_images']} test photos scored at full resolution\n"
    )
    print("| model | steps | mIoU | pixel acc | " + " | ".join(names) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(names))
    for label, r in rows.items():
        ious = " | ".join(f"{v:.3f}" for v in r["iou"])
        print(f"| {label} | {r['steps']} | {r['miou']:.3f} | {r['pixel_accuracy']:.3f} | {ious} |")
    (args.out / "facade.json").write_text(json.dumps(rows, indent=1, default=str))
    test_stems = (DATA / "splits" / "test.txt").read_text().split()
    figure(models, args.figure, [test_stems[i] for i in (3, 101, 402)])
    print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
