from pathlib import Path

import pytest
import yaml

from seglab.config import Config, DataConfig, TrainConfig
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


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("word", ["off", "on", "yes", "no", "y", "n", "Off", "ON", "Yes", "NO", "Y", "N"])
def test_yaml_1_1_boolean_words_stay_strings_in_overrides_and_files(tmp_path, word):
    cfg = Config().override([f"model.params.upsample={word}", f"data.class_names=[{word}, b]"])
    assert cfg.model.params["upsample"] == word and cfg.data.class_names == [word, "b"]
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  params: {{upsample: {word}}}\ndata:\n  class_names: [{word}, b]\n")
    loaded = Config.load(path)
    assert loaded.model.params["upsample"] == word and loaded.data.class_names == [word, "b"]


def test_amp_off_from_override_and_file(tmp_path):
    """Issue 13: `--set train.amp=off` (the documented value) was refused: YAML 1.1 reads off as false."""
    assert Config().override(["train.amp=bf16", "train.amp=off"]).train.amp == "off"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert Config.load(path).train.amp == "off"


def test_bool_keys_take_true_false_and_the_yaml_1_1_words():
    for raw, value in [
        ("false", False),
        ("true", True),
        ("off", False),
        ("On", True),
        ("no", False),
        ("YES", True),
    ]:
        cfg = Config().override([f"data.hflip={raw}", f"train.progress={raw}"])
        assert cfg.data.hflip is value and cfg.train.progress is value
    with pytest.raises(ConfigError, match="^config key data.hflip must be true or false, got 'maybe'$"):
        Config().override(["data.hflip=maybe"])
    with pytest.raises(ConfigError, match="^config key data.cache must be true or false, got 1$"):
        Config().override(["data.cache=1"])


def test_numbers_are_read_as_in_yaml_1_2():
    cfg = Config().override(
        ["train.lr=1e-4", "train.weight_decay=5E-5", "data.splits={train: [07, 08, 10], val: []}"]
    )
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 5e-5  # YAML 1.1 reads 1e-4 as a string
    assert cfg.data.splits == {"train": ["07", "08", "10"], "val": []}  # YAML 1.1: 07 is octal 7, 08 a string
    assert Config().override(["data.class_names=[2024-01-01, '12:30']"]).data.class_names == [
        "2024-01-01",
        "12:30",
    ]


def test_dump_round_trips_strings_that_yaml_would_misread(tmp_path):
    tricky = ["off", "no", "Y", "null", "1e-4", "07", "08", "12", "2024-01-01", "1:30", ".5", "true"]
    cfg = Config().override(["train.amp=off", "train.lr=1e-10"])
    cfg.data.class_names = tricky
    cfg.data.splits = {"train": ["07", "08", "010"], "val": [], "test": ["1e3"]}
    cfg.model.params["upsample"] = "off"
    text = cfg.dump()
    assert "amp: 'off'" in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert Config.load(path) == cfg and Config.load(path).train.amp == "off"
    assert yaml.safe_load(text) == cfg.to_dict()  # plain PyYAML (YAML 1.1) reads the dump back the same too


def test_defaults_are_valid():
    cfg = Config()
    assert cfg.validate() is cfg and cfg == Config()
    assert Config.from_dict(cfg.to_dict()) == cfg and Config.from_dict(None) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_are_valid_and_round_trip(tmp_path, path):
    cfg = Config.load(path)
    assert cfg.validate() == Config.load(path)
    (tmp_path / "c.yaml").write_text(cfg.dump())
    assert Config.load(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.threads=-1", "train.threads must be within 1..1024 (or null for torch's default), got -1"),
        ("train.threads=0", "train.threads must be within 1..1024 (or null for torch's default), got 0"),
        ("train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.lr=0", "train.lr must be > 0, got 0.0"),
        ("train.lr=-.1", "train.lr must be > 0, got -0.1"),
        ("train.lr=.nan", "config key train.lr must be a finite number, got nan"),
        ("train.weight_decay=-1e-4", "train.weight_decay must be >= 0, got -0.0001"),
        ("train.warmup_iters=-1", "train.warmup_iters must be >= 0, got -1"),
        ("train.ema=1", "train.ema must be in [0, 1) (0 = off), got 1.0"),
        ("train.ema=-0.5", "train.ema must be in [0, 1) (0 = off), got -0.5"),
        ("train.amp=half", "train.amp must be auto, off, bf16 or fp16, got 'half'"),
        ("train.schedule=step", "train.schedule must be poly, cosine or constant, got 'step'"),
        ("data.val_ratio=1", "data.val_ratio must be in [0, 1), got 1.0"),
        ("data.test_ratio=-0.1", "data.test_ratio must be in [0, 1), got -0.1"),
        ("data.split_seed=-1", "data.split_seed must be within 0..4294967295, got -1"),
        (
            "data.num_workers=-1",
            "data.num_workers must be within 0..256 (0 loads in the main process; null chooses), got -1",
        ),
        ("data.repeat=0", "data.repeat must be within 1..10000 (passes per epoch), got 0"),
        ("data.scale=[0,0]", "data.scale must be [lo, hi] with 0 < lo <= hi ([1, 1] = off), got [0.0, 0.0]"),
        ("data.scale=[2,1]", "data.scale must be [lo, hi] with 0 < lo <= hi ([1, 1] = off), got [2.0, 1.0]"),
        ("data.rotation=-10", "data.rotation must be >= 0 (degrees; 0 = off), got -10.0"),
        ("data.elastic=-1", "data.elastic must be >= 0 (pixels; 0 = off), got -1.0"),
        (
            "data.elastic_grid=1",
            "data.elastic_grid must be within 2..256 (points per side of the displacement grid), got 1",
        ),
        ("data.color_jitter=-0.2", "data.color_jitter must be >= 0 (0 = off), got -0.2"),
        (
            "data.crop_size=0",
            "data.crop_size must be within 1..16384 pixels (or null for the whole image), got 0",
        ),
        ("data.ignore_index=-1", "data.ignore_index must be a mask value in 0..65535, got -1"),
        ("data.ignore_index=65536", "data.ignore_index must be a mask value in 0..65535, got 65536"),
        ("data.border_w0=-1", "data.border_w0 must be >= 0, got -1.0"),
        ("data.border_sigma=0", "data.border_sigma must be > 0 (pixels), got 0.0"),
        ("data.std=[0.2, 0, 0.2]", "data.std must be > 0 for every channel, got [0.2, 0.0, 0.2]"),
        ("data.mean=[]", "data.mean must be one value per image channel (or null), got []"),
        ("model.arch=''", "model.arch must be an architecture name (seglab.list_models()), got ''"),
        (
            "data.splits={train: 5}",
            'config key data.splits.train needs a list of file stems (e.g. ["00", "01"]), got 5',
        ),
        ("data.splits=[a, b]", "config key data.splits needs a mapping, got ['a', 'b']"),
        (
            "data.splits={tset: [a]}",
            "data.splits has an unknown split 'tset'; the splits are train, val and test",
        ),
        (
            "data.splits={train: [1.5]}",
            'config key data.splits.train[0] must be a file stem (a string, e.g. "07"), got 1.5',
        ),
        ("data.splits={1: [a]}", "config key data.splits needs names (strings) as keys, got 1"),
        ("model.params={1: 2}", "config key model.params needs names (strings) as keys, got 1"),
        ("train.loss=5", "config key train.loss must be str or dict, got 5"),
        ("train.loss={ce: 1, 2: 1}", "config key train.loss needs names (strings) as keys, got 2"),
        ("data.class_names=[a, 1]", "config key data.class_names[1] must be str, got 1"),
    ],
)
def test_out_of_range_values_give_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        Config().override([override])
    assert str(e.value) == message


def test_ratios_must_leave_a_training_split():
    assert Config().override(["data.val_ratio=0.5", "data.test_ratio=0.4"]).data.val_ratio == 0.5
    with pytest.raises(ConfigError) as e:
        Config().override(["data.val_ratio=0.5", "data.test_ratio=0.5"])
    assert (
        str(e.value)
        == "data.val_ratio + data.test_ratio must be < 1 (the rest is the training split), got 0.5 + 0.5"
    )


def test_mean_and_std_need_the_same_length():
    cfg = Config().override(["data.mean=[0.5]", "data.std=[0.25]"])
    assert cfg.data.mean == [0.5] and cfg.data.std == [0.25]
    with pytest.raises(ConfigError) as e:
        Config().override(["data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25]"])
    assert str(e.value) == "data.mean and data.std must have one value per image channel each, got 3 and 1"


def test_split_stems_take_strings_and_yaml_integers():
    cfg = Config().override(["data.splits={train: [a, '07', 7, 12], val: [], test: [x]}"])
    assert cfg.data.splits == {"train": ["a", "07", "7", "12"], "val": [], "test": ["x"]}
    assert Config().override(["data.splits=null"]).data.splits is None


def test_yaml_files_and_the_python_api_are_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  num_workers: -1\n")
    with pytest.raises(ConfigError, match=r"^data.num_workers must be within 0..256"):
        Config.load(path)
    with pytest.raises(ConfigError, match=r"^train.threads must be within 1..1024"):
        Config.from_dict({"train": {"threads": -1}})
    cfg = Config()
    cfg.train.threads = -1
    with pytest.raises(ConfigError, match=r"^train.threads must be within 1..1024"):
        cfg.validate()
    cfg = Config(data=DataConfig(hflip="off", scale=[1, 2]), train=TrainConfig(lr=1))
    assert cfg.validate().data.hflip is False and cfg.data.scale == (1.0, 2.0) and cfg.train.lr == 1.0
    with pytest.raises(ConfigError, match="^config section train must be a TrainConfig"):
        Config(train={"lr": 1}).validate()


def test_a_boolean_for_a_text_key_says_to_quote_it():
    """A dict read with plain yaml.safe_load (YAML 1.1) holds amp: False; the message says why and what to do."""
    with pytest.raises(ConfigError) as e:
        Config.from_dict(yaml.safe_load("train:\n  amp: off\n"))
    assert str(e.value) == (
        "config key train.amp must be str, got False (YAML 1.1 reads off/no/on/yes as booleans: quote the value)"
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        ("null", None),
        ("{short: 256}", {"short": 256}),
        ("{long: 512.0}", {"long": 512}),
        ("{scale: 1}", {"scale": 1.0}),
        ("{scale: 0.25}", {"scale": 0.25}),
    ],
)
def test_data_resize_takes_one_of_short_long_scale(value, expected, tmp_path):
    cfg = Config().override([f"data.resize={value}"])
    assert cfg.data.resize == expected and type(cfg.data.resize) in (dict, type(None))
    path = tmp_path / "c.yaml"
    path.write_text(cfg.dump())
    assert Config.load(path) == cfg
    assert Config().override(["data.resize.short=64"]).data.resize == {"short": 64}  # a dotted key works too


@pytest.mark.parametrize(
    "value",
    [
        "256",
        "half",
        "{}",
        "{short: 0}",
        "{short: 2.5}",
        "{long: -3}",
        "{scale: 0}",
        "{scale: -1}",
        "{short: true}",
        "{scale: .inf}",
        "{width: 100}",
        "{short: 100, long: 200}",
        "[256]",
        "{short: '256'}",
    ],
)
def test_bad_data_resize_gives_one_line_naming_the_key(value):
    with pytest.raises(ConfigError, match="data.resize") as e:
        Config().override([f"data.resize={value}"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="data.resize"):
        Config.from_dict({"data": {"resize": {"scale": 0.5, "short": 2}}})
    with pytest.raises(ConfigError, match="data.resize"):
        Config().override(["data.resize={scale: 0.5}", "data.resize.short=64"])  # two kinds at once


def test_class_weights_and_freeze_bn_keys():
    for value, expected in [
        ("null", None),
        ("median_frequency", "median_frequency"),
        ("balanced", "balanced"),
        ("[1, 0, 2.5]", [1.0, 0.0, 2.5]),
    ]:
        assert Config().override([f"train.class_weights={value}"]).train.class_weights == expected
    for bad in ("median", "[-1, 2]", "[0, 0]", "[]", "{a: 1}", "true"):
        with pytest.raises(ConfigError, match="train.class_weights") as e:
            Config().override([f"train.class_weights={bad}"])
        assert "\n" not in str(e.value)
    assert Config().train.freeze_bn is False
    assert Config().override(["train.freeze_bn=true"]).train.freeze_bn is True
    with pytest.raises(ConfigError, match="train.freeze_bn"):
        Config().override(["train.freeze_bn=sometimes"])


def test_data_kind_is_validated():
    from seglab.config import KINDS

    assert Config().data.kind == "auto" and KINDS[0] == "auto"
    for kind in KINDS:
        assert Config().override([f"data.kind={kind}"]).data.kind == kind
    with pytest.raises(ConfigError) as e:
        Config().override(["data.kind=satellite"])
    assert str(e.value) == (
        "data.kind must be one of auto, photo, microscopy, aerial, medical, other, got 'satellite'"
    )


PLAN = {
    "kind": "aerial",
    "time_limit": "10m",
    "reasons": {"data.resize": "the ceiling at 0.5 is 0.996", "data.crop_size, train.batch_size": "fits"},
    # the ceiling's scales are float keys; 1.0 and 0.5 must not come back as 1 or "0.5"
    "data": {"ceiling": {1.0: 1.0, 0.5: 0.996, 0.25: 0.97}, "median_size": (512, 384)},
    "machine": {"candidates": [{"name": "unet (scratch)", "seconds_per_step": 0.25}]},
}


def test_the_plan_section_round_trips(tmp_path):
    import copy

    import numpy as np

    cfg = Config().override(["data.kind=aerial"])
    cfg.plan = copy.deepcopy(PLAN)
    cfg.plan["machine"]["candidates"][0]["seconds_per_step"] = np.float64(
        0.25
    )  # numpy scalars: plain numbers
    cfg.validate()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.dump())
    loaded = Config.load(path)
    assert loaded == cfg and loaded.plan == {**PLAN, "data": {**PLAN["data"], "median_size": [512, 384]}}
    (scales,) = [list(loaded.plan["data"]["ceiling"])]
    assert scales == [1.0, 0.5, 0.25] and all(type(s) is float for s in scales)
    assert type(loaded.plan["machine"]["candidates"][0]["seconds_per_step"]) is float
    assert Config.from_dict(cfg.to_dict()) == cfg
    # an override of another key keeps the plan; the plan itself is a record, not a setting
    again = loaded.override(["train.lr=0.01"])
    assert again.plan == loaded.plan and again.train.lr == 0.01
    with pytest.raises(ConfigError, match="override 'plan.kind=photo': plan is the record") as e:
        loaded.override(["plan.kind=photo"])
    assert "\n" not in str(e.value)
    # no plan: no section in the YAML, as before
    assert Config().plan is None and "plan" not in yaml.safe_load(Config().dump())
    for bad, message in [
        ([1, 2], "config key plan needs a mapping"),
        ({"x": object()}, "plan.x must be plain YAML"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config.from_dict({"plan": bad})


def test_overrides_of_a_plan_are_recorded_and_undone_by_as_planned():
    planned = Config().override(["data.crop_size=256", "train.lr=0.002", "data.kind=aerial"])
    planned.plan = {"kind": "aerial", "reasons": {"train.lr": "AdamW at batch 8"}}
    used = planned.override(["train.lr=0.01", "data.crop_size=128", "train.out_dir=/runs/x"]).note_overrides(
        planned
    )
    # where the run is written is not a choice of the plan
    assert used.plan["overridden"] == {"train.lr": 0.002, "data.crop_size": 256}
    back = used.as_planned()
    assert back.train.lr == 0.002 and back.data.crop_size == 256 and back.train.out_dir == "/runs/x"
    assert back.plan == planned.plan
    # a second round keeps the first planned value, and a key set back to it is no longer overridden
    again = used.override(["train.lr=0.002", "train.epochs=3"]).note_overrides(used)
    assert again.plan["overridden"] == {"data.crop_size": 256, "train.epochs": 10}
    assert Config().note_overrides(planned).plan is None  # nothing to record without a plan
