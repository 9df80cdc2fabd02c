"""Draw docs/figures/upsampling.png: nearest, bilinear, transposed conv and resize-conv on the same input.

Both learned layers get random non-negative kernels scaled to keep the brightness (a smoothing layer, as
early in training), so the only difference the eye sees is the one the course talks about: the transposed
convolution's uneven overlap paints a checkerboard, resize-convolution does not. Run:

    .venv/bin/python scripts/layers_figure.py [--out docs/figures/upsampling.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from seglab.layers import checkerboard_score, make_upsample  # noqa: E402

SIZE = 24


def test_image(size: int = SIZE) -> torch.Tensor:
    """A disc on a diagonal ramp: edges, a smooth gradient and flat areas, values in [0, 1]."""
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    ramp = (xx + yy) / (2 * (size - 1))
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).float()
    return (0.25 + 0.35 * ramp + 0.4 * disc)[None, None]


def upsamplers(seed: int = 0) -> dict[str, torch.nn.Module]:
    generator = torch.Generator().manual_seed(seed)
    transposed = make_upsample("transposed", 1, 1)
    resize = make_upsample("resize_conv", 1, 1)
    with torch.no_grad():
        for layer, total in ((transposed.conv, 4.0), (resize.conv, 1.0)):
            # A transposed conv spreads each input pixel over 2x2 output pixels: its taps sum to 4 on average.
            weight = torch.rand(layer.weight.shape, generator=generator)
            layer.weight.copy_(weight * total / weight.sum())
            layer.bias.zero_()
    return {
        "nearest": make_upsample("nearest", 1),
        "bilinear": make_upsample("bilinear", 1),
        "transposed conv\n3x3, stride 2": transposed,
        "resize-conv\nnearest + 3x3": resize,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/upsampling.png"))
    args = parser.parse_args()
    inputs = {"image": test_image(), "constant": torch.full((1, 1, SIZE // 2, SIZE // 2), 0.5)}
    layers = upsamplers()
    fig, axes = plt.subplots(len(inputs), len(layers) + 1, figsize=(13, 6.2), layout="constrained")
    for row, (label, x) in enumerate(inputs.items()):
        with torch.no_grad():
            outputs = {name: layer(x) for name, layer in layers.items()}
        # One grey scale per row, the input's: values beyond it (the transposed conv's) are clipped.
        lo, hi = float(x.min()), float(x.max())
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        axes[row, 0].imshow(x[0, 0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        axes[row, 0].set_title(f"input ({label}, {x.shape[-1]}x{x.shape[-1]})", fontsize=10)
        for col, (name, y) in enumerate(outputs.items(), start=1):
            score = float(checkerboard_score(y))
            axes[row, col].imshow(y[0, 0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            axes[row, col].set_title(f"{name}\ncheckerboard {score:.3f}", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Upsampling by 2: the same input through four layers (checkerboard: 0 none, 1 pure)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
