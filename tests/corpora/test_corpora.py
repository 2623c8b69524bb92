"""Corpus loaders, label maps, alignments and manifests, on replicas and on the real EmoDB when present."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
from replicas import (
    LABLAUT,
    make_cremad_replica,
    make_csv_replica,
    make_emodb_replica,
    make_folders_replica,
    make_iemocap_replica,
    make_ravdess_replica,
    make_tess_replica,
    write_wav,
)

from moma.corpora import (
    LOADERS,
    available_label_maps,
    load_cremad,
    load_csv,
    load_emodb,
    load_folders,
    load_iemocap,
    load_label_maps,
    load_ravdess,
    load_tess,
    prepare_corpus,
    read_alignment,
    resolve_label_map,
)
from moma.corpora.base import Utterance, read_manifest, write_manifest

FOUR_CLASSES = {"angry", "happy", "neutral", "sad"}


def _emodb_root() -> Path | None:
    """The real EmoDB (``$MOMA_EMODB`` or ``../shared/corpora/emodb`` beside the checkout), or None."""
    env = os.environ.get("MOMA_EMODB")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared/corpora/emodb"
    return root if (root / "wav").is_dir() else None


needs_emodb = pytest.mark.skipif(_emodb_root() is None, reason="real EmoDB not found (set MOMA_EMODB)")


def _by_id(utterances: list[Utterance]) -> dict[str, Utterance]:
    return {u.id: u for u in utterances}


def _assert_monotonic(starts: list[float], ends: list[float]) -> None:
    assert starts and len(starts) == len(ends)
    assert all(s <= e for s, e in zip(starts, ends))
    assert all(a <= b for a, b in zip(ends, ends[1:]))
    assert all(e <= s + 1e-9 for e, s in zip(ends, starts[1:]))  # no overlaps


# --------------------------------------------------------------------------- IEMOCAP


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory: pytest.TempPathFactory):
    return make_iemocap_replica(tmp_path_factory.mktemp("iemocap"))


def test_iemocap_loader_reads_consensus_labels_only(iemocap, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        utts = load_iemocap(iemocap.root)
    got = _by_id(utts)
    # The missing wav, the rater-subfolder-only and the AppleDouble-only utterances are absent.
    assert {u: x.raw_label for u, x in got.items()} == iemocap.raw_labels
    assert not set(iemocap.skipped) & set(got)
    # Consensus label, not the conflicting ones of the rater files or the ._ file.
    assert got["Ses01F_impro01_F000"].raw_label == "neu"
    assert [u.id for u in utts] == sorted(got)
    assert "1 utterances without a wav" in caplog.text


def test_iemocap_speakers_sessions_and_fields(iemocap) -> None:
    got = _by_id(load_iemocap(iemocap.root / "IEMOCAP_full_release"))  # the release folder itself works too
    assert {u: x.speaker for u, x in got.items()} == iemocap.speakers
    assert {u: x.gender for u, x in got.items()} == iemocap.genders
    # Speaker letter from the last token, not the dialog's letter.
    assert got["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert got["Ses05M_script01_1b_F003"].speaker == "Ses05F"
    assert got["Ses05M_impro03_M001"].gender == "M"
    assert {x.session for x in got.values()} == {"Ses01", "Ses05"}
    assert all(x.speaker.startswith(x.session) for x in got.values())
    for utt_id, x in got.items():
        assert x.duration == iemocap.extra["durations"][utt_id]
        assert Path(x.path).is_absolute() and Path(x.path).is_file()
        assert Path(x.path).name == f"{utt_id}.wav"
    assert {u: x.transcript for u, x in got.items() if x.transcript} == iemocap.extra["transcripts"]
    aligned = iemocap.extra["aligned"]
    assert got[aligned].words.endswith(f"{aligned}.wdseg") and got[aligned].phones.endswith(f"{aligned}.phseg")
    assert all(not x.words and not x.phones for u, x in got.items() if u != aligned)


def test_iemocap_label_maps(iemocap) -> None:
    default = prepare_corpus("iemocap", iemocap.root, hash_audio=False)
    assert Counter(u.label for u in default) == iemocap.extra["4class"]
    by_id = _by_id(default)
    assert by_id["Ses01F_impro01_M001"].label == "happy" and by_id["Ses01F_impro01_M001"].raw_label == "exc"
    assert not {"xxx", "fru", "oth"} & {u.raw_label for u in default}
    assert sum(u.session == "Ses05" for u in default) == iemocap.extra["4class_session5"]
    assert all(u.corpus == "iemocap" and u.sha1 == "" for u in default)

    explicit = prepare_corpus("iemocap", iemocap.root, label_map="4class", hash_audio=False)
    assert [u.id for u in explicit] == [u.id for u in default]

    noexc = prepare_corpus("iemocap", iemocap.root, label_map="4class-noexc", hash_audio=False)
    expected = dict(iemocap.extra["4class"], happy=iemocap.extra["4class"]["happy"] - 2)
    assert Counter(u.label for u in noexc) == expected

    every = prepare_corpus("iemocap", iemocap.root, label_map="all", hash_audio=False)
    assert len(every) == iemocap.count - 1  # only xxx is not a class
    assert {u.label for u in every} == {"neutral", "frustrated", "angry", "excited", "happy", "sad", "other"}


def test_iemocap_alignments(iemocap) -> None:
    utt = _by_id(load_iemocap(iemocap.root))[iemocap.extra["aligned"]]
    words = read_alignment(utt.words)
    assert words.labels == ["<s>", "EXCUSE", "ME", "</s>"]  # ME(2): variant suffix stripped
    assert words.starts == pytest.approx([0.0, 0.05, 0.15, 0.25])
    assert words.ends == pytest.approx([0.05, 0.15, 0.25, 0.30])  # EFrm is inclusive
    _assert_monotonic(words.starts, words.ends)
    assert words.ends[-1] <= sf.info(utt.path).duration + 1e-9
    phones = read_alignment(utt.phones)
    assert phones.labels == ["SIL", "IH", "K", "M", "SIL"]  # the context-independent phone
    _assert_monotonic(phones.starts, phones.ends)


def test_iemocap_hashes_audio(iemocap) -> None:
    utts = prepare_corpus("iemocap", iemocap.root)
    assert all(len(u.sha1) == 40 for u in utts)
    first = utts[0]
    assert first.sha1 == hashlib.sha1(Path(first.path).read_bytes()).hexdigest()
    assert len({u.sha1 for u in utts}) == len(utts)  # different noise seeds, different files


def test_iemocap_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Session"):
        load_iemocap(tmp_path)


# --------------------------------------------------------------------------- EmoDB replica


def test_emodb_replica(tmp_path: Path, caplog) -> None:
    replica = make_emodb_replica(tmp_path)
    with caplog.at_level(logging.WARNING):
        utts = load_emodb(tmp_path)
    got = _by_id(utts)
    assert {u: x.raw_label for u, x in got.items()} == replica.raw_labels
    assert {u: x.speaker for u, x in got.items()} == replica.speakers
    assert {u: x.gender for u, x in got.items()} == replica.genders
    assert "skipped 2 files" in caplog.text
    assert got["03a01Fa"].transcript == "Der Lappen liegt auf dem Eisschrank."
    assert got["16a05Nb"].transcript == "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück."
    assert got["10b01Lc"].transcript == "Was sind denn das für Tüten, die da unter dem Tisch stehen?"
    assert all(x.session == "" for x in utts)
    assert got["14b09Ea"].phones.endswith("14b09Eaxx.lablaut")  # not the header-only file
    assert [u for u, x in got.items() if not x.words] == replica.extra["no_words"]
    assert [u for u, x in got.items() if not x.phones] == replica.extra["no_phones"]

    mapped = prepare_corpus("emodb", tmp_path, hash_audio=False)
    assert Counter(u.label for u in mapped) == Counter(
        {"happy": 1, "angry": 2, "sad": 1, "bored": 1, "disgust": 1, "neutral": 1, "fear": 1}
    )
    four = prepare_corpus("emodb", tmp_path, label_map="4class", hash_audio=False)
    assert {u.raw_label for u in four} == {"F", "W", "T", "N"} and len(four) == 5
    assert all(u.duration == pytest.approx(0.3) for u in four)  # from the audio


def test_emodb_alignment_formats(tmp_path: Path) -> None:
    replica = make_emodb_replica(tmp_path)
    silb = read_alignment(replica.root / "silb" / "03a01Fa.silb")
    assert silb.labels == ["der", "la", "kön"]  # latin-1 decoded
    assert silb.starts == pytest.approx([0.0, 0.080080, 0.244195])
    assert silb.ends == pytest.approx([0.080080, 0.244195, 0.27])
    lab = read_alignment(replica.root / "lablaut" / "03a01Faxx.lablaut")
    assert lab.labels == ["_t", "!t", "E6", "a", "", "l"]  # annotations dropped, empty label kept
    assert lab.ends[-1] == pytest.approx(0.29) and lab.starts[0] == 0.0
    _assert_monotonic(lab.starts, lab.ends)
    assert read_alignment(replica.root / "silb" / "13a01Wb.silb").labels == []
    assert read_alignment(replica.root / "lablaut" / "14b09Ea.lablaut").labels == []
    labsilb = tmp_path / "x.labsilb"
    labsilb.write_bytes(LABLAUT.replace("E6", "k\xf6n\t0.4").encode("latin-1"))
    assert read_alignment(labsilb).labels[2] == "kön"


def test_alignment_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown alignment format"):
        read_alignment(tmp_path / "a.TextGrid")
    bad = tmp_path / "a.silb"
    bad.write_text("0.1\tda\nnope\tx\n")
    with pytest.raises(ValueError, match=":2:"):
        read_alignment(bad)
    headerless = tmp_path / "a.lablaut"
    headerless.write_text("0.1 -1 a\n")
    with pytest.raises(ValueError, match="'#'"):
        read_alignment(headerless)


# --------------------------------------------------------------------------- RAVDESS, TESS, CREMA-D


def test_ravdess_replica(tmp_path: Path, caplog) -> None:
    replica = make_ravdess_replica(tmp_path)
    with caplog.at_level(logging.INFO):
        utts = load_ravdess(tmp_path)
    got = _by_id(utts)
    assert {u: x.raw_label for u, x in got.items()} == replica.raw_labels
    assert {u: x.speaker for u, x in got.items()} == replica.speakers
    assert {u: x.gender for u, x in got.items()} == replica.genders
    assert got["03-01-07-01-01-01-05"].gender == "M" and got["03-01-03-02-01-01-02"].gender == "F"
    for utt_id, text in replica.extra["transcripts"].items():
        assert got[utt_id].transcript == text
    assert "skipped 3 wav files whose names" in caplog.text  # emotion 09, six fields, notes.wav
    assert "skipped 3 song or video files" in caplog.text

    labels = Counter(u.label for u in prepare_corpus("ravdess", tmp_path, hash_audio=False))
    assert labels == Counter({"angry": 1, "neutral": 1, "happy": 1, "surprise": 1, "calm": 1, "disgust": 1})
    four = prepare_corpus("ravdess", tmp_path, label_map="4class", hash_audio=False)
    assert {u.label for u in four} == {"angry", "neutral", "happy"}


def test_tess_replica(tmp_path: Path, caplog) -> None:
    replica = make_tess_replica(tmp_path)
    with caplog.at_level(logging.WARNING):
        utts = load_tess(tmp_path)
    got = _by_id(utts)
    assert {u: x.raw_label for u, x in got.items()} == replica.raw_labels
    assert {u: x.speaker for u, x in got.items()} == replica.speakers
    assert {x.gender for x in utts} == {"F"}
    assert {u: x.transcript for u, x in got.items()} == replica.extra["transcripts"]
    assert f"skipped {len(replica.skipped)} wav files" in caplog.text
    labels = Counter(u.label for u in prepare_corpus("tess", tmp_path, hash_audio=False))
    assert labels == Counter(
        {"surprise": 2, "angry": 1, "fear": 1, "neutral": 1, "sad": 1, "disgust": 1, "happy": 1}
    )
    four = prepare_corpus("tess", tmp_path, label_map="4class", hash_audio=False)
    assert {u.label for u in four} == FOUR_CLASSES and len(four) == 4


@pytest.mark.parametrize("demographics", [True, False])
def test_cremad_replica(tmp_path: Path, demographics: bool) -> None:
    replica = make_cremad_replica(tmp_path, demographics=demographics)
    got = _by_id(load_cremad(tmp_path))
    assert {u: x.raw_label for u, x in got.items()} == replica.raw_labels
    assert {u: x.speaker for u, x in got.items()} == replica.speakers
    assert {u: x.gender for u, x in got.items()} == replica.genders
    for utt_id, text in replica.extra["transcripts"].items():
        assert got[utt_id].transcript == text
    labels = {u.label for u in prepare_corpus("cremad", tmp_path, hash_audio=False)}
    assert labels == {"angry", "happy", "neutral", "sad", "fear", "disgust"}
    four = prepare_corpus("cremad", tmp_path, label_map="4class", hash_audio=False)
    assert {u.label for u in four} == FOUR_CLASSES and len(four) == 4


# --------------------------------------------------------------------------- label maps


def test_label_maps_are_consistent_across_corpora() -> None:
    maps = load_label_maps()
    for corpus in ("iemocap", "emodb", "ravdess", "tess", "cremad"):
        assert set(resolve_label_map(corpus, "4class").values()) == FOUR_CLASSES
        assert "4class" in available_label_maps(corpus) and available_label_maps(corpus)[0] == "default"
        assert isinstance(maps[corpus]["default"], str)  # an alias of a named map
    assert resolve_label_map("iemocap") == resolve_label_map("iemocap", "4class")
    assert resolve_label_map("emodb") == {"W": "angry", "L": "bored", "E": "disgust", "A": "fear",
                                          "F": "happy", "T": "sad", "N": "neutral"}
    assert resolve_label_map("ravdess")["08"] == "surprise" and resolve_label_map("ravdess")["06"] == "fear"
    assert resolve_label_map("tess")["ps"] == "surprise"
    assert resolve_label_map("csv") is None and resolve_label_map("folders") is None  # identity
    assert available_label_maps("csv") == ["default"]
    assert sorted(available_label_maps("iemocap")) == ["4class", "4class-noexc", "all", "default"]


def test_prepare_corpus_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus 'msp'.*iemocap, emodb, ravdess, tess, cremad, nemo, csv, folders"):
        prepare_corpus("msp", tmp_path)
    with pytest.raises(ValueError, match="unknown label map '5class'.*default, 4class, 7class"):
        prepare_corpus("emodb", tmp_path, label_map="5class")
    with pytest.raises(ValueError, match="valid names"):
        available_label_maps("nope")
    assert set(LOADERS) == {"iemocap", "emodb", "ravdess", "tess", "cremad", "nemo", "csv", "folders", "synthetic"}
    with pytest.raises(TypeError):
        LOADERS["x"] = load_csv  # type: ignore[index]  # the registry is read-only


def test_synthetic_entry_reports_a_missing_module(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "moma.corpora.synthetic", None)  # makes the import fail
    with pytest.raises(ImportError, match="moma.corpora.synthetic.load_synthetic"):
        prepare_corpus("synthetic", tmp_path)


def test_prepare_corpus_drops_unmapped_and_errors_when_empty(tmp_path: Path, caplog) -> None:
    make_emodb_replica(tmp_path)
    with caplog.at_level(logging.INFO):
        utts = prepare_corpus("emodb", tmp_path, label_map={"W": "angry"}, hash_audio=False)
    assert [u.id for u in utts] == ["03a01Wa", "13a01Wb"]
    assert "dropped 6 of 8" in caplog.text
    with pytest.raises(ValueError, match="kept none"):
        prepare_corpus("emodb", tmp_path, label_map={"X": "x"}, hash_audio=False)
    (tmp_path / "empty" / "wav").mkdir(parents=True)
    with pytest.raises(ValueError, match="no utterances"):
        prepare_corpus("emodb", tmp_path / "empty")


def test_prepare_corpus_skips_unreadable_audio(tmp_path: Path, caplog) -> None:
    make_cremad_replica(tmp_path)
    (tmp_path / "AudioWAV" / "1002_TIE_NEU_XX.wav").write_bytes(b"RIFF\x00\x00")  # truncated header
    with caplog.at_level(logging.WARNING):
        utts = prepare_corpus("cremad", tmp_path, hash_audio=False)
    assert len(utts) == 5 and "1002_TIE_NEU_XX" not in _by_id(utts)
    assert "could not be read" in caplog.text


# --------------------------------------------------------------------------- CSV and folders


def test_csv_loader(tmp_path: Path, caplog) -> None:
    replica = make_csv_replica(tmp_path)
    with caplog.at_level(logging.INFO):
        got = _by_id(load_csv(replica.extra["csv"]))
    assert {u: x.raw_label for u, x in got.items()} == replica.raw_labels
    assert {u: x.speaker for u, x in got.items()} == replica.speakers
    assert {u: x.gender for u, x in got.items()} == replica.genders
    assert got["audio/a"].path == str((tmp_path / "audio" / "a.wav").resolve())
    assert got["audio/a"].transcript == "hello" and got["audio/sub/b"].session == "B"
    assert "ignoring column(s) notes" in caplog.text
    assert (got["audio/long@0-0.4"].start, got["audio/long@0-0.4"].end) == (0.0, 0.4)
    assert [u.id for u in load_csv(tmp_path)] == list(got)  # the folder's only CSV

    utts = prepare_corpus("csv", replica.extra["csv"], hash_audio=True)
    assert {u.id: u.label for u in utts} == replica.raw_labels  # identity map
    for u in utts:
        assert u.duration == pytest.approx(replica.extra["durations"][u.id], abs=1e-4)
    assert len({u.sha1 for u in utts}) == 3  # two regions share one file
    custom = prepare_corpus("csv", replica.extra["csv"], label_map={"joy": "happy"}, hash_audio=False)
    assert {u.label for u in custom} == {"happy"} and len(custom) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,emotion,speaker\na.wav,joy,s1\n", "missing required column.*path, label"),
        ("path,label,speaker\na.wav,joy,s1\n\na.wav,,s1\n", r"row 2 \(line 4\): empty label"),
        ("path,label,speaker\nmissing.wav,joy,s1\n", r"row 1 \(line 2\): audio file .*missing.wav not found"),
        ("path,label,speaker,start\na.wav,joy,s1,soon\n", "row 1.*start must be a number"),
        ("path,label,speaker,start,end\na.wav,joy,s1,0.5,0.2\n", "row 1.*end .* must be after start"),
        ("path,label,speaker,gender\na.wav,joy,s1,x\n", "row 1.*gender must be"),
        ("path,label,speaker\na.wav,joy,s1\na.wav,anger,s1\n", "row 2.*already used.*row 1"),
    ],
)
def test_csv_loader_errors(tmp_path: Path, text: str, message: str) -> None:
    write_wav(tmp_path / "a.wav")
    (tmp_path / "list.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_csv(tmp_path / "list.csv")


def test_folders_loader_guesses_speakers_and_warns(tmp_path: Path, caplog) -> None:
    replica = make_folders_replica(tmp_path)
    with caplog.at_level(logging.WARNING):
        got = _by_id(load_folders(tmp_path))
    assert {u: x.raw_label for u, x in got.items()} == replica.raw_labels
    assert {u: x.speaker for u, x in got.items()} == replica.speakers
    assert "speaker-independent" in caplog.text
    custom = _by_id(load_folders(tmp_path, speaker_pattern=r"_(?P<speaker>\d+)$"))
    assert custom["happy/spk1_003"].speaker == "003"
    assert "angry/deeper/spk2-002" not in custom  # no "_<digits>" in its name: skipped
    utts = prepare_corpus("folders", tmp_path, hash_audio=False, loader_options={"speaker_pattern": r"^spk(\d)"})
    assert {u.speaker for u in utts} == {"1", "2", "3"} and {u.label for u in utts} == {"angry", "happy", "neutral"}


def test_folders_loader_reads_speakers_csv(tmp_path: Path, caplog) -> None:
    replica = make_folders_replica(tmp_path, speakers_csv=True)
    with caplog.at_level(logging.WARNING):
        got = _by_id(load_folders(tmp_path))
    assert {u: x.speaker for u, x in got.items()} == replica.speakers
    assert "speakers of 1 files were guessed" in caplog.text  # only neutral/spk2_005


# --------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_round_trip(iemocap, tmp_path: Path, suffix: str) -> None:
    utts = prepare_corpus("iemocap", iemocap.root, hash_audio=False)
    path = write_manifest(utts, tmp_path / f"iemocap{suffix}")
    assert read_manifest(path) == utts

    # Paths relative to the manifest's folder resolve back to the same files.
    manifest_dir = iemocap.root / "manifests"
    relative = [
        Utterance(**{**u.__dict__, "path": os.path.relpath(u.path, manifest_dir)}) for u in utts
    ]
    assert not Path(relative[0].path).is_absolute()
    back = read_manifest(write_manifest(relative, manifest_dir / f"rel{suffix}"))
    assert [Path(u.path) for u in back] == [Path(u.path).resolve() for u in utts]
    assert [(u.id, u.label, u.speaker, u.duration, u.transcript) for u in back] == [
        (u.id, u.label, u.speaker, u.duration, u.transcript) for u in utts
    ]


# --------------------------------------------------------------------------- the real EmoDB


@needs_emodb
def test_real_emodb_counts() -> None:
    root = _emodb_root()
    utts = prepare_corpus("emodb", root, hash_audio=False)
    assert len(utts) == 535
    assert len({u.speaker for u in utts}) == 10
    assert Counter(u.label for u in utts) == {
        "angry": 127, "bored": 81, "disgust": 46, "fear": 69, "happy": 71, "sad": 62, "neutral": 79
    }
    assert Counter(u.gender for u in utts) == {"M": 233, "F": 302}
    assert all(u.transcript for u in utts) and all(u.phones for u in utts)
    assert [u.id for u in utts if not u.words] == ["13a01Wb"]  # its .silb is empty
    assert sum(u.duration for u in utts) / 3600 == pytest.approx(0.41, abs=0.01)
    four = prepare_corpus("emodb", root, label_map="4class", hash_audio=False)
    assert len(four) == 339 and {u.label for u in four} == FOUR_CLASSES


@needs_emodb
def test_real_emodb_alignments_and_hash(tmp_path: Path) -> None:
    root = _emodb_root()
    utt = _by_id(load_emodb(root))["03a04Ad"]  # its .silb holds a latin-1 umlaut (könnte)
    duration = sf.info(utt.path).duration
    for path in (utt.words, utt.phones, root / "labsilb" / "03a04Ad.labsilb"):
        alignment = read_alignment(path)
        _assert_monotonic(alignment.starts, alignment.ends)
        assert 0.0 <= alignment.starts[0] and alignment.ends[-1] <= duration
    assert read_alignment(utt.words).labels[4] == "könnte"

    # Hash one real file through the CSV loader rather than the whole corpus.
    (tmp_path / "one.csv").write_text(f"path,label,speaker\n{utt.path},{utt.raw_label},{utt.speaker}\n")
    (one,) = prepare_corpus("csv", tmp_path / "one.csv")
    assert one.sha1 == hashlib.sha1(Path(utt.path).read_bytes()).hexdigest()
    assert one.duration == pytest.approx(duration, abs=1e-4)
