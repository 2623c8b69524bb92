import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from moma.checkpoint import load_checkpoint, load_training_state
from moma.training.train import class_weights

JOB = Path(__file__).with_name("train_job.py")


def run_job(out_dir, mode="fresh", slow=0.0, adversarial=0.0):
    return subprocess.Popen([sys.executable, str(JOB), str(out_dir), mode, str(slow), str(adversarial)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def weights(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def test_class_weights_are_inverse_frequency():
    w = class_weights([0, 0, 0, 1], 3).numpy()
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0])


def test_training_writes_self_describing_checkpoints_and_learns(tmp_path):
    assert run_job(tmp_path / "run").wait(120) == 0
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_uar"] for r in rows) > 0.6  # the cue is learnable
    loaded = load_checkpoint(tmp_path / "run")  # a folder resolves to best.safetensors
    assert loaded.labels == ["a", "b", "c"]
    assert loaded.config.model.hidden_size == 8 and loaded.config.model.num_classes == 3
    assert loaded.info["epoch"] == max(rows, key=lambda r: r["val_uar"])["epoch"]
    assert (tmp_path / "run" / "config.yaml").is_file()
    # a temperature fitted on the validation speakers, which can only lower their NLL, and the predictor uses it
    cal = loaded.info["calibration"]
    assert cal["temperature"] > 0 and cal["nll_after"] <= cal["nll_before"] + 1e-4
    assert cal["n"] > 0 and cal["fitted_on"].startswith("validation")
    from moma.inference.predictor import Predictor

    predictor = Predictor.from_loaded(loaded)
    assert predictor.temperature == pytest.approx(cal["temperature"])
    feats = np.random.default_rng(0).normal(size=(50, loaded.config.model.input_dim)).astype(np.float32)
    pred = predictor.predict_features(feats)
    hot = np.exp(pred.logits / cal["temperature"] - np.max(pred.logits / cal["temperature"]))
    np.testing.assert_allclose(list(pred.probabilities.values()), hot / hot.sum(), rtol=1e-5)


@pytest.mark.parametrize("adversarial", [0.0, 0.5], ids=["plain", "speaker-adversarial"])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, adversarial):
    assert run_job(tmp_path / "full", adversarial=adversarial).wait(120) == 0
    proc = run_job(tmp_path / "killed", slow=0.3, adversarial=adversarial)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_training_state(tmp_path / "killed" / "last.safetensors")
    assert 2 <= state["epoch"] < 8  # really interrupted mid-run
    assert run_job(tmp_path / "killed", mode="resume", adversarial=adversarial).wait(120) == 0
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_rows = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in ("frames_per_s", "epoch_time_s")}
                          for r in rows]
    assert strip(resumed_rows) == strip(full_rows)
    for name in ("best.safetensors", "last.safetensors"):
        a, b = weights(tmp_path / "full" / name), weights(tmp_path / "killed" / name)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    if adversarial:  # the adversary resumed too: its weights are part of the resumable state
        full = load_training_state(tmp_path / "full" / "last.safetensors")["adversary"]
        resumed = load_training_state(tmp_path / "killed" / "last.safetensors")["adversary"]
        assert full.keys() == resumed.keys() and len(full) == 4
        for k in full:
            np.testing.assert_array_equal(np.asarray(full[k]), np.asarray(resumed[k]))
        assert "train_speaker_accuracy" in json.loads(full_rows[-1])
        assert not any(k.startswith("model.adversary") for k in weights(tmp_path / "full" / "best.safetensors"))


def test_gradient_reversal_flips_and_scales_the_encoder_gradient():
    import torch

    from moma.training.train import SpeakerAdversary

    torch.manual_seed(0)
    adv = SpeakerAdversary(dim=5, num_speakers=3, hidden=4, scale=0.5)
    x = torch.randn(2, 5, requires_grad=True)
    target = torch.tensor([0, 2])
    torch.nn.functional.cross_entropy(adv(x), target).backward()
    reversed_grad = x.grad.clone()
    head_grad = adv.net[0].weight.grad.clone()
    x.grad = None
    adv.zero_grad()
    torch.nn.functional.cross_entropy(adv.net(x), target).backward()  # the same head without reversal
    torch.testing.assert_close(reversed_grad, -0.5 * x.grad)
    torch.testing.assert_close(head_grad, adv.net[0].weight.grad)  # the head itself learns normally


def test_speaker_adversary_needs_every_training_speaker(tmp_path):
    from train_job import tiny_problem

    from moma.config import load_run_config
    from moma.features.normalise import Normaliser
    from moma.training.train import train_model

    feats, label_of, train_ids, val_ids = tiny_problem()
    cfg = load_run_config(sets=["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8",
                                "train.max_epochs=1", "train.tensorboard=false", "train.speaker_adversarial=1"])
    with pytest.raises(ValueError, match="needs the speaker of every training utterance"):
        train_model(cfg, feats, ["a", "b", "c"], label_of, train_ids, val_ids, tmp_path, Normaliser("none"),
                    speaker_of={k: "s0" for k in train_ids[:-1]})


def test_min_epochs_and_smoothed_monitor_steady_the_model_choice(tmp_path):
    """With min_epochs the schedule, patience and model choice ignore the first epochs; with monitor_smoothing
    the value they follow is an exponential moving average of the validation metric."""
    from moma.config import load_run_config
    from moma.features.normalise import Normaliser
    from moma.training.train import train_model
    from train_job import tiny_problem

    feats, label_of, train_ids, val_ids = tiny_problem()
    sets = ["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8", "train.lr=0.01",
            "train.max_epochs=6", "train.tensorboard=false", "train.num_threads=1", "train.lr_patience=0"]
    cfg = load_run_config(sets=sets + ["train.min_epochs=4", "train.monitor_smoothing=0.5"])
    train_model(cfg, feats, ["a", "b", "c"], label_of, train_ids, val_ids, tmp_path / "run", Normaliser("none"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert load_checkpoint(tmp_path / "run").info["epoch"] >= 4
    # lr_patience 0: the rate would drop after any epoch that does not improve, but not before epoch 4
    assert all(r["lr"] == 0.01 for r in rows[:4])
    assert rows[0]["monitor_value"] == rows[0]["val_uar"]
    for prev, row in zip(rows, rows[1:]):
        assert row["monitor_value"] == pytest.approx(0.5 * prev["monitor_value"] + 0.5 * row["val_uar"])
    with pytest.raises(ValueError, match="monitor_smoothing must be in"):
        train_model(load_run_config(sets=sets + ["train.monitor_smoothing=1.0"]), feats, ["a", "b", "c"], label_of,
                    train_ids, val_ids, tmp_path / "bad", Normaliser("none"))


def test_balance_weights_make_every_group_weigh_the_same():
    from moma.training.train import balance_weights

    groups = ["big"] * 8 + ["small"] * 2
    w = balance_weights(groups)
    assert w.mean() == pytest.approx(1.0)
    assert w[:8].sum() == pytest.approx(w[8:].sum())  # the 2-item corpus weighs as much as the 8-item one
    pairs = [("a", 0)] * 6 + [("a", 1)] * 2 + [("b", 0)] * 1 + [("b", 1)] * 3
    w = balance_weights(pairs)
    totals = {g: sum(x for x, h in zip(w, pairs) if h == g) for g in set(pairs)}
    assert max(totals.values()) == pytest.approx(min(totals.values()))


def test_balance_option_is_checked_before_training(tmp_path):
    from moma.config import load_run_config
    from moma.features.normalise import Normaliser
    from moma.training.train import train_model

    feats = {f"u{i}": np.random.default_rng(i).normal(size=(20, 4)).astype(np.float32) for i in range(4)}
    cfg = load_run_config(sets=["model.hidden_size=4", "model.context_dim=4", "model.projection_dim=4",
                                "train.max_epochs=1", "train.tensorboard=false", "train.balance=speaker"])
    with pytest.raises(ValueError, match="train.balance must be one of"):
        train_model(cfg, feats, ["a", "b"], {k: i % 2 for i, k in enumerate(feats)}, list(feats), [],
                    tmp_path, Normaliser("none"))
    cfg = load_run_config(sets=["model.hidden_size=4", "model.context_dim=4", "model.projection_dim=4",
                                "train.max_epochs=1", "train.tensorboard=false", "train.balance=corpus-class"])
    result = train_model(cfg, feats, ["a", "b"], {k: i % 2 for i, k in enumerate(feats)}, list(feats), [],
                         tmp_path / "ok", Normaliser("none"), corpus_of={"u0": "x", "u1": "x", "u2": "x", "u3": "y"})
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["train_loss"])


def test_resume_with_the_best_checkpoint_missing_chooses_again_instead_of_ending_without_one(tmp_path, caplog):
    """A resumable run whose best.safetensors is gone (deleted, or lost with a killed copy) used to keep the
    lost epoch's score, so no later epoch could beat it and the run ended with no checkpoint."""
    import importlib.util

    from moma.config import load_run_config
    from moma.features.normalise import Normaliser
    from moma.training.train import train_model

    spec = importlib.util.spec_from_file_location("train_job", JOB)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    feats, label_of, train_ids, val_ids = job.tiny_problem()
    sets = ["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8", "train.lr=0.01",
            "train.early_stop_patience=0", "train.tensorboard=false", "train.num_threads=1", "train.calibrate=false"]
    out = tmp_path / "run"
    train_model(load_run_config(sets=sets + ["train.max_epochs=2"]), feats, ["a", "b", "c"], label_of, train_ids,
                val_ids, out, Normaliser("none"))
    (out / "best.safetensors").unlink()
    with caplog.at_level("WARNING"):
        result = train_model(load_run_config(sets=sets + ["train.max_epochs=4"]), feats, ["a", "b", "c"], label_of,
                             train_ids, val_ids, out, Normaliser("none"), resume=True)
    assert "best.safetensors of epoch" in caplog.text and "is missing" in caplog.text
    assert (out / "best.safetensors").is_file() and result.best_epoch in (3, 4)
    assert load_checkpoint(out).info["epoch"] == result.best_epoch
