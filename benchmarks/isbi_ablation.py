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

import torch

from seglab.config import Config
from seglab.engine.evaluate import evaluate
from seglab.engine.train import train

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", type=int, default=256, help="overlap-tile inference on the test slices")
    p.add_argument("--overlap", type=int, default=64)
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
            r = evaluate(result.best_checkpoint, cfg.data.root, "test", progress=False, out=f"{tmp}/e.json",
                         rand_class="cell", tile=args.tile, overlap=args.overlap)  # fmt: skip
            rows.append((name, 1 - r["pixel_accuracy"], r["iou"][0], r["dice"][0], r["miou"], r["rand_error"],
                         result.seconds))  # fmt: skip
            print(f"{name}: pixel error {rows[-1][1]:.4f}, membrane Dice {rows[-1][3]:.4f}", flush=True)
    print(f"\n{args.epochs} epochs x 184 crops of 256x256 per run; test slices 25-29\n")
    print("| variant | pixel error | membrane IoU | membrane Dice | mIoU | Rand error | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, pe, iou, dice, miou, rand, sec in rows:
        print(f"| {name} | {pe:.4f} | {iou:.4f} | {dice:.4f} | {miou:.4f} | {rand:.4f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
