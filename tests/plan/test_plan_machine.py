"""The machine fingerprint: the timed probe of the candidates (seglab.plan.machine.probe_machine)."""

from __future__ import annotations

import pytest
import torch
import yaml

from seglab.errors import ConfigError
from seglab.plan.machine import Candidate, MachineFingerprint, probe_machine, usable_cores

TINY = {"depth": 2, "base_channels": 4}


def tiny(name: str = "tiny", **params) -> Candidate:
    return Candidate(name, "unet", {**TINY, **params}, crop=32, batch=2)


def scripted_timer(script: list[dict[str, float]]):
    """A timer that runs the real step and returns the scripted seconds of the precision it ran at: ``script``
    holds one {precision: seconds} per timed call, in call order, whatever the machine."""
    calls = iter(script)

    def timer(fn):
        amp = fn()
        return next(calls)[amp]

    return timer


def test_steps_in_worked_example():
    c = Candidate("c", "unet", {}, seconds_per_step=0.75)
    assert c.steps_in(600) == 680  # 600 s, 15 % kept for data and validation: 510 s / 0.75 s
    assert c.steps_in(600, overhead=0.0) == 800
    assert c.steps_in(1.0) == 1  # 0.85 / 0.75 rounds down
    assert Candidate("unprobed", "unet", {}).steps_in(600) == 0


def test_injected_timer_gives_the_known_precision_and_seconds():
    """Each candidate's precision is probe_amp's choice on its own medians, and amp_seconds are the first's."""
    # candidate 1: bf16 clearly faster (medians off 0.5, bf16 0.2); candidate 2: bf16 only 2 % faster (within
    # probe_amp's 5 % margin), so fp32 stays (median 0.30)
    first = [("off", 0.5), ("bf16", 0.2), ("off", 0.9), ("bf16", 0.3), ("off", 0.4), ("bf16", 0.1)]
    second = [("off", 0.30), ("bf16", 0.294)] * 3
    timer = scripted_timer([{amp: s} for amp, s in first + second])
    lines: list[str] = []
    cands = [tiny("fast-bf16"), tiny("fp32-stays", base_channels=8)]
    fp = probe_machine(cands, in_channels=3, num_classes=4, repeats=3, timer=timer, progress=lines.append)
    assert [c.name for c in fp.candidates] == ["fast-bf16", "fp32-stays"]
    assert (fp.candidates[0].amp, fp.candidates[0].seconds_per_step) == ("bf16", pytest.approx(0.2))
    assert (fp.candidates[1].amp, fp.candidates[1].seconds_per_step) == ("off", pytest.approx(0.30))
    assert fp.amp_seconds == pytest.approx({"off": 0.5, "bf16": 0.2})
    assert fp.candidates[0].steps_in(600) == 2550  # 510 s / 0.2 s
    assert cands[0].amp == "off" and cands[0].seconds_per_step == 0.0  # the inputs are left as they were
    assert lines == [
        "fast-bf16: bf16 0.20 s/step (fp32 0.50, bf16 0.20; batch 2 x 32 px)",
        "fp32-stays: fp32 0.30 s/step (fp32 0.30, bf16 0.29; batch 2 x 32 px)",
    ]


def test_real_probe_of_two_tiny_candidates():
    """Positive times, the machine's description, and torch's threads and random streams left as they were."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    cands = [tiny("small"), tiny("wider", base_channels=8)]
    fp = probe_machine(cands, in_channels=3, num_classes=4, threads=threads + 1, repeats=1)
    assert torch.get_num_threads() == threads and fp.threads == threads + 1
    assert torch.equal(torch.get_rng_state(), rng)
    assert (fp.device, fp.torch, fp.cores) == ("cpu", str(torch.__version__), usable_cores())
    assert type(fp.torch) is str  # torch.__version__ is a str subclass that yaml.safe_dump refuses
    assert 1 <= fp.cores <= (torch.multiprocessing.cpu_count() or fp.cores)
    assert isinstance(fp.name, str) and fp.name
    assert [c.name for c in fp.candidates] == ["small", "wider"]
    for c in fp.candidates:
        assert c.amp in ("off", "bf16") and c.seconds_per_step > 0
    assert set(fp.amp_seconds) == {"off", "bf16"} and all(s > 0 for s in fp.amp_seconds.values())
    assert fp.candidates[0].seconds_per_step == fp.amp_seconds[fp.candidates[0].amp]
    # every timed step ran inside the probe
    assert fp.seconds >= sum(c.seconds_per_step for c in fp.candidates)


def test_weights_are_not_loaded():
    """A weights file does not change the time: the probe builds the network without it (this one is absent)."""
    cand = tiny("named-weights", weights="/nonexistent/weights.pth")
    fp = probe_machine([cand], in_channels=1, num_classes=2, repeats=1, timer=lambda fn: (fn(), 0.1)[1])
    assert fp.candidates[0].seconds_per_step == pytest.approx(0.1)
    assert fp.candidates[0].params["weights"] == "/nonexistent/weights.pth"  # the plan still names them


@pytest.mark.parametrize(
    ("cand", "cause"),
    [
        (Candidate("no-such-encoder", "unet", {"encoder": "not_an_encoder"}), "unknown encoder"),
        (Candidate("no-such-arch", "not_an_arch", {}), "unknown"),
        (tiny("bad-param", colour="blue"), "colour is not an argument of unet"),
    ],
)
def test_a_candidate_that_cannot_be_built_is_named(cand, cause):
    with pytest.raises(ConfigError) as e:
        probe_machine([tiny("fine"), cand], in_channels=3, num_classes=4, timer=lambda fn: 0.1)
    message = str(e.value)
    assert f"plan candidate {cand.name!r}" in message and cause in message and "\n" not in message


def test_bad_probe_arguments():
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        probe_machine([tiny()], in_channels=3, num_classes=4, threads=0)
    with pytest.raises(ConfigError, match="'zero-batch'.*batch and crop must be >= 1"):
        probe_machine([Candidate("zero-batch", "unet", TINY, batch=0)], in_channels=3, num_classes=4)


def test_fingerprint_round_trips_through_yaml():
    timer = scripted_timer([{"off": 0.4, "bf16": 0.3}] * 2)
    fp = probe_machine([tiny()], in_channels=3, num_classes=4, repeats=1, timer=timer)
    text = yaml.safe_dump(fp.to_dict())
    back = MachineFingerprint.from_dict(yaml.safe_load(text))
    assert back == fp and isinstance(back.candidates[0], Candidate)
    assert back.candidates[0].steps_in(60) == fp.candidates[0].steps_in(60) == 170  # 51 s / 0.3 s
