"""A run folder has one writer, and nothing a user asked for destroys it (issue 26): a second writer (train,
--resume, --overwrite, calibrate, evaluate --report into the run) is refused in one line naming the holder's PID;
--overwrite changes nothing until the new run's first commit; --resume with a spent time budget says so and
rewrites nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest
import torch

from seglab.checkpoint import read_meta
from seglab.config import Config
from seglab.engine import train as train_module
from seglab.engine.train import train
from seglab.errors import ConfigError, SeglabError

TINY = ["--set", "model.params={depth: 2, base_channels: 4}", "--batch-size", "8", "--no-progress"]


def config(data, out, epochs=1, *extra):
    return Config().override(
        [
            f"data.root={data}",
            f"train.out_dir={out}",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            *extra,
        ]
    )


def snapshot(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def epochs_logged(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def old_run(shapes_dir, tmp_path_factory):
    """A finished two-epoch run (lr 1e-3); tests copy it."""
    run = tmp_path_factory.mktemp("old") / "run"
    train(config(shapes_dir, run, 2, "train.lr=0.001"))
    return run


@pytest.fixture
def run_copy(old_run, tmp_path):
    import shutil

    return shutil.copytree(old_run, tmp_path / "run")


@pytest.mark.parametrize("where", ["validation", "first step"])
def test_a_failed_overwrite_leaves_the_old_run_as_it_was(shapes_dir, run_copy, monkeypatch, where):
    def fail(*a, **k):
        raise SeglabError("boom")

    monkeypatch.setattr(train_module, "validate" if where == "validation" else "train_one_epoch", fail)
    before = snapshot(run_copy)
    with pytest.raises(SeglabError, match="boom"):
        train(config(shapes_dir, run_copy, 1, "train.lr=0.005"), overwrite=True)
    assert snapshot(run_copy) == before  # metrics.jsonl, config.yaml, checkpoints, state: byte for byte
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="train.epochs changed from 2 to 3"):  # the old run goes on
        assert train(config(shapes_dir, run_copy, 3, "train.lr=0.001"), resume=True).history[-1]["epoch"] == 3


def test_a_refused_overwrite_from_the_command_line_leaves_the_old_run(shapes_dir, run_copy, run_cli):
    before = snapshot(run_copy)
    code, _, err = run_cli(
        "train",
        "--data",
        shapes_dir,
        "--out",
        run_copy,
        "--overwrite",
        "--epochs",
        1,
        *TINY,
        "--set",
        "train.class_weights=[1, .inf, 1, 1]",
    )
    assert code == 2 and err.count("\n") == 1 and "train.class_weights" in err
    assert snapshot(run_copy) == before


def test_overwrite_replaces_the_old_run_at_its_first_commit(shapes_dir, run_copy):
    seen = {}

    def hook(epoch, record):  # after the first commit: the new run's files are in place
        seen[epoch] = (epochs_logged(run_copy), Config.load(run_copy / "config.yaml").train.lr)

    result = train(config(shapes_dir, run_copy, 1, "train.lr=0.005"), overwrite=True, on_epoch_end=hook)
    assert seen == {1: ([1], 0.005)} and epochs_logged(run_copy) == [1]
    assert read_meta(run_copy).epoch == 1 and read_meta(run_copy / "last").epoch == 1
    assert torch.load(run_copy / "last.state.pt", weights_only=True)["epoch"] == 1
    assert not (run_copy / ".overwrite").exists() and not (run_copy / ".lock").exists()
    assert result.run_dir == run_copy and result.history[0]["epoch"] == 1


@pytest.fixture
def lock_holder():
    """``lock_holder(run)``: another process that holds the run folder's lock until the test ends."""
    procs = []
    code = (
        "import sys, time\nfrom seglab.files import run_lock\nwith run_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n"
    )

    def start(run):
        p = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_writer_is_refused_with_the_holders_pid(shapes_dir, run_copy, lock_holder, run_cli):
    holder = lock_holder(run_copy)
    before = snapshot(run_copy)
    for argv in (
        ["train", "--data", shapes_dir, "--out", run_copy, "--resume", "--epochs", 3, *TINY],
        ["train", "--data", shapes_dir, "--out", run_copy, "--overwrite", "--epochs", 1, *TINY],
        ["calibrate", run_copy, "--data", shapes_dir, "--no-progress"],
        ["evaluate", run_copy, "--data", shapes_dir, "--report", run_copy / "report", "--no-progress"],
        ["report", run_copy, "--data", shapes_dir, "--out", run_copy / "report", "--no-progress"],
    ):
        code, _, err = run_cli(*argv)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert f"run folder {run_copy} is in use by process {holder.pid}" in err, (argv, err)
    assert snapshot(run_copy) == before
    holder.kill()
    holder.wait()  # a holder that died leaves its lock file; the lock itself went with it
    with pytest.warns(UserWarning, match="train.epochs changed from 2 to 3"):
        assert train(config(shapes_dir, run_copy, 3, "train.lr=0.001"), resume=True).history[-1]["epoch"] == 3


def test_two_resumes_at_once_cannot_both_run(shapes_dir, run_copy):
    argv = [
        sys.executable,
        "-m",
        "seglab",
        "train",
        "--data",
        str(shapes_dir),
        "--out",
        str(run_copy),
        "--resume",
        "--epochs",
        "500",
        "--set",
        "train.lr=0.001",
        *TINY,
    ]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_copy / ".lock").is_file() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (run_copy / ".lock").is_file(), first.stderr.read() if first.poll() is not None else "no lock"
        with pytest.raises(ConfigError, match=f"is in use by process {first.pid}"):
            train(config(shapes_dir, run_copy, 500, "train.lr=0.001"), resume=True)
    finally:
        first.kill()
        first.wait()
    logged = epochs_logged(run_copy)
    assert logged == list(range(1, len(logged) + 1))  # one writer: every epoch once, in order


def test_resume_with_a_spent_time_budget_is_one_line_and_rewrites_nothing(shapes_dir, tmp_path):
    run = tmp_path / "run"
    train(config(shapes_dir, run, 1, "train.time_limit=1h"))
    doc = torch.load(run / "last.state.pt", weights_only=True)
    torch.save({**doc, "elapsed": 4000.0}, run / "last.state.pt")  # the run used its hour (and more)
    before = snapshot(run)
    with pytest.raises(
        ConfigError,
        match=r"cannot resume .*run: its time budget is spent \(4000 s used of "
        r"train.time_limit 3600 s\); raise train.time_limit to continue",
    ):
        train(config(shapes_dir, run, 3, "train.time_limit=1h"), resume=True)
    assert snapshot(run) == before  # config.yaml too
    with pytest.warns(UserWarning, match="train.time_limit changed from 3600 s to 7200 s"):
        result = train(config(shapes_dir, run, 2, "train.time_limit=2h"), resume=True)
    assert result.history[-1]["epoch"] == 2
