"""Down- and upsampling: every method the course covers, behind one signature so models pick them by name.

Downsamplers divide H and W by ``scale``; upsamplers multiply them by ``scale``. Every one is built as
``cls(in_channels, out_channels=None, scale=2, **options)`` (``out_channels=None`` keeps the channel count),
and every upsampler is called as ``up(x, indices=None, output_size=None)``, so a U-Net or SegNet decoder can
take the mode from its config: ``make_upsample("transposed", 64, 32)``.

Non-learned modes (pooling, bed of nails, max unpooling, nearest, bilinear) never change the channel count:
asking them for ``out_channels != in_channels`` raises ConfigError instead of hiding a learned 1x1 projection
in a mode that says it is not trainable. Use "resize_conv" (interpolate, then convolve) to change channels.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.errors import ConfigError
from seglab.layers.conv import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg


def conv_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a convolution or pooling along one axis: floor((in + 2p - d(k-1) - 1) / s) + 1.

    With d = 1 this is the course's floor((in + 2p - k) / s) + 1: 3x3, stride 2, pad 1 takes 4 -> 2.
    """
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def transposed_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, output_padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a transposed convolution: (in - 1) s - 2p + d(k-1) + output_padding + 1.

    It inverts :func:`conv_output_size`; ``output_padding`` picks among the input sizes that the floor merged.
    """
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def _check_scale(scale: int) -> int:
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")
    return scale


def _same_channels(kind: str, in_channels: int, out_channels: int | None) -> int:
    out_channels = in_channels if out_channels is None else out_channels
    if out_channels != in_channels:
        raise ConfigError(
            f"{kind} is not trainable and keeps the channel count ({in_channels}), but out_channels="
            f"{out_channels} was asked for; use 'resize_conv' or 'transposed' (learned) to change channels"
        )
    return out_channels


# ---------------------------------------------------------------------------------------------- downsampling


class MaxPoolDown(nn.Module):
    """Max pooling with kernel = stride = ``scale``. Not trainable.

    Shape: (N, C, H, W) -> (N, C, floor(H / scale), floor(W / scale)).
    With ``return_indices=True`` the forward returns ``(y, indices)``: where each max came from, which
    :class:`MaxUnpoolUp` needs to put the values back (SegNet).
    """

    trainable: ClassVar[bool] = False

    def __init__(
        self, in_channels: int, out_channels: int | None = None, scale: int = 2, return_indices: bool = False
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = _same_channels("max_pool", in_channels, out_channels)
        self.scale = _check_scale(scale)
        self.return_indices = return_indices

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return F.max_pool2d(x, self.scale, self.scale, return_indices=self.return_indices)


class AvgPoolDown(nn.Module):
    """Average pooling with kernel = stride = ``scale``. Not trainable.

    Shape: (N, C, H, W) -> (N, C, floor(H / scale), floor(W / scale)).
    """

    trainable: ClassVar[bool] = False

    def __init__(self, in_channels: int, out_channels: int | None = None, scale: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = _same_channels("avg_pool", in_channels, out_channels)
        self.scale = _check_scale(scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.scale, self.scale)


class StridedConvDown(ConvNormAct):
    """Strided convolution: k x k, stride ``scale``, padding (k-1)//2, optional norm and act. Trainable.

    Shape: H' = floor((H + 2p - k) / scale) + 1, e.g. 3x3, stride 2, pad 1: 4x4 -> 2x2 (odd H: ceil(H/2)).
    Defaults to a bare conv with bias (norm="none", act="none"), the course's layer and the exact adjoint of
    :class:`TransposedConvUp`; pass norm="bn", act="relu" for the usual block.
    """

    trainable: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scale: int = 2,
        kernel_size: int = 3,
        norm: NormArg = "none",
        act: ActArg = "none",
    ) -> None:
        out_channels = in_channels if out_channels is None else out_channels
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=_check_scale(scale),
            padding=(kernel_size - 1) // 2,
            norm=norm,
            act=act,
        )
        self.scale = scale


# ------------------------------------------------------------------------------------------------ upsampling


def patch_conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=k)`` for a k x k kernel (kernel = stride, no padding).

    Such a transposed convolution does not overlap: every input pixel writes its own k x k output patch,
    ``y[n, o, k*i + a, k*j + b] = sum_c x[n, c, i, j] * weight[c, o, a, b] + bias[o]``. So it is one matrix
    product, (N*H*W, C_in) x (C_in, k*k*C_out), followed by a rearrangement of the patches into place.
    On a channels_last ``x`` both are plain strided views and one copy, and the output is channels_last.
    On CPU it beats oneDNN's deconvolution, above all in bf16 (U-Net's 64 -> 64 up-conv, batch 8 at 64x48,
    forward + backward on one Zen 4 core: about 40 ms as ``nn.ConvTranspose2d``, 20 ms this way; fp32 even).
    ``weight``: (C_in, C_out, k, k), as ``nn.ConvTranspose2d`` stores it (groups 1, dilation 1).
    Shape: (N, C_in, H, W) -> (N, C_out, k*H, k*W).
    """
    n, _, h, w = x.shape
    c_in, c_out, k, k2 = weight.shape
    if k != k2:
        raise ValueError(f"patch_conv_transpose2d needs a square kernel, got {k}x{k2}")
    w2 = weight.permute(0, 2, 3, 1).reshape(c_in, k * k * c_out)  # columns ordered (a, b, o)
    y = F.linear(x.permute(0, 2, 3, 1), w2.t(), None if bias is None else bias.repeat(k * k))
    # (N, H, W, a, b, C_out) -> (N, H, a, W, b, C_out) = (N, kH, kW, C_out) in memory: channels_last NCHW.
    y = y.view(n, h, w, k, k, c_out).permute(0, 1, 3, 2, 4, 5).reshape(n, k * h, k * w, c_out)
    return y.permute(0, 3, 1, 2)


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class Upsampler(nn.Module):
    """Common interface of the upsampling family: ``(in_channels, out_channels, scale)`` in, ``forward(x,
    indices=None, output_size=None)``.

    Shape: (N, in_channels, H, W) -> (N, out_channels, scale*H, scale*W), or ``output_size``: the size
    before the matching downsampling, which floor (pooling) or ceil (strided conv) divided by ``scale``.
    Interpolating modes resize to it; the others (bed of nails, max unpooling, transposed conv) take any
    size from scale*(H-1)+1 to scale*H+scale-1 by dropping trailing rows and columns or continuing the
    same rule past scale*H. ``indices`` is only used by max unpooling.
    """

    trainable: ClassVar[bool] = False

    def __init__(self, in_channels: int, out_channels: int | None = None, scale: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = (
            (in_channels if out_channels is None else out_channels)
            if self.trainable
            else _same_channels(type(self).__name__, in_channels, out_channels)
        )
        self.scale = _check_scale(scale)

    def _target(self, x: Tensor, output_size: Sequence[int] | None) -> tuple[int, int]:
        if output_size is None:
            return x.shape[-2] * self.scale, x.shape[-1] * self.scale
        # a symbolic size (torch.export's SymInt) stays symbolic, so an exported graph follows the input's size
        return tuple(v if isinstance(v, torch.SymInt) else int(v) for v in output_size[-2:])  # type: ignore[return-value]

    def _grow(self, x: Tensor, output_size: Sequence[int] | None) -> tuple[Tensor, int, int]:
        """Input with a trailing zero row/col where ``output_size`` exceeds scale*H (W), and the target size.

        Applying a non-interpolating upsampler to it and cropping to the target continues the same rule
        past scale*H: the extra rows get what the existing pixels send there, nothing more.
        """
        oh, ow = self._target(x, output_size)
        h, w, s = x.shape[-2], x.shape[-1], self.scale
        if not (s * (h - 1) < oh < s * (h + 1) and s * (w - 1) < ow < s * (w + 1)):
            raise ValueError(f"output_size {(oh, ow)} is not {(h, w)} upsampled by {s} (up to {s - 1} rows)")
        return F.pad(x, (0, int(ow > s * w), 0, int(oh > s * h))), oh, ow

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, scale={self.scale}"


class BedOfNailsUp(Upsampler):
    """Bed-of-nails unpooling: each value goes to the top-left corner of its scale x scale cell, zeros
    elsewhere. Not trainable.

    [[1, 2], [3, 4]] -> [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]].
    Shape: (N, C, H, W) -> (N, C, scale*H, scale*W), or ``output_size`` (trailing rows cut or zero).
    """

    def forward(
        self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None
    ) -> Tensor:
        x, oh, ow = self._grow(x, output_size)
        n, c, h, w = x.shape
        s = self.scale
        # (N, C, H, 1, W, 1) padded to (N, C, H, s, W, s): the value sits at offset (0, 0) of each cell.
        y = F.pad(x[:, :, :, None, :, None], (0, s - 1, 0, 0, 0, s - 1)).reshape(n, c, h * s, w * s)
        return y[:, :, :oh, :ow]


class MaxUnpoolUp(Upsampler):
    """Max unpooling (SegNet): each value goes back to where the matching max pooling found it, zeros
    elsewhere. Not trainable.

    Needs ``indices`` from :class:`MaxPoolDown` (``return_indices=True``) with the same ``scale``.
    Shape: (N, C, H, W) -> (N, C, scale*H, scale*W), or ``output_size`` (the pooled input's size).
    """

    def forward(
        self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None
    ) -> Tensor:
        if indices is None:
            raise ValueError("max unpooling needs the indices returned by the matching MaxPoolDown")
        size = None if output_size is None else [int(output_size[-2]), int(output_size[-1])]
        return F.max_unpool2d(x, indices, self.scale, self.scale, output_size=size)


class NearestUp(Upsampler):
    """Nearest-neighbour upsampling: each value is repeated over its scale x scale cell. Not trainable.

    [[1, 2], [3, 4]] -> [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]].
    Shape: (N, C, H, W) -> (N, C, scale*H, scale*W), or resized to ``output_size``.
    """

    def forward(
        self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None
    ) -> Tensor:
        if output_size is None:
            return F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return F.interpolate(x, size=self._target(x, output_size), mode="nearest")


class BilinearUp(Upsampler):
    """Bilinear interpolation, identical to ``F.interpolate(mode="bilinear")``. Not trainable.

    ``align_corners=False`` (default, as in torchvision's segmentation models) treats pixels as unit squares:
    output pixel centres map to (i + 0.5) / scale - 0.5 in the input, and the border is clamped, so
    upsampling by 2 is the same operation at every image size. ``align_corners=True`` maps the corner pixel
    centres onto each other (i * (H - 1) / (H' - 1)): the sampling grid then depends on the image size.
    Shape: (N, C, H, W) -> (N, C, scale*H, scale*W), or resized to ``output_size``.
    """

    def __init__(
        self, in_channels: int, out_channels: int | None = None, scale: int = 2, align_corners: bool = False
    ) -> None:
        super().__init__(in_channels, out_channels, scale)
        self.align_corners = align_corners

    def forward(
        self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None
    ) -> Tensor:
        size = self._target(x, output_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


class TransposedConvUp(Upsampler):
    """Transposed convolution (learned upsampling): k x k, stride ``scale``, padding ceil((k - scale) / 2)
    and the output_padding that makes the output exactly scale x the input. Trainable.

    The default 3x3, stride 2, pad 1, output_padding 1 takes 2x2 -> 4x4; U-Net's 2x2, stride 2 has no
    padding; FCN's 2s x 2s kernels get pad s/2. It is the adjoint (the gradient) of the strided convolution
    with the same weight, stride and padding (:class:`StridedConvDown` for the default), i.e. insert
    scale-1 zeros between input pixels, pad, and convolve with the flipped kernel. Kernels whose size is not
    a multiple of the stride overlap unevenly: the source of checkerboard artifacts (see
    :func:`seglab.layers.checkerboard_score`).
    With kernel = stride (U-Net's) on a channels_last input, the same weight is applied as one matrix
    product (:func:`patch_conv_transpose2d`); the parameters stay those of ``self.conv``.
    Shape: (N, in_channels, H, W) -> (N, out_channels, scale*H, scale*W), or ``output_size``.
    """

    trainable: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scale: int = 2,
        kernel_size: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, scale)
        # ceil((k - s) / 2), the least padding that allows exactly s x: 3x3/2 -> 1, 4x4/2 -> 1, 2x2/2 -> 0
        padding = max(0, -((scale - kernel_size) // 2))
        output_padding = scale + 2 * padding - kernel_size
        if not 0 <= output_padding < scale:
            raise ConfigError(
                f"transposed conv: kernel_size {kernel_size} cannot upsample exactly by {scale}"
            )
        self.conv = nn.ConvTranspose2d(
            in_channels,
            self.out_channels,
            kernel_size,
            stride=scale,
            padding=padding,
            output_padding=output_padding,
            bias=bias,
        )
        self.patchwise = kernel_size == scale  # U-Net's up-conv: no overlap, see patch_conv_transpose2d

    def _up(self, x: Tensor) -> Tensor:
        if self.patchwise and _is_channels_last(x):
            return patch_conv_transpose2d(x, self.conv.weight, self.conv.bias)
        return self.conv(x)

    def forward(
        self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None
    ) -> Tensor:
        if output_size is None or tuple(self._target(x, output_size)) == (
            x.shape[-2] * self.scale,
            x.shape[-1] * self.scale,
        ):
            return self._up(x)  # exactly scale x: nothing to pad or crop (F.pad by 0 would still copy)
        x, oh, ow = self._grow(x, output_size)
        return self._up(x)[:, :, :oh, :ow]


class ResizeConvUp(Upsampler):
    """Resize-convolution: nearest (or bilinear) interpolation, then a k x k convolution. Trainable.

    Every output pixel gets the same number of kernel taps, so unlike a transposed convolution it cannot
    produce checkerboard artifacts (Odena et al., 2016). Nearest is the recommended ``interp``.
    Shape: (N, in_channels, H, W) -> (N, out_channels, scale*H, scale*W), or resized to ``output_size``.
    """

    trainable: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scale: int = 2,
        kernel_size: int = 3,
        interp: str = "nearest",
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, scale)
        if interp not in ("nearest", "bilinear"):
            raise ConfigError(f"resize_conv: unknown interp {interp!r}; choose one of: nearest, bilinear")
        self.interp = interp
        self.conv = nn.Conv2d(
            in_channels, self.out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=bias
        )

    def forward(
        self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None
    ) -> Tensor:
        size = self._target(x, output_size)
        if self.interp == "nearest":
            x = F.interpolate(x, size=size, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.conv(x)


# ---------------------------------------------------------------------------------------------- name lookup

DOWNSAMPLERS: dict[str, type[nn.Module]] = {
    "max_pool": MaxPoolDown,
    "avg_pool": AvgPoolDown,
    "strided_conv": StridedConvDown,
}

UPSAMPLERS: dict[str, type[Upsampler]] = {
    "bed_of_nails": BedOfNailsUp,
    "max_unpool": MaxUnpoolUp,
    "nearest": NearestUp,
    "bilinear": BilinearUp,
    "transposed": TransposedConvUp,
    "resize_conv": ResizeConvUp,
}


def _build(
    table: Mapping[str, type[nn.Module]], what: str, mode: str, *args: object, **options: object
) -> nn.Module:
    if mode not in table:
        raise ConfigError(f"unknown {what} mode {mode!r}; choose one of: {', '.join(table)}")
    cls = table[mode]
    try:
        inspect.signature(cls).bind(*args, **options)
    except TypeError as e:
        raise ConfigError(f"{what} mode {mode!r}: {e}") from None
    return cls(*args, **options)


def make_downsample(
    mode: str, in_channels: int, out_channels: int | None = None, scale: int = 2, **options: object
) -> nn.Module:
    """The downsampler called ``mode`` (a key of ``DOWNSAMPLERS``); ``options`` go to its class."""
    return _build(DOWNSAMPLERS, "downsample", mode, in_channels, out_channels, scale, **options)


def make_upsample(
    mode: str, in_channels: int, out_channels: int | None = None, scale: int = 2, **options: object
) -> Upsampler:
    """The upsampler called ``mode`` (a key of ``UPSAMPLERS``); ``options`` go to its class."""
    up = _build(UPSAMPLERS, "upsample", mode, in_channels, out_channels, scale, **options)
    assert isinstance(up, Upsampler)
    return up


__all__ = [
    "DOWNSAMPLERS",
    "UPSAMPLERS",
    "AvgPoolDown",
    "BedOfNailsUp",
    "BilinearUp",
    "MaxPoolDown",
    "MaxUnpoolUp",
    "NearestUp",
    "ResizeConvUp",
    "StridedConvDown",
    "TransposedConvUp",
    "Upsampler",
    "conv_output_size",
    "make_downsample",
    "make_upsample",
    "patch_conv_transpose2d",
    "transposed_output_size",
]
