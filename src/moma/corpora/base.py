"""The utterance record every corpus loader produces, and manifest I/O.

A manifest is one row per utterance (JSONL or CSV). It is the only thing the
rest of the pipeline reads about a corpus: loaders turn a corpus's own layout
into manifests, and training, evaluation and protocols read manifests.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from moma.files import replace_atomically

log = logging.getLogger(__name__)


@dataclass
class Utterance:
    id: str  # unique utterance id within the corpus
    path: str  # audio file path (absolute, or relative to the manifest's folder)
    speaker: str  # speaker id; protocols never let one speaker sit in both train and test
    label: str  # emotion label after the label map
    session: str = ""  # recording session (IEMOCAP Session1..5); "" when the corpus has none
    gender: str = ""  # "F" | "M" | ""
    duration: float = 0.0  # seconds
    transcript: str = ""
    corpus: str = ""
    raw_label: str = ""  # the corpus's own label before mapping
    sha1: str = ""  # content hash of the audio file; keys the feature cache
    words: str = ""  # path to a word/syllable alignment file, when the corpus has one
    phones: str = ""  # path to a phone alignment file, when the corpus has one
    start: float = 0.0  # s; > 0 or end > 0 selects a region of the file (long recordings)
    end: float = 0.0  # s; 0 means the end of the file


MANIFEST_FIELDS = [f.name for f in fields(Utterance)]
REQUIRED_FIELDS = ("id", "path", "speaker", "label")


def write_manifest(utterances: Iterable[Utterance], path: str | Path) -> Path:
    """Write a manifest; ``.csv`` gives CSV, anything else JSONL. Written atomically."""
    path = Path(path)
    rows = [asdict(u) for u in utterances]

    def write(tmp: Path) -> None:
        if path.suffix.lower() == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    replace_atomically(path, write)
    return path


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a JSONL or CSV manifest. Relative audio paths resolve against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            raw_rows: list[dict[str, Any]] = list(csv.DictReader(fh))
    else:
        raw_rows = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        raw_rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    known = set(MANIFEST_FIELDS)
    out: list[Utterance] = []
    seen: set[str] = set()
    for i, row in enumerate(raw_rows, 1):
        missing = [k for k in REQUIRED_FIELDS if not str(row.get(k, "") or "").strip()]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {', '.join(missing)}")
        kwargs = {k: v for k, v in row.items() if k in known and v is not None}
        for key in ("duration", "start", "end"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key] or 0.0)
        for key in kwargs:
            if key not in ("duration", "start", "end"):
                kwargs[key] = str(kwargs[key])
        utt = Utterance(**kwargs)
        if utt.id in seen:
            raise ValueError(f"{path}: duplicate utterance id {utt.id!r}")
        seen.add(utt.id)
        p = Path(utt.path)
        if not p.is_absolute():
            utt.path = str((path.parent / p).resolve())
        out.append(utt)
    return out


def summarise(utterances: list[Utterance]) -> dict[str, Any]:
    """Counts a user wants to see after preparing a corpus."""
    return {
        "utterances": len(utterances),
        "speakers": len({u.speaker for u in utterances}),
        "labels": dict(sorted(Counter(u.label for u in utterances).items())),
        "per_speaker": dict(sorted(Counter(u.speaker for u in utterances).items())),
        "sessions": dict(sorted(Counter(u.session for u in utterances if u.session).items())),
        "hours": round(sum(u.duration for u in utterances) / 3600.0, 4),
    }


def select_speakers(utterances: list[Utterance], speakers: Iterable[str] | None, source: str = "the manifest"
                    ) -> list[Utterance]:
    """The utterances of ``speakers`` (all of them for ``None``).

    A speaker the utterances do not have is an error naming it and the speakers
    there are, so a typo never silently scores an empty or partial set.
    """
    if not utterances:
        raise ValueError(f"{source} has no utterances")
    if speakers is None:
        return list(utterances)
    wanted = list(speakers)
    have = sorted({u.speaker for u in utterances})
    unknown = sorted(set(wanted) - set(have))
    if unknown:
        raise ValueError(f"speaker(s) {', '.join(unknown)} not in {source} (it has {', '.join(have)})")
    keep = set(wanted)
    return [u for u in utterances if u.speaker in keep]


def label_list(utterances: Iterable[Utterance]) -> list[str]:
    """Sorted label names: the class index order used by a model trained on them."""
    return sorted({u.label for u in utterances})


@dataclass
class Alignment:
    """Timed segments (word/syllable or phone) for plotting attention against speech units."""

    starts: list[float] = field(default_factory=list)  # s
    ends: list[float] = field(default_factory=list)  # s
    labels: list[str] = field(default_factory=list)
