"""smp checkpoints of U-Net++, LinkNet, FPN and SegFormer as seglab models (seglab.models.from_smp's RECIPES): smp's
model with random weights and random batch-norm statistics, saved as smp saves it, gives the same logits in
seglab (float32, within 1e-4), with the same parameter count; one smp option per architecture besides."""

from __future__ import annotations

import pytest
import torch
from smp_models import max_difference, params, random_statistics, unused_resnet_layers  # tests/smp_models.py

from seglab.errors import ConfigError
from seglab.models.factory import create_model

smp = pytest.importorskip("segmentation_models_pytorch")


# (seglab arch, smp class, smp encoder, smp options, seglab's extra arguments)
CASES = [
    ("unetplusplus", "UnetPlusPlus", "resnet18", {"decoder_channels": [32, 16, 16, 8, 8]}, {}),
    (
        "unetplusplus",
        "UnetPlusPlus",
        "resnet18",
        {"encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]},
        {},
    ),
    ("linknet", "Linknet", "resnet18", {}, {}),
    ("linknet", "Linknet", "resnet18", {"encoder_depth": 3}, {}),
    ("fpn", "FPN", "resnet18", {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}, {}),
    ("fpn", "FPN", "resnet18", {"decoder_merge_policy": "cat", "decoder_segmentation_channels": 32}, {}),
    ("fpn", "FPN", "tu-resnet18", {"decoder_segmentation_channels": 32}, {"encoder": "resnet18"}),
    ("segformer", "Segformer", "mit_b0", {}, {}),
    ("segformer", "Segformer", "resnet18", {"decoder_segmentation_channels": 64}, {}),
    ("segformer", "Segformer", "resnet18", {"encoder_depth": 4, "decoder_segmentation_channels": 32}, {}),
]


@pytest.mark.parametrize(("arch", "cls", "encoder", "options", "given"), CASES)
def test_smp_state_dict_gives_smps_logits(tmp_path, arch, cls, encoder, options, given):
    torch.manual_seed(0)
    theirs = random_statistics(getattr(smp, cls)(encoder, encoder_weights=None, classes=3, **options))
    torch.save(theirs.state_dict(), tmp_path / "model.pth")
    ours = create_model(arch, 3, weights=str(tmp_path / "model.pth"), **given)
    assert max_difference(theirs, ours) < 1e-4
    depth = options.get("encoder_depth", 5)
    assert params(ours) == params(theirs) - unused_resnet_layers(theirs, depth)


@pytest.mark.parametrize(("arch", "cls"), [("segformer", "Segformer"), ("unetplusplus", "UnetPlusPlus")])
def test_save_pretrained_folder(tmp_path, arch, cls):
    """The folder's config.json names the architecture, the encoder and the options (U-Net++'s bilinear
    interpolation, which no tensor shows)."""
    options = (
        {"decoder_interpolation": "bilinear", "decoder_channels": [16, 16, 8, 8]}
        if arch != "segformer"
        else {}
    )
    torch.manual_seed(0)
    encoder = "mit_b0" if arch == "segformer" else "resnet18"
    depth = {"encoder_depth": 4} if arch != "segformer" else {}
    theirs = random_statistics(
        getattr(smp, cls)(encoder, encoder_weights=None, classes=2, **depth, **options)
    )
    theirs.save_pretrained(tmp_path)
    ours = create_model(arch, 2, weights=str(tmp_path))
    assert max_difference(theirs, ours, size=(96, 64)) < 1e-4


def test_options_reproduce_smps_structure_and_seglab_keeps_its_defaults(tmp_path):
    """The options the loader sets are plain builder arguments; without them seglab's defaults stand."""
    from seglab.models.from_smp import smp_arguments

    smp.Segformer("resnet18", encoder_weights=None, classes=2).save_pretrained(tmp_path)
    arguments = smp_arguments("segformer", tmp_path)
    assert {k: arguments[k] for k in ("min_reduction", "fuse_reduction", "align_corners", "depth")} == {
        "min_reduction": 1,
        "fuse_reduction": 4,
        "align_corners": True,
        "depth": 5,
    }
    assert isinstance(create_model("segformer", 2, weights=str(tmp_path)).head[0], torch.nn.Identity)  # smp's
    mc = create_model("segformer", 2, weights=str(tmp_path), dropout=0.1)  # no tensor: the user's to choose
    assert isinstance(mc.head[0], torch.nn.Dropout2d)
    default = create_model("segformer", 2, encoder="resnet18")
    assert default.decoder.indices == [1, 2, 3, 4] and not default.align_corners
    assert create_model("unetplusplus", 2, encoder="resnet18").head[1].kernel_size == (1, 1)


@pytest.mark.parametrize(
    ("arch", "given", "match"),
    [
        ("linknet", {}, "is smp's FPN, not linknet"),
        ("fpn", {"align_corners": False}, r"align_corners=False conflicts with the smp checkpoint"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, arch, given, match):
    smp.FPN("resnet18", encoder_weights=None, classes=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=match):
        create_model(arch, 2, weights=str(tmp_path), **given)


def test_a_bare_state_dict_of_another_architecture_is_named(tmp_path):
    torch.save(smp.Linknet("resnet18", encoder_weights=None, classes=2).state_dict(), tmp_path / "l.pth")
    with pytest.raises(
        ConfigError, match="tensor 'decoder.blocks.0.block.0.0.weight' has no place in seglab's unetplusplus"
    ):
        create_model("unetplusplus", 2, weights=str(tmp_path / "l.pth"))
