"""What reading a layout in place costs: LabelMeFacade written as VOC, its training loader's epoch time read in
place against the same data in seglab's folder layout (issue 29's goal: in place <= 110 % of the folder's).

The VOC tree is written once into ``--work`` (default ``runs/formats_speed``): ``JPEGImages/`` symbolic links to
LabelMeFacade's photos, ``SegmentationClass/`` palette PNGs (VOC's palette) of its class indices (its RGB label
PNGs decoded as training decodes them), ``ImageSets/Segmentation/train.txt`` and ``test.txt`` from its splits,
and a ``classes.yaml`` naming its nine classes. The folder layout is ``seglab data convert`` of that tree
(images hard-linked, masks index PNGs): the same pixels, so the difference is what reading in place costs.

Both are loaded by ``seglab.engine.data.build_data`` with the ``labelmefacade-scratch`` recipe's data settings
(resize 0.5, 256 crops, scale jitter, flips, colour jitter, repeat 4) and ``data.cache`` off, ``num_workers`` 0,
no model: an epoch is one pass over the training loader. The scans (cached) are not timed. The layouts
alternate, ``--repeats`` epochs each, and the median is reported; the first batches of both are checked equal.

    .venv/bin/python benchmarks/formats_speed.py --limit 10 --repeats 1     # a quick look
    .venv/bin/python benchmarks/formats_speed.py                           # the 100 training photos, 3 epochs each
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "labelmefacade"
RECIPE = ROOT / "configs" / "labelmefacade-scratch.yaml"


def machine() -> str:
    from seglab.bench.latency import device_name

    return (
        f"{device_name(torch.device('cpu'))}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )


def write_voc(src: Path, out: Path, limit: int | None) -> Path:
    """LabelMeFacade (``src``, folder layout with RGB masks) as a VOC tree in ``out``/VOC (reused when an earlier
    call wrote the same stems)."""
    import yaml

    from seglab.data.classes import decode_mask
    from seglab.data.formats.voc import voc_colormap
    from seglab.data.io import read_mask_raw, save_png
    from seglab.data.scan import scan_folder

    scan = scan_folder(src)
    scan.raise_problems()
    spec = scan.classes
    assert spec is not None and scan.split_lists is not None
    lists = {name: stems[:limit] if limit else stems for name, stems in scan.split_lists.items() if stems}
    if limit:
        lists = {"train": lists["train"]}  # a quick look times the training split only
    voc = out / "VOC"
    done = voc / "written.json"
    if done.is_file():
        if json.loads(done.read_text()) == lists:
            return voc
        shutil.rmtree(voc)  # an earlier tree of other stems (this script's: it holds written.json)
    stems = sorted({s for listed in lists.values() for s in listed})
    print(f"writing {len(stems)} LabelMeFacade photos as VOC into {voc} ...", file=sys.stderr)
    colours = voc_colormap(256)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image = scan.images[stem]
        link = voc / "JPEGImages" / f"{stem}.jpg"
        if not link.is_symlink():
            link.symlink_to(image.resolve())
        labels = decode_mask(read_mask_raw(scan.masks[stem]), spec, scan.masks[stem])
        save_png(voc / "SegmentationClass" / f"{stem}.png", labels.astype(np.uint8), colours)
    for name, listed in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(s + "\n" for s in listed))
    classes = {
        "names": list(spec.names),
        "colors": [list(c) for c in colours[: spec.num_classes]],
        "mask_format": "index",
        "ignore_index": 255,
    }
    (voc / "classes.yaml").write_text(yaml.safe_dump(classes, sort_keys=False))
    done.write_text(json.dumps(lists))
    return voc


def loader(root: Path, data_repeat: int | None):
    from seglab.config import Config
    from seglab.engine.data import build_data

    flags = [f"data.root={root}", "data.cache=false", "data.num_workers=0", "train.seed=0"]
    if data_repeat is not None:
        flags.append(f"data.repeat={data_repeat}")
    cfg = Config.load(RECIPE).override(flags)
    data = build_data(cfg, torch.device("cpu"))
    return data


def epoch_seconds(data, epoch: int) -> float:
    data.sampler.set_epoch(epoch)
    start = time.perf_counter()
    for _ in data.train_loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="LabelMeFacade (folder layout)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "formats_speed", help="where the trees go")
    p.add_argument("--limit", type=int, help="only the first N training photos (a quick look)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per layout (default: 3)")
    p.add_argument("--data-repeat", type=int, help="data.repeat (default: the recipe's, 4)")
    args = p.parse_args()
    if args.limit is not None and args.limit < 10:
        p.error("--limit must be at least 10 (the recipe carves 10 % of the training photos for validation)")
    if not (args.data / "images").is_dir():
        sys.exit(f"{args.data} is not available")
    from seglab.data.convert import convert

    voc = write_voc(args.data, args.work, args.limit)
    folder = args.work / "folder"
    convert(voc, folder, "voc")
    layouts = {"folder (data convert of the VOC tree)": folder, "voc, read in place": voc}
    built = {name: loader(root, args.data_repeat) for name, root in layouts.items()}
    formats = {name: d.train.scan.format for name, d in built.items()}
    assert list(formats.values()) == ["folder", "voc"], formats
    first = [next(iter(d.train_loader)) for d in built.values()]
    assert all(torch.equal(u, v) for u, v in zip(*first)), "the two layouts give different batches"
    times: dict[str, list[float]] = {name: [] for name in built}
    for r in range(args.repeats):
        order = list(built.items())
        for name, d in order if r % 2 == 0 else order[::-1]:  # each layout goes first in turn
            times[name].append(epoch_seconds(d, r + 1))
            print(f"{name}: epoch {r + 1}: {times[name][-1]:.2f} s", file=sys.stderr)
    d0 = next(iter(built.values()))
    items = len(d0.train_loader) * d0.batch_size
    base = statistics.median(times[next(iter(times))])
    print(f"machine: {machine()}")
    repeat = d0.sampler.num_samples // len(d0.train)
    print(
        f"LabelMeFacade as VOC: {len(d0.train)} training photos x data.repeat {repeat}, {items} items per epoch in "
        f"batches of {d0.batch_size} (labelmefacade-scratch transforms, data.cache off, num_workers 0, no model)\n"
    )
    print("| layout | epoch s (median) | runs | ms per item | vs folder |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        runs = ", ".join(f"{t:.2f}" for t in ts)
        print(f"| {name} | {med:.2f} | {runs} | {1000 * med / items:.1f} | {100 * med / base:.1f} % |")
    ratio = statistics.median(times["voc, read in place"]) / base
    print(
        f"\ngoal: in place <= 110 % of the folder layout: {100 * ratio:.1f} % ({'met' if ratio <= 1.1 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
