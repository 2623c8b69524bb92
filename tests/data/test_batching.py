import numpy as np
import torch

from moma.config import DataConfig
from moma.data.batching import (
    BucketBatchSampler,
    FeatureDataset,
    collate,
    make_items,
    make_loader,
    padding_fraction,
    window_starts,
)


def test_window_starts_cover_the_utterance_without_overrun():
    assert window_starts(50, 200, 100) == [0]
    starts = window_starts(450, 200, 100)
    assert starts == [0, 100, 200, 250]
    assert all(s + 200 <= 450 for s in starts)


def test_segments_never_cross_utterances():
    feats = {"a": np.zeros((450, 3), np.float32), "b": np.ones((120, 3), np.float32)}
    items = make_items(feats, ["a", "b"], {"a": 0, "b": 1}, window=200, hop=100)
    assert {(it.key, it.start, it.end) for it in items if it.key == "b"} == {("b", 0, 120)}
    for it in items:
        assert 0 <= it.start < it.end <= feats[it.key].shape[0]
        assert it.label == (0 if it.key == "a" else 1)


def test_bucketing_keeps_padding_low_and_respects_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 900, size=400).tolist()
    sampler = BucketBatchSampler(lengths, max_frames=8000, batch_size=32, seed=0)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert all(max(lengths[i] for i in b) * len(b) <= 8000 or len(b) == 1 for b in batches)
    assert padding_fraction(lengths, batches) < 0.10
    sampler.set_epoch(1)
    assert sampler.batches() != batches  # order changes between epochs
    sampler.set_epoch(0)
    assert sampler.batches() == batches  # and is reproducible


def test_collate_pads_with_zeros_and_reports_lengths():
    batch = collate([(np.ones((3, 2), np.float32), 1, "a", 0, None), (np.ones((5, 2), np.float32), 0, "b", 4, None)])
    assert batch.features.shape == (2, 5, 2)
    assert batch.lengths.tolist() == [3, 5]
    assert torch.all(batch.features[0, 3:] == 0)
    assert batch.labels.tolist() == [1, 0] and batch.keys == ["a", "b"] and batch.starts == [0, 4]


def test_random_crop_and_augmentation_are_seeded_per_epoch():
    feats = {"a": np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)}
    cfg = DataConfig(random_crop_s=2.0, spec_augment=True)
    ds = FeatureDataset(feats, make_items(feats, ["a"], {"a": 0}), cfg, train=True, seed=5)
    assert ds.lengths() == [200]
    x0, _, _, s0, _ = ds[0]
    assert x0.shape == (200, 8)
    again, _, _, s_again, _ = ds[0]
    assert s0 == s_again and np.array_equal(x0, again)
    ds.set_epoch(1)
    x1, _, _, s1, _ = ds[0]
    assert s1 != s0 or not np.array_equal(x1, x0)
    assert (x0 == 0).any()  # masks were applied
    evalset = FeatureDataset(feats, make_items(feats, ["a"], {"a": 0}), cfg, train=False)
    assert np.array_equal(evalset[0][0], feats["a"])  # no crop or masking at evaluation


def test_loader_yields_every_item_once():
    feats = {str(i): np.zeros((10 + i, 4), np.float32) for i in range(30)}
    cfg = DataConfig(max_frames_per_batch=100, batch_size=8)
    ds = FeatureDataset(feats, make_items(feats, list(feats), {k: 0 for k in feats}), cfg)
    keys = [k for b in make_loader(ds, cfg, shuffle=True, seed=0) for k in b.keys]
    assert sorted(keys) == sorted(feats)


def test_fusion_items_carry_their_utterance_functionals_through_windows_and_collate():
    feats = {"u": np.zeros((30, 2), np.float32), "v": np.ones((12, 2), np.float32)}
    funcs = {"u": np.array([1.0, 2.0, 3.0]), "v": np.array([-1.0, 0.0, 1.0])}
    items = make_items(feats, ["u", "v"], {"u": 0, "v": 1}, window=10, hop=10)
    train = FeatureDataset(feats, items, DataConfig(), train=True, seed=0, functionals=funcs)
    for epoch in range(4):
        train.set_epoch(epoch)
        for i, it in enumerate(items):  # every window of u carries u's vector
            np.testing.assert_array_equal(train[i][4], funcs[it.key].astype(np.float32))
    batch = collate([train[0], train[len(items) - 1]])
    assert batch.functionals.dtype == torch.float32
    torch.testing.assert_close(batch.functionals, torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]]))
    assert collate([FeatureDataset(feats, items, DataConfig())[0]]).functionals is None
    # the model's inputs: a fusion batch gives three (the functionals last), a plain batch two
    inputs = batch.model_inputs(torch.device("cpu"))
    assert len(inputs) == 3 and inputs[2] is not None
    torch.testing.assert_close(inputs[1], batch.lengths)
    assert len(collate([FeatureDataset(feats, items, DataConfig())[0]]).model_inputs(torch.device("cpu"))) == 2
