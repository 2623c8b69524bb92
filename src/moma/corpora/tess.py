"""Toronto Emotional Speech Set (TESS; Dupuis & Pichora-Fuller, 2010).

Two female speakers (OAF, older; YAF, younger) say "Say the word ___" for 200
target words in seven emotions. Layout::

    root/OAF_angry/OAF_back_angry.wav
    root/YAF_pleasant_surprise/YAF_bath_ps.wav

Files are found anywhere under ``root``. The speaker is the first ``_`` token of
the file name (OAF or YAF), the target word the middle one (kept as the
transcript), the emotion the last one. Folder names are not used: the released
folders are spelt inconsistently (``OAF_Fear``, ``YAF_pleasant_surprised``, ...).
The emotion token is lower-cased and spellings of pleasant surprise are
normalised to ``ps``, so raw labels are: angry disgust fear happy neutral ps sad.
Utterance ids are ``<speaker>_<word>_<raw label>`` (e.g. ``YAF_bath_ps``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

__all__ = ["load_tess", "TESS_LABELS"]

TESS_LABELS = ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad")
# Spellings seen in copies of the corpus, mapped to the canonical raw label.
_ALIASES = {"surprise": "ps", "surprised": "ps", "pleasant_surprise": "ps", "pleasant_surprised": "ps"}
_NAME = re.compile(r"^(?P<speaker>[OY]AF)_(?P<word>.+?)_(?P<emotion>pleasant_surprised?|[A-Za-z]+)$", re.IGNORECASE)


def load_tess(root: Path) -> list[Utterance]:
    """List TESS utterances found anywhere under ``root``, sorted by id."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: TESS folder not found")
    found: dict[str, Utterance] = {}
    skipped: list[str] = []
    duplicates: list[str] = []
    for wav in sorted(root.rglob("*")):
        if wav.suffix.lower() != ".wav" or wav.name.startswith(".") or not wav.is_file():
            continue
        match = _NAME.match(wav.stem.strip())
        emotion = ""
        if match is not None:
            emotion = match["emotion"].lower()
            emotion = _ALIASES.get(emotion, emotion)
        if match is None or emotion not in TESS_LABELS:
            skipped.append(str(wav.relative_to(root)))
            continue
        speaker = match["speaker"].upper()
        # Normalised emotion in the id, so that case variants of one file collide visibly.
        utt_id = f"{speaker}_{match['word']}_{emotion}"
        if utt_id in found:
            duplicates.append(str(wav.relative_to(root)))
            continue
        found[utt_id] = Utterance(
            id=utt_id,
            path=str(wav),
            speaker=speaker,
            label=emotion,
            raw_label=emotion,
            gender="F",
            transcript=match["word"],
        )
    if skipped:
        log.warning(
            "TESS: skipped %d wav files not named <OAF|YAF>_<word>_<emotion> (e.g. %s)", len(skipped), skipped[:3]
        )
    if duplicates:
        log.warning("TESS: ignored %d duplicate files (e.g. %s)", len(duplicates), duplicates[:3])
    return [found[k] for k in sorted(found)]
