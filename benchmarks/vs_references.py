"""seglab's models beside the reference implementations of the same architectures, in one process and protocol.

Pairs: U-Net and DeepLabv3+ on resnet34 (segmentation_models_pytorch, ``encoder_weights=None``), and
torchvision's fcn_resnet50, deeplabv3_resnet50 and lraspp_mobilenet_v3_large (``weights=None``). For each:
parameters, eager inference latency at batch 1 (median of ``--iters`` after ``--warmup``, inference_mode),
training throughput (images/s; batch 4 at 256x256, AdamW, cross-entropy) and the ratio ours / reference in
time (<= 1 means ours is no slower). Then seglab's faster paths for our model (channels_last, batch-norm
folding, ONNX Runtime), each checked against eager (max abs logit difference), the fastest faithful one against
the reference's eager path, and the achieved GFLOP/s of both against the machine's practical fp32 peak (the
fastest of large matmuls and a large convolution) measured in the same run.

``--smp``: instead, every architecture seglab shares with smp (U-Net, U-Net++, LinkNet, FPN, PSPNet, UPerNet,
DeepLabv3, DeepLabv3+ on smp's default ``resnet34``; SegFormer on ``mit_b0``): smp's model, and seglab's built from
its state dict (``weights=<smp checkpoint>``: the same structure and weights; the logits' difference is printed),
timed eagerly, forward (inference_mode) and forward+backward, at batch 1 and 8, 512x512, as the median of
``--repeats`` interleaved repeats after 2 warm-up calls each (ours and smp's alternate, first one then the other). Each pair's row is saved
as it finishes (``--out``, default runs/bench-vs-smp.jsonl) and skipped by a rerun (``--fresh`` redoes).
Forward+backward runs batch norm in training mode, except where it cannot train on one value per channel (a 1x1
pyramid-pooling branch at batch 1: UPerNet's, smp's too): both models are then timed in eval mode.

Needs ``pip install segmentation-models-pytorch`` (the optional benchmark extra). Run:
    OMP_NUM_THREADS=2 python benchmarks/vs_references.py --threads 2 --size 512
    OMP_NUM_THREADS=2 python benchmarks/vs_references.py --threads 2 --smp
Machines are noisy (+-25 %): compare only ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from seglab.bench.cost import count_cost
from seglab.bench.latency import FAITHFUL_ATOL, device_name, prepare_path, time_callable
from seglab.models.factory import create_model

NUM_CLASSES = 21
ROOT = Path(__file__).resolve().parents[1]


class OutOnly(nn.Module):
    """torchvision's segmentation models return {"out": logits}; this returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def pairs() -> dict[str, tuple]:
    """name -> (our builder, reference builder); both untrained, NUM_CLASSES outputs."""
    import segmentation_models_pytorch as smp
    from torchvision.models import segmentation as tvs

    c = NUM_CLASSES
    return {
        "unet_resnet34": (
            lambda: create_model(
                "unet", c, encoder="resnet34", decoder_channels=[256, 128, 64, 32], upsample="nearest"
            ),
            lambda: smp.Unet("resnet34", encoder_weights=None, classes=c),
        ),
        "deeplabv3plus_resnet34": (
            lambda: create_model("deeplabv3plus", c, encoder="resnet34", output_stride=16, separable=True),
            lambda: smp.DeepLabV3Plus("resnet34", encoder_weights=None, classes=c),
        ),
        "fcn_resnet50": (
            lambda: create_model(
                "fcn", c, encoder="resnet50", variant="32s", output_stride=8, upsample="bilinear"
            ),
            lambda: OutOnly(
                tvs.fcn_resnet50(weights=None, weights_backbone=None, num_classes=c, aux_loss=False)
            ),
        ),
        "deeplabv3_resnet50": (
            lambda: create_model("deeplabv3", c, encoder="resnet50", output_stride=8, pool_norm="bn"),
            lambda: OutOnly(
                tvs.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=c, aux_loss=False)
            ),
        ),
        "lraspp_mobilenet_v3_large": (
            lambda: create_model("lraspp", c),
            lambda: OutOnly(
                tvs.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=c)
            ),
        ),
    }


SMP_PAIRS = {  # seglab arch -> (smp class, encoder): smp's defaults
    "unet": ("Unet", "resnet34"),
    "unetplusplus": ("UnetPlusPlus", "resnet34"),
    "linknet": ("Linknet", "resnet34"),
    "fpn": ("FPN", "resnet34"),
    "pspnet": ("PSPNet", "resnet34"),
    "upernet": ("UPerNet", "resnet34"),
    "deeplabv3": ("DeepLabV3", "resnet34"),
    "deeplabv3plus": ("DeepLabV3Plus", "resnet34"),
    "segformer": ("Segformer", "mit_b0"),
}
SMP_MODES = ("fwd b1", "fwd b8", "fwd+bwd b1", "fwd+bwd b8")


def smp_pair(arch: str, tmp: Path) -> tuple[nn.Module, nn.Module]:
    """(seglab's model, smp's), the first built from the second's state dict: the same network twice."""
    import segmentation_models_pytorch as smp

    cls, encoder = SMP_PAIRS[arch]
    torch.manual_seed(0)
    theirs = getattr(smp, cls)(encoder, encoder_weights=None, classes=NUM_CLASSES)
    theirs.save_pretrained(tmp / arch)
    return create_model(arch, NUM_CLASSES, weights=str(tmp / arch)), theirs


def smp_times(models: Sequence[nn.Module], size: int, repeats: int) -> dict[str, list[list[float]]]:
    """Seconds per call of each model in each of SMP_MODES: two warm-ups each (one left U-Net++'s first
    inference-mode calls at batch 1 1.8x slow), then ``repeats`` rounds in which
    the models take turns (the first model first in even rounds, last in odd ones), through time_callable."""
    cpu = torch.device("cpu")
    out: dict[str, list[list[float]]] = {}
    for mode in SMP_MODES:
        batch = int(mode.split("b")[-1])
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

        def call(model: nn.Module, backward: bool = "bwd" in mode, x: torch.Tensor = x) -> None:
            if backward:
                model.zero_grad(set_to_none=True)
                model(x).sum().backward()
            else:
                with torch.inference_mode():
                    model(x)

        try:
            for m in models:
                m.train("bwd" in mode)  # batch-norm in training mode where gradients flow, as in training
                time_callable(lambda m=m: call(m), 2, 0, cpu)
        except (
            ValueError
        ):  # a batch norm over 1 value per channel (a 1x1 pooling branch at batch 1): eval mode
            for m in models:
                m.eval()
                time_callable(lambda m=m: call(m), 2, 0, cpu)
        times: list[list[float]] = [[] for _ in models]
        for r in range(repeats):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                times[i] += time_callable(lambda m=models[i]: call(m), 0, 1, cpu)[0]
        out[mode] = times
    return out


def run_smp(args: argparse.Namespace) -> None:
    """The --smp table: every shared architecture against smp's, the rows saved as they finish."""
    done = {}
    out = Path(args.out)
    if out.is_file() and not args.fresh:
        rows = map(json.loads, out.read_text().splitlines())
        done = {
            r["arch"]: r for r in rows if (r.get("size"), r.get("repeats", 3)) == (args.size, args.repeats)
        }
    print(
        f"# seglab vs smp, the same networks (seglab's built from smp's state dict): "
        f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, "
        f"eager, {args.size}x{args.size}, median of {args.repeats} interleaved repeats after 2 warm-ups\n"
    )
    header = "| arch (encoder) | params ours / smp (M) | max logit diff | " + " | ".join(
        f"{m} ours / smp (ms) | ratio" for m in SMP_MODES
    )
    print(header + " |")
    print("|" + "---|" * (3 + 2 * len(SMP_MODES)))
    tmp = Path(tempfile.mkdtemp(prefix="seglab-vssmp-"))
    for arch in SMP_PAIRS:
        if args.only and arch not in args.only:
            continue
        row = done.get(arch) or measure_smp_pair(arch, tmp, args)
        if arch not in done:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
        cells = [
            f"{row['ms'][m][0]:.0f} / {row['ms'][m][1]:.0f} | {row['ms'][m][0] / row['ms'][m][1]:.2f}"
            for m in SMP_MODES
        ]
        print(
            f"| {arch} ({SMP_PAIRS[arch][1]}) | {row['params'][0]:.2f} / {row['params'][1]:.2f} | "
            f"{row['diff']:.1e} | " + " | ".join(cells) + " |",
            flush=True,
        )


def measure_smp_pair(arch: str, tmp: Path, args: argparse.Namespace) -> dict:
    ours, theirs = smp_pair(arch, tmp)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = float((ours.eval()(x) - theirs.eval()(x)).abs().max())
    times = smp_times([ours, theirs], args.size, args.repeats)
    return {
        "arch": arch,
        "size": args.size,
        "repeats": args.repeats,
        "machine": f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads",
        "params": [sum(p.numel() for p in m.parameters()) / 1e6 for m in (ours, theirs)],
        "diff": diff,
        "ms": {m: [1000 * statistics.median(t) for t in times[m]] for m in SMP_MODES},
    }


def latency(model: nn.Module, x: torch.Tensor, warmup: int, iters: int) -> float:
    model.eval()
    with torch.inference_mode():
        times, _ = time_callable(lambda: model(x), warmup, iters, x.device)
    return statistics.median(times)


def train_throughput(
    builders: Sequence[Callable[[], nn.Module]], batch: int, size: int, steps: int
) -> list[float]:
    """Images/s of full training steps (forward, CE, backward, AdamW) of each model, median of ``steps`` after
    one warm-up each. The models take turns step by step, so drifts of a noisy machine hit them alike."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    runs = []
    for build in builders:
        model = build().train()
        runs.append((model, torch.optim.AdamW(model.parameters(), lr=1e-4), []))

    def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for i in range(steps + 1):
        for model, opt, times in runs:
            t0 = time.perf_counter()
            step(model, opt)
            if i:
                times.append(time.perf_counter() - t0)
    return [batch / statistics.median(times) for _, _, times in runs]


def best_gflops(fn: Callable[[], object], flops: float, iters: int = 5) -> float:
    """GFLOP/s of the fastest of ``iters`` calls of ``fn`` (after 2 untimed ones)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return flops / min(times) / 1e9


def practical_peak(n: int = 4096) -> dict[str, float]:
    """Large fp32 kernels, GFLOP/s: PyTorch's matmul (MKL), NumPy's (OpenBLAS) and a oneDNN 3x3 convolution
    (256 -> 256 channels, 128x128, NHWC). A BLAS matmul alone can understate what the convolutions reach (on the
    AMD EPYC we measured, MKL's sgemm reached under half of oneDNN's 3x3 conv); the largest is the peak."""
    import numpy as np

    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    x = torch.randn(1, 256, 128, 128).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3)
    with torch.inference_mode():
        return {
            "matmul (torch/MKL)": best_gflops(lambda: a @ b, 2 * n**3),
            "matmul (NumPy)": best_gflops(lambda: np.matmul(an, bn), 2 * n**3),
            "conv 3x3 (oneDNN, NHWC)": best_gflops(
                lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 256 * 256 * 9 * 128 * 128
            ),
        }


def format_peak(peaks: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + f" GFLOP/s -> peak {max(peaks.values()):.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="inference input size (default: 512)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--paths", nargs="+", default=["channels_last", "fold_bn", "fold_bn_cl", "onnxruntime"])
    ap.add_argument("--only", nargs="+", help="pair names to run (default: all)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--smp", action="store_true", help="the shared architectures against smp's (see above)")
    ap.add_argument("--repeats", type=int, default=5, help="--smp: interleaved repeats per mode")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-vs-smp.jsonl"), help="--smp: rows saved here")
    ap.add_argument("--fresh", action="store_true", help="--smp: measure every pair again")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.smp:
        run_smp(args)
        return
    print(
        f"# seglab vs references: {device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, fp32, inference {args.size}x{args.size} batch 1 (median of {args.iters} "
        f"after {args.warmup} warm-up), "
        + (
            "training skipped"
            if args.no_train
            else f"training batch {args.train_batch} at {args.train_size}x{args.train_size} "
            f"(AdamW, CE, median of {args.train_steps} steps after 1, ours and ref taking turns)"
        )
    )
    peaks = practical_peak()
    peak = max(peaks.values())
    print(f"practical fp32 peak (measured again at the end): {format_peak(peaks)}\n")
    header = (
        "| pair | params ours / ref (M) | GMACs ours / ref | latency ours / ref (ms) | ratio | "
        "train ours / ref (img/s) | ratio (time) | fastest faithful path | its latency (ms) | "
        "speed-up vs ref eager | GFLOP/s ours fastest / ref eager (% of peak) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    tmp = Path(tempfile.mkdtemp(prefix="seglab-vsref-"))
    for name, (ours_fn, ref_fn) in pairs().items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        ours, ref = ours_fn().eval(), ref_fn().eval()
        cost_o, cost_r = count_cost(ours, args.size), count_cost(ref, args.size)
        lat_o, lat_r = latency(ours, x, args.warmup, args.iters), latency(ref, x, args.warmup, args.iters)
        if args.no_train:
            tr_o = tr_r = float("nan")
        else:
            tr_o, tr_r = train_throughput(
                [ours_fn, ref_fn], args.train_batch, args.train_size, args.train_steps
            )
        with torch.inference_mode():
            base = ours(x)
        best, best_lat, notes = "eager", lat_o, []
        for path in args.paths:
            try:
                fn, _ = prepare_path(path, ours, x, x.device, tmp)
                with torch.inference_mode():
                    diff = float((fn(x) - base).abs().max())
                    times, _ = time_callable(lambda f=fn: f(x), args.warmup, args.iters, x.device)
            except Exception as e:  # noqa: BLE001
                notes.append(f"{path} failed: {type(e).__name__}")
                continue
            t = statistics.median(times)
            faithful = diff <= FAITHFUL_ATOL * max(1.0, float(base.abs().max()))
            notes.append(f"{path} {1000 * t:.0f} ms (diff {diff:.1e}{'' if faithful else ', NOT faithful'})")
            if faithful and t < best_lat:
                best, best_lat = path, t
        gflops, gflops_r = 2 * cost_o.macs / best_lat / 1e9, 2 * cost_r.macs / lat_r / 1e9
        print(
            f"| {name} | {cost_o.params / 1e6:.2f} / {cost_r.params / 1e6:.2f} | {cost_o.gmacs:.1f} / "
            f"{cost_r.gmacs:.1f} | {1000 * lat_o:.0f} / {1000 * lat_r:.0f} | {lat_o / lat_r:.2f} | "
            f"{tr_o:.2f} / {tr_r:.2f} | {tr_r / tr_o:.2f} | {best} | {1000 * best_lat:.0f} | "
            f"{lat_r / best_lat:.2f}x | {gflops:.0f} ({100 * gflops / peak:.0f} %) / {gflops_r:.0f} "
            f"({100 * gflops_r / peak:.0f} %) |",
            flush=True,
        )
        print(f"<!-- {name} paths: {'; '.join(notes)} -->", flush=True)
    print(f"\npractical fp32 peak at the end: {format_peak(practical_peak())}")


if __name__ == "__main__":
    main()
