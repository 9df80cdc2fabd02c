"""Deployment paths side by side on this CPU: PyTorch fp32 eager, seglab's fastest faithful fp32 path, ONNX Runtime
int8, OpenVINO fp32 and OpenVINO int8, on three models trained on LabelMeFacade by this script.

The models (``MODELS``), each trained through seglab's own engine for ``--budget`` (default 10 minutes, set-up
included) with the named config's data and training settings:

- ``deeplabv3-r50``: DeepLabv3 on timm's ResNet-50 (random init: no download here), output stride 16,
  configs/labelmefacade-scratch.yaml's settings;
- ``unet-r34``: U-Net on timm's ResNet-34 (random init), the same settings;
- ``facade-pretrained``: configs/labelmefacade-pretrained.yaml as it is (U-Net, ImageNet EfficientNet-Lite0).

Each trained model is exported with ``seglab.engine.export.export_checkpoint``, exactly as ``seglab export`` does:
fp32 ONNX, int8 ONNX (ONNX Runtime static quantisation, QDQ, per-channel weights), OpenVINO fp32 IR and OpenVINO
int8 IR (NNCF), the int8 ones calibrated on ``--calibration-images`` training photos through seglab's data pipeline.

Per model and path:
- speed at batch 1 and batch 8 of 512x512 inputs, each path in a fresh process (so its peak resident memory,
  VmHWM, is its own: weights, runtime and activations): latency p50/p95 over ``--iters`` timed calls after
  ``--warmup``, throughput = batch / p50; all runtimes with the same threads as torch (``--threads``);
- mIoU on the 845 LabelMeFacade test photos at the labels' full resolution, through ``seglab.evaluate`` on the
  exported file itself (the same inference path as ``seglab evaluate``), so the accuracy cost is measured.

"seglab's fastest faithful fp32 path" is the fastest, at batch 1, of eager, channels_last, fold_bn, fold_bn_cl and
onnxruntime (fp32) whose logits are within the benchmark's faithfulness tolerance of eager's
(``seglab.bench.latency``); its mIoU is measured where it is another file (ONNX), and is eager's where it is a
torch path (same weights, logits within 1e-4 of eager's: the table says so).

Every stage's result is saved as it finishes (``<out>/<model>/...json``, atomically) and a rerun skips it, so the run
fits across sessions (``--only`` a model, ``--fresh`` to redo). Prints the table and writes ``<out>/results.md``.

    .venv/bin/python benchmarks/deploy.py                  # 3 x 10 min training + about 1 h of measurement, 2 cores
    .venv/bin/python benchmarks/deploy.py --stage train    # only the training (resumable per model)
    .venv/bin/python benchmarks/deploy.py --budget 20s --test-limit 5 --iters 3 --out /tmp/deploy  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "labelmefacade"
SCRATCH = ROOT / "configs" / "labelmefacade-scratch.yaml"
PRETRAINED = ROOT / "configs" / "labelmefacade-pretrained.yaml"

# name: (config, model (None: the config's own), why)
MODELS: dict[str, tuple[Path, dict[str, Any] | None, str]] = {
    "deeplabv3-r50": (
        SCRATCH,
        {"arch": "deeplabv3", "params": {"encoder": "resnet50"}},
        "DeepLabv3-ResNet-50 (output stride 16, random init), the scratch recipe's settings",
    ),
    "unet-r34": (
        SCRATCH,
        {"arch": "unet", "params": {"encoder": "resnet34"}},
        "U-Net-ResNet-34 (random init), the scratch recipe's settings",
    ),
    "facade-pretrained": (PRETRAINED, None, "the LabelMeFacade pretrained recipe as it is (U-Net, Lite0)"),
}
# path: (exported file name or None for the checkpoint, export settings)
PATHS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "torch fp32 eager": (None, {}),
    "fastest faithful fp32": (None, {}),  # chosen by measurement, see fastest_fp32()
    "ORT int8": ("model-int8.onnx", {"fmt": "onnx", "int8": True}),
    "OpenVINO fp32": ("model.xml", {"fmt": "openvino"}),
    "OpenVINO int8": ("model-int8.xml", {"fmt": "openvino", "int8": True}),
}
FP32_ONNX = "model.onnx"
FP32_CANDIDATES = ("eager", "channels_last", "fold_bn", "fold_bn_cl", "onnxruntime")
BATCHES = (1, 8)
SIZE = 512


def machine() -> str:
    import torch

    from seglab.bench.latency import device_name

    return f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def load(path: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def save(path: Path, result: dict[str, Any]) -> None:
    from seglab.files import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)


def stage(path: Path, args: argparse.Namespace, settings: dict[str, Any], work) -> dict[str, Any]:
    """The result saved at ``path`` with the same ``settings``, else ``work()``'s, saved there first."""
    done = None if args.fresh else load(path)
    if done is not None and done.get("settings") == settings:
        return done
    result = {"settings": settings, **work()}
    save(path, result)
    return result


def train(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``name`` for the budget through seglab's engine; its best checkpoint and how far it got."""
    from seglab.config import Config
    from seglab.engine.train import train as run

    config, model, why = MODELS[name]
    doc = Config.load(config).to_dict()
    if model is not None:
        doc["model"] = model
    out = args.out / name / "run"
    doc["train"].update(out_dir=str(out), time_limit=args.budget_s, progress=False)
    doc["data"]["root"] = str(DATA)
    t = time.perf_counter()
    result = run(Config.from_dict(doc), overwrite=True)
    (out / "last.state.pt").unlink(missing_ok=True)  # the optimizer state: no resume wanted
    last = result.history[-1] if result.history else {}
    return {
        "model": name,
        "why": why,
        "config": config.name,
        "checkpoint": str(result.best_checkpoint),
        "train_s": time.perf_counter() - t,
        "steps": last.get("steps", 0),
        "epochs": last.get("epoch", 0),
        "machine": machine(),
    }


def export(name: str, checkpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every exported file of ``name`` (fp32 ONNX and the PATHS' files), as `seglab export` writes them."""
    from seglab.engine.export import export_checkpoint

    folder = args.out / name
    files = {FP32_ONNX: {"fmt": "onnx"}} | {f: kw for f, kw in PATHS.values() if f}
    notes = {}
    for file, kw in files.items():
        t = time.perf_counter()
        extra = (
            {"calibration": str(DATA), "calibration_images": args.calibration_images}
            if kw.get("int8")
            else {}
        )
        result = export_checkpoint(checkpoint, folder / file, overwrite=True, fidelity=False, **kw, **extra)
        notes[file] = {"seconds": time.perf_counter() - t, "dynamic": result.dynamic}
    return {"files": notes}


def fastest_fp32(name: str, checkpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    """The fastest faithful fp32 path at batch 1 (``seglab.bench.latency``'s paths, checked against eager)."""
    from seglab.bench.latency import ModelSpec, benchmark_models

    result = benchmark_models(
        [ModelSpec(name, checkpoint=checkpoint)],
        sizes=(SIZE,),
        batch_sizes=(1,),
        paths=FP32_CANDIDATES,
        warmup=args.warmup,
        iters=max(3, args.iters // 2),
    )
    rows = [r for r in result["rows"] if r.get("latency_ms") is not None]
    faithful = [r for r in rows if r.get("faithful")]
    best = min(faithful, key=lambda r: r["latency_ms"])
    return {
        "path": best["path"],
        "max_abs_diff": best["max_abs_diff"],
        "candidates": {r["path"]: [r["latency_ms"], r.get("max_abs_diff"), r.get("faithful")] for r in rows},
    }


def runner(name: str, path: str, checkpoint: str, fp32_path: str, args: argparse.Namespace):
    """``path``'s model as a callable on an (N, 3, H, W) tensor, loaded as seglab's commands load it."""
    import torch

    from seglab.checkpoint import load_checkpoint

    file, _ = PATHS[path]
    if path == "fastest faithful fp32" and fp32_path == "onnxruntime":
        file = FP32_ONNX
    if file is not None:
        return load_checkpoint(args.out / name / file, threads=torch.get_num_threads())[0]
    model, _ = load_checkpoint(checkpoint)
    if path == "torch fp32 eager" or fp32_path == "eager":
        return model
    from seglab.bench.latency import (
        prepare_path,  # the benchmark's own path set-up (channels_last, fold_bn, ...)
    )

    x = torch.zeros(1, 3, SIZE, SIZE)
    return prepare_path(fp32_path, model, x, torch.device("cpu"), args.out / name)[0]


def measure(
    name: str, path: str, checkpoint: str, fp32_path: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Latency p50/p95 and throughput at each batch, and this process's peak resident memory (run in a fresh
    process by ``timed``)."""
    import torch

    from seglab.bench.latency import quantile, time_callable

    fn = runner(name, path, checkpoint, fp32_path, args)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for batch in BATCHES:
            x = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
            times, _ = time_callable(lambda t=x: fn(t), args.warmup, args.iters, torch.device("cpu"))
            p50 = statistics.median(times)
            out[f"b{batch}"] = {
                "p50_ms": 1000 * p50,
                "p95_ms": 1000 * quantile(times, 0.95),
                "fps": batch / p50,
            }
    status = Path("/proc/self/status").read_text()
    hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), None)
    out["peak_rss_mb"] = int(hwm) / 1024 if hwm else None
    return out


def timed(name: str, path: str, checkpoint: str, fp32_path: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` in a fresh Python process (its own peak memory; no runtime's threads left behind)."""
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        json.dumps([name, path, checkpoint, fp32_path]),
        "--out",
        str(args.out),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {path}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def score(name: str, path: str, checkpoint: str, fp32_path: str, args: argparse.Namespace) -> dict[str, Any]:
    """mIoU of ``path``'s model on the test split through ``seglab.evaluate`` (the file itself)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from facade import evaluate_seglab  # the same evaluate() route, with --test-limit's first N photos

    file, _ = PATHS[path]
    if path == "fastest faithful fp32":
        if fp32_path != "onnxruntime":
            return {"same_as": "torch fp32 eager"}
        file = FP32_ONNX
    target = Path(checkpoint) if file is None else args.out / name / file
    report = evaluate_seglab(target, args.out / name / f"eval-{path.replace(' ', '-')}.json", args.test_limit)
    return {"miou": float(report["miou"]), "pixel_accuracy": float(report["pixel_accuracy"])}


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.out / name
    trained = stage(folder / "train.json", args, {"budget_s": args.budget_s}, lambda: train(name, args))
    if args.stage == "train":
        return {}
    ckpt = trained["checkpoint"]
    stage(
        folder / "export.json",
        args,
        {"checkpoint": ckpt, "calibration_images": args.calibration_images},
        lambda: export(name, ckpt, args),
    )
    timing = {"iters": args.iters, "warmup": args.warmup, "threads": args.threads, "checkpoint": ckpt}
    choice = stage(folder / "fp32-choice.json", args, timing, lambda: fastest_fp32(name, ckpt, args))
    rows = {}
    for path in PATHS:
        slug = path.replace(" ", "-")
        t = stage(
            folder / f"time-{slug}.json",
            args,
            {**timing, "fp32": choice["path"]},
            lambda p=path: timed(name, p, ckpt, choice["path"], args),
        )
        m = stage(
            folder / f"miou-{slug}.json",
            args,
            {"checkpoint": ckpt, "test_limit": args.test_limit, "fp32": choice["path"]},
            lambda p=path: score(name, p, ckpt, choice["path"], args),
        )
        rows[path] = {**t, **m}
    for r in rows.values():
        if "same_as" in r:
            r["miou"], r["note"] = rows[r["same_as"]]["miou"], f"{choice['path']}: eager's weights, same mIoU"
    return {"train": trained, "fp32": choice, "rows": rows}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | path | b1 img/s | b1 p50 / p95 ms | b8 img/s | b8 p50 / p95 ms | × eager b1 | × eager b8 | "
        "peak RSS MB | test mIoU | Δ mIoU (points) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        base = res["rows"]["torch fp32 eager"]
        for path, r in res["rows"].items():
            label = f"{path} ({res['fp32']['path']})" if path == "fastest faithful fp32" else path
            lines.append(
                f"| {name} | {label} | {r['b1']['fps']:.2f} | {r['b1']['p50_ms']:.0f} / {r['b1']['p95_ms']:.0f} | "
                f"{r['b8']['fps']:.2f} | {r['b8']['p50_ms']:.0f} / {r['b8']['p95_ms']:.0f} | "
                f"{r['b1']['fps'] / base['b1']['fps']:.2f} | {r['b8']['fps'] / base['b8']['fps']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {r['miou']:.4f} | {100 * (r['miou'] - base['miou']):+.2f} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from seglab.config import parse_duration

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="10m", help="training wall time per model (default: 10m)")
    p.add_argument("--only", nargs="+", choices=list(MODELS), help="models to run (default: all)")
    p.add_argument("--stage", choices=["train", "all"], default="all", help="train only, or everything")
    p.add_argument("--fresh", action="store_true", help="redo the chosen models' saved stages")
    p.add_argument("--calibration-images", type=int, default=64, help="int8 calibration photos (default: 64)")
    p.add_argument("--test-limit", type=int, help="score only the first N test photos (a quick look)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per batch size (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before them (default: 3)")
    p.add_argument("--threads", type=int, default=2, help="threads of torch and every runtime (default: 2)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-deploy")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one path's timing in a fresh process
    args = p.parse_args(argv)
    args.budget_s = parse_duration(args.budget, "--budget")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(*json.loads(args.measure), args)))
        return
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not available")
    results = {}
    for name in args.only or MODELS:
        print(f"{name}: {MODELS[name][2]}", file=sys.stderr)
        results[name] = run_model(name, args)
    if args.stage == "train":
        return
    text = (
        f"LabelMeFacade deployment paths on {machine()}; training {args.budget} per model; 512x512 inputs, "
        f"{args.iters} timed calls after {args.warmup}; mIoU on "
        f"{args.test_limit or 845} test photos at full resolution; int8 calibrated on {args.calibration_images} "
        "training photos.\n\n" + table(results)
    )
    print(text)
    save_text = args.out / "results.md"
    from seglab.files import atomic_write

    atomic_write(save_text, lambda tmp: tmp.write_text(text + "\n"))


if __name__ == "__main__":
    main()
