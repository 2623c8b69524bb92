"""Servable ensembles (moma combine) and linear functionals models (moma classical --protocol all): what the
ensemble serves equals late fusion (evaluation.fusion.combine_posteriors) of its members, and a linear model
serves exactly its coef and standardiser."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import LABELS, LEVELS
from safetensors import safe_open
from safetensors.numpy import load_file

from moma.evaluation.fusion import combine_posteriors
from moma.inference.ensemble import combine_members, shared_labels
from moma.inference.predictor import Predictor

SPEAKERS = ("s1", "s2", "s3", "s4")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny labelled corpus on disk: 4 speakers x 3 classes x 2 files of 1 s noise, louder per class."""
    root = tmp_path_factory.mktemp("ens_corpus")
    rng = np.random.default_rng(1)
    rows = []
    for spk in SPEAKERS:
        for label in LABELS:
            for j in range(2):
                path = root / f"{spk}-{label}-{j}.wav"
                level = LEVELS[label] * float(rng.uniform(0.7, 1.4))
                sf.write(path, (rng.normal(size=16000) * level).astype(np.float32), 16000)
                rows.append({"id": path.stem, "path": str(path), "speaker": spk, "label": label, "corpus": "toy"})
    manifest = root / "toy.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, [r["path"] for r in rows]


@pytest.fixture(scope="module")
def second_checkpoint(tiny_checkpoint, tmp_path_factory):
    """Another MOMA member: the tiny checkpoint with its weights perturbed and another temperature."""
    from moma.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(tiny_checkpoint)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    info = {**loaded.info, "calibration": {"temperature": 1.7}}
    path = tmp_path_factory.mktemp("second") / "best.safetensors"
    return save_checkpoint(path, loaded.model, loaded.config, loaded.labels, loaded.normaliser, info=info)


@pytest.fixture(scope="module")
def linear_model(corpus, tmp_path_factory):
    pytest.importorskip("opensmile")
    from moma.cli.main import main

    manifest, _ = corpus
    out = tmp_path_factory.mktemp("linear")
    assert main(["classical", "--manifest", str(manifest), "--out", str(out), "--protocol", "all",
                 "--feature-sets", "eGeMAPSv02", "--cache", str(out / "cache"), "-q"]) == 0
    return out / "eGeMAPSv02.safetensors"


def test_moma_ensemble_equals_late_fusion_of_its_members(tiny_checkpoint, second_checkpoint, corpus, tmp_path):
    _, wavs = corpus
    files = wavs[:5]
    path = combine_members([tiny_checkpoint, second_checkpoint.parent], tmp_path / "ens.safetensors",
                           weights=[1.0, 3.0])
    ensemble = Predictor.from_checkpoint(path, speech_check=None)
    singles = [Predictor.from_checkpoint(c, speech_check=None) for c in (tiny_checkpoint, second_checkpoint)]
    assert [s.temperature for s in singles][1] == pytest.approx(1.7)
    got = ensemble.predict_files(files, batch_size=2)
    # each single predictor's probabilities are already temperature-scaled: the rule with T = 1 on them
    posts = [np.array([[p.probabilities[c] for c in LABELS] for p in s.predict_files(files)]) for s in singles]
    expected = combine_posteriors(posts, [1.0, 3.0])
    np.testing.assert_allclose([[p.probabilities[c] for c in LABELS] for p in got], expected, atol=1e-5)
    assert [p.label for p in got] == [LABELS[i] for i in expected.argmax(axis=1)]
    assert all(p.calibrated for p in got) and [p.source for p in got] == files
    one = ensemble.predict_signal(sf.read(files[0], dtype="float32")[0], 16000)
    np.testing.assert_allclose([one.probabilities[c] for c in LABELS], expected[0], atol=1e-5)
    assert len(one.attention["mixture"]) == one.num_frames > 0  # the first MOMA member's attention


def test_linear_model_serves_its_coef_and_standardiser(linear_model, corpus):
    from moma.audio.io import load_audio
    from moma.features.functionals import compute_functionals

    _, wavs = corpus
    tensors = load_file(str(linear_model))
    with safe_open(str(linear_model), "np") as fh:
        meta = json.loads(fh.metadata()["linear"])
    assert meta["kind"] == "linear-functionals" and meta["labels"] == LABELS and meta["feature_set"] == "eGeMAPSv02"
    assert len(meta["train_speakers"]) == 4 and meta["n_train"] == 24 and meta["corpus"] == "toy"
    assert meta["temperature"] > 0 and meta["C"] > 0 and tensors["coef"].shape == (3, 88)
    predictor = Predictor.from_checkpoint(linear_model, speech_check=None)
    preds = predictor.predict_files(wavs)
    right = 0
    for wav, pred in zip(wavs, preds):
        x = compute_functionals(load_audio(wav, 16000), "eGeMAPSv02")
        dec = ((x - tensors["mean"]) / tensors["std"]) @ tensors["coef"].T + tensors["intercept"]
        by_hand = np.exp(dec / meta["temperature"] - np.max(dec / meta["temperature"]))
        np.testing.assert_allclose([pred.probabilities[c] for c in LABELS], by_hand / by_hand.sum(), atol=1e-5)
        right += pred.label in wav.rsplit("/", 1)[-1]
    assert right >= 20  # loudness separates the classes: the SVM learnt them (24 training files)


def test_moma_and_linear_ensemble_is_served(tiny_checkpoint, linear_model, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from moma.audio.vad import VadConfig
    from moma.cli.main import main
    from moma.serving.app import ServiceSettings, create_app

    path = tmp_path / "fused.safetensors"
    assert main(["combine", str(tiny_checkpoint), str(linear_model), "--out", str(path)]) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    predictor = Predictor.from_checkpoint(path, speech_check=VadConfig(engine="energy"))
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    sf.write(buf, (rng.normal(size=16000) * 0.1).astype(np.float32), 16000, format="WAV")
    with TestClient(create_app(predictor, ServiceSettings())) as client:
        info = client.get("/v1/model").json()
        body = client.post("/v1/predict", files={"file": ("x.wav", buf.getvalue())}).json()
    assert info["kind"] == "ensemble" and info["labels"] == LABELS
    assert [m["kind"] for m in info["members"]] == ["moma", "linear-functionals"]
    assert info["members"][1]["feature_set"] == "eGeMAPSv02" and info["members"][0]["weight"] == 0.5
    assert body["label"] in LABELS and sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["calibrated"] is True and body["status"] == "ok"
    direct = predictor.predict_signal(sf.read(io.BytesIO(buf.getvalue()), dtype="float32")[0], 16000)
    assert body["probabilities"] == pytest.approx(direct.probabilities, abs=1e-6)
    assert main(["models", str(path)]) == 0
    assert "members: " in capsys.readouterr().out


def test_export_refuses_an_ensemble_in_one_line(tiny_checkpoint, second_checkpoint, tmp_path, capsys):
    from moma.cli.main import main

    path = combine_members([tiny_checkpoint, second_checkpoint], tmp_path / "ens.safetensors")
    assert main(["export", str(path), "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be exported to ONNX" in err
    with pytest.raises(ValueError, match="torch backend only"):
        Predictor.from_checkpoint(path, backend="onnx")


def test_members_must_share_two_classes():
    entries = [{"source": "a", "labels": ["angry", "sad"]}, {"source": "b", "labels": ["angry", "happy"]}]
    with pytest.raises(ValueError, match="share 1 class"):
        shared_labels(entries)
    assert shared_labels([{"source": "a", "labels": ["x", "y", "z"]}, {"source": "b", "labels": ["z", "x"]}]) == [
        "x", "z"]


def test_classical_fuse_writes_the_late_fusion_of_its_models(corpus, tmp_path, capsys):
    pytest.importorskip("opensmile")
    from moma.cli.main import main

    manifest, wavs = corpus
    out = tmp_path / "anchors"
    assert main(["classical", "--manifest", str(manifest), "--out", str(out), "--protocol", "all", "--fuse",
                 "--feature-sets", "eGeMAPSv02", "ComParE_2016", "--cache", str(tmp_path / "cache"), "-q"]) == 0
    assert "fusion: eGeMAPSv02+ComParE_2016" in capsys.readouterr().out
    fused = Predictor.from_checkpoint(out / "fusion.safetensors", speech_check=None)
    singles = [Predictor.from_checkpoint(out / f"{fs}.safetensors", speech_check=None)
               for fs in ("eGeMAPSv02", "ComParE_2016")]
    posts = [np.array([[p.probabilities[c] for c in LABELS] for p in s.predict_files(wavs[:4])]) for s in singles]
    got = [[p.probabilities[c] for c in LABELS] for p in fused.predict_files(wavs[:4])]
    np.testing.assert_allclose(got, combine_posteriors(posts, [1.0, 1.0]), atol=1e-5)
    assert main(["classical", "--manifest", str(manifest), "--out", str(out), "--fuse", "--feature-sets",
                 "eGeMAPSv02"]) == 2
    assert "--fuse writes a servable fusion" in capsys.readouterr().err


def test_an_ensemble_reports_the_out_of_domain_score_of_its_first_member_that_has_one(tiny_checkpoint,
                                                                                      second_checkpoint, corpus,
                                                                                      tmp_path):
    from helpers import add_test_ood

    _, wavs = corpus
    with_ood = add_test_ood(tiny_checkpoint, tmp_path / "ood.safetensors")
    single = Predictor.from_checkpoint(with_ood, speech_check=None).predict_files(wavs[:3])
    for order, index in (([with_ood, second_checkpoint], 0), ([second_checkpoint, with_ood], 1)):
        ensemble = Predictor.from_checkpoint(combine_members(order, tmp_path / f"ens{index}.safetensors"),
                                             speech_check=None)
        got = ensemble.predict_files(wavs[:3])
        assert [p.ood_score for p in got] == pytest.approx([p.ood_score for p in single], rel=1e-6)
        assert [p.in_domain for p in got] == [p.in_domain for p in single]
        card = ensemble.describe()
        assert card["ood"]["threshold"] == pytest.approx(ensemble.ood.threshold, abs=1e-4)
        assert card["ood_member"] == ensemble.members[index].entry["source"]
        assert [m["ood_threshold"] is None for m in card["members"]] == [index == 1, index == 0]
    plain = Predictor.from_checkpoint(combine_members([tiny_checkpoint, second_checkpoint], tmp_path / "p.safetensors"),
                                      speech_check=None)
    assert plain.ood is None and plain.predict_files(wavs[:1])[0].ood_score is None
    assert "moma ood fit" in plain.describe()["ood_note"]


def test_a_linear_model_scores_its_functionals_out_of_domain(linear_model, corpus, tmp_path):
    from helpers import tone

    from moma.inference.ensemble import read_linear_model

    _, wavs = corpus
    model = read_linear_model(linear_model)
    assert model.ood is not None and model.ood.representation == "functionals:eGeMAPSv02"
    assert model.ood.info["speakers"] == 4 and model.ood.info["utterances"] == 24
    predictor = Predictor.from_checkpoint(linear_model, speech_check=None)
    sf.write(tmp_path / "tone.wav", tone(900.0, 1.5, amp=0.3), 16000)
    preds = predictor.predict_files(wavs + [str(tmp_path / "tone.wav")])
    assert sum(p.in_domain for p in preds[:-1]) >= 20 and preds[-1].in_domain is False
    assert predictor.describe()["ood"]["representation"] == "functionals:eGeMAPSv02"
