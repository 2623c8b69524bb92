"""Berlin Database of Emotional Speech (EmoDB; Burkhardt et al., Interspeech 2005).

Layout::

    root/wav/SSTTTEV.wav          03a01Fa.wav: speaker 03, text a01, emotion F, version a
    root/silb/<utt>.silb          syllable end times (see alignment.py)
    root/lablaut/<utt>xx.lablaut  phone segmentation, xlabel format
    root/labsilb/<utt>.labsilb    syllable labels, xlabel format

535 utterances from 10 speakers; raw labels are the German emotion letters
(W L E A F T N), mapped to English names by labelmaps.yaml. EmoDB has no
sessions (``session == ""``). Utterance ids are the file stems.

Real-corpus quirks handled here: one ``.silb`` file is empty (``13a01Wb``), so
``words`` is only set for non-empty files; ``lablaut/`` holds a header-only
``14b09Ea.lablaut`` beside the real ``14b09Eaxx.lablaut`` and files for two
utterances without audio, so the ``xx`` name is preferred and only utterances
with a wav are listed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

__all__ = ["load_emodb", "EMODB_SPEAKER_GENDER", "EMODB_SENTENCES"]

# Speaker table of the corpus documentation.
EMODB_SPEAKER_GENDER: dict[str, str] = {
    "03": "M", "08": "F", "09": "F", "10": "M", "11": "M",
    "12": "M", "13": "F", "14": "F", "15": "M", "16": "F",
}  # fmt: skip

# The ten sentences every speaker read (text codes of the file names).
EMODB_SENTENCES: dict[str, str] = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}

_NAME = re.compile(r"^(?P<speaker>\d{2})(?P<text>[ab]\d{2})(?P<emotion>[WLEAFTN])(?P<version>[a-z])$")


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def load_emodb(root: Path) -> list[Utterance]:
    """List EmoDB utterances under ``root`` (the folder holding ``wav/``), sorted by id.

    ``raw_label`` and ``label`` are the emotion letter; ``prepare_corpus`` maps it.
    Files whose names do not follow ``SSTTTEV.wav`` are skipped and counted.
    """
    root = Path(root).expanduser().resolve()
    wav_dir = root / "wav"
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"{root}: not an EmoDB folder (no wav/ subfolder)")
    utterances: list[Utterance] = []
    skipped: list[str] = []
    for wav in sorted(wav_dir.iterdir()):
        if wav.name.startswith(".") or wav.suffix.lower() != ".wav" or not wav.is_file():
            continue
        match = _NAME.match(wav.stem)
        if match is None or match["speaker"] not in EMODB_SPEAKER_GENDER:
            skipped.append(wav.name)
            continue
        utt = wav.stem
        words = root / "silb" / f"{utt}.silb"
        phones = root / "lablaut" / f"{utt}xx.lablaut"
        if not _nonempty(phones):
            phones = root / "lablaut" / f"{utt}.lablaut"
        utterances.append(
            Utterance(
                id=utt,
                path=str(wav),
                speaker=match["speaker"],
                label=match["emotion"],
                raw_label=match["emotion"],
                gender=EMODB_SPEAKER_GENDER[match["speaker"]],
                transcript=EMODB_SENTENCES.get(match["text"], ""),
                words=str(words) if _nonempty(words) else "",
                phones=str(phones) if _nonempty(phones) else "",
            )
        )
    if skipped:
        log.warning("EmoDB: skipped %d files with unexpected names (e.g. %s)", len(skipped), skipped[:3])
    unknown_texts = sorted({u.id[2:5] for u in utterances if not u.transcript})
    if unknown_texts:
        log.warning("EmoDB: no transcript for text codes %s", unknown_texts)
    return utterances
