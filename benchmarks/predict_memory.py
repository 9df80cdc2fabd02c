"""Peak memory of `seglab predict` on one large image, whole-image and overlap-tile, with a tiny model.

Each configuration runs `seglab predict` in a fresh Python process and reads its peak resident set size
(``ru_maxrss``); the baseline is the same command on a 16 x 16 image (Python, torch, seglab and the model).
Prints a Markdown table.

    .venv/bin/python benchmarks/predict_memory.py [--height 2000 --width 3000 --classes 2 --tiles 0 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

RUNNER = """
import json, resource, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from seglab.cli import main
code = main(json.loads(sys.argv[2]))
print(json.dumps({"code": code, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def cpu_name() -> str:
    import torch

    from seglab.bench.latency import device_name

    return device_name(torch.device("cpu"))


def peak_mib(argv: list[str], threads: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, str(threads), json.dumps(argv)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"seglab {' '.join(argv)} exited {result['code']}")
    return result["maxrss_kib"] / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=2000)
    p.add_argument("--width", type=int, default=3000)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--base-channels", type=int, default=4, help="U-Net width (depth 2)")
    p.add_argument("--tiles", type=int, nargs="+", default=[0, 512], help="0: whole image")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.models.factory import create_model

    with tempfile.TemporaryDirectory(prefix="seglab-mem-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        params = {"depth": 2, "base_channels": args.base_channels}
        model = create_model("unet", num_classes=args.classes, in_channels=3, **params).eval()
        n_params = sum(t.numel() for t in model.parameters())
        meta = CheckpointMeta(
            arch="unet",
            num_classes=args.classes,
            in_channels=3,
            model_params=params,
            class_names=[f"c{i}" for i in range(args.classes)],
            mean=[0.5] * 3,
            std=[0.25] * 3,
        )
        ckpt = save_checkpoint(root / "run" / "best", model, meta)
        rng = np.random.default_rng(0)
        image, small = root / "big.png", root / "small.png"
        Image.fromarray(rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)).save(image)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(small)
        pixels = args.height * args.width

        def command(path: Path, tile: int) -> list[str]:
            argv = [
                "predict",
                str(ckpt),
                str(path),
                "--out",
                str(root / f"out-{path.stem}-{tile}"),
                "--no-progress",
            ]
            return argv + (["--tile", str(tile)] if tile else [])

        base = peak_mib(command(small, 0), args.threads)
        print(
            f"`seglab predict` on one {args.width}x{args.height} RGB image ({pixels / 1e6:.1f} MPixel), "
            f"unet depth 2 base {args.base_channels} ({n_params:,} parameters, {args.classes} classes), {args.threads} threads, "
            f"{cpu_name()}; baseline (the same command on a 16x16 image) {base:.0f} MiB\n"
        )
        print("| mode | peak RSS (MiB) | above baseline (MiB) | bytes per pixel |")
        print("|---|---:|---:|---:|")
        for tile in args.tiles:
            peak = peak_mib(command(image, tile), args.threads)
            mode = f"--tile {tile}" if tile else "whole image"
            print(f"| {mode} | {peak:.0f} | {peak - base:.0f} | {(peak - base) * 2**20 / pixels:.0f} |")


if __name__ == "__main__":
    main()
