"""moma.features.augment: channel-perturbed copies of utterances, cached like any utterance."""

import numpy as np
import pytest

from moma.config import FeatureConfig
from moma.corpora.synthetic import make_synthetic_corpus
from moma.features.augment import (
    augmented_id,
    augmented_utterances,
    draw_condition,
    parse_families,
)
from moma.features.cache import FeatureCache, extract_features


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    return root, make_synthetic_corpus(root / "corpus", num_speakers=3, utterances_per_emotion=1, seed=4,
                                       max_duration=1.0)


def test_copies_are_cached_perturbed_and_reproducible(corpus, monkeypatch):
    root, utts = corpus
    cache = FeatureCache(root / "cache", FeatureConfig())
    clean = extract_features(utts, cache)
    copies = augmented_utterances(utts, cache, 2, parse_families("white,babble,reverb,telephone,gain"), seed=3)
    assert set(copies) == {u.id for u in utts}
    for u in utts:
        made = copies[u.id]
        assert [c.id for c in made] == [augmented_id(u.id, 1), augmented_id(u.id, 2)]
        assert all(c.speaker == u.speaker and c.label == u.label and c.path == u.path for c in made)
        feats = extract_features(made, cache)  # already in the cache: read, not recomputed as clean audio
        for c in made:
            assert feats[c.id].shape == clean[u.id].shape  # conditions keep the length
    differing = [not np.allclose(extract_features([c], cache)[c.id], clean[u.id]) for u in utts for c in copies[u.id]]
    assert sum(differing) >= len(differing) - 1  # a gain copy that clips nothing may shift levels only slightly

    # a second call finds every copy in the cache and computes nothing
    import moma.features.augment as aug

    monkeypatch.setattr(aug, "compute_features", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = augmented_utterances(utts, cache, 2, parse_families("white,babble,reverb,telephone,gain"), seed=3)
    assert {k: [c.sha1 for c in v] for k, v in again.items()} == {k: [c.sha1 for c in v] for k, v in copies.items()}
    monkeypatch.undo()
    # another seed or family set is another recipe: other cache keys
    other = augmented_utterances(utts[:1], cache.__class__(root / "cache2", FeatureConfig()), 1, ["white"], seed=3)
    assert other[utts[0].id][0].sha1 != copies[utts[0].id][0].sha1


def test_conditions_are_drawn_within_their_ranges():
    rng = np.random.default_rng(0)
    drawn = [draw_condition(["white", "babble", "reverb", "gain", "telephone"], rng) for _ in range(200)]
    assert {c.family for c in drawn} == {"white", "babble", "reverb", "gain", "telephone"}
    assert all(0 <= c.level <= 20 for c in drawn if c.family in ("white", "babble"))
    assert all(0.2 <= c.level <= 0.8 for c in drawn if c.family == "reverb")
    assert all(-12 <= c.level <= 12 for c in drawn if c.family == "gain")
    with pytest.raises(ValueError, match="choose from"):
        parse_families("white,codec")
