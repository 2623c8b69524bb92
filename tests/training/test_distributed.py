"""Data-parallel training: the distributed sampler, and a 2-process gloo run against a 1-process run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from moma.cli.main import main
from moma.corpora.synthetic import make_synthetic_corpus
from moma.data.batching import BucketBatchSampler, DistributedBucketBatchSampler
from moma.training.distributed import DistInfo, broadcast_object, env_dist_info, gather_objects


def test_shares_of_each_rank_rebuild_the_single_process_batches():
    rng = np.random.default_rng(3)
    lengths = rng.integers(50, 900, size=211).tolist()
    single = BucketBatchSampler(lengths, max_frames=4000, batch_size=32, seed=5)
    shards = [DistributedBucketBatchSampler(lengths, 4000, 32, rank=r, world_size=3, seed=5) for r in range(3)]
    for epoch in (1, 2):
        single.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        per_rank = [s.batches() for s in shards]
        assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
        merged = [sorted(sum((per_rank[r][i] for r in range(3)), [])) for i in range(len(per_rank[0]))]
        assert all(len(per_rank[r][i]) >= 1 for r in range(3) for i in range(len(merged)))
        assert sorted(sum(merged, [])) == list(range(211))  # each item exactly once per epoch
        # no batch was short of 3 items here, so the global batches are the single-process ones
        if all(len(b) >= 3 for b in single.batches()):
            assert merged == [sorted(b) for b in single.batches()]
        # the shares of one batch have near-equal lengths (items are dealt in length order)
        for i in range(len(merged)):
            share_max = [max(lengths[j] for j in per_rank[r][i]) for r in range(3)]
            assert max(share_max) - min(share_max) <= 0.15 * max(share_max) + 1


def test_short_batches_are_merged_so_no_rank_gets_an_empty_share():
    lengths = [1000, 990, 980, 10, 12, 11, 13]  # long items alone would each fill a 1000-frame batch
    sampler = BucketBatchSampler(lengths, max_frames=1000, batch_size=8, shuffle=False, min_batch_size=2)
    batches = sampler.batches()
    assert all(len(b) >= 2 for b in batches)
    assert sorted(sum(batches, [])) == list(range(7))
    with pytest.raises(ValueError, match="cannot be shared"):
        DistributedBucketBatchSampler([5], 100, 4, rank=0, world_size=2)


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = env_dist_info()
    assert info == DistInfo() and info.is_main and not info.enabled
    assert broadcast_object({"a": 1}, info) == {"a": 1}
    assert gather_objects(7, info) == [7]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert env_dist_info() == DistInfo(rank=2, world_size=4, local_rank=0)


TINY = ["--set", "model.hidden_size=8", "--set", "model.context_dim=8", "--set", "model.projection_dim=8",
        "--set", "model.dropout=0", "--set", "model.input_dropout=0", "--set", "train.max_epochs=3",
        "--set", "train.lr=0.01", "--set", "train.tensorboard=false", "--set", "train.val_speakers=1",
        "--set", "train.num_threads=1", "--set", "data.max_frames_per_batch=1500", "--set", "data.spec_augment=true"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    corpus = tmp_path / "corpus"
    make_synthetic_corpus(corpus, num_speakers=4, utterances_per_emotion=3, seed=2, max_duration=1.5)
    manifest = tmp_path / "m.jsonl"
    assert main(["prepare", "synthetic", "--root", str(corpus), "--out", str(manifest)]) == 0
    common = ["train", "--manifest", str(manifest), "--protocol", "predefined", "--test-speakers", "spk04",
              "--cache", str(tmp_path / "cache"), "-q", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    single = subprocess.run([sys.executable, "-m", "moma", *common, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "moma", *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # rank 0 alone printed the summary and the checkpoint path
    assert ddp.stdout.count("checkpoint:") == 1

    fold_one = next(p for p in (tmp_path / "one").iterdir() if p.is_dir())
    fold_two = tmp_path / "two" / fold_one.name
    hist_one = [json.loads(line) for line in (fold_one / "metrics.jsonl").read_text().splitlines()]
    hist_two = [json.loads(line) for line in (fold_two / "metrics.jsonl").read_text().splitlines()]
    assert len(hist_one) == len(hist_two) == 3
    for a, b in zip(hist_one, hist_two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)
        assert b["best_epoch"] == a["best_epoch"]
    w_one, w_two = load_file(str(fold_one / "last.safetensors")), load_file(str(fold_two / "last.safetensors"))
    model_keys = [k for k in w_one if k.startswith("model.")]
    assert model_keys and set(model_keys) <= set(w_two)
    worst = max(float(np.max(np.abs(w_one[k] - w_two[k]))) for k in model_keys)
    assert worst < 1e-4, f"weights differ by {worst}"  # a wrong gradient scale gives ~5e-3
    # the 2-process checkpoint records how it was trained; test results were written once, by rank 0
    result_one = json.loads((fold_one / "result.json").read_text())
    result_two = json.loads((fold_two / "result.json").read_text())
    assert result_two["test"]["uar"] == pytest.approx(result_one["test"]["uar"], abs=1e-9)

    # resuming a 2-process run (stopped after epoch 2) ends where the uninterrupted one ended
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "moma"]
    resumed = tmp_path / "resumed"
    first = subprocess.run([*torchrun, *common, "--out", str(resumed), "--set", "train.max_epochs=2"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (resumed / fold_one.name / "result.json").unlink()  # as if killed before the fold finished
    second = subprocess.run([*torchrun, *common, "--out", str(resumed)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed" in second.stderr and "at epoch 3" in second.stderr
    w_res = load_file(str(resumed / fold_one.name / "last.safetensors"))
    assert max(float(np.max(np.abs(w_res[k] - w_two[k]))) for k in model_keys) < 1e-6
    assert len((resumed / fold_one.name / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_speaker_adversary_under_two_gloo_processes_matches_one_process(tmp_path):
    """The adversary's gradients are averaged with the model's (one DDP module), and its loss is scaled by the
    global batch size, so 2 processes train the same weights as 1."""
    corpus = tmp_path / "corpus"
    make_synthetic_corpus(corpus, num_speakers=4, utterances_per_emotion=3, seed=2, max_duration=1.5)
    manifest = tmp_path / "m.jsonl"
    assert main(["prepare", "synthetic", "--root", str(corpus), "--out", str(manifest)]) == 0
    common = ["-m", "moma", "train", "--manifest", str(manifest), "--protocol", "predefined", "--test-speakers",
              "spk04", "--cache", str(tmp_path / "cache"), "-q", *TINY, "--set", "train.max_epochs=2",
              "--set", "train.speaker_adversarial=0.5", "--set", "train.adversary_hidden=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    runs = {}
    for n in (1, 2):
        launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={n}"]
        done = subprocess.run([*launcher, *common, "--out", str(tmp_path / f"p{n}")], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        fold = next(p for p in (tmp_path / f"p{n}").iterdir() if p.is_dir())
        runs[n] = (load_file(str(fold / "last.safetensors")),
                   [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()])
    (w1, h1), (w2, h2) = runs[1], runs[2]
    for a, b in zip(h1, h2):
        assert b["train_speaker_loss"] == pytest.approx(a["train_speaker_loss"], rel=1e-3)
    keys = [k for k in w1 if k.startswith("model.") or ".adversary." in k]
    assert any(".adversary." in k for k in keys)
    worst = max(float(np.max(np.abs(w1[k] - w2[k]))) for k in keys)
    assert worst < 1e-4, f"weights differ by {worst}"
