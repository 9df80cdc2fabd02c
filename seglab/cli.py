"""The seglab command line: each subcommand parses arguments into a config and calls one engine function.

Only argparse is imported at start-up; torch, torchvision and timm load inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from seglab import validate as V


def _cmd_demo(args: argparse.Namespace) -> None:
    from seglab.demo import demo
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
    print(f"report:      {r['report_html']}")


def _train_config(args: argparse.Namespace):
    """The config of ``seglab train``: a YAML file, a saved plan (``--plan``), a fresh plan (no config, ``--data``
    and ``--time-limit``, unless ``--no-plan``) or the defaults; then the flags, then ``--set``. A planned config
    records which of its keys the flags changed (``plan.overridden``)."""
    from seglab.config import Config
    from seglab.errors import ConfigError

    if args.plan and args.config:
        raise ConfigError(
            f"give a config ({args.config}) or --plan {args.plan}, not both; --set KEY=VALUE changes either"
        )
    if (
        args.time_limit is not None
    ):  # checked as typed: an empty flag ("$UNSET") would read as YAML null, no limit
        from seglab.config import parse_duration

        parse_duration(args.time_limit, "--time-limit")
    flags = {
        "data.root": args.data,
        "data.format": args.format,
        "train.out_dir": args.out,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.device": args.device,
        "train.time_limit": args.time_limit,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set or [])
    if args.config or args.plan:
        base = Config.load(args.config or args.plan)
    elif args.no_plan or not (args.resume or args.time_limit is not None):
        base = Config()
    else:  # the flags are checked before the (slow) plan is made
        base = _planned(args, Config().override(overrides))
        if (
            base.plan is not None and not args.resume
        ):  # the budget covers the planning: the plan's limit stands
            overrides = [o for o in overrides if not o.startswith("train.time_limit=")]
    cfg = base.override(overrides).note_overrides(base)
    if args.no_progress:
        cfg.train.progress = False
    return cfg


def _planned(args: argparse.Namespace, flagged: Any) -> Any:
    """The config ``seglab plan`` makes for the data set and time limit of ``flagged`` (the defaults with the
    flags), its summary printed to stderr (stdout is for results and --print-config); the defaults without a data
    set. ``--resume`` does not plan again: it takes the run's plan.yaml, with or without --time-limit (the
    defaults, as before, for a run trained without a plan), so the resumed run trains what it started with."""
    from pathlib import Path

    from seglab.config import Config
    from seglab.errors import ConfigError

    if args.resume:
        saved = Path(flagged.train.out_dir) / "plan.yaml"
        if saved.is_file():
            print(f"seglab: resuming with the run's plan {saved} (not planned again)", file=sys.stderr)
            return Config.load(saved)
        return Config()
    if flagged.data.root is None:
        return Config()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each rank would measure, and may choose, differently
        raise ConfigError(
            f"under torchrun, plan once first: seglab plan {flagged.data.root} --time-limit {args.time_limit} "
            "--out plan.yaml, then train with --plan plan.yaml"
        )
    from seglab.plan import planner

    kind = None if flagged.data.kind == "auto" else flagged.data.kind
    p = planner.plan(
        flagged.data.root,
        args.time_limit,
        kind=kind,
        format=flagged.data.format,
        ignore_index=flagged.data.ignore_index,
        device=flagged.train.device,
        threads=flagged.train.threads,
        progress=flagged.train.progress and not args.no_progress,
    )
    print(p.summary(), file=sys.stderr)
    # --time-limit is the wall budget of the whole command: what planning took is not trained
    from seglab.config import parse_duration

    budget = parse_duration(args.time_limit, "--time-limit")
    left = round(max(budget - p.seconds, budget / 2), 1)
    p.config.train.time_limit = left
    print(
        f"seglab: planning took {p.seconds:.0f} s of the {args.time_limit} budget; training gets {left:g} s",
        file=sys.stderr,
    )
    return p.config


def _cmd_plan(args: argparse.Namespace) -> None:
    """Thin: check the flags and the output path before any work, plan, print the summary, write the YAML."""
    from pathlib import Path

    from seglab.config import parse_duration
    from seglab.files import OutputKind, atomic_write, guard_file

    parse_duration(args.time_limit, "--time-limit")
    out = None
    if args.out:
        out = guard_file(Path(args.out), OutputKind("plan", (".yaml", ".yml"), _is_plan_file), args.overwrite)
    from seglab.plan import planner

    p = planner.plan(
        args.data,
        args.time_limit,
        kind=None if args.kind in (None, "auto") else args.kind,
        weights=tuple(f"{encoder}={path}" for encoder, path in args.weights or ()),
        ignore_index=args.ignore_index,
        device=args.device,
        format=args.format or "auto",
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(p.summary())
    if out is None:
        print(p.to_yaml(), end="")
        return
    text = p.to_yaml()
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"plan: {out}  (train it: seglab train --plan {out})")


def _is_plan_file(path: Any) -> bool:
    """An earlier plan (``seglab plan --out`` may replace it): a config mapping with a plan section, not a run's
    own plan.yaml (which stays the run's record)."""
    from seglab.files import read_yaml_file, run_root

    doc = read_yaml_file(path)
    ours = isinstance(doc, dict) and "plan" in doc and set(doc) <= {"data", "model", "train", "plan"}
    return ours and run_root(path.parent) != path.parent.resolve()


def _launch(args: argparse.Namespace, cfg: Any = None) -> bool:
    """With ``--nproc N`` (N > 1) outside torchrun: run this very command in N processes through torchrun, without
    the flag, and return True; False otherwise. A config planned here (``cfg.plan`` without a config file) goes to
    the processes as ``--plan FILE``, so they train this plan instead of each making its own."""
    import tempfile
    from pathlib import Path

    from seglab.engine.distributed import launch, launched

    if args.nproc is None or args.nproc == 1 or launched():
        return False
    argv, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    with tempfile.TemporaryDirectory(prefix="seglab-plan-") as tmp:
        if cfg is not None and cfg.plan is not None and not (args.config or args.plan):
            saved = Path(tmp) / "plan.yaml"
            saved.write_text(cfg.as_planned().dump(), encoding="utf-8")
            argv += ["--plan", str(saved)]
        launch(args.nproc, argv)
    return True


def _is_main() -> bool:
    """False in the processes of a distributed job other than rank 0 (which alone prints results)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_train(args: argparse.Namespace) -> None:
    cfg = _train_config(args)
    if args.print_config:
        print(cfg.dump(), end="")
        return
    if _launch(args, cfg):
        return
    from seglab.engine.train import train

    r = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if not _is_main():
        return
    m = r.best_metrics
    best = (
        f"best validation mIoU {m['miou']:.4f} at epoch" if "miou" in m else "no validation split; last epoch"
    )
    print(f"{best} {m['epoch']} ({r.seconds:.0f} s); checkpoints in {r.run_dir}")


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
    return UncertaintyConfig(
        method=method,
        samples=args.samples,
        seed=args.seed,
        add_dropout=args.add_dropout,
        flips=args.tta_flips,
        scales=args.tta_scales,
        ensemble=list(args.ensemble or []),
        **extra,
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    V.check_tiling(args.tile, args.overlap)
    unc = _uncertainty_config(args, predict=False)
    if args.report:  # per-image scores and uncertainty (deterministic unless asked) for the report
        from seglab.reports.report import check_report_dir

        check_report_dir(args.report, args.overwrite)
        unc = unc or "deterministic"
    if _launch(args):
        return
    if args.report and _is_main():  # one writer per run folder: a report into a run holds its lock throughout
        from seglab.reports.report import report_lock

        with report_lock(args.report):
            return _evaluate_and_report(args, unc)
    return _evaluate_and_report(args, unc)


def _evaluate_and_report(args: argparse.Namespace, unc: Any) -> None:
    from seglab.engine.evaluate import evaluate, format_table

    r = evaluate(
        args.checkpoint,
        args.data,
        args.split,
        batch_size=args.batch_size,
        out=args.out,
        device=args.device,
        progress=not args.no_progress,
        uncertainty=unc,
        tile=args.tile,
        overlap=args.overlap,
        rand_class=args.rand_class,
        per_image=bool(args.report),
        overwrite=args.overwrite,
        data_format=args.format or "auto",
        backend=args.backend,
        **_instance_args(args),
    )
    if not _is_main():
        return
    print(format_table(r))
    print(f"report: {r['report_path']}")
    if args.report:
        from seglab.reports.report import render_report

        written = render_report(
            r,
            args.report,
            uncertainty=unc,
            device=args.device,
            overwrite=args.overwrite,
            display_bands=args.display_bands,
        )
        print(f"HTML report: {written['html']}")


def _cmd_report(args: argparse.Namespace) -> None:
    from seglab.reports.report import write_report

    r = write_report(
        args.run,
        args.data,
        args.split,
        out=args.out,
        device=args.device,
        uncertainty=_uncertainty_config(args, predict=False),
        progress=not args.no_progress,
        overwrite=args.overwrite,
        display_bands=args.display_bands,
        data_format=args.format,
    )
    u = r["uncertainty"]
    print(
        f"mIoU {r['miou']:.4f}, pixel accuracy {r['pixel_accuracy']:.4f} on {r['num_images']} images "
        f"({r['split']}); ECE {u['ece']:.4f}, AURC {u['aurc_entropy']:.4f} ({u['description']})"
    )
    print(f"report: {r['html']}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from seglab.engine.predict import predict

    V.check_tiling(args.tile, args.overlap)
    cfg = _uncertainty_config(args, predict=True)
    results = predict(
        args.checkpoint,
        args.inputs,
        args.out,
        write_overlay=not args.no_overlay,
        device=args.device,
        progress=not args.no_progress,
        uncertainty=cfg,
        tile=args.tile,
        overlap=args.overlap,
        prob_maps=args.prob or (),
        threshold=args.threshold,
        log=lambda line: print(f"seglab: {line}", file=sys.stderr),
        overwrite=args.overwrite,
        display_bands=args.display_bands,
        backend=args.backend,
        nproc=args.nproc,
        threads=args.threads,
        skip_existing=args.skip_existing,
        **_instance_args(args),
    )
    if not _is_main():  # under torchrun rank 0 prints the whole job's summary
        return
    done = [r for r in results if not r.get("skipped")]
    what = "" if args.no_overlay else " and overlays"
    if args.instances:
        what += f", instance maps ({args.instances}, {sum(r['objects'] for r in done)} objects) and their overlays"
    if cfg is not None:
        what += f", {cfg.heatmap} heatmaps ({cfg.describe()})" + (" and .npz maps" if cfg.save_maps else "")
    skipped = f"; skipped {len(results) - len(done)} inputs done before" if len(done) < len(results) else ""
    print(f"wrote {len(done)} masks{what} to {args.out}{skipped}")


def _instance_args(args: argparse.Namespace) -> dict[str, Any]:
    """evaluate/predict keywords of the --instances flags (ConfigError for a flag without --instances)."""
    if args.instances is None:
        if args.instance_class is not None or args.instance_param:
            from seglab.errors import ConfigError

            raise ConfigError(
                "--instance-class and --instance-param apply only with --instances METHOD; add one"
            )
        return {}
    from seglab.instances.infer import InstanceParams

    return {
        "instances": args.instances,
        "instance_class": args.instance_class,
        "instance_params": InstanceParams.parse(args.instance_param),
    }


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from seglab.engine.evaluate import calibrate

    r = calibrate(
        args.checkpoint,
        args.data,
        args.split,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        data_format=args.format or "auto",
    )
    print(
        f"temperature {r['temperature']:.4f} fitted on {r['pixels']} pixels of {r['num_images']} images "
        f"({r['split']}): NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, "
        f"ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}"
    )
    print(f"written to {r['sidecar']}; predict and evaluate now divide the logits by it")


def _cmd_synth(args: argparse.Namespace) -> None:
    from seglab.data.synthetic import write_folder

    out = write_folder(
        args.out, num_images=args.num, size=args.size, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote {args.num} SyntheticShapes images ({args.size}x{args.size}) to {out}")


def _cmd_check(args: argparse.Namespace) -> int:
    from seglab.data.check import check, format_check

    given = args.format or "auto"
    report = check(args.root, ignore_index=args.ignore_index, format=given)
    print(format_check(report, given))
    return 2 if report.problems else 0


def _cmd_convert(args: argparse.Namespace) -> None:
    from seglab.data.convert import convert, format_summary

    print(format_summary(convert(args.src, args.out, args.format or "auto", log=_log_line(args))))


def _log_line(args: argparse.Namespace) -> Any:
    """A progress printer to stderr (``seglab: ...``), or None with --no-progress."""
    if args.no_progress:
        return None
    return lambda line: print(f"seglab: {line}", file=sys.stderr)


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from seglab.bench.run import cost_report, run_benchmark

    if args.cost:
        for model in args.cost:
            for size in args.size:
                print(
                    cost_report(
                        model,
                        size,
                        num_classes=args.num_classes or 10,
                        all_layers=args.all_layers,
                        model_params=_yaml_mapping(args.params),
                    )
                )
                print()
        return
    r = run_benchmark(
        args.models,
        args.checkpoints or [],
        args.data,
        args.split,
        args.out,
        log=None if args.no_progress else (lambda m: print(m, file=sys.stderr)),
        sizes=args.size,
        batch_sizes=args.batch,
        paths=args.paths,
        warmup=args.warmup,
        iters=args.iters,
        device=args.device,
        threads=args.threads,
        num_classes=args.num_classes or 21,
        model_params=_yaml_mapping(args.params),
        overwrite=args.overwrite,
        backend=args.backend,
    )
    from seglab.bench.report import to_markdown

    print(to_markdown(r))
    print(f"written: {', '.join(r['outputs'].values())}")


def _cmd_serve(args: argparse.Namespace) -> None:
    import math
    import os

    from seglab.errors import ConfigError
    from seglab.serve.app import ServeConfig, serve

    mib = args.max_upload_mb
    if not (math.isfinite(mib) and mib > 0):
        raise ConfigError(f"--max-upload-mb must be a number of MiB > 0, got {mib}")
    # an empty --token or $SEGLAB_TOKEN is refused by ServeConfig, never taken for "no token"
    token = args.token if args.token is not None else os.environ.get("SEGLAB_TOKEN")
    cfg = ServeConfig(
        device=args.device,
        backend=args.backend,
        token=token,
        max_upload_bytes=max(1, int(mib * 2**20)),
        max_pixels=args.max_pixels,
        max_bytes=args.max_bytes,
        max_work=args.max_work,
        tile=args.tile,
        tile_above=args.tile_above,
        concurrency=args.concurrency,
        queue=args.queue,
        samples=args.samples,
        add_dropout=args.add_dropout,
        body_timeout=args.body_timeout,
        allowed_hosts=[] if args.allowed_hosts is None else args.allowed_hosts.split(","),
    )
    serve(
        args.checkpoint, args.host, args.port, cfg, log=lambda line: print(f"seglab: {line}", file=sys.stderr)
    )


def _yaml_mapping(text: str | None) -> dict | None:
    if not text:
        return None
    import yaml

    from seglab.errors import ConfigError

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--params must be a YAML mapping such as '{{depth: 2, base_channels: 4}}', got {text!r}"
        )
    return value


def _cmd_export(args: argparse.Namespace) -> None:
    from seglab.engine.export import export_checkpoint

    r = export_checkpoint(
        args.checkpoint,
        args.out,
        args.format,
        int8=args.int8,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
        per_tensor=args.per_tensor,
        exclude_ends=args.exclude_ends,
        data=args.data,
        split=args.split,
        fidelity_images=args.fidelity_images,
        max_miou_drop=args.max_miou_drop,
        example_size=tuple(args.example_size),
        dynamic=not args.static,
        check=not args.no_check,
        overwrite=args.overwrite,
    )
    sizes = "dynamic batch and size" if r.dynamic else f"static input {tuple(r.example_shape)}"
    check = "" if r.max_abs_diff is None else f"; max abs logit difference to PyTorch {r.max_abs_diff:.2e}"
    kind = f"{r.format} int8" if r.int8 else r.format
    print(f"wrote {kind} model to {r.path} ({sizes}){check}")
    print(r.fidelity.describe() if r.fidelity else f"fidelity: skipped ({r.fidelity_skipped})")


def _cmd_import_smp(args: argparse.Namespace) -> None:
    from seglab.engine.import_smp import import_smp

    path = import_smp(
        args.checkpoint,
        args.data,
        args.out,
        arch=args.arch,
        encoder=args.encoder,
        fmt=args.format or "auto",
        overwrite=args.overwrite,
    )
    print(f"wrote seglab checkpoint {path}")


def _format_flag(sp: argparse.ArgumentParser, sets: str = "") -> None:
    from seglab.config import FORMATS

    sp.add_argument(
        "--format",
        choices=FORMATS,
        metavar="FORMAT",
        help=f"the data set's layout, read in place: {', '.join(FORMATS)} (default: auto, detected from the "
        f"folder's structure; see docs/formats/){sets}",
    )


def _overwrite_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="also replace a file of another kind at an output path "
        "(earlier outputs of this command are replaced anyway; never a checkpoint, state or data-set file)",
    )


def _nproc_flag(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument(
        "--nproc",
        type=V.processes,
        metavar="N",
        help=f"{what} in N processes on this machine through "
        "torchrun (DDP; one GPU each on CUDA); for several machines run torchrun -m seglab itself",
    )


CHECKPOINT_OR_EXPORTED = (
    "a run folder (its best checkpoint), a .safetensors file, or an exported .onnx / OpenVINO .xml"
)
BACKENDS = ("torch", "onnxruntime", "openvino")  # seglab.models.runtime.BACKENDS (that module imports torch)


def _backend_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the runtime the model runs in (default: the file's own: torch for a checkpoint, onnxruntime for "
        ".onnx, openvino for an OpenVINO .xml); e.g. an .onnx file in openvino; exported runtimes run on the CPU",
    )


def _instance_flags(sp: argparse.ArgumentParser, what: str) -> None:
    from seglab.instances.infer import METHODS

    sp.add_argument(
        "--instances",
        choices=METHODS,
        help=f"also {what} instances: the probabilities split into "
        "objects by connected components, distance-transform watershed, or the learned boundary of a "
        "data.target=interior_boundary model",
    )
    sp.add_argument(
        "--instance-class",
        metavar="CLASS",
        help="the class whose objects are the instances (default: class 1 of a two-class model)",
    )
    sp.add_argument(
        "--instance-param",
        action="append",
        metavar="KEY=VALUE",
        help="post-processing setting: "
        "threshold, min_size, h, seed_threshold, fill (see seglab.instances.infer.InstanceParams)",
    )


def display_bands(text: str) -> tuple[int, ...]:
    """``--display-bands`` (argparse ``type=``): "4,3,2" or "1" (1-based) -> 0-based band indices, one or three,
    else one line and exit 2. Whether each image has those bands is checked against the model before any work."""
    parts = [t.strip() for t in text.split(",")]
    if len(parts) not in (1, 3) or not all(t.isdigit() and int(t) >= 1 for t in parts):
        raise argparse.ArgumentTypeError(
            f"must be one or three 1-based band numbers separated by commas (e.g. 4,3,2 or 1), got {text!r}"
        )
    return tuple(int(t) - 1 for t in parts)


def _display_bands_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--display-bands",
        type=display_bands,
        metavar="B[,G,R]",
        help="the bands pictures show of a multi-band image, 1-based: one (grey) or three as red,green,blue, "
        "e.g. 4,3,2 (default: the first three, or the first)",
    )


def _tile_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--tile", type=V.side, help="overlap-tile inference with tiles of this size (large images)"
    )
    sp.add_argument(
        "--overlap", type=V.overlap, default=32, help="mirrored context around each tile (default: 32)"
    )


def _uncertainty_flags(sp: argparse.ArgumentParser, predict: bool) -> None:
    from seglab.uncertainty.config import FLIP_NAMES, HEATMAPS, METHODS

    g = sp.add_argument_group("uncertainty")
    g.add_argument(
        "--uncertainty",
        choices=METHODS,
        help="predict with per-pixel uncertainty"
        + (": writes <stem>_uncertainty.png heatmaps" if predict else ": adds ECE, NLL, Brier, AUROC"),
    )
    g.add_argument("--samples", type=V.samples, default=20, help="MC dropout passes (default: 20)")
    g.add_argument("--ensemble", nargs="+", metavar="CKPT", help="further checkpoints of the same classes")
    g.add_argument(
        "--tta-flips",
        nargs="+",
        choices=FLIP_NAMES,
        default=list(FLIP_NAMES),
        help="TTA flips: none, h, v, hv (default: all four)",
    )
    g.add_argument("--tta-scales", nargs="+", type=V.scale, default=[1.0], help="TTA scales (default: 1)")
    g.add_argument(
        "--add-dropout",
        type=V.dropout,
        default=0.0,
        metavar="P",
        help="MC dropout on a model without dropout: add Dropout2d(P) before the head",
    )
    g.add_argument("--seed", type=V.seed, default=0, help="seed of the MC dropout masks (default: 0)")
    if predict:
        g.add_argument(
            "--map",
            choices=HEATMAPS,
            default="entropy",
            help="heatmap: predictive entropy or mutual information, scale 0..log C (default: entropy)",
        )
        g.add_argument(
            "--save-maps", action="store_true", help="also write every raw map as <stem>_uncertainty.npz"
        )
    else:
        g.add_argument("--bins", type=V.bins, default=15, help="calibration bins (default: 15)")


class _Parser(argparse.ArgumentParser):
    """argparse with seglab's one-line errors (exit 2): 'seglab serve: error: argument --port: must be ...'."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def encoder_weights(text: str) -> tuple[str, str]:
    """``--weights`` (argparse ``type=``): "ENCODER=FILE" -> (encoder, file), the file existing or a
    ``pkg:MODULE/PATH`` inside an installed package (resolved when used); else one line and exit 2."""
    encoder, sep, path = (t.strip() for t in text.partition("="))
    if not sep or not encoder or not path or any(c.isspace() for c in encoder):
        raise argparse.ArgumentTypeError(
            f"must be ENCODER=FILE, e.g. efficientnet_lite0=weights/lite0.safetensors, got {text!r}"
        )
    if not path.startswith("pkg:") and not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise argparse.ArgumentTypeError(
            f"weights file {path!r} for encoder {encoder} {what}; give a .safetensors or torch state-dict "
            "file, or pkg:MODULE/PATH"
        )
    return encoder, path


def build_parser() -> argparse.ArgumentParser:
    from seglab.config import KINDS

    p = _Parser(prog="seglab", description="Semantic image segmentation: train, evaluate, predict.")
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
    d.add_argument(
        "--num", type=V.positive_int, default=1500, help="number of synthetic images (default: 1500)"
    )
    d.add_argument("--epochs", type=V.positive_int, default=12, help="training epochs (default: 12)")
    common(d, device="none")
    d.set_defaults(func=_cmd_demo)

    pl = sub.add_parser(
        "plan",
        help="fingerprint a data set and this machine and write the config for a time limit, each choice "
        "with its reason",
    )
    pl.add_argument("data", help="data set folder, any layout of --format")
    pl.add_argument(
        "--time-limit",
        default="10m",
        metavar="DURATION",
        help="the training budget to plan for, e.g. 90s, 10m, 1h30m or 1.5h (default: 10m)",
    )
    pl.add_argument(
        "--out",
        metavar="FILE",
        help="write the plan (a config YAML for seglab train --plan FILE) here (default: print it after the "
        "summary)",
    )
    pl.add_argument(
        "--kind",
        choices=KINDS,
        help="what the images are (sets data.kind): " + ", ".join(KINDS) + " (default: auto, inferred from "
        "the data's statistics by a stated rule; the plan prints which)",
    )
    pl.add_argument(
        "--weights",
        action="append",
        type=encoder_weights,
        metavar="ENCODER=FILE",
        help="a local weights file the plan may start an encoder from (repeatable), e.g. "
        "efficientnet_lite0=lite0.safetensors; FILE may be pkg:MODULE/PATH (inside an installed package)",
    )
    _format_flag(pl)
    pl.add_argument(
        "--ignore-index",
        type=V.ignore_index,
        default=255,
        help="the mask value that marks unlabelled pixels (sets data.ignore_index; default: 255)",
    )
    pl.add_argument("--threads", type=V.threads, help="torch CPU threads for the probe (default: torch's)")
    _overwrite_flag(pl)
    common(pl)
    pl.set_defaults(func=_cmd_plan)

    t = sub.add_parser("train", help="train a model from a YAML config, a plan, and flags")
    t.add_argument(
        "config",
        nargs="?",
        help="YAML config (sections data, model, train); if omitted: a plan of the data with --data and "
        "--time-limit, else the defaults",
    )
    t.add_argument(
        "--plan",
        metavar="FILE",
        help="train a saved plan (seglab plan --out FILE, or a run's plan.yaml) instead of a config; the flags "
        "and --set override it",
    )
    t.add_argument(
        "--no-plan",
        action="store_true",
        help="with --data and --time-limit and no config: train the defaults, not a plan",
    )
    t.add_argument("--data", help="data set folder, any layout of --format (sets data.root)")
    _format_flag(t, " (sets data.format)")
    t.add_argument("--out", help="run folder (sets train.out_dir)")
    t.add_argument("--epochs", type=V.positive_int)
    t.add_argument("--batch-size", type=V.positive_int)
    t.add_argument("--lr", type=V.positive_float)
    t.add_argument(
        "--time-limit",
        metavar="DURATION",
        help="wall-clock budget, e.g. 90s, 10m, 1h30m or 1.5h (a bare number: seconds; '1h30' is "
        "refused as ambiguous) (sets train.time_limit): the schedule ends on time",
    )
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
    _nproc_flag(t, "train")
    common(t, device=None)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="pixel accuracy, IoU, mIoU and Dice of a checkpoint on a data set")
    e.add_argument("checkpoint", help=CHECKPOINT_OR_EXPORTED)
    e.add_argument("--data", required=True, help="data set folder, any layout of --format")
    _format_flag(e)
    e.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    e.add_argument("--batch-size", type=V.positive_int, default=8)
    e.add_argument("--out", help="JSON report path (default: eval-<split>.json beside the checkpoint)")
    _tile_flags(e)
    _display_bands_flag(e)
    e.add_argument(
        "--rand-class",
        metavar="CLASS",
        help="also the adapted Rand error (ISBI 2012) of the "
        "connected components of this class (name or index), e.g. the cells between membranes",
    )
    _instance_flags(e, "score")
    _uncertainty_flags(e, predict=False)
    e.add_argument(
        "--report",
        metavar="DIR",
        help="also write the HTML report of this evaluation into DIR "
        "(per-image scores; uncertainty deterministic unless --uncertainty)",
    )
    _overwrite_flag(e)
    _nproc_flag(e, "evaluate")
    _backend_flag(e)
    common(e)
    e.set_defaults(func=_cmd_evaluate)

    rp = sub.add_parser(
        "report",
        help="one self-contained HTML report of a run: curves, per-class scores, "
        "confusion, calibration, examples, model card",
    )
    rp.add_argument("run", help="a run folder (its best checkpoint) or a .safetensors file")
    rp.add_argument("--data", help="data set folder (default: data.root of the run's config.yaml)")
    _format_flag(rp)
    rp.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    rp.add_argument("--out", required=True, help="report folder (report.html, report.json, PNG figures)")
    _overwrite_flag(rp)
    _display_bands_flag(rp)
    _uncertainty_flags(rp, predict=False)
    common(rp)
    rp.set_defaults(func=_cmd_report)

    pr = sub.add_parser("predict", help="write index masks and overlays for images or folders of images")
    pr.add_argument("checkpoint", help=CHECKPOINT_OR_EXPORTED)
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder")
    _overwrite_flag(pr)
    pr.add_argument("--no-overlay", action="store_true", help="write only the masks")
    _tile_flags(pr)
    pr.add_argument(
        "--prob",
        action="append",
        metavar="CLASS",
        help="also write <stem>_prob_<class>.png, the "
        "class probability as 8-bit grayscale (255 = 1.0); name or index, repeatable",
    )
    pr.add_argument(
        "--threshold",
        type=V.probability,
        help="label the (single) --prob class wherever its probability is at least this (default: argmax)",
    )
    _instance_flags(pr, "write")
    _display_bands_flag(pr)
    _uncertainty_flags(pr, predict=True)
    _backend_flag(pr)
    pr.add_argument(
        "--nproc",
        type=V.processes,
        metavar="N",
        help="share the images out over N processes on this machine (each loads the model; torch threads "
        "divided among them unless --threads); under torchrun every rank takes its share instead",
    )
    pr.add_argument(
        "--threads",
        type=V.threads,
        help="torch CPU threads per process (default: torch's / N); runs with the same --threads write the same "
        "bytes, whatever --nproc",
    )
    pr.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out inputs whose every output is already there (an earlier predict's): resumes a run",
    )
    common(pr)
    pr.set_defaults(func=_cmd_predict)

    ca = sub.add_parser(
        "calibrate", help="fit a checkpoint's temperature on a split and store it in its sidecar"
    )
    ca.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    ca.add_argument("--data", required=True, help="data set folder, any layout of --format")
    _format_flag(ca)
    ca.add_argument("--split", default="val", choices=["train", "val", "test", "all"])
    ca.add_argument("--batch-size", type=V.positive_int, default=8)
    common(ca)
    ca.set_defaults(func=_cmd_calibrate)

    b = sub.add_parser(
        "benchmark", help="cost tables (--cost), or latency / FPS (and mIoU) tables and a plot"
    )
    b.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="arch, arch:encoder (e.g. unet lraspp:mobilenet deeplabv3plus:resnet18), an .onnx file or an "
        "OpenVINO .xml",
    )
    b.add_argument(
        "--cost",
        nargs="+",
        metavar="MODEL",
        help="print parameters, MACs and activation memory per layer instead of timing",
    )
    b.add_argument("--all-layers", action="store_true", help="--cost: one row per leaf module")
    b.add_argument("--size", nargs="+", type=V.side, default=[512], help="square input sizes (default: 512)")
    b.add_argument(
        "--batch", nargs="+", type=V.integer(1, 4096), default=[1], help="batch sizes (default: 1)"
    )
    b.add_argument(
        "--paths",
        nargs="+",
        default=["eager"],
        metavar="PATH",
        help="execution paths: eager channels_last fold_bn fold_bn_cl compile compile_cl onnxruntime openvino "
        "fp16 bf16",
    )
    b.add_argument("--warmup", type=V.nonneg_int, default=3, help="untimed calls (default: 3)")
    b.add_argument("--iters", type=V.positive_int, default=20, help="timed calls (default: 20)")
    b.add_argument("--threads", type=V.threads, help="torch CPU threads (default: torch's)")
    b.add_argument(
        "--params",
        metavar="YAML",
        help="create_model arguments for models given by name, e.g. '{depth: 2, base_channels: 4}'",
    )
    b.add_argument(
        "--num-classes", type=V.num_classes, help="classes of models built by name (default: 21; cost: 10)"
    )
    b.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="trained models (run folders)")
    b.add_argument("--data", help="folder data set: also evaluate the checkpoints' mIoU")
    b.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    b.add_argument("--out", default="benchmark", help="folder for benchmark.md/.csv/.json/.png")
    _overwrite_flag(b)
    _backend_flag(b)
    common(b)
    b.set_defaults(func=_cmd_benchmark)

    sv = sub.add_parser("serve", help="a REST API and web viewer for a checkpoint (needs the serve extra)")
    sv.add_argument("checkpoint", help=CHECKPOINT_OR_EXPORTED)
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    sv.add_argument("--port", type=V.port, default=8000, help="port (default: 8000)")
    sv.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' for /predict, /model and /openapi.json "
        "(default: $SEGLAB_TOKEN; none); an empty token is refused",
    )
    sv.add_argument(
        "--max-upload-mb",
        type=V.positive_float,
        default=20.0,
        help="largest upload, MiB (default: 20); 413 above",
    )
    sv.add_argument(
        "--max-pixels",
        type=V.positive_int,
        default=4096 * 4096,
        help="largest image in pixels (default: 4096 x 4096); 413 above",
    )
    sv.add_argument(
        "--max-bytes",
        type=V.positive_int,
        help="largest decoded image in bytes, pixels x bands x bytes per sample (default: --max-pixels x 4, "
        "so RGB and RGBA uploads of --max-pixels fit); 413 above",
    )
    sv.add_argument(
        "--concurrency", type=V.positive_int, default=1, help="images predicted at a time (default: 1)"
    )
    sv.add_argument(
        "--queue", type=V.nonneg_int, default=8, help="requests that may wait; 503 beyond (default: 8)"
    )
    sv.add_argument(
        "--samples",
        type=V.samples,
        default=8,
        help="MC dropout passes of ?uncertainty=mc-dropout (default: 8)",
    )
    sv.add_argument(
        "--add-dropout",
        type=V.dropout,
        default=0.0,
        metavar="P",
        help="MC dropout on a model without dropout: add Dropout2d(P) before the head",
    )
    sv.add_argument(
        "--max-work",
        type=V.positive_int,
        default=4 * 2**20,
        metavar="PIXEL_PASSES",
        help="most pixels x passes per request (passes: 1; TTA 4; MC dropout --samples); 413 above "
        "(default: 4,194,304: one pass over 2048 x 2048, TTA over 1024 x 1024, 8 MC dropout "
        "samples over 724 x 724)",
    )
    sv.add_argument(
        "--tile",
        type=V.integer(0, V.MAX_SIDE, "pixels; 0: never"),
        default=256,
        help="images above --tile-above pixels are predicted in tiles of this size, so memory is bounded "
        "by the tile, not the image: the demo's U-Net serves a 4000 x 4000 upload within 0.9 GB "
        "peak RSS, 0.2 GB above idle (0: never tile; default: 256)",
    )
    sv.add_argument(
        "--tile-above",
        type=V.positive_int,
        default=512 * 512,
        metavar="PIXELS",
        help="images above this many pixels are tiled (default: 512 x 512); masks are those of seglab "
        "predict below it, of seglab predict --tile TILE --overlap 32 above it",
    )
    sv.add_argument(
        "--body-timeout",
        type=V.positive_float,
        default=10.0,
        metavar="SECONDS",
        help="a request's head and body must arrive within this time, else 408 and the connection is "
        "closed; only complete uploads wait for a slot (default: 10)",
    )
    sv.add_argument(
        "--allowed-hosts",
        metavar="HOST[,HOST]",
        help="Host names answered besides the bound address and localhost/127.0.0.1/[::1] ('*': any, "
        "'*.example.org'); others get 400 (DNS-rebinding guard). Bound to 0.0.0.0, any IP address "
        "and this machine's name are answered too",
    )
    sv.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    _backend_flag(sv)
    sv.set_defaults(func=_cmd_serve)

    x = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, OpenVINO or TorchScript (fp32 or int8), with its fidelity measured",
    )
    x.add_argument("checkpoint", help="a run folder (its best checkpoint) or a .safetensors file")
    x.add_argument("--format", choices=["onnx", "openvino", "torchscript"], default="onnx")
    x.add_argument(
        "--out", required=True, help="output file (.onnx, .pt, or .xml: an OpenVINO IR, its .bin beside it)"
    )
    x.add_argument(
        "--int8",
        action="store_true",
        help="post-training int8 quantisation (onnx: ONNX Runtime static, QDQ; openvino: NNCF); needs "
        "--calibration",
    )
    x.add_argument(
        "--calibration",
        metavar="DATA",
        help="data set whose train split calibrates --int8 (read as predict reads images: the checkpoint's "
        "normalisation and resize)",
    )
    x.add_argument(
        "--calibration-images",
        type=V.positive_int,
        metavar="N",
        help="calibration images (default: 64, or all of a smaller train split)",
    )
    x.add_argument(
        "--exclude-ends", action="store_true", help="--int8: keep the first and last layers in float"
    )
    x.add_argument(
        "--per-tensor", action="store_true", help="--int8: one weight scale per tensor (default: per channel)"
    )
    x.add_argument(
        "--data",
        metavar="DIR",
        help="labelled data set to measure the fidelity on (default: data.root of the run's config.yaml; "
        "without one it is skipped)",
    )
    x.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    x.add_argument(
        "--fidelity-images",
        type=V.positive_int,
        metavar="N",
        help="measure on the first N images (default: all)",
    )
    x.add_argument(
        "--max-miou-drop",
        type=V.number(0),
        default=1.0,
        metavar="P",
        help="refuse an int8 export that loses more than P mIoU points against PyTorch (default: 1.0)",
    )
    _overwrite_flag(x)
    x.add_argument(
        "--example-size",
        nargs=2,
        type=V.side,
        default=[67, 93],
        metavar=("H", "W"),
        help="traced input size (default: 67 93)",
    )
    x.add_argument("--static", action="store_true", help="fixed input size (the example's)")
    x.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    x.set_defaults(func=_cmd_export)

    im = sub.add_parser(
        "import-smp",
        help="an smp (segmentation_models_pytorch) model as a seglab checkpoint, for evaluate, predict, serve ...",
    )
    im.add_argument("checkpoint", help="smp's save_pretrained folder, or a state-dict file of an smp model")
    im.add_argument("--data", required=True, help="the data set it segments (classes, palette, bands)")
    _format_flag(im)
    im.add_argument(
        "--out", required=True, help="the seglab checkpoint to write (.safetensors, with a sidecar)"
    )
    im.add_argument("--arch", help="seglab's architecture, where no config.json names smp's class")
    im.add_argument("--encoder", help="the timm name of a tu- encoder, where no config.json names it")
    _overwrite_flag(im)
    im.set_defaults(func=_cmd_import_smp)
    data = sub.add_parser("data", help="data set tools: synth, check, convert")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    s = dsub.add_parser("synth", help="write the built-in SyntheticShapes data set as a folder")
    s.add_argument("--out", required=True)
    s.add_argument("--num", type=V.positive_int, default=1000)
    s.add_argument("--size", type=V.integer(16, 4096, "pixels"), default=128)
    s.add_argument("--seed", type=V.seed, default=0)
    s.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is an earlier SyntheticShapes folder"
    )
    s.set_defaults(func=_cmd_synth)
    c = dsub.add_parser("check", help="count images, sizes and class frequencies; report every problem")
    c.add_argument("root", help="data set folder, any layout of --format")
    _format_flag(c)
    c.add_argument("--ignore-index", type=V.ignore_index, default=255)
    c.set_defaults(func=_cmd_check)
    cv = dsub.add_parser(
        "convert",
        help="write a data set of any layout as seglab's folder layout (images/ linked, masks/ as index PNGs, "
        "instances/, classes.yaml, splits/)",
    )
    cv.add_argument("src", help="data set folder, any layout of --format")
    _format_flag(cv)
    cv.add_argument(
        "--out",
        required=True,
        help="new folder (or an earlier output of data convert, which is updated); nothing else is replaced",
    )
    cv.add_argument("--no-progress", action="store_true", help="no progress lines")
    cv.set_defaults(func=_cmd_convert)
    return p


def _version() -> str:
    from seglab import __version__

    return f"seglab {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    from seglab.errors import SeglabError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad flag (its one-line error is printed): the code
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv
    _one_line_warnings()
    try:
        return args.func(args) or 0
    except SeglabError as e:
        _record_error(e)
        print(f"seglab: error: {_rank_prefix()}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seglab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # in a torchrun worker: tell the launcher what failed, then the traceback
        _record_error(e)
        if _out_of_memory(e):  # sizes the checks could not foresee (they depend on the data and the machine)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(
                f"seglab: error: {_rank_prefix()}out of memory ({first[:200]}); lower what sets memory: the "
                "batch size, crop, image or tile size, TTA scales or samples",
                file=sys.stderr,
            )
            return 2
        raise


def _out_of_memory(e: BaseException) -> bool:
    """A MemoryError, torch's CUDA OutOfMemoryError or its CPU allocator's failure."""
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in str(e)
    )


def _one_line_warnings() -> None:
    """seglab's own warnings print as one ``seglab: warning: ...`` line, like its errors (not Python's
    ``file:line: UserWarning`` plus a source line); other libraries' keep their usual form."""
    import warnings

    default = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if f"{os.sep}seglab{os.sep}" in str(filename) and issubclass(category, UserWarning):
            return f"seglab: warning: {_rank_prefix()}{message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning


def _rank_prefix() -> str:
    import os

    return f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def _record_error(e: BaseException) -> None:
    import os

    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from seglab.engine.distributed import record_error

        record_error(e)


if __name__ == "__main__":
    sys.exit(main())
