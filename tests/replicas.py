"""Small on-disk replicas of corpus layouts, for tests of the loaders and of anything that reads them.

Each ``make_*_replica(root)`` writes tiny valid WAVs (0.3 s of 16 kHz noise by
default) and the corpus's metadata files under ``root``, reproducing the quirks
of the real releases that the loaders must handle, and returns a
:class:`Replica` saying what a correct loader should find.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
WAV_SECONDS = 0.3


@dataclass
class Replica:
    """What a loader should find in a replica."""

    root: Path  # the folder to pass to the loader
    raw_labels: dict[str, str]  # utterance id -> raw label, for every utterance the loader must return
    speakers: dict[str, str] = field(default_factory=dict)  # utterance id -> speaker
    genders: dict[str, str] = field(default_factory=dict)  # utterance id -> "F" | "M" | ""
    skipped: list[str] = field(default_factory=list)  # files that exist but must not be listed
    extra: dict[str, object] = field(default_factory=dict)  # corpus-specific expectations

    @property
    def count(self) -> int:
        return len(self.raw_labels)

    def raw_counts(self) -> Counter[str]:
        return Counter(self.raw_labels.values())


def write_wav(path: Path, seconds: float = WAV_SECONDS, *, sample_rate: int = SAMPLE_RATE, seed: int = 0,
              subtype: str | None = None) -> Path:
    """Write ``seconds`` of low-level noise (16-bit PCM for WAV) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    signal = (0.1 * rng.standard_normal(int(round(seconds * sample_rate)))).astype(np.float32)
    sf.write(str(path), signal, sample_rate, subtype=subtype or ("PCM_16" if path.suffix.lower() == ".wav" else None))
    return path


def _write(path: Path, data: str | bytes, *, newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.replace("\n", newline).encode(encoding)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- IEMOCAP

# (utterance id, start, end, raw label) per EmoEvaluation file. Comments say which quirk a row covers.
_IEMOCAP_EVAL: dict[str, list[tuple[str, float, float, str]]] = {
    "Session1/Ses01F_impro01": [
        ("Ses01F_impro01_F000", 6.2901, 8.2357, "neu"),
        ("Ses01F_impro01_F001", 10.0100, 11.3925, "fru"),  # dropped by 4class
        ("Ses01F_impro01_M000", 14.8872, 18.0175, "ang"),  # dialog letter F, speaker M
        ("Ses01F_impro01_M001", 19.2900, 20.7875, "exc"),  # merged into happy
        ("Ses01F_impro01_F002", 21.0000, 22.5000, "xxx"),  # no majority
        ("Ses01F_impro01_M002", 23.0000, 24.0000, "sad"),  # its wav is missing
    ],
    "Session1/Ses01F_script01_1": [
        ("Ses01F_script01_1_F000", 1.0000, 3.5000, "hap"),
        ("Ses01F_script01_1_M000", 4.0000, 5.2500, "neu"),
    ],
    "Session5/Ses05M_script01_1b": [
        ("Ses05M_script01_1b_F003", 30.1000, 32.0000, "sad"),
        ("Ses05M_script01_1b_M000", 33.0000, 34.0000, "oth"),
    ],
    "Session5/Ses05M_impro03": [
        ("Ses05M_impro03_M001", 2.0000, 4.0000, "neu"),
        ("Ses05M_impro03_F000", 5.0000, 6.5000, "hap"),
        ("Ses05M_impro03_F001", 7.0000, 9.0000, "exc"),
    ],
}
_IEMOCAP_MISSING_WAV = "Ses01F_impro01_M002"
# Utterances only rater subfolders and an AppleDouble file mention; their wavs exist, so a
# loader that read those files would list them.
_IEMOCAP_RATER_ONLY = "Ses01F_impro01_F003"
_IEMOCAP_APPLEDOUBLE_ONLY = "Ses01F_impro01_M003"

WDSEG = """\
 SFrm  EFrm    SegAScr Word
    0     4    -185722 <s>
    5    14    -131233 EXCUSE
   15    24     -61011 ME(2)
   25    29     -16069 </s>
 Total Score: -394035
"""
PHSEG = """\
\t SFrm\tEFrm\tSegAScr\tPhone
\t0\t4\t-185722\tSIL
\t5\t7\t-50000\tIH SIL K b
\t8\t14\t-81233\tK IH S i
\t15\t24\t-61011\tM S IY b
\t25\t29\t-16069\tSIL
 Total Score: -394035
"""


def _consensus(utt: str, start: float, end: float, label: str) -> str:
    return f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]"


def make_iemocap_replica(root: Path) -> Replica:
    """IEMOCAP_full_release with Session1 and Session5 under ``root``; pass ``root`` to the loader.

    Quirks: AppleDouble ``._`` files, rater subfolders with conflicting labels,
    rater lines, a latin-1 byte in a transcript, a missing wav, speakers whose
    letter differs from the dialog's, xxx/fru/oth/exc labels, script dialogs
    (``Ses05M_script01_1b``), CRLF lines with trailing whitespace, and forced
    alignments for one utterance only.
    """
    release = root / "IEMOCAP_full_release"
    raw_labels: dict[str, str] = {}
    for key, rows in _IEMOCAP_EVAL.items():
        session, dialog = key.split("/")
        header = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        lines = list(header)
        for utt, start, end, label in rows:
            lines += [_consensus(utt, start, end, label) + "  ", "C-E2:\tNeutral;\t()", "C-E3:\tAnger;\t()",
                      "A-E3:\tval 3; act 2; dom  2;\t()", ""]
            if utt != _IEMOCAP_MISSING_WAV:
                write_wav(release / session / "sentences" / "wav" / dialog / f"{utt}.wav", seed=len(raw_labels))
                raw_labels[utt] = label
        # Session1 files use Windows line endings, Session5 Unix ones.
        _write(release / session / "dialog" / "EmoEvaluation" / f"{dialog}.txt", "\n".join(lines) + "\n",
               newline="\r\n" if session == "Session1" else "\n")

    eval1 = release / "Session1" / "dialog" / "EmoEvaluation"
    # Rater subfolders: individual judgements that conflict with the consensus, in consensus format,
    # plus an utterance no consensus file lists.
    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        _write(eval1 / sub / f"Ses01F_impro01_{sub[:3].lower()}.txt",
               _consensus("Ses01F_impro01_F000", 6.2901, 8.2357, "sad") + "\n"
               + _consensus(_IEMOCAP_RATER_ONLY, 30.0, 31.0, "ang") + "\n")
    write_wav(release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{_IEMOCAP_RATER_ONLY}.wav")
    # AppleDouble resource fork: binary junk around consensus-looking text. It sorts before the real
    # file, so a loader that read it would also relabel F000.
    _write(eval1 / "._Ses01F_impro01.txt",
           b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\xff\xfe\n"
           + _consensus("Ses01F_impro01_F000", 6.2901, 8.2357, "ang").encode() + b"\n"
           + _consensus(_IEMOCAP_APPLEDOUBLE_ONLY, 40.0, 41.0, "neu").encode() + b"\n")
    write_wav(release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{_IEMOCAP_APPLEDOUBLE_ONLY}.wav")
    _write(release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "._Ses01F_impro01_F000.wav", b"\x00\x05")

    # Transcriptions: latin-1 (a byte invalid in UTF-8), CRLF, lines without a turn id.
    _write(release / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt",
           "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me, café.  \n"
           "Ses01F_impro01_M000 [014.8872-018.0175]: Do you have your forms?\n"
           "M: [BREATHING]\n",
           newline="\r\n", encoding="latin-1")
    _write(release / "Session5" / "dialog" / "transcriptions" / "Ses05M_script01_1b.txt",
           "Ses05M_script01_1b_F003 [030.1000-032.0000]: What's he going to say?\n")

    # Forced alignment for one utterance; the others have none (the release lacks some too).
    aligned = release / "Session1" / "sentences" / "ForcedAlignment" / "Ses01F_impro01"
    _write(aligned / "Ses01F_impro01_F000.wdseg", WDSEG)
    _write(aligned / "Ses01F_impro01_F000.phseg", PHSEG)
    _write(aligned / "Ses01F_impro01_F000.syseg", "not read\n")

    speakers = {u: u[:5] + u.rsplit("_", 1)[1][0] for u in raw_labels}
    return Replica(
        root=root,
        raw_labels=raw_labels,
        speakers=speakers,
        genders={u: s[-1] for u, s in speakers.items()},
        skipped=[_IEMOCAP_MISSING_WAV, _IEMOCAP_RATER_ONLY, _IEMOCAP_APPLEDOUBLE_ONLY],
        extra={
            "release": release,
            "durations": {u: round(e - s, 4) for rows in _IEMOCAP_EVAL.values() for u, s, e, _ in rows},
            "transcripts": {
                "Ses01F_impro01_F000": "Excuse me, café.",
                "Ses01F_impro01_M000": "Do you have your forms?",
                "Ses05M_script01_1b_F003": "What's he going to say?",
            },
            "aligned": "Ses01F_impro01_F000",
            # 4class: neu 3 (F000, script M000, Ses05 M001), happy 4 (exc M001, hap script F000,
            # hap Ses05 F000, exc Ses05 F001), angry 1, sad 1 (Ses05 F003)
            "4class": {"neutral": 3, "happy": 4, "angry": 1, "sad": 1},
            "4class_session5": 4,  # sad F003, neutral M001, happy F000 and F001 (exc)
        },
    )


# --------------------------------------------------------------------------- EmoDB

EMODB_FILES = {
    # utterance id -> gender of its speaker
    "03a01Fa": "M",
    "03a01Wa": "M",
    "08a02Tb": "F",
    "10b01Lc": "M",
    "13a01Wb": "F",  # its .silb is empty, as in the real corpus
    "14b09Ea": "F",  # header-only 14b09Ea.lablaut beside the real 14b09Eaxx.lablaut
    "16a05Nb": "F",
    "09b03Aa": "F",
}
SILB = "0.080080\tder\n0.244195\tla\n0.270000\tk\xf6n\n"  # latin-1 umlaut on disk
LABLAUT = """\
signal wochenAO
type 0
comment created using xlabel Wed Apr 26 12:59:18 2000
font -misc-*-bold-*-*-*-15-*-*-*-*-*-*-*
separator ;
nfields 1
#
    0.080109   -1 _t
    0.119160   -1 !t\t+asp
    0.144370   -1 E6
    0.244223   -1 a\t\t2
    0.250000   -1 \t+hoe
    0.290000  125 l
"""
LABLAUT_HEADER_ONLY = "signal 14b09Ea\ntype 0\nseparator ;\nnfields 1\n#\n"


def make_emodb_replica(root: Path) -> Replica:
    """EmoDB's ``wav/``, ``silb/``, ``lablaut/`` folders with eight utterances and one badly named wav."""
    for i, utt in enumerate(EMODB_FILES):
        write_wav(root / "wav" / f"{utt}.wav", seed=i)
        silb = "" if utt == "13a01Wb" else SILB
        _write(root / "silb" / f"{utt}.silb", silb, encoding="latin-1")
        if utt != "10b01Lc":  # one utterance without phone labels
            _write(root / "lablaut" / f"{utt}xx.lablaut", LABLAUT)
    _write(root / "lablaut" / "14b09Ea.lablaut", LABLAUT_HEADER_ONLY)
    _write(root / "lablaut" / "03a04Waxx.lablaut", LABLAUT)  # labels without audio, as in the release
    write_wav(root / "wav" / "03a01Fa-copy.wav")
    write_wav(root / "wav" / "99a01Fa.wav")  # unknown speaker
    return Replica(
        root=root,
        raw_labels={u: u[5] for u in EMODB_FILES},
        speakers={u: u[:2] for u in EMODB_FILES},
        genders=dict(EMODB_FILES),
        skipped=["03a01Fa-copy.wav", "99a01Fa.wav"],
        extra={"no_words": ["13a01Wb"], "no_phones": ["10b01Lc"]},
    )


# --------------------------------------------------------------------------- RAVDESS

def make_ravdess_replica(root: Path) -> Replica:
    """``Actor_XX`` folders (and one stray folder) with speech, song, video-only and badly named files."""
    speech = {
        "Actor_01/03-01-05-01-01-01-01.wav": "05",
        "Actor_01/03-01-01-01-02-02-01.wav": "01",
        "Actor_02/03-01-03-02-01-01-02.wav": "03",
        "Actor_02/03-01-08-01-01-01-02.wav": "08",
        "Actor_02/03-01-02-02-02-01-02.wav": "02",
        "extra/deeper/03-01-07-01-01-01-05.wav": "07",  # found by rglob
    }
    skipped = [
        "Actor_02/03-02-04-01-01-01-02.wav",  # song
        "Actor_02/02-01-06-01-01-01-02.wav",  # video-only modality
        "Actor_01/01-01-06-01-01-01-01.wav",  # audio-video modality
        "Actor_01/03-01-09-01-01-01-01.wav",  # emotion 09 does not exist
        "Actor_01/03-01-05-01-01-01.wav",  # six fields
        "Actor_01/notes.wav",
    ]
    for i, rel in enumerate(list(speech) + skipped):
        write_wav(root / rel, seed=i)
    _write(root / "Actor_01" / "01-01-06-01-01-01-01.mp4", b"\x00\x00\x00\x18ftypmp42")
    _write(root / "Actor_01" / "._03-01-05-01-01-01-01.wav", b"\x00\x05")
    ids = {Path(rel).stem: label for rel, label in speech.items()}
    speakers = {u: f"Actor_{u[-2:]}" for u in ids}
    return Replica(
        root=root,
        raw_labels=ids,
        speakers=speakers,
        genders={u: "M" if int(u[-2:]) % 2 else "F" for u in ids},
        skipped=skipped,
        extra={"transcripts": {"03-01-01-01-02-02-01": "Dogs are sitting by the door",
                               "03-01-05-01-01-01-01": "Kids are talking by the door"}},
    )


# --------------------------------------------------------------------------- TESS

def make_tess_replica(root: Path) -> Replica:
    """TESS folders with the release's inconsistent folder names and label capitalisation."""
    files = {
        "OAF_angry/OAF_back_angry.wav": ("OAF_back_angry", "angry"),
        "OAF_Fear/OAF_back_fear.wav": ("OAF_back_fear", "fear"),
        "OAF_neutral/OAF_bath_Neutral.wav": ("OAF_bath_neutral", "neutral"),
        "OAF_Pleasant_surprise/OAF_bite_pleasant_surprise.wav": ("OAF_bite_ps", "ps"),
        "YAF_pleasant_surprised/YAF_bath_ps.wav": ("YAF_bath_ps", "ps"),
        "YAF_sad/YAF_bean_sad.wav": ("YAF_bean_sad", "sad"),
        "YAF_disgust/YAF_bean_disgust.wav": ("YAF_bean_disgust", "disgust"),
        "YAF_happy/YAF_chair_happy.wav": ("YAF_chair_happy", "happy"),
    }
    skipped = ["OAF_angry/notes.wav", "YAF_sad/YAF_bean_bored.wav", "YAF_sad/XYZ_bean_sad.wav"]
    for i, rel in enumerate(list(files) + skipped):
        write_wav(root / rel, seed=i)
    ids = dict(files.values())
    return Replica(
        root=root,
        raw_labels=ids,
        speakers={u: u[:3] for u in ids},
        genders={u: "F" for u in ids},
        skipped=skipped,
        extra={"transcripts": {u: u.split("_")[1] for u in ids}},
    )


# --------------------------------------------------------------------------- CREMA-D

CREMAD_DEMOGRAPHICS = """\
ActorID,Age,Sex,Race,Ethnicity
1001,51,Male,Caucasian,Not Hispanic
1002,21,Female,Caucasian,Not Hispanic
1003,21,Female,Caucasian,Not Hispanic
"""


def make_cremad_replica(root: Path, *, demographics: bool = True) -> Replica:
    """``AudioWAV/`` with six utterances and two bad names; ``VideoDemographics.csv`` when ``demographics``."""
    files = {
        "1001_DFA_ANG_XX": "ANG",
        "1001_IEO_HAP_HI": "HAP",
        "1002_TIE_NEU_XX": "NEU",
        "1002_ITS_SAD_LO": "SAD",
        "1003_MTI_FEA_MD": "FEA",
        "1003_WSI_DIS_XX": "DIS",
    }
    skipped = ["1004_XYZ_ANG_XX.wav", "1004_DFA_ANG.wav"]
    for i, name in enumerate([f"{f}.wav" for f in files] + skipped):
        write_wav(root / "AudioWAV" / name, seed=i)
    if demographics:
        _write(root / "VideoDemographics.csv", CREMAD_DEMOGRAPHICS)
    sex = {"1001": "M", "1002": "F", "1003": "F"}
    return Replica(
        root=root,
        raw_labels=files,
        speakers={u: u[:4] for u in files},
        genders={u: sex[u[:4]] if demographics else "" for u in files},
        skipped=skipped,
        extra={"transcripts": {"1001_DFA_ANG_XX": "Don't forget a jacket",
                               "1002_ITS_SAD_LO": "I think I've seen this before"}},
    )


# --------------------------------------------------------------------------- CSV and folders

def make_csv_replica(root: Path) -> Replica:
    """``root/list.csv`` (mixed-case header) over ``root/audio/``, with relative and absolute paths and a region.

    ``extra["csv"]`` is the CSV path; the region rows cut two utterances out of one 1 s file.
    """
    write_wav(root / "audio" / "a.wav", seed=1)
    write_wav(root / "audio" / "sub" / "b.wav", seed=2)
    write_wav(root / "audio" / "long.wav", 1.0, seed=3)
    absolute = (root / "audio" / "sub" / "b.wav").resolve()
    _write(root / "list.csv",
           "Path,LABEL,Speaker,gender,Session,transcript,start,end,notes\n"
           "audio/a.wav,joy,s1,female,A,hello,,,x\n"
           f"{absolute},anger,s2,M,B,,,,\n"
           "\n"
           "audio/long.wav,joy,s1,F,A,,0,0.4,\n"
           "audio/long.wav,anger,s1,F,A,,0.4,,\n")
    ids = {"audio/a": "joy", "audio/sub/b": "anger", "audio/long@0-0.4": "joy", "audio/long@0.4-0": "anger"}
    return Replica(
        root=root,
        raw_labels=ids,
        speakers={"audio/a": "s1", "audio/sub/b": "s2", "audio/long@0-0.4": "s1", "audio/long@0.4-0": "s1"},
        genders={"audio/a": "F", "audio/sub/b": "M", "audio/long@0-0.4": "F", "audio/long@0.4-0": "F"},
        extra={"csv": root / "list.csv", "durations": {"audio/a": WAV_SECONDS, "audio/sub/b": WAV_SECONDS,
                                                       "audio/long@0-0.4": 0.4, "audio/long@0.4-0": 0.6}},
    )


def make_folders_replica(root: Path, *, speakers_csv: bool = False) -> Replica:
    """``root/<label>/**`` with WAV, FLAC and AIFF files, hidden and non-audio files to ignore.

    With ``speakers_csv`` a ``speakers.csv`` names the speakers (overriding the file names) for all
    files but one, whose speaker then comes from its name.
    """
    files = {
        "angry/spk1_001.wav": "spk1",
        "angry/deeper/spk2-002.flac": "spk2",
        "happy/spk1_003.wav": "spk1",
        "happy/spk3_004.aiff": "spk3",
        "neutral/spk2_005.wav": "spk2",
    }
    for i, rel in enumerate(files):
        write_wav(root / rel, seed=i)
    _write(root / "angry" / "._spk1_001.wav", b"\x00\x05")
    _write(root / "angry" / "README.txt", "not audio\n")
    _write(root / ".hidden" / "spk9_009.wav", b"")
    speakers = dict(files)
    if speakers_csv:
        # The last row gives a bare file name, which is accepted too; neutral/spk2_005 is not listed.
        _write(root / "speakers.csv",
               "path,speaker\nangry/spk1_001.wav,alice\nangry/deeper/spk2-002.flac,bob\n"
               "happy/spk1_003.wav,alice\nspk3_004.aiff,carol\n")
        speakers.update({"angry/spk1_001.wav": "alice", "angry/deeper/spk2-002.flac": "bob",
                         "happy/spk1_003.wav": "alice", "happy/spk3_004.aiff": "carol"})
    ids = {str(Path(rel).with_suffix("").as_posix()): rel.split("/")[0] for rel in files}
    return Replica(
        root=root,
        raw_labels=ids,
        speakers={str(Path(rel).with_suffix("").as_posix()): spk for rel, spk in speakers.items()},
        skipped=["angry/._spk1_001.wav", "angry/README.txt", ".hidden/spk9_009.wav"],
    )


# --------------------------------------------------------------------------- nEMO

NEMO_ROWS = [  # file_id, emotion, raw_text, speaker (as the release pads it), gender
    ("EB0_anger_1.wav", "anger", "Lubię czytać przed snem.", "        EB0", "female"),
    ("EB0_sadness_2.wav", "sadness", "Ucho wykrywa dźwięki.", "        EB0", "female"),
    ("KS0_happiness_1.wav", "happiness", "Kupiłem nową szafę.", "        KS0", "male"),
    ("KS0_surprised_3.wav", "surprised", "Interesuje mnie historia Polski.", "        KS0", "male"),
    ("MP0_neutral_4.wav", "neutral", "Jutro będzie padać.", "  MP0", "male"),
    ("MP0_fear_5.wav", "fear", "Gdzie jest dworzec?", "MP0", "male"),
]


def make_nemo_replica(root: Path) -> Replica:
    """nEMO's release layout: ``data.tsv`` (UTF-8 with a BOM here, padded speaker ids, Polish transcripts) and
    ``samples/`` at 24 kHz, with a row whose audio is missing, a row of an unknown emotion and a stray wav."""
    lines = ["file_id\temotion\traw_text\tnormalized_text\tspeaker_id\tgender\tage"]
    for i, (file_id, emotion, text, speaker, gender) in enumerate(NEMO_ROWS):
        lines.append(f"{file_id}\t{emotion}\t{text}\t{text.lower().rstrip('.?')}\t{speaker}\t{gender}\t30")
        write_wav(root / "samples" / file_id, sample_rate=24000, seed=i)
    lines.append("EB0_anger_9.wav\tanger\tBrak pliku.\tbrak pliku\t        EB0\tfemale\t27")  # no audio
    lines.append("EB0_boredom_1.wav\tboredom\tNudy.\tnudy\t        EB0\tfemale\t27")  # not a nEMO emotion
    write_wav(root / "samples" / "EB0_boredom_1.wav", sample_rate=24000)
    write_wav(root / "samples" / "stray.wav", sample_rate=24000)
    _write(root / "data.tsv", "\ufeff" + "\n".join(lines) + "\n")
    ids = [Path(r[0]).stem for r in NEMO_ROWS]
    return Replica(
        root=root,
        raw_labels={i: r[1] for i, r in zip(ids, NEMO_ROWS)},
        speakers={i: r[3].strip() for i, r in zip(ids, NEMO_ROWS)},
        genders={i: r[4][0].upper() for i, r in zip(ids, NEMO_ROWS)},
        skipped=["EB0_anger_9.wav", "EB0_boredom_1.wav", "stray.wav"],
        extra={"transcripts": {i: r[2] for i, r in zip(ids, NEMO_ROWS)}},
    )
