"""Training: ``train(config)`` orchestrates named parts; seeded, resumable, on a step or a wall-clock budget.

Run folder (``train.out_dir``)::

    config.yaml          the resolved config
    plan.yaml            the config as `seglab plan` chose it, with its reasons (a planned run only)
    metrics.jsonl        one line per epoch: train loss, lr, validation metrics, throughput (and the class
                         weights of the cross-entropy term, with train.class_weights)
    best.safetensors/.yaml, last.safetensors/.yaml   checkpoints (weights + sidecar)
    last.state.pt        the commit point of each epoch: weights, optimizer, progress (for --resume)
    tensorboard/         TensorBoard event files (when tensorboard is installed)

The parts: ``seglab.engine.data`` (scan, splits, loaders), ``build_model``, ``seglab.engine.optim`` (optimizer,
schedule, time budget), ``seglab.engine.device`` (precision, memory format), ``seglab.engine.state``
(``TrainState``: atomic commit and resume), ``seglab.engine.loop`` (one epoch, validation) and
``seglab.engine.callbacks`` (metrics log, checkpoints, progress, TensorBoard).

Reproducibility: every epoch re-seeds the global random stream from (seed, epoch), and every training item's
augmentation is seeded from (seed, epoch, draw), so a run resumed from ``last.state.pt`` follows exactly the same
path as an uninterrupted one, wherever it was killed, whatever ``data.num_workers``. Every image and mask is
checked once before the run folder is made, and a run that fails before its first epoch is committed leaves no
files behind.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seglab.checkpoint import CheckpointMeta
from seglab.config import Config
from seglab.engine.callbacks import (
    Callback,
    Checkpointer,
    MetricsLog,
    ProgressPrinter,
    Run,
    TensorBoardLogger,
    UserHook,
    log_writer,
    progress_bars,
    tensorboard_available,
)
from seglab.engine.data import TrainData, build_data, class_weights
from seglab.engine.device import amp_candidates, probe_amp, resolve_device, use_channels_last
from seglab.engine.distributed import Dist, SharedBudget, process_group, restarted, wrap_ddp
from seglab.engine.loop import StepParts, forward_loss, frozen_bn_layers, to_device, train_one_epoch, validate
from seglab.engine.optim import Budget, Schedule, build_optimizer, lr_factor
from seglab.engine.state import STATE_FILE, TrainState, load_state, model_signature, read_history
from seglab.errors import ConfigError
from seglab.files import (
    atomic_write,
    check_out_dir,
    data_set_root,
    describe,
    fsync_path,
    jsonable,
    read_yaml_file,
    run_lock,
    run_root,
    to_json,
)
from seglab.layers.norm import SyncBatchNorm
from seglab.losses import make_loss
from seglab.models.factory import create_model, resolved_params

__all__ = ["TrainResult", "build_model", "lr_factor", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``config.model`` on the folder data set ``config.data.root``; returns where everything went.

    ``on_epoch_end(epoch, record)`` is called after each epoch's commit; returning True stops training.
    ``callbacks`` run after the built-in ones (see ``seglab.engine.callbacks``).

    Distributed (started by torchrun, or ``seglab train --nproc N``): every rank trains its share of each global
    batch (``train.batch_size``) in DistributedDataParallel; rank 0 alone writes the run folder and runs the
    callbacks, and its decisions (resume, precision, stop) are broadcast. Other ranks return the history with
    empty ``best_metrics``. A process that torchrun restarted resumes from the last committed epoch.
    """
    cfg, t0 = config.validate(), time.perf_counter()  # a config changed after it was built is checked too
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with (
        process_group(resolve_device(cfg.train.device), cfg.train.dist_timeout) as (dist, device),
        contextlib.ExitStack() as stack,  # rank 0: the run folder's lock, held to the end
    ):
        return _train(cfg, dist, device, t0, resume, overwrite, on_epoch_end, callbacks, stack)


def _train(
    cfg: Config,
    dist: Dist,
    device: torch.device,
    t0: float,
    resume: bool,
    overwrite: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None,
    callbacks: Sequence[Callback],
    stack: contextlib.ExitStack,
) -> TrainResult:
    run_dir = Path(cfg.train.out_dir)
    budget = SharedBudget(cfg.train.time_limit, dist)  # the whole run counts, data checks included
    stage: Path | None = None  # rank 0, --overwrite of a run: where the new run writes until its first commit

    def committed_state() -> dict[str, Any] | None:
        nonlocal resume, stage
        if restarted():  # torchrun restarted the job after a failure: go on from the last commit, if any
            resume = (run_dir / STATE_FILE).is_file() and not (run_dir / STAGE_DIR).is_dir()
        _check_run_dir(run_dir, resume, overwrite or restarted())
        if not run_dir.exists():  # made for the lock; removed again if the run leaves nothing in it
            stack.callback(_remove_if_empty, run_dir)
        stack.enter_context(run_lock(run_dir))  # one writer per run folder: a second one is refused here
        if resume:
            doc = load_state(run_dir)  # read once, before the data: refuses early
            _check_budget(run_dir, doc, cfg.train.time_limit)
            shutil.rmtree(run_dir / STAGE_DIR, ignore_errors=True)  # an --overwrite killed before its commit
            return doc
        if any(
            (run_dir / n).exists() for n in RUN_FILES
        ):  # the old run stays as it is until the first commit
            stage = _new_stage(run_dir)
            stack.callback(shutil.rmtree, stage, ignore_errors=True)  # gone by then unless the run failed
        return None

    committed = dist.on_main(committed_state)  # every rank resumes from rank 0's file
    resume = committed is not None
    data = build_data(cfg, device, dist)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data.spec.num_classes, data.in_channels).to(device)
    if cfg.train.sync_bn and dist.enabled:
        model = SyncBatchNorm.convert(model)
    optimizer = build_optimizer(cfg.train, model)
    steps_per_epoch = -(-data.batches_per_epoch // cfg.train.accumulate)
    schedule = Schedule(
        cfg.train.schedule, steps_per_epoch * cfg.train.epochs, cfg.train.warmup_iters, cfg.train.time_limit
    )
    weights = class_weights(cfg.train.class_weights, data)
    criterion = _build_criterion(cfg, data, weights).to(device)  # its class weights live beside the logits
    if cfg.train.freeze_bn:
        frozen_bn_layers(model)  # ConfigError before any work if there is nothing to freeze
    ema = _build_ema(cfg.train.ema, model)
    meta = _build_meta(cfg, data)
    signature = model_signature(cfg.model.arch, cfg.model.params, data.spec.num_classes, data.in_channels)
    amp = dist.broadcast(_choose_amp(cfg, committed, model, criterion, data, device, dist.is_main))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # before resume, which loads its state
    state = TrainState()
    if committed is not None:
        state = TrainState.resume(
            run_dir,
            committed,
            signature=signature,
            model=model,
            ema=ema,
            optimizer=optimizer,
            scaler=scaler,
            epochs=cfg.train.epochs,
            device=device,
            repair=dist.is_main,
            time_limit=cfg.train.time_limit,
        )
        budget = SharedBudget(cfg.train.time_limit, dist, spent=state.elapsed)
    state.amp, state.time_limit = amp, cfg.train.time_limit
    channels_last = use_channels_last(cfg.train.channels_last, device, state.amp)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = wrap_ddp(model, device, cfg.train.sync_bn) if dist.enabled else None
    net = ddp or model
    parts = StepParts(
        model=model,
        net=torch.compile(net) if cfg.train.compile else net,
        criterion=criterion,
        optimizer=optimizer,
        scaler=scaler,
        schedule=schedule,
        base_lr=cfg.train.lr,
        device=device,
        amp=state.amp,
        channels_last=channels_last,
        accumulate=cfg.train.accumulate,
        clip_grad=cfg.train.clip_grad,
        ema=ema,
        ddp=ddp,
        dist=dist,
        freeze_bn=cfg.train.freeze_bn,
    )
    history = dist.on_main(lambda: read_history(run_dir / "metrics.jsonl", state.epoch) if resume else [])
    run = Run(
        cfg=cfg,
        run_dir=stage or run_dir,
        data=data,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scaler=scaler,
        state=state,
        meta=meta,
        signature=signature,
        device=device,
        dist=dist,
        class_weights=None if weights is None else [float(w) for w in weights],
    )
    # rank 0 writes the run folder and runs the callbacks; the others train and validate
    cbs = _default_callbacks(cfg, on_epoch_end, stage, run_dir) + list(callbacks) if dist.is_main else []
    with _no_half_made_run(run_dir, stage) if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            atomic_write(run.run_dir / "config.yaml", lambda tmp: tmp.write_text(cfg.dump()))
            if cfg.plan is not None:
                atomic_write(run.run_dir / "plan.yaml", lambda tmp: tmp.write_text(cfg.as_planned().dump()))
            else:  # a run resumed without its plan: config.yaml no longer has one either
                (run.run_dir / "plan.yaml").unlink(missing_ok=True)
            atomic_write(
                run.run_dir / "metrics.jsonl",
                lambda tmp: tmp.write_text("".join(to_json(r) + "\n" for r in history)),
            )
        _fit(run, parts, budget, cbs, history)
        if state.epoch == 0:  # the budget went on set-up (data checks, precision probe): nothing to save
            raise ConfigError(
                f"train.time_limit ({cfg.train.time_limit:g} s) ran out before the first step "
                f"({budget.elapsed():.0f} s went on set-up); raise it"
            )
    dist.barrier()  # rank 0 has written the last checkpoint

    if not dist.is_main:
        return TrainResult(
            run_dir,
            run_dir / "best.safetensors",
            run_dir / "last.safetensors",
            {},
            history,
            time.perf_counter() - t0,
        )
    from seglab.checkpoint import read_meta

    best = read_meta(run_dir / "best")
    return TrainResult(
        run_dir,
        run_dir / "best.safetensors",
        run_dir / "last.safetensors",
        {"epoch": best.epoch, **best.metrics},
        history,
        time.perf_counter() - t0,
    )


def _fit(run: Run, parts: StepParts, budget: Budget, callbacks: list[Callback], history: list[dict]) -> None:
    """The epochs: train, validate, then the callbacks (log line, commit, checkpoints, ...) of each."""
    cfg, state, data, dist = run.cfg, run.state, run.data, run.dist
    for cb in callbacks:
        cb.on_train_start(run)
    try:
        for epoch in range(state.epoch, cfg.train.epochs):
            if state.stopped or budget.exhausted():
                break
            # dropout and other random layers: a stream per (seed, epoch, rank); rank 0's is one process's
            torch.manual_seed(cfg.train.seed * 100_003 + epoch + 7_919 * dist.rank)
            data.sampler.set_epoch(epoch)
            t_epoch = time.perf_counter()
            stats = train_one_epoch(
                parts,
                data.train_loader,
                state,
                budget,
                epoch=epoch,
                log_interval=cfg.train.log_interval,
                on_log=lambda scalars: [cb.on_log(run, scalars) for cb in callbacks],
                progress=_progress_bar(cfg, epoch) if dist.is_main else None,
            )
            train_seconds = time.perf_counter() - t_epoch
            t_val = time.perf_counter()
            dist.sync_buffers(run.evaluated)  # every rank validates (and rank 0 saves) rank 0's statistics
            summary = validate(
                run.evaluated,
                data.val_loader,
                data.spec.num_classes,
                data.spec.ignore_index,
                run.device,
                dist,
            )
            state.epoch, state.elapsed = epoch + 1, budget.elapsed()
            state.stopped = "time limit" if stats.out_of_time else None
            record = jsonable(
                {
                    "epoch": epoch + 1,
                    "train_loss": stats.loss,
                    "lr": run.optimizer.param_groups[0]["lr"],
                    "images": stats.images,
                    "images_per_s": stats.images / max(train_seconds, 1e-9),
                    "seconds": time.perf_counter() - t_epoch,
                    "steps": state.step,
                    "amp": state.amp,
                    **({"processes": dist.world_size} if dist.enabled else {}),
                    **({"class_weights": run.class_weights} if run.class_weights is not None else {}),
                    **({"stopped": state.stopped} if state.stopped else {}),
                    **{f"val_{k}": v for k, v in summary.items()},
                }
            )
            history.append(record)
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(run, record)) or stop
            stop = dist.broadcast(stop)  # rank 0's callbacks decide for every rank
            budget.reserve = (
                time.perf_counter() - t_val
            )  # the closing validation and commit must fit the budget
            if stop or stats.out_of_time:
                break
    finally:
        for cb in callbacks:
            cb.on_train_end(run)


def build_model(cfg: Config, num_classes: int, in_channels: int) -> torch.nn.Module:
    """The model of ``cfg.model`` for the data's classes and channels (create_model checks the arguments)."""
    return create_model(cfg.model.arch, num_classes=num_classes, in_channels=in_channels, **cfg.model.params)


def _build_criterion(cfg: Config, data: TrainData, weights: Any = None) -> torch.nn.Module:
    """``train.loss``, built with the class ``weights`` (one per class, see ``seglab.engine.data.class_weights``)
    of its cross-entropy terms; ``make_loss`` refuses a loss with none, or with class weights of its own."""
    criterion = make_loss(
        cfg.train.loss, ignore_index=data.spec.ignore_index, class_weights=weights, prefix="train."
    )
    terms = getattr(criterion, "losses", {"loss": criterion}).values()
    if cfg.data.border_weights and not any(getattr(t, "supports_pixel_weight", False) for t in terms):
        raise ConfigError(
            f"data.border_weights needs a loss with per-pixel weights (ce, focal); got {cfg.train.loss}"
        )
    return criterion


def _build_ema(decay: float, model: torch.nn.Module) -> Any:
    """timm's ModelEmaV3 (with its warm-up) for ``decay`` > 0, else None."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def _build_meta(cfg: Config, data: TrainData) -> CheckpointMeta:
    norm = data.normalization
    return CheckpointMeta(
        arch=cfg.model.arch,
        num_classes=data.spec.num_classes,
        in_channels=data.in_channels,
        model_params=resolved_params(cfg.model.arch, dict(cfg.model.params)),
        class_names=data.class_names,
        palette=[list(c) for c in data.spec.palette],
        mean=data.mean,
        std=data.std,
        ignore_index=data.spec.ignore_index,
        split={
            "val_ratio": cfg.data.val_ratio,
            "test_ratio": cfg.data.test_ratio,
            "split_seed": cfg.data.split_seed,
            "split_lists": cfg.data.splits,
        },
        resize=cfg.data.resize,
        target=cfg.data.target,
        boundary_width=cfg.data.boundary_width,
        # (what code before data.normalize reads: the same for the 8-bit modes, imagenet and image)
        stretch=list(norm.percentiles)
        if norm is not None and norm.mode == "image" and norm.percentiles
        else None,
        normalize=norm.to_dict() if norm is not None else None,
    )


def _choose_amp(
    cfg: Config,
    committed: dict[str, Any] | None,
    model: torch.nn.Module,
    criterion: Any,
    data: TrainData,
    device: torch.device,
    log: bool = True,
) -> str:
    """``train.amp``, or for ``auto`` the faster precision on a real batch; a resumed run keeps the precision of its
    ``committed`` state (its numerics). Logs the choice (with ``log``)."""
    amp = cfg.train.amp
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 (CUDA only) needs a CUDA device, got {device}; use bf16 or off")
    if amp != "auto":
        return amp
    candidates = amp_candidates(device)
    if committed is not None and committed.get("amp"):
        return committed["amp"]
    if len(candidates) == 1:
        return candidates[0]
    batch = next(
        iter(
            torch.utils.data.DataLoader(
                data.train, batch_size=data.batch_size, collate_fn=data.train_loader.collate_fn
            )
        )
    )
    channels_last = use_channels_last(cfg.train.channels_last, device, "bf16")
    images, masks, extra = to_device(batch, device, channels_last)

    def step(amp: str) -> None:
        forward_loss(model, criterion, device, amp, images, masks, extra).backward()
        model.zero_grad(set_to_none=True)

    with _untouched(model):
        if channels_last:
            model.to(memory_format=torch.channels_last)
        choice, seconds = probe_amp(step, candidates)
    if log:  # the precision choice, in the job's log too (flushed at once)
        times = ", ".join(f"{'fp32' if a == 'off' else a} {s:.3f} s" for a, s in seconds.items())
        log_writer(progress_bars(cfg))(f"train.amp auto: {times} per step on {device.type} -> {choice}")
    return choice


@contextlib.contextmanager
def _untouched(model: torch.nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the model's weights, buffers (batch-norm statistics), memory format, gradients
    and the random streams as they were."""
    saved = copy.deepcopy(model.state_dict())
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            model.to(memory_format=torch.contiguous_format)
            model.load_state_dict(saved)
            model.zero_grad(set_to_none=True)


def _progress_bar(cfg: Config, epoch: int) -> Callable[[Any], Any] | None:
    if not progress_bars(cfg):
        return None
    from tqdm.auto import tqdm

    return lambda loader: tqdm(
        loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, dynamic_ncols=True
    )


def _default_callbacks(
    cfg: Config, on_epoch_end: Callable | None, stage: Path | None = None, run_dir: Path | None = None
) -> list[Callback]:
    cbs: list[Callback] = [MetricsLog(), Checkpointer()]
    if stage is not None and run_dir is not None:
        cbs.append(_Promote(stage, run_dir, cbs))
    bars = progress_bars(cfg)  # without bars (off, or stderr not a terminal) the printer logs more often
    cbs.append(ProgressPrinter(log_writer(bars), bars=bars))
    if cfg.train.tensorboard or (cfg.train.tensorboard is None and tensorboard_available()):
        cbs.append(TensorBoardLogger())
    if on_epoch_end is not None:
        cbs.append(UserHook(on_epoch_end))
    return cbs


RUN_FILES = (
    "config.yaml",
    "plan.yaml",
    "metrics.jsonl",
    STATE_FILE,
    "best.safetensors",
    "best.yaml",
    "last.safetensors",
    "last.yaml",
    "tensorboard",
)
STAGE_DIR = ".overwrite"  # inside the run folder: the new run of --overwrite, up to its first commit


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a run folder that is or lies in a data set, lies in another run
    folder, holds checkpoints (without --resume or --overwrite), or holds a config.yaml or metrics.jsonl that is
    not a seglab run's (never replaced, even with --overwrite)."""
    check_out_dir(run_dir, "run folder")
    ds = data_set_root(run_dir)
    if ds is not None:
        where = "is the data set" if ds == run_dir.resolve() else f"lies in the data set {ds}"
        raise ConfigError(
            f"run folder {run_dir} {where}; seglab never writes into a data set: choose another --out"
        )
    outer = run_root(run_dir.resolve().parent)
    if outer is not None:
        raise ConfigError(f"run folder {run_dir} lies in the run folder {outer}; choose a folder outside it")
    has_ckpt = any((run_dir / n).exists() for n in ("best.safetensors", "last.safetensors", STATE_FILE))
    if has_ckpt and not resume and not overwrite:
        raise ConfigError(
            f"run folder {run_dir} already holds checkpoints; pass --resume to continue or --overwrite to restart"
        )
    checks = (
        ("config.yaml", _is_run_config),
        ("plan.yaml", _is_run_config),
        ("metrics.jsonl", _is_metrics_log),
    )
    for name, ours in checks:
        path = run_dir / name
        if path.exists() and not ours(path):
            raise ConfigError(
                f"run folder {run_dir} holds a {name} that seglab train did not write ({describe(path)}); seglab "
                "never replaces it: choose another --out"
            )


def _is_run_config(path: Path) -> bool:
    """A config.yaml (or plan.yaml) as seglab writes it: a mapping of (some of) the sections data, model, train
    and plan."""
    doc = read_yaml_file(path)
    return isinstance(doc, dict) and bool(doc) and set(doc) <= {"data", "model", "train", "plan"}


def _is_metrics_log(path: Path) -> bool:
    """A metrics.jsonl as seglab writes it: JSON records with an epoch (a last line cut short by a kill aside)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                continue
            return False
        if not isinstance(record, dict) or "epoch" not in record:
            return False
    return True


def _check_budget(run_dir: Path, doc: dict[str, Any], limit: float | None) -> None:
    """ConfigError (before anything is written) when resuming ``run_dir`` could not train a step: its time
    budget ``limit`` is spent, or it stopped on that same limit."""
    spent = float(doc.get("elapsed") or 0.0)
    stopped_here = doc.get("stopped") == "time limit" and doc.get("time_limit") == limit
    if limit is not None and (spent >= limit or stopped_here):
        raise ConfigError(
            f"cannot resume {run_dir}: its time budget is spent ({spent:.0f} s used of train.time_limit "
            f"{limit:g} s); raise train.time_limit to continue (e.g. --time-limit {max(2 * limit, spent + 60):.0f}s)"
        )


def _new_stage(run_dir: Path) -> Path:
    """An empty staging folder for the new run of --overwrite (a leftover of a killed one is discarded)."""
    stage = run_dir / STAGE_DIR
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return stage


class _Promote(Callback):
    """--overwrite: after the new run's first commit (written into the staging folder), its files replace the
    old run's, the state last (the commit point); until then the old run is untouched."""

    def __init__(self, stage: Path, run_dir: Path, callbacks: list[Callback]) -> None:
        self.stage, self.run_dir, self.callbacks = stage, run_dir, callbacks

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        if run.run_dir != self.stage or not (self.stage / STATE_FILE).is_file():
            return
        loggers = [cb for cb in self.callbacks if isinstance(cb, TensorBoardLogger) and cb.writer is not None]
        for cb in loggers:  # its event files move: closed here, reopened at the new place below
            cb.writer.close()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)  # from here the old run can no longer be resumed
        shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
        for name in RUN_FILES:
            if not (self.stage / name).exists() and (self.run_dir / name).is_file():
                (self.run_dir / name).unlink()
        for item in sorted(self.stage.iterdir(), key=lambda p: p.name == STATE_FILE):
            os.replace(item, self.run_dir / item.name)
        self.stage.rmdir()
        fsync_path(self.run_dir)
        run.run_dir = self.run_dir
        if loggers:
            from torch.utils.tensorboard import SummaryWriter

            for cb in loggers:
                cb.writer = SummaryWriter(str(self.run_dir / "tensorboard"))


@contextlib.contextmanager
def _no_half_made_run(run_dir: Path, stage: Path | None = None) -> Iterator[None]:
    """A run that fails before its first epoch is committed leaves nothing behind; with ``stage`` (--overwrite)
    the staging folder goes and the old run is as it was."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except Exception:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        elif not (run_dir / STATE_FILE).exists():
            for name in ("config.yaml", "plan.yaml", "metrics.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        raise


def _remove_if_empty(run_dir: Path) -> None:
    """Remove the run folder this run made if it holds nothing (after the lock, and its file, are gone)."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()
