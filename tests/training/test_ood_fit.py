"""Out-of-domain statistics at training time (moma.training.ood): every checkpoint a fold writes carries the density
of its training side, and `moma ood fit` adds it to a checkpoint made without it, changing nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import run_cli, tone

from moma.checkpoint import load_checkpoint, read_checkpoint_file
from moma.config import load_run_config
from moma.corpora.base import write_manifest
from moma.corpora.synthetic import make_synthetic_corpus
from moma.data.protocols import ProtocolSpec
from moma.training.crossval import run_cross_validation
from moma.training.ood import add_ood_to_checkpoint

TINY = ["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8", "train.max_epochs=1",
        "train.lr=0.01", "train.tensorboard=false", "train.val_speakers=1", "train.num_threads=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ood_synth")
    utts = make_synthetic_corpus(root / "corpus", num_speakers=5, utterances_per_emotion=1, seed=3, max_duration=1.2)
    return root, utts, write_manifest(utts, root / "synth.jsonl")


def test_every_checkpoint_of_a_fold_carries_the_density_of_its_training_side(corpus):
    root, utts, _ = corpus
    out = root / "cv"
    report = run_cross_validation(utts, load_run_config(sets=TINY), out,
                                  ProtocolSpec("loso", only_folds=("spk-spk01",)), cache_dir=root / "cache")
    fold = report["folds"][0]
    train_side = set(fold["train_speakers"]) | set(fold["val_speakers"])
    for name in ("best.safetensors", "last.safetensors"):
        ood = load_checkpoint(out / fold["name"] / name).ood
        assert ood is not None, name
        assert ood.info["speakers"] == len(train_side) == 4
        assert ood.info["utterances"] == sum(u.speaker in train_side for u in utts)
        assert ood.info["rule"] == "speaker-cv" and np.isfinite(ood.threshold) and ood.threshold > 0
        assert "spk-spk01" in ood.info["fitted_on"]
    best = load_checkpoint(out / fold["name"] / "best.safetensors")
    assert "calibration" in best.info  # the temperature was written after training, and the density kept
    flags = json.loads((out / fold["name"] / "result.json").read_text())["ood"]  # the test speaker's files
    assert flags["n"] == fold["n_test"] and 0.0 <= flags["flagged"] <= 1.0
    assert flags["threshold"] == pytest.approx(best.ood.threshold, abs=1e-4)


def test_ood_fit_adds_the_density_to_an_old_checkpoint_and_nothing_else(corpus, tiny_checkpoint, tmp_path):
    root, utts, manifest = corpus
    assert load_checkpoint(tiny_checkpoint).ood is None  # made without it: still loads
    out = tmp_path / "with-ood.safetensors"
    path, ood = add_ood_to_checkpoint(tiny_checkpoint, [manifest], cache_dir=root / "cache", out=out)
    assert path == out and ood.info["utterances"] == len(utts) and ood.info["speakers"] == 5
    old_meta, old_tensors = read_checkpoint_file(tiny_checkpoint)
    new_meta, new_tensors = read_checkpoint_file(out)
    assert {k: v for k, v in new_meta.items() if k != "ood"} == old_meta
    assert set(new_tensors) - set(old_tensors) == {k for k in new_tensors if k.startswith("ood.")} != set()
    for key, value in old_tensors.items():
        assert torch.equal(value, new_tensors[key]), key
    loaded = load_checkpoint(out)
    assert loaded.ood.threshold == pytest.approx(ood.threshold)
    # the training speakers only, when named
    _, some = add_ood_to_checkpoint(tiny_checkpoint, [manifest], cache_dir=root / "cache", out=tmp_path / "b",
                                    speakers=["spk01", "spk02"])
    assert some.info["speakers"] == 2
    with pytest.raises(ValueError, match="no utterances"):
        add_ood_to_checkpoint(tiny_checkpoint, [manifest], cache_dir=root / "cache", out=tmp_path / "c",
                              speakers=["nobody"])


def test_moma_ood_fit_cli_and_predictions_carry_the_score(corpus, tiny_checkpoint, tmp_path):
    from moma.inference.predictor import Predictor

    root, utts, manifest = corpus
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(tiny_checkpoint.read_bytes())
    run = run_cli("ood", "fit", str(ckpt), "--manifest", str(manifest), "--cache", str(root / "cache"))
    assert run.returncode == 0, run.stderr
    assert f"wrote {ckpt}: out-of-domain threshold" in run.stdout
    predictor = Predictor.from_checkpoint(ckpt, speech_check=None)
    foreign = tmp_path / "tone.wav"
    sf.write(foreign, tone(1000.0, seconds=1.5, amp=0.5), 16000)
    preds = predictor.predict_files([u.path for u in utts[:10]] + [str(foreign)])
    assert all(p.ood_score is not None for p in preds)
    assert sum(p.in_domain for p in preds[:10]) >= 8 and preds[-1].in_domain is False
    assert preds[-1].ood_score > predictor.ood.threshold
    signal = predictor.predict_signal(*sf.read(foreign, dtype="float32"))  # the in-memory path agrees
    assert signal.ood_score == pytest.approx(preds[-1].ood_score, rel=1e-5)
    assert predictor.describe()["ood"]["threshold"] == pytest.approx(predictor.ood.threshold, abs=1e-4)
    bad = run_cli("ood", "fit", str(ckpt), "--manifest", str(tmp_path / "missing.jsonl"))
    assert bad.returncode == 2 and "manifest not found" in bad.stderr and "Traceback" not in bad.stderr
