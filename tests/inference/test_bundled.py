"""Tests for the model bundled with the package (``src/moma/pretrained/emodb-7class.safetensors``):
it is small, self-describing (config, labels, provenance, model card fields), ships with its model card (NAME.md beside it),
and ``moma predict`` uses it when no ``--checkpoint`` is given.

The whole module is skipped when the bundled model is absent (e.g. a checkout made before it was added).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from moma.inference.predictor import BUNDLED_CHECKPOINT

if not BUNDLED_CHECKPOINT.is_file():
    pytest.skip(f"no bundled model at {BUNDLED_CHECKPOINT}", allow_module_level=True)

EMODB_LABELS = ["angry", "bored", "disgust", "fear", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def predictor():
    from moma.inference.predictor import Predictor

    return Predictor.from_checkpoint(None)  # None: the bundled model


def run_moma(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moma", *args], capture_output=True, text=True, timeout=180)


def test_bundled_model_is_small_and_packaged():
    assert BUNDLED_CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    card = BUNDLED_CHECKPOINT.with_suffix(".md")
    assert card.is_file()
    text = card.read_text(encoding="utf-8")
    for needle in ("EmoDB", "UAR", "leave-one-speaker-out", "calibrated"):
        assert needle in text


def test_bundled_model_describes_itself(predictor):
    from moma.checkpoint import load_checkpoint

    loaded = load_checkpoint(BUNDLED_CHECKPOINT)
    assert loaded.labels == EMODB_LABELS
    assert loaded.config.features.pitch and loaded.config.model.input_dim == 25
    assert loaded.normaliser.mode == "global"
    assert loaded.info["corpus"] == "emodb" and loaded.info["test_speakers"] == []
    assert loaded.info["fold"] == "all" and len(loaded.info["val_speakers"]) == 2
    card = predictor.describe()["card"]  # what GET /v1/model shows
    assert {"description", "intended_use", "limitations"} <= set(card)
    assert predictor.labels == EMODB_LABELS and predictor.sample_rate == 16000


def test_bundled_model_predicts_a_signal(predictor):
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    signal = (0.1 * np.sin(2 * np.pi * 150 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32)
    pred = predictor.predict_signal(signal, 16000)
    assert pred.label in EMODB_LABELS
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert pred.attention["mixture"].shape == (pred.num_frames,)


def test_cli_predict_uses_bundled_model(tmp_path):
    rng = np.random.default_rng(1)
    wav = tmp_path / "tone.wav"
    t = np.arange(24000) / 16000
    sf.write(str(wav), (0.1 * np.sin(2 * np.pi * 200 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32),
             16000)
    res = run_moma("predict", str(wav), "-q")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 1 and rows[0]["label"] in EMODB_LABELS and not rows[0]["error"]
    assert sum(float(rows[0][f"p_{lab}"]) for lab in EMODB_LABELS) == pytest.approx(1.0, abs=1e-4)


def test_cli_predict_real_emodb_file(emodb_root, predictor):
    """03a01Wa.wav (speaker 03, anger) was in the model's training data: this checks the wiring end to end
    (file -> features with pitch -> global normalisation -> model -> CSV), not how well the model generalises."""
    wav = emodb_root / "wav" / "03a01Wa.wav"
    res = run_moma("predict", str(wav), "-q")
    assert res.returncode == 0, res.stderr
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    expected = predictor.predict_file(wav)
    assert row["label"] == expected.label
    for lab in EMODB_LABELS:
        assert float(row[f"p_{lab}"]) == pytest.approx(expected.probabilities[lab], abs=1e-5)
    assert expected.label == "angry"
