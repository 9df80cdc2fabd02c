"""create_model's errors for Python users (the trainer's too), and the typed, keyword-only building blocks."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import seglab
from seglab.errors import ConfigError, SeglabError
from seglab.models import archs, decoders
from seglab.models.encoders import EncoderSpec, VGGEncoder
from seglab.models.heads import FCNHead, LRASPPHead


def test_an_unknown_argument_is_named_with_the_accepted_ones():
    with pytest.raises(ConfigError, match="width is not an argument of unet; accepted: ") as e:
        seglab.create_model("unet", num_classes=2, width=4, depth=3)
    accepted = str(e.value).split("accepted: ")[1].split(", ")
    assert accepted == sorted(set(inspect.signature(archs.unet).parameters) - {"num_classes", "in_channels"})
    assert "decoder_channels" in accepted and "width" not in accepted
    with pytest.raises(ConfigError, match="base_channels is not an argument of plain_fcn"):
        seglab.create_model("plain_fcn", num_classes=2, base_channels=4)


def test_unknown_architectures_and_bad_values_are_config_errors():
    with pytest.raises(
        ConfigError, match="unknown model 'unet3d'; choose one of: deeplabv3, deeplabv3plus, fcn"
    ):
        seglab.create_model("unet3d", num_classes=2)
    with pytest.raises(ConfigError, match="num_classes must be >= 1, got 0"):
        seglab.create_model("unet", num_classes=0)
    # A builder's ValueError / TypeError becomes a SeglabError that names the architecture.
    with pytest.raises(ConfigError, match="cannot build model 'plain_fcn': invalid literal for int"):
        seglab.create_model("plain_fcn", num_classes=2, widths=[4, "wide"])
    with pytest.raises(SeglabError, match="cannot build model 'unet': "):
        seglab.create_model("unet", num_classes=2, depth="3", base_channels=2)


def test_builders_turn_their_encoder_arguments_into_one_spec(monkeypatch):
    """Every encoder-based builder hands build_encoder one EncoderSpec made from its own arguments."""
    seen = []

    def spy(spec):  # records the spec, builds a small VGG whatever it names
        seen.append(spec)
        return VGGEncoder(spec.in_channels, depth=spec.depth or 5, base_channels=2)

    monkeypatch.setattr(archs, "build_encoder", spy)
    seglab.create_model(
        "fcn", num_classes=2, in_channels=1, encoder="vgg", depth=4, base_channels=2, variant="32s"
    )
    seglab.create_model("segnet", num_classes=2, encoder=None, base_channels=2, dropout=0.3)
    seglab.create_model("segnet", num_classes=2, encoder="test_resnet", base_channels=2, upsample="nearest")
    seen = [s for i, s in enumerate(seen) if s not in seen[:i]]  # create_model also counts on the meta device
    assert seen == [
        EncoderSpec(name="vgg", in_channels=1, depth=4, base_channels=2),
        EncoderSpec(name="vgg", base_channels=2, options={"dropout": 0.3}),  # VGG takes SegNet's dropout
        EncoderSpec(name="test_resnet", base_channels=2),  # a timm encoder does not
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].name = "resnet50"


@pytest.mark.parametrize(
    "cls", [*(getattr(decoders, name) for name in decoders.__all__), FCNHead, LRASPPHead]
)
def test_decoders_and_skip_heads_take_keyword_arguments_only(cls):
    params = list(inspect.signature(cls).parameters.values())
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


def test_fcn_and_lraspp_heads_hold_the_classifiers():
    """The decoders of FCN and LR-ASPP output features; the class-score convs are the head's."""
    fcn = seglab.create_model("fcn", num_classes=3, encoder="vgg", base_channels=2)
    lraspp = seglab.create_model(
        "lraspp", num_classes=3, encoder="mobilenet", base_channels=4, inter_channels=8
    )
    for model in (fcn, lraspp):
        scorers = [
            n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 3
        ]
        assert scorers and all(n.startswith("head.") for n in scorers)
    assert sorted(k for k in lraspp.state_dict() if k.startswith("head.")) == [
        "head.high_classifier.bias",
        "head.high_classifier.weight",
        "head.low_classifier.bias",
        "head.low_classifier.weight",
    ]
