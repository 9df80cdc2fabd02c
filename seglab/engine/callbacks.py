"""Callbacks: what happens around the training loop, one job each (detectron2's hooks, Lightning's callbacks).

The loop calls ``on_train_start``, ``on_log`` (every ``train.log_interval`` optimizer steps), ``on_epoch_end``
(in list order; returning True stops training) and ``on_train_end``. The default list, in order:
``MetricsLog`` (the epoch's line in metrics.jsonl), ``Checkpointer`` (commit the state, then the checkpoints),
``ProgressPrinter`` (one line per epoch to stderr, flushed; more for long epochs without progress bars),
``TensorBoardLogger`` (when tensorboard is installed or asked for).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seglab.checkpoint import CheckpointMeta
from seglab.config import Config
from seglab.engine.data import TrainData
from seglab.engine.distributed import Dist
from seglab.engine.state import TrainState
from seglab.errors import ConfigError
from seglab.files import append_text, to_json


@dataclass
class Run:
    """What callbacks see of a training run."""

    cfg: Config
    run_dir: Path
    data: TrainData
    model: torch.nn.Module
    ema: Any
    optimizer: torch.optim.Optimizer
    scaler: Any
    state: TrainState
    meta: CheckpointMeta
    signature: dict[str, Any]
    device: torch.device
    dist: Dist = field(
        default_factory=Dist
    )  # this process's place in a distributed run (callbacks run on rank 0)
    # the class weights of the loss's cross-entropy term (train.class_weights resolved), or None
    class_weights: list[float] | None = None

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated and saved: the EMA's when there is one."""
        return self.model if self.ema is None else self.ema.module


class Callback:
    def on_train_start(self, run: Run) -> None:
        pass

    def on_log(self, run: Run, scalars: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> bool | None:
        pass

    def on_train_end(self, run: Run) -> None:
        pass


class MetricsLog(Callback):
    """Appends the epoch's record to ``metrics.jsonl`` (fsynced; a line past the committed epoch is dropped on
    resume)."""

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        append_text(run.run_dir / "metrics.jsonl", to_json(record) + "\n")


class Checkpointer(Callback):
    """Commits the epoch (``last.state.pt``) and writes the best/last checkpoints derived from it."""

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        run.meta.epoch = record["epoch"]
        run.meta.metrics = {k[4:]: v for k, v in record.items() if k.startswith("val_")}
        if not run.meta.metrics or run.meta.metrics["miou"] > run.state.best["miou"]:
            run.state.best = {"miou": run.meta.metrics.get("miou", -1.0), "epoch": record["epoch"]}
        run.state.save(
            run.run_dir,
            model=run.model,
            ema=run.ema,
            optimizer=run.optimizer,
            scaler=run.scaler,
            meta=run.meta,
            signature=run.signature,
            epochs=run.cfg.train.epochs,
        )


def progress_bars(cfg: Config) -> bool:
    """Progress bars only for someone watching: ``train.progress`` and stderr a terminal (or a Jupyter kernel, where
    tqdm draws widgets). In a file (nohup, SLURM, Kubernetes logs) a bar is noise that shows nothing until it ends;
    the log lines take its place."""
    watched = getattr(sys.stderr, "isatty", lambda: False)() or "ipykernel" in sys.modules
    return bool(cfg.train.progress) and watched


def log_writer(bars: bool) -> Callable[[str], None]:
    """Where training's log lines go: stderr, flushed at once (beside the ``bars``, through tqdm.write)."""
    if bars:
        from tqdm.auto import tqdm

        return lambda line: tqdm.write(line, file=sys.stderr)
    return lambda line: print(line, file=sys.stderr, flush=True)


class ProgressPrinter(Callback):
    """One line per epoch (loss, validation mIoU, learning rate, throughput, seconds); at the start, the class
    weights if any. Without progress ``bars`` also a line at the log interval (``train.log_interval`` steps) that
    comes ``interval_s`` or more after the last line, so a long epoch shows that it is moving."""

    def __init__(self, write: Callable[[str], None], *, bars: bool = True, interval_s: float = 30.0) -> None:
        self.write, self.bars, self.interval_s = write, bars, interval_s
        self.last = time.monotonic()

    def on_train_start(self, run: Run) -> None:
        self.last = time.monotonic()
        if run.class_weights is not None:
            pairs = ", ".join(f"{n} {w:.4g}" for n, w in zip(run.data.class_names, run.class_weights))
            how = run.cfg.train.class_weights
            self.write(f"class weights ({how if isinstance(how, str) else 'given'}): {pairs}")

    def on_log(self, run: Run, scalars: dict[str, float]) -> None:
        if self.bars or time.monotonic() - self.last < self.interval_s:
            return
        self.last = time.monotonic()
        self.write(
            f"epoch {run.state.epoch + 1}/{run.cfg.train.epochs}  step {scalars['step']}  "
            f"loss {scalars['loss']:.4f}  lr {scalars['lr']:.3g}"
        )

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        self.last = time.monotonic()
        val = (
            f"val mIoU {record['val_miou']:.4f}  pixel acc {record['val_pixel_accuracy']:.4f}  "
            if "val_miou" in record
            else ""
        )
        end = "  (time limit reached)" if record.get("stopped") else ""
        self.write(
            f"epoch {record['epoch']}/{run.cfg.train.epochs}  loss {record['train_loss']:.4f}  {val}"
            f"lr {record['lr']:.3g}  {record['images_per_s']:.1f} img/s  {record['seconds']:.1f} s{end}"
        )


class UserHook(Callback):
    """``fn(epoch, record)`` after each epoch's commit; returning True stops training."""

    def __init__(self, fn: Callable[[int, dict[str, Any]], bool | None]) -> None:
        self.fn = fn

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> bool | None:
        return self.fn(record["epoch"], record)


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``<run>/tensorboard``: the training loss and learning rate every log interval,
    the validation metrics and up to ``images`` validation overlays (image | truth | prediction) every epoch."""

    def __init__(self, images: int = 3) -> None:
        if not tensorboard_available():
            raise ConfigError(
                "train.tensorboard needs the tensorboard package: pip install 'seglab[tensorboard]'"
            )
        self.images, self.writer = images, None

    def on_train_start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=run.state.step or None)

    def on_log(self, run: Run, scalars: dict[str, float]) -> None:
        self.writer.add_scalar("train/loss", scalars["loss"], scalars["step"])
        self.writer.add_scalar("train/lr", scalars["lr"], scalars["step"])

    def on_epoch_end(self, run: Run, record: dict[str, Any]) -> None:
        step = run.state.step
        for key, value in record.items():
            if key.startswith("val_") and isinstance(value, int | float):
                self.writer.add_scalar(f"val/{key[4:]}", value, step)
        self.writer.add_scalar("train/epoch_loss", record["train_loss"], step)
        if self.images and len(run.data.val):
            self.writer.add_images("val/overlays", self._overlays(run), step, dataformats="NHWC")
        self.writer.flush()

    @torch.inference_mode()
    def _overlays(self, run: Run) -> Any:
        import numpy as np

        from seglab.engine.evaluate import upsample_logits
        from seglab.inference import overlay
        from seglab.inference import shown as picture

        model = run.evaluated
        was_training = model.training
        model.eval()
        palette = run.meta.palette
        rows = []
        for i in range(min(self.images, len(run.data.val))):
            raw, truth = run.data.val.load(i)
            x, _ = run.data.val.transform(raw, truth)[:2]
            # with data.resize the logits are upsampled to the label's size
            logits = upsample_logits(model(x[None].to(run.device)), truth.shape)
            pred = logits.argmax(1)[0].cpu().numpy()
            shown = np.clip(truth, 0, len(palette) - 1)
            raw = picture(raw, run.meta)  # 16-bit, float, N bands: through the model's normalisation
            rgb = raw if raw.shape[2] == 3 else np.repeat(raw, 3, axis=2)
            rows.append(
                np.concatenate([rgb, overlay(raw, shown, palette), overlay(raw, pred, palette)], axis=1)
            )
        model.train(was_training)
        h = max(r.shape[0] for r in rows)
        w = max(r.shape[1] for r in rows)
        return np.stack([np.pad(r, ((0, h - r.shape[0]), (0, w - r.shape[1]), (0, 0))) for r in rows])

    def on_train_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()
