"""data.resize end to end: models see resized images, scores and outputs are at the label's own resolution.

A small folder of mixed image sizes (so padded batches hold images of several sizes); every claim is checked
against a reference computed per image with torch.nn.functional / NumPy.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors import safe_open

from seglab.checkpoint import load_checkpoint, read_meta
from seglab.config import Config, DataConfig
from seglab.data.folder import FolderDataset
from seglab.data.io import read_image
from seglab.data.transforms import build_transform, pad_collate, resized_size
from seglab.engine.evaluate import calibrate, evaluate, label_groups, run_evaluation
from seglab.engine.predict import predict
from seglab.errors import CheckpointError
from seglab.inference import predict_probs, predict_tiled, upsample_rows
from seglab.uncertainty.predictors import TTA

# (h, w) per stem: train 0-7, val 8-10, test 11-14; val and test hold two images of one size each
SIZES = (
    [(40, 56), (56, 40), (48, 48), (36, 50)] * 2
    + [(40, 56), (40, 56), (56, 40)]
    + [(40, 56), (36, 50), (40, 56), (56, 40)]
)
COLOURS = np.array([[40, 40, 40], [200, 60, 60], [60, 60, 200]])


def write_mixed(root):
    """15 RGB images with index masks of 3 classes (two rectangles on background), images coloured by class."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES):
        mask = np.zeros((h, w), np.uint8)
        for label in (1, 2):
            y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
            mask[y : y + rng.integers(8, 16), x : x + rng.integers(8, 16)] = label
        mask[0, :3] = 255  # a few ignored pixels
        image = np.clip(COLOURS[np.minimum(mask, 2)] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["bg", "red", "blue"]}))
    for name, stems in (("train", range(8)), ("val", range(8, 11)), ("test", range(11, 15))):
        (root / "splits" / f"{name}.txt").write_text("".join(f"{s:02d}\n" for s in stems))
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_mixed(tmp_path_factory.mktemp("mixed") / "data")


def config(data, out, *extra):
    return Config().override(
        [
            f"data.root={data}",
            f"train.out_dir={out}",
            "train.epochs=6",
            "train.batch_size=4",
            "train.lr=0.03",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            "data.cache=false",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def runs(mixed, tmp_path_factory):
    """Two runs on the same data: at half resolution (with median-frequency class weights and frozen encoder
    batch norm), and at full resolution."""
    from seglab.engine.train import train

    out = tmp_path_factory.mktemp("runs")
    half = train(
        config(
            mixed,
            out / "half",
            "data.resize={scale: 0.5}",
            "train.class_weights=median_frequency",
            "train.freeze_bn=true",
        )
    )
    full = train(config(mixed, out / "full"))
    return half, full


def labelled_pixels(root, split):
    stems = (root / "splits" / f"{split}.txt").read_text().split()
    return sum(int((np.asarray(Image.open(root / "masks" / f"{s}.png")) != 255).sum()) for s in stems)


def reference_confusion(run_dir, root, split):
    """Per image: the eval transform (image resized, mask not), the model, the logits upsampled bilinearly to the
    mask's size, the argmax, a NumPy confusion matrix over the labelled pixels."""
    model, meta = load_checkpoint(run_dir)
    ds = FolderDataset(
        root,
        split,
        build_transform(DataConfig(mean=meta.mean, std=meta.std, resize=meta.resize), 3, train=False),
    )
    cm = np.zeros((3, 3), np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape[-2:] == resized_size(*y.shape, meta.resize)
            logits = F.interpolate(model(x[None]), size=y.shape, mode="bilinear", align_corners=False)
            pred, y = logits.argmax(1)[0].numpy().ravel(), y.numpy().ravel()
            keep = y != 255
            cm += np.bincount(y[keep] * 3 + pred[keep], minlength=9).reshape(3, 3)
    return cm


def test_resize_is_recorded_in_the_checkpoint_and_the_run(runs, mixed):
    half, full = runs
    assert read_meta(half.run_dir).resize == {"scale": 0.5} and read_meta(full.run_dir).resize is None
    assert yaml.safe_load((half.run_dir / "best.yaml").read_text())["resize"] == {"scale": 0.5}
    with safe_open(str(half.best_checkpoint), framework="pt") as f:
        assert yaml.safe_load(f.metadata()["seglab"])["resize"] == {"scale": 0.5}
    assert Config.load(half.run_dir / "config.yaml").data.resize == {"scale": 0.5}


def test_evaluate_scores_at_the_labels_resolution_as_a_reference_does(runs, mixed, tmp_path):
    half, full = runs
    full_res = labelled_pixels(mixed, "test")
    for run in (half, full):
        report = evaluate(run.run_dir, mixed, "test", batch_size=4, progress=False, out=tmp_path / "e.json")
        cm = np.array(report["confusion_matrix"])
        # the half-resolution model is scored on the same full-resolution labels as the full-resolution one
        assert cm.sum() == full_res
        assert np.array_equal(cm, reference_confusion(run.run_dir, mixed, "test"))
        assert (cm.sum(0) > 0).sum() >= 2  # not one class everywhere: a misplaced pixel would show
    # training-time validation went the same way: the best epoch's validation numbers are evaluate's
    val = evaluate(half.run_dir, mixed, "val", batch_size=4, progress=False, out=tmp_path / "v.json")
    assert val["miou"] == half.best_metrics["miou"]
    assert val["pixel_accuracy"] == half.best_metrics["pixel_accuracy"]


def test_label_groups_crop_each_image_and_mask_to_its_own_size(runs, mixed):
    model, meta = load_checkpoint(runs[0].run_dir)
    t = build_transform(DataConfig(mean=meta.mean, std=meta.std, resize=meta.resize), 3, train=False)
    ds = FolderDataset(mixed, "test", t)
    items = [ds[i] for i in range(len(ds))]
    batch = pad_collate(255, sizes=True)(items)
    groups = list(label_groups(batch))
    assert [g[0].shape[0] for g in groups] == [2, 1, 1]  # test stems 11 and 13 share a size
    members = iter([0, 2, 1, 3])  # the items of each group, groups in order of first appearance
    for x, y, size in groups:
        for j in range(x.shape[0]):
            ref_x, ref_y = items[next(members)]
            assert torch.equal(x[j], ref_x) and torch.equal(y[j], ref_y) and size == tuple(ref_y.shape)
    # per-image logits of a batch equal the image's own (no padding reaches them)
    cm = run_evaluation(model, [batch], 3, 255, torch.device("cpu"))
    assert cm.matrix.sum() == labelled_pixels(mixed, "test")


def test_upsample_rows_equals_f_interpolate():
    z = torch.randn(3, 7, 11)
    for size in [(20, 30), (7, 11), (5, 4), (33, 12)]:
        ref = F.interpolate(z[None], size=size, mode="bilinear", align_corners=False)[0]
        for r0, r1 in [(0, size[0]), (1, 3), (size[0] - 1, size[0])]:
            assert torch.allclose(upsample_rows(z, size, r0, r1), ref[:, r0:r1], atol=1e-5)


def test_predict_writes_outputs_at_the_input_size(runs, mixed, tmp_path):
    half, _ = runs
    model, meta = load_checkpoint(half.run_dir)
    paths = [mixed / "images" / "11.png", mixed / "images" / "14.png"]
    records = predict(half.run_dir, paths, tmp_path / "out", prob_maps=["red"], progress=False)
    for path, rec in zip(paths, records):
        image = read_image(path, 3)
        h, w = image.shape[:2]
        x = build_transform(DataConfig(mean=meta.mean, std=meta.std, resize=meta.resize), 3, train=False)(
            image, np.zeros((h, w), np.int64)
        )[0]
        with torch.no_grad():
            probs = F.interpolate(model(x[None]), size=(h, w), mode="bilinear", align_corners=False)[
                0
            ].softmax(0)
        mask = np.asarray(Image.open(rec["mask"]))
        assert mask.shape == (h, w) and np.array_equal(mask, probs.argmax(0).numpy())
        prob = np.asarray(Image.open(rec["prob_red"])).astype(int)
        assert prob.shape == (h, w) and np.abs(prob - (probs[1] * 255).round().numpy()).max() <= 1
        assert np.asarray(Image.open(rec["overlay"])).shape == (h, w, 3)
    # through the uncertainty predictor: the same masks, and maps of the input's size
    again = predict(half.run_dir, paths, tmp_path / "unc", progress=False, uncertainty="deterministic")
    for rec, unc in zip(records, again):
        mask = np.asarray(Image.open(unc["mask"]))
        assert np.array_equal(mask, np.asarray(Image.open(rec["mask"])))
        assert np.asarray(Image.open(unc["uncertainty"])).shape == (*mask.shape, 3)


def test_predict_with_tiles_tiles_the_resized_image(runs, mixed):
    model, meta = load_checkpoint(runs[0].run_dir)
    image = read_image(mixed / "images" / "11.png", 3)  # 40 x 56, resized to 20 x 28
    dev = torch.device("cpu")
    probs = predict_probs(model, image, meta.mean, meta.std, dev, 1.3, tile=8, overlap=4, resize=meta.resize)
    x = build_transform(DataConfig(mean=meta.mean, std=meta.std, resize=meta.resize), 3, train=False)(
        image, np.zeros(image.shape[:2], np.int64)
    )[0]
    logits = predict_tiled(model, x[None], 8, 4)
    ref = (F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False)[0] / 1.3).softmax(0)
    assert probs.shape == (3, 40, 56) and torch.allclose(probs, ref, atol=1e-5)


def test_uncertainty_evaluation_upsamples_logits_before_the_softmax(runs, mixed, tmp_path):
    half, _ = runs
    plain = evaluate(half.run_dir, mixed, "test", batch_size=4, progress=False, out=tmp_path / "a.json")
    report = evaluate(
        half.run_dir,
        mixed,
        "test",
        batch_size=4,
        progress=False,
        out=tmp_path / "b.json",
        uncertainty="deterministic",
    )
    assert report["confusion_matrix"] == plain["confusion_matrix"]
    # the NLL of softmax(upsampled logits) over the full-resolution labelled pixels
    model, meta = load_checkpoint(half.run_dir)
    ds = FolderDataset(
        mixed,
        "test",
        build_transform(DataConfig(mean=meta.mean, std=meta.std, resize=meta.resize), 3, train=False),
    )
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            logits = F.interpolate(model(x[None]), size=y.shape, mode="bilinear", align_corners=False)
            nll += float(F.cross_entropy(logits.double(), y[None], ignore_index=255, reduction="sum"))
            n += int((y != 255).sum())
    assert report["uncertainty"]["nll"] == pytest.approx(nll / n, rel=1e-5)


def test_tta_with_an_output_size_averages_softmaxes_of_upsampled_logits():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 9, 13)
    result = TTA(model, flips=("none", "h"), scales=(1.0, 0.5))(x, (20, 25))

    def up(z):
        return F.interpolate(z, size=(20, 25), mode="bilinear", align_corners=False).softmax(1)

    with torch.no_grad():
        half = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        passes = [
            up(model(x)),
            up(model(x.flip(-1)).flip(-1)),
            up(model(half)),
            up(model(half.flip(-1)).flip(-1)),
        ]
    assert result.probs.shape == (2, 4, 20, 25)
    assert torch.allclose(result.probs, torch.stack(passes).mean(0), atol=1e-6)


def test_calibrate_fits_on_the_full_resolution_pixels(runs, mixed):
    import shutil

    half, _ = runs
    run_dir = half.run_dir.parent / "half-copy"
    shutil.copytree(half.run_dir, run_dir)
    r = calibrate(run_dir, mixed, "val", progress=False, max_pixels=None)
    assert r["pixels"] == labelled_pixels(mixed, "val") and r["temperature"] > 0
    assert read_meta(run_dir).temperature == pytest.approx(r["temperature"])
    assert read_meta(run_dir).resize == {"scale": 0.5}


def test_old_checkpoints_without_resize_and_bad_sidecars(tiny_ckpt, tmp_path):
    sidecar = tiny_ckpt.with_suffix(".yaml")
    doc = yaml.safe_load(sidecar.read_text())
    copy = tmp_path / "old.safetensors"
    copy.write_bytes(tiny_ckpt.read_bytes())
    del doc["resize"]  # a sidecar written before data.resize existed
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(doc))
    assert read_meta(copy).resize is None
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**doc, "resize": {"short": 0}}))
    with pytest.raises(CheckpointError, match="resize"):
        read_meta(copy)


def test_class_weights_are_the_training_splits_median_frequency_and_recorded(runs, mixed):
    half, _ = runs
    counts = np.stack(
        [
            np.bincount(np.asarray(Image.open(mixed / "masks" / f"{s:02d}.png")).ravel(), minlength=256)[:3]
            for s in range(8)
        ]
    )
    freq = counts.sum(0) / ((counts > 0) * counts.sum(1, keepdims=True)).sum(0)
    expected = np.median(freq) / freq
    lines = [json.loads(line) for line in (half.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.allclose(r["class_weights"], expected) for r in lines)
    assert "class_weights" not in runs[1].history[0]


def test_frozen_encoder_batch_norm_keeps_its_statistics_and_learns_its_affine_weights(runs, mixed):
    from safetensors.torch import load_file

    from seglab.engine.train import build_model

    half, _ = runs
    cfg = Config.load(half.run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg, 3, 3).state_dict()
    last = load_file(str(half.last_checkpoint))
    enc = [
        k[: -len(".running_mean")] for k in init if k.startswith("encoder.") and k.endswith("running_mean")
    ]
    dec = [
        k[: -len(".running_mean")] for k in init if k.startswith("decoder.") and k.endswith("running_mean")
    ]
    assert enc and dec
    for k in enc:
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(last[f"{k}.{buf}"], init[f"{k}.{buf}"]), k
    assert any(
        not torch.equal(last[f"{k}.weight"], init[f"{k}.weight"]) for k in enc
    )  # the affine part learns
    assert all(not torch.equal(last[f"{k}.running_mean"], init[f"{k}.running_mean"]) for k in dec)


def test_class_weights_and_freeze_bn_errors(mixed, tmp_path):
    from seglab.engine.train import train
    from seglab.errors import ConfigError

    cases = [
        (["train.class_weights=[1, 2]"], "train.class_weights has 2 weights but .* has 3 classes"),
        (
            ["train.class_weights=balanced", "train.loss=dice"],
            "cross-entropy term, but train.loss dice has none",
        ),
        (
            ["train.class_weights=balanced", "train.loss={dice_ce: {weight: 1, class_weights: [1, 1, 1]}}"],
            "both weight the cross-entropy",
        ),
        (
            ["train.freeze_bn=true", "model.params.norm=none"],
            "train.freeze_bn is set but the .* has no batch-norm",
        ),
    ]
    for i, (extra, match) in enumerate(cases):
        with pytest.raises(ConfigError, match=match):
            train(config(mixed, tmp_path / str(i), *extra))
        assert not (tmp_path / str(i)).exists()


def test_class_weights_reach_every_cross_entropy_term():
    from types import SimpleNamespace

    from seglab.engine.train import _build_criterion
    from seglab.losses import cross_entropy, dice_loss

    w = np.array([0.5, 2.0, 1.0])
    logits, target = torch.randn(2, 3, 6, 7), torch.randint(0, 3, (2, 6, 7))
    data = SimpleNamespace(spec=SimpleNamespace(ignore_index=255))
    for loss in ("ce", "dice_ce", {"ce": 1.0, "dice": 0.5}):
        cfg = Config().override([f"train.loss={json.dumps(loss)}"])
        value = _build_criterion(cfg, data, w)(logits, target)
        ref = F.cross_entropy(logits, target, weight=torch.tensor(w, dtype=torch.float32))
        assert torch.allclose(cross_entropy(logits, target, torch.tensor(w, dtype=torch.float32)), ref)
        dice = 0.0 if loss == "ce" else (0.5 if isinstance(loss, dict) else 1.0) * dice_loss(logits, target)
        assert torch.allclose(value, ref + dice, atol=1e-6), loss


def test_freeze_bn_in_one_epoch_keeps_encoder_statistics_only():
    from seglab.engine.loop import StepParts, train_one_epoch
    from seglab.engine.optim import Budget, Schedule, build_optimizer
    from seglab.engine.state import TrainState
    from seglab.losses import make_loss
    from seglab.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, in_channels=3, depth=2, base_channels=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parts = StepParts(
        model=model,
        net=model,
        criterion=make_loss("ce"),
        optimizer=build_optimizer(Config().train, model),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        schedule=Schedule("constant", 2),
        base_lr=0.01,
        device=torch.device("cpu"),
        freeze_bn=True,
    )
    batches = [(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))) for _ in range(2)]
    train_one_epoch(parts, batches, TrainState(), Budget(None), epoch=0)
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(after[k], before[k]) for k in stats if k.startswith("encoder."))
    assert all(not torch.equal(after[k], before[k]) for k in stats if k.startswith("decoder."))
    bn = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.training for m in bn) and model.decoder.training
