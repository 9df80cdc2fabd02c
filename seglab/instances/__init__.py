"""Instances: semantic output -> instance label maps, and the instance metrics.

- ``postprocess``: pure functions on arrays or tensors: ``components`` (the baseline: touching objects merge),
  ``watershed`` (distance transform + h-maxima seeds), ``learned`` (seeds and split from a learned boundary),
  ``interior_boundary_target`` (the three-class target made from instance maps), overlays.
- ``infer``: a model's probabilities -> labels, as predict, evaluate and the benchmarks do it (``InstanceParams``).
- ``metrics``: DSB 2018 score, precision/recall/F1 at IoU 0.5, AJI, PQ and the adapted Rand error, per image
  and streaming (``InstanceMeter``).

Importing this package loads nothing; ``seglab.instances.metrics`` loads torch, SciPy and scikit-image load
inside the functions.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOME = {
    "METHODS": "infer",
    "InstanceParams": "infer",
    "instances_from_probs": "infer",
    "InstanceMeter": "metrics",
    "aji": "metrics",
    "dsb_score": "metrics",
    "image_scores": "metrics",
    "match_counts": "metrics",
    "panoptic_quality": "metrics",
    "components": "postprocess",
    "instance_overlay": "postprocess",
    "interior_boundary_target": "postprocess",
    "learned": "postprocess",
    "watershed": "postprocess",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (the CLI reads ``infer.METHODS`` without loading torch)."""
    if name in _HOME:
        return getattr(import_module(f"seglab.instances.{_HOME[name]}"), name)
    raise AttributeError(f"module 'seglab.instances' has no attribute {name!r}")
