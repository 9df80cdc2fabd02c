"""Training logs while it runs: with progress bars off, or stderr not a terminal (nohup, SLURM, Kubernetes), one
flushed line per epoch on stderr, a line per log interval in long epochs, and the precision choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seglab.config import Config
from seglab.engine.callbacks import ProgressPrinter

REPO = Path(__file__).resolve().parents[2]
TINY = "model.params={depth: 2, base_channels: 4}"


@pytest.mark.parametrize("flags", [["--no-progress"], []], ids=["no-progress", "stderr-not-a-terminal"])
def test_epoch_lines_arrive_while_the_run_goes_on(shapes_dir, tmp_path, flags):
    """stderr is a pipe, read as the lines come: the first epoch's line arrives while the process still runs,
    with no progress-bar noise ('\\r') in between."""
    cmd = [
        sys.executable,
        "-m",
        "seglab",
        "train",
        "--data",
        str(shapes_dir),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--set",
        TINY,
        "--set",
        "train.tensorboard=false",
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, running_at_first_epoch = [], None
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("epoch 1/4") and running_at_first_epoch is None:
                running_at_first_epoch = proc.poll() is None
        out = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, "".join(lines)[-2000:]
    finally:
        proc.kill()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [e.split()[1] for e in epochs] == ["1/4", "2/4", "3/4", "4/4"], lines
    assert all(
        " loss " in e and " lr " in e and " val mIoU " in e and e.rstrip().endswith(" s") for e in epochs
    )
    assert running_at_first_epoch is True  # flushed at once, not when the process ends
    assert "\r" not in "".join(lines)
    assert "best validation mIoU" in out


def _config(data: Path, out: Path, **train: object) -> Config:
    sets = [f"train.{k}={v}" for k, v in train.items()]
    return Config().override(
        [
            f"data.root={data}",
            f"train.out_dir={out}",
            "train.epochs=2",
            "train.batch_size=4",
            TINY,
            "train.tensorboard=false",
            "data.num_workers=0",
            *sets,
        ]
    )


def test_long_epochs_log_at_the_interval_without_bars(shapes_dir, tmp_path):
    """Without bars the printer logs at the log interval once interval_s has passed since its last line (0 here:
    every interval); with bars, the bar shows the steps and only epoch lines are written."""
    from seglab.engine.train import train

    quiet, chatty = [], []
    cbs = [
        ProgressPrinter(quiet.append, bars=True, interval_s=0.0),
        ProgressPrinter(chatty.append, bars=False, interval_s=0.0),
    ]
    train(_config(shapes_dir, tmp_path / "run", progress="false", log_interval=3), callbacks=cbs)
    assert [line.split()[:2] for line in quiet] == [["epoch", "1/2"], ["epoch", "2/2"]]
    steps = [line for line in chatty if " step " in line]
    # 8 steps an epoch: intervals end at steps 3, 6 and the epoch's end (8), then 11, 14, 16
    assert [line.split()[1] for line in steps] == ["1/2", "1/2", "1/2", "2/2", "2/2", "2/2"]
    assert [int(line.split()[3]) for line in steps] == [3, 6, 8, 11, 14, 16]
    assert all(" loss " in line and " lr " in line for line in steps)
    assert chatty.index(steps[3]) > next(
        i for i, line in enumerate(chatty) if line.startswith("epoch 1/2  loss")
    )


def test_the_precision_choice_is_logged_without_bars(shapes_dir, tmp_path, monkeypatch, capsys):
    import seglab.engine.train as engine_train

    monkeypatch.setattr(engine_train, "amp_candidates", lambda device: ["off", "bf16"])
    monkeypatch.setattr(
        engine_train, "probe_amp", lambda step, candidates: ("off", {"off": 0.01, "bf16": 0.02})
    )
    engine_train.train(_config(shapes_dir, tmp_path / "run", progress="false", epochs=1))
    err = capsys.readouterr().err
    assert "train.amp auto: fp32 0.010 s, bf16 0.020 s per step on cpu -> off\n" in err
    assert "epoch 1/1  loss " in err
