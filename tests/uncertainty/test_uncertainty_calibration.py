import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from seglab.uncertainty.calibration import (
    UncertaintyMeter,
    aurc,
    brier_score,
    collect_logits,
    error_detection_auroc,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
    reliability_png,
    risk_coverage_from_counts,
)
from seglab.uncertainty.functional import UncertaintyResult, entropy


def random_task(n=3, c=4, h=16, w=16, sharp=2.0, seed=0, ignore_share=0.1):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * sharp
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignore_share] = 255
    return logits, target


def flat_valid(probs, target):
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).double().numpy()
    t = target.reshape(-1).numpy()
    keep = t != 255
    return p[keep], t[keep]


def brute_ece(conf, correct, n_bins, adaptive=False):
    """Loop over bins; equal-width bin b holds [b/n, (b+1)/n) (the last also 1.0); equal-mass = array_split."""
    total, ece = len(conf), 0.0
    if adaptive:
        order = np.argsort(conf, kind="stable")
        for idx in np.array_split(order, n_bins):
            if len(idx):
                ece += abs(conf[idx].sum() - correct[idx].sum()) / total
        return ece
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= 1.0))
        if sel.any():
            ece += sel.sum() / total * abs(conf[sel].mean() - correct[sel].mean())
    return ece


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_a_brute_force_loop(n_bins):
    logits, target = random_task()
    probs = logits.softmax(1)
    p, t = flat_valid(probs, target)
    conf, correct = p.max(1), (p.argmax(1) == t).astype(float)
    for adaptive in (False, True):
        got = expected_calibration_error(probs, target, n_bins, adaptive=adaptive)
        assert got == pytest.approx(brute_ece(conf, correct, n_bins, adaptive), abs=1e-9)


def test_ece_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits, target = random_task(seed=3)
    probs = logits.softmax(1)
    p, t = flat_valid(probs, target)
    ref = multiclass_calibration_error(
        torch.from_numpy(p).float(), torch.from_numpy(t), 4, n_bins=15, norm="l1"
    )
    assert expected_calibration_error(probs, target, 15) == pytest.approx(float(ref), abs=1e-5)


def test_meter_equals_the_functions_over_batches_and_excludes_ignore_index():
    logits, target = random_task(n=4, seed=1)
    probs = logits.softmax(1)
    meter = UncertaintyMeter(4, n_bins=15)
    for i in range(4):
        meter.update(probs[i : i + 1], target[i : i + 1])
    out = meter.compute()
    p, t = flat_valid(probs, target)
    conf, correct = p.max(1), (p.argmax(1) == t).astype(float)
    assert out["pixels"] == len(t) == int((target != 255).sum())
    assert out["ece"] == pytest.approx(brute_ece(conf, correct, 15), abs=1e-9)
    assert out["ece_adaptive"] == pytest.approx(brute_ece(conf, correct, 15, adaptive=True), abs=2e-3)
    assert out["nll"] == pytest.approx(
        F.cross_entropy(logits.double(), target, ignore_index=255).item(), rel=1e-5
    )
    assert out["nll"] == pytest.approx(negative_log_likelihood(probs, target), rel=1e-9)
    onehot = np.eye(4)[t]
    assert out["brier"] == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-6)
    assert out["brier"] == pytest.approx(brier_score(probs, target), rel=1e-9)
    assert out["accuracy"] == pytest.approx(correct.mean())
    ent = entropy(probs).reshape(-1).numpy()[target.reshape(-1).numpy() != 255]
    assert out["auroc_entropy"] == pytest.approx(roc_auc_score(1 - correct, ent), abs=1e-3)
    assert out["auroc_confidence"] == pytest.approx(roc_auc_score(1 - correct, -conf), abs=1e-3)
    assert out["auroc_mutual_information"] == 0.5  # one sample: MI is 0 everywhere, a tie
    assert out["aurc_entropy"] == pytest.approx(
        aurc(torch.from_numpy(ent), torch.from_numpy(correct == 0)), abs=1e-3
    )
    # changing ignored pixels changes nothing
    meter2 = UncertaintyMeter(4, n_bins=15)
    scrambled = probs.clone()
    scrambled[:, :, target[0] == 255] = 0.25
    meter2.update(scrambled, target)
    assert meter2.compute()["pixels"] == out["pixels"]


def test_meter_handles_certain_pixels():
    """Confidence exactly 1 (saturated softmax) lands in the last bins, not the first."""
    logits, target = random_task(seed=5, sharp=40.0)
    probs = logits.softmax(1)
    assert (probs.amax(1) == 1).any() and (probs.amax(1) < 0.9).any()
    meter = UncertaintyMeter(4)
    meter.update(probs, target)
    p, t = flat_valid(probs, target)
    conf, correct = p.max(1), (p.argmax(1) == t).astype(float)
    out = meter.compute()
    assert out["ece"] == pytest.approx(brute_ece(conf, correct, 15), abs=1e-9)
    assert out["ece_adaptive"] == pytest.approx(brute_ece(conf, correct, 15, adaptive=True), abs=2e-3)


def test_reliability_data_and_png(tmp_path):
    logits, target = random_task(seed=2)
    meter = UncertaintyMeter(4, n_bins=10)
    meter.update(logits.softmax(1), target)
    rel = meter.compute()["reliability"]
    assert len(rel["edges"]) == 11 and sum(rel["count"]) == meter.compute()["pixels"]
    for c, conf, acc in zip(rel["count"], rel["confidence"], rel["accuracy"]):
        assert (c == 0) == math.isnan(conf) == math.isnan(acc)
    direct = reliability_diagram(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.5]), torch.tensor([0.0, 1.0]))
    assert direct["confidence"][1] == 0.75 and direct["accuracy"][1] == 0.5 and direct["count"] == [0, 2]
    reliability_png(tmp_path / "r.png", rel, "test")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]


def test_auroc_matches_sklearn_including_ties():
    g = torch.Generator().manual_seed(0)
    score = torch.randint(0, 20, (3000,), generator=g).float()  # many ties
    error = torch.rand(3000, generator=g) < torch.sigmoid(score / 5 - 2)
    assert error_detection_auroc(score, error) == pytest.approx(
        roc_auc_score(error.numpy(), score.numpy()), abs=1e-12
    )
    cont = torch.rand(3000, generator=g)
    assert error_detection_auroc(cont, error) == pytest.approx(
        roc_auc_score(error.numpy(), cont.numpy()), abs=1e-12
    )
    assert math.isnan(error_detection_auroc(cont, torch.zeros(3000, dtype=torch.bool)))


def test_aurc_matches_a_direct_sort():
    g = torch.Generator().manual_seed(1)
    score = torch.rand(5000, generator=g, dtype=torch.float64)
    error = torch.rand(5000, generator=g, dtype=torch.float64) < score
    order = np.argsort(score.numpy(), kind="stable")  # most certain first
    risk = np.cumsum(error.numpy()[order]) / np.arange(1, 5001)
    assert aurc(score, error) == pytest.approx(risk.mean(), rel=1e-10)
    # ties: the closed form is the mean over random tie orders
    tied = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    err = torch.tensor([False, True, False, True, True])
    orders = [[1, 0], [0, 1]]
    sims = []
    for first in orders:
        for perm in ([2, 3, 4], [3, 2, 4], [3, 4, 2], [4, 3, 2], [2, 4, 3], [4, 2, 3]):
            e = err[first + perm].numpy()
            sims.append((np.cumsum(e) / np.arange(1, 6)).mean())
    assert aurc(tied, err) == pytest.approx(np.mean(sims), rel=1e-12)


def test_risk_coverage_curve_has_the_aurc_as_its_area():
    from seglab.uncertainty.calibration import _grouped

    def area(coverage, risk):
        return float((risk * torch.diff(coverage, prepend=torch.zeros(1, dtype=coverage.dtype))).sum())

    # worked example: most certain first the pixels are right, wrong, right, wrong
    score = torch.tensor([0.3, 0.1, 0.4, 0.2])
    error = torch.tensor([False, False, True, True])
    coverage, risk = risk_coverage_from_counts(*_grouped(score, error))
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0, 1 / 2, 1 / 3, 2 / 4], abs=1e-15)
    assert area(coverage, risk) == pytest.approx(aurc(score, error), abs=1e-15)
    assert aurc(score, error) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4, abs=1e-15)
    # distinct random scores: the step area is the AURC
    g = torch.Generator().manual_seed(3)
    score = torch.rand(4000, generator=g, dtype=torch.float64)
    error = torch.rand(4000, generator=g, dtype=torch.float64) < score
    curve = risk_coverage_from_counts(*_grouped(score, error))
    assert area(*curve) == pytest.approx(aurc(score, error), rel=1e-12)
    # the meter's histogram: nearly the AURC of its own counts; thinned, it still ends at the error rate
    logits, target = random_task(n=4, seed=2)
    meter = UncertaintyMeter(4)
    meter.update(logits.softmax(1), target)
    out = meter.compute()
    full = meter.risk_coverage(points=10**9)
    exact = torch.tensor(full["coverage"]), torch.tensor(full["risk"])
    assert area(*exact) == pytest.approx(out["aurc_entropy"], abs=5e-4)
    thin = out["risk_coverage_entropy"]
    assert len(thin["coverage"]) <= 100 < len(full["coverage"])
    assert thin["coverage"][-1] == 1.0 and thin["risk"][-1] == pytest.approx(1 - out["accuracy"], abs=1e-12)
    assert set(thin["coverage"]) <= set(full["coverage"])
    empty = risk_coverage_from_counts(torch.zeros(5), torch.zeros(5))
    assert len(empty[0]) == len(empty[1]) == 0


def calibrated_task(scale, n=4, c=3, hw=24, seed=0):
    """Targets sampled from softmax(z): logits z are calibrated by construction, scale * z over-confident."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, hw, hw, generator=g) * 1.5
    probs = z.softmax(1).permute(0, 2, 3, 1).reshape(-1, c)
    target = torch.multinomial(probs, 1, generator=g).reshape(n, hw, hw)
    target[:, 0] = 255
    return z * scale, target


def test_temperature_scaling_undoes_over_confidence():
    logits, target = calibrated_task(scale=5.0)
    t = fit_temperature(logits, target)
    assert 4.0 < t < 6.0
    before, after = logits.softmax(1), (logits / t).softmax(1)
    assert negative_log_likelihood(after, target) < negative_log_likelihood(before, target)
    assert expected_calibration_error(after, target) < expected_calibration_error(before, target) / 3
    # a calibrated model needs no temperature
    assert fit_temperature(*calibrated_task(scale=1.0)) == pytest.approx(1.0, abs=0.15)


class Scaled(torch.nn.Module):
    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def test_fit_temperature_on_an_over_confident_model():
    from seglab import create_model

    torch.manual_seed(0)
    net = create_model("unet", num_classes=3, depth=2, base_channels=4, dropout=0.2).eval()
    images = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        raw = net(images)
    calibrated = Scaled(net, 2.0 / raw.std().item())  # logits of std 2, the targets follow them
    with torch.no_grad():
        probs = calibrated(images).softmax(1)
    g = torch.Generator().manual_seed(0)
    target = torch.multinomial(probs.permute(0, 2, 3, 1).reshape(-1, 3), 1, generator=g).reshape(6, 16, 16)
    over = Scaled(calibrated, 5.0)
    batches = [(images[i : i + 2], target[i : i + 2]) for i in range(0, 6, 2)]
    logits, labels = collect_logits(over, batches)
    assert logits.shape == (6 * 16 * 16, 3) and over.training and not net.training  # modes restored
    t = fit_temperature(logits, labels)
    assert t > 1 and t == pytest.approx(5.0, rel=0.25)
    with torch.no_grad():
        before, after = over(images).softmax(1), (over(images) / t).softmax(1)
    assert negative_log_likelihood(after, target) < negative_log_likelihood(before, target)
    assert expected_calibration_error(after, target) < expected_calibration_error(before, target)
    # a capped collection is a uniform subset of the valid pixels
    sub, sub_labels = collect_logits(over, batches, max_pixels=500)
    assert sub.shape == (500, 3) and len(sub_labels) == 500


def test_meter_takes_results_with_mutual_information():
    g = torch.Generator().manual_seed(4)
    samples = (torch.randn(5, 2, 3, 8, 8, generator=g) * 3).softmax(2)
    r = UncertaintyResult.from_samples(samples)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    meter = UncertaintyMeter(3)
    meter.update(r, target)
    out = meter.compute()
    err = (r.mask != target).reshape(-1).numpy()
    mi = r.mutual_information.reshape(-1).numpy()
    assert out["auroc_mutual_information"] == pytest.approx(roc_auc_score(err, mi), abs=2e-3)
    assert out["mean_mutual_information"] == pytest.approx(float(mi.mean()), rel=1e-5)
