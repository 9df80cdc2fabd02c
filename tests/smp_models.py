"""Helpers of the smp checkpoint tests (tests/models/test_models_*smp*.py, tests/engine/test_engine_import_smp.py):
smp models whose batch norms have random statistics, the logits' difference, parameter counts."""

from __future__ import annotations

import torch


def random_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm running statistics other than 0/1, so a norm mapped to the wrong place shows; eval mode."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def max_difference(theirs: torch.nn.Module, ours: torch.nn.Module, size=(64, 96), bands: int = 3) -> float:
    """The largest logit difference of two models (``ours`` in eval mode) on one random batch of the same shape."""
    x = torch.randn(2, bands, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = theirs(x), ours.eval()(x)
    assert got.shape == expected.shape
    return (expected - got).abs().max().item()


def params(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Parameters, less those whose names start with ``skip``."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def unused_resnet_layers(model: torch.nn.Module, depth: int) -> int:
    """smp keeps a ResNet's layers beyond encoder_depth (never run); seglab's encoder does not build them."""
    unused = tuple(f"encoder.layer{k}." for k in range(depth, 5))
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(unused))
