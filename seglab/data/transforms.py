"""Paired image + mask transforms on torchvision transforms v2: geometry moves both, colour touches the image.

Images of any type and band count: the run's ``Normalization`` first maps raw values to the unit range (8-bit
images stay uint8 in the 8-bit modes, through exactly the pipeline seglab always had; any other image becomes
float32, never 8-bit), geometry then moves every band alike, and photometric changes are per band (``BandJitter``)
where ColorJitter's colour model does not apply.

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
    Normalization,
    default_normalization,
    needs_stats,
    parse_spec,
    resolve,
    stretch_image,
)
from seglab.errors import ConfigError


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


class BandJitter(v2.Transform):
    """Photometric augmentation of a float image on the unit range, for any band count: per band a random gamma
    (sign-preserving ``|x| ** g``, g = e ** U(-s, s)), contrast about the band's mean and brightness (factors
    U(1 - s, 1 + s)), and for three bands a colour saturation (a blend with the luminance). Nothing is clipped:
    the unit range of ``dataset`` normalisation holds values beyond 0..1, and they stay finite."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = float(strength)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        images = [x for x in flat_inputs if isinstance(x, tv_tensors.Image)]
        c = images[0].shape[-3] if images else 1
        s = self.strength

        def factors() -> torch.Tensor:
            return torch.empty(c).uniform_(max(0.0, 1 - s), 1 + s)

        return {
            "gamma": torch.exp(torch.empty(c).uniform_(-s, s)),
            "contrast": factors(),
            "brightness": factors(),
            "saturation": float(torch.empty(()).uniform_(max(0.0, 1 - s), 1 + s)) if c == 3 else None,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image) or not inpt.is_floating_point():
            return inpt
        x = inpt.as_subclass(torch.Tensor)
        shape = (-1, 1, 1)
        x = torch.sign(x) * x.abs().pow(params["gamma"].view(shape).to(x))
        mean = x.mean(dim=(-2, -1), keepdim=True)
        x = (x - mean) * params["contrast"].view(shape).to(x) + mean
        x = x * params["brightness"].view(shape).to(x)
        if params["saturation"] is not None:
            gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(shape).to(x)).sum(-3, keepdim=True)
            x = gray + params["saturation"] * (x - gray)
        return tv_tensors.wrap(x, like=inpt)


class PairedTransform:
    """Callable (image (H, W, C) raw, uint8, uint16 or float32; mask int64 (H, W)) -> (image float32 (C, H, W),
    mask int64 (H, W)): ``normalization.unit`` first, then ``ops`` (resize, geometry, inversion), the photometric
    ops for the unit image's type (``photometric[torch.uint8]`` or ``[torch.float32]``), then standardisation.

    An optional per-pixel weight map (H, W) moves with the mask (nearest neighbour) and comes back third,
    float32, with weight 0 wherever the mask is ``ignore_index``. An optional instance map (``instances``, H, W)
    moves alike and comes back last, int64, 0 where pixels came in from outside.
    """

    def __init__(
        self,
        ops: list[v2.Transform],
        normalization: Normalization,
        ignore_index: int = 255,
        resize: dict[str, Any] | None = None,
        photometric: dict[torch.dtype, list[v2.Transform]] | None = None,
    ) -> None:
        photometric = photometric or {}
        mean, std = normalization.mean, normalization.std
        self.pipelines = {
            torch.uint8: v2.Compose(
                [
                    *ops,
                    *photometric.get(torch.uint8, []),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(mean, std),
                ]
            ),
            torch.float32: v2.Compose([*ops, *photometric.get(torch.float32, []), v2.Normalize(mean, std)]),
        }
        self.normalization = normalization
        self.mean, self.std, self.ignore_index, self.resize = mean, std, ignore_index, resize

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        weight: np.ndarray | None = None,
        instances: np.ndarray | None = None,
    ) -> tuple:
        image = self.normalization.unit(image)  # uint8 (8-bit modes) or float32: never 8-bit from more bits
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        items: list[Any] = [img, tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).long())]
        if weight is not None:
            items.append(tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))))
        if instances is not None:
            items.append(InstanceMap(torch.from_numpy(np.ascontiguousarray(instances)).long()))
        out = [t.as_subclass(torch.Tensor) for t in self.pipelines[img.dtype](*items)]
        if weight is not None:
            out[2] = torch.where(out[1] == self.ignore_index, 0.0, out[2])
        return tuple(out)


def build_transform(
    cfg: DataConfig,
    in_channels: int,
    train: bool,
    ignore_index: int | None = None,
    normalization: Normalization | None = None,
) -> PairedTransform:
    """``normalization`` (the run's, or a checkpoint's) to the unit range and ``cfg.resize`` first, then for
    training the augmentation (scale, rotation, elastic, crop, flips, rot90, inversion, colour jitter; sizes such
    as ``crop_size`` are in pixels of the resized image); then standardisation. For evaluation (``train`` False)
    only the image is resized: the mask keeps its own size. ``normalization`` None resolves ``cfg.normalize``
    (with ``cfg.stretch``, ``cfg.mean``, ``cfg.std``) for 8-bit images, as before it existed.

    Mask pixels that geometry brings in from outside are ``ignore_index``: pass the data set's own (its
    classes.yaml may declare one other than ``cfg.ignore_index``, see ``ClassSpec``); None takes the config's."""
    if normalization is None:
        spec = parse_spec(cfg.normalize, cfg.stretch)
        if needs_stats(spec, "uint8", cfg.mean):
            raise ConfigError(
                f"data.normalize {spec['mode']} needs the training images' statistics: pass build_transform the "
                f"run's normalization (seglab.engine.data resolves it)"
            )
        normalization = resolve(spec, "uint8", in_channels, None, cfg.mean, cfg.std)
    ignore = cfg.ignore_index if ignore_index is None else ignore_index
    photometric: dict[torch.dtype, list[v2.Transform]] = {}
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
            photometric = {
                torch.uint8: [
                    v2.ColorJitter(brightness=j, contrast=j, saturation=j if in_channels == 3 else None)
                ],
                torch.float32: [BandJitter(j)],
            }
    return PairedTransform(ops, normalization, ignore, cfg.resize, photometric)


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
