"""Training: one function, driven by a Config; seeded, resumable, with best/last checkpoints and a metrics log.

Run folder (``train.out_dir``)::

    config.yaml          the resolved config
    metrics.jsonl        one line per epoch: train loss, lr, validation metrics, throughput
    best.safetensors/.yaml, last.safetensors/.yaml   checkpoints (weights + sidecar)
    last.state.pt        the commit point of each epoch: weights, optimizer, schedule, progress (for --resume)

Reproducibility: every epoch re-seeds the global RNG and the shuffling generator from (seed, epoch), so a run
resumed from ``last.state.pt`` follows exactly the same path as an uninterrupted one, wherever it was killed
(see ``seglab.engine.state`` for the order of the writes).

Every image and mask is checked once before the run folder is made (``scan_folder(deep=True)``, cached), so bad
data stops the run at the start, not in the middle of an epoch; a run that fails before its first epoch is
committed leaves no files behind.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from seglab.checkpoint import CheckpointMeta
from seglab.config import Config
from seglab.data.folder import FolderDataset, scan_folder
from seglab.data.transforms import build_transform, pad_collate
from seglab.engine.device import resolve_device
from seglab.engine.evaluate import run_evaluation
from seglab.engine.state import (
    STATE_FILE,
    check_signature,
    load_state,
    model_signature,
    read_history,
    repair,
    save_state,
    write_checkpoints,
)  # fmt: skip
from seglab.errors import CheckpointError, ConfigError, DataError, SeglabError
from seglab.files import append_text, atomic_write, check_out_dir, jsonable, to_json
from seglab.losses import make_loss
from seglab.models.factory import MODELS, create_model


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def lr_factor(schedule: str, total: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at iteration ``it``: linear warm-up, then poly(0.9) or cosine."""
    if schedule not in ("poly", "cosine", "constant"):
        raise ConfigError(f"unknown train.schedule {schedule!r}; choose poly, cosine or constant")

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        t = min(1.0, (it - warmup) / max(1, total - warmup))
        if schedule == "poly":
            return (1 - t) ** 0.9
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return factor


def build_model(cfg: Config, num_classes: int, in_channels: int) -> torch.nn.Module:
    """create_model with a clear error for keyword arguments the architecture does not take."""
    builder = MODELS.get(cfg.model.arch) if cfg.model.arch in MODELS else None
    if builder is not None:
        accepted = set(inspect.signature(builder).parameters)
        unknown = sorted(set(cfg.model.params) - accepted)
        if unknown:
            raise ConfigError(
                f"model.params.{unknown[0]} is not an argument of {cfg.model.arch}; "
                f"accepted: {', '.join(sorted(accepted - {'num_classes', 'in_channels'}))}"
            )
    try:
        return create_model(
            cfg.model.arch, num_classes=num_classes, in_channels=in_channels, **cfg.model.params
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build model {cfg.model.arch!r}: {e}") from None


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    check_out_dir(run_dir, "run folder")
    has_ckpt = any((run_dir / n).exists() for n in ("best.safetensors", "last.safetensors", STATE_FILE))
    if resume:
        load_state(run_dir)  # refuses now, before the data is read, if there is nothing to resume
    if has_ckpt and not resume and not overwrite:
        raise ConfigError(
            f"run folder {run_dir} already holds checkpoints; pass --resume to continue or --overwrite to restart"
        )


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on the folder data set ``config.data.root``; returns where everything went.

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint; returning True stops training.
    """
    cfg, t0 = config.validate(), time.perf_counter()  # a config changed after it was built is checked too
    if not cfg.data.root:
        raise ConfigError("no data set: set data.root (or --data DIR); `seglab data synth` writes an example")
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run_dir = Path(cfg.train.out_dir)
    _check_run_dir(run_dir, resume, overwrite)

    scan = scan_folder(cfg.data.root, cfg.data.ignore_index, deep=True)  # every file, once, before any work
    scan.raise_problems()
    common = dict(
        ignore_index=cfg.data.ignore_index, val_ratio=cfg.data.val_ratio, test_ratio=cfg.data.test_ratio,
        split_seed=cfg.data.split_seed, split_lists=cfg.data.splits, cache=cfg.data.cache, scan=scan,
    )  # fmt: skip
    in_ch = scan.in_channels
    eval_transform = build_transform(cfg.data, in_ch, train=False)
    weight_fn = None
    if cfg.data.border_weights:
        from seglab.losses.weights import unet_weight_map

        weight_fn = functools.partial(
            unet_weight_map,
            w0=cfg.data.border_w0,
            sigma=cfg.data.border_sigma,
            ignore_index=cfg.data.ignore_index,
        )
    train_ds = FolderDataset(
        cfg.data.root, "train", build_transform(cfg.data, in_ch, train=True), weight_fn=weight_fn, **common
    )
    val_ds = FolderDataset(cfg.data.root, "val", eval_transform, **common)
    # no validation only when asked for (data.splits.val: [], or data.val_ratio: 0 without split lists):
    # every epoch's weights are then both "last" and "best", e.g. for a final fit on all the labelled data
    no_val_asked = cfg.data.splits.get("val") == [] if cfg.data.splits else cfg.data.val_ratio == 0
    for ds in (train_ds, val_ds):
        if len(ds) == 0 and not (ds is val_ds and no_val_asked):
            raise DataError(
                f"the {ds.split} split of {cfg.data.root} is empty; add splits/{ds.split}.txt or change "
                f"data.val_ratio/data.test_ratio"
                + (" (data.splits.val: [] trains without validation)" if ds is val_ds else "")
            )
    spec = train_ds.classes
    names = list(spec.names)
    if cfg.data.class_names is not None:
        if len(cfg.data.class_names) != spec.num_classes:
            raise ConfigError(
                f"data.class_names has {len(cfg.data.class_names)} names but {cfg.data.root} has "
                f"{spec.num_classes} classes ({', '.join(spec.names)})"
            )
        names = [str(n) for n in cfg.data.class_names]

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, spec.num_classes, in_ch).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    samples_per_epoch = len(train_ds) * cfg.data.repeat
    batch_size = min(cfg.train.batch_size, samples_per_epoch)
    steps_per_epoch = samples_per_epoch // batch_size
    total = steps_per_epoch * cfg.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg.train.schedule, total, cfg.train.warmup_iters)
    )
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 (CUDA only) needs a CUDA device, got {device}; use bf16 or off")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    criterion = make_loss(cfg.train.loss, ignore_index=spec.ignore_index)
    terms = getattr(criterion, "losses", {"loss": criterion}).values()
    if weight_fn is not None and not any(getattr(t, "supports_pixel_weight", False) for t in terms):
        raise ConfigError(
            f"data.border_weights needs a loss with per-pixel weights (ce, focal); got {cfg.train.loss}"
        )
    meta = CheckpointMeta(
        arch=cfg.model.arch, num_classes=spec.num_classes, in_channels=in_ch, model_params=dict(cfg.model.params),
        class_names=names, palette=[list(c) for c in spec.palette], mean=list(eval_transform.mean), std=list(eval_transform.std),
        ignore_index=spec.ignore_index,
        split={"val_ratio": cfg.data.val_ratio, "test_ratio": cfg.data.test_ratio, "split_seed": cfg.data.split_seed,
               "split_lists": cfg.data.splits},
    )  # fmt: skip

    ema = None
    if cfg.train.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.train.ema, use_warmup=True)
    signature = model_signature(cfg.model.arch, cfg.model.params, spec.num_classes, in_ch)
    start_epoch, best, history = 0, {"miou": -1.0}, []
    log_path = run_dir / "metrics.jsonl"
    if resume:
        start_epoch, best = _resume(run_dir, cfg, signature, model, ema, optimizer, scheduler, scaler, device)
        history = read_history(log_path, start_epoch)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(cfg.dump()))
    atomic_write(log_path, lambda tmp: tmp.write_text("".join(to_json(r) + "\n" for r in history)))
    try:
        loader_gen = torch.Generator()
        train_loader = DataLoader(
            train_ds, batch_size=batch_size, drop_last=True,
            sampler=RandomSampler(train_ds, num_samples=samples_per_epoch, generator=loader_gen),
            collate_fn=pad_collate(spec.ignore_index), num_workers=cfg.data.num_workers,
        )  # fmt: skip
        val_loader = DataLoader(
            val_ds,
            batch_size=batch_size,
            collate_fn=pad_collate(spec.ignore_index),
            num_workers=cfg.data.num_workers,
        )
        from tqdm.auto import tqdm

        for epoch in range(start_epoch, cfg.train.epochs):
            torch.manual_seed(cfg.train.seed * 100_003 + epoch)
            loader_gen.manual_seed(cfg.train.seed * 100_019 + epoch)
            model.train()
            t_epoch, seen, loss_sum = time.perf_counter(), 0, 0.0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not cfg.train.progress,
                       leave=False, dynamic_ncols=True)  # fmt: skip
            for step, batch in enumerate(bar):
                images, masks = batch[0].to(device), batch[1].to(device)
                extra = {"pixel_weight": batch[2].to(device)} if len(batch) > 2 else {}
                if device.type == "cpu":
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
                ):
                    logits = model(images)
                loss = criterion(logits.float(), masks, **extra)  # the loss in fp32 whatever the forward pass
                if not torch.isfinite(loss):
                    raise SeglabError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        "lower train.lr or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update(model, step=epoch * steps_per_epoch + step + 1)
                seen += images.shape[0]
                loss_sum += loss.item() * images.shape[0]
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / (time.perf_counter() - t_epoch):.1f}"
                )
            train_seconds = time.perf_counter() - t_epoch
            evaluated = model if ema is None else ema.module
            summary = {}
            if len(val_ds):
                summary = run_evaluation(
                    evaluated, val_loader, spec.num_classes, spec.ignore_index, device
                ).compute()
            record = {
                "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": scheduler.get_last_lr()[0],
                "images": seen, "images_per_s": seen / train_seconds, "seconds": time.perf_counter() - t_epoch,
                **{f"val_{k}": v for k, v in summary.items()},
            }  # fmt: skip
            record = jsonable(record)
            history.append(record)
            append_text(log_path, to_json(record) + "\n")
            meta.epoch, meta.metrics = epoch + 1, jsonable(summary)
            if not summary or summary["miou"] > best["miou"]:
                best = {"miou": summary.get("miou", -1.0), "epoch": epoch + 1}
            state = {"epoch": epoch + 1, "epochs": cfg.train.epochs, "signature": signature,
                     "model": model.state_dict(), "ema": None if ema is None else ema.module.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "best": best, "meta": dataclasses.asdict(meta)}  # fmt: skip
            save_state(run_dir, state)  # the epoch is committed here; the checkpoints follow from it
            write_checkpoints(run_dir, state)
            if cfg.train.progress:
                val = (
                    f"val mIoU {summary['miou']:.4f}  pixel acc {summary['pixel_accuracy']:.4f}  "
                    if summary
                    else ""
                )
                tqdm.write(
                    f"epoch {epoch + 1}/{cfg.train.epochs}  loss {record['train_loss']:.4f}  {val}"
                    f"{record['images_per_s']:.1f} img/s  {record['seconds']:.1f} s"
                )
            if on_epoch_end is not None and on_epoch_end(epoch + 1, record):
                break
    except Exception:
        if not (run_dir / STATE_FILE).exists():  # nothing committed: leave no half-made run behind
            for name in ("config.yaml", "metrics.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise

    from seglab.checkpoint import read_meta

    best_meta = read_meta(run_dir / "best")
    return TrainResult(
        run_dir, run_dir / "best.safetensors", run_dir / "last.safetensors", {"epoch": best_meta.epoch,
        **best_meta.metrics}, history, time.perf_counter() - t0,
    )  # fmt: skip


def _resume(
    run_dir: Path, cfg: Config, signature: dict[str, Any], model: torch.nn.Module, ema: Any,
    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, device: torch.device,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Load the committed state of ``run_dir`` into the training objects and make its checkpoints agree with it;
    returns (epochs done, best so far). Refuses, in one line, whatever would not continue exactly."""
    state = load_state(run_dir)
    check_signature(run_dir, state.get("signature"), signature)
    if "meta" in state:  # the state holds the weights it was committed with
        raw, averaged = state["model"], state.get("ema")
    else:  # written by seglab before 0.2: the weights are in last.safetensors, which must be of the same epoch
        raw, averaged = _legacy_weights(run_dir, state, device)
    if ema is not None and averaged is None:
        raise ConfigError(f"cannot resume {run_dir} with train.ema: it was trained without it")
    try:
        model.load_state_dict(raw)
        if ema is not None:
            ema.module.load_state_dict(averaged)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"cannot resume {run_dir}: {STATE_FILE} does not fit this model and optimizer "
            f"({str(e).strip().splitlines()[0][:160]}); resume with the run's own config.yaml or restart with "
            f"--overwrite"
        ) from None
    if "meta" in state:
        repair(run_dir, state)
    planned = state.get("epochs")
    if planned is not None and planned != cfg.train.epochs:
        import warnings

        warnings.warn(
            f"train.epochs changed from {planned} to {cfg.train.epochs}: the {cfg.train.schedule} schedule goes on "
            f"from step {scheduler.last_epoch} over the new length, so the result differs from a run planned for "
            f"{cfg.train.epochs} epochs from the start",
            stacklevel=3,
        )
    return state["epoch"], state["best"]


def _legacy_weights(run_dir: Path, state: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """(raw, averaged) weights of a state file that does not hold them (an older seglab): from last.safetensors,
    refused unless its sidecar is of the state's epoch."""
    from safetensors.torch import load_file

    from seglab.checkpoint import read_meta

    try:
        epoch = read_meta(run_dir / "last").epoch
    except SeglabError as e:
        raise CheckpointError(f"cannot resume {run_dir}: {e}") from None
    if epoch != state["epoch"]:
        raise CheckpointError(
            f"cannot resume {run_dir}: last.safetensors is from epoch {epoch} but {STATE_FILE} from epoch "
            f"{state['epoch']} (a save that was cut short); restart with --overwrite"
        )
    last = load_file(str(run_dir / "last.safetensors"), device=str(device))
    return (state["model"], last) if "model" in state else (last, None)
