"""Tests for moma.inference.parallel: ``Predictor.iter_predict_files(..., jobs=N)`` in worker processes gives
the predictions of one process in input order (bad files recorded or raised as ``on_error`` says), starts its
workers before it returns, keeps ``adapt="batch"`` in one process, and reports a worker's error as itself."""

from __future__ import annotations

import logging
import os

import pytest
from helpers import write_tone

from moma.audio.io import AudioError
from moma.audio.vad import VadConfig
from moma.inference.predictor import Predictor

ENERGY = VadConfig(engine="energy")  # the test signals are tones standing in for speech, which Silero rejects


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint, speech_check=ENERGY)


@pytest.fixture()
def files(tmp_path):
    paths = [write_tone(tmp_path / f"f{i}.wav", 0.3 + 0.25 * (i % 4), seed=i, sr=16000 if i % 2 else 22050)
             for i in range(7)]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00garbage")
    return paths[:3] + [broken] + paths[3:] + [tmp_path / "missing.wav"]


def _same(a, b):
    assert [p.source for p in a] == [p.source for p in b]
    for x, y in zip(a, b):
        assert (x.label, x.status, x.error, x.speech_s, x.duration_s) == (y.label, y.status, y.error, y.speech_s,
                                                                          y.duration_s)
        assert x.probabilities == pytest.approx(y.probabilities, abs=1e-6)
        assert x.num_frames == y.num_frames


def test_workers_give_one_process_predictions_in_input_order(predictor, files):
    one = predictor.predict_files(files, batch_size=2, on_error="record")
    several = predictor.predict_files(files, batch_size=2, on_error="record", jobs=3)  # 5 chunks of 2
    _same(one, several)
    assert [bool(p.error) for p in several] == [False] * 3 + [True] + [False] * 4 + [True]
    assert several[0].attention["mixture"].shape == (several[0].num_frames,)


def test_a_bad_file_raises_from_a_worker_as_itself(predictor, files):
    with pytest.raises(AudioError, match="broken.wav"):
        list(predictor.iter_predict_files(files, batch_size=2, jobs=2))


def test_workers_start_before_the_iterator_is_read_and_stop_after_it(predictor, files):
    import multiprocessing

    before = set(multiprocessing.active_children())
    preds = predictor.iter_predict_files(files, batch_size=2, on_error="record", jobs=2)
    started = set(multiprocessing.active_children()) - before
    assert len(started) == 2  # forked now, before the caller starts a progress bar's thread
    assert len(list(preds)) == len(files)
    assert not set(multiprocessing.active_children()) & started


def test_batch_adaptation_and_one_chunk_stay_in_this_process(predictor, files, caplog):
    import multiprocessing

    good = [p for p in files if p.is_file() and p.name != "broken.wav"]
    before = set(multiprocessing.active_children())
    with caplog.at_level(logging.INFO, logger="moma"):
        preds = predictor.iter_predict_files(good, adapt="batch", jobs=2)
        assert set(multiprocessing.active_children()) == before
        _same(list(preds), predictor.predict_files(good, adapt="batch"))
    assert "adapt='batch' needs every file's statistics" in caplog.text
    preds = predictor.iter_predict_files(good[:2], batch_size=2, jobs=2)  # one chunk: no worker
    assert set(multiprocessing.active_children()) == before
    assert len(list(preds)) == 2


def test_a_worker_that_cannot_load_the_model_says_why(tiny_checkpoint, files, tmp_path):
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(tiny_checkpoint.read_bytes() if tiny_checkpoint.is_file() else
                     next(tiny_checkpoint.glob("*.safetensors")).read_bytes())
    predictor = Predictor.from_checkpoint(copy, speech_check=ENERGY)
    os.remove(copy)  # the workers load the same file, which is gone
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        predictor.predict_files(files, batch_size=2, on_error="record", jobs=2)


def test_jobs_need_a_loaded_recipe_and_a_positive_count(predictor, files):
    from moma.checkpoint import load_checkpoint

    with pytest.raises(ValueError, match="jobs must be >= 1"):
        predictor.predict_files(files, jobs=0)
    bare = Predictor.from_loaded(load_checkpoint(predictor.recipe["path"]), speech_check=ENERGY)
    with pytest.raises(ValueError, match="Predictor.from_checkpoint"):
        bare.predict_files(files, batch_size=2, jobs=2)
