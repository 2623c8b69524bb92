"""Corpora of a requested size (for benchmarks), cut from a small synthesised pool."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np

from moma.corpora.base import Utterance
from moma.corpora.synthetic.corpus import CORPUS_NAME, finish_corpus, sentence_seed, wav_bytes
from moma.corpora.synthetic.emotions import SYNTH_EMOTIONS
from moma.corpora.synthetic.speakers import SpeakerVoice, make_speaker_voices
from moma.corpora.synthetic.utterance import synthesise_utterance

log = logging.getLogger(__name__)

HOURS_POOL_SECONDS = 4.0  # length of each pool utterance that hours corpora are cut from


def _hours_durations(total_s: float, rng: np.random.Generator, median_s: float, sigma: float,
                     min_s: float, max_s: float) -> list[float]:
    """Utterance durations (seconds) summing to ``total_s`` within 0.1 s.

    Log-normal around ``median_s`` (EmoDB's 535 utterances: median 2.6 s,
    standard deviation of log duration 0.34, 1.2-9.0 s), clipped to [min_s, max_s]; the last one is cut to what remains,
    so only it may be shorter than ``min_s`` (never under 0.1 s).
    """
    durations: list[float] = []
    remaining = total_s
    while remaining >= 0.1:
        d = float(np.clip(median_s * math.exp(rng.normal(0.0, sigma)), min_s, max_s))
        d = round(min(d, remaining), 3)
        durations.append(d)
        remaining -= d
    return durations


def make_synthetic_hours(out_dir: str | Path, hours: float, *, seed: int = 0, sample_rate: int = 16000,
                         num_speakers: int = 8, pool_per_emotion: int = 2, median_duration: float = 2.6,
                         sigma: float = 0.35, min_duration: float = 1.0,
                         max_duration: float = 9.0) -> list[Utterance]:
    """Write a corpus of ``hours`` hours of speech-like audio quickly; returns its utterances.

    Why not :func:`make_synthetic_corpus`: the source-filter synthesiser runs
    at about 150x real time on one core, so 8 hours would take minutes, while
    benchmarks of feature extraction and training only need realistic
    signals and a realistic length distribution, not new content per file.
    So a small pool of synthesised utterances (``pool_per_emotion`` per
    speaker and emotion, :data:`HOURS_POOL_SECONDS` each) is cut into
    utterances whose durations follow an EmoDB-like log-normal distribution
    (median ``median_duration`` s, clipped to [min_duration, max_duration]),
    each starting at a random offset in its (cyclically repeated) pool
    utterance, with a random gain of +-3 dB. Generation is then bound by
    writing the files (about 115 MB per hour at 16 kHz, 16-bit).

    The total duration is ``hours`` within 0.1 s; the file layout
    (``wav/spkNN_<emotion>_NNNNNN.wav`` + ``speakers.json``) is the one
    :func:`load_synthetic` reads. The output is a pure function of the
    arguments (same seed, same bytes).
    """
    if hours <= 0:
        raise ValueError(f"hours must be positive, not {hours}")
    if pool_per_emotion < 1:
        raise ValueError(f"pool_per_emotion must be >= 1, not {pool_per_emotion}")
    start = time.perf_counter()
    root = Path(out_dir).expanduser().resolve()
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    voices = make_speaker_voices(num_speakers, seed)
    pool: list[tuple[SpeakerVoice, str, np.ndarray]] = []
    for s, voice in enumerate(voices):
        for e, emotion in enumerate(SYNTH_EMOTIONS):
            for k in range(pool_per_emotion):
                rng = np.random.default_rng([seed, 3, s, e, k])
                audio = synthesise_utterance(voice, emotion, sentence_seed(seed, 1000 + k), rng, sample_rate,
                                             min_duration=HOURS_POOL_SECONDS, max_duration=HOURS_POOL_SECONDS)
                pool.append((voice, emotion, audio))
    rng = np.random.default_rng([seed, 4])
    durations = _hours_durations(hours * 3600.0, rng, median_duration, sigma, min_duration, max_duration)
    width = max(6, len(str(len(durations))))
    utterances: list[Utterance] = []
    for i, duration in enumerate(durations):
        voice, emotion, source = pool[int(rng.integers(len(pool)))]
        n = max(1, int(round(duration * sample_rate)))
        offset = int(rng.integers(source.size))
        reps = (offset + n) // source.size + 1
        audio = np.tile(source, reps)[offset:offset + n] * np.float32(10 ** (rng.uniform(-3.0, 3.0) / 20.0))
        data = wav_bytes(audio, sample_rate)
        utt_id = f"{voice.speaker}_{emotion}_{i + 1:0{width}d}"
        path = wav_dir / f"{utt_id}.wav"
        path.write_bytes(data)
        utterances.append(Utterance(
            id=utt_id, path=str(path), speaker=voice.speaker, label=emotion, gender=voice.gender,
            duration=n / sample_rate, transcript="", corpus=CORPUS_NAME, raw_label=emotion,
            sha1=hashlib.sha1(data).hexdigest()))
    finish_corpus(root, wav_dir, utterances, voices,
                   {"generator": "make_synthetic_hours", "seed": seed, "sample_rate": sample_rate, "hours": hours,
                    "pool_per_emotion": pool_per_emotion, "median_duration": median_duration, "sigma": sigma,
                    "min_duration": min_duration, "max_duration": max_duration})
    log.info("synthetic: %.2f h in %d utterances in %.1f s -> %s", sum(u.duration for u in utterances) / 3600.0,
             len(utterances), time.perf_counter() - start, root)
    return utterances
