"""Shared fixtures. Tests run on CPU with one thread each (pytest-xdist runs two workers on two cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ISBI = SHARED_DATA / "isbi2012-membrane"


@pytest.fixture(autouse=True, scope="session")
def _seglab_scan_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the data-scan cache (seglab.data.folder) out of the home folder."""
    os.environ["SEGLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("seglab-cache"))


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
