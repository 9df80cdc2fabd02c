"""``plan``: fingerprint the data and the machine, run the rules in order, and write a complete config whose
``plan`` section keeps every choice's reason and both fingerprints (``seglab plan``, ``seglab train --data DIR
--time-limit T``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seglab.config import Config, parse_duration
from seglab.errors import ConfigError
from seglab.plan import rules
from seglab.plan.fingerprint import DataFingerprint, fingerprint_data
from seglab.plan.machine import MachineFingerprint, probe_machine

SETUP_SECONDS = 30.0  # of the budget, spent before the first step (data checks, precision probe, model build)


@dataclass
class Plan:
    """A planned config, the reason for each choice (by the config keys it sets), and what was measured."""

    config: Config
    reasons: dict[str, str]
    data: DataFingerprint
    machine: MachineFingerprint
    kind: str
    seconds: float

    def summary(self) -> str:
        """One line per choice: the keys, their values and the measurement behind them."""
        fp, m = self.data, self.machine
        flat = _flat(self.config.to_dict())
        splits = " / ".join(f"{fp.splits.get(s, 0)} {s}" for s in ("train", "val", "test"))
        lines = [
            f"plan for {fp.root} in {self.config.plan['time_limit']} of training ({self.seconds:.0f} s to plan)",
            f"  data: {splits} images, median {fp.median_size[0]}x{fp.median_size[1]}, {fp.bands} band(s) "
            f"{fp.dtype}, {fp.num_classes} classes{', instance maps' if fp.instances else ''} "
            f"(measured in {fp.seconds:.0f} s on {fp.sampled_masks} sampled masks)",
            f"  machine: {m.device} {m.name}, {m.cores} cores, {m.threads} threads, torch {m.torch} "
            f"(probe {m.seconds:.0f} s)",
        ]
        for keys, reason in self.reasons.items():
            shown = ", ".join(f"{k.split('.', 1)[1]}={_show(flat.get(k))}" for k in keys.split(", "))
            lines.append(f"  {shown}\n      because {reason}")
        return "\n".join(lines)

    def to_yaml(self) -> str:
        """A config file (`seglab train FILE`, `seglab train --plan FILE`) with the reasons as its plan section."""
        head = f"# seglab plan {self.data.root} --time-limit {self.config.plan['time_limit']}: every choice's reason is\n"
        return (
            head
            + "# under plan.reasons, the measurements under plan.data and plan.machine\n"
            + self.config.dump()
        )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out[key] = v
        if isinstance(v, dict) and prefix.count(".") < 1:
            out.update(_flat(v, key + "."))
    return out


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def parse_weights(specs: Sequence[str]) -> list[rules.Weights]:
    """``ENCODER=FILE`` (a timm encoder name and a local file or ``pkg:MODULE/PATH``) as planner candidates with
    ImageNet's normalisation."""
    out = []
    for spec in specs:
        encoder, sep, path = str(spec).partition("=")
        if not sep or not encoder or not path:
            raise ConfigError(f"--weights {spec!r} must be ENCODER=FILE, e.g. resnet18=weights/resnet18.pth")
        out.append(
            rules.Weights(encoder.strip(), path.strip(), label=f"unet-{encoder.strip()} ({Path(path).name})")
        )
    return out


def usable_weights(
    weights: Sequence[rules.Weights], named: Sequence[rules.Weights] = ()
) -> list[rules.Weights]:
    """The known weights whose file is here, and every weights file the user named (which must exist)."""
    from seglab.models.encoders.base import resolve_weights_path

    usable = []
    for w in weights:
        try:
            if resolve_weights_path(w.path).is_file():
                usable.append(w)
        except ConfigError:  # its package is not installed
            pass
    for w in named:
        if not resolve_weights_path(w.path).is_file():
            raise ConfigError(f"weights file {w.path} (for encoder {w.encoder}) does not exist")
        usable.append(w)
    return usable


def plan(
    data: str | Path,
    time_limit: str | float = "10m",
    *,
    kind: str | None = None,
    weights: Sequence[str | rules.Weights] = (),
    device: str = "cpu",
    format: str = "auto",
    ignore_index: int = 255,
    threads: int | None = None,
    progress: bool | Callable[[str], None] = True,
) -> Plan:
    """Plan a training run of ``time_limit`` on the data set ``data``: a complete Config, the reasons, the
    fingerprints. ``kind`` declares the data's kind (else inferred); ``weights`` adds local weight files
    (``ENCODER=FILE``) to the known ones."""
    start = time.perf_counter()
    say = progress if callable(progress) else (_stderr if progress else None)
    budget = parse_duration(time_limit, "time_limit")
    kind = kind or "auto"
    if kind != "auto" and kind not in rules.KINDS:
        raise ConfigError(f"data kind {kind!r} is not one of: auto, {', '.join(rules.KINDS)}")
    named = [w if isinstance(w, rules.Weights) else parse_weights([w])[0] for w in weights]
    from seglab.engine.device import resolve_device

    dev = resolve_device(device).type
    fp = fingerprint_data(data, format=format, ignore_index=ignore_index, progress=say)
    if fp.num_classes < 2:
        raise ConfigError(f"{data}: the masks hold fewer than 2 classes; nothing to plan")
    chosen: dict[str, rules.Choice] = {}

    def take(choice: rules.Choice) -> None:
        chosen[", ".join(choice.values)] = choice

    kind_name, why = rules.data_kind(fp, kind)
    take(rules.Choice({"data.kind": kind_name}, why))
    tgt = rules.target(fp)
    take(tgt)
    target_name = tgt.values["data.target"]
    usable = usable_weights(rules.KNOWN_WEIGHTS, named)
    sc = rules.scale(fp, target_name, rules.finest_stride(fp, usable))
    take(sc)
    factor = (sc.values["data.resize"] or {"scale": 1.0})["scale"]
    cb = rules.crop_and_batch(fp, factor, dev)
    take(cb)
    crop, batch = cb.values["data.crop_size"], cb.values["train.batch_size"]
    num_classes = 3 if target_name == "interior_boundary" else fp.num_classes
    machine = probe_machine(
        rules.candidates(fp, usable, crop, batch),
        in_channels=fp.bands,
        num_classes=num_classes,
        device=device,
        threads=threads,
        progress=say,
    )
    train_s = max(budget - SETUP_SECONDS, budget / 2)
    best, mc = rules.model(machine.candidates, train_s, fp, factor)
    take(mc)
    steps = best.steps_in(train_s)
    take(rules.normalisation(fp, best, usable))
    take(rules.loss(fp, target_name))
    take(rules.optimisation(best, steps, str(time_limit)))
    take(rules.augmentations(kind_name))
    take(rules.validation(fp))
    take(rules.repeat(fp, batch))

    values: dict[str, Any] = {
        "data.root": str(data),
        "data.format": fp.format,
        "data.ignore_index": fp.ignore_index,
        "train.device": device,
        "train.out_dir": f"runs/plan-{Path(data).resolve().name}",
    }
    for c in chosen.values():
        values.update(c.values)
    tree: dict[str, Any] = {"data": {}, "model": {}, "train": {}}
    for key, value in values.items():
        section, _, name = key.partition(".")
        tree[section][name] = value
    reasons = {keys: c.reason for keys, c in chosen.items()}
    seconds = time.perf_counter() - start
    tree["plan"] = {
        "kind": kind_name,
        "time_limit": str(time_limit),
        "seconds": round(seconds, 1),
        "reasons": reasons,
        "data": fp.to_dict(),
        "machine": machine.to_dict(),
    }
    config = Config.from_dict(tree)
    return Plan(config, reasons, fp, machine, kind_name, seconds)


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)
