"""The pyramid decoders (issue 30): FPN, PSPNet, UPerNet. Known answers: PSPNet's bins 1, 2, 3, 6, FPN's pyramid and
upsampling stages, the decoders' parameter counts equal to smp's with the same channels, exact adaptive pooling
that exports to ONNX at any size, and transformer / ConvNeXt / NHWC timm encoders through the one adapter.
(The shared tests of tests/models/test_models_zoo.py run every case of these architectures too.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.errors import ConfigError
from seglab.models.decoders.pyramid import (
    PSP_BINS,
    FPNDecoder,
    PSPDecoder,
    PyramidPooling,
    UPerNetDecoder,
    adaptive_avg_pool,
)
from seglab.models.encoders.base import FeatureInfo

# A ResNet-like encoder's features (reductions 2 .. 32) at small widths, as smp's encoders list them (with the input).
SMP_CHANNELS = [3, 8, 16, 24, 32, 40]
FEATURES = [FeatureInfo(c, 2**i) for i, c in enumerate(SMP_CHANNELS) if i]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 2), (33, 47), (64, 64)])
@pytest.mark.parametrize("bins", PSP_BINS)
def test_adaptive_avg_pool_is_torchs(size, bins):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool(x, bins), F.adaptive_avg_pool2d(x, bins))


def test_pyramid_pooling_has_pspnets_bins_and_widths():
    ppm = PyramidPooling(64, 16)
    assert ppm.bins == (1, 2, 3, 6) and ppm.out_channels == 64 + 4 * 16
    # the 1x1 bin's branch has no norm (a conv with bias: batch size 1 trains); the others batch norm
    norms = [type(branch[1]) for branch in ppm.branches]
    assert norms == [nn.Identity, nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm2d]
    assert ppm.branches[0][0].bias is not None and ppm.branches[1][0].bias is None
    assert type(PyramidPooling(64, 16, pool_norm="bn").branches[0][1]) is nn.BatchNorm2d
    x = torch.randn(1, 64, 9, 13)
    out = ppm.train()(x)  # batch size 1 trains
    assert out.shape == (1, 128, 9, 13) and torch.equal(out[:, :64], x)


def test_psp_decoder_branches_are_a_quarter_of_the_deepest_features():
    dec = PSPDecoder(feature_info=FEATURES, channels=16)
    assert [b[0].out_channels for b in dec.ppm.branches] == [10] * 4  # 40 // 4
    assert dec.fuse[0].kernel_size == (3, 3) and dec.reduction == 32 and dec.out_channels == 16


def test_fpn_decoder_pyramid_and_upsampling_stages():
    dec = FPNDecoder(feature_info=FEATURES, pyramid_channels=32, segmentation_channels=16)
    assert [c.in_channels for c in dec.lateral] == [16, 24, 32, 40]  # C2..C5 at 1/4 .. 1/32
    assert {c.out_channels for c in dec.lateral} == {32}
    ups = [sum(isinstance(m, nn.Upsample) for m in b.modules()) for b in dec.branches]
    assert ups == [0, 1, 2, 3] and dec.reduction == 4  # each level to 1/4 by 2x stages
    features = [torch.randn(2, f.channels, 64 // f.reduction, 96 // f.reduction) for f in FEATURES]
    assert dec(features).shape == (2, 16, 16, 24)
    cat = FPNDecoder(feature_info=FEATURES, pyramid_channels=32, segmentation_channels=16, merge="cat")
    assert cat.out_channels == 64 and cat(features).shape == (2, 64, 16, 24)


def test_upernet_decoder_fuses_every_level_at_the_finest():
    dec = UPerNetDecoder(feature_info=FEATURES, channels=8)
    assert len(dec.lateral) == len(dec.fpn_convs) == 3 and dec.fuse[0].in_channels == 4 * 8
    assert dec.ppm.out_channels == 40 + 4 * 8 and dec.reduction == 4
    features = [torch.randn(1, f.channels, 64 // f.reduction, 96 // f.reduction) for f in FEATURES]
    assert dec(features).shape == (1, 8, 16, 24)


def test_decoder_parameters_equal_smps_with_the_same_channels():
    """Same structure as smp 0.6 (its decoder options that seglab reproduces): equal parameter counts.
    FPN: identical by default. PSPNet: smp fuses with a 1x1 conv (the paper: 3x3; ``fuse_kernel=1``). UPerNet: smp
    LayerNorms every feature and batch-normalises the 1x1 bin (``feature_norm=True``, ``pool_norm="bn"``)."""
    pytest.importorskip("segmentation_models_pytorch")
    from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder as SmpFPN
    from segmentation_models_pytorch.decoders.pspnet.decoder import PSPDecoder as SmpPSP
    from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder as SmpUPerNet

    fpn = FPNDecoder(feature_info=FEATURES, pyramid_channels=32, segmentation_channels=32)
    assert count(fpn) == count(SmpFPN(SMP_CHANNELS, 5, 32, 32))
    psp = PSPDecoder(feature_info=FEATURES[:3], channels=16, fuse_kernel=1)  # smp's PSPNet: encoder depth 3
    assert count(psp) == count(SmpPSP(SMP_CHANNELS[:4], out_channels=16))
    upernet = UPerNetDecoder(feature_info=FEATURES, channels=16, feature_norm=True, pool_norm="bn")
    assert count(upernet) == count(SmpUPerNet(SMP_CHANNELS, 5, 16))


def test_pspnet_onnx_export_with_dynamic_size_runs_at_33x47(tmp_path):
    """Pyramid pooling's adaptive bins come from the input's size in the graph: a dynamic export runs at 33x47
    in plain ONNX Runtime and matches PyTorch (torch's adaptive_avg_pool2d would bake in the example's bins).
    One export (about 20 s): UPerNet's pyramid pooling is the same module; FPN and UPerNet export the same way."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from seglab.engine.export import export_model

    torch.manual_seed(0)
    model = seglab.create_model("pspnet", num_classes=3, encoder="test_resnet", channels=16).eval()
    result = export_model(model, tmp_path / "m.onnx", example_size=(67, 93))
    assert result.dynamic and result.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.randn(2, 3, 33, 47)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=0)


def test_torchscript_export_of_pspnet(tmp_path):
    from seglab.engine.export import export_model, load_exported

    torch.manual_seed(0)
    model = seglab.create_model("pspnet", num_classes=3, encoder="test_resnet", channels=16).eval()
    result = export_model(model, tmp_path / "m.pt", fmt="torchscript", example_size=(40, 56))
    assert result.max_abs_diff < 1e-4
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "m.pt")(x), model(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["fpn", "upernet"])
@pytest.mark.parametrize("encoder", ["test_convnext", "test_mambaout", "test_vit"])
def test_convnext_transformer_and_nhwc_timm_encoders(arch, encoder):
    """ConvNeXt, a ViT (all features at 1/16) and MambaOut (NHWC outputs, turned NCHW by the one timm adapter)."""
    widths = {"channels": 8} if arch == "upernet" else {"pyramid_channels": 8, "segmentation_channels": 64}
    model = seglab.create_model(arch, num_classes=3, encoder=encoder, **widths).eval()
    x = torch.randn(1, 3, 45, 38)
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 64, 96))
        assert [tuple(f.shape[1:]) for f in features] == [
            (info.channels, 64 // info.reduction, 96 // info.reduction) for info in model.encoder.feature_info
        ]
        assert model(x).shape == (1, 3, 45, 38)


def test_swin_and_vit_take_any_size_through_the_adapters_family_quirks():
    """timm's Swin and ViT are built for one image size; the adapter builds them for any (TIMM_FAMILY_QUIRKS)."""
    import timm

    from seglab.models.encoders.timm import timm_quirks

    assert dict(timm_quirks(timm, "swin_tiny_patch4_window7_224").create_kwargs) == {"strict_img_size": False}
    assert dict(timm_quirks(timm, "vit_tiny_patch16_224").create_kwargs) == {"dynamic_img_size": True}
    assert timm_quirks(timm, "convnext_tiny").create_kwargs == ()
    assert timm_quirks(timm, "no_such_model").create_kwargs == ()
    model = seglab.create_model("upernet", num_classes=2, encoder="swin_tiny_patch4_window7_224", channels=8)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 37, 51)).shape == (1, 2, 37, 51)


@pytest.mark.parametrize("arch", ["fpn", "pspnet", "upernet"])
def test_encoder_none_is_the_native_encoder_and_dropout_is_before_the_head(arch):
    from seglab.models.archs import NATIVE_DEFAULT
    from seglab.models.encoders import NATIVE_ENCODERS

    model = seglab.create_model(arch, num_classes=2, encoder=None, base_channels=2)
    assert type(model.encoder) is NATIVE_ENCODERS[NATIVE_DEFAULT[arch]]
    assert isinstance(model.head[0], nn.Dropout2d)  # MC dropout finds it by type
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 35)).shape == (1, 2, 33, 35)


def test_pspnet_defaults_to_the_papers_dilated_encoder():
    model = seglab.create_model("pspnet", num_classes=2, encoder="test_resnet", channels=8)
    assert model.encoder.output_stride == 8 and model.decoder.reduction == 8


@pytest.mark.parametrize(
    ("arch", "params", "match"),
    [
        ("fpn", {"merge": "max"}, "merge"),
        ("fpn", {"levels": 0}, "levels"),
        ("upernet", {"levels": 0}, "levels"),
        ("pspnet", {"bins": [0, 2]}, "bins"),
    ],
)
def test_invalid_arguments_say_how_to_fix_them(arch, params, match):
    with pytest.raises(ConfigError, match=match):
        seglab.create_model(arch, num_classes=2, encoder="test_resnet", **params)
