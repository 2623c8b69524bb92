"""Uncertainty and significance for comparing models: bootstrap confidence intervals and paired tests.

* :func:`bootstrap_ci`: percentile bootstrap over utterances of a metric
  (``uar``, ``accuracy``, ``macro_f1`` or any callable ``metric(y_true, y_pred)``).
* :func:`paired_bootstrap_diff`: the same, for the difference of one metric
  between two systems scored on the same utterances (resampled together).
* :func:`paired_test`: two paired tests on matched scores (e.g. per fold x seed
  UARs of two variants): Wilcoxon signed-rank and an exact / Monte-Carlo
  sign-flip permutation test on the mean difference.

The built-in metrics match :func:`moma.evaluation.metrics.compute_metrics`: UAR and
macro-F1 average over the classes present in ``y_true`` (of the resample).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]
METRICS = ("uar", "accuracy", "macro_f1")
EXACT_PERMUTATION_MAX_N = 16  # up to 2**16 sign patterns are enumerated exactly; beyond, Monte Carlo


def mean_std(values: Any) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the finite values, and their count.

    ``None`` and non-finite values are skipped (a fold or cell that produced no figure does not drag the
    mean to NaN). With no finite value, ``mean`` and ``std`` are ``None``: valid JSON, and every report
    renders it as "–". This is the one definition behind fold summaries, experiment cells and
    attention statistics.
    """
    items = np.ravel(values).tolist() if isinstance(values, np.ndarray) else list(values)
    v = np.asarray([float(x) for x in items if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


class CI(NamedTuple):
    """A point estimate with a ``level`` (e.g. 0.95) percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 0

    def to_dict(self) -> dict[str, float]:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in self._asdict().items()}


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices (rows true) of each resample: ``idx`` is (B, N) indices -> (B, k, k)."""
    b = idx.shape[0]
    codes = (np.arange(b)[:, None] * k * k + y_true[idx] * k + y_pred[idx]).ravel()
    return np.bincount(codes, minlength=b * k * k).reshape(b, k, k).astype(np.float64)


def _metric_from_confusions(cm: np.ndarray, name: str) -> np.ndarray:
    """Vectorised accuracy / UAR / macro-F1 over a stack of confusion matrices (classes absent from truth skipped)."""
    diag = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    total = support.sum(axis=1)
    if name == "accuracy":
        return diag.sum(axis=1) / total
    present = support > 0
    n_present = present.sum(axis=1)
    recall = np.divide(diag, support, out=np.zeros_like(diag), where=present)
    if name == "uar":
        return recall.sum(axis=1) / n_present
    if name == "macro_f1":
        predicted = cm.sum(axis=1)
        precision = np.divide(diag, predicted, out=np.zeros_like(diag), where=predicted > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(diag), where=denom > 0)
        return np.where(present, f1, 0.0).sum(axis=1) / n_present
    raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)} or pass a callable")


def _as_labels(y_true: Sequence[Any], y_pred: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer-code any hashable labels (strings included) consistently across both sequences."""
    yt, yp = list(y_true), list(y_pred)
    if len(yt) != len(yp):
        raise ValueError(f"y_true and y_pred differ in length ({len(yt)} vs {len(yp)})")
    if not yt:
        raise ValueError("no predictions to score")
    classes = {c: i for i, c in enumerate(sorted(set(yt) | set(yp), key=str))}
    return (np.array([classes[c] for c in yt], dtype=np.int64), np.array([classes[c] for c in yp], dtype=np.int64),
            len(classes))


def metric_value(y_true: Sequence[Any], y_pred: Sequence[Any], metric: str | Metric = "uar") -> float:
    """One metric on one set of predictions (same definitions the bootstrap uses)."""
    yt, yp, k = _as_labels(y_true, y_pred)
    if callable(metric):
        return float(metric(yt, yp))
    return float(_metric_from_confusions(_confusions(yt, yp, np.arange(yt.size)[None, :], k), metric)[0])


def _resample_values(yt: np.ndarray, yp: np.ndarray, k: int, idx: np.ndarray, metric: str | Metric) -> np.ndarray:
    if callable(metric):
        return np.array([float(metric(yt[i], yp[i])) for i in idx])
    out = np.empty(idx.shape[0])
    step = max(1, 2_000_000 // max(1, idx.shape[1]))  # bound the (B, N) bincount's memory
    for s in range(0, idx.shape[0], step):
        out[s:s + step] = _metric_from_confusions(_confusions(yt, yp, idx[s:s + step], k), metric)
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _check(n: int, level: float) -> None:
    if n < 1:
        raise ValueError(f"n (bootstrap resamples) must be >= 1, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_ci(y_true: Sequence[Any], y_pred: Sequence[Any], metric: str | Metric = "uar", n: int = 1000,
                 seed: int = 0, level: float = 0.95) -> CI:
    """Percentile bootstrap CI of ``metric`` over utterances (resampled with replacement, ``n`` times).

    The point estimate is the metric on the data as given. A perfect
    classifier gives ``CI(1, 1, 1)``; the interval narrows roughly as
    ``1/sqrt(len(y_true))``.
    """
    _check(n, level)
    yt, yp, k = _as_labels(y_true, y_pred)
    estimate = metric_value(yt, yp, metric)
    idx = np.random.default_rng(seed).integers(0, yt.size, size=(n, yt.size))
    lo, hi = _interval(_resample_values(yt, yp, k, idx, metric), level)
    return CI(estimate, min(lo, estimate), max(hi, estimate), level, n)


def paired_bootstrap_diff(y_true: Sequence[Any], pred_a: Sequence[Any], pred_b: Sequence[Any],
                          metric: str | Metric = "uar", n: int = 1000, seed: int = 0, level: float = 0.95) -> CI:
    """Bootstrap CI of ``metric(a) - metric(b)``: both systems are scored on the same resampled utterances."""
    _check(n, level)
    if not (len(y_true) == len(pred_a) == len(pred_b)):
        raise ValueError("y_true, pred_a and pred_b must have the same length")
    if not len(y_true):
        raise ValueError("no predictions to score")
    # code both prediction sequences with one shared mapping
    classes = {c: i for i, c in enumerate(sorted(set(y_true) | set(pred_a) | set(pred_b), key=str))}
    yt = np.array([classes[c] for c in y_true], dtype=np.int64)
    ya = np.array([classes[c] for c in pred_a], dtype=np.int64)
    yb = np.array([classes[c] for c in pred_b], dtype=np.int64)
    k = len(classes)
    estimate = metric_value(yt, ya, metric) - metric_value(yt, yb, metric)
    idx = np.random.default_rng(seed).integers(0, yt.size, size=(n, yt.size))
    diffs = _resample_values(yt, ya, k, idx, metric) - _resample_values(yt, yb, k, idx, metric)
    lo, hi = _interval(diffs, level)
    return CI(estimate, min(lo, estimate), max(hi, estimate), level, n)


def sign_flip_test(diffs: Sequence[float], n_perm: int = 20000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided paired permutation test of mean(diffs) = 0 by random sign flips.

    Exact (all ``2**n`` sign patterns) for ``n <= 16``, otherwise ``n_perm``
    Monte-Carlo patterns with the ``(count + 1) / (n_perm + 1)`` correction.
    Returns ``(p, exact)``.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return math.nan, True
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= EXACT_PERMUTATION_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        stats = np.abs(signs @ d) / d.size
        return float(np.mean(stats >= observed - tol)), True
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_perm, d.size))
    stats = np.abs(signs @ d) / d.size
    return float((np.sum(stats >= observed - tol) + 1) / (n_perm + 1)), False


def paired_test(a: Sequence[float], b: Sequence[float], *, n_perm: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of matched scores ``a[i]`` vs ``b[i]`` (e.g. the same fold and seed).

    Returns ``n``, ``mean_diff`` (mean of ``a - b``), ``std_diff``, ``wins`` /
    ``losses`` / ``ties`` of ``a``, ``wilcoxon_p`` (two-sided Wilcoxon
    signed-rank, zero differences dropped; 1.0 when every difference is 0;
    NaN when it cannot be computed) and ``permutation_p`` (two-sided sign-flip
    test on the mean difference, see :func:`sign_flip_test`).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D sequences of equal length, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("paired_test needs at least one pair")
    d = x - y
    nonzero = d[np.abs(d) > 1e-12]
    if nonzero.size == 0:
        wilcoxon_p = 1.0
    else:
        try:
            from scipy.stats import wilcoxon

            wilcoxon_p = float(wilcoxon(nonzero).pvalue)
        except ValueError:
            wilcoxon_p = math.nan
    perm_p, exact = sign_flip_test(d, n_perm=n_perm, seed=seed)
    return {
        "n": int(d.size),
        "mean_diff": float(d.mean()),
        "std_diff": float(d.std(ddof=1)) if d.size > 1 else 0.0,
        "wins": int(np.sum(d > 1e-12)),
        "losses": int(np.sum(d < -1e-12)),
        "ties": int(d.size - nonzero.size),
        "wilcoxon_p": wilcoxon_p,
        "permutation_p": perm_p,
        "permutation_exact": exact,
    }


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    order = np.argsort(pvalues)
    m = len(pvalues)
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adj[i] = running
    return adj


def format_p(p: float | None) -> str:
    """A p-value for a report: 3 significant digits, scientific below 0.001, ``n/a`` when undefined."""
    if p is None or (isinstance(p, float) and np.isnan(p)):
        return "n/a"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"
