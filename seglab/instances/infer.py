"""A model's class probabilities -> an instance label map, the one step shared by predict, evaluate and the
benchmarks: which probability is "object" depends on what the model learnt (``CheckpointMeta.target``).

- ``data.target: mask`` models: the object probability is that of one class (``object_class``; class 1 of a
  two-class model: the nucleus of DSB 2018, the cell of ISBI 2012). ``learned`` seeds on the confident object
  pixels (>= ``seed_threshold``) and floods 1 - P(object): for a model that learnt the separator itself (the
  membrane of ISBI 2012), its probability is where objects part.
- ``data.target: interior_boundary`` models: the object probability is P(interior) + P(boundary) =
  1 - P(background); ``learned`` seeds on P(interior) and splits on the boundary band.

``fill`` gives every pixel an object (cells tile an EM slice; the membranes are split between neighbours).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglab.errors import ConfigError

METHODS = ("components", "watershed", "learned")


@dataclass
class InstanceParams:
    """Post-processing settings (pixels are those of the label map). Defaults were chosen before any test
    image was scored; ``fill`` suits EM, where cells tile the image and membranes belong to no object."""

    threshold: float = 0.5  # object probability at which a pixel belongs to an object
    min_size: int = 8  # smaller objects are dropped (px)
    h: float = 2.0  # watershed: seeds are the h-maxima of the distance to the background (px)
    seed_threshold: float = 0.5  # learned: interior probability of a seed pixel
    fill: bool = (
        False  # watershed, learned: every pixel gets an object (the background split between neighbours)
    )

    @classmethod
    def parse(cls, items: list[str] | None) -> InstanceParams:
        """From ``KEY=VALUE`` strings (``--instance-param``); ConfigError naming a bad key or value."""
        params = cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for item in items or []:
            key, sep, value = item.partition("=")
            if not sep or key not in fields:
                raise ConfigError(
                    f"--instance-param {item!r}: use KEY=VALUE with KEY one of {', '.join(fields)}"
                )
            kind = type(getattr(params, key))
            try:
                parsed: Any = (
                    value.lower() in ("1", "true", "yes", "on") if kind is bool else kind(float(value))
                )
            except ValueError:
                raise ConfigError(f"--instance-param {key} must be a number, got {value!r}") from None
            if kind is bool and value.lower() not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise ConfigError(f"--instance-param {key} must be true or false, got {value!r}")
            setattr(params, key, parsed)
        if not 0 < params.threshold < 1 or not 0 < params.seed_threshold < 1:
            raise ConfigError("--instance-param threshold and seed_threshold must be in (0, 1)")
        if params.min_size < 0 or params.h <= 0:
            raise ConfigError("--instance-param min_size must be >= 0 and h > 0")
        return params


def object_class_of(class_names: list[str], target: str, object_class: int | None) -> int | None:
    """The class whose probability is "object" for a ``mask`` model (``object_class``, an index the caller
    resolved from a name, or class 1 of two); None for an interior_boundary model (whose object probability is
    1 - P(background)). ConfigError if it is ambiguous."""
    if target == "interior_boundary":
        return None
    if object_class is not None:
        return object_class
    if len(class_names) != 2:
        raise ConfigError(
            f"the model has {len(class_names)} classes ({', '.join(class_names)}); name the class whose objects "
            f"are the instances with --instance-class"
        )
    return 1


def check_method(method: str) -> None:
    """ConfigError for an unknown method."""
    if method not in METHODS:
        raise ConfigError(f"--instances {method!r}: choose one of {', '.join(METHODS)}")


def instances_from_probs(
    probs: Any,
    method: str,
    *,
    target: str = "mask",
    object_class: int | None = 1,
    params: InstanceParams | None = None,
) -> np.ndarray:
    """Instance labels int32 (H, W) (0 = none, 1..K) from class probabilities (C, H, W) (array or tensor)."""
    from seglab.instances import postprocess as pp

    check_method(method)
    p = params or InstanceParams()
    probs = probs.detach().float().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    if target == "interior_boundary":
        foreground = np.clip(1.0 - probs[0], 0.0, 1.0)
    else:
        assert object_class is not None
        foreground = probs[object_class]
    if method == "components":
        return pp.components(foreground, threshold=p.threshold, min_size=p.min_size)
    if method == "watershed":
        return pp.watershed(foreground, threshold=p.threshold, h=p.h, min_size=p.min_size, fill=p.fill)
    interior = probs[1] if target == "interior_boundary" else foreground
    if p.fill:
        foreground = np.ones_like(foreground)
    return pp.learned(
        interior,
        foreground,
        seed_threshold=p.seed_threshold,
        threshold=p.threshold,
        min_seed_size=p.min_size,
        min_size=p.min_size,
    )
