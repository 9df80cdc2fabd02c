"""Fuzz pass over the command line and the Python API (issue 26, cases beyond the issue's list): each test is a
defect the pass found (a traceback, a silently wrong export, a machine-filling model), fixed."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.errors import ConfigError

FAST_ONNX = ("onnxruntime", "onnxscript")


def _need_onnx() -> None:
    for name in FAST_ONNX:
        pytest.importorskip(name)


def _one_line_error(code: int, err: str) -> None:
    assert code == 2 and err.startswith("seglab: error: ") and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    """An ONNX export (dynamic, the default example size) of the tiny checkpoint."""
    _need_onnx()
    from seglab.engine.export import export_checkpoint

    return export_checkpoint(tiny_ckpt, tmp_path_factory.mktemp("onnx") / "m.onnx").path


# ---- export --example-size -------------------------------------------------------------------------------------


def test_small_example_sizes_export_instead_of_a_traceback(tiny_ckpt, tmp_path, run_cli):
    """The dynamic check's second size was H - 4: a negative dimension (traceback) for H <= 4, any format."""
    code, out, err = run_cli(
        "export", tiny_ckpt, "--format", "torchscript", "--out", tmp_path / "m.pt", "--example-size", 3, 5
    )
    assert code == 0 and "static input (1, 3, 3, 5)" in out, err


def test_dynamic_onnx_at_a_small_odd_size_matches_pytorch(tiny_ckpt, tmp_path, run_cli):
    _need_onnx()
    from seglab.checkpoint import load_checkpoint
    from seglab.engine.export import load_exported

    code, out, err = run_cli("export", tiny_ckpt, "--out", tmp_path / "m.onnx", "--example-size", 3, 5)
    assert code == 0 and "dynamic" in out, err
    model, _ = load_checkpoint(tiny_ckpt)
    onnx = load_exported(tmp_path / "m.onnx")
    for shape in [(1, 3, 5, 7), (2, 3, 15, 17), (1, 3, 32, 32)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert (onnx(x) - model(x)).abs().max() < 1e-4, shape


@pytest.mark.parametrize(
    "size, why",
    [
        (
            (1, 1),
            "too small for reflect padding",
        ),  # traced the replication fallback: wrong logits at every size
        ((16, 16), "needs no padding"),
    ],  # traced no padding: the graph failed at every odd size
)
def test_dynamic_onnx_example_sizes_that_trace_the_wrong_branch_are_refused(
    tiny_ckpt, tmp_path, run_cli, size, why
):
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli("export", tiny_ckpt, "--out", out / "m.onnx", "--example-size", *size)
    _one_line_error(code, err)
    assert why in err and "--static" in err
    assert list(out.iterdir()) == []  # refused before anything was written


def test_a_static_onnx_export_of_one_pixel_runs_at_its_size(tiny_ckpt, tmp_path, run_cli):
    """OnnxModel padded a 1 x 1 input to 2 x 2 for a graph fixed at 1 x 1: the export's own check failed."""
    _need_onnx()
    code, out, err = run_cli(
        "export", tiny_ckpt, "--out", tmp_path / "m.onnx", "--example-size", 1, 1, "--static"
    )
    assert code == 0 and "static input (1, 3, 1, 1)" in out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.yaml"]


# ---- exported ONNX models where a PyTorch model is needed -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "{onnx}", "--out", "{tmp}/again.onnx"],
        ["export", "{onnx}", "--out", "{tmp}/again.pt", "--format", "torchscript"],
    ],
)
def test_onnx_checkpoints_where_pytorch_is_needed_are_one_line(tiny_ckpt, exported, tmp_path, run_cli, argv):
    """Each was an AttributeError traceback ('OnnxModel' object has no attribute 'modules' / 'to'). (TTA and
    ensembles of ONNX files, once refused here too, now run: tests/engine/test_engine_backends.py.)"""
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (20, 24), (10, 200, 30)).save(image)
    fill = {"onnx": exported, "image": image, "tmp": tmp_path, "ckpt": tiny_ckpt}
    code, _, err = run_cli(*[a.format(**fill) for a in argv])
    _one_line_error(code, err)
    assert "exported ONNX model" in err and ".safetensors" in err
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob("again*"))


# ---- config files -----------------------------------------------------------------------------------------------


def test_config_files_that_are_not_text_repeat_a_key_or_are_folders_are_one_line(tmp_path, run_cli):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe train: {}")  # was a UnicodeDecodeError traceback
    code, _, err = run_cli("train", binary, "--print-config")
    _one_line_error(code, err)
    assert "not UTF-8" in err

    twice = tmp_path / "twice.yaml"  # was read silently as epochs: 2
    twice.write_text("train:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n")
    code, _, err = run_cli("train", twice, "--print-config")
    _one_line_error(code, err)
    assert "'epochs' appears twice (lines 2 and 4)" in err

    code, _, err = run_cli("train", tmp_path, "--print-config")  # was "does not exist"
    _one_line_error(code, err)
    assert "is a folder" in err


def test_merge_keys_may_still_be_given_again(tmp_path, run_cli):
    merged = tmp_path / "merged.yaml"
    merged.write_text("train:\n  <<: {epochs: 3, lr: 0.5}\n  epochs: 2\n")
    code, out, err = run_cli("train", merged, "--print-config")
    assert code == 0, err
    assert "  epochs: 2\n" in out and "  lr: 0.5\n" in out


# ---- models too large to build ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, params",
    # `depth: 99` filled the memory until the OOM killer came; these fail at once without the check, so a
    # regression cannot take the test machine down
    [
        ("unet", {"depth": 2, "base_channels": 10**6}),
        (
            "unet",
            {"depth": 2, "base_channels": 2**40},
        ),  # a tensor beyond 2**63 elements: cannot even be counted
        ("plain_fcn", {"widths": [100000, 100000]}),
    ],
)
def test_models_beyond_the_parameter_limit_are_refused_before_allocating(arch, params):
    with pytest.raises(ConfigError, match="is too large .*lower depth, widths or channels"):
        seglab.create_model(arch, num_classes=2, **params)


def test_a_model_too_large_from_the_command_line_is_one_line(tmp_path, run_cli, shapes_dir):
    code, _, err = run_cli(
        "train",
        "--data",
        shapes_dir,
        "--out",
        tmp_path / "run",
        "--epochs",
        1,
        "--set",
        "model.params={depth: 2, base_channels: 1000000}",
        "--no-progress",
    )
    _one_line_error(code, err)
    assert "too large" in err and not (tmp_path / "run").exists()
    code, _, err = run_cli(
        "benchmark", "--cost", "unet", "--params", "{depth: 2, base_channels: 1099511627776}", "--size", 32
    )
    _one_line_error(code, err)
    assert "too large (a tensor beyond 2**63 elements" in err


def test_the_size_check_draws_no_random_numbers():
    """Counting on the meta device leaves the RNG as it was: the initial weights are those of the builder alone."""
    from seglab.models.archs import MODELS

    torch.manual_seed(0)
    a = seglab.create_model("unet", num_classes=2, depth=2, base_channels=4).state_dict()
    torch.manual_seed(0)
    b = MODELS.get("unet")(num_classes=2, in_channels=3, depth=2, base_channels=4).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- benchmark --params -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["[1", "{depth: 2"])
def test_benchmark_params_that_are_not_yaml_are_one_line(run_cli, text):
    """Was a yaml.parser.ParserError traceback."""
    code, _, err = run_cli("benchmark", "--cost", "unet", "--params", text, "--size", 32)
    _one_line_error(code, err)
    assert "--params must be a YAML mapping" in err


# ---- a full disk --------------------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    """train on a full file system ended in torch.save's "RuntimeError: basic_ios::clear: iostream error"."""
    import errno
    import shutil
    from collections import namedtuple

    from seglab.errors import SeglabError
    from seglab.files import append_text, atomic_write

    def enospc(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SeglabError, match=r"cannot write .*state\.pt: no space left"):
        atomic_write(tmp_path / "last.state.pt", enospc)

    def iostream(tmp):  # torch.save's error: no errno, so the free space decides
        tmp.write_bytes(b"x" * 10)
        raise RuntimeError("basic_ios::clear: iostream error")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 20, 1 << 20, 0))
    with pytest.raises(SeglabError, match="no space left"):
        atomic_write(tmp_path / "last.state.pt", iostream)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 40))
    with pytest.raises(RuntimeError, match="iostream"):  # with space left it is not a full disk
        atomic_write(tmp_path / "last.state.pt", iostream)
    assert list(tmp_path.iterdir()) == []

    def full_open(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.open", full_open)
    with pytest.raises(SeglabError, match=r"metrics\.jsonl: no space left"):
        append_text(tmp_path / "metrics.jsonl", "{}\n")


def test_an_empty_time_limit_flag_is_refused_not_read_as_no_limit(run_cli, tmp_path):
    """`--time-limit "$LIMIT"` with LIMIT unset read as YAML null: a run without any limit."""
    code, _, err = run_cli("train", "--data", tmp_path, "--time-limit", "", "--print-config")
    _one_line_error(code, err)
    assert "--time-limit must be a duration" in err
    code, out, _ = run_cli(
        "train", "--data", tmp_path, "--time-limit", "1h30m", "--no-plan", "--print-config"
    )
    assert code == 0 and "time_limit: 5400.0" in out
