"""Each planner rule on worked examples: fingerprints written by hand, the choice and its reason checked."""

from __future__ import annotations

import pytest

from seglab.plan import rules
from seglab.plan.fingerprint import ClassObjects, DataFingerprint
from seglab.plan.machine import Candidate


def fingerprint(**kw) -> DataFingerprint:
    base = dict(
        root="d",
        splits={"train": 100, "val": 0, "test": 50},
        median_size=(683, 512),
        min_short=512,
        max_long=683,
        bands=3,
        dtype="uint8",
        bit_depth=8,
        saturation=0.3,
        class_names=["a", "b"],
        class_freq=[0.8, 0.2],
        class_images=[1.0, 1.0],
        objects=[ClassObjects(width=40.0), ClassObjects(width=20.0)],
        vflip_asymmetry=0.4,
        ceiling={1.0: 1.0, 0.75: 0.995, 0.5: 0.991, 0.375: 0.985, 0.25: 0.97},
    )
    base.update(kw)
    return DataFingerprint(**base)


@pytest.mark.parametrize(
    "kw, kind",
    [
        ({}, "photo"),  # colour, layout with an up and a down
        ({"vflip_asymmetry": 0.05, "bands": 1, "saturation": 0.0}, "microscopy"),
        ({"vflip_asymmetry": 0.05, "saturation": 0.02, "gray_as_rgb": 1.0}, "microscopy"),  # grey as RGB
        ({"vflip_asymmetry": 0.05}, "aerial"),  # colour, no up or down
        ({"vflip_asymmetry": 0.05, "bands": 4}, "aerial"),
        ({"bands": 1, "saturation": 0.0, "bit_depth": 12, "dtype": "uint16"}, "medical"),
        ({"bands": 5}, "other"),
    ],
)
def test_kind_rule(kw, kind):
    got, reason = rules.data_kind(fingerprint(**kw))
    assert got == kind and reason.endswith(f"-> {kind}")
    assert f"{fingerprint(**kw).vflip_asymmetry:.2f}" in reason


def test_declared_kind_wins():
    assert rules.data_kind(fingerprint(), "microscopy") == ("microscopy", "declared (data.kind)")


def test_augmentations_by_kind():
    micro = rules.augmentations("microscopy").values
    photo = rules.augmentations("photo").values
    assert micro["data.vflip"] and micro["data.rot90"] and micro["data.hflip"]
    assert photo["data.hflip"] and not photo["data.vflip"] and not photo["data.rot90"]
    assert photo["data.scale"] == [0.75, 1.25]
    medical = rules.augmentations("medical").values
    assert not medical["data.hflip"] and not medical["data.vflip"]
    for kind in rules.KINDS:  # every kind sets the same keys, so no key is left from another plan
        assert set(rules.augmentations(kind).values) == set(micro)


def test_scale_smallest_within_tolerance():
    c = rules.scale(fingerprint())
    assert c.values == {"data.resize": {"scale": 0.5}}  # 0.991 >= 0.99; 0.985 at 0.375 is not
    assert "0.991 at 0.5" in c.reason and "0.985 at 0.375" in c.reason


def test_scale_tolerance_at_printed_precision():
    # 0.98996 prints as 0.990: within 0.01 of 1.000 as the table shows it
    c = rules.scale(fingerprint(ceiling={1.0: 1.0, 0.5: 0.98996, 0.25: 0.9}))
    assert c.values["data.resize"] == {"scale": 0.5}
    c = rules.scale(fingerprint(ceiling={1.0: 1.0, 0.5: 0.9894, 0.25: 0.9}))
    assert c.values["data.resize"] is None


def test_scale_keeps_thin_structures():
    thin = fingerprint(objects=[ClassObjects(width=40.0), ClassObjects(width=6.0)])
    c = rules.scale(thin)
    assert c.values["data.resize"] == {"scale": 0.75}  # 6 px * 0.5 = 3 < 4 px
    assert "6.0 px wide" in c.reason


def test_scale_keeps_thin_classes_at_the_encoders_stride():
    # nuclei 10 px wide: 7.5 px at 0.75, 3.75 at a timm encoder's stride 2 (< 4), 5 at full resolution
    nuclei = fingerprint(objects=[ClassObjects(width=40.0), ClassObjects(width=10.0)])
    assert rules.scale(nuclei, finest_stride=1).values["data.resize"] == {"scale": 0.5}
    c = rules.scale(nuclei, finest_stride=2)
    assert c.values["data.resize"] is None and "3.8 px at the model's stride-2 feature at 0.75" in c.reason
    lite = list(rules.KNOWN_WEIGHTS)
    assert rules.finest_stride(nuclei, lite) == 2 and rules.finest_stride(nuclei, []) == 1
    membrane = fingerprint(objects=[ClassObjects(width=5.0), ClassObjects(width=25.0)])
    assert rules.finest_stride(membrane, lite) == 1  # 2.5 px at stride 2: plan for a full-resolution U-Net


def test_scale_of_the_instance_target_uses_its_ceiling():
    fp = fingerprint(ceiling_target={1.0: 1.0, 0.75: 0.95, 0.5: 0.9})
    assert rules.scale(fp, "mask").values["data.resize"] == {"scale": 0.5}
    assert rules.scale(fp, "interior_boundary").values["data.resize"] is None


def test_scale_keeps_small_images():
    c = rules.scale(fingerprint(min_short=100))
    assert c.values["data.resize"] == {"scale": 0.75}  # 100 * 0.5 = 50 < 64


def test_crop_and_batch():
    assert rules.crop_and_batch(fingerprint(), 0.5).values == {"data.crop_size": 256, "train.batch_size": 8}
    small = rules.crop_and_batch(fingerprint(min_short=200), 1.0).values
    assert small["data.crop_size"] == 192
    assert rules.crop_and_batch(fingerprint(), 1.0, "cuda").values["train.batch_size"] == 16


def test_a_few_small_images_do_not_set_the_crop_or_the_scale():
    # 90 % of the images have a 233-px short side, one has 60: the crop follows the 90 % (224 = 7 x 32), the
    # small one pads; without short_p10 (an old fingerprint) the smallest image rules, as before
    fp = fingerprint(min_short=60, short_p10=233)
    c = rules.crop_and_batch(fp, 1.0)
    assert c.values["data.crop_size"] == 224
    assert "90 %" in c.reason and "the smallest, 60 px, pad" in c.reason
    assert rules.crop_and_batch(fingerprint(min_short=60), 1.0).values["data.crop_size"] == 32
    assert rules.scale(fp).values["data.resize"] == {"scale": 0.5}  # the ceiling's choice: 233 * 0.5 >= 64
    alone = rules.scale(fingerprint(min_short=60))
    assert alone.values["data.resize"] is None and "the smallest image (60 px) would be 45 px" in alone.reason


def test_target_rule():
    assert rules.target(fingerprint()).values == {"data.target": "mask"}
    touching = fingerprint(instances=True, touching=0.3, objects_per_image=27)
    assert rules.target(touching).values == {"data.target": "interior_boundary", "data.boundary_width": 2}
    apart = fingerprint(instances=True, touching=0.0)
    assert rules.target(apart).values == {"data.target": "mask"}
    tiny = fingerprint(
        instances=True, touching=0.3, objects=[ClassObjects(width=40.0), ClassObjects(width=4.0)]
    )
    assert rules.target(tiny).values["data.boundary_width"] == 1


def cand(name: str, seconds: float, pretrained: bool) -> Candidate:
    stride = 2 if pretrained else 1
    return Candidate(
        name, "unet", {}, pretrained=pretrained, seconds_per_step=seconds, amp="bf16", finest_stride=stride
    )


def test_model_prefers_pretrained_with_enough_steps():
    fp = fingerprint()
    best, c = rules.model([cand("lite", 0.8, True), cand("scratch", 0.5, False)], 570, fp)
    assert best.name == "lite" and "~605 steps" in c.reason  # 570 * 0.85 / 0.8
    best, c = rules.model([cand("lite", 2.0, True), cand("scratch", 0.5, False)], 570, fp)
    assert best.name == "scratch" and "no pretrained encoder gets 300 steps" in c.reason
    best, c = rules.model([cand("scratch", 0.5, False)], 570, fp)
    assert best.name == "scratch" and "no local weights" in c.reason


def test_model_keeps_thin_classes_at_the_finest_feature():
    # a 5-px membrane: 2.5 px at a timm encoder's stride-2 feature, 5 px at a full-resolution U-Net's
    thin = fingerprint(objects=[ClassObjects(width=5.0), ClassObjects(width=25.0)])
    best, c = rules.model([cand("lite", 0.8, True), cand("scratch", 0.5, False)], 570, thin)
    assert best.name == "scratch" and "2.5 px < 4" in c.reason
    # at scale 0.5 a 12-px class is 6 px, 3 px at stride 2: lost; 16 px is 8, then 4: kept
    for width, kept in ((12.0, "s"), (16.0, "lite")):
        fp = fingerprint(objects=[ClassObjects(width=width), ClassObjects(width=40.0)])
        assert rules.model([cand("lite", 0.8, True), cand("s", 0.5, False)], 570, fp, 0.5)[0].name == kept
    # an absent class (frequency 0) does not count
    absent = fingerprint(objects=[ClassObjects(width=1.0), ClassObjects(width=25.0)], class_freq=[0.0, 1.0])
    assert rules.model([cand("lite", 0.8, True), cand("s", 0.5, False)], 570, absent)[0].name == "lite"


def test_normalisation():
    lite = rules.KNOWN_WEIGHTS[0]
    chosen = Candidate("l", "unet", {"weights": lite.path}, pretrained=True)
    assert rules.normalisation(fingerprint(bands=1), chosen, [lite]).values == {
        "data.mean": [0.5],
        "data.std": [0.5],
    }
    sixteen = rules.normalisation(fingerprint(dtype="uint16", bit_depth=12), chosen, [lite])
    assert sixteen.values == {"data.normalize": "auto"} and "12 bits" in sixteen.reason
    scratch = rules.normalisation(fingerprint(), Candidate("s", "unet", {}), [lite])
    assert scratch.values == {"data.normalize": "auto"} and "ImageNet" in scratch.reason


def test_loss_weights_follow_measured_imbalance():
    balanced = rules.loss(fingerprint(class_freq=[0.78, 0.22]), "mask")
    assert balanced.values["train.class_weights"] is None and "ratio 4" in balanced.reason
    skewed = rules.loss(fingerprint(class_names=["a", "b", "c"], class_freq=[0.9, 0.095, 0.005]), "mask")
    assert skewed.values["train.class_weights"] == "median_frequency" and "ratio 180" in skewed.reason
    assert (
        rules.loss(fingerprint(class_freq=[0.99, 0.01]), "interior_boundary").values["train.class_weights"]
        is None
    )


def test_optimisation():
    pre = rules.optimisation(Candidate("l", "unet", {}, pretrained=True, batch=8), 800, "10m").values
    assert pre["train.lr"] == 1e-3 and pre["train.encoder_lr"] == 0.1 and pre["train.freeze_bn"]
    assert pre["train.ema"] == rules.EMA and pre["train.time_limit"] == "10m"
    scratch = rules.optimisation(Candidate("s", "unet", {}), 100, "1m").values
    assert scratch["train.lr"] == 3e-3 and not scratch["train.freeze_bn"] and scratch["train.ema"] == 0.0


def test_validation_carve():
    own = rules.validation(fingerprint(has_val=True, splits={"train": 100, "val": 50}))
    assert "own val split (50 images)" in own.reason
    assert rules.validation(fingerprint()).values == {"data.val_ratio": 0.0}
    big = fingerprint(splits={"train": 5000, "val": 0, "test": 0})
    assert rules.validation(big).values == {"data.val_ratio": rules.CARVE_RATIO}


@pytest.mark.parametrize("n, r", [(25, 32), (100, 8), (531, 2), (5000, 1)])
def test_repeat_makes_epochs_of_about_100_steps(n, r):
    c = rules.repeat(fingerprint(splits={"train": n}), 8)
    assert c.values == {"data.repeat": r}
