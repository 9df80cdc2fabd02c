"""ISBI 2012 ablation: the U-Net paper's ingredients, one at a time, on the same budget and seed.

(a) no augmentation, (b) + elastic deformation, (c) + border weights, (d) = (c) with bilinear+conv instead of
transposed-conv upsampling. Each run starts from configs/isbi2012-unet.yaml with ``--epochs`` epochs and is
evaluated on the test slices 25-29 (pixel error, membrane IoU and Dice, mIoU, adapted Rand error).

    .venv/bin/python benchmarks/isbi_ablation.py [--epochs 15]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from seglab.checkpoint import load_checkpoint
from seglab.config import Config
from seglab.data.folder import FolderDataset
from seglab.data.transforms import build_transform
from seglab.engine.evaluate import evaluate
from seglab.engine.train import train
from seglab.metrics.rand import adapted_rand_error, label_components

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "(a) no augmentation": [
        "data.elastic=0",
        "data.hflip=false",
        "data.vflip=false",
        "data.border_weights=false",
    ],
    "(b) + flips, elastic": ["data.border_weights=false"],
    "(c) + border weights": [],
    "(d) (c), bilinear up": ["model.params.upsample=bilinear"],
}


def rand_error(checkpoint: Path, cfg: Config) -> float:
    """Mean adapted Rand error over the test slices (cell regions = connected components of the cell class)."""
    model, meta = load_checkpoint(checkpoint)
    ds = FolderDataset(
        cfg.data.root, "test", build_transform(cfg.data, 1, train=False), split_lists=cfg.data.splits
    )
    errors = []
    with torch.inference_mode():
        for i in range(len(ds)):
            x, y = ds[i]
            pred = model(x[None]).argmax(1)[0].numpy()
            cells_pred, cells_true = label_components(pred == 1), label_components(y.numpy() == 1)
            errors.append(adapted_rand_error(cells_pred, cells_true)[0])
    return float(np.mean(errors))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = Config.load(ROOT / "configs" / "isbi2012-unet.yaml")
    base = base.override([f"data.root={(ROOT / base.data.root).resolve()}"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            cfg = base.override([*overrides, f"train.epochs={args.epochs}", f"train.out_dir={tmp}/{len(rows)}",
                                 "train.progress=false"])  # fmt: skip
            result = train(cfg)
            r = evaluate(result.best_checkpoint, cfg.data.root, "test", progress=False, out=f"{tmp}/e.json")
            rows.append((name, 1 - r["pixel_accuracy"], r["iou"][0], r["dice"][0], r["miou"],
                         rand_error(result.best_checkpoint, cfg), result.seconds))  # fmt: skip
            print(f"{name}: pixel error {rows[-1][1]:.4f}, membrane Dice {rows[-1][3]:.4f}", flush=True)
    print(f"\n{args.epochs} epochs x 184 crops of 256x256 per run; test slices 25-29\n")
    print("| variant | pixel error | membrane IoU | membrane Dice | mIoU | Rand error | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, pe, iou, dice, miou, rand, sec in rows:
        print(f"| {name} | {pe:.4f} | {iou:.4f} | {dice:.4f} | {miou:.4f} | {rand:.4f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
