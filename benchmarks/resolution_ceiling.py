"""How far down can a data set be scaled? The mIoU that a perfect model at scale s could reach at full resolution.

For each scale s, every label map of the split is turned into one-hot class maps, resized to s (bilinear with
antialiasing: the class shares of each low-resolution pixel, what a perfect model at that scale would predict),
upsampled bilinearly back to the label's size (as ``seglab evaluate`` upsamples logits) and its argmax scored
against the original labels with seglab's ConfusionMatrix (``seglab.plan.ceiling``, which `seglab plan` runs on a
sample of the training masks). The loss of mIoU is the price of the resolution alone;
beside it, the pixels per image, which set the cost of every training step and prediction. Prints a table.

    .venv/bin/python benchmarks/resolution_ceiling.py                              # LabelMeFacade train, 1 min
    .venv/bin/python benchmarks/resolution_ceiling.py --data DIR --split test --scales 1 0.5 0.25
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "labelmefacade")
    p.add_argument("--split", default="train")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 0.5, 0.375, 0.25, 0.125])
    args = p.parse_args()

    from seglab.data.folder import FolderDataset
    from seglab.plan.ceiling import ceiling

    ds = FolderDataset(args.data, args.split, None, ignore_index=255, cache=False)
    masks = [ds.load(i)[1] for i in range(len(ds))]
    names = list(ds.classes.names)
    print(
        f"{args.data.name}, {args.split} split ({len(masks)} label maps): the best mIoU of a model at scale s, "
        f"scored at full resolution\n"
    )
    print("| scale | pixels per image | mIoU ceiling | " + " | ".join(names) + " |")
    print("|---:|---:|---:|" + "---:|" * len(names))
    results = ceiling(masks, len(names), args.scales, ds.ignore_index)
    for s in args.scales:
        r = results[s]
        ious = " | ".join(f"{v:.3f}" for v in r["iou"])
        print(f"| {s:g} | {r['pixels']:,.0f} | {r['miou']:.3f} | {ious} |")


if __name__ == "__main__":
    main()
