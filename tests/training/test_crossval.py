"""moma.training.crossval: seed ensembles per fold, with the fold's validation speakers or rotated ones."""

import json
import os
import re

import pytest

from moma.config import load_run_config
from moma.corpora.base import Utterance
from moma.corpora.synthetic import make_synthetic_corpus
from moma.data.protocols import ProtocolSpec
from moma.training.crossval import run_cross_validation

TINY = ["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8", "train.max_epochs=1",
        "train.lr=0.01", "train.tensorboard=false", "train.val_speakers=1", "train.ensemble=3"]
SINGLE = [s for s in TINY if not s.startswith("train.ensemble")]  # one model per fold


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return root, make_synthetic_corpus(root / "corpus", num_speakers=5, utterances_per_emotion=1, seed=2,
                                       max_duration=1.2)


@pytest.mark.parametrize("mode", ["same", "rotate"])
def test_ensemble_members_average_and_validate_on_the_chosen_speakers(corpus, mode):
    root, utts = corpus
    cfg = load_run_config(sets=TINY + [f"train.ensemble_validation={mode}"])
    out = root / mode
    report = run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=("spk-spk01",)),
                                  cache_dir=root / "cache")
    fold = report["folds"][0]
    result = json.loads((out / fold["name"] / "result.json").read_text())
    members = result["seeds"]
    assert [m["seed"] for m in members] == [0, 1, 2]
    vals = [tuple(m["val_speakers"]) for m in members]
    training_side = set(fold["train_speakers"]) | set(fold["val_speakers"])
    for m, val in zip(members, vals):
        assert len(val) == 1 and set(val) <= training_side and not set(val) & set(fold["test_speakers"])
        ckpt_dir = out / fold["name"] / f"seed{m['seed']}"
        assert (ckpt_dir / "best.safetensors").is_file()
    if mode == "same":
        assert len(set(vals)) == 1 and vals[0] == tuple(fold["val_speakers"])
    else:
        assert len(set(vals)) == 3 and vals[0] == tuple(fold["val_speakers"])  # 4 training-side speakers
    # the fold's test posteriors are the members' average: its pooled metrics cover every test utterance once
    assert result["test"]["n"] == fold["n_test"]
    assert ("validation speakers rotated" in report["model"]) == (mode == "rotate")
    # every member fitted its own temperature; the fold reports test ECE before and after them, and the report
    # carries it (the raw posteriors still decide, so the scores are those of the uncalibrated average)
    cal = result["calibration"]
    assert len(cal["temperatures"]) == 3 and cal["n"] == fold["n_test"]
    assert 0 <= cal["ece_before"] <= 1 and 0 <= cal["ece_after"] <= 1
    assert report["summary"]["calibration"]["ece_after"]["mean"] == pytest.approx(cal["ece_after"])
    assert "expected calibration error" in (out / "report.md").read_text()
    # a seed ensemble stores its members' raw mean (moma fuse scales it), not calibrated posteriors
    assert cal["posteriors_scaled"] is False


def test_a_segment_model_s_fold_stores_what_evaluate_and_predict_give(corpus):
    """One segment-trained model per fold: the fold stores the calibrated window mean its checkpoint serves
    (``posteriors_scaled``), which `moma evaluate` and `moma predict` give again for the same test files."""
    import numpy as np

    from moma.inference.evaluate import evaluate_checkpoint
    from moma.inference.predictor import Predictor

    root, utts = corpus
    cfg = load_run_config(sets=SINGLE + ["data.segment_length_s=0.4", "data.segment_hop_s=0.2"])
    report = run_cross_validation(utts, cfg, root / "segments", ProtocolSpec("loso", only_folds=("spk-spk02",)),
                                  cache_dir=root / "cache")
    fold = report["folds"][0]
    assert fold["calibration"]["posteriors_scaled"] is True
    stored = {p["id"]: p["posteriors"] for p in fold["test"]["predictions"]}
    test_utts = [u for u in utts if u.id in stored]
    ckpt = root / "segments" / fold["name"] / "best.safetensors"
    evaluated = evaluate_checkpoint(ckpt, test_utts, root / "segments-eval", cache_dir=root / "cache")
    again = {p["id"]: p["posteriors"] for p in evaluated["folds"][0]["test"]["predictions"]}
    np.testing.assert_allclose([again[u.id] for u in test_utts], [stored[u.id] for u in test_utts], atol=1e-5)
    predictor = Predictor.from_checkpoint(ckpt, speech_check=None)
    preds = predictor.predict_files([u.path for u in test_utts])
    served = [[p.probabilities[c] for c in predictor.labels] for p in preds]
    np.testing.assert_allclose(served, [stored[u.id] for u in test_utts], atol=1e-5)


def test_unknown_ensemble_validation_is_refused(corpus):
    root, utts = corpus
    cfg = load_run_config(sets=TINY + ["train.ensemble_validation=random"])
    with pytest.raises(ValueError, match="train.ensemble_validation must be one of same, rotate"):
        run_cross_validation(utts, cfg, root / "bad", ProtocolSpec("loso"), cache_dir=root / "cache")


def test_model_description_names_every_input_feature_group():
    from moma.training.crossval import describe_model

    plain = describe_model(load_run_config(sets=["model.hidden_size=8"]))
    assert "23 log-Mel" in plain and "pitch" not in plain and "openSMILE" not in plain
    both = describe_model(load_run_config(sets=["features.pitch=true", "features.lld=egemaps"]))
    assert "23 log-Mel + pitch (log F0, voicing) + openSMILE egemaps LLDs" in both
    regularised = describe_model(load_run_config(sets=["train.weight_decay=0.5", "train.label_smoothing=0.1"]))
    assert "label smoothing 0.1" in regularised and "lr 0.0001, weight decay 0.5," in regularised
    assert "weight decay" not in plain and "label smoothing" not in plain
    recorded = describe_model(load_run_config(sets=["features.functionals=eGeMAPSv02"]))
    assert "fusion: openSMILE eGeMAPSv02 functionals joined" in recorded
    levelled = describe_model(load_run_config(sets=["features.functionals=eGeMAPSv02", "features.functionals_level=-26"]))
    assert "eGeMAPSv02 functionals (each utterance first scaled to -26 dBFS active level) joined" in levelled


def test_a_functionals_level_above_full_scale_is_refused_before_any_file_is_read(tmp_path):
    utts = [Utterance(id=f"u{i}", path=str(tmp_path / "missing.wav"), speaker=f"s{i % 3}", label="angry")
            for i in range(6)]
    cfg = load_run_config(sets=["features.functionals=eGeMAPSv02", "features.functionals_level=3"])
    with pytest.raises(ValueError, match="functionals_level: 3.0 dBFS is above full scale"):
        run_cross_validation(utts, cfg, tmp_path / "out", ProtocolSpec("loso"), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_an_unknown_normalisation_is_refused_before_any_file_is_read(tmp_path):
    """It used to fail inside every fold, with a traceback each, after the features were packed."""
    utts = [Utterance(id=f"u{i}", path=str(tmp_path / "missing.wav"), speaker=f"s{i % 3}", label="angry")
            for i in range(6)]
    cfg = load_run_config(sets=["data.normalisation=utterance-variance"])
    with pytest.raises(ValueError, match="unknown normalisation mode 'utterance-variance'; choose one of global, "
                                         "speaker, utterance, none"):
        run_cross_validation(utts, cfg, tmp_path / "out", ProtocolSpec("loso"), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,message", [
    ("train.balance=speaker", "train.balance must be one of none, class, corpus, corpus-class, got 'speaker'"),
    ("train.monitor=f1", "train.monitor must be one of uar, accuracy, loss, got 'f1'"),
    ("train.ensemble_validation=random", "train.ensemble_validation must be one of same, rotate, got 'random'"),
])
def test_a_bad_training_option_is_refused_before_any_file_is_read(tmp_path, option, message):
    """These failed inside every fold (train.monitor only after the first epoch), each with a traceback."""
    utts = [Utterance(id=f"u{i}", path=str(tmp_path / "missing.wav"), speaker=f"s{i % 3}", label="angry")
            for i in range(6)]
    with pytest.raises(ValueError, match=re.escape(message)):
        run_cross_validation(utts, load_run_config(sets=[option]), tmp_path / "out", ProtocolSpec("loso"),
                             cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_fold_is_named_and_the_other_folds_are_kept(corpus, jobs):
    """One fold fails (a file blocks its folder): the others still finish and are reported, and the error names
    the failed fold, serially and in parallel worker processes alike (moma experiment's cells share this pool)."""
    root, utts = corpus
    cfg = load_run_config(sets=SINGLE)
    out = root / f"failing-{jobs}"
    speakers = sorted({u.speaker for u in utts})[:3]
    bad = f"spk-{speakers[1]}"
    out.mkdir()
    (out / bad).write_text("a file where the fold's folder goes")
    with pytest.raises(RuntimeError, match=re.escape(f"1 fold(s) failed ({bad}: FileExistsError")):
        run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=tuple(speakers)), cache_dir=root / "cache",
                             jobs=jobs)
    kept = [f"spk-{speakers[0]}", f"spk-{speakers[2]}"]
    for name in kept:
        assert (out / name / "result.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert [f["name"] for f in report["folds"]] == kept and report["summary"]["folds"] == 2
    assert any(f"missing: {bad}" in note for note in report["notes"])


def test_folds_computed_by_separate_calls_share_one_report(corpus):
    """--fold A, then --fold B into the same folder: the second report covers both finished folds in the
    protocol's order and says which folds are still missing; `moma report` rebuilds the same."""
    from moma.training.crossval import rebuild_report

    root, utts = corpus
    cfg = load_run_config(sets=SINGLE)
    out = root / "by-parts"
    speakers = sorted({u.speaker for u in utts})
    first = run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=(f"spk-{speakers[2]}",)),
                                 cache_dir=root / "cache")
    assert [f["name"] for f in first["folds"]] == [f"spk-{speakers[2]}"]
    second = run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=(f"spk-{speakers[0]}",)),
                                  cache_dir=root / "cache")
    names = [f"spk-{speakers[0]}", f"spk-{speakers[2]}"]
    assert [f["name"] for f in second["folds"]] == names and second["summary"]["folds"] == 2
    assert second["fold_names"] == [f"spk-{s}" for s in speakers]
    missing = ", ".join(f"spk-{s}" for s in speakers if f"spk-{s}" not in names)
    assert any(f"2 of {len(speakers)} folds finished" in n and f"missing: {missing}" in n for n in second["notes"])
    rebuilt = rebuild_report(out)
    assert [f["name"] for f in rebuilt["folds"]] == names
    assert rebuilt["summary"]["uar"]["mean"] == pytest.approx(second["summary"]["uar"]["mean"])
    assert rebuilt["wall_time_s"] == second["wall_time_s"] > 0  # the run's own, not the rebuild's


def test_a_fold_another_process_is_training_is_skipped_and_joins_the_report_later(corpus, caplog):
    """Two runs on one folder must not train the same fold into the same checkpoints: a claimed fold is
    skipped with one warning naming its owner; once it is finished, the skipping run's next report takes it."""
    pytest.importorskip("fcntl")
    from moma.files import claim_directory

    root, utts = corpus
    cfg = load_run_config(sets=SINGLE)
    out = root / "claimed"
    speakers = sorted({u.speaker for u in utts})
    busy, free = f"spk-{speakers[0]}", f"spk-{speakers[1]}"
    elsewhere = run_cross_validation(utts, cfg, root / "claimed-elsewhere", ProtocolSpec("loso", only_folds=(busy,)),
                                     cache_dir=root / "cache")
    with claim_directory(out / busy):  # stands in for another `moma cv` training that fold now
        with caplog.at_level("WARNING", logger="moma.training.crossval"):
            report = run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=(busy, free)),
                                          cache_dir=root / "cache")
        assert [f["name"] for f in report["folds"]] == [free]
        assert not (out / busy / "result.json").exists() and not (out / busy / "best.safetensors").exists()
        assert any(f"fold {busy} is being trained by process {os.getpid()}" in r.getMessage() for r in caplog.records)
        # the other process finishes the fold while it still holds it: this run's report takes its result
        (out / busy / "result.json").write_text((root / "claimed-elsewhere" / busy / "result.json").read_text())
        again = run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=(busy, free)),
                                     cache_dir=root / "cache")
    assert [f["name"] for f in again["folds"]] == [busy, free]
    assert again["folds"][0]["test"]["uar"] == pytest.approx(elsewhere["folds"][0]["test"]["uar"])


def test_restart_computes_a_finished_fold_again(corpus):
    """`moma cv --restart` (resume=False) ignores finished folds: it used to reuse their result.json."""
    root, utts = corpus
    cfg = load_run_config(sets=SINGLE)
    out = root / "restarted"
    fold = f"spk-{min(u.speaker for u in utts)}"
    run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=(fold,)), cache_dir=root / "cache")
    result = out / fold / "result.json"
    marked = {**json.loads(result.read_text()), "marker": "the first run's"}
    result.write_text(json.dumps(marked))
    run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=(fold,)), cache_dir=root / "cache")
    assert json.loads(result.read_text())["marker"] == "the first run's"  # resuming reuses it
    run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=(fold,)),
                         cache_dir=root / "cache", resume=False)
    assert "marker" not in json.loads(result.read_text())


def test_fusion_fold_standardises_functionals_on_training_speakers_and_the_checkpoint_keeps_them(corpus):
    """features.functionals: eGeMAPS functionals are extracted beside the frame cache, standardised with the
    fold's training-side statistics, joined in the model, stored in the checkpoint and reused by moma evaluate;
    predict and export refuse such a model in one line."""
    pytest.importorskip("opensmile")
    import numpy as np

    from moma.checkpoint import load_checkpoint
    from moma.features.functionals import extract_functionals
    from moma.inference.evaluate import evaluate_checkpoint
    from moma.inference.predictor import Predictor

    root, utts = corpus
    cfg = load_run_config(sets=TINY[:-1] + ["features.functionals=eGeMAPSv02"])
    out, cache = root / "fusion", root / "fusion-cache" / "features"
    report = run_cross_validation(utts, cfg, out, ProtocolSpec("loso", only_folds=("spk-spk01",)), cache_dir=cache)
    fold = report["folds"][0]
    assert fold["test"]["n"] == fold["n_test"]
    assert "fusion: openSMILE eGeMAPSv02 functionals joined" in report["model"]
    assert len(list((root / "fusion-cache" / "opensmile").rglob("*.npy"))) == len(utts)
    ckpt = out / fold["name"] / "best.safetensors"
    loaded = load_checkpoint(ckpt)
    assert loaded.config.model.functionals_dim == 88 and loaded.config.features.functionals == "eGeMAPSv02"
    norm = loaded.functionals_normaliser
    raw = extract_functionals(utts, "eGeMAPSv02", cache_dir=root / "fusion-cache" / "opensmile")
    train_side = [u.id for u in utts if u.speaker in set(fold["train_speakers"]) | set(fold["val_speakers"])]
    assert norm.mode == "global" and norm.frames == len(train_side)  # one row per training-side utterance
    np.testing.assert_allclose(norm.mean, np.mean([raw[k] for k in train_side], axis=0), rtol=1e-6)
    # moma evaluate rebuilds the same inputs: the fold's test posteriors again
    test_utts = [u for u in utts if u.speaker in fold["test_speakers"]]
    evaluated = evaluate_checkpoint(ckpt, test_utts, root / "fusion-eval", cache_dir=cache)
    fold_post = {p["id"]: p["posteriors"] for p in fold["test"]["predictions"]}
    assert len(evaluated["folds"][0]["test"]["predictions"]) == fold["n_test"] == len(fold_post)
    for p in evaluated["folds"][0]["test"]["predictions"]:
        np.testing.assert_allclose(p["posteriors"], fold_post[p["id"]], atol=1e-5)
    assert "functionals standardised with global mean/variance from" in evaluated["normalisation"]
    assert f"({len(train_side)} utterances)" in evaluated["normalisation"]
    # adapted to the test speaker's own statistics, the functionals change too, and the report says so
    adapted = evaluate_checkpoint(ckpt, test_utts, root / "fusion-eval-speaker", cache_dir=cache, adapt="speaker")
    assert "functionals standardised with the test data's own statistics, per speaker (transductive" in \
        adapted["normalisation"]
    assert not np.allclose([p["posteriors"] for p in adapted["folds"][0]["test"]["predictions"]],
                           [p["posteriors"] for p in evaluated["folds"][0]["test"]["predictions"]])
    # moma predict computes the functionals of each file itself: the same probabilities as the fold's posteriors
    # (both the calibrated ones the checkpoint serves)
    predictor = Predictor.from_checkpoint(ckpt, speech_check=None)
    assert fold["calibration"]["posteriors_scaled"] is True and predictor.calibrated
    singles = [predictor.predict_file(u.path) for u in test_utts]
    for u, pred in zip(test_utts, singles):
        np.testing.assert_allclose([pred.probabilities[c] for c in predictor.labels], fold_post[u.id], atol=1e-5)
    batched = predictor.predict_files([u.path for u in test_utts], batch_size=3)
    np.testing.assert_allclose([b.logits for b in batched], [p.logits for p in singles], atol=1e-4)
    with pytest.raises(ValueError, match="needs the standardised functionals of every input"):
        predictor.predict_batch([predictor.file_features(test_utts[0].path)[0]])
    # ... and so does the ONNX export, whose graph takes the functionals as a third input
    from moma.inference.export import export_onnx, read_export

    export_onnx(ckpt, root / "fusion-onnx")
    meta = read_export(root / "fusion-onnx")
    assert meta["inputs"]["functionals"]["shape"] == ["batch", 88] and "functionals_normaliser" in meta
    onnx_pred = Predictor.from_checkpoint(root / "fusion-onnx", backend="onnx",
                                          speech_check=None).predict_file(test_utts[0].path)
    np.testing.assert_allclose(onnx_pred.logits, singles[0].logits, atol=1e-4)
