"""One training step of seglab's U-Net beside segmentation_models_pytorch's, and the host syncs per step of
seglab's trainer.

Table 1, step time. ``seglab.create_model("unet", encoder="resnet18", num_classes=11, in_channels=3)`` and
``smp.Unet("resnet18", encoder_weights=None, classes=11)``, each in fp32 and under bf16 autocast, each with
and without channels_last (model and input): 8 set-ups, all built before timing and stepped in turn (A B C ...
A B C ...) for ``--reps`` rounds after ``--warmup`` steps each, so drift of a shared machine hits all alike;
the table gives the median (and the min-max) of each. A step is forward (under autocast for bf16), the loss in
fp32 (``make_loss({"ce": 1, "dice": 1}, ignore_index=255)`` on ``logits.float()``, labels trusted as the
trainer does), backward and an AdamW step. Defaults: batch 8 at 240x180, 11 classes, 1 thread. smp's U-Net
refuses sizes that are not multiples of 32, so it gets what seglab's Segmentor does inside the model: reflect
padding at the bottom and right to the next multiple of 32 (240x180 -> 256x192), logits cropped back.

Table 2, host syncs per training step of ``seglab.train`` on ``write_folder(tmp, num_images=24, size=32)`` (no
splits/ folder, ``data.val_ratio=0`` and ``data.test_ratio=0``: every image trains, no validation), one epoch
of the model ``model.params={depth: 2, base_channels: 4}`` at ``--sync-batch`` images per step, amp off. Each
code version runs in its own process with ``PYTHONPATH`` at its root: "before" is revision ``--before-rev``
(default 1632519, extracted with ``git archive`` into a temporary folder), "now" is ``--code-root`` (default:
this checkout). How a sync is counted:

* Steps are found from the data loader: ``DataLoader.__iter__`` is wrapped so that step k is the time from the
  moment the training loop receives batch k until it asks for batch k+1 (or hears the loader is exhausted).
  Calls inside the loader (making its iterator, ``__next__``: sampling, reading and collating data, host
  tensors on any device) are not counted, and a window whose loader is never asked again (a one-batch probe,
  such as the amp probe) is dropped. So everything that runs once per run or per epoch outside the loop
  (checkpoints, the epoch's summary) is left out, and what the loop body does every step, or every
  ``log_interval`` steps, is in.
* On CUDA: ``torch.cuda.set_sync_debug_mode("warn")`` for the whole run, and every "synchronizing" warning
  raised inside a step counts (this sees syncs inside ATen too: ``nonzero``, boolean indexing, ``.cpu()``).
* On the CPU nothing synchronizes, so the same reads are counted at the Python level: calls of
  ``Tensor.item``, ``__bool__``, ``__int__``, ``__float__``, ``__index__``, ``__format__``, ``tolist`` and
  ``numpy`` inside a step (the outermost call only, so ``f"{t:.3f}"`` counts once), each of which is a
  device-to-host read on an accelerator. Reads by ``torch.optim`` itself are not counted: the optimizers read
  their per-parameter step counters with ``.item()``, and those counters live on the CPU even when training on
  CUDA (unless ``capturable``/``fused``). Reads inside ATen ops (``nonzero``, ``x[mask]``) are invisible here;
  the CUDA mode sees them.

The table gives the steps counted, the syncs per step (mean; max over the steps), the call sites and the reads
of the whole run outside the steps (set-up, epoch end). Needs ``pip install segmentation-models-pytorch`` (the
``bench`` extra) for table 1. Run:

    .venv/bin/python benchmarks/train_step.py                      # both tables (about 3 minutes on 1 core)
    .venv/bin/python benchmarks/train_step.py --reps 9 --skip-syncs
    .venv/bin/python benchmarks/train_step.py --skip-speed --code-root /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
BEFORE_REV = "1632519"


# ------------------------------------------------------------------------------------------------ step time


class PadToStride(nn.Module):
    """Reflect-pads (N, C, H, W) at the bottom and right to multiples of ``stride`` and crops the logits back,
    as seglab's Segmentor does inside every model; for reference models that refuse other sizes."""

    def __init__(self, model: nn.Module, stride: int = 32) -> None:
        super().__init__()
        self.model, self.stride = model, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.stride, -w % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.model(x)[..., :h, :w]


def build(impl: str, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    if impl == "seglab":
        import seglab

        return seglab.create_model("unet", encoder="resnet18", num_classes=num_classes, in_channels=3)
    import segmentation_models_pytorch as smp

    return PadToStride(smp.Unet("resnet18", encoder_weights=None, classes=num_classes))


def trusted_labels() -> contextlib.AbstractContextManager:
    """The trainer's ``trusted_labels()`` (no per-step range check of the masks) where this seglab has it."""
    try:
        from seglab.losses import trusted_labels as trusted
    except ImportError:
        return contextlib.nullcontext()
    return trusted()


def make_step(
    impl: str, bf16: bool, channels_last: bool, args: argparse.Namespace, device: torch.device
) -> Callable[[], None]:
    from seglab.losses import make_loss

    model = build(impl, args.classes).to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.height, args.width, generator=gen)
    y = torch.randint(0, args.classes, (args.batch, args.height, args.width), generator=gen)
    y[torch.rand(y.shape, generator=gen) < 0.05] = 255  # some ignored pixels
    x, y = x.to(device), y.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = make_loss({"ce": 1.0, "dice": 1.0}, ignore_index=255)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        with trusted_labels():
            loss = criterion(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def model_facts(impl: str, args: argparse.Namespace) -> tuple[float, float]:
    """(parameters in millions, GMAC per image at the padded input size) of ``impl``."""
    from seglab.bench.cost import flop_counter_macs

    model = build(impl, args.classes).eval()
    ph, pw = -(-args.height // 32) * 32, -(-args.width // 32) * 32
    with torch.no_grad():
        macs = flop_counter_macs(model, torch.zeros(1, 3, ph, pw))
    return sum(p.numel() for p in model.parameters()) / 1e6, macs / 1e9


def speed_table(args: argparse.Namespace) -> str:
    from seglab.bench.latency import device_name

    device = torch.device(args.device)
    setups = [
        (impl, prec, cl) for impl in ("seglab", "smp") for prec in ("fp32", "bf16") for cl in (False, True)
    ]
    steps = {s: make_step(s[0], s[1] == "bf16", s[2], args, device) for s in setups}
    for s in setups:
        for _ in range(args.warmup):
            steps[s]()
    times: dict[tuple, list[float]] = {s: [] for s in setups}
    for _ in range(args.reps):
        for s in setups:
            t0 = time.perf_counter()
            steps[s]()
            times[s].append(time.perf_counter() - t0)
    facts = {impl: model_facts(impl, args) for impl in ("seglab", "smp")}
    med = {s: statistics.median(v) for s, v in times.items()}
    lines = [
        f"Training step, batch {args.batch} at {args.height}x{args.width}, {args.classes} classes, "
        f"{args.threads} thread(s) on {device_name(device)} ({device.type}), torch {torch.__version__}; "
        f"median of {args.reps} interleaved repetitions after {args.warmup} warm-up step(s)",
        "",
        f"seglab U-Net(resnet18): {facts['seglab'][0]:.2f} M parameters, "
        f"{facts['seglab'][1]:.3f} GMAC/image; "
        f"smp Unet(resnet18): {facts['smp'][0]:.2f} M, {facts['smp'][1]:.3f} GMAC/image "
        f"(forward, at the padded size)",
        "",
        "| model | precision | memory format | s/step | steps/s | min-max s | ÷ smp (same set-up) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in setups:
        impl, prec, cl = s
        ratio = med[s] / med[("smp", prec, cl)]
        lines.append(
            f"| {impl} | {prec} | {'channels_last' if cl else 'NCHW'} | {med[s]:.3f} | {1 / med[s]:.3f} | "
            f"{min(times[s]):.3f}-{max(times[s]):.3f} | {ratio:.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ host syncs

READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__format__")


class SyncCounter:
    """Counts host reads inside training steps (see the module docstring): ``steps`` holds one Counter of call
    sites per completed step, ``outside`` the reads between steps (epoch ends, after the last step)."""

    def __init__(self, device: torch.device, code_root: Path) -> None:
        self.device, self.code_root = device, code_root
        self.steps: list[collections.Counter] = []
        self.outside: collections.Counter = collections.Counter()
        self._window: tuple[Any, collections.Counter] | None = None  # (the iterator, its step's reads)
        self._in_loader = 0  # > 0 while a data loader produces a batch
        self._in_read = 0  # > 0 inside a counted read (count the outermost only)
        self._undo: list[Callable[[], None]] = []

    def _site(self, what: str) -> str:
        frame = sys._getframe(2)
        torch_dir = str(Path(torch.__file__).parent)
        while frame is not None and (
            frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith(torch_dir)
        ):
            frame = frame.f_back
        if frame is None:
            return what
        path = Path(frame.f_code.co_filename)
        with contextlib.suppress(ValueError):
            path = path.relative_to(self.code_root)
        return f"{what} {path}:{frame.f_lineno}"

    def _record(self, what: str) -> None:
        if self._in_loader:
            return
        site = self._site(what)
        (self._window[1] if self._window is not None else self.outside)[site] += 1

    def _from_optimizer(self) -> bool:
        frame = sys._getframe(2)
        optim_dir = str(Path(torch.optim.__file__).parent)
        return frame is not None and frame.f_code.co_filename.startswith(optim_dir)

    def _patch_reads(self) -> None:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def read(t: torch.Tensor, *a: Any, _name: str = name, _orig: Any = original, **k: Any) -> Any:
                if self._in_read or self._from_optimizer():
                    return _orig(t, *a, **k)
                self._in_read += 1
                try:
                    self._record(_name)
                    return _orig(t, *a, **k)
                finally:
                    self._in_read -= 1

            setattr(torch.Tensor, name, read)
            self._undo.append(lambda n=name, o=original: setattr(torch.Tensor, n, o))

    def _patch_loader(self) -> None:
        loader_cls = torch.utils.data.DataLoader
        original_iter = loader_cls.__iter__
        counter = self

        class Steps:
            """The loader's iterator; each batch it hands out opens a step that the next request closes."""

            def __init__(self, it: Any) -> None:
                self.it = it

            def __iter__(self) -> Steps:
                return self

            def __len__(self) -> int:
                return len(self.it)

            def __next__(self) -> Any:
                if counter._window is not None and counter._window[0] is self:
                    counter.steps.append(counter._window[1])  # the step ended: it asks for the next batch
                    counter._window = None
                counter._in_loader += 1
                try:
                    batch = next(self.it)
                finally:
                    counter._in_loader -= 1
                counter._window = (self, collections.Counter())  # a one-batch probe's is dropped
                return batch

        def iter_steps(loader: Any) -> Steps:
            counter._in_loader += 1  # making the iterator draws the sampler's order: data side, not counted
            try:
                return Steps(original_iter(loader))
            finally:
                counter._in_loader -= 1

        loader_cls.__iter__ = iter_steps  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(loader_cls, "__iter__", original_iter))

    def _patch_cuda_warnings(self) -> None:
        torch.cuda.set_sync_debug_mode("warn")
        self._undo.append(lambda: torch.cuda.set_sync_debug_mode("default"))
        catcher = warnings.catch_warnings()
        catcher.__enter__()
        self._undo.append(lambda: catcher.__exit__(None, None, None))
        warnings.filterwarnings("always", message=".*synchroniz.*")
        shown = warnings.showwarning

        def showwarning(message: Any, category: Any, filename: str, lineno: int, *a: Any, **k: Any) -> None:
            if "synchroniz" in str(message):
                self._record("cuda sync")
            else:
                shown(message, category, filename, lineno, *a, **k)

        warnings.showwarning = showwarning

    def __enter__(self) -> SyncCounter:
        self._patch_loader()
        if self.device.type == "cuda":
            self._patch_cuda_warnings()
        else:
            self._patch_reads()
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        if self._window is not None:  # reads after the last step (the epoch's summary) are not a step's
            self.outside.update(self._window[1])
            self._window = None


def count_syncs(args: argparse.Namespace) -> dict[str, Any]:
    """Run in a child process whose PYTHONPATH starts at the code to measure; returns the counts as a dict."""
    import seglab
    from seglab.config import Config
    from seglab.data.synthetic import write_folder

    device = torch.device(args.device)
    code_root = Path(seglab.__file__).resolve().parents[1]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "data", num_images=24, size=32)
        shutil.rmtree(data / "splits", ignore_errors=True)
        cfg = Config().override(
            [
                f"data.root={data}",
                f"train.out_dir={Path(tmp) / 'run'}",
                "train.epochs=1",
                f"train.batch_size={args.sync_batch}",
                "model.params={depth: 2, base_channels: 4}",
                "train.progress=false",
                "data.val_ratio=0",
                "data.test_ratio=0",
                "train.amp='off'",
                f"train.device={args.device}",
            ]
        )
        with SyncCounter(device, code_root) as counter:
            seglab.train(cfg)
    per_step = [sum(c.values()) for c in counter.steps]
    sites: collections.Counter = collections.Counter()
    for c in counter.steps:
        sites.update(c)
    return {
        "code_root": str(code_root),
        "device": device.type,
        "steps": len(per_step),
        "reads": sum(per_step),
        "max": max(per_step, default=0),
        "sites": dict(sites.most_common()),
        "outside": dict(counter.outside.most_common()),
    }


def extract(rev: str, into: Path) -> Path:
    """``git archive rev`` of this repository, unpacked into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_child(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--sync-child",
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--sync-batch",
        str(args.sync_batch),
    ]
    out = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the sync count of {root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sync_table(args: argparse.Namespace) -> str:
    versions: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.before_rev != "none":
            root = extract(args.before_rev, Path(tmp) / "before")
            versions.append(
                ("before", {**run_child(root, args), "code_root": f"git archive {args.before_rev}"})
            )
        versions.append(("now", run_child(Path(args.code_root).resolve(), args)))
    method = (
        "CUDA sync warnings (torch.cuda.set_sync_debug_mode)"
        if args.device.startswith("cuda")
        else "CPU-side reads: Tensor.item/__bool__/__int__/__float__/__index__/__format__/tolist/numpy"
    )
    lines = [
        "Host syncs per training step of seglab.train (1 epoch, 24 images of 32x32, "
        f"batch {args.sync_batch}, "
        f"no validation, amp off, {args.device}); counted as {method}, inside the steps only",
        "",
        "| trainer | code | steps | syncs per step (mean) | max in one step | where (calls over all steps) "
        "| reads outside the steps (whole run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in versions:
        sites = "; ".join(f"{k} ×{v}" for k, v in r["sites"].items()) or "none"
        outside = "; ".join(f"{k} ×{v}" for k, v in r["outside"].items()) or "none"
        mean = r["reads"] / max(1, r["steps"])
        lines.append(
            f"| {name} | {r['code_root']} | {r['steps']} | {mean:.2f} | {r['max']} | {sites} | {outside} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=180)
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each set-up")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each set-up first")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both tables)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-syncs", action="store_true")
    ap.add_argument("--code-root", default=str(REPO), help='the seglab checkout measured as "now"')
    ap.add_argument(
        "--before-rev", default=BEFORE_REV, help='git revision measured as "before" ("none": skip)'
    )
    ap.add_argument("--sync-batch", type=int, default=1, help="batch size of the sync-count run")
    ap.add_argument("--sync-child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sync_child:
        print(json.dumps(count_syncs(args)))
        return
    if not args.skip_speed:
        print(speed_table(args), end="\n\n", flush=True)
    if not args.skip_syncs:
        print(sync_table(args), flush=True)


if __name__ == "__main__":
    main()
