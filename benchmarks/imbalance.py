"""Is Dice better for imbalanced data? Train the same small U-Net with CE, Dice and Dice+CE, same budget and seeds.

SyntheticShapes' triangle class is rare (about 1 % of pixels). Prints the rare class's IoU and the mIoU on the
test split for each loss.

    .venv/bin/python benchmarks/imbalance.py [--num 800 --size 96 --epochs 8 --seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from seglab.config import Config
from seglab.data.folder import scan_folder
from seglab.data.synthetic import CLASSES, write_folder
from seglab.engine.evaluate import evaluate
from seglab.engine.train import train

LOSSES = {"CE": "ce", "Dice": "dice", "Dice+CE": "{ce: 1.0, dice: 1.0}"}
RARE = CLASSES.index("triangle")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=800)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "data", num_images=args.num, size=args.size)
        scan = scan_folder(data, deep=True)
        freq = scan.class_pixels / scan.class_pixels.sum()
        print(
            f"data: {args.num} SyntheticShapes images {args.size}x{args.size}; rare class '{CLASSES[RARE]}' "
            f"= {100 * freq[RARE]:.2f} % of pixels"
        )
        rows = {}
        for name, loss in LOSSES.items():
            rare, miou = [], []
            for seed in args.seeds:
                cfg = Config().override(
                    [
                        f"data.root={data}",
                        f"train.out_dir={tmp}/{name}-{seed}",
                        f"train.epochs={args.epochs}",
                        f"train.loss={loss}",
                        f"train.seed={seed}",
                        "train.progress=false",
                    ]
                )
                result = train(cfg)
                report = evaluate(
                    result.best_checkpoint, data, "test", progress=False, out=f"{tmp}/{name}.json"
                )
                rare.append(report["iou"][RARE])
                miou.append(report["miou"])
                print(f"  {name:8s} seed {seed}: rare IoU {rare[-1]:.4f}  mIoU {miou[-1]:.4f}", flush=True)
            rows[name] = (rare, miou)
    print(f"\n| loss | rare-class IoU (mean over {len(args.seeds)} seeds) | mIoU | per-seed rare IoU |")
    print("|---|---|---|---|")
    for name, (rare, miou) in rows.items():
        print(
            f"| {name} | {statistics.mean(rare):.4f} | {statistics.mean(miou):.4f} | "
            f"{', '.join(f'{v:.4f}' for v in rare)} |"
        )


if __name__ == "__main__":
    main()
