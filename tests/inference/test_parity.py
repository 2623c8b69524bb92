"""What you evaluate is what you serve: one model kind per test, the same files give the same probabilities (to
1e-5) through ``moma evaluate`` (evaluate_checkpoint's stored predictions), ``Predictor.predict_file(s)``, the
service's ``/v1/predict`` and the ONNX backend where ONNX applies (refused in one line where it does not).

Every path goes through :func:`moma.evaluation.posteriors.class_posteriors`; each test also checks the
probabilities against a computation by hand (temperature, a segment model's window mean, the fusion rule), so
the paths cannot agree on a wrong answer. Tiny models and a few seconds of synthetic audio: no corpus needed,
except the last test, which checks the bundled models on EmoDB files when EmoDB is present.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import LABELS, LEVELS, make_fusion_checkpoint, make_tiny_checkpoint, write_tone
from scipy.special import softmax

from moma.corpora.base import Utterance
from moma.inference.evaluate import evaluate_checkpoint
from moma.inference.predictor import Predictor

ATOL = 1e-5
SECONDS = (0.4, 0.9, 1.3, 2.1)  # shorter and longer than the segment model's 0.5 s windows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Eight labelled tones, two of each length, louder per class, as files and as utterances of 2 speakers."""
    root = tmp_path_factory.mktemp("parity_audio")
    utts = []
    for i in range(8):
        label = LABELS[i % 3]
        path = write_tone(root / f"f{i}.wav", SECONDS[i % 4], seed=i, level=LEVELS[label])
        utts.append(Utterance(id=f"f{i}", path=str(path), speaker=f"s{i % 2}", label=label, corpus="toy"))
    return utts


def probs(pred, labels) -> list[float]:
    return [pred.probabilities[c] for c in labels]


def served_everywhere(model, utts, tmp_path, *, onnx: bool = True) -> np.ndarray:
    """The probabilities (files, labels) of ``model`` through evaluate, predict_files, predict_file, the service
    and (``onnx``) the ONNX backend, checked equal to 1e-5; returns predict_files'."""
    from fastapi.testclient import TestClient

    from moma.serving.app import ServiceSettings, create_app

    predictor = Predictor.from_checkpoint(model, speech_check=None)  # tones: no speech to Silero
    labels = predictor.labels
    paths = [u.path for u in utts]
    batched = np.array([probs(p, labels) for p in predictor.predict_files(paths, batch_size=3)])
    singles = np.array([probs(predictor.predict_file(p), labels) for p in paths])
    np.testing.assert_allclose(singles, batched, atol=ATOL, rtol=0)
    report = evaluate_checkpoint(model, utts, tmp_path / "eval", cache_dir=tmp_path / "cache" / "features")
    stored = {p["id"]: p["posteriors"] for p in report["folds"][0]["test"]["predictions"]}
    np.testing.assert_allclose([stored[u.id] for u in utts], batched, atol=ATOL, rtol=0)
    assert report["calibrated"] == predictor.calibrated
    with TestClient(create_app(predictor, ServiceSettings())) as client:
        for path, row in zip(paths, batched):
            with open(path, "rb") as fh:
                body = client.post("/v1/predict?attention=false", files={"file": ("x.wav", fh.read())}).json()
            np.testing.assert_allclose([body["probabilities"][c] for c in labels], row, atol=ATOL, rtol=0)
    if onnx:
        from moma.inference.export import export_onnx

        export_onnx(model, tmp_path / "onnx")
        onnx_p = Predictor.from_checkpoint(tmp_path / "onnx", backend="onnx", speech_check=None)
        got = [probs(p, labels) for p in onnx_p.predict_files(paths, batch_size=3)]
        np.testing.assert_allclose(got, batched, atol=ATOL, rtol=0)
    return batched


def refuses_onnx_in_one_line(model, tmp_path, capsys, needle: str, api_needle: str | None = None) -> None:
    """`moma export` refuses ``model`` with one line holding ``needle``; so does the onnx backend."""
    from moma.cli.main import main

    assert main(["export", str(model), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    with pytest.raises(ValueError, match=api_needle or needle) as refused:
        Predictor.from_checkpoint(model, backend="onnx")
    assert "\n" not in str(refused.value)


def by_hand(model_path, utts, windows: int = 0, hop: int = 0) -> np.ndarray:
    """mean over windows of softmax(z / T) from the PyTorch model itself, one window per forward call."""
    from moma.checkpoint import load_checkpoint
    from moma.data.batching import window_starts

    loaded = load_checkpoint(model_path)
    predictor = Predictor.from_loaded(loaded, speech_check=None)
    temperature = loaded.info["calibration"]["temperature"]
    out = []
    for u in utts:
        feats = predictor.file_features(u.path)[0]
        n = feats.shape[0]
        rows = []
        for start in window_starts(n, windows, hop):
            piece = torch.from_numpy(feats[start:min(n, start + windows) if windows else n][None])
            with torch.no_grad():
                z = loaded.model(piece, torch.tensor([piece.shape[1]])).logits[0].double().numpy()
            rows.append(softmax(z / temperature))
        out.append(np.mean(rows, axis=0))
    return np.array(out)


def test_plain_checkpoint(tiny_checkpoint, files, tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, speech_check=None)
    assert predictor.calibrated and abs(predictor.temperature - 1.0) > 1e-3  # the temperature must show
    served = served_everywhere(tiny_checkpoint, files, tmp_path)
    np.testing.assert_allclose(served, by_hand(tiny_checkpoint, files), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def segment_checkpoint(tmp_path_factory):
    """A tiny model trained on 0.5 s windows cut every 0.2 s, calibrated with a temperature of 0.6."""
    from moma.checkpoint import load_checkpoint, save_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("segment"),
                                sets=["data.segment_length_s=0.5", "data.segment_hop_s=0.2"])
    loaded = load_checkpoint(path)
    info = {**loaded.info, "calibration": {**loaded.info["calibration"], "temperature": 0.6}}
    return save_checkpoint(path, loaded.model, loaded.config, loaded.labels, loaded.normaliser, info=info)


def test_segment_trained_checkpoint(segment_checkpoint, files, tmp_path):
    """The mean of the windows' temperature-scaled posteriors, 0.5 s windows every 0.2 s as training cut them
    (a file shorter than a window is one window), on every path; the attention covers the whole file."""
    served = served_everywhere(segment_checkpoint, files, tmp_path)
    np.testing.assert_allclose(served, by_hand(segment_checkpoint, files, windows=50, hop=20), atol=ATOL, rtol=0)
    whole = by_hand(segment_checkpoint, files)  # not what a segment model serves: the whole file at once
    assert np.abs(whole - served).max() > 1e-3
    predictor = Predictor.from_checkpoint(segment_checkpoint, speech_check=None)
    pred = predictor.predict_file(files[3].path)  # 2.1 s: many windows
    assert pred.num_frames == predictor.file_features(files[3].path)[0].shape[0] == len(pred.attention["mixture"])
    # the timeline's windows go through the same function: a window's raw probabilities are predict's
    from moma.inference.timeline import TimelineConfig, timeline_for_signal

    signal = sf.read(files[3].path, dtype="float32")[0]
    from moma.audio.vad import VadConfig

    config = TimelineConfig(window_s=1.0, hop_s=1.0, smooth=1, min_speech=0.0, vad=VadConfig(engine="energy"))
    timeline = timeline_for_signal(predictor, signal, config)
    first = predictor.predict_prepared([signal[:16000]], check_speech=False)[0]
    row = timeline.rows[0].raw_probabilities
    np.testing.assert_allclose([row[c] for c in LABELS], probs(first, LABELS), atol=ATOL, rtol=0)


def test_functionals_fusion_checkpoint(files, tmp_path):
    pytest.importorskip("opensmile", reason="fusion models read openSMILE functionals (pip install opensmile)")
    ckpt = make_fusion_checkpoint(tmp_path / "fusion.safetensors", labels=LABELS,
                                  info={"calibration": {"temperature": 0.5}})
    served_everywhere(ckpt, files, tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None,
                    reason="the GE2E front end needs the resemblyzer wheel (pip install 'moma-ser[pretrained]')")
def test_pretrained_front_end_checkpoint(files, tmp_path, capsys):
    from moma.checkpoint import save_checkpoint
    from moma.config import RunConfig, replace
    from moma.features.normalise import Normaliser
    from moma.model import build_model

    cfg = RunConfig()
    cfg = replace(cfg, features=replace(cfg.features, frontend="ge2e"),
                  model=replace(cfg.model, num_classes=3, input_dim=256, hidden_size=8, context_dim=8,
                                projection_dim=8, num_layers=1))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # decisive outputs, so that a wrong path could not hide near uniform posteriors
        for p in model.parameters():
            p.mul_(4.0)
    ckpt = save_checkpoint(tmp_path / "ge2e.safetensors", model, cfg, LABELS, Normaliser("utterance"),
                           info={"calibration": {"temperature": 1.5}})
    served_everywhere(ckpt, files[:4], tmp_path, onnx=False)
    refuses_onnx_in_one_line(ckpt, tmp_path, capsys, "features.frontend=ge2e")


@pytest.fixture(scope="module")
def linear_model(files, tmp_path_factory):
    """A linear functionals model (the artefact `moma classical --protocol all` writes) with a temperature:
    its standardiser from the files' own functionals, seeded random weights."""
    pytest.importorskip("opensmile", reason="linear models read openSMILE functionals (pip install opensmile)")
    from moma.audio.io import load_audio
    from moma.features.functionals import compute_functionals
    from moma.inference.ensemble import LinearModel, save_linear_model

    rows = np.stack([compute_functionals(load_audio(u.path, 16000), "eGeMAPSv02") for u in files])
    rng = np.random.default_rng(5)
    model = LinearModel(coef=rng.normal(scale=0.3, size=(3, 88)).astype(np.float32),
                        intercept=rng.normal(size=3).astype(np.float32), mean=rows.mean(0),
                        std=np.where(rows.std(0) > 0, rows.std(0), 1.0).astype(np.float32), labels=list(LABELS),
                        feature_set="eGeMAPSv02", temperature=1.3, info={"C": 1.0, "n_train": len(files)})
    return save_linear_model(tmp_path_factory.mktemp("linear") / "eGeMAPSv02.safetensors", model)


def test_linear_functionals_model(linear_model, files, tmp_path, capsys):
    from moma.audio.io import load_audio
    from moma.features.functionals import compute_functionals
    from moma.inference.ensemble import read_linear_model

    served = served_everywhere(linear_model, files, tmp_path, onnx=False)
    model = read_linear_model(linear_model)
    x = np.stack([compute_functionals(load_audio(u.path, 16000), "eGeMAPSv02") for u in files])
    decision = ((x - model.mean) / model.std) @ model.coef.T + model.intercept
    np.testing.assert_allclose(served, softmax(decision / 1.3, axis=1), atol=ATOL, rtol=0)
    refuses_onnx_in_one_line(linear_model, tmp_path, capsys, "cannot be exported to ONNX", "torch backend only")


@pytest.fixture(scope="module")
def ensemble(tiny_checkpoint, segment_checkpoint, linear_model, tmp_path_factory):
    """`moma combine` of the plain and the segment-trained checkpoints and the linear model, weights 1:2:1."""
    from moma.cli.main import main

    path = tmp_path_factory.mktemp("ensemble") / "ensemble.safetensors"
    assert main(["combine", str(tiny_checkpoint), str(segment_checkpoint), str(linear_model), "--out", str(path),
                 "--weights", "1", "2", "1"]) == 0
    return path


def test_ensemble(ensemble, tiny_checkpoint, segment_checkpoint, linear_model, files, tmp_path, capsys):
    """The fusion rule (weighted geometric mean) over what each member serves alone, on every path."""
    from moma.evaluation.fusion import combine_posteriors

    served = served_everywhere(ensemble, files, tmp_path, onnx=False)
    alone = [np.array([probs(p, LABELS) for p in Predictor.from_checkpoint(m, speech_check=None).predict_files(
        [u.path for u in files])]) for m in (tiny_checkpoint, segment_checkpoint, linear_model)]
    np.testing.assert_allclose(served, combine_posteriors(alone, [1, 2, 1]), atol=ATOL, rtol=0)
    refuses_onnx_in_one_line(ensemble, tmp_path, capsys, "cannot be exported to ONNX", "torch backend only")
    predictor = Predictor.from_checkpoint(ensemble, speech_check=None)
    with pytest.raises(ValueError, match="not one model's feature arrays") as err:
        predictor.predict_batch([np.zeros((50, 23), dtype=np.float32)])
    assert "\n" not in str(err.value)


def test_ensemble_adapts_each_member_as_it_would_alone(ensemble, tiny_checkpoint, segment_checkpoint, linear_model,
                                                       files, tmp_path):
    """``--adapt batch``: every member normalises with the inputs' own statistics (the linear member its
    functionals); evaluate and predict agree under it too, and it changes the probabilities."""
    from moma.evaluation.fusion import combine_posteriors

    paths = [u.path for u in files]
    predictor = Predictor.from_checkpoint(ensemble, speech_check=None)
    adapted = np.array([probs(p, LABELS) for p in predictor.predict_files(paths, batch_size=3, adapt="batch")])
    alone = [np.array([probs(p, LABELS) for p in Predictor.from_checkpoint(m, speech_check=None).predict_files(
        paths, adapt="batch")]) for m in (tiny_checkpoint, segment_checkpoint, linear_model)]
    np.testing.assert_allclose(adapted, combine_posteriors(alone, [1, 2, 1]), atol=ATOL, rtol=0)
    plain = np.array([probs(p, LABELS) for p in predictor.predict_files(paths)])
    assert np.abs(adapted - plain).max() > 1e-3
    report = evaluate_checkpoint(ensemble, files, tmp_path / "eval", cache_dir=tmp_path / "cache" / "features",
                                 adapt="batch")
    stored = {p["id"]: p["posteriors"] for p in report["folds"][0]["test"]["predictions"]}
    np.testing.assert_allclose([stored[u.id] for u in files], adapted, atol=ATOL, rtol=0)
    assert report["normalisation"].startswith("each member its own: ") and "transductive" in report["normalisation"]
    utterance = predictor.predict_files(paths, adapt="utterance")  # each file by its own statistics: runs too
    assert all(p.label in LABELS for p in utterance)


EMODB_LABELS = {"W": "angry", "L": "bored", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}


@pytest.mark.parametrize("name", ["emodb-nemo-egemaps-8class", "emodb-7class"])
def test_bundled_models_predict_what_evaluate_reports_on_emodb(emodb_root, name, tmp_path):
    """Ten EmoDB files (every speaker, every emotion, short and long): the bundled model's `moma evaluate`
    posteriors are the probabilities `moma predict` gives each file."""
    from moma.corpora.emodb import load_emodb
    from moma.inference.predictor import DEFAULT_MODEL, bundled_models

    if name not in bundled_models():
        pytest.skip(f"{name} is not bundled")
    every = load_emodb(emodb_root)
    picks = every[:: len(every) // 10][:10]
    utts = [Utterance(id=u.id, path=u.path, speaker=u.speaker, label=EMODB_LABELS[u.label], corpus="emodb")
            for u in picks]
    assert len({u.speaker for u in utts}) >= 5 and len({u.label for u in utts}) >= 5
    model = None if name == DEFAULT_MODEL else name  # None: the default, as `moma predict` without --checkpoint
    predictor = Predictor.from_checkpoint(model, speech_check=None)
    predicted = [probs(p, predictor.labels) for p in predictor.predict_files([u.path for u in utts])]
    report = evaluate_checkpoint(model, utts, tmp_path / "eval", cache_dir=tmp_path / "cache" / "features")
    stored = {p["id"]: p["posteriors"] for p in report["folds"][0]["test"]["predictions"]}
    np.testing.assert_allclose([stored[u.id] for u in utts], predicted, atol=ATOL, rtol=0)
    assert report["calibrated"] == predictor.calibrated == (model is None)  # the default model is calibrated
