"""BBBC039 nuclei (16-bit fluorescence TIFF): smp as a practitioner writes it, the 8-bit route, and seglab on the raw
16-bit images (semantic masks, the learned instances from scratch, and the recipe: the Lite0 encoder adapted to one
band), each trained for the same wall budget one after the other, scored on the 50 test images against the true
instances of instances/.

Routes (``--routes``, in this order):

- ``smp``: ``smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)``, images read with
  ``tifffile.imread`` and divided by 65535, masks with Pillow; the protocol of benchmarks/instances.py
  (``train_smp_items``: random 256x256 crops, flips, batch 8, BCE + Dice, Adam 1e-3 cosine over the budget);
  objects = connected components of sigmoid >= 0.5 (and, as an extra row, the watershed of it).
- ``8bit``: every image converted to an 8-bit PNG by ONE global min-max over the training split (written to
  ``<out>/png8`` with the masks, instances and classes.yaml linked and the split lists), then seglab as for 8-bit
  data: configs/bbbc039-unet-scratch.yaml with ``data.target=mask``; objects = components.
- ``seglab``: the same on the raw 16-bit TIFFs with seglab's default normalisation; components and watershed.
- ``scratch``: configs/bbbc039-unet-scratch.yaml as it is (from scratch, interior/boundary target):
  ``--instances learned``, and the components and watershed of its nucleus probability.
- ``recipe``: configs/bbbc039-unet.yaml, the recipe chosen on the val split: the scratch route's target with the
  ImageNet EfficientNet-Lite0 encoder, its first convolution adapted to one band by timm; learned, components.

Each route's result is written to ``<out>/<route>.json`` as soon as it is scored; a rerun skips the routes already
there with the same budget, threads and ``--limit`` (``--fresh`` redoes them). Foreground IoU/Dice compare the
predicted objects' pixels with the true nuclei pooled over the split; F1@0.5 and matched/false/missed pool the
objects; the DSB score is the mean over images (seglab.instances.metrics.InstanceMeter, as benchmarks/instances.py).

    .venv/bin/python benchmarks/bbbc039.py                                   # 5 routes x 10 min + scoring
    .venv/bin/python benchmarks/bbbc039.py --minutes 0.2 --limit 4 --out /tmp/b39   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instances import dataset, score, smp_tensor_probs, train_smp_items  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bbbc039-nuclei"
RECIPE = ROOT / "configs" / "bbbc039-unet.yaml"
SCRATCH = ROOT / "configs" / "bbbc039-unet-scratch.yaml"
SPLITS = ("train", "val", "test")
COMPONENTS = ("components", "components", {})
WATERSHED = ("watershed", "watershed", {})
LEARNED = ("learned", "learned", {})
ROUTES = ("smp", "8bit", "seglab", "scratch", "recipe")


def split_lists(root: Path, limit: int | None) -> dict[str, list[str]]:
    """The fixed split's stems (splits/<name>.txt), the first ``limit`` of each with ``--limit``."""
    lists = {}
    for name in SPLITS:
        stems = [s for s in (root / "splits" / f"{name}.txt").read_text().split() if s]
        lists[name] = stems[:limit] if limit else stems
    return lists


def smp_input(image: np.ndarray) -> torch.Tensor:
    """What the practitioner feeds smp: the 16-bit counts divided by 65535, (1, H, W)."""
    return torch.from_numpy(image.reshape(image.shape[0], image.shape[1]).astype(np.float32) / 65535)[None]


def run_smp(data: Path, lists: dict, budget: float, out: Path) -> dict:
    """smp.Unet("resnet18") trained as benchmarks/instances.py trains it, on tifffile's images / 65535."""
    import tifffile
    from PIL import Image

    items = []
    for stem in lists["train"]:
        image = tifffile.imread(data / "images" / f"{stem}.tif")
        mask = np.array(Image.open(data / "masks" / f"{stem}.png")) > 0
        items.append((smp_input(image), torch.from_numpy(mask.astype(np.float32))))
    start = time.perf_counter()
    model, steps = train_smp_items(items, budget, in_channels=1)
    seconds = time.perf_counter() - start
    rows: dict = {}
    test = dataset(data, "test", lists, instances=True)
    score(
        rows,
        "smp",
        [COMPONENTS, WATERSHED],
        lambda im: (smp_tensor_probs(model, smp_input(im)), "mask"),
        test,
        lambda i, mask: test.load_instances(i),
        None,
        {},
    )
    return {"steps": steps, "train_seconds": seconds, "rows": rows}


def eight_bit_copy(data: Path, lists: dict, cache: Path) -> tuple[Path, float, float]:
    """The 8-bit route's data: each image of the split lists as an 8-bit PNG, ``round(255 (x - lo) / (hi - lo))``
    clipped, with ONE ``lo``/``hi`` (the global min and max of the training images); the rest linked."""
    import tifffile
    from PIL import Image

    train = [tifffile.imread(data / "images" / f"{s}.tif") for s in lists["train"]]
    lo, hi = float(min(a.min() for a in train)), float(max(a.max() for a in train))
    stems = sorted({s for names in lists.values() for s in names})
    done = cache / "png8.json"
    key = {"version": 2, "lo": lo, "hi": hi, "stems": stems, "data": str(data.resolve())}
    if done.is_file() and json.loads(done.read_text()) == key:
        return cache, lo, hi
    if cache.exists():
        shutil.rmtree(cache)
    for name in ("images", "masks", "instances", "splits"):
        (cache / name).mkdir(parents=True)
    for stem in stems:
        x = tifffile.imread(data / "images" / f"{stem}.tif").astype(np.float64)
        u8 = np.clip(np.round((x - lo) / max(hi - lo, 1.0) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(u8).save(cache / "images" / f"{stem}.png")
        for name in ("masks", "instances"):  # linked one by one: --limit keeps a part of the data set
            (cache / name / f"{stem}.png").symlink_to((data / name / f"{stem}.png").resolve())
    for split, names in lists.items():
        (cache / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
    (cache / "classes.yaml").symlink_to((data / "classes.yaml").resolve())
    done.write_text(json.dumps(key))
    return cache, lo, hi


def seglab_overrides(route: str) -> list[str]:
    """The config changes of a seglab route against its config (``config_of``)."""
    return ["data.target=mask"] if route in ("8bit", "seglab") else []


def config_of(route: str) -> Path:
    """The recipe (configs/bbbc039-unet.yaml, chosen on val) for route recipe, its from-scratch variant for the
    others."""
    return RECIPE if route == "recipe" else SCRATCH


def run_seglab(route: str, root: Path, lists: dict, budget: float, out: Path, threads: int, limit) -> dict:
    """Train the recipe with the route's overrides on ``root`` for ``budget`` s; score its best checkpoint."""
    from seglab.checkpoint import load_checkpoint
    from seglab.config import Config
    from seglab.engine.train import train
    from seglab.inference import image_probs

    overrides = [
        f"data.root={root}",
        f"train.out_dir={out / route}",
        f"train.time_limit={budget}",
        f"train.threads={threads}",
        "train.progress=false",
        *seglab_overrides(route),
    ]
    if limit:
        overrides.append(f"data.splits={json.dumps(lists)}")
    cfg = Config.load(config_of(route)).override(overrides)
    start = time.perf_counter()
    result = train(cfg, overwrite=True)
    seconds = time.perf_counter() - start
    model, meta = load_checkpoint(result.best_checkpoint)
    methods = (
        [LEARNED, COMPONENTS, WATERSHED] if meta.target == "interior_boundary" else [COMPONENTS, WATERSHED]
    )
    if route in ("8bit", "recipe"):
        methods = methods[:-1]
    rows: dict = {}
    test = dataset(root, "test", lists, instances=True)
    dev = torch.device("cpu")
    score(
        rows,
        route,
        methods,
        lambda im: (image_probs(model, meta, im, dev)[0], meta.target),
        test,
        lambda i, mask: test.load_instances(i),
        None,
        {},
    )
    return {
        "steps": result.history[-1]["steps"] if result.history else 0,
        "train_seconds": seconds,
        "rows": rows,
        "config": cfg.to_dict(),
        "normalize": meta.normalization.to_dict(),
    }


def machine(threads: int) -> str:
    from seglab.bench.latency import device_name

    return f"{device_name(torch.device('cpu'))}, {threads} of {os.cpu_count()} threads, torch {torch.__version__}"


def table(results: list[dict]) -> str:
    lines = [
        "| route, objects | minutes | steps | fg IoU | fg Dice | F1@0.5 | DSB score | matched / false / missed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for label, r in res["rows"].items():
            lines.append(
                f"| {label} | {res['train_seconds'] / 60:.1f} | {res['steps']} | {r['fg_iou']:.3f} | "
                f"{r['fg_dice']:.3f} | {r['f1']:.3f} | {r['dsb_score']:.3f} | "
                f"{r['matched']} / {r['false']} / {r['missed']} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each route (default: 10)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated, of {', '.join(ROUTES)}")
    p.add_argument("--fresh", action="store_true", help="redo the chosen routes even if their results exist")
    p.add_argument("--limit", type=int, help="the first N images of each split only (a smoke test)")
    p.add_argument("--data", default=str(DATA), help="the BBBC039 folder (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-bbbc039"), help="results and runs")
    args = p.parse_args(argv)
    args.routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = [r for r in args.routes if r not in ROUTES]
    if unknown:
        p.error(f"--routes: unknown route {unknown[0]!r}; the routes are {', '.join(ROUTES)}")
    if args.minutes <= 0 or args.threads < 1 or (args.limit is not None and args.limit < 1):
        p.error("--minutes must be > 0, --threads and --limit >= 1")
    data = Path(args.data)
    if not all((data / d).is_dir() for d in ("images", "masks", "instances", "splits")):
        p.error(f"--data {data} is not the BBBC039 folder (images/, masks/, instances/, splits/)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lists = split_lists(data, args.limit)
    budget = args.minutes * 60
    settings = {"minutes": args.minutes, "threads": args.threads, "limit": args.limit, "data": str(data)}
    results = []
    for route in args.routes:
        path = out / f"{route}.json"
        if path.is_file() and not args.fresh:
            saved = json.loads(path.read_text())
            if saved.get("settings") == settings:
                print(f"{route}: done before ({path}), skipped (--fresh redoes it)", file=sys.stderr)
                results.append(saved)
                continue
            print(f"{route}: {path} was made with {saved.get('settings')}: redone", file=sys.stderr)
        print(f"{route}: training for {args.minutes:g} min on {args.threads} threads", file=sys.stderr)
        if route == "smp":
            res = run_smp(data, lists, budget, out)
        else:
            root = data
            if route == "8bit":
                root, lo, hi = eight_bit_copy(data, lists, out / "png8")
                print(f"8bit: global training min-max {lo:g}..{hi:g} -> 0..255 in {root}", file=sys.stderr)
            res = run_seglab(route, root, lists, budget, out, args.threads, args.limit)
        res = {"route": route, "settings": settings, "machine": machine(args.threads), **res}
        res["rows"] = {f"{route}, {k[1]}": v for k, v in res["rows"].items()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, path)
        print(
            f"{route}: {res['steps']} steps in {res['train_seconds'] / 60:.1f} min -> {path}", file=sys.stderr
        )
        results.append(res)
    print(f"\nmachine: {'; '.join(sorted({r['machine'] for r in results}))}")
    print(f"budget: {args.minutes:g} min per route; test images: {len(lists['test'])}\n")
    print(table(results))


if __name__ == "__main__":
    main()
