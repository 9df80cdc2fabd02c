"""A torchrun worker for the fault tests: ``seglab ARGS`` with a fault injected in one rank.

``SEGLAB_TEST_FAULT=MODE:RANK:BATCH`` makes rank RANK, at its BATCH-th training batch (counted from 1 over the whole
run) of the first attempt (torchrun's restart count 0), do MODE:

- ``kill``: SIGKILL itself (a worker lost mid-epoch);
- ``raise``: raise RuntimeError("injected fault on rank RANK");
- ``hang``: sleep for an hour (a stuck worker: the others must time out).

The fault is placed by wrapping ``seglab.engine.loop.to_device``, which every training batch passes through.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _install(mode: str, rank: int, batch: int) -> None:
    import seglab.engine.loop as loop

    if int(os.environ.get("RANK", "0")) != rank or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")):
        return
    real, seen = loop.to_device, [0]

    def to_device(*args, **kwargs):
        seen[0] += 1
        if seen[0] == batch:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "raise":
                raise RuntimeError(f"injected fault on rank {rank}")
            if mode == "hang":
                time.sleep(3600)
        return real(*args, **kwargs)

    loop.to_device = to_device


if __name__ == "__main__":
    fault = os.environ.get("SEGLAB_TEST_FAULT")
    if fault:
        mode, rank, batch = fault.split(":")
        _install(mode, int(rank), int(batch))
    from seglab.cli import main

    sys.exit(main(sys.argv[1:]))
