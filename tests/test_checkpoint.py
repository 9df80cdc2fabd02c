import pytest
import torch
import yaml

from seglab import create_model
from seglab.checkpoint import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from seglab.errors import CheckpointError, ConfigError


def tiny_meta(**kw):
    return CheckpointMeta(
        arch="unet",
        num_classes=3,
        in_channels=1,
        model_params={"depth": 2, "base_channels": 4},
        class_names=["a", "b", "c"],
        palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        mean=[0.5],
        std=[0.25],
        metrics={"miou": 0.5},
        epoch=3,
        **kw,
    )


def trained_like_model():
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, in_channels=1, depth=2, base_channels=4)
    model.train()
    with torch.no_grad():  # move the batch-norm running statistics away from their defaults
        model(torch.randn(4, 1, 16, 16) * 3 + 1)
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path):
    model = trained_like_model()
    weights = save_checkpoint(tmp_path / "best", model, tiny_meta())
    assert weights == tmp_path / "best.safetensors" and (tmp_path / "best.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "best.yaml"], (
        "no temp files left"
    )
    loaded, meta = load_checkpoint(tmp_path)  # a run folder means its best checkpoint
    assert meta == tiny_meta() and not loaded.training
    x = torch.randn(2, 1, 21, 19)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="has no sidecar x.yaml"):
        load_checkpoint(tmp_path / "x.safetensors")
    (tmp_path / "x.yaml").write_text("hello: world\n")
    with pytest.raises(CheckpointError, match="not a seglab checkpoint sidecar"):
        load_checkpoint(tmp_path / "x.safetensors")


def test_mismatched_weights_and_sidecar(tmp_path):
    save_checkpoint(tmp_path / "a", trained_like_model(), tiny_meta())
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        read_meta(tmp_path / "a.safetensors")


def saved_with_model_params(tmp_path, **params):
    """The sidecar of a saved tiny checkpoint whose model_params were then changed by ``params``."""
    save_checkpoint(tmp_path / "a", trained_like_model(), tiny_meta())
    doc = yaml.safe_load((tmp_path / "a.yaml").read_text())
    doc["model_params"].update(params)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "a.yaml"


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    with pytest.raises(CheckpointError, match="does not fit a unet model"):
        load_checkpoint(saved_with_model_params(tmp_path, base_channels=8))


def test_former_fcn_layout_is_refused_in_one_line(tmp_path):
    """FCN's classifier moved from the decoder into the head (issue 14): weights of the former layout, whose
    score convs sat under ``decoder.``, do not load silently into the new one."""
    params = {"encoder": "vgg", "base_channels": 2}
    model = create_model("fcn", num_classes=3, **params)
    moved = {"head.score.": "decoder.score.2.", "head.skip_scores.": "decoder.skip_scores."}
    former = {}
    for key, value in model.state_dict().items():
        new = next((key.replace(a, b, 1) for a, b in moved.items() if key.startswith(a)), key)
        former[new] = value
    assert former.keys() != model.state_dict().keys()
    meta = CheckpointMeta(arch="fcn", num_classes=3, in_channels=3, model_params=params)
    save_checkpoint(tmp_path / "old", former, meta)
    with pytest.raises(CheckpointError, match="old.safetensors does not fit a fcn model"):
        load_checkpoint(tmp_path / "old.safetensors")


def test_unknown_model_params_name_the_argument(tmp_path):
    with pytest.raises(ConfigError, match="width is not an argument of unet; accepted: act, base_channels, "):
        load_checkpoint(saved_with_model_params(tmp_path, width=8))
