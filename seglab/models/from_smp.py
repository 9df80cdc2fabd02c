"""smp checkpoints as seglab models: ``weights=<smp checkpoint>`` for the architectures seglab shares with smp.

An smp checkpoint is what segmentation_models_pytorch writes: a ``save_pretrained`` folder (``config.json`` with
``_model_class`` and the model's arguments, beside ``model.safetensors``), or a state-dict file (``.safetensors``,
``.pth``/``.pt``: ``torch.save(model.state_dict(), ...)``) of an smp model, with smp's ``config.json`` beside it or
not. seglab keeps its own defaults; each architecture has options that reproduce smp's structure, and
:func:`smp_arguments` sets them from the checkpoint (its config where there is one, else the tensors' names and
shapes). :func:`smp_state` renames every tensor by the architecture's explicit table (:data:`RECIPES`) and the
encoder's (:func:`smp_encoder`), then checks names and shapes against the seglab model: nothing is matched by
position or shape alone, and a tensor left over, missing or of another shape is named in one line. smp's
optional classification head (``aux_params``) is dropped: segmentation does not use it.

Encoders: smp's torchvision ResNets (``resnet18`` ... ``resnet152``: timm's models of the same names hold the
same tensors), timm models through smp's ``tu-`` prefix (``tu-convnext_tiny`` is timm's ``convnext_tiny``, the
same ``features_only`` model) and the Mix Transformers ``mit_b0`` ... ``mit_b2`` (seglab's native encoders,
renamed by :data:`~seglab.models.encoders.mit.SMP_MIT_KEYS`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglab.errors import ConfigError

# smp's class names (config.json's ``_model_class``) -> seglab's architectures.
SMP_CLASSES: dict[str, str] = {
    "Unet": "unet",
    "UnetPlusPlus": "unetplusplus",
    "Linknet": "linknet",
    "FPN": "fpn",
    "PSPNet": "pspnet",
    "UPerNet": "upernet",
    "Segformer": "segformer",
    "DeepLabV3": "deeplabv3",
    "DeepLabV3Plus": "deeplabv3plus",
}
HEAD_KEY = "segmentation_head.0.weight"  # every smp segmentation model has it: how a state dict is recognised
SMP_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class SmpCheckpoint:
    """An smp model's tensors (``state``: smp's names) and its arguments (``config``: smp's ``config.json``,
    empty when the checkpoint is a bare state dict)."""

    path: Path
    state: Mapping[str, Any]
    config: Mapping[str, Any]

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of smp tensor ``key``; ConfigError naming the checkpoint when it has no such tensor."""
        if key not in self.state:
            raise ConfigError(
                f"smp checkpoint {self.path} has no tensor {key!r}: not the model it claims to be"
            )
        return tuple(self.state[key].shape)

    def count(self, pattern: str) -> int:
        """How many distinct values group 1 of regex ``pattern`` takes over the tensor names (blocks, stages)."""
        return len({m.group(1) for k in self.state if (m := re.match(pattern, k))})


# (regex on smp's name, seglab's name or None to drop it[, tensor -> seglab's tensor])
Rule = tuple[str, str | None] | tuple[str, str | None, Callable[[Any], Any]]


@dataclass(frozen=True)
class SmpRecipe:
    """How one architecture's smp checkpoint becomes seglab's.

    ``arguments``: the seglab builder arguments that reproduce smp's structure, from the checkpoint (with
    ``depth`` where seglab's encoder needs it; never ``encoder`` or ``weights``, which :func:`smp_arguments` sets). ``rules``: the decoder's and
    head's tensor names, (regex, replacement) pairs tried in order on smp's name (the first that matches the whole
    name wins; a replacement of None drops the tensor, for tensors smp keeps but never uses). A rule may have a
    third element, a function of the tensor that gives seglab's tensor (a reshape: smp's ``nn.Linear`` weight as
    a 1x1 conv's); ``rules`` may be a function of the checkpoint giving the rules, where the names depend on its
    depth (smp numbers blocks deepest first, seglab shallowest first). ``defaults``: smp's values of options its
    tensors do not show (an interpolation mode), used when the checkpoint has no config.json saying them and the
    user's arguments do not either.
    """

    arguments: Callable[[SmpCheckpoint], dict[str, Any]]
    rules: tuple[Rule, ...] | Callable[[SmpCheckpoint], tuple[Rule, ...]]
    defaults: Mapping[str, Any] = field(default_factory=dict)


def _unet_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    _refuse_attention(ckpt, "U-Net")
    blocks = ckpt.count(r"decoder\.blocks\.(\d+)\.")
    return {
        "depth": ckpt.config.get("encoder_depth", blocks),
        "decoder_channels": [ckpt.shape(f"decoder.blocks.{i}.conv1.0.weight")[0] for i in range(blocks)],
        "final_block": True,
        "head_kernel": ckpt.shape(HEAD_KEY)[-1],
        **_interpolation(ckpt, "_interp"),
    }


def _interpolation(ckpt: SmpCheckpoint, suffix: str = "") -> dict[str, Any]:
    """seglab's ``upsample`` (smp's mode + ``suffix``) for smp's ``decoder_interpolation`` where the config says it;
    no tensor shows it, so a bare state dict leaves it to the recipe's defaults (smp's "nearest")."""
    if "decoder_interpolation" not in ckpt.config:
        return {}
    interpolation = ckpt.config["decoder_interpolation"]
    if interpolation not in ("nearest", "bilinear"):
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: decoder_interpolation {interpolation!r} is not reproduced"
        )
    return {"upsample": interpolation + suffix}


# ---- DeepLabV3, DeepLabV3+, PSPNet, UPerNet
def _smp_resnet(ckpt: SmpCheckpoint) -> bool:
    """Whether the checkpoint's encoder is one of smp's own (torchvision) ResNets, not a ``tu-`` timm model."""
    return "encoder.conv1.weight" in ckpt.state


def _depth(ckpt: SmpCheckpoint, deepest: int) -> dict[str, Any]:
    """``depth`` from smp's ``encoder_depth``, else (a bare state dict) from the width ``deepest`` of the
    deepest feature the decoder reads, for smp's ResNets (which keep their unused layers); else nothing (the
    recipe's default, smp's)."""
    if "encoder_depth" in ckpt.config:
        return {"depth": ckpt.config["encoder_depth"]}
    if not _smp_resnet(ckpt):
        return {}
    widths = (512, 1024, 2048) if "encoder.layer1.0.conv3.weight" in ckpt.state else (128, 256, 512)
    return {"depth": widths.index(deepest) + 3} if deepest in widths else {}


def _use_norm(ckpt: SmpCheckpoint, arch: str, key: str) -> str:
    """seglab's ``norm`` for smp's ``decoder_use_norm`` (batch norm or none), checked against the tensors."""
    norm = ckpt.config.get("decoder_use_norm", "batchnorm")
    if norm not in (True, False, "batchnorm", "identity"):
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: decoder_use_norm={norm!r} is not reproduced in seglab's {arch} "
            "(batchnorm or identity)"
        )
    return "bn" if key in ckpt.state else "none"


def _deeplab_arguments(ckpt: SmpCheckpoint, aspp: str) -> dict[str, Any]:
    """What smp's DeepLabV3 and V3+ share: ASPP (at ``aspp``, smp's prefix) with a batch-normed pooling branch
    and smp's separable convs, the (torchvision) ResNets' uniform dilation, align_corners upsampling."""
    config = ckpt.config
    width, deepest = ckpt.shape(f"{aspp}.convs.0.0.weight")[:2]
    arguments: dict[str, Any] = {
        **_depth(ckpt, deepest),
        "channels": width,
        "pool_norm": "bn",
        "aspp_separable": f"{aspp}.convs.1.0.0.weight" in ckpt.state,
        "depthwise_norm": False,
        "align_corners": True,
    }
    if _smp_resnet(ckpt):
        arguments["dilation"] = "uniform"
    if "encoder_output_stride" in config:
        arguments["output_stride"] = config["encoder_output_stride"]
    if "decoder_atrous_rates" in config:
        arguments["rates"] = list(config["decoder_atrous_rates"])
    if "decoder_aspp_dropout" in config:
        arguments["dropout"] = config["decoder_aspp_dropout"]
    return arguments


def _deeplabv3_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    arguments = {**_deeplab_arguments(ckpt, "decoder.aspp"), "separable": False}
    depth = arguments.get("depth", 5)
    if ckpt.config.get("upsampling") is not None:  # None: smp's default, the decoder's reduction
        _smp_upsampling(ckpt, 2**depth if depth <= 3 else arguments.get("output_stride", 8))
    return arguments


def _deeplabv3plus_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    _smp_upsampling(ckpt, 4)
    return {
        **_deeplab_arguments(ckpt, "decoder.aspp.0"),
        "separable": True,
        "aspp_conv": True,
        "fuse_convs": 1,
        "low_level_reduction": 4,
        "low_level_channels": ckpt.shape("decoder.block1.0.weight")[0],
    }


def _aspp_rules(ckpt: SmpCheckpoint, theirs: str, ours: str) -> list[Rule]:
    """smp's ASPP at ``theirs`` is seglab's at ``ours``: the same layout (branches ``convs``, then ``project``)
    but for separable branches, smp's (SeparableConv2d (depthwise, pointwise), BN, ReLU) and seglab's
    DepthwiseSeparableConv2d (depthwise ConvNormAct, pointwise ConvNormAct)."""
    t = re.escape(theirs)
    rules: list[Rule] = [(rf"{t}\.(convs\.[04]|project)\.(\d)\.(.+)", rf"{ours}.\1.\2.\3")]
    if f"{theirs}.convs.1.0.0.weight" in ckpt.state:
        return [*rules, *_separable_rules(rf"{t}\.convs\.([123])\.", rf"{ours}.convs.\1.", 1)]
    return [*rules, (rf"{t}\.convs\.([123])\.(\d)\.(.+)", rf"{ours}.convs.\1.\2.\3")]


def _separable_rules(conv: str, ours: str, groups: int = 0, norm: str | None = None) -> list[Rule]:
    """smp's separable conv block: ``{conv}0.0`` depthwise, ``{conv}0.1`` pointwise, ``{conv}1`` BN (or the BN at
    ``norm``), seglab's ``{ours}depthwise.0``, ``pointwise.0`` and ``pointwise.1``; ``groups``: how many groups
    the ``conv`` regex has (they precede the tensor's)."""
    g = groups + 1
    norm = norm or rf"{conv}1\."
    return [
        (rf"{conv}0\.0\.weight", f"{ours}depthwise.0.weight"),
        (rf"{conv}0\.1\.weight", f"{ours}pointwise.0.weight"),
        (rf"{norm}(.+)", rf"{ours}pointwise.1.\{g}"),
    ]


def _deeplabv3_rules(ckpt: SmpCheckpoint) -> tuple[Rule, ...]:
    """smp's ``aspp`` is seglab's ``decoder.0``; its ``conv``, ``bn`` seglab's ConvNormAct ``decoder.1``."""
    return (
        *_aspp_rules(ckpt, "decoder.aspp", "decoder.0"),
        (r"decoder\.conv\.weight", "decoder.1.0.weight"),
        (r"decoder\.bn\.(.+)", r"decoder.1.1.\1"),
        HEAD_RULE,
    )


def _deeplabv3plus_rules(ckpt: SmpCheckpoint) -> tuple[Rule, ...]:
    """smp's ``aspp`` (ASPP, SeparableConv2d, BN, ReLU) is seglab's ``aspp`` and ``aspp_conv``; ``block1`` the
    low-level 1x1 ConvNormAct ``low``; ``block2`` (SeparableConv2d, BN, ReLU) the one fuse conv ``fuse.0``."""
    aspp_conv = [
        (r"decoder\.aspp\.1\.0\.weight", "decoder.aspp_conv.depthwise.0.weight"),
        (r"decoder\.aspp\.1\.1\.weight", "decoder.aspp_conv.pointwise.0.weight"),
        (r"decoder\.aspp\.2\.(.+)", r"decoder.aspp_conv.pointwise.1.\1"),
    ]
    return (
        *_aspp_rules(ckpt, "decoder.aspp.0", "decoder.aspp"),
        *aspp_conv,
        (r"decoder\.block1\.(\d)\.(.+)", r"decoder.low.\1.\2"),
        *_separable_rules(r"decoder\.block2\.", "decoder.fuse.0."),
        HEAD_RULE,
    )


def _pspnet_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    deepest = ckpt.shape("decoder.psp.blocks.0.pool.1.0.weight")[1]
    arguments: dict[str, Any] = {
        **_depth(ckpt, deepest),
        "output_stride": None,
        "channels": ckpt.shape("decoder.conv.0.weight")[0],
        "fuse_kernel": ckpt.shape("decoder.conv.0.weight")[-1],
        "norm": _use_norm(ckpt, "pspnet", "decoder.psp.blocks.1.pool.1.1.weight"),
        "pool_norm": "none",
        "align_corners": True,
        "input_last": True,
        "head_kernel": ckpt.shape(HEAD_KEY)[-1],
    }
    if "psp_dropout" in ckpt.config:
        arguments["dropout"] = ckpt.config["psp_dropout"]
    _smp_upsampling(ckpt, 2 ** arguments.get("depth", 3))
    return arguments


def _upernet_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    if _use_norm(ckpt, "upernet", "decoder.psp.blocks.0.1.1.weight") != "bn":
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: decoder_use_norm={ckpt.config['decoder_use_norm']!r} is not "
            "reproduced in seglab's upernet (smp's PSP output conv keeps its batch norm): batchnorm only"
        )
    _smp_upsampling(ckpt, 4)
    levels = ckpt.count(r"decoder\.feature_norms\.(\d+)\.")
    arguments = {
        "channels": ckpt.shape("decoder.psp.out_conv.0.weight")[0],
        "levels": levels,
        "feature_norm": True,
        "pool_norm": "bn",
        "align_corners": True,
    }
    if "encoder_depth" in ckpt.config or _smp_resnet(ckpt):  # smp reads its last depth - 1 features
        arguments["depth"] = ckpt.config.get("encoder_depth", levels + 1)
    return arguments


def _upernet_rules(ckpt: SmpCheckpoint) -> tuple[Rule, ...]:
    """smp's ``psp.blocks.{i}`` (pool, Conv2dReLU) are seglab's ``ppm.branches.{i}``, ``psp.out_conv`` its
    ``bottleneck``; smp's lateral and FPN conv blocks ``{i}`` (deepest first) seglab's ``{n-2-i}`` (finest
    first); ``fusion_block`` seglab's ``fuse``."""
    n = ckpt.count(r"decoder\.feature_norms\.(\d+)\.")
    rules: list[Rule] = [
        (r"decoder\.feature_norms\.(\d+)\.(weight|bias)", r"decoder.feature_norms.\1.\2"),
        (r"decoder\.psp\.blocks\.(\d)\.1\.(\d)\.(.+)", r"decoder.ppm.branches.\1.\2.\3"),
        (r"decoder\.psp\.out_conv\.(\d)\.(.+)", r"decoder.bottleneck.\1.\2"),
        (r"decoder\.fusion_block\.(\d)\.(.+)", r"decoder.fuse.\1.\2"),
    ]
    for i in range(n - 1):
        rules += [
            (
                rf"decoder\.fpn_lateral_blocks\.{i}\.conv_norm_relu\.(\d)\.(.+)",
                rf"decoder.lateral.{n - 2 - i}.\1.\2",
            ),
            (rf"decoder\.fpn_conv_blocks\.{i}\.(\d)\.(.+)", rf"decoder.fpn_convs.{n - 2 - i}.\1.\2"),
        ]
    return (*rules, HEAD_RULE)


def _refuse_attention(ckpt: SmpCheckpoint, arch: str) -> None:
    if ckpt.config.get("decoder_attention_type") or ckpt.count(r"decoder\.blocks\.\w+\.attention1\.(.+)"):
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: seglab's {arch} has no attention blocks (decoder_attention_type)"
        )
    if ckpt.count(r"decoder\.center\.(.+)"):
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: seglab's {arch} has no center block (smp's vgg encoders)"
        )


def _unetplusplus_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    _refuse_attention(ckpt, "U-Net++")
    blocks = ckpt.count(r"decoder\.blocks\.x_0_(\d+)\.")  # smp's x_0_l, l = 0 ... depth - 1 (the last: final)
    return {
        "depth": ckpt.config.get("encoder_depth", blocks),
        "decoder_channels": [ckpt.shape(f"decoder.blocks.x_0_{i}.conv1.0.weight")[0] for i in range(blocks)],
        "final_block": True,
        "head_kernel": ckpt.shape(HEAD_KEY)[-1],
        **_interpolation(ckpt),
    }


def _unetplusplus_rules(ckpt: SmpCheckpoint) -> tuple[Rule, ...]:
    """smp's node ``x_{d}_{l}`` (l = 0 ... n - 1, the last without skip) is seglab's ``x_{n-2-l}_{l-d+1}`` (the
    paper's X^{i,j}), its last ``final``; ``conv1``/``conv2`` are DoubleConv's ``conv.0``/``conv.1``."""
    n = ckpt.count(r"decoder\.blocks\.x_0_(\d+)\.")
    rules: list[Rule] = []
    for level in range(n):
        for d in range(level + 1):
            ours = "final" if level == n - 1 else f"nodes.x_{n - 2 - level}_{level - d + 1}"
            for k in (1, 2):
                rules.append(
                    (
                        rf"decoder\.blocks\.x_{d}_{level}\.conv{k}\.(\d)\.(.+)",
                        rf"decoder.{ours}.conv.{k - 1}.\1.\2",
                    )
                )
    return (*rules, HEAD_RULE)


def _linknet_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    blocks = ckpt.count(r"decoder\.blocks\.(\d+)\.")
    return {
        "depth": ckpt.config.get("encoder_depth", blocks),
        "final_block": True,
        "final_channels": ckpt.shape(f"decoder.blocks.{blocks - 1}.block.2.0.weight")[0],
    }


def _linknet_rules(ckpt: SmpCheckpoint) -> tuple[Rule, ...]:
    """smp's ``blocks.{k}.block`` is (1x1 Conv2dReLU, TransposeX2 (transposed conv, norm, ReLU), 1x1 Conv2dReLU):
    seglab's LinkNetBlock ``reduce``, ``up.conv`` + ``up_norm_act``, ``expand``; smp's last block is ``final``."""
    n = ckpt.count(r"decoder\.blocks\.(\d+)\.")
    rules: list[Rule] = []
    for k in range(n):
        ours, block = ("final" if k == n - 1 else f"blocks.{k}"), rf"decoder\.blocks\.{k}\.block"
        rules += [
            (rf"{block}\.0\.(\d)\.(.+)", rf"decoder.{ours}.reduce.\1.\2"),
            (rf"{block}\.1\.0\.(.+)", rf"decoder.{ours}.up.conv.\1"),
            (rf"{block}\.1\.1\.(.+)", rf"decoder.{ours}.up_norm_act.0.\1"),
            (rf"{block}\.2\.(\d)\.(.+)", rf"decoder.{ours}.expand.\1.\2"),
        ]
    return (*rules, HEAD_RULE)


def _smp_upsampling(ckpt: SmpCheckpoint, expected: int) -> None:
    """smp's head upsamples the logits by ``upsampling``; seglab's Segmentor to the input's size, the same only
    at smp's default (the decoder's reduction)."""
    if ckpt.config.get("upsampling", expected) != expected:
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: upsampling={ckpt.config['upsampling']} gives logits at another size "
            f"than the input's; seglab reproduces upsampling={expected} only"
        )


def _fpn_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    config = ckpt.config
    if config.get("encoder_depth", 5) != 5:
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: smp's FPN at encoder_depth {config['encoder_depth']} reads the input "
            "image or 1/2 features as its finest level; seglab reproduces encoder_depth=5 only"
        )
    if config.get("decoder_interpolation", "nearest") != "nearest":
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: decoder_interpolation {config['decoder_interpolation']!r} is not "
            "reproduced (seglab's FPN upsamples its pyramid by nearest neighbour, smp's default)"
        )
    _smp_upsampling(ckpt, 4)
    segmentation = ckpt.shape("decoder.seg_blocks.0.block.0.block.0.weight")[0]
    return {
        "pyramid_channels": ckpt.shape("decoder.p5.weight")[0],
        "segmentation_channels": segmentation,
        "merge": "cat" if ckpt.shape(HEAD_KEY)[1] == 4 * segmentation else "add",
        "levels": 4,
        "norm": "gn",
        "align_corners": True,
    }  # smp's decoder_dropout (0.2, seglab's too) is left to the user: MC dropout may want another


def _deepest_first(weight: Any, levels: int = 4) -> Any:
    """A head weight over smp's "cat" merge (levels deepest first) for seglab's (finest first)."""
    return weight.unflatten(1, (levels, -1)).flip(1).flatten(1, 2)


def _fpn_rules(ckpt: SmpCheckpoint) -> tuple[Rule, ...]:
    """smp's ``p5`` and ``p{k}.skip_conv`` are seglab's lateral convs ``lateral.{k-2}``; its segmentation blocks
    ``seg_blocks.{k}`` (deepest first; each stage ``block.{s}.block`` conv, GroupNorm, ReLU) are
    ``branches.{3-k}`` (finest first; each stage a ConvUp, whose ConvNormAct is ``.0``)."""
    cat = ckpt.shape(HEAD_KEY)[1] == 4 * ckpt.shape("decoder.seg_blocks.0.block.0.block.0.weight")[0]
    rules: list[Rule] = [(r"decoder\.p5\.(weight|bias)", r"decoder.lateral.3.\1")]
    rules += [
        (rf"decoder\.p{k}\.skip_conv\.(weight|bias)", rf"decoder.lateral.{k - 2}.\1") for k in (2, 3, 4)
    ]
    rules += [
        (
            rf"decoder\.seg_blocks\.{k}\.block\.(\d+)\.block\.(\d)\.(.+)",
            rf"decoder.branches.{3 - k}.\1.0.\2.\3",
        )
        for k in range(4)
    ]
    head: Rule = (r"segmentation_head\.0\.weight", "head.1.weight", _deepest_first) if cat else HEAD_RULE
    return (*rules, head, HEAD_RULE)


def _segformer_arguments(ckpt: SmpCheckpoint) -> dict[str, Any]:
    _smp_upsampling(ckpt, 4)
    arguments: dict[str, Any] = {
        "channels": ckpt.shape("decoder.fuse_stage.0.weight")[0],
        "min_reduction": 1,  # every feature: a ResNet's stride-2 one too
        "fuse_reduction": 4,
        "align_corners": True,
    }
    if "encoder.patch_embed1.proj.weight" not in ckpt.state:  # a MiT has 4 stages, whatever smp's depth says
        arguments["depth"] = ckpt.count(r"decoder\.mlp_stage\.(\d+)\.")  # one per feature, a 0-wide one not
    return arguments


def _segformer_rules(ckpt: SmpCheckpoint) -> tuple[Rule, ...]:
    """smp's ``mlp_stage.{i}.linear`` (deepest first, nn.Linear) is seglab's ``linears.{n-1-i}`` (finest first, a
    1x1 conv: the weight gets the kernel's two dims); ``fuse_stage`` (conv, BN, ReLU) is ``fuse``."""
    n = ckpt.count(r"decoder\.mlp_stage\.(\d+)\.")
    rules: list[Rule] = []
    for i in range(n):
        rules.append(
            (rf"decoder\.mlp_stage\.{i}\.linear\.weight", f"decoder.linears.{n - 1 - i}.weight", _as_conv1x1)
        )
        rules.append((rf"decoder\.mlp_stage\.{i}\.linear\.bias", f"decoder.linears.{n - 1 - i}.bias"))
    return (*rules, (r"decoder\.fuse_stage\.(\d)\.(.+)", r"decoder.fuse.\1.\2"), HEAD_RULE)


def _as_conv1x1(weight: Any) -> Any:
    """An nn.Linear weight (out, in) as a 1x1 conv's (out, in, 1, 1)."""
    return weight[:, :, None, None]


HEAD_RULE = (r"segmentation_head\.0\.(weight|bias)", r"head.1.\1")  # seglab's head: (dropout, conv)

RECIPES: dict[str, SmpRecipe] = {
    "unet": SmpRecipe(
        _unet_arguments,
        (
            (r"decoder\.blocks\.(\d+)\.conv1\.(\d)\.(.+)", r"decoder.blocks.\1.conv.0.\2.\3"),
            (r"decoder\.blocks\.(\d+)\.conv2\.(\d)\.(.+)", r"decoder.blocks.\1.conv.1.\2.\3"),
            HEAD_RULE,
        ),
        defaults={"upsample": "nearest_interp"},
    ),
    "deeplabv3": SmpRecipe(
        _deeplabv3_arguments, _deeplabv3_rules, defaults={"output_stride": 8, "rates": [12, 24, 36]}
    ),
    "deeplabv3plus": SmpRecipe(
        _deeplabv3plus_arguments, _deeplabv3plus_rules, defaults={"output_stride": 16, "rates": [12, 24, 36]}
    ),
    "pspnet": SmpRecipe(
        _pspnet_arguments,
        (
            (r"decoder\.psp\.blocks\.(\d)\.pool\.1\.(\d)\.(.+)", r"decoder.ppm.branches.\1.\2.\3"),
            (r"decoder\.conv\.(\d)\.(.+)", r"decoder.fuse.\1.\2"),
            HEAD_RULE,
        ),
        defaults={"depth": 3},
    ),
    "upernet": SmpRecipe(_upernet_arguments, _upernet_rules),
    "unetplusplus": SmpRecipe(_unetplusplus_arguments, _unetplusplus_rules),
    "linknet": SmpRecipe(_linknet_arguments, _linknet_rules),
    "fpn": SmpRecipe(_fpn_arguments, _fpn_rules),
    "segformer": SmpRecipe(_segformer_arguments, _segformer_rules, defaults={"dropout": 0.0}),  # smp's: none
}


# ---------------------------------------------------------------------------------------------------- reading
def is_smp_checkpoint(weights: object) -> bool:
    """Whether ``weights`` (a model's ``weights`` argument) names an smp checkpoint: a folder with smp's
    ``config.json``, or a state-dict file with smp's ``segmentation_head``. Cheap for .safetensors (names only)."""
    if (
        not isinstance(weights, str | Path)
        or str(weights) in ("", "imagenet")
        or str(weights).startswith("pkg:")
    ):
        return False
    path = Path(weights)
    if path.is_dir():
        return "_model_class" in _read_config(path / "config.json")
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return HEAD_KEY in f.keys()  # noqa: SIM118 - safe_open has no __contains__
        except Exception:  # noqa: BLE001 - not readable: the encoder's reader names the problem
            return False
    try:
        from seglab.models.encoders.base import read_state_dict

        return HEAD_KEY in read_state_dict(path)
    except ConfigError:
        return False


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"smp config {path} is not readable JSON: {e}") from None
    return config if isinstance(config, dict) else {}


def read_smp_checkpoint(weights: str | Path) -> SmpCheckpoint:
    """The tensors and arguments of the smp checkpoint ``weights`` (folder or state-dict file)."""
    from seglab.models.encoders.base import read_state_dict

    path = Path(weights)
    own = path.is_dir() or path.name in SMP_WEIGHTS_FILES  # a save_pretrained folder's config is its file's
    config = _read_config((path if path.is_dir() else path.parent) / "config.json") if own else {}
    if path.is_dir():
        files = [path / name for name in SMP_WEIGHTS_FILES if (path / name).is_file()]
        if not files:
            raise ConfigError(f"smp checkpoint folder {path} has no {' or '.join(SMP_WEIGHTS_FILES)}")
        path = files[0]
    state = read_state_dict(path)
    if HEAD_KEY not in state:
        raise ConfigError(f"{path} is not an smp model's state dict (it has no {HEAD_KEY!r})")
    theirs = config.get("_model_class")
    if theirs is not None and theirs not in SMP_CLASSES:
        raise ConfigError(
            f"smp checkpoint {path} is smp's {theirs}, which seglab does not have; seglab reads smp's "
            f"{', '.join(SMP_CLASSES)}"
        )
    return SmpCheckpoint(path, state, config)


# ---------------------------------------------------------------------------------------------------- encoders
RESNET_BLOCKS: dict[tuple[tuple[int, ...], bool], str] = {  # (blocks per layer, bottleneck) -> name
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
MIT_STAGES: dict[tuple[int, tuple[int, ...]], str] = {  # (first width, blocks per stage) -> name
    (32, (2, 2, 2, 2)): "mit_b0",
    (64, (2, 2, 2, 2)): "mit_b1",
    (64, (3, 4, 6, 3)): "mit_b2",
}


def smp_encoder(ckpt: SmpCheckpoint, given: str | None = None) -> str:
    """seglab's name of the checkpoint's encoder: from smp's ``encoder_name`` where the config has one, else from
    the tensors (a ResNet's block counts, a MiT's widths and depths; a ``tu-`` timm encoder needs ``given``,
    seglab's ``encoder`` argument, since its tensors do not say which timm model they are). ConfigError for
    an encoder seglab does not map, or one other than ``given``."""
    name = ckpt.config.get("encoder_name")
    if name is None:
        name = _encoder_from_tensors(ckpt, given)
    if name.startswith("tu-"):
        ours = name[3:]
    elif name in RESNET_BLOCKS.values() or name in MIT_STAGES.values():
        ours = name
    else:
        raise ConfigError(
            f"smp checkpoint {ckpt.path}: encoder {name!r} has no seglab mapping; seglab reads smp's resnet18 ... "
            "resnet152, mit_b0 ... mit_b2 and any timm encoder (tu-NAME)"
        )
    if given is not None and given != ours:
        raise ConfigError(
            f"smp checkpoint {ckpt.path} has encoder {ours!r}, not {given!r}: drop encoder or fix it"
        )
    return ours


def _encoder_from_tensors(ckpt: SmpCheckpoint, given: str | None) -> str:
    keys = ckpt.state
    if any(k.startswith("encoder.model.") for k in keys):
        if given is None:
            raise ConfigError(
                f"smp checkpoint {ckpt.path} has a timm (tu-) encoder and no config.json: name it (encoder: the "
                "timm name)"
            )
        return f"tu-{given}"
    if "encoder.patch_embed1.proj.weight" in keys:
        stages = tuple(ckpt.count(rf"encoder\.block{s}\.(\d+)\.") for s in (1, 2, 3, 4))
        width = ckpt.shape("encoder.patch_embed1.proj.weight")[0]
        if (width, stages) in MIT_STAGES:
            return MIT_STAGES[(width, stages)]
    if "encoder.layer1.0.conv1.weight" in keys:
        blocks = tuple(ckpt.count(rf"encoder\.layer{s}\.(\d+)\.") for s in (1, 2, 3, 4))
        bottleneck = "encoder.layer1.0.conv3.weight" in keys
        if (blocks, bottleneck) in RESNET_BLOCKS:
            return RESNET_BLOCKS[(blocks, bottleneck)]
    raise ConfigError(
        f"smp checkpoint {ckpt.path}: its encoder is none of smp's resnet18 ... resnet152 or mit_b0 ... mit_b2, "
        "and it has no config.json naming it"
    )


def _encoder_state(ckpt: SmpCheckpoint, encoder: str, depth: int) -> dict[str, Any]:
    """The encoder's tensors in seglab's names: a ResNet's ``encoder.X`` is timm's ``encoder.model.X`` (layers
    beyond ``depth``, which smp keeps but does not run, and the classifier are dropped); a ``tu-`` encoder's
    ``encoder.model.X`` is seglab's name already; a MiT's go through SMP_MIT_KEYS."""
    own = {k[len("encoder.") :]: v for k, v in ckpt.state.items() if k.startswith("encoder.")}
    if encoder in MIT_STAGES.values():
        from seglab.models.encoders.mit import mit_state_from_smp

        return {f"encoder.{k}": v for k, v in mit_state_from_smp(own).items()}
    if encoder in RESNET_BLOCKS.values() and not any(k.startswith("model.") for k in own):
        unused = tuple(f"layer{k}." for k in range(depth, 5)) + ("fc.",)  # layer k runs from depth k + 1 on
        return {f"encoder.model.{k}": v for k, v in own.items() if not k.startswith(unused)}
    return {f"encoder.{k}": v for k, v in own.items()}


# ---------------------------------------------------------------------------------------------------- the model
def smp_arguments(arch: str, weights: str | Path, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """seglab's builder arguments for ``arch`` that reproduce the smp checkpoint ``weights``: ``given`` (the
    user's arguments) plus the checkpoint's structure (encoder, depth and the architecture's smp options).
    ConfigError when the checkpoint is another architecture, or ``given`` sets an option to another value."""
    given = dict(given or {})
    ckpt = read_smp_checkpoint(weights)
    return _arguments(arch, ckpt, given)


def _arguments(arch: str, ckpt: SmpCheckpoint, given: dict[str, Any]) -> dict[str, Any]:
    theirs = ckpt.config.get("_model_class")
    if theirs is not None and SMP_CLASSES.get(theirs) != arch:
        raise ConfigError(
            f"smp checkpoint {ckpt.path} is smp's {theirs}, not {arch}: set model.arch accordingly"
        )
    if arch not in RECIPES:
        shared = ", ".join(sorted(RECIPES))
        raise ConfigError(f"{arch} has no smp checkpoint loader; smp checkpoints load into: {shared}")
    recipe = RECIPES[arch]
    smp_decoder_state(arch, ckpt)  # another architecture's checkpoint: named by its first foreign tensor
    structure = {"encoder": smp_encoder(ckpt, given.get("encoder")), **recipe.arguments(ckpt)}
    for key, value in structure.items():
        if key in given and given[key] != value:
            raise ConfigError(
                f"{key}={given[key]!r} conflicts with the smp checkpoint {ckpt.path} ({key}={value!r}): drop it"
            )
    return {**recipe.defaults, **given, **structure, "weights": str(given.get("weights", ckpt.path))}


def smp_state(arch: str, ckpt: SmpCheckpoint, model: Any, encoder: str, depth: int) -> dict[str, Any]:
    """The checkpoint's tensors in ``model``'s names (``arch``'s rules, the renaming of seglab's ``encoder`` of
    smp depth ``depth``), checked name by name and shape by shape against ``model``; ConfigError naming the first
    tensor that does not fit."""
    out = {**_encoder_state(ckpt, encoder, depth), **smp_decoder_state(arch, ckpt)}
    ours = model.state_dict()
    for key, value in out.items():
        if key not in ours:
            raise ConfigError(
                f"smp checkpoint {ckpt.path}: tensor {key!r} (renamed) has no place in seglab's {arch}"
            )
        if tuple(ours[key].shape) != tuple(value.shape):
            raise ConfigError(
                f"smp checkpoint {ckpt.path}: {key!r} is {tuple(value.shape)}, seglab's {arch} has "
                f"{tuple(ours[key].shape)}"
            )
    missing = [k for k in ours if k not in out and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"smp checkpoint {ckpt.path} has no tensor for seglab's {missing[0]!r} ({len(missing)} in all)"
        )
    return {**{k: v for k, v in ours.items() if k not in out}, **out}


def smp_decoder_state(arch: str, ckpt: SmpCheckpoint) -> dict[str, Any]:
    """The checkpoint's decoder and head tensors (all but the encoder's and the classification head's) in
    seglab's names and shapes, by ``arch``'s rules (:data:`RECIPES`); ConfigError naming a tensor no rule maps."""
    rules = RECIPES[arch].rules
    rules = rules(ckpt) if callable(rules) else rules
    out = {}
    for key, value in ckpt.state.items():
        if key.startswith(("encoder.", "classification_head.")):
            continue
        for pattern, replacement, *transform in rules:
            match = re.fullmatch(pattern, key)
            if match:
                if replacement is not None:
                    out[match.expand(replacement)] = transform[0](value) if transform else value
                break
        else:
            raise ConfigError(f"smp checkpoint {ckpt.path}: tensor {key!r} has no place in seglab's {arch}")
    return out


def build_from_smp(
    arch: str, builder: Callable[..., Any], num_classes: int, in_channels: int, given: Mapping[str, Any]
) -> Any:
    """The seglab ``arch`` model of the smp checkpoint ``given["weights"]``, its weights loaded: the structure
    from the checkpoint (:func:`smp_arguments`), the tensors by :func:`smp_state`."""
    ckpt = read_smp_checkpoint(given["weights"])
    arguments = _arguments(arch, ckpt, dict(given))
    classes = ckpt.shape(HEAD_KEY)[0]
    if classes != num_classes:
        raise ConfigError(f"smp checkpoint {ckpt.path} scores {classes} classes, the data has {num_classes}")
    model = builder(num_classes=num_classes, in_channels=in_channels, **{**arguments, "weights": None})
    depth = ckpt.config.get("encoder_depth") or arguments.get("depth") or 5
    model.load_state_dict(smp_state(arch, ckpt, model, arguments["encoder"], depth))
    return model


__all__ = [
    "RECIPES",
    "SMP_CLASSES",
    "SmpCheckpoint",
    "SmpRecipe",
    "build_from_smp",
    "is_smp_checkpoint",
    "read_smp_checkpoint",
    "smp_arguments",
    "smp_decoder_state",
    "smp_encoder",
    "smp_state",
]
