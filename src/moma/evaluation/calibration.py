"""How far class posteriors can be trusted as probabilities: expected calibration error and temperature scaling.

A classifier trained with cross-entropy on a small corpus is usually
over-confident: it says 0.95 where it is right 60 % of the time. Temperature
scaling (Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017)
divides the logits by one scalar T > 0 fitted on held-out data by minimising
the negative log-likelihood. It never changes the argmax, so accuracy and UAR
are untouched; only the probabilities a user reads move.

Log posteriors stand in for logits everywhere here: ``softmax(log p / T)``
equals ``softmax(z / T)`` because log p differs from the logits z by one
constant per row, which the softmax removes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from moma.evaluation.posteriors import aggregate

ECE_BINS = 15  # equal-width confidence bins (the usual choice since Guo et al.)
TEMPERATURE_RANGE = (0.05, 20.0)  # the search interval for T; a fit at either end is reported as such


def _log_posteriors(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))


def scale_posteriors(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Posteriors ``(n, classes)`` after temperature scaling: ``softmax(log p / T)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return np.exp(log_softmax(_log_posteriors(probs) / temperature, axis=-1))


def negative_log_likelihood(probs: np.ndarray, y_true: Sequence[int]) -> float:
    """Mean negative log-likelihood of the true classes (nats)."""
    y = np.asarray(y_true, dtype=int)
    return float(-np.mean(_log_posteriors(probs)[np.arange(y.size), y]))


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], bins: int = ECE_BINS) -> float:
    """Expected calibration error: the frequency-weighted gap between confidence and accuracy over
    ``bins`` equal-width bins of the top-class probability (0 = perfectly calibrated)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=int)
    if p.ndim != 2 or p.shape[0] != y.size or y.size == 0:
        raise ValueError(f"expected posteriors (n, classes) for n > 0 labels, got {p.shape} and {y.size} labels")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur for a top class
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / y.size)


def fit_temperature(probs: np.ndarray, y_true: Sequence[int]) -> float:
    """The temperature T that minimises the negative log-likelihood of ``y_true`` (searched on log T)."""
    logp = _log_posteriors(probs)
    y = np.asarray(y_true, dtype=int)
    if y.size == 0:
        raise ValueError("cannot fit a temperature on zero utterances")
    return _search(lambda t: float(-np.mean(log_softmax(logp / t, axis=-1)[np.arange(y.size), y])))


def fit_window_temperature(window_logits: Sequence[np.ndarray], y_true: Sequence[int]) -> float:
    """The temperature T that minimises the negative log-likelihood of ``y_true`` under the aggregation every
    prediction path applies (:func:`moma.evaluation.posteriors.aggregate`: the mean over an utterance's windows
    of ``softmax(z / T)``). With one window per utterance it is :func:`fit_temperature` of ``softmax(z)``."""
    y = np.asarray(y_true, dtype=int)
    if y.size == 0:
        raise ValueError("cannot fit a temperature on zero utterances")
    if len(window_logits) != y.size:
        raise ValueError(f"{len(window_logits)} utterances' logits but {y.size} labels")
    if all(len(z) == 1 for z in window_logits):  # one window each: the closed form of the mean, fast
        return fit_temperature(softmax(np.concatenate(window_logits).astype(np.float64), axis=-1), y)
    return _search(lambda t: negative_log_likelihood(aggregate(window_logits, t), y))


def _search(nll: Callable[[float], float]) -> float:
    """The temperature in :data:`TEMPERATURE_RANGE` that minimises ``nll`` (bounded search on log T)."""
    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    found = minimize_scalar(lambda log_t: nll(float(np.exp(log_t))), bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


def calibration_summary(probs: np.ndarray, y_true: Sequence[int], temperature: float,
                        scaled: np.ndarray | None = None) -> dict[str, Any]:
    """NLL and ECE of ``probs`` before and after scaling by ``temperature``, for reports and model cards.
    ``scaled``: the scaled posteriors when they are not ``softmax(log probs / T)`` (a segment model's window
    mean, :func:`moma.evaluation.posteriors.aggregate`)."""
    scaled = scale_posteriors(probs, temperature) if scaled is None else scaled
    return {
        "temperature": round(float(temperature), 4),
        "n": len(y_true),
        "nll_before": round(negative_log_likelihood(probs, y_true), 4),
        "nll_after": round(negative_log_likelihood(scaled, y_true), 4),
        "ece_before": round(expected_calibration_error(probs, y_true), 4),
        "ece_after": round(expected_calibration_error(scaled, y_true), 4),
    }
