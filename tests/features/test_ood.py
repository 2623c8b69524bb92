"""The out-of-domain density (moma.features.ood): foreign input scores above the threshold and held-out speakers of
the training domain mostly below it; the threshold rule, the projection of wide representations, the state round
trip and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import speech_like, tone

from moma.audio.perturb import synthetic_music
from moma.config import FeatureConfig
from moma.features.frontend import compute_features
from moma.features.ood import (
    MAX_DIM,
    PCA_DIM,
    OodModel,
    fit_ood,
    held_out_distances,
    score_summary,
    summary_note,
    utterance_statistics,
)

SPEAKERS = 6
PER_SPEAKER = 8


def reps(signals) -> np.ndarray:
    return np.stack([utterance_statistics(compute_features(s, FeatureConfig())) for s in signals])


@pytest.fixture(scope="module")
def domain():
    """Speech-like training utterances of 6 speakers (each its own level), 8 of a new speaker, and foreign input:
    tones, white noise and synthetic music."""
    train = [speech_like(100 * s + i, seconds=1.5, amp=0.15 + 0.04 * s) for s in range(SPEAKERS)
             for i in range(PER_SPEAKER)]
    speakers = [f"s{s}" for s in range(SPEAKERS) for _ in range(PER_SPEAKER)]
    held = [speech_like(900 + i, seconds=1.5, amp=0.25) for i in range(8)]
    rng = np.random.default_rng(0)
    foreign = [tone(220.0 * (i + 1), seconds=1.5, amp=0.3) for i in range(3)]
    foreign += [(0.05 * rng.standard_normal(24000)).astype(np.float32) for _ in range(3)]
    foreign += [synthetic_music(1.5, rng=np.random.default_rng(i)) for i in range(3)]
    return reps(train), speakers, reps(held), reps(foreign)


def test_utterance_statistics_are_mean_then_std_over_time():
    frames = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(utterance_statistics(frames), [2.0, 4.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="frames of shape"):
        utterance_statistics(np.zeros((0, 23)))


def test_foreign_input_scores_above_the_threshold_and_new_speakers_of_the_domain_below(domain):
    train, speakers, held, foreign = domain
    model = fit_ood(train, speakers)
    d_held, d_foreign = model.distances(held), model.distances(foreign)
    assert (d_foreign > model.threshold).all()
    assert (d_held <= model.threshold).sum() >= 6  # a new speaker of the training domain: mostly in domain
    assert d_foreign.min() > d_held.max()
    distance, in_domain = model.score(foreign[0])
    assert distance == pytest.approx(d_foreign[0]) and in_domain is False
    assert model.info["rule"] == "speaker-cv" and model.info["speakers"] == SPEAKERS
    assert model.info["utterances"] == SPEAKERS * PER_SPEAKER and model.info["dims"] == 46


def test_held_out_speakers_set_a_higher_threshold_than_the_training_utterances_themselves(domain):
    train, speakers, _, _ = domain
    cv = fit_ood(train, speakers, rule="speaker-cv", quantile=0.95)
    in_sample = fit_ood(train, speakers, rule="in-sample", quantile=0.95)
    assert cv.threshold > in_sample.threshold  # a training utterance is closer to a density fitted on it
    held = held_out_distances(train, speakers)
    assert cv.threshold == pytest.approx(np.quantile(held, 0.95))
    # one speaker: shuffled utterance folds instead, fixed by the seed
    np.testing.assert_array_equal(held_out_distances(train, None, seed=1), held_out_distances(train, None, seed=1))


def test_state_round_trips_and_wide_representations_are_projected():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, MAX_DIM + 40)) * rng.uniform(0.5, 3.0, size=MAX_DIM + 40)
    model = fit_ood(x, [f"s{i % 4}" for i in range(80)], representation="functionals:eGeMAPSv02")
    assert model.components is not None and model.components.shape == (PCA_DIM, MAX_DIM + 40)
    again = OodModel.from_state(model.state_dict())
    probe = rng.normal(size=(5, MAX_DIM + 40)) * 4.0
    np.testing.assert_allclose(again.distances(probe), model.distances(probe), rtol=1e-4)
    assert again.threshold == model.threshold and again.info == model.info
    assert again.representation == "functionals:eGeMAPSv02"


def test_bad_input_is_one_clear_error(domain):
    train, speakers, _, _ = domain
    with pytest.raises(ValueError, match="at least 5 training utterances"):
        fit_ood(train[:3], speakers[:3])
    with pytest.raises(ValueError, match="unknown OOD threshold rule"):
        fit_ood(train, speakers, rule="median")
    with pytest.raises(ValueError, match="unknown OOD representation"):
        fit_ood(train, speakers, representation="pooled")
    with pytest.raises(ValueError, match="speakers"):
        fit_ood(train, speakers[:-1])
    with pytest.raises(ValueError, match="46"):
        fit_ood(train, speakers).distances(np.zeros(10))


def test_score_summary_counts_the_share_above_the_threshold(domain):
    train, speakers, _, _ = domain
    model = fit_ood(train, speakers)
    kin = [compute_features(speech_like(700 + i, 1.5, amp=0.25), FeatureConfig()) for i in range(3)]
    foreign = [compute_features(tone(300.0, 1.5, amp=0.3), FeatureConfig())]
    summary = score_summary(model, kin + foreign)
    assert summary["n"] == 4 and summary["flagged"] == pytest.approx(0.25)
    assert summary["threshold"] == pytest.approx(model.threshold, abs=1e-4)
    assert "25.0% of the 4 utterances" in summary_note(summary)
    assert score_summary(None, kin) is None and score_summary(model, []) is None
