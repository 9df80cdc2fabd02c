"""The fingerprint of the machine: device, cores, the ``amp: auto`` probe, and a timed forward+backward probe of
each candidate model, so the planner knows how many optimiser steps each candidate gets in the budget.
"""

from __future__ import annotations

import copy
import gc
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from seglab.errors import ConfigError


@dataclass
class Candidate:
    """A model the planner may choose: an architecture, its params, and the training input it is timed on."""

    name: str  # short label for the printout, e.g. "unet-lite0 (ImageNet)" or "unet (scratch)"
    arch: str
    params: dict[str, Any]
    pretrained: bool = False  # params name a weights file
    finest_stride: int = 1  # the reduction of the model's finest feature map (a timm encoder's first: 2)
    crop: int = 256
    batch: int = 8
    # filled by the probe
    amp: str = "off"
    seconds_per_step: float = 0.0  # median forward+backward+optimizer step of one batch, chosen precision

    def steps_in(self, seconds: float, overhead: float = 0.15) -> int:
        """Optimiser steps in ``seconds`` of training, ``overhead`` of it kept for data and validation."""
        return int(seconds * (1 - overhead) / self.seconds_per_step) if self.seconds_per_step > 0 else 0


@dataclass
class MachineFingerprint:
    device: str = "cpu"  # cpu | cuda
    name: str = ""  # CPU model or GPU name
    cores: int = 1  # usable CPU cores (affinity)
    threads: int = 1  # torch intra-op threads
    torch: str = ""
    amp_seconds: dict[str, float] = field(default_factory=dict)  # probe of the first candidate, per precision
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0  # time the probe took

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineFingerprint:
        d = dict(d)
        d["candidates"] = [Candidate(**c) for c in d.get("candidates", [])]
        return cls(**d)


def probe_machine(
    candidates: Sequence[Candidate],
    *,
    in_channels: int,
    num_classes: int,
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 3,
    timer: Callable[[Callable[[], Any]], float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> MachineFingerprint:
    """The machine's fingerprint: what it is, and each candidate timed on a training step as training runs it.

    A step is what the training loop runs: zero_grad, forward under the precision's autocast and the default loss
    (``TrainConfig().loss``, ce + Dice) through ``engine.loop.forward_loss``, backward, an AdamW step, on a random
    (batch, in_channels, crop, crop) batch in the memory format training uses. ``probe_amp`` (training's
    ``amp: auto`` probe: one warm-up, then ``repeats`` interleaved timed steps) picks each candidate's precision;
    the candidates come back (copies) with ``amp`` and ``seconds_per_step`` filled. Weights are not loaded: they do
    not change the time and loading them costs seconds. ``threads`` applies during the probe only (torch's count
    and random streams are left as they were). ``timer(fn)`` times one call of ``fn``, which returns the precision
    it ran at (injectable: a test returns known seconds). ``progress`` gets one line per candidate.
    ConfigError naming the candidate when one cannot be built or fails a step."""
    import torch

    from seglab.engine.device import amp_candidates, resolve_device

    start = time.perf_counter()
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if repeats < 1:
        raise ConfigError(f"the probe needs repeats >= 1 timed steps, got {repeats}")
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(
            f"the probe needs in_channels and num_classes >= 1, got {in_channels}, {num_classes}"
        )
    dev = resolve_device(device)
    precisions = amp_candidates(dev)
    fingerprint = MachineFingerprint(
        device=dev.type, name=_device_name(dev), cores=usable_cores(), torch=str(torch.__version__)
    )
    before = torch.get_num_threads()
    rng_devices = [torch.cuda.current_device()] if dev.type == "cuda" else []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        fingerprint.threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=rng_devices):
            for i, cand in enumerate(candidates):
                amp, medians = _probe_candidate(
                    cand, precisions, dev, in_channels, num_classes, repeats, timer
                )
                probed = replace(cand, amp=amp, seconds_per_step=medians[amp])
                fingerprint.candidates.append(probed)
                if i == 0:
                    fingerprint.amp_seconds = dict(medians)
                if progress is not None:
                    progress(_progress_line(probed, medians))
    finally:
        torch.set_num_threads(before)
    fingerprint.seconds = time.perf_counter() - start
    return fingerprint


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _device_name(dev: Any) -> str:
    """The GPU's name, or the CPU model (/proc/cpuinfo's "model name", else platform.processor())."""
    if dev.type == "cuda":
        import torch

        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _without_weights(arch: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every ``weights`` argument dropped (nested encoder mappings too), so the probe builds the
    same network without reading a weights file; an smp checkpoint's structure is read from it first."""
    from seglab.models.factory import resolved_params
    from seglab.models.from_smp import is_smp_checkpoint

    if is_smp_checkpoint(params.get("weights")):
        params = resolved_params(arch, params)

    def drop(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != "weights"}
        return value

    return drop(params)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _probe_candidate(
    cand: Candidate,
    precisions: list[str],
    dev: Any,
    in_channels: int,
    num_classes: int,
    repeats: int,
    timer: Callable[[Callable[[], Any]], float] | None,
) -> tuple[str, dict[str, float]]:
    """(chosen precision, median seconds per precision) of ``cand``'s training step; one model (and AdamW) per
    precision, since on CUDA the memory format depends on it (``use_channels_last``)."""
    import torch

    from seglab.config import TrainConfig
    from seglab.engine.device import probe_amp, use_channels_last
    from seglab.engine.loop import forward_loss
    from seglab.engine.optim import build_optimizer
    from seglab.losses import make_loss, trusted_labels
    from seglab.models.factory import create_model

    where = f"plan candidate {cand.name!r} ({cand.arch}, batch {cand.batch} x {cand.crop} px)"
    if cand.batch < 1 or cand.crop < 1:
        raise ConfigError(f"{where}: batch and crop must be >= 1")
    torch.manual_seed(0)
    try:
        params = _without_weights(cand.arch, dict(cand.params))
        model = create_model(cand.arch, num_classes=num_classes, in_channels=in_channels, **params)
    except Exception as e:  # noqa: BLE001 - whatever the cause, it is this candidate's: name it in one line
        raise ConfigError(f"{where} cannot be built: {_one_line(e)}; fix its params or drop it") from None
    cfg = TrainConfig()
    criterion = make_loss(cfg.loss, ignore_index=255).to(dev)
    images = torch.randn(cand.batch, in_channels, cand.crop, cand.crop)
    masks = torch.randint(0, max(2, num_classes), (cand.batch, cand.crop, cand.crop), dtype=torch.int64).to(
        dev
    )
    runs: dict[str, tuple[Any, Any, Any, Any]] = {}
    models = [model] + [copy.deepcopy(model) for _ in precisions[1:]]
    for amp, net in zip(precisions, models, strict=True):
        channels_last = use_channels_last(None, dev, amp)
        net = net.to(dev)
        x = images.to(dev)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        net.train()
        scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16")
        runs[amp] = (net, build_optimizer(cfg, net), scaler, x)
    del model, models

    def step(amp: str) -> str:
        net, opt, scaler, x = runs[amp]
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(net, criterion, dev, amp, x, masks, {})
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return amp

    try:
        with trusted_labels():
            return probe_amp(step, precisions, timer=timer, repeats=repeats)
    except torch.cuda.OutOfMemoryError:
        raise ConfigError(f"{where} does not fit in the {dev.type} memory; lower its batch or crop") from None
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{where} fails a training step: {_one_line(e)}") from None
    finally:
        runs.clear()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _progress_line(cand: Candidate, medians: dict[str, float]) -> str:
    """e.g. ``unet-lite0 (ImageNet): bf16 0.74 s/step (fp32 0.78, bf16 0.74; batch 8 x 256 px)``."""
    label = {"off": "fp32"}
    each = ", ".join(f"{label.get(a, a)} {s:.2f}" for a, s in medians.items())
    return (
        f"{cand.name}: {label.get(cand.amp, cand.amp)} {cand.seconds_per_step:.2f} s/step "
        f"({each}; batch {cand.batch} x {cand.crop} px)"
    )
