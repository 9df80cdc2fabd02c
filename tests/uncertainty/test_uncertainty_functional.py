import math

import pytest
import torch

from seglab.errors import SeglabError
from seglab.uncertainty.functional import (
    RunningStats,
    UncertaintyResult,
    class_variance,
    entropy,
    expected_entropy,
    max_confidence,
    mutual_information,
    predictive_entropy,
)


def random_samples(t=6, n=2, c=4, h=5, w=7, sharp=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, n, c, h, w, generator=g) * sharp).softmax(2)


@pytest.mark.parametrize("c", [2, 3, 21])
def test_entropy_of_uniform_is_log_c(c):
    probs = torch.full((2, c, 3, 4), 1.0 / c)
    assert torch.allclose(entropy(probs), torch.full((2, 3, 4), math.log(c)), atol=1e-6)


def test_entropy_of_one_hot_is_zero_and_never_nan():
    probs = torch.nn.functional.one_hot(torch.tensor([[[0, 2], [1, 1]]]), 3).permute(0, 3, 1, 2).float()
    e = entropy(probs)
    assert torch.equal(e, torch.zeros(1, 2, 2))


def test_mutual_information_is_zero_when_samples_agree():
    one = random_samples(t=1)
    samples = one.expand(5, *one.shape[1:])
    assert torch.allclose(mutual_information(samples), torch.zeros(1), atol=1e-6)
    stats = RunningStats()
    for p in samples:
        stats.update(p)
    r = stats.result()
    assert torch.allclose(r.mutual_information, torch.zeros(1), atol=1e-6)
    assert torch.allclose(r.variance, torch.zeros(1), atol=1e-12)


def test_mutual_information_of_two_confidently_opposite_samples_is_log_2():
    a = torch.tensor([1.0, 0.0])[None, :, None, None]
    samples = torch.stack([a, a.flip(1)])  # (2, 1, 2, 1, 1)
    assert predictive_entropy(samples).item() == pytest.approx(math.log(2))
    assert expected_entropy(samples).item() == pytest.approx(0.0)
    assert mutual_information(samples).item() == pytest.approx(math.log(2))
    assert UncertaintyResult.from_samples(samples).mutual_information.item() == pytest.approx(math.log(2))


def test_mutual_information_is_non_negative_and_bounded():
    samples = random_samples(t=8, sharp=5.0)
    mi = mutual_information(samples)
    assert mi.min() >= -1e-6
    assert (mi <= predictive_entropy(samples) + 1e-6).all()
    assert (predictive_entropy(samples) <= math.log(4) + 1e-6).all()


def test_running_stats_match_the_stacked_reference():
    samples = random_samples(t=9)
    ref = UncertaintyResult.from_samples(samples)
    stats = RunningStats()
    for p in samples:
        stats.update(p)
    got = stats.result()
    assert got.samples == 9 and ref.samples == 9
    for name in ("probs", "entropy", "expected_entropy", "mutual_information", "variance", "confidence"):
        assert torch.allclose(getattr(got, name), getattr(ref, name), atol=1e-6), name
    assert torch.equal(got.mask, ref.mask)
    assert torch.allclose(got.variance, samples.var(0, unbiased=False), atol=1e-6)
    assert torch.allclose(class_variance(samples), samples.var(0, unbiased=False))
    assert torch.equal(got.confidence, max_confidence(got.probs))
    assert torch.equal(got.mask, got.probs.argmax(1))


def test_single_sample_is_the_deterministic_result():
    p = random_samples(t=1)[0]
    stats = RunningStats()
    stats.update(p)
    r = stats.result()
    assert r.samples == 1 and torch.equal(r.probs, p)
    assert torch.equal(r.mutual_information, torch.zeros_like(r.entropy))
    assert torch.equal(r.entropy, r.expected_entropy)


def test_select_and_maps():
    r = UncertaintyResult.from_samples(random_samples(n=3))
    one = r.select(1)
    assert one.probs.shape == (1, 4, 5, 7) and one.mask.shape == (1, 5, 7) and one.samples == r.samples
    assert torch.equal(one.entropy[0], r.entropy[1])
    assert set(r.maps()) == {
        "entropy",
        "expected_entropy",
        "mutual_information",
        "confidence",
        "variance",
        "probs",
    }


def test_running_stats_errors():
    with pytest.raises(SeglabError, match="no samples"):
        RunningStats().result()
    stats = RunningStats()
    stats.update(torch.full((1, 3, 2, 2), 1 / 3))
    with pytest.raises(SeglabError, match="must predict the same classes"):
        stats.update(torch.full((1, 4, 2, 2), 1 / 4))
