"""`seglab benchmark` on a TorchScript file: timed like any model, with the hook-based cost columns n/a."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from seglab.cli import main
from seglab.models.factory import create_model


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in favour of torch.export
def test_benchmark_times_a_torchscript_file(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, in_channels=3, depth=2, base_channels=4).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.save(torch.jit.trace(model, (x,)), str(tmp_path / "m.pt"))
    code = main(
        [
            str(a)
            for a in (
                "benchmark",
                tmp_path / "m.pt",
                "--size",
                32,
                "--iters",
                2,
                "--warmup",
                1,
                "--paths",
                "eager",
                "channels_last",
                "--out",
                tmp_path / "b",
                "--no-progress",
            )
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads((tmp_path / "b" / "benchmark.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["eager", "channels_last"]
    for r in rows:
        assert r["fps"] > 0 and r["faithful"], r
        assert r["gmacs"] is None and r["note"] == "TorchScript: MACs n/a", r
        assert r["params"] == sum(p.numel() for p in model.parameters())
    assert "| m.pt | eager | 32 | 1 |" in out and "TorchScript: MACs n/a" in out
