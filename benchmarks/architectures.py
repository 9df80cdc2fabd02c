"""Every registered architecture trained on LabelMeFacade for the same wall budget, placed on the speed/accuracy front.

Each architecture of ``seglab.models.factory.list_models()`` is trained, one after the other on the same machine,
through seglab's own engine with configs/labelmefacade-scratch.yaml's data and training settings (100 training
photos downscaled by 2, random 256x256 crops with scale jitter, flips and colour jitter, batch 8, AdamW at 3e-3 on
a poly schedule over the budget, cross-entropy with median-frequency class weights + Dice; 10 of the 100 photos
carved out for validation, which picks the best epoch) and ``train.time_limit`` = ``--budget`` (default 5m). Only
``model`` changes: the ``ARCHS`` table below, one encoder family where one fits (timm ``resnet18``, random init,
no download), each row with its reason.

Per architecture: test mIoU and pixel accuracy on the 845 official test photos at the labels' full resolution
(``seglab.evaluate``, as benchmarks/facade.py), optimizer steps and epochs reached, parameters, GMACs at 512x512
(``seglab.bench.cost.count_cost``) and CPU latency / FPS at batch 1, 512x512, eager (``benchmark_models`` of
seglab/bench/latency.py, on the trained checkpoint), with the machine and the budget. Prints a Markdown table with
the Pareto front over (latency, mIoU) marked (``seglab.bench.report.pareto_front``), writes it to
``<out>/results.md`` and draws ``docs/figures/architectures.png`` (latency against mIoU, the front drawn).

Each architecture's result is written to ``<out>/<arch>.json`` (atomically) as soon as it is scored, its run to
``<out>/<arch>/`` (its optimizer state last.state.pt removed once scored: it resumes per architecture, not
per epoch). A rerun skips the architectures already there with the same settings (budget, test photos,
model parameters, timing), so an interrupted run resumes, and ``--only``/``--skip`` split the work across sessions
sharing ``<out>``; ``--fresh`` redoes the chosen ones. The table and figure cover every saved result with the
current settings, whichever session made it.

    .venv/bin/python benchmarks/architectures.py                    # 13 x 5 min + scoring: about 1.5 h on 2 cores
    .venv/bin/python benchmarks/architectures.py --only unet,fpn,segformer      # a share of the work
    .venv/bin/python benchmarks/architectures.py --budget 20s --test-limit 5 --only unet,fpn --out /tmp/arch
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "labelmefacade"
CONFIG = ROOT / "configs" / "labelmefacade-scratch.yaml"
FIGURE = ROOT / "docs" / "figures" / "architectures.png"
R18 = {"encoder": "resnet18"}  # timm's ResNet-18, weights=None: random init, nothing downloaded

# arch: (model params, why). Step times: batch 8 of 256x256 crops, forward + backward, 2-core CPU; GMACs at 512x512.
ARCHS: dict[str, tuple[dict[str, Any], str]] = {
    "plain_fcn": (
        {"widths": [16, 32, 32, 16]},
        "the course's full-resolution stack at small widths (5 GMACs): its default 16..128..32 is ~50 GMACs",
    ),
    "fcn": ({**R18, "variant": "8s"}, "FCN-8s on ResNet-18, defaults"),
    "segnet": (
        {"encoder": "vgg", "base_channels": 16},
        "its own VGG (max unpooling needs the pooling indices) at base 16 (1.9 M, 11 GMACs; base 64 is 29 M)",
    ),
    "unet": (R18, "smp's decoder widths 256..16 on ResNet-18, defaults"),
    "unetplusplus": (
        R18,
        "defaults (smp's widths): nested skips at 1/2 and 1/4 cost 64 GMACs, its real price",
    ),
    "linknet": (R18, "defaults (LinkNet's own encoder is ResNet-18)"),
    "deeplabv3": (R18, "defaults: output stride 16 (8 is 3x the MACs on 2 cores)"),
    "deeplabv3plus": (R18, "defaults: output stride 16, 256-channel ASPP and stride-4 decoder"),
    "fpn": (R18, "defaults: pyramid 256, segmentation 128 channels"),
    "pspnet": (
        {**R18, "output_stride": 16},
        "output stride 16, not the default 8: 21 GMACs instead of 67 (a dilated layer3+4 at 1/8 on 2 cores)",
    ),
    "upernet": (
        {**R18, "channels": 128},
        "fusion channels 128, not 256: the 3x3 convs at 1/4 take 62 GMACs at 256 and 23 at 128",
    ),
    "lraspp": (R18, "defaults on ResNet-18 (same family; its MobileNetV3 is the usual pairing)"),
    "segformer": (
        {"encoder": "mit_b0"},
        "its native Mix Transformer MiT-B0 (3.7 M), 256-channel MLP decoder",
    ),
}


def machine() -> str:
    from seglab.bench.latency import device_name

    return (
        f"{device_name(torch.device('cpu'))}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )


def model_params(arch: str) -> tuple[dict[str, Any], str]:
    """The table's row for ``arch``; an architecture registered after this table trains with its defaults."""
    return ARCHS.get(arch, ({}, "not in the table: the architecture's defaults"))


def settings_of(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """What an architecture's result depends on: a saved result with other settings is redone."""
    return {
        "budget_s": args.budget_s,
        "test_limit": args.test_limit,
        "params": model_params(arch)[0],
        "latency": {"size": 512, "batch": 1, "warmup": args.warmup, "iters": args.iters},
        "config": CONFIG.name,
    }


def load_done(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The result saved at ``path`` when it was made with ``settings``, else None (missing, unreadable, other
    settings: redo it)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("settings") == settings else None


def save_result(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` atomically (a temporary name in the same folder, then a rename)."""
    from seglab.files import write_json

    write_json(path, result)


def train_arch(arch: str, out: Path, budget_s: float):
    """Train ``arch`` with the scratch config's data and training settings for ``budget_s`` seconds."""
    from seglab.config import Config
    from seglab.engine.train import train

    data = Config.load(CONFIG).to_dict()
    data["model"] = {"arch": arch, "params": model_params(arch)[0]}
    data["train"].update(out_dir=str(out / arch), time_limit=budget_s, progress=False)
    data["data"]["root"] = str(DATA)
    return train(Config.from_dict(data), overwrite=True)


def time_model(arch: str, checkpoint: Path, miou: float, warmup: int, iters: int) -> dict[str, Any]:
    """Parameters, GMACs, latency and FPS of the trained model at batch 1, 512x512, eager, on the CPU, through
    seglab's benchmark code (``benchmark_models``: median of ``iters`` timed calls after ``warmup``)."""
    from seglab.bench.latency import ModelSpec, benchmark_models

    result = benchmark_models(
        [ModelSpec(arch, checkpoint=str(checkpoint))],
        sizes=(512,),
        batch_sizes=(1,),
        warmup=warmup,
        iters=iters,
        device="cpu",
        miou={arch: miou},
    )
    row = result["rows"][0]
    if row.get("latency_ms") is None:
        raise RuntimeError(f"{arch}: timing failed: {row.get('note')}")
    keep = ("params", "gmacs", "latency_ms", "p90_ms", "fps", "peak_mem_mb")
    return {k: row[k] for k in keep} | {"timing_protocol": result["protocol"]}


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from facade import evaluate_seglab  # the same evaluate() route, with --test-limit's first N photos

    t = time.perf_counter()
    result = train_arch(arch, args.out, args.budget_s)
    train_s = time.perf_counter() - t
    last = result.history[-1] if result.history else {}
    setup_s = train_s - sum(r.get("seconds", 0.0) for r in result.history)  # data, class weights, amp probe
    print(f"{arch}: {last.get('steps', 0)} steps in {train_s / 60:.1f} min; scoring", file=sys.stderr)
    t = time.perf_counter()
    report = evaluate_seglab(result.best_checkpoint, args.out / arch / "eval-test.json", args.test_limit)
    eval_s = time.perf_counter() - t
    (args.out / arch / "last.state.pt").unlink(
        missing_ok=True
    )  # the optimizer state (2/3 of the disk): no resume
    best = max(result.history, key=lambda r: r.get("val_miou", -1.0)) if result.history else {}
    return {
        "arch": arch,
        "reason": model_params(arch)[1],
        "machine": machine(),
        "checkpoint": str(result.best_checkpoint),
        "train_s": train_s,
        "setup_s": setup_s,
        "eval_s": eval_s,
        "steps": last.get("steps", 0),
        "epochs": last.get("epoch", 0),
        "best_epoch": best.get("epoch", 0),
        "val_miou": best.get("val_miou"),
        "miou": float(report["miou"]),
        "pixel_accuracy": float(report["pixel_accuracy"]),
        "iou": report.get("iou"),
        "test_images": report.get("num_images", args.test_limit),
        **time_model(arch, result.best_checkpoint, float(report["miou"]), args.warmup, args.iters),
    }


def with_front(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results sorted by latency, each with ``front``: on the Pareto front of (latency, mIoU) -- no other
    model both as fast or faster and as accurate or more (``pareto_front`` over (FPS, mIoU), FPS = 1 / latency)."""
    from seglab.bench.report import pareto_front

    rows = sorted(results, key=lambda r: r["latency_ms"])
    front = set(pareto_front([(1000.0 / r["latency_ms"], r["miou"]) for r in rows]))
    return [{**r, "front": i in front} for i, r in enumerate(rows)]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| arch | front | mIoU | pixel acc | params | GMACs 512² | latency ms | FPS | steps | epochs | set-up s | model |",
        "|---|:-:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in model_params(r["arch"])[0].items()) or "defaults"
        lines.append(
            f"| {r['arch']} | {'**★**' if r['front'] else ''} | {r['miou']:.3f} | {r['pixel_accuracy']:.3f} | "
            f"{r['params'] / 1e6:.2f} M | {r['gmacs']:.1f} | {r['latency_ms']:.0f} | {r['fps']:.2f} | "
            f"{r['steps']} | {r['epochs']} | {r['setup_s']:.0f} | {params} |"
        )
    return "\n".join(lines)


def header(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    machines = "; ".join(sorted({r["machine"] for r in rows}))
    images = sorted({r["test_images"] for r in rows})
    return (
        f"LabelMeFacade, **{args.budget} of training per architecture** (train.time_limit, "
        f"{CONFIG.relative_to(ROOT)}'s settings), on {machines}. Test mIoU on {'/'.join(map(str, images))} test "
        f"photos at the labels' full resolution; latency: batch 1, 512x512, eager, median of {args.iters} "
        f"(seglab.bench.latency); ★ = Pareto front over (latency, mIoU). The budget includes the engine's "
        "set-up (data, class weights, the amp probe): the set-up column."
    )


def figure(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """CPU latency (log) against test mIoU, one labelled point per architecture (area ~ GMACs), front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from seglab.files import atomic_write

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    xs, ys = [r["latency_ms"] for r in rows], [r["miou"] for r in rows]
    sizes = [20 + 4 * r["gmacs"] for r in rows]
    colours = ["tab:red" if r["front"] else "tab:blue" for r in rows]
    ax.scatter(xs, ys, s=sizes, c=colours, alpha=0.7, edgecolors="k", linewidths=0.5)
    front = [r for r in rows if r["front"]]
    ax.step(
        [r["latency_ms"] for r in front],
        [r["miou"] for r in front],
        where="post",
        c="tab:red",
        lw=1.2,
        label="Pareto front: no other model both faster and more accurate",
    )
    for r in rows:
        ax.annotate(
            f"{r['arch']}\n{r['gmacs']:.0f} GMACs",
            (r["latency_ms"], r["miou"]),
            fontsize=7,
            xytext=(5, 3),
            textcoords="offset points",
            fontweight="bold" if r["front"] else "normal",
        )
    ax.set_xscale("log")
    nice = [m * 10**e for e in range(0, 5) for m in (1, 2, 3, 5)]
    ticks = [v for v in nice if min(xs) <= v <= max(xs)]
    if len(ticks) < 2:  # a narrow range: its ends too
        ticks = sorted({round(min(xs)), round(max(xs)), *ticks})
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.12, y=0.1)
    ax.set_xlabel("CPU latency, batch 1, 512x512 (ms, log; lower is faster)")
    ax.set_ylabel("test mIoU at full resolution")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from seglab.config import parse_duration
    from seglab.models.factory import list_models

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="5m", help="training wall time per architecture (default: 5m)")
    p.add_argument("--only", help="comma-separated architectures to run (default: every registered one)")
    p.add_argument("--skip", help="comma-separated architectures not to run")
    p.add_argument("--fresh", action="store_true", help="redo the chosen architectures even if saved")
    p.add_argument("--test-limit", type=int, help="score only the first N test photos (a quick look)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per latency (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before them (default: 2)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-architectures")
    p.add_argument(
        "--figure",
        type=Path,
        help=f"the plot (default: {FIGURE.relative_to(ROOT)}; with --test-limit, <out>/architectures.png)",
    )
    args = p.parse_args(argv)
    known = list_models()
    only = [a.strip() for a in (args.only or ",".join(known)).split(",") if a.strip()]
    skip = {a.strip() for a in (args.skip or "").split(",") if a.strip()}
    unknown = [a for a in [*only, *skip] if a not in known]
    if unknown:
        p.error(f"unknown architecture {unknown[0]!r}; registered: {', '.join(known)}")
    if (args.test_limit is not None and args.test_limit < 1) or args.iters < 1 or args.warmup < 0:
        p.error("--test-limit and --iters must be >= 1, --warmup >= 0")
    args.archs = [a for a in only if a not in skip]
    args.budget_s = parse_duration(args.budget, "--budget")
    args.known = known
    if args.figure is None:
        args.figure = args.out / "architectures.png" if args.test_limit else FIGURE
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not available")
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in args.archs:
        path = args.out / f"{arch}.json"
        if not args.fresh and load_done(path, settings_of(arch, args)) is not None:
            print(f"{arch}: done before ({path}), skipped (--fresh redoes it)", file=sys.stderr)
            continue
        print(f"{arch}: training for {args.budget} ({model_params(arch)[1]})", file=sys.stderr)
        try:
            result = {"settings": settings_of(arch, args), **run_arch(arch, args)}
        except Exception as e:  # noqa: BLE001 - one architecture failing does not end the others' runs
            print(f"{arch}: FAILED, nothing saved: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        save_result(path, result)
        print(f"{arch}: mIoU {result['miou']:.4f}, {result['latency_ms']:.0f} ms -> {path}", file=sys.stderr)
    # every saved result with the current settings, whichever session (--only/--skip share) made it
    done = {a: load_done(args.out / f"{a}.json", settings_of(a, args)) for a in args.known}
    missing = [a for a, r in done.items() if r is None]
    rows = with_front([r for r in done.values() if r is not None])
    if not rows:
        sys.exit("no results with these settings yet")
    text = header(rows, args) + "\n\n" + table(rows)
    if missing:
        text += f"\n\nNot run yet with these settings: {', '.join(missing)}."
    print("\n" + text)
    from seglab.files import atomic_write

    atomic_write(args.out / "results.md", lambda tmp: tmp.write_text(text + "\n"))
    title = (
        f"LabelMeFacade, {args.budget} of training each (set-up included), "
        f"{rows[0]['test_images']} test photos\n{rows[0]['machine']}"
    )
    figure(rows, args.figure, title)
    print(f"\nresults: {args.out / 'results.md'}\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
