"""Normalisation: raw image values (8-bit, 16-bit, float; any number of bands) -> the float input of a model.

Two affine steps per band, recorded in the checkpoint (``Normalization.to_dict``) and applied alike by training,
predict, evaluate, serve, export and the report:

1. **unit range**: ``u = (x - lo) / (hi - lo)``, so the values of interest span about 0..1. Augmentation acts
   here (brightness, contrast, gamma are defined on it), and pictures show it (``display``);
2. **standardise**: ``(u - mean) / std``.

``data.normalize`` chooses where ``lo``/``hi`` and ``mean``/``std`` come from (``resolve``):

- ``imagenet``: ``lo`` 0 and ``hi`` 255, ImageNet's mean and std (or ``data.mean``/``data.std``). The 8-bit
  default, exactly what seglab always did (an 8-bit image goes through it in uint8, bit for bit as before);
- ``dataset``: per band, ``lo``/``hi`` the ``percentiles`` (default 0.5 and 99.5) of the training split's
  pixels and ``mean``/``std`` theirs: a z-score per band with the data's own statistics (nnU-Net's scheme). The
  default for any other image type: a 12-bit camera in a 16-bit file is scaled by its own range, not by 65535;
- ``image``: each image's own ``percentiles`` (default 1 and 99.8, over all bands, so colours keep their
  balance) as ``lo``/``hi``: a contrast stretch per image (``data.stretch`` is this mode);
- ``range``: a fixed ``range: [lo, hi]`` for every band (or per band), e.g. [0, 4095] for a 12-bit camera.

Outside ``imagenet`` and ``image`` the mean and std are the training split's (of the unit-range values) unless
``data.mean``/``data.std`` name them. Values beyond ``lo``/``hi`` are kept (``clip: true`` clips them to the
unit range); NaN and infinities (no-data) become ``lo``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from seglab.config import NORMALIZE_MODES as MODES  # noqa: F401 - the config checks data.normalize on load
from seglab.config import STAT_PERCENTILES
from seglab.config import parse_normalize_spec as parse_spec  # noqa: F401 - (re-exported, as MODES)
from seglab.config import percentile_key as _key
from seglab.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASET_PERCENTILES = (0.5, 99.5)
IMAGE_PERCENTILES = (1.0, 99.8)
FLOAT_SAMPLE = (
    1 << 20
)  # pixels per band kept, spread evenly over the images, for the percentiles of float data


def default_normalization(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet statistics for RGB; their average for any other band count."""
    if in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [float(np.mean(IMAGENET_MEAN))] * in_channels, [float(np.mean(IMAGENET_STD))] * in_channels


@dataclass
class BandStats:
    """Per-band statistics of a set of images, raw values: what ``data check`` prints and ``dataset`` uses.

    Exact for 8- and 16-bit images (a histogram of every pixel); for float images the mean and std are exact
    and the percentiles are of an even sample of up to ``FLOAT_SAMPLE`` pixels per band."""

    dtype: str
    images: int
    pixels: int
    min: list[float]
    max: list[float]
    mean: list[float]
    std: list[float]
    percentiles: dict[str, list[float]] = field(default_factory=dict)  # "99.5" -> one value per band

    @property
    def bands(self) -> int:
        return len(self.mean)

    def percentile(self, q: float) -> list[float]:
        key = _key(q)
        if key not in self.percentiles:
            raise ConfigError(
                f"the {q}th percentile was not computed; percentiles are one of {', '.join(map(str, STAT_PERCENTILES))}"
            )
        return self.percentiles[key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandStats:
        return cls(**d)


_LEVELS = np.arange(65536, dtype=np.float64)  # the values of an integer image's histogram bins


def band_stats(images: Iterable[np.ndarray], percentiles: Sequence[float] = STAT_PERCENTILES) -> BandStats:
    """``BandStats`` of (H, W, C) images (``read_image``'s), all with the same bands. Integer images are
    histogrammed exactly; float images are summed exactly and sampled evenly for the percentiles."""
    hist: np.ndarray | None = None
    sums = sq = None
    lo = hi = None
    samples: list[np.ndarray] = []
    n_images = n_pixels = 0
    dtype = "uint8"
    arrays = list(images) if not isinstance(images, list) else images
    total = sum(a.shape[0] * a.shape[1] for a in arrays)
    for arr in arrays:
        c = arr.shape[2]
        flat = arr.reshape(-1, c)
        n_images += 1
        n_pixels += flat.shape[0]
        if arr.dtype == np.uint16:
            dtype = "uint16" if dtype != "float32" else dtype
        elif arr.dtype != np.uint8:
            dtype = "float32"
        take = max(1, math.ceil(FLOAT_SAMPLE * flat.shape[0] / max(total, 1)))
        step = max(1, flat.shape[0] // take)
        if arr.dtype in (np.uint8, np.uint16):
            h = np.stack([np.bincount(flat[:, b], minlength=65536) for b in range(c)])
            hist = h if hist is None else hist + h
            # the same exact sums from the histogram: reductions over the (pixels, bands) axis of a float copy
            # of every value took 20x longer for 3 bands
            counts = h.astype(np.float64)  # (exact: counts < 2**53; no BLAS, whose threads cost more here)
            s, q = (counts * _LEVELS).sum(1), (counts * _LEVELS**2).sum(1)
            present = h > 0
            mn = present.argmax(1).astype(np.float64)
            mx = (65535 - present[:, ::-1].argmax(1)).astype(np.float64)
            samples.append(flat[::step].astype(np.float64))
        else:
            values = flat.astype(np.float64)
            finite = np.isfinite(values)
            values = np.where(finite, values, np.nan)
            s, q = np.nansum(values, 0), np.nansum(values**2, 0)
            mn, mx = np.nanmin(values, 0), np.nanmax(values, 0)
            samples.append(values[::step])
        sums = s if sums is None else sums + s
        sq = q if sq is None else sq + q
        lo = mn if lo is None else np.fmin(lo, mn)
        hi = mx if hi is None else np.fmax(hi, mx)
    if not arrays or sums is None:
        raise ConfigError("no images to compute statistics of")
    count = np.array([n_pixels] * len(sums), dtype=np.float64)
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    pct: dict[str, list[float]] = {}
    for q in percentiles:
        if dtype != "float32" and hist is not None:
            cumulative = np.cumsum(hist, axis=1)
            # the smallest value v with at least q % of the pixels <= v (NumPy's method="inverted_cdf")
            pct[_key(q)] = [float(np.searchsorted(cum, max(q / 100 * cum[-1], 1))) for cum in cumulative]
        else:
            sample = np.concatenate(samples)
            pct[_key(q)] = [float(v) for v in np.nanpercentile(sample, q, axis=0, method="inverted_cdf")]
    return BandStats(
        dtype,
        n_images,
        n_pixels,
        [float(v) for v in lo],
        [float(v) for v in hi],
        [float(v) for v in mean],
        [float(v) for v in std],
        pct,
    )


@dataclass
class Normalization:
    """The resolved normalisation of a model (see the module doc): per band ``lo``, ``hi`` (empty in ``image``
    mode: each image gives its own), ``mean`` and ``std`` of the unit-range values."""

    mode: str
    lo: list[float]
    hi: list[float]
    mean: list[float]
    std: list[float]
    percentiles: list[float] | None = None  # image mode: of each image; dataset: which ones lo and hi are
    clip: bool = False

    @property
    def bands(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(**d)

    @classmethod
    def legacy(
        cls, mean: Sequence[float], std: Sequence[float], stretch: Sequence[float] | None
    ) -> Normalization:
        """What a checkpoint written before ``data.normalize`` did: /255 (after its ``data.stretch``, if any)."""
        n = len(mean)
        if stretch:
            return cls("image", [], [], list(mean), list(std), [float(v) for v in stretch])
        return cls("imagenet", [0.0] * n, [255.0] * n, list(mean), list(std))

    def keeps_uint8(self, dtype: Any) -> bool:
        """Whether an 8-bit image goes through in uint8 (``imagenet``, and ``image`` by its 256-bin stretch):
        bit for bit what seglab did before 16-bit images existed."""
        return np.dtype(dtype) == np.uint8 and self.mode in ("imagenet", "image")

    def bounds(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) per band for ``image`` (H, W, C): the fixed ones, or the image's own percentiles."""
        c = image.shape[2]
        if self.mode != "image":
            return np.asarray(self.lo, np.float64), np.asarray(self.hi, np.float64)
        p = self.percentiles or IMAGE_PERCENTILES
        lo, hi = np.nanpercentile(image.astype(np.float32), p, method="inverted_cdf")
        return np.full(c, lo, np.float64), np.full(c, hi, np.float64)

    def unit(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) raw values -> the unit range: uint8 (H, W, C) when ``keeps_uint8`` (0..255 stands for 0..1,
        the stretch is the 256-bin one of ``data.stretch``), else float32 (H, W, C)."""
        if image.shape[2] != self.bands:
            raise ConfigError(
                f"an image of {image.shape[2]} band(s) met a normalisation of {self.bands}; the model was trained "
                f"on {self.bands}-band images"
            )
        if self.keeps_uint8(image.dtype):
            return stretch_image(image, self.percentiles) if self.mode == "image" else image
        lo, hi = self.bounds(image)
        span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
        out = image.astype(np.float32)  # exact for 16-bit values; one float32 pass per training item
        out -= lo.astype(np.float32)
        out /= span
        out[~np.isfinite(out)] = 0.0
        if self.clip:
            np.clip(out, 0.0, 1.0, out=out)
        return out

    def display(self, image: np.ndarray, bands: Sequence[int] | None = None) -> np.ndarray:
        """uint8 (H, W, 1 or 3) to show ``image``: its unit range over 0..255, clipped. ``bands`` (0-based; one
        or three) picks what is shown; by default the first three of three or more bands, else the first."""
        unit = self.unit(image)
        if unit.dtype != np.uint8:
            unit = (np.clip(unit, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        c = unit.shape[2]
        chosen = list(bands) if bands else ([0, 1, 2] if c >= 3 else [0])
        bad = [b + 1 for b in chosen if not 0 <= b < c]
        if bad or len(chosen) not in (1, 3):
            raise ConfigError(
                f"--display-bands takes one or three of the image's bands 1..{c} (e.g. 4,3,2), not "
                f"{','.join(str(b + 1) for b in chosen)}"
            )
        return np.ascontiguousarray(unit[..., chosen])


def stretch_image(image: np.ndarray, percentiles: Any = None) -> np.ndarray:
    """uint8 (H, W, C) with the intensities from the ``lo``-th to the ``hi``-th percentile of the whole image
    (all channels together, so colours keep their balance) spread linearly over 0..255, clipped (``data.stretch``;
    a contrast stretch, as microscopy tools normalise each image by its percentiles). None, or an image whose two
    percentiles coincide, comes back as it is. Percentiles of the 256-bin histogram: exact and fast for uint8."""
    if not percentiles:
        return image
    cumulative = np.cumsum(np.bincount(image.reshape(-1), minlength=256))
    # the smallest value v with at least q % of the pixels <= v (NumPy's percentile, method="inverted_cdf")
    lo, hi = (int(np.searchsorted(cumulative, max(q / 100 * cumulative[-1], 1))) for q in percentiles)
    if hi <= lo:
        return image
    lut = np.clip((np.arange(256) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    return lut[image]


def needs_stats(spec: dict[str, Any], dtype: str, mean: Any = None) -> bool:
    """Whether resolving ``spec`` (``parse_spec``'s) for images of ``dtype`` needs the training split's
    ``BandStats``."""
    mode = effective_mode(spec, dtype)
    return mode == "dataset" or (mode == "range" and mean is None)


def effective_mode(spec: dict[str, Any], dtype: str) -> str:
    """``auto`` made concrete: ``imagenet`` for 8-bit images, ``dataset`` for any other type."""
    mode = spec.get("mode", "auto")
    if mode == "auto":
        return "imagenet" if dtype == "uint8" else "dataset"
    if mode == "imagenet" and dtype != "uint8":
        raise ConfigError(
            f"data.normalize imagenet divides 8-bit values by 255, but the images are {dtype}: use dataset (the "
            f"default for them), range or image"
        )
    return mode


def resolve(
    spec: dict[str, Any],
    dtype: str,
    bands: int,
    stats: BandStats | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Normalization:
    """The ``Normalization`` of ``spec`` (``parse_spec``'s) for images of ``dtype`` and ``bands``; ``stats``:
    the training split's (``needs_stats``); ``mean``/``std``: ``data.mean``/``data.std`` when given."""
    mode = effective_mode(spec, dtype)
    clip = bool(spec.get("clip", False))
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != bands:
            raise ConfigError(f"data.{name} has {len(values)} values but the images have {bands} band(s)")
    if mode in ("imagenet", "image"):
        m, s = default_normalization(bands)
        m, s = list(mean or m), list(std or s)
        if mode == "imagenet":
            return Normalization("imagenet", [0.0] * bands, [255.0] * bands, m, s, None, clip)
        return Normalization("image", [], [], m, s, list(spec.get("percentiles") or IMAGE_PERCENTILES), clip)
    if mode == "range":
        lo, hi = ([float(v)] * bands for v in spec["range"])
        p = None
    else:
        assert stats is not None, "dataset normalisation needs the training split's statistics"
        p = list(spec.get("percentiles") or DATASET_PERCENTILES)
        lo, hi = stats.percentile(p[0]), stats.percentile(p[1])
        hi = [h if h > low else low + 1.0 for low, h in zip(lo, hi)]  # a constant band: a span of one unit
    if stats is not None and stats.bands != bands:
        raise ConfigError(f"the statistics are of {stats.bands} band(s) but the images have {bands}")
    if mean is None or std is None:
        if stats is None:
            m, s = [0.5] * bands, [0.25] * bands
        else:
            m = [(mu - a) / (b - a) for mu, a, b in zip(stats.mean, lo, hi)]
            s = [max(sd / (b - a), 1e-6) for sd, a, b in zip(stats.std, lo, hi)]
        mean, std = mean or m, std or s
    return Normalization(mode, lo, hi, [float(v) for v in mean], [float(v) for v in std], p, clip)


def describe(norm: Normalization, dtype: str) -> str:
    """One line on what ``norm`` does to images of ``dtype`` (``data check`` and ``plan`` print it)."""
    if norm.mode == "imagenet":
        return "values / 255, then ImageNet mean and std"
    if norm.mode == "image":
        lo, hi = norm.percentiles or IMAGE_PERCENTILES
        return f"each image's {lo:g}th..{hi:g}th percentile (all bands) -> 0..1, then mean {norm.mean[0]:.3g} std {norm.std[0]:.3g}"
    bands = "; ".join(
        f"band {i + 1}: {a:g}..{b:g} -> 0..1, mean {m:.3g} std {s:.3g}"
        for i, (a, b, m, s) in enumerate(zip(norm.lo, norm.hi, norm.mean, norm.std))
    )
    where = (
        f"the training images' {norm.percentiles[0]:g}th..{norm.percentiles[1]:g}th percentiles"
        if norm.mode == "dataset" and norm.percentiles
        else "a fixed range"
    )
    return f"{norm.mode} ({where}{', clipped' if norm.clip else ''}): {bands}"
