"""Every architecture through one tester: shapes at any size, gradients, determinism, checkpoint round-trip."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from seglab.errors import ConfigError

# Tiny versions of every architecture: native encoders at small widths, timm's test_* models otherwise.
CASES: dict[str, tuple[str, dict]] = {
    "plain_fcn": ("plain_fcn", {"widths": [4, 8, 4]}),
    "fcn8s_vgg": ("fcn", {"encoder": "vgg", "base_channels": 4}),
    "fcn16s_timm": ("fcn", {"encoder": "test_resnet", "variant": "16s", "head_channels": 8}),
    "fcn32s_dilated": ("fcn", {"encoder": "test_efficientnet", "variant": "32s", "output_stride": 8}),
    "segnet": ("segnet", {"depth": 3, "base_channels": 4, "dropout": 0.2}),
    "segnet_bed_of_nails_timm": ("segnet", {"encoder": "test_resnet", "upsample": "bed_of_nails"}),
    "unet": ("unet", {"depth": 3, "base_channels": 4}),
    "unet_valid": ("unet", {"depth": 3, "base_channels": 4, "padding": "valid", "norm": "none"}),
    "unet_timm": ("unet", {"encoder": "test_convnext", "decoder_channels": [16, 8, 8], "dropout": 0.1}),
    "unet_dilated": ("unet", {"encoder": "test_resnet", "output_stride": 8, "upsample": "bilinear"}),
    "unetplusplus": ("unetplusplus", {"depth": 3, "base_channels": 4}),
    "unetplusplus_timm": ("unetplusplus", {"encoder": "test_convnext", "decoder_channels": [16, 8, 8, 4]}),
    "unetplusplus_dilated": (
        "unetplusplus",
        {"encoder": "test_resnet", "output_stride": 8, "decoder_channels": [8, 8, 8, 8, 4], "dropout": 0.1},
    ),
    "linknet": ("linknet", {"encoder": None, "base_channels": 4, "final_channels": 8}),
    "linknet_timm": ("linknet", {"encoder": "test_resnet", "final_channels": 8, "dropout": 0.1}),
    "linknet_unet_encoder": ("linknet", {"encoder": "unet", "depth": 3, "base_channels": 4}),
    "linknet_dilated": ("linknet", {"encoder": "test_efficientnet", "output_stride": 8, "final_channels": 8}),
    "deeplabv3": ("deeplabv3", {"encoder": "test_resnet", "channels": 16}),
    "deeplabv3_os8": ("deeplabv3", {"encoder": "test_efficientnet", "output_stride": 8, "channels": 16}),
    "deeplabv3plus": ("deeplabv3plus", {"encoder": "test_resnet", "channels": 16, "separable": True}),
    "deeplabv3plus_native": ("deeplabv3plus", {"encoder": "mobilenet", "base_channels": 4, "channels": 8}),
    "lraspp": ("lraspp", {"encoder": "test_efficientnet", "inter_channels": 8}),
    "lraspp_native": ("lraspp", {"encoder": "mobilenet", "base_channels": 4, "inter_channels": 8}),
    "fpn": ("fpn", {"encoder": "test_resnet", "pyramid_channels": 16, "segmentation_channels": 64}),
    "fpn_cat_native": (
        "fpn",
        {"encoder": "mobilenet", "base_channels": 4, "pyramid_channels": 8, "segmentation_channels": 8}
        | {"merge": "cat", "norm": "bn"},
    ),
    "fpn_vit": ("fpn", {"encoder": "test_vit", "pyramid_channels": 8, "segmentation_channels": 64}),
    "pspnet": ("pspnet", {"encoder": "test_resnet", "channels": 16}),
    "pspnet_native": ("pspnet", {"encoder": "mobilenet", "base_channels": 4, "channels": 8}),
    "upernet_convnext": ("upernet", {"encoder": "test_convnext", "channels": 8, "feature_norm": True}),
    "upernet_nhwc": ("upernet", {"encoder": "test_mambaout", "channels": 8, "pool_norm": "bn"}),
    "segformer": ("segformer", {"base_channels": 8, "channels": 8}),
    "segformer_timm": ("segformer", {"encoder": "test_convnext", "channels": 8, "dropout": 0.0}),
}
IN_CHANNELS, NUM_CLASSES = 2, 3


def build(case: str) -> torch.nn.Module:
    arch, params = CASES[case]
    torch.manual_seed(0)
    return seglab.create_model(arch, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS, **params)


def test_every_architecture_is_registered_and_tested():
    assert (
        set(seglab.list_models())
        == {a for a, _ in CASES.values()}
        == {
            "plain_fcn",
            "fcn",
            "segnet",
            "unet",
            "unetplusplus",
            "linknet",
            "deeplabv3",
            "deeplabv3plus",
            "lraspp",
            "fpn",
            "pspnet",
            "upernet",
            "segformer",
        }
    )


@pytest.mark.parametrize("case", CASES)
def test_forward_backward_reaches_the_first_layer(case):
    model = build(case).train()
    x = torch.randn(2, IN_CHANNELS, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES, 64, 64)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    first = next(model.encoder.parameters())  # the first conv of every encoder is registered first
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), "unused parameters"


@pytest.mark.parametrize("bands", [1, 5])
@pytest.mark.parametrize("case", CASES)
def test_one_and_five_bands_each_reach_the_logits(case, bands):
    """Any band count (grayscale microscopy, multispectral): the right logits shape, and every band's
    gradient non-zero, so no band is dropped on the way in."""
    arch, params = CASES[case]
    torch.manual_seed(0)
    model = seglab.create_model(arch, num_classes=NUM_CLASSES, in_channels=bands, **params).train()
    x = torch.randn(2, bands, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES, 32, 32)
    out.square().mean().backward()
    assert (x.grad.abs().sum((0, 2, 3)) > 0).all()


@pytest.mark.parametrize("case", CASES)
def test_odd_sizes_give_logits_at_input_resolution(case):
    model = build(case).eval()
    with torch.no_grad():
        assert model(torch.randn(1, IN_CHANNELS, 97, 131)).shape == (1, NUM_CLASSES, 97, 131)
        assert model(torch.randn(1, IN_CHANNELS, 5, 3)).shape == (1, NUM_CLASSES, 5, 3)


@pytest.mark.parametrize("case", CASES)
def test_eval_is_deterministic_and_checkpoints_round_trip(case, tmp_path):
    arch, params = CASES[case]
    model = build(case)
    model.train()
    model(torch.randn(2, IN_CHANNELS, 32, 32))  # move batch-norm statistics away from their init
    model.eval()
    x = torch.randn(1, IN_CHANNELS, 40, 48)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    meta = CheckpointMeta(arch=arch, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS, model_params=params)
    save_checkpoint(tmp_path / "best", model, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path)
    assert loaded_meta.model_params == params
    with torch.no_grad():
        assert torch.equal(loaded(x), first)


def test_pad_modes():
    model = seglab.create_model("unet", num_classes=2, depth=3, base_channels=4, pad_mode="constant").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 9, 10)).shape == (1, 2, 9, 10)
    with pytest.raises(ConfigError, match="pad_mode"):
        seglab.create_model("unet", num_classes=2, depth=3, base_channels=4, pad_mode="wrap")


def test_dropout_modules_are_found_by_type():
    """MC dropout finds nn.Dropout / nn.Dropout2d modules; the dropout arguments must create them."""
    kinds = (torch.nn.Dropout, torch.nn.Dropout2d)

    def count(model: torch.nn.Module) -> int:
        return sum(isinstance(m, kinds) for m in model.modules())

    assert count(seglab.create_model("unet", num_classes=2, depth=3, base_channels=4)) == 0
    assert count(seglab.create_model("unet", num_classes=2, depth=3, base_channels=4, dropout=0.5)) == 2
    # Bayesian SegNet (central): the deepest three encoder and decoder stages.
    assert count(seglab.create_model("segnet", num_classes=2, base_channels=2, dropout=0.5)) == 6
    assert count(seglab.create_model("plain_fcn", num_classes=2, widths=[4], dropout=0.5)) == 1


def test_freeze_encoder_keeps_it_fixed_while_the_rest_trains():
    model = seglab.create_model("unet", num_classes=2, depth=3, base_channels=4)
    model.freeze_encoder().train()
    assert not model.encoder.training and model.decoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    stats = [b.clone() for b in model.encoder.buffers()]
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.encoder.buffers())), "batch-norm stats moved"
    model.unfreeze_encoder()
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())


@pytest.mark.parametrize(
    ("arch", "params", "match"),
    [
        ("segnet", {"encoder": "test_resnet"}, "pooling indices"),
        ("segnet", {"depth": 2, "base_channels": 2, "upsample": "transposed"}, "learned"),
        ("unet", {"encoder": "test_resnet", "padding": "valid"}, "native U-Net"),
        ("unet", {"depth": 3, "base_channels": 2, "padding": "wide"}, "padding"),
        ("unet", {"depth": 3, "base_channels": 2, "upsample": "max_unpool"}, "segnet"),
        ("unet", {"depth": 3, "base_channels": 2, "decoder_channels": [4]}, "decoder_channels"),
        ("fcn", {"encoder": "test_resnet", "output_stride": 8}, "variant '32s'"),
        ("fcn", {"encoder": "vgg", "base_channels": 2, "variant": "4s"}, "variant"),
        ("deeplabv3", {"encoder": "vgg", "base_channels": 2}, "cannot be dilated"),
        ("deeplabv3", {"encoder": "test_resnet", "output_stride": 32}, "rates"),
        ("lraspp", {"encoder": "unet", "depth": 3, "base_channels": 2, "output_stride": None}, "reduction 8"),
    ],
)
def test_invalid_arguments_say_how_to_fix_them(arch, params, match):
    with pytest.raises(ConfigError, match=match):
        seglab.create_model(arch, num_classes=2, **params)


@pytest.mark.parametrize(
    "arch", ["fcn", "segnet", "unet", "deeplabv3", "deeplabv3plus", "lraspp", "segformer"]
)
def test_encoder_none_is_the_native_encoder(arch):
    """encoder=None builds from scratch without timm (the native encoder of NATIVE_DEFAULT)."""
    from seglab.models.archs import NATIVE_DEFAULT
    from seglab.models.encoders import NATIVE_ENCODERS

    model = seglab.create_model(arch, num_classes=2, encoder=None, base_channels=2)
    assert type(model.encoder) is NATIVE_ENCODERS[NATIVE_DEFAULT[arch]]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 35)).shape == (1, 2, 33, 35)
