"""A run killed at any write point resumes to exactly the uninterrupted result, or is refused in one line.

The kill is simulated in-process: ``os.replace`` (the rename of every atomic write) or the metrics-log append
raises a BaseException at the chosen point, which nothing in seglab catches, as a SIGKILL would stop the process.
``benchmarks/fault_injection.py`` does the same with real killed subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from seglab.checkpoint import load_checkpoint, read_meta
from seglab.config import Config
from seglab.engine import callbacks as callbacks_module
from seglab.engine import train as train_module
from seglab.engine.train import train
from seglab.errors import CheckpointError, ConfigError, SeglabError


class Killed(BaseException):
    """Stands for a SIGKILL: not an Exception, so no cleanup code of seglab handles it."""


def make_config(data_dir, out_dir, epochs=3, ema=0.0):
    return Config().override(
        [
            f"data.root={data_dir}",
            f"train.out_dir={out_dir}",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            "data.val_ratio=0",
            f"train.ema={ema}",
        ]
    )


@pytest.fixture(scope="module")
def fit_data(tmp_path_factory, shapes_dir):
    """The shapes data without split lists: data.val_ratio=0 trains without validation, so every epoch writes
    best and last (every write point is reached in every epoch)."""
    data = tmp_path_factory.mktemp("fit") / "data"
    for sub in ("images", "masks"):
        shutil.copytree(shapes_dir / sub, data / sub)
    shutil.copy(shapes_dir / "classes.yaml", data / "classes.yaml")
    return data


@pytest.fixture(scope="module")
def reference(fit_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(make_config(fit_data, out))
    return out


def losses(run):
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b):
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


WRITE_POINTS = [
    (name, when)
    for name in ("last.state.pt", "best.safetensors", "best.yaml", "last.safetensors", "last.yaml")
    for when in ("before", "after")
] + [("metrics.jsonl", "mid")]


@pytest.mark.parametrize("target, when", WRITE_POINTS, ids=[f"{n}-{w}" for n, w in WRITE_POINTS])
def test_a_kill_at_any_write_point_resumes_exactly(fit_data, reference, tmp_path, monkeypatch, target, when):
    run = tmp_path / "run"
    real_replace, real_append = os.replace, callbacks_module.append_text
    seen = {"n": 0}

    def replace(src, dst, *a, **k):
        if os.path.basename(dst) == target:
            seen["n"] += 1
            if seen["n"] == 2 and when == "before":  # epoch 2: the temporary file is written, not yet renamed
                raise Killed
            real_replace(src, dst, *a, **k)
            if seen["n"] == 2:
                raise Killed
            return
        real_replace(src, dst, *a, **k)

    def append(path, text):
        seen["n"] += 1
        if seen["n"] == 2:  # a line cut short
            with open(path, "a") as f:
                f.write(text[: len(text) // 2])
            raise Killed
        real_append(path, text)

    with monkeypatch.context() as m:
        if target == "metrics.jsonl":
            m.setattr(callbacks_module, "append_text", append)
        else:
            m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            train(make_config(fit_data, run))
    # between the kill and the resume, the run's checkpoint is usable as it is (never a pair that fails to load)
    if (run / "best.safetensors").exists():
        load_checkpoint(run)
    train(make_config(fit_data, run), resume=True)
    for name in ("last", "best"):
        assert same_weights(run / f"{name}.safetensors", reference / f"{name}.safetensors"), name
        assert read_meta(run / name).epoch == 3
    assert losses(run) == losses(reference)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_ema_run_killed_between_state_and_checkpoints_resumes_exactly(fit_data, tmp_path, monkeypatch):
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(make_config(fit_data, ref, ema=0.9))
    real_replace = os.replace
    count = {"n": 0}

    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        if os.path.basename(dst) == "last.state.pt":
            count["n"] += 1
            if count["n"] == 2:
                raise Killed

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            train(make_config(fit_data, run, ema=0.9))
    assert read_meta(run / "last").epoch == 1  # the checkpoints lag one epoch behind the committed state
    train(make_config(fit_data, run, ema=0.9), resume=True)
    assert same_weights(run / "last.safetensors", ref / "last.safetensors")
    a = torch.load(run / "last.state.pt", weights_only=True)["model"]
    b = torch.load(ref / "last.state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stale_sidecar_does_not_break_predict(fit_data, tmp_path):
    """A kill between best.safetensors and best.yaml: the weights describe themselves, so loading works."""
    run = tmp_path / "run"
    train(make_config(fit_data, run, epochs=1))
    (run / "best.yaml").write_text((run / "best.yaml").read_text().replace("epoch: 1", "epoch: 7"))
    doc = (run / "best.yaml").read_text()
    (run / "best.yaml").write_text(doc.replace(doc.split("weights_sha256: ")[1].split("\n")[0], "0" * 64))
    _, meta = load_checkpoint(run)
    assert meta.epoch == 1  # from the weights' own header, not the stale sidecar
    (run / "best.yaml").unlink()
    assert load_checkpoint(run)[1].epoch == 1


def test_resume_refuses_a_truncated_state_in_one_line(fit_data, tmp_path):
    run = tmp_path / "run"
    train(make_config(fit_data, run, epochs=1))
    data = (run / "last.state.pt").read_bytes()
    (run / "last.state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"last.state.pt cannot be loaded: it is damaged or truncated .*--overwrite"
    ) as e:
        train(make_config(fit_data, run, epochs=2), resume=True)
    assert "\n" not in str(e.value)


def test_resume_rebuilds_a_missing_last_checkpoint(fit_data, reference, tmp_path):
    run = tmp_path / "run"
    train(make_config(fit_data, run), on_epoch_end=lambda epoch, record: epoch == 2)
    (run / "last.safetensors").unlink()
    (run / "last.yaml").unlink()
    train(make_config(fit_data, run), resume=True)
    assert same_weights(run / "last.safetensors", reference / "last.safetensors")


def test_resume_refuses_a_changed_model(fit_data, tmp_path):
    run = tmp_path / "run"
    train(make_config(fit_data, run, epochs=1))
    cfg = make_config(fit_data, run, epochs=2).override(["model.params.depth=3"])
    with pytest.raises(ConfigError, match=r"model.params.depth is 3 now but the run was trained with 2"):
        train(cfg, resume=True)


def test_resume_refuses_an_old_state_whose_weights_are_of_another_epoch(fit_data, tmp_path):
    """A state file of an older seglab (no weights inside) paired with last.safetensors of a later epoch."""
    run = tmp_path / "run"
    train(make_config(fit_data, run, epochs=2), on_epoch_end=lambda epoch, record: epoch == 2)
    old = torch.load(run / "last.state.pt", weights_only=True)
    legacy = {k: old[k] for k in ("optimizer", "scaler", "best")} | {
        "epoch": 1,
        "scheduler": {"last_epoch": 8},
    }
    torch.save(legacy, run / "last.state.pt")
    with pytest.raises(
        CheckpointError, match="last.safetensors is from epoch 2 but last.state.pt from epoch 1"
    ):
        train(make_config(fit_data, run, epochs=3), resume=True)
    torch.save(legacy | {"epoch": 2}, run / "last.state.pt")  # consistent: continues from the weights file
    assert train(make_config(fit_data, run, epochs=3), resume=True).history[-1]["epoch"] == 3


def test_resume_with_more_epochs_warns_that_the_schedule_changes(fit_data, tmp_path):
    run = tmp_path / "run"
    train(make_config(fit_data, run, epochs=1))
    with pytest.warns(UserWarning, match="train.epochs changed from 1 to 2: the learning-rate schedule"):
        train(make_config(fit_data, run, epochs=2), resume=True)


def test_a_run_that_fails_before_its_first_commit_leaves_nothing(fit_data, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise SeglabError("boom")

    monkeypatch.setattr(train_module, "validate", fail)
    cfg = make_config(fit_data, tmp_path / "new" / "run", epochs=1).override(["data.val_ratio=0.2"])
    with pytest.raises(SeglabError, match="boom"):
        train(cfg)
    assert not (tmp_path / "new" / "run").exists()


@pytest.mark.parametrize("blocked", ["file", "below-file"])
def test_a_run_folder_blocked_by_a_file_is_one_line(fit_data, tmp_path, blocked):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if blocked == "file" else tmp_path / "f" / "run"
    with pytest.raises(SeglabError, match=r"run folder .* is blocked by the file .*f; choose another path"):
        train(make_config(fit_data, out, epochs=1))


class Payload:  # a class torch.load(weights_only=True) refuses to unpickle
    pass


def test_pickled_state_and_weights_files_are_refused_in_one_line(fit_data, tmp_path):
    from seglab.models.encoders.base import read_state_dict

    run = tmp_path / "run"
    train(make_config(fit_data, run, epochs=1))
    torch.save({"epoch": 1, "optimizer": Payload()}, run / "last.state.pt")
    with pytest.raises(CheckpointError, match="holds pickled Python objects") as e:
        train(make_config(fit_data, run, epochs=2), resume=True)
    assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value)
    torch.save({"conv.weight": Payload()}, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="holds pickled Python objects") as e:
        read_state_dict(tmp_path / "w.pt")
    assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value)


@pytest.mark.parametrize("damage", ["mask value", "corrupt image"])
def test_bad_files_in_any_split_stop_training_before_the_run_folder_exists(shapes_dir, tmp_path, damage):
    """Files of the test split (never loaded by training) are checked before training starts, not found late."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    stem = (data / "splits" / "test.txt").read_text().split()[0]
    if damage == "mask value":
        mask = np.array(Image.open(data / "masks" / f"{stem}.png"))
        mask[0, 0] = 9  # classes.yaml declares 4 classes (mask_format: index)
        Image.fromarray(mask).save(data / "masks" / f"{stem}.png")
        match = rf"mask .*{stem}.png has value 9"
    else:
        image = next((data / "images").glob(f"{stem}.*"))
        image.write_bytes(image.read_bytes()[:60])
        match = rf"{stem}.* (corrupt|truncated|cannot)"
    out = tmp_path / "run"
    cfg = Config().override(
        [
            f"data.root={data}",
            f"train.out_dir={out}",
            "train.epochs=1",
            "train.progress=false",
            "model.params={depth: 2, base_channels: 4}",
        ]
    )
    with pytest.raises(SeglabError, match=match):
        train(cfg)
    assert not out.exists()
