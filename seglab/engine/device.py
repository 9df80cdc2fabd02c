"""Where and how the computation runs: the device, autocast precision and memory format, chosen in one place."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from seglab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when available) as a torch.device; ConfigError when unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} requested but CUDA is not available on this machine; use --device cpu "
            "(train.device: cpu) or auto"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or auto") from None


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def use_channels_last(setting: bool | None, device: torch.device, amp: str) -> bool:
    """``train.channels_last``, or when null: on for the CPU (oneDNN convolutions are faster in NHWC) and for CUDA
    under bf16/fp16 autocast (tensor cores take NHWC)."""
    if setting is not None:
        return setting
    return device.type == "cpu" or amp in ("bf16", "fp16")


def amp_candidates(device: torch.device) -> list[str]:
    """The precisions ``train.amp: auto`` compares on ``device``."""
    if device.type == "cuda":
        return ["off", "bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    return ["off", "bf16"]


def probe_amp(
    step: Callable[[str], None],
    candidates: Sequence[str],
    timer: Callable[[Callable[[], None]], float] | None = None,
    repeats: int = 3,
    margin: float = 0.05,
) -> tuple[str, dict[str, float]]:
    """The fastest precision of ``candidates`` for ``step(amp)`` (one forward and backward pass) and the median
    seconds of each: one untimed warm-up call each, then ``repeats`` interleaved timed calls. The first candidate
    (fp32: exact numerics) is kept unless another is faster by more than ``margin``, so timing noise does not
    flip the choice. ``timer(fn)`` times one call (injectable, so a test does not depend on the machine)."""
    timer = timer or _time_call
    for amp in candidates:
        step(amp)
    times: dict[str, list[float]] = {amp: [] for amp in candidates}
    for _ in range(repeats):
        for amp in candidates:
            times[amp].append(timer(lambda amp=amp: step(amp)))
    medians = {amp: statistics.median(t) for amp, t in times.items()}
    best = min(candidates, key=lambda amp: medians[amp])
    return (best if medians[best] < (1 - margin) * medians[candidates[0]] else candidates[0]), medians


def _time_call(fn: Callable[[], None]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t
