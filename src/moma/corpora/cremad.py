"""CREMA-D (Cao et al., 2014), the audio files.

Layout::

    root/AudioWAV/1001_DFA_ANG_XX.wav   actor, sentence, emotion, intensity
    root/VideoDemographics.csv          ActorID, Age, Sex, Race, Ethnicity (optional)

91 actors read 12 sentences. The speaker is the four-digit actor id; the gender
comes from ``VideoDemographics.csv`` when it is present (``""`` otherwise).
Intensity (LO MD HI XX) is kept in the id only. Raw labels are the emotion codes
ANG DIS FEA HAP NEU SAD. Wavs are read from ``root/AudioWAV`` when that folder
exists, else from ``root`` itself.
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

__all__ = ["load_cremad", "read_demographics", "CREMAD_SENTENCES"]

CREMAD_SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
CREMAD_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<intensity>[A-Z]{1,2})$")
_SEX = {"male": "M", "m": "M", "female": "F", "f": "F"}


def read_demographics(path: Path) -> dict[str, str]:
    """``{actor_id: "M" | "F"}`` from ``VideoDemographics.csv``; unknown sexes are left out."""
    reader = csv.DictReader(io.StringIO(read_text(path).lstrip("\ufeff")))
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    if "actorid" not in columns or "sex" not in columns:
        raise ValueError(f"{path}: needs columns ActorID and Sex, found {reader.fieldnames}")
    out: dict[str, str] = {}
    for row in reader:
        actor = (row[columns["actorid"]] or "").strip()
        sex = _SEX.get((row[columns["sex"]] or "").strip().lower(), "")
        if actor and sex:
            out[actor] = sex
    return out


def load_cremad(root: Path) -> list[Utterance]:
    """List CREMA-D utterances, sorted by id; badly named files are skipped and counted."""
    root = Path(root).expanduser().resolve()
    wav_dir = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"{root}: CREMA-D folder not found")
    demographics_file = root / "VideoDemographics.csv"
    genders = read_demographics(demographics_file) if demographics_file.is_file() else {}
    if not genders:
        log.info("CREMA-D: no VideoDemographics.csv at %s; gender left empty", root)
    utterances: list[Utterance] = []
    skipped: list[str] = []
    for wav in sorted(wav_dir.iterdir()):
        if wav.suffix.lower() != ".wav" or wav.name.startswith(".") or not wav.is_file():
            continue
        match = _NAME.match(wav.stem)
        if match is None or match["emotion"] not in CREMAD_EMOTIONS or match["sentence"] not in CREMAD_SENTENCES:
            skipped.append(wav.name)
            continue
        utterances.append(
            Utterance(
                id=wav.stem,
                path=str(wav),
                speaker=match["actor"],
                label=match["emotion"],
                raw_label=match["emotion"],
                gender=genders.get(match["actor"], ""),
                transcript=CREMAD_SENTENCES[match["sentence"]],
            )
        )
    if skipped:
        log.warning(
            "CREMA-D: skipped %d wav files not named AAAA_SSS_EEE_II (e.g. %s)", len(skipped), skipped[:3]
        )
    return utterances
