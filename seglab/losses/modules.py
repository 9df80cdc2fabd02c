"""Thin nn.Module wrappers around seglab.losses.functional, and their registry (``make_loss``).

Every module is called as ``loss(logits, target)``; those marked ``supports_pixel_weight`` also take
``pixel_weight=`` (N, H, W), e.g. the U-Net border map. Class weights are stored as buffers, so they follow
``.to(device)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from seglab.config import check_class_weights, check_loss_weights
from seglab.errors import ConfigError
from seglab.losses import functional as LF
from seglab.losses.functional import Mode, WeightArg
from seglab.registry import Registry

LOSSES: Registry = Registry("loss")


class _Loss(nn.Module):
    supports_pixel_weight = False
    # the option that takes the cross-entropy's class weights (make_loss's class_weights go there), if any
    ce_class_weights_option: str | None = None

    def _weights(self, name: str, value: WeightArg) -> None:
        tensor = None if value is None else torch.as_tensor(value, dtype=torch.float32)
        if tensor is not None:
            self._check(
                name, bool(torch.isfinite(tensor).all() and (tensor >= 0).all()), "finite and >= 0", value
            )
        self.register_buffer(name, tensor)

    def _check(self, name: str, ok: bool, allowed: str, value: Any) -> None:
        """ConfigError naming the option unless ``ok``: a bad option would train silently on a wrong loss."""
        if not ok:
            shown = value.tolist() if isinstance(value, torch.Tensor) else value
            raise ConfigError(f"{type(self).__name__} option {name} must be {allowed}, got {shown!r}")

    def _unit(self, name: str, value: float) -> None:
        self._check(name, _number(value) and 0 <= value <= 1, "within [0, 1]", value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@LOSSES.register("ce")
class CrossEntropyLoss(_Loss):
    """Cross-entropy with class ``weight``, ``ignore_index`` and label smoothing.

    One-channel logits (N, 1, H, W) switch to the sigmoid (binary) cross-entropy, where ``weight`` may hold
    one ``pos_weight``.
    """

    supports_pixel_weight = True
    ce_class_weights_option = "weight"

    def __init__(
        self, weight: WeightArg = None, ignore_index: int | None = 255, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self._weights("weight", weight)
        self._unit("label_smoothing", label_smoothing)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        if logits.shape[1] == 1:
            return LF.binary_cross_entropy(
                logits, target, self.ignore_index, self.weight, self.label_smoothing, pixel_weight
            )
        return LF.cross_entropy(
            logits, target, self.weight, self.ignore_index, self.label_smoothing, pixel_weight
        )


@LOSSES.register("bce")
class BinaryCrossEntropyLoss(_Loss):
    """Sigmoid cross-entropy for one-channel or multilabel logits."""

    supports_pixel_weight = True

    def __init__(
        self,
        ignore_index: int | None = 255,
        pos_weight: float | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self._weights("pos_weight", pos_weight)
        self._unit("label_smoothing", label_smoothing)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        return LF.binary_cross_entropy(
            logits, target, self.ignore_index, self.pos_weight, self.label_smoothing, pixel_weight
        )


@LOSSES.register("focal")
class FocalLoss(_Loss):
    """Focal loss; ``alpha``: per-class weights (multiclass) or the positive weight (binary/multilabel)."""

    supports_pixel_weight = True

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        ignore_index: int | None = 255,
        mode: Mode | None = None,
    ) -> None:
        super().__init__()
        self._check("gamma", _number(gamma) and gamma >= 0, "a number >= 0", gamma)
        self.gamma, self.ignore_index, self.mode = gamma, ignore_index, mode
        self.scalar_alpha = alpha if isinstance(alpha, int | float) else None
        if self.scalar_alpha is not None:
            self._unit("alpha", self.scalar_alpha)
        self._weights("alpha", None if self.scalar_alpha is not None else alpha)

    def forward(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        alpha = self.scalar_alpha if self.scalar_alpha is not None else self.alpha
        return LF.focal_loss(logits, target, self.gamma, alpha, self.ignore_index, self.mode, pixel_weight)


class _RegionLoss(_Loss):
    """Shared options of the soft overlap losses (Dice, Tversky, Jaccard)."""

    def __init__(
        self,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        eps: float = 1e-7,
        mode: Mode | None = None,
        class_weights: WeightArg = None,
        include_background: bool = True,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        self._check("smooth", _number(smooth) and smooth >= 0, "a number >= 0", smooth)
        self._check("eps", _number(eps) and eps > 0, "a number > 0", eps)
        self.ignore_index, self.smooth, self.eps, self.mode = ignore_index, smooth, eps, mode
        self.include_background, self.per_image = include_background, per_image
        self._weights("class_weights", class_weights)

    def _kwargs(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "mode": self.mode,
            "class_weights": self.class_weights,
            "include_background": self.include_background,
            "per_image": self.per_image,
        }


@LOSSES.register("dice")
class DiceLoss(_RegionLoss):
    """Soft Dice loss (binary, multiclass softmax or multilabel sigmoid; see ``functional.dice_loss``)."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return LF.dice_loss(logits, target, self.ignore_index, self.smooth, **self._kwargs())


@LOSSES.register("jaccard")
class JaccardLoss(_RegionLoss):
    """Soft Jaccard (IoU) loss."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return LF.jaccard_loss(logits, target, self.ignore_index, self.smooth, **self._kwargs())


@LOSSES.register("tversky")
class TverskyLoss(_RegionLoss):
    """Tversky loss: ``alpha`` weights false positives, ``beta`` false negatives; ``gamma`` != 1: focal."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("alpha", alpha), ("beta", beta)):
            self._check(name, _number(value) and value >= 0, "a number >= 0", value)
        self._check("gamma", _number(gamma) and gamma > 0, "a number > 0", gamma)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return LF.tversky_loss(
            logits,
            target,
            self.ignore_index,
            self.alpha,
            self.beta,
            self.gamma,
            self.smooth,
            **self._kwargs(),
        )


@LOSSES.register("lovasz")
class LovaszSoftmaxLoss(_Loss):
    """Lovász-softmax: a surrogate of mean IoU (``classes``: "present" or "all")."""

    def __init__(
        self, ignore_index: int | None = 255, classes: str = "present", per_image: bool = False
    ) -> None:
        super().__init__()
        self._check("classes", classes in ("present", "all"), "present or all", classes)
        self.ignore_index, self.classes, self.per_image = ignore_index, classes, per_image

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return LF.lovasz_softmax(logits, target, self.ignore_index, self.classes, self.per_image)  # type: ignore[arg-type]


class WeightedSumLoss(nn.Module):
    """sum_i weight_i * loss_i(logits, target); ``components`` keeps the last detached terms for logging.

    ``pixel_weight`` is passed to the terms that support it (the per-pixel losses), not to the region ones.
    """

    def __init__(self, terms: Mapping[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSumLoss needs at least one term")
        self.losses = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.weights = {name: float(w) for name, (w, _) in terms.items()}
        self.components: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        if pixel_weight is not None and not any(
            getattr(m, "supports_pixel_weight", False) for m in self.losses.values()
        ):
            raise ValueError("pixel_weight given, but none of the terms takes per-pixel weights")
        total = logits.new_zeros(())
        self.components = {}
        for name, module in self.losses.items():
            weight = self.weights[name]
            if not weight:
                continue
            if pixel_weight is not None and getattr(module, "supports_pixel_weight", False):
                value = module(logits, target, pixel_weight=pixel_weight)
            else:
                value = module(logits, target)
            self.components[name] = value.detach()
            total = total + weight * value
        return total


@LOSSES.register("dice_ce")
class DiceCELoss(WeightedSumLoss):
    """ce_weight * cross-entropy + dice_weight * soft Dice, both ignoring ``ignore_index`` pixels.

    One-channel logits use the sigmoid cross-entropy and binary Dice. ``class_weights`` and
    ``label_smoothing`` go to the cross-entropy; ``smooth``, ``include_background`` and ``per_image`` to Dice.
    ``pixel_weight`` (e.g. the U-Net border map) weights the cross-entropy term.
    """

    supports_pixel_weight = True
    ce_class_weights_option = "class_weights"

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int | None = 255,
        *,
        class_weights: WeightArg = None,
        label_smoothing: float = 0.0,
        smooth: float = 1.0,
        include_background: bool = True,
        per_image: bool = False,
    ) -> None:
        super().__init__(
            {
                "ce": (ce_weight, CrossEntropyLoss(class_weights, ignore_index, label_smoothing)),
                "dice": (
                    dice_weight,
                    DiceLoss(
                        ignore_index, smooth, include_background=include_background, per_image=per_image
                    ),
                ),
            }
        )
        self.ce_weight, self.dice_weight, self.ignore_index = ce_weight, dice_weight, ignore_index


def _build(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    cls = LOSSES.get(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_any:  # e.g. TverskyLoss(**kwargs): check against the shared region-loss options too
        params = {**inspect.signature(_RegionLoss.__init__).parameters, **params}
    known = [p for p in params if p not in ("self", "kwargs")]
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no option {', '.join(map(repr, unknown))}; it takes: {', '.join(known)}"
        )
    return cls(**kwargs)


def make_loss(
    spec: str | Mapping[str, Any], *, class_weights: Any = None, prefix: str = "", **common: Any
) -> nn.Module:
    """Build a loss from a config value.

    ``spec`` is a registered name (``make_loss("dice_ce", ignore_index=255)``; see ``LOSSES.list()``) or a
    weighted sum ``{name: weight}`` / ``{name: {"weight": w, **options}}``, e.g.
    ``make_loss({"ce": 1.0, "dice": {"weight": 0.5, "smooth": 0.0}}, ignore_index=255)``.
    ``common`` options go to every term (options a term does not take are an error for a single loss only).
    ``class_weights`` (one per class; ``train.class_weights``) weight every cross-entropy term (ce, and
    dice_ce's) when it is built, as MMSegmentation's ``class_weight``; not the region losses' class means
    (give those as a term option: ``{"dice": {"class_weights": [...]}}``). ConfigError if no term is a
    cross-entropy, or one has class weights of its own. ``prefix`` (e.g. "train.") makes the messages name
    the config keys.
    """
    weights = check_class_weights(class_weights, f"{prefix}class_weights")
    if isinstance(spec, str):
        _require_cross_entropy(spec, [spec], weights, prefix)
        return _build(spec, _with_class_weights(spec, common, weights, prefix))
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"a loss spec is a name or a mapping name -> weight, got {spec!r}")
    check_loss_weights(dict(spec), f"{prefix}loss")
    _require_cross_entropy(spec, list(spec), weights, prefix)
    terms: dict[str, tuple[float, nn.Module]] = {}
    for name, value in spec.items():
        if isinstance(value, int | float):
            weight, options = float(value), {}
        elif isinstance(value, Mapping):
            options = dict(value)
            weight = float(options.pop("weight", 1.0))
        else:
            raise ConfigError(
                f"loss term {name!r} must be a weight or a mapping with 'weight', got {value!r}"
            )
        cls = LOSSES.get(name)
        accepted = set(inspect.signature(cls.__init__).parameters) | set(
            inspect.signature(_RegionLoss.__init__).parameters if issubclass(cls, _RegionLoss) else ()
        )
        shared = {k: v for k, v in common.items() if k in accepted}
        options = _with_class_weights(name, {**shared, **options}, weights, prefix)
        terms[name] = (weight, _build(name, options))
    return WeightedSumLoss(terms)


def _require_cross_entropy(spec: Any, names: list[str], weights: Any, prefix: str) -> None:
    """ConfigError if there are class ``weights`` but none of the terms ``names`` is a cross-entropy."""
    if weights is not None and not any(_ce_option(n) for n in names):
        raise ConfigError(
            f"{prefix}class_weights weights the cross-entropy term, but {prefix}loss {spec} has none; add one "
            f"(e.g. {prefix}loss={{ce: 1.0, dice: 1.0}}) or set {prefix}class_weights=null"
        )


def _ce_option(name: str) -> str | None:
    """The option of loss ``name`` that takes the cross-entropy's class weights (None: it has no cross-entropy)."""
    return getattr(LOSSES.get(name), "ce_class_weights_option", None)


def _with_class_weights(name: str, options: dict[str, Any], weights: Any, prefix: str) -> dict[str, Any]:
    """``options`` of loss ``name`` with the cross-entropy class ``weights`` under the option that takes them
    (as given if there are none, or the loss has no cross-entropy): ConfigError if the options hold some too."""
    option = _ce_option(name)
    if weights is None or option is None:
        return options
    if options.get(option) is not None:
        raise ConfigError(
            f"{prefix}class_weights and the class weights given in {prefix}loss both weight the cross-entropy; "
            "keep one"
        )
    return {**options, option: weights}


def list_losses() -> list[str]:
    """Names accepted by :func:`make_loss`."""
    return LOSSES.list()
