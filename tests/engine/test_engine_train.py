import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import confusion_matrix

from seglab.checkpoint import load_checkpoint, read_meta
from seglab.config import Config
from seglab.data.folder import FolderDataset
from seglab.data.transforms import build_transform
from seglab.engine.evaluate import evaluate
from seglab.engine.train import lr_factor, train
from seglab.errors import ConfigError, DataError


def tiny_config(data_dir, out_dir, epochs=2):
    return Config().override(
        [
            f"data.root={data_dir}",
            f"train.out_dir={out_dir}",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            "data.scale=[0.8, 1.2]",
            "data.rotation=10",
            "model.params.dropout=0.2",
        ]
    )


def test_train_writes_run_folder_and_logs(shapes_dir, tmp_path):
    result = train(tiny_config(shapes_dir, tmp_path / "run"))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    from seglab.engine.callbacks import tensorboard_available

    assert names == [
        "best.safetensors",
        "best.yaml",
        "config.yaml",
        "last.safetensors",
        "last.state.pt",
        "last.yaml",
        "metrics.jsonl",
    ] + (["tensorboard"] if tensorboard_available() else [])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines == result.history
    assert all(0 <= r["val_miou"] <= 1 and r["images_per_s"] > 0 for r in lines)
    best_epoch = max(lines, key=lambda r: r["val_miou"])["epoch"]
    assert result.best_metrics["epoch"] == best_epoch and read_meta(tmp_path / "run").epoch == best_epoch
    assert Config.load(tmp_path / "run" / "config.yaml") == tiny_config(shapes_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(tiny_config(shapes_dir, tmp_path / "run"))


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(shapes_dir, tmp_path, ema):
    def cfg(name):
        return tiny_config(shapes_dir, tmp_path / name, epochs=3).override([f"train.ema={ema}"])

    full = train(cfg("full"))
    train(cfg("cut"), on_epoch_end=lambda epoch, record: epoch == 1)
    assert read_meta(tmp_path / "cut" / "last").epoch == 1
    resumed = train(cfg("cut"), resume=True)
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_miou"] for r in full.history] == [r["val_miou"] for r in resumed.history]


def test_repeat_makes_longer_epochs(shapes_dir, tmp_path):
    cfg = tiny_config(shapes_dir, tmp_path / "r", epochs=1).override(["data.repeat=3"])
    assert train(cfg).history[0]["images"] == 3 * 32  # 32 training images, batch 8, three passes


def test_border_weights_change_the_training_loss(shapes_dir, tmp_path):
    # at initialisation the weighted and plain losses nearly agree; the weights steer what is learnt after that
    plain = train(tiny_config(shapes_dir, tmp_path / "a", epochs=2).override(["data.rotation=0"]))
    weighted = train(
        tiny_config(shapes_dir, tmp_path / "b", epochs=2).override(
            ["data.rotation=0", "data.border_weights=true"]
        )
    )
    assert weighted.history[-1]["train_loss"] != pytest.approx(plain.history[-1]["train_loss"], rel=3e-3)
    with pytest.raises(ConfigError, match="border_weights needs a loss with per-pixel weights"):
        train(
            tiny_config(shapes_dir, tmp_path / "c", epochs=1).override(
                ["data.border_weights=true", "train.loss=dice"]
            )
        )


def test_resume_without_a_run_is_an_error(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="cannot resume"):
        train(tiny_config(shapes_dir, tmp_path / "none"), resume=True)


def test_bad_model_params_are_named(shapes_dir, tmp_path):
    cfg = tiny_config(shapes_dir, tmp_path / "r").override(["model.params.width=3"])
    with pytest.raises(ConfigError, match="width is not an argument of unet"):
        train(cfg)


def test_evaluate_matches_a_reference_confusion_matrix(shapes_dir, tmp_path):
    result = train(tiny_config(shapes_dir, tmp_path / "run", epochs=1))
    report = evaluate(result.best_checkpoint, shapes_dir, "test", progress=False, out=tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text())["miou"] == report["miou"]
    model, meta = load_checkpoint(result.best_checkpoint)
    ds = FolderDataset(shapes_dir, "test", build_transform(Config().data, 3, train=False))
    preds, targets = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            preds.append(model(x[None]).argmax(1)[0].numpy().ravel())
            targets.append(y.numpy().ravel())
    cm = confusion_matrix(np.concatenate(targets), np.concatenate(preds), labels=range(4))
    assert np.array_equal(np.array(report["confusion_matrix"]), cm)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = np.diag(cm) / np.where(union > 0, union, 1)
    assert report["miou"] == pytest.approx(iou[union > 0].mean())
    assert report["pixel_accuracy"] == pytest.approx(np.diag(cm).sum() / cm.sum())


@pytest.mark.parametrize("schedule", ["poly", "cosine", "constant"])
def test_lr_schedules(schedule):
    f = lr_factor(schedule, total=100, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    end = {"poly": 0.0, "cosine": 0.0, "constant": 1.0}[schedule]
    assert f(100) == pytest.approx(end, abs=1e-9)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


def test_bf16_autocast_trains_close_to_fp32_and_keeps_fp32_weights(shapes_dir, tmp_path):
    fp32 = train(tiny_config(shapes_dir, tmp_path / "a", epochs=1))
    bf16 = train(tiny_config(shapes_dir, tmp_path / "b", epochs=1).override(["train.amp=bf16"]))
    a, b = fp32.history[0]["train_loss"], bf16.history[0]["train_loss"]
    assert a != b and b == pytest.approx(a, rel=0.05)  # bf16 rounding changes the loss, a little
    weights = load_file(str(bf16.last_checkpoint))
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
    for amp, match in (("fp16", "fp16 \\(CUDA only\\)"), ("half", "must be auto, off, bf16 or fp16")):
        with pytest.raises(ConfigError, match=match):
            train(tiny_config(shapes_dir, tmp_path / amp, epochs=1).override([f"train.amp={amp}"]))


def test_ema_checkpoint_is_the_warmed_up_average_of_the_raw_weights(shapes_dir, tmp_path):
    """One step per epoch, two epochs: the raw run's weights after each step, w1 and w2, give the EMA by hand.
    timm's warm-up decay is 0 at step 1 (the average starts at w1) and 1 - 2^(-2/3) at step 2."""

    def cfg(name, ema):
        return tiny_config(shapes_dir, tmp_path / name, epochs=2).override(
            ["train.batch_size=32", f"train.ema={ema}"]
        )

    raw = []
    train(
        cfg("raw", 0.0),
        on_epoch_end=lambda e, r: raw.append(load_file(str(tmp_path / "raw" / "last.safetensors"))),
    )
    train(cfg("ema", 0.99))
    ema = load_file(str(tmp_path / "ema" / "last.safetensors"))
    state = torch.load(tmp_path / "ema" / "last.state.pt", weights_only=True)
    d = 1 - 2 ** (-2 / 3)
    assert ema.keys() == raw[1].keys()
    for k, w in ema.items():
        assert torch.equal(
            state["model"][k].contiguous(), raw[1][k]
        )  # the EMA does not touch the raw trajectory
        if w.is_floating_point():
            torch.testing.assert_close(w, d * raw[0][k] + (1 - d) * raw[1][k], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(w, raw[1][k])
    conv = next(k for k, w in ema.items() if w.ndim == 4)
    assert not torch.equal(ema[conv], raw[1][conv])


def test_ema_must_be_a_decay_below_one(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.ema"):
        train(tiny_config(shapes_dir, tmp_path / "e", epochs=1).override(["train.ema=1.0"]))


def test_an_empty_val_split_trains_without_validation_only_when_asked(shapes_dir, tmp_path):
    """data.splits.val: [] is a final fit: no val metrics, and every epoch's weights are both best and last."""
    stems = (shapes_dir / "splits" / "train.txt").read_text().split()
    splits = "{train: [" + ", ".join(f'"{s}"' for s in stems) + "], val: []}"
    cfg = tiny_config(shapes_dir, tmp_path / "fit", epochs=2).override([f"data.splits={splits}"])
    result = train(cfg)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert not any(k.startswith("val_") for r in result.history for k in r)
    assert result.best_metrics == {"epoch": 2} and read_meta(tmp_path / "fit" / "best").epoch == 2
    best, last = (load_file(str(tmp_path / "fit" / f"{n}.safetensors")) for n in ("best", "last"))
    assert all(torch.equal(best[k], last[k]) for k in last)
    unasked = "{train: [" + ", ".join(f'"{s}"' for s in stems) + "]}"
    with pytest.raises(DataError, match=r"val split .* is empty.*data.splits.val: \[\]"):
        train(tiny_config(shapes_dir, tmp_path / "e", epochs=1).override([f"data.splits={unasked}"]))


def test_val_ratio_zero_without_split_lists_trains_without_validation(shapes_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    for sub in ("images", "masks"):
        shutil.copytree(shapes_dir / sub, data / sub)
    shutil.copy(shapes_dir / "classes.yaml", data / "classes.yaml")
    cfg = tiny_config(data, tmp_path / "fit", epochs=1).override(["data.val_ratio=0"])
    result = train(cfg)
    assert result.best_metrics == {"epoch": 1} and not any(k.startswith("val_") for k in result.history[0])


def test_resume_with_ema_needs_a_run_trained_with_it(shapes_dir, tmp_path):
    train(tiny_config(shapes_dir, tmp_path / "r", epochs=2), on_epoch_end=lambda epoch, record: True)
    with pytest.raises(ConfigError, match="trained without it"):
        train(tiny_config(shapes_dir, tmp_path / "r", epochs=2).override(["train.ema=0.9"]), resume=True)
