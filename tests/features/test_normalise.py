"""moma.features.normalise: adapting a checkpoint's statistics to the test inputs themselves (transductive)."""

import numpy as np
import pytest

from moma.corpora.base import Utterance
from moma.features.normalise import Normaliser, adapt_normaliser, normalise_for_checkpoint


def shifted(rng, n, offset, scale=1.0):
    return [(rng.normal(size=(40, 3)) * scale + offset).astype(np.float32) for _ in range(n)]


def test_batch_adaptation_removes_a_channel_offset_that_training_statistics_keep():
    rng = np.random.default_rng(0)
    trained = Normaliser("global").fit(shifted(rng, 10, 0.0), ["a"] * 10)
    test = shifted(rng, 8, 5.0, scale=3.0)  # another microphone: every band 5 higher, 3x the spread
    with_model = np.concatenate([trained.transform(f) for f in test])
    adapted = adapt_normaliser(trained, test, "batch")
    with_own = np.concatenate([adapted.transform(f) for f in test])
    assert abs(with_model.mean()) > 4 and abs(with_own.mean()) < 1e-5
    assert with_own.std(axis=0) == pytest.approx(np.ones(3), abs=1e-4)
    assert "8 inputs together" in adapted.describe() and "transductive" in adapted.describe()
    assert trained.adapted_to == "" and "training speaker" in trained.describe()  # the checkpoint's is untouched
    restored = Normaliser.from_state(adapted.state_dict())
    assert restored.describe() == adapted.describe()


def test_speaker_adaptation_fits_each_speaker_on_its_own_audio():
    rng = np.random.default_rng(1)
    trained = Normaliser("global").fit(shifted(rng, 4, 0.0))
    feats = shifted(rng, 3, 2.0) + shifted(rng, 3, -7.0)
    speakers = ["x"] * 3 + ["y"] * 3
    utts = [Utterance(id=f"u{i}", path="", speaker=s, label="a") for i, s in enumerate(speakers)]
    normed = normalise_for_checkpoint(trained, {u.id: f for u, f in zip(utts, feats)}, utts, adapt="speaker")
    for spk in ("x", "y"):
        frames = np.concatenate([normed[u.id] for u in utts if u.speaker == spk])
        assert abs(frames.mean()) < 1e-5  # each speaker centred on its own mean, not the other's
    with pytest.raises(ValueError, match="speaker"):
        adapt_normaliser(trained, feats, "speaker")
    with pytest.raises(ValueError, match="unknown adaptation"):
        adapt_normaliser(trained, feats, "corpus")


def test_per_utterance_models_have_nothing_to_adapt():
    utterance = Normaliser("utterance")
    assert adapt_normaliser(utterance, [np.ones((5, 3), np.float32)], "batch") is utterance


def test_utterance_adaptation_uses_each_input_alone():
    rng = np.random.default_rng(2)
    trained = Normaliser("global").fit(shifted(rng, 4, 0.0))
    feats = shifted(rng, 2, 3.0) + shifted(rng, 1, -4.0)
    adapted = adapt_normaliser(trained, feats, "utterance")
    assert adapted.mode == "utterance"
    for f in feats:
        assert abs(adapted.transform(f).mean()) < 1e-5  # each centred on itself, whatever came with it


def test_pooled_training_statistics_equal_those_of_all_training_rows_and_serve_unknown_speakers():
    from moma.features.normalise import normalise_functionals, pooled_training_statistics

    rng = np.random.default_rng(4)
    rows = {"a": rng.normal(1.0, 2.0, size=(5, 3)), "b": rng.normal(-2.0, 0.5, size=(9, 3))}
    norm = Normaliser("speaker").fit([rows["a"], rows["b"]], ["a", "b"])
    norm.fit_speaker("test", [rng.normal(50.0, 1.0, size=(4, 3))])  # transductive: never pooled
    pooled = pooled_training_statistics(norm)
    both = np.concatenate([rows["a"], rows["b"]])
    np.testing.assert_allclose(pooled.mean, both.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(pooled.std, both.std(axis=0), rtol=1e-10)
    assert pooled.mode == "global" and pooled.frames == 14 and pooled.num_speakers == 2
    value = np.array([1.0, 0.0, -1.0])
    # a known speaker is standardised with its own statistics, an unknown one with the pooled ones
    np.testing.assert_allclose(normalise_functionals(norm, value, "b"),
                               (value - rows["b"].mean(0)) / rows["b"].std(0), rtol=1e-5)
    np.testing.assert_allclose(normalise_functionals(norm, value, None),
                               (value - both.mean(0)) / both.std(0), rtol=1e-5)
    with pytest.raises(ValueError, match="pooled statistics need a speaker normaliser"):
        pooled_training_statistics(Normaliser("global").fit([both]))
