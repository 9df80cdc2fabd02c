"""benchmarks/architectures.py's bookkeeping: a saved result is reused only with the same settings, and the
Pareto front over (latency, mIoU)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "architectures.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_architectures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_architecture_has_a_row(bench):
    from seglab.models.factory import list_models

    assert sorted(bench.ARCHS) == sorted(list_models())
    assert all(reason for _, reason in bench.ARCHS.values())


def test_resume_reuses_only_a_result_with_the_same_settings(bench, tmp_path):
    args = bench.parse_args(
        ["--budget", "20s", "--test-limit", "5", "--only", "unet", "--out", str(tmp_path)]
    )
    settings = bench.settings_of("unet", args)
    path = tmp_path / "unet.json"
    assert bench.load_done(path, settings) is None  # not there
    path.write_text("{not json")
    assert bench.load_done(path, settings) is None  # a torn file: redone
    bench.save_result(path, {"settings": settings, "miou": 0.5})
    assert bench.load_done(path, settings) == {"settings": settings, "miou": 0.5}
    assert not [p for p in tmp_path.iterdir() if p.name != "unet.json"]  # no temporary file left
    other = bench.settings_of("unet", bench.parse_args(["--budget", "5m", "--out", str(tmp_path)]))
    assert bench.load_done(path, other) is None  # another budget: redone
    assert json.loads(path.read_text())["miou"] == 0.5


def test_only_skip_and_the_quick_figure_path(bench, tmp_path):
    args = bench.parse_args(["--only", "unet,fpn,segnet", "--skip", "segnet", "--out", str(tmp_path)])
    assert args.archs == ["unet", "fpn"] and args.figure == bench.FIGURE
    quick = bench.parse_args(["--test-limit", "5", "--out", str(tmp_path)])
    assert quick.figure == tmp_path / "architectures.png"  # a quick look never replaces the docs figure
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "nope"])


def test_front_is_marked_over_latency_and_miou(bench):
    rows = [
        {"arch": "slow_good", "latency_ms": 900.0, "miou": 0.6},
        {"arch": "fast_bad", "latency_ms": 100.0, "miou": 0.3},
        {"arch": "dominated", "latency_ms": 500.0, "miou": 0.2},
        {"arch": "middle", "latency_ms": 300.0, "miou": 0.5},
    ]
    marked = bench.with_front(rows)
    assert [r["arch"] for r in marked] == ["fast_bad", "middle", "dominated", "slow_good"]  # by latency
    assert {r["arch"] for r in marked if r["front"]} == {"fast_bad", "middle", "slow_good"}
