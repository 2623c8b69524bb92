"""Phonetic inventory and sentence plans: formant targets, obstruent noise spectra, syllables.

Also the fixed acoustic constants of the synthesiser (bandwidths, higher
formants, base spectral tilt, levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# F1-F4 targets (Hz) of an average adult male voice, Peterson & Barney (1952) style.
VOWELS: dict[str, tuple[float, float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0, 3400.0),
    "e": (530.0, 1840.0, 2480.0, 3500.0),
    "i": (270.0, 2290.0, 3010.0, 3700.0),
    "o": (570.0, 840.0, 2410.0, 3400.0),
    "u": (300.0, 870.0, 2240.0, 3400.0),
}
SCHWA = np.array([500.0, 1500.0, 2500.0, 3500.0])
NASALS: dict[str, tuple[float, float, float, float]] = {
    "m": (280.0, 1100.0, 2300.0, 3300.0),
    "n": (280.0, 1600.0, 2500.0, 3400.0),
}
BANDWIDTHS = np.array([60.0, 90.0, 150.0, 220.0])  # Hz, F1-F4
# Fixed higher formants (Hz at formant scale 1, bandwidth Hz), used where they
# fit below Nyquist: without them a cascade falls at 48 dB/octave above F4 and
# 16 kHz speech would have no energy between 5 and 8 kHz.
HIGHER_FORMANTS = ((4500.0, 300.0), (5500.0, 400.0))
# dB/octave above 500 Hz added to every voice: the cascade still lacks the
# poles above F6 (Klatt's higher-pole correction) and is duller than the
# long-term spectrum of real speech.
BASE_TILT_DB_OCT = 2.0
NEUTRAL_LEVEL_DBFS = -28.0  # RMS of vowels in neutral speech; angry peaks stay below full scale
NOISE_FLOOR_DB = -72.0  # dBFS, white recording noise, so pauses are not digital silence

# Noise spectra of the obstruents as (centre Hz, width Hz, relative amplitude) bumps
# over a flat floor: /s/ peaks high, /ʃ/ lower, /f/ is flat and weak; plosive bursts
# follow their place of articulation (labial low, velar compact mid, alveolar high).
NOISE_SHAPES: dict[str, tuple[float, tuple[tuple[float, float, float], ...]]] = {
    "s": (0.02, ((6000.0, 1500.0, 1.0),)),
    "sh": (0.02, ((3000.0, 700.0, 1.0), (4600.0, 1000.0, 0.5))),
    "f": (0.30, ((7000.0, 3000.0, 0.5),)),
    "t": (0.10, ((4000.0, 1500.0, 1.0),)),
    "k": (0.05, ((1900.0, 500.0, 1.0), (3500.0, 1000.0, 0.4))),
    "p": (0.30, ((900.0, 800.0, 1.0),)),
}
NOISE_KINDS = tuple(NOISE_SHAPES)
FRICATIVES = {"s": (0.100, -6.0), "sh": (0.100, -6.0), "f": (0.090, -16.0)}  # s, dB re vowel
PLOSIVES = ("p", "t", "k")
_ONSETS = ("", "s", "sh", "f", "t", "k", "p", "m", "n")
_ONSET_P = np.array([0.16, 0.13, 0.07, 0.08, 0.14, 0.12, 0.08, 0.12, 0.10])


@dataclass(frozen=True)
class Syllable:
    onset: str  # consonant from _ONSETS ("" = vowel onset)
    vowel: str  # key of VOWELS
    stressed: bool
    phrase_final: bool  # a pause follows


def text_plan(text_seed: int, n_words: int = 100) -> tuple[list[Syllable], float]:
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
    vowels = rng.integers(len(VOWELS), size=n_syl)
    names = tuple(VOWELS)
    syllables: list[Syllable] = []
    for w in range(n_words):
        n_word = int(word_len[w])
        stress = 1 if n_word > 1 and second_stress[w] else 0
        for j in range(n_word):
            i = len(syllables)
            syllables.append(Syllable(onset=_ONSETS[int(onsets[i])], vowel=names[int(vowels[i])],
                                       stressed=j == stress,
                                       phrase_final=bool(phrase_end[w]) and j == n_word - 1))
    return syllables, float(rng.uniform(0.1, 0.9))
