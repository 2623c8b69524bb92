"""Signal conditions that stand in for real-world audio: noise, babble, telephone band, gain, reverberation.

Used to re-score a test set under perturbed audio (:mod:`moma.research.robustness`): additive white noise and
babble at 20, 10, 5 and 0 dB SNR, a telephone band (8 kHz, 300-3400 Hz),
+-10 dB gain and synthetic reverberation. Every perturbation acts on the
waveform at the model's sample rate, *before* feature extraction, so the
features go through exactly the front end and normaliser of the checkpoint.

Conventions (all documented where they apply):

* SNR is ``10 log10(P_speech / P_noise)`` with powers taken as the mean
  square over the whole speech signal (``reference="whole"``, the default) or
  over its active frames only (``reference="active"``). The default counts
  pauses, so for speech with long silences the SNR during speech is higher
  than the nominal one; ``"active"`` is closer to ITU-T P.56 practice.
* Clip safety: a perturbation never returns samples outside [-1, 1] by
  surprise. Mixing scales the *whole mix* down when it would clip, which
  leaves the SNR unchanged; gain clips (that is what a too-hot input does)
  and reports how much; reverberation is level-matched, then scaled down
  if its peak would exceed 1.
* Lengths: every perturbation returns a signal of the input's length, so the
  feature frame count (and any alignment) is unchanged.
* Determinism: each (condition, utterance) pair draws from its own
  ``numpy.random.Generator`` seeded from ``(seed, crc32(condition name),
  utterance index)``, so results do not depend on the order or the subset of
  conditions evaluated.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from moma.audio.io import resample

log = logging.getLogger(__name__)

ACTIVE_FRAME_S = 0.02  # s; frame used to find active speech for reference="active"
ACTIVE_THRESHOLD_DB = 30.0  # frames within this many dB of the loudest frame count as active
TELEPHONE_SR = 8000  # Hz
TELEPHONE_BAND = (300.0, 3400.0)  # Hz
TELEPHONE_ORDER = 4  # Butterworth order per band edge (applied forward and backward: zero phase)
_EPS = 1e-20


# --------------------------------------------------------------------------- levels


def signal_power(x: np.ndarray, reference: str = "whole", sr: int = 16000) -> float:
    """Mean square of ``x``: over all samples (``"whole"``) or over active frames (``"active"``).

    ``"active"`` cuts ``x`` into 20 ms frames and averages the power of the
    frames within 30 dB of the loudest one (a simple energy detector; pauses
    and leading/trailing silence are left out).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ValueError("empty signal")
    if reference == "whole":
        return float(np.mean(x * x))
    if reference != "active":
        raise ValueError(f"unknown SNR reference {reference!r}; use 'whole' or 'active'")
    hop, active = _active_frames(x, sr)
    frames = x[: active.size * hop].reshape(active.size, hop)  # (n_frames, hop)
    return float(np.mean(frames[active] ** 2))


def _active_frames(x: np.ndarray, sr: int) -> tuple[int, np.ndarray]:
    """Samples per frame and which of ``x``'s whole 20 ms frames are active: within 30 dB of the loudest (a
    signal shorter than one frame is one frame; a silent one is active throughout). The one speech detector
    behind :func:`signal_power` and :func:`measure_snr`."""
    if x.size == 0:
        raise ValueError("empty signal")
    hop = min(x.size, max(1, int(round(ACTIVE_FRAME_S * sr))))
    n_frames = x.size // hop
    powers = np.mean(x[: n_frames * hop].reshape(n_frames, hop) ** 2, axis=1)  # (n_frames,)
    return hop, powers >= powers.max() * 10.0 ** (-ACTIVE_THRESHOLD_DB / 10.0)


def set_active_level(signal: np.ndarray, level_db: float, sr: int = 16000) -> np.ndarray:
    """``signal`` scaled so that its active-speech power (:func:`signal_power` with ``"active"``) is
    ``level_db`` dBFS, float32. Not clipped: the result feeds an analysis (level-invariant descriptors), not a
    file. A silent signal comes back unchanged."""
    power = signal_power(signal, "active", sr)
    if power <= _EPS:
        return np.asarray(signal, dtype=np.float32)
    scale = math.sqrt(10.0 ** (level_db / 10.0) / power)
    return (np.asarray(signal, dtype=np.float64) * scale).astype(np.float32)


def measure_snr(speech: np.ndarray, noise: np.ndarray, reference: str = "whole", sr: int = 16000) -> float:
    """``10 log10(P_speech / P_noise)`` in dB; with ``"active"`` both powers are taken over the speech's active
    frames."""
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if reference == "active":
        hop, active = _active_frames(speech, sr)
        s = speech[: active.size * hop].reshape(active.size, hop)  # (n_frames, hop)
        nz = noise[: active.size * hop].reshape(active.size, hop)
        return 10.0 * math.log10(max(np.mean(s[active] ** 2), _EPS) / max(np.mean(nz[active] ** 2), _EPS))
    return 10.0 * math.log10(max(float(np.mean(speech ** 2)), _EPS) / max(float(np.mean(noise ** 2)), _EPS))


def _fit_length(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``noise`` looped (tiled) as needed and cropped to ``n`` samples from a random offset."""
    noise = np.asarray(noise, dtype=np.float64).reshape(-1)
    if noise.size == 0:
        raise ValueError("empty noise signal")
    offset = int(rng.integers(0, noise.size))
    reps = int(math.ceil((offset + n) / noise.size))
    return np.tile(noise, reps)[offset: offset + n]


# --------------------------------------------------------------------------- noise


def white_noise(n: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``n`` samples of zero-mean Gaussian white noise with unit variance (float64)."""
    rng = rng if rng is not None else np.random.default_rng()
    return rng.standard_normal(int(n))


def make_babble(signals: Sequence[np.ndarray], n: int, num_talkers: int = 4,
                rng: Optional[np.random.Generator] = None, *, speakers: Optional[Sequence[str]] = None,
                exclude_speaker: Optional[str] = None) -> np.ndarray:
    """Babble: the sum of ``num_talkers`` utterances, each looped/cropped to ``n`` samples from a random offset
    and normalised to unit power first (so every talker is equally loud). Returns float64 of length ``n``,
    scaled to unit power.

    Talkers are drawn from ``signals`` without replacement; when there are fewer signals than talkers, every
    signal is used and some are used again (at another random offset). Only the given signals are used.

    The caller guarantees that ``signals`` come from speakers other than the target utterance's. When
    ``speakers`` (one id per signal) and ``exclude_speaker`` are given, this is checked: a signal of
    ``exclude_speaker`` raises ValueError. Signals that are all zeros are refused too.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if num_talkers < 1:
        raise ValueError(f"num_talkers must be >= 1, got {num_talkers}")
    if not signals:
        raise ValueError("babble needs at least one signal")
    if speakers is not None:
        if len(speakers) != len(signals):
            raise ValueError(f"{len(signals)} signals but {len(speakers)} speaker ids")
        if exclude_speaker is not None and exclude_speaker in set(speakers):
            raise ValueError(f"babble pool holds speech of the target speaker {exclude_speaker!r}; "
                             "babble must be built from other speakers")
    m = len(signals)
    if m >= num_talkers:
        chosen = [int(i) for i in rng.choice(m, size=num_talkers, replace=False)]
    else:
        chosen = list(range(m)) + [int(i) for i in rng.choice(m, size=num_talkers - m, replace=True)]
    out = np.zeros(int(n), dtype=np.float64)
    for i in chosen:
        sig = np.asarray(signals[i], dtype=np.float64).reshape(-1)
        power = float(np.mean(sig * sig)) if sig.size else 0.0
        if power <= 0:
            raise ValueError(f"babble signal {i} is silent")
        out += _fit_length(sig / math.sqrt(power), int(n), rng)
    power = float(np.mean(out * out))
    return out / math.sqrt(power) if power > 0 else out


def synthetic_music(seconds: float, sr: int = 16000, rng: Optional[np.random.Generator] = None, *,
                    tempo_bpm: float = 120.0) -> np.ndarray:
    """Non-speech with speech-like loudness and rhythm: a melody and a chord of harmonic tones (6 partials,
    1/k amplitudes, decaying notes) changing every one or two beats, over a drum pattern of noise bursts
    (a low thump on beats 1 and 3, a bright burst on 2 and 4). Float32 of ``round(seconds * sr)`` samples,
    peak 0.5. Used to check that a speech detector says "no speech" to music.
    """
    rng = rng if rng is not None else np.random.default_rng()
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    beat = 60.0 / tempo_bpm  # s
    out = np.zeros(n, dtype=np.float64)
    scale = 220.0 * 2.0 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12.0)  # A major, Hz
    start = 0.0
    while start < seconds:
        length = beat * float(rng.choice([1.0, 2.0]))
        a, b = int(start * sr), min(n, int((start + length) * sr))
        root = float(rng.choice(scale))
        for f0, gain in ((root * 2.0, 1.0), (root, 0.5), (root * 1.5, 0.4)):  # melody note over a fifth
            tt = t[a:b] - start
            tone = sum(np.sin(2 * np.pi * k * f0 * tt) / k for k in range(1, 7) if k * f0 < sr / 2)
            out[a:b] += gain * tone * np.exp(-tt / (0.6 * length))
        start += length
    for k, beat_start in enumerate(np.arange(0.0, seconds, beat)):
        a = int(beat_start * sr)
        burst = rng.standard_normal(min(n - a, int(0.12 * sr)))
        env = np.exp(-np.arange(burst.size) / (0.02 * sr))
        if k % 2 == 0:  # low thump: noise smoothed over 2 ms
            burst = np.convolve(burst, np.ones(32) / 32, mode="same") * 4.0
        out[a:a + burst.size] += 0.8 * burst * env
    return (0.5 * out / max(float(np.max(np.abs(out))), _EPS)).astype(np.float32)


def _mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator,
         reference: str, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    speech = np.asarray(speech, dtype=np.float64).reshape(-1)
    noise_fit = _fit_length(noise, speech.size, rng)
    if reference == "active":
        # powers of speech and noise over the same (speech-active) frames
        p_s = signal_power(speech, "active", sr)
        p_n = 10.0 ** (-measure_snr(speech, noise_fit, "active", sr) / 10.0) * p_s
    else:
        p_s = signal_power(speech, "whole", sr)
        p_n = signal_power(noise_fit, "whole", sr)
    if p_s <= 0:
        raise ValueError("speech signal is silent: SNR is undefined")
    if p_n <= 0:
        raise ValueError("noise signal is silent: SNR is undefined")
    noise_scaled = noise_fit * math.sqrt(p_s / (p_n * 10.0 ** (snr_db / 10.0)))
    mix = speech + noise_scaled
    peak = float(np.max(np.abs(mix)))
    scale = 1.0 / peak if peak > 1.0 else 1.0
    return mix * scale, speech * scale, noise_scaled * scale, scale


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: Optional[np.random.Generator] = None, *,
               reference: str = "whole", sr: int = 16000, return_components: bool = False
               ) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Add ``noise`` to ``speech`` at exactly ``snr_db`` dB.

    The noise is looped and cropped to the speech's length, starting at a random offset drawn from ``rng``,
    and scaled so that ``10 log10(P_speech / P_noise) == snr_db`` where P is the mean square over the whole
    signal (``reference="whole"``, default) or over the speech's active frames (``reference="active"``, see
    :func:`signal_power`; the noise power is then taken over the same frames).

    Clip safety: if the mix would leave [-1, 1], the whole MIX (speech and noise alike) is scaled down so
    that its peak is 1. The SNR is unchanged; only the overall level drops. Returns float32 of the speech's
    length; with ``return_components`` also the (equally scaled) speech and noise parts, float64, whose sum is
    the mix.
    """
    rng = rng if rng is not None else np.random.default_rng()
    mix, s, nz, _ = _mix(speech, noise, snr_db, rng, reference, sr)
    if return_components:
        return mix.astype(np.float32), s, nz
    return mix.astype(np.float32)


# --------------------------------------------------------------------------- channels


def telephone_band(signal: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Narrow-band telephone channel: resample to 8 kHz (soxr, its anti-alias filter removes > 4 kHz),
    band-pass 300-3400 Hz (Butterworth, order 4, second-order sections, applied forward and backward so the
    phase is zero, the band edges sit at -6 dB and the skirts fall at twice the rate: 100 Hz is ~78 dB down,
    5 kHz far more), resample back to ``sr``. Returns float32 of the
    input's length (the two resamplings can differ by a sample; the end is padded or cropped)."""
    from scipy.signal import butter, sosfiltfilt

    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    n = x.size
    narrow = resample(x, sr, TELEPHONE_SR)
    sos = butter(TELEPHONE_ORDER, TELEPHONE_BAND, btype="bandpass", fs=TELEPHONE_SR, output="sos")
    if narrow.size > 3 * (2 * sos.shape[0] + 1):
        narrow = sosfiltfilt(sos, narrow)
    else:  # too short for filtfilt's edge padding: one causal pass
        from scipy.signal import sosfilt

        narrow = sosfilt(sos, narrow)
    wide = resample(np.ascontiguousarray(narrow), TELEPHONE_SR, sr)
    if wide.size < n:
        wide = np.concatenate([wide, np.zeros(n - wide.size)])
    return np.clip(wide[:n], -1.0, 1.0).astype(np.float32)


def apply_gain(signal: np.ndarray, db: float) -> tuple[np.ndarray, float]:
    """Scale by ``db`` decibels and clip to [-1, 1] (what an over-driven input does).

    Returns ``(signal float32, clipped)`` where ``clipped`` is the fraction of samples that were clipped
    (0.0 when none: it is falsy exactly when nothing clipped)."""
    x = np.asarray(signal, dtype=np.float64) * 10.0 ** (db / 20.0)
    over = np.abs(x) > 1.0
    clipped = float(np.mean(over)) if x.size else 0.0
    return np.clip(x, -1.0, 1.0).astype(np.float32), clipped


def reverb_impulse_response(sr: int, rt60: float = 0.5, rng: Optional[np.random.Generator] = None, *,
                            drr_db: float = 0.0) -> np.ndarray:
    """Synthetic room impulse response: a unit direct path at t = 0 plus a Gaussian-noise tail under the
    envelope ``exp(-3 ln(10) t / rt60)`` (energy falls 60 dB in ``rt60`` s), from 1 ms to ``rt60`` s. The
    tail is scaled so that direct-path energy / tail energy is ``drr_db`` dB."""
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    rng = rng if rng is not None else np.random.default_rng()
    n = max(2, int(round(rt60 * sr)))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-3.0 * math.log(10.0) * t / rt60)
    tail[: max(1, int(round(0.001 * sr)))] = 0.0
    tail *= math.sqrt(10.0 ** (-drr_db / 10.0) / max(float(np.sum(tail ** 2)), _EPS))
    h = tail
    h[0] = 1.0
    return h


def synthetic_reverb(signal: np.ndarray, sr: int = 16000, rt60: float = 0.5,
                     rng: Optional[np.random.Generator] = None, *, drr_db: float = 0.0) -> np.ndarray:
    """Convolve with :func:`reverb_impulse_response` and match the input's RMS level.

    Length policy: the output keeps the input's length (the first ``len(signal)`` samples of the full
    convolution: the reverberant tail after the last input sample is dropped), so frame counts do not change.
    If the level-matched output would exceed [-1, 1] it is scaled down to a peak of 1. Returns float32.
    """
    from scipy.signal import fftconvolve

    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    h = reverb_impulse_response(sr, rt60, rng, drr_db=drr_db)
    y = fftconvolve(x, h, mode="full")[: x.size]
    p_in, p_out = float(np.mean(x * x)), float(np.mean(y * y))
    if p_out > 0:
        y *= math.sqrt(p_in / p_out)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        y /= peak
    return y.astype(np.float32)


# --------------------------------------------------------------------------- conditions


@dataclass
class PerturbContext:
    """What a condition may need beyond the signal: the babble pool and the target's speaker.

    ``babble_signals``/``babble_speakers`` are parallel lists; :meth:`babble` draws only from signals of
    speakers other than ``speaker``. ``counts`` tallies events worth reporting (``"mix_rescaled"``,
    ``"clipped"``) over a condition's utterances.
    """

    babble_signals: list[np.ndarray] = field(default_factory=list)
    babble_speakers: list[str] = field(default_factory=list)
    speaker: Optional[str] = None
    num_talkers: int = 4
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def babble(self, n: int, rng: np.random.Generator) -> np.ndarray:
        keep = [i for i, spk in enumerate(self.babble_speakers) if self.speaker is None or spk != self.speaker]
        if not keep:
            raise ValueError(f"no babble signal from a speaker other than {self.speaker!r}")
        return make_babble([self.babble_signals[i] for i in keep], n, self.num_talkers, rng,
                           speakers=[self.babble_speakers[i] for i in keep], exclude_speaker=self.speaker)


ConditionFn = Callable[[np.ndarray, int, np.random.Generator, PerturbContext], np.ndarray]


@dataclass(frozen=True)
class Condition:
    """A named perturbation; call it as ``condition(signal, sr, rng, context) -> signal``.

    ``family`` is "clean", "white", "babble", "telephone", "gain" or "reverb"; ``level`` is the SNR (dB),
    gain (dB) or RT60 (s) where the family has one.
    """

    name: str
    family: str
    level: Optional[float] = None

    def __call__(self, signal: np.ndarray, sr: int, rng: np.random.Generator, context: PerturbContext) -> np.ndarray:
        x = np.asarray(signal, dtype=np.float32)
        if self.family == "clean":
            return x
        if self.family in ("white", "babble"):
            noise = white_noise(x.size, rng) if self.family == "white" else context.babble(x.size, rng)
            mix, _, _, scale = _mix(x, noise, float(self.level), rng, "whole", sr)
            if scale < 1.0:
                context.count("mix_rescaled")
            return mix.astype(np.float32)
        if self.family == "telephone":
            return telephone_band(x, sr)
        if self.family == "gain":
            out, clipped = apply_gain(x, float(self.level))
            if clipped:
                context.count("clipped")
            return out
        if self.family == "reverb":
            return synthetic_reverb(x, sr, float(self.level), rng)
        raise ValueError(f"unknown condition family {self.family!r}")


_NAME = re.compile(r"^(?:(clean)|(telephone)|(white|babble)-(-?\d+(?:\.\d+)?)dB|gain([+-]\d+(?:\.\d+)?)dB"
                   r"|reverb-(\d+(?:\.\d+)?)s)$")


def get_condition(name: str) -> Condition:
    """Parse a condition name: ``clean``, ``telephone``, ``white-<snr>dB``, ``babble-<snr>dB``,
    ``gain<+|-><db>dB``, ``reverb-<rt60>s`` (e.g. ``white-15dB``, ``gain+6dB``, ``reverb-1.0s``)."""
    m = _NAME.match(name.strip())
    if not m:
        raise ValueError(f"unknown condition {name!r}; known forms: clean, telephone, white-<snr>dB, "
                         "babble-<snr>dB, gain<+|-><db>dB, reverb-<rt60>s")
    clean, tel, noise, snr, gain, rt60 = m.groups()
    if clean:
        return Condition(name, "clean")
    if tel:
        return Condition(name, "telephone")
    if noise:
        return Condition(name, noise, float(snr))
    if gain:
        return Condition(name, "gain", float(gain))
    return Condition(name, "reverb", float(rt60))


DEFAULT_CONDITIONS = ("clean",
                      "white-20dB", "white-10dB", "white-5dB", "white-0dB",
                      "babble-20dB", "babble-10dB", "babble-5dB", "babble-0dB",
                      "telephone", "gain+10dB", "gain-10dB", "reverb-0.5s")
CONDITIONS: dict[str, Condition] = {name: get_condition(name) for name in DEFAULT_CONDITIONS}


def resolve_conditions(conditions: Optional[Sequence[Union[str, Condition]]]) -> list[Condition]:
    out = []
    for c in conditions if conditions is not None else DEFAULT_CONDITIONS:
        out.append(c if isinstance(c, Condition) else CONDITIONS.get(c) or get_condition(c))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate condition names in {names}")
    return out


def condition_rng(seed: int, condition: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(condition.encode("utf-8")), int(index)])
