"""moma.evaluation.posteriors: the one posterior function of every prediction path. Windows are cut as training
cuts them, batching never changes a result, the temperature divides every window's logits, a segment model's
probabilities are its windows' mean, and a PyTorch model wraps into a forward."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from moma.config import load_run_config
from moma.data.batching import make_items
from moma.evaluation.posteriors import Segmenting, aggregate, class_posteriors, torch_forward, window_logits

WEIGHTS = np.random.default_rng(0).normal(size=(4, 3))  # (F, C)


def mean_pool(x: np.ndarray, lengths: np.ndarray, functionals: np.ndarray | None) -> np.ndarray:
    """A forward exact under padding: the mean of each row's valid frames, projected to 3 classes (+ the first
    functional, when given)."""
    calls.append(x.shape)
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]  # (B, T) True on real frames
    pooled = (x * mask[:, :, None]).sum(1) / lengths[:, None]  # (B, F)
    logits = pooled @ WEIGHTS
    return logits if functionals is None else logits + functionals[:, :1]


calls: list[tuple[int, ...]] = []


def inputs(lengths=(12, 3, 40, 7), seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 4)).astype(np.float32) for n in lengths]


def test_segments_follow_the_run_config_and_training_cuts_the_same_windows():
    cfg = load_run_config(sets=["data.segment_length_s=0.2", "data.segment_hop_s=0.05"])
    assert Segmenting.of(cfg) == Segmenting(20, 5)
    assert Segmenting.of(load_run_config()) == Segmenting(0, 0)
    feats = inputs((45, 10))
    expected = make_items({str(i): f for i, f in enumerate(feats)}, ["0", "1"], None, 20, 5)
    got = window_logits(mean_pool, feats, segments=Segmenting(20, 5))
    assert [len(z) for z in got] == [sum(it.key == "0" for it in expected), 1]  # 10 frames < 20: one window
    for k, it in enumerate(it for it in expected if it.key == "0"):  # window order: by start frame
        np.testing.assert_allclose(got[0][k], mean_pool(feats[0][None, it.start:it.end], np.array([it.end - it.start]),
                                                        None)[0], atol=1e-6)


def test_batching_never_changes_a_result_and_none_runs_one_call_in_input_order():
    feats = inputs()
    funcs = np.random.default_rng(2).normal(size=(4, 2)).astype(np.float32)
    one_by_one = np.stack([class_posteriors(mean_pool, [f], funcs[i:i + 1])[0] for i, f in enumerate(feats)])
    calls.clear()
    small = class_posteriors(mean_pool, feats, funcs, max_frames=45, batch_size=2)
    assert len(calls) > 1 and all(b * t <= 45 or b == 1 for b, t, _ in calls)
    np.testing.assert_allclose(small, one_by_one, atol=1e-6)
    calls.clear()
    together = class_posteriors(mean_pool, feats, funcs, max_frames=None)
    assert calls == [(4, 40, 4)]
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)
    assert window_logits(mean_pool, [], max_frames=None) == []
    with pytest.raises(ValueError, match="functionals"):
        class_posteriors(mean_pool, feats, funcs[:2])


def test_probabilities_are_the_mean_of_the_windows_temperature_scaled_posteriors():
    feats = inputs((60, 5))
    windows = window_logits(mean_pool, feats, segments=Segmenting(20, 10))
    assert [len(z) for z in windows] == [5, 1]
    for t in (1.0, 0.5, 2.5):
        got = class_posteriors(mean_pool, feats, segments=Segmenting(20, 10), temperature=t)
        np.testing.assert_allclose(got, [softmax(z / t, axis=1).mean(0) for z in windows], atol=1e-12)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    # one window: the temperature never moves the argmax; the window mean at T differs from rescaling the mean
    whole = window_logits(mean_pool, feats)
    assert np.array_equal(aggregate(whole, 0.3).argmax(1), aggregate(whole).argmax(1))
    raw_mean = aggregate(windows)[0]
    rescaled = softmax(np.log(raw_mean) / 0.3)
    assert np.abs(aggregate(windows, 0.3)[0] - rescaled).max() > 1e-3
    with pytest.raises(ValueError, match="temperature"):
        aggregate(windows, 0.0)


def test_torch_forward_gives_the_model_s_logits_batched_or_not(tiny_checkpoint):
    import torch

    from moma.checkpoint import load_checkpoint

    loaded = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(5)
    feats = [rng.normal(size=(n, loaded.config.model.input_dim)).astype(np.float32) for n in (30, 55)]
    got = window_logits(torch_forward(loaded.model), feats)
    for f, z in zip(feats, got):
        with torch.no_grad():
            ref = loaded.model(torch.from_numpy(f[None]), torch.tensor([f.shape[0]])).logits[0].numpy()
        np.testing.assert_allclose(z[0], ref, atol=1e-5)
