"""smp checkpoints of DeepLabV3, DeepLabV3+, PSPNet and UPerNet as seglab models (seglab.models.from_smp): smp's
model with random weights and random batch-norm statistics, saved as a state dict (or a save_pretrained folder),
gives the same logits in seglab; smp's torchvision ResNets dilated uniformly, its ``tu-`` ones as timm does."""

from __future__ import annotations

import pytest
import torch
from smp_models import max_difference, params, random_statistics  # tests/smp_models.py

from seglab.errors import ConfigError
from seglab.models.encoders.timm import TimmEncoder
from seglab.models.factory import create_model

smp = pytest.importorskip("segmentation_models_pytorch")


SMP = {"deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3Plus", "pspnet": "PSPNet", "upernet": "UPerNet"}
CASES = [
    ("deeplabv3", {}, {}),
    ("deeplabv3", {"encoder_output_stride": 16, "decoder_aspp_separable": True}, {"output_stride": 16}),
    ("deeplabv3plus", {}, {}),
    ("deeplabv3plus", {"encoder_output_stride": 8, "decoder_aspp_separable": False}, {"output_stride": 8}),
    ("pspnet", {}, {}),
    ("pspnet", {"encoder_depth": 5, "upsampling": 32, "psp_out_channels": 64}, {}),
    ("upernet", {}, {}),
    ("upernet", {"encoder_depth": 4, "decoder_channels": 64}, {}),
]


@pytest.mark.parametrize("arch, options, given", CASES)
def test_smp_state_dict_gives_smps_logits(tmp_path, arch, options, given):
    """A bare state dict: the structure from the tensors, smp's defaults for what they do not show (the output
    stride, which the user's ``output_stride`` sets)."""
    torch.manual_seed(0)
    theirs = random_statistics(
        getattr(smp, SMP[arch])("resnet18", encoder_weights=None, classes=3, **options)
    )
    torch.save(theirs.state_dict(), tmp_path / f"{arch}.pth")
    ours = create_model(arch, 3, weights=str(tmp_path / f"{arch}.pth"), **given)
    assert max_difference(theirs, ours) < 1e-4
    # smp keeps the ResNet's layers beyond encoder_depth (never run); seglab's encoder does not build them
    depth = options.get("encoder_depth", 3 if arch == "pspnet" else 5)
    unused = tuple(f"encoder.layer{k}." for k in range(depth, 5))
    assert params(ours) == params(theirs, unused)


def test_save_pretrained_folder_sets_output_stride(tmp_path):
    """smp's config.json says the output stride (16 here, not DeepLabV3's default 8) and the atrous rates."""
    torch.manual_seed(0)
    theirs = smp.DeepLabV3(
        "resnet18", encoder_weights=None, classes=2, encoder_output_stride=16, decoder_atrous_rates=(2, 4, 6)
    )
    random_statistics(theirs).save_pretrained(tmp_path / "v3")
    ours = create_model("deeplabv3", 2, weights=str(tmp_path / "v3"))
    assert max_difference(theirs, ours) < 1e-4
    assert ours.decoder[0].rates == (2, 4, 6)


@pytest.mark.parametrize("arch", list(SMP))
def test_timm_encoder_keeps_timms_dilation(tmp_path, arch):
    """smp's ``tu-resnet18`` is timm's model (timm's own dilation); its name comes from seglab's ``encoder``."""
    torch.manual_seed(0)
    theirs = random_statistics(getattr(smp, SMP[arch])("tu-resnet18", encoder_weights=None, classes=2))
    torch.save(theirs.state_dict(), tmp_path / "m.pth")
    ours = create_model(arch, 2, encoder="resnet18", weights=str(tmp_path / "m.pth"))
    assert max_difference(theirs, ours) < 1e-4
    assert params(ours) == params(theirs)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_uniform_dilation_is_smps_resnet(output_stride):
    """smp dilates every conv of a torchvision ResNet's dilated stage alike; timm gives a stage's first conv the
    previous stage's dilation: the same tensors, other features, unless ``dilation="uniform"``."""
    theirs = smp.encoders.get_encoder("resnet18", weights=None, output_stride=output_stride).eval()
    state = {f"model.{k}": v for k, v in theirs.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    for dilation, equal in (("timm", False), ("uniform", True)):
        ours = TimmEncoder("resnet18", output_stride=output_stride, dilation=dilation).eval()
        ours.load_state_dict(state)
        with torch.no_grad():
            assert torch.allclose(theirs(x)[-1], ours(x)[-1], atol=1e-5) is equal


def test_wrong_checkpoint_and_conflicting_argument_are_one_line(tmp_path):
    torch.save(smp.PSPNet("resnet18", encoder_weights=None, classes=2).state_dict(), tmp_path / "psp.pth")
    with pytest.raises(ConfigError, match="has no place in seglab's deeplabv3"):
        create_model("deeplabv3", 2, weights=str(tmp_path / "psp.pth"))
    smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=2).save_pretrained(tmp_path / "v3p")
    with pytest.raises(ConfigError, match=r"output_stride=8 conflicts .* \(output_stride=16\)"):
        create_model("deeplabv3plus", 2, weights=str(tmp_path / "v3p"), output_stride=8)
    with pytest.raises(ConfigError, match="unknown dilation"):
        create_model("deeplabv3", 2, encoder="resnet18", dilation="smp")
