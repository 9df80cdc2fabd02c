"""The planner end to end on a small folder: the rules' values land in a valid config, every value has its
reason, the YAML loads back as the same config, and the plan depends on the measurements only (not the name)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from seglab.config import Config
from seglab.plan import planner, rules
from seglab.plan.machine import MachineFingerprint


@pytest.fixture(autouse=True)
def _fixed_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """A probe with known timings (the real one is tests/plan/test_plan_machine.py's): pretrained 0.6 s/step,
    scratch 0.5 s/step."""
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def probe(candidates, *, in_channels, num_classes, **kw):
        calls.append((in_channels, num_classes, [c.name for c in candidates]))
        timed = [replace(c, amp="off", seconds_per_step=0.6 if c.pretrained else 0.5) for c in candidates]
        return MachineFingerprint(
            name="test cpu", cores=2, threads=2, torch="x", candidates=timed, seconds=1.0
        )

    monkeypatch.setattr(planner, "probe_machine", probe)
    return calls


def test_plan_of_a_small_folder(shapes_dir: Path, tmp_path: Path, _fixed_probe: list) -> None:
    import seglab

    p = seglab.plan(shapes_dir, "2m", progress=False)  # the package is callable: the public API
    cfg = p.config
    usable = planner.usable_weights(rules.KNOWN_WEIGHTS)
    names = [c.name for c in rules.candidates(p.data, usable, 32, 8)]
    assert _fixed_probe == [(p.data.bands, p.data.num_classes, names)]
    # the 32-px images: whole images as crops, full resolution (smaller would go under 64 px)
    assert cfg.data.crop_size == 32 and cfg.data.resize is None and cfg.train.batch_size == 8
    assert cfg.train.time_limit == 120 and cfg.data.kind == p.kind and cfg.data.root == str(shapes_dir)
    # every value a rule chose is in the config, under the reason shown for it
    flat = {f"{s}.{k}": v for s, section in cfg.to_dict().items() if s != "plan" for k, v in section.items()}
    for keys in p.reasons:
        for key in keys.split(", "):
            assert key in flat, key
    summary = p.summary()
    for reason in p.reasons.values():
        assert reason in summary
    # the plan file is a config: it loads back as the same config, reasons and fingerprints included
    path = tmp_path / "plan.yaml"
    path.write_text(p.to_yaml())
    again = Config.load(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.plan["reasons"] == p.reasons and again.plan["data"]["splits"]["train"] == p.data.train_images


def test_the_plan_reads_the_measurements_not_the_name(shapes_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "renamed-copy"
    shutil.copytree(shapes_dir, other)
    a = planner.plan(shapes_dir, "2m", progress=False).config.to_dict()
    b = planner.plan(other, "2m", progress=False).config.to_dict()
    for d in (a, b):
        del d["data"]["root"], d["train"]["out_dir"], d["plan"]["data"]["root"], d["plan"]["data"]["seconds"]
        del d["plan"]["seconds"]
    assert a == b


def test_bad_requests_are_one_line_errors(shapes_dir: Path) -> None:
    from seglab.errors import ConfigError

    with pytest.raises(ConfigError, match="data kind 'satellite' is not one of"):
        planner.plan(shapes_dir, "2m", kind="satellite", progress=False)
    with pytest.raises(ConfigError, match="must be ENCODER=FILE"):
        planner.plan(shapes_dir, "2m", weights=["resnet18"], progress=False)
    with pytest.raises(ConfigError, match="does not exist"):
        planner.plan(shapes_dir, "2m", weights=["resnet18=/no/such.pth"], progress=False)
    with pytest.raises(ConfigError, match="time_limit"):
        planner.plan(shapes_dir, "-3m", progress=False)
