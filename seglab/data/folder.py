"""Folder data sets as items: ``FolderDataset`` reads the pairs that a scan found (``seglab.data.scan``) and
decodes their masks through the classes (``seglab.data.classes``), before the paired transforms.

The scan and the classes lived here once; their names are re-exported so that ``seglab.data.folder`` imports
keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.classes import INTERIOR_BOUNDARY, MASK_FORMATS, ClassSpec, decode_mask
from seglab.data.io import default_palette, read_image, read_mask_raw
from seglab.data.scan import (
    MAX_SCAN_CACHES,
    SCAN_CACHE_VERSION,
    SPLITS,
    FolderScan,
    instance_mode_message,
    scan_cache_dir,
    scan_folder,
)
from seglab.errors import DataError

__all__ = [
    "INTERIOR_BOUNDARY",
    "MASK_FORMATS",
    "MAX_SCAN_CACHES",
    "SCAN_CACHE_VERSION",
    "SPLITS",
    "ClassSpec",
    "FolderDataset",
    "FolderScan",
    "decode_mask",
    "scan_cache_dir",
    "scan_folder",
]


class FolderDataset:
    """A split of a folder data set: ``ds[i]`` -> ``transform(image (H, W, C), mask int64 (H, W))``, the image
    as ``read_image`` gives it (uint8, uint16 or float32: the transform normalises it).

    Without a transform the numpy arrays come back as they are. ``num_classes`` (e.g. from a checkpoint)
    overrides the inferred class count for index masks. Decoded arrays are cached in memory when ``cache``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        *,
        ignore_index: int = 255,
        val_ratio: float = 0.1,
        test_ratio: float = 0.1,
        split_seed: int = 0,
        split_lists: dict[str, list[str]] | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
        cache: bool = True,
        scan: FolderScan | None = None,
        weight_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        instances: bool = False,
        target: str = "mask",
        boundary_width: int = 2,
    ) -> None:
        self.scan = scan if scan is not None else scan_folder(root, ignore_index)
        self.scan.raise_problems(classes_known=num_classes is not None)
        spec = self.scan.classes
        assert spec is not None
        self.instances, self.target, self.boundary_width = instances, target, boundary_width
        if (instances or target == "interior_boundary") and self.scan.instances is None:
            why = "data.target interior_boundary" if target == "interior_boundary" else "instance evaluation"
            raise DataError(
                f"{why} needs instance maps in {self.scan.root / 'instances'} (one label map per image, paired "
                f"by stem, 0 = no object)"
            )
        if target == "interior_boundary":  # the three classes made from the instance maps
            spec = ClassSpec(list(INTERIOR_BOUNDARY), default_palette(3), "index", spec.ignore_index)
        if num_classes is not None and num_classes != spec.num_classes:
            if spec.mask_format != "index" or num_classes < spec.num_classes:
                raise DataError(
                    f"{self.scan.root} has {spec.num_classes} classes ({', '.join(spec.names)}) "
                    f"but {num_classes} are expected (e.g. by the checkpoint)"
                )
            spec = ClassSpec(
                [*spec.names, *(f"class{i}" for i in range(spec.num_classes, num_classes))],
                default_palette(num_classes),
                "index",
                spec.ignore_index,
            )
        self.classes = spec
        self.split = split
        self.stems = self.scan.split(split, val_ratio, test_ratio, split_seed, split_lists)
        self.in_channels = in_channels or self.scan.in_channels
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.weight_fn = weight_fn
        self._weights: dict[int, np.ndarray] = {}
        self._instances: dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def ignore_index(self) -> int:
        return self.classes.ignore_index

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded (image (H, W, C) in its own type, mask int64 (H, W)) of item ``index``, before any transform."""
        if index in self._cache:
            return self._cache[index]
        stem = self.stems[index]
        image = read_image(self.scan.images[stem], self.in_channels)
        spec = self.scan.classes if self.target == "interior_boundary" else self.classes
        assert spec is not None
        mask = decode_mask(read_mask_raw(self.scan.masks[stem]), spec, self.scan.masks[stem])
        if image.shape[:2] != mask.shape:
            raise DataError(f"image {self.scan.images[stem]} and its mask differ in size; they must match")
        if self.target == "interior_boundary":
            mask = self._target(self.load_instances(index), mask)
        if self.cache:
            self._cache[index] = (image, mask)
        return image, mask

    def load_instances(self, index: int) -> np.ndarray:
        """The instance label map int64 (H, W) of item ``index`` (0 = no object), before any transform."""
        if index in self._instances:
            return self._instances[index]
        assert self.scan.instances is not None
        path = self.scan.instances[self.stems[index]]
        raw = read_mask_raw(path)
        if raw.ndim != 2:
            raise DataError(instance_mode_message(path, "RGB"))
        inst = raw.astype(np.int64)
        if self.cache:
            self._instances[index] = inst
        return inst

    def _target(self, instances: Any, mask: Any) -> Any:
        """The interior/boundary target of an instance map (NumPy or torch), ignore_index where ``mask`` has it."""
        from seglab.instances.postprocess import interior_boundary_target

        is_tensor = hasattr(instances, "numpy")
        target = interior_boundary_target(instances, width=self.boundary_width)
        ignored = (mask.numpy() if is_tensor else mask) == self.ignore_index
        target[ignored] = self.ignore_index
        if is_tensor:
            import torch

            return torch.from_numpy(target)
        return target

    def weight(self, index: int, mask: np.ndarray) -> np.ndarray:
        """``weight_fn(mask)`` (e.g. the U-Net border map), computed on the untransformed mask and cached."""
        assert self.weight_fn is not None
        if index in self._weights:
            return self._weights[index]
        w = np.asarray(self.weight_fn(mask), dtype=np.float32)
        if self.cache:
            self._weights[index] = w
        return w

    def __getitem__(self, index: int) -> Any:
        """(image, mask), or (image, mask, weight) with a ``weight_fn``, through the transform if any; with
        ``instances`` the instance map comes last (transformed alike: nearest neighbour, ids kept, 0 filled in).

        With ``target`` interior_boundary the mask is the three-class target, made from the instance map after
        the transform (so the boundary band is ``boundary_width`` px of the augmented image)."""
        image, mask = self.load(index)
        arrays = (image, mask) if self.weight_fn is None else (image, mask, self.weight(index, mask))
        inst = self.load_instances(index) if self.instances or self.target == "interior_boundary" else None
        if self.transform is None:
            out = [*arrays]
        else:
            out = list(self.transform(*arrays, instances=inst))
            if inst is not None:
                inst = out.pop()
                if self.target == "interior_boundary":
                    out[1] = self._target(inst, out[1])
        if self.instances:
            out.append(inst)
        return tuple(out)
