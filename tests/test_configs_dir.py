from pathlib import Path

import pytest

from seglab.config import Config
from seglab.engine.demo import demo_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load(path):
    Config.load(path)


def test_shapes_recipe_is_the_demo_recipe():
    cfg = Config.load(Path(__file__).resolve().parents[1] / "configs" / "shapes-unet.yaml")
    demo = demo_config("data/shapes", "runs/shapes")
    cfg.model.params.pop("upsample")
    assert cfg == demo
