"""The seglab command line: each subcommand parses arguments into a config and calls one engine function.

Only argparse is imported at start-up; torch, torchvision and timm load inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_demo(args: argparse.Namespace) -> None:
    from seglab.engine.demo import demo
    from seglab.engine.evaluate import format_table

    r = demo(args.out, num_images=args.num, epochs=args.epochs, progress=not args.no_progress)
    print(format_table(r))
    print(f"best validation mIoU {r['val_miou']:.4f}; test mIoU {r['miou']:.4f}")
    print(
        f"wall time {r['seconds_total']:.0f} s (data {r['seconds_data']:.0f} s, training {r['seconds_train']:.0f} s)"
    )
    print(
        f"data:        {r['data_dir']}\nrun:         {r['run_dir']}  (checkpoints, config.yaml, metrics.jsonl)"
    )
    print(f"evaluation:  {r['report_path']}\npredictions: {args.out}/predictions")


def _train_config(args: argparse.Namespace):
    from seglab.config import Config

    cfg = Config.load(args.config) if args.config else Config()
    flags = {"data.root": args.data, "train.out_dir": args.out, "train.epochs": args.epochs,
             "train.batch_size": args.batch_size, "train.lr": args.lr, "train.device": args.device}  # fmt: skip
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set or [])
    cfg = cfg.override(overrides)
    if args.no_progress:
        cfg.train.progress = False
    return cfg


def _cmd_train(args: argparse.Namespace) -> None:
    cfg = _train_config(args)
    if args.print_config:
        print(cfg.dump(), end="")
        return
    from seglab.engine.train import train

    r = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"best validation mIoU {r.best_metrics['miou']:.4f} at epoch {r.best_metrics['epoch']} "
          f"({r.seconds:.0f} s); checkpoints in {r.run_dir}")  # fmt: skip


def _uncertainty_config(args: argparse.Namespace, predict: bool):
    """The UncertaintyConfig of the --uncertainty flags, or None without them (``--ensemble`` implies ensemble)."""
    method = args.uncertainty or ("ensemble" if args.ensemble else None)
    if method is None:
        defaults = {
            "samples": 20,
            "add_dropout": 0.0,
            "tta_scales": [1.0],
            "map": "entropy",
            "save_maps": False,
        }
        changed = [k for k, v in defaults.items() if getattr(args, k, v) != v]
        if changed:
            from seglab.errors import ConfigError

            raise ConfigError(
                f"--{changed[0].replace('_', '-')} applies only with --uncertainty METHOD; add one"
            )
        return None
    from seglab.uncertainty.config import UncertaintyConfig

    extra = {"heatmap": args.map, "save_maps": args.save_maps} if predict else {"bins": args.bins}
    return UncertaintyConfig(method=method, samples=args.samples, seed=args.seed, add_dropout=args.add_dropout,
                             flips=args.tta_flips, scales=args.tta_scales, ensemble=list(args.ensemble or []),
                             **extra)  # fmt: skip


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from seglab.engine.evaluate import evaluate, format_table

    r = evaluate(args.checkpoint, args.data, args.split, batch_size=args.batch_size, out=args.out,
                 device=args.device, progress=not args.no_progress, uncertainty=_uncertainty_config(args, predict=False))  # fmt: skip
    print(format_table(r))
    print(f"report: {r['report_path']}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from seglab.engine.predict import predict

    cfg = _uncertainty_config(args, predict=True)
    results = predict(args.checkpoint, args.inputs, args.out, write_overlay=not args.no_overlay,
                      device=args.device, progress=not args.no_progress, uncertainty=cfg)  # fmt: skip
    what = "" if args.no_overlay else " and overlays"
    if cfg is not None:
        what += f", {cfg.heatmap} heatmaps ({cfg.describe()})" + (" and .npz maps" if cfg.save_maps else "")
    print(f"wrote {len(results)} masks{what} to {args.out}")


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from seglab.engine.evaluate import calibrate

    r = calibrate(args.checkpoint, args.data, args.split, batch_size=args.batch_size, device=args.device,
                  progress=not args.no_progress)  # fmt: skip
    print(f"temperature {r['temperature']:.4f} fitted on {r['pixels']} pixels of {r['num_images']} images "
          f"({r['split']}): NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, "
          f"ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}")  # fmt: skip
    print(f"written to {r['sidecar']}; predict and evaluate now divide the logits by it")


def _cmd_synth(args: argparse.Namespace) -> None:
    from seglab.data.synthetic import write_folder

    out = write_folder(
        args.out, num_images=args.num, size=args.size, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote {args.num} SyntheticShapes images ({args.size}x{args.size}) to {out}")


def _cmd_check(args: argparse.Namespace) -> int:
    from seglab.data.check import check, format_check

    report = check(args.root, ignore_index=args.ignore_index)
    print(format_check(report))
    return 2 if report.problems else 0


def _uncertainty_flags(sp: argparse.ArgumentParser, predict: bool) -> None:
    from seglab.uncertainty.config import FLIP_NAMES, HEATMAPS, METHODS

    g = sp.add_argument_group("uncertainty")
    g.add_argument("--uncertainty", choices=METHODS, help="predict with per-pixel uncertainty"
                   + (": writes <stem>_uncertainty.png heatmaps" if predict else ": adds ECE, NLL, Brier, AUROC"))  # fmt: skip
    g.add_argument("--samples", type=int, default=20, help="MC dropout passes (default: 20)")
    g.add_argument("--ensemble", nargs="+", metavar="CKPT", help="further checkpoints of the same classes")
    g.add_argument("--tta-flips", nargs="+", choices=FLIP_NAMES, default=list(FLIP_NAMES),
                   help="TTA flips: none, h, v, hv (default: all four)")  # fmt: skip
    g.add_argument("--tta-scales", nargs="+", type=float, default=[1.0], help="TTA scales (default: 1)")
    g.add_argument("--add-dropout", type=float, default=0.0, metavar="P",
                   help="MC dropout on a model without dropout: add Dropout2d(P) before the head")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="seed of the MC dropout masks (default: 0)")
    if predict:
        g.add_argument("--map", choices=HEATMAPS, default="entropy",
                       help="heatmap: predictive entropy or mutual information, scale 0..log C (default: entropy)")  # fmt: skip
        g.add_argument(
            "--save-maps", action="store_true", help="also write every raw map as <stem>_uncertainty.npz"
        )
    else:
        g.add_argument("--bins", type=int, default=15, help="calibration bins (default: 15)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seglab", description="Semantic image segmentation: train, evaluate, predict."
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, device: str | None = "cpu") -> None:
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        if device != "none":
            sp.add_argument(
                "--device", default=device, help=f"cpu, cuda or auto (default: {device or 'config'})"
            )

    d = sub.add_parser("demo", help="synthesise data, train, evaluate and predict (the README's main job)")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--num", type=int, default=1500, help="number of synthetic images (default: 1500)")
    d.add_argument("--epochs", type=int, default=12, help="training epochs (default: 12)")
    common(d, device="none")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a model from a YAML config and flags")
    t.add_argument("config", nargs="?", help="YAML config (sections data, model, train); defaults if omitted")
    t.add_argument("--data", help="folder data set (sets data.root)")
    t.add_argument("--out", help="run folder (sets train.out_dir)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. model.params.depth=5",
    )
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument(
        "--overwrite", action="store_true", help="restart a run folder that already has checkpoints"
    )
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    common(t, device=None)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="pixel accuracy, IoU, mIoU and Dice of a checkpoint on a data set")
    e.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    e.add_argument("--data", required=True, help="folder data set")
    e.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--out", help="JSON report path (default: eval-<split>.json beside the checkpoint)")
    _uncertainty_flags(e, predict=False)
    common(e)
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="write index masks and overlays for images or folders of images")
    pr.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--no-overlay", action="store_true", help="write only the masks")
    _uncertainty_flags(pr, predict=True)
    common(pr)
    pr.set_defaults(func=_cmd_predict)

    ca = sub.add_parser(
        "calibrate", help="fit a checkpoint's temperature on a split and store it in its sidecar"
    )
    ca.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    ca.add_argument("--data", required=True, help="folder data set")
    ca.add_argument("--split", default="val", choices=["train", "val", "test", "all"])
    ca.add_argument("--batch-size", type=int, default=8)
    common(ca)
    ca.set_defaults(func=_cmd_calibrate)

    data = sub.add_parser("data", help="data set tools: synth, check")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    s = dsub.add_parser("synth", help="write the built-in SyntheticShapes data set as a folder")
    s.add_argument("--out", required=True)
    s.add_argument("--num", type=int, default=1000)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=_cmd_synth)
    c = dsub.add_parser("check", help="count images, sizes and class frequencies; report every problem")
    c.add_argument("root", help="folder data set")
    c.add_argument("--ignore-index", type=int, default=255)
    c.set_defaults(func=_cmd_check)
    return p


def _version() -> str:
    from seglab import __version__

    return f"seglab {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    from seglab.errors import SeglabError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except SeglabError as e:
        print(f"seglab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seglab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
