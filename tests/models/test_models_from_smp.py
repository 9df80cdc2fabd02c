"""smp checkpoints as seglab models (seglab.models.from_smp): the framework and U-Net, its worked example. smp's
model with random weights and random batch-norm statistics, saved as smp saves it, gives the same logits in
seglab; what does not fit is one line naming the tensor or the argument."""

from __future__ import annotations

import pytest
import torch
from smp_models import max_difference, params, random_statistics  # tests/smp_models.py

from seglab.errors import ConfigError
from seglab.models.factory import create_model, resolved_params
from seglab.models.from_smp import is_smp_checkpoint, read_smp_checkpoint, smp_encoder

smp = pytest.importorskip("segmentation_models_pytorch")


@pytest.mark.parametrize(
    "encoder, options",
    [
        ("resnet18", {}),
        ("resnet34", {"encoder_depth": 4, "decoder_channels": [64, 32, 16, 8]}),
        ("resnet18", {"decoder_interpolation": "bilinear", "in_channels": 1}),
    ],
)
def test_smp_unet_state_dict_gives_smps_logits(tmp_path, encoder, options):
    torch.manual_seed(0)
    theirs = random_statistics(smp.Unet(encoder, encoder_weights=None, classes=3, **options))
    torch.save(theirs.state_dict(), tmp_path / "unet.pth")
    bands = options.get("in_channels", 3)
    # a bare state dict does not say smp's interpolation (no tensor shows it): nearest unless the user says
    given = {"upsample": "bilinear_interp"} if "decoder_interpolation" in options else {}
    ours = create_model("unet", 3, in_channels=bands, weights=str(tmp_path / "unet.pth"), **given)
    assert max_difference(theirs, ours, bands=bands) < 1e-4
    # smp keeps the ResNet's layers beyond encoder_depth (never run); seglab's encoder does not build them
    unused = sum(p.numel() for n, p in theirs.named_parameters() if n.startswith("encoder.layer4."))
    assert params(ours) == params(theirs) - (unused if options.get("encoder_depth") == 4 else 0)


def test_save_pretrained_folder_and_timm_encoder(tmp_path):
    """smp's save_pretrained folder (config.json + model.safetensors) names the architecture and the tu- encoder;
    a bare state dict of a tu- encoder needs the timm name from seglab's ``encoder``."""
    torch.manual_seed(0)
    theirs = random_statistics(smp.Unet("tu-resnet18", encoder_weights=None, classes=2))
    theirs.save_pretrained(tmp_path / "folder")
    assert is_smp_checkpoint(str(tmp_path / "folder"))
    ours = create_model("unet", 2, weights=str(tmp_path / "folder"))
    assert max_difference(theirs, ours, size=(96, 64)) < 1e-4
    assert params(ours) == params(theirs)

    torch.save(theirs.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ConfigError, match="timm .tu-. encoder and no config.json: name it"):
        create_model("unet", 2, weights=str(tmp_path / "bare.pth"))
    ours = create_model("unet", 2, encoder="resnet18", weights=str(tmp_path / "bare.pth"))
    assert max_difference(theirs, ours) < 1e-4


def test_encoders_are_told_by_their_tensors(tmp_path):
    for name in ("resnet18", "resnet50"):
        torch.save(smp.Unet(name, encoder_weights=None, classes=2).state_dict(), tmp_path / "m.pth")
        assert smp_encoder(read_smp_checkpoint(tmp_path / "m.pth")) == name


def test_recorded_arguments_rebuild_the_model_without_the_file(tmp_path):
    """A run records the structure read from the checkpoint (train's checkpoint meta), so the model is rebuilt
    from its arguments alone, with ``weights`` set aside as load_checkpoint does."""
    theirs = smp.Unet("resnet18", encoder_weights=None, classes=2, decoder_channels=[32, 16, 16, 8, 8])
    torch.save(theirs.state_dict(), tmp_path / "unet.pth")
    recorded = resolved_params("unet", {"weights": str(tmp_path / "unet.pth")})
    assert recorded["decoder_channels"] == [32, 16, 16, 8, 8] and recorded["encoder"] == "resnet18"
    ours = create_model("unet", 2, **{**recorded, "weights": None})
    ours.load_state_dict(create_model("unet", 2, weights=str(tmp_path / "unet.pth")).state_dict())
    assert max_difference(theirs.eval(), ours) < 1e-4


@pytest.mark.parametrize(
    "arch, given, match",
    [
        ("fcn", {}, "is smp's Unet, not fcn"),
        ("unet", {"encoder": "resnet50"}, "has encoder 'resnet18', not 'resnet50'"),
        ("unet", {"head_kernel": 1}, r"head_kernel=1 conflicts with the smp checkpoint .*\(head_kernel=3\)"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, arch, given, match):
    smp.Unet("resnet18", encoder_weights=None, classes=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=match):
        create_model(arch, 2, weights=str(tmp_path), **given)


def test_foreign_tensors_and_wrong_class_counts_are_named(tmp_path):
    state = smp.Unet("resnet18", encoder_weights=None, classes=2).state_dict()
    torch.save(state, tmp_path / "two.pth")
    with pytest.raises(ConfigError, match="scores 2 classes, the data has 5"):
        create_model("unet", 5, weights=str(tmp_path / "two.pth"))
    torch.save({**state, "decoder.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match="tensor 'decoder.extra.weight' has no place in seglab's unet"):
        create_model("unet", 2, weights=str(tmp_path / "extra.pth"))
    torch.save({"segmentation_head.0.weight": torch.zeros(2, 16, 3, 3)}, tmp_path / "head.pth")
    with pytest.raises(ConfigError, match="none of smp's resnet18"):
        create_model("unet", 2, weights=str(tmp_path / "head.pth"))


def test_a_plain_encoder_weights_file_is_not_an_smp_checkpoint(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "enc.pth")
    assert not is_smp_checkpoint(str(tmp_path / "enc.pth"))
    assert not is_smp_checkpoint("imagenet") and not is_smp_checkpoint(None)
    assert not is_smp_checkpoint(str(tmp_path / "missing.pth"))


def test_a_class_seglab_lacks_and_a_config_of_another_file(tmp_path):
    """smp's MAnet folder is named as such; a config.json beside a file that is not the folder's model file
    belongs to another model (its tensors decide)."""
    smp.MAnet("resnet18", encoder_weights=None, classes=2).save_pretrained(tmp_path / "manet")
    with pytest.raises(ConfigError, match="smp's MAnet, which seglab does not have"):
        create_model("unet", 2, weights=str(tmp_path / "manet"))
    theirs = smp.Unet("resnet18", encoder_weights=None, classes=2).eval()
    smp.FPN("resnet18", encoder_weights=None, classes=2).save_pretrained(tmp_path / "mixed")
    torch.save(theirs.state_dict(), tmp_path / "mixed" / "unet.pth")
    assert read_smp_checkpoint(tmp_path / "mixed" / "unet.pth").config == {}
    assert (
        max_difference(theirs, create_model("unet", 2, weights=str(tmp_path / "mixed" / "unet.pth"))) < 1e-4
    )


@pytest.mark.slow
def test_smp_structure_exports_at_any_size(tmp_path):
    """smp's U-Net structure (interpolation without conv, the last block without skip, a 3x3 head) exports a
    dynamic ONNX graph that ONNX Runtime runs at 33 x 47 with PyTorch's logits."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from seglab.engine.export import export_model

    theirs = smp.Unet(
        "tu-resnet18", encoder_weights=None, classes=2, encoder_depth=3, decoder_channels=[16, 8, 8]
    )
    torch.save(random_statistics(theirs).state_dict(), tmp_path / "unet.pth")
    model = create_model("unet", 2, encoder="resnet18", weights=str(tmp_path / "unet.pth")).eval()
    result = export_model(model, tmp_path / "m.onnx", "onnx")
    assert result.dynamic and result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    x = torch.randn(1, 3, 33, 47)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-4)
