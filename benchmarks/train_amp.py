"""Training throughput with and without bf16 autocast (``train.amp=bf16``), and how far the two runs' losses drift.

The step is the one ``seglab.engine.train`` takes: channels_last on the CPU, the forward pass under autocast,
the loss in fp32, AdamW. Both runs start from the same weights and see the same batches. Run:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_amp.py [--threads 2] [--widths 16 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seglab.models.factory import create_model


def run(width: int, amp: bool, batch: int, size: int, steps: int) -> tuple[float, list[float]]:
    """(images/s as the median of ``steps`` timed steps after one warm-up, the losses of every step)."""
    torch.manual_seed(0)
    model = create_model("unet", 2, in_channels=1, depth=5, base_channels=width)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, size, size), generator=gen)
    times, losses = [], []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return batch / statistics.median(times[1:]), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"U-Net depth 5, 1 -> 2 classes, batch {args.batch} at {args.size}x{args.size}, {args.threads} threads, "
        f"torch {torch.__version__}; median of {args.steps} steps after 1\n"
    )
    print("| base width | fp32 img/s | bf16 img/s | speed-up | max loss difference over the steps |")
    print("|---|---|---|---|---|")
    for width in args.widths:
        fp32, l32 = run(width, False, args.batch, args.size, args.steps)
        bf16, l16 = run(width, True, args.batch, args.size, args.steps)
        drift = max(abs(a - b) for a, b in zip(l32, l16))
        print(f"| {width} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f}x | {drift:.4f} |", flush=True)


if __name__ == "__main__":
    main()
