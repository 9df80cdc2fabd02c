"""Checkerboard score: known patterns, the Fourier definition, and transposed vs resize-convolution."""

import pytest
import torch

from seglab.layers import ResizeConvUp, TransposedConvUp, checkerboard_score


def test_known_patterns():
    h = torch.arange(8)[:, None]
    w = torch.arange(10)[None, :]
    checker = 3.0 + 0.5 * (-1.0) ** (h + w)
    stripes = 1.0 + (-1.0) ** h * torch.ones(8, 10)
    assert checkerboard_score(checker, border=0) == pytest.approx(1.0)
    assert checkerboard_score(stripes, border=0) == pytest.approx(1.0)
    assert checkerboard_score(torch.full((8, 10), 7.0), border=0) == 0
    ramp = (h + w).double()  # smooth: period-2 share is small but not zero
    assert 0 < checkerboard_score(ramp, border=0) < 0.1
    assert checkerboard_score(ramp + checker, border=0) > checkerboard_score(ramp, border=0)


def test_equals_nyquist_energy_share_of_the_dft():
    torch.manual_seed(0)
    y = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    energy = torch.fft.fft2(y).abs().pow(2)
    nyquist = energy[..., 3, 0] + energy[..., 0, 4] + energy[..., 3, 4]
    ac = energy.sum(dim=(-2, -1)) - energy[..., 0, 0]
    torch.testing.assert_close(checkerboard_score(y, border=0, reduction="none"), nyquist / ac)
    assert checkerboard_score(y, border=0).shape == ()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transposed_conv_makes_a_checkerboard_resize_conv_does_not(seed):
    torch.manual_seed(seed)
    x = torch.ones(1, 4, 8, 8)
    with torch.no_grad():
        transposed = checkerboard_score(TransposedConvUp(4, 4)(x))
        nearest = checkerboard_score(ResizeConvUp(4, 4)(x))
        bilinear = checkerboard_score(ResizeConvUp(4, 4, interp="bilinear")(x))
    assert transposed > 0.9
    assert nearest < 1e-6 and bilinear < 1e-6


def test_arguments():
    with pytest.raises(ValueError, match="reduction"):
        checkerboard_score(torch.zeros(4, 4), reduction="sum")
    with pytest.raises(ValueError, match="2x2"):
        checkerboard_score(torch.zeros(3, 3))
