"""``seglab benchmark`` as one function: cost tables, or timing (+ mIoU) with tables and a plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from seglab.errors import ConfigError
from seglab.files import OutputKind, ensure_dir, file_head, guard_dir, guard_file, is_png, json_with


def cost_report(
    model: str,
    size: int = 512,
    num_classes: int = 10,
    all_layers: bool = False,
    model_params: dict[str, Any] | None = None,
) -> str:
    """The cost table of ``model`` (``arch``, ``arch:encoder`` or a checkpoint) at ``size`` x ``size``;
    for ``plain_fcn`` the course's table beside a U-Net of similar depth."""
    from seglab.bench.cost import count_cost, course_comparison, format_comparison, format_cost
    from seglab.bench.latency import build, parse_spec

    if model == "plain_fcn" and not all_layers and not model_params:
        return format_comparison(*course_comparison(size, num_classes))
    spec = parse_spec(model)
    if spec.exported:
        raise ConfigError("the cost model counts PyTorch models; pass an architecture or a checkpoint")
    if spec.arch and model_params:
        spec.params = dict(model_params)
    m, in_ch = build(spec, num_classes)
    return format_cost(count_cost(m, size, in_ch, name=spec.name), all_layers=all_layers)


def run_benchmark(
    models: Sequence[str] = (),
    checkpoints: Sequence[str] = (),
    data: str | Path | None = None,
    split: str = "test",
    out: str | Path = "benchmark",
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
    backend: str | None = None,
    **timing: Any,
) -> dict[str, Any]:
    """Time ``models`` (arch, arch:encoder, .onnx, OpenVINO .xml) and ``checkpoints``; with ``data`` also evaluate
    the checkpoints' mIoU on ``split``. ``backend``: the runtime the checkpoints and exported files run in, for
    the timing and the mIoU alike (``seglab.models.runtime``; default: each file's own). ``timing``: the arguments of :func:`seglab.bench.latency.benchmark_models`.
    Writes benchmark.md/.csv/.json/.png to ``out``; returns the result with ``outputs`` (the file paths). ``out``
    and those files are checked before any work (``seglab.files.guard_dir``/``guard_file``): earlier benchmark
    outputs are replaced, files of another kind only with ``overwrite``."""
    from seglab.bench.latency import benchmark_models, check_backend_specs
    from seglab.bench.report import write_outputs

    specs = [*models, *checkpoints]
    if not specs:
        raise ConfigError("nothing to benchmark: name models (e.g. unet lraspp:mobilenet) or --checkpoints")
    check_backend_specs(specs, backend, timing.get("device", "cpu"))  # before any work
    if data is not None and not checkpoints:
        raise ConfigError("--data evaluates mIoU of trained models; add --checkpoints RUN_DIR ...")
    miou: dict[str, float] = {}
    out = guard_dir(out, "output folder")
    for suffix, kind in BENCHMARK_FILES.items():
        guard_file(out / f"benchmark.{suffix}", kind, overwrite)
    if data is not None:
        from seglab.engine.evaluate import check_report_path

        for i in range(len(checkpoints)):
            check_report_path(out / f"eval-{i}-{split}.json", overwrite=overwrite)
    out = ensure_dir(out)
    if data is not None:
        from seglab.bench.latency import parse_spec
        from seglab.engine.evaluate import evaluate

        for i, ckpt in enumerate(checkpoints):
            name = parse_spec(ckpt).name
            report = evaluate(
                ckpt,
                data,
                split,
                out=out / f"eval-{i}-{split}.json",
                progress=False,
                overwrite=overwrite,
                backend=backend,
            )
            miou[name] = float(report["miou"])
            if log:
                log(f"{name}: mIoU {miou[name]:.4f} on the {split} split of {data}")
    result = benchmark_models(specs, miou=miou or None, log=log, backend=backend, **timing)
    if data is not None:
        result["protocol"].update(data=str(data), split=split)
    result["outputs"] = {k: str(v) for k, v in write_outputs(result, out).items()}
    return result


BENCHMARK_FILES = {
    "md": OutputKind("benchmark table", (".md",), lambda p: file_head(p, 10) == b"Protocol: "),
    "csv": OutputKind("benchmark table", (".csv",), lambda p: file_head(p, 11) == b"model,path,"),
    "json": OutputKind("benchmark result", (".json",), json_with("protocol", "rows")),
    "png": OutputKind("benchmark plot", (".png",), is_png),
}
