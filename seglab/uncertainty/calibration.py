"""Calibration and the quality of uncertainty: ECE, reliability data, NLL, Brier, error-detection AUROC and AURC,
and temperature scaling.

Every score is computed on all valid pixels (``target != ignore_index``), never on a subsample. The pure
functions take tensors; :class:`UncertaintyMeter` streams batches into histograms (bin counts and sums), so a
whole data set is scored exactly for equal-width ECE, NLL and Brier, and to the resolution of a fine
histogram for adaptive ECE, AUROC and AURC (ties within one fine bin count as ties).

Conventions: equal-width bin ``b`` of ``n_bins`` holds confidences in ``[b / n_bins, (b + 1) / n_bins)`` (the
last bin also holds 1.0). Adaptive (equal-mass) bins sort the pixels by confidence and split them into
``n_bins`` runs whose sizes differ by at most one (``numpy.array_split``). ECE is
``sum_b |sum_conf_b - sum_correct_b| / P``. Brier is the multi-class score ``sum_c (p_c - y_c)^2`` averaged
over pixels (0 is perfect, 2 the worst). For error detection the positive class is a misclassified pixel and
the score is an uncertainty (higher = less sure); AURC is the area under the risk-coverage curve when pixels
are accepted from the most to the least certain (lower is better), with ties taken in random order (the
expectation is computed in closed form).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seglab.errors import SeglabError
from seglab.uncertainty.functional import UncertaintyResult, entropy

# ---------------------------------------------------------------------------------------------- pixels


def valid_pixels(probs: Tensor, target: Tensor, ignore_index: int | None = 255) -> tuple[Tensor, Tensor]:
    """``probs`` (N, C, H, W) and ``target`` (N, H, W) -> (P, C) probabilities and (P,) labels of valid pixels."""
    if probs.dim() != target.dim() + 1 or probs.shape[:1] + probs.shape[2:] != target.shape:
        raise SeglabError(
            f"probabilities {tuple(probs.shape)} do not fit targets {tuple(target.shape)}; "
            "expected (N, C, H, W) and (N, H, W)"
        )
    flat = probs.movedim(1, -1).reshape(-1, probs.shape[1])
    labels = target.reshape(-1).long()
    if ignore_index is not None:
        keep = labels != ignore_index
        flat, labels = flat[keep], labels[keep]
    return flat, labels


# ------------------------------------------------------------------------------------------ calibration


def calibration_bins(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Equal-width histogram: per bin the pixel count, the sum of confidences and the number correct (float64)."""
    idx = (confidence.double() * n_bins).floor().long().clamp_(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    sum_conf = torch.bincount(idx, weights=confidence.double(), minlength=n_bins)
    sum_correct = torch.bincount(idx, weights=correct.double(), minlength=n_bins)
    return count, sum_conf, sum_correct


def adaptive_bins(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Equal-mass bins: sort by confidence, split into ``n_bins`` runs of (nearly) equal size; as :func:`calibration_bins`."""
    order = confidence.argsort(stable=True)
    conf, corr = confidence.double()[order], correct.double()[order]
    parts = [(len(c), c.sum(), k.sum()) for c, k in zip(conf.tensor_split(n_bins), corr.tensor_split(n_bins))]
    return tuple(torch.tensor([p[i] for p in parts], dtype=torch.float64) for i in range(3))  # type: ignore[return-value]


def ece_from_bins(count: Tensor, sum_conf: Tensor, sum_correct: Tensor) -> float:
    """``sum_b |sum_conf_b - sum_correct_b| / P`` (NaN without pixels)."""
    total = float(count.sum())
    return float((sum_conf - sum_correct).abs().sum()) / total if total > 0 else math.nan


def expected_calibration_error(
    probs: Tensor, target: Tensor, n_bins: int = 15, ignore_index: int | None = 255, adaptive: bool = False
) -> float:
    """ECE of the max-probability confidence over all valid pixels, equal-width or (``adaptive``) equal-mass bins."""
    flat, labels = valid_pixels(probs, target, ignore_index)
    conf, pred = flat.max(1)
    bins = adaptive_bins if adaptive else calibration_bins
    return ece_from_bins(*bins(conf, pred == labels, n_bins))


def reliability_diagram(count: Tensor, sum_conf: Tensor, sum_correct: Tensor) -> dict[str, list[float]]:
    """Reliability-diagram data of equal-width bins: edges, count, mean confidence and accuracy (NaN if empty)."""
    n = len(count)
    safe = count.clamp_min(1)
    empty = count == 0
    conf = torch.where(empty, math.nan, sum_conf / safe)
    acc = torch.where(empty, math.nan, sum_correct / safe)
    return {
        "edges": [i / n for i in range(n + 1)],
        "count": [int(c) for c in count],
        "confidence": [float(v) for v in conf],
        "accuracy": [float(v) for v in acc],
    }


def negative_log_likelihood(probs: Tensor, target: Tensor, ignore_index: int | None = 255) -> float:
    """Mean ``-log p[target]`` over valid pixels (probabilities floored at the dtype's smallest normal)."""
    flat, labels = valid_pixels(probs, target, ignore_index)
    return float(_nll_terms(flat, labels).mean()) if len(labels) else math.nan


def brier_score(probs: Tensor, target: Tensor, ignore_index: int | None = 255) -> float:
    """Mean over valid pixels of ``sum_c (p_c - onehot_c)^2``."""
    flat, labels = valid_pixels(probs, target, ignore_index)
    return float(_brier_terms(flat, labels).mean()) if len(labels) else math.nan


def _nll_terms(flat: Tensor, labels: Tensor) -> Tensor:
    p = flat.gather(1, labels[:, None])[:, 0].double()
    return -p.clamp_min(torch.finfo(flat.dtype).tiny).log()


def _brier_terms(flat: Tensor, labels: Tensor) -> Tensor:
    f = flat.double()
    return (f * f).sum(1) - 2 * f.gather(1, labels[:, None])[:, 0] + 1


# -------------------------------------------------------------------------------------- error detection


def _grouped(score: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    """Errors and non-errors per distinct score value, in ascending score order."""
    _, inverse = torch.unique(score, return_inverse=True)
    n = int(inverse.max()) + 1 if inverse.numel() else 0
    err = torch.bincount(inverse, weights=error.double(), minlength=n)
    ok = torch.bincount(inverse, weights=(~error.bool()).double(), minlength=n)
    return err, ok


def auroc_from_counts(err: Tensor, ok: Tensor) -> float:
    """AUROC from per-group counts ordered by ascending score: ``P(score_err > score_ok) + P(tie) / 2``."""
    err, ok = err.double(), ok.double()
    n_err, n_ok = float(err.sum()), float(ok.sum())
    if n_err == 0 or n_ok == 0:
        return math.nan
    ok_below = torch.cumsum(ok, 0) - ok
    return float((err * (ok_below + 0.5 * ok)).sum()) / (n_err * n_ok)


def aurc_from_counts(err: Tensor, ok: Tensor) -> float:
    """Area under the risk-coverage curve from per-group counts ordered by ascending uncertainty.

    Pixels are accepted most certain first; the selective risk after k pixels is (errors among them) / k, and
    AURC is its mean over k = 1..P. Within a group of tied scores the errors are spread evenly (the expectation
    over random tie order): ``sum_{j=1..n} (E + e j / n) / (K + j) = e + (E - e K / n) (psi(K + n + 1) - psi(K + 1))``.
    """
    err, ok = err.double(), ok.double()
    n = err + ok
    keep = n > 0
    err, n = err[keep], n[keep]
    total = float(n.sum())
    if total == 0:
        return math.nan
    k_before = torch.cumsum(n, 0) - n
    e_before = torch.cumsum(err, 0) - err
    rate = err / n
    harmonic = torch.special.digamma(k_before + n + 1) - torch.special.digamma(k_before + 1)
    return float((err + (e_before - rate * k_before) * harmonic).sum()) / total


def risk_coverage_from_counts(err: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """The risk-coverage curve of the counts AURC is computed from (per group, ascending uncertainty): pixels are
    accepted most certain first, a group of tied scores at once; (coverage, selective risk) after each non-empty
    group, float64. Its step area ``sum(risk * diff(coverage, prepend=0))`` is :func:`aurc_from_counts` when no
    scores tie (that spreads a tied group's errors evenly within it; a plot needs only the group ends)."""
    err, ok = err.double(), ok.double()
    n = err + ok
    keep = n > 0
    accepted = torch.cumsum(n[keep], 0)
    total = accepted[-1] if len(accepted) else accepted.new_ones(())
    return accepted / total, torch.cumsum(err[keep], 0) / accepted


def error_detection_auroc(score: Tensor, error: Tensor) -> float:
    """AUROC of ``score`` (uncertainty, higher = less sure) for predicting ``error`` (bool), ties counted as 1/2."""
    return auroc_from_counts(*_grouped(score.reshape(-1), error.reshape(-1)))


def aurc(score: Tensor, error: Tensor) -> float:
    """Area under the risk-coverage curve of ``score`` (uncertainty) and ``error`` (bool); lower is better."""
    return aurc_from_counts(*_grouped(score.reshape(-1), error.reshape(-1)))


# ------------------------------------------------------------------------------------- streaming meter

SCORES = ("entropy", "mutual_information", "confidence")  # error-detection scores ("confidence": 1 - max p)


def _log_bins(score: Tensor, n_bins: int, high: float, low: float = 1e-10) -> Tensor:
    """Fine bins uniform in log(score) over [low, high]; scores <= low go to bin 0 (ranking needs only order)."""
    lo, hi = math.log(low), math.log(high)
    t = (score.double().clamp_min(low).log() - lo) / (hi - lo)
    return (t * n_bins).floor().long().clamp_(0, n_bins - 1)


class UncertaintyMeter:
    """Accumulates calibration and error-detection statistics over batches; ``compute()`` returns the scores.

    ``update(result, target)`` takes an :class:`UncertaintyResult` (or probabilities ``(N, C, H, W)``) and
    targets ``(N, H, W)``. State: an ``n_bins`` equal-width calibration histogram (exact ECE and reliability
    data), a ``fine_bins`` histogram in ``-log(1 - confidence)`` for adaptive ECE, ``score_bins`` log-spaced
    histograms of each uncertainty score split by error/correct for AUROC and AURC, and sums for NLL and Brier.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        n_bins: int = 15,
        fine_bins: int = 8192,
        score_bins: int = 8192,
    ) -> None:
        if num_classes < 2:
            raise SeglabError(f"uncertainty needs at least 2 classes, got num_classes={num_classes}")
        if n_bins < 1:
            raise SeglabError(f"the number of calibration bins must be >= 1, got {n_bins}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.n_bins, self.fine_bins, self.score_bins = n_bins, fine_bins, score_bins
        self.fine_high = -math.log(2**-24)  # float32 confidences closer to 1 than 2^-24 round to 1
        self.log_c = math.log(num_classes)
        z = torch.zeros
        self.bins = z(3, n_bins, dtype=torch.float64)
        self.fine = z(3, fine_bins, dtype=torch.float64)
        self.scores = {name: z(2, score_bins, dtype=torch.float64) for name in SCORES}  # rows: error, correct
        self.sums = z(4, dtype=torch.float64)  # pixels, errors, sum of NLL, sum of Brier
        self.mean_maps = {name: 0.0 for name in ("entropy", "expected_entropy", "mutual_information")}

    def _score_high(self, name: str) -> float:
        return 1.0 if name == "confidence" else self.log_c * (1 + 1e-6)

    def update(self, result: UncertaintyResult | Tensor, target: Tensor) -> None:
        if isinstance(result, Tensor):
            probs = result
            total = entropy(probs)
            maps = {
                "entropy": total,
                "expected_entropy": total,
                "mutual_information": torch.zeros_like(total),
            }
        else:
            probs = result.probs
            maps = {name: getattr(result, name) for name in self.mean_maps}
        target = target.to(probs.device)
        flat, labels = valid_pixels(probs, target, self.ignore_index)
        if len(labels) == 0:
            return
        bad = (labels < 0) | (labels >= probs.shape[1])
        if bad.any():
            raise SeglabError(
                f"target holds label {int(labels[bad][0])} but the model predicts {probs.shape[1]} classes; "
                "set ignore_index or check the data"
            )
        keep = target.reshape(-1) != self.ignore_index if self.ignore_index is not None else None
        conf, pred = flat.max(1)
        error = pred != labels
        dev = self.bins.device
        self.bins += torch.stack(calibration_bins(conf, ~error, self.n_bins)).to(dev)
        u = (-torch.log1p(-conf.double().clamp(max=1.0))).clamp_(max=self.fine_high)  # conf = 1: +inf
        fidx = (u / self.fine_high * self.fine_bins).floor().long().clamp_(0, self.fine_bins - 1)
        for row, w in enumerate((None, conf.double(), (~error).double())):
            self.fine[row] += torch.bincount(fidx, weights=w, minlength=self.fine_bins).double().to(dev)
        for name in SCORES:
            s = 1 - conf if name == "confidence" else maps[name].reshape(-1)
            if keep is not None and name != "confidence":
                s = s[keep]
            idx = _log_bins(s, self.score_bins, self._score_high(name))
            for row, w in enumerate((error.double(), (~error).double())):
                self.scores[name][row] += torch.bincount(idx, weights=w, minlength=self.score_bins).to(dev)
        n = len(labels)
        self.sums += torch.tensor(
            [
                n,
                float(error.sum()),
                float(_nll_terms(flat, labels).sum()),
                float(_brier_terms(flat, labels).sum()),
            ],
            dtype=torch.float64,
        )
        for name in self.mean_maps:
            m = maps[name].reshape(-1)
            self.mean_maps[name] += float((m[keep] if keep is not None else m).double().sum())

    def all_reduce(self, group: Any = None) -> None:
        """Sum the histograms and sums over all processes of ``torch.distributed`` (no-op when not initialised)."""
        from seglab.metrics.meter import all_reduce_sum

        maps = torch.tensor(list(self.mean_maps.values()), dtype=torch.float64)
        for t in (self.bins, self.fine, self.sums, maps, *self.scores.values()):
            all_reduce_sum(t, group)
        self.mean_maps = dict(zip(self.mean_maps, maps.tolist()))

    def risk_coverage(self, name: str = "entropy", points: int = 100) -> dict[str, Any]:
        """The risk-coverage curve of score ``name`` (:func:`risk_coverage_from_counts` of its histogram), thinned to
        the first group end at or past each of ``points`` equal coverage steps: small enough for JSON and plots."""
        coverage, risk = risk_coverage_from_counts(*self.scores[name].cpu())
        if len(coverage) > points:
            steps = torch.linspace(0, 1, points + 1, dtype=torch.float64)[1:]
            keep = torch.searchsorted(coverage, steps).clamp_(max=len(coverage) - 1).unique()
            coverage, risk = coverage[keep], risk[keep]
        return {"coverage": coverage.tolist(), "risk": risk.tolist()}

    def adaptive_ece(self) -> float:
        """Equal-mass ECE from the fine histogram: each fine bin joins the equal-mass run holding its middle pixel."""
        count, sum_conf, sum_correct = self.fine
        total = float(count.sum())
        if total == 0:
            return math.nan
        middle = torch.cumsum(count, 0) - count / 2
        group = (middle * self.n_bins / total).floor().long().clamp_(0, self.n_bins - 1)
        merged = torch.zeros(3, self.n_bins, dtype=torch.float64).index_add_(1, group, self.fine)
        return ece_from_bins(*merged)

    def compute(self) -> dict[str, Any]:
        pixels, errors, nll, brier = (float(v) for v in self.sums)
        p = max(pixels, 1.0)
        out: dict[str, Any] = {
            "pixels": int(pixels),
            "ece": ece_from_bins(*self.bins),
            "ece_adaptive": self.adaptive_ece(),
            "nll": nll / p if pixels else math.nan,
            "brier": brier / p if pixels else math.nan,
            "accuracy": 1 - errors / p if pixels else math.nan,
            "mean_confidence": float(self.bins[1].sum()) / p if pixels else math.nan,
            **{f"mean_{k}": v / p if pixels else math.nan for k, v in self.mean_maps.items()},
        }
        for name in SCORES:
            err, ok = self.scores[name]
            out[f"auroc_{name}"] = auroc_from_counts(err, ok)
            out[f"aurc_{name}"] = aurc_from_counts(err, ok)
        out["reliability"] = reliability_diagram(*self.bins)
        out["risk_coverage_entropy"] = self.risk_coverage("entropy")
        return out


# --------------------------------------------------------------------------------- temperature scaling


def fit_temperature(
    logits: Tensor, target: Tensor, ignore_index: int | None = 255, max_iter: int = 100
) -> float:
    """The temperature T > 0 minimising the mean NLL of ``softmax(logits / T)`` over valid pixels (LBFGS on log T).

    ``logits`` (N, C, H, W) with ``target`` (N, H, W), or already flattened (P, C) with (P,).
    """
    if logits.dim() == 2:
        z, y = logits, target.reshape(-1).long()
        if ignore_index is not None:
            z, y = z[y != ignore_index], y[y != ignore_index]
    else:
        z, y = valid_pixels(logits, target, ignore_index)
    if len(y) == 0:
        raise SeglabError("no valid pixels to fit the temperature on (all targets are ignore_index)")
    with torch.inference_mode(False), torch.enable_grad():
        z, y = z.detach().clone().double(), y.clone()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        opt.step(closure)
        t = float(log_t.detach().exp())
    if not math.isfinite(t) or t <= 0:
        raise SeglabError(f"temperature fitting diverged (T={t}); check the validation data and the model")
    return t


@torch.inference_mode()
def collect_logits(
    model: torch.nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device | str = "cpu",
    ignore_index: int | None = 255,
    max_pixels: int | None = 4_000_000,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Logits (P, C) and labels (P,) of the valid pixels of ``batches`` of (images, masks), on the CPU, in eval mode
    (every module's mode is restored afterwards).

    With more than ``max_pixels`` valid pixels a uniform random subset of that size is kept (reservoir sampling
    with seeded random keys), so memory stays bounded on large validation sets; None keeps all.
    """
    from seglab.uncertainty.predictors import eval_mode

    gen = torch.Generator().manual_seed(seed)
    zs, ys, keys = [], [], []
    with eval_mode(model):
        for images, masks in batches:
            z, y = valid_pixels(model(images.to(device)).float().cpu(), masks.cpu(), ignore_index)
            zs.append(z)
            ys.append(y)
            if max_pixels is not None:
                keys.append(torch.rand(len(y), generator=gen))
                if sum(len(k) for k in keys) > max_pixels:
                    k = torch.cat(keys)
                    top = k.topk(max_pixels).indices
                    zs, ys, keys = [torch.cat(zs)[top]], [torch.cat(ys)[top]], [k[top]]
    if not ys:
        raise SeglabError("no batches to collect logits from; the data split is empty")
    return torch.cat(zs), torch.cat(ys)


def temperature_report(
    logits: Tensor, labels: Tensor, temperature: float, n_bins: int = 15
) -> dict[str, float]:
    """NLL and ECE of flat logits (P, C) / labels (P,) before (T = 1) and after dividing by ``temperature``."""
    out: dict[str, float] = {}
    for key, t in (("before", 1.0), ("after", temperature)):
        probs = (logits.double() / t).softmax(1)
        out[f"nll_{key}"] = float(_nll_terms(probs, labels).mean())
        conf, pred = probs.max(1)
        out[f"ece_{key}"] = ece_from_bins(*calibration_bins(conf, pred == labels, n_bins))
    return out


# --------------------------------------------------------------------------------- reliability diagram


def reliability_figure(reliability: dict[str, list[float]], title: str = "") -> Any:
    """A reliability diagram (accuracy per confidence bin against the diagonal, pixel share below) as a matplotlib
    Figure (Agg, no display needed)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges = np.asarray(reliability["edges"])
    width = np.diff(edges)
    acc = np.nan_to_num(np.asarray(reliability["accuracy"], dtype=float))
    conf = np.asarray(reliability["confidence"], dtype=float)
    count = np.asarray(reliability["count"], dtype=float)
    fig = Figure(figsize=(4.5, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1], acc, width=width, align="edge", color="#4878d0", edgecolor="white", label="accuracy")
    gap_lo = np.minimum(acc, np.nan_to_num(conf))
    top.bar(
        edges[:-1],
        np.abs(np.nan_to_num(conf) - acc),
        bottom=gap_lo,
        width=width,
        align="edge",
        color="#ee854a",
        alpha=0.5,
        edgecolor="none",
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title or "reliability diagram")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(edges[:-1], count / max(count.sum(), 1), width=width, align="edge", color="#6acc64")
    bottom.set(xlabel="confidence (max probability)", ylabel="pixel share", yscale="log")
    fig.tight_layout()
    return fig


def reliability_png(path: Any, reliability: dict[str, list[float]], title: str = "") -> None:
    """Write the reliability diagram of :func:`reliability_figure` as PNG (atomically)."""
    from pathlib import Path

    from seglab.files import atomic_write

    fig = reliability_figure(reliability, title)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
