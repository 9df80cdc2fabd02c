"""Uncertainty maps as pure functions on probabilities, and the running sums every predictor streams into.

Shapes: probabilities ``(N, C, H, W)`` (each pixel sums to 1 over C); T samples stacked as ``(T, N, C, H, W)``;
maps ``(N, H, W)``; per-class variance ``(N, C, H, W)``. Entropies are in nats, so the largest possible value is
``log C`` (a uniform distribution).

The decomposition (Houlsby et al. 2011; Gal & Ghahramani 2016; Depeweg et al. 2018)::

    predictive entropy   H[E_t p_t]          total uncertainty
    expected entropy     E_t H[p_t]          aleatoric (what every sample is unsure about)
    mutual information   H[E_t p_t] - E_t H[p_t]   epistemic (BALD: how much the samples disagree)

Predictors never hold the T samples: :class:`RunningStats` keeps the running mean and sum of squared deviations
of p (Welford's update) and the running sum of the per-sample entropy, and :func:`uncertainty_from_moments`
turns those into the same :class:`UncertaintyResult` that :meth:`UncertaintyResult.from_samples` computes from
stacked samples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from seglab.errors import SeglabError


def entropy(probs: Tensor, dim: int = 1) -> Tensor:
    """Shannon entropy ``-sum p log p`` over ``dim`` in nats (``0 log 0 = 0``)."""
    return -torch.special.xlogy(probs, probs).sum(dim)


def predictive_entropy(samples: Tensor) -> Tensor:
    """Total uncertainty ``H[E_t p_t]`` of samples ``(T, N, C, H, W)`` -> ``(N, H, W)``."""
    return entropy(samples.mean(0), dim=1)


def expected_entropy(samples: Tensor) -> Tensor:
    """Aleatoric uncertainty ``E_t H[p_t]`` of samples ``(T, N, C, H, W)`` -> ``(N, H, W)``."""
    return entropy(samples, dim=2).mean(0)


def mutual_information(samples: Tensor) -> Tensor:
    """Epistemic uncertainty (BALD) ``H[E_t p_t] - E_t H[p_t]`` of samples ``(T, N, C, H, W)`` -> ``(N, H, W)``.

    Non-negative (entropy is concave) up to float rounding; 0 when all samples agree.
    """
    return predictive_entropy(samples) - expected_entropy(samples)


def class_variance(samples: Tensor) -> Tensor:
    """Per-class variance over the samples (population variance, divisor T): ``(T, N, C, H, W)`` -> ``(N, C, H, W)``."""
    return samples.var(0, correction=0)


def max_confidence(probs: Tensor) -> Tensor:
    """Max-probability confidence ``max_c p_c`` of probabilities ``(N, C, H, W)`` -> ``(N, H, W)``."""
    return probs.amax(1)


@dataclass
class UncertaintyResult:
    """What every predictor returns (deterministic prediction: ``samples == 1``, mutual information 0)."""

    probs: Tensor  # (N, C, H, W) mean probabilities over the samples
    mask: Tensor  # (N, H, W) int64, argmax of probs
    entropy: Tensor  # (N, H, W) predictive entropy H[E p] (total)
    expected_entropy: Tensor  # (N, H, W) E[H p] (aleatoric)
    mutual_information: Tensor  # (N, H, W) the difference (epistemic, BALD)
    variance: Tensor  # (N, C, H, W) per-class variance of p over the samples
    confidence: Tensor  # (N, H, W) max probability
    samples: int  # T (or M): the number of passes averaged

    MAPS = ("entropy", "expected_entropy", "mutual_information", "confidence")

    @classmethod
    def from_samples(cls, samples: Tensor) -> UncertaintyResult:
        """The reference computation from stacked samples ``(T, N, C, H, W)`` (predictors stream instead)."""
        mean = samples.mean(0)
        total, aleatoric = entropy(mean), expected_entropy(samples)
        return cls(
            mean,
            mean.argmax(1),
            total,
            aleatoric,
            total - aleatoric,
            class_variance(samples),
            max_confidence(mean),
            samples.shape[0],
        )

    def maps(self) -> dict[str, Tensor]:
        """The per-pixel maps by name, plus ``variance`` and ``probs``: what ``--save-maps`` writes."""
        return {name: getattr(self, name) for name in (*self.MAPS, "variance", "probs")}

    def select(self, index: int) -> UncertaintyResult:
        """Image ``index`` of the batch, keeping a batch dimension of 1."""
        return UncertaintyResult(
            **{
                f.name: getattr(self, f.name)[index : index + 1] if f.name != "samples" else self.samples
                for f in fields(self)
            }
        )


def uncertainty_from_moments(mean: Tensor, m2: Tensor, sum_entropy: Tensor, count: int) -> UncertaintyResult:
    """The result from running moments: ``mean`` of p, ``m2`` = sum of squared deviations of p from the mean,
    ``sum_entropy`` = sum over samples of each sample's entropy, ``count`` = T."""
    total = entropy(mean)
    aleatoric = sum_entropy / count
    return UncertaintyResult(
        mean,
        mean.argmax(1),
        total,
        aleatoric,
        total - aleatoric,
        (m2 / count).clamp_min(0),
        max_confidence(mean),
        count,
    )


class RunningStats:
    """Streams probability samples ``(N, C, H, W)`` one at a time; memory is independent of T.

    Holds the mean and the sum of squared deviations of p (Welford: numerically stable where sums of p and p^2
    would cancel) and the sum of per-sample entropies (the sum of p log p over classes).
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None
        self.sum_entropy: Tensor | None = None

    def update(self, probs: Tensor) -> None:
        p = probs.detach().float()
        if self.mean is None:
            self.count, self.mean = 1, p.clone()
            self.m2, self.sum_entropy = torch.zeros_like(p), entropy(p)
            return
        if p.shape != self.mean.shape:
            raise SeglabError(
                f"pass {self.count + 1} gave probabilities of shape {tuple(p.shape)} but the first gave "
                f"{tuple(self.mean.shape)}; every pass (and every ensemble member) must predict the same classes"
            )
        self.count += 1
        delta = p - self.mean
        self.mean.add_(delta, alpha=1.0 / self.count)
        self.m2.addcmul_(delta, p - self.mean)
        self.sum_entropy.add_(entropy(p))

    def result(self) -> UncertaintyResult:
        if self.mean is None:
            raise SeglabError("no samples were streamed; use at least one pass (--samples >= 1)")
        return uncertainty_from_moments(self.mean, self.m2, self.sum_entropy, self.count)
