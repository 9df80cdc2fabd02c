"""Decoders, each built from the encoder's FeatureInfo (never from its name)."""

from __future__ import annotations

import torch
from torch import nn

from seglab.models.decoders.deeplab import DeepLabV3Decoder, DeepLabV3PlusDecoder
from seglab.models.decoders.fcn import FCNDecoder
from seglab.models.decoders.linknet import LinkNetDecoder
from seglab.models.decoders.lraspp import LRASPPDecoder
from seglab.models.decoders.pyramid import FPNDecoder, PSPDecoder, UPerNetDecoder
from seglab.models.decoders.segformer import SegFormerDecoder
from seglab.models.decoders.segnet import SegNetDecoder
from seglab.models.decoders.unet import UNetDecoder
from seglab.models.decoders.unetpp import UNetPlusPlusDecoder
from seglab.models.encoders.base import FeatureInfo


class LastFeature(nn.Module):
    """The identity decoder: the deepest feature as it is (plain_fcn, whose encoder does all the work).

    Shape: (N, ``out_channels``, H/r, W/r) with the deepest feature's channels and reduction r.
    """

    def __init__(self, *, feature_info: list[FeatureInfo]) -> None:
        super().__init__()
        self.out_channels = feature_info[-1].channels
        self.reduction = feature_info[-1].reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[-1]


__all__ = [
    "DeepLabV3Decoder",
    "DeepLabV3PlusDecoder",
    "FCNDecoder",
    "FPNDecoder",
    "LRASPPDecoder",
    "LastFeature",
    "LinkNetDecoder",
    "PSPDecoder",
    "SegFormerDecoder",
    "SegNetDecoder",
    "UNetDecoder",
    "UNetPlusPlusDecoder",
    "UPerNetDecoder",
]
