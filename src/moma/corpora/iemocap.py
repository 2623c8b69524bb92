"""IEMOCAP (Busso et al., 2008), read from the release layout.

Layout (``root`` may be ``IEMOCAP_full_release`` itself or the folder holding it)::

    SessionN/dialog/EmoEvaluation/<dialog>.txt       consensus labels (top level only)
    SessionN/dialog/transcriptions/<dialog>.txt      "UTT [start-end]: text"
    SessionN/sentences/wav/<dialog>/<utt>.wav        one file per utterance
    SessionN/sentences/ForcedAlignment/<dialog>/<utt>.wdseg|.phseg

Only the consensus lines of the EmoEvaluation files are read::

    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

The per-rater subfolders (``Categorical/``, ``Attribute/``, ``Self-evaluation/``)
and the rater lines (``C-E1:``, ``A-E1:``) are ignored; so are macOS ``._*`` files.

Conventions
-----------
- ``session`` is ``"Ses01"`` .. ``"Ses05"`` (taken from the utterance id), so
  ``speaker == session + gender`` (``"Ses01M"``): leave-one-session-out and
  leave-one-speaker-out protocols can both be derived from it.
- The speaker is the one of the utterance, i.e. the gender letter of the id's
  LAST token (``Ses01F_impro01_M013`` is spoken by ``Ses01M``); the letter after
  ``SesNN`` names the speaker wearing the motion-capture markers in the dialog.
- ``duration`` comes from the bracketed turn times.
- Raw labels are the release's codes (neu hap exc ang sad fru sur fea dis oth xxx).
  With the default ``4class`` map (excited merged into happy) the full release
  gives 5531 utterances, 1241 of them in Session 5.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from moma.corpora.alignment import read_text
from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

__all__ = ["load_iemocap", "parse_emo_evaluation", "parse_transcriptions", "iemocap_speaker"]

# "[6.2901 - 8.2357]  Ses01F_impro01_F000  neu  [2.5000, 2.5000, 2.5000]"
_CONSENSUS = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\s*\]\s+"
    r"(?P<utt>Ses\d{2}[FM]_\S+)\s+(?P<label>[A-Za-z]+)\b"
)
# Utterance id: Ses01F_impro01_F000, Ses01F_script01_1_M012, Ses05M_script01_1b_F003.
_UTT_ID = re.compile(r"^Ses(?P<session>\d{2})[FM]_.+_(?P<gender>[FM])\d+$")
# Transcription line: "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
_TRANSCRIPT = re.compile(r"^(?P<utt>Ses\d{2}[FM]_\S+)\s+\[[^\]]*\]:\s?(?P<text>.*)$")
_SESSION_DIR = re.compile(r"^Session\d+$")


def iemocap_speaker(utt_id: str) -> tuple[str, str, str]:
    """``(session, speaker, gender)`` of an utterance id, e.g. ``("Ses01", "Ses01M", "M")``.

    Raises ``ValueError`` for an id that does not follow the IEMOCAP pattern.
    """
    match = _UTT_ID.match(utt_id)
    if match is None:
        raise ValueError(f"not an IEMOCAP utterance id: {utt_id!r}")
    session = f"Ses{match['session']}"
    return session, session + match["gender"], match["gender"]


def parse_emo_evaluation(text: str) -> list[tuple[str, str, float, float]]:
    """Consensus lines of one EmoEvaluation file as ``(utt_id, label, start, end)``.

    Headers, blank lines and per-rater lines are skipped; CRLF and trailing
    whitespace are tolerated.
    """
    rows: list[tuple[str, str, float, float]] = []
    for line in text.splitlines():
        match = _CONSENSUS.match(line.strip())
        if match:
            rows.append((match["utt"], match["label"].lower(), float(match["start"]), float(match["end"])))
    return rows


def parse_transcriptions(text: str) -> dict[str, str]:
    """``{utt_id: text}`` from one transcription file (lines without a turn id are skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _TRANSCRIPT.match(line.strip())
        if match:
            out[match["utt"]] = match["text"].strip()
    return out


def _release_root(root: Path) -> Path:
    nested = root / "IEMOCAP_full_release"
    return nested if nested.is_dir() and not any(_sessions(root)) else root


def _sessions(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _SESSION_DIR.match(p.name))


def load_iemocap(root: Path) -> list[Utterance]:
    """List IEMOCAP utterances with their consensus labels, sorted by id.

    Utterances whose wav is missing are skipped (counted in a warning). ``words``
    and ``phones`` point at the ``.wdseg`` / ``.phseg`` files when they exist.
    """
    root = _release_root(Path(root).expanduser().resolve())
    sessions = _sessions(root)
    if not sessions:
        raise FileNotFoundError(f"{root}: no Session1..5 folders (expected the IEMOCAP_full_release layout)")
    utterances: dict[str, Utterance] = {}
    missing_wav: list[str] = []
    bad_ids: list[str] = []
    duplicates = 0
    for session_dir in sessions:
        eval_dir = session_dir / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            log.warning("IEMOCAP: %s has no dialog/EmoEvaluation folder", session_dir)
            continue
        transcripts: dict[str, dict[str, str]] = {}  # per dialog, read once
        # Top level only: the rater subfolders hold individual, possibly conflicting, labels.
        for eval_file in sorted(eval_dir.glob("*.txt")):
            if eval_file.name.startswith("._") or not eval_file.is_file():
                continue
            for utt_id, raw, start, end in parse_emo_evaluation(read_text(eval_file)):
                try:
                    session, speaker, gender = iemocap_speaker(utt_id)
                except ValueError:
                    bad_ids.append(utt_id)
                    continue
                if utt_id in utterances:
                    duplicates += 1
                    continue
                dialog = utt_id.rsplit("_", 1)[0]
                sentences = session_dir / "sentences"
                wav = sentences / "wav" / dialog / f"{utt_id}.wav"
                if not wav.is_file():
                    missing_wav.append(utt_id)
                    continue
                if dialog not in transcripts:
                    transcript_file = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
                    transcripts[dialog] = (
                        parse_transcriptions(read_text(transcript_file)) if transcript_file.is_file() else {}
                    )
                aligned = sentences / "ForcedAlignment" / dialog
                words = aligned / f"{utt_id}.wdseg"
                phones = aligned / f"{utt_id}.phseg"
                utterances[utt_id] = Utterance(
                    id=utt_id,
                    path=str(wav),
                    speaker=speaker,
                    label=raw,
                    raw_label=raw,
                    session=session,
                    gender=gender,
                    duration=round(max(end - start, 0.0), 4),
                    transcript=transcripts[dialog].get(utt_id, ""),
                    words=str(words) if words.is_file() else "",
                    phones=str(phones) if phones.is_file() else "",
                )
    if missing_wav:
        log.warning("IEMOCAP: skipped %d utterances without a wav file (e.g. %s)", len(missing_wav), missing_wav[:3])
    if bad_ids:
        log.warning("IEMOCAP: skipped %d lines with unexpected utterance ids (e.g. %s)", len(bad_ids), bad_ids[:3])
    if duplicates:
        log.warning("IEMOCAP: ignored %d repeated consensus lines (first one kept)", duplicates)
    raw_counts = dict(Counter(u.raw_label for u in utterances.values()))
    log.info("IEMOCAP: %d utterances, raw labels %s", len(utterances), raw_counts)
    return [utterances[k] for k in sorted(utterances)]
