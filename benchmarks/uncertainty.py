"""Does the uncertainty say where the model is wrong, and does it stay honest under a distribution shift?

Trains small U-Nets with dropout (3 seeds) on SyntheticShapes, then compares on the test split, clean and with
added Gaussian noise (a held-out shift): deterministic prediction, deterministic + temperature scaling (fitted
on the clean validation split), MC dropout, test-time augmentation (4 flips) and a 3-model deep ensemble.
Columns: mIoU, ECE (15 equal-width bins), NLL, and the AUROC of the predictive entropy for detecting
misclassified pixels, all over every test pixel.

    .venv/bin/python benchmarks/uncertainty.py [--num 1000 --size 64 --epochs 15 --noise 25 --samples 20]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seglab.config import Config
from seglab.data.io import read_image, save_png
from seglab.data.synthetic import write_folder
from seglab.engine.evaluate import calibrate, evaluate
from seglab.engine.train import train
from seglab.uncertainty.config import UncertaintyConfig


def shifted_copy(data: Path, out: Path, noise: float, seed: int = 0) -> Path:
    """A copy of the folder data set whose test images carry extra Gaussian noise of std ``noise`` (0..255)."""
    shutil.copytree(data, out)
    rng = np.random.default_rng(seed)
    for stem in (out / "splits" / "test.txt").read_text().split():
        path = out / "images" / f"{stem}.png"
        image = read_image(path).astype(np.float32)
        save_png(path, np.clip(image + rng.normal(0, noise, image.shape), 0, 255).round().astype(np.uint8))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=1000, help="SyntheticShapes images (80/10/10 split)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--noise", type=float, default=25.0, help="std of the test-time Gaussian noise (0..255)")
    p.add_argument("--samples", type=int, default=20, help="MC dropout passes")
    p.add_argument("--members", type=int, default=3, help="ensemble size (seeds 0..members-1)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        clean = write_folder(Path(tmp) / "data", num_images=args.num, size=args.size)
        shifted = shifted_copy(clean, Path(tmp) / "shifted", args.noise)
        ckpts = []
        for seed in range(args.members):
            cfg = Config().override(
                [
                    f"data.root={clean}",
                    f"train.out_dir={tmp}/run{seed}",
                    f"train.epochs={args.epochs}",
                    f"train.seed={seed}",
                    "train.batch_size=16",
                    "train.progress=false",
                    "model.params={depth: 3, base_channels: 16, dropout: 0.2}",
                ]
            )
            result = train(cfg)
            ckpts.append(result.best_checkpoint)
            print(
                f"  trained seed {seed}: val mIoU {result.best_metrics['miou']:.4f} ({result.seconds:.0f} s)",
                flush=True,
            )
        scaled = Path(tmp) / "scaled.safetensors"
        shutil.copy(ckpts[0], scaled)
        shutil.copy(ckpts[0].with_suffix(".yaml"), scaled.with_suffix(".yaml"))
        fit = calibrate(scaled, clean, "val", progress=False)
        print(
            f"  temperature {fit['temperature']:.3f} (val NLL {fit['nll_before']:.4f} -> {fit['nll_after']:.4f})"
        )
        methods = {
            "deterministic": (ckpts[0], UncertaintyConfig("deterministic")),
            "deterministic + temperature": (scaled, UncertaintyConfig("deterministic")),
            f"MC dropout (T={args.samples})": (
                ckpts[0],
                UncertaintyConfig("mc-dropout", samples=args.samples),
            ),
            "TTA (4 flips)": (ckpts[0], UncertaintyConfig("tta")),
            f"ensemble (M={args.members})": (
                ckpts[0],
                UncertaintyConfig("ensemble", ensemble=[str(c) for c in ckpts[1:]]),
            ),
        }
        rows = {}
        for name, (ckpt, ucfg) in methods.items():
            row, t_eval = [], time.perf_counter()
            for data in (clean, shifted):
                r = evaluate(ckpt, data, "test", progress=False, out=f"{tmp}/eval.json", uncertainty=ucfg)
                u = r["uncertainty"]
                row += [r["miou"], u["ece"], u["nll"], u["auroc_entropy"]]
            rows[name] = row
            print(f"  evaluated {name} ({time.perf_counter() - t_eval:.1f} s)", flush=True)
    n_test = round(0.1 * args.num)
    print(
        f"\nSyntheticShapes {args.num} images {args.size}x{args.size}, U-Net depth 3 / base 16 / dropout 0.2, "
        f"{args.epochs} epochs; test split {n_test} images, shifted = + Gaussian noise std {args.noise:g}; "
        f"total {time.perf_counter() - t0:.0f} s\n"
    )
    head = ["mIoU", "ECE", "NLL", "AUROC"]
    print(
        "| method | "
        + " | ".join(f"clean {h}" for h in head)
        + " | "
        + " | ".join(f"noisy {h}" for h in head)
        + " |"
    )
    print("|---" * (1 + 2 * len(head)) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + " |")


if __name__ == "__main__":
    main()
