import copy

import pytest
import torch
import torch.nn.functional as F

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


# --------------------------------------------------------- the decoder's fast paths give the same numbers


def _graph_ops(t):
    """Names of the autograd nodes that produced ``t``."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_patch_conv_transpose2d_is_the_transposed_conv(k, channels_last, bias):
    from seglab.layers import patch_conv_transpose2d

    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 6, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64) if bias else None
    y = patch_conv_transpose2d(x, w, b)
    torch.testing.assert_close(y, F.conv_transpose2d(x, w, b, stride=k))
    assert y.shape == (2, 6, 5 * k, 4 * k)
    assert y.is_contiguous(memory_format=torch.channels_last)  # so the decoder stays channels_last


@pytest.mark.parametrize("out_size", [None, (10, 8), (11, 9)])
def test_up_conv_gives_the_same_values_and_gradients_in_both_memory_formats(out_size):
    from seglab.layers import TransposedConvUp

    torch.manual_seed(0)
    up = TransposedConvUp(3, 4, scale=2, kernel_size=2).double()
    up_cl = copy.deepcopy(up).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    x_cl = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    x.requires_grad_()
    y, y_cl = up(x, output_size=out_size), up_cl(x_cl, output_size=out_size)
    if out_size != (11, 9):  # an odd size is a crop of the 12 x 10 output
        assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y)
    seed = torch.randn(y.shape, dtype=torch.float64)
    (y * seed).sum().backward()
    (y_cl * seed).sum().backward()
    torch.testing.assert_close(x_cl.grad, x.grad)
    torch.testing.assert_close(up_cl.conv.weight.grad, up.conv.weight.grad)
    torch.testing.assert_close(up_cl.conv.bias.grad, up.conv.bias.grad)


def test_up_conv_to_exactly_twice_the_size_neither_pads_nor_crops():
    """F.pad by zero rows still copies the input (and its gradient); at exactly 2x nothing is padded."""
    from seglab.layers import TransposedConvUp

    up = TransposedConvUp(3, 4, scale=2, kernel_size=2)
    x = torch.randn(1, 3, 5, 4, requires_grad=True)
    assert "ConstantPadNdBackward0" not in _graph_ops(up(x, output_size=(10, 8)))
    assert "ConstantPadNdBackward0" in _graph_ops(up(x, output_size=(11, 9)))  # odd sizes do pad


def test_unet_trains_the_same_in_channels_last():
    """Logits and every parameter's gradient agree between NCHW and channels_last (model and input), and the
    decoder keeps channels_last to its output."""
    torch.manual_seed(0)
    model = seglab.create_model("unet", num_classes=3, depth=3, base_channels=4).double()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 21, 17, dtype=torch.float64)
    out = model(x)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = model_cl(x_cl)
    torch.testing.assert_close(out_cl, out)
    seed = torch.randn(out.shape, dtype=torch.float64)
    (out * seed).sum().backward()
    (out_cl * seed).sum().backward()
    for (name, p), p_cl in zip(model.named_parameters(), model_cl.parameters()):
        torch.testing.assert_close(p_cl.grad, p.grad, msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad():
        padded = F.pad(x_cl, (0, 3, 0, 3), mode="reflect")
        assert model_cl.decoder(model_cl.encoder(padded)).is_contiguous(memory_format=torch.channels_last)
