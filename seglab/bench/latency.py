"""Latency and throughput: a fixed timing protocol over models x input sizes x batch sizes x execution paths.

Protocol (recorded in every result): the model in eval mode under ``torch.inference_mode``, ``warmup``
untimed calls, then ``iters`` timed calls of one batch of random inputs (CUDA synchronised around each call);
median and 90th-percentile latency per batch, FPS = batch / median. Peak memory: the CUDA max allocated, or on
CPU the peak RSS above the level before the runs (sampled every millisecond from /proc/self/statm).

Execution paths beside the plain ``eager`` one, each checked against eager on the same input (max abs logit
difference; a path is ``faithful`` when it is within ``FAITHFUL_ATOL`` times max(1, the largest |logit|)):
``channels_last`` (NHWC memory format), ``fold_bn`` (batch norm folded into the preceding conv), ``fold_bn_cl``
(both),
``compile`` (``torch.compile``), ``compile_cl`` (both), ``onnxruntime`` and ``openvino`` (exported to ONNX at
the timed shape, static, and run in that runtime with torch's thread count), ``fp16`` / ``bf16`` (autocast; fp16
on CUDA only).

Checkpoints and exported files (``.onnx``, an OpenVINO ``.xml``) run in the runtime ``backend`` names (default:
the file's own; see ``seglab.models.runtime``): their ``eager`` row is then that runtime's.
"""

from __future__ import annotations

import copy
import importlib
import os
import platform
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglab.engine.device import resolve_device
from seglab.errors import ConfigError

PATHS = (
    "eager",
    "channels_last",
    "fold_bn",
    "fold_bn_cl",
    "compile",
    "compile_cl",
    "onnxruntime",
    "openvino",
    "fp16",
    "bf16",
)
RUNTIME_PATHS = ("onnxruntime", "openvino")  # exported to ONNX at the shape, run in seglab.models.runtime
FAITHFUL_ATOL = 1e-4  # times max(1, max |logit|): the tolerance of the ONNX parity check


@dataclass
class ModelSpec:
    """What to benchmark: an architecture (``arch`` or ``arch:encoder``), a checkpoint or an exported file."""

    name: str
    arch: str | None = None
    encoder: str | None = None
    checkpoint: str | None = None
    exported: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def parse_spec(text: str) -> ModelSpec:
    """``unet``, ``unet:resnet18``, ``deeplabv3plus:mobilenet``, a run folder / .safetensors checkpoint, or an
    exported ``.onnx`` / OpenVINO ``.xml`` / TorchScript ``.pt`` file (timed; MACs are n/a for TorchScript, which
    takes no hooks)."""
    p = Path(text)
    if p.suffix in (".onnx", ".xml", ".pt", ".ts") and p.is_file():
        return ModelSpec(p.name, exported=str(p))
    if p.suffix in (".safetensors", ".yaml") or p.is_dir():
        return ModelSpec(p.parent.name + "/" + p.stem if p.suffix else p.name, checkpoint=str(p))
    arch, _, encoder = text.partition(":")
    return ModelSpec(text, arch=arch, encoder=encoder or None)


def build(spec: ModelSpec, num_classes: int = 21, backend: str | None = None) -> tuple[Any, int]:
    """(model, in_channels) for a spec; the model is in eval mode. ``backend``: the runtime of a checkpoint or
    an exported file (``seglab.models.runtime``; default: the file's own); a model given by name is refused it
    (it is timed in a runtime by the paths onnxruntime and openvino)."""
    check_backend_specs([spec], backend)
    if spec.exported and Path(spec.exported).suffix in (".onnx", ".xml"):
        from seglab.models.runtime import load_runtime

        m = load_runtime(spec.exported, backend, torch.get_num_threads())
        return m, m.in_channels
    if spec.exported:
        from seglab.engine.export import load_exported

        m = load_exported(spec.exported)
        return m, getattr(m, "in_channels", 3)
    if spec.checkpoint:
        from seglab.checkpoint import load_checkpoint

        model, meta = load_checkpoint(spec.checkpoint, backend=backend)
        return model, meta.in_channels
    from seglab.models.factory import create_model, list_models

    if spec.arch not in list_models():
        raise ConfigError(
            f"unknown model {spec.arch!r}; choose one of: {', '.join(list_models())}, "
            "arch:encoder, a checkpoint or an .onnx file"
        )
    kwargs = dict(spec.params)
    if spec.encoder:
        kwargs["encoder"] = spec.encoder
    return create_model(spec.arch, num_classes=num_classes, **kwargs).eval(), 3


def check_backend_specs(specs: Sequence[ModelSpec | str], backend: str | None, device: str = "cpu") -> None:
    """ConfigError (one line) unless every spec can run in ``backend`` (None: each its own) on ``device``: only
    checkpoints and ``.onnx`` / ``.xml`` files take one, and those runtimes run on the CPU (see
    ``seglab.models.runtime.check_backend`` and ``runtime_device``)."""
    from seglab.models.runtime import check_backend, runtime_device

    for spec in specs:
        spec = parse_spec(spec) if isinstance(spec, str) else spec
        if spec.exported and Path(spec.exported).suffix in (".onnx", ".xml"):
            runtime_device(spec.exported, backend, device)
        if backend is None:
            continue
        if not (spec.checkpoint or spec.exported):
            raise ConfigError(
                f"--backend runs checkpoints and exported files; time the architecture {spec.name} in a runtime "
                "with --paths onnxruntime openvino"
            )
        if spec.exported and Path(spec.exported).suffix in (".pt", ".ts") and backend != "torch":
            raise ConfigError(f"{spec.name} is a TorchScript file: it runs only with --backend torch")
        check_backend(spec.checkpoint or spec.exported or "", backend)
        if spec.checkpoint:
            runtime_device(spec.checkpoint, backend, device)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every BatchNorm2d that directly follows a Conv2d in an
    ``nn.Sequential`` folded into the conv's weights and bias (and replaced by Identity; a timm
    BatchNormAct2d keeps its activation). Returns (folded model, number of folds)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    folds = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if not (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                continue
            if type(bn) is not nn.BatchNorm2d and not (hasattr(bn, "act") and hasattr(bn, "drop")):
                continue
            seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            seq._modules[b] = (
                nn.Sequential(bn.drop, bn.act) if type(bn) is not nn.BatchNorm2d else nn.Identity()
            )
            folds += 1
    # timm's ConvNormAct keeps them as attributes .conv and .bn, applied in that order.
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and type(m).__name__ == "ConvNormAct":
            m.conv = fuse_conv_bn_eval(conv, bn)
            m.bn = nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") else nn.Identity()
            folds += 1
    return model, folds


class _RssSampler:
    """Peak resident set size of this process while active, sampled every millisecond (Linux)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(
    fn: Callable[[], Any], warmup: int, iters: int, device: torch.device
) -> tuple[list[float], int | None]:
    """Per-call seconds of ``iters`` timed calls after ``warmup`` untimed ones, and the peak memory in bytes."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    sampler = _RssSampler() if device.type == "cpu" else None
    if sampler:
        sampler.__enter__()
    try:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        if sampler:
            sampler.__exit__()
    peak = sampler.peak - sampler.start if sampler else torch.cuda.max_memory_allocated(device) - base
    return times, peak


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def protocol(
    device: torch.device, warmup: int, iters: int, paths: Sequence[str], backends: Sequence[str] = ("torch",)
) -> dict[str, Any]:
    """What every number of a benchmark run depends on. ``backends``: the runtimes the models ran in (torch,
    onnxruntime, openvino; the versions of those and of the runtime paths are recorded)."""
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": "float32",
        "warmup": warmup,
        "iters": iters,
        "inference_mode": True,
        "paths": list(paths),
        "backends": list(backends),
        "channels_last": any(p in ("channels_last", "compile_cl") for p in paths),
        "compile": any(p.startswith("compile") for p in paths),
        "faithful_atol": FAITHFUL_ATOL,
        "latency": "median and p90 of per-batch wall time; FPS = batch / median",
        "memory": "CUDA max allocated" if device.type == "cuda" else "peak RSS delta during the timed runs",
    }
    for runtime in RUNTIME_PATHS:
        if runtime in paths or runtime in backends:
            try:
                info[runtime] = importlib.import_module(runtime).__version__
            except ImportError:
                info[runtime] = None
    return info


def prepare_path(
    path: str, model: Any, x: torch.Tensor, device: torch.device, tmp: Path
) -> tuple[Callable, str]:
    """(callable, note) running ``model`` the ``path`` way on inputs shaped like ``x``."""
    if path == "eager":
        return model, ""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"path {path} needs a PyTorch model")
    if path == "channels_last":
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return (lambda t: m(t.contiguous(memory_format=torch.channels_last))), ""
    if path in ("fold_bn", "fold_bn_cl"):
        m, folds = fold_batchnorm(model)
        if path == "fold_bn":
            return m, f"{folds} batch norms folded"
        m = m.to(memory_format=torch.channels_last)
        return (lambda t: m(t.contiguous(memory_format=torch.channels_last))), f"{folds} batch norms folded"
    if path in ("compile", "compile_cl"):
        m = copy.deepcopy(model)
        if path == "compile_cl":
            m = m.to(memory_format=torch.channels_last)
        c = torch.compile(m)
        cl = path == "compile_cl"
        return (lambda t: c(t.contiguous(memory_format=torch.channels_last) if cl else t)), ""
    if path in RUNTIME_PATHS:
        return _in_runtime(path, model, x, device, tmp), ""
    if path in ("fp16", "bf16"):
        dtype = torch.float16 if path == "fp16" else torch.bfloat16
        if path == "fp16" and device.type != "cuda":
            raise ConfigError("fp16 autocast needs CUDA; use bf16 on the CPU")

        def run(t: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype):
                return model(t).float()

        return run, ""
    raise ConfigError(f"unknown path {path!r}; choose from: {', '.join(PATHS)}")


def _in_runtime(runtime: str, model: nn.Module, x: torch.Tensor, device: torch.device, tmp: Path) -> Any:
    """``model`` exported to ONNX at ``x``'s shape (static: a SegNet exports no other way; one file per model and
    shape, shared by the runtimes) and loaded in ``runtime`` with torch's thread count."""
    from seglab.engine.export import export_model
    from seglab.models.runtime import load_runtime

    if device.type != "cpu":
        raise ConfigError(f"the {runtime} path runs on the CPU; use --device cpu")
    file = tmp / f"model-{id(model)}-{'x'.join(map(str, x.shape))}.onnx"
    if not file.exists():
        export_model(
            model,
            file,
            "onnx",
            example_size=tuple(x.shape[-2:]),
            in_channels=x.shape[1],
            dynamic=False,
            check=False,
            batch=x.shape[0],
        )
    return load_runtime(file, runtime, torch.get_num_threads())


def benchmark_models(
    specs: Sequence[ModelSpec | str],
    sizes: Sequence[int] = (512,),
    batch_sizes: Sequence[int] = (1,),
    paths: Sequence[str] = ("eager",),
    warmup: int = 3,
    iters: int = 20,
    device: str = "cpu",
    threads: int | None = None,
    num_classes: int = 21,
    model_params: dict[str, Any] | None = None,
    miou: dict[str, float] | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Time every spec x size x batch size x path. Returns {"protocol": ..., "rows": [...]}; each row has
    model, path, size, batch, params, gmacs (per image), latency_ms (median), p90_ms, fps, peak_mem_mb,
    max_abs_diff (vs eager), faithful, miou (from ``miou`` by model name, when given) and a note.
    ``model_params``: extra create_model arguments for the models given by name (e.g. depth, base_channels).
    ``backend``: the runtime of the checkpoints and exported files (see :func:`build`)."""
    import tempfile

    from seglab.bench.cost import count_cost

    for p in paths:
        if p not in PATHS:
            raise ConfigError(f"unknown path {p!r}; choose from: {', '.join(PATHS)}")
    check_backend_specs(specs, backend, device)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    paths = list(dict.fromkeys(["eager", *paths]))
    rows: list[dict[str, Any]] = []
    backends: set[str] = set()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="seglab-bench-") if workdir is None else None
    tmp = Path(tmp_ctx.name if tmp_ctx else workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    try:
        for spec in specs:
            spec = parse_spec(spec) if isinstance(spec, str) else spec
            if spec.arch and model_params:
                spec.params = {**model_params, **spec.params}
            model, in_ch = build(spec, num_classes, backend)
            backends.add(getattr(model, "backend", "") or "torch")  # an exported model names its runtime
            if isinstance(model, nn.Module):
                model = model.to(dev)
            scripted = isinstance(model, torch.jit.ScriptModule)  # no forward hooks: no cost model
            for size in sizes:
                cost = (
                    count_cost(model, size, in_ch) if isinstance(model, nn.Module) and not scripted else None
                )
                for batch in batch_sizes:
                    x = torch.randn(batch, in_ch, size, size, generator=gen).to(dev)
                    with torch.inference_mode():
                        ref = model(x).float()
                    for path in paths:
                        row: dict[str, Any] = {
                            "model": spec.name,
                            "path": path,
                            "size": size,
                            "batch": batch,
                            "params": cost.params if cost else None,
                            "gmacs": cost.gmacs if cost else None,
                            "miou": (miou or {}).get(spec.name),
                        }
                        if scripted:  # parameters are countable, MACs need the hook-based cost model
                            row["params"] = sum(p.numel() for p in model.parameters())
                            cost_note = "TorchScript: MACs n/a"
                        else:
                            cost_note = ""
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                fn, note = prepare_path(path, model, x, dev, tmp)
                                with torch.inference_mode():
                                    out = fn(x).float()
                                    times, peak = time_callable(lambda f=fn, t=x: f(t), warmup, iters, dev)
                        except Exception as e:  # noqa: BLE001 - a path that fails is reported, not fatal
                            row.update(note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                            rows.append(row)
                            if log:
                                log(f"{spec.name} {path} {size}px b{batch}: {row['note']}")
                            continue
                        med = statistics.median(times)
                        diff = float((out.cpu() - ref.cpu()).abs().max())
                        row.update(
                            latency_ms=1000 * med,
                            p90_ms=1000 * quantile(times, 0.9),
                            fps=batch / med,
                            peak_mem_mb=peak / 2**20 if peak is not None else None,
                            max_abs_diff=diff,
                            faithful=diff <= FAITHFUL_ATOL * max(1.0, float(ref.abs().max())),
                            note="; ".join(n for n in (cost_note, note) if n),
                        )
                        rows.append(row)
                        if log:
                            log(
                                f"{spec.name} {path} {size}px b{batch}: {row['latency_ms']:.1f} ms, "
                                f"{row['fps']:.2f} img/s, diff {diff:.1e}"
                            )
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    return {"protocol": protocol(dev, warmup, iters, paths, sorted(backends)), "rows": rows}


def quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


__all__ = [
    "FAITHFUL_ATOL",
    "PATHS",
    "ModelSpec",
    "benchmark_models",
    "build",
    "check_backend_specs",
    "device_name",
    "fold_batchnorm",
    "parse_spec",
    "prepare_path",
    "protocol",
    "quantile",
    "time_callable",
]
