"""Losses under ``global_batch`` over 2 gloo processes: the loss of the global batch on every rank, and the gradient
that DDP's average turns into the global batch's, for every loss with batch statistics (Dice, Tversky, Jaccard,
Lovász) and every weighted mean (CE with class weights and ignored pixels, focal, BCE)."""

from __future__ import annotations

import socket

import torch

from seglab.losses import global_batch, make_loss

CASES = {
    "ce": ("ce", {}),
    "ce_class_weights": ("ce", {"weight": [0.2, 1.0, 3.0]}),
    "dice": ("dice", {}),
    "dice_per_image": ("dice", {"per_image": True}),
    "ce+dice": ({"ce": 1.0, "dice": 1.0}, {}),
    "tversky": ("tversky", {"alpha": 0.3, "beta": 0.7, "gamma": 0.75}),
    "jaccard": ("jaccard", {}),
    "focal": ("focal", {"alpha": [0.5, 1.0, 2.0]}),
    "lovasz": ("lovasz", {}),
    "lovasz_per_image": ("lovasz", {"per_image": True}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6, 7) * 2
    target = torch.randint(0, 3, (4, 6, 7))
    target[0, :4] = 255  # rank 0's share has fewer valid pixels than rank 1's
    target[1, :, :2] = 255
    binary_logits, binary_target = torch.randn(4, 1, 6, 7), torch.randint(0, 2, (4, 6, 7))
    binary_target[2, :3] = 255
    part = slice(2 * rank, 2 * rank + 2)
    cases = {
        **{k: (*v, logits, target) for k, v in CASES.items()},
        "bce": ("bce", {}, binary_logits, binary_target),
        "binary_dice": ("dice", {}, binary_logits, binary_target),
    }
    for name, (spec, options, x, y) in cases.items():
        loss = make_loss(spec, ignore_index=255, **options) if isinstance(spec, str) else make_loss(spec)
        full = x.clone().requires_grad_()
        want = loss(full, y)
        want.backward()
        local = x[part].clone().requires_grad_()
        with global_batch():
            got = loss(local, y[part])
        got.backward()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6, msg=f"{name}: loss")
        # DDP averages the ranks' parameter gradients: each rank's share is 1/world of what it holds
        torch.testing.assert_close(
            local.grad / world, full.grad[part], atol=1e-7, rtol=1e-5, msg=f"{name}: grad"
        )
        with torch.no_grad():  # outside the block a rank's loss is its own share's
            own = loss(x[part], y[part])
        if name in ("dice", "ce+dice", "lovasz", "ce_class_weights"):
            assert abs(float(own) - float(want)) > 1e-4, name
    dist.destroy_process_group()


def test_losses_over_two_ranks_equal_the_global_batch():
    torch.multiprocessing.spawn(_worker, args=(2, _free_port()), nprocs=2)


def test_global_batch_alone_changes_nothing():
    """One process (no process group): the block is a no-op."""
    torch.manual_seed(1)
    x, y = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    for spec, options in CASES.values():
        loss = make_loss(spec, ignore_index=255, **options) if isinstance(spec, str) else make_loss(spec)
        with global_batch():
            inside = loss(x, y)
        assert torch.equal(inside, loss(x, y))
