"""Data tests keep the scan cache (see ``seglab.data.scan.scan_cache_dir``) in their own temporary folder."""

import pytest


@pytest.fixture(autouse=True)
def _scan_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLAB_CACHE_DIR", str(tmp_path_factory.mktemp("seglab-cache")))
    monkeypatch.delenv("SEGLAB_MAX_PIXELS", raising=False)
