"""The optimizer and the learning-rate schedule.

Parameter groups: biases and normalisation parameters (every tensor of one dimension) get no weight decay, and the
encoder's parameters learn at ``lr * encoder_lr``. The schedule is a factor of each group's base rate, set before
every optimizer step from the progress of the run: the fraction of the planned steps done or, with a time limit,
the fraction of the wall-clock budget spent, whichever is larger, so the rate reaches its end when either runs out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from seglab.config import TrainConfig
from seglab.errors import ConfigError

SCHEDULES = ("poly", "cosine", "constant")


def param_groups(model: torch.nn.Module, weight_decay: float, encoder_lr: float) -> list[dict]:
    """Up to four groups, (encoder or not) x (decayed or not); each carries ``lr_scale``."""
    encoder = getattr(model, "encoder", None)
    in_encoder = {id(p) for p in encoder.parameters()} if isinstance(encoder, torch.nn.Module) else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in in_encoder, p.ndim > 1), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": encoder_lr if enc else 1.0}
        for (enc, decay), ps in sorted(groups.items())
    ]


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (momentum, optionally Nesterov) over ``param_groups``."""
    groups = param_groups(model, cfg.weight_decay, cfg.encoder_lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":  # L2 regularisation (added to the gradient), as torch.optim.Adam defines it
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    raise ConfigError(f"train.optimizer must be adamw, adam or sgd, got {cfg.optimizer!r}")


def lr_factor(schedule: str, total: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``it`` of ``total``: linear warm-up over ``warmup``
    steps, then poly(0.9), cosine or constant."""
    return Schedule(schedule, total, warmup).factor


class Schedule:
    """The learning-rate factor of a step: linear warm-up, then ``kind`` over the run's progress in [0, 1]."""

    def __init__(self, kind: str, total_steps: int, warmup: int = 0, time_limit: float | None = None) -> None:
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown train.schedule {kind!r}; choose poly, cosine or constant")
        self.kind, self.total, self.warmup, self.time_limit = kind, max(1, total_steps), warmup, time_limit

    def progress(self, step: int, elapsed: float = 0.0) -> float:
        """Fraction of the run done after ``step`` steps and ``elapsed`` seconds (after warm-up, by steps)."""
        by_steps = (step - self.warmup) / max(1, self.total - self.warmup)
        by_time = elapsed / self.time_limit if self.time_limit else 0.0
        return min(1.0, max(0.0, by_steps, by_time))

    def factor(self, step: int, elapsed: float = 0.0) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = self.progress(step, elapsed)
        if self.kind == "poly":
            return (1 - t) ** 0.9
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    def apply(
        self, optimizer: torch.optim.Optimizer, base_lr: float, step: int, elapsed: float = 0.0
    ) -> float:
        """Set every group's rate for the coming step; returns the factor."""
        f = self.factor(step, elapsed)
        for g in optimizer.param_groups:
            g["lr"] = base_lr * g.get("lr_scale", 1.0) * f
        return f


def now() -> float:
    """The clock of time budgets (a function of its own, so tests can replace it)."""
    return time.perf_counter()


class Budget:
    """A wall-clock budget: ``elapsed`` counts from construction (plus what an earlier, resumed part spent);
    ``exhausted`` is true once the time left would not cover ``reserve`` seconds (the closing validation)."""

    def __init__(self, limit: float | None, spent: float = 0.0) -> None:
        self.limit, self.start, self.reserve = limit, now() - spent, 0.0

    def elapsed(self) -> float:
        return now() - self.start

    def exhausted(self) -> bool:
        return self.limit is not None and self.elapsed() + self.reserve >= self.limit
