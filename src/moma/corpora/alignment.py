"""Readers for the time alignments that ship with emotional speech corpora.

``read_alignment(path)`` picks the format from the file suffix:

- IEMOCAP ``.wdseg`` / ``.phseg`` (Sphinx-3 forced alignment): a header line
  ``SFrm  EFrm  SegAScr  Word`` (or ``Phone``), one row per segment with
  inclusive start and end frame numbers at 100 frames/s, the score, then the
  unit (``.phseg`` adds context and word-position columns after the phone),
  and a closing ``Total Score`` line. Pronunciation variants such as
  ``HELLO(2)`` are reduced to ``HELLO``; ``<s>``, ``</s>`` and ``<sil>`` are kept.
- EmoDB ``.silb``: one syllable per line, ``end_time syllable``; a segment
  starts where the previous one ended (the first at 0).
- EmoDB ``.lablaut`` / ``.labsilb`` (ESPS xlabel): a header up to a line ``#``,
  then ``end_time color label[<TAB>annotation ...]``. Only the label is kept;
  rows whose label is empty (they carry only an annotation such as ``-lar``)
  stay as segments with label ``""`` so that the time axis has no holes.

EmoDB files are latin-1 (German umlauts); every reader decodes UTF-8 first and
falls back to latin-1, which never fails.
"""

from __future__ import annotations

import re
from pathlib import Path

from moma.corpora.base import Alignment

SPHINX_FRAME_RATE = 100.0  # frames per second of IEMOCAP's Sphinx alignments
_VARIANT = re.compile(r"\(\d+\)$")  # pronunciation variant suffix: WORD(2)
# xlabel row: time, colour, then (after exactly one separator) label and annotations.
# The label may be empty, so the remainder must not be whitespace-split.
_XLABEL_ROW = re.compile(r"^\s*([-+0-9.eE]+)\s+(-?\d+)[ \t]?(.*)$")

__all__ = ["read_alignment", "read_text", "ALIGNMENT_SUFFIXES"]

ALIGNMENT_SUFFIXES = (".wdseg", ".phseg", ".silb", ".lablaut", ".labsilb")


def read_text(path: str | Path) -> str:
    """Read a text file as UTF-8, falling back to latin-1 (old corpus files are latin-1)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_alignment(path: str | Path) -> Alignment:
    """Read a word/syllable/phone alignment; the format follows the suffix.

    Raises ``ValueError`` for an unknown suffix or a malformed row (naming the line).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".wdseg", ".phseg"):
        return _read_sphinx_seg(path)
    if suffix == ".silb":
        return _read_silb(path)
    if suffix in (".lablaut", ".labsilb"):
        return _read_xlabel(path)
    raise ValueError(
        f"{path}: unknown alignment format {suffix!r}; expected one of {', '.join(ALIGNMENT_SUFFIXES)}"
    )


def _read_sphinx_seg(path: Path) -> Alignment:
    out = Alignment()
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0] == "SFrm":
            continue
        if tokens[0].lower() == "total":  # "Total Score: ..." closes the table
            break
        if len(tokens) < 4:
            raise ValueError(f"{path}:{lineno}: expected 'SFrm EFrm SegAScr Unit', got {line.strip()!r}")
        try:
            first, last = int(tokens[0]), int(tokens[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: frame numbers expected, got {line.strip()!r}") from None
        out.starts.append(first / SPHINX_FRAME_RATE)
        # EFrm is the last frame of the segment (inclusive), so the segment ends one frame later.
        out.ends.append((last + 1) / SPHINX_FRAME_RATE)
        out.labels.append(_VARIANT.sub("", tokens[3]))
    return out


def _read_silb(path: Path) -> Alignment:
    out = Alignment()
    previous = 0.0
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        try:
            end = float(parts[0])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: 'end_time syllable' expected, got {line.strip()!r}") from None
        out.starts.append(previous)
        out.ends.append(end)
        out.labels.append(parts[1].strip() if len(parts) > 1 else "")
        previous = end
    return out


def _read_xlabel(path: Path) -> Alignment:
    out = Alignment()
    lines = read_text(path).splitlines()
    try:
        body = next(i for i, line in enumerate(lines) if line.strip() == "#") + 1
    except StopIteration:
        raise ValueError(f"{path}: xlabel header end '#' not found") from None
    previous = 0.0
    for lineno, line in enumerate(lines[body:], body + 1):
        if not line.strip():
            continue
        match = _XLABEL_ROW.match(line)
        if match is None:
            raise ValueError(f"{path}:{lineno}: 'end_time color label' expected, got {line.strip()!r}")
        end = float(match.group(1))
        # Annotations (+lar, +asp, stress digits, ...) follow the label after a tab.
        label = match.group(3).split("\t", 1)[0].strip()
        out.starts.append(previous)
        out.ends.append(end)
        out.labels.append(label)
        previous = end
    return out
