"""Loss math: pure functions on logits (N, C, H, W) and targets, one ``ignore_index`` policy for all.

Modes (``mode=None`` infers it from the shapes):

- ``"multiclass"``: softmax over C >= 2 channels, target (N, H, W) integer class indices;
- ``"binary"``: one sigmoid channel, logits (N, 1, H, W), target (N, H, W) or (N, 1, H, W) in {0, 1};
- ``"multilabel"``: C independent sigmoid channels, target (N, C, H, W) in [0, 1].

Pixels whose target equals ``ignore_index`` contribute nothing: their logits get zero gradient and the
losses do not change whatever those logits are (they are removed from numerators *and* denominators).
``pixel_weight`` (N, H, W) weights each pixel, e.g. the U-Net border map of ``seglab.losses.weights``.
Means are "weighted means" over the valid pixels: sum(w * loss) / sum(w), so an all-ignored batch gives 0,
not NaN.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Mode = Literal["multiclass", "binary", "multilabel"]
Reduction = Literal["mean", "sum", "none"]
WeightArg = Sequence[float] | Tensor | None
_MODES = ("multiclass", "binary", "multilabel")


def infer_mode(logits: Tensor, target: Tensor) -> Mode:
    """multiclass for (N, C>1, ...) logits with (N, ...) targets, binary for one channel, else multilabel."""
    if logits.dim() >= 2 and logits.shape[1] == 1:
        return "binary"
    return "multilabel" if target.dim() == logits.dim() else "multiclass"


def check_target(
    logits: Tensor, target: Tensor, ignore_index: int | None = 255, mode: Mode | None = None
) -> Mode:
    """Raise a clear ValueError for dtype/shape mismatches or labels outside [0, C) other than ignore_index.

    Returns the (inferred) mode. Costs one ``aminmax`` on the target when all labels are fine.
    """
    mode = mode or infer_mode(logits, target)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor (N, C, H, W), got {logits.dtype}")
    if logits.dim() < 2:
        raise ValueError(f"logits must have a channel dimension (N, C, ...), got shape {tuple(logits.shape)}")
    shape, n_ch = tuple(logits.shape), logits.shape[1]
    tshape = tuple(target.shape)
    spatial_ok = target.dim() == logits.dim() - 1 and tshape[0] == shape[0] and tshape[1:] == shape[2:]
    if mode == "multiclass":
        if n_ch < 2:
            raise ValueError(
                f"multiclass logits need C >= 2 channels, got {shape}; for one sigmoid channel use the binary "
                "losses (mode='binary')"
            )
        if not spatial_ok:
            hint = (
                " (a one-hot target? pass class indices, target.argmax(1), or use mode='multilabel')"
                if tshape == shape
                else ""
            )
            raise ValueError(
                f"logits {shape} and target {tshape} do not match: expected (N, C, H, W) and (N, H, W){hint}"
            )
        _check_integer(target)
        hi_ok = n_ch - 1
    elif mode == "binary":
        if n_ch != 1:
            raise ValueError(f"binary mode needs one logit channel (N, 1, H, W), got {shape}")
        if not (spatial_ok or tshape == shape):
            raise ValueError(
                f"logits {shape} and target {tshape} do not match: expected (N, 1, H, W) and (N, H, W)"
            )
        if target.dtype == torch.bool:
            return mode
        _check_integer(target)
        hi_ok = 1
    else:  # multilabel
        if tshape != shape:
            raise ValueError(f"multilabel target must have the logits' shape {shape}, got {tshape}")
        if target.dtype == torch.bool:
            return mode
        if target.is_floating_point() and not _LABELS_TRUSTED.get():
            vals = target if ignore_index is None else target[target != ignore_index]
            if vals.numel() and (bool((vals < 0).any()) or bool((vals > 1).any())):
                raise ValueError(
                    f"multilabel target values must be in [0, 1] (or ignore_index={ignore_index})"
                )
            return mode
        hi_ok = 1
    _check_labels(target, hi_ok, ignore_index)
    return mode


def _check_integer(target: Tensor) -> None:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold integer class indices, got {target.dtype}; convert it with target.long() "
            "(and make sure it was not resized with a smoothing interpolation)"
        )


_LABELS_TRUSTED: ContextVar[bool] = ContextVar("seglab_labels_trusted", default=False)


@contextmanager
def trusted_labels() -> Iterator[None]:
    """Inside this block the losses skip the range check of the target's values (an ``aminmax`` and a host sync
    per loss term): for a training loop whose data pipeline has already checked every mask once, at load time.
    Shape and dtype checks, which cost nothing, still run."""
    token = _LABELS_TRUSTED.set(True)
    try:
        yield
    finally:
        _LABELS_TRUSTED.reset(token)


_GLOBAL_BATCH: ContextVar[bool] = ContextVar("seglab_global_batch", default=False)


@contextmanager
def global_batch() -> Iterator[None]:
    """Inside this block, in a distributed job (``torch.distributed`` initialised, more than one rank), every loss
    is the loss of the global batch, not of this rank's share: the sums behind its batch statistics (soft TP, FP
    and FN of Dice, Tversky and Jaccard; the numerator and normaliser of every weighted mean; Lovász's sorted
    errors) are pooled over the ranks, so under DistributedDataParallel N processes train what one process
    with the whole batch trains, as SyncBatchNorm does for its statistics.

    Every rank gets the same loss value. The gradient reaching this rank's share is world_size times its share
    of the global gradient (what an all-reduce's backward would return), which DDP's average of the ranks'
    gradients turns into the global batch's gradient, with no collective in the backward pass. Every rank must
    call the same losses in the same order inside the block (each term costs one small all-reduce)."""
    token = _GLOBAL_BATCH.set(True)
    try:
        yield
    finally:
        _GLOBAL_BATCH.reset(token)


def _world_size() -> int:
    """The number of ranks whose batches a loss pools: 1 outside :func:`global_batch` or a distributed job."""
    if not _GLOBAL_BATCH.get():
        return 1
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _ranks_sum(t: Tensor) -> Tensor:
    """``t`` summed over the ranks (see :func:`global_batch`): the value of the sum, and world_size times the
    gradient of this rank's term."""
    world = _world_size()
    if world == 1:
        return t
    import torch.distributed as dist

    total = t.detach().clone()
    dist.all_reduce(total)
    return total + world * (t - t.detach())


def _ranks_mean(values: Tensor) -> Tensor:
    """The mean of ``values`` over every rank's elements (e.g. per-image scores of the global batch)."""
    if _world_size() == 1:
        return values.mean()
    total, count = _ranks_sum(torch.stack([values.sum(), values.new_tensor(values.numel())])).unbind()
    return total / count.clamp_min(1)


def _ranks_cat(t: Tensor, dim: int) -> Tensor:
    """The ranks' ``t`` concatenated along ``dim`` in rank order (sizes along ``dim`` may differ), the others'
    parts detached and this rank's with world_size times its gradient (see :func:`global_batch`)."""
    world = _world_size()
    if world == 1:
        return t
    import torch.distributed as dist

    size = torch.tensor([t.shape[dim]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(n) for n in sizes]
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [0, max(sizes) - t.shape[dim]]
    padded = F.pad(t.detach(), pad).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [p.narrow(dim, 0, n) for p, n in zip(parts, sizes)]
    parts[dist.get_rank()] = t.detach() + world * (t - t.detach())
    return torch.cat(parts, dim)


def _check_labels(target: Tensor, hi: int, ignore_index: int | None) -> None:
    if not target.numel() or _LABELS_TRUSTED.get():
        return
    lo_v, hi_v = torch.aminmax(target)
    if int(lo_v) >= 0 and int(hi_v) <= hi:
        return
    bad = (target < 0) | (target > hi)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        value = target[bad][0].item()
        raise ValueError(f"target holds label {value} outside 0..{hi} (ignore_index={ignore_index})")


def _valid(target: Tensor, ignore_index: int | None) -> Tensor:
    return torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index


def _as_weight(weight: WeightArg, like: Tensor, n: int, name: str) -> Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device).reshape(-1)
    if w.numel() != n:
        raise ValueError(f"{name} has {w.numel()} entries, expected one per class ({n})")
    return w


def _reduce(per_pixel: Tensor, weight: Tensor, reduction: Reduction) -> Tensor:
    """per_pixel already multiplied by weight (0 at ignored pixels); weight is the normaliser."""
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return _ranks_sum(per_pixel.sum())
    if reduction == "mean":
        total, norm = _ranks_sum(torch.stack([per_pixel.sum(), weight.sum().to(per_pixel.dtype)])).unbind()
        return total / norm.clamp_min(torch.finfo(per_pixel.dtype).tiny)
    raise ValueError(f"reduction must be mean, sum or none; got {reduction!r}")


def _binary_target(logits: Tensor, target: Tensor) -> Tensor:
    return target if target.dim() == logits.dim() else target.unsqueeze(1)


# --------------------------------------------------------------------------------------------- cross-entropy


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: WeightArg = None,
    ignore_index: int | None = 255,
    label_smoothing: float = 0.0,
    pixel_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Softmax cross-entropy with class ``weight``, ``label_smoothing`` and per-pixel weights.

    Without ``pixel_weight`` the mean equals ``F.cross_entropy`` (normalised by the summed class weights of
    the valid pixels) except that an all-ignored batch gives 0 instead of NaN. With it, each pixel's loss and
    normaliser are multiplied by its weight.
    """
    check_target(logits, target, ignore_index, "multiclass")
    target = target.long()
    w = _as_weight(weight, logits, logits.shape[1], "weight")
    ignore = -100 if ignore_index is None else ignore_index
    per = F.cross_entropy(
        logits, target, weight=w, ignore_index=ignore, label_smoothing=label_smoothing, reduction="none"
    )
    valid = _valid(target, ignore_index)
    norm = valid.to(per.dtype) if w is None else w[torch.where(valid, target, 0)] * valid
    if pixel_weight is not None:
        pixel_weight = pixel_weight.to(per.dtype)
        per, norm = per * pixel_weight, norm * pixel_weight
    return _reduce(per, norm, reduction)


def binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None = 255,
    pos_weight: float | Tensor | None = None,
    label_smoothing: float = 0.0,
    pixel_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Sigmoid cross-entropy for one-channel (binary) or multilabel logits; targets smoothed towards 0.5.

    ``pos_weight`` multiplies the positive term (> 1 favours recall of the rare foreground).
    """
    mode = check_target(logits, target, ignore_index, None)
    if mode == "multiclass":
        raise ValueError(
            f"binary_cross_entropy needs (N, 1, H, W) or multilabel logits, got {tuple(logits.shape)} with "
            f"target {tuple(target.shape)}; use cross_entropy for softmax outputs"
        )
    target = _binary_target(logits, target)
    valid = _valid(target, ignore_index)
    t = torch.where(valid, target, 0).to(logits.dtype)
    if label_smoothing:
        t = t * (1 - label_smoothing) + 0.5 * label_smoothing
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    if pw is not None and pw.dim() == 1:
        pw = pw.view(1, -1, *([1] * (logits.dim() - 2)))  # one per channel
    per = F.binary_cross_entropy_with_logits(logits, t, pos_weight=pw, reduction="none")
    norm = valid.to(per.dtype)
    if pixel_weight is not None:
        norm = norm * _binary_target(logits, pixel_weight.to(per.dtype))
    return _reduce(per * norm, norm, reduction)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | WeightArg = None,
    ignore_index: int | None = 255,
    mode: Mode | None = None,
    pixel_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Focal loss -alpha_t (1 - p_t)^gamma log p_t (Lin et al.): down-weights the easy, mostly-background pixels.

    multiclass: ``alpha`` is None or one weight per class. binary/multilabel: ``alpha`` is the positive
    weight in [0, 1] (negatives get 1 - alpha), as in ``torchvision.ops.sigmoid_focal_loss``. gamma = 0 and
    alpha = None give cross-entropy. The mean is over valid pixels (elements for sigmoid modes).
    """
    mode = check_target(logits, target, ignore_index, mode)
    if mode == "multiclass":
        target = target.long()
        valid = _valid(target, ignore_index)
        t = torch.where(valid, target, 0).unsqueeze(1)
        logp_t = logits.log_softmax(1).gather(1, t).squeeze(1)
        per = -((1 - logp_t.exp()).clamp_min(0) ** gamma) * logp_t
        a = _as_weight(alpha, logits, logits.shape[1], "alpha")  # type: ignore[arg-type]
        if a is not None:
            per = per * a[t.squeeze(1)]
        norm = valid.to(per.dtype)
        if pixel_weight is not None:
            norm = norm * pixel_weight.to(per.dtype)
    else:
        target = _binary_target(logits, target)
        valid = _valid(target, ignore_index)
        t = torch.where(valid, target, 0).to(logits.dtype)
        p = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        per = ce * (1 - p_t).clamp_min(0) ** gamma
        if alpha is not None:
            a = float(alpha)  # type: ignore[arg-type]
            per = per * (a * t + (1 - a) * (1 - t))
        norm = valid.to(per.dtype)
        if pixel_weight is not None:
            norm = norm * _binary_target(logits, pixel_weight.to(per.dtype))
    return _reduce(per * norm, norm, reduction)


# ------------------------------------------------------------------------------------ soft region overlaps


def soft_counts(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None = 255,
    mode: Mode | None = None,
    per_image: bool = False,
    pixel_weight: Tensor | None = None,
    from_logits: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft TP, FP, FN per class: sums of p t, p (1 - t), (1 - p) t over valid pixels.

    Shapes (C,) over the whole batch, or (N, C) with ``per_image``. ``from_logits=False`` takes
    probabilities instead of logits. Ignored pixels are zeroed in p and t, so they add to no sum.
    """
    mode = check_target(logits, target, ignore_index, mode)
    probs = logits
    if mode == "multiclass":
        if from_logits:
            probs = logits.softmax(1)
        target = target.long()
        valid = _valid(target, ignore_index)
        index = torch.where(valid, target, 0).unsqueeze(1)
        onehot = torch.zeros_like(probs).scatter_(1, index, 1.0)
        w = valid.unsqueeze(1).to(probs.dtype)
    else:
        if from_logits:
            probs = logits.sigmoid()
        target = _binary_target(logits, target)
        valid = _valid(target, ignore_index)
        onehot = torch.where(valid, target, 0).to(probs.dtype)
        w = valid.to(probs.dtype)
    if pixel_weight is not None:
        w = w * _binary_target(logits, pixel_weight.to(probs.dtype))
    dims = tuple(range(2, probs.dim())) if per_image else (0, *range(2, probs.dim()))
    pw, tw = probs * w, onehot * w
    sums = torch.stack([(pw * onehot).sum(dims), pw.sum(dims), tw.sum(dims)])
    if not per_image:  # pooled over the batch: over the global batch in a distributed job (global_batch)
        sums = _ranks_sum(sums)
    tp, p_sum, t_sum = sums.unbind()
    return tp, p_sum - tp, t_sum - tp


def _region_loss(
    per_class: Tensor,
    class_weights: WeightArg,
    include_background: bool,
    mode: Mode,
) -> Tensor:
    """Weighted mean over classes (and images, for (N, C) input) of a per-class loss."""
    n_cls = per_class.shape[-1]
    w = _as_weight(class_weights, per_class, n_cls, "class_weights")
    if w is None:
        w = torch.ones(n_cls, dtype=per_class.dtype, device=per_class.device)
    if not include_background and mode != "binary":
        if n_cls < 2:
            raise ValueError("include_background=False leaves no class")
        w = torch.cat([w.new_zeros(1), w[1:]])
    per_item = (per_class * w).sum(-1) / w.sum()
    return _ranks_mean(per_item) if per_item.dim() else per_item  # per image: the global batch's images


def dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None = 255,
    smooth: float = 1.0,
    *,
    eps: float = 1e-7,
    mode: Mode | None = None,
    class_weights: WeightArg = None,
    include_background: bool = True,
    per_image: bool = False,
    pixel_weight: Tensor | None = None,
    from_logits: bool = True,
) -> Tensor:
    """Soft Dice loss 1 - mean_c (2 TP_c + smooth) / (2 TP_c + FP_c + FN_c + smooth), denominator >= eps.

    Each class counts equally whatever its pixel count, which is why Dice copes with imbalanced data where
    a per-pixel loss is dominated by the background. ``per_image``: scores per image, then averaged
    (otherwise pooled over the batch). ``smooth`` keeps an absent, correctly empty class near score 1;
    ``include_background=False`` drops channel 0; ``class_weights`` weight the class mean.
    """
    mode = mode or infer_mode(logits, target)
    tp, fp, fn = soft_counts(logits, target, ignore_index, mode, per_image, pixel_weight, from_logits)
    score = (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(eps)
    return _region_loss(1 - score, class_weights, include_background, mode)


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None = 255,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    smooth: float = 1.0,
    *,
    eps: float = 1e-7,
    mode: Mode | None = None,
    class_weights: WeightArg = None,
    include_background: bool = True,
    per_image: bool = False,
    pixel_weight: Tensor | None = None,
    from_logits: bool = True,
) -> Tensor:
    """Tversky loss (1 - T_c)^gamma, T_c = (TP + s) / (TP + alpha FP + beta FN + s) (Salehi et al., 2017).

    beta > alpha penalises misses more than false alarms (recall for small structures); alpha = beta = 0.5
    is the Dice loss with smooth 2s, alpha = beta = 1 the Jaccard loss; gamma != 1 gives the focal Tversky
    loss (Abraham and Khan's exponent 1/gamma = 0.75 is ``gamma=0.75`` here).
    """
    mode = mode or infer_mode(logits, target)
    tp, fp, fn = soft_counts(logits, target, ignore_index, mode, per_image, pixel_weight, from_logits)
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(eps)
    per_class = (1 - score).clamp_min(0) ** gamma
    return _region_loss(per_class, class_weights, include_background, mode)


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None = 255,
    smooth: float = 1.0,
    *,
    eps: float = 1e-7,
    mode: Mode | None = None,
    class_weights: WeightArg = None,
    include_background: bool = True,
    per_image: bool = False,
    pixel_weight: Tensor | None = None,
    from_logits: bool = True,
) -> Tensor:
    """Soft Jaccard (IoU) loss 1 - mean_c (TP + s) / (TP + FP + FN + s)."""
    mode = mode or infer_mode(logits, target)
    tp, fp, fn = soft_counts(logits, target, ignore_index, mode, per_image, pixel_weight, from_logits)
    score = (tp + smooth) / (tp + fp + fn + smooth).clamp_min(eps)
    return _region_loss(1 - score, class_weights, include_background, mode)


# --------------------------------------------------------------------------------------------------- Lovász


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted descending, along dim -2."""
    gts = fg_sorted.sum(-2, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-2)
    union = gts + (1 - fg_sorted).cumsum(-2)
    jaccard = 1.0 - intersection / union.clamp_min(1e-12)
    return torch.cat([jaccard[..., :1, :], jaccard[..., 1:, :] - jaccard[..., :-1, :]], dim=-2)


def lovasz_softmax(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None = 255,
    classes: Literal["present", "all"] = "present",
    per_image: bool = False,
    *,
    mode: Mode | None = None,
    from_logits: bool = True,
) -> Tensor:
    """Lovász-softmax loss (Berman et al., 2018): a convex surrogate that optimises mean IoU directly.

    For each class, the per-pixel errors |1[y = c] - p_c| are sorted and dotted with the gradient of the
    Lovász extension of the Jaccard loss; on hard (one-hot) predictions it equals 1 - IoU_c exactly.
    ``classes="present"`` averages over the classes in the target (per image with ``per_image``).
    One-channel logits are treated as the two classes (1 - sigmoid, sigmoid). Ignored pixels get error 0.
    """
    mode = check_target(logits, target, ignore_index, mode)
    if mode == "multilabel":
        raise ValueError("lovasz_softmax supports multiclass and binary targets, not multilabel")
    if mode == "binary":
        target = _binary_target(logits, target)[:, 0]
        p1 = logits.sigmoid() if from_logits else logits
        probs = torch.cat([1 - p1, p1], 1)
    else:
        probs = logits.softmax(1) if from_logits else logits
    target = target.long()
    n, c = probs.shape[:2]
    valid = _valid(target, ignore_index)
    fg = F.one_hot(torch.where(valid, target, 0), c).to(probs.dtype) * valid.unsqueeze(-1).to(probs.dtype)
    fg = fg.reshape(n, -1, c)  # (N, P, C)
    p = probs.movedim(1, -1).reshape(n, -1, c)
    errors = (fg - p).abs() * valid.reshape(n, -1, 1).to(probs.dtype)
    if not per_image:  # one ranking of every pixel of the (global, see global_batch) batch
        fg, errors = _ranks_cat(fg.reshape(1, -1, c), 1), _ranks_cat(errors.reshape(1, -1, c), 1)
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    fg_sorted = fg.gather(1, perm)
    losses = (errors_sorted * _lovasz_grad(fg_sorted)).sum(1)  # (B, C)
    if classes == "present":
        present = (fg.sum(1) > 0).to(losses.dtype)
    elif classes == "all":
        present = torch.ones_like(losses)
    else:
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    per_item = (losses * present).sum(1) / present.sum(1).clamp_min(1)
    return _ranks_mean(per_item) if per_image else per_item.mean()
