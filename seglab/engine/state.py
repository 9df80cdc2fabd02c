"""The training state of a run folder: one file, ``last.state.pt``, written atomically, is the commit point.

Each epoch ends with three writes, in this order:

1. a line in ``metrics.jsonl`` (a line past the committed epoch is dropped on resume);
2. ``last.state.pt`` (fsynced, renamed): the epoch, the raw weights, the EMA weights, the optimizer, schedule and
   scaler, the best epoch so far, and the description of the checkpoints this epoch produces. Once it is renamed,
   the epoch is done, whatever happens next;
3. the checkpoints ``best`` (when the epoch improved on it) and ``last``, derived from the state.

A run killed at any point resumes from the last committed state: ``repair_checkpoints`` rewrites ``last`` and, when the
committed epoch was the best one, ``best`` from it, so the files always agree with the state and the run continues
exactly as an uninterrupted one. Whatever cannot be trusted (an unreadable state, a model that changed, a best
checkpoint from another run) is refused with one line that names the files.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seglab.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from seglab.errors import CheckpointError, ConfigError, SeglabError
from seglab.files import atomic_write
from seglab.models.torch_files import torch_load_problem

STATE_FORMAT = "seglab-train-state/2"
STATE_FILE = "last.state.pt"


@dataclass
class TrainState:
    """The progress of a run: what ``last.state.pt`` records beside the weights and the optimizer."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done (the schedule's and the EMA's clock)
    elapsed: float = 0.0  # seconds of the time budget spent
    best: dict[str, Any] = field(default_factory=lambda: {"miou": -1.0})
    amp: str | None = None  # the precision in use (train.amp: auto resolves it once, at the start)
    stopped: str | None = None  # why training ended early ("time limit"), if it did
    time_limit: float | None = None  # train.time_limit (seconds) the run was last given

    def save(
        self,
        run_dir: Path,
        *,
        model: torch.nn.Module,
        ema: Any,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        meta: CheckpointMeta,
        signature: dict[str, Any],
        epochs: int,
    ) -> dict[str, Any]:
        """Commit: write the state with everything needed to continue, then the checkpoints derived from it."""
        doc = {
            **dataclasses.asdict(self),
            "epochs": epochs,
            "signature": signature,
            "model": model.state_dict(),
            "ema": None if ema is None else ema.module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "meta": dataclasses.asdict(meta),
        }
        save_state(run_dir, doc)
        write_checkpoints(run_dir, doc)
        return doc

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        doc: dict[str, Any],
        *,
        signature: dict[str, Any],
        model: torch.nn.Module,
        ema: Any,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        epochs: int,
        device: torch.device,
        repair: bool = True,
        time_limit: float | None = None,
    ) -> TrainState:
        """Load ``doc``, the committed state of ``run_dir`` (``load_state``), into the training objects and (with
        ``repair``: the process that writes the run folder) make the run's checkpoints agree with it. Refuses, in
        one line, whatever would not continue exactly; warns when ``epochs`` or ``time_limit`` (the run's
        train.epochs and train.time_limit now) differ from the state's, as the schedule then changes."""
        check_signature(run_dir, doc.get("signature"), signature)
        if "meta" in doc:  # the state holds the weights it was committed with
            raw, averaged = doc["model"], doc.get("ema")
        else:  # written by seglab before 0.2: the weights are in last.safetensors, which must be of the same epoch
            raw, averaged = _legacy_weights(run_dir, doc, device)
        if ema is not None and averaged is None:
            raise ConfigError(f"cannot resume {run_dir} with train.ema: it was trained without it")
        try:
            model.load_state_dict(raw)
            if ema is not None:
                ema.module.load_state_dict(averaged)
            optimizer.load_state_dict(doc["optimizer"])
            if doc.get("scaler"):
                scaler.load_state_dict(doc["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"cannot resume {run_dir}: {STATE_FILE} does not fit this model and optimizer "
                f"({str(e).strip().splitlines()[0][:160]}); resume with the run's own config.yaml or restart with "
                f"--overwrite"
            ) from None
        if "meta" in doc and repair:
            repair_checkpoints(run_dir, doc)
        if doc.get("epochs") not in (None, epochs):
            warnings.warn(
                f"train.epochs changed from {doc['epochs']} to {epochs}: the learning-rate schedule goes on from "
                f"the step reached over the new length, so the result differs from a run planned for {epochs} "
                f"epochs from the start",
                stacklevel=4,
            )
        if "time_limit" in doc and doc["time_limit"] != time_limit:
            warnings.warn(
                f"train.time_limit changed from {_limit(doc['time_limit'])} to {_limit(time_limit)}: the "
                f"learning-rate schedule goes on from the time spent ({float(doc.get('elapsed') or 0):.0f} s) over the "
                f"new budget, so the result differs from a run given {_limit(time_limit)} from the start",
                stacklevel=4,
            )
        names = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in doc.items() if k in names})
        if "step" not in doc:  # an older state: the scheduler counted the steps
            state.step = int(doc.get("scheduler", {}).get("last_epoch", 0))
        return state


def _limit(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:g} s"


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Commit one epoch: write ``last.state.pt`` atomically (temporary name, fsync, rename, fsync the folder)."""
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save({"format": STATE_FORMAT, **state}, tmp))


def load_state(run_dir: Path) -> dict[str, Any]:
    """The committed state of ``run_dir``; one-line errors for a missing, truncated or foreign file."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        why = (
            "its run stopped before the first epoch ended, so start it again without --resume"
            if (run_dir / "config.yaml").is_file()
            else "pass the folder of an earlier run"
        )
        raise ConfigError(f"cannot resume: {run_dir} has no {STATE_FILE}; {why}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled code
        raise CheckpointError(
            f"cannot resume: {path} cannot be loaded: {torch_load_problem(e)}; restart the run with --overwrite"
        ) from None
    if not isinstance(state, dict) or "epoch" not in state or "optimizer" not in state:
        raise CheckpointError(
            f"cannot resume: {path} is not a seglab training state; restart with --overwrite"
        )
    return state


def model_signature(arch: str, params: dict[str, Any], num_classes: int, in_channels: int) -> dict[str, Any]:
    """What must not change between a run and its resumption: the architecture, its arguments and the data's
    class and channel counts."""
    return {"arch": arch, "params": dict(params), "num_classes": num_classes, "in_channels": in_channels}


def check_signature(run_dir: Path, saved: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """ConfigError naming the first setting that differs from the run being resumed."""
    if saved is None or saved == now:
        return
    flat_saved = {
        **{k: v for k, v in saved.items() if k != "params"},
        **{f"params.{k}": v for k, v in saved["params"].items()},
    }
    flat_now = {
        **{k: v for k, v in now.items() if k != "params"},
        **{f"params.{k}": v for k, v in now["params"].items()},
    }
    for key in sorted(set(flat_saved) | set(flat_now)):
        if flat_saved.get(key) != flat_now.get(key):
            where = f"model.{key}" if key in ("arch",) or key.startswith("params.") else f"the data's {key}"
            raise ConfigError(
                f"cannot resume {run_dir}: {where} is {flat_now.get(key)!r} now but the run was trained with "
                f"{flat_saved.get(key)!r}; resume with the run's own config.yaml, or restart with --overwrite"
            )


def derived_checkpoints(state: dict[str, Any]) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """The checkpoints a committed state produces: name -> (weights, sidecar meta as a dict)."""
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    out = {"last": (weights, state["meta"])}
    if state["best"].get("epoch") == state["epoch"]:
        out["best"] = (weights, state["meta"])
    return out


def write_checkpoints(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoints of a committed state (best first, then last)."""
    items = derived_checkpoints(state)
    for name in ("best", "last"):
        if name in items:
            tensors, meta = items[name]
            save_checkpoint(run_dir / name, tensors, CheckpointMeta(**meta))


def repair_checkpoints(run_dir: Path, state: dict[str, Any]) -> None:
    """Make the checkpoints agree with the committed state before training goes on.

    ``last`` (and ``best`` when the committed epoch was the best) are rewritten from the state: a kill between the
    state and the checkpoints may have left them missing, half-replaced or one epoch ahead. An older best must be
    intact and of the epoch the state names, else the run is refused (that best cannot be rebuilt from the state).
    """
    for tmp in run_dir.glob(
        ".*.tmp"
    ):  # temporaries of writes a kill cut short (see seglab.files.atomic_write)
        tmp.unlink(missing_ok=True)
    write_checkpoints(run_dir, state)
    best_epoch = state["best"].get("epoch")
    if best_epoch is None or best_epoch == state["epoch"]:
        return
    try:
        best = read_meta(run_dir / "best")
    except SeglabError as e:
        raise CheckpointError(
            f"cannot resume {run_dir}: {STATE_FILE} says the best epoch is {best_epoch} but {e}"
        ) from None
    if best.epoch != best_epoch:
        raise CheckpointError(
            f"cannot resume {run_dir}: best.safetensors is from epoch {best.epoch} but {STATE_FILE} says the "
            f"best epoch is {best_epoch}; the files come from different runs (restart with --overwrite)"
        )


def read_history(log_path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """The metrics log's records of epochs 1..``upto_epoch``; a line cut short by a kill is dropped."""
    if not log_path.is_file():
        return []
    records = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(record, dict)
            and isinstance(record.get("epoch"), int)
            and record["epoch"] <= upto_epoch
        ):
            records.append(record)
    return records


def _legacy_weights(run_dir: Path, state: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """(raw, averaged) weights of a state file that does not hold them (an older seglab): from last.safetensors,
    refused unless its sidecar is of the state's epoch."""
    from safetensors.torch import load_file

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
