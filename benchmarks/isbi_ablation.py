"""ISBI 2012 ablation: the U-Net paper's ingredients, one at a time, on the same budget and seed.

Every run starts from configs/isbi2012-unet.yaml (elastic deformation and flips, no border weights, transposed-conv
upsampling, weight EMA) with ``--epochs`` epochs instead of 25, on the development split (train 00-22, validation
23-24, best epoch on validation), and is evaluated on the test slices 25-29:

(a) no augmentation; (b) + flips and elastic deformation; (c) (b) + the U-Net border weight map in the loss;
(d) (b) with bilinear upsampling + conv instead of transposed convolutions; (a)+(b): the ensemble of (a) and (b),
the recipe's form (no further training). Each is evaluated on whole slices and with overlap-tile inference
(``--tile``/``--overlap``, mirrored context); the validation scores are shown too, since only they may guide
choices. Run:

    .venv/bin/python benchmarks/isbi_ablation.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from seglab.config import Config
from seglab.engine.evaluate import evaluate
from seglab.engine.train import train
from seglab.uncertainty import UncertaintyConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN_00_22 = ", ".join(f"'{i:02d}'" for i in range(23))
DEV_SPLIT = f"{{train: [{TRAIN_00_22}], val: ['23', '24'], test: ['25', '26', '27', '28', '29']}}"
VARIANTS = {
    "(a) no augmentation": [
        "data.elastic=0",
        "data.hflip=false",
        "data.vflip=false",
        "data.rot90=false",
        "data.border_weights=false",
    ],
    "(b) + flips, elastic": [],
    "(c) (b) + border weights": ["data.border_weights=true"],
    "(d) (b), bilinear upsampling": ["model.params.upsample=bilinear"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", type=int, default=256, help="overlap-tile inference on the test slices")
    p.add_argument("--overlap", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = Config.load(ROOT / "configs" / "isbi2012-unet.yaml")
    base = base.override([f"data.root={(ROOT / base.data.root).resolve()}"])
    rows, ckpts = [], []

    def scores(name: str, ckpt: str, uncertainty: UncertaintyConfig | None, seconds: float, tmp: str) -> None:
        val, whole, tiled = (
            evaluate(
                ckpt,
                base.data.root,
                split,
                progress=False,
                out=f"{tmp}/e.json",
                rand_class="cell",
                tile=tile,
                overlap=args.overlap,
                uncertainty=uncertainty,
            )
            for split, tile in (("val", None), ("test", None), ("test", args.tile))
        )
        m = whole["classes"].index("membrane")
        rows.append(
            (
                name,
                1 - val["pixel_accuracy"],
                val["miou"],
                1 - whole["pixel_accuracy"],
                1 - tiled["pixel_accuracy"],
                whole["iou"][m],
                whole["dice"][m],
                whole["miou"],
                whole["rand_error"],
                tiled["rand_error"],
                seconds,
            )
        )
        print(
            f"{name}: validation pixel error {rows[-1][1]:.4f}, test pixel error {rows[-1][3]:.4f}, "
            f"membrane Dice {rows[-1][6]:.4f}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            cfg = base.override(
                [
                    f"data.splits={DEV_SPLIT}",
                    *overrides,
                    f"train.epochs={args.epochs}",
                    f"train.out_dir={tmp}/{len(rows)}",
                    "train.progress=false",
                ]
            )
            result = train(cfg)
            ckpts.append(str(result.best_checkpoint))
            scores(name, ckpts[-1], None, result.seconds, tmp)
        ensemble = UncertaintyConfig(method="ensemble", ensemble=[ckpts[1]])
        scores("(a)+(b) ensemble (the recipe's form)", ckpts[0], ensemble, rows[0][-1] + rows[1][-1], tmp)
    print(
        f"\n{args.epochs} epochs x 184 crops of 256x256 per run, best epoch on validation slices 23-24; "
        f"test slices 25-29; overlap-tile {args.tile} + {args.overlap} px mirrored context\n"
    )
    print(
        "| variant | val pixel error | val mIoU | test pixel error | pixel error, overlap-tile | membrane IoU | "
        "membrane Dice | mIoU | Rand error | Rand error, overlap-tile | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, vpe, vmiou, pe, pe_t, iou, dice, miou, rand, rand_t, sec in rows:
        print(
            f"| {name} | {vpe:.4f} | {vmiou:.4f} | {pe:.4f} | {pe_t:.4f} | {iou:.4f} | {dice:.4f} | {miou:.4f} | "
            f"{rand:.4f} | {rand_t:.4f} | {sec:.0f} |"
        )


if __name__ == "__main__":
    main()
