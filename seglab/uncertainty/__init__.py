"""Uncertainty quantification for any seglab model: per-pixel uncertainty maps and calibration.

* ``functional``: entropy, expected entropy, mutual information, per-class variance, confidence (pure functions)
  and the running sums predictors stream into (:class:`UncertaintyResult`, :class:`RunningStats`).
* ``predictors``: :class:`Deterministic`, :class:`MCDropout` (+ :func:`add_dropout`), :class:`TTA`,
  :class:`Ensemble`; each maps images to an :class:`UncertaintyResult`.
* ``calibration``: ECE (equal-width and equal-mass bins), reliability data, NLL, Brier, error-detection AUROC
  and AURC, the streaming :class:`UncertaintyMeter`, and temperature scaling (:func:`fit_temperature`).
* ``build``: loading and checking the checkpoints of a predictor, heatmaps and ``.npz`` outputs. The predictor
  of a checkpoint is built by ``seglab.inference.build_predictor`` (with overlap-tile inference).

Names are imported lazily, so ``seglab.uncertainty.config`` stays free of torch for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "UncertaintyConfig": "config",
    "entropy": "functional",
    "predictive_entropy": "functional",
    "expected_entropy": "functional",
    "mutual_information": "functional",
    "class_variance": "functional",
    "max_confidence": "functional",
    "UncertaintyResult": "functional",
    "RunningStats": "functional",
    "uncertainty_from_moments": "functional",
    "Predictor": "predictors",
    "Deterministic": "predictors",
    "MCDropout": "predictors",
    "TTA": "predictors",
    "Ensemble": "predictors",
    "add_dropout": "predictors",
    "dropout_modules": "predictors",
    "dropout_mode": "predictors",
    "expected_calibration_error": "calibration",
    "reliability_diagram": "calibration",
    "negative_log_likelihood": "calibration",
    "brier_score": "calibration",
    "error_detection_auroc": "calibration",
    "aurc": "calibration",
    "UncertaintyMeter": "calibration",
    "fit_temperature": "calibration",
    "collect_logits": "calibration",
    "heatmap": "build",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"seglab.uncertainty.{_API[name]}"), name)
    raise AttributeError(f"module 'seglab.uncertainty' has no attribute {name!r}")
