from pathlib import Path

import pytest

from seglab.config import Config
from seglab.demo import demo_config

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load(path):
    Config.load(path)


def test_shapes_recipe_is_the_demo_recipe():
    cfg = Config.load(Path(__file__).resolve().parents[1] / "configs" / "shapes-unet.yaml")
    demo = demo_config("data/shapes", "runs/shapes")
    cfg.model.params.pop("upsample")
    assert cfg == demo


def _figure_script():
    """scripts/isbi_figure.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("isbi_figure", ROOT / "scripts" / "isbi_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_isbi_recipe_trains_and_evaluates_on_the_real_slices(isbi_dir, tmp_path, monkeypatch, capsys):
    """The documented recipe, shrunk (tiny U-Net, 64x64 crops, one pass): its keys reach train and evaluate."""
    from seglab.checkpoint import read_meta
    from seglab.engine.evaluate import evaluate
    from seglab.engine.train import train

    cfg = Config.load(Path(__file__).resolve().parents[1] / "configs" / "isbi2012-unet.yaml")
    assert cfg.data.splits["test"] == ["25", "26", "27", "28", "29"]
    assert not set(cfg.data.splits["test"]) & set(cfg.data.splits["train"] + cfg.data.splits["val"])
    cfg = cfg.override(
        [
            f"data.root={isbi_dir}",
            f"train.out_dir={tmp_path}",
            "train.epochs=1",
            "data.repeat=1",
            "data.crop_size=64",
            "model.params={depth: 3, base_channels: 4}",
            "train.progress=false",
        ]
    )
    result = train(cfg)
    meta = read_meta(result.best_checkpoint)
    assert meta.class_names == ["membrane", "cell"] and meta.in_channels == 1
    report = evaluate(
        result.best_checkpoint,
        isbi_dir,
        "test",
        progress=False,
        rand_class="cell",
        tile=256,
        overlap=64,
        out=tmp_path / "eval.json",
    )
    assert report["num_images"] == 5 and 0 <= report["rand_error"] <= 1
    assert sum(map(sum, report["confusion_matrix"])) == 5 * 512 * 512

    # the README figure's script: an "ensemble" of one checkpoint twice gives the single checkpoint's scores
    figure = _figure_script()
    lines = []
    for ckpts in ([result.best_checkpoint], [result.best_checkpoint] * 2):
        out = tmp_path / f"fig{len(ckpts)}.png"
        monkeypatch.setattr(
            "sys.argv", ["isbi_figure.py", *map(str, ckpts), "--data", str(isbi_dir), "--out", str(out)]
        )
        figure.main()
        lines.append(capsys.readouterr().out.split(":", 1)[1])
        assert out.read_bytes()[:4] == b"\x89PNG"
    assert lines[0] == lines[1] and "pixel error" in lines[0]


def test_near_edge_fraction_on_a_worked_example():
    """A 4-px vertical membrane; the prediction is shifted 1 px right and has one 2x2 blob far from any edge."""
    import numpy as np

    figure = _figure_script()
    truth = np.zeros((12, 12), bool)
    truth[:, 2:6] = True
    pred = np.zeros_like(truth)
    pred[:, 3:7] = True  # wrong: column 2 (true edge) and column 6 (next to the true edge at 5): 24 pixels
    pred[9:11, 9:11] = True  # wrong, 3+ px from the membrane: 4 pixels
    assert figure.near_edge_fraction(pred, truth) == 24 / 28
    assert figure.near_edge_fraction(truth, truth) == 0.0
