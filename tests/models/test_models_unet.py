import pytest
import torch

import seglab
from seglab.errors import ConfigError


def test_registry_lists_unet():
    assert "unet" in seglab.list_models()
    with pytest.raises(ConfigError, match="unknown model"):
        seglab.create_model("nope", num_classes=2)


@pytest.mark.parametrize("upsample", ["transposed", "bilinear", "nearest"])
@pytest.mark.parametrize("size", [(32, 32), (97, 131), (7, 5)])
def test_any_input_size_gives_logits_at_input_resolution(upsample, size):
    model = seglab.create_model(
        "unet", num_classes=3, in_channels=2, depth=3, base_channels=4, upsample=upsample
    )
    x = torch.randn(2, 2, *size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, *size)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    first = model.encoder.blocks[0][0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_padding_does_not_leak_into_the_crop():
    """A size that is already a multiple of the stride is not padded: logits equal the unpadded network's."""
    torch.manual_seed(0)
    model = seglab.create_model("unet", num_classes=2, depth=3, base_channels=4).eval()
    x = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        direct = model.head(model.decoder(model.encoder(x)))
        assert torch.equal(model(x), direct)


def test_feature_info_matches_outputs():
    model = seglab.create_model("unet", num_classes=2, depth=4, base_channels=8)
    feats = model.encoder(torch.randn(1, 3, 32, 32))
    assert [(f.shape[1], 32 // f.shape[-1]) for f in feats] == [
        (i.channels, i.reduction) for i in model.encoder.feature_info
    ]
    assert model.encoder.output_stride == 8
