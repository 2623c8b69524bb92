"""Perturbations and robustness evaluation (moma.research.robustness)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from helpers import SR, make_fusion_checkpoint, speech_like

import moma.audio.perturb as pt
import moma.research.robustness as rb

# --------------------------------------------------------------------------- SNR


# --------------------------------------------------------------------------- babble


# --------------------------------------------------------------------------- channel, gain, reverb


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from moma.config import load_run_config
    from moma.corpora.base import Utterance
    from moma.features.normalise import Normaliser
    from moma.training.train import train_model

    root = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(0)
    feats, label_of = {}, {}
    for i in range(12):
        x = rng.normal(size=(int(rng.integers(20, 40)), 23)).astype(np.float32)
        x[:, i % 2] += 1.5
        feats[f"t{i}"], label_of[f"t{i}"] = x, i % 2
    ids = sorted(feats)
    cfg = load_run_config(sets=["model.hidden_size=4", "model.context_dim=4", "model.projection_dim=4",
                                "model.num_layers=1", "train.max_epochs=1", "train.early_stop_patience=0",
                                "train.tensorboard=false", "train.num_threads=1", "data.max_frames_per_batch=400"])
    norm = Normaliser("global").fit([feats[k] for k in ids])
    result = train_model(cfg, feats, ["calm", "angry"], label_of, ids[:9], ids[9:], root / "run", norm)
    utts = []
    for i in range(6):
        path = root / f"w{i}.wav"
        sf.write(path, speech_like(i, 0.4, amp=0.3 + 0.2 * (i % 2)), SR)
        utts.append(Utterance(id=f"w{i}", path=str(path), speaker=f"s{i % 3}", label=["calm", "angry"][i % 2]))
    return result.best_checkpoint, utts


def test_evaluate_robustness_all_conditions(tiny_setup):
    ckpt, utts = tiny_setup
    res = rb.evaluate_robustness(ckpt, utts, seed=0)
    assert list(res) == list(pt.DEFAULT_CONDITIONS)
    for name, m in res.items():
        assert m["n"] == len(utts)
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["uar"] <= 1.0, name
        assert set(m["per_speaker"]) == {"s0", "s1", "s2"}
        assert "predictions" not in m and set(m["perturbation"]) == {"mix_rescaled", "clipped"}
    assert res["gain+10dB"]["perturbation"]["clipped"] > 0  # amplitude 0.5 + 10 dB clips


def test_evaluate_robustness_is_deterministic(tiny_setup, tmp_path):
    ckpt, utts = tiny_setup
    conds = ["babble-0dB", "white-5dB", "reverb-0.5s"]
    a = rb.evaluate_robustness(ckpt, utts, conds, seed=3)
    b = rb.evaluate_robustness(ckpt, utts, list(reversed(conds)), seed=3)  # order does not matter
    for c in conds:
        assert a[c] == b[c]
    pool = [("other1", speech_like(40, 0.7)), ("other2", speech_like(41, 0.7))]
    c = rb.evaluate_robustness(ckpt, utts, ["babble-5dB"], seed=3, babble_pool=pool, num_talkers=2)
    assert c["babble-5dB"]["n"] == len(utts)
    with pytest.raises(ValueError, match="labels"):
        from dataclasses import replace

        rb.evaluate_robustness(ckpt, [replace(utts[0], label="bored")], ["clean"])
    out = rb.plot_degradation({"moma": a | {"clean": a["reverb-0.5s"]}, "mean": b}, tmp_path / "deg.png")
    assert out.is_file() and out.stat().st_size > 1000


def test_evaluate_robustness_speaker_normalisation(tiny_setup):
    from moma.checkpoint import load_checkpoint
    from moma.features.normalise import Normaliser

    ckpt, utts = tiny_setup
    loaded = load_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    loaded.normaliser = Normaliser("speaker").fit([rng.normal(size=(30, 23)) for _ in range(2)], ["s0", "s0"])
    res = rb.evaluate_robustness(loaded, utts, ["clean", "white-0dB"], seed=0)
    assert res["clean"]["n"] == res["white-0dB"]["n"] == len(utts)
    # unseen speakers got statistics per condition, on a copy: the checkpoint's normaliser is untouched
    assert not loaded.normaliser.has_speaker("s1") and loaded.normaliser.has_speaker("s0")


def test_select_utterances_is_balanced_seeded_and_order_free():
    from moma.corpora.base import Utterance

    utts = [Utterance(id=f"u{i:02d}", path="x.wav", speaker=f"s{i % 4}", label="abc"[i % 3 if i < 24 else 0])
            for i in range(30)]  # label a is over-represented
    pick = rb.select_utterances(utts, 9, seed=0)
    assert [u.label for u in pick].count("a") == 3 and len({u.id for u in pick}) == 9
    assert [u.id for u in rb.select_utterances(list(reversed(utts)), 9, seed=0)] == [u.id for u in pick]
    assert [u.id for u in rb.select_utterances(utts, 9, seed=1)] != [u.id for u in pick]
    by_speaker = rb.select_utterances(utts, 8, seed=0, key="speaker")
    assert sorted(u.speaker for u in by_speaker) == ["s0", "s0", "s1", "s1", "s2", "s2", "s3", "s3"]
    assert len(rb.select_utterances(utts, None)) == 30 and len(rb.select_utterances(utts, 100)) == 30
    with pytest.raises(ValueError):
        rb.select_utterances(utts, 0)


def test_evaluate_robustness_cache_reuses_conditions(tiny_setup, tmp_path):
    ckpt, utts = tiny_setup
    first = rb.evaluate_robustness(ckpt, utts, ["clean", "white-5dB"], seed=0, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    again = rb.evaluate_robustness(ckpt, utts, ["white-5dB", "clean", "telephone"], seed=0, cache_dir=tmp_path)
    assert again["clean"] == first["clean"] and again["white-5dB"] == first["white-5dB"]
    assert [f.stat().st_mtime_ns for f in files] == stamps and len(list(tmp_path.glob("*.json"))) == 3
    other_seed = rb.evaluate_robustness(ckpt, utts, ["white-5dB"], seed=1, cache_dir=tmp_path)
    assert other_seed["white-5dB"]["n"] == len(utts) and len(list(tmp_path.glob("*.json"))) == 4


def test_evaluate_robustness_fusion_model_computes_functionals_of_the_perturbed_audio(tiny_setup, tmp_path):
    """A fusion checkpoint (features.functionals) is scored with the openSMILE functionals of each perturbed
    signal, standardised as trained: clean-condition predictions equal the Predictor's, which computes the
    functionals of the file by its own path."""
    from moma.features.functionals import compute_functionals
    from moma.features.normalise import Normaliser
    from moma.inference.predictor import Predictor

    _, utts = tiny_setup
    rng = np.random.default_rng(0)  # statistics of real functionals, so that standardised inputs are of unit scale
    raw = [compute_functionals(speech_like(50 + i, 0.5, amp=0.1 + 0.3 * rng.random()), "eGeMAPSv02", SR)
           for i in range(6)]
    ckpt = make_fusion_checkpoint(tmp_path / "fusion.safetensors",
                                  functionals_normaliser=Normaliser("global").fit([np.stack(raw)]))
    res = rb.evaluate_robustness(ckpt, utts, ["clean", "gain-10dB"], seed=0)
    assert res["clean"]["n"] == res["gain-10dB"]["n"] == len(utts)
    predictor = Predictor.from_checkpoint(ckpt, speech_check=None)
    labels = ["calm", "angry"]
    confusion = np.zeros((2, 2), dtype=int)
    for u in utts:
        confusion[labels.index(u.label), labels.index(predictor.predict_file(u.path).label)] += 1
    np.testing.assert_array_equal(np.asarray(res["clean"]["confusion"]), confusion)


def test_robustness_standardises_a_speaker_normalised_fusion_models_functionals_as_evaluate_does(tiny_setup, tmp_path,
                                                                                            monkeypatch):
    """Functionals of test speakers a speaker-normalised fusion model never met: `moma evaluate` fits each
    speaker's statistics on its own audio (transductive, as for the frames); the robustness harness used the
    training speakers' pooled statistics instead. The clean condition must feed the model what evaluate feeds it."""
    from moma.evaluation import metrics
    from moma.features.functionals import compute_functionals
    from moma.features.normalise import Normaliser
    from moma.inference.evaluate import evaluate_checkpoint
    from moma.inference.predictor import Predictor

    _, utts = tiny_setup
    rng = np.random.default_rng(1)
    rows = [compute_functionals(speech_like(70 + i, 0.5, amp=0.1 + 0.3 * rng.random()), "eGeMAPSv02", SR)
            for i in range(6)]
    func_norm = Normaliser("speaker").fit([np.stack(rows[:3]), np.stack(rows[3:])], ["train-a", "train-b"])
    ckpt = make_fusion_checkpoint(tmp_path / "fusion-speaker.safetensors", functionals_normaliser=func_norm)
    fed: list[dict[str, np.ndarray]] = []
    real, real_served = metrics.predict_posteriors, Predictor.posteriors

    def recording(*args, functionals=None, **kwargs):
        fed.append(functionals)
        return real(*args, functionals=functionals, **kwargs)

    def recording_served(self, feats, functionals=None):  # moma evaluate scores what the Predictor serves
        fed.append(dict(zip([u.id for u in utts], functionals)))
        return real_served(self, feats, functionals)

    monkeypatch.setattr(metrics, "predict_posteriors", recording)  # the harness imports it when it runs
    monkeypatch.setattr(Predictor, "posteriors", recording_served)
    rb.evaluate_robustness(ckpt, utts, ["clean"], seed=0)
    evaluated = evaluate_checkpoint(ckpt, utts, tmp_path / "eval", cache_dir=tmp_path / "cache")
    assert "functionals standardised with per-speaker" in evaluated["normalisation"]
    robust, evaluate = fed
    assert set(robust) == set(evaluate) == {u.id for u in utts}
    for u in utts:
        np.testing.assert_allclose(robust[u.id], evaluate[u.id], rtol=1e-4, atol=1e-4)
