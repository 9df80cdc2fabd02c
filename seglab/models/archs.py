"""The registered architectures: each assembles an encoder, a decoder and a head into a Segmentor.

Every builder takes the same vocabulary: ``num_classes``, ``in_channels``, ``encoder`` (a native encoder name,
any timm model name, or None for the architecture's native encoder, ``NATIVE_DEFAULT``), ``weights`` (None,
"imagenet" or a local file), ``output_stride``, ``depth`` and ``base_channels`` (native encoders),
``norm``/``act`` (seglab's own layers), ``dropout`` and ``pad_mode``.
All arguments are plain values (str, int, float, bool, lists), so checkpoints can record them in YAML.
A builder turns its encoder arguments into one :class:`EncoderSpec` (:func:`encoder_spec`), builds the encoder
with :func:`build_encoder`, and gives decoders and heads keyword arguments only.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from seglab.errors import ConfigError
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.decoders import (
    DeepLabV3Decoder,
    DeepLabV3PlusDecoder,
    FCNDecoder,
    LastFeature,
    LRASPPDecoder,
    SegNetDecoder,
    UNetDecoder,
)
from seglab.models.decoders.linknet import LinkNetDecoder
from seglab.models.decoders.pyramid import PSP_BINS, FPNDecoder, PSPDecoder, UPerNetDecoder
from seglab.models.decoders.segformer import SegFormerDecoder
from seglab.models.decoders.unet import unet_valid_geometry
from seglab.models.decoders.unetpp import UNetPlusPlusDecoder, default_decoder_channels
from seglab.models.encoders import NATIVE_ENCODERS, EncoderSpec, PlainConvEncoder, build_encoder
from seglab.models.encoders.plain import PLAIN_WIDTHS
from seglab.models.heads import FCNHead, LRASPPHead, SegmentationHead
from seglab.models.segmentor import Segmentor
from seglab.registry import Registry

MODELS: Registry = Registry("model")

# The from-scratch encoder each architecture uses for ``encoder=None`` (no timm, no download).
NATIVE_DEFAULT: dict[str, str] = {
    "fcn": "vgg",
    "segnet": "vgg",
    "unet": "unet",
    "unetplusplus": "unet",
    "linknet": "mobilenet",
    "deeplabv3": "mobilenet",
    "deeplabv3plus": "mobilenet",
    "lraspp": "mobilenet",
    "fpn": "mobilenet",
    "pspnet": "mobilenet",
    "upernet": "mobilenet",
    "segformer": "mit_b0",
}


def _native_options(encoder: str, **options: object) -> dict[str, object]:
    """The ``options`` that the native encoder ``encoder`` accepts (none for timm encoders)."""
    cls = NATIVE_ENCODERS.get(encoder)
    accepted = inspect.signature(cls).parameters if cls is not None else {}
    return {k: v for k, v in options.items() if k in accepted}


def encoder_spec(arch: str, arguments: Mapping[str, Any], **options: object) -> EncoderSpec:
    """The encoder of architecture ``arch``, from its builder's ``arguments`` (its ``locals()``: ``encoder``
    names the encoder, None for ``NATIVE_DEFAULT[arch]``; the other EncoderSpec fields are read by name), plus
    those ``options`` that the named native encoder accepts (for a timm encoder they are the decoder's alone)."""
    name = arguments["encoder"] or NATIVE_DEFAULT[arch]
    return EncoderSpec.from_arguments(arguments, name=name, options=_native_options(name, **options))


@MODELS.register("plain_fcn")
def plain_fcn(
    num_classes: int,
    in_channels: int = 3,
    widths: list[int] | None = None,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    dropout: float = 0.0,
    pad_mode: str = "reflect",
) -> Segmentor:
    """The course's naive network: 3x3 stride-1 convs at full resolution (widths 16, 32, 64, 128, 64, 32),
    then a 3x3 conv to ``num_classes``. No downsampling, so it needs no padding and sees only a
    2 * (len(widths) + 1) + 1 pixel window; its cost grows with H x W at full width."""
    encoder = PlainConvEncoder(in_channels, widths or PLAIN_WIDTHS, norm, act)
    decoder = LastFeature(feature_info=encoder.feature_info)
    head = SegmentationHead(decoder.out_channels, num_classes, dropout, kernel_size=3)
    return Segmentor(encoder, decoder, head, pad_mode)


@MODELS.register("fcn")
def fcn(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "resnet50",
    weights: str | None = None,
    output_stride: int | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    variant: str = "8s",
    upsample: str = "transposed",
    head_channels: int | None = None,
    dropout: float = 0.1,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """FCN-32s/16s/8s (``variant``) on any encoder: scores from the deepest features (torchvision's FCNHead),
    plus scores of the stride-16 and stride-8 features, fused by learned 2x upsampling (transposed convs
    initialised to bilinear), then learned upsampling to the input (``upsample="transposed"``) or bilinear
    interpolation everywhere (``"bilinear"``: with variant 32s and output_stride 8 this is torchvision's
    ``fcn_resnet50``)."""
    enc = build_encoder(encoder_spec("fcn", locals()))
    decoder = FCNDecoder(feature_info=enc.feature_info, channels=head_channels, norm=norm, act=act)
    head = FCNHead(
        feature_info=enc.feature_info,
        in_channels=decoder.out_channels,
        num_classes=num_classes,
        variant=variant,
        upsample=upsample,
        dropout=dropout,
    )
    return Segmentor(enc, decoder, head, pad_mode)


@MODELS.register("segnet")
def segnet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "vgg",
    weights: str | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    upsample: str = "max_unpool",
    dropout: float = 0.0,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """SegNet: a VGG16 encoder (native "vgg": base 64, depth 5) whose max-pooling indices drive max
    unpooling in a mirrored decoder, then a 1x1 conv head. ``dropout`` > 0 is Bayesian SegNet's: Dropout2d
    after the deepest three encoder and decoder stages. Other encoders work with a non-learned ``upsample``
    that needs no indices ("bed_of_nails", "nearest", "bilinear")."""
    spec = encoder_spec("segnet", locals(), dropout=dropout)
    enc = build_encoder(spec)
    if upsample == "max_unpool" and not enc.pool_indices:
        raise ConfigError(
            f"segnet's max unpooling needs pooling indices, which encoder {spec.name!r} does not return; "
            "use encoder 'vgg' or upsample 'bed_of_nails', 'nearest' or 'bilinear'"
        )
    decoder = SegNetDecoder(
        feature_info=enc.feature_info,
        convs=getattr(enc, "convs_per_stage", None),
        upsample=upsample,
        norm=norm,
        act=act,
        dropout=dropout,
    )
    return Segmentor(enc, decoder, SegmentationHead(decoder.out_channels, num_classes), pad_mode)


@MODELS.register("unet")
def unet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "unet",
    weights: str | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    output_stride: int | None = None,
    upsample: str = "transposed",
    decoder_channels: list[int] | None = None,
    final_block: bool = False,
    head_kernel: int = 1,
    padding: str = "same",
    norm: NormArg = "bn",
    act: ActArg = "relu",
    dropout: float = 0.0,
    pad_mode: str = "reflect",
) -> Segmentor:
    """U-Net. The default native encoder is the paper's (widths base*2**i for ``depth`` levels: base 64,
    depth 5 gives 64 ... 1024); any timm encoder works with the same decoder (widths: ``decoder_channels``, else
    the native encoder's mirrored, and for a timm encoder smp's 256, 128, 64, 32, 16 from the deepest block). ``upsample``: "transposed" (the paper's 2x2 up-conv), "bilinear"/"nearest" (+1x1
    conv), "bed_of_nails", ... ``norm="none"`` turns batch norm off (the paper). ``padding="valid"``: the
    paper's unpadded convs and cropped skips (native encoder only); the input is then mirror-padded by the
    context it needs (overlap-tile) so the logits still cover it. ``dropout``: Dropout2d on the input of each
    decoder block, the first being the end of the contracting path (the paper's dropout). smp's Unet is
    ``upsample="nearest_interp"``, ``final_block=True`` (a last block without skip, at the input's resolution)
    and ``head_kernel=3``."""
    spec = encoder_spec("unet", locals(), padding=padding)
    if padding != "same" and "padding" not in spec.options:
        raise ConfigError(f"padding={padding!r} needs the native U-Net encoder (encoder: unet)")
    enc = build_encoder(spec)
    geometry = unet_valid_geometry(len(enc.feature_info)) if padding != "same" else None
    if decoder_channels is None and spec.name not in NATIVE_ENCODERS:
        # a classification backbone: smp's decoder widths (256, 128, 64, 32, 16 from the deepest block), not the
        # backbone's, which spend a third of the work on a 64-channel block at half resolution
        decoder_channels = [max(16, 256 >> i) for i in range(len(enc.feature_info) - 1 + final_block)]
    decoder = UNetDecoder(
        feature_info=enc.feature_info,
        decoder_channels=decoder_channels,
        upsample=upsample,
        norm=norm,
        act=act,
        padding=padding,
        dropout=dropout,
        final_block=final_block,
    )
    head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=head_kernel)
    return Segmentor(enc, decoder, head, pad_mode, geometry)


@MODELS.register("unetplusplus")
def unetplusplus(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "unet",
    weights: str | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    output_stride: int | None = None,
    decoder_channels: list[int] | None = None,
    final_block: bool | None = None,
    upsample: str = "nearest",
    head_kernel: int = 1,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    dropout: float = 0.0,
    pad_mode: str = "reflect",
) -> Segmentor:
    """U-Net++ (Zhou et al., 2018): U-Net's encoder, and nested dense skip pathways between encoder and decoder
    (node X^{i,j} merges the upsampled X^{i+1,j-1} with all earlier nodes of its level), as smp's UnetPlusPlus.
    The default native encoder is U-Net's (the paper's widths, mirrored in the decoder); a timm encoder gets
    smp's ``decoder_channels`` 256, 128, 64, 32, 16 from the deepest node. ``final_block`` (default: when the
    shallowest features are below the input's resolution, as timm's) adds smp's last node, without skip, at
    twice their resolution. ``upsample``: "nearest" (smp), "bilinear", ... ``dropout``: Dropout2d before the
    head (MC dropout). Deep supervision is not built. smp's UnetPlusPlus is ``head_kernel=3`` (a 3x3 head;
    seglab's is 1x1)."""
    spec = encoder_spec("unetplusplus", locals())
    enc = build_encoder(spec)
    if final_block is None:
        final_block = enc.feature_info[0].reduction > 1
    if decoder_channels is None and spec.name not in NATIVE_ENCODERS:
        decoder_channels = default_decoder_channels(len(enc.feature_info) - 1 + final_block)
    decoder = UNetPlusPlusDecoder(
        feature_info=enc.feature_info,
        decoder_channels=decoder_channels,
        final_block=final_block,
        upsample=upsample,
        norm=norm,
        act=act,
    )
    head = SegmentationHead(decoder.out_channels, num_classes, dropout, kernel_size=head_kernel)
    return Segmentor(enc, decoder, head, pad_mode)


@MODELS.register("linknet")
def linknet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "resnet18",
    weights: str | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    output_stride: int | None = None,
    final_block: bool | None = None,
    final_channels: int = 32,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    dropout: float = 0.0,
    pad_mode: str = "reflect",
) -> Segmentor:
    """LinkNet (Chaurasia & Culurciello, 2017), the light step down from U-Net: a ResNet-18 encoder (timm
    ``resnet18``; natively the depthwise-separable "mobilenet", whose features have ResNet's strides 2 ... 32)
    and decoder blocks 1x1 conv (in/4), 4x4 stride-2 transposed conv, 1x1 conv, whose outputs are ADDED to the
    encoder's skip features, as smp's Linknet. ``final_block`` (default: when the shallowest features are below
    the input's resolution) adds smp's last block, without skip, ``final_channels`` wide at twice their
    resolution. ``dropout``: Dropout2d before the head (MC dropout)."""
    enc = build_encoder(encoder_spec("linknet", locals()))
    if final_block is None:
        final_block = enc.feature_info[0].reduction > 1
    decoder = LinkNetDecoder(
        feature_info=enc.feature_info,
        final_block=final_block,
        final_channels=final_channels,
        norm=norm,
        act=act,
    )
    return Segmentor(enc, decoder, SegmentationHead(decoder.out_channels, num_classes, dropout), pad_mode)


@MODELS.register("deeplabv3")
def deeplabv3(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "resnet50",
    weights: str | None = None,
    output_stride: int | None = 16,
    depth: int | None = None,
    base_channels: int | None = None,
    channels: int = 256,
    rates: list[int] | None = None,
    separable: bool = False,
    pool_norm: str = "none",
    dropout: float = 0.5,
    aspp_separable: bool | None = None,
    depthwise_norm: bool = True,
    dilation: str = "timm",
    align_corners: bool = False,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """DeepLabv3: an atrous encoder (``output_stride`` 16 or 8, timm's dilation), ASPP (rates 6/12/18 at 16,
    12/24/36 at 8, or ``rates``), a 3x3 ConvNormAct and a 1x1 head. On resnet50 at stride 8 it is
    torchvision's ``deeplabv3_resnet50`` except the ASPP image-pooling branch: a conv with bias instead of
    conv + batch norm (trains at batch size 1); ``pool_norm="bn"`` makes it torchvision's exactly.
    ``aspp_separable`` (None: ``separable``): separable ASPP branches alone; ``depthwise_norm=False``: separable
    convs without norm, activation or bias after the depthwise conv; ``dilation``: "timm" or "uniform" (every
    conv of a dilated stage at the stage's dilation); ``align_corners``: of the logits' upsampling.
    smp's DeepLabV3 is ``output_stride=8``, ``rates=[12, 24, 36]``, ``pool_norm="bn"``, ``aspp_separable``
    its ``decoder_aspp_separable`` (False) with ``depthwise_norm=False``, ``align_corners=True``, and for its
    (torchvision) ResNets ``dilation="uniform"``."""
    enc = build_encoder(encoder_spec("deeplabv3", locals()))
    decoder = DeepLabV3Decoder(
        feature_info=enc.feature_info,
        channels=channels,
        rates=rates,
        separable=separable,
        norm=norm,
        act=act,
        pool_norm=pool_norm,
        dropout=dropout,
        aspp_separable=aspp_separable,
        depthwise_norm=depthwise_norm,
    )
    head = SegmentationHead(decoder.out_channels, num_classes)
    return Segmentor(enc, decoder, head, pad_mode, align_corners=align_corners)


@MODELS.register("deeplabv3plus")
def deeplabv3plus(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "resnet50",
    weights: str | None = None,
    output_stride: int | None = 16,
    depth: int | None = None,
    base_channels: int | None = None,
    channels: int = 256,
    rates: list[int] | None = None,
    low_level_reduction: int = 4,
    low_level_channels: int = 48,
    separable: bool = False,
    pool_norm: str = "none",
    dropout: float = 0.5,
    aspp_separable: bool | None = None,
    aspp_conv: bool = False,
    fuse_convs: int = 2,
    depthwise_norm: bool = True,
    dilation: str = "timm",
    align_corners: bool = False,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """DeepLabv3+: DeepLabv3's atrous encoder and ASPP, plus a decoder that upsamples the ASPP output to the
    stride-4 low-level features (reduced to 48 channels by a 1x1 conv), concatenates and refines with two 3x3
    convs. ``separable=True``: depthwise-separable ASPP and decoder convs (the paper's Xception variant);
    ``aspp_separable`` (None: ``separable``) sets the ASPP branches alone. ``aspp_conv``: a 3x3 conv after ASPP;
    ``fuse_convs``: the refining convs; ``depthwise_norm=False``: separable convs without norm, activation or
    bias after the depthwise conv; ``dilation``: as DeepLabv3's; ``align_corners``: of every bilinear
    upsampling. smp's DeepLabV3Plus is ``output_stride=16``, ``rates=[12, 24, 36]``, ``pool_norm="bn"``,
    ``separable=True`` with ``aspp_separable`` its ``decoder_aspp_separable`` (True), ``depthwise_norm=False``,
    ``aspp_conv=True``, ``fuse_convs=1``, ``align_corners=True``, and for its ResNets ``dilation="uniform"``."""
    enc = build_encoder(encoder_spec("deeplabv3plus", locals()))
    decoder = DeepLabV3PlusDecoder(
        feature_info=enc.feature_info,
        channels=channels,
        low_level_reduction=low_level_reduction,
        low_level_channels=low_level_channels,
        rates=rates,
        separable=separable,
        norm=norm,
        act=act,
        pool_norm=pool_norm,
        dropout=dropout,
        aspp_separable=aspp_separable,
        aspp_conv=aspp_conv,
        fuse_convs=fuse_convs,
        depthwise_norm=depthwise_norm,
        align_corners=align_corners,
    )
    head = SegmentationHead(decoder.out_channels, num_classes)
    return Segmentor(enc, decoder, head, pad_mode, align_corners=align_corners)


@MODELS.register("fpn")
def fpn(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "resnet34",
    weights: str | None = None,
    output_stride: int | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    pyramid_channels: int = 256,
    segmentation_channels: int = 128,
    merge: str = "add",
    levels: int = 4,
    align_corners: bool = False,
    dropout: float = 0.2,
    norm: NormArg = "gn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """FPN (Kirillov et al., 2019, panoptic FPN's semantic branch; smp's FPN, encoder resnet34): a top-down
    pyramid of ``pyramid_channels`` over the deepest ``levels`` encoder features, each level brought to 1/4 by
    3x3 conv + GroupNorm + 2x upsampling stages of ``segmentation_channels``, merged by ``merge`` ("add" or
    "cat"); the logits at 1/4 are upsampled to the input. ``dropout``: Dropout2d before the head (smp's 0.2).
    ``align_corners``: of every bilinear upsampling (the branches' 2x stages and the logits' to the input); smp's
    FPN is ``align_corners=True``."""
    enc = build_encoder(encoder_spec("fpn", locals()))
    decoder = FPNDecoder(
        feature_info=enc.feature_info,
        pyramid_channels=pyramid_channels,
        segmentation_channels=segmentation_channels,
        merge=merge,
        levels=levels,
        norm=norm,
        act=act,
        align_corners=align_corners,
    )
    head = SegmentationHead(decoder.out_channels, num_classes, dropout)
    return Segmentor(enc, decoder, head, pad_mode, align_corners=align_corners)


@MODELS.register("pspnet")
def pspnet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "resnet50",
    weights: str | None = None,
    output_stride: int | None = 8,
    depth: int | None = None,
    base_channels: int | None = None,
    channels: int = 512,
    bins: list[int] | None = None,
    branch_channels: int | None = None,
    fuse_kernel: int = 3,
    pool_norm: str = "none",
    align_corners: bool = False,
    input_last: bool = False,
    head_kernel: int = 1,
    dropout: float = 0.1,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """PSPNet (Zhao et al., 2017): a dilated encoder (``output_stride`` 8, resnet50 as the paper), the pyramid
    pooling module on its deepest features (``bins`` 1, 2, 3, 6; branches of C / len(bins) channels, the 1x1
    bin's without norm unless ``pool_norm="bn"``), a ``fuse_kernel`` x ``fuse_kernel`` ConvNormAct to
    ``channels`` (the paper's 3x3 to 512), dropout 0.1 and a 1x1 head. ``align_corners``: of every bilinear
    upsampling (the pyramid's and the logits'); ``input_last``: the pooled branches before the features in the
    concatenation; ``head_kernel``: the head conv's size. smp's PSPNet is ``depth=3``, ``output_stride=None``,
    ``fuse_kernel=1``, ``dropout=0.2``, ``align_corners=True``, ``input_last=True``, ``head_kernel=3``."""
    enc = build_encoder(encoder_spec("pspnet", locals()))
    decoder = PSPDecoder(
        feature_info=enc.feature_info,
        channels=channels,
        bins=bins or PSP_BINS,
        branch_channels=branch_channels,
        fuse_kernel=fuse_kernel,
        norm=norm,
        act=act,
        pool_norm=pool_norm,
        align_corners=align_corners,
        input_last=input_last,
    )
    head = SegmentationHead(decoder.out_channels, num_classes, dropout, kernel_size=head_kernel)
    return Segmentor(enc, decoder, head, pad_mode, align_corners=align_corners)


@MODELS.register("upernet")
def upernet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "resnet50",
    weights: str | None = None,
    output_stride: int | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    channels: int = 256,
    levels: int = 4,
    bins: list[int] | None = None,
    feature_norm: bool = False,
    pool_norm: str = "none",
    align_corners: bool = False,
    dropout: float = 0.1,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """UPerNet (Xiao et al., 2018; MMSegmentation's UPerHead, smp's UPerNet): pyramid pooling (``bins`` 1, 2, 3, 6)
    on the deepest of the ``levels`` encoder features, FPN fusion of all of them at ``channels`` (smp's 256;
    MMSegmentation's 512), concatenated at 1/4 and fused by a 3x3 conv; dropout 0.1 and a 1x1 head. Works with
    ConvNeXt and transformer timm encoders (``convnext_tiny``, ``swin_tiny_patch4_window7_224``);
    ``feature_norm=True`` LayerNorms each feature first, as smp does. ``align_corners``: of the logits'
    upsampling to the input (the decoder's resizings keep False, as smp's and MMSegmentation's). smp's UPerNet
    is ``feature_norm=True``, ``pool_norm="bn"``, ``align_corners=True``, ``levels`` its ``encoder_depth`` - 1."""
    enc = build_encoder(encoder_spec("upernet", locals()))
    decoder = UPerNetDecoder(
        feature_info=enc.feature_info,
        channels=channels,
        levels=levels,
        bins=bins or PSP_BINS,
        feature_norm=feature_norm,
        norm=norm,
        act=act,
        pool_norm=pool_norm,
    )
    head = SegmentationHead(decoder.out_channels, num_classes, dropout)
    return Segmentor(enc, decoder, head, pad_mode, align_corners=align_corners)


@MODELS.register("lraspp")
def lraspp(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "mobilenetv3_large_100",
    weights: str | None = None,
    output_stride: int | None = 16,
    depth: int | None = None,
    base_channels: int | None = None,
    inter_channels: int = 128,
    low_level_reduction: int = 8,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """LR-ASPP, the fast end: a MobileNet encoder (timm's mobilenetv3_large_100 at stride 16, as
    torchvision's ``lraspp_mobilenet_v3_large``, whose parameter count it has; or the native depthwise-
    separable "mobilenet") and a head of 1x1 convs on the stride-16 and stride-8 features."""
    enc = build_encoder(encoder_spec("lraspp", locals()))
    decoder = LRASPPDecoder(
        feature_info=enc.feature_info,
        inter_channels=inter_channels,
        low_level_reduction=low_level_reduction,
        norm=norm,
        act=act,
    )
    head = LRASPPHead(
        in_channels=decoder.out_channels,
        low_channels=enc.feature_info[decoder.low_index].channels,
        low_index=decoder.low_index,
        num_classes=num_classes,
    )
    return Segmentor(enc, decoder, head, pad_mode)


@MODELS.register("segformer")
def segformer(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = "mit_b0",
    weights: str | None = None,
    output_stride: int | None = None,
    depth: int | None = None,
    base_channels: int | None = None,
    channels: int = 256,
    min_reduction: int = 4,
    fuse_reduction: int | None = None,
    align_corners: bool = False,
    drop_path: float = 0.1,
    dropout: float = 0.1,
    norm: NormArg = "bn",
    act: ActArg = "relu",
    pad_mode: str = "reflect",
) -> Segmentor:
    """SegFormer (Xie et al., 2021): a Mix Transformer encoder (native "mit_b0", "mit_b1", "mit_b2", with
    stochastic depth ``drop_path``; any timm encoder works too) and the all-MLP decoder: a linear layer per
    stage to ``channels`` (256, as smp; the paper uses 768 from MiT-B2 on), all upsampled to 1/4, concatenated
    and fused by a 1x1 conv + BN + ReLU; then the head's dropout (0.1, the paper's) and 1x1 classifier.
    ``min_reduction``: the decoder reads the features at reductions >= it (4: the paper's four stages), resized to
    the one at ``fuse_reduction`` (None: the finest read). ``align_corners``: of the logits' upsampling to the
    input (the decoder's resizing is align_corners=False, as the paper's and smp's). smp's Segformer is
    ``align_corners=True``, and on encoders with a stride-2 feature (ResNets) ``min_reduction=1``,
    ``fuse_reduction=4`` (it reads every feature, fused at 1/4)."""
    enc = build_encoder(encoder_spec("segformer", locals(), drop_path=drop_path))
    decoder = SegFormerDecoder(
        feature_info=enc.feature_info,
        channels=channels,
        min_reduction=min_reduction,
        fuse_reduction=fuse_reduction,
        norm=norm,
        act=act,
    )
    head = SegmentationHead(decoder.out_channels, num_classes, dropout)
    return Segmentor(enc, decoder, head, pad_mode, align_corners=align_corners)
