"""Prediction at scale: ``seglab predict`` over several processes, on one machine or many.

Two ways to split the input list (``collect_inputs``'s, sorted), one code path for an image:

- ``--nproc N`` (``predict(..., nproc=N)``): the calling process checks everything (flags, inputs, every output
  name) and then spawns N workers (at most one per input), each with every N-th image. A worker loads the model
  itself, runs the single-process ``seglab.engine.predict.predict`` on its share with ``--threads`` torch threads,
  else ``max(1, torch's threads // N)``, and reports each finished image, each unreadable one and its records
  through one queue; the caller draws one progress bar and raises one ``PredictError`` summary at the end.
  Spawned, not torchrun: no rendezvous or port, it works from Python as from the CLI, and a worker's per-image
  failures need no collective.
- Under torchrun (``RANK`` / ``WORLD_SIZE`` set): rank r takes inputs r, r + W, ... of the same sorted list, writes
  its outputs into the shared output folder, and at the end rank 0 gathers every rank's records and failures
  through a gloo process group made for that one gather (:func:`gather`) and returns or raises the summary. A
  group, not summary files: nothing is left in the output folder, and no rank has to poll for the others' files;
  the group's timeout is long (a rank finishes its share whenever it finishes), and a rank that fails takes the
  job down through torchrun as for training.

Thread counts: the outputs are those of one process whenever every process runs the model with the same number of
torch threads, which ``--threads`` fixes; with other counts, torch can pick other convolution kernels (a 1x1
convolution runs natively on one thread but in oneDNN on several; oneDNN may split a reduction at high counts),
whose float sums differ in the last bit. See docs/cli.md (predict) for what that changes.
"""

from __future__ import annotations

import os
import queue as queues
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from seglab.errors import ConfigError, SeglabError

GATHER_TIMEOUT = 7 * 24 * 3600.0  # seconds a rank that finished waits for the others at the final gather


def check_nproc(nproc: Any) -> int:
    """``nproc`` as the number of processes (None: 1); ConfigError for anything but an integer >= 1, and for
    N > 1 inside a torchrun job (each rank is one process there: start more ranks instead)."""
    if nproc is None:
        return 1
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc must be an integer >= 1, got {nproc!r}")
    if nproc > 1 and _world()[1] > 1:
        raise ConfigError(
            f"--nproc {nproc} does not combine with torchrun (WORLD_SIZE={_world()[1]}): each rank predicts its "
            "share in one process; start more ranks instead (torchrun --nproc-per-node N)"
        )
    return nproc


def _world() -> tuple[int, int]:
    """(rank, world size) of this process in a torchrun job; (0, 1) outside one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def rank_share(files: Sequence[Path], device: Any) -> tuple[list[Path], Any]:
    """This rank's inputs (every W-th from its rank on; all of them outside torchrun) and its device
    (``cuda:LOCAL_RANK`` on CUDA, see ``seglab.engine.distributed.rank_device``)."""
    rank, world = _world()
    if world == 1:
        return list(files), device
    from seglab.engine.distributed import rank_device

    return list(files[rank::world]), rank_device(device, int(os.environ.get("LOCAL_RANK", "0")), world)


def gather(
    results: list[dict[str, Any]], failures: list[tuple[Path, str]]
) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Under torchrun: every rank's records and failures on rank 0 (the other ranks keep their own records and
    report no failures: rank 0 summarises them); outside torchrun: as they are."""
    if _world()[1] == 1:
        return results, failures
    import torch
    import torch.distributed as dist

    from seglab.engine.distributed import process_group

    with process_group(torch.device("cpu"), GATHER_TIMEOUT) as (d, _):
        parts: list[Any] = [None] * d.world_size if d.is_main else []
        dist.gather_object((results, failures), parts if d.is_main else None, dst=0, group=d.control)
    if not d.is_main:
        return results, []
    return [r for rs, _ in parts for r in rs], [f for _, fs in parts for f in fs]


def worker_threads(nproc: int, threads: int | None) -> int:
    """Torch threads per worker: ``threads`` when given, else torch's threads shared out (at least 1)."""
    if threads:
        return threads
    import torch

    return max(1, torch.get_num_threads() // nproc)


def predict_in_processes(
    work: Callable[..., None],
    call: dict[str, Any],
    files: Sequence[Path],
    nproc: int,
    threads: int | None,
    log: Callable[[str, Any], None],
    progress: bool,
    on_image: Callable[[Path], None] | None,
) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """``files`` shared out over ``nproc`` spawned processes (worker k: ``files[k::nproc]``), each running
    ``work(k, call, share, threads, messages)`` (predict's ``_shard_worker``: the single-process predict with
    ``call``'s arguments); ``log(line, bar)`` prints a worker's line. Returns every worker's records and failures.
    A worker that stops on an error (a bad checkpoint, a full disk) stops them all: its SeglabError is raised
    once; a crash or a killed worker is one SeglabError naming the image."""
    import multiprocessing as mp

    shares = [list(files[k::nproc]) for k in range(min(nproc, len(files)))]
    n = len(shares)
    per_worker = worker_threads(n, threads)
    ctx = mp.get_context("spawn")  # fork would copy the caller's threads and torch state
    messages = ctx.Queue()
    call = {k: v for k, v in call.items() if k not in ("log", "on_image")}  # callables stay here
    procs = [
        ctx.Process(target=work, args=(k, call, share, per_worker, messages), daemon=True)
        for k, share in enumerate(shares)
    ]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(files), desc=f"predict ({n} processes)", leave=False, dynamic_ncols=True, disable=None
        )
    done_count = [0] * n
    results: list[dict[str, Any]] = []
    failures: list[tuple[Path, str]] = []
    pending = set(range(n))
    try:
        for p in procs:
            p.start()
        while pending:
            kind, k, *payload = _next_message(messages, procs, pending)
            if kind == "image":
                done_count[k] += 1
                if bar is not None:
                    bar.update(1)
                if on_image is not None:
                    on_image(Path(payload[0]))
            elif kind == "log":
                log(payload[0], bar)
            elif kind == "done":
                results += payload[0]
                failures += payload[1]
                pending.discard(k)
            else:  # "error" (a SeglabError) or "crash": the first one ends the run
                raise _worker_error(kind, k, n, payload, shares[k], done_count[k])
    finally:
        if bar is not None:
            bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join()
        messages.close()
    return results, failures


def _next_message(messages: Any, procs: list[Any], pending: set[int], grace: float = 2.0) -> tuple[Any, ...]:
    """The next worker message; a worker that ended without saying "done" (killed, out of memory) is a crash
    (after ``grace`` seconds for what it sent last)."""
    while True:
        try:
            return messages.get(timeout=0.2)
        except queues.Empty:
            pass
        ended = [k for k in sorted(pending) if procs[k].exitcode is not None]
        if not ended:
            continue
        try:  # a process that ended has flushed what it sent: read that before calling it dead
            return messages.get(timeout=grace)
        except queues.Empty:
            k = ended[0]
            code = procs[k].exitcode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return ("crash", k, f"it {how} (out of memory?)", None)


def _worker_error(kind: str, k: int, n: int, payload: list[Any], share: list[Path], done: int) -> SeglabError:
    """One line for the first worker that stopped: its own SeglabError as it is, else what happened and where."""
    if kind == "error":
        cls, message = payload
        try:
            return cls(message) if issubclass(cls, SeglabError) else SeglabError(message)
        except Exception:  # noqa: BLE001 - a subclass with another signature: the message is what counts
            return SeglabError(message)
    what, hint = payload
    where = f" on {share[done]}" if done < len(share) else ""
    return SeglabError(f"prediction process {k + 1} of {n} failed{where}: {what}{hint or ''}")


def crash(e: BaseException) -> tuple[str, str]:
    """(what happened, what to try) for an unexpected error in a worker."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in first
    ):
        return f"out of memory ({what})", "; lower --nproc, or bound each image's memory with --tile"
    return what, " (run without --nproc for the traceback)"
