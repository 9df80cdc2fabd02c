"""The plan against the hand recipes and smp's U-Net-r18, on every shared data set, at each recipe's own budget.

For each data set of ../shared/data, one route after the other (never two at once), each trained for the recipe's
wall budget and scored on the test split with the data set's headline metric:

- ``hand``: the hand-written recipe(s) of configs/, trained by ``seglab train CONFIG``;
- ``plan``: ``seglab train --data DATA --time-limit T --out RUN`` with no config (seglab plans one from the data's
  and the machine's fingerprints);
- ``smp``: ``smp.Unet("resnet18", encoder_weights=None)`` with the practitioner's defaults, the protocol of the
  benchmark that already trains it for that data set (imported from it, not copied).

| data set | budget | metric (test split) | hand | smp protocol | goal |
|---|---|---|---|---|---|
| isbi (isbi2012-membrane) | 10 min | pixel error, slices 25-29 | isbi2012-unet without elastic and flips (its single unaugmented member) | instances.py | plan <= hand + 0.005 |
| facade (labelmefacade) | 10 min | mIoU, 845 photos | labelmefacade-scratch and -pretrained | facade.py | plan >= max(hand) - 0.01 |
| dsb (dsb2018-nuclei) | 20 min | DSB score of instances | dsb2018-unet | instances.py | plan >= hand - 0.01 |
| bbbc039 (bbbc039-nuclei) | 10 min | object F1@0.5 | bbbc039-unet | bbbc039.py | plan >= hand - 0.01 |

and on every data set the plan beats smp. ISBI has no splits/ folder: every route uses slices 00-24 for training
and 25-29 for test, given to the plan route as a user would, a view folder (``<out>/.../views/isbi``: links to
images/ and masks/, splits/train.txt and splits/test.txt). seglab runs are scored by ``seglab evaluate RUN --data
DATA --split test --out JSON`` (with ``--instances learned`` for a model whose data.target is interior_boundary,
else ``--instances components``, on the instance data sets); smp's objects are its connected components.

Each finished (data set, route) is appended as one JSON line to ``runs/bench-plan/results.jsonl`` (machine, budget,
steps, training and planning seconds, metric); a rerun skips what is there (``--force`` redoes it). ``--minutes M``
sets every budget to M minutes and ``--test-limit N`` scores the first N test images: such quick checks go to
their own file (``results-<M>m[-test<N>].jsonl``), never mixed with the real results. At the end (or with
``--table`` alone) a Markdown table is printed and written beside the results (``results.md``).

    .venv/bin/python benchmarks/plan.py                          # everything: about 3 hours on 2 cores
    .venv/bin/python benchmarks/plan.py --datasets isbi --routes plan     # one data set, one route at a time
    .venv/bin/python benchmarks/plan.py --table                  # the table of what is done so far
    .venv/bin/python benchmarks/plan.py --minutes 3 --test-limit 2 --datasets isbi,bbbc039   # a smoke test

(seglab refuses a budget that its set-up (data scan, amp probe) uses up before the first step: on 2
busy cores about 1.5 minutes; smp's routes run with any budget, ``--minutes 0.1 --routes smp``.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SEGLAB = [sys.executable, "-m", "seglab"]
ROUTES = ("hand", "plan", "smp")
ISBI_TRAIN = [f"{i:02d}" for i in range(25)]
ISBI_TEST = [f"{i:02d}" for i in range(25, 30)]
ISBI_PLAIN = (
    "data.elastic=0",
    "data.hflip=false",
    "data.vflip=false",
)  # the recipe's single unaugmented member


@dataclass(frozen=True)
class Hand:
    """A hand recipe: its config, the overrides that make it the compared variant, its label."""

    label: str
    config: str
    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str
    minutes: float  # the recipe's own budget
    metric: str  # pixel_error | miou | dsb_score | f1
    hands: tuple[Hand, ...]
    instances: bool = False
    lists: dict = field(
        default_factory=dict
    )  # a split given by the benchmark (ISBI), else the folder's splits/

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "pixel_error"


DATASETS = {
    d.name: d
    for d in (
        Dataset(
            "isbi",
            "isbi2012-membrane",
            10,
            "pixel_error",
            (Hand("isbi2012-unet, unaugmented", "isbi2012-unet.yaml", ISBI_PLAIN),),
            lists={"train": ISBI_TRAIN, "test": ISBI_TEST},
        ),
        Dataset(
            "facade",
            "labelmefacade",
            10,
            "miou",
            (
                Hand("labelmefacade-scratch", "labelmefacade-scratch.yaml"),
                Hand("labelmefacade-pretrained", "labelmefacade-pretrained.yaml"),
            ),
        ),
        Dataset("dsb", "dsb2018-nuclei", 20, "dsb_score", (Hand("dsb2018-unet", "dsb2018-unet.yaml"),), True),
        Dataset("bbbc039", "bbbc039-nuclei", 10, "f1", (Hand("bbbc039-unet", "bbbc039-unet.yaml"),), True),
    )
}
METRIC_NAMES = {"pixel_error": "pixel error", "miou": "mIoU", "dsb_score": "DSB score", "f1": "object F1@0.5"}
# the recipes' published test numbers (docs/recipes/*.md), shown under the table for reference
PUBLISHED = {
    "isbi2012-unet, unaugmented": 0.0740,
    "labelmefacade-scratch": 0.390,
    "labelmefacade-pretrained": 0.479,
    "dsb2018-unet": 0.499,
    "bbbc039-unet": 0.931,
}


# ---------------------------------------------------------------- data views


def view(src: Path, dst: Path, lists: dict[str, list[str]]) -> Path:
    """A folder data set that is ``src`` with its own splits/: links to images/, masks/, instances/ and
    classes.yaml, and ``lists`` written as splits/<name>.txt. Rebuilt only when it changes."""
    key = {"src": str(src.resolve()), "lists": lists}
    stamp = dst / ".view.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return dst
    if dst.exists():
        shutil.rmtree(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "splits").mkdir(parents=True)
    for name in ("images", "masks", "instances", "classes.yaml"):
        if (src / name).exists():
            (tmp / name).symlink_to((src / name).resolve())
    for name, stems in lists.items():
        (tmp / "splits" / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    stamp_tmp = tmp / ".view.json"
    stamp_tmp.write_text(json.dumps(key))
    os.replace(tmp, dst)
    return dst


def split_lists(root: Path, ds: Dataset) -> dict[str, list[str]]:
    """The split the benchmark uses: ISBI's fixed one, else the folder's splits/ lists."""
    if ds.lists:
        return {k: list(v) for k, v in ds.lists.items()}
    return {
        name: [s for s in (root / "splits" / f"{name}.txt").read_text().split() if s]
        for name in ("train", "val", "test")
        if (root / "splits" / f"{name}.txt").is_file()
    }


@dataclass
class Roots:
    """Where a data set's routes train (``train``) and are scored (``test``, with ``--test-limit`` a view whose
    test list is cut), and the split lists of the test root."""

    train: Path
    test: Path
    lists: dict[str, list[str]]


def roots(ds: Dataset, shared: Path, work: Path, test_limit: int | None) -> Roots:
    src = shared / ds.folder
    lists = split_lists(src, ds)
    train_root = view(src, work / "views" / ds.name, lists) if ds.lists else src
    if test_limit:
        lists = {**lists, "test": lists["test"][:test_limit]}
        return Roots(train_root, view(src, work / "views" / f"{ds.name}-test{test_limit}", lists), lists)
    return Roots(train_root, train_root, lists)


# ---------------------------------------------------------------- seglab routes


def run_logged(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` from the repository root, its output to ``log``; its wall seconds. A failure raises with the
    log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"exit {rc}: {' '.join(cmd)}\n{tail}")
    return seconds


def last_steps(run: Path) -> int:
    """Optimiser steps of a seglab run: its metrics.jsonl's last epoch line."""
    steps = 0
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                steps = json.loads(line).get("steps", steps)
    return int(steps)


def run_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text()) or {}


def plan_seconds(plan: dict | None) -> float | None:
    """The planning time a run recorded: its plan section's ``seconds``, else fingerprint + machine probe."""
    if not plan:
        return None
    if isinstance(plan.get("seconds"), (int, float)):
        return float(plan["seconds"])
    parts = [(plan.get(k) or {}).get("seconds") for k in ("data", "machine")]
    parts = [p for p in parts if isinstance(p, (int, float))]
    return float(sum(parts)) if parts else None


def seglab_route(ds: Dataset, r: Roots, budget: float, run: Path, config: Hand | None, threads) -> dict:
    """Train (a hand recipe, or the plan when ``config`` is None) for ``budget`` s and score the test split."""
    if run.exists():
        shutil.rmtree(run)
    cmd = [*SEGLAB, "train"]
    if config is not None:
        cmd.append(str(ROOT / "configs" / config.config))
    cmd += ["--data", str(r.train), "--time-limit", f"{budget:g}s", "--out", str(run), "--no-progress"]
    sets = list(config.sets) if config else []
    if config is not None and ds.lists and r.test != r.train:
        # the recipe lists its split in data.splits, which the checkpoint keeps and evaluate follows: with
        # --test-limit the cut test list goes there too (train and val stay the recipe's)
        sets.append(f"data.splits={json.dumps({**r.lists, 'val': []})}")
    for s in sets + ([f"train.threads={threads}"] if threads else []):
        cmd += ["--set", s]
    train_seconds = run_logged(cmd, run.parent / f"{run.name}.train.log")
    cfg = run_config(run)
    target = (cfg.get("data") or {}).get("target", "mask")
    out = run.parent / f"{run.name}.eval-test.json"
    ev = [*SEGLAB, "evaluate", str(run), "--data", str(r.test), "--split", "test", "--out", str(out)]
    ev += ["--no-progress", "--overwrite"]
    if ds.instances:
        ev += ["--instances", "learned" if target == "interior_boundary" else "components"]
    eval_seconds = run_logged(ev, run.parent / f"{run.name}.eval.log")
    report = json.loads(out.read_text())
    scores = {"miou": report["miou"], "pixel_error": 1 - report["pixel_accuracy"]}
    if "instances" in report:
        inst = report["instances"]
        scores.update(dsb_score=inst["dsb_score"], f1=inst["f1"], instances=inst.get("method"))
    plan = cfg.get("plan")
    return {
        "value": scores[ds.metric],
        "scores": scores,
        "steps": last_steps(run),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "plan_seconds": plan_seconds(plan),
        "test_images": report.get("num_images"),
        "run": str(run),
        "model": cfg.get("model"),
        "target": target,
        **({"plan": {"kind": plan.get("kind"), "reasons": plan.get("reasons")}} if plan else {}),
    }


# ---------------------------------------------------------------- smp routes (the existing benchmarks' protocols)


def smp_isbi(r: Roots, budget: float) -> dict:
    """instances.py's smp protocol on slices 00-24; pixel error of sigmoid >= 0.5 on the test slices."""
    import instances

    start = time.perf_counter()
    model, steps = instances.train_smp(instances.dataset(r.train, "train", r.lists), budget)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    test = instances.dataset(r.test, "test", r.lists)
    wrong = total = 0
    for i in range(len(test)):
        image, mask = test.load(i)
        pred = instances.smp_probs(model, image)[1].numpy() >= 0.5
        wrong += int(np.count_nonzero(pred != (mask == 1)))
        total += mask.size
    return {
        "value": wrong / total,
        "scores": {"pixel_error": wrong / total},
        "steps": steps,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "test_images": len(test),
    }


def smp_facade(r: Roots, budget: float, test_limit: int | None) -> dict:
    """facade.py's smp protocol (photos halved, cross-entropy); mIoU at the labels' full resolution."""
    import facade

    facade.DATA = r.train  # its functions read the data set from this module global
    start = time.perf_counter()
    model, steps = facade.train_smp(budget)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = facade.evaluate_smp(model, test_limit)
    return {
        "value": report["miou"],
        "scores": {"miou": report["miou"], "pixel_error": 1 - report["pixel_accuracy"]},
        "steps": steps,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "test_images": report["num_images"],
    }


def smp_instances(ds: Dataset, r: Roots, budget: float, work: Path) -> dict:
    """instances.py's smp protocol (DSB 2018: RGB / ImageNet normalisation) or bbbc039.py's (16-bit TIFF / 65535);
    objects = connected components of sigmoid >= 0.5, scored as the seglab routes."""
    import instances

    start = time.perf_counter()
    if ds.name == "bbbc039":
        import bbbc039

        res = bbbc039.run_smp(r.train, r.lists, budget, work)  # trains and scores (components, watershed)
        row = res["rows"][("smp", "components")]
        steps, train_seconds = res["steps"], res["train_seconds"]
        eval_seconds = time.perf_counter() - start - train_seconds
    else:
        model, steps = instances.train_smp(instances.dataset(r.train, "train", r.lists), budget)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        test = instances.dataset(r.test, "test", r.lists, instances=True)
        rows: dict = {}
        instances.score(
            rows,
            "smp",
            [("components", "components", {})],
            lambda im: (instances.smp_probs(model, im), "mask"),
            test,
            lambda i, mask: test.load_instances(i),
            None,
            {},
        )
        row = rows[("smp", "components")]
        eval_seconds = time.perf_counter() - start
    return {
        "value": row[ds.metric],
        "scores": {"dsb_score": row["dsb_score"], "f1": row["f1"], "instances": "components"},
        "steps": steps,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "test_images": row["images"],
    }


# ---------------------------------------------------------------- results


def machine(threads: int | None) -> dict:
    from seglab.bench.latency import device_name

    return {
        "cpu": device_name(torch.device("cpu")),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
    }


def read_results(path: Path) -> dict[tuple[str, str], dict]:
    """The saved results by (data set, route label); the last line wins (``--force`` appends a new one)."""
    done: dict[tuple[str, str], dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    res = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash: that route is redone
                    continue
                done[(res["dataset"], res["label"])] = res
    return done


def append_result(path: Path, res: dict) -> None:
    """One finished result as one line, written whole (a single write, flushed to disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(res, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def fmt(value: float | None, metric: str) -> str:
    return "—" if value is None else f"{value:.4f}" if metric == "pixel_error" else f"{value:.3f}"


def goal(ds: Dataset, hands: list[float], plan: float | None, smp: float | None) -> tuple[str, str]:
    """The issue's goal for ``ds`` (text) and whether the plan meets it: yes / no / — (results missing)."""
    if ds.metric == "pixel_error":
        ref = max(hands) if hands else None
        text = "plan ≤ hand + 0.005" + (f" ({ref + 0.005:.4f})" if ref is not None else "")
        ok_hand = None if ref is None or plan is None else plan <= ref + 0.005
        ok_smp = None if smp is None or plan is None else plan < smp
    else:
        ref = max(hands) if hands else None
        what = "max(hand)" if len(ds.hands) > 1 else "hand"
        text = f"plan ≥ {what} − 0.01" + (f" ({ref - 0.01:.3f})" if ref is not None else "")
        ok_hand = None if ref is None or plan is None else plan >= ref - 0.01
        ok_smp = None if smp is None or plan is None else plan > smp
    met = " / ".join("—" if ok is None else "yes" if ok else "no" for ok in (ok_hand, ok_smp))
    return text + "; plan beats smp", met


def table(results: dict[tuple[str, str], dict], datasets: list[str]) -> str:
    lines = [
        "| data set | metric | hand | plan | smp U-Net-r18 | goal | met (hand / smp) | steps (hand / plan / smp) "
        "| budget | machine |",
        "|---|---|---|---:|---:|---|---|---|---:|---|",
    ]
    notes = []
    for name in datasets:
        ds = DATASETS[name]
        rows = {label: res for (d, label), res in results.items() if d == name}
        if not rows:
            continue
        hands = [rows.get(h.label) for h in ds.hands]
        plan, smp = rows.get("plan"), rows.get("smp")
        hand_text = "<br>".join(
            f"{h.label}: {fmt(r and r['value'], ds.metric)}" for h, r in zip(ds.hands, hands)
        )
        text, met = goal(ds, [r["value"] for r in hands if r], plan and plan["value"], smp and smp["value"])
        steps = " / ".join(
            "+".join(str(r["steps"]) if r else "—" for r in hands)
            if part == "hand"
            else str(rows[part]["steps"])
            if part in rows
            else "—"
            for part in ("hand", "plan", "smp")
        )
        budgets = sorted({r["budget_s"] for r in rows.values()})
        machines = sorted(
            {f"{r['machine']['cpu']}, {r['machine']['threads']} threads" for r in rows.values()}
        )
        lines.append(
            f"| {name} | {METRIC_NAMES[ds.metric]} | {hand_text} | {fmt(plan and plan['value'], ds.metric)} | "
            f"{fmt(smp and smp['value'], ds.metric)} | {text} | {met} | {steps} | "
            f"{', '.join(f'{b / 60:g} min' for b in budgets)} | {'; '.join(machines)} |"
        )
        if plan and plan.get("plan_seconds") is not None:
            notes.append(
                f"{name}: planning took {plan['plan_seconds']:.0f} s of the plan route's "
                f"{plan['train_seconds']:.0f} s of `seglab train`"
            )
    published = ", ".join(f"{k} {v:g}" for k, v in PUBLISHED.items())
    notes.append(f"the hand recipes' published test numbers (docs/recipes): {published}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}"
    )
    p.add_argument(
        "--routes",
        default=",".join(ROUTES),
        help="comma-separated, run in this order: hand (every hand recipe of the data set), a hand recipe's name "
        "(e.g. labelmefacade-pretrained), plan, smp",
    )
    p.add_argument("--minutes", type=float, help="every budget set to this many minutes (a quick check)")
    p.add_argument("--test-limit", type=int, help="score the first N test images only (a quick check)")
    p.add_argument("--threads", type=int, help="torch threads of every route (default: torch's)")
    p.add_argument("--force", action="store_true", help="redo the chosen routes even if their results exist")
    p.add_argument("--table", action="store_true", help="only print (and write) the table of saved results")
    p.add_argument("--shared", default=str(SHARED), help="the shared data sets (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-plan"), help="results and runs")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    recipes = tuple(h.label for d in DATASETS.values() for h in d.hands if "," not in h.label)
    for flag, chosen, known in (
        ("--datasets", args.datasets, tuple(DATASETS)),
        ("--routes", args.routes, ROUTES + recipes),
    ):
        bad = [c for c in chosen if c not in known]
        if bad or not chosen:
            p.error(
                f"{flag}: unknown {bad[0]!r}; choose from {', '.join(known)}" if bad else f"{flag}: empty"
            )
    if args.minutes is not None and args.minutes <= 0:
        p.error("--minutes must be > 0")
    if (args.test_limit is not None and args.test_limit < 1) or (
        args.threads is not None and args.threads < 1
    ):
        p.error("--test-limit and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    tag = "".join(
        [f"-{args.minutes:g}m" if args.minutes else "", f"-test{args.test_limit}" if args.test_limit else ""]
    )
    results_path = out / f"results{tag}.jsonl"
    work = out / f"runs{tag}"
    if args.table:
        text = table(read_results(results_path), list(DATASETS))
        print(text)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"results{tag}.md").write_text(text)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    for name in args.datasets:
        if not (shared / DATASETS[name].folder / "images").is_dir():
            sys.exit(f"{shared / DATASETS[name].folder} is not available (--shared)")
    host = machine(args.threads)
    failed = []
    for name in args.datasets:
        ds = DATASETS[name]
        budget = (args.minutes if args.minutes else ds.minutes) * 60
        r = roots(ds, shared, work, args.test_limit)
        todo = []  # in the order of --routes; "hand" is every hand recipe, a recipe's name that one
        for route in args.routes:
            if route in ("plan", "smp"):
                todo.append((route, route, None))
            else:
                todo += [(h.label, "hand", h) for h in ds.hands if route in ("hand", h.label)]
        for label, route, hand in todo:
            if (name, label) in read_results(results_path) and not args.force:
                print(
                    f"{name} / {label}: done before ({results_path}), skipped (--force redoes it)",
                    file=sys.stderr,
                )
                continue
            print(f"{name} / {label}: {budget / 60:g} min of training ...", file=sys.stderr, flush=True)
            run = work / name / label.replace(", ", "-").replace(" ", "-")
            try:
                if route == "smp":
                    if name == "isbi":
                        res = smp_isbi(r, budget)
                    elif name == "facade":
                        res = smp_facade(r, budget, args.test_limit)
                    else:
                        res = smp_instances(ds, r, budget, run)
                else:
                    res = seglab_route(ds, r, budget, run, hand, args.threads)
            except Exception as e:  # noqa: BLE001 - one route's failure must not lose the others' results
                print(f"{name} / {label}: FAILED ({e}); a rerun retries it", file=sys.stderr)
                failed.append(f"{name} / {label}")
                continue
            res = {
                "dataset": name,
                "label": label,
                "route": route,
                "metric": ds.metric,
                **res,
                "budget_s": budget,
                "test_limit": args.test_limit,
                "machine": host,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            append_result(results_path, res)
            print(
                f"{name} / {label}: {METRIC_NAMES[ds.metric]} {fmt(res['value'], ds.metric)} after "
                f"{res['steps']} steps ({res['train_seconds']:.0f} s) -> {results_path}",
                file=sys.stderr,
            )
    text = table(read_results(results_path), list(DATASETS))
    print(text)
    (out / f"results{tag}.md").write_text(text)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
