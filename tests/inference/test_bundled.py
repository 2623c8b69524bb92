"""Tests for the models bundled with the package (``src/moma/pretrained/NAME.safetensors``): each is small,
self-describing (config, labels, provenance, card fields, calibration where it has one) and ships with its
model card ``NAME.md``; ``moma predict`` uses the default one when no ``--checkpoint`` is given and any one by
name.

The whole module is skipped when no model is bundled (e.g. a checkout made before they were added).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from moma.inference.predictor import BUNDLED_CHECKPOINT, DEFAULT_MODEL, bundled_models

if not BUNDLED_CHECKPOINT.is_file():
    pytest.skip(f"no bundled model at {BUNDLED_CHECKPOINT}", allow_module_level=True)

MODELS = bundled_models()
EMODB_LABELS = ["angry", "bored", "disgust", "fear", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def predictor():
    from moma.inference.predictor import Predictor

    return Predictor.from_checkpoint(None)  # None: the default bundled model


def run_moma(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moma", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bundled_model_is_small_packaged_and_described(name):
    from moma.checkpoint import load_checkpoint

    path = MODELS[name]
    assert path.stat().st_size <= 10 * 1024 * 1024
    card = path.with_suffix(".md")
    assert card.is_file()
    text = card.read_text(encoding="utf-8")
    for needle in ("UAR", "leave-one-speaker-out", "calibrat", "never heard"):
        assert needle in text, f"{card.name} does not mention {needle!r}"
    loaded = load_checkpoint(path)
    assert {"description", "intended_use", "limitations"} <= set(loaded.info)
    assert loaded.info["test_speakers"] == [] and len(loaded.info["val_speakers"]) >= 2
    # out-of-domain statistics (moma ood fit on the training manifests): a few KB, threshold and AUROC on the card
    assert loaded.ood is not None and loaded.ood.info["rule"] == "speaker-cv"
    assert sum(v.size for v in loaded.ood.state_dict().values() if isinstance(v, np.ndarray)) * 4 < 20_000
    assert f"threshold {loaded.ood.threshold:.2f}" in text and "AUROC" in text


def test_default_model_is_the_pooled_one_and_calibrated(predictor):
    from moma.checkpoint import load_checkpoint

    loaded = load_checkpoint(BUNDLED_CHECKPOINT)
    assert DEFAULT_MODEL == "emodb-nemo-egemaps-8class"
    # a fusion model: eGeMAPS functionals of every input, standardised with the training statistics it carries
    assert loaded.config.features.functionals == "eGeMAPSv02" and loaded.config.model.functionals_dim == 88
    assert loaded.functionals_normaliser is not None and predictor.functionals_normaliser is not None
    assert set(EMODB_LABELS) < set(loaded.labels) and "surprise" in loaded.labels
    assert loaded.info["corpus"] == "pool" or "nemo" in str(loaded.info.get("corpus"))
    assert {s.split(".")[0] for s in loaded.info["val_speakers"]} == {"emodb", "nemo"}
    assert predictor.temperature == pytest.approx(loaded.info["calibration"]["temperature"])
    assert predictor.describe()["card"]["calibration"]["ece_after"] <= predictor.describe()["card"]["calibration"][
        "ece_before"]


def test_earlier_models_stay_selectable_by_name():
    from moma.inference.predictor import Predictor

    old = Predictor.from_checkpoint("emodb-7class")
    assert old.labels == EMODB_LABELS and old.config.features.pitch
    pooled = Predictor.from_checkpoint("emodb-nemo-8class")  # the default before the fusion model
    assert pooled.labels == Predictor.from_checkpoint(None).labels and pooled.functionals_normaliser is None


def test_bundled_model_predicts_a_signal(predictor):
    """A hum is not speech: by default no emotion; without the speech check the model still runs on it."""
    from moma.inference.predictor import Predictor

    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    signal = (0.1 * np.sin(2 * np.pi * 150 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32)
    checked = predictor.predict_signal(signal, 16000)
    assert (checked.status, checked.label, checked.probabilities) == ("no-speech", "", {})
    pred = Predictor.from_checkpoint(None, speech_check=None).predict_signal(signal, 16000)
    assert pred.label in predictor.labels and pred.status == "ok" and pred.speech_s is None
    assert pred.calibrated and pred.confidence == max(pred.probabilities.values())
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert pred.attention["mixture"].shape == (pred.num_frames,)


def test_cli_predict_uses_the_default_model_and_others_by_name(tmp_path, predictor):
    rng = np.random.default_rng(1)
    wav = tmp_path / "tone.wav"
    t = np.arange(24000) / 16000
    sf.write(str(wav), (0.1 * np.sin(2 * np.pi * 200 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32),
             16000)
    res = run_moma("predict", str(wav), "-q", "--vad", "energy")  # a tone: speech only to the energy VAD
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 1 and rows[0]["label"] in predictor.labels and not rows[0]["error"]
    assert sum(float(rows[0][f"p_{lab}"]) for lab in predictor.labels) == pytest.approx(1.0, abs=1e-4)
    res = run_moma("predict", str(wav), "-q", "--vad", "energy", "--checkpoint", "emodb-7class")
    assert res.returncode == 0, res.stderr
    assert list(csv.DictReader(io.StringIO(res.stdout)))[0].keys() >= {f"p_{lab}" for lab in EMODB_LABELS}
    res = run_moma("models")
    assert res.returncode == 0 and f"{DEFAULT_MODEL} (default)" in res.stdout and "emodb-7class:" in res.stdout


def test_cli_predict_real_emodb_file(emodb_root, predictor):
    """03a01Wa.wav (speaker 03, anger) was in the model's training data: this checks the wiring end to end
    (file -> features -> normalisation -> model -> calibrated posteriors -> CSV), not how well the model
    generalises."""
    wav = emodb_root / "wav" / "03a01Wa.wav"
    res = run_moma("predict", str(wav), "-q")
    assert res.returncode == 0, res.stderr
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    expected = predictor.predict_file(wav)
    assert row["label"] == expected.label
    for lab in predictor.labels:
        assert float(row[f"p_{lab}"]) == pytest.approx(expected.probabilities[lab], abs=1e-5)
    assert expected.label == "angry"
    assert (row["status"], row["calibrated"]) == ("ok", "true") and expected.status == "ok"
    assert float(row["confidence"]) == pytest.approx(expected.probabilities["angry"], abs=1e-5)
    assert float(row["speech_s"]) > 1.0


def _no_speech_clips() -> dict[str, np.ndarray]:
    from moma.audio.perturb import synthetic_music

    rng = np.random.default_rng(0)
    return {"near-silence": (rng.normal(size=48000) * 10 ** (-90 / 20)).astype(np.float32),  # 3 s at -90 dBFS
            "short": (rng.normal(size=1600) * 0.1).astype(np.float32),  # 0.1 s
            "music": synthetic_music(4.0, 16000, rng)}


@pytest.mark.parametrize("name", ["near-silence", "short", "music"])
def test_no_speech_gets_no_emotion(predictor, name):
    """Silence, a 0.1 s clip and music used to be given an emotion (near-silence: angry 0.58)."""
    pred = predictor.predict_signal(_no_speech_clips()[name], 16000)
    assert (pred.status, pred.label, pred.probabilities, pred.confidence) == ("no-speech", "", {}, 0.0)
    assert pred.speech_s == 0.0


def test_cli_no_speech_rows_and_too_short_speech(emodb_root, predictor, tmp_path):
    """Each no-speech clip gets a row with an empty label; 0.3 s of real speech is predicted but flagged."""
    for name, sig in _no_speech_clips().items():
        sf.write(str(tmp_path / f"{name}.wav"), sig, 16000)
    speech, sr = sf.read(str(emodb_root / "wav" / "03a01Wa.wav"), dtype="float32")
    pad = np.zeros(sr, dtype=np.float32)
    sf.write(str(tmp_path / "snippet.wav"), np.concatenate([pad, speech[int(0.3 * sr):int(0.6 * sr)], pad]), sr)
    res = run_moma("predict", str(tmp_path), "-q")
    assert res.returncode == 0, res.stderr
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(io.StringIO(res.stdout))}
    for name in _no_speech_clips():
        row = rows[f"{name}.wav"]
        assert (row["label"], row["status"], row["confidence"], row["p_angry"]) == ("", "no-speech", "", "")
    snippet = rows["snippet.wav"]
    assert snippet["status"] == "too-short" and snippet["label"] in predictor.labels
    assert 0 < float(snippet["speech_s"]) < 0.5
    assert "3 no-speech, 1 too-short" in res.stderr


def test_worker_processes_give_the_default_models_predictions(emodb_root, predictor):
    """The default model (a fusion model: openSMILE functionals per file) in two worker processes forked after
    this process ran its own openSMILE engine: the same labels and probabilities in the same order (up to the
    float rounding of batches made of other files: workers batch their own chunks)."""
    wavs = sorted((emodb_root / "wav").glob("03a0*.wav"))[:5]
    alone = predictor.predict_files(wavs, batch_size=2)
    together = predictor.predict_files(wavs, batch_size=2, jobs=2)
    assert [p.source for p in together] == [str(w) for w in wavs]
    assert [(p.label, p.status, p.speech_s) for p in together] == [(p.label, p.status, p.speech_s) for p in alone]
    for a, b in zip(alone, together):
        assert b.probabilities == pytest.approx(a.probabilities, abs=1e-6)
