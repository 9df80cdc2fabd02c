"""Inference, in one place: an image -> probabilities -> a mask, its overlay and palette.

Every consumer (``seglab predict``, ``evaluate``, ``serve``, the report, the training callbacks) imports this
package, never the predict command (``seglab.engine.predict``, which only reads and writes files): one code
path turns an image into probabilities.

* ``tiling``: overlap-tile inference (:func:`predict_tiled`, :class:`TiledModel`); only this package imports
  it (``tests/test_imports.py``).
* ``image``: one image -> probabilities (:func:`predict_probs`, :func:`image_probs`, with resize and size
  restore) -> labels (:func:`predict_labels`, :func:`predict_image`, :func:`threshold_labels`).
* ``palette``: a checkpoint's palette (:func:`palette_of`), the colour overlay (:func:`overlay`) and what
  pictures show of a 16-bit, float or multi-band image (:func:`shown`, ``--display-bands``).
* ``predictor``: checkpoints -> an uncertainty predictor (:func:`build_predictor`), the entry all consumers
  call; the predictors themselves live in ``seglab.uncertainty``.
"""

from __future__ import annotations

from seglab.inference.image import (
    ImagePrediction,
    image_probs,
    image_tensor,
    instance_object_class,
    normalise,
    predict_image,
    predict_labels,
    predict_probs,
    threshold_labels,
    upsample_rows,
)
from seglab.inference.palette import check_display_bands, overlay, palette_of, shown
from seglab.inference.predictor import build_predictor
from seglab.inference.tiling import TiledModel, iter_tiles, predict_tiled, tile_starts, tile_window

__all__ = [
    "ImagePrediction",
    "TiledModel",
    "build_predictor",
    "check_display_bands",
    "image_probs",
    "image_tensor",
    "instance_object_class",
    "iter_tiles",
    "normalise",
    "overlay",
    "palette_of",
    "predict_image",
    "predict_labels",
    "predict_probs",
    "predict_tiled",
    "shown",
    "threshold_labels",
    "tile_starts",
    "tile_window",
    "upsample_rows",
]
