"""Synthetic speakers: the fixed neutral voice of each speaker."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
