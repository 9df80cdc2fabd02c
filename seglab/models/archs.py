"""The registered architectures: each assembles an encoder, a decoder and a head into a Segmentor."""

from __future__ import annotations

from seglab.layers.resolve import ActArg, NormArg
from seglab.models.decoders.unet import UNetDecoder
from seglab.models.encoders.unet import UNetEncoder
from seglab.models.factory import MODELS
from seglab.models.segmentor import SegmentationHead, Segmentor


@MODELS.register("unet")
def unet(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 5,
    base_channels: int = 64,
    upsample: str = "transposed",
    norm: NormArg = "bn",
    act: ActArg = "relu",
    dropout: float = 0.0,
) -> Segmentor:
    """U-Net from scratch: widths base*2**i for ``depth`` levels (the paper: base 64, depth 5)."""
    encoder = UNetEncoder(in_channels, depth, base_channels, norm, act)
    decoder = UNetDecoder(encoder.feature_info, upsample=upsample, norm=norm, act=act)
    return Segmentor(encoder, decoder, SegmentationHead(decoder.out_channels, num_classes, dropout))
