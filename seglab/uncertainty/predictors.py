"""Predictors: any model (images -> logits) in, an :class:`UncertaintyResult` out.

* :class:`Deterministic`: one pass in eval mode (T = 1, mutual information 0), the baseline.
* :class:`MCDropout` (Gal & Ghahramani 2016; Bayesian SegNet, Kendall et al. 2017): T passes with only the
  dropout layers in train mode; batch norm and everything else stay in eval mode. :func:`add_dropout` gives a
  model without dropout some (before the head, or after every decoder block as Bayesian SegNet placed it).
* :class:`TTA`: flips (and optionally scales) of the input, each prediction mapped back before averaging.
* :class:`Ensemble` (Lakshminarayanan et al. 2017): M models of the same task, probabilities averaged.

All stream their passes into :class:`RunningStats`, so memory does not grow with T or M, and all leave every
module's train/eval mode as they found it. Inputs are normalised images ``(N, C_in, H, W)`` on the models'
device; ``temperature`` divides the logits (temperature scaling, see ``seglab calibrate``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.errors import ConfigError
from seglab.uncertainty.functional import RunningStats, UncertaintyResult

DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
FLIPS: dict[str, tuple[int, ...]] = {
    "none": (),
    "h": (-1,),
    "v": (-2,),
    "hv": (-2, -1),
}  # name -> flipped dims


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``model``, found by module type (never by name)."""
    return [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]


@contextmanager
def _restore_modes(model: nn.Module) -> Iterator[None]:
    # an exported model (seglab.models.runtime) has no submodules and no modes to restore
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every module's mode is restored afterwards."""
    with _restore_modes(model):
        model.eval()
        yield


@contextmanager
def dropout_mode(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Eval mode except the dropout layers, which sample (train mode); every module's mode is restored afterwards.

    ConfigError if the model has no dropout layer: MC dropout would return T identical passes.
    """
    layers = dropout_modules(model)
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no dropout layers, so MC dropout would repeat one prediction; train with "
            "model.params.dropout=0.1 or add some with --add-dropout 0.1 (seglab.uncertainty.add_dropout)"
        )
    with _restore_modes(model):
        model.eval()
        for m in layers:
            m.train()
        yield layers


def _decoder_blocks(model: nn.Module) -> list[nn.Module]:
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise ConfigError(
            f"{type(model).__name__} has no `decoder` submodule; add dropout with where='head' or a module name"
        )
    blocks = [b for child in decoder.children() if isinstance(child, nn.ModuleList) for b in child]
    return blocks or [decoder]


class _DropInput:
    """Forward pre-hook applying ``drop`` to a module's first input (a class, so ``copy.deepcopy`` rebinds it)."""

    def __init__(self, drop: nn.Module) -> None:
        self.drop = drop

    def __call__(self, _module: nn.Module, args: tuple) -> tuple:
        return (self.drop(args[0]), *args[1:])


class _DropOutput(_DropInput):
    """Forward hook applying ``drop`` to a module's tensor output."""

    def __call__(self, _module: nn.Module, _args: tuple, out: object) -> object:  # type: ignore[override]
        return self.drop(out) if isinstance(out, Tensor) else out


def add_dropout(model: nn.Module, p: float = 0.1, where: str | Sequence[str] = "head") -> nn.Module:
    """Give ``model`` ``nn.Dropout2d(p)`` layers (in place; returns it) without changing its parameters.

    ``where``: ``"head"`` drops the head's input, the decoder's feature channels (the usual place: in every
    seglab architecture the head makes the class scores, so this never drops a class), ``"decoder"`` the
    output of every decoder block (Bayesian SegNet's placement), any other name the output of that submodule
    (e.g. ``"decoder.blocks.0"``). The layers are registered as parameter-free submodules ``mc_dropout_<k>`` applied
    by forward hooks, so ``state_dict`` keys and deterministic (eval) outputs stay exactly as they were; only
    :class:`MCDropout` (or train mode) switches them on. A model trained without dropout gives a cruder
    posterior than one trained with it; prefer training with dropout where you can.
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout probability must be within [0, 1), got {p}")
    places = [where] if isinstance(where, str) else list(where)
    added = sum(1 for name, _ in model.named_children() if name.startswith("mc_dropout_"))
    for place in places:
        if place == "head":
            head = getattr(model, "head", None)
            if not isinstance(head, nn.Module):
                raise ConfigError(
                    f"{type(model).__name__} has no `head` submodule; name the module to follow with dropout"
                )
            drop = nn.Dropout2d(p).train(model.training)  # a model in eval mode stays deterministic
            model.add_module(f"mc_dropout_{added}", drop)
            head.register_forward_pre_hook(_DropInput(drop))
            added += 1
            continue
        if place == "decoder":
            targets = _decoder_blocks(model)
        else:
            try:
                targets = [model.get_submodule(place)]
            except AttributeError:
                raise ConfigError(
                    f"{type(model).__name__} has no submodule {place!r}; use 'head', 'decoder' or a module name"
                ) from None
        for target in targets:
            drop = nn.Dropout2d(p).train(model.training)
            model.add_module(f"mc_dropout_{added}", drop)
            target.register_forward_hook(_DropOutput(drop))
            added += 1
    return model


def _softmax(logits: Tensor, temperature: float, size: tuple[int, int] | None = None) -> Tensor:
    """softmax(logits / T), with ``size`` of the logits upsampled (bilinearly) to ``size`` first."""
    logits = logits.float()
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return (logits / temperature).softmax(1)


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}; refit it with `seglab calibrate`")
    return float(temperature)


class Predictor:
    """Callable ``images (N, C_in, H, W) -> UncertaintyResult``; subclasses yield the probability passes.

    ``size`` (H', W'): the result's size, for images the model sees resized (a checkpoint's ``resize``): every
    pass's logits are upsampled bilinearly to it before the softmax. Without it the result has the images' size.
    """

    def passes(self, images: Tensor, size: tuple[int, int] | None = None) -> Iterator[Tensor]:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, images: Tensor, size: tuple[int, int] | None = None) -> UncertaintyResult:
        stats = RunningStats()
        for probs in self.passes(images) if size is None else self.passes(images, size):
            stats.update(probs)
        return stats.result()


class Deterministic(Predictor):
    """One pass in eval mode: the ordinary prediction as an :class:`UncertaintyResult` (samples = 1)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        self.model, self.temperature = model, _check_temperature(temperature)

    def passes(self, images: Tensor, size: tuple[int, int] | None = None) -> Iterator[Tensor]:
        with eval_mode(self.model):
            yield _softmax(self.model(images), self.temperature, size)


class MCDropout(Predictor):
    """``samples`` stochastic passes with only the dropout layers sampling (batch norm stays in eval mode).

    With ``seed`` set, every call draws its dropout masks from a private RNG seeded with ``seed`` (the global
    RNG state is restored afterwards), so a prediction depends only on the input, not on what ran before.
    """

    def __init__(
        self, model: nn.Module, samples: int = 20, temperature: float = 1.0, seed: int | None = 0
    ) -> None:
        if samples < 1:
            raise ConfigError(f"MC dropout needs --samples >= 1, got {samples}")
        self.model, self.samples, self.seed = model, samples, seed
        self.temperature = _check_temperature(temperature)

    def passes(self, images: Tensor, size: tuple[int, int] | None = None) -> Iterator[Tensor]:
        with dropout_mode(self.model):
            if self.seed is None:
                for _ in range(self.samples):
                    yield _softmax(self.model(images), self.temperature, size)
                return
            devices = [images.device.index or 0] if images.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                for _ in range(self.samples):
                    yield _softmax(self.model(images), self.temperature, size)


class TTA(Predictor):
    """Test-time augmentation: for each scale and flip, predict on the transformed input and map the
    probabilities back (un-flip, resize to the input size, bilinear) before averaging.

    ``flips`` from ``none``, ``h`` (horizontal), ``v`` (vertical), ``hv`` (both); ``scales`` are resize factors.
    """

    def __init__(
        self,
        model: nn.Module,
        flips: Sequence[str] = ("none", "h", "v", "hv"),
        scales: Sequence[float] = (1.0,),
        temperature: float = 1.0,
    ) -> None:
        unknown = [f for f in flips if f not in FLIPS]
        if unknown or not flips:
            raise ConfigError(
                f"unknown TTA flip {unknown[0] if unknown else None!r}; choose from {', '.join(FLIPS)}"
            )
        if not scales or any(not s > 0 for s in scales):
            raise ConfigError(f"TTA scales must be > 0, got {list(scales)}")
        self.model, self.flips, self.scales = model, tuple(flips), tuple(float(s) for s in scales)
        self.temperature = _check_temperature(temperature)

    def passes(self, images: Tensor, size: tuple[int, int] | None = None) -> Iterator[Tensor]:
        """With ``size`` every pass's logits, un-flipped, are upsampled to ``size`` before the softmax; without,
        the probabilities of a scaled pass are resized to the input's size."""
        in_size = images.shape[-2:]
        with eval_mode(self.model):
            for scale in self.scales:
                x = images
                if scale != 1.0:
                    x = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
                for flip in self.flips:
                    dims = FLIPS[flip]
                    xf = x.flip(dims) if dims else x
                    logits = self.model(xf)
                    if size is not None:
                        yield _softmax(logits.flip(dims) if dims else logits, self.temperature, size)
                        continue
                    probs = _softmax(logits, self.temperature)
                    if dims:
                        probs = probs.flip(dims)
                    if probs.shape[-2:] != in_size:
                        probs = F.interpolate(probs, size=in_size, mode="bilinear", align_corners=False)
                    yield probs


class Ensemble(Predictor):
    """Deep ensemble: the probabilities of M models (same classes; architectures may differ), averaged.

    ``temperatures``: one per model (e.g. each checkpoint's fitted temperature); default 1.
    """

    def __init__(self, models: Sequence[nn.Module], temperatures: Sequence[float] | None = None) -> None:
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        temperatures = [1.0] * len(models) if temperatures is None else list(temperatures)
        if len(temperatures) != len(models):
            raise ConfigError(f"{len(models)} ensemble models but {len(temperatures)} temperatures")
        self.models = list(models)
        self.temperatures = [_check_temperature(t) for t in temperatures]

    def passes(self, images: Tensor, size: tuple[int, int] | None = None) -> Iterator[Tensor]:
        for model, t in zip(self.models, self.temperatures):
            with eval_mode(model):
                yield _softmax(model(images), t, size)
