"""nEMO's loader (on a replica with the release's quirks, and on the real copy when present), the one emotion
vocabulary every label map emits, and pooled manifests (moma.corpora.pool)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest
from replicas import make_emodb_replica, make_nemo_replica

from moma.corpora import CANONICAL_LABELS, load_label_maps, load_nemo, prepare_corpus
from moma.corpora.base import Utterance, read_manifest, write_manifest
from moma.corpora.pool import pool_corpora


def _nemo_root() -> Path | None:
    """The real nEMO (``$MOMA_NEMO``, or ``../local-corpora/nemo`` beside the checkout), or None."""
    env = os.environ.get("MOMA_NEMO")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "local-corpora/nemo"
    return root if (root / "data.tsv").is_file() else None


def test_nemo_replica(tmp_path, caplog):
    replica = make_nemo_replica(tmp_path)
    with caplog.at_level(logging.WARNING):
        utts = load_nemo(tmp_path)
    got = {u.id: u for u in utts}
    assert {k: u.raw_label for k, u in got.items()} == replica.raw_labels
    assert {k: u.speaker for k, u in got.items()} == replica.speakers  # padding stripped
    assert {k: u.gender for k, u in got.items()} == replica.genders
    assert {k: u.transcript for k, u in got.items()} == replica.extra["transcripts"]
    assert "1 rows of data.tsv have no audio file" in caplog.text
    assert "skipped 1 rows with an unknown emotion" in caplog.text
    six = prepare_corpus("nemo", tmp_path, hash_audio=False)
    assert Counter(u.label for u in six) == Counter({"angry": 1, "sad": 1, "happy": 1, "surprise": 1,
                                                     "neutral": 1, "fear": 1})
    assert all(u.corpus == "nemo" and u.duration == pytest.approx(0.3) for u in six)  # 24 kHz files read
    four = prepare_corpus("nemo", tmp_path, label_map="4class", hash_audio=False)
    assert {u.label for u in four} == {"angry", "sad", "happy", "neutral"}


def test_nemo_without_its_table_reads_the_file_names(tmp_path):
    make_nemo_replica(tmp_path)
    (tmp_path / "data.tsv").unlink()
    utts = load_nemo(tmp_path)
    assert {u.id for u in utts} >= {"EB0_anger_1", "KS0_surprised_3"} and "stray" not in {u.id for u in utts}
    assert all(u.transcript == "" for u in utts)


@pytest.mark.skipif(_nemo_root() is None, reason="real nEMO not found (set MOMA_NEMO)")
def test_real_nemo():
    utts = prepare_corpus("nemo", _nemo_root(), hash_audio=False)
    assert len(utts) == 4481 and len({u.speaker for u in utts}) == 9
    assert Counter(u.label for u in utts) == Counter({"neutral": 809, "sad": 769, "angry": 749, "happy": 749,
                                                      "fear": 736, "surprise": 669})
    assert sum(1 for u in utts if u.speaker == "MP0") == 256
    four = prepare_corpus("nemo", _nemo_root(), label_map="4class", hash_audio=False)
    assert len(four) == 3076


def test_every_label_map_speaks_the_one_vocabulary():
    """Cross-corpus work needs one name per emotion: every map of every corpus emits canonical labels only."""
    for corpus, maps in load_label_maps().items():
        for name, spec in maps.items():
            if isinstance(spec, dict):
                assert set(spec.values()) <= set(CANONICAL_LABELS), (corpus, name, set(spec.values()))


def _manifest(path: Path, corpus: str, rows: list[tuple[str, str, str]]) -> Path:
    utts = [Utterance(id=i, path=f"/audio/{corpus}/{i}.wav", speaker=s, label=lab, corpus=corpus, duration=1.0)
            for i, s, lab in rows]
    return write_manifest(utts, path)


def test_pool_namespaces_speakers_and_ids(tmp_path):
    # both corpora number their speakers "01": in a pool they are two people
    a = _manifest(tmp_path / "a.jsonl", "alpha", [("u1", "01", "angry"), ("u2", "02", "bored")])
    b = _manifest(tmp_path / "b.jsonl", "beta", [("u1", "01", "angry"), ("u3", "03", "surprise")])
    pooled = pool_corpora([a, b])
    assert sorted(u.id for u in pooled) == ["alpha.u1", "alpha.u2", "beta.u1", "beta.u3"]
    assert sorted({u.speaker for u in pooled}) == ["alpha.01", "alpha.02", "beta.01", "beta.03"]
    assert {u.corpus for u in pooled} == {"alpha", "beta"}
    assert {u.label for u in pooled} == {"angry", "bored", "surprise"}  # union by default
    shared = pool_corpora([a, b], labels="shared")
    assert sorted(u.id for u in shared) == ["alpha.u1", "beta.u1"]
    write_manifest(pooled, tmp_path / "pool.jsonl")
    assert [u.speaker for u in read_manifest(tmp_path / "pool.jsonl")] == [u.speaker for u in pooled]


def test_pool_refuses_what_it_cannot_pool(tmp_path):
    a = _manifest(tmp_path / "a.jsonl", "alpha", [("u1", "01", "angry")])
    b = _manifest(tmp_path / "b.jsonl", "beta", [("u1", "01", "sad")])
    with pytest.raises(ValueError, match="at least two"):
        pool_corpora([a])
    with pytest.raises(ValueError, match="given twice"):
        pool_corpora([a, a])
    with pytest.raises(ValueError, match="share no class"):
        pool_corpora([a, b], labels="shared")
    pooled = tmp_path / "p.jsonl"
    write_manifest(pool_corpora([a, b]), pooled)
    with pytest.raises(ValueError, match="already holds several corpora"):
        pool_corpora([pooled, a])


def test_pool_command_on_two_real_layouts(tmp_path, capsys):
    from moma.cli.main import main

    make_emodb_replica(tmp_path / "emodb")
    make_nemo_replica(tmp_path / "nemo")
    for corpus in ("emodb", "nemo"):
        assert main(["prepare", corpus, "--root", str(tmp_path / corpus), "--out", str(tmp_path / f"{corpus}.jsonl")]) == 0
    assert main(["pool", str(tmp_path / "emodb.jsonl"), str(tmp_path / "nemo.jsonl"), "--out",
                 str(tmp_path / "pool.jsonl"), "--labels", "shared"]) == 0
    out = capsys.readouterr().out
    assert "corpora:  emodb 6, nemo 5" in out  # shared classes only: angry (2 in EmoDB), fear, happy, neutral, sad
    pooled = read_manifest(tmp_path / "pool.jsonl")
    assert {u.label for u in pooled} == {"angry", "fear", "happy", "neutral", "sad"}
    assert all(Path(u.path).is_file() for u in pooled)
