"""Data-parallel training throughput: 1 process against N processes on the same machine, in one run.

The workload is the demo's recipe (``seglab.demo.demo_config``: a 4-level U-Net of width 16, AdamW,
CE + Dice) on ``--images`` SyntheticShapes images of ``--size`` px (80 % train), global batch ``--batch``, amp
off (the same numerics in every row), ``--epochs`` epochs. Every row is a real ``seglab train`` run in its own
process(es) (``--nproc N`` through torchrun, gloo on the CPU, nccl on CUDA). Throughput is the median over
epochs 2.. of the training images per second of ``metrics.jsonl`` (epoch 1 warms up; validation is not
counted), and the median over ``--repeats`` interleaved rounds.

On the CPU, the rows share the machine's cores: 1 process x 1 thread, 1 process x C threads, C processes x 1
thread (with and without SyncBatchNorm). The efficiency of C processes is their throughput over C times one
process with one thread; "vs threads" compares them with one process using the same C cores as threads. On a
machine with GPUs (``torch.cuda.is_available()``): 1 GPU against all GPUs (one process each), amp auto.

    .venv/bin/python benchmarks/ddp_scaling.py                  # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/ddp_scaling.py --repeats 3 --images 480
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def train_run(cfg: Path, out: Path, nproc: int, overrides: list[str]) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "seglab",
        "train",
        str(cfg),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--nproc",
        str(nproc),
    ]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=360)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="global batch (default: 16)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = p.parse_args()

    import torch

    from seglab.data.synthetic import write_folder
    from seglab.demo import demo_config

    work = args.out or Path(tempfile.mkdtemp(prefix="ddp-scaling-"))
    data = write_folder(work / "data", num_images=args.images, size=args.size, overwrite=True)
    cfg = demo_config(data, work / "run", epochs=args.epochs)
    cfg.train.time_limit, cfg.train.batch_size, cfg.train.amp, cfg.train.tensorboard = (
        None,
        args.batch,
        "off",
        False,
    )
    cfg.data.num_workers = 0
    cfg_path = work / "cfg.yaml"
    cfg_path.write_text(cfg.dump())

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        rows = [
            ("1 GPU (1 process)", 1, ["train.device=cuda", "train.amp=auto"]),
            (f"{gpus} GPUs ({gpus} processes)", gpus, ["train.device=cuda", "train.amp=auto"]),
        ]
        where = f"{torch.cuda.get_device_name(0)} x {gpus}; {machine()}"
    else:
        rows = [
            ("1 process x 1 thread", 1, ["train.threads=1"]),
            (f"1 process x {cores} threads", 1, [f"train.threads={cores}"]),
            (f"{cores} processes x 1 thread", cores, ["train.threads=1"]),
            (f"{cores} processes x 1 thread, sync_bn", cores, ["train.threads=1", "train.sync_bn=true"]),
        ]
        where = machine()
    speeds: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    losses: dict[str, float] = {}
    for rep in range(args.repeats):
        for i, (name, nproc, overrides) in enumerate(rows):
            recs = train_run(cfg_path, work / f"run-{i}", nproc, overrides)
            speeds[name].append(statistics.median(r["images_per_s"] for r in recs[1:] or recs))
            losses[name] = recs[-1]["train_loss"]
            print(f"round {rep + 1}: {name}: {speeds[name][-1]:.1f} img/s", file=sys.stderr)

    med = {name: statistics.median(v) for name, v in speeds.items()}
    base = med[rows[0][0]]
    print(f"\nDDP scaling on {where}; torch {torch.__version__}")
    print(
        f"U-Net depth 4 width 16, {args.size}x{args.size}, global batch {args.batch}, {args.epochs} epochs of "
        f"{int(args.images * 0.8)} images, amp off (CPU), median of {args.repeats} round(s)\n"
    )
    print("| set-up | processes | images/s | speed-up vs first row | efficiency | last epoch's loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, nproc, _ in rows:
        speedup = med[name] / base
        eff = speedup / nproc if nproc > 1 else float("nan")
        eff_text = f"{eff:.0%}" if nproc > 1 else "-"
        print(f"| {name} | {nproc} | {med[name]:.1f} | {speedup:.2f}x | {eff_text} | {losses[name]:.4f} |")
    if not torch.cuda.is_available():
        threads, procs = med[rows[1][0]], med[rows[2][0]]
        print(f"\n{cores} processes x 1 thread vs 1 process x {cores} threads: {procs / threads:.2f}x")


if __name__ == "__main__":
    main()
