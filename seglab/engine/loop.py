"""One epoch of training and one validation pass.

A step reads nothing back from the device: the running loss and a flag for a non-finite loss are summed on the
device and read once per ``log_interval`` optimizer steps (the only host syncs), the labels were checked when the
data was loaded (``trusted_labels``), and the learning rate is set from host-side counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from seglab.engine.device import AMP_DTYPES
from seglab.engine.optim import Budget, Schedule
from seglab.errors import SeglabError
from seglab.losses import trusted_labels


@dataclass
class StepParts:
    """What an optimizer step uses."""

    model: torch.nn.Module  # the module whose weights are trained (and saved)
    net: Callable[[torch.Tensor], torch.Tensor]  # what runs the forward pass: the model or its compiled form
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    base_lr: float
    device: torch.device
    amp: str = "off"
    channels_last: bool = False
    accumulate: int = 1
    clip_grad: float | None = None
    ema: Any = None  # timm ModelEmaV3 or None


@dataclass
class EpochStats:
    images: int
    loss: float
    steps: int
    out_of_time: bool


def to_device(batch: tuple[torch.Tensor, ...], device: torch.device, channels_last: bool) -> tuple:
    """(images, masks, extra loss kwargs) on ``device``: non-blocking copies from pinned memory on CUDA."""
    nb = device.type == "cuda"
    images = batch[0].to(device, non_blocking=nb)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    extra = {"pixel_weight": batch[2].to(device, non_blocking=nb)} if len(batch) > 2 else {}
    return images, batch[1].to(device, non_blocking=nb), extra


def forward_loss(
    net: Callable[[torch.Tensor], torch.Tensor], criterion: Callable[..., torch.Tensor], device: torch.device,
    amp: str, images: torch.Tensor, masks: torch.Tensor, extra: dict,
) -> torch.Tensor:  # fmt: skip
    """The loss of one batch, in fp32 whatever the precision (``amp``) of the forward pass."""
    dtype = AMP_DTYPES[amp]
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = net(images)
    return criterion(logits.float(), masks, **extra)


def train_one_epoch(
    parts: StepParts,
    loader: Any,
    state: Any,
    budget: Budget,
    *,
    epoch: int,
    log_interval: int = 20,
    on_log: Callable[[dict[str, float]], None] | None = None,
    progress: Any = None,
) -> EpochStats:
    """Train over ``loader`` once (or until ``budget`` is exhausted, checked after every optimizer step);
    ``state.step`` counts optimizer steps.

    ``on_log`` gets ``{"loss", "lr", "step"}`` every ``log_interval`` optimizer steps and at the end; a non-finite
    loss raises then, naming the steps it happened in.
    """
    model, opt = parts.model, parts.optimizer
    model.train()
    device = parts.device
    total = torch.zeros((), device=device)  # running sums stay on the device; window joins total at each read
    window = torch.zeros((), device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    images_seen = window_images = 0
    first_step = state.step
    window_start = state.step
    batches = len(loader)
    out_of_time = False
    opt.zero_grad(set_to_none=True)
    iterator = loader if progress is None else progress(loader)

    def flush() -> None:
        nonlocal window, window_images, window_start
        if bool(bad):  # one host sync per interval
            raise SeglabError(
                f"the loss became non-finite between optimizer steps {window_start + 1} and {state.step} "
                f"(epoch {epoch + 1}); lower train.lr, set train.clip_grad, or check the data"
            )
        scalars = {
            "loss": float(window) / max(1, window_images),
            "lr": opt.param_groups[0]["lr"],
            "step": state.step,
        }
        total.add_(window)
        window, window_images, window_start = torch.zeros((), device=device), 0, state.step
        if on_log is not None:
            on_log(scalars)

    with trusted_labels():
        for i, batch in enumerate(iterator):
            images, masks, extra = to_device(batch, device, parts.channels_last)
            loss = forward_loss(parts.net, parts.criterion, device, parts.amp, images, masks, extra)
            parts.scaler.scale(loss / parts.accumulate).backward()
            n = images.shape[0]
            detached = loss.detach()
            window += detached * n
            bad |= ~torch.isfinite(detached)
            images_seen += n
            window_images += n
            if (i + 1) % parts.accumulate and i + 1 < batches:
                continue
            if parts.clip_grad is not None:
                parts.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), parts.clip_grad)
            parts.schedule.apply(opt, parts.base_lr, state.step, budget.elapsed())
            parts.scaler.step(opt)
            parts.scaler.update()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            if parts.ema is not None:
                parts.ema.update(model, step=state.step)
            if (state.step - first_step) % log_interval == 0:
                flush()
            if budget.exhausted():
                out_of_time = True
                break
    if window_images:
        flush()
    return EpochStats(images_seen, float(total) / max(1, images_seen), state.step - first_step, out_of_time)


def validate(
    model: torch.nn.Module, loader: Any, num_classes: int, ignore_index: int, device: torch.device
) -> dict:
    """Validation metrics (mIoU, pixel accuracy, per-class IoU and Dice) of ``model`` on ``loader``; {} if empty."""
    from seglab.engine.evaluate import run_evaluation

    if not len(loader.dataset):
        return {}
    return run_evaluation(model, loader, num_classes, ignore_index, device).compute()
