"""No output path destroys a run or a data set (issue 26): every command's output option, pointed at a checkpoint, a
training state, a data-set image or mask, or a file of another kind, is refused in one line (exit 2) before any
work, and every file stays byte for byte as it was (no file is added either)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from seglab.checkpoint import CheckpointMeta, save_checkpoint
from seglab.config import Config
from seglab.data.synthetic import CLASSES
from seglab.models.factory import create_model

TINY = "{depth: 2, base_channels: 4}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, shapes_dir):
    """RUN (a run folder: checkpoint, state, log, config), DATA (a data set), OTHER (files of other kinds at the
    names the commands write) and IN (an image to predict)."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for stem in ("00", "01", "02", "03"):
            shutil.copy(shapes_dir / sub / f"{stem}.png", data / sub / f"{stem}.png")
    shutil.copy(shapes_dir / "classes.yaml", data / "classes.yaml")
    run = root / "run"
    torch.manual_seed(0)
    model = create_model("unet", num_classes=4, in_channels=3, depth=2, base_channels=4)
    save_checkpoint(
        run / "best",
        model,
        CheckpointMeta(
            arch="unet",
            num_classes=4,
            in_channels=3,
            model_params={"depth": 2, "base_channels": 4},
            class_names=list(CLASSES),
            mean=[0.5] * 3,
            std=[0.25] * 3,
        ),
    )
    torch.save({"format": "seglab-train-state/2", "epoch": 1, "optimizer": {}}, run / "last.state.pt")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    (run / "config.yaml").write_text(Config().override([f"data.root={data}"]).dump())
    other = root / "other"
    other.mkdir()
    for name in (
        "notes.txt",
        "x_mask.png",
        "report.html",
        "benchmark.md",
        "config.yaml",
        "notes.onnx",
        "notes.pt",
    ):
        (other / name).write_text("my notes\n")
    for name in ("notes.json", "eval-test.json"):
        (other / name).write_text(json.dumps({"mine": [1, 2, 3]}))
    inputs = root / "in"
    inputs.mkdir()
    shutil.copy(shapes_dir / "images" / "05.png", inputs / "x.png")
    return {"root": root, "run": run, "data": data, "other": other, "in": inputs}


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


TARGETS = ("checkpoint", "state", "image", "mask", "other")


def target_path(w: dict[str, Path], target: str, folder: bool, command: str) -> Path:
    """The path given to the output option: the file itself for a file option; for a folder option the folder
    that holds it (the run folder, the data set's images/ or masks/), or, for a file of another kind, a folder
    holding one at a name the command writes (or, where the command's folder may be a run folder, the file)."""
    files = {
        "checkpoint": w["run"] / "best.safetensors",
        "state": w["run"] / "last.state.pt",
        "image": w["data"] / "images" / "00.png",
        "mask": w["data"] / "masks" / "00.png",
    }
    if not folder:
        if target == "other":
            return w["other"] / {"export-onnx": "notes.onnx", "export-ts": "notes.pt"}.get(
                command, "notes.json"
            )
        return files[target]
    if target == "other":
        return w["other"]
    if command in ("report", "evaluate-report") and target in ("checkpoint", "state"):
        return files[target]  # a report may go into its run folder: given a file instead, it is refused
    return files[target].parent


COMMANDS = {  # name: (is the option a folder, argv builder, has --overwrite)
    "evaluate": (
        False,
        lambda w, t: ["evaluate", w["run"], "--data", w["data"], "--split", "all", "--out", t],
        True,
    ),
    "evaluate-report": (
        True,
        lambda w, t: [
            "evaluate",
            w["run"],
            "--data",
            w["data"],
            "--split",
            "all",
            "--out",
            w["root"] / "e.json",
            "--report",
            t,
        ],
        True,
    ),
    "report": (
        True,
        lambda w, t: ["report", w["run"], "--data", w["data"], "--split", "all", "--out", t],
        True,
    ),
    "predict": (True, lambda w, t: ["predict", w["run"], w["in"] / "x.png", "--out", t], True),
    "export-onnx": (False, lambda w, t: ["export", w["run"], "--out", t], True),
    "export-ts": (False, lambda w, t: ["export", w["run"], "--format", "torchscript", "--out", t], True),
    "benchmark": (
        True,
        lambda w, t: [
            "benchmark",
            "unet",
            "--params",
            TINY,
            "--size",
            16,
            "--iters",
            1,
            "--warmup",
            0,
            "--out",
            t,
        ],
        True,
    ),
    "train": (
        True,
        lambda w, t: [
            "train",
            "--data",
            w["data"],
            "--out",
            t,
            "--epochs",
            1,
            "--batch-size",
            2,
            "--set",
            f"model.params={TINY}",
            "--set",
            "data.val_ratio=0.25",
            "--set",
            "data.test_ratio=0",
        ],
        False,
    ),
    "data-synth": (True, lambda w, t: ["data", "synth", "--out", t, "--num", 2, "--size", 16], True),
    "demo": (True, lambda w, t: ["demo", "--out", t, "--num", 8, "--epochs", 1], False),
}
CASES = [(c, t, False) for c in COMMANDS for t in TARGETS]
# --overwrite replaces files of another kind, never a checkpoint, a state or a data-set file (train --overwrite
# restarts a run: tested in tests/engine/test_engine_lock.py)
CASES += [(c, t, True) for c, (_, _, has) in COMMANDS.items() if has for t in TARGETS if t != "other"]
CASES += [("data-synth", "other", True)]  # --overwrite replaces only an earlier SyntheticShapes folder


@pytest.mark.parametrize("command, target, overwrite", CASES)
def test_no_output_option_overwrites_a_checkpoint_state_data_set_file_or_another_kind(
    world, run_cli, command, target, overwrite
):
    folder, argv, _ = COMMANDS[command]
    path = target_path(world, target, folder, command)
    before = snapshot(world["root"])
    quiet = [] if command.startswith(("export", "data")) else ["--no-progress"]
    code, _, err = run_cli(*argv(world, path), *(["--overwrite"] if overwrite else []), *quiet)
    assert code == 2 and err.startswith("seglab: error: ") and err.count("\n") == 1, err
    assert str(path) in err, err
    if not folder:  # the one line also says what is there
        what = {
            "checkpoint": "is a checkpoint",
            "state": "is a training state",
            "image": "lies in the data set",
            "mask": "lies in the data set",
            "other": "already exists and is a",
        }[target]
        assert what in err, err
    assert snapshot(world["root"]) == before  # nothing changed, nothing added


def test_own_earlier_outputs_are_replaced_and_other_kinds_need_overwrite(world, run_cli, tmp_path):
    """evaluate --out over its own report: replaced without a flag; over a JSON of another kind: refused, then
    replaced with --overwrite; export over its own ONNX file: replaced."""
    out = tmp_path / "r.json"
    argv = ["evaluate", world["run"], "--data", world["data"], "--split", "all", "--no-progress"]
    code, _, err = run_cli(*argv, "--out", out)
    assert code == 0, err
    assert run_cli(*argv, "--out", out)[0] == 0  # its own report
    out.write_text(json.dumps({"mine": 1}))
    code, _, err = run_cli(*argv, "--out", out)
    assert code == 2 and f"{out} already exists and is a JSON file, not a seglab evaluation report" in err
    assert json.loads(out.read_text()) == {"mine": 1}
    assert run_cli(*argv, "--out", out, "--overwrite")[0] == 0 and "miou" in json.loads(out.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # written under a temporary name, renamed


def test_predict_into_a_data_set_is_refused_but_next_to_it_is_fine(world, run_cli, tmp_path):
    data = world["data"]
    before = snapshot(data)
    for out in (data, data / "masks", data / "predictions"):
        code, _, err = run_cli(
            "predict", world["run"], data / "images" / "01.png", "--out", out, "--no-progress"
        )
        assert code == 2 and "seglab never writes into a data set" in err, err
    assert snapshot(data) == before
    code, _, err = run_cli(
        "predict", world["run"], data / "images" / "01.png", "--out", tmp_path / "p", "--no-progress"
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["01_mask.png", "01_overlay.png"]


def test_data_synth_overwrite_replaces_only_its_own_data_set(run_cli, tmp_path):
    out = tmp_path / "synth"
    assert run_cli("data", "synth", "--out", out, "--num", 3, "--size", 16)[0] == 0
    code, _, err = run_cli("data", "synth", "--out", out, "--num", 3, "--size", 16)
    assert code == 2 and "pass --overwrite" in err
    assert run_cli("data", "synth", "--out", out, "--num", 4, "--size", 16, "--overwrite")[0] == 0
    assert len(list((out / "images").iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synth"
    ]  # the old folder is gone, nothing half-made


def test_predict_replaces_its_own_masks_but_not_a_users_png_of_the_same_name(world, run_cli, tmp_path):
    """predict recognises its earlier PNGs by the ``Software: seglab`` chunk, not by the PNG header alone."""
    from PIL import Image

    argv = ["predict", world["run"], world["in"] / "x.png", "--out", tmp_path, "--no-progress"]
    assert run_cli(*argv)[0] == 0
    assert b"tEXtSoftware\x00seglab" in (tmp_path / "x_mask.png").read_bytes()[:4096]
    assert run_cli(*argv)[0] == 0  # its own masks and overlays: replaced
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "x_mask.png")  # a user's PNG at that name
    mine = (tmp_path / "x_mask.png").read_bytes()
    code, _, err = run_cli(*argv)
    assert code == 2 and "x_mask.png already exists and is a PNG image" in err, err
    assert (tmp_path / "x_mask.png").read_bytes() == mine
    assert run_cli(*argv, "--overwrite")[0] == 0
    assert (tmp_path / "x_mask.png").read_bytes() != mine
