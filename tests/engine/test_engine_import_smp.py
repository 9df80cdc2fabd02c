"""`seglab import-smp`: an smp model becomes a seglab checkpoint whose predictions are smp's (the same
probabilities on the same normalised image), which evaluate and export then take; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from smp_models import random_statistics  # tests/smp_models.py

from seglab.checkpoint import load_checkpoint
from seglab.data.io import read_image
from seglab.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from seglab.inference.image import image_probs

smp = pytest.importorskip("segmentation_models_pytorch")


@pytest.fixture(scope="module")
def smp_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return random_statistics(
        smp.FPN("resnet18", encoder_weights=None, classes=4)
    )  # SyntheticShapes: 4 classes


def test_imported_model_predicts_smps_probabilities(tmp_path, shapes_dir, run_cli, smp_model):
    smp_model.save_pretrained(tmp_path / "smp")
    code, out, err = run_cli(
        "import-smp", tmp_path / "smp", "--data", shapes_dir, "--out", tmp_path / "m.safetensors"
    )
    assert code == 0, err
    assert "wrote seglab checkpoint" in out
    model, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta.arch == "fpn" and meta.model_params["align_corners"] is True
    image = read_image(next((shapes_dir / "images").iterdir()))
    probs, _ = image_probs(model, meta, image, torch.device("cpu"))
    x = (
        torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]
    ) / (torch.tensor(IMAGENET_STD)[:, None, None])
    with torch.no_grad():
        theirs = smp_model(x[None]).softmax(1)[0]
    assert (probs - theirs).abs().max().item() < 1e-4

    code, _, err = run_cli(
        "evaluate", tmp_path / "m.safetensors", "--data", shapes_dir, "--out", tmp_path / "r.json"
    )
    assert code == 0, err
    assert 0 <= json.loads((tmp_path / "r.json").read_text())["miou"] <= 1
    code, _, err = run_cli("export", tmp_path / "m.safetensors", "--out", tmp_path / "m.onnx")
    assert code == 0, err


def test_a_bare_state_dict_needs_the_architecture(tmp_path, shapes_dir, run_cli, smp_model):
    torch.save(smp_model.state_dict(), tmp_path / "fpn.pth")
    command = ("import-smp", tmp_path / "fpn.pth", "--data", shapes_dir, "--out", tmp_path / "m.safetensors")
    for extra, message in (((), "give --arch"), (("--arch", "unet"), "has no place in seglab's unet")):
        code, _, err = run_cli(*command, *extra)
        assert code == 2 and err.count("\n") == 1 and message in err
        assert not (tmp_path / "m.safetensors").exists()
    code, _, err = run_cli(*command, "--arch", "fpn")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "m.safetensors")[1].num_classes == 4
