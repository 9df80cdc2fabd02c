"""`seglab data convert`: any layout read in place (``seglab.data.formats``) written as seglab's folder layout.

Reading in place needs no copy; this is for users who want files they can look at, or another tool's input.
What is written is exactly what training reads from the source, so both give the same batches:

    OUT/images/<stem><ext>     the source image itself: a hard link where the file system allows, else a copy
    OUT/masks/<stem>.png       the decoded class indices (ignore = classes.yaml's ignore_index), palette PNG
                               (16-bit grayscale when a value is above 255)
    OUT/instances/<stem>.png   object ids 1..N, 0 = no object (16-bit when N > 255), if the layout has instances
    OUT/classes.yaml           names, colors, mask_format index, ignore_index
    OUT/splits/<split>.txt     the layout's split lists, if it has any
    OUT/convert.json           what was converted from where, and the files written (the mark of this output)

``OUT`` must be new or empty, or an earlier output of data convert (recognised by its convert.json): that is
updated in place, and the files of the earlier conversion that this one did not write are removed. Every file
is written under a temporary name and renamed, so no half-written file is ever visible.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from seglab.data.classes import ClassSpec, decode_mask
from seglab.data.formats import MaskSource
from seglab.data.io import read_mask_raw, save_png
from seglab.data.scan import FolderScan, scan_folder
from seglab.errors import DataError
from seglab.files import atomic_write, check_out_dir, data_set_root, read_json_file, run_root

MARK = "convert.json"
MARK_KIND = "seglab data convert"
PARTS = ("images", "masks", "instances", "splits")  # the subfolders a conversion writes (and may clean up)


@dataclass
class Converted:
    """What one conversion wrote."""

    src: Path
    out: Path
    format: str
    pairs: int = 0
    linked: int = 0  # images/ as hard links to the source
    copied: int = 0  # images/ as copies (another file system, or links refused)
    instances: int = 0
    classes: ClassSpec | None = None
    splits: dict[str, int] = field(default_factory=dict)
    removed: int = 0  # files of an earlier conversion no longer written


def convert(
    src: str | Path,
    out: str | Path,
    format: str = "auto",
    ignore_index: int = 255,
    log: Callable[[str], None] | None = None,
) -> Converted:
    """Write the data set ``src`` (layout ``format``; auto: detected) as a folder data set in ``out``. The source
    is scanned as training scans it and must have no problems (the first is raised, as training would); ``out``
    is checked before anything is written (see the module doc)."""
    src, out = Path(src), Path(out)
    earlier = _check_out(src, out)
    scan = scan_folder(src, ignore_index, format=format)
    scan.raise_problems()
    spec = scan.classes
    assert spec is not None  # (no classes is a problem, raised above)
    stems = scan.stems
    result = Converted(src, out, scan.format, pairs=len(stems), classes=spec)
    if log:
        log(f"converting {len(stems)} pairs of {src} ({scan.format} layout) to {out}")
    planned = _planned(scan, stems)
    # the mark goes first, listing every file that may exist: a conversion cut short can be run again
    _write_mark(out, src, scan.format, sorted(set(earlier) | set(planned)), complete=False)
    for i, stem in enumerate(stems):
        if _put_image(scan.images[stem], out / planned_image(scan, stem)):
            result.linked += 1
        else:
            result.copied += 1
        _put_mask(scan, spec, stem, out / "masks" / f"{stem}.png")
        if scan.instances is not None and stem in scan.instances:
            _put_instances(scan.instances[stem], out / "instances" / f"{stem}.png")
            result.instances += 1
        if log and (i + 1) % 500 == 0:
            log(f"{i + 1}/{len(stems)} pairs written")
    classes = {
        "names": list(spec.names),
        "colors": [list(map(int, c)) for c in spec.palette],
        "mask_format": "index",
        "ignore_index": int(spec.ignore_index),
    }
    atomic_write(out / "classes.yaml", lambda t: t.write_text(yaml.safe_dump(classes, sort_keys=False)))
    for name, listed in (scan.split_lists or {}).items():
        text = "".join(s + "\n" for s in listed)
        atomic_write(out / "splits" / f"{name}.txt", lambda t, text=text: t.write_text(text))
        result.splits[name] = len(listed)
    for rel in sorted(set(earlier) - set(planned)):  # what an earlier conversion wrote and this one did not
        path = _own_file(out, rel)
        if path is not None:
            path.unlink()
            result.removed += 1
    _write_mark(out, src, scan.format, planned, complete=True)
    return result


def _own_file(out: Path, rel: str) -> Path | None:
    """``out/rel`` if it is a file (or link) of one of the parts a conversion writes, right in that part's
    folder (never elsewhere, whatever an edited convert.json says); else None."""
    parts = rel.split("/")
    if len(parts) != 2 or parts[0] not in PARTS or parts[1] in ("", ".", ".."):
        return None
    path = out / parts[0] / parts[1]
    if path.parent.resolve() != out.resolve() / parts[0] or not (path.is_symlink() or path.is_file()):
        return None
    return path


def planned_image(scan: FolderScan, stem: str) -> str:
    """Where image ``stem`` goes under the output, relative: images/<stem> with the source's extension."""
    return f"images/{stem}{scan.images[stem].suffix}"


def _planned(scan: FolderScan, stems: list[str]) -> list[str]:
    """Every file the conversion of ``stems`` writes, relative to the output (the mark's list)."""
    files = ["classes.yaml"]
    for stem in stems:
        files += [planned_image(scan, stem), f"masks/{stem}.png"]
        if scan.instances is not None and stem in scan.instances:
            files.append(f"instances/{stem}.png")
    files += [f"splits/{name}.txt" for name in scan.split_lists or {}]
    return sorted(files)


def _check_out(src: Path, out: Path) -> list[str]:
    """DataError (one line) unless ``out`` may take the folder: not the source nor inside it, not a file, not
    in a run folder or another data set, and new, empty or an earlier output of data convert. Returns the files
    that earlier output lists (none for a new folder)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"data convert --out {out} is a file; choose a new folder")
    check_out_dir(out, "data convert --out")
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise DataError(f"data convert --out {out} lies in the source {src}; choose a folder outside it")
    if o in s.parents:
        raise DataError(f"data convert --out {out} holds the source {src}; choose a folder beside it")
    run = run_root(out)
    if run is not None:
        raise DataError(f"data convert --out {out} lies in the run folder {run}; choose a folder outside it")
    ds = data_set_root(out.parent)
    if ds is not None:
        raise DataError(f"data convert --out {out} lies in the data set {ds}; choose a folder outside it")
    if not out.exists() or not any(out.iterdir()):
        return []
    mark = read_json_file(out / MARK) if (out / MARK).is_file() else None
    if not (isinstance(mark, dict) and mark.get("kind") == MARK_KIND and isinstance(mark.get("files"), list)):
        raise DataError(
            f"data convert --out {out} exists and is not empty, and is not an earlier output of data convert "
            f"(no {MARK} of it); choose a new or empty folder"
        )
    return [str(f) for f in mark["files"]]


def _write_mark(out: Path, src: Path, fmt: str, files: list[str], complete: bool) -> None:
    doc = {
        "kind": MARK_KIND,
        "source": str(src.resolve()),
        "format": fmt,
        "complete": complete,
        "files": files,
    }
    atomic_write(out / MARK, lambda t: t.write_text(json.dumps(doc, indent=1) + "\n"))


def _put_image(source: Path, dest: Path) -> bool:
    """``dest`` becomes the image ``source``: a hard link (True) where the file system allows, else a copy
    (False); either appears at once, by a rename. A link that is already there is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if dest.exists() and os.path.samefile(source, dest):
            return True
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(os.path.realpath(source), tmp)  # the file itself, also where ``source`` is a symbolic link
    except OSError:  # another file system, or links refused: a copy
        try:
            atomic_write(dest, lambda t: shutil.copyfile(source, t), durable=False)
        except OSError as e:
            raise DataError(f"cannot copy {source} to {dest}: {e.strerror or e}") from None
        return False
    try:
        os.replace(tmp, dest)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"cannot write {dest}: {e.strerror or e}") from None
    return True


def _put_mask(scan: FolderScan, spec: ClassSpec, stem: str, dest: Path) -> None:
    """The mask of ``stem`` as training decodes it (class indices, ignore_index), as an index PNG."""
    source = scan.masks[stem]
    labels = decode_mask(read_mask_raw(source), spec, Path(str(source)))
    _save_labels(dest, labels, spec.palette, source)


def _put_instances(source: Path | MaskSource, dest: Path) -> None:
    """An instance map (0 = no object, 1..N) as a PNG: 8-bit up to 255 objects, else 16-bit."""
    raw = read_mask_raw(source)
    if raw.ndim != 2:
        raise DataError(
            f"instance map {source} is a colour image; instance maps are single-channel label maps"
        )
    _save_labels(dest, raw, None, source)


def _save_labels(dest: Path, labels: np.ndarray, palette: Any, source: object) -> None:
    top = int(labels.max(initial=0))
    if int(labels.min(initial=0)) < 0 or top > 65535:
        raise DataError(f"{source} decodes to values outside 0..65535, which no PNG holds")
    if top > 255:
        save_png(dest, labels.astype(np.uint16))
    else:
        save_png(dest, labels.astype(np.uint8), palette)


def format_summary(r: Converted) -> str:
    """What ``convert`` wrote, for the command line."""
    spec = r.classes
    assert spec is not None
    how = ", ".join(
        part
        for part in (f"{r.linked} hard links" if r.linked else "", f"{r.copied} copies" if r.copied else "")
        if part
    )
    lines = [
        f"converted {r.src} ({r.format} layout) to the folder layout in {r.out}:",
        f"  images/     {r.pairs} images ({how or 'none'})",
        f"  masks/      {r.pairs} index PNGs: {spec.num_classes} classes, ignore_index {spec.ignore_index}",
    ]
    if r.instances:
        lines.append(f"  instances/  {r.instances} instance maps (0 = no object)")
    lines.append(f"  classes.yaml: {', '.join(spec.names[:8])}{' ...' if spec.num_classes > 8 else ''}")
    if r.splits:
        lines.append("  splits/     " + ", ".join(f"{k}.txt ({v})" for k, v in r.splits.items()))
    else:
        lines.append("  splits/     none (the source lists none: training draws a seeded random split)")
    if r.removed:
        lines.append(f"  removed {r.removed} files of the earlier conversion that this one no longer writes")
    lines.append(f"train on it with: seglab train --data {r.out}  (or read {r.src} in place: --data {r.src})")
    return "\n".join(lines)
