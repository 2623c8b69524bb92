import numpy as np
import pytest

from moma.evaluation.calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    scale_posteriors,
)


def overconfident_posteriors(n: int = 2000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), posteriors reported as softmax(3 z): a model three times too sure."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    honest = np.exp(logits - logits.max(1, keepdims=True))
    honest /= honest.sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=p) for p in honest])
    sharp = 3.0 * logits
    probs = np.exp(sharp - sharp.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), y


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    # 10 predictions at confidence 0.7, 7 of them right: perfectly calibrated
    probs = np.tile([0.7, 0.3], (10, 1))
    y = np.array([0] * 7 + [1] * 3)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)
    # the same confidence with 2 of 10 right: a gap of 0.5
    y_bad = np.array([0] * 2 + [1] * 8)
    assert expected_calibration_error(probs, y_bad) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        expected_calibration_error(probs, y[:3])


def test_temperature_scaling_cools_an_overconfident_model_and_keeps_its_argmax():
    probs, y = overconfident_posteriors()
    t = fit_temperature(probs, y)
    assert 2.5 < t < 3.5  # the sharpening was 3x
    scaled = scale_posteriors(probs, t)
    assert np.array_equal(scaled.argmax(1), probs.argmax(1))
    np.testing.assert_allclose(scaled.sum(1), 1.0, atol=1e-9)
    summary = calibration_summary(probs, y, t)
    assert summary["ece_after"] < summary["ece_before"] / 3
    assert summary["nll_after"] < summary["nll_before"]
    with pytest.raises(ValueError):
        scale_posteriors(probs, 0.0)


def test_temperature_of_a_calibrated_model_stays_near_one():
    probs, y = overconfident_posteriors(n=4000, seed=1)
    honest = scale_posteriors(probs, fit_temperature(probs, y))
    assert fit_temperature(honest, y) == pytest.approx(1.0, abs=0.05)


def test_window_temperature_is_fitted_under_the_window_mean_and_equals_the_plain_fit_for_one_window():
    """A segment model's served probabilities are the mean of its windows' softmax(z / T): the temperature is
    fitted under that aggregation; with one window per utterance it is the plain fit on softmax(z)."""
    from scipy.special import softmax

    from moma.evaluation.calibration import fit_window_temperature
    from moma.evaluation.posteriors import aggregate

    probs, y = overconfident_posteriors(n=600, seed=2)
    one = [np.log(p)[None, :] for p in probs]  # one window each, log posteriors as logits
    assert fit_window_temperature(one, y) == pytest.approx(fit_temperature(probs, y), rel=1e-6)
    rng = np.random.default_rng(3)
    windows = [np.log(p)[None, :] + rng.normal(0, 2.0, (3, p.size)) for p in probs]  # three noisy windows
    t = fit_window_temperature(windows, y)
    nll = [-np.mean(np.log(aggregate(windows, s)[np.arange(y.size), y])) for s in (t / 1.2, t, t * 1.2)]
    assert nll[1] < nll[0] and nll[1] < nll[2]  # a minimum of the served aggregation's likelihood
    naive = fit_temperature(np.stack([softmax(w, axis=1).mean(0) for w in windows]), y)
    assert abs(naive - t) > 0.05  # scaling the mean afterwards is another temperature
    with pytest.raises(ValueError, match="labels"):
        fit_window_temperature(windows[:3], y)
