"""The checkpoint every service test serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = {"depth": 2, "base_channels": 4}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class RGB U-Net with dropout before its head (so MC dropout applies), random weights."""
    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.models.factory import create_model

    torch.manual_seed(0)
    params = {**TINY, "dropout": 0.3}
    model = create_model("unet", num_classes=3, in_channels=3, **params).eval()
    meta = CheckpointMeta(
        arch="unet",
        num_classes=3,
        in_channels=3,
        model_params=params,
        class_names=["bg", "cat", "dog"],
        palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        metrics={"miou": 0.5},
    )
    return save_checkpoint(tmp_path_factory.mktemp("serve") / "best", model, meta)
