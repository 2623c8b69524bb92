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
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    signal = (0.1 * np.sin(2 * np.pi * 150 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32)
    pred = predictor.predict_signal(signal, 16000)
    assert pred.label in predictor.labels
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert pred.attention["mixture"].shape == (pred.num_frames,)


def test_cli_predict_uses_the_default_model_and_others_by_name(tmp_path, predictor):
    rng = np.random.default_rng(1)
    wav = tmp_path / "tone.wav"
    t = np.arange(24000) / 16000
    sf.write(str(wav), (0.1 * np.sin(2 * np.pi * 200 * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32),
             16000)
    res = run_moma("predict", str(wav), "-q")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 1 and rows[0]["label"] in predictor.labels and not rows[0]["error"]
    assert sum(float(rows[0][f"p_{lab}"]) for lab in predictor.labels) == pytest.approx(1.0, abs=1e-4)
    res = run_moma("predict", str(wav), "-q", "--checkpoint", "emodb-7class")
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
