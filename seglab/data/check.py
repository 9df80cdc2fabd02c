"""`seglab data check`: one deep pass over a folder data set that reports every problem it finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.scan import FolderScan, band_stats_of, scan_folder
from seglab.errors import DataError

MAX_CLASS_LINES = 32  # beyond this, list only the classes that hold pixels (at most this many)


def check(root: str | Path, ignore_index: int = 255, format: str = "auto") -> FolderScan:
    """Decode every image and mask of ``root``, read in place in its layout ``format`` (auto: detected; the scan's
    ``format`` says which), or take what an earlier deep scan of the unchanged files found, from the scan cache;
    the returned scan lists all problems and class pixel counts, and (``scan.stats``) the band statistics of the
    training split's images (the split's list when the data set has one, else of every image; cached, see
    ``band_stats_of``), unless an image could not be read (a problem already)."""
    scan = scan_folder(root, ignore_index, deep=True, format=format)
    listed = (scan.split_lists or {}).get("train")
    try:
        scan.stats = band_stats_of(scan, listed or scan.stems)
    except DataError:  # an unreadable image, or one of other bands: the scan's problems say which
        scan.stats = None
    return scan


def train_list(scan: FolderScan) -> str:
    """Where the training split's list comes from, for the report: splits/train.txt, or the layout's own."""
    return "splits/train.txt" if scan.format == "folder" else f"the {scan.format} train list"


def format_bands(scan: FolderScan) -> list[str]:
    """Per band: the range actually used, percentiles, mean and std of ``scan.stats``; then what the default
    normalisation (``data.normalize`` auto) does with them."""
    from seglab.data.normalize import describe, parse_spec, resolve

    stats = scan.stats
    if stats is None:
        return []
    listed = (scan.split_lists or {}).get("train")
    over = f"{train_list(scan)}, {stats.images} images" if listed else f"all {stats.images} images"
    lines = [f"bands: {stats.bands} of {scan.dtype} ({over}, {stats.pixels:,} pixels per band):"]
    qs = (1, 50, 99, 99.9)
    head = "".join(f"{'p' + format(q, 'g'):>10}" for q in qs)
    lines.append(f"  {'band':<5} {'dtype':<8} {'range used':>22}{head} {'mean':>10} {'std':>10}")
    columns = [stats.percentile(q) for q in qs]
    for b in range(stats.bands):
        used = f"{stats.min[b]:.6g}..{stats.max[b]:.6g}"
        pct = "".join(f"{col[b]:>10.6g}" for col in columns)
        lines.append(
            f"  {b + 1:<5} {scan.dtype:<8} {used:>22}{pct} {stats.mean[b]:>10.6g} {stats.std[b]:>10.6g}"
        )
    norm = resolve(parse_spec("auto"), scan.dtype, stats.bands, stats)
    lines.append(f"default normalisation (data.normalize auto): {describe(norm, scan.dtype)}")
    return lines


def median_frequency_of(scan: FolderScan) -> tuple[np.ndarray, str]:
    """Median-frequency class weights (``seglab.losses.median_frequency_weights``) of a deep scan's masks: of
    the training split when the folder lists one (splits/train.txt), else of every mask; and which it was."""
    from seglab.losses.weights import median_frequency_weights  # seglab.losses imports torch: only here

    counts = scan.class_counts or {}
    listed = (scan.split_lists or {}).get("train")
    stems = [s for s in (listed or scan.stems) if s in counts]
    over = f"{train_list(scan)}, {len(stems)} masks" if listed else f"all {len(stems)} masks"
    return median_frequency_weights(scan.class_counts_of(stems)), over


def format_check(scan: FolderScan, given: str = "auto") -> str:
    """The report of `seglab data check`; its first line names the layout read, and whether it was detected
    (``given`` auto) or named (data.format, ``--format``)."""
    spec = scan.classes
    how = "detected" if given == "auto" else "data.format"
    lines = [f"format: {scan.format} ({how})"]
    lines.append(f"data set {scan.root}: {len(scan.stems)} image/mask pairs, in_channels {scan.in_channels}")
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in scan.sizes.most_common(5))
    lines.append(f"sizes: {sizes}{' ...' if len(scan.sizes) > 5 else ''}")
    if spec is not None:
        lines.append(
            f"masks: {spec.mask_format}, {spec.num_classes} classes, ignore_index {spec.ignore_index}"
        )
    if scan.instances is not None:
        counts = sorted((scan.objects or {}).values())
        per = (
            f", {sum(counts)} objects, {counts[0]}..{counts[-1]} per image (median {counts[len(counts) // 2]})"
            if counts
            else ""
        )
        where = "instances/" if scan.format == "folder" else f"the {scan.format} annotations"
        lines.append(f"instances: {len(scan.instances)} label maps ({where}){per}")
    lines += format_bands(scan)
    if spec is not None and scan.class_pixels is not None:
        total = int(scan.class_pixels.sum()) + scan.ignored_pixels
        weights, over = median_frequency_of(scan)
        lines.append(f"  {'class':<16} {'pixels':>15}  {'share':>8}  median-frequency weight ({over})")
        rows = list(zip(spec.names, scan.class_pixels, weights))
        if (
            len(rows) > MAX_CLASS_LINES
        ):  # e.g. a stray mask value that set the class count: list what is there
            rows = [(name, n, w) for name, n, w in rows if n > 0]
        for name, n, w in rows[:MAX_CLASS_LINES]:
            lines.append(f"  {name:<16} {int(n):>12} px  {100 * n / max(total, 1):6.2f} %  {w:8.3f}")
        empty = int((scan.class_pixels == 0).sum())
        if len(spec.names) > MAX_CLASS_LINES:
            hidden = len(rows) - MAX_CLASS_LINES
            lines.append(
                f"  ... {f'{hidden} more classes with pixels, ' if hidden > 0 else ''}{empty} classes hold no pixels"
            )
        lines.append(
            f"  {'(ignored)':<16} {scan.ignored_pixels:>12} px  {100 * scan.ignored_pixels / max(total, 1):6.2f} %"
        )
    if scan.split_lists is not None:
        carved = "" if scan.split_lists.get("val") else " (training carves data.val_ratio of train as val)"
        lines.append(
            f"splits ({'splits/' if scan.format == 'folder' else f'the {scan.format} lists'}): "
            + ", ".join(f"{k} {len(v)}" for k, v in scan.split_lists.items())
            + carved
        )
    else:
        lines.append(
            "splits: none listed; training draws a seeded random split (data.val_ratio, data.test_ratio)"
        )
    if scan.problems:
        lines.append(f"{len(scan.problems)} problem(s):")
        lines += [f"  - {p}" for p in scan.problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
