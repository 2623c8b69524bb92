"""Emotion profiles: how each emotion departs from a speaker's neutral voice.

The prosodic and voice-quality correlates in the table of the package
docstring, as multiplicative (or additive, for dB) effects that
:func:`moma.corpora.synthetic.utterance.synthesise_utterance` scales by the
speaker's expressiveness.
"""

from __future__ import annotations

from dataclasses import dataclass

SYNTH_EMOTIONS: tuple[str, ...] = ("angry", "happy", "neutral", "sad")


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


PROFILES: dict[str, _EmotionProfile] = {
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


def scaled(factor: float, amount: float) -> float:
    """A multiplicative effect applied ``amount`` times as strongly (in the log domain)."""
    return float(factor**amount)
