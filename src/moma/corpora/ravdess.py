"""RAVDESS speech (Livingstone & Russo, 2018), audio-only speech files.

File names are seven two-digit fields ``MM-VC-EE-II-SS-RR-AA.wav``:

=====  ==========================================================
MM     modality: 01 audio-video, 02 video-only, 03 audio-only
VC     vocal channel: 01 speech, 02 song
EE     emotion: 01 neutral 02 calm 03 happy 04 sad 05 angry 06 fearful
       07 disgust 08 surprised
II     intensity: 01 normal, 02 strong (neutral has no strong take)
SS     statement: 01 "Kids are talking by the door", 02 "Dogs are sitting by the door"
RR     repetition: 01, 02
AA     actor 01..24; odd actors are male, even actors female
=====  ==========================================================

Files may sit anywhere under ``root`` (``Actor_XX/`` folders, or the speech and
song archives unpacked side by side). Only audio-only speech (``03-01-...``) is
kept; song, video files and names that do not follow the pattern are skipped and
counted. The speaker is ``"Actor_XX"``; the raw label is the two-digit emotion code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

__all__ = ["load_ravdess", "RAVDESS_STATEMENTS"]

RAVDESS_STATEMENTS: dict[str, str] = {
    "01": "Kids are talking by the door",
    "02": "Dogs are sitting by the door",
}
_NAME = re.compile(
    r"^(?P<modality>0[1-3])-(?P<channel>0[12])-(?P<emotion>0[1-8])-(?P<intensity>0[12])-"
    r"(?P<statement>0[12])-(?P<repetition>0[12])-(?P<actor>\d{2})$"
)
_AUDIO_ONLY, _SPEECH = "03", "01"


def load_ravdess(root: Path) -> list[Utterance]:
    """List RAVDESS audio-only speech utterances found anywhere under ``root``, sorted by id."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: RAVDESS folder not found")
    found: dict[str, Utterance] = {}
    unrecognised: list[str] = []
    not_speech = 0  # song or video: valid names, not part of the speech corpus
    duplicates: list[str] = []
    for wav in sorted(root.rglob("*")):
        if wav.suffix.lower() != ".wav" or wav.name.startswith(".") or not wav.is_file():
            continue
        match = _NAME.match(wav.stem)
        if match is None or not 1 <= int(match["actor"]) <= 24:
            unrecognised.append(str(wav.relative_to(root)))
            continue
        if match["modality"] != _AUDIO_ONLY or match["channel"] != _SPEECH:
            not_speech += 1
            continue
        if wav.stem in found:  # e.g. the same archive unpacked twice
            duplicates.append(str(wav.relative_to(root)))
            continue
        actor = int(match["actor"])
        found[wav.stem] = Utterance(
            id=wav.stem,
            path=str(wav),
            speaker=f"Actor_{actor:02d}",
            label=match["emotion"],
            raw_label=match["emotion"],
            gender="M" if actor % 2 else "F",
            transcript=RAVDESS_STATEMENTS[match["statement"]],
        )
    if unrecognised:
        log.warning(
            "RAVDESS: skipped %d wav files whose names do not follow MM-VC-EE-II-SS-RR-AA (e.g. %s)",
            len(unrecognised),
            unrecognised[:3],
        )
    if not_speech:
        log.info("RAVDESS: skipped %d song or video files (only audio-only speech is used)", not_speech)
    if duplicates:
        log.warning("RAVDESS: ignored %d duplicate files (e.g. %s)", len(duplicates), duplicates[:3])
    return [found[k] for k in sorted(found)]
