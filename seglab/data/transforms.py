"""Paired image + mask transforms on torchvision transforms v2: geometry moves both, colour touches the image.

Masks are ``tv_tensors.Mask``, so v2 resamples them with nearest neighbour and fills new border pixels with
``ignore_index`` (excluded from loss and metrics).

``data.resize`` (see :func:`resized_size`) comes first: the image is resized bilinearly with antialiasing, the
mask with nearest neighbour in training only. Evaluation keeps the mask at its own size; the logits are brought
to it afterwards (``seglab.engine.evaluate``), and ``pad_collate(..., sizes=True)`` records each item's sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from seglab.config import DataConfig
from seglab.data.normalize import (  # noqa: F401 - their home is seglab.data.normalize
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_normalization,
    stretch_image,
)


def resized_size(h: int, w: int, resize: dict[str, Any] | None) -> tuple[int, int]:
    """(h, w) of an h x w image after ``resize`` (``data.resize``, checked): ``{"short": N}`` makes the short side
    N, ``{"long": N}`` the long side N, the other side in proportion; ``{"scale": F}`` multiplies both by F.
    Sides are rounded half up, and at least 1; None leaves the size as it is."""
    if not resize:
        return h, w
    ((kind, value),) = resize.items()
    factor = float(value) if kind == "scale" else value / (min(h, w) if kind == "short" else max(h, w))
    out = [max(1, math.floor(side * factor + 0.5)) for side in (h, w)]
    if kind != "scale":  # the named side is exactly N, whatever the rounding of the factor
        out[int(w < h) if kind == "short" else int(w > h)] = int(value)
    return out[0], out[1]


def crop_padding_note(
    sizes: Mapping[tuple[int, int], int], crop_size: int | None, resize: dict[str, Any] | None
) -> str | None:
    """Why ``crop_size`` is wasteful for images of ``sizes`` ((w, h) -> count, as a scan counts them) after
    ``resize``, or None when every image holds a whole crop. A crop beyond an image pads it with ignored pixels:
    the model computes on padding it learns nothing from (one run went from 1 s to 74 s an epoch)."""
    if not crop_size or not sizes:
        return None
    small = {(w, h): n for (w, h), n in sizes.items() if min(resized_size(h, w, resize)) < crop_size}
    if not small:
        return None
    h, w = min((resized_size(h, w, resize) for w, h in small), key=min)
    fits = min(min(resized_size(h, w, resize)) for w, h in sizes)
    return (
        f"data.crop_size {crop_size} is larger than {sum(small.values())} of {sum(sizes.values())} images (the "
        f"smallest is {w}x{h}{' after data.resize' if resize else ''}): every crop of one is padded with ignored "
        f"pixels to {crop_size}x{crop_size}, up to {crop_size**2 / (w * h):.1f}x the work for nothing; set "
        f"data.crop_size to at most {fits} (or null for whole images), or enlarge the images with data.resize"
    )


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An image (..., C, H, W), uint8 or float, resized to ``size`` bilinearly with antialiasing (what
    ``data.resize`` does to images, in training and at inference)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return v2.functional.resize(image, list(size), InterpolationMode.BILINEAR, antialias=True)


class Resize(v2.Transform):
    """``data.resize`` as a paired transform: the image bilinearly with antialiasing (:func:`resize_image`);
    masks (and weight maps, which are masks too) with nearest neighbour at pixel centres (``nearest-exact``:
    output pixel i takes input pixel floor((i + 0.5) * H / h)) when ``masks``, else untouched (evaluation)."""

    def __init__(self, resize: dict[str, Any], masks: bool = True) -> None:
        super().__init__()
        self.resize, self.masks = resize, masks

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        images = [x for x in flat_inputs if isinstance(x, tv_tensors.Image)]
        h, w = images[0].shape[-2:] if images else v2.query_size(flat_inputs)
        return {"size": resized_size(int(h), int(w), self.resize)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(resize_image(inpt.as_subclass(torch.Tensor), params["size"]), like=inpt)
        if isinstance(inpt, tv_tensors.Mask) and self.masks:
            return v2.functional.resize(inpt, list(params["size"]), InterpolationMode.NEAREST_EXACT)
        return inpt


class GridElastic(v2.ElasticTransform):
    """U-Net's elastic deformation: random displacements (std ``sigma`` px) on a coarse ``grid`` x ``grid``
    lattice, bicubically interpolated to a smooth per-pixel field (Ronneberger et al., 2015: 3 x 3, 10 px).

    One field per call moves image and mask alike; v2 resamples images bilinearly and masks with nearest
    neighbour, and fills pixels moved in from outside with ``fill`` (ignore_index for masks).
    """

    def __init__(self, sigma: float = 10.0, grid: int = 3, fill: Any = 0) -> None:
        super().__init__(fill=fill)
        self.sigma_px, self.grid = float(sigma), int(grid)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.sigma_px
        field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        # v2.functional.elastic adds the field to a [-1, 1] sampling grid: pixels -> normalised units.
        return {"displacement": torch.stack([field[:, 0] * 2 / w, field[:, 1] * 2 / h], dim=-1)}


class RandomRot90(v2.Transform):
    """Rotate image and mask alike by a random multiple of 90 degrees: exact (no resampling), and with the flips
    it gives all eight symmetries of the square, for data without a preferred orientation (EM, microscopy)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


class InstanceMap(tv_tensors.Mask):
    """An instance label map: resampled like a mask (nearest neighbour, ids kept) but filled with 0 (no object)
    where geometry brings pixels in from outside (v2 looks fills up by exact type)."""


class PairedTransform:
    """Callable (image uint8 (H, W, C), mask int64 (H, W)) -> (image float32 (C, H, W), mask int64 (H, W)).

    An optional per-pixel weight map (H, W) moves with the mask (nearest neighbour) and comes back third,
    float32, with weight 0 wherever the mask is ``ignore_index``. An optional instance map (``instances``, H, W)
    moves alike and comes back last, int64, 0 where pixels came in from outside.
    """

    def __init__(
        self,
        ops: list[v2.Transform],
        mean: list[float],
        std: list[float],
        ignore_index: int = 255,
        resize: dict[str, Any] | None = None,
        stretch: Any = None,
    ) -> None:
        self.pipeline = v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
        self.mean, self.std, self.ignore_index, self.resize = mean, std, ignore_index, resize
        self.stretch = stretch

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        weight: np.ndarray | None = None,
        instances: np.ndarray | None = None,
    ) -> tuple:
        image = stretch_image(image, self.stretch)
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        items: list[Any] = [img, tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).long())]
        if weight is not None:
            items.append(tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))))
        if instances is not None:
            items.append(InstanceMap(torch.from_numpy(np.ascontiguousarray(instances)).long()))
        out = [t.as_subclass(torch.Tensor) for t in self.pipeline(*items)]
        if weight is not None:
            out[2] = torch.where(out[1] == self.ignore_index, 0.0, out[2])
        return tuple(out)


def build_transform(
    cfg: DataConfig, in_channels: int, train: bool, ignore_index: int | None = None
) -> PairedTransform:
    """``cfg.stretch`` (of the whole image) and ``cfg.resize`` first, then for training the augmentation (scale,
    rotation, elastic, crop, flips, rot90, inversion, colour jitter; sizes such as ``crop_size`` are in pixels of the resized image); then scaling to 0..1 and
    normalisation. For evaluation (``train`` False) only the image is resized: the mask keeps its own size.

    Mask pixels that geometry brings in from outside are ``ignore_index``: pass the data set's own (its
    classes.yaml may declare one other than ``cfg.ignore_index``, see ``ClassSpec``); None takes the config's."""
    mean, std = default_normalization(in_channels)
    mean, std = cfg.mean or mean, cfg.std or std
    ignore = cfg.ignore_index if ignore_index is None else ignore_index
    ops: list[v2.Transform] = [Resize(cfg.resize, masks=train)] if cfg.resize else []
    if train:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore, InstanceMap: 0}
        if cfg.scale != (1.0, 1.0) or cfg.rotation:
            ops.append(v2.RandomAffine(degrees=cfg.rotation, scale=cfg.scale, fill=fill))
        if cfg.elastic:
            ops.append(GridElastic(cfg.elastic, cfg.elastic_grid, fill=fill))
        if cfg.crop_size:
            ops.append(v2.RandomCrop(cfg.crop_size, pad_if_needed=True, fill=fill))
        if cfg.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if cfg.vflip:
            ops.append(v2.RandomVerticalFlip())
        if cfg.rot90:
            ops.append(RandomRot90())
        if cfg.invert:
            ops.append(v2.RandomInvert(cfg.invert))
        if cfg.color_jitter:
            j = cfg.color_jitter
            ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j if in_channels == 3 else None))
    return PairedTransform(ops, mean, std, ignore, cfg.resize, cfg.stretch)


def pad_collate(ignore_index: int, sizes: bool = False):
    """Collate (image, mask[, weight][, instances]) items of different sizes: pad images, weights and instance
    maps with 0, masks with ``ignore_index`` (each at the top left of its padded tensor).

    With ``sizes`` the batch gains a last element, int64 (N, 4): each item's image (h, w) and mask (H, W) before
    padding; evaluation of resized images (``data.resize``) needs them to crop and upsample each image's logits.
    """

    def collate(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        fills = (0.0, ignore_index, *(0.0,) * (len(batch[0]) - 2))  # weights and instance maps: 0
        out = []
        for k, fill in enumerate(fills):
            first = batch[0][k]
            h = max(item[k].shape[-2] for item in batch)
            w = max(item[k].shape[-1] for item in batch)
            stacked = torch.full((len(batch), *first.shape[:-2], h, w), fill, dtype=first.dtype)
            for i, item in enumerate(batch):
                stacked[i, ..., : item[k].shape[-2], : item[k].shape[-1]] = item[k]
            out.append(stacked)
        if sizes:
            out.append(torch.tensor([[*item[0].shape[-2:], *item[1].shape[-2:]] for item in batch]))
        return tuple(out)

    return collate
