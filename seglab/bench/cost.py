"""The cost model: parameters, multiply-accumulates (MACs) and activation memory, per layer and in total.

Counted from the model itself: a forward hook on every leaf module records its output shape, and the MACs of
the layers that multiply (convolutions, transposed convolutions, linear layers) follow from the shapes:

- ``Conv2d``: C_out H_out W_out * (C_in / groups) k_h k_w per image; dilation widens the window, not the
  count; a depthwise conv (groups = C_in) does H_out W_out C k_h k_w.
- ``ConvTranspose2d``: every *input* pixel scatters a (C_out / groups) k_h k_w patch:
  C_in H_in W_in * (C_out / groups) k_h k_w.
- ``Linear``: in_features * out_features per row.

Activation memory is the size of each layer's new output (what a training step keeps for backward; outputs
that reuse their input's storage, as an in-place ReLU, count nothing); batch norm,
activations and pooling have parameters and memory but no MACs here. :func:`flop_counter_macs` counts the same
network with ``torch.utils.flop_counter.FlopCounterMode`` (PyTorch's own count, FLOPs = 2 MACs) as a cross-check.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

COMPUTE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class LayerCost:
    """One call of one leaf module on one input."""

    name: str
    kind: str  # the module's class name
    in_shape: tuple[int, ...]  # (C, H, W) of the first input, batch dimension dropped
    out_shape: tuple[int, ...]
    filter: str  # e.g. "3x3/1" (kernel / stride), "3x3/1 d2", "3x3/1 g16", "" for non-conv layers
    params: int
    macs: int  # per image
    activation_bytes: int  # output size per image

    @property
    def compute(self) -> bool:
        return self.macs > 0


@dataclass
class ModelCost:
    """Per-layer costs and totals of one model at one input size (per image)."""

    model: str
    input_size: tuple[int, int]
    layers: list[LayerCost] = field(default_factory=list)
    params: int = 0  # every parameter of the model (each counted once)
    macs: int = 0
    activation_bytes: int = 0  # the sum of every leaf module's output

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "params": self.params,
            "macs": self.macs,
            "activation_bytes": self.activation_bytes,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _pair(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


def _filter(m: nn.Module) -> str:
    if not isinstance(m, nn.modules.conv._ConvNd):
        return ""
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    text = "x".join(map(str, k)) + "/" + ("x".join(map(str, s)) if len(set(s)) > 1 else str(s[0]))
    if max(d) > 1:
        text += " d" + ("x".join(map(str, d)) if len(set(d)) > 1 else str(d[0]))
    if m.groups > 1:
        text += f" g{m.groups}"
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        text = "T " + text
    return text


def layer_macs(m: nn.Module, inp: Tensor, out: Tensor) -> int:
    """MACs per image of one call of ``m`` (0 for layers that do not multiply-accumulate)."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return inp[0].numel() * (m.out_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
    if isinstance(m, nn.modules.conv._ConvNd):
        return out[0].numel() * m.weight[0].numel()
    if isinstance(m, nn.Linear):
        return out[0].numel() * m.in_features
    return 0


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, tuple | list):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, tuple | list):
        return [t for v in x for t in _tensors(v)]
    return []


def _new_bytes(inputs: Any, out: Any) -> int:
    """Bytes per image of the outputs that are new memory (an in-place ReLU, an Identity or eval-mode dropout
    returns its input and costs nothing)."""
    ins = _tensors(inputs)
    ids = {id(t) for t in ins}
    ptrs = {t.untyped_storage().data_ptr() for t in ins if t.device.type != "meta"}
    total = 0
    for t in _tensors(out):
        shared = id(t) in ids or (t.device.type != "meta" and t.untyped_storage().data_ptr() in ptrs)
        if t.dim() > 0 and not shared:
            total += t[0].numel() * t.element_size()
    return total


def count_cost(
    model: nn.Module,
    input_size: int | tuple[int, int] = 512,
    in_channels: int | None = None,
    name: str = "",
    batch: int = 1,
    meta: bool = True,
    _device: str | None = None,
) -> ModelCost:
    """Run ``model`` once (eval mode, no grad) on zeros of (batch, in_channels, H, W) and count every leaf
    module's parameters, MACs and output memory, per image. ``in_channels`` defaults to the first conv's.
    ``meta``: run a copy on PyTorch's meta device (shapes only, instant at any size) when the model allows."""
    h, w = _pair(input_size)
    if in_channels is None:
        first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        in_channels = first.in_channels if first is not None else 3
    if (
        meta
    ):  # shapes only: no arithmetic, so any size is instant; falls back to real zeros if a layer needs data
        try:
            return count_cost(
                copy.deepcopy(model).to("meta"),
                input_size,
                in_channels,
                name,
                batch,
                meta=False,
                _device="meta",
            )
        except Exception:  # noqa: BLE001
            pass
    param = next(model.parameters(), None)
    x = torch.zeros(
        batch, in_channels, h, w, device=_device or (param.device if param is not None else "cpu")
    )
    names = {m: n for n, m in model.named_modules()}
    rows: list[LayerCost] = []

    def hook(m: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        inp, o = _first_tensor(inputs), _first_tensor(out)
        if inp is None or o is None:
            return
        own_params = sum(p.numel() for p in m.parameters(recurse=False))
        rows.append(
            LayerCost(
                names[m],
                type(m).__name__,
                tuple(inp.shape[1:]),
                tuple(o.shape[1:]),
                _filter(m),
                own_params,
                layer_macs(m, inp, o),
                _new_bytes(inputs, out),
            )
        )

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    # A module called twice (shared weights) lists its parameters on its first row only.
    seen: set[str] = set()
    for row in rows:
        if row.name in seen:
            row.params = 0
        seen.add(row.name)
    return ModelCost(
        name or type(model).__name__,
        (h, w),
        rows,
        sum(p.numel() for p in model.parameters()),
        sum(r.macs for r in rows),
        sum(r.activation_bytes for r in rows),
    )


def flop_counter_macs(model: nn.Module, x: Tensor) -> int:
    """MACs of ``model(x)`` per image by PyTorch's ``FlopCounterMode`` (its FLOPs / 2), for cross-checking."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2 // x.shape[0]


def human(n: float, unit: str = "") -> str:
    """``n`` with a k / M / G / T suffix and two decimals, e.g. 9.32 G."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def _bytes(n: float) -> str:
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{n:.0f} B"


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s))


def format_cost(cost: ModelCost, all_layers: bool = False) -> str:
    """A Markdown table: one row per layer that multiplies (convs, linear), with the parameters and memory
    of the norms and activations that follow it folded into it (``all_layers``: one row per leaf module)."""
    grouped: list[dict[str, Any]] = []
    for r in cost.layers:
        if all_layers or r.compute or not grouped:
            grouped.append(
                {
                    "name": r.name,
                    "kind": r.kind,
                    "in": r.in_shape,
                    "out": r.out_shape,
                    "filter": r.filter,
                    "params": r.params,
                    "macs": r.macs,
                    "act": r.activation_bytes,
                }
            )
        else:  # norm / activation / pooling after a compute layer: its cost joins that row
            g = grouped[-1]
            g["params"] += r.params
            g["act"] += r.activation_bytes
    lines = [
        f"**{cost.model}** at {cost.input_size[0]}x{cost.input_size[1]}: {cost.params:,} parameters, "
        f"{cost.gmacs:.2f} GMACs, {_bytes(cost.activation_bytes)} activations per image",
        "",
        "| layer | type | output CxHxW | filter | params | MACs | activation memory |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for g in grouped:
        lines.append(
            f"| {g['name'] or '(model)'} | {g['kind']} | {_shape(g['out'])} | {g['filter']} | "
            f"{g['params']:,} | {human(g['macs'])} | {_bytes(g['act'])} |"
        )
    lines.append(
        f"| **total** | | | | {cost.params:,} | {human(cost.macs)} | {_bytes(cost.activation_bytes)} |"
    )
    return "\n".join(lines)


def course_comparison(
    size: int | tuple[int, int] = 512, num_classes: int = 10
) -> tuple[ModelCost, ModelCost]:
    """The course's full-resolution stack (plain_fcn: 3->16->32->64->128->64->32->num_classes, 3x3 convs at
    H x W) and a U-Net of similar depth and widths (native encoder, base 16, depth 4: 16->32->64->128 and back)."""
    from seglab.models.factory import create_model

    plain = create_model("plain_fcn", num_classes=num_classes)
    unet = create_model("unet", num_classes=num_classes, depth=4, base_channels=16)
    return (count_cost(plain, size, name="plain_fcn"), count_cost(unet, size, name="unet (depth 4, base 16)"))


def format_comparison(a: ModelCost, b: ModelCost) -> str:
    """Both tables, then one line on why downsampling inside the network is needed."""
    text = [format_cost(a), "", format_cost(b), ""]
    text.append(
        f"{a.model}: {a.gmacs:.2f} GMACs, {_bytes(a.activation_bytes)} activations, every layer at full "
        f"resolution and a receptive field of only {2 * sum(1 for r in a.layers if r.compute) + 1} px. "
        f"{b.model}: {b.gmacs:.2f} GMACs ({b.macs / max(a.macs, 1):.2f}x), "
        f"{_bytes(b.activation_bytes)} activations ({b.activation_bytes / max(a.activation_bytes, 1):.2f}x), "
        f"with {b.params / max(a.params, 1):.1f}x the parameters spent at low resolution where they are cheap "
        "and the deepest features see a context of well over 100 px."
    )
    return "\n".join(text)


__all__ = [
    "COMPUTE_TYPES",
    "LayerCost",
    "ModelCost",
    "count_cost",
    "course_comparison",
    "flop_counter_macs",
    "format_comparison",
    "format_cost",
    "layer_macs",
]
