"""How far down can a data set be scaled? The mIoU that a perfect model at scale s could reach at full resolution.

For each scale s, every label map of the split is turned into one-hot class maps, resized to s (bilinear with
antialiasing: the class shares of each low-resolution pixel, what a perfect model at that scale would predict),
upsampled bilinearly back to the label's size (as ``seglab evaluate`` upsamples logits) and its argmax scored
against the original labels with seglab's ConfusionMatrix. The loss of mIoU is the price of the resolution alone;
beside it, the pixels per image, which set the cost of every training step and prediction. Prints a table.

    .venv/bin/python benchmarks/resolution_ceiling.py                              # LabelMeFacade train, 1 min
    .venv/bin/python benchmarks/resolution_ceiling.py --data DIR --split test --scales 1 0.5 0.25
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def ceiling(masks: list[torch.Tensor], num_classes: int, scale: float) -> dict:
    from seglab.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, 255)
    pixels = 0
    for mask in masks:
        h, w = mask.shape
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        pixels += size[0] * size[1]
        if scale == 1:
            cm.update(mask[None], mask[None])
            continue
        onehot = F.one_hot(mask.clamp(max=num_classes - 1), num_classes).permute(2, 0, 1)[None].float()
        low = F.interpolate(onehot, size=size, mode="bilinear", antialias=True, align_corners=False)
        back = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        cm.update(back, mask[None])
    return {**cm.compute(), "pixels": pixels / len(masks)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "labelmefacade")
    p.add_argument("--split", default="train")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 0.5, 0.375, 0.25, 0.125])
    args = p.parse_args()

    from seglab.data.folder import FolderDataset

    ds = FolderDataset(args.data, args.split, None, ignore_index=255, cache=False)
    masks = [torch.from_numpy(ds.load(i)[1]) for i in range(len(ds))]
    names = list(ds.classes.names)
    print(
        f"{args.data.name}, {args.split} split ({len(masks)} label maps): the best mIoU of a model at scale s, "
        f"scored at full resolution\n"
    )
    print("| scale | pixels per image | mIoU ceiling | " + " | ".join(names) + " |")
    print("|---:|---:|---:|" + "---:|" * len(names))
    for s in args.scales:
        r = ceiling(masks, len(names), s)
        ious = " | ".join(f"{v:.3f}" for v in r["iou"])
        print(f"| {s:g} | {r['pixels']:,.0f} | {r['miou']:.3f} | {ious} |")


if __name__ == "__main__":
    main()
