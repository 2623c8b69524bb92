"""End to end through the command line: prepare -> cv -> report -> evaluate -> plot-attention."""

import json

import pytest

from moma.cli.main import main
from moma.corpora.synthetic import make_synthetic_corpus
from moma.evaluation.report_files import load_report_json

TINY = ["--set", "model.hidden_size=8", "--set", "model.context_dim=8", "--set", "model.projection_dim=8",
        "--set", "train.max_epochs=2", "--set", "train.lr=0.01", "--set", "train.tensorboard=false",
        "--set", "train.val_speakers=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_corpus(root, num_speakers=4, utterances_per_emotion=2, seed=1, max_duration=1.5)
    return root


def test_prepare_cv_evaluate_plot(corpus, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    assert main(["prepare", "synthetic", "--root", str(corpus), "--out", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "32 utterances, 4 speakers, 4 labels" in out
    run = tmp_path / "run"
    args = ["cv", "--manifest", str(manifest), "--out", str(run), "--protocol", "speaker-kfold", "--k", "2",
            "--cache", str(tmp_path / "cache"), "-q", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "UAR      (paper's 'WA')" in out and "folds: 2" in out
    report = json.loads((run / "report.json").read_text())
    assert report["summary"]["folds"] == 2 and report["summary"]["pooled"]["n"] == 32
    for fold in report["folds"]:
        assert not set(fold["test_speakers"]) & set(fold["train_speakers"] + fold["val_speakers"])
    # rerunning the same command reuses the finished folds instead of training again
    stamp = (run / "group-1" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (run / "group-1" / "result.json").stat().st_mtime_ns == stamp
    assert main(["report", str(run)]) == 0
    ckpt = run / "group-1" / "best.safetensors"
    assert main(["evaluate", str(ckpt), "--manifest", str(manifest), "--out", str(tmp_path / "eval"),
                 "--cache", str(tmp_path / "cache")]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["summary"]["pooled"]["n"] == 32
    wav = next((corpus / "wav").glob("*.wav"))
    assert main(["plot-attention", str(ckpt), str(wav), "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 10_000


def test_user_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,speaker,label\nu1,bad.wav,s1,angry\nu2,bad.wav,s2,sad\n")
    code = main(["cv", "--manifest", str(manifest), "--out", str(tmp_path / "r"), "--cache", str(tmp_path / "c"),
                 "-q", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "bad.wav" in err and "Traceback" not in err
    assert main(["prepare", "nosuchcorpus", "--root", str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "nosuchcorpus" in capsys.readouterr().err


def test_train_all_speakers_gives_a_shippable_checkpoint(corpus, tmp_path, capsys):
    from moma.checkpoint import load_checkpoint

    manifest = tmp_path / "m.jsonl"
    assert main(["prepare", "synthetic", "--root", str(corpus), "--out", str(manifest)]) == 0
    assert main(["train", "--manifest", str(manifest), "--out", str(tmp_path / "final"), "--protocol", "all",
                 "--cache", str(tmp_path / "cache"), "-q", *TINY]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    loaded = load_checkpoint(tmp_path / "final" / "all")
    assert loaded.labels == ["angry", "happy", "neutral", "sad"] and loaded.info["test_speakers"] == []


def test_features_command_fills_the_cache_once_and_reports_throughput(corpus, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    assert main(["prepare", "synthetic", "--root", str(corpus), "--out", str(manifest)]) == 0
    capsys.readouterr()
    args = ["features", "--manifest", str(manifest), "--cache", str(tmp_path / "cache"), "--workers", "2", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "32 utterances" in out and "32 computed" in out and "per core-second" in out and "pack:" in out
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 32 + 1  # the entries and the pack
    assert main(args) == 0  # a rerun (or a resumed run) computes only what is missing
    assert "0 computed" in capsys.readouterr().out


def test_pool_leave_one_corpus_out_and_loso_within_a_corpus(corpus, tmp_path, capsys):
    """Two corpora pooled: leave-one-corpus-out trains on one and tests on the other; LOSO inside one corpus
    trains on the whole rest of the pool and is scored over that corpus's own classes."""
    import dataclasses

    from moma.corpora import prepare_corpus
    from moma.corpora.base import read_manifest, write_manifest

    utts = prepare_corpus("synthetic", corpus)
    speakers = sorted({u.speaker for u in utts})
    alpha = [dataclasses.replace(u, corpus="alpha") for u in utts if u.speaker in speakers[:2] and u.label != "sad"]
    beta = [dataclasses.replace(u, corpus="beta") for u in utts if u.speaker in speakers[2:]]
    write_manifest(alpha, tmp_path / "alpha.jsonl")
    write_manifest(beta, tmp_path / "beta.jsonl")
    assert main(["pool", str(tmp_path / "alpha.jsonl"), str(tmp_path / "beta.jsonl"), "--out",
                 str(tmp_path / "pool.jsonl")]) == 0
    assert len(read_manifest(tmp_path / "pool.jsonl")) == len(alpha) + len(beta)
    base = ["--manifest", str(tmp_path / "pool.jsonl"), "--cache", str(tmp_path / "cache"), "-q", *TINY]
    assert main(["cv", *base, "--protocol", "loco", "--out", str(tmp_path / "loco")]) == 0
    loco = json.loads((tmp_path / "loco" / "report.json").read_text())
    assert [f["name"] for f in loco["folds"]] == ["corpus-alpha", "corpus-beta"]
    assert loco["folds"][0]["test_speakers"] == [f"alpha.{s}" for s in speakers[:2]]
    assert all(s.startswith("beta.") for s in loco["folds"][0]["train_speakers"] + loco["folds"][0]["val_speakers"])
    # alpha has no "sad": its fold is scored over its three classes, and the report says so
    assert loco["folds"][0]["test"]["scored_classes"] == ["angry", "happy", "neutral"]
    assert "scored_classes" not in loco["folds"][1]["test"]
    assert "Cross-corpus scoring" in (tmp_path / "loco" / "report.md").read_text()
    assert main(["cv", *base, "--protocol", "loso", "--test-corpus", "alpha", "--out", str(tmp_path / "in")]) == 0
    within = load_report_json(tmp_path / "in")  # with its predictions.npz
    assert [f["test_speakers"] for f in within["folds"]] == [[f"alpha.{s}"] for s in speakers[:2]]
    for fold in within["folds"]:
        assert any(s.startswith("beta.") for s in fold["train_speakers"])
        assert {p["predicted"] for p in fold["test"]["predictions"]} <= {"angry", "happy", "neutral"}
    assert main(["cv", *base, "--protocol", "speaker-kfold", "--test-corpus", "alpha", "--out", str(tmp_path / "x")]) == 2
    assert "--test-corpus is for --protocol loso" in capsys.readouterr().err
