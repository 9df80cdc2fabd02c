"""`seglab data check`: one deep pass over a folder data set that reports every problem it finds."""

from __future__ import annotations

from pathlib import Path

from seglab.data.folder import FolderScan, scan_folder


def check(root: str | Path, ignore_index: int = 255) -> FolderScan:
    """Decode every image and mask of ``root``; the returned scan lists all problems and class pixel counts."""
    return scan_folder(root, ignore_index, deep=True)


def format_check(scan: FolderScan) -> str:
    spec = scan.classes
    lines = [f"data set {scan.root}: {len(scan.stems)} image/mask pairs, in_channels {scan.in_channels}"]
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in scan.sizes.most_common(5))
    lines.append(f"sizes: {sizes}{' ...' if len(scan.sizes) > 5 else ''}")
    if spec is not None:
        lines.append(
            f"masks: {spec.mask_format}, {spec.num_classes} classes, ignore_index {spec.ignore_index}"
        )
    if spec is not None and scan.class_pixels is not None:
        total = int(scan.class_pixels.sum()) + scan.ignored_pixels
        for name, n in zip(spec.names, scan.class_pixels):
            lines.append(f"  {name:<16} {int(n):>12} px  {100 * n / max(total, 1):6.2f} %")
        lines.append(
            f"  {'(ignored)':<16} {scan.ignored_pixels:>12} px  {100 * scan.ignored_pixels / max(total, 1):6.2f} %"
        )
    if scan.split_lists is not None:
        lines.append("splits (splits/): " + ", ".join(f"{k} {len(v)}" for k, v in scan.split_lists.items()))
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
