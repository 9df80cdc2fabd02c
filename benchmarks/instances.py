"""Instances on touching nuclei (DSB 2018) and EM cells (ISBI 2012): seglab's post-processing and learned separation
against smp's U-Net with connected components, trained on the same budget in the same run.

DSB 2018 (531 train / 133 test images of ../shared/data/dsb2018-nuclei, scored on the 133 at full resolution):

1. **seglab**: ``configs/dsb2018-unet.yaml`` (a U-Net learning background / interior / boundary made from the
   instance maps) with ``train.time_limit`` = ``--budget``; the same probabilities split three ways: connected
   components of the nucleus probability (1 - P(background)), distance-transform watershed of it, and the learned
   separation (interior seeds, watershed of the nucleus mask). One inference pass per image.
2. **smp baseline**, the issue's protocol written out here: ``smp.Unet("resnet18", encoder_weights=None,
   classes=1)``, random 256x256 crops with horizontal and vertical flips, batch 8, BCE + Dice, Adam 1e-3 with
   cosine annealing over the wall budget (the rate is set from the time spent before every step), ImageNet
   normalisation; connected components of sigmoid >= 0.5 (and, as an extra row, the same watershed as ours).

ISBI 2012 (test slices 25-29; truth: connected components of the cells between membranes, as the challenge):

3. **seglab**: the ISBI recipe's ensemble (``make isbi``: runs/isbi2012-unet + runs/isbi2012-unet-plain, or
   ``--isbi-run``), its cell probability split by connected components, by watershed, and by the learned
   membrane (``learned`` with ``fill``, the recipe's ``--instances``: seeds where P(cell) >= 0.97, flooded over
   1 - P(cell) so every pixel joins a cell; 0.97 was chosen on training slices 20-24).
4. **smp baseline**: ``smp.Unet("resnet18", encoder_weights=None, classes=1)`` on slices 00-24 with the same protocol
   for ``--isbi-budget``, cell probability -> connected components (and, as an extra row, the recipe's
   post-processing applied to smp's probabilities).

Every method goes through the library's code: ``seglab.inference.image_probs`` (ours: as ``seglab predict``),
``seglab.instances.infer.instances_from_probs`` with default ``InstanceParams`` (chosen before any test image was
scored) and ``seglab.instances.metrics.InstanceMeter``. Prints one Markdown table (DSB score; F1, precision and recall
at IoU 0.5 pooled over the objects; AP@0.5 = TP / (TP + FP + FN) at 0.5 per image, averaged; AJI; PQ; adapted Rand
error; foreground Dice) and writes ``docs/figures/instances.png``: a test image with touching nuclei, the
true instances, ours (learned), ours (components) and smp (components).

    .venv/bin/python benchmarks/instances.py                 # about 51 minutes on 2 cores (--no-isbi: 41)
    .venv/bin/python benchmarks/instances.py --budget 2m --isbi-budget 1m --test-limit 20   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT.parent / "shared" / "data" / "dsb2018-nuclei"
ISBI = ROOT.parent / "shared" / "data" / "isbi2012-membrane"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ISBI_TRAIN = [f"{i:02d}" for i in range(25)]
ISBI_TEST = ["25", "26", "27", "28", "29"]


def machine() -> str:
    from seglab.bench.latency import device_name

    return f"{device_name(torch.device('cpu'))}, {os.cpu_count()} cores"


def dataset(root: Path, split: str, lists: dict | None = None, instances: bool = False):
    from seglab.data.folder import FolderDataset

    return FolderDataset(root, split, None, cache=False, split_lists=lists, instances=instances, val_ratio=0)


def normalised(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def train_smp(ds, budget: float, seed: int = 0) -> tuple[torch.nn.Module, int]:
    """The issue's smp protocol on the folder split ``ds`` (binary masks: class 1 is the object)."""
    items = []
    for i in range(len(ds)):
        image, mask = ds.load(i)
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
        items.append((normalised(image), torch.from_numpy((mask == 1).astype(np.float32))))
    return train_smp_items(items, budget, seed)


def train_smp_items(
    items: list, budget: float, seed: int = 0, in_channels: int = 3
) -> tuple[torch.nn.Module, int]:
    """The smp protocol on (image float (C, H, W) as the network sees it, object mask float (H, W)) pairs, so
    that each benchmark prepares its images as its practitioner would (benchmarks/bbbc039.py: tifffile / 65535)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=in_channels, classes=1).train()
    dice = smp.losses.DiceLoss("binary")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, steps = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < budget:
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        xs, ms = [], []
        for i in rng.integers(len(items), size=8):
            x, m = items[i]
            ph, pw = max(0, 256 - x.shape[1]), max(0, 256 - x.shape[2])
            if ph or pw:
                x, m = F.pad(x, (0, pw, 0, ph), mode="reflect"), F.pad(m, (0, pw, 0, ph))
            top = int(rng.integers(0, x.shape[1] - 256 + 1))
            left = int(rng.integers(0, x.shape[2] - 256 + 1))
            x, m = x[:, top : top + 256, left : left + 256], m[top : top + 256, left : left + 256]
            if rng.random() < 0.5:
                x, m = x.flip(-1), m.flip(-1)
            if rng.random() < 0.5:
                x, m = x.flip(-2), m.flip(-2)
            xs.append(x)
            ms.append(m)
        logits = model(torch.stack(xs))[:, 0]
        target = torch.stack(ms)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice(logits[:, None], target[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return model.eval(), steps


@torch.inference_mode()
def smp_probs(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """(2, H, W): [1 - p, p] of smp's sigmoid output, reflect-padded to multiples of 32 and cropped back."""
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    return smp_tensor_probs(model, normalised(image))


@torch.inference_mode()
def smp_tensor_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(2, H, W) of smp's sigmoid output for the prepared image ``x`` (C, H, W), as in :func:`smp_probs`."""
    x = x[None]
    h, w = x.shape[2:]
    p = model(F.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect"))[0, 0, :h, :w].sigmoid()
    return torch.stack([1 - p, p])


def train_seglab(out: Path, budget: float) -> tuple[Path, int]:
    from seglab.config import Config
    from seglab.engine.train import train

    cfg = Config.load(ROOT / "configs" / "dsb2018-unet.yaml").override(
        [f"data.root={DSB}", f"train.out_dir={out}", f"train.time_limit={budget}", "train.progress=false"]
    )
    result = train(cfg, overwrite=True)
    return result.best_checkpoint, result.history[-1]["steps"]


def score(rows: dict, name: str, methods: list[tuple[str, str, dict]], probs_of, ds, truth_of, limit, keep):
    """One inference per image (``probs_of``), every (row label, method, params) post-processing of it scored."""
    from seglab.instances.infer import InstanceParams, instances_from_probs
    from seglab.instances.metrics import InstanceMeter

    meters = {label: InstanceMeter() for label, _, _ in methods}
    dice = {label: np.zeros(2) for label, _, _ in methods}  # foreground Dice: 2|P n T| and |P| + |T| summed
    n = min(len(ds), limit or len(ds))
    for i in range(n):
        image, mask = ds.load(i)
        truth = truth_of(i, mask)
        probs, target = probs_of(image)
        for label, method, kw in methods:
            labels = instances_from_probs(probs, method, target=target, params=InstanceParams(**kw))
            meters[label].update(labels, truth)
            dice[label] += (
                2 * np.count_nonzero((labels > 0) & (truth > 0)),
                np.count_nonzero(labels) + np.count_nonzero(truth),
            )
            if ds.stems[i] in keep:
                keep[ds.stems[i]][label] = labels
        if ds.stems[i] in keep:
            keep[ds.stems[i]]["image"], keep[ds.stems[i]]["truth"] = image, truth
    for label, _, _ in methods:
        rows[(name, label)] = {
            **meters[label].compute(),
            "fg_dice": dice[label][0] / dice[label][1],
            "fg_iou": dice[label][0] / 2 / (dice[label][1] - dice[label][0] / 2),  # |P n T| / |P u T|
            "matched": sum(int(r["tp"]) for r in meters[label].rows),
            "false": sum(int(r["fp"]) for r in meters[label].rows),
            "missed": sum(int(r["fn"]) for r in meters[label].rows),
            "images": n,
        }


def figure(keep: dict, path: Path) -> None:
    """Image, true instances, ours (learned), ours (components), smp (components) for the kept test images,
    each cropped to its 256x256 window with the most true objects."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seglab.instances.postprocess import instance_overlay

    cols = [
        ("image", "image"),
        ("truth", "truth"),
        ("ours, learned", "seglab learned"),
        ("ours, components", "seglab components"),
        ("smp, components", "smp components"),
    ]
    fig, axes = plt.subplots(len(keep), len(cols), figsize=(3 * len(cols), 3 * len(keep)), squeeze=False)
    for r, (stem, d) in enumerate(keep.items()):
        truth = d["truth"]
        h, w = truth.shape
        best, window = -1, (0, 0)
        for y in range(0, max(1, h - 255), 32):
            for x in range(0, max(1, w - 255), 32):
                k = len(np.unique(truth[y : y + 256, x : x + 256]))
                if k > best:
                    best, window = k, (y, x)
        y, x = window
        crop = np.s_[y : y + 256, x : x + 256]
        for c, (title, key) in enumerate(cols):
            ax = axes[r, c]
            if key == "image":
                ax.imshow(d["image"][crop])
            else:
                labels = d[key][crop]
                n = len(np.unique(labels[labels > 0]))
                ax.imshow(instance_overlay(d["image"][crop], labels))
                title = f"{title} ({n})"
            ax.set_title(title if r == 0 or key != "image" else f"image {stem[:8]}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def main() -> None:
    from seglab.config import parse_duration

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="20m", help="training budget of each DSB model (default: 20m)")
    p.add_argument("--isbi-budget", default="10m", help="training budget of smp on ISBI (default: 10m)")
    p.add_argument(
        "--isbi-run",
        default=str(ROOT / "runs" / "isbi2012-unet"),
        help="the ISBI recipe's run (make isbi); its ensemble partner is <run>-plain",
    )
    p.add_argument("--dsb-run", help="reuse this DSB run instead of training ours (a quick look only)")
    p.add_argument("--no-isbi", action="store_true", help="DSB 2018 only (skip the ISBI rows)")
    p.add_argument("--test-limit", type=int, help="score only the first N test images (a quick look)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-instances"))
    p.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "instances.png"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budget = parse_duration(args.budget, "--budget")
    isbi_budget = parse_duration(args.isbi_budget, "--isbi-budget")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from seglab.checkpoint import load_checkpoint
    from seglab.inference import build_predictor, image_probs
    from seglab.metrics.rand import label_components
    from seglab.uncertainty.config import UncertaintyConfig

    dev = torch.device("cpu")
    rows: dict = {}
    steps: dict = {}
    started = time.perf_counter()

    # ---- DSB 2018: ours, then smp, each for `budget`
    if args.dsb_run:
        ckpt, steps["seglab"] = Path(args.dsb_run), -1
    else:
        t = time.perf_counter()
        ckpt, steps["seglab"] = train_seglab(out / "dsb-seglab", budget)
        print(f"seglab DSB: {steps['seglab']} steps in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    t = time.perf_counter()
    smp_model, steps["smp"] = train_smp(dataset(DSB, "train"), budget)
    print(f"smp DSB: {steps['smp']} steps in {time.perf_counter() - t:.0f} s", file=sys.stderr)

    test = dataset(DSB, "test", instances=True)
    model, meta = load_checkpoint(ckpt)
    # test images with many touching nuclei (their true instances' connected components merge 50 and 35 nuclei)
    keep_stems = [
        "0402a81e75262469925ea893b6706183832e85324f7b1e08e634129f5d522cdd",
        "6c67b78e8164801059375ed9a607f61e67a7ae347e92e36a7f20514224541d56",
    ]
    keep = {s: {} for s in keep_stems if s in test.stems}

    def truth_dsb(i: int, mask: np.ndarray) -> np.ndarray:
        return test.load_instances(i)

    score(
        rows,
        "DSB 2018",
        [
            ("seglab components", "components", {}),
            ("seglab watershed", "watershed", {}),
            ("seglab learned", "learned", {}),
        ],
        lambda im: (image_probs(model, meta, im, dev)[0], meta.target),
        test,
        truth_dsb,
        args.test_limit,
        keep,
    )
    score(
        rows,
        "DSB 2018",
        [("smp components", "components", {}), ("smp watershed", "watershed", {})],
        lambda im: (smp_probs(smp_model, im), "mask"),
        test,
        truth_dsb,
        args.test_limit,
        keep,
    )
    keep = {s: d for s, d in keep.items() if "truth" in d}  # --test-limit may stop before them
    if keep:
        figure(keep, Path(args.figure))

    # ---- ISBI 2012: the recipe's ensemble (components, watershed, learned membrane) and smp for isbi_budget
    recipe = {"seed_threshold": 0.97, "fill": True}
    lists = {"train": ISBI_TRAIN, "val": [], "test": ISBI_TEST}
    isbi_test = dataset(ISBI, "test", lists)

    def truth_isbi(i: int, mask: np.ndarray) -> np.ndarray:
        return label_components(mask == 1)

    run = Path(args.isbi_run)
    if not args.no_isbi and (run / "best.safetensors").is_file():
        partner = run.with_name(run.name + "-plain")
        cfg = (
            UncertaintyConfig(method="ensemble", ensemble=[str(partner)])
            if partner.is_dir()
            else UncertaintyConfig(method="deterministic")
        )
        predictor, imeta = build_predictor(run, cfg, "cpu")
        score(
            rows,
            "ISBI 2012",
            [
                ("seglab components", "components", {}),
                ("seglab watershed", "watershed", {}),
                ("seglab learned (fill)", "learned", recipe),
            ],
            lambda im: (image_probs(predictor, imeta, im, dev)[0], imeta.target),
            isbi_test,
            truth_isbi,
            None,
            {},
        )
    elif not args.no_isbi:
        print(f"no ISBI recipe run in {run} (make isbi trains it): its rows are left out", file=sys.stderr)
    if not args.no_isbi:
        t = time.perf_counter()
        smp_isbi, steps["smp ISBI"] = train_smp(dataset(ISBI, "train", lists), isbi_budget)
        print(f"smp ISBI: {steps['smp ISBI']} steps in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        score(
            rows,
            "ISBI 2012",
            [("smp components", "components", {}), ("smp learned (fill)", "learned", recipe)],
            lambda im: (smp_probs(smp_isbi, im), "mask"),
            isbi_test,
            truth_isbi,
            None,
            {},
        )

    isbi = "no ISBI" if args.no_isbi else f"smp ISBI {args.isbi_budget} ({steps['smp ISBI']} steps)"
    print(
        f"\nmachine: {machine()}, torch {torch.__version__}, {args.threads} threads; budget {args.budget} per DSB "
        f"model (steps: seglab {steps['seglab']}, smp {steps['smp']}), {isbi}; total {(time.perf_counter() - started) / 60:.0f} min\n"
    )
    print(
        "| data | model, instances | DSB score | F1@0.5 | P@0.5 | R@0.5 | AP@0.5 | AJI | PQ | Rand error | fg Dice |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (data, label), r in rows.items():
        print(
            f"| {data} | {label} | {r['dsb_score']:.3f} | {r['f1']:.3f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['ap50']:.3f} | {r['aji']:.3f} | {r['pq']:.3f} | {r['rand_error']:.3f} | "
            f"{r['fg_dice']:.3f} |"
        )
    (out / "results.json").write_text(
        json.dumps({f"{d} | {k}": v for (d, k), v in rows.items()} | {"steps": steps}, indent=1)
    )


if __name__ == "__main__":
    main()
