"""Writing and loading synthetic corpora (``wav/spkNN_<emotion>_NNN.wav`` + ``speakers.json``)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf

from moma.corpora.base import Utterance
from moma.corpora.synthetic.emotions import SYNTH_EMOTIONS
from moma.corpora.synthetic.speakers import SpeakerVoice, make_speaker_voices
from moma.corpora.synthetic.utterance import synthesise_utterance

log = logging.getLogger(__name__)

CORPUS_NAME = "synthetic"
SPEAKERS_FILE = "speakers.json"
_FORMAT_VERSION = 1
_NAME = re.compile(r"^(?P<speaker>spk\d+)_(?P<emotion>[a-z]+)_(?P<index>\d+)$")


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes; quantised here so the bytes depend only on the samples."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def sentence_seed(seed: int, index: int) -> int:
    return int(np.random.default_rng([seed, 2, index]).integers(2**31))


def finish_corpus(root: Path, wav_dir: Path, utterances: Sequence[Utterance], voices: Sequence[SpeakerVoice],
                   settings: dict[str, Any]) -> None:
    """Remove files of an earlier corpus of this naming scheme, then write ``speakers.json``.

    ``speakers.json`` holds the generator's ``settings``, the emotions and every speaker's voice.
    """
    keep = {Path(u.path).name for u in utterances}
    stale = [p for p in wav_dir.glob("*.wav") if _NAME.match(p.stem) and p.name not in keep]
    for p in stale:
        p.unlink()
    if stale:
        log.info("synthetic: removed %d files of an earlier corpus from %s", len(stale), wav_dir)
    meta: dict[str, Any] = {
        "corpus": CORPUS_NAME,
        "format_version": _FORMAT_VERSION,
        **settings,
        "emotions": list(SYNTH_EMOTIONS),
        "speakers": {v.speaker: {k: (round(x, 6) if isinstance(x, float) else x) for k, x in asdict(v).items()}
                     for v in voices},
    }
    (root / SPEAKERS_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_synthetic_corpus(out_dir: str | Path, *, num_speakers: int = 8, utterances_per_emotion: int = 12,
                          seed: int = 0, sample_rate: int = 16000, min_duration: float = 1.0,
                          max_duration: float = 3.0) -> list[Utterance]:
    """Synthesise a corpus into ``out_dir`` and return its utterances.

    Writes ``out_dir/wav/spkNN_<emotion>_NNN.wav`` (16-bit PCM) for every
    speaker, emotion and sentence index, plus ``out_dir/speakers.json``.
    Sentence ``NNN`` is the same text for every speaker and emotion. The
    output is a pure function of the arguments: the same seed writes
    byte-identical files. Earlier files of this naming scheme that the new
    corpus does not contain are removed, so :func:`load_synthetic` never mixes
    two corpora.
    """
    if utterances_per_emotion < 1:
        raise ValueError(f"utterances_per_emotion must be >= 1, not {utterances_per_emotion}")
    start = time.perf_counter()
    root = Path(out_dir).expanduser().resolve()
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    voices = make_speaker_voices(num_speakers, seed)
    text_seeds = [sentence_seed(seed, k) for k in range(utterances_per_emotion)]
    width = max(3, len(str(utterances_per_emotion)))

    utterances: list[Utterance] = []
    for s, voice in enumerate(voices):
        for e, emotion in enumerate(SYNTH_EMOTIONS):
            for k, text_seed in enumerate(text_seeds):
                # One generator per utterance, keyed by its coordinates, so each
                # file is independent of the others and of generation order.
                rng = np.random.default_rng([seed, 1, s, e, k])
                audio = synthesise_utterance(voice, emotion, text_seed, rng, sample_rate,
                                             min_duration=min_duration, max_duration=max_duration)
                data = wav_bytes(audio, sample_rate)
                utt_id = f"{voice.speaker}_{emotion}_{k + 1:0{width}d}"
                path = wav_dir / f"{utt_id}.wav"
                path.write_bytes(data)
                utterances.append(Utterance(
                    id=utt_id, path=str(path), speaker=voice.speaker, label=emotion,
                    gender=voice.gender, duration=audio.size / sample_rate, transcript="",
                    corpus=CORPUS_NAME, raw_label=emotion, sha1=hashlib.sha1(data).hexdigest(),
                ))

    finish_corpus(root, wav_dir, utterances, voices,
                   {"seed": seed, "sample_rate": sample_rate, "utterances_per_emotion": utterances_per_emotion,
                    "min_duration": min_duration, "max_duration": max_duration})
    log.info("synthetic: %d utterances (%d speakers x %d emotions x %d) in %.1f s -> %s",
             len(utterances), len(voices), len(SYNTH_EMOTIONS), utterances_per_emotion,
             time.perf_counter() - start, root)
    return utterances


def load_synthetic(root: str | Path) -> list[Utterance]:
    """List a corpus written by :func:`make_synthetic_corpus` (the folder holding ``wav/``).

    Speaker, emotion and index come from the file names
    ``spkNN_<emotion>_NNN.wav``, genders from ``speakers.json``. The order is
    the generation order (speaker, emotion as in :data:`SYNTH_EMOTIONS`, index),
    so a reloaded corpus equals the list :func:`make_synthetic_corpus` returned.
    """
    root = Path(root).expanduser().resolve()
    wav_dir = root / "wav"
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"{root}: not a synthetic corpus folder (no wav/ subfolder); "
                                "create one with make_synthetic_corpus")
    genders: dict[str, str] = {}
    meta_path = root / SPEAKERS_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            genders = {spk: str(info.get("gender", "")) for spk, info in meta["speakers"].items()}
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
            raise ValueError(f"{meta_path}: not a valid speakers file ({exc})") from None
    else:
        log.warning("synthetic: %s missing; genders left empty", meta_path)

    rows: list[tuple[tuple[str, int, int], Utterance]] = []
    skipped: list[str] = []
    for wav in sorted(wav_dir.iterdir()):
        if wav.name.startswith(".") or wav.suffix.lower() != ".wav" or not wav.is_file():
            continue
        match = _NAME.match(wav.stem)
        if match is None or match["emotion"] not in SYNTH_EMOTIONS or (genders and match["speaker"] not in genders):
            skipped.append(wav.name)
            continue
        data = wav.read_bytes()
        info = sf.info(io.BytesIO(data))
        emotion = match["emotion"]
        rows.append(((match["speaker"], SYNTH_EMOTIONS.index(emotion), int(match["index"])), Utterance(
            id=wav.stem, path=str(wav), speaker=match["speaker"], label=emotion,
            gender=genders.get(match["speaker"], ""), duration=info.frames / info.samplerate, transcript="",
            corpus=CORPUS_NAME, raw_label=emotion, sha1=hashlib.sha1(data).hexdigest(),
        )))
    if skipped:
        log.warning("synthetic: skipped %d files with unexpected names (e.g. %s)", len(skipped), skipped[:3])
    if not rows:
        raise FileNotFoundError(f"{wav_dir}: no synthetic utterances (spkNN_<emotion>_NNN.wav)")
    rows.sort(key=lambda r: r[0])
    return [u for _, u in rows]
