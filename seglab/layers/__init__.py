"""The course's building blocks as reusable modules."""

from seglab.layers.aspp import ASPP, ASPP_RATES, ImagePooling
from seglab.layers.atrous import (
    AtrousConv2d,
    atrous_padding,
    dilate_kernel,
    effective_receptive_field,
    receptive_field,
    stack_receptive_field,
)
from seglab.layers.checkerboard import checkerboard_score
from seglab.layers.conv import ConvNormAct
from seglab.layers.resolve import make_act, make_norm
from seglab.layers.sampling import (
    DOWNSAMPLERS,
    UPSAMPLERS,
    AvgPoolDown,
    BedOfNailsUp,
    BilinearUp,
    MaxPoolDown,
    MaxUnpoolUp,
    NearestUp,
    ResizeConvUp,
    StridedConvDown,
    TransposedConvUp,
    Upsampler,
    conv_output_size,
    make_downsample,
    make_upsample,
    transposed_output_size,
)
from seglab.layers.separable import (
    CONV_KINDS,
    ConvCost,
    DepthwiseSeparableConv2d,
    SpatiallySeparableConv2d,
    conv_cost,
    measure_conv_cost,
)

__all__ = [
    "ASPP",
    "ASPP_RATES",
    "CONV_KINDS",
    "DOWNSAMPLERS",
    "UPSAMPLERS",
    "AtrousConv2d",
    "AvgPoolDown",
    "BedOfNailsUp",
    "BilinearUp",
    "ConvCost",
    "ConvNormAct",
    "DepthwiseSeparableConv2d",
    "ImagePooling",
    "MaxPoolDown",
    "MaxUnpoolUp",
    "NearestUp",
    "ResizeConvUp",
    "SpatiallySeparableConv2d",
    "StridedConvDown",
    "TransposedConvUp",
    "Upsampler",
    "atrous_padding",
    "checkerboard_score",
    "conv_cost",
    "conv_output_size",
    "dilate_kernel",
    "effective_receptive_field",
    "make_act",
    "make_downsample",
    "make_norm",
    "make_upsample",
    "measure_conv_cost",
    "receptive_field",
    "stack_receptive_field",
    "transposed_output_size",
]
