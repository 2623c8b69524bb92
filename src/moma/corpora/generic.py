"""Loaders for corpora without a dedicated reader: a CSV listing, or one folder per label.

CSV (``load_csv``)
    Required columns ``path``, ``label``, ``speaker`` (header matched
    case-insensitively); optional ``id``, ``session``, ``gender``, ``transcript``,
    ``start``, ``end`` (seconds, selecting a region of a long file) and
    ``duration``. Relative paths resolve against the CSV's folder. A missing
    column or a bad row raises ``ValueError`` naming it (``row N (line L)``: data
    rows counted from 1, and the line of the file). Without an ``id`` column the
    id is the path relative to the CSV without suffix, plus ``@start-end`` for a
    region.

Folders (``load_folders``)
    ``root/<label>/**/*.{wav,flac,ogg,mp3,aiff,aif}``. Speakers come from an
    optional ``root/speakers.csv`` (columns ``path`` or ``file``, and ``speaker``),
    else from the file name through ``speaker_pattern`` (default: the first
    ``_``- or ``-``-separated token of the stem). Without real speaker ids no
    protocol can be speaker-independent: the same person may land in training and
    test, inflating scores. A warning says so whenever speakers are guessed.
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

__all__ = ["load_csv", "load_folders", "AUDIO_SUFFIXES", "DEFAULT_SPEAKER_PATTERN"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
DEFAULT_SPEAKER_PATTERN = r"^([^_-]+)"  # first "_"- or "-"-separated token of the file stem
CSV_REQUIRED = ("path", "label", "speaker")
CSV_OPTIONAL = ("id", "session", "gender", "transcript", "start", "end", "duration")
_GENDERS = {"": "", "m": "M", "male": "M", "f": "F", "female": "F"}


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """Header (lower-cased, stripped) and ``(where, row)`` pairs; tolerates a BOM and latin-1.

    ``where`` names the row for error messages: ``"row N (line L)"``, rows counted
    from 1 without the header and blank lines.
    """
    reader = csv.reader(io.StringIO(read_text(path).lstrip("\ufeff")))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise ValueError(f"{path}: empty CSV file") from None
    rows: list[tuple[str, dict[str, str]]] = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue  # blank line
        where = f"{path}: row {len(rows) + 1} (line {reader.line_num})"
        if any(v.strip() for v in values[len(header):]):  # empty trailing fields are harmless
            raise ValueError(f"{where}: {len(values)} fields but the header has {len(header)}")
        rows.append((where, {name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(header)}))
    return header, rows


def _seconds(row: dict[str, str], key: str, where: str) -> float:
    text = row.get(key, "")
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {key} must be a number of seconds, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{where}: {key} must not be negative, got {value}")
    return value


def _find_csv(path_or_root: Path) -> Path:
    if path_or_root.is_file():
        return path_or_root
    if path_or_root.is_dir():
        candidates = sorted(p for p in path_or_root.glob("*.csv") if p.name != "speakers.csv")
        if len(candidates) == 1:
            return candidates[0]
        raise ValueError(
            f"{path_or_root}: give the CSV file itself; the folder holds "
            + (f"several CSV files ({', '.join(p.name for p in candidates)})" if candidates else "no CSV file")
        )
    raise FileNotFoundError(f"{path_or_root}: CSV file not found")


def load_csv(path_or_root: Path) -> list[Utterance]:
    """Utterances listed in a CSV file (or the only CSV file of a folder), in file order."""
    path = _find_csv(Path(path_or_root).expanduser().resolve())
    header, rows = _read_csv_rows(path)
    missing = [name for name in CSV_REQUIRED if name not in header]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}; header is {header}")
    ignored = [name for name in header if name not in CSV_REQUIRED + CSV_OPTIONAL]
    if ignored:
        log.info("%s: ignoring column(s) %s", path.name, ", ".join(ignored))
    out: list[Utterance] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        empty = [name for name in CSV_REQUIRED if not row.get(name)]
        if empty:
            raise ValueError(f"{where}: empty {', '.join(empty)}")
        audio = Path(row["path"]).expanduser()
        audio = (audio if audio.is_absolute() else path.parent / audio).resolve()
        if not audio.is_file():
            raise ValueError(f"{where}: audio file {audio} not found")
        start, end = _seconds(row, "start", where), _seconds(row, "end", where)
        if end and end <= start:
            raise ValueError(f"{where}: end ({end}) must be after start ({start})")
        gender = row.get("gender", "")
        if gender.lower() not in _GENDERS:
            raise ValueError(f"{where}: gender must be F, M, female, male or empty, got {gender!r}")
        utt_id = row.get("id", "")
        if not utt_id:
            # Without an id column: the path relative to the CSV, plus the region when one is cut out.
            try:
                stem = audio.relative_to(path.parent).with_suffix("").as_posix()
            except ValueError:
                stem = audio.with_suffix("").as_posix()
            utt_id = stem if not (start or end) else f"{stem}@{start:g}-{end:g}"
        if utt_id in seen:
            raise ValueError(f"{where}: id {utt_id!r} is already used ({seen[utt_id]})")
        seen[utt_id] = where
        out.append(
            Utterance(
                id=utt_id,
                path=str(audio),
                speaker=row["speaker"],
                label=row["label"],
                raw_label=row["label"],
                session=row.get("session", ""),
                gender=_GENDERS[gender.lower()],
                duration=_seconds(row, "duration", where),
                transcript=row.get("transcript", ""),
                start=start,
                end=end,
            )
        )
    return out


def _read_speaker_table(path: Path, root: Path) -> dict[str, str]:
    """``{key: speaker}`` where key is a root-relative posix path or a bare file name."""
    header, rows = _read_csv_rows(path)
    key_column = "path" if "path" in header else "file" if "file" in header else ""
    if not key_column or "speaker" not in header:
        raise ValueError(f"{path}: needs columns (path or file) and speaker; header is {header}")
    table: dict[str, str] = {}
    for where, row in rows:
        key, speaker = row.get(key_column, ""), row.get("speaker", "")
        if not key or not speaker:
            raise ValueError(f"{where}: empty {key_column} or speaker")
        key_path = Path(key)
        if key_path.is_absolute():
            try:
                key = key_path.resolve().relative_to(root).as_posix()
            except ValueError:
                key = key_path.name
        table[Path(key).as_posix()] = speaker
    return table


def load_folders(root: Path, *, speaker_pattern: str | None = None) -> list[Utterance]:
    """Utterances from ``root/<label>/**/<audio>``, sorted by id (the root-relative path without suffix).

    ``speaker_pattern`` is a regular expression searched in the file stem; its
    group ``speaker`` (or group 1, or the whole match) is the speaker. Files it
    does not match are skipped with a warning. ``speakers.csv`` takes precedence.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    pattern = re.compile(speaker_pattern or DEFAULT_SPEAKER_PATTERN)
    table_file = root / "speakers.csv"
    table = _read_speaker_table(table_file, root) if table_file.is_file() else {}
    found: dict[str, Utterance] = {}
    guessed = 0
    unmatched: list[str] = []
    duplicates: list[str] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for audio in sorted(label_dir.rglob("*")):
            relative = audio.relative_to(root)
            if (
                audio.suffix.lower() not in AUDIO_SUFFIXES
                or any(part.startswith(".") for part in relative.parts)  # hidden files, macOS ._*
                or not audio.is_file()
            ):
                continue
            speaker = table.get(relative.as_posix()) or table.get(audio.name, "")
            if not speaker:
                match = pattern.search(audio.stem)
                if match is None:
                    unmatched.append(relative.as_posix())
                    continue
                groups = match.groupdict()
                speaker = groups.get("speaker") or (match.group(1) if pattern.groups else match.group(0))
                if not speaker:
                    unmatched.append(relative.as_posix())
                    continue
                guessed += 1
            utt_id = relative.with_suffix("").as_posix()
            if utt_id in found:  # same stem with two audio formats
                duplicates.append(relative.as_posix())
                continue
            found[utt_id] = Utterance(
                id=utt_id, path=str(audio), speaker=speaker, label=label_dir.name, raw_label=label_dir.name
            )
    if unmatched:
        log.warning(
            "folders: skipped %d files whose names give no speaker with pattern %r (e.g. %s)",
            len(unmatched),
            pattern.pattern,
            unmatched[:3],
        )
    if duplicates:
        log.warning(
            "folders: ignored %d files sharing a name with another format (e.g. %s)", len(duplicates), duplicates[:3]
        )
    if guessed:
        log.warning(
            "folders: the speakers of %d files were guessed from their names with %r; unless these are real "
            "speaker ids, "
            "no protocol can be speaker-independent (add speakers.csv with columns path, speaker)",
            guessed,
            pattern.pattern,
        )
    return [found[k] for k in sorted(found)]
