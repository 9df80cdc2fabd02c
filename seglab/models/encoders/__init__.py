"""Encoders: the native ones (no timm needed) and one adapter over any timm ``features_only`` model.

``build_encoder(EncoderSpec(name=..., ...))`` is the one entry point: a name of ``NATIVE_ENCODERS`` builds that
encoder, any other name is a timm model (timm is imported only then).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from seglab.errors import ConfigError
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import (
    Encoder,
    FeatureInfo,
    PooledFeatures,
    feature_index,
    load_native_weights,
)
from seglab.models.encoders.mit import MiTB1Encoder, MiTB2Encoder, MiTEncoder
from seglab.models.encoders.mobilenet import MobileNetEncoder
from seglab.models.encoders.plain import PlainConvEncoder
from seglab.models.encoders.unet import DoubleConv, UNetEncoder
from seglab.models.encoders.vgg import VGGEncoder

# Native encoders by name; each is built as cls(in_channels, depth=..., base_channels=..., norm=..., act=...,
# output_stride=..., **options). Every other name goes to timm.
NATIVE_ENCODERS: dict[str, type[Encoder]] = {
    "unet": UNetEncoder,
    "vgg": VGGEncoder,
    "mobilenet": MobileNetEncoder,
    "mit_b0": MiTEncoder,
    "mit_b1": MiTB1Encoder,
    "mit_b2": MiTB2Encoder,
}


def is_native(name: str | None) -> bool:
    return name is None or name in NATIVE_ENCODERS


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """What to build as an encoder: the encoder arguments of an architecture, typed and in one place.

    ``name``: a native encoder (``NATIVE_ENCODERS``) or a timm model name.
    ``depth``: levels (native) or timm feature levels used (None: the encoder's default / all).
    ``output_stride``: None keeps the encoder's own; otherwise the deepest reduction it must have.
    ``weights``: None, ``"imagenet"`` (timm only) or a local weights file.
    ``dilation``: how a timm encoder dilated to ``output_stride`` spreads the dilation (:data:`DILATIONS`):
    ``"timm"`` (timm's own) or ``"uniform"`` (smp's dilated torchvision ResNets); native encoders take "timm" only.
    ``base_channels``, ``norm``, ``act`` and ``options`` (e.g. U-Net's ``padding``, VGG's ``dropout``) configure
    native encoders only; timm encoders have their own layers (``base_channels`` or ``options`` given with a
    timm name are an error; ``norm`` and ``act`` are ignored there).
    """

    name: str
    in_channels: int = 3
    depth: int | None = None
    output_stride: int | None = None
    weights: str | None = None
    base_channels: int | None = None
    norm: NormArg = "bn"
    act: ActArg = "relu"
    options: Mapping[str, Any] = field(default_factory=dict)
    dilation: str = "timm"

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], **fields: Any) -> EncoderSpec:
        """The spec whose fields are read by name from ``arguments`` (an architecture's arguments, e.g. its
        ``locals()``: other names there are ignored), then overridden by ``fields``."""
        own = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in arguments.items() if k in own}, **fields})


def build_encoder(spec: EncoderSpec) -> Encoder:
    """The encoder ``spec`` describes: native (``NATIVE_ENCODERS``) or a timm model (timm is imported only then)."""
    name = spec.name
    if not isinstance(name, str) or not name:
        raise ConfigError(f"encoder must be a native encoder or timm model name, got {name!r}")
    if name in NATIVE_ENCODERS:
        cls = NATIVE_ENCODERS[name]
        given = (("depth", spec.depth), ("base_channels", spec.base_channels))
        kwargs = {k: v for k, v in given if v is not None}
        if spec.dilation != "timm":
            raise ConfigError(
                f"dilation={spec.dilation!r} configures timm encoders only; native encoder {name!r} has its own"
            )
        kwargs.update(norm=spec.norm, act=spec.act, output_stride=spec.output_stride, **spec.options)
        try:
            inspect.signature(cls).bind(spec.in_channels, **kwargs)
        except TypeError as e:
            raise ConfigError(f"native encoder {name!r}: {e}") from None
        encoder = cls(spec.in_channels, **kwargs)
        load_native_weights(encoder, name, spec.weights)
        return encoder
    given_native = ["base_channels"] * (spec.base_channels is not None) + sorted(spec.options)
    if given_native:
        raise ConfigError(
            f"{', '.join(given_native)} configure the native encoders ({', '.join(NATIVE_ENCODERS)}) only; "
            f"timm encoder {name!r} has its own layers: drop the argument or pick a native encoder"
        )
    from seglab.models.encoders.timm import TimmEncoder

    return TimmEncoder(
        name,
        spec.in_channels,
        depth=spec.depth,
        output_stride=spec.output_stride,
        weights=spec.weights,
        dilation=spec.dilation,
    )


__all__ = [
    "NATIVE_ENCODERS",
    "DoubleConv",
    "Encoder",
    "EncoderSpec",
    "FeatureInfo",
    "MiTEncoder",
    "MobileNetEncoder",
    "PlainConvEncoder",
    "PooledFeatures",
    "UNetEncoder",
    "VGGEncoder",
    "build_encoder",
    "feature_index",
    "is_native",
]
