"""A deterministic, download-free emotional speech corpus for ``moma demo``.

Speech-like audio comes from a small source-filter (Klatt-style) synthesiser:

* **Source.** A Rosenberg glottal-flow pulse train (Rosenberg 1971), one pulse
  per period with cycle-to-cycle jitter and shimmer, differentiated for lip
  radiation, plus pulsed aspiration noise (breathiness).
* **Filter.** Cascaded two-pole formant resonators F1-F4 (Klatt 1980) with
  per-vowel targets for /a e i o u/ (Peterson & Barney 1952), scaled by the
  speaker's vocal-tract length factor, interpolated between syllables
  (coarticulation), reduced towards schwa when unstressed or fast.
* **Syllables.** CV syllables: fricatives (/s ʃ f/), plosives (/p t k/:
  closure, burst, aspiration) and nasals (/m n/) before each vowel, words of
  1-3 syllables with lexical stress, phrase breaks with pauses.
* **Prosody.** An f0 contour with declination, a pitch accent on every
  stressed syllable, a phrase-final fall (or rise) and slow wander.

Emotion changes the acoustic correlates that the vocal-affect literature
reports consistently (Murray & Arnott 1993; Banse & Scherer 1996;
Scherer 2003; Juslin & Laukka 2003; Gobl & Ní Chasaide 2003):

=========  ========  ==========  ======  ========  ===========================
emotion    f0 level  f0 range    tempo   energy    voice quality
=========  ========  ==========  ======  ========  ===========================
angry      high      wide        fast    loud      pressed: short open phase,
                                                   flat tilt, raised F1, fast
                                                   attacks, more jitter
happy      high      widest      fast    raised    slightly flatter tilt,
                                                   smile-raised formants,
                                                   more final rises
neutral    --        --          --      --        modal
sad        low       narrow      slow    soft      breathy: long open phase,
                                                   steep tilt, aspiration,
                                                   long pauses, more jitter
=========  ========  ==========  ======  ========  ===========================

The effects are moderate and every speaker expresses them to a different
degree (``SpeakerVoice.expressiveness``), and every utterance varies at
random around its speaker-and-emotion mean, so emotion classes overlap across
speakers (a high-pitched sad female speaker is higher than a low-pitched angry
male one): a model has to learn relative, multi-cue patterns, and
leave-speakers-out evaluation is harder than within-speaker evaluation, as on
real corpora.

Filtering is vectorised with numpy: each signal is cut into overlapping
Hann-windowed frames (32 ms, 8 ms hop), each frame is multiplied in the
frequency domain by the exact frequency response of the resonator cascade at
that frame's formant values (zero-padded FFT, so this is a linear convolution
with the impulse response truncated after at least 32 ms, by which time the
narrowest resonance, 60 Hz wide, has decayed by more than 50 dB), and the frames are overlap-added.
No per-sample Python loop runs; the glottal-epoch loop runs once per pitch
period. The default demo corpus (384 utterances) synthesises in a few seconds.

Layout written by :func:`make_synthetic_corpus` and read by :func:`load_synthetic`::

    root/speakers.json             speaker voices (gender, f0, ...) and generation settings
    root/wav/spkNN_<emotion>_NNN.wav   16-bit mono PCM
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf

from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

__all__ = [
    "SYNTH_EMOTIONS",
    "SpeakerVoice",
    "make_speaker_voices",
    "synthesise_utterance",
    "make_synthetic_corpus",
    "make_synthetic_hours",
    "load_synthetic",
]

SYNTH_EMOTIONS: tuple[str, ...] = ("angry", "happy", "neutral", "sad")

CORPUS_NAME = "synthetic"
SPEAKERS_FILE = "speakers.json"
_FORMAT_VERSION = 1
_NAME = re.compile(r"^(?P<speaker>spk\d+)_(?P<emotion>[a-z]+)_(?P<index>\d+)$")

# ---------------------------------------------------------------------------
# Speakers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerVoice:
    """The fixed vocal properties of one synthetic speaker (its neutral voice)."""

    speaker: str  # speaker id, e.g. "spk01"
    gender: str  # "F" | "M"
    f0: float  # Hz, habitual pitch in neutral speech
    formant_scale: float  # multiplies all formant frequencies (inverse vocal-tract length)
    rate: float  # speaking-rate factor; > 1 speaks faster (shorter syllables)
    breathiness: float  # aspiration-noise amplitude relative to the voiced source
    pitch_range: float  # semitones, height of a neutral pitch accent
    jitter: float  # fraction, cycle-to-cycle period perturbation (std) in neutral speech
    shimmer: float  # fraction, cycle-to-cycle amplitude perturbation (std)
    expressiveness: float  # scales how far this speaker's emotions depart from neutral
    level_db: float  # dB, recording-level offset (microphone distance and gain)

    @classmethod
    def random(cls, speaker: str, gender: str, rng: np.random.Generator) -> SpeakerVoice:
        """Draw a plausible voice: female voices have higher f0 and shorter vocal tracts.

        Ranges follow adult speech norms: f0 about 180-240 Hz (F) and 95-140 Hz
        (M), formant frequencies about 15-20 % higher in female voices
        (Peterson & Barney 1952), and female voices slightly breathier
        (Klatt & Klatt 1990).
        """
        if gender not in ("F", "M"):
            raise ValueError(f"gender must be 'F' or 'M', not {gender!r}")
        female = gender == "F"
        return cls(
            speaker=speaker,
            gender=gender,
            f0=float(rng.uniform(180.0, 240.0) if female else rng.uniform(95.0, 140.0)),
            formant_scale=float(rng.uniform(1.12, 1.22) if female else rng.uniform(0.94, 1.04)),
            rate=float(rng.uniform(0.88, 1.12)),
            breathiness=float(rng.uniform(0.05, 0.12) if female else rng.uniform(0.03, 0.09)),
            pitch_range=float(rng.uniform(2.5, 5.0)),
            jitter=float(rng.uniform(0.004, 0.010)),
            shimmer=float(rng.uniform(0.02, 0.05)),
            expressiveness=float(rng.uniform(0.65, 1.2)),
            level_db=float(rng.uniform(-3.0, 3.0)),
        )


def make_speaker_voices(num_speakers: int, seed: int) -> list[SpeakerVoice]:
    """Voices ``spk01..spkNN``, genders alternating F, M, F, M, ...

    Alternation puts both genders in every half (and every contiguous block
    of two or more speakers), so any leave-speakers-out split sees both.
    Each voice has its own seeded generator, so adding speakers does not
    change the existing ones.
    """
    if num_speakers < 1:
        raise ValueError(f"num_speakers must be >= 1, not {num_speakers}")
    width = max(2, len(str(num_speakers)))
    return [
        SpeakerVoice.random(f"spk{i + 1:0{width}d}", "F" if i % 2 == 0 else "M",
                            np.random.default_rng([seed, 0, i]))
        for i in range(num_speakers)
    ]


# ---------------------------------------------------------------------------
# Emotions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _EmotionProfile:
    """How one emotion departs from the speaker's neutral voice (neutral = identity)."""

    f0: float  # multiplies the speaker's f0 (angry/happy raised, sad lowered)
    f0_range: float  # multiplies pitch-accent height and declination
    rate: float  # multiplies speaking rate (syllables per second)
    level_db: float  # dB, vocal effort / loudness
    tilt_db_oct: float  # dB per octave above 500 Hz: + flatter (pressed), - steeper (breathy)
    open_quotient: float  # Rosenberg open quotient: short open phase = pressed, long = breathy
    speed_quotient: float  # Rosenberg opening/closing time ratio: high = abrupt closure
    breath: float  # multiplies aspiration noise
    jitter: float  # multiplies the speaker's jitter
    formant: float  # multiplies all formants (smiling shortens the vocal tract; Tartter 1980)
    f1: float  # multiplies F1 on top (wider jaw opening with high vocal effort)
    attack_ms: float  # ms, vowel onset ramp (hard onsets in anger)
    pause: float  # multiplies phrase-break pause length
    final_rise: float  # probability that the utterance ends in a rise instead of a fall


_PROFILES: dict[str, _EmotionProfile] = {
    "angry": _EmotionProfile(f0=1.22, f0_range=1.4, rate=1.10, level_db=6.0, tilt_db_oct=2.5,
                             open_quotient=0.45, speed_quotient=3.0, breath=0.5, jitter=1.5,
                             formant=1.0, f1=1.08, attack_ms=8.0, pause=0.8, final_rise=0.05),
    "happy": _EmotionProfile(f0=1.18, f0_range=1.6, rate=1.08, level_db=3.0, tilt_db_oct=1.0,
                             open_quotient=0.55, speed_quotient=2.4, breath=0.9, jitter=1.1,
                             formant=1.035, f1=1.03, attack_ms=15.0, pause=0.9, final_rise=0.35),
    "neutral": _EmotionProfile(f0=1.0, f0_range=1.0, rate=1.0, level_db=0.0, tilt_db_oct=0.0,
                               open_quotient=0.60, speed_quotient=2.0, breath=1.0, jitter=1.0,
                               formant=1.0, f1=1.0, attack_ms=20.0, pause=1.0, final_rise=0.10),
    "sad": _EmotionProfile(f0=0.92, f0_range=0.55, rate=0.82, level_db=-5.0, tilt_db_oct=-3.0,
                           open_quotient=0.72, speed_quotient=1.5, breath=2.2, jitter=1.4,
                           formant=0.99, f1=0.97, attack_ms=35.0, pause=1.5, final_rise=0.05),
}  # fmt: skip


def _scaled(factor: float, amount: float) -> float:
    """A multiplicative effect applied ``amount`` times as strongly (in the log domain)."""
    return float(factor**amount)


# ---------------------------------------------------------------------------
# Phonetics
# ---------------------------------------------------------------------------

# F1-F4 targets (Hz) of an average adult male voice, Peterson & Barney (1952) style.
_VOWELS: dict[str, tuple[float, float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0, 3400.0),
    "e": (530.0, 1840.0, 2480.0, 3500.0),
    "i": (270.0, 2290.0, 3010.0, 3700.0),
    "o": (570.0, 840.0, 2410.0, 3400.0),
    "u": (300.0, 870.0, 2240.0, 3400.0),
}
_SCHWA = np.array([500.0, 1500.0, 2500.0, 3500.0])
_NASALS: dict[str, tuple[float, float, float, float]] = {
    "m": (280.0, 1100.0, 2300.0, 3300.0),
    "n": (280.0, 1600.0, 2500.0, 3400.0),
}
_BANDWIDTHS = np.array([60.0, 90.0, 150.0, 220.0])  # Hz, F1-F4
# Fixed higher formants (Hz at formant scale 1, bandwidth Hz), used where they
# fit below Nyquist: without them a cascade falls at 48 dB/octave above F4 and
# 16 kHz speech would have no energy between 5 and 8 kHz.
_HIGHER_FORMANTS = ((4500.0, 300.0), (5500.0, 400.0))
# dB/octave above 500 Hz added to every voice: the cascade still lacks the
# poles above F6 (Klatt's higher-pole correction) and is duller than the
# long-term spectrum of real speech.
_BASE_TILT_DB_OCT = 2.0
_NEUTRAL_LEVEL_DBFS = -28.0  # RMS of vowels in neutral speech; angry peaks stay below full scale
_NOISE_FLOOR_DB = -72.0  # dBFS, white recording noise, so pauses are not digital silence

# Noise spectra of the obstruents as (centre Hz, width Hz, relative amplitude) bumps
# over a flat floor: /s/ peaks high, /ʃ/ lower, /f/ is flat and weak; plosive bursts
# follow their place of articulation (labial low, velar compact mid, alveolar high).
_NOISE_SHAPES: dict[str, tuple[float, tuple[tuple[float, float, float], ...]]] = {
    "s": (0.02, ((6000.0, 1500.0, 1.0),)),
    "sh": (0.02, ((3000.0, 700.0, 1.0), (4600.0, 1000.0, 0.5))),
    "f": (0.30, ((7000.0, 3000.0, 0.5),)),
    "t": (0.10, ((4000.0, 1500.0, 1.0),)),
    "k": (0.05, ((1900.0, 500.0, 1.0), (3500.0, 1000.0, 0.4))),
    "p": (0.30, ((900.0, 800.0, 1.0),)),
}
_NOISE_KINDS = tuple(_NOISE_SHAPES)
_FRICATIVES = {"s": (0.100, -6.0), "sh": (0.100, -6.0), "f": (0.090, -16.0)}  # s, dB re vowel
_PLOSIVES = ("p", "t", "k")
_ONSETS = ("", "s", "sh", "f", "t", "k", "p", "m", "n")
_ONSET_P = np.array([0.16, 0.13, 0.07, 0.08, 0.14, 0.12, 0.08, 0.12, 0.10])


@dataclass(frozen=True)
class _Syllable:
    onset: str  # consonant from _ONSETS ("" = vowel onset)
    vowel: str  # key of _VOWELS
    stressed: bool
    phrase_final: bool  # a pause follows


def _text_plan(text_seed: int, n_words: int = 100) -> tuple[list[_Syllable], float]:
    """The "sentence" of a text seed: a syllable string and its nominal length in [0.1, 0.9].

    The same text seed gives the same sentence for every speaker and emotion,
    like the fixed sentences of acted corpora (EmoDB), so lexical content
    carries no emotion information. Words have 1-3 syllables with one stressed
    (mostly the first); about one word in five ends a phrase.
    """
    rng = np.random.default_rng([int(text_seed), 7])
    word_len = rng.choice(np.array([1, 2, 3]), size=n_words, p=[0.35, 0.4, 0.25])
    second_stress = rng.random(n_words) >= 0.7
    phrase_end = rng.random(n_words) < 0.22
    n_syl = int(word_len.sum())
    onsets = rng.choice(len(_ONSETS), size=n_syl, p=_ONSET_P)
    vowels = rng.integers(len(_VOWELS), size=n_syl)
    names = tuple(_VOWELS)
    syllables: list[_Syllable] = []
    for w in range(n_words):
        n_word = int(word_len[w])
        stress = 1 if n_word > 1 and second_stress[w] else 0
        for j in range(n_word):
            i = len(syllables)
            syllables.append(_Syllable(onset=_ONSETS[int(onsets[i])], vowel=names[int(vowels[i])],
                                       stressed=j == stress,
                                       phrase_final=bool(phrase_end[w]) and j == n_word - 1))
    return syllables, float(rng.uniform(0.1, 0.9))


# ---------------------------------------------------------------------------
# Signal processing
# ---------------------------------------------------------------------------

_WIN = 512  # samples at 16 kHz (32 ms); scaled with the sample rate
_HOP_DIV = 4  # hop = window / 4: periodic Hann overlap-adds to exactly 2


@dataclass(frozen=True)
class _Framing:
    win: int
    hop: int
    nfft: int
    n: int  # signal length
    n_frames: int

    @classmethod
    def for_signal(cls, n: int, sample_rate: int) -> _Framing:
        win = max(64, int(2 ** round(math.log2(_WIN * sample_rate / 16000))))
        hop = win // _HOP_DIV
        n_frames = 1 + (n + win // 2 + hop) // hop
        return cls(win=win, hop=hop, nfft=2 * win, n=n, n_frames=n_frames)

    @property
    def centres(self) -> np.ndarray:
        """Frame centres in samples of the unpadded signal."""
        return np.arange(self.n_frames) * self.hop

    def analyse(self, x: np.ndarray) -> np.ndarray:
        """Complex spectra (frames x bins) of Hann-windowed frames, zero-padded to ``nfft``."""
        half = self.win // 2
        total = (self.n_frames - 1) * self.hop + self.win
        padded = np.zeros(total)
        padded[half:half + self.n] = x
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.win)[::self.hop][: self.n_frames]
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(self.win) / self.win)
        return np.fft.rfft(frames * window, self.nfft, axis=1)

    def synthesise(self, spectra: np.ndarray) -> np.ndarray:
        """Overlap-add filtered frames back into a signal of length ``n``."""
        frames = np.fft.irfft(spectra, self.nfft, axis=1)
        out = np.zeros((self.n_frames - 1) * self.hop + self.nfft)
        span = self.n_frames * self.hop
        for j in range(self.nfft // self.hop):  # 8 vectorised adds, one per hop-sized slice
            out[j * self.hop:j * self.hop + span] += frames[:, j * self.hop:(j + 1) * self.hop].reshape(-1)
        half = self.win // 2
        return out[half:half + self.n] / 2.0  # periodic Hann at 75 % overlap sums to 2


def _resonator_cascade(freqs: np.ndarray, bws: np.ndarray, omega: np.ndarray, sample_rate: int) -> np.ndarray:
    """Frequency response (frames x bins) of cascaded 2-pole resonators with unit DC gain.

    ``freqs`` and ``bws`` are (frames x formants) in Hz. Each resonator is
    Klatt's ``A / (1 - B z^-1 - C z^-2)`` with ``C = -exp(-2 pi BW T)``,
    ``B = 2 exp(-pi BW T) cos(2 pi F T)``, ``A = 1 - B - C``. The denominators
    are multiplied first so only one complex division runs.
    """
    z1 = np.exp(-1j * omega)[None, :]
    z2 = z1 * z1
    r = np.exp(-np.pi * bws / sample_rate)
    b = 2.0 * r * np.cos(2.0 * np.pi * freqs / sample_rate)
    c = -r * r
    gain = np.prod(1.0 - b - c, axis=1)[:, None]
    denominator = 1.0 - b[:, :1] * z1 - c[:, :1] * z2
    for k in range(1, freqs.shape[1]):
        denominator *= 1.0 - b[:, k:k + 1] * z1 - c[:, k:k + 1] * z2
    return gain / denominator


def _noise_shape_table(freqs_hz: np.ndarray, scale: float, nyquist: float) -> np.ndarray:
    """Magnitude spectra (kinds x bins) of the obstruent noises, unit mean power each."""
    table = np.empty((len(_NOISE_KINDS), freqs_hz.size))
    for i, kind in enumerate(_NOISE_KINDS):
        floor, bumps = _NOISE_SHAPES[kind]
        mag = np.full(freqs_hz.size, floor)
        for centre, width, amp in bumps:
            centre = min(centre * scale, 0.85 * nyquist)
            mag += amp * np.exp(-0.5 * ((freqs_hz - centre) / width) ** 2)
        mag *= np.clip(freqs_hz / 300.0, 0.0, 1.0)  # no obstruent energy at DC
        table[i] = mag / np.sqrt(np.mean(mag**2))
    return table


def _raised_cosine(n: int, attack: int, release: int) -> np.ndarray:
    """A gate of ``n`` samples with raised-cosine onset and offset ramps."""
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release > 0:
        env[n - release:] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return env


def _glottal_source(f0: np.ndarray, open_quotient: float, speed_quotient: float, jitter: float,
                    shimmer: float, rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg-pulse flow derivative (unit RMS) and a mask of the glottis-open phase.

    Pulse epochs follow the per-sample f0 contour, each period perturbed by
    Gaussian jitter and each pulse's amplitude by shimmer. The Rosenberg (1971)
    flow rises as a half cosine for ``Tp`` and falls as a quarter cosine for
    ``Tn`` (``Tp + Tn`` = open quotient, ``Tp / Tn`` = speed quotient); a short,
    abrupt closing phase gives strong high harmonics (pressed voice), a long
    smooth one a steep spectral tilt (breathy voice). The first difference
    models lip radiation.
    """
    n = f0.size
    expected = int(np.sum(f0) / sample_rate * 1.25) + 16
    z_jitter = np.clip(rng.standard_normal(expected), -3.0, 3.0)
    z_shimmer = np.clip(rng.standard_normal(expected), -3.0, 3.0)
    epochs: list[float] = []
    periods: list[float] = []
    t = 0.0
    while t < n:  # one iteration per pitch period, not per sample
        i = len(epochs)
        period = sample_rate / f0[int(t)] * (1.0 + jitter * z_jitter[i % expected])
        epochs.append(t)
        periods.append(period)
        t += period
    ep = np.asarray(epochs)
    per = np.asarray(periods)
    amp = 1.0 + shimmer * z_shimmer[np.arange(ep.size) % expected]
    idx = np.arange(n, dtype=np.float64)
    k = np.searchsorted(ep, idx, side="right") - 1
    phase = (idx - ep[k]) / per[k]
    tp = open_quotient * speed_quotient / (1.0 + speed_quotient)
    tn = open_quotient / (1.0 + speed_quotient)
    flow = np.where(phase < tp, 0.5 - 0.5 * np.cos(np.pi * phase / tp),
                    np.where(phase < tp + tn, np.cos(0.5 * np.pi * (phase - tp) / tn), 0.0))
    flow *= amp[k]
    deriv = np.diff(flow, prepend=flow[0])
    deriv /= np.sqrt(np.mean(deriv**2)) + 1e-12
    return deriv, phase < open_quotient


# ---------------------------------------------------------------------------
# One utterance
# ---------------------------------------------------------------------------


@dataclass
class _Segments:
    """Per-sample excitation envelopes and formant knots of one utterance's timing plan."""

    voicing: np.ndarray  # glottal-source amplitude
    aspiration: np.ndarray  # extra aspiration (plosive release), through the vocal tract
    noise: np.ndarray  # obstruent noise amplitude (own spectrum)
    noise_centres: list[float]  # sample index of each obstruent segment's centre
    noise_kinds: list[int]  # index into _NOISE_KINDS per obstruent segment
    knot_times: list[float]  # samples
    knot_formants: list[np.ndarray]  # F1-F4 (unscaled), one per knot
    accents: list[tuple[float, float]]  # (centre sample, width samples) per stressed vowel


def _lay_out(plan: list[_Syllable], n: int, sample_rate: int, rate: float, pause_factor: float,
             attack_ms: float, rng: np.random.Generator) -> _Segments:
    """Place syllables in time so they fill ``n`` samples, and draw their envelopes."""
    sr = float(sample_rate)
    lead = min(rng.uniform(0.05, 0.15) * sr, 0.2 * n)  # capped so very short utterances keep speech
    tail = min(rng.uniform(0.05, 0.12) * sr, 0.15 * n)
    budget = n - lead - tail

    # Durations in seconds at rate 1 (vowels: Klatt 1976 ranges; stressed and
    # phrase-final vowels lengthen), each jittered, then divided by the rate.
    events: list[tuple[str, float, _Syllable | None]] = []  # (kind, samples, syllable)
    used = 0.0
    for syl in itertools.cycle(plan):  # a long max_duration repeats the sentence
        parts: list[tuple[str, float, _Syllable | None]] = []
        if syl.onset in _FRICATIVES:
            parts.append(("fric", _FRICATIVES[syl.onset][0], syl))
        elif syl.onset in _PLOSIVES:
            parts += [("closure", 0.055, syl), ("burst", 0.012, syl), ("asp", 0.030, syl)]
        elif syl.onset in _NASALS:
            parts.append(("nasal", 0.065, syl))
        vowel_s = (0.170 if syl.stressed else 0.110) * (1.4 if syl.phrase_final else 1.0)
        parts.append(("vowel", vowel_s, syl))
        if syl.phrase_final:
            parts.append(("pause", rng.uniform(0.18, 0.35) * pause_factor, None))
        parts = [(kind, s * math.exp(rng.normal(0.0, 0.15)) / rate * sr, syl_) for kind, s, syl_ in parts]
        length = sum(p[1] for p in parts)
        if used > 0 and used + length > budget:
            # Keep this syllable only if squeezing it in distorts the tempo less
            # than stretching what we have to fill the budget.
            if (used + length) / budget - 1.0 < budget / used - 1.0:
                events += parts
                used += length
            break
        events += parts
        used += length
    while events and events[-1][0] == "pause":  # the utterance ends in its tail silence
        used -= events.pop()[1]
    stretch = budget / used

    voicing = np.zeros(n)
    aspiration = np.zeros(n)
    noise = np.zeros(n)
    seg = _Segments(voicing, aspiration, noise, [], [], [], [], [])
    t = lead
    ms = sr / 1000.0
    for kind, length, syl in events:
        length *= stretch
        a, b = int(round(t)), min(n, int(round(t + length)))
        t += length
        if b <= a or syl is None:
            continue
        span = b - a
        if kind == "fric":
            seg.noise[a:b] += 10 ** (_FRICATIVES[syl.onset][1] / 20) * _raised_cosine(span, int(20 * ms), int(15 * ms))
            seg.noise_centres.append(0.5 * (a + b))
            seg.noise_kinds.append(_NOISE_KINDS.index(syl.onset))
        elif kind == "burst":
            seg.noise[a:b] += 10 ** (-10.0 / 20) * _raised_cosine(span, int(1 * ms), int(4 * ms))
            seg.noise_centres.append(0.5 * (a + b))
            seg.noise_kinds.append(_NOISE_KINDS.index(syl.onset))
        elif kind == "asp":
            seg.aspiration[a:b] += 10 ** (-14.0 / 20) * _raised_cosine(span, int(3 * ms), int(10 * ms))
        elif kind == "nasal":
            seg.voicing[a:b] += 10 ** (-9.0 / 20) * _raised_cosine(span, int(10 * ms), int(5 * ms))
            targets = np.array(_NASALS[syl.onset])
            seg.knot_times += [a + 0.3 * span, a + 0.7 * span]
            seg.knot_formants += [targets, targets]
        elif kind == "vowel":
            gain = 10 ** ((2.5 if syl.stressed else 0.0) / 20)
            seg.voicing[a:b] += gain * _raised_cosine(span, int(attack_ms * ms), int(40 * ms))
            # Unstressed and fast vowels undershoot their targets towards schwa
            # (Lindblom 1963); every token also varies a little.
            reduction = (0.0 if syl.stressed else 0.3) + float(np.clip(0.4 * (rate - 1.0), 0.0, 0.2))
            targets = np.array(_VOWELS[syl.vowel]) * np.exp(rng.normal(0.0, 0.03, 4))
            targets = (1.0 - reduction) * targets + reduction * _SCHWA
            seg.knot_times += [a + 0.25 * span, a + 0.75 * span]
            seg.knot_formants += [targets, targets]
            if syl.stressed:
                seg.accents.append((0.5 * (a + b), 0.35 * span + 0.03 * sr))
    if not seg.knot_times:  # degenerate (tiny duration): one schwa so the filter is defined
        seg.knot_times, seg.knot_formants = [n / 2.0], [_SCHWA.copy()]
    return seg


def _f0_contour(n: int, sample_rate: int, f0_mean: float, range_st: float, seg: _Segments,
                final_rise: float, rng: np.random.Generator) -> np.ndarray:
    """Per-sample f0 (Hz): declination + accents + phrase-final fall/rise + slow wander."""
    step = max(1, sample_rate // 200)  # 5 ms control rate
    t = np.arange(0, n + step, step, dtype=np.float64)
    rel = t / max(n, 1)
    st = (0.5 - rel) * (1.5 + 0.4 * range_st) * rng.uniform(0.7, 1.3)  # declination (Cohen et al. 1982)
    for centre, width in seg.accents:
        height = range_st * rng.uniform(0.6, 1.2)
        peak = centre + rng.normal(0.0, 0.15) * width  # peak alignment varies
        st += height * np.exp(-0.5 * ((t - peak) / width) ** 2)
    voiced_idx = np.flatnonzero(seg.voicing > 0.05)
    if voiced_idx.size:
        end = float(voiced_idx[-1])
        span = 0.25 * sample_rate
        ramp = np.clip((t - (end - span)) / span, 0.0, 1.0) ** 1.5
        direction = 1.0 if rng.random() < final_rise else -1.0
        st += direction * (0.5 * range_st + 1.0) * ramp
    # Small irregular fluctuation (~0.2 st): a random walk minus its 0.2 s moving
    # average, so it stays bounded instead of drifting.
    wander = np.cumsum(rng.normal(0.0, 0.08, t.size))
    width = min(41, t.size)
    wander -= np.convolve(wander, np.ones(width) / width, mode="same")
    st += wander
    hz = f0_mean * 2.0 ** ((st - np.mean(st)) / 12.0)
    return np.clip(np.interp(np.arange(n), t, hz), 50.0, 600.0)


def synthesise_utterance(voice: SpeakerVoice, emotion: str, text_seed: int, rng: np.random.Generator,
                         sample_rate: int = 16000, *, min_duration: float = 1.0,
                         max_duration: float = 3.0) -> np.ndarray:
    """One utterance of ``voice`` saying sentence ``text_seed`` with ``emotion``.

    Returns float32 mono in [-1, 1] whose length lies in
    ``[min_duration, max_duration]`` seconds: the sentence's nominal length,
    lengthened by slow speech (speaker rate, sad) and shortened by fast speech
    (angry, happy). All per-utterance variation comes from ``rng``; the same
    generator state gives the same samples.
    """
    if emotion not in _PROFILES:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {SYNTH_EMOTIONS}")
    if not 0.0 < min_duration <= max_duration:
        raise ValueError(f"need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be >= 8000 Hz, not {sample_rate}")
    prof = _PROFILES[emotion]
    e = voice.expressiveness
    sr = sample_rate

    # Per-utterance realisation: the emotion's effect scaled by the speaker's
    # expressiveness, plus random variation of every cue.
    f0_mean = voice.f0 * _scaled(prof.f0, e) * math.exp(rng.normal(0.0, 0.05))
    range_st = voice.pitch_range * _scaled(prof.f0_range, e) * math.exp(rng.normal(0.0, 0.2))
    rate = voice.rate * _scaled(prof.rate, e) * math.exp(rng.normal(0.0, 0.06))
    level_db = _NEUTRAL_LEVEL_DBFS + voice.level_db + e * prof.level_db + rng.normal(0.0, 1.5)
    tilt = _BASE_TILT_DB_OCT + e * prof.tilt_db_oct + rng.normal(0.0, 1.0)
    modal = _PROFILES["neutral"]
    oq = modal.open_quotient + e * (prof.open_quotient - modal.open_quotient) + rng.normal(0.0, 0.03)
    oq = float(np.clip(oq, 0.35, 0.85))
    sq = modal.speed_quotient * _scaled(prof.speed_quotient / modal.speed_quotient, e)
    sq = float(np.clip(sq * math.exp(rng.normal(0.0, 0.1)), 1.1, 4.0))
    breath = voice.breathiness * _scaled(prof.breath, e) * math.exp(rng.normal(0.0, 0.25))
    jitter = voice.jitter * _scaled(prof.jitter, e) * math.exp(rng.normal(0.0, 0.2))
    shimmer = voice.shimmer * math.exp(rng.normal(0.0, 0.2))
    fscale = voice.formant_scale * _scaled(prof.formant, e) * math.exp(rng.normal(0.0, 0.01))
    f1_factor = _scaled(prof.f1, e)
    attack_ms = prof.attack_ms * math.exp(rng.normal(0.0, 0.2))
    pause = _scaled(prof.pause, e)

    plan, nominal = _text_plan(text_seed)
    u = float(np.clip(nominal + rng.normal(0.0, 0.08), 0.02, 0.98)) ** rate  # slow speech -> longer
    n = int(round((min_duration + u * (max_duration - min_duration)) * sr))
    seg = _lay_out(plan, n, sr, rate, pause, attack_ms, rng)

    # Source: glottal pulses + pulsed aspiration (turbulence while the glottis is open).
    f0 = _f0_contour(n, sr, f0_mean, range_st, seg, prof.final_rise, rng)
    pulses, open_phase = _glottal_source(f0, oq, sq, jitter, shimmer, rng, sr)
    asp_noise = rng.standard_normal(n)
    aspiration = asp_noise * (breath * (0.3 + 0.7 * open_phase) * seg.voicing + seg.aspiration)
    energy_decl = 10 ** (-3.0 * np.arange(n) / max(n, 1) / 20.0)  # loudness falls over an utterance
    pulses = pulses * seg.voicing * energy_decl

    # Vocal tract: formant trajectories per frame, the resonator cascade, and the
    # voice-quality tilt on the glottal pulses only (aspiration keeps its flat source).
    framing = _Framing.for_signal(n, sr)
    freqs_hz = np.fft.rfftfreq(framing.nfft, 1.0 / sr)
    omega = 2.0 * np.pi * freqs_hz / sr
    order = np.argsort(seg.knot_times, kind="stable")
    knot_t = np.asarray(seg.knot_times)[order]
    knot_f = np.asarray(seg.knot_formants)[order] * fscale
    knot_f[:, 0] *= f1_factor
    formants = np.stack([np.interp(framing.centres, knot_t, knot_f[:, k]) for k in range(4)], axis=1)
    formants = np.minimum(formants, 0.45 * sr)
    bandwidths = list(_BANDWIDTHS * np.array([1.0 + 2.0 * breath, 1.0, 1.0, 1.0]))  # breathy: glottal losses widen B1
    higher = [(f * fscale, bw) for f, bw in _HIGHER_FORMANTS if f * fscale < 0.45 * sr]
    if higher:
        formants = np.concatenate([formants, np.tile([f for f, _ in higher], (formants.shape[0], 1))], axis=1)
        bandwidths += [bw for _, bw in higher]
    bws = np.broadcast_to(np.asarray(bandwidths), formants.shape)
    tract = _resonator_cascade(formants, bws, omega, sr)
    tilt_gain = 10 ** (tilt / 20.0 * np.log2(np.maximum(freqs_hz, 500.0) / 500.0))
    voiced = framing.synthesise(framing.analyse(pulses) * (tract * tilt_gain) + framing.analyse(aspiration) * tract)

    active = seg.voicing > 0.3
    ref = math.sqrt(float(np.mean(voiced[active] ** 2))) if active.any() else 1.0
    voiced /= ref + 1e-12
    out = voiced
    if seg.noise_centres:
        table = _noise_shape_table(freqs_hz, math.sqrt(fscale), sr / 2.0)
        centres = np.asarray(seg.noise_centres)
        kinds = np.asarray(seg.noise_kinds)
        # Each frame takes the spectrum of the nearest obstruent.
        nearest = np.abs(framing.centres[:, None] - centres[None, :]).argmin(axis=1)
        shaped = framing.analyse(rng.standard_normal(n) * seg.noise) * table[kinds[nearest]]
        out = out + framing.synthesise(shaped)

    out *= 10 ** (level_db / 20.0)
    out += 10 ** (_NOISE_FLOOR_DB / 20.0) * rng.standard_normal(n)  # recording noise floor
    # Soft limiter: loud (angry) peaks saturate smoothly below full scale.
    mag = np.abs(out)
    knee = 0.9
    out = np.where(mag > knee, np.sign(out) * (knee + (1.0 - knee) * np.tanh((mag - knee) / (1.0 - knee))), out)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes; quantised here so the bytes depend only on the samples."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _text_seed(seed: int, index: int) -> int:
    return int(np.random.default_rng([seed, 2, index]).integers(2**31))


def _finish_corpus(root: Path, wav_dir: Path, utterances: Sequence[Utterance], voices: Sequence[SpeakerVoice],
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
    text_seeds = [_text_seed(seed, k) for k in range(utterances_per_emotion)]
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
                data = _wav_bytes(audio, sample_rate)
                utt_id = f"{voice.speaker}_{emotion}_{k + 1:0{width}d}"
                path = wav_dir / f"{utt_id}.wav"
                path.write_bytes(data)
                utterances.append(Utterance(
                    id=utt_id, path=str(path), speaker=voice.speaker, label=emotion,
                    gender=voice.gender, duration=audio.size / sample_rate, transcript="",
                    corpus=CORPUS_NAME, raw_label=emotion, sha1=hashlib.sha1(data).hexdigest(),
                ))

    _finish_corpus(root, wav_dir, utterances, voices,
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


# ---------------------------------------------------------------------------
# Corpora of a requested size (for benchmarks)
# ---------------------------------------------------------------------------

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
                audio = synthesise_utterance(voice, emotion, _text_seed(seed, 1000 + k), rng, sample_rate,
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
        data = _wav_bytes(audio, sample_rate)
        utt_id = f"{voice.speaker}_{emotion}_{i + 1:0{width}d}"
        path = wav_dir / f"{utt_id}.wav"
        path.write_bytes(data)
        utterances.append(Utterance(
            id=utt_id, path=str(path), speaker=voice.speaker, label=emotion, gender=voice.gender,
            duration=n / sample_rate, transcript="", corpus=CORPUS_NAME, raw_label=emotion,
            sha1=hashlib.sha1(data).hexdigest()))
    _finish_corpus(root, wav_dir, utterances, voices,
                   {"generator": "make_synthetic_hours", "seed": seed, "sample_rate": sample_rate, "hours": hours,
                    "pool_per_emotion": pool_per_emotion, "median_duration": median_duration, "sigma": sigma,
                    "min_duration": min_duration, "max_duration": max_duration})
    log.info("synthetic: %.2f h in %d utterances in %.1f s -> %s", sum(u.duration for u in utterances) / 3600.0,
             len(utterances), time.perf_counter() - start, root)
    return utterances
