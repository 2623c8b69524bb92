import numpy as np
import pytest

from moma.evaluation.metrics import compute_metrics
from moma.evaluation.stats import bootstrap_ci, metric_value, paired_bootstrap_diff, paired_test, sign_flip_test


def noisy(n, acc, seed=0, k=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    wrong = rng.random(n) > acc
    pred = np.where(wrong, (y + rng.integers(1, k, n)) % k, y)
    return y, pred


def test_builtin_metrics_match_compute_metrics():
    y, p = noisy(300, 0.6, seed=1)
    y[:5] = 0  # make sure class 0 exists; drop class 3 from the truth to exercise absent classes
    y = np.where(y == 3, 2, y)
    ref = compute_metrics(y, p, ["a", "b", "c", "d"])
    for name in ("uar", "accuracy", "macro_f1"):
        assert metric_value(y, p, name) == pytest.approx(ref[name])


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    y, p = noisy(100, 0.6)
    small = bootstrap_ci(y, p, "uar", n=500, seed=0)
    assert small.low <= small.estimate <= small.high
    assert small.estimate == pytest.approx(metric_value(y, p, "uar"))
    y2, p2 = noisy(3000, 0.6)
    big = bootstrap_ci(y2, p2, "uar", n=500, seed=0)
    assert big.low <= big.estimate <= big.high
    assert (big.high - big.low) < 0.5 * (small.high - small.low)
    assert bootstrap_ci(y, p, "uar", n=500, seed=0) == small  # seeded: reproducible


def test_bootstrap_ci_of_perfect_classifier_is_one_and_accepts_strings_and_callables():
    labels = ["angry", "sad", "happy", "neutral"] * 10
    ci = bootstrap_ci(labels, labels, "uar", n=200, seed=3)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)
    ci = bootstrap_ci(labels, labels, lambda t, q: float(np.mean(t == q)), n=50)
    assert (ci.low, ci.high) == (1.0, 1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(labels, labels, "wa")


def test_paired_bootstrap_diff():
    y, good = noisy(400, 0.9, seed=2)
    _, bad = noisy(400, 0.4, seed=5)
    ci = paired_bootstrap_diff(y, good, bad, "uar", n=300)
    assert ci.low > 0.3 and ci.low <= ci.estimate <= ci.high
    same = paired_bootstrap_diff(y, good, good, "uar", n=100)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_paired_test_small_p_for_consistent_difference_large_for_identical():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.4, 0.6, 12)
    a = b + rng.uniform(0.02, 0.05, 12)
    res = paired_test(a, b)
    assert res["wilcoxon_p"] < 0.01 and res["permutation_p"] < 0.01 and res["permutation_exact"]
    assert res["mean_diff"] > 0 and res["wins"] == 12
    same = paired_test(b, b)
    assert same["wilcoxon_p"] == 1.0 and same["permutation_p"] == 1.0 and same["mean_diff"] == 0.0
    noise = paired_test(b + rng.normal(0, 0.05, 12), b + rng.normal(0, 0.05, 12))
    assert noise["permutation_p"] > 0.05
    # many pairs: Monte-Carlo sign flips
    big_b = rng.uniform(0.4, 0.6, 40)
    big = paired_test(big_b + 0.03, big_b)
    assert not big["permutation_exact"] and big["permutation_p"] < 0.001
    with pytest.raises(ValueError):
        paired_test([0.1, 0.2], [0.1])


def test_sign_flip_exact_value():
    p, exact = sign_flip_test([1.0] * 5)
    assert exact and p == pytest.approx(2 / 32)


def test_holm_adjustment_is_step_down_monotone_and_capped():
    from moma.evaluation.stats import holm_adjust

    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3*0.01, max(2*0.03, 1*0.04)
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []
