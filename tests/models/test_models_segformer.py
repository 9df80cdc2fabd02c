"""SegFormer (Xie et al., 2021): the native Mix Transformer encoders and the all-MLP decoder against smp's
(same parameter counts; smp's weights loaded through an explicit key map give the same features and scores),
plus what the shared zoo tests do not see: stochastic depth, the depth option, odd sizes, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seglab
from seglab.errors import ConfigError
from seglab.models.decoders import SegFormerDecoder
from seglab.models.encoders import NATIVE_ENCODERS, FeatureInfo
from seglab.models.encoders.mit import DropPath, MiTEncoder, mit_state_from_smp
from seglab.models.from_smp import SmpCheckpoint, smp_decoder_state

MIT = ("mit_b0", "mit_b1", "mit_b2")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def smp_renamed(decoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp's SegformerDecoder state in SegFormerDecoder's names, by the smp checkpoint loader's table
    (from_smp.RECIPES): its MLPs are deepest first and nn.Linear (this decoder's are shallowest first and 1x1
    convs); its fuse Conv2dReLU is conv, BN, ReLU as ConvNormAct."""
    ckpt = SmpCheckpoint(Path("smp"), {f"decoder.{k}": v for k, v in decoder_state.items()}, {})
    return {k.removeprefix("decoder."): v for k, v in smp_decoder_state("segformer", ckpt).items()}


@pytest.mark.parametrize("name", MIT)
def test_mit_has_smps_parameter_count(name):
    smp_encoders = pytest.importorskip("segmentation_models_pytorch.encoders")
    with torch.device("meta"):
        ours = NATIVE_ENCODERS[name]()
    theirs = smp_encoders.get_encoder(name, weights=None)  # smp's cannot be built on the meta device
    assert n_params(ours) == n_params(theirs)
    assert [f.channels for f in ours.feature_info] == theirs.out_channels[2:]
    assert [f.reduction for f in ours.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["mit_b0", "mit_b2"])
def test_smp_mit_weights_give_smps_features(name):
    """The known answer: smp's MiT (the reference NVIDIA code) with its weights renamed by SMP_MIT_KEYS gives
    the same four feature maps (float64, so only the arithmetic's order differs)."""
    smp_encoders = pytest.importorskip("segmentation_models_pytorch.encoders")
    torch.manual_seed(0)
    theirs = smp_encoders.get_encoder(name, weights=None).double().eval()
    ours = NATIVE_ENCODERS[name]().double().eval()
    ours.load_state_dict(mit_state_from_smp(theirs.state_dict()))
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected, got = theirs(x)[2:], ours(x)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_smp_mit_key_map_refuses_foreign_keys():
    with pytest.raises(ConfigError, match="not a key of an smp MiT encoder"):
        mit_state_from_smp({"layer1.0.conv1.weight": torch.zeros(1)})


def test_segformer_has_smps_parameter_count_and_scores():
    """smp's Segformer("mit_b0") (decoder 256 channels) loaded into seglab's: equal parameter counts, and equal
    class scores at 1/4 resolution (smp then upsamples with align_corners=True, seglab by default with False;
    ``align_corners=True`` is smp's: test_models_smp_unetpp_linknet_fpn_segformer.py compares the logits)."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    theirs = smp.Segformer("mit_b0", encoder_weights=None, classes=3).double().eval()
    ours = seglab.create_model("segformer", num_classes=3).double().eval()
    assert n_params(ours) == n_params(theirs)
    state = theirs.state_dict()
    ours.encoder.load_state_dict(
        mit_state_from_smp({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    )
    decoder = {k[8:]: v for k, v in state.items() if k.startswith("decoder.")}
    ours.decoder.load_state_dict(smp_renamed(decoder))
    ours.head[1].load_state_dict(theirs.segmentation_head[0].state_dict())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = theirs.segmentation_head[0](theirs.decoder(theirs.encoder(x)))
        features = ours.encoder(x)
        got = ours.head(ours.decoder(features), features)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_decoder_is_smps_on_the_same_features():
    """SegFormerDecoder with smp's weights equals smp's SegformerDecoder on the same four features."""
    decoder_module = pytest.importorskip("segmentation_models_pytorch.decoders.segformer.decoder")
    info = [FeatureInfo(c, r) for c, r in [(8, 4), (16, 8), (24, 16), (32, 32)]]
    torch.manual_seed(0)
    theirs = decoder_module.SegformerDecoder([3, 0, 8, 16, 24, 32], segmentation_channels=16).eval()
    ours = SegFormerDecoder(feature_info=info, channels=16).eval()
    assert n_params(ours) == n_params(theirs)
    ours.load_state_dict(smp_renamed(theirs.state_dict()))
    feats = [torch.randn(2, f.channels, 64 // f.reduction, 96 // f.reduction) for f in info]
    x = torch.empty(2, 3, 64, 96)
    with torch.no_grad():
        expected = theirs([x, x[:, :0, ::2, ::2], *feats])
        got = ours(feats)
    assert got.shape == (2, 16, 16, 24)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_decoder_fuses_the_stages_from_quarter_resolution_on():
    """On a timm encoder with a stride-2 feature, the paper's four stages (1/4 .. 1/32) are fused at 1/4."""
    info = [FeatureInfo(c, r) for c, r in [(4, 2), (8, 4), (16, 8), (24, 16), (32, 32)]]
    decoder = SegFormerDecoder(feature_info=info, channels=8)
    assert decoder.indices == [1, 2, 3, 4] and decoder.reduction == 4
    assert decoder.fuse[0].in_channels == 4 * 8
    with pytest.raises(ConfigError, match="min_reduction"):
        SegFormerDecoder(feature_info=info[:1], channels=8)


def test_stochastic_depth_rises_linearly_and_is_off_in_eval():
    encoder = MiTEncoder(base_channels=4, drop_path=0.35)  # B0: 8 blocks, rates 0, 0.05, ..., 0.35
    rates = [
        b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for s in encoder.stages for b in s.blocks
    ]
    assert rates == pytest.approx([0.05 * i for i in range(8)])
    x = torch.randn(4, 3, 32, 32)
    encoder.train()
    torch.manual_seed(1)
    first = encoder(x)[-1]
    torch.manual_seed(2)
    assert not torch.equal(first, encoder(x)[-1])
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(encoder(x)[-1], encoder(x)[-1])
    assert not any(isinstance(m, DropPath) for m in MiTEncoder(base_channels=4, drop_path=0.0).modules())


def test_depth_base_channels_and_odd_sizes():
    encoder = MiTEncoder(in_channels=5, depth=2, base_channels=4).eval()
    assert encoder.feature_info == [FeatureInfo(4, 4), FeatureInfo(8, 8)]
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in encoder(torch.randn(1, 5, 37, 45))]
    assert shapes == [(1, 4, 10, 12), (1, 8, 5, 6)]  # ceil(H / r): the patch embeddings pad
    model = seglab.create_model("segformer", num_classes=2, encoder="mit_b1", base_channels=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 2, 33, 47)
    with pytest.raises(ConfigError, match="depth must be 1..4"):
        MiTEncoder(depth=5)
    with pytest.raises(ConfigError, match="output stride 32"):
        seglab.create_model("segformer", num_classes=2, base_channels=4, output_stride=16)


def test_dropout_before_the_head_is_there_for_mc_dropout():
    model = seglab.create_model("segformer", num_classes=2, base_channels=4)
    assert isinstance(model.head[0], torch.nn.Dropout2d) and model.head[0].p == 0.1


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])
def test_segformer_exports_with_dynamic_sizes(tmp_path, fmt):
    """ONNX with dynamic sizes runs at 33 x 47 in ONNX Runtime (its export takes ~30 s: torch.export reasons
    symbolically about the 16 blocks' shapes)."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    from seglab.engine.export import export_model, load_exported

    torch.manual_seed(0)
    model = seglab.create_model("segformer", num_classes=2, base_channels=4, channels=8).eval()
    result = export_model(model, tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'pt'}", fmt)
    assert result.max_abs_diff < 1e-4
    if fmt == "onnx":
        assert result.dynamic
        x = torch.randn(1, 3, 33, 47)
        with torch.no_grad():
            torch.testing.assert_close(load_exported(result.path)(x), model(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bands", [3, 1])
def test_smp_mit_weights_load_as_a_weights_file(tmp_path, bands):
    """smp's MiT weights, renamed and saved, are a ``weights`` file of the native encoder (a 1-band model gets the
    RGB patch-embedding kernels summed, as every native encoder)."""
    smp_encoders = pytest.importorskip("segmentation_models_pytorch.encoders")
    theirs = smp_encoders.get_encoder("mit_b0", weights=None)
    state = mit_state_from_smp(theirs.state_dict())
    torch.save(state, tmp_path / "mit_b0.pt")
    model = seglab.create_model(
        "segformer", num_classes=2, in_channels=bands, weights=str(tmp_path / "mit_b0.pt")
    )
    loaded = model.encoder.state_dict()
    proj = "stages.0.embed.proj.weight"
    expected = state[proj] if bands == 3 else state[proj].sum(1, keepdim=True)
    torch.testing.assert_close(loaded[proj], expected)
    assert torch.equal(loaded["stages.3.blocks.1.attn.kv.weight"], state["stages.3.blocks.1.attn.kv.weight"])
