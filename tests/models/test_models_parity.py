"""Known answers: parameter counts of reference implementations and of the U-Net paper, exact geometry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import seglab
from seglab.models.decoders.unet import unet_valid_geometry
from seglab.models.heads import bilinear_kernel, learned_upsample

ROOT = Path(__file__).resolve().parents[2]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_count(arch: str, **kwargs) -> int:
    with torch.device("meta"):  # no memory, no init cost: counts only
        return n_params(seglab.create_model(arch, **kwargs))


@pytest.fixture(scope="module")
def tv_segmentation():
    return pytest.importorskip("torchvision.models.segmentation")


def tv_count(build) -> int:
    with torch.device("meta"):
        return n_params(build(weights=None, weights_backbone=None, num_classes=21))


def test_timm_resnet50_features_equal_torchvision_backbone(tv_segmentation):
    """Both drop the classifier: torchvision's IntermediateLayerGetter backbone has no fc, nor has timm's
    features_only resnet50."""
    with torch.device("meta"):
        ours = seglab.create_model("deeplabv3", num_classes=21, encoder="resnet50", output_stride=8)
        ref = tv_segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21)
    assert n_params(ours.encoder) == n_params(ref.backbone) == 23_508_032


def test_deeplabv3_resnet50_matches_torchvision(tv_segmentation):
    """torchvision's ASPP pooling branch is conv (no bias) + BN(256); ours is conv with bias and no BN, so
    it trains at batch size 1: 2*256 - 256 = 256 parameters fewer. pool_norm="bn" is torchvision exactly."""
    ref = tv_count(tv_segmentation.deeplabv3_resnet50)
    assert ref == 39_638_869
    kwargs = {"num_classes": 21, "encoder": "resnet50", "output_stride": 8}
    assert meta_count("deeplabv3", **kwargs) == ref - 256
    assert meta_count("deeplabv3", pool_norm="bn", **kwargs) == ref


def test_fcn_resnet50_matches_torchvision(tv_segmentation):
    """FCN-32s with bilinear upsampling on the dilated resnet50 is torchvision's fcn_resnet50 (FCNHead:
    3x3 conv 2048 -> 512, BN, ReLU, dropout 0.1, 1x1 conv). Learned upsampling (our default) adds the
    16x16 transposed conv from stride 8, classes to classes, no bias: 21 * 21 * 16 * 16."""
    ref = tv_count(tv_segmentation.fcn_resnet50)
    assert ref == 32_957_013
    kwargs = {"num_classes": 21, "encoder": "resnet50", "output_stride": 8, "variant": "32s"}
    assert meta_count("fcn", upsample="bilinear", **kwargs) == ref
    assert meta_count("fcn", upsample="transposed", **kwargs) == ref + 21 * 21 * 16 * 16


def test_lraspp_matches_torchvision(tv_segmentation):
    """timm's mobilenetv3_large_100 at stride 16 + our LR-ASPP head = torchvision's lraspp_mobilenet_v3_large."""
    with torch.device("meta"):
        ref = tv_segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    assert meta_count("lraspp", num_classes=21) == n_params(ref) == 3_221_538


def test_unet_has_the_papers_parameter_count():
    """Ronneberger et al. (2015), counted from the layer list: 1 input channel, 2 classes, 3x3 convs with
    bias and no batch norm, 2x2 up-convs halving the channels, a 1x1 conv to the classes."""

    def conv(c_in, c_out, k):
        return k * k * c_in * c_out + c_out

    widths = [64, 128, 256, 512, 1024]
    total = 0
    for c_in, c in zip([1, *widths[:-1]], widths):  # contracting path
        total += conv(c_in, c, 3) + conv(c, c, 3)
    for c_deep, c in zip(widths[:0:-1], widths[-2::-1]):  # expansive path
        total += conv(c_deep, c, 2)  # up-conv 2x2 (transposed: same count)
        total += conv(2 * c, c, 3) + conv(c, c, 3)  # after concatenating the skip
    total += conv(64, 2, 1)
    assert total == 31_030_658
    for padding in ("same", "valid"):
        kwargs = {"num_classes": 2, "in_channels": 1, "norm": "none", "padding": padding}
        assert meta_count("unet", base_channels=64, depth=5, upsample="transposed", **kwargs) == total
    # The default keeps batch norm on: each conv loses its bias and gains a norm's weight and bias.
    bn_convs = sum(2 * c for c in widths) + sum(2 * c for c in widths[:-1])
    assert meta_count("unet", num_classes=2, in_channels=1) == total + bn_convs


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_valid_unet_geometry_is_exact(depth):
    """The paper's 572 -> 388 at depth 5; in general o + 2 * margin -> o for o = 4 (mod 2**(depth-1))."""
    g = unet_valid_geometry(depth)
    if depth == 5:
        assert (g.margin, g.output_size(388), g.output_size(380)) == (92, 388, 388)
    model = seglab.create_model("unet", num_classes=2, depth=depth, base_channels=1, padding="valid").eval()
    for size in (1, 9):
        o = g.output_size(size)
        x = torch.randn(1, 3, o + 2 * g.margin, o + 2 * g.margin)
        with torch.no_grad():
            assert model.head(model.decoder(model.encoder(x))).shape[-2:] == (o, o)


def test_valid_unet_logits_see_real_context():
    """Overlap-tile: the logits of a crop equal the logits of the full image where the crop's context is real."""
    torch.manual_seed(0)
    model = seglab.create_model("unet", num_classes=2, depth=3, base_channels=2, padding="valid").eval()
    g = model.geometry
    image = torch.randn(1, 3, 100, 100)
    with torch.no_grad():
        full = model(image)
        inner = model.head(model.decoder(model.encoder(image[..., 10 : 10 + 2 * g.margin + 16, 10:58])))
    assert inner.shape[-2:] == (16, 48 - 2 * g.margin)
    window = full[..., 10 + g.margin : 26 + g.margin, 10 + g.margin : 58 - g.margin]
    torch.testing.assert_close(inner, window, atol=1e-4, rtol=1e-4)  # float sums in another order


def test_learned_upsampling_starts_as_bilinear_interpolation():
    assert torch.allclose(bilinear_kernel(4)[0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    up = learned_upsample(2, 4)
    x = torch.randn(1, 2, 6, 6)
    ref = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(up(x)[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4])


def test_fcn_skips_start_at_zero_so_fcn8s_starts_as_fcn32s():
    """The paper's staged training: skip scores are zero-initialised, the upsamplings bilinear."""
    torch.manual_seed(0)
    fcn8 = seglab.create_model("fcn", num_classes=2, encoder="vgg", base_channels=2, variant="8s").eval()
    torch.manual_seed(0)
    fcn32 = seglab.create_model("fcn", num_classes=2, encoder="vgg", base_channels=2, variant="32s").eval()
    x = torch.randn(1, 3, 128, 128)

    def fused_scores(model):  # the head's scores before its final upsampling
        features = model.encoder(x)
        return model.head.fuse(model.decoder(features), features)

    with torch.no_grad():
        s8, s32 = fused_scores(fcn8), fused_scores(fcn32)
        assert s8.shape[-2:] == (16, 16) and s32.shape[-2:] == (4, 4)
        ref = s32
        for _ in range(2):  # 1/32 -> 1/16 -> 1/8, each a bilinear 2x (exact away from the border)
            ref = F.interpolate(ref, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(s8[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4])


def test_models_page_table_is_the_scripts_output():
    spec = importlib.util.spec_from_file_location("model_table", ROOT / "scripts" / "model_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "models.md").read_text()
    expected = f"{module.START}\n{module.model_table()}\n{module.END}"
    assert expected in page, "docs/models.md's model table is stale: run scripts/model_table.py --update"
