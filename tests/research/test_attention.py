"""Attention statistics, speaker probes and speaker bias (moma.research.attention)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import moma.research.attention as an
from moma.config import ModelConfig
from moma.model import build_model, masked_mean


def test_entropy_uniform_one_hot_and_padding():
    w = np.zeros((3, 6))
    w[0, :4] = 0.25  # uniform over 4 valid frames
    w[1, 2] = 1.0  # one-hot
    w[2, :6] = 1 / 6
    lengths = [4, 5, 6]
    ent, norm = an.attention_entropy(w, lengths)
    np.testing.assert_allclose(ent, [math.log(4), 0.0, math.log(6)], atol=1e-12)
    np.testing.assert_allclose(norm, [1.0, 0.0, 1.0], atol=1e-12)
    # whatever the padding holds, it is ignored
    w_pad = w.copy()
    w_pad[0, 4:] = 0.7
    w_pad[1, 5] = 3.0
    ent2, norm2 = an.attention_entropy(torch.tensor(w_pad), torch.tensor(lengths))
    np.testing.assert_allclose(ent2, ent, atol=1e-12)
    np.testing.assert_allclose(norm2, norm, atol=1e-12)
    _, single = an.attention_entropy(np.ones((1, 3)), [1])
    assert math.isnan(single[0])  # L = 1: normalised entropy undefined


def test_block_correlation():
    rng = np.random.default_rng(0)
    a = rng.random((4, 1, 10))
    same = np.repeat(a, 3, axis=1)  # 3 identical blocks
    same[:, :, 7:] = rng.random((4, 3, 3))  # different padding
    assert an.block_correlation(same, [7, 7, 7, 7]) == pytest.approx(1.0)
    anti = np.concatenate([a, -a], axis=1)
    assert an.block_correlation(anti, [10] * 4) == pytest.approx(-1.0)
    indep = rng.random((50, 2, 200))
    assert abs(an.block_correlation(indep, [200] * 50)) < 0.05
    assert math.isnan(an.block_correlation(rng.random((2, 1, 5)), [5, 5]))  # one block: undefined


def test_speaker_probe_finds_speaker_information():
    rng = np.random.default_rng(0)
    speakers = [f"s{i % 5}" for i in range(100)]
    offsets = {f"s{k}": rng.normal(scale=3.0, size=16) for k in range(5)}
    reps = np.stack([offsets[s] + rng.normal(size=16) for s in speakers])
    res = an.speaker_probe(reps, speakers, folds=5, seed=0)
    assert res["accuracy_mean"] > 0.9 and res["chance"] == pytest.approx(0.2)
    assert res["folds"] == 5 and len(res["fold_accuracies"]) == 5 and res["n_speakers"] == 5
    noise = an.speaker_probe(rng.normal(size=(100, 16)), speakers, folds=5, seed=0)
    assert noise["accuracy_mean"] < 0.4  # near chance (0.2)
    again = an.speaker_probe(reps, speakers, folds=5, seed=0)
    assert again["fold_accuracies"] == res["fold_accuracies"]
    with pytest.raises(ValueError):
        an.speaker_probe(reps[:6], ["a", "a", "b", "b", "c", "d"])  # one utterance of c: no CV possible
    small = an.speaker_probe(reps[:20], speakers[:20], folds=10)
    assert small["folds"] == 4  # lowered to the smallest speaker's count


def test_speaker_bias_hand_example():
    per = {"a": {"uar": 0.6}, "b": {"uar": 0.8}, "c": {"uar": 0.4}, "d": {"uar": 0.7}, "e": {"uar": 0.5}}
    genders = {"a": "F", "b": "F", "c": "M", "d": "M"}  # e unknown
    res = an.speaker_bias(per, genders)
    assert res["n_speakers"] == 5
    assert res["mean"] == pytest.approx(0.6)
    assert res["std"] == pytest.approx(math.sqrt(0.1 / 4))  # deviations .0 .2 -.2 .1 -.1 -> 0.10 / (n-1)
    assert (res["min"], res["max"]) == (0.4, 0.8)
    assert res["range"] == pytest.approx(0.4)
    assert (res["worst_speaker"], res["best_speaker"]) == ("c", "b")
    assert res["female_mean"] == pytest.approx(0.7) and res["male_mean"] == pytest.approx(0.55)
    assert res["gender_gap"] == pytest.approx(0.15)
    assert (res["n_female"], res["n_male"]) == (2, 2)
    assert math.isnan(an.speaker_bias(per, {"a": "F"})["gender_gap"])


def tiny(arch: str):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, input_dim=5, num_classes=3, hidden_size=4, num_layers=1, context_dim=4,
                      num_blocks=3, projection_dim=6)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return {f"u{i}": rng.normal(size=(int(rng.integers(3, 25)), 5)).astype(np.float32) for i in range(7)}


def test_collect_attention_stats_moma(feats):
    ids = sorted(feats)
    stats = an.collect_attention_stats(tiny("moma"), feats, ids, batch_size=3)
    assert stats["n"] == 7
    for key in ("layer1_entropy", "layer1_entropy_norm", "mixture_entropy", "mixture_entropy_norm",
                "block_correlation"):
        assert stats[key]["n"] == 7 and np.isfinite(stats[key]["mean"]), key
    assert 0.0 <= stats["mixture_entropy_norm"]["mean"] <= 1.0
    assert len(stats["block_entropy"]) == 3 and len(stats["block_entropy_norm"]) == 3
    assert [g["mean"] for g in stats["gammas"]] == pytest.approx([1 / 3] * 3)  # untrained: softmax(0)
    # batching does not change the statistics (padding is ignored)
    one = an.collect_attention_stats(tiny("moma"), feats, ids, batch_size=1)
    assert one["mixture_entropy"]["mean"] == pytest.approx(stats["mixture_entropy"]["mean"], abs=1e-6)


def test_collect_attention_stats_baselines(feats):
    ids = sorted(feats)
    mean = an.collect_attention_stats(tiny("mean"), feats, ids)
    assert mean == {"n": 7}
    att = an.collect_attention_stats(tiny("attention"), feats, ids)
    assert set(att) == {"n", "layer1_entropy", "layer1_entropy_norm"}


def test_pooled_representations(feats):
    ids = sorted(feats)
    model = tiny("moma")
    calls = []
    hook = model.encoder.register_forward_hook(lambda *_: calls.append(1))
    reps = an.pooled_representations(model, feats, ids, batch_size=4)
    hook.remove()
    assert len(calls) == 2  # one BLSTM pass per batch of 4 (7 utterances), shared by every stage
    assert not model.encoder._forward_hooks  # its own hook is gone too
    assert set(reps) == {"encoder", "layer1", "pooled", "embedding"}
    assert reps["encoder"].shape == (7, 8) and reps["layer1"].shape == (7, 8)
    assert reps["pooled"].shape == (7, 8) and reps["embedding"].shape == (7, 6)
    with torch.no_grad():
        for i, k in enumerate(ids):  # direct computation, one unpadded utterance at a time
            x = torch.from_numpy(feats[k]).unsqueeze(0)
            lens = torch.tensor([feats[k].shape[0]])
            y, mask = model.encode(x, lens)
            np.testing.assert_allclose(reps["encoder"][i], masked_mean(y, mask)[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(reps["encoder"][i], y[0].mean(0).numpy(), atol=1e-5)
            out = model(x, lens)
            np.testing.assert_allclose(reps["embedding"][i], out.embedding[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(reps["pooled"][i], out.encoded[0].numpy(), atol=1e-5)
            # layer 1 ("scale", residual): y + L a y
            a1 = out.attention["layer1"][0]
            y2 = y[0] + (lens[0] * a1).unsqueeze(-1) * y[0]
            np.testing.assert_allclose(reps["layer1"][i], y2.mean(0).numpy(), atol=1e-5)
    mean = an.pooled_representations(tiny("mean"), feats, ids)
    assert set(mean) == {"encoder", "embedding"}
    np.testing.assert_allclose(mean["encoder"], mean["embedding"], atol=1e-6)
    att = an.pooled_representations(tiny("attention"), feats, ids)
    assert set(att) == {"encoder", "embedding"} and att["embedding"].shape == (7, 8)


def test_probe_stages_needs_two_speakers_and_drops_singletons(feats):
    ids = sorted(feats)
    model = tiny("moma")
    one = an.probe_stages(model, feats, ids, ["a"] * 7)
    assert "skipped" in one and "needs >= 2 speakers" in one["skipped"]
    res = an.probe_stages(model, feats, ids, ["a", "a", "a", "b", "b", "b", "c"], folds=3)
    assert res["dropped_speakers"] == ["c"] and res["speakers"] == ["a", "b"] and res["n"] == 6
    assert set(res["stages"]) == {"encoder", "layer1", "pooled", "embedding"} and res["final"] == "pooled"
    assert all(r["folds"] == 3 and r["n"] == 6 for r in res["stages"].values())
    assert an.probe_stages(tiny("attention"), feats, ids, ["a", "b"] * 3 + ["a"])["final"] == "embedding"


def test_analyse_checkpoint_of_a_fusion_model_feeds_it_the_standardised_functionals(feats):
    """A fusion checkpoint (features.functionals) needs each utterance's functionals: they are standardised with
    its training statistics and change what the model pools; without them the analysis says so in one error."""
    from moma.checkpoint import LoadedCheckpoint
    from moma.config import RunConfig, replace
    from moma.corpora.base import Utterance
    from moma.features.normalise import Normaliser

    torch.manual_seed(0)
    cfg = RunConfig()
    cfg = replace(cfg, features=replace(cfg.features, functionals="eGeMAPSv02"),
                  model=ModelConfig(input_dim=5, num_classes=3, hidden_size=4, num_layers=1, context_dim=4,
                                    num_blocks=3, projection_dim=6, functionals_dim=4))
    rng = np.random.default_rng(1)
    raw = {k: rng.normal(5.0, 2.0, size=4).astype(np.float32) for k in feats}
    func_norm = Normaliser("global").fit([np.stack(list(raw.values()))])
    loaded = LoadedCheckpoint(model=build_model(cfg.model).eval(), config=cfg, labels=["a", "b", "c"],
                              normaliser=Normaliser("none"), info={}, path="tiny",
                              functionals_normaliser=func_norm)
    utts = [Utterance(id=k, path="", speaker="ab"[i % 2], label="a") for i, k in enumerate(sorted(feats))]
    res = an.analyse_checkpoint(loaded, feats, utts, probe_folds=2, functionals=raw)
    assert res["attention"]["n"] == 7 and set(res["probe"]["stages"]) >= {"pooled", "embedding"}
    standardised = {k: func_norm.transform(v[None, :])[0] for k, v in raw.items()}
    embedded = an.pooled_representations(loaded.model, feats, sorted(feats), functionals=standardised)["embedding"]
    unscaled = an.pooled_representations(loaded.model, feats, sorted(feats), functionals=raw)["embedding"]
    assert not np.allclose(embedded, unscaled)  # the functionals, and their standardisation, reach the embedding
    with pytest.raises(ValueError, match="fusion checkpoint"):
        an.analyse_checkpoint(loaded, feats, utts)
