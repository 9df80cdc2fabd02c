"""Dataclass configs with YAML load/dump and ``key=value`` overrides; the resolved config is saved with every run.

No torch import here: the CLI builds and prints configs instantly.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seglab.errors import ConfigError
from seglab.validate import MAX_SIDE  # pixels: the largest crop or resized side, as for the flags


class Stem(str):
    """Type hint for a file stem: a string; a YAML integer such as 12 is taken as its digits ("12").

    The config reader keeps digits with a leading zero as strings, so ``[07, 08]`` gives "07", "08".
    """


class ResizeSpec(dict):
    """Type hint for ``data.resize``: null, or a mapping with exactly one of ``short: N`` (the short side to N px),
    ``long: N`` (the long side to N px) or ``scale: F`` (both sides times F > 0). Read as a plain dict, checked
    by :func:`check_resize`."""


RESIZE_KEYS = ("short", "long", "scale")
CLASS_WEIGHTS = ("median_frequency", "balanced")
TARGETS = ("mask", "interior_boundary")
# data.kind: what the images are, for the planner (seglab.plan): its augmentations and defaults follow the kind
KINDS = ("auto", "photo", "microscopy", "aerial", "medical", "other")
# data.format: the layouts read in place (seglab.data.formats, which takes this tuple: config sits below data)
FORMATS = ("auto", "folder", "voc", "cityscapes", "ade20k", "coco", "labelme")


@dataclass
class DataConfig:
    """Where the data is and how it is split and augmented."""

    root: str | None = None  # the data set: a folder (images/, masks/) or any layout of data.format
    # its layout (FORMATS): auto (detected from the folder's structure; `seglab data check` says which), folder,
    # voc, cityscapes, ade20k, coco, labelme: each read in place (docs/formats/)
    format: str = "auto"
    # what the images are (KINDS), read by `seglab plan` only (training ignores it): auto (inferred from the
    # data's statistics by a stated rule) or declared: photo, microscopy, aerial, medical, other
    kind: str = "auto"
    val_ratio: float = 0.1  # used when the folder has no splits/ lists
    test_ratio: float = 0.1
    split_seed: int = 0
    splits: dict[str, list[Stem]] | None = (
        None  # explicit stems per split, {train: [...], val: [...], test: [...]}; beats splits/
    )
    ignore_index: int = 255
    class_names: list[str] | None = None  # names for the classes when the data declares none (binary masks)
    border_weights: bool = False  # U-Net border weight map (w0, sigma in px) as per-pixel CE weights
    border_w0: float = 10.0
    border_sigma: float = 5.0
    # what the network learns: "mask" (the classes of masks/) or "interior_boundary" (three classes made from the
    # instance maps of instances/ after augmentation: background, object interior, and a band of boundary_width px
    # inside each object's edge, so touching objects are kept apart; `--instances learned` splits on it)
    target: str = "mask"
    boundary_width: int = 2
    crop_size: int | None = None  # random crop for training; None keeps the whole image
    scale: tuple[float, float] = (1.0, 1.0)  # random scale range (1, 1 = off)
    rotation: float = 0.0  # max degrees of random rotation
    elastic: float = 0.0  # std (px) of U-Net-style elastic displacements on a coarse grid; 0 = off
    elastic_grid: int = 3
    hflip: bool = True
    vflip: bool = True
    rot90: bool = (
        False  # random multiples of 90 degrees (exact); with the flips, all 8 symmetries of the square
    )
    color_jitter: float = 0.0  # brightness/contrast (and saturation for RGB) strength, image only
    # null (off), or one of {short: N}, {long: N} (that side to N px, the other in proportion, rounded half up) or
    # {scale: F}: the image is resized (bilinear, antialiased) before anything else, in training and at inference
    # (it is recorded in the checkpoint); the mask is resized (nearest) for training only: validation, evaluate
    # and predict upsample the logits to the label's own size, so scores are at the full resolution
    resize: ResizeSpec | None = None
    # null (off) or [lo, hi] percentiles: each image's intensities from its lo-th to its hi-th percentile (over all
    # channels) are spread over 0..255 before anything else, in training and at inference (recorded in the
    # checkpoint): dim and bright microscopy images alike, e.g. [1, 99.8]
    stretch: tuple[float, float] | None = None
    invert: float = (
        0.0  # probability of inverting a training image (255 - x): dark-on-bright and bright-on-dark
    )
    # how raw values become the model's input (recorded in the checkpoint; see seglab.data.normalize): auto
    # (imagenet for 8-bit images, dataset for 16-bit and float), imagenet (/255, ImageNet mean/std), dataset (per
    # band, the training images' 0.5..99.5th percentiles -> 0..1, then their mean/std), image (each image's own
    # percentiles: data.stretch), range (a fixed {mode: range, range: [0, 4095]}); a mapping {mode: ...,
    # percentiles: [lo, hi], range: [lo, hi], clip: bool} sets the details
    normalize: str | dict[str, Any] = "auto"
    mean: list[float] | None = None  # None: ImageNet statistics (their average for grayscale), or the data's
    std: list[float] | None = None
    repeat: int = 1  # passes over the training split per epoch (fresh random augmentation each time)
    cache: bool = True  # keep decoded images in memory after the first epoch
    # loader processes; null: 0 when training on the CPU (the cores compute the model; decoded images are cached),
    # else min(8, cores - 1). Workers persist across epochs (so do their caches); results do not depend on it
    num_workers: int | None = None


@dataclass
class ModelConfig:
    """The architecture name and its keyword arguments (num_classes and in_channels follow the data)."""

    arch: str = "unet"
    params: dict[str, Any] = field(default_factory=lambda: {"depth": 4, "base_channels": 16})


@dataclass
class TrainConfig:
    """Optimisation: AdamW with a per-iteration poly or cosine schedule, cross-entropy + Dice."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4  # not applied to biases and normalisation layers
    optimizer: str = "adamw"  # adamw | adam | sgd (with momentum; nesterov)
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    encoder_lr: float = 1.0  # the encoder's learning rate is lr * encoder_lr (e.g. 0.1 for a pretrained one)
    clip_grad: float | None = None  # clip the gradients' global L2 norm to this value
    accumulate: int = 1  # batches per optimizer step (effective batch = batch_size * accumulate)
    schedule: str = (
        "poly"  # poly | cosine | constant, over the steps or over time_limit, whichever ends first
    )
    warmup_iters: int = 0  # linear warm-up (optimizer steps), for every schedule
    # a wall-clock budget for the whole run ("10m", "90s", "1h30m", "1.5h", or a bare number of seconds; every part
    # carries its unit: "1h30" is refused as ambiguous): the schedule runs over elapsed time and training stops at
    # the limit with a final validation and checkpoint; null = epochs only
    time_limit: str | float | None = None
    # a loss name or a weighted sum {name: weight}; names in seglab.losses.list_losses() (ce, dice, focal, ...)
    loss: str | dict[str, Any] = field(default_factory=lambda: {"ce": 1.0, "dice": 1.0})
    # class weights of the loss's cross-entropy term (ce, or dice_ce's): null (none), "median_frequency" (SegNet:
    # median_c freq / freq(c), freq(c) = pixels of c / pixels of the training images that hold c), "balanced"
    # (total / (K * pixels of c)), both from the training split's masks (absent classes: 0), or one weight per class
    class_weights: str | list[float] | None = None
    # the encoder's batch-norm layers stay in eval mode while training: running statistics frozen (e.g. a
    # pretrained encoder and small batches); their affine weights still learn, at lr * encoder_lr
    freeze_bn: bool = False
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    # exponential moving average of the weights (e.g. 0.995; 0 = off): validation and the best/last checkpoints use
    # the averaged weights, which average out the noise of the last steps (timm's ModelEmaV3, with its warm-up)
    ema: float = 0.0
    # auto: a short timed probe of fp32 and bf16 (fp16 on CUDA without bf16) on the model and a real batch at
    # start-up keeps the faster; off | bf16 (CPU with AVX-512 BF16/AMX, or CUDA) | fp16 (CUDA, gradient scaler)
    amp: str = "auto"
    channels_last: bool | None = None  # null: on for CPU, and for CUDA under bf16/fp16 autocast
    compile: bool = False  # torch.compile the model (benchmarks/train_step.py measures whether it pays off)
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    log_interval: int = (
        20  # optimizer steps between reads of the running loss (the only host syncs of a step)
    )
    # distributed (torchrun, or `seglab train --nproc N`): batch_size is the global batch, split evenly over the
    # processes; sync_bn normalises with the global batch's statistics (SyncBatchNorm), so N processes train what
    # one process with the whole batch trains; a collective that waits longer than dist_timeout fails the job
    sync_bn: bool = False
    dist_timeout: str | float = 600.0  # seconds, or a duration such as "10m"
    tensorboard: bool | None = (
        None  # TensorBoard event files in the run folder; null: when tensorboard is installed
    )
    out_dir: str = "runs/train"
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # what `seglab plan` chose and why: {kind, time_limit, reasons: {config key: reason}, data: the data
    # fingerprint, machine: the machine fingerprint, overridden: {config key: planned value}}; a record that
    # travels with config.yaml and the run's plan.yaml: training never reads it. null without a plan
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as the YAML file holds them: without a plan there is no plan section (a config.yaml
        reads as it always has)."""
        data = _plain(dataclasses.asdict(self))
        if data["plan"] is None:
            del data["plan"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        """Build and :meth:`validate` a Config from plain values (a YAML document, ``to_dict()``'s output)."""
        return _build(cls, data or {}, "").validate()

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(
                f"config file {path} is a folder; give a YAML file (or --data {path} for a data set)"
            )
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text; give a YAML file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping (data:, model:, train:)")
        return cls.from_dict(data)

    def dump(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)

    def note_overrides(self, planned: Config) -> Config:
        """Record in ``plan["overridden"]`` each key (section.field) whose value here differs from the
        ``planned`` config this one was made from (by flags and ``--set``), with its planned value, so the
        report says which choices were not the plan's. Keys recorded before keep their first planned value.
        Where the run is written and whether bars show are not choices of the plan. Returns ``self``."""
        if self.plan is None:
            return self
        noted = dict(self.plan.get("overridden") or {})
        used, was = self.to_dict(), planned.to_dict()
        for section in ("data", "model", "train"):
            for name, value in used[section].items():
                key = f"{section}.{name}"
                if key in ("train.out_dir", "train.progress"):
                    continue
                if value != was[section][name]:
                    noted.setdefault(key, was[section][name])
                if key in noted and noted[key] == value:  # set back to what was planned
                    del noted[key]
        self.plan = {k: v for k, v in self.plan.items() if k != "overridden"}
        if noted:
            self.plan["overridden"] = noted
        return self.validate()

    def as_planned(self) -> Config:
        """The config as the plan chose it: every key in ``plan["overridden"]`` back at its planned value (what a
        run folder's plan.yaml holds; ``seglab train --plan`` takes it)."""
        data = self.to_dict()
        plan = dict(data.get("plan") or {})
        for key, value in (plan.pop("overridden", None) or {}).items():
            section, _, name = key.partition(".")
            if isinstance(data.get(section), dict) and name in data[section]:
                data[section][name] = value
        data["plan"] = plan if self.plan is not None else None
        return Config.from_dict(data)

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` strings (values parsed as YAML); returns a new, validated Config."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=0.01)")
            *parents, leaf = key.strip().split(".")
            if (parents or [leaf])[0] == "plan":
                raise ConfigError(
                    f"override {item!r}: plan is the record of what seglab plan chose and why, which training "
                    "does not read; set the config key itself (e.g. train.lr=0.01) or run seglab plan again"
                )
            node = data
            for p in parents:
                if not isinstance(node.get(p), dict):
                    if (p == "params" and node is data.get("model")) or (
                        p == "resize" and node is data.get("data")
                    ):
                        node[p] = {}
                    else:
                        raise ConfigError(f"unknown config key {key!r}")
                node = node[p]
            try:
                node[leaf] = yaml.load(raw, Loader=_Loader)
            except yaml.YAMLError:
                raise ConfigError(f"cannot parse the value of override {item!r}") from None
        return Config.from_dict(data)

    def validate(self) -> Config:
        """Check the type and range of every value; raises ConfigError naming the key and what it accepts.

        Values are normalised in place as ``from_dict`` does (ints to floats, "off" to False for a bool key).
        What needs the machine or the data (CUDA for fp16, the device, the model's arguments, the number of
        classes) is checked by ``train``. Returns ``self``.
        """
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            hint = typing.get_type_hints(type(self))[section.name]
            if section.name == "plan":
                self.plan = _check_plan(value)
                continue
            if not isinstance(value, hint):
                raise ConfigError(f"config section {section.name} must be a {hint.__name__}, got {value!r}")
            hints = typing.get_type_hints(hint)
            for f in dataclasses.fields(value):
                key = f"{section.name}.{f.name}"
                setattr(value, f.name, _coerce(getattr(value, f.name), hints[f.name], key))
        _check_data(self.data)
        _check_model(self.model)
        _check_train(self.train)
        return self


_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"(?:({_NUMBER})h)?(?:({_NUMBER})m(?:in)?)?(?:({_NUMBER})s)?")


def parse_duration(value: str | float, key: str) -> float:
    """Seconds of a duration: a bare number of seconds ("45", 45) or parts that each carry their unit, such as
    "90s", "10m", "1h30m", "1.5h". A bare number after a unit ("1h30": 30 s? 30 min?) is refused as ambiguous,
    as are zero, negative and non-finite durations."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = _DURATION.fullmatch(text) if text else None
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        elif parts is not None and any(parts.groups()):
            h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
            seconds = 3600 * h + 60 * m + sec
        else:
            bare = re.fullmatch(rf"(.*[a-z])({_NUMBER})", text)
            if bare and _DURATION.fullmatch(bare[1]):
                raise ConfigError(
                    f"{key} {value!r} is ambiguous: {bare[2]} after {bare[1]} has no unit; write "
                    f"{bare[1]}{bare[2]}{'s' if bare[1].endswith(('m', 'min')) else 'm'} (units h, m, s; "
                    "a bare number alone is seconds)"
                )
            raise ConfigError(
                f"{key} must be a duration such as 90s, 10m, 1h30m or 1.5h (or a number of seconds), "
                f"got {value!r}"
            )
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{key} must be a positive, finite duration, got {value!r}")
    return seconds


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {_plain(value)!r}")


def _check_data(d: DataConfig) -> None:
    for name in ("val_ratio", "test_ratio"):
        _require(0 <= getattr(d, name) < 1, f"data.{name}", "in [0, 1)", getattr(d, name))
    if d.val_ratio + d.test_ratio >= 1:
        raise ConfigError(
            f"data.val_ratio + data.test_ratio must be < 1 (the rest is the training split), "
            f"got {d.val_ratio} + {d.test_ratio}"
        )
    _require(0 <= d.split_seed < 2**32, "data.split_seed", "within 0..4294967295", d.split_seed)
    if d.splits is not None:
        unknown = sorted(set(d.splits) - {"train", "val", "test"})
        if unknown:
            raise ConfigError(
                f"data.splits has an unknown split {unknown[0]!r}; the splits are train, val and test"
            )
    _require(0 <= d.ignore_index <= 65535, "data.ignore_index", "a mask value in 0..65535", d.ignore_index)
    _require(d.border_w0 >= 0, "data.border_w0", ">= 0", d.border_w0)
    _require(d.border_sigma > 0, "data.border_sigma", "> 0 (pixels)", d.border_sigma)
    _require(d.format in FORMATS, "data.format", "one of " + ", ".join(FORMATS), d.format)
    _require(d.kind in KINDS, "data.kind", "one of " + ", ".join(KINDS), d.kind)
    _require(d.target in TARGETS, "data.target", " or ".join(TARGETS), d.target)
    _require(d.boundary_width >= 1, "data.boundary_width", ">= 1 (pixels)", d.boundary_width)
    _require(
        d.crop_size is None or 1 <= d.crop_size <= MAX_SIDE,
        "data.crop_size",
        f"within 1..{MAX_SIDE} pixels (or null for the whole image)",
        d.crop_size,
    )
    lo, hi = d.scale
    _require(0 < lo <= hi, "data.scale", "[lo, hi] with 0 < lo <= hi ([1, 1] = off)", d.scale)
    _require(d.rotation >= 0, "data.rotation", ">= 0 (degrees; 0 = off)", d.rotation)
    _require(d.elastic >= 0, "data.elastic", ">= 0 (pixels; 0 = off)", d.elastic)
    _require(
        2 <= d.elastic_grid <= 256,
        "data.elastic_grid",
        "within 2..256 (points per side of the displacement grid)",
        d.elastic_grid,
    )
    _require(d.color_jitter >= 0, "data.color_jitter", ">= 0 (0 = off)", d.color_jitter)
    _require(0 <= d.invert <= 1, "data.invert", "a probability in [0, 1]", d.invert)
    if d.stretch is not None:
        lo, hi = d.stretch
        _require(
            0 <= lo < hi <= 100,
            "data.stretch",
            "[lo, hi] percentiles with 0 <= lo < hi <= 100 (or null)",
            d.stretch,
        )
    parse_normalize_spec(d.normalize, d.stretch)
    for name in ("mean", "std"):
        values = getattr(d, name)
        _require(
            values is None or len(values) > 0, f"data.{name}", "one value per image channel (or null)", values
        )
    if d.std is not None:
        _require(all(s > 0 for s in d.std), "data.std", "> 0 for every channel", d.std)
    if d.mean is not None and d.std is not None and len(d.mean) != len(d.std):
        raise ConfigError(
            f"data.mean and data.std must have one value per image channel each, got {len(d.mean)} and {len(d.std)}"
        )
    d.resize = check_resize(d.resize, "data.resize")
    _require(1 <= d.repeat <= 10_000, "data.repeat", "within 1..10000 (passes per epoch)", d.repeat)
    _require(
        d.num_workers is None or 0 <= d.num_workers <= 256,
        "data.num_workers",
        "within 0..256 (0 loads in the main process; null chooses)",
        d.num_workers,
    )


def _check_plan(plan: Any) -> dict[str, Any] | None:
    """``plan`` as plain YAML data (numpy scalars to numbers, tuples to lists; float keys such as the ceiling's
    scales kept), so config.yaml dumps and reads back the same; ConfigError naming the part that is not."""

    def plain(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            for k in value:
                if not (isinstance(k, str | int | float) or k is None):
                    raise ConfigError(f"{where} has a key that is not a name or number: {k!r}")
            return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or type(value) in (str, int, float, bool):
            return value
        if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy (or torch) scalar
            return plain(value.item(), where)
        raise ConfigError(f"{where} must be plain YAML data (mappings, lists, numbers, text), got {value!r}")

    if plan is None:
        return None
    if not isinstance(plan, dict) or not all(isinstance(k, str) for k in plan):
        raise ConfigError(
            f"config key plan must be null or a mapping of names (what seglab plan writes), got {plan!r}"
        )
    return plain(plan, "plan")


def _check_model(m: ModelConfig) -> None:
    _require(bool(m.arch), "model.arch", "an architecture name (seglab.list_models())", m.arch)


def _check_train(t: TrainConfig) -> None:
    _require(t.epochs >= 1, "train.epochs", ">= 1", t.epochs)
    _require(t.batch_size >= 1, "train.batch_size", ">= 1", t.batch_size)
    _require(t.lr > 0, "train.lr", "> 0", t.lr)
    _require(t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay)
    _require(
        t.schedule in ("poly", "cosine", "constant"), "train.schedule", "poly, cosine or constant", t.schedule
    )
    _require(t.warmup_iters >= 0, "train.warmup_iters", ">= 0", t.warmup_iters)
    _require(0 <= t.ema < 1, "train.ema", "in [0, 1) (0 = off)", t.ema)
    _require(t.amp in ("auto", "off", "bf16", "fp16"), "train.amp", "auto, off, bf16 or fp16", t.amp)
    _require(t.optimizer in ("adamw", "adam", "sgd"), "train.optimizer", "adamw, adam or sgd", t.optimizer)
    _require(0 <= t.momentum < 1, "train.momentum", "in [0, 1)", t.momentum)
    _require(
        t.encoder_lr >= 0, "train.encoder_lr", ">= 0 (a multiplier of train.lr; 0 freezes)", t.encoder_lr
    )
    _require(
        t.clip_grad is None or t.clip_grad > 0,
        "train.clip_grad",
        "> 0 (or null for no clipping)",
        t.clip_grad,
    )
    _require(t.accumulate >= 1, "train.accumulate", ">= 1", t.accumulate)
    _require(t.log_interval >= 1, "train.log_interval", ">= 1", t.log_interval)
    if t.time_limit is not None:
        t.time_limit = parse_duration(t.time_limit, "train.time_limit")
    t.dist_timeout = parse_duration(t.dist_timeout, "train.dist_timeout")
    _require(
        t.threads is None or 1 <= t.threads <= 1024,
        "train.threads",
        "within 1..1024 (or null for torch's default)",
        t.threads,
    )
    _require(0 <= t.seed < 2**32, "train.seed", "within 0..4294967295", t.seed)
    check_loss_weights(t.loss, "train.loss")
    check_class_weights(t.class_weights, "train.class_weights", named=True)


def check_class_weights(
    value: Any,
    key: str = "class_weights",
    *,
    named: bool = False,
    classes: Any = None,
    source: str = "the data",
) -> list[float] | str | None:
    """Class weights of the cross-entropy, the one check for the config key and for ``make_loss``: None, one
    of CLASS_WEIGHTS (only if ``named``: resolved from the data later), or one finite weight >= 0 per class, not
    all 0 (a negative weight would maximise a class's loss, all 0 would learn nothing). With ``classes`` (the
    class names of ``source``) the list must have one weight per class. Returns the weights as a list of
    floats (a name or None as given); ConfigError naming ``key`` otherwise."""
    if value is None or (named and isinstance(value, str) and value in CLASS_WEIGHTS):
        return value
    shown = value.tolist() if hasattr(value, "tolist") else value  # numpy array or tensor
    ok = isinstance(shown, list | tuple) and bool(shown)
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < math.inf for v in shown
    )
    allowed = "a list of one finite weight >= 0 per class (not all 0)"
    if named:
        allowed = f"null, {', '.join(CLASS_WEIGHTS)} or {allowed}"
    _require(ok and any(v > 0 for v in shown), key, allowed, shown)
    weights = [float(v) for v in shown]
    if classes is not None and len(weights) != len(classes):
        raise ConfigError(
            f"{key} has {len(weights)} weights but {source} has {len(classes)} classes "
            f"({', '.join(map(str, classes))}); give one per class"
        )
    return weights


def check_loss_weights(spec: Any, key: str = "train.loss") -> None:
    """A loss spec's term weights: ConfigError unless each is a finite number >= 0 and one is > 0 (a negative
    weight would maximise its loss; NaN or infinity would poison every step)."""
    if not isinstance(spec, dict):
        return  # a single loss name (its options are checked by make_loss)
    if not spec:
        raise ConfigError(f"{key} must name at least one loss, e.g. {{ce: 1.0, dice: 1.0}}")
    weights = []
    for name, value in spec.items():
        options = value if isinstance(value, dict) else {"weight": value}
        for option in ("weight", "ce_weight", "dice_weight"):  # the term's, and dice_ce's inner weights
            weight = options.get(option, 1.0)
            number = isinstance(weight, int | float) and not isinstance(weight, bool)
            if not (number and 0 <= weight < math.inf):
                what = "the weight" if option == "weight" else f"{option}"
                raise ConfigError(
                    f"{key}: {what} of term {name!r} must be a finite number >= 0, got {_plain(weight)!r}"
                )
        weights.append(options.get("weight", 1.0))
    if not any(weights):
        raise ConfigError(
            f"{key}: every term has weight 0, so nothing would be learned; give one a weight > 0"
        )


def check_resize(value: Any, key: str = "data.resize") -> dict[str, int | float] | None:
    """``value`` as a resize spec: None, ``{"short": N}``, ``{"long": N}`` (int N >= 1) or ``{"scale": F}``
    (float F > 0), as a plain dict; ConfigError naming ``key`` otherwise."""
    if value is None:
        return None
    ok = isinstance(value, dict) and len(value) == 1 and next(iter(value)) in RESIZE_KEYS
    if ok:
        ((name, v),) = value.items()
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if name == "scale" and number and 0 < v <= 16:
            return {"scale": float(v)}
        if name != "scale" and number and 1 <= v <= MAX_SIDE and float(v).is_integer():
            return {name: int(v)}
    raise ConfigError(
        f"{key} must be null or a mapping with exactly one of short: N or long: N (pixels, an integer within "
        f"1..{MAX_SIDE}) or scale: F (a factor within (0, 16]), e.g. {{short: 512}}, got {_plain(value)!r}"
    )


# YAML scalars as in the YAML 1.2 core schema: only true/false are booleans, so `amp: off` is the string "off"
# (YAML 1.1, PyYAML's default, reads off/on/yes/no as booleans); no octal, sexagesimal or date surprises, and
# digits with a leading zero stay strings ("07"), as in YAML 1.2's JSON schema, so file stems keep their zeros.
_SCALARS = [
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", r"[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"[-+]?(?:(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|\.(?:inf|Inf|INF))"
        r"|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
    ("tag:yaml.org,2002:null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", r"<<", "<"),
]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars (see _SCALARS); reads config files and overrides."""

    yaml_implicit_resolvers: dict = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """A key given twice is an error (PyYAML keeps the last one without a word)."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys (<<: *base) may be given again: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string that YAML 1.1, YAML 1.2 or _Loader would read as something else
    ('off', '1e-4', '08'), so a dumped config reads back the same everywhere."""


for _tag, _pattern, _first in _SCALARS:
    _Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))
    _Dumper.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))
# YAML 1.2 core-schema numbers, leading zeros included ('08' would be 8 in a YAML 1.2 reader)
_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _plain(obj: Any) -> Any:
    """Tuples to lists, recursively, so the YAML dump is plain."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against type hint ``hint`` (recursively for lists, tuples and dicts), normalised."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key)
    if origin in (tuple, list, dict):
        return _coerce_container(value, origin, args, key)
    return _coerce_scalar(value, hint, key)


def _coerce_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """``value`` as the first arm of a union (``X | None``, ``str | dict``) that accepts it."""
    if value is None and type(None) in args:
        return None
    arms = [a for a in args if a is not type(None)]
    errors = []
    for arm in arms:
        try:
            return _coerce(value, arm, key)
        except ConfigError as e:
            errors.append((arm, e))
    # the arm of the value's own kind (a mapping for str | dict) says best what is wrong inside it
    for arm, error in errors:
        kind = typing.get_origin(arm) or arm
        if len(arms) == 1 or (isinstance(kind, type) and kind is not str and isinstance(value, kind)):
            raise error
    raise ConfigError(f"config key {key} must be {' or '.join(map(_type_name, args))}, got {value!r}")


def _coerce_container(value: Any, origin: type, args: tuple[Any, ...], key: str) -> Any:
    """A tuple, list or dict ``value``, each item coerced to its hint."""
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"config key {key} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, list | tuple):
            what = 'a list of file stems (e.g. ["00", "01"])' if args[0] is Stem else "a list"
            raise ConfigError(f"config key {key} needs {what}, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key} needs a mapping, got {value!r}")
    key_hint, value_hint = args or (Any, Any)
    for k in value:
        if key_hint is str and not isinstance(k, str):
            raise ConfigError(f"config key {key} needs names (strings) as keys, got {k!r}")
    return {k: _coerce(v, value_hint, f"{key}.{k}") for k, v in value.items()}


def _coerce_scalar(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against a plain type (bool, int, float, str, ...) or seglab's ResizeSpec and Stem."""
    if hint is ResizeSpec:
        return check_resize(value, key)
    if hint is Stem:
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return str(value)
        raise ConfigError(f'config key {key} must be a file stem (a string, e.g. "07"), got {value!r}')
    if hint is bool:
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key} must be true or false, got {value!r}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # .inf/.nan in YAML: never a meaningful setting, often a crash later
            raise ConfigError(f"config key {key} must be a finite number, got {value!r}")
        return float(value)
    if (
        hint is int
        and isinstance(value, int)
        and not isinstance(value, bool)
        and not -(2**63) <= value < 2**63
    ):
        raise ConfigError(f"config key {key} is out of range (a 64-bit integer), got {value!r}")
    if hint is Any or (
        isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        return value
    quote = (
        " (YAML 1.1 reads off/no/on/yes as booleans: quote the value)"
        if hint is str and isinstance(value, bool)
        else ""
    )
    raise ConfigError(f"config key {key} must be {_type_name(hint)}, got {value!r}{quote}")


NORMALIZE_MODES = ("auto", "imagenet", "dataset", "image", "range")  # data.normalize (seglab.data.normalize)
# percentiles every statistics pass keeps (data check prints them; the modes' defaults are among them)
STAT_PERCENTILES = (0.1, 0.5, 1.0, 5.0, 50.0, 95.0, 99.0, 99.5, 99.8, 99.9)


def percentile_key(q: float) -> str:
    """How a percentile is named in statistics records: 99.5 -> "99.5", 1.0 -> "1"."""
    return f"{float(q):g}"


def parse_normalize_spec(
    spec: Any, stretch: list[float] | tuple[float, float] | None = None
) -> dict[str, Any]:
    """``data.normalize`` (a mode name or a mapping with ``mode``, ``percentiles``, ``range``, ``clip``) as a
    checked mapping; ``data.stretch`` [lo, hi] is ``{mode: image, percentiles: [lo, hi]}``. ConfigError, naming
    the key, for anything else."""
    if spec is None:
        spec = "auto"
    d = {"mode": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else None
    if d is None or d.get("mode", "auto") not in NORMALIZE_MODES:
        raise ConfigError(
            f"data.normalize must be one of {', '.join(NORMALIZE_MODES)} or a mapping {{mode: ..., percentiles: [lo, hi], "
            f"range: [lo, hi], clip: bool}}, not {spec!r}"
        )
    d.setdefault("mode", "auto")
    unknown = set(d) - {"mode", "percentiles", "range", "clip"}
    if unknown:
        raise ConfigError(f"data.normalize has unknown key(s) {', '.join(sorted(unknown))}")
    if stretch:
        if d["mode"] not in ("auto", "image"):
            raise ConfigError(
                f"data.stretch is data.normalize {{mode: image, percentiles: {list(stretch)}}}; it cannot be "
                f"combined with data.normalize mode {d['mode']}"
            )
        d.update(mode="image", percentiles=list(stretch))
    p = d.get("percentiles")
    if p is not None and not (
        isinstance(p, list | tuple)
        and len(p) == 2
        and all(isinstance(v, int | float) for v in p)
        and 0 <= p[0] < p[1] <= 100
    ):
        raise ConfigError(f"data.normalize.percentiles must be [lo, hi] with 0 <= lo < hi <= 100, not {p!r}")
    if (
        d["mode"] == "dataset"
        and p is not None
        and any(percentile_key(q) not in map(percentile_key, STAT_PERCENTILES) for q in p)
    ):
        raise ConfigError(
            f"data.normalize.percentiles for mode dataset are two of {', '.join(map(str, STAT_PERCENTILES))}, not {p}"
        )
    r = d.get("range")
    if d["mode"] == "range":
        flat_ok = isinstance(r, list | tuple) and len(r) == 2 and all(isinstance(v, int | float) for v in r)
        if not flat_ok or not r[0] < r[1]:
            raise ConfigError(f"data.normalize mode range needs range: [lo, hi] with lo < hi, not {r!r}")
    elif r is not None:
        raise ConfigError("data.normalize.range is for mode range")
    if not isinstance(d.get("clip", False), bool):
        raise ConfigError(f"data.normalize.clip must be true or false, not {d['clip']!r}")
    return d
