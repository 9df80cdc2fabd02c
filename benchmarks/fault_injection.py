"""Kill a training run at every write point, resume it, and count how each resumption ends.

Each kill is real: a child process runs ``seglab train`` with a hook on ``os.replace`` (the rename that ends every
atomic write) or on the metrics-log append, and calls ``os._exit(137)`` there, leaving temporary files behind as a
SIGKILL would. The hook fires at the write of epoch k, for k = 1 .. N. Rows ``random SIGKILL`` kill the child with
SIGKILL at a random moment instead. Then ``seglab train --resume`` runs in a fresh process and the outcome is:

- identical: exit 0, and last/best weights and the per-epoch training losses equal an uninterrupted run's;
- refused: exit 2 with a one-line message (nothing trained on wrong state);
- silently wrong: exit 0 but a result that differs from the uninterrupted run (must be 0 everywhere);
- crashed: any other exit (a traceback).

    python benchmarks/fault_injection.py            # N = 2 kills per write point, 3 random SIGKILLs
    python benchmarks/fault_injection.py --n 3 --random 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 3
WRITE_POINTS = [
    (name, when)
    for name in (
        "metrics.jsonl",
        "last.state.pt",
        "best.safetensors",
        "best.yaml",
        "last.safetensors",
        "last.yaml",
    )
    for when in (("mid-line",) if name == "metrics.jsonl" else ("before rename", "after rename"))
]

CHILD = r"""
import os, sys
target, when, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
from seglab.config import Config
from seglab.engine import callbacks as C, train as T
count = [0]
if target == "metrics.jsonl":
    real_append = C.append_text
    def append(path, text):
        count[0] += 1
        if count[0] == k:
            with open(path, "a") as f:
                f.write(text[: len(text) // 2])
            os._exit(137)
        real_append(path, text)
    C.append_text = append
else:
    real_replace = os.replace
    def replace(src, dst, *a, **kw):
        if os.path.basename(dst) == target:
            count[0] += 1
            if count[0] == k and when == "before rename":
                os._exit(137)
            real_replace(src, dst, *a, **kw)
            if count[0] == k:
                os._exit(137)
            return
        real_replace(src, dst, *a, **kw)
    os.replace = replace
T.train(Config.load(sys.argv[4]))
"""


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def fingerprint(run_dir: Path) -> tuple:
    from safetensors.torch import load_file

    weights = []
    for name in ("last", "best"):
        t = load_file(str(run_dir / f"{name}.safetensors"))
        weights.append({k: v.numpy().tobytes() for k, v in t.items()})
    losses = [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return weights, losses


def write_config(path: Path, data: Path, out: Path, threads: int) -> Path:
    from seglab.config import Config

    cfg = Config().override(
        [
            f"data.root={data}",
            f"train.out_dir={out}",
            f"train.epochs={EPOCHS}",
            "train.batch_size=8",
            "model.params={depth: 2, base_channels: 8}",
            "train.progress=false",
            "data.val_ratio=0",
            "train.amp=off",
            f"train.threads={threads}",
        ]
    )
    path.write_text(cfg.dump())
    return path


def resume(cfg: Path, reference: tuple, run_dir: Path) -> str:
    r = run([sys.executable, "-m", "seglab", "train", str(cfg), "--resume", "--no-progress"])
    if r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1:
        return "refused"
    if r.returncode != 0:
        return "crashed"
    return "identical" if fingerprint(run_dir) == reference else "silently wrong"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2, help="kills per write point (at epochs 1..n)")
    ap.add_argument("--random", type=int, default=3, help="extra kills by SIGKILL at random moments")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from seglab.data.synthetic import write_folder

    work = Path(tempfile.mkdtemp(prefix="seglab-faults-"))
    try:
        data = write_folder(work / "data", num_images=24, size=48)
        shutil.rmtree(data / "splits", ignore_errors=True)  # val_ratio=0: every epoch writes best and last
        ref_dir = work / "ref"
        t0 = time.perf_counter()
        r = run(
            [
                sys.executable,
                "-m",
                "seglab",
                "train",
                str(write_config(work / "ref.yaml", data, ref_dir, 1)),
                "--no-progress",
            ]
        )
        if r.returncode:
            sys.exit(f"reference run failed: {r.stderr.strip()}")
        ref_seconds = time.perf_counter() - t0
        reference = fingerprint(ref_dir)
        rows: list[tuple[str, dict[str, int]]] = []
        for target, when in WRITE_POINTS:
            counts = {"identical": 0, "refused": 0, "silently wrong": 0, "crashed": 0}
            for k in range(1, args.n + 1):
                out = work / f"run-{len(rows)}-{k}"
                cfg = write_config(work / f"cfg-{len(rows)}-{k}.yaml", data, out, 1)
                child = run([sys.executable, "-c", CHILD, target, when, str(k), str(cfg)])
                if child.returncode != 137:
                    sys.exit(
                        f"the kill at {target} {when} #{k} did not happen: {child.stderr.strip()[-300:]}"
                    )
                counts[resume(cfg, reference, out)] += 1
            rows.append((f"{target} ({when})", counts))
            print(f"  {rows[-1][0]}: {counts}", file=sys.stderr, flush=True)
        rng = random.Random(args.seed)
        counts = {"identical": 0, "refused": 0, "silently wrong": 0, "crashed": 0}
        for i in range(args.random):
            out = work / f"random-{i}"
            cfg = write_config(work / f"random-{i}.yaml", data, out, 1)
            delay = rng.uniform(0.3, 1.0) * ref_seconds
            p = subprocess.Popen(
                [sys.executable, "-m", "seglab", "train", str(cfg), "--no-progress"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait()
            if not (
                out / "last.state.pt"
            ).exists():  # killed before the first commit: a fresh start must work
                r = run([sys.executable, "-m", "seglab", "train", str(cfg), "--no-progress"])
                counts["identical" if r.returncode == 0 and fingerprint(out) == reference else "crashed"] += 1
                continue
            counts[resume(cfg, reference, out)] += 1
        if args.random:
            rows.append((f"random SIGKILL (x{args.random})", counts))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    from seglab.bench.latency import device_name

    cpu = device_name(torch.device("cpu"))
    print(
        f"fault injection: {EPOCHS}-epoch run killed at each write point of epochs 1..{args.n}, then resumed "
        f"({cpu}, {os.cpu_count()} cores)\n"
    )
    print(
        "| write point | kills | resumes identical | resumes refused with a message | silently wrong | crashed |"
    )
    print("|---|---|---|---|---|---|")
    for name, c in rows:
        print(
            f"| {name} | {sum(c.values())} | {c['identical']} | {c['refused']} | {c['silently wrong']} | "
            f"{c['crashed']} |"
        )
    wrong = sum(c["silently wrong"] + c["crashed"] for _, c in rows)
    print(f"\nsilently wrong or crashed: {wrong}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
