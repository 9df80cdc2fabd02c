"""The trainer's parts, each alone: optimizer groups, schedule, time budget, one epoch (accumulation, clipping, host
syncs), the precision probe, the data path, callbacks; and that the whole trainer learns."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from torch import nn

from seglab.config import Config
from seglab.engine import optim as optim_module
from seglab.engine.data import EpochSampler, build_data
from seglab.engine.device import probe_amp, use_channels_last
from seglab.engine.loop import StepParts, train_one_epoch
from seglab.engine.optim import Budget, Schedule, build_optimizer, param_groups
from seglab.engine.state import TrainState
from seglab.engine.train import train
from seglab.errors import ConfigError, SeglabError


class Tiny(nn.Module):
    """An 'encoder' (conv + batch norm) and a head, like a Segmentor."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_param_groups_skip_decay_on_norms_and_biases_and_scale_the_encoder():
    model = Tiny()
    groups = param_groups(model, weight_decay=0.1, encoder_lr=0.25)
    by_id = {id(p): g for g in groups for p in g["params"]}
    enc_conv, enc_bias = model.encoder[0].weight, model.encoder[0].bias
    bn_w, head_w, head_b = model.encoder[1].weight, model.head.weight, model.head.bias
    assert by_id[id(enc_conv)]["weight_decay"] == 0.1 and by_id[id(enc_conv)]["lr_scale"] == 0.25
    assert by_id[id(enc_bias)]["weight_decay"] == 0.0 and by_id[id(bn_w)]["weight_decay"] == 0.0
    assert by_id[id(head_w)]["weight_decay"] == 0.1 and by_id[id(head_w)]["lr_scale"] == 1.0
    assert by_id[id(head_b)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_build_optimizer(name, cls):
    cfg = Config().override([f"train.optimizer={name}", "train.nesterov=true"]).train
    opt = build_optimizer(cfg, Tiny())
    assert type(opt) is cls
    if name == "sgd":
        assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)


def test_schedule_warms_up_then_follows_steps_or_time_whichever_ends_first():
    s = Schedule("poly", total_steps=100, warmup=10)
    assert [s.factor(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert s.factor(55) == pytest.approx(0.5**0.9) and s.factor(100) == 0.0
    cos = Schedule("cosine", total_steps=100, warmup=10, time_limit=60.0)
    assert cos.factor(10, elapsed=30.0) == pytest.approx(0.5)  # half the time gone: cos(pi/2)
    assert cos.factor(10, elapsed=60.0) == pytest.approx(0.0)
    assert cos.factor(100, elapsed=1.0) == pytest.approx(0.0)  # the steps ran out first
    assert Schedule("constant", 10, warmup=4).factor(2) == pytest.approx(0.75)


def fake_clock(monkeypatch, seconds_per_forward, model):
    """Time that advances only when the model runs a forward pass."""
    clock = {"t": 0.0}
    monkeypatch.setattr(optim_module, "now", lambda: clock["t"])
    model.register_forward_hook(lambda *a: clock.__setitem__("t", clock["t"] + seconds_per_forward))
    return clock


def tiny_parts(model, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return StepParts(
        model=model,
        net=model,
        criterion=nn.CrossEntropyLoss(ignore_index=255),
        optimizer=opt,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        schedule=kw.pop("schedule", Schedule("constant", 100)),
        base_lr=0.1,
        device=torch.device("cpu"),
        **kw,
    )


def batches(n, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 8, 8, generator=g), torch.randint(2, (size, 8, 8), generator=g))
        for _ in range(n)
    ]


def test_an_epoch_stops_within_one_step_of_the_time_limit_and_the_schedule_ends_there(monkeypatch):
    model = Tiny()
    fake_clock(monkeypatch, 1.0, model)
    parts = tiny_parts(model, schedule=Schedule("poly", total_steps=1000, time_limit=5.5))
    state, budget = TrainState(), Budget(5.5)
    lrs = []
    stats = train_one_epoch(
        parts, batches(20), state, budget, epoch=0, log_interval=1, on_log=lambda s: lrs.append(s["lr"])
    )
    assert stats.out_of_time and state.step == 6 and stats.images == 24  # 6 s > 5.5 s: stopped after the 6th
    # step k is taken k seconds in: its rate follows the time spent, and the last one, past the limit, is 0
    assert lrs == pytest.approx([0.1 * (1 - k / 5.5) ** 0.9 for k in range(1, 6)] + [0.0])


def test_the_time_limit_ends_a_whole_run_with_a_final_checkpoint(monkeypatch, shapes_dir, tmp_path):
    import seglab.engine.loop as loop_module

    clock = {"t": 0.0}
    monkeypatch.setattr(optim_module, "now", lambda: clock["t"])
    real = loop_module.forward_loss

    def forward_loss(*a, **k):  # every training forward pass takes 1 s of the fake clock
        clock["t"] += 1.0
        return real(*a, **k)

    monkeypatch.setattr(loop_module, "forward_loss", forward_loss)
    cfg = Config().override(
        [
            f"data.root={shapes_dir}",
            f"train.out_dir={tmp_path / 'run'}",
            "train.epochs=50",
            "train.batch_size=8",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            "train.time_limit=10s",
            "train.log_interval=1",
        ]
    )
    result = train(cfg)
    steps = result.history[-1]["steps"]
    assert steps == 10 and result.history[-1]["stopped"] == "time limit"  # 4 steps an epoch: 2.5 epochs
    assert len(result.history) == 3 and result.history[-1]["lr"] == 0.0  # the schedule ends at the limit
    assert result.last_checkpoint.is_file() and "val_miou" in result.history[-1]


def test_a_time_limit_spent_on_set_up_is_a_clear_error_and_leaves_no_run(monkeypatch, shapes_dir, tmp_path):
    clock = {"t": 0.0}

    def now():  # every reading of the clock is 20 s later: set-up alone outlasts the 10 s budget
        clock["t"] += 20.0
        return clock["t"]

    monkeypatch.setattr(optim_module, "now", now)
    cfg = Config().override(
        [
            f"data.root={shapes_dir}",
            f"train.out_dir={tmp_path / 'run'}",
            "train.epochs=5",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            "train.time_limit=10s",
        ]
    )
    with pytest.raises(ConfigError, match=r"train.time_limit \(10 s\) ran out before the first step"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_accumulation_equals_one_step_on_the_whole_batch():
    torch.manual_seed(0)
    a = nn.Conv2d(3, 2, 1)
    b = nn.Conv2d(3, 2, 1)
    b.load_state_dict(a.state_dict())
    halves = batches(2, size=4)
    whole = [(torch.cat([halves[0][0], halves[1][0]]), torch.cat([halves[0][1], halves[1][1]]))]
    train_one_epoch(tiny_parts(a, accumulate=2), halves, TrainState(), Budget(None), epoch=0)
    train_one_epoch(tiny_parts(b), whole, TrainState(), Budget(None), epoch=0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    parts = tiny_parts(model, clip_grad=1e-3)
    parts.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    parts.base_lr = 1.0
    train_one_epoch(parts, batches(1), TrainState(), Budget(None), epoch=0)
    with torch.no_grad():
        change = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), before)))
    assert change == pytest.approx(1e-3, rel=1e-4)  # SGD, lr 1: the step is the clipped gradient


def count_host_reads(monkeypatch):
    calls = {"n": 0}
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        real = getattr(torch.Tensor, name)

        def wrapped(self, *a, _real=real, **k):
            calls["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return calls


@pytest.mark.parametrize("loss", ["ce", "ce+dice"])
def test_steps_read_nothing_back_from_the_device(monkeypatch, loss):
    from seglab.losses import make_loss

    criterion = make_loss({"ce": 1.0, "dice": 1.0} if loss == "ce+dice" else "ce", ignore_index=255)
    reads = []
    for n in (2, 6):
        parts = tiny_parts(Tiny())
        parts.criterion = criterion
        data = batches(n)
        with monkeypatch.context() as m:
            calls = count_host_reads(m)
            train_one_epoch(parts, data, TrainState(), Budget(None), epoch=0, log_interval=100)
        reads.append(calls["n"])
    assert reads[0] == reads[1] <= 3  # one read-out at the end, whatever the number of steps


def test_a_non_finite_loss_is_reported_with_its_step_range():
    model = Tiny()
    parts = tiny_parts(model)
    data = batches(4)
    data[2] = (torch.full_like(data[2][0], float("nan")), data[2][1])
    with pytest.raises(SeglabError, match="non-finite between optimizer steps 5 and 6"):
        train_one_epoch(parts, data, TrainState(step=2), Budget(None), epoch=0, log_interval=2)


def test_amp_probe_keeps_the_faster_and_the_choice_does_not_depend_on_the_machine():
    calls = []
    timings = {"off": [0.5, 0.4, 0.45], "bf16": [0.3, 0.2, 0.25]}

    def step(amp):
        calls.append(amp)

    def timer(fn):
        before = len(calls)
        fn()
        amp = calls[before]
        return timings[amp].pop(0)

    choice, medians = probe_amp(step, ["off", "bf16"], timer=timer)
    assert choice == "bf16" and medians == pytest.approx({"off": 0.45, "bf16": 0.25})
    assert calls == ["off", "bf16"] * 4  # warm-up, then interleaved
    timings.update(off=[1.0, 1.0, 1.0], bf16=[0.97, 0.97, 0.97])  # 3 % faster is within the noise: fp32 stays
    assert probe_amp(step, ["off", "bf16"], timer=timer)[0] == "off"


def test_amp_auto_probe_leaves_the_model_and_random_streams_untouched(monkeypatch, shapes_dir, tmp_path):
    """The probe of a real run picks one of the candidates, and a run with auto equals a run with that choice."""
    import seglab.engine.train as train_module

    monkeypatch.setattr(train_module, "amp_candidates", lambda device: ["off", "bf16"])
    monkeypatch.setattr(
        train_module, "probe_amp", lambda step, c: (step("bf16"), step("off"), ("off", {}))[2]
    )

    def cfg(name, amp):
        return Config().override(
            [
                f"data.root={shapes_dir}",
                f"train.out_dir={tmp_path / name}",
                "train.epochs=1",
                "train.batch_size=8",
                "model.params={depth: 2, base_channels: 4, dropout: 0.2}",
                "train.progress=false",
                f"train.amp={amp}",
            ]
        )

    auto, off = train(cfg("auto", "auto")), train(cfg("off", "off"))
    assert auto.history[0]["amp"] == "off"
    assert auto.history[0]["train_loss"] == off.history[0]["train_loss"]


def test_channels_last_default():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last(None, cpu, "off") and not use_channels_last(None, cuda, "off")
    assert use_channels_last(None, cuda, "bf16") and not use_channels_last(False, cpu, "off")


def test_epoch_sampler_draws_depend_only_on_seed_and_epoch():
    a, b = EpochSampler(5, 12, seed=3), EpochSampler(5, 12, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    draws = list(a)
    assert draws == list(b) and len(draws) == 12
    assert sorted(i for _, i in draws[:5]) == list(range(5))  # whole permutations first
    b.set_epoch(3)
    assert list(b) != draws


def test_batches_do_not_depend_on_the_number_of_workers(shapes_dir):
    def first_batch(workers):
        cfg = Config().override(
            [
                f"data.root={shapes_dir}",
                "train.batch_size=4",
                f"data.num_workers={workers}",
                "data.rotation=20",
                "data.scale=[0.7, 1.3]",
            ]
        )
        data = build_data(cfg, torch.device("cpu"))
        data.sampler.set_epoch(1)
        torch.manual_seed(123)  # the global stream (dropout) does not reach the augmentation
        return next(iter(data.train_loader))

    a, b = first_batch(0), first_batch(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_trainer_learns(shapes_dir, tmp_path):
    """Overfit 4 images: training-set mIoU >= 0.95 within a few seconds of CPU."""
    from seglab.engine.evaluate import evaluate

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    stems = sorted(p.stem for p in (data / "images").iterdir())[:4]
    cfg = Config().override(
        [
            f"data.root={data}",
            f"train.out_dir={tmp_path / 'run'}",
            "train.epochs=30",
            "data.repeat=4",
            "train.batch_size=4",
            "model.params={depth: 3, base_channels: 16}",
            "train.progress=false",
            "train.lr=0.01",
            "data.hflip=false",
            "data.vflip=false",
            f"data.splits={{train: {stems}, val: {stems}, test: {stems}}}",
        ]
    )
    result = train(cfg)
    assert result.best_metrics["miou"] >= 0.95
    report = evaluate(result.best_checkpoint, data, "test", progress=False)
    assert report["miou"] == pytest.approx(result.best_metrics["miou"])


def test_tensorboard_event_files_hold_scalars_and_overlays(shapes_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = Config().override(
        [
            f"data.root={shapes_dir}",
            f"train.out_dir={tmp_path / 'run'}",
            "train.epochs=2",
            "train.batch_size=8",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            "train.tensorboard=true",
            "train.log_interval=2",
        ]
    )
    train(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "val/miou"} <= set(tags["scalars"]) and "val/overlays" in tags["images"]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("val/miou")] == pytest.approx([r["val_miou"] for r in log])
    assert not math.isnan(events.Scalars("train/loss")[-1].value)
