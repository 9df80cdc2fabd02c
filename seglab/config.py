"""Dataclass configs with YAML load/dump and ``key=value`` overrides; the resolved config is saved with every run.

No torch import here: the CLI builds and prints configs instantly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seglab.errors import ConfigError


@dataclass
class DataConfig:
    """Where the data is and how it is split and augmented."""

    root: str | None = None  # a folder data set (images/, masks/); see seglab.data.folder
    val_ratio: float = 0.1  # used when the folder has no splits/ lists
    test_ratio: float = 0.1
    split_seed: int = 0
    splits: dict[str, list[str]] | None = (
        None  # explicit stems per split (quote them in YAML: "07"); beats splits/
    )
    ignore_index: int = 255
    class_names: list[str] | None = None  # names for the classes when the data declares none (binary masks)
    border_weights: bool = False  # U-Net border weight map (w0, sigma in px) as per-pixel CE weights
    border_w0: float = 10.0
    border_sigma: float = 5.0
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
    mean: list[float] | None = None  # None: ImageNet statistics (their average for grayscale)
    std: list[float] | None = None
    repeat: int = 1  # passes over the training split per epoch (fresh random augmentation each time)
    cache: bool = True  # keep decoded images in memory after the first epoch
    num_workers: int = 0


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
    weight_decay: float = 1e-4
    schedule: str = "poly"  # poly | cosine | constant
    warmup_iters: int = 0
    # a loss name or a weighted sum {name: weight}; names in seglab.losses.list_losses() (ce, dice, focal, ...)
    loss: str | dict[str, Any] = field(default_factory=lambda: {"ce": 1.0, "dice": 1.0})
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    # exponential moving average of the weights (e.g. 0.995; 0 = off): validation and the best/last checkpoints use
    # the averaged weights, which average out the noise of the last steps (timm's ModelEmaV3, with its warm-up)
    ema: float = 0.0
    amp: str = "off"  # off | bf16 (CPU with AVX-512 BF16/AMX, or CUDA) | fp16 (CUDA, with a gradient scaler)
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    out_dir: str = "runs/train"
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        return _build(cls, data or {}, "")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping (data:, model:, train:)")
        return cls.from_dict(data)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` strings (values parsed as YAML); returns a new Config."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=0.01)")
            *parents, leaf = key.strip().split(".")
            node = data
            for p in parents:
                if not isinstance(node.get(p), dict):
                    if p == "params" and node is data.get("model"):
                        node[p] = {}
                    else:
                        raise ConfigError(f"unknown config key {key!r}")
                node = node[p]
            try:
                node[leaf] = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"cannot parse the value of override {item!r}") from None
        return Config.from_dict(data)


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


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key} has the wrong type: {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"config key {key} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key} needs a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key} needs a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (
        isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(f"config key {key} must be {getattr(hint, '__name__', hint)}, got {value!r}")
