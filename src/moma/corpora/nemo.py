"""nEMO, Polish emotional speech (Christop, LREC-COLING 2024).

Layout of the release::

    root/data.tsv                 file_id, emotion, raw_text, normalized_text, speaker_id, gender, age
    root/samples/<file_id>        EB0_anger_12.wav: speaker, emotion, take number

9 actors (EB0 IC0 KD0 MK0 female; KS0 MP0 SM0 TP0 WR0 male), 4,481 utterances,
6 emotions (anger fear happiness neutral sadness surprised), 24 kHz mono WAV.

Real-corpus quirks handled here: ``speaker_id`` is padded with leading spaces
(``"        EB0"``), so every field is stripped; the table is read as UTF-8
(Polish transcripts), with a BOM if one is there. When ``data.tsv`` is absent
the speaker and emotion come from the file names, and transcripts are empty.
Rows whose audio file is missing are skipped and counted, never listed.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

from moma.corpora.alignment import read_text
from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

__all__ = ["load_nemo", "NEMO_EMOTIONS"]

NEMO_EMOTIONS = ("anger", "fear", "happiness", "neutral", "sadness", "surprised")
_NAME = re.compile(r"^(?P<speaker>[A-Z]{2}\d)_(?P<emotion>[a-z]+)_(?P<take>\d+)$")
_GENDER = {"female": "F", "f": "F", "male": "M", "m": "M"}
_COLUMNS = ("file_id", "emotion", "speaker_id")


def _rows_from_table(path: Path) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path).lstrip("\ufeff")), delimiter="\t", quoting=csv.QUOTE_NONE)
    names = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    missing = [c for c in _COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: nEMO table lacks columns {', '.join(missing)} (found {reader.fieldnames})")
    return [{key: (row.get(name) or "").strip() for key, name in names.items()} for row in reader]


def load_nemo(root: Path) -> list[Utterance]:
    """List nEMO utterances under ``root`` (the folder holding ``samples/``), sorted by id.

    ``raw_label`` is nEMO's emotion word; ``prepare_corpus`` maps it to the shared names.
    """
    root = Path(root).expanduser().resolve()
    samples = root / "samples" if (root / "samples").is_dir() else root
    if not samples.is_dir():
        raise FileNotFoundError(f"{root}: not an nEMO folder (no samples/ subfolder)")
    table = root / "data.tsv"
    utterances: list[Utterance] = []
    missing_audio: list[str] = []
    skipped: list[str] = []
    if table.is_file():
        for row in _rows_from_table(table):
            file_id, emotion, speaker = row["file_id"], row["emotion"].lower(), row["speaker_id"]
            if not file_id or emotion not in NEMO_EMOTIONS or not speaker:
                skipped.append(file_id or "<empty row>")
                continue
            wav = samples / file_id
            if not wav.is_file():
                missing_audio.append(file_id)
                continue
            utterances.append(
                Utterance(
                    id=Path(file_id).stem,
                    path=str(wav),
                    speaker=speaker,
                    label=emotion,
                    raw_label=emotion,
                    gender=_GENDER.get(row.get("gender", "").lower(), ""),
                    transcript=row.get("raw_text", ""),
                )
            )
    else:
        log.info("nEMO: no data.tsv under %s; speakers and emotions taken from file names", root)
        for wav in sorted(samples.glob("*.wav")):
            match = _NAME.match(wav.stem)
            if match is None or match["emotion"] not in NEMO_EMOTIONS:
                skipped.append(wav.name)
                continue
            utterances.append(Utterance(id=wav.stem, path=str(wav), speaker=match["speaker"],
                                        label=match["emotion"], raw_label=match["emotion"]))
    if skipped:
        log.warning("nEMO: skipped %d rows with an unknown emotion or no file/speaker (e.g. %s)", len(skipped), skipped[:3])
    if missing_audio:
        log.warning("nEMO: %d rows of data.tsv have no audio file in %s (e.g. %s)", len(missing_audio), samples,
                    missing_audio[:3])
    return sorted(utterances, key=lambda u: u.id)
