"""Confusion-matrix update speed: seglab vs torchmetrics vs a bare ``torch.bincount`` (the practical floor).

    python benchmarks/metrics_speed.py [--repeats 15] [--threads 2]

On (8, 512, 512) int64 predictions and targets with 12 and 150 classes, without and with ignored (255)
pixels, prints the median ms per update of:

- seglab: ``ConfusionMatrix.update`` on labels (full validation: one extra ``aminmax`` pass over pred);
- seglab target-only: ``confusion_matrix(..., validate="target")``, what ``update`` does when it is given
  logits and takes the argmax itself (those labels are in range by construction);
- torchmetrics: ``MulticlassJaccardIndex.update`` (default ``validate_args=True``, and ``False``);
- bincount: one ``torch.bincount`` of precomputed codes ``target * C + pred`` over the same pixels.

Goal: seglab at least as fast as torchmetrics and within 2x of the bare bincount.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from seglab.metrics import ConfusionMatrix, confusion_matrix

SHAPE = (8, 512, 512)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def case(num_classes: int, ignored: float, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, num_classes, SHAPE, generator=g)
    target = torch.randint(0, num_classes, SHAPE, generator=g)
    if ignored:
        target[torch.rand(SHAPE, generator=g) < ignored] = 255
    ours = ConfusionMatrix(num_classes, 255)
    tm = MulticlassJaccardIndex(num_classes, ignore_index=255)
    tm_fast = MulticlassJaccardIndex(num_classes, ignore_index=255, validate_args=False)
    codes = (target * num_classes + pred).reshape(-1)  # for the floor: codes of every pixel, no masking
    bins = int(codes.max()) + 1

    # sanity: both accumulate the same matrix
    ours.update(pred, target)
    tm.update(pred, target)
    assert torch.equal(ours.matrix, tm.confmat), "seglab and torchmetrics disagree"

    return {
        "seglab": median_ms(lambda: ours.update(pred, target), repeats),
        "seglab_t": median_ms(
            lambda: confusion_matrix(pred, target, num_classes, validate="target"), repeats
        ),
        "tm": median_ms(lambda: tm.update(pred, target), repeats),
        "tm_noval": median_ms(lambda: tm_fast.update(pred, target), repeats),
        "bincount": median_ms(lambda: torch.bincount(codes, minlength=bins), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, pred/target {SHAPE} int64, median ms per update"
    )
    header = (
        f"{'classes':>7} {'ignored':>7} | {'seglab':>7} {'target-only':>11} {'tm':>7} {'tm noval':>8} "
        f"{'bincount':>8} | {'tm/seglab':>9} {'seglab/bincount':>15} {'target-only/bincount':>20}"
    )
    print(header)
    print("-" * len(header))
    for num_classes in (12, 150):
        for ignored in (0.0, 0.05):
            r = case(num_classes, ignored, args.repeats)
            print(
                f"{num_classes:>7} {ignored:>7.0%} | {r['seglab']:>7.2f} {r['seglab_t']:>11.2f} {r['tm']:>7.2f} "
                f"{r['tm_noval']:>8.2f} {r['bincount']:>8.2f} | {r['tm'] / r['seglab']:>8.1f}x "
                f"{r['seglab'] / r['bincount']:>14.2f}x {r['seglab_t'] / r['bincount']:>19.2f}x"
            )


if __name__ == "__main__":
    main()
