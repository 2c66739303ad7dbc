"""Label-efficiency metrics of a budget curve (METHODS.md section 7; Mittal et al., appendix C).

A budget curve is a list of points ``(b_i, p_i)``: ``b`` the percentage of the pool that is
labeled, ``p`` a metric (AP, AP50 ...) of the model trained on that many labels.

* ``AUC@B = sum_i (b_{i+1} - b_i) * (p_i + p_{i+1}) / 2`` over the points with ``b <= B`` (the
  curve is cut at ``B`` by linear interpolation when ``B`` falls between two points);
* ``metric@B`` -- the metric once ``B`` % is labeled (linear interpolation between points);
* labels-to-reach -- the fewest labeled images at which the curve reaches a target metric.

All are NaN outside the measured range (never extrapolated). :func:`paired_bootstrap` gives the
interval that decides whether a claim such as "A beats B" holds: only when it excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _curve(budgets: Sequence[float], metrics: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(budgets, dtype=np.float64)
    p = np.asarray(metrics, dtype=np.float64)
    if b.shape != p.shape or b.ndim != 1:
        raise ValueError(f"budget curve: budgets {b.shape} and metrics {p.shape} must be 1-D and equal length")
    if len(b) and np.any(np.diff(b) <= 0):
        raise ValueError(f"budget curve: budgets must be strictly increasing, got {b.tolist()}")
    return b, p


def metric_at(budgets: Sequence[float], metrics: Sequence[float], at: float) -> float:
    """The metric once ``at`` % of the pool is labeled (linear interpolation; NaN outside)."""
    b, p = _curve(budgets, metrics)
    if not len(b) or at < b[0] - 1e-9 or at > b[-1] + 1e-9:
        return float("nan")
    return float(np.interp(at, b, p))


def auc_at(budgets: Sequence[float], metrics: Sequence[float], upto: float | None = None) -> float:
    """Trapezoidal area under the budget curve from its first point up to ``upto`` % labeled.

    ``upto=None`` integrates over the whole curve. NaN when ``upto`` is beyond the last point
    or before the first. Units: metric x percentage points.
    """
    b, p = _curve(budgets, metrics)
    if not len(b):
        return float("nan")
    if upto is None:
        upto = float(b[-1])
    if upto < b[0] - 1e-9 or upto > b[-1] + 1e-9:
        return float("nan")
    keep = b < upto - 1e-9
    xs = np.append(b[keep], upto)
    ys = np.append(p[keep], np.interp(upto, b, p))
    return float(np.sum(np.diff(xs) * (ys[:-1] + ys[1:]) / 2.0))


def labels_to_reach(labels: Sequence[int], metrics: Sequence[float], target: float) -> float:
    """Fewest labeled images at which the curve reaches ``target`` (linear interpolation between
    cycles; NaN when it never does)."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(metrics, dtype=np.float64)
    for i in range(len(y)):
        if y[i] >= target:
            if i == 0 or y[i] == y[i - 1]:
                return float(x[i])
            frac = (target - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + frac * (x[i] - x[i - 1]))
    return float("nan")


def paired_bootstrap(differences: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean paired difference and its percentile bootstrap interval.

    ``differences`` holds one value per pairing unit (seed), e.g. AUC(A) - AUC(B) on the same
    initial set. NaNs are dropped; with no values all three are NaN, with one the interval is
    that value (no spread can be estimated: such a claim should not be called settled).
    """
    d = np.asarray([x for x in differences if x is not None and not math.isnan(x)], dtype=np.float64)
    if not len(d):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(d.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


#: fewest pairing units (seeds) before an interval may settle a claim: a bootstrap over 3 seeds has
#: 10 distinct resamples and is far too narrow to trust
MIN_PAIRS = 5


def verdict(low: float, high: float, pairs: int | None = None) -> str:
    """``holds`` when the interval is above zero, ``reversed`` when below, else ``undecided``.

    With fewer than :data:`MIN_PAIRS` pairs the verdict is ``too few seeds`` whatever the
    interval says.
    """
    if pairs is not None and pairs < MIN_PAIRS:
        return f"too few seeds ({pairs} < {MIN_PAIRS})"
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    return "holds" if low > 0 else "reversed" if high < 0 else "undecided"
