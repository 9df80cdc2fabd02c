"""U-Net++ and LinkNet (issue 30) against known answers: smp's decoders on the same features (same outputs with
the same weights, same parameter counts on resnet18), the nested and additive structures, native encoders,
export at any size. The shared tests (any size, gradients, bands, checkpoints) run them through CASES in
test_models_zoo.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seglab
from seglab.errors import ConfigError
from seglab.models.decoders import LinkNetDecoder, UNetPlusPlusDecoder
from seglab.models.encoders import FeatureInfo
from seglab.models.from_smp import SmpCheckpoint, smp_decoder_state

smp = pytest.importorskip("segmentation_models_pytorch")

# A ResNet-like pyramid (reductions 2 ... 32) at tiny widths, and smp's view of it (the input first, dropped).
INFO = [FeatureInfo(c, 2 ** (i + 1)) for i, c in enumerate([8, 8, 12, 16, 24])]
SMP_CHANNELS = [3] + [f.channels for f in INFO]


def features(info: list[FeatureInfo], size: int = 64) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(2, f.channels, size // f.reduction, size // f.reduction) for f in info]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def smp_renamed(arch: str, decoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp's decoder tensors in seglab's decoder names, by the smp checkpoint loader's table (from_smp.RECIPES:
    smp's U-Net++ node x_{d}_{l} is x_{n-2-l}_{l-d+1}, its last ``final``; LinkNet's blocks.{k}.block parts are
    reduce, up, expand)."""
    ckpt = SmpCheckpoint(Path("smp"), {f"decoder.{k}": v for k, v in decoder_state.items()}, {})
    return {k.removeprefix("decoder."): v for k, v in smp_decoder_state(arch, ckpt).items()}


def test_unetpp_decoder_equals_smps_with_the_same_weights():
    """The nested dense skips, node for node: smp's decoder and seglab's give the same output on the same
    features once smp's weights are renamed (x_{d}_{l} is the paper's X^{n-2-l, l-d+1})."""
    from segmentation_models_pytorch.decoders.unetplusplus.decoder import UnetPlusPlusDecoder

    widths = [16, 8, 8, 4, 4]
    ref = UnetPlusPlusDecoder(SMP_CHANNELS, widths, n_blocks=5).eval()
    ours = UNetPlusPlusDecoder(feature_info=INFO, decoder_channels=widths, final_block=True).eval()
    ours.load_state_dict(smp_renamed("unetplusplus", ref.state_dict()))
    feats = features(INFO)
    with torch.no_grad():
        expected = ref([torch.zeros(2, 3, 64, 64), *feats])
        assert torch.allclose(ours(feats), expected, atol=1e-5)
    assert ours.out_channels == 4 and ours.reduction == 1


def test_linknet_decoder_equals_smps_with_the_same_weights():
    from segmentation_models_pytorch.decoders.linknet.decoder import LinknetDecoder

    ref = LinknetDecoder(SMP_CHANNELS, prefinal_channels=8, n_blocks=5).eval()
    ours = LinkNetDecoder(feature_info=INFO, final_block=True, final_channels=8).eval()
    ours.load_state_dict(smp_renamed("linknet", ref.state_dict()))
    feats = features(INFO)
    with torch.no_grad():
        expected = ref([torch.zeros(2, 3, 64, 64), *feats])
        assert torch.allclose(ours(feats), expected, atol=1e-5)


@pytest.mark.parametrize(("arch", "reference"), [("unetplusplus", "UnetPlusPlus"), ("linknet", "Linknet")])
def test_decoder_parameters_equal_smps_on_resnet18(arch, reference):
    """Random init, no download. The decoders are equal; so are the encoders. The heads differ for U-Net++ only:
    smp's is a 3x3 conv, seglab's the usual 1x1 (LinkNet's is 1x1 in both); ``head_kernel=3`` is smp's."""
    theirs = getattr(smp, reference)("resnet18", encoder_weights=None, classes=2)
    ours = seglab.create_model(arch, num_classes=2, encoder="resnet18")
    assert n_params(ours.decoder) == n_params(theirs.decoder)
    assert n_params(ours.encoder) == n_params(theirs.encoder)
    assert n_params(ours.head) == n_params(theirs.segmentation_head) - (9 - 1) * 16 * 2 * (
        arch == "unetplusplus"
    )
    smps_head = (
        seglab.create_model(arch, num_classes=2, encoder="resnet18", head_kernel=3)
        if arch == "unetplusplus"
        else ours
    )
    assert n_params(smps_head) == n_params(theirs)


def test_unetpp_nodes_are_the_papers_grid_with_dense_inputs():
    """n features give the nodes X^{i,j}, i + j <= n - 1, j >= 1; X^{i,j} reads the upsampled X^{i+1,j-1} and
    the j earlier nodes of level i (inner ones as wide as the level's feature); the diagonal has the
    decoder's widths."""
    decoder = UNetPlusPlusDecoder(feature_info=INFO, decoder_channels=[16, 8, 8, 4])
    n = len(INFO)
    assert set(decoder.nodes) == {f"x_{i}_{j}" for j in range(1, n) for i in range(n - j)}
    assert decoder.final is None and decoder.out_channels == 4 and decoder.reduction == 2
    first_conv = {k: node.conv[0][0] for k, node in decoder.nodes.items()}
    assert first_conv["x_3_1"].in_channels == 24 + 16 and first_conv["x_3_1"].out_channels == 16
    assert first_conv["x_2_1"].in_channels == 16 + 12 and first_conv["x_2_1"].out_channels == 12
    assert first_conv["x_0_3"].in_channels == 8 + 3 * 8 and first_conv["x_0_3"].out_channels == 8
    assert first_conv["x_0_4"].in_channels == 8 + 4 * 8 and first_conv["x_0_4"].out_channels == 4


def test_linknet_adds_skips_instead_of_concatenating():
    """Blocks 1x1 (in/4) -> 4x4 stride-2 transposed conv -> 1x1; with every block giving zeros the decoder
    returns the shallowest skip itself: the skips are added."""
    decoder = LinkNetDecoder(feature_info=INFO).eval()
    block = decoder.blocks[0]
    assert block.reduce[0].kernel_size == (1, 1) and block.reduce[0].out_channels == 24 // 4
    up = block.up.conv
    assert (up.kernel_size, up.stride, up.padding) == ((4, 4), (2, 2), (1, 1))
    assert block.expand[0].kernel_size == (1, 1) and block.expand[0].out_channels == 16
    for b in decoder.blocks:
        torch.nn.init.zeros_(b.expand[1].weight)
        torch.nn.init.zeros_(b.expand[1].bias)
    feats = features(INFO)
    with torch.no_grad():
        assert torch.equal(decoder(feats), feats[0])


@pytest.mark.parametrize(("arch", "native"), [("unetplusplus", "unet"), ("linknet", "mobilenet")])
def test_encoder_none_is_the_native_encoder(arch, native):
    from seglab.models.archs import NATIVE_DEFAULT
    from seglab.models.encoders import NATIVE_ENCODERS

    assert NATIVE_DEFAULT[arch] == native
    model = seglab.create_model(arch, num_classes=2, encoder=None, base_channels=2, dropout=0.1)
    assert type(model.encoder) is NATIVE_ENCODERS[native]
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in model.modules()) == 1  # before the head: MC dropout
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 35)).shape == (1, 2, 33, 35)


@pytest.mark.parametrize(
    ("arch", "params", "match"),
    [
        ("unetplusplus", {"depth": 3, "base_channels": 2, "upsample": "transposed"}, "without learning"),
        ("unetplusplus", {"depth": 3, "base_channels": 2, "final_block": True}, "final_block"),
        ("unetplusplus", {"encoder": "test_resnet", "decoder_channels": [8, 8]}, "5 entries"),
        ("linknet", {"encoder": "unet", "depth": 3, "base_channels": 2, "final_block": True}, "final_block"),
    ],
)
def test_invalid_arguments_say_how_to_fix_them(arch, params, match):
    with pytest.raises(ConfigError, match=match):
        seglab.create_model(arch, num_classes=2, **params)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "params"),
    [
        ("unetplusplus", {"encoder": "mobilenet", "depth": 3, "base_channels": 2}),
        ("linknet", {"encoder": "mobilenet", "depth": 3, "base_channels": 2, "final_channels": 4}),
    ],
)
def test_export_runs_at_any_size(arch, params, tmp_path):
    """A dynamic ONNX graph that ONNX Runtime runs at 33 x 47 with PyTorch's logits, and TorchScript. Native
    encoders at stride 8 (the smallest graphs with the final block: the dynamo export takes seconds per node)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from seglab.engine.export import export_model

    torch.manual_seed(0)
    model = seglab.create_model(arch, num_classes=2, **params).eval()
    result = export_model(model, tmp_path / "m.onnx", "onnx")
    assert result.dynamic and result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    x = torch.randn(1, 3, 33, 47)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-4)
    scripted = export_model(model, tmp_path / "m.pt", "torchscript")
    assert scripted.max_abs_diff is not None and scripted.max_abs_diff < 1e-4
