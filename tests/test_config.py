import pytest

from seglab.config import Config
from seglab.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = Config().override(
        ["train.lr=0.01", "data.scale=[0.5, 2.0]", "model.params.depth=3", "data.root=/x"]
    )
    path = tmp_path / "c.yaml"
    path.write_text(cfg.dump())
    loaded = Config.load(path)
    assert loaded == cfg
    assert loaded.train.lr == 0.01 and loaded.data.scale == (0.5, 2.0) and loaded.model.params["depth"] == 3


def test_partial_yaml_keeps_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    cfg = Config.load(path)
    assert cfg.train.epochs == 3 and cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.epoch=3"], "unknown config key train.epoch"),
        (["train.epochs=three"], "train.epochs must be int"),
        (["train.epochs=true"], "train.epochs must be int"),
        (["data.scale=[1]"], "data.scale needs 2 values"),
        (["lr"], "must look like section.key=value"),
        (["nosection.x=1"], "unknown config key"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        Config().override(override)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        Config.load(tmp_path / "list.yaml")
