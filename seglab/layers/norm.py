"""Batch norm over the global batch of several processes, on any device (torch's SyncBatchNorm is CUDA-only).

In data-parallel training each process sees ``batch / world_size`` images. Plain batch norm then normalises with
the statistics of that small local batch, so N processes do not train the model that one process with the whole
batch would. ``SyncBatchNorm`` sums each channel's count, sum and sum of squares over the processes (one
all-reduce per layer and pass, differentiable, so the backward pass gets the global gradient too) and normalises
with the statistics of the global batch: N processes then compute what one process computes, up to round-off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: the gradient of each process's input is the sum of the gradients
    of the output on every process (each process's loss depends on every process's input through it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _world_size(group: Any) -> int:
    import torch.distributed as dist

    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with the statistics of the global batch when training under ``torch.distributed`` with more
    than one process; plain batch norm otherwise (one process, or evaluation, which uses the running statistics).

    Inputs ``(N, C, *)``. The running statistics are updated from the global batch, so they agree on every
    process. ``act``/``drop`` (set by ``convert`` from timm's BatchNormAct2d) are applied after the
    normalisation, as there; they hold no weights, so the state-dict keys are those of the module replaced.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least a 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _world_size(self.process_group) > 1:
            y = self._global_batch_norm(x)
        else:
            y = super().forward(x)
        if hasattr(self, "drop"):
            y = self.drop(y)
        if hasattr(self, "act"):
            y = self.act(y)
        return y

    def _momentum(self) -> float:
        """The running statistics' update factor of this step (``momentum``, or a cumulative mean if None)."""
        if not self.track_running_stats:
            return 0.0
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def _global_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        c = x.shape[1]
        shape = (1, c) + (1,) * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        # shifted sums: every process shifts by the same running mean, which keeps E[d^2] - E[d]^2 accurate
        shift = self.running_mean.detach().float() if self.running_mean is not None else xf.new_zeros(c)
        d = xf - shift.view(shape)
        count = torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device)
        stats = torch.cat([d.sum(dims).double(), (d * d).sum(dims).double(), count])
        stats = _AllReduceSum.apply(stats, self.process_group)
        n = stats[-1]
        mean_d = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean_d * mean_d).clamp_min(0)
        mean = (mean_d + shift.double()).float()
        scale = torch.rsqrt(var.float() + self.eps)
        if self.affine:
            scale = scale * self.weight
        offset = -mean * scale + (self.bias if self.affine else 0.0)
        y = torch.addcmul(offset.view(shape), xf, scale.view(shape))  # x * scale + offset in one pass
        if self.track_running_stats:
            factor = self._momentum()
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(unbiased.detach().float(), factor)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """``module`` with every batch-norm layer (torch's, timm's BatchNormAct2d) replaced by a SyncBatchNorm that
        holds the same weights and running statistics (``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, for any
        device)."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            for name in ("drop", "act"):  # timm's BatchNormAct2d
                if isinstance(getattr(module, name, None), nn.Module):
                    out.add_module(name, getattr(module, name))
        for name, child in module.named_children():
            if name not in ("drop", "act") or out is module:
                out.add_module(name, cls.convert(child, process_group))
        return out
