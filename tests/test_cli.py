import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from seglab.cli import main

TINY = ["--set", "model.params={depth: 2, base_channels: 4}", "--batch-size", "8", "--no-progress"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_does_not_import_torch():
    code = "import sys, seglab.cli; seglab.cli.build_parser(); import seglab; print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for argv in (["--help"], ["train", "--help"], ["data", "synth", "--help"]):
        res = subprocess.run([sys.executable, "-m", "seglab", *argv], capture_output=True, text=True)
        assert res.returncode == 0 and "usage: seglab" in res.stdout


def test_end_to_end_synth_train_evaluate_predict(tmp_path, capsys):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    assert run(capsys, "data", "synth", "--out", data, "--num", 30, "--size", 32)[0] == 0
    code, out, _ = run(capsys, "data", "check", data)
    assert code == 0 and "30 image/mask pairs" in out and "no problems found" in out

    code, out, _ = run(
        capsys, "train", "--data", data, "--out", run_dir, "--epochs", 1, *TINY, "--print-config"
    )
    assert code == 0 and "base_channels: 4" in out and not run_dir.exists()
    code, out, err = run(capsys, "train", "--data", data, "--out", run_dir, "--epochs", 1, *TINY)
    assert code == 0, err
    assert "best validation mIoU" in out and (run_dir / "best.safetensors").is_file()
    code, out, err = run(
        capsys,
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "fit",
        "--epochs",
        1,
        *TINY,
        "--set",
        "data.splits={train: ["
        + ",".join(f"'{s}'" for s in (data / "splits" / "train.txt").read_text().split())
        + "], val: []}",
    )
    assert code == 0 and "no validation split; last epoch 1" in out, err

    code, out, err = run(capsys, "evaluate", run_dir, "--data", data, "--split", "test", "--no-progress")
    assert code == 0, err
    report = json.loads((run_dir / "eval-test.json").read_text())
    assert report["num_images"] == 3 and f"{report['miou']:7.4f}" in out and "triangle" in out

    odd = tmp_path / "odd.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(odd)
    code, out, err = run(
        capsys,
        "predict",
        run_dir / "best.safetensors",
        odd,
        data / "images",
        "--out",
        tmp_path / "pred",
        "--no-progress",
    )
    assert code == 0, err
    mask = Image.open(tmp_path / "pred" / "odd_mask.png")
    assert mask.mode == "P" and mask.size == (53, 37) and np.array(mask).max() < 4
    assert Image.open(tmp_path / "pred" / "odd_overlay.png").size == (53, 37)
    assert len(list((tmp_path / "pred").glob("*_mask.png"))) == 31
    code, _, err = run(
        capsys,
        "predict",
        run_dir,
        odd,
        "--out",
        tmp_path / "tiled",
        "--tile",
        16,
        "--overlap",
        8,
        "--no-progress",
    )
    assert code == 0, err
    tiled = np.array(Image.open(tmp_path / "tiled" / "odd_mask.png"))
    assert (
        tiled.shape == (37, 53) and (tiled == np.array(mask)).mean() > 0.5
    )  # same model, local context only


def make_broken(tmp_path, kind):
    from seglab.data.synthetic import write_folder

    data = write_folder(tmp_path / "data", num_images=12, size=32)
    if kind == "values":
        Image.fromarray(np.full((32, 32), 7, np.uint8)).save(data / "masks" / "03.png")
    elif kind == "unpaired":
        (data / "masks" / "03.png").unlink()
    elif kind == "size":
        Image.new("L", (16, 16)).save(data / "masks" / "03.png")
    elif kind == "corrupt":
        (data / "images" / "03.png").write_bytes(b"\x89PNG broken")
    elif kind == "empty":
        for p in [*(data / "images").iterdir(), *(data / "masks").iterdir()]:
            p.unlink()
    return data


@pytest.mark.parametrize(
    "kind, message",
    [
        ("values", "masks/03.png has value 7 but the data set has 4 classes"),
        ("unpaired", "images/03.png has no mask"),
        ("size", "mask .*masks/03.png is 16x16"),
        ("corrupt", "cannot read .*images/03.png"),
        ("empty", "holds no image/mask pairs"),
        ("missing", "data folder .* does not exist"),
    ],
)
def test_bad_data_gives_one_line_and_exit_2(tmp_path, capsys, kind, message):
    data = make_broken(tmp_path, kind) if kind != "missing" else tmp_path / "nowhere"
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "run", "--epochs", 1, *TINY)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("seglab: error: ")

    assert re.search(message, err), err
    assert not (tmp_path / "run" / "best.safetensors").exists()
    if kind not in ("missing", "empty"):
        code, out, _ = run(capsys, "data", "check", data)
        assert code == 2 and re.search(message, out)


def test_bad_checkpoint_and_inputs(tmp_path, capsys):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not weights")
    code, _, err = run(capsys, "predict", fake, tmp_path, "--out", tmp_path / "p")
    assert code == 2 and "has no sidecar model.yaml" in err and err.count("\n") == 1
    code, _, err = run(capsys, "evaluate", tmp_path / "nothing", "--data", tmp_path)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "train", "--data", tmp_path, "--set", "train.lr=abc")
    assert code == 2 and "train.lr must be float" in err
    code, _, err = run(capsys, "train", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml does not exist" in err
    assert not (tmp_path / "p").exists()
    for argv in (["--num", "0"], ["--size", "100000"]):
        code, _, err = run(capsys, "data", "synth", "--out", tmp_path / "s", *argv)
        assert code == 2 and f"argument {argv[0]}: must be an integer" in err and err.count("\n") == 1
        assert not (tmp_path / "s").exists()


def test_set_values_are_validated_with_exit_2_and_amp_off_is_accepted(tmp_path, capsys):
    """Issue 13: --set train.amp=off was refused (YAML 1.1 reads off as false); bad values were tracebacks."""
    code, out, err = run(capsys, "train", "--data", tmp_path, "--set", "train.amp=off", "--print-config")
    assert code == 0 and "amp: 'off'" in out, err
    for value, message in [
        ("train.threads=-1", "train.threads must be within 1..1024 (or null for torch's default), got -1"),
        (
            "data.num_workers=-1",
            "data.num_workers must be within 0..256 (0 loads in the main process; null chooses), got -1",
        ),
        ("data.scale=[0,0]", "data.scale must be [lo, hi] with 0 < lo <= hi ([1, 1] = off), got [0.0, 0.0]"),
        (
            "data.splits={train: 5}",
            'config key data.splits.train needs a list of file stems (e.g. ["00", "01"]), got 5',
        ),
    ]:
        code, out, err = run(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run", "--set", value)
        assert code == 2 and err == f"seglab: error: {message}\n" and not (tmp_path / "run").exists()


def test_seglab_warnings_print_as_one_line():
    import warnings

    from seglab import cli

    old = warnings.formatwarning
    try:
        cli._one_line_warnings()
        ours = warnings.formatwarning("crop too large", UserWarning, "/x/seglab/engine/data.py", 3)
        assert ours == "seglab: warning: crop too large\n"
        theirs = warnings.formatwarning("deprecated", UserWarning, "/x/torch/nn/functional.py", 3)
        assert "functional.py:3: UserWarning: deprecated" in theirs
    finally:
        warnings.formatwarning = old
