"""Down- and upsampling against the course's worked examples and PyTorch's reference ops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import (
    DOWNSAMPLERS,
    UPSAMPLERS,
    BedOfNailsUp,
    BilinearUp,
    MaxPoolDown,
    MaxUnpoolUp,
    NearestUp,
    ResizeConvUp,
    StridedConvDown,
    TransposedConvUp,
    Upsampler,
    conv_output_size,
    make_downsample,
    make_upsample,
    transposed_output_size,
)

X22 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])


def test_conv_output_size_is_the_shape_conv2d_produces():
    assert conv_output_size(4, 3, stride=2, padding=1) == 2  # the course's 4x4 -> 2x2
    for size in range(3, 10):
        for k, s, p, d in [
            (1, 1, 0, 1),
            (3, 2, 1, 1),
            (5, 3, 2, 1),
            (3, 1, 2, 2),
            (2, 2, 0, 1),
            (3, 2, 0, 3),
        ]:
            if d * (k - 1) + 1 > size + 2 * p:
                continue
            out = F.conv2d(
                torch.zeros(1, 1, size, size), torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d
            )
            assert out.shape[-1] == conv_output_size(size, k, s, p, d)
            op = s - 1 if s > 1 else 0
            zeros = torch.zeros(1, 1, size, size)
            up = F.conv_transpose2d(zeros, torch.zeros(1, 1, k, k), None, s, p, op, dilation=d)
            assert up.shape[-1] == transposed_output_size(size, k, s, p, op, d)


def test_max_and_average_pooling_known_answers():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, idx = MaxPoolDown(1, return_indices=True)(x)
    assert y.flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert idx.flatten().tolist() == [5, 7, 13, 15]  # flat positions in the 4x4 input
    assert make_downsample("avg_pool", 1)(x).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert MaxPoolDown(3)(torch.randn(2, 3, 5, 7)).shape == (2, 3, 2, 3)  # floor on odd sizes


def test_strided_conv_takes_4x4_to_2x2_and_is_a_plain_conv():
    down = StridedConvDown(2, 3)
    x = torch.randn(1, 2, 4, 4)
    conv = down[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))
    y = down(x)
    assert y.shape == (1, 3, 2, 2)
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1))
    assert down(torch.randn(1, 2, 5, 5)).shape[-1] == 3  # ceil(5 / 2)


def test_bed_of_nails_known_answer():
    y = BedOfNailsUp(1)(X22)
    assert y[0, 0].tolist() == [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]]


def test_bed_of_nails_any_scale_and_output_size():
    x = torch.randn(2, 3, 2, 4)
    y = BedOfNailsUp(3, scale=3)(x)
    expected = torch.zeros(2, 3, 6, 12)
    expected[..., ::3, ::3] = x
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(BedOfNailsUp(3, scale=3)(x, output_size=(5, 10)), expected[..., :5, :10])
    # Past scale * H the rule goes on: the extra rows and columns are empty cells.
    longer = BedOfNailsUp(3, scale=3)(x, output_size=(8, 14))
    torch.testing.assert_close(longer, F.pad(expected, (0, 2, 0, 2)), rtol=0, atol=0)
    with pytest.raises(ValueError):
        BedOfNailsUp(3, scale=3)(x, output_size=(3, 10))
    with pytest.raises(ValueError):
        BedOfNailsUp(3, scale=3)(x, output_size=(9, 10))


def test_max_unpool_puts_each_max_back_where_it_came_from():
    x = torch.tensor(
        [[[[1.0, 9.0, 2.0, 0.0], [3.0, 4.0, 8.0, 5.0], [7.0, 0.0, 1.0, 1.0], [2.0, 6.0, 3.0, 4.0]]]]
    )
    y, idx = MaxPoolDown(1, return_indices=True)(x)
    up = MaxUnpoolUp(1)(y, indices=idx)
    expected = torch.where(
        torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool), x, 0.0
    )
    assert up[0, 0].tolist() == expected[0, 0].tolist()


def test_max_unpool_matches_torch_on_odd_sizes():
    x = torch.randn(2, 3, 7, 9)
    y, idx = MaxPoolDown(3, return_indices=True)(x)
    ours = make_upsample("max_unpool", 3)(y, idx, output_size=x.shape[-2:])
    ref = nn.MaxUnpool2d(2)(y, idx, output_size=x.shape[-2:])
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="indices"):
        MaxUnpoolUp(3)(y)


def test_nearest_known_answer_and_any_scale():
    assert NearestUp(1)(X22)[0, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    x = torch.randn(1, 2, 3, 4)
    expected = x.repeat_interleave(3, dim=-2).repeat_interleave(3, dim=-1)
    torch.testing.assert_close(NearestUp(2, scale=3)(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_matches_interpolate_and_a_numpy_reference(align_corners):
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    up = BilinearUp(3, align_corners=align_corners)
    y = up(x)
    torch.testing.assert_close(
        y, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align_corners)
    )

    # Independent reference: separable 1-D linear interpolation at the documented sample positions.
    def positions(n_in, n_out):
        if align_corners:
            return np.arange(n_out) * (n_in - 1) / (n_out - 1)
        return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5  # np.interp clamps outside [0, n_in - 1]

    img = x[0, 0].numpy()
    rows = np.stack([np.interp(positions(5, 10), np.arange(5), r) for r in img])
    ref = np.stack([np.interp(positions(3, 6), np.arange(3), c) for c in rows.T]).T
    np.testing.assert_allclose(y[0, 0].numpy(), ref, atol=1e-12)


def test_bilinear_of_the_2x2_example():
    y = BilinearUp(1)(X22)[0, 0]
    # Row 0 samples [1, 2] at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    assert y[0].tolist() == [1.0, 1.25, 1.75, 2.0]
    corners = BilinearUp(1, align_corners=True)(X22)[0, 0]
    assert corners[0, 0] == 1 and corners[0, -1] == 2 and corners[-1, 0] == 3 and corners[-1, -1] == 4


def test_transposed_conv_takes_2x2_to_4x4():
    up = TransposedConvUp(2, 3)
    conv = up.conv
    assert (conv.kernel_size, conv.stride, conv.padding, conv.output_padding) == (
        (3, 3),
        (2, 2),
        (1, 1),
        (1, 1),
    )
    assert up(torch.randn(1, 2, 2, 2)).shape == (1, 3, 4, 4)
    assert TransposedConvUp(2, 3, kernel_size=4)(torch.randn(1, 2, 3, 5)).shape == (1, 3, 6, 10)
    unet = TransposedConvUp(2, 3, scale=4, kernel_size=4)  # U-Net's: kernel = stride, no overlap, no padding
    assert (unet.conv.padding, unet.conv.output_padding) == ((0, 0), (0, 0))
    assert unet(torch.randn(1, 2, 3, 5)).shape == (1, 3, 12, 20)
    fcn = TransposedConvUp(2, 3, scale=8, kernel_size=16)  # FCN's: kernel 2s, pad s/2
    assert (fcn.conv.padding, fcn.conv.output_padding) == ((4, 4), (0, 0))
    assert fcn(torch.randn(1, 2, 2, 3)).shape == (1, 3, 16, 24)


def test_transposed_conv_output_size():
    up = TransposedConvUp(2, 3)
    x = torch.randn(1, 2, 3, 4)
    # Within ConvTranspose2d's range output_size picks the output_padding, as in PyTorch.
    torch.testing.assert_close(up(x, output_size=(5, 8)), up.conv(x, output_size=[5, 8]))
    # Beyond it (a max-pooled odd size: 7 // 2 = 3) the rule goes on: row 6 is out of every tap's reach.
    y = up(x, output_size=(7, 9))
    assert y.shape == (1, 3, 7, 9)
    torch.testing.assert_close(y[..., :6, :8], up(x))
    torch.testing.assert_close(y[0, :, 6, :], up.conv.bias[:, None].expand(3, 9))


def test_transposed_conv_is_the_adjoint_of_the_strided_conv():
    torch.manual_seed(0)
    down = StridedConvDown(2, 3)  # weight (3, 2, 3, 3): R^{2x4x4} -> R^{3x2x2}
    up = TransposedConvUp(3, 2, bias=False)  # R^{3x2x2} -> R^{2x4x4}, weight (3, 2, 3, 3)
    with torch.no_grad():
        up.conv.weight.copy_(down[0].weight)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    up, w = up.double(), down[0].weight.detach().double()
    linear = F.conv2d(x, w, stride=2, padding=1)  # the strided conv without its bias
    (grad,) = torch.autograd.grad(linear, x, grad_outputs=g)
    torch.testing.assert_close(up(g), grad)
    # <S x, g> = <x, S^T g>
    torch.testing.assert_close((linear * g).sum(), (x * up(g)).sum())


def test_transposed_conv_is_zero_insertion_then_flipped_kernel_conv():
    torch.manual_seed(1)
    up = TransposedConvUp(2, 3)
    x = torch.randn(1, 2, 2, 3)
    w, b = up.conv.weight, up.conv.bias  # (in=2, out=3, 3, 3)
    zeros = torch.zeros(1, 2, 3, 5)  # stride - 1 = 1 zero between neighbours: 2 -> 3, 3 -> 5
    zeros[..., ::2, ::2] = x
    # pad k - 1 - p = 1 before and k - 1 - p + output_padding = 2 after
    padded = F.pad(zeros, (1, 2, 1, 2))
    ref = F.conv2d(padded, w.transpose(0, 1).flip(-2, -1), b)
    torch.testing.assert_close(up(x), ref)


def test_resize_conv_is_interpolate_then_conv():
    x = torch.randn(2, 3, 4, 5)
    for interp in ("nearest", "bilinear"):
        up = ResizeConvUp(3, 4, interp=interp)
        kwargs = {"align_corners": False} if interp == "bilinear" else {}
        ref = F.conv2d(
            F.interpolate(x, scale_factor=2, mode=interp, **kwargs), up.conv.weight, up.conv.bias, padding=1
        )
        torch.testing.assert_close(up(x), ref)
    with pytest.raises(ConfigError, match="interp"):
        ResizeConvUp(3, 4, interp="bicubic")


def test_upsample_names_build_the_family_with_one_signature():
    assert set(UPSAMPLERS) == {
        "bed_of_nails",
        "max_unpool",
        "nearest",
        "bilinear",
        "transposed",
        "resize_conv",
    }
    pool = MaxPoolDown(4, return_indices=True)
    for mode, cls in UPSAMPLERS.items():
        up = make_upsample(mode, 4, 4, scale=2)
        assert isinstance(up, cls) and isinstance(up, Upsampler)
        for x in (torch.randn(2, 4, 4, 6), torch.randn(2, 4, 5, 7)):  # odd: output_size undoes the floor
            pooled, idx = pool(x)
            assert up(pooled, indices=idx, output_size=x.shape).shape == x.shape
        if mode != "max_unpool":  # its indices point into the 5x7 map, which 4x6 cannot hold
            assert up(pooled).shape == (2, 4, 4, 6)
        assert up.trainable == any(p.requires_grad for p in up.parameters())


def test_only_learned_upsamplers_change_channels():
    for mode, cls in UPSAMPLERS.items():
        if cls.trainable:
            assert make_upsample(mode, 4, 6)(torch.randn(1, 4, 3, 3)).shape == (1, 6, 6, 6)
        else:
            with pytest.raises(ConfigError, match="resize_conv"):
                make_upsample(mode, 4, 6)


def test_unknown_names_and_options_are_config_errors():
    with pytest.raises(
        ConfigError, match="bed_of_nails, max_unpool, nearest, bilinear, transposed, resize_conv"
    ):
        make_upsample("pixel_shuffle", 4, 4)
    with pytest.raises(ConfigError, match="kernel_size"):
        make_upsample("nearest", 4, 4, kernel_size=3)
    with pytest.raises(ConfigError, match="max_pool, avg_pool, strided_conv"):
        make_downsample("blur_pool", 4)
    with pytest.raises(ConfigError, match="scale"):
        make_upsample("nearest", 4, 4, scale=0)
    with pytest.raises(ConfigError, match="kernel_size"):
        TransposedConvUp(4, 4, scale=1, kernel_size=2)


def test_downsample_names():
    x = torch.randn(1, 4, 6, 6)
    for mode in DOWNSAMPLERS:
        assert make_downsample(mode, 4, 4)(x).shape == (1, 4, 3, 3)
    assert make_downsample("strided_conv", 4, 8, norm="bn", act="relu")(x).shape == (1, 8, 3, 3)
