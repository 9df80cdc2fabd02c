"""Shared fixtures. Tests run on CPU with one thread each (pytest-xdist runs two workers on two cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ISBI = SHARED_DATA / "isbi2012-membrane"


@pytest.fixture(autouse=True, scope="session")
def _seglab_scan_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the data-scan cache (seglab.data.scan) out of the home folder."""
    os.environ["SEGLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("seglab-cache"))


@pytest.fixture(autouse=True, scope="session")
def _fp32_unless_asked() -> Iterator[None]:
    """train.amp: auto times fp32 against bf16 on the machine at hand; tests must not depend on the machine, so
    auto finds one candidate (fp32) here, for every fixture scope. Tests of the probe itself call it directly."""
    import seglab.engine.train

    with pytest.MonkeyPatch.context() as m:
        m.setattr(seglab.engine.train, "amp_candidates", lambda device: ["off"])
        yield


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SyntheticShapes folder data set (40 images of 32x32: 32 train, 4 val, 4 test)."""
    from seglab.data.synthetic import write_folder

    return write_folder(tmp_path_factory.mktemp("shapes") / "data", num_images=40, size=32)


@pytest.fixture
def isbi_dir() -> Path:
    if not ISBI.is_dir():
        pytest.skip(f"{ISBI} is not available")
    return ISBI


TINY = {"depth": 2, "base_channels": 4}


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture):
    """``run_cli(*argv)`` runs ``seglab ARGV`` in-process and returns (exit code, stdout, stderr)."""
    from seglab.cli import main

    def run(*argv: object) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained 2-class RGB U-Net checkpoint (classes bg, fg); returns its .safetensors path."""
    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, in_channels=3, **TINY).eval()
    meta = CheckpointMeta(
        arch="unet",
        num_classes=2,
        in_channels=3,
        model_params=dict(TINY),
        class_names=["bg", "fg"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", model, meta)
