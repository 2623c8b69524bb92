"""Tests for moma.inference.predictor: the Predictor API (signals, files, length-bucketed batches), its doctests,
``moma predict`` (files, folders, globs, bad files, CSV/JSONL output, exit status), upload decoding.

A tiny MOMA (hidden 8) is trained for 2 epochs on filterbanks of synthetic noise whose level depends
on the class, so the checkpoint is real (trained by moma.training.train, saved by moma.checkpoint) and fast.
Other test files reuse ``make_tiny_checkpoint`` and ``write_tone``.
"""

from __future__ import annotations

import csv
import doctest
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (  # noqa: F401
    LABELS,
    LEVELS,
    make_tiny_checkpoint,
    make_webm_opus,
    run_cli,
    on_screen,
    run_cli_on_a_terminal,
    write_tone,
)


@pytest.fixture(scope="session")
def predictor(tiny_checkpoint):
    from moma.audio.vad import VadConfig
    from moma.inference.predictor import Predictor

    # the energy VAD: the test signals are noise and tones standing in for speech, which Silero rightly rejects
    return Predictor.from_checkpoint(tiny_checkpoint, speech_check=VadConfig(engine="energy"))


@pytest.fixture()
def audio_dir(tmp_path) -> Path:
    d = tmp_path / "audio"
    d.mkdir()
    for i, secs in enumerate([0.4, 1.3, 0.7, 2.1, 0.9]):
        write_tone(d / f"f{i}.wav", secs, seed=i, sr=16000 if i % 2 else 22050)
    return d


# --------------------------------------------------------------------------- Python API


def test_predict_signal_returns_label_probabilities_attention(predictor):
    sig = np.random.default_rng(1).normal(scale=0.1, size=12000).astype(np.float32)
    pred = predictor.predict_signal(sig, 16000)
    assert pred.label in LABELS
    assert set(pred.probabilities) == set(LABELS)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert pred.label == max(pred.probabilities, key=pred.probabilities.get)
    # 12000 samples -> 1 + (12000 - 400) // 160 = 73 frames of 10 ms
    assert pred.num_frames == 73
    assert pred.attention["mixture"].shape == (73,)
    assert pred.attention["layer1"].shape == (73,)
    assert pred.attention["blocks"].shape == (3, 73)
    assert pred.attention["gammas"].shape == (3,)
    assert pred.attention["mixture"].sum() == pytest.approx(1.0, abs=1e-5)
    assert pred.duration_s == pytest.approx(0.75)


def test_predict_signal_resamples_and_downmixes(predictor):
    """A stereo 44.1 kHz signal is the same as its mono 16 kHz version (to resampler accuracy)."""
    import soxr

    mono = np.random.default_rng(2).normal(scale=0.1, size=44100).astype(np.float32)
    stereo = np.stack([mono, mono], axis=1)
    a = predictor.predict_signal(stereo, 44100)
    b = predictor.predict_signal(soxr.resample(mono, 44100, 16000, quality="HQ"), 16000)
    assert a.num_frames == b.num_frames
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)


def test_learned_cue_is_used(predictor):
    """The tiny model learned the noise level: loud noise and near-silence get different labels."""
    rng = np.random.default_rng(3)
    loud = predictor.predict_signal((rng.normal(size=8000) * LEVELS["angry"]).astype(np.float32), 16000)
    quiet = predictor.predict_signal((rng.normal(size=8000) * LEVELS["neutral"]).astype(np.float32), 16000)
    assert loud.probabilities["angry"] > quiet.probabilities["angry"]


def test_predict_files_matches_one_by_one_and_keeps_order(predictor, audio_dir):
    paths = sorted(audio_dir.glob("*.wav"))
    batched = predictor.predict_files(paths, batch_size=2)
    assert [p.source for p in batched] == [str(p) for p in paths]
    for path, pred in zip(paths, batched):
        alone = predictor.predict_file(path)
        assert pred.num_frames == alone.num_frames
        np.testing.assert_allclose(pred.logits, alone.logits, atol=1e-5)
        np.testing.assert_allclose(pred.attention["mixture"], alone.attention["mixture"], atol=1e-5)
        assert pred.duration_s == pytest.approx(alone.duration_s)


def test_predict_files_buckets_by_length(predictor, audio_dir, monkeypatch):
    """Batches hold files of neighbouring lengths, not files in input order."""
    seen: list[list[int]] = []
    original = predictor.predict_batch

    def spy(feats, functionals=None):
        seen.append([f.shape[0] for f in feats])
        return original(feats, functionals)

    monkeypatch.setattr(predictor, "predict_batch", spy)
    predictor.predict_files(sorted(audio_dir.glob("*.wav")), batch_size=2)
    assert [len(b) for b in seen] == [2, 2, 1]
    flat = [n for b in seen for n in b]
    assert flat == sorted(flat)


def test_predict_files_bad_file_raise_or_record(predictor, audio_dir):
    bad = audio_dir / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    paths = [audio_dir / "f0.wav", bad, audio_dir / "missing.wav"]
    from moma.audio.io import AudioError

    with pytest.raises(AudioError):
        predictor.predict_files(paths)
    preds = predictor.predict_files(paths, on_error="record")
    assert preds[0].ok and preds[0].label in LABELS
    assert not preds[1].ok and ("malformed" in preds[1].error or "recognised" in preds[1].error)
    assert preds[2].error == "file not found"


def test_predict_file_rejects_too_short(predictor, tmp_path):
    from moma.audio.io import AudioError

    path = write_tone(tmp_path / "short.wav", 0.01)
    with pytest.raises(AudioError, match="too short"):
        predictor.predict_file(path)


def test_bundled_checkpoint_missing_is_a_clear_error(monkeypatch, tmp_path):
    import moma.inference.predictor as inf

    monkeypatch.setattr(inf, "BUNDLED_CHECKPOINT", tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        inf.Predictor.from_checkpoint(None)


def test_models_are_chosen_by_path_or_bundled_name(monkeypatch, tmp_path, tiny_checkpoint, capsys):
    """A bundled model is named by its file stem; a path wins over a name; an unknown name lists the bundled
    ones; ``moma models`` lists them with their labels and cards."""
    import shutil

    import moma.inference.predictor as inf
    from moma.cli.main import main

    shutil.copy(tiny_checkpoint, tmp_path / "tiny-3class.safetensors")
    (tmp_path / "tiny-3class.md").write_text("# card\n")
    monkeypatch.setattr(inf, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setattr(inf, "DEFAULT_MODEL", "tiny-3class")
    monkeypatch.setattr(inf, "BUNDLED_CHECKPOINT", tmp_path / "tiny-3class.safetensors")
    assert inf.bundled_models() == {"tiny-3class": tmp_path / "tiny-3class.safetensors"}
    assert inf.resolve_model("tiny-3class") == tmp_path / "tiny-3class.safetensors"
    assert inf.resolve_model(None) == tmp_path / "tiny-3class.safetensors"
    assert inf.resolve_model(tiny_checkpoint) == tiny_checkpoint
    assert inf.Predictor.from_checkpoint("tiny-3class").labels == inf.Predictor.from_checkpoint(tiny_checkpoint).labels
    with pytest.raises(FileNotFoundError, match="not a bundled model .bundled: tiny-3class"):
        inf.resolve_model("emodb-9class")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny-3class (default): 3 classes") and "tiny-3class.md" in out


def test_doctests(tiny_checkpoint, tmp_path):
    import moma.inference.predictor

    wav = write_tone(tmp_path / "doc.wav", 0.8)
    result = doctest.testmod(moma.inference.predictor, extraglobs={"checkpoint_path": tiny_checkpoint, "wav_path": wav},
                             optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6
    assert result.failed == 0


def test_describe_is_json_able(predictor):
    card = predictor.describe()
    json.dumps(card)
    assert card["labels"] == LABELS
    assert card["sample_rate"] == 16000
    assert card["architecture"] == "moma"


@pytest.mark.slow
def test_cli_predict_folder_glob_csv(tiny_checkpoint, audio_dir, tmp_path):
    out = tmp_path / "results.csv"
    (audio_dir / "notes.txt").write_text("not audio")  # folders yield audio extensions only
    res = run_cli("predict", str(audio_dir), str(audio_dir / "f1.wav"), "--vad", "energy", "--checkpoint",
                  str(tiny_checkpoint), "--out", str(out), "--batch-size", "2")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == ["f0.wav", "f1.wav", "f2.wav", "f3.wav", "f4.wav"]
    for r in rows:
        assert r["label"] in LABELS and r["error"] == ""
        assert sum(float(r[f"p_{lab}"]) for lab in LABELS) == pytest.approx(1.0, abs=1e-4)
    res = run_cli("predict", str(audio_dir / "f[13].wav"), "--vad", "energy", "--checkpoint",
                  str(tiny_checkpoint), "--out", str(tmp_path / "g.csv"))
    assert res.returncode == 0, res.stderr
    assert [Path(r["path"]).name for r in csv.DictReader((tmp_path / "g.csv").open())] == ["f1.wav", "f3.wav"]


@pytest.mark.slow
def test_cli_predict_bad_file_jsonl_and_plots(tiny_checkpoint, audio_dir, tmp_path):
    (audio_dir / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    out = tmp_path / "results.jsonl"
    res = run_cli("predict", str(audio_dir), str(tmp_path / "nothing-*.wav"), "--vad", "energy", "--checkpoint",
                  str(tiny_checkpoint), "--out", str(out), "--plot", str(tmp_path / "plots"))
    assert res.returncode == 1  # some inputs failed, the rest were written
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["broken.wav"]["error"] and by_name["broken.wav"]["label"] == ""
    assert by_name["nothing-*.wav"]["error"] == "no file matches"
    assert all(by_name[f"f{i}.wav"]["label"] in LABELS for i in range(5))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [f"f{i}.png" for i in range(5)]
    assert "2 of 7 failed" in res.stderr


def test_cli_predict_stdout_is_clean_csv_and_each_problem_is_said_once(tiny_checkpoint, predictor, audio_dir,
                                                                       tmp_path):
    """Piped (not a terminal): no progress bar anywhere, CSV rows with "\n" line ends, the missing file named
    once on stderr, and the status / confidence / calibrated columns filled."""
    missing = tmp_path / "missing.wav"
    res = subprocess.run([sys.executable, "-m", "moma", "predict", str(audio_dir / "f1.wav"), str(missing),
                          "--vad", "energy", "--checkpoint", str(tiny_checkpoint)],
                         capture_output=True, timeout=120)
    out, err = res.stdout.decode(), res.stderr.decode()
    assert res.returncode == 1
    assert b"\r" not in res.stdout and "it/s" not in err and "%|" not in err  # no bar, no CRLF
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["status"] for r in rows] == ["ok", ""]
    assert rows[0]["calibrated"] == str(predictor.calibrated).lower() and predictor.calibrated  # trained with T
    assert float(rows[0]["confidence"]) == max(float(rows[0][f"p_{lab}"]) for lab in LABELS)
    assert err.count(str(missing)) == 1, err
    assert "1 of 2 failed" in err


@pytest.mark.slow
def test_cli_predict_jobs_write_one_process_rows_under_one_bar_on_a_terminal(tiny_checkpoint, audio_dir, tmp_path):
    """--jobs 2 writes the rows --jobs 1 writes; at a terminal there is one progress bar when the rows go to
    --out, none when they go to the terminal too (never a bar spliced into CSV)."""
    (audio_dir / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    common = ["--vad", "energy", "--checkpoint", str(tiny_checkpoint), "--batch-size", "2"]
    code, shown = run_cli_on_a_terminal("predict", str(audio_dir), *common, "--jobs", "2",
                                        "--out", str(tmp_path / "two.csv"))
    assert code == 1, shown  # the broken file
    seen = on_screen(shown)
    bar_lines = [line for line in seen if "%|" in line]
    assert len(bar_lines) == 1 and "predict: 100%" in bar_lines[0] and "6/6" in bar_lines[0], shown
    assert "broken.wav: not a recognised audio format" in seen[0], shown  # said above the bar, not inside it
    piped = run_cli("predict", str(audio_dir), *common, "--jobs", "1", "--out", str(tmp_path / "one.csv"))
    assert piped.returncode == 1 and "%|" not in piped.stderr
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    code, shown = run_cli_on_a_terminal("predict", str(audio_dir), *common, "--jobs", "2")
    assert code == 1 and "%|" not in shown and "\r" not in shown.replace("\r\n", "\n"), shown
    assert shown.count("f3.wav") == 1 and "path,label,status" in shown


def test_cli_predict_refuses_bad_thread_and_job_counts_in_one_line(tiny_checkpoint, audio_dir):
    for flag in (["--jobs", "0"], ["--threads", "-1"]):
        res = run_cli("predict", str(audio_dir / "f1.wav"), "--checkpoint", str(tiny_checkpoint), *flag)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and flag[0] in res.stderr, res.stderr


def test_cli_predict_empty_folder_says_why(tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_cli("predict", str(tmp_path / "empty"), "--checkpoint", str(tiny_checkpoint),
                  "--out", str(tmp_path / "r.csv"))
    assert res.returncode == 1
    assert f"{tmp_path / 'empty'}: no audio files in folder" in res.stderr


def test_prediction_repr_is_short(predictor):
    pred = predictor.predict_signal(np.random.default_rng(0).normal(scale=0.1, size=32000).astype(np.float32), 16000)
    assert pred.attention and len(repr(pred)) < 200 and "attention" not in str(pred)
    assert repr(pred).startswith(f"Prediction(label={pred.label!r}, status='ok', confidence=")


def test_adapt_batch_logs_what_it_changes(tmp_path, caplog):
    """A fusion model normalising its frames per utterance: --adapt batch changes its functionals' statistics,
    and says so (it used to log "does not apply" and then change the labels)."""
    pytest.importorskip("opensmile")
    import logging

    from helpers import make_fusion_checkpoint

    from moma.inference.predictor import Predictor

    ckpt = make_fusion_checkpoint(tmp_path / "fusion.safetensors", labels=LABELS)
    predictor = Predictor.from_checkpoint(ckpt, speech_check=None)
    paths = [write_tone(tmp_path / f"{i}.wav", 1.0, level=0.05 * (i + 1), seed=i) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="moma"):
        adapted = predictor.predict_files(paths, adapt="batch")
    plain = predictor.predict_files(paths)
    assert "does not apply" not in caplog.text
    if predictor.normaliser.mode in ("utterance", "none"):
        assert "--adapt batch: openSMILE functionals standardised with the 3 inputs' own statistics" in caplog.text
    assert any(a.probabilities != p.probabilities for a, p in zip(adapted, plain))


def test_cli_predict_without_checkpoint_or_bundle(tmp_path, monkeypatch, audio_dir):
    import moma.inference.predictor as inference

    if inference.BUNDLED_CHECKPOINT.is_file():
        pytest.skip("a bundled model is installed")
    res = run_cli("predict", str(audio_dir / "f0.wav"))
    assert res.returncode == 2
    assert "no bundled model" in res.stderr and "--checkpoint" in res.stderr


@pytest.mark.parametrize("backend", ["torch-int8", "onnx", "onnx-int8"])
def test_fast_backends_agree_with_torch(tmp_path, backend):
    """Every Predictor backend gives the float32 torch model's posteriors (int8 within 0.02) on a batch of
    different lengths, and reports its name."""
    pytest.importorskip("onnxruntime")
    from moma.inference.predictor import Predictor

    ckpt = make_tiny_checkpoint(tmp_path)
    ref = Predictor.from_checkpoint(ckpt, backend="torch")
    fast = Predictor.from_checkpoint(ckpt, backend=backend, num_threads=1)
    assert fast.backend.name == backend and fast.labels == ref.labels
    rng = np.random.default_rng(5)
    feats = [rng.normal(size=(n, 23)).astype(np.float32) for n in (30, 120, 64)]
    tol = 1e-4 if backend == "onnx" else 0.02
    for a, b in zip(ref.predict_batch(feats), fast.predict_batch(feats)):
        pa = np.array([a.probabilities[k] for k in ref.labels])
        pb = np.array([b.probabilities[k] for k in ref.labels])
        assert np.abs(pa - pb).max() < tol
        assert b.attention["mixture"].shape == (a.num_frames,)


def test_torch_int8_quantises_lstms_and_linears_only():
    import torch

    from moma.config import ModelConfig
    from moma.inference.backends import quantize_torch_int8
    from moma.model import build_model

    model = build_model(ModelConfig(hidden_size=8, context_dim=4, projection_dim=8, num_classes=3))
    q = quantize_torch_int8(model)
    kinds = {type(m).__module__ for m in q.modules() if isinstance(m, (torch.nn.LSTM, torch.nn.Linear))
             or "quantized" in type(m).__module__}
    assert any("quantized.dynamic" in k for k in kinds)
    assert not any(isinstance(m, torch.nn.LSTM) and "quantized" not in type(m).__module__ for m in q.modules())
    assert all(isinstance(m, torch.nn.LSTM) for m in model.encoder.forward_lstms)  # the original is untouched


def test_unknown_backend_and_gpu_int8_are_rejected(tmp_path):
    from moma.inference.predictor import Predictor

    with pytest.raises(ValueError, match="unknown backend"):
        Predictor.from_checkpoint(tmp_path / "x.safetensors", backend="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        Predictor.from_checkpoint(tmp_path / "x.safetensors", backend="torch-int8", device="cuda")


def test_evaluate_on_another_corpus_scores_the_shared_classes(tiny_checkpoint, tmp_path, capsys):
    """A manifest with a class the model lacks (sad) and without one it has (happy): scored over angry and
    neutral, argmax restricted to them; the sad utterances are counted, not silently dropped."""
    from moma.cli.main import main

    rows = ["id,path,speaker,label"]
    for i, label in enumerate(["angry", "neutral", "sad", "angry", "neutral", "sad", "sad"]):
        write_tone(tmp_path / f"c{i}.wav", 0.8, seed=i, level=LEVELS.get(label, 0.1))
        rows.append(f"c{i},c{i}.wav,s{i % 2},{label}")
    (tmp_path / "other.csv").write_text("\n".join(rows) + "\n")
    assert main(["evaluate", str(tiny_checkpoint), "--manifest", str(tmp_path / "other.csv"), "--out",
                 str(tmp_path / "e"), "--cache", str(tmp_path / "cache")]) == 0
    from moma.evaluation.report_files import load_report_json

    report = load_report_json(tmp_path / "e")  # with its predictions.npz
    assert report["scoring"]["scored"] == ["angry", "neutral"] and report["scoring"]["unscored"] == {"sad": 3}
    assert report["scoring"]["chance_uar"] == 0.5 and report["n_utterances"] == 4
    preds = report["folds"][0]["test"]["predictions"]
    assert {p["predicted"] for p in preds} <= {"angry", "neutral"}
    md = (tmp_path / "e" / "report.md").read_text()
    assert "Scored over the 2 shared classes (angry, neutral)" in md and "sad 3 utterances, 3 of 7" in md
    assert "chance UAR 0.500" in capsys.readouterr().out
    assert report["ood"] is None  # a model made without out-of-domain statistics
    from helpers import add_test_ood

    ckpt = add_test_ood(tiny_checkpoint, tmp_path / "ood.safetensors")  # fitted on speech-like noise: tones are far
    assert main(["evaluate", str(ckpt), "--manifest", str(tmp_path / "other.csv"), "--out", str(tmp_path / "o"),
                 "--cache", str(tmp_path / "cache")]) == 0
    report = load_report_json(tmp_path / "o")
    assert report["ood"]["n"] == 4 and report["ood"]["flagged"] == 1.0
    assert "Out of domain: 100.0% of the 4 utterances" in (tmp_path / "o" / "report.md").read_text()


def test_batch_adaptation_normalises_files_with_their_own_statistics(predictor, audio_dir, tmp_path, capsys):
    """``adapt="batch"`` equals predicting with a normaliser fitted on all the files' raw features; without it
    the checkpoint's statistics are used; ``moma evaluate --adapt`` says in its report that it was transductive."""
    from moma.cli.main import main
    from moma.features.normalise import Normaliser

    paths = sorted(audio_dir.glob("*.wav"))
    raw = [predictor.raw_file_features(p)[0] for p in paths]
    own = Normaliser("global").fit(raw)
    expected = predictor.predict_batch([own.transform(f) for f in raw])
    adapted = predictor.predict_files(paths, batch_size=2, adapt="batch")
    plain = predictor.predict_files(paths, batch_size=2)
    for e, a, p in zip(expected, adapted, plain):
        np.testing.assert_allclose(a.logits, e.logits, atol=1e-4)
        assert not np.allclose(a.logits, p.logits, atol=1e-3)
    with pytest.raises(ValueError, match="adapt"):
        predictor.predict_files(paths, adapt="speaker")

    rows = ["id,path,speaker,label"]
    for i, label in enumerate(["angry", "neutral", "angry", "neutral"]):
        write_tone(tmp_path / f"c{i}.wav", 0.8, seed=i, level=LEVELS[label] * 4)  # a louder channel
        rows.append(f"c{i},c{i}.wav,s{i % 2},{label}")
    (tmp_path / "loud.csv").write_text("\n".join(rows) + "\n")
    assert main(["evaluate", str(predictor.source), "--manifest", str(tmp_path / "loud.csv"), "--out",
                 str(tmp_path / "e"), "--cache", str(tmp_path / "cache"), "--adapt", "batch"]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert "tested with global mean/variance from the 4 inputs together" in report["normalisation"]
    assert "transductive" in report["normalisation"]


@pytest.mark.slow
def test_plot_attention_of_a_fusion_model_computes_the_file_s_functionals(tmp_path):
    """`moma plot-attention` on a fusion checkpoint (the default bundled model is one) predicts with the file's
    functionals, as `moma predict` does (it used to refuse: no functionals were computed for the plot)."""
    from helpers import make_fusion_checkpoint

    from moma.inference.predictor import plot_attention_for_file

    ckpt = make_fusion_checkpoint(tmp_path / "fusion.safetensors", labels=LABELS)
    wav = write_tone(tmp_path / "tone.wav", 1.0)
    out = plot_attention_for_file(ckpt, wav, tmp_path / "att.png")
    assert out.is_file() and out.stat().st_size > 1000
    res = run_cli("plot-attention", str(ckpt), str(wav), "--out", str(tmp_path / "cli.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cli.png").stat().st_size > 1000


def test_a_fusion_model_with_functionals_level_predicts_alike_at_any_recording_gain(tmp_path):
    """``features.functionals_level``: the file 20 dB quieter gets the same probabilities (frames per utterance,
    functionals at a fixed level); the same model reading the functionals as recorded does not."""
    pytest.importorskip("opensmile")
    from helpers import make_fusion_checkpoint

    from moma.inference.predictor import Predictor

    loud = write_tone(tmp_path / "loud.wav", 1.5, level=0.1, subtype="FLOAT")
    quiet = write_tone(tmp_path / "quiet.wav", 1.5, level=0.01, subtype="FLOAT")
    probs = {}
    for level in (0.0, -26.0):
        ckpt = make_fusion_checkpoint(tmp_path / f"fusion{level:g}.safetensors", labels=LABELS, functionals_level=level)
        predictor = Predictor.from_checkpoint(ckpt, speech_check=None)  # tones: not speech to Silero
        assert predictor.config.features.functionals_level == level
        # log-probabilities: the untrained model's raw functionals sit far from its statistics and saturate
        probs[level] = [np.log(list(predictor.predict_file(p).probabilities.values())) for p in (loud, quiet)]
    assert np.abs(probs[0.0][0] - probs[0.0][1]).max() > 0.1
    np.testing.assert_allclose(probs[-26.0][0], probs[-26.0][1], rtol=1e-3, atol=1e-3)


def test_predictions_carry_the_out_of_domain_score_of_a_model_that_has_one(tiny_checkpoint, predictor, tmp_path):
    """`moma predict` writes ood_score and in_domain (empty, with one note, for a model made without them) and says
    how many files were out of domain; the Python API and to_dict carry the same."""
    import soundfile as sf
    from helpers import add_test_ood, speech_like, tone

    from moma.inference.predictor import Predictor

    sf.write(tmp_path / "kin.wav", speech_like(30, 1.5, amp=0.15), 16000)
    sf.write(tmp_path / "tone.wav", tone(700.0, 1.5, amp=0.3), 16000)
    files = [str(tmp_path / "kin.wav"), str(tmp_path / "tone.wav")]
    old = predictor.predict_file(files[0])
    assert (old.ood_score, old.in_domain) == (None, None) and old.to_dict()["in_domain"] is None
    assert predictor.describe()["ood"] is None and "moma ood fit" in predictor.describe()["ood_note"]
    ckpt = add_test_ood(tiny_checkpoint, tmp_path / "ood.safetensors")
    with_ood = Predictor.from_checkpoint(ckpt, speech_check=None)
    kin, foreign = with_ood.predict_files(files)
    assert kin.in_domain is True and foreign.in_domain is False
    assert kin.ood_score < with_ood.ood.threshold < foreign.ood_score
    assert kin.label == old.label  # the score changes nothing else
    assert kin.to_dict()["ood_score"] == pytest.approx(kin.ood_score, abs=1e-4)
    res = run_cli("predict", *files, "--vad", "energy", "--checkpoint", str(ckpt))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["in_domain"] for r in rows] == ["true", "false"]
    assert float(rows[1]["ood_score"]) == pytest.approx(foreign.ood_score, abs=1e-3)
    assert "1 out of domain" in res.stderr
    res = run_cli("predict", files[0], "--vad", "energy", "--checkpoint", str(tiny_checkpoint))
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert (rows[0]["ood_score"], rows[0]["in_domain"]) == ("", "")
    assert res.stderr.count("no out-of-domain statistics") == 1
