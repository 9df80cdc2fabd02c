"""One epoch of training and one validation pass.

A step reads nothing back from the device: the running loss and a flag for a non-finite loss are summed on the
device and read once per ``log_interval`` optimizer steps (the only host syncs), the labels were checked when the
data was loaded (``trusted_labels``), and the learning rate is set from host-side counters. Distributed, the loss
is the global batch's (``seglab.losses.global_batch``): N processes train what one process trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from seglab.engine.device import AMP_DTYPES
from seglab.engine.distributed import Dist
from seglab.engine.optim import Budget, Schedule
from seglab.errors import ConfigError, SeglabError
from seglab.losses import global_batch, trusted_labels


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
    ddp: Any = None  # the DistributedDataParallel wrapper in ``net`` (distributed runs), else None
    dist: Dist = field(default_factory=Dist)
    freeze_bn: bool = False  # the encoder's batch-norm layers stay in eval mode (train.freeze_bn)


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
    net: Callable[[torch.Tensor], torch.Tensor],
    criterion: Callable[..., torch.Tensor],
    device: torch.device,
    amp: str,
    images: torch.Tensor,
    masks: torch.Tensor,
    extra: dict,
) -> torch.Tensor:
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

    The model is put in train mode, except, with ``parts.freeze_bn``, the batch-norm layers of ``model.encoder``
    (eval mode: normalised with their running statistics, which stay as they are).

    ``on_log`` gets ``{"loss", "lr", "step"}`` every ``log_interval`` optimizer steps and at the end; a non-finite
    loss raises then, naming the steps it happened in. Distributed, the loss and image counts are summed over the
    ranks at those reads (so every rank logs, and raises, the same), and the gradients are averaged only at the
    last batch of an accumulation (``no_sync`` before).
    """
    model, opt = parts.model, parts.optimizer
    model.train()
    if parts.freeze_bn:  # running statistics frozen; the affine weights still learn
        for m in frozen_bn_layers(model):
            m.eval()
    device = parts.device
    window = torch.zeros((), device=device)  # running sums stay on the device until a read
    bad = torch.zeros((), dtype=torch.bool, device=device)
    total_loss = 0.0
    images_seen = window_images = 0
    first_step = state.step
    window_start = state.step
    batches = len(loader)
    out_of_time = False
    opt.zero_grad(set_to_none=True)
    iterator = loader if progress is None else progress(loader)

    def flush() -> None:
        nonlocal window, window_images, window_start, total_loss, images_seen
        # one host sync per interval (and one all-reduce of three numbers when distributed)
        loss_sum, count, any_bad = _read(parts.dist, window, bad, window_images)
        if any_bad:
            raise SeglabError(
                f"the loss became non-finite between optimizer steps {window_start + 1} and {state.step} "
                f"(epoch {epoch + 1}); lower train.lr, set train.clip_grad, or check the data"
            )
        scalars = {"loss": loss_sum / max(1.0, count), "lr": opt.param_groups[0]["lr"], "step": state.step}
        total_loss += loss_sum
        images_seen += int(count)
        window, window_images, window_start = torch.zeros((), device=device), 0, state.step
        if on_log is not None:
            on_log(scalars)

    # distributed: the loss of the global batch on every rank (Dice's soft counts, the means' normalisers)
    pooled = global_batch() if parts.ddp is not None else contextlib.nullcontext()
    with trusted_labels(), pooled:
        for i, batch in enumerate(iterator):
            images, masks, extra = to_device(batch, device, parts.channels_last)
            accumulating = (i + 1) % parts.accumulate and i + 1 < batches
            with parts.ddp.no_sync() if accumulating and parts.ddp is not None else contextlib.nullcontext():
                loss = forward_loss(parts.net, parts.criterion, device, parts.amp, images, masks, extra)
                parts.scaler.scale(loss / parts.accumulate).backward()
            n = images.shape[0]
            detached = loss.detach()
            window += detached * n
            bad |= ~torch.isfinite(detached)
            window_images += n
            if accumulating:
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
    return EpochStats(images_seen, total_loss / max(1, images_seen), state.step - first_step, out_of_time)


def frozen_bn_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The batch-norm layers of ``model.encoder`` that ``train.freeze_bn`` keeps in eval mode; ConfigError if the
    model has no encoder or its encoder no batch norm."""
    encoder = getattr(model, "encoder", None)
    layers = (
        [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if isinstance(encoder, torch.nn.Module)
        else []
    )
    if not layers:
        what = "no batch-norm layers in its encoder" if isinstance(encoder, torch.nn.Module) else "no encoder"
        raise ConfigError(f"train.freeze_bn is set but the {type(model).__name__} has {what}; set it false")
    return layers


def _read(dist: Dist, window: torch.Tensor, bad: torch.Tensor, images: int) -> tuple[float, float, bool]:
    """(loss sum, images, any non-finite loss) of the window, summed over the ranks: the interval's host sync."""
    loss, any_bad = torch.stack([window, bad.to(window.dtype)]).tolist()  # one device-to-host read
    loss_sum, count, bad_count = dist.all_sum([loss, images, any_bad])
    return loss_sum, count, bad_count > 0


def validate(
    model: torch.nn.Module,
    loader: Any,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    dist: Dist | None = None,
) -> dict:
    """Validation metrics (mIoU, pixel accuracy, per-class IoU and Dice) of ``model`` on ``loader``; {} if empty.
    Distributed, each rank's loader holds a shard, and the counts are summed over the ranks: every rank gets the
    numbers of the whole split."""
    from seglab.engine.evaluate import run_evaluation

    if not len(loader.dataset):
        return {}
    meter = run_evaluation(model, loader, num_classes, ignore_index, device)
    if dist is not None and dist.enabled:
        meter.all_reduce()
    return meter.compute()
