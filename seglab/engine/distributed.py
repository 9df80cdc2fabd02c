"""Distributed training and evaluation, set up in one place, on PyTorch's own launcher.

seglab does not launch processes itself: ``torchrun`` (``torch.distributed.run``) starts them, sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``, restarts them (``--max-restarts``) and takes the job down when one fails;
``seglab train --nproc N`` and ``seglab evaluate --nproc N`` only call it (``launch``). In each process:

- ``process_group`` joins the job: ``nccl`` on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), ``gloo`` on the
  CPU, with a timeout on every collective, so a rank that hangs fails the job instead of stalling it;
- ``Dist`` is what the trainer asks of it: rank, world size, rank 0's value of anything (``broadcast``), sums
  (``all_sum``) and the answer of rank 0 or its error (``on_main``), over a gloo group of CPU tensors so that
  host-side agreement never waits on the GPU;
- ``wrap_ddp`` puts the model in ``DistributedDataParallel`` (with ``SyncBatchNorm`` when asked), ``SharedBudget``
  makes every rank read rank 0's clock, and ``ShardSampler`` splits an evaluation split without repeating images.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import Sampler

from seglab.engine.optim import Budget
from seglab.errors import ConfigError, SeglabError
from seglab.files import atomic_write

T = TypeVar("T")


def launched() -> bool:
    """True in a process that torchrun started as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restarted() -> bool:
    """True in a process that torchrun restarted after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def backend_for(device: torch.device) -> str:
    """The collective backend of ``device``: ``nccl`` on CUDA, ``gloo`` on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    """The device of the process with ``local_rank`` on its machine: ``cuda:LOCAL_RANK`` for CUDA (one GPU each),
    the CPU as it is. A CUDA device with an index cannot be shared by several processes."""
    if device.type != "cuda":
        return device
    if device.index is not None and world_size > 1:
        raise ConfigError(
            f"device {device} names one GPU but {world_size} processes each need their own; use cuda "
            "(process k on a machine uses cuda:k)"
        )
    return torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))


def ddp_kwargs(device: torch.device, sync_bn: bool) -> dict[str, Any]:
    """``DistributedDataParallel`` arguments for ``device``: the GPU of this process on CUDA, none on the CPU.
    Buffers (batch-norm statistics) are broadcast from rank 0 at every forward pass unless SyncBatchNorm already
    keeps them equal."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch 2.14 renamed broadcast_buffers to forward_sync_buffers (buffers are broadcast at construction either way)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {"device_ids": ids, "output_device": device.index if ids else None, sync: not sync_bn}


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``Dist()`` is a single process (every method then does nothing)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # gloo group for host-side agreement (None: the default group)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only, its result on every rank; a SeglabError it raises is raised on every rank,
        so no rank waits for one that gave up."""
        result: Any = None
        error: SeglabError | None = None
        if self.is_main:
            try:
                result = fn()
            except SeglabError as e:
                error = e
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """The sums over ranks of ``values`` (float64, on the CPU)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        return t.tolist()

    def from_main(self, values: Sequence[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (float64 over the CPU group: cheaper than ``broadcast``)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64)
        dist.broadcast(t, src=0, group=self.control)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm statistics drift apart without SyncBatchNorm)."""
        if self.enabled:
            import torch.distributed as dist

            for b in module.buffers():
                dist.broadcast(b, src=0)


@contextlib.contextmanager
def process_group(device: torch.device, timeout: float = 600.0) -> Iterator[tuple[Dist, torch.device]]:
    """This process's ``Dist`` and device for the duration of a job.

    Under torchrun (``WORLD_SIZE`` > 1) it joins the job's process group (``backend_for`` the device, collectives
    time out after ``timeout`` seconds) and leaves it when the job is done; a group the caller initialised is used
    as it is; otherwise a single process. On CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    import torch.distributed as dist

    own = False
    if not (dist.is_available() and dist.is_initialized()):
        if not launched():
            yield Dist(), device
            return
        own = True
    world = int(os.environ["WORLD_SIZE"]) if own else dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend_for(device)
    wait = datetime.timedelta(seconds=timeout)
    if own:
        from torch.distributed.rendezvous import rendezvous

        store, rank, world = next(rendezvous("env://", timeout=wait))
        # keys of their own for each attempt: after a restart, the agent's store still holds the addresses of the
        # processes that died, and gloo would try to connect to them
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"seglab/attempt_{attempt}/", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=wait)
    control = dist.new_group(backend="gloo", timeout=wait) if dist.get_backend() != "gloo" else None
    yield Dist(dist.get_rank(), dist.get_world_size(), local_rank, control), device
    # only reached when the job succeeded: a failed rank exits and torchrun stops the others
    if own:
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over ranks at every optimizer step)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, **ddp_kwargs(device, sync_bn))


class SharedBudget(Budget):
    """A time budget that every rank reads from rank 0's clock: the schedule's progress and the decision to stop
    must not differ between ranks (a rank that stops alone leaves the others waiting in a collective)."""

    def __init__(self, limit: float | None, dist: Dist, spent: float = 0.0) -> None:
        super().__init__(limit, spent)
        self.dist = dist

    def elapsed(self) -> float:
        local = super().elapsed()
        return local if self.limit is None else self.dist.from_main([local])[0]

    def exhausted(self) -> bool:
        if self.limit is None:
            return False
        return bool(self.dist.from_main([super().elapsed() + self.reserve >= self.limit])[0])


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` of ``size`` items: every item on exactly one rank (no padding repeats,
    unlike DistributedSampler, so the summed counts equal one process's)."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def record_error(error: BaseException) -> None:
    """Write ``error`` to torchrun's error file for this process (when it set one), so the launcher reports the
    real message of the rank that failed first."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import time
    import traceback

    message = str(error) if isinstance(error, SeglabError) else f"{type(error).__name__}: {error}"
    data = {
        "message": {
            "message": message,
            "extraInfo": {
                "py_callstack": "".join(traceback.format_exception(error)),
                "timestamp": str(int(time.time())),
            },
        }
    }
    # written whole or not at all: torchrun stops the other workers when one fails, and a worker stopped in the
    # middle of this write left a cut file that made torchrun itself fail on reading it
    with contextlib.suppress(OSError, SeglabError):
        atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data)), durable=False)


def launch(nproc: int, command: Sequence[str], max_restarts: int = 0) -> None:
    """Run ``python -m seglab COMMAND`` in ``nproc`` processes on this machine through torchrun
    (``--standalone``: a local rendezvous on a free port); a failed process fails the job with its message."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    args = get_args_parser().parse_args(
        [
            "--standalone",
            f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}",
            "-m",
            "seglab",
            *command,
        ]
    )
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
        message = str(message).strip().splitlines()[0] if message else "no message"
        raise SeglabError(
            f"process {rank} of {nproc} failed (exit code {failure.exitcode}): {message}"
        ) from None
