"""UncertaintyConfig: which predictor ``predict`` and ``evaluate`` use, and what they write. No torch import here
(the CLI builds it instantly)."""

from __future__ import annotations

from dataclasses import dataclass, field

from seglab.errors import ConfigError

METHODS = ("deterministic", "mc-dropout", "tta", "ensemble")
HEATMAPS = (
    "entropy",
    "mi",
)  # the map drawn as <stem>_uncertainty.png: predictive entropy or mutual information
FLIP_NAMES = ("none", "h", "v", "hv")


@dataclass
class UncertaintyConfig:
    """How to turn a checkpoint into an uncertainty-aware predictor.

    ``method``: ``deterministic`` (one pass), ``mc-dropout`` (``samples`` passes with dropout on; ``add_dropout``
    > 0 first adds ``Dropout2d(add_dropout)`` before the head of a model that has none), ``tta`` (``flips`` x
    ``scales``) or ``ensemble`` (the main checkpoint plus ``ensemble``, further checkpoints of the same classes).
    ``heatmap`` picks the map ``predict`` draws; ``save_maps`` also writes every raw map as ``.npz``; ``bins`` is
    the number of equal-width (and equal-mass) calibration bins of ``evaluate``.
    """

    method: str = "mc-dropout"
    samples: int = 20
    seed: int | None = 0
    add_dropout: float = 0.0
    flips: list[str] = field(default_factory=lambda: list(FLIP_NAMES))
    scales: list[float] = field(default_factory=lambda: [1.0])
    ensemble: list[str] = field(default_factory=list)
    heatmap: str = "entropy"
    save_maps: bool = False
    bins: int = 15

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown uncertainty method {self.method!r}; choose {', '.join(METHODS)}")
        if self.method == "mc-dropout" and self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if not 0.0 <= self.add_dropout < 1.0:
            raise ConfigError(f"--add-dropout must be within [0, 1), got {self.add_dropout}")
        bad = [f for f in self.flips if f not in FLIP_NAMES]
        if bad or not self.flips:
            raise ConfigError(
                f"unknown TTA flip {bad[0] if bad else None!r}; choose from {', '.join(FLIP_NAMES)}"
            )
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ConfigError(f"--tta-scales must be > 0, got {self.scales}")
        if self.method == "ensemble" and not self.ensemble:
            raise ConfigError("an ensemble needs more checkpoints: --ensemble CKPT [CKPT ...]")
        if self.ensemble and self.method != "ensemble":
            raise ConfigError(f"--ensemble checkpoints were given but the method is {self.method}; drop one")
        if self.heatmap not in HEATMAPS:
            raise ConfigError(f"unknown uncertainty heatmap {self.heatmap!r}; choose {', '.join(HEATMAPS)}")
        if self.bins < 1:
            raise ConfigError(f"--bins must be >= 1, got {self.bins}")

    def describe(self) -> str:
        """A short label, e.g. ``mc-dropout (20 samples)``."""
        if self.method == "mc-dropout":
            return f"mc-dropout ({self.samples} samples)"
        if self.method == "tta":
            return f"tta (flips {'/'.join(self.flips)}, scales {'/'.join(f'{s:g}' for s in self.scales)})"
        if self.method == "ensemble":
            return f"ensemble ({len(self.ensemble) + 1} models)"
        return self.method
