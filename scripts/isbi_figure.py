"""Draw docs/figures/isbi2012.png: image | ground truth | membrane probability | error map, for one ISBI 2012
test slice and a trained checkpoint (the recipe in configs/isbi2012-unet.yaml). Run:

    .venv/bin/python scripts/isbi_figure.py runs/isbi2012-unet [more runs: an ensemble] [--slice 27]

Several checkpoints are averaged as an ensemble (mean of their probabilities, as `--uncertainty ensemble`).

The error map shows missed membrane (false negatives: cells may merge) in red and spurious membrane (false
positives: cells may split) in blue, over the grayscale image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from seglab.data.io import class_index, read_image, read_mask_raw  # noqa: E402
from seglab.files import atomic_write  # noqa: E402
from seglab.inference import image_tensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012-membrane"


def error_map(image: np.ndarray, pred_membrane: np.ndarray, true_membrane: np.ndarray) -> np.ndarray:
    """RGB: the image dimmed, false negatives red, false positives blue."""
    rgb = np.repeat(image[..., None] * 0.6, 3, axis=2).astype(np.uint8)
    rgb[true_membrane & ~pred_membrane] = (230, 30, 30)
    rgb[pred_membrane & ~true_membrane] = (40, 90, 255)
    return rgb


def near_edge_fraction(pred: np.ndarray, truth: np.ndarray) -> float:
    """The share of wrong pixels that touch a true membrane/cell edge (their 3x3 neighbourhood holds both classes
    in the ground truth): one-pixel disagreements on membrane thickness or position, rather than missed structure."""
    from scipy import ndimage

    band = ndimage.binary_dilation(truth) & ~ndimage.binary_erosion(truth, border_value=1)
    err = pred != truth
    return float((err & band).sum() / max(int(err.sum()), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "checkpoints", nargs="+", help="run folders or .safetensors of the ISBI recipe (2+: ensemble)"
    )
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--slice", default="27")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "isbi2012.png")
    args = ap.parse_args()

    from seglab.inference import build_predictor
    from seglab.uncertainty import UncertaintyConfig

    first, *rest = args.checkpoints
    method = (
        UncertaintyConfig(method="ensemble", ensemble=rest)
        if rest
        else UncertaintyConfig(method="deterministic")
    )
    predictor, meta = build_predictor(first, method, tile=args.tile, overlap=args.overlap)
    membrane = class_index(meta.class_names, "membrane") if "membrane" in meta.class_names else 0
    image = read_image(args.data / "images" / f"{args.slice}.png", 1)
    truth = read_mask_raw(args.data / "masks" / f"{args.slice}.png") == 0  # 0 = membrane in the ISBI masks
    with torch.no_grad():
        probs = (
            predictor(image_tensor(image, meta.mean, meta.std, torch.device("cpu")))
            .probs[0, membrane]
            .numpy()
        )
    pred = probs >= 0.5  # = the argmax of two classes
    err = float((pred != truth).mean())
    dice = 2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())
    near = near_edge_fraction(pred, truth)

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = [
        (image[..., 0] / 255, "gray", f"slice {args.slice} (test)"),
        (truth, "gray_r", "ground truth membrane"),
        (probs, "gray_r", "predicted membrane probability"),
        (error_map(image[..., 0], pred, truth), None, f"errors: pixel error {err:.4f}, Dice {dice:.4f}"),
    ]
    for ax, (arr, cmap, title) in zip(axes, panels):
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1) if cmap else ax.imshow(arr)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("seglab U-Net on ISBI 2012 (red: missed membrane, blue: spurious membrane)", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    print(
        f"wrote {args.out}: slice {args.slice}, pixel error {err:.4f}, membrane Dice {dice:.4f}; "
        f"{near:.0%} of the wrong pixels touch a true membrane edge"
    )


if __name__ == "__main__":
    main()
