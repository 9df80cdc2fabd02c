"""Encoders: native ones, the timm adapter across the course's families, dilation, weights, timm kept lazy."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import seglab
from seglab.errors import ConfigError
from seglab.models.encoders import (
    EncoderSpec,
    MobileNetEncoder,
    PooledFeatures,
    UNetEncoder,
    VGGEncoder,
    build_encoder,
)

timm = pytest.importorskip("timm")

# The course's classification families, as timm models (random weights).
FAMILIES = [
    "vgg16_bn",  # features from reduction 1
    "inception_v3",  # unpadded convs: needs >= 75 px, features a few px off H / r
    "resnet18",
    "densenet121",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
]


def assert_features_match_info(encoder, x):
    feats = encoder(x)
    assert len(feats) == len(encoder.feature_info)
    for f, info in zip(feats, encoder.feature_info):
        assert f.shape[1] == info.channels
        assert f.shape[-2:] == (x.shape[-2] // info.reduction, x.shape[-1] // info.reduction)
    return feats


@pytest.mark.parametrize("name", FAMILIES)
def test_timm_families_read_channels_and_reductions_from_feature_info(name):
    encoder = build_encoder(EncoderSpec(name=name, in_channels=1)).eval()
    x = torch.randn(1, 1, 96, 64 if encoder.min_input_size <= 64 else 96)
    with torch.no_grad():
        assert_features_match_info(encoder, x)
    assert encoder.feature_info[0].reduction in (1, 2)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "inception_v3", "vgg16_bn"])
def test_unet_on_timm_families_at_64px(name):
    """A decoder on each family: inception_v3 needs 75 px, so the Segmentor pads 64 up to 96."""
    blocks = 5 if name == "vgg16_bn" else 4  # one per feature level but the deepest
    model = seglab.create_model("unet", num_classes=2, encoder=name, decoder_channels=[8] * blocks)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_decoder_channels_too_many_is_an_error():
    with pytest.raises(ConfigError, match="decoder_channels needs 4"):
        seglab.create_model("unet", num_classes=2, encoder="test_resnet", decoder_channels=[8] * 5)


@pytest.mark.parametrize(("output_stride", "reductions"), [(8, [2, 4, 8, 8, 8]), (16, [2, 4, 8, 16, 16])])
def test_timm_dilation_reports_the_dilated_reductions(output_stride, reductions):
    encoder = build_encoder(EncoderSpec(name="test_resnet", output_stride=output_stride))
    assert [f.reduction for f in encoder.feature_info] == reductions
    assert encoder.output_stride == output_stride
    assert_features_match_info(encoder.eval(), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "densenet121", "output_stride": 8}, "cannot be dilated"),
        ({"name": "no_such_net"}, "unknown encoder"),
        ({"name": "test_resnet", "base_channels": 8}, "native encoders"),
        ({"name": "unet", "output_stride": 8}, "cannot be dilated"),
        ({"name": "unet", "weights": "imagenet"}, "no pretrained weights"),
        ({"name": "test_resnet", "weights": "/nonexistent/w.safetensors"}, "does not exist"),
        ({"name": "vgg", "options": {"padding": "valid"}}, "native encoder 'vgg'"),
    ],
)
def test_encoder_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_encoder(EncoderSpec(**kwargs))


def test_timm_is_imported_lazily():
    code = "import sys, seglab.models.archs, seglab.models.factory; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_native_encoders_follow_the_contract():
    x = torch.randn(2, 3, 32, 32)
    unet = UNetEncoder(3, depth=4, base_channels=4)
    assert [(f.channels, f.reduction) for f in unet.feature_info] == [(4, 1), (8, 2), (16, 4), (32, 8)]
    assert_features_match_info(unet, x)
    vgg = VGGEncoder(3, depth=3, base_channels=4)
    feats = assert_features_match_info(vgg, x)
    assert isinstance(feats, PooledFeatures) and isinstance(feats, list) and len(feats.indices) == 3
    assert [(f.channels, f.reduction) for f in vgg.feature_info] == [(4, 1), (8, 2), (16, 4), (16, 8)]
    mobile = MobileNetEncoder(3, base_channels=4, output_stride=8)
    assert [f.reduction for f in mobile.feature_info] == [2, 4, 8, 8, 8]
    assert_features_match_info(mobile, x)


def test_vgg16_encoder_has_vgg16_convs():
    """Base 64, depth 5: VGG16-bn's 13 convs. timm's (and torchvision's) vgg16_bn keep a bias in every conv
    before its batch norm, which the norm's shift makes redundant; ConvNormAct drops it: 64*2 + 128*2 +
    256*3 + 512*6 = 4224 parameters fewer."""
    with torch.device("meta"):
        ours = sum(p.numel() for p in VGGEncoder(3).parameters())
        ref = timm.create_model("vgg16_bn", features_only=True)
    assert ours + 4224 == sum(p.numel() for p in ref.parameters()) == 14_723_136


def test_segnet_unpools_to_where_the_maxima_were():
    """Max unpooling puts values only where the encoder's pooling found its maxima: with identity-like
    weights removed, the first decoder block's unpooled map is zero off the argmax positions."""
    model = seglab.create_model("segnet", num_classes=2, depth=2, base_channels=2).eval()
    x = torch.randn(1, 3, 8, 8)
    seen = {}
    model.decoder.blocks[0].up.register_forward_hook(lambda m, i, o: seen.setdefault("up", o))
    with torch.no_grad():
        feats = model.encoder(x)
        model(x)
    up = seen["up"]
    assert up.shape == feats[1].shape
    mask = torch.zeros_like(up).flatten(2)
    mask.scatter_(2, feats.indices[1].flatten(2), 1.0)
    assert (up.flatten(2)[mask == 0] == 0).all()


# --------------------------------------------------------------------------------------------- weights


def test_weights_file_with_the_encoders_own_state(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = build_encoder(EncoderSpec(name="test_resnet"))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "enc.safetensors")
    torch.save({"state_dict": source.model.state_dict()}, tmp_path / "enc.pt")  # timm's own names, wrapped
    for path in (tmp_path / "enc.safetensors", tmp_path / "enc.pt"):
        loaded = build_encoder(EncoderSpec(name="test_resnet", weights=str(path)))
        assert all(
            torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values())
        )


def test_weights_file_with_a_timm_classification_checkpoint_adapts_the_first_conv(tmp_path):
    """A full timm checkpoint (with its classifier) loads through timm, which sums the RGB kernels of the
    first conv for in_channels=1, as for "imagenet" weights."""
    from safetensors.torch import save_file

    full = timm.create_model("test_resnet")
    path = tmp_path / "cls.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    model = seglab.create_model("fcn", num_classes=2, in_channels=1, encoder="test_resnet", weights=str(path))
    state = model.encoder.model.state_dict()
    first = full.pretrained_cfg["first_conv"] + ".weight"
    assert torch.allclose(state[first], full.state_dict()[first].sum(1, keepdim=True))
    assert torch.equal(state["layer4.0.conv2.weight"], full.state_dict()["layer4.0.conv2.weight"])


def test_weights_file_that_does_not_fit_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    state = dict(timm.create_model("test_resnet").state_dict())
    del state["layer1.0.conv1.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="1 missing keys.*layer1.0.conv1.weight"):
        build_encoder(EncoderSpec(name="test_resnet", weights=str(tmp_path / "bad.safetensors")))
    # a 3-band file's input conv is adapted to 1 band (tests/models/test_models_in_chans.py); a 4-band one's is not
    torch.save(UNetEncoder(4, depth=3, base_channels=4).state_dict(), tmp_path / "unet.pt")
    with pytest.raises(
        ConfigError, match=r"blocks.0.0.0.weight has shape \(4, 4, 3, 3\).*in_channels differs"
    ):
        build_encoder(
            EncoderSpec(
                name="unet", in_channels=1, depth=3, base_channels=4, weights=str(tmp_path / "unet.pt")
            )
        )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        build_encoder(EncoderSpec(name="unet", weights=str(tmp_path / "junk.pt")))


def test_native_weights_from_a_trained_seglab_model(tmp_path):
    """A whole seglab model's state dict initialises a native encoder (its ``encoder.`` entries)."""
    trained = seglab.create_model("unet", num_classes=2, depth=3, base_channels=4)
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    model = seglab.create_model(
        "unet", num_classes=5, depth=3, base_channels=4, weights=str(tmp_path / "model.pt")
    )
    for a, b in zip(trained.encoder.state_dict().values(), model.encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_imagenet_weights_ask_timm_for_pretrained(monkeypatch):
    """No network in tests: check that "imagenet" reaches timm as pretrained=True (with in_chans)."""
    calls = []
    create = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs.get("in_chans")))
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    build_encoder(EncoderSpec(name="test_resnet", in_channels=4, weights="imagenet"))
    assert calls == [("test_resnet", True, 4)]
