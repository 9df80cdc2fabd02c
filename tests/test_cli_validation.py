"""Every numeric value of every command is checked before any work (seglab.validate for the flags,
Config.validate for YAML and --set): a bad one ends in one line naming it, exit 2, never a traceback."""

from __future__ import annotations

import math

import pytest

from seglab.cli import build_parser, main
from seglab.config import Config, parse_duration
from seglab.errors import ConfigError

CK = "no-such-run"  # the checks come before the checkpoint is read
EVAL = ["evaluate", CK, "--data", "d"]
PRED = ["predict", CK, "img.png", "--out", "o"]
BENCH = ["benchmark", "unet", "--out", "b"]
SERVE = ["serve", CK]
HUGE = "99999999999"

FLAG_CASES = [
    ["demo", "--num", "0"],
    ["demo", "--num", "-1"],
    ["demo", "--epochs", "0"],
    ["train", "--epochs", "0"],
    ["train", "--epochs", "-1"],
    ["train", "--epochs", "1.5"],
    ["train", "--batch-size", "0"],
    ["train", "--lr", "0"],
    ["train", "--lr", "-1"],
    ["train", "--lr", "nan"],
    ["train", "--lr", "inf"],
    ["train", "--nproc", "0"],
    ["train", "--nproc", HUGE],
    [*EVAL, "--batch-size", "0"],
    [*EVAL, "--batch-size", "-1"],
    [*EVAL, "--tile", "0"],
    [*EVAL, "--tile", "-1"],
    [*EVAL, "--tile", HUGE],
    [*EVAL, "--tile", "16", "--overlap", "-1"],
    [*EVAL, "--samples", "0"],
    [*EVAL, "--samples", HUGE],
    [*EVAL, "--bins", "0"],
    [*EVAL, "--bins", HUGE],
    [*EVAL, "--tta-scales", "0"],
    [*EVAL, "--tta-scales", "1", "-1"],
    [*EVAL, "--tta-scales", "100"],
    [*EVAL, "--add-dropout", "1"],
    [*EVAL, "--add-dropout", "1.5"],
    [*EVAL, "--add-dropout", "-0.1"],
    [*EVAL, "--nproc", "0"],
    [*EVAL, "--seed", "-1"],
    [*PRED, "--tile", "0"],
    [*PRED, "--overlap", "-1"],
    [*PRED, "--threshold", "0"],
    [*PRED, "--threshold", "1"],
    [*PRED, "--threshold", "nan"],
    [*PRED, "--samples", "-1"],
    [*PRED, "--tta-scales", "0"],
    ["calibrate", CK, "--data", "d", "--batch-size", "0"],
    [*BENCH, "--size", "0"],
    [*BENCH, "--size", "-1"],
    [*BENCH, "--size", HUGE],
    [*BENCH, "--batch", "0"],
    [*BENCH, "--batch", "-1"],
    [*BENCH, "--iters", "0"],
    [*BENCH, "--iters", "-1"],
    [*BENCH, "--warmup", "-1"],
    [*BENCH, "--threads", "0"],
    [*BENCH, "--threads", HUGE],
    [*BENCH, "--num-classes", "0"],
    ["benchmark", "--cost", "unet", "--size", "0"],
    [*SERVE, "--port", "-1"],
    [*SERVE, "--port", "70000"],
    [*SERVE, "--max-upload-mb", "0"],
    [*SERVE, "--max-upload-mb", "-1"],
    [*SERVE, "--max-upload-mb", "nan"],
    [*SERVE, "--max-pixels", "0"],
    [*SERVE, "--concurrency", "0"],
    [*SERVE, "--queue", "-1"],
    [*SERVE, "--samples", "0"],
    [*SERVE, "--add-dropout", "1.5"],
    [*SERVE, "--add-dropout", "-0.1"],
    ["export", CK, "--out", "m.onnx", "--example-size", "0", "0"],
    ["export", CK, "--out", "m.onnx", "--example-size", "-1", "-1"],
    ["export", CK, "--out", "m.onnx", "--example-size", HUGE, "8"],
    ["data", "synth", "--out", "s", "--num", "0"],
    ["data", "synth", "--out", "s", "--size", "0"],
    ["data", "synth", "--out", "s", "--size", "100000"],
    ["data", "synth", "--out", "s", "--seed", "-1"],
    ["data", "check", "d", "--ignore-index", "-1"],
    ["data", "check", "d", "--ignore-index", "70000"],
]

SET_CASES = [
    "data.crop_size=100000",
    "data.crop_size=0",
    "data.repeat=100000000000",
    "data.resize={short: 100000}",
    "data.std=[.inf, 1, 1]",
    "data.mean=[.nan, 0, 0]",
    "data.color_jitter=.inf",
    "train.threads=100000",
    "train.seed=-1",
    "train.lr=.inf",
    "train.weight_decay=.inf",
    "train.loss={ce: -1}",
    "train.loss={ce: .nan}",
    "train.loss={ce: 1, dice: .inf}",
    "train.loss={ce: 0}",
    "train.loss={dice_ce: {ce_weight: -1}}",
    "train.class_weights=[1, .inf, 1, 1]",
    "train.time_limit=1h30",
    "train.time_limit=1m30",
    "train.accumulate=100000000000000000000",
    "data.num_workers=100000",
    "data.elastic_grid=100000",
]


def _one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("seglab") and ": error: " in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", FLAG_CASES, ids=" ".join)
def test_bad_flag_values_give_one_line_and_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, wherever it would go
    code = main(argv)
    err = capsys.readouterr().err
    _one_line_error(code, err)
    flag = next(a for a in reversed(argv) if a.startswith("--"))
    assert f"argument {flag}: must be " in err  # names the flag and its range
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", SET_CASES)
def test_bad_config_values_give_one_line_and_exit_2(value, capsys, tmp_path):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--set", value])
    err = capsys.readouterr().err
    _one_line_error(code, err)
    assert err.startswith("seglab: error: ") and value.split("=")[0].split(".")[-1] in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "value", ["data.mean=[0.5]", "data.std=[0.5, 0.5]", "data.mean=[0.5, 0.5, 0.5, 0.5]"]
)
def test_means_and_stds_need_one_value_per_image_channel(value, shapes_dir, tmp_path, capsys):
    """RGB images: one mean would broadcast silently, two or four stds crashed in Normalize."""
    code = main(
        [
            "train",
            "--data",
            str(shapes_dir),
            "--out",
            str(tmp_path / "run"),
            "--set",
            value,
            "--set",
            "model.params={depth: 2, base_channels: 4}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    _one_line_error(code, err)
    assert "values but the images of" in err and "have 3 channels" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        ("{focal: {gamma: -1}}", "FocalLoss option gamma must be a number >= 0, got -1"),
        (
            "{ce: {label_smoothing: 2}}",
            "CrossEntropyLoss option label_smoothing must be within [0, 1], got 2",
        ),
        ("{ce: 1, dice: {smooth: -1}}", "DiceLoss option smooth must be a number >= 0, got -1"),
        ("{tversky: {alpha: -1}}", "TverskyLoss option alpha must be a number >= 0, got -1"),
        (
            "{focal: {alpha: [1, -1, 1, 1]}}",
            "FocalLoss option alpha must be finite and >= 0, got [1, -1, 1, 1]",
        ),
        ("{lovasz: {classes: some}}", "LovaszSoftmaxLoss option classes must be present or all, got 'some'"),
    ],
)
def test_bad_loss_options_give_one_line(loss, message, shapes_dir, tmp_path, capsys):
    """They trained silently on a wrong loss (a negative focal gamma, Dice smoothing) or crashed in torch."""
    code = main(
        [
            "train",
            "--data",
            str(shapes_dir),
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"train.loss={loss}",
            "--set",
            "model.params={depth: 2, base_channels: 4}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    _one_line_error(code, err)
    assert err == f"seglab: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_tile_overlap_beyond_twice_the_tile_is_refused(capsys, tmp_path):
    """`--tile 8 --overlap 16000` computed 4000x the pixels of every tile and never ended."""
    code = main([*PRED, "--tile", "8", "--overlap", "17"])
    err = capsys.readouterr().err
    _one_line_error(code, err)
    assert "overlap 17 is more than twice the tile 8" in err
    assert main([*EVAL, "--tile", "8", "--overlap", "16000"]) == 2


def test_flag_errors_name_the_flag_and_its_range(capsys):
    assert main(["serve", CK, "--port", "70000"]) == 2
    assert capsys.readouterr().err == (
        "seglab serve: error: argument --port: must be an integer within 0..65535 (0: any free port), got '70000' "
        "(see seglab serve --help)\n"
    )
    assert main(["serve", CK, "--add-dropout", "1.5"]) == 2
    assert "argument --add-dropout: must be a number within [0, 1), got '1.5'" in capsys.readouterr().err


def test_boundary_values_are_accepted():
    p = build_parser()
    a = p.parse_args(
        [*EVAL, "--tile", "1", "--overlap", "0", "--add-dropout", "0", "--tta-scales", "0.5", "8"]
    )
    assert (a.tile, a.overlap, a.add_dropout, a.tta_scales) == (1, 0, 0.0, [0.5, 8.0])
    a = p.parse_args(
        [*SERVE, "--port", "0", "--queue", "0", "--max-upload-mb", "0.5", "--add-dropout", "0.99"]
    )
    assert (a.port, a.queue, a.max_upload_mb, a.add_dropout) == (0, 0, 0.5, 0.99)
    a = p.parse_args([*BENCH, "--warmup", "0", "--size", "16384"])
    assert (a.warmup, a.size) == (0, [16384])
    assert p.parse_args([*PRED, "--threshold", "0.5"]).threshold == 0.5


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    """What no check can foresee (it depends on the data and the machine) still ends in one line."""
    import seglab.data.synthetic as synthetic

    def boom(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 119961603072 bytes."
        )

    monkeypatch.setattr(synthetic, "write_folder", boom)
    code = main(["data", "synth", "--out", "nowhere"])
    err = capsys.readouterr().err
    _one_line_error(code, err)
    assert err.startswith("seglab: error: out of memory (") and "batch size" in err


# ------------------------------------------------------------------ durations and loss weights


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("10min", 600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2h", 7200),
        ("45", 45),
        (45, 45),
        ("1h 30m 15s", 5415),
        ("2.5", 2.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text, "train.time_limit") == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1h30", "'1h30' is ambiguous: 30 after 1h has no unit; write 1h30m"),
        ("1m30", "'1m30' is ambiguous: 30 after 1m has no unit; write 1m30s"),
        ("1h30m20", "'1h30m20' is ambiguous"),
        ("30x", "must be a duration such as 90s"),
        ("", "must be a duration such as 90s"),
        ("-5", "must be a duration"),
        (-5, "positive, finite duration"),
        (0, "positive, finite duration"),
        ("0s", "positive, finite duration"),
        (math.inf, "positive, finite"),
    ],
)
def test_ambiguous_or_empty_durations_are_refused(text, message):
    with pytest.raises(ConfigError, match="^train.time_limit") as e:
        parse_duration(text, "train.time_limit")
    assert message in str(e.value)


def test_time_limit_flag_refuses_1h30(capsys, tmp_path):
    """`--time-limit 1h30` used to be 1 h 30 s."""
    code = main(["train", "--data", str(tmp_path), "--time-limit", "1h30", "--print-config"])
    err = capsys.readouterr().err
    _one_line_error(code, err)
    assert "ambiguous" in err and "1h30m" in err
    assert Config().override(["train.time_limit=1h30m"]).train.time_limit == 5400


@pytest.mark.parametrize(
    "loss",
    [
        "{ce: -1}",
        "{ce: 1, dice: -0.5}",
        "{ce: .nan}",
        "{ce: .inf}",
        "{ce: {weight: -1}}",
        "{ce: 0, dice: 0}",
        "{}",
    ],
)
def test_negative_or_non_finite_loss_weights_are_refused(loss):
    with pytest.raises(ConfigError, match="^train.loss"):
        Config().override([f"train.loss={loss}"])


def test_make_loss_refuses_negative_weights_too():
    from seglab.losses import make_loss

    with pytest.raises(ConfigError, match="the weight of term 'ce' must be a finite number >= 0, got -1"):
        make_loss({"ce": -1.0, "dice": 1.0})
    make_loss({"ce": 0.0, "dice": 1.0})  # a term switched off is fine
