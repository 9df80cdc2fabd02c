"""The streaming meters: batches, merges, checkpoints and processes all give the one-shot answer."""

import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seglab.metrics import BoundaryMeter, ConfusionMatrix, boundary_counts, confusion_matrix, summarize
from seglab.metrics.functional import per_image_scores

C = 4


def data(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, 7, 9, generator=g)
    target = torch.randint(0, C - 1, (n, 7, 9), generator=g)
    target[:, 0, :3] = 255
    return logits, target


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(
            torch.tensor(a[k], dtype=torch.float64), torch.tensor(b[k], dtype=torch.float64), equal_nan=True
        ), k


def test_batches_add_up_to_the_whole():
    logits, target = data()
    meter = ConfusionMatrix(C)
    for i in range(0, 6, 2):
        meter.update(logits[i : i + 2], target[i : i + 2])  # logits: argmax inside
    whole = confusion_matrix(logits.argmax(1), target, C)
    assert torch.equal(meter.matrix, whole)
    same(meter.compute(), summarize(whole))
    meter.reset()
    assert int(meter.matrix.sum()) == 0


def test_merge_and_state_dict_across_runs():
    logits, target = data()
    a, b = ConfusionMatrix(C, per_image=True), ConfusionMatrix(C, per_image=True)
    a.update(logits[:2], target[:2])
    b.update(logits[2:], target[2:])
    restored = ConfusionMatrix(C, per_image=True)
    restored.load_state_dict(a.state_dict())
    restored.merge(b)
    full = ConfusionMatrix(C, per_image=True)
    full.update(logits, target)
    same(restored.compute(), full.compute())
    with pytest.raises(ValueError, match="same num_classes"):
        a.merge(ConfusionMatrix(C + 1))


def test_per_image_reduction_is_the_mean_over_images():
    logits, target = data(seed=1)
    meter = ConfusionMatrix(C, per_image=True)
    meter.update(logits[:4], target[:4])
    meter.update(logits[4:], target[4:])
    out = meter.compute()
    scores = per_image_scores(confusion_matrix(logits.argmax(1), target, C, per_image=True))
    assert out["mean_dice_per_image"] == pytest.approx(float(scores["mean_dice"].mean()))
    assert out["miou_per_image"] == pytest.approx(float(scores["miou"].mean()))
    assert torch.allclose(
        torch.tensor(out["dice_per_image"]), scores["dice"].nanmean(0).float(), equal_nan=True
    )
    assert out["mean_dice_per_image"] != pytest.approx(out["mean_dice"])  # micro vs per-image really differ


def test_single_channel_logits_are_thresholded_at_zero():
    logits = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[0, 1], [0, 0]]])
    meter = ConfusionMatrix(2)
    meter.update(logits, target)
    assert meter.matrix.tolist() == [[2, 1], [0, 1]]
    with pytest.raises(ValueError, match="float pred"):
        meter.update(logits[:, 0], target)


def _worker(rank, path, queue):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    logits, target = data()
    shard = slice(rank * 3, rank * 3 + 3)
    meter, boundary = ConfusionMatrix(C, per_image=True), BoundaryMeter(C)
    meter.update(logits[shard], target[shard])
    boundary.update(logits[shard], target[shard])
    meter.all_reduce()
    boundary.all_reduce()
    # plain lists, not tensors: tensors travel as shared-memory handles that die with this process
    state = {k: v.tolist() if torch.is_tensor(v) else v for k, v in meter.state_dict().items()}
    queue.put((rank, state, boundary.counts.tolist()))
    dist.destroy_process_group()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not dist.is_available(), reason="gloo on Linux")
def test_all_reduce_over_two_processes_equals_one_process():
    ctx = mp.get_context("spawn")  # fork after torch has started threads can crash the children
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_worker, args=(r, f"{tmp}/store", queue)) for r in range(2)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
    logits, target = data()
    full = ConfusionMatrix(C, per_image=True)
    full.update(logits, target)
    counts = boundary_counts(logits.argmax(1), target, C)
    for _, state, bcounts in results:
        for k, v in full.state_dict().items():
            assert (
                torch.allclose(torch.as_tensor(state[k], dtype=v.dtype), v)
                if torch.is_tensor(v)
                else state[k] == v
            ), k
        assert torch.equal(torch.as_tensor(bcounts, dtype=counts.dtype), counts)


def test_boundary_meter_streams():
    logits, target = data(seed=2)
    meter = BoundaryMeter(C, tolerance=1)
    meter.update(logits[:3], target[:3])
    meter.update(logits[3:], target[3:])
    assert torch.equal(meter.counts, boundary_counts(logits.argmax(1), target, C, tolerance=1))
    out = meter.compute()
    assert set(out) == {"boundary_miou", "boundary_mf1", "boundary_iou", "boundary_f1"}
    assert 0.0 < out["boundary_miou"] < 1.0
