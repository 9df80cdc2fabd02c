"""Encoders: the native ones (no timm needed) and one adapter over any timm ``features_only`` model.

``create_encoder(name, ...)`` is the one entry point: a name of ``NATIVE_ENCODERS`` builds that encoder,
any other name is a timm model (timm is imported only then).
"""

from __future__ import annotations

import inspect
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
}


def is_native(name: str | None) -> bool:
    return name is None or name in NATIVE_ENCODERS


def create_encoder(
    name: str,
    in_channels: int = 3,
    *,
    depth: int | None = None,
    output_stride: int | None = None,
    weights: str | None = None,
    base_channels: int | None = None,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    **options: Any,
) -> Encoder:
    """The encoder called ``name``: native (``NATIVE_ENCODERS``) or a timm model name.

    ``depth``: levels (native) or timm feature levels used (None: the encoder's default / all).
    ``output_stride``: None keeps the encoder's own; otherwise the deepest reduction it must have.
    ``weights``: None, ``"imagenet"`` (timm only) or a local weights file.
    ``base_channels``, ``norm``, ``act`` and ``options`` (e.g. U-Net's ``padding``, VGG's ``dropout``) apply to
    native encoders only; timm encoders have their own layers.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"encoder must be a native encoder or timm model name, got {name!r}")
    if name in NATIVE_ENCODERS:
        cls = NATIVE_ENCODERS[name]
        kwargs = {k: v for k, v in (("depth", depth), ("base_channels", base_channels)) if v is not None}
        kwargs.update(norm=norm, act=act, output_stride=output_stride, **options)
        try:
            inspect.signature(cls).bind(in_channels, **kwargs)
        except TypeError as e:
            raise ConfigError(f"native encoder {name!r}: {e}") from None
        encoder = cls(in_channels, **kwargs)
        load_native_weights(encoder, name, weights)
        return encoder
    given = ["base_channels"] * (base_channels is not None) + sorted(options)
    if given:
        raise ConfigError(
            f"{', '.join(given)} configure the native encoders ({', '.join(NATIVE_ENCODERS)}) only; "
            f"timm encoder {name!r} has its own layers: drop the argument or pick a native encoder"
        )
    from seglab.models.encoders.timm import TimmEncoder

    return TimmEncoder(name, in_channels, depth=depth, output_stride=output_stride, weights=weights)


__all__ = [
    "NATIVE_ENCODERS",
    "DoubleConv",
    "Encoder",
    "FeatureInfo",
    "MobileNetEncoder",
    "PlainConvEncoder",
    "PooledFeatures",
    "UNetEncoder",
    "VGGEncoder",
    "create_encoder",
    "feature_index",
    "is_native",
]
