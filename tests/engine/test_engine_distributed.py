"""Distributed training and evaluation (gloo, CPU): N processes compute what one process computes.

The multi-process tests start real jobs through torchrun (``seglab train --nproc 2``, ``python -m
torch.distributed.run``) on a tiny U-Net with batch norm and compare them with one process trained in-process on
the same data, seed and global batch: the weights agree to fp32 round-off, the validation metrics exactly.
Faults (a killed worker under ``--max-restarts 1``, a rank that raises, a rank that hangs) are injected by
``ddp_worker.py``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seglab.config import Config
from seglab.engine.data import EpochSampler
from seglab.engine.distributed import (
    Dist,
    ShardSampler,
    SharedBudget,
    backend_for,
    ddp_kwargs,
    process_group,
    rank_device,
)
from seglab.errors import ConfigError
from seglab.layers.norm import SyncBatchNorm

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
EPOCHS, BATCH = 3, 4  # 32 training images: 8 global batches (steps) per epoch


def write_config(path: Path, data: Path, **train: object) -> Path:
    cfg = {
        "data": {"root": str(data), "num_workers": 0},
        "model": {"arch": "unet", "params": {"depth": 2, "base_channels": 4}},
        "train": {
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "loss": "ce",
            "amp": "off",
            "sync_bn": True,
            "progress": False,
            "tensorboard": False,
            "seed": 3,
            **train,
        },
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "SEGLAB_TEST_FAULT"}
    return {**out, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def run(cmd: list[object], timeout: float = 90, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw
    )


def weights_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(ref: Path, other: Path) -> None:
    """Same weights to fp32 round-off, identical validation metrics, the same steps and images per epoch."""
    assert weights_diff(ref, other) < 1e-5
    a, b = records(ref), records(other)
    assert [r["epoch"] for r in b] == list(range(1, EPOCHS + 1))
    for ra, rb in zip(a, b):
        assert (rb["steps"], rb["images"]) == (ra["steps"], ra["images"])
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
        assert {k: v for k, v in rb.items() if k.startswith("val_")} == {
            k: v for k, v in ra.items() if k.startswith("val_")
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, global batch 4 (in-process)."""
    from seglab.engine.train import train

    tmp = tmp_path_factory.mktemp("ddp-ref")
    cfg = Config.load(write_config(tmp / "cfg.yaml", shapes_dir)).override([f"train.out_dir={tmp / 'run'}"])
    train(cfg)
    return tmp / "run"


# ------------------------------------------------------------------ one process vs two, step for step


def test_two_processes_train_what_one_process_trains(reference, shapes_dir, tmp_path):
    """`seglab train --nproc 2`: 2 processes x batch 2 == 1 process x batch 4 (SyncBatchNorm, same seed and data
    order); rank 0 alone writes the run folder and prints the result."""
    cfg = write_config(tmp_path / "cfg.yaml", shapes_dir)
    r = run(
        [sys.executable, "-m", "seglab", "train", cfg, "--out", tmp_path / "run", "--nproc", "2"], env=env()
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(reference, tmp_path / "run")
    assert r.stdout.count("best validation mIoU") == 1
    assert {p.name for p in (tmp_path / "run").iterdir()} == {p.name for p in reference.iterdir()}
    assert {r["processes"] for r in records(tmp_path / "run")} == {2}


def test_two_processes_train_what_one_process_trains_with_the_default_loss(shapes_dir, tmp_path):
    """The default loss, ce + dice: Dice's soft counts are pooled over the ranks (seglab.losses.global_batch), so
    `--nproc 2` trains what one process trains, as with cross-entropy alone (per-rank Dice: 6e-3 apart)."""
    from seglab.engine.train import train

    cfg = write_config(tmp_path / "cfg.yaml", shapes_dir, epochs=2, loss={"ce": 1.0, "dice": 1.0})
    train(Config.load(cfg).override([f"train.out_dir={tmp_path / 'one'}"]))
    r = run(
        [sys.executable, "-m", "seglab", "train", cfg, "--out", tmp_path / "two", "--nproc", "2"], env=env()
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert weights_diff(tmp_path / "one", tmp_path / "two") < 1e-5
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)


def test_two_nodes_on_localhost(reference, shapes_dir, tmp_path):
    """Two "machines" (one process each) meeting at a c10d rendezvous on 127.0.0.1, as on a real cluster."""
    cfg = write_config(tmp_path / "cfg.yaml", shapes_dir)
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "seglab-test",
                "-m",
                "seglab",
                "train",
                str(cfg),
                "--out",
                str(tmp_path / "run"),
            ],
            cwd=REPO,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert_same_run(reference, tmp_path / "run")
    assert sum(o[0].count("best validation mIoU") for o in outs) == 1  # printed by the global rank 0 only


# ------------------------------------------------------------------ faults


def test_killed_worker_restarts_from_last_checkpoint(reference, shapes_dir, tmp_path):
    """Rank 1 is SIGKILLed in the middle of epoch 2; torchrun --max-restarts 1 restarts both workers, which resume
    from epoch 1's commit and end exactly where an undisturbed run ends."""
    cfg = write_config(tmp_path / "cfg.yaml", shapes_dir)
    r = run(
        [
            *TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            WORKER,
            "train",
            cfg,
            "--out",
            tmp_path / "run",
        ],
        env=env(SEGLAB_TEST_FAULT="kill:1:12"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # a worker failed (rank 1 killed, or rank 0 losing it first) and the job still ended well: it was restarted
    assert "failed (exitcode: " in r.stderr
    assert_same_run(reference, tmp_path / "run")


@pytest.mark.parametrize(
    ("fault", "timeout", "message"),
    [
        ("raise:1:3", "10m", "RuntimeError: injected fault on rank 1"),  # its own message ends the job
        ("hang:1:3", "4s", "Timed out"),
    ],  # stuck outside the collectives: the others give up after dist_timeout
)
def test_failing_rank_takes_the_job_down(shapes_dir, tmp_path, fault, timeout, message):
    cfg = write_config(tmp_path / "cfg.yaml", shapes_dir, dist_timeout=timeout)
    t = time.perf_counter()
    r = run(
        [*TORCHRUN, "--standalone", "--nproc-per-node", "2", WORKER, "train", cfg, "--out", tmp_path / "run"],
        env=env(SEGLAB_TEST_FAULT=fault),
        timeout=120,
    )
    assert r.returncode != 0
    assert message in r.stderr
    assert time.perf_counter() - t < 100  # never hangs (run() would raise at 120 s)
    assert not (tmp_path / "run" / "last.state.pt").exists()  # nothing committed, nothing half-made


def test_launcher_reports_the_failed_process_in_one_line(shapes_dir, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", shapes_dir, batch_size=5)
    r = run(
        [sys.executable, "-m", "seglab", "train", cfg, "--out", tmp_path / "run", "--nproc", "2"], env=env()
    )
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("seglab: error: process ") and "of 2 failed (exit code 2)" in last
    assert "train.batch_size 5 is the global batch; it must split evenly over 2 processes" in last


# ------------------------------------------------------------------ distributed evaluation


def test_evaluate_two_processes_equals_one(reference, shapes_dir, tmp_path):
    """Each rank evaluates a shard of the split; the summed counts are one process's, exactly."""
    from seglab.engine.evaluate import evaluate

    one = evaluate(
        reference,
        shapes_dir,
        "all",
        batch_size=3,
        out=tmp_path / "one.json",
        progress=False,
        rand_class="circle",
    )
    r = run(
        [
            sys.executable,
            "-m",
            "seglab",
            "evaluate",
            reference,
            "--data",
            shapes_dir,
            "--split",
            "all",
            "--batch-size",
            "3",
            "--rand-class",
            "circle",
            "--out",
            tmp_path / "two.json",
            "--nproc",
            "2",
            "--no-progress",
        ],
        env=env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["num_images"] == one["num_images"] == 40
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two["miou"] == one["miou"] and two["iou"] == one["iou"]
    assert two["rand_error"] == pytest.approx(one["rand_error"], abs=1e-12)
    assert r.stdout.count("report:") == 1


def test_per_image_evaluation_and_report_two_processes_equals_one(reference, shapes_dir, tmp_path):
    """``evaluate --report`` under --nproc 2: every rank's per-image rows reach rank 0 (in split order), which
    alone renders the report."""
    from seglab.engine.evaluate import evaluate

    one = evaluate(
        reference,
        shapes_dir,
        "all",
        out=tmp_path / "one.json",
        progress=False,
        uncertainty="deterministic",
        per_image=True,
    )
    r = run(
        [
            sys.executable,
            "-m",
            "seglab",
            "evaluate",
            reference,
            "--data",
            shapes_dir,
            "--split",
            "all",
            "--out",
            tmp_path / "two.json",
            "--report",
            tmp_path / "report",
            "--nproc",
            "2",
            "--no-progress",
        ],
        env=env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert [row["index"] for row in two["images"]] == list(range(40))
    assert two["images"] == json.loads((tmp_path / "one.json").read_text())["images"]  # integer counts: exact
    assert two["confusion_matrix"] == one["confusion_matrix"]
    shown = json.loads((tmp_path / "report" / "report.json").read_text())
    assert shown["images"] == two["images"] and r.stdout.count("HTML report:") == 1


def test_instance_evaluation_two_processes_equals_one(reference, shapes_dir, tmp_path):
    """The per-image instance path shards too: the per-image instance scores gathered from both ranks are one
    process's, whatever the order."""
    from seglab.engine.evaluate import evaluate
    from seglab.instances import InstanceParams

    evaluate(
        reference,
        shapes_dir,
        "all",
        out=tmp_path / "one.json",
        progress=False,
        instances="watershed",
        instance_class="rectangle",
        instance_params=InstanceParams(threshold=0.3),
    )
    one = json.loads((tmp_path / "one.json").read_text())  # as written: NaN scores are null in both
    r = run(
        [
            sys.executable,
            "-m",
            "seglab",
            "evaluate",
            reference,
            "--data",
            shapes_dir,
            "--split",
            "all",
            "--instances",
            "watershed",
            "--instance-class",
            "rectangle",
            "--instance-param",
            "threshold=0.3",
            "--out",
            tmp_path / "two.json",
            "--nproc",
            "2",
            "--no-progress",
        ],
        env=env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["confusion_matrix"] == one["confusion_matrix"]
    numbers = {k for k, v in one["instances"].items() if isinstance(v, int | float) or v is None}
    assert numbers >= {"dsb_score", "f1", "aji", "pq", "rand_error", "num_true", "num_pred"}
    assert_close_tree({k: two["instances"][k] for k in numbers}, {k: one["instances"][k] for k in numbers})
    assert (
        two["instances"]["num_images"] == 40
        and min(two["instances"]["num_true"], two["instances"]["num_pred"]) > 0
    )


# ------------------------------------------------------------------ SyncBatchNorm and meters over 2 processes


def assert_close_tree(got: object, want: object) -> None:
    """Nested dicts and lists of numbers, equal to float64 round-off (NaN equals NaN, JSON's null too)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for k in want:
            assert_close_tree(got[k], want[k])
    elif got is None or want is None:
        assert got is want is None or math.isnan(got if want is None else want)
    else:
        torch.testing.assert_close(
            torch.tensor(got, dtype=torch.float64),
            torch.tensor(want, dtype=torch.float64),
            equal_nan=True,
            atol=1e-12,
            rtol=1e-10,
        )


def _two_rank_worker(rank: int, world: int, port: int) -> None:
    """Each rank holds half of a batch; SyncBatchNorm and the meters must give the full batch's answers."""
    import torch.distributed as dist

    from seglab.metrics import ConfusionMatrix, RandMeter
    from seglab.uncertainty.calibration import UncertaintyMeter

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * 3 + 1
    target = torch.randn(4, 3, 5, 6)
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    sync = SyncBatchNorm.convert(torch.nn.Sequential(ref)).train()[0]
    ref = torch.nn.BatchNorm2d(3).train()
    ref.load_state_dict(sync.state_dict())
    part = slice(2 * rank, 2 * rank + 2)

    x_full = x.clone().requires_grad_()
    y_full = ref(x_full)
    ((y_full - target) ** 2).mean().backward()
    x_local = x[part].clone().requires_grad_()
    y_local = sync(x_local)
    (((y_local - target[part]) ** 2).mean() / world).backward()  # DDP averages the ranks' local mean losses
    torch.testing.assert_close(y_local, y_full[part], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_local.grad, x_full.grad[part], atol=1e-6, rtol=1e-5)
    for p, q in zip(sync.parameters(), ref.parameters()):
        g = p.grad.clone()
        dist.all_reduce(g)
        torch.testing.assert_close(g, q.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sync.running_mean, ref.running_mean)
    torch.testing.assert_close(sync.running_var, ref.running_var)

    logits = torch.randn(4, 3, 8, 8)
    labels = torch.randint(0, 3, (4, 8, 8))
    labels[0, 0, :3] = 255
    meters = [ConfusionMatrix(3, per_image=True), RandMeter(1), UncertaintyMeter(3, n_bins=5)]
    full = [ConfusionMatrix(3, per_image=True), RandMeter(1), UncertaintyMeter(3, n_bins=5)]
    for m, f in zip(meters, full):
        arg = (lambda t: t.softmax(1)) if isinstance(m, UncertaintyMeter) else (lambda t: t)
        m.update(arg(logits[part]), labels[part])
        f.update(arg(logits), labels)
        m.all_reduce()
        assert_close_tree(m.compute(), f.compute())

    # host-side agreement: rank 0's clock, value and errors on every rank
    d = Dist(rank, world)
    budget = SharedBudget(10.0, d)
    budget.start -= 100.0 * rank  # rank 1's own clock says the budget is spent
    assert not budget.exhausted() and budget.elapsed() < 10.0
    assert d.broadcast({"rank": rank}) == {"rank": 0} and d.all_sum([rank, 1]) == [1.0, 2.0]
    assert d.from_main([rank + 0.5]) == [0.5]

    def refuse() -> None:
        raise ConfigError("refused on rank 0")

    with pytest.raises(ConfigError, match="refused on rank 0"):
        d.on_main(refuse)
    dist.destroy_process_group()


def test_sync_batch_norm_and_meters_over_two_processes():
    torch.multiprocessing.spawn(_two_rank_worker, args=(2, free_port()), nprocs=2)


# ------------------------------------------------------------------ the parts, in one process


def test_sync_batch_norm_alone_is_batch_norm():
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(4, momentum=None).train()
    sync = SyncBatchNorm.convert(torch.nn.Sequential(ref))[0]
    ref2 = torch.nn.BatchNorm2d(4, momentum=None)
    ref2.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(sync(x), ref2(x))
    torch.testing.assert_close(sync.running_var, ref2.running_var)


def test_convert_keeps_weights_keys_and_timm_activation():
    from timm.layers import BatchNormAct2d

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=torch.nn.ReLU), torch.nn.BatchNorm2d(4)
    )
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    keys = list(model.state_dict())
    converted = SyncBatchNorm.convert(model).eval()
    assert [type(m) for m in converted[1:]] == [SyncBatchNorm, SyncBatchNorm]
    assert list(converted.state_dict()) == keys  # checkpoints load into the plain model
    torch.testing.assert_close(converted(x), want)
    assert (converted[1](converted[0](x)) >= 0).all()  # the ReLU of BatchNormAct2d is kept


def test_backend_and_device_by_rank():
    """The CUDA path's choices, checked without a GPU: nccl and one GPU per local rank."""
    assert backend_for(torch.device("cuda", 0)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"
    assert rank_device(torch.device("cuda"), local_rank=3, world_size=4) == torch.device("cuda", 3)
    assert rank_device(torch.device("cuda", 1), local_rank=0, world_size=1) == torch.device("cuda", 1)
    assert rank_device(torch.device("cpu"), local_rank=3, world_size=4) == torch.device("cpu")
    with pytest.raises(ConfigError, match="names one GPU but 4 processes"):
        rank_device(torch.device("cuda", 1), local_rank=0, world_size=4)
    kw = ddp_kwargs(torch.device("cuda", 2), sync_bn=False)
    assert kw["device_ids"] == [2] and kw["output_device"] == 2
    assert ddp_kwargs(torch.device("cpu"), sync_bn=True)["device_ids"] is None


def test_single_process_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group(torch.device("cpu")) as (dist, device):
        assert (dist, device) == (Dist(), torch.device("cpu"))
    assert dist.broadcast(5) == 5 and dist.all_sum([1, 2]) == [1.0, 2.0] and dist.on_main(lambda: 7) == 7
    budget = SharedBudget(None, dist)
    assert not budget.exhausted() and budget.elapsed() >= 0


def test_sharded_epochs_hold_the_global_batches():
    """Local batch k of every rank together is global batch k of one process; every rank gets as many batches."""
    size, samples, batch, world = 10, 23, 6, 3
    one = list(EpochSampler(size, samples, seed=1, batch_size=batch))
    shards = [
        list(EpochSampler(size, samples, seed=1, rank=r, world_size=world, batch_size=batch))
        for r in range(world)
    ]
    local = batch // world
    assert {len(s) for s in shards} == {samples // batch * local}
    for k in range(samples // batch):
        together = sorted(p for s in shards for p in s[k * local : (k + 1) * local])
        assert together == sorted(one[k * batch : (k + 1) * batch])


def test_shard_sampler_covers_each_item_once():
    parts = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(7))


def test_nproc_runs_the_same_command_through_torchrun(monkeypatch, run_cli, shapes_dir):
    import seglab.engine.distributed as distributed

    calls = []
    monkeypatch.setattr(distributed, "launch", lambda n, argv: calls.append((n, argv)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, _, _ = run_cli("train", "--data", shapes_dir, "--nproc", "2", "--epochs", "1")
    assert code == 0 and calls == [(2, ["train", "--data", str(shapes_dir), "--epochs", "1"])]
    code, _, _ = run_cli("evaluate", "ckpt", "--data", shapes_dir, "--nproc=3")
    assert code == 0 and calls[-1] == (3, ["evaluate", "ckpt", "--data", str(shapes_dir)])


def test_dist_timeout_is_a_duration():
    assert Config().override(["train.dist_timeout=90s"]).train.dist_timeout == 90.0
    with pytest.raises(ConfigError, match="train.dist_timeout"):
        Config().override(["train.dist_timeout=soon"])


def test_error_file_is_whole_or_absent(monkeypatch, tmp_path):
    """A worker stopped while recording its error (torchrun stops the others when one fails) leaves no cut file:
    torchrun parses it with json.load and its own agent died of the JSONDecodeError."""
    import json

    from seglab.engine import distributed

    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))

    def stopped(data, f=None, **kwargs):  # the write is cut after its first bytes
        if f is not None:
            f.write('{"message": {"mess')
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed.json, "dump", stopped)
    monkeypatch.setattr(distributed.json, "dumps", stopped)
    with pytest.raises(KeyboardInterrupt):
        distributed.record_error(RuntimeError("boom"))
    assert not path.exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    distributed.record_error(RuntimeError("boom"))
    assert json.loads(path.read_text())["message"]["message"] == "RuntimeError: boom"
