"""Build the training data: the folder scan (every file checked once, cached), the splits, the loaders.

Augmentation is seeded per item: the sampler hands the dataset ``(seed, index)`` pairs, and each item's transform
runs on the CPU random stream forked and seeded from that pair. So the batches of an epoch depend only on
(``train.seed``, epoch) — not on ``num_workers``, not on the model's use of the random stream (dropout), and not
on where a run was resumed.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from seglab.config import Config, check_class_weights
from seglab.data.folder import ClassSpec, FolderDataset, FolderScan, scan_folder
from seglab.data.normalize import Normalization, needs_stats, parse_spec, resolve
from seglab.data.scan import band_stats_of
from seglab.data.transforms import build_transform, crop_padding_note, pad_collate
from seglab.engine.distributed import Dist, ShardSampler
from seglab.errors import ConfigError, DataError


class EpochSampler(Sampler):
    """``num_samples`` draws per epoch as (item seed, index) pairs: whole permutations of the data set, then part
    of one, all drawn from a generator seeded by (seed, epoch); ``set_epoch`` picks the epoch.

    Distributed (``world_size`` > 1; it is then the DistributedSampler of seglab): every rank draws the same
    sequence, keeps the whole global batches of ``batch_size`` and takes every ``world_size``-th pair from
    ``rank``, as torch's DistributedSampler does. Local batch k of every rank then holds exactly the items of
    global batch k of one process, and every rank gets the same number of batches.
    """

    def __init__(
        self,
        size: int,
        num_samples: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
    ) -> None:
        self.size, self.num_samples, self.seed, self.epoch = size, num_samples, seed, 0
        self.rank, self.world_size = rank, world_size
        self.kept = num_samples if world_size == 1 else num_samples // batch_size * batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.kept // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_019 + self.epoch)
        order = torch.cat(
            [torch.randperm(self.size, generator=gen) for _ in range(-(-self.num_samples // self.size))]
        )
        seeds = torch.randint(2**62, (self.num_samples,), generator=gen)
        pairs = list(zip(seeds.tolist(), order[: self.num_samples].tolist()))
        return iter(pairs[: self.kept][self.rank :: self.world_size])


class SeededItems(Dataset):
    """``ds[(seed, i)]`` is ``dataset[i]`` drawn with the CPU random stream seeded by ``seed`` (and restored after,
    so the caller's stream is untouched)."""

    def __init__(self, dataset: FolderDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


@dataclass
class TrainData:
    """The splits, their loaders and what the masks mean."""

    train: FolderDataset
    val: FolderDataset
    spec: ClassSpec
    in_channels: int
    class_names: list[str]
    mean: list[float]  # the normalisation's (``normalization.mean``)
    std: list[float]
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: EpochSampler
    batch_size: int  # per process (the global batch over the processes of a distributed run)
    batches_per_epoch: int
    normalization: Normalization | None = None  # the run's: in the checkpoint, and every transform's


def run_normalization(cfg: Config, scan: FolderScan, train_stems: list[str]) -> Normalization:
    """The run's ``Normalization``: ``data.normalize`` (with ``data.stretch``, ``data.mean``, ``data.std``) for
    images of the scan's type and bands; the band statistics of ``train_stems`` (the training split: never the
    validation or test images) only when the mode needs them (cached, see ``band_stats_of``)."""
    d = cfg.data
    spec = parse_spec(d.normalize, d.stretch)
    stats = band_stats_of(scan, train_stems) if needs_stats(spec, scan.dtype, d.mean) else None
    return resolve(spec, scan.dtype, scan.in_channels, stats, d.mean, d.std)


def class_weights(spec: str | list[float] | None, data: TrainData) -> np.ndarray | None:
    """``train.class_weights`` as one weight per class: "median_frequency" or "balanced" from the pixel counts of
    the training split's masks (recorded by the deep scan; no mask is read again), a list as given (ConfigError
    unless it has one weight per class), None for None."""
    root = str(data.train.scan.root)
    spec = check_class_weights(spec, "train.class_weights", named=True, classes=data.class_names, source=root)
    if spec is None:
        return None
    if not isinstance(spec, str):
        return np.asarray(spec, dtype=np.float64)
    if data.train.target != "mask":
        raise ConfigError(
            f"train.class_weights {spec!r} counts the classes of masks/, not of data.target {data.train.target}; "
            f"give one weight per class instead ({', '.join(data.class_names)})"
        )
    from seglab.losses.weights import balanced_class_weights, median_frequency_weights

    counts = data.train.scan.class_counts_of(data.train.stems)
    return (
        median_frequency_weights(counts)
        if spec == "median_frequency"
        else balanced_class_weights(counts.sum(0))
    )


def default_workers(device: torch.device) -> int:
    """Loader processes when ``data.num_workers`` is null: none on the CPU, whose cores compute the model (and
    decoded images are cached after the first epoch); otherwise all cores but one, at most 8."""
    return 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))


def build_data(cfg: Config, device: torch.device, dist: Dist | None = None) -> TrainData:
    """Scan and check the folder ``cfg.data.root`` once (every image and mask, cached), split it, and build the
    loaders: per-item seeded augmentation, pinned memory on CUDA, workers that persist across epochs. With
    ``data.resize`` the training items are resized (image and mask), the validation items only in the image.
    Validation batches carry the items' sizes (each image is scored on its own at its mask's size, see
    ``seglab.engine.evaluate``).

    The data set is read in place in its layout, ``data.format`` (auto: detected; ``seglab.data.formats``).

    Distributed (``dist``), ``train.batch_size`` is the global batch: each rank loads its share of every global
    batch, and a shard of the validation split (whose counts the meters sum over the ranks)."""
    dist = dist or Dist()
    if not cfg.data.root:
        raise ConfigError("no data set: set data.root (or --data DIR); `seglab data synth` writes an example")
    d = cfg.data
    parse_spec(d.normalize, d.stretch)  # a bad data.normalize is refused before the scan
    # every file, once, before any work; in the layout of data.format (auto: detected), read in place
    scan = scan_folder(d.root, d.ignore_index, deep=True, format=d.format)
    scan.raise_problems()
    assert scan.classes is not None  # (no classes is a problem, raised above)
    # the run's ignore index: classes.yaml's when it declares one, else data.ignore_index (``scan_folder``); every
    # pad (augmentation fill, weight maps, collate) must use it, or padded pixels hold a label outside the classes
    ignore = scan.classes.ignore_index
    note = crop_padding_note(scan.sizes, d.crop_size, d.resize)
    if note and dist.is_main:  # once per run, from one process
        warnings.warn(note, stacklevel=2)
    common = dict(
        ignore_index=ignore,
        val_ratio=d.val_ratio,
        test_ratio=d.test_ratio,
        split_seed=d.split_seed,
        split_lists=d.splits,
        cache=d.cache,
        scan=scan,
        target=d.target,
        boundary_width=d.boundary_width,
    )
    in_ch = scan.in_channels
    for name in ("mean", "std"):  # one value would broadcast over every channel: silently wrong
        values = getattr(d, name)
        if values is not None and len(values) != in_ch:
            raise ConfigError(
                f"data.{name} has {len(values)} values but the images of {d.root} have {in_ch} channels; give "
                f"one per channel (or null: ImageNet's for 8-bit images, else the data's)"
            )
    train_stems = scan.split("train", d.val_ratio, d.test_ratio, d.split_seed, d.splits)
    norm = run_normalization(cfg, scan, train_stems)
    eval_transform = build_transform(d, in_ch, train=False, ignore_index=ignore, normalization=norm)
    weight_fn = None
    if d.border_weights:
        from seglab.losses.weights import unet_weight_map

        weight_fn = functools.partial(
            unet_weight_map, w0=d.border_w0, sigma=d.border_sigma, ignore_index=ignore
        )
    train_ds = FolderDataset(
        d.root,
        "train",
        build_transform(d, in_ch, train=True, ignore_index=ignore, normalization=norm),
        weight_fn=weight_fn,
        **common,
    )
    val_ds = FolderDataset(d.root, "val", eval_transform, **common)
    # no validation only when asked for (data.splits.val: [], or data.val_ratio: 0 without split lists):
    # every epoch's weights are then both "last" and "best", e.g. for a final fit on all the labelled data
    no_val_asked = d.splits.get("val") == [] if d.splits else d.val_ratio == 0
    for ds in (train_ds, val_ds):
        if len(ds) == 0 and not (ds is val_ds and no_val_asked):
            raise DataError(
                f"the {ds.split} split of {d.root} is empty; add splits/{ds.split}.txt or change "
                f"data.val_ratio/data.test_ratio"
                + (" (data.splits.val: [] trains without validation)" if ds is val_ds else "")
            )
    spec = train_ds.classes
    names = list(spec.names)
    if d.class_names is not None:
        if len(d.class_names) != spec.num_classes:
            raise ConfigError(
                f"data.class_names has {len(d.class_names)} names but {d.root} has {spec.num_classes} classes "
                f"({', '.join(spec.names)})"
            )
        names = [str(n) for n in d.class_names]

    samples = len(train_ds) * d.repeat
    batch_size = min(cfg.train.batch_size, samples)  # the global batch
    if batch_size % dist.world_size:
        raise ConfigError(
            f"train.batch_size {batch_size} is the global batch; it must split evenly over {dist.world_size} "
            f"processes (use a multiple of {dist.world_size})"
        )
    workers = default_workers(device) if d.num_workers is None else d.num_workers
    loader_args = dict(
        collate_fn=pad_collate(spec.ignore_index),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    sampler = EpochSampler(
        len(train_ds),
        samples,
        cfg.train.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        batch_size=batch_size,
    )
    local = batch_size // dist.world_size
    train_loader = DataLoader(
        SeededItems(train_ds), batch_size=local, sampler=sampler, drop_last=True, **loader_args
    )
    val_sampler = ShardSampler(len(val_ds), dist.rank, dist.world_size) if dist.enabled else None
    # validation batches carry each item's sizes: every image is scored on its own, unpadded, at its mask's size
    val_args = {**loader_args, "collate_fn": pad_collate(spec.ignore_index, sizes=True)}
    val_loader = DataLoader(val_ds, batch_size=local, sampler=val_sampler, **val_args)
    return TrainData(
        train_ds,
        val_ds,
        spec,
        in_ch,
        names,
        list(norm.mean),
        list(norm.std),
        train_loader,
        val_loader,
        sampler,
        local,
        samples // batch_size,
        norm,
    )
