"""Robustness of trained models to noise, channel and room conditions (issue 3).

A test set is re-scored under perturbed audio: additive white noise and
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

import hashlib
import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .audio import load_audio, resample
from .features import write_json_atomic

log = logging.getLogger(__name__)

__all__ = [
    "CONDITIONS",
    "Condition",
    "DEFAULT_CONDITIONS",
    "PerturbContext",
    "apply_gain",
    "evaluate_robustness",
    "get_condition",
    "make_babble",
    "measure_snr",
    "mix_at_snr",
    "plot_degradation",
    "render_robustness_report",
    "reverb_impulse_response",
    "run_robustness",
    "select_utterances",
    "signal_power",
    "synthetic_reverb",
    "telephone_band",
    "white_noise",
]

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
    hop = max(1, int(round(ACTIVE_FRAME_S * sr)))
    n_frames = max(1, x.size // hop)
    frames = x[: n_frames * hop].reshape(n_frames, -1) if x.size >= hop else x.reshape(1, -1)
    powers = np.mean(frames * frames, axis=1)
    top = powers.max()
    if top <= 0:
        return 0.0
    active = powers >= top * 10.0 ** (-ACTIVE_THRESHOLD_DB / 10.0)
    return float(np.mean(frames[active] ** 2))


def measure_snr(speech: np.ndarray, noise: np.ndarray, reference: str = "whole", sr: int = 16000) -> float:
    """``10 log10(P_speech / P_noise)`` in dB; with ``"active"`` both powers are taken over the speech's active
    frames."""
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if reference == "active":
        hop = max(1, int(round(ACTIVE_FRAME_S * sr)))
        n_frames = max(1, speech.size // hop)
        s = speech[: n_frames * hop].reshape(n_frames, -1)
        nz = noise[: n_frames * hop].reshape(n_frames, -1)
        powers = np.mean(s * s, axis=1)
        active = powers >= powers.max() * 10.0 ** (-ACTIVE_THRESHOLD_DB / 10.0)
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


def _resolve(conditions: Optional[Sequence[Union[str, Condition]]]) -> list[Condition]:
    out = []
    for c in conditions if conditions is not None else DEFAULT_CONDITIONS:
        out.append(c if isinstance(c, Condition) else CONDITIONS.get(c) or get_condition(c))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate condition names in {names}")
    return out


def _rng_for(seed: int, condition: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(condition.encode("utf-8")), int(index)])


# --------------------------------------------------------------------------- evaluation


def _load_utterance(u: Any, sr: int, min_duration: float) -> np.ndarray:
    return load_audio(u.path, sr, start=float(getattr(u, "start", 0.0) or 0.0),
                      end=float(getattr(u, "end", 0.0) or 0.0), name=u.id, min_duration=min_duration)


def evaluate_robustness(checkpoint: Any, utterances: Sequence[Any],
                        conditions: Optional[Sequence[Union[str, Condition]]] = None, *, seed: int = 0,
                        babble_pool: Optional[Sequence[Any]] = None, num_talkers: int = 4,
                        device: str = "cpu", cache_dir: Optional[Union[str, Path]] = None
                        ) -> dict[str, dict[str, Any]]:
    """Score a checkpoint on ``utterances`` (moma Utterance records with path, speaker, label) under each
    condition (names or :class:`Condition`; default :data:`DEFAULT_CONDITIONS`).

    Per condition and utterance: load the audio at the checkpoint's sample rate, perturb it, compute features
    with the checkpoint's feature config, normalise with its normaliser and predict (posteriors as in
    evaluation: segment-trained models average their windows). Returns ``{condition: metrics}`` where metrics
    are :func:`moma.evaluate.score_posteriors`'s (accuracy, uar, macro_f1, per_class_recall, confusion,
    per_speaker) without the per-utterance rows, plus ``"perturbation"``: counts of mixes scaled down to
    avoid clipping (``mix_rescaled``) and of utterances clipped by gain (``clipped``).

    ``babble_pool``: the utterances babble is built from (Utterance records, or ``(speaker, signal)`` pairs
    at the checkpoint's rate); default the test utterances themselves. For each target utterance babble only
    uses pool signals of *other* speakers. A speaker-normalised checkpoint gets statistics for speakers it
    lacks from that speaker's perturbed features in each condition (transductive, like ``moma evaluate``).
    Deterministic given ``seed``.

    ``cache_dir``: when ``checkpoint`` is a path, each condition's metrics are stored in
    ``cache_dir/<key>.json``, keyed by the checkpoint file's content, the condition, the utterances, the
    babble pool, ``seed`` and ``num_talkers``, so an interrupted or extended run (another condition, another
    model) recomputes only what is new. A :class:`LoadedCheckpoint` is never cached: its in-memory state
    (e.g. a replaced normaliser) need not match any file.
    """
    from .checkpoint import LoadedCheckpoint, load_checkpoint
    from .evaluate import predict_posteriors, score_posteriors
    from .features import compute_features
    from .inference import normalise_for_checkpoint

    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, device=device)
    utterances = list(utterances)
    if not utterances:
        raise ValueError("no utterances to evaluate")
    unknown = sorted({u.label for u in utterances} - set(loaded.labels))
    if unknown:
        raise ValueError(f"labels {', '.join(unknown)} are not among the model's labels ({', '.join(loaded.labels)})")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("utterance ids must be unique")
    conds = _resolve(conditions)
    keys: dict[str, Path] = {}
    if cache_dir is not None and not isinstance(checkpoint, LoadedCheckpoint):
        keys = _cache_keys(Path(cache_dir), loaded.path, utterances, babble_pool, conds, seed, num_talkers)
    cached = {c.name: json.loads(keys[c.name].read_text(encoding="utf-8"))
              for c in conds if c.name in keys and keys[c.name].is_file()}
    if len(cached) == len(conds):
        log.info("robustness: all %d conditions of %s from the cache", len(conds), loaded.path)
        return {c.name: cached[c.name] for c in conds}
    fcfg = loaded.config.features
    sr = int(fcfg.sample_rate)
    min_dur = fcfg.frame_length_ms / 1000.0
    signals = {u.id: _load_utterance(u, sr, min_dur) for u in utterances}
    utts = {u.id: u for u in utterances}
    if babble_pool is None:
        pool_signals = [signals[u.id] for u in utterances]
        pool_speakers = [u.speaker for u in utterances]
    else:
        pool_signals, pool_speakers = [], []
        for item in babble_pool:
            if isinstance(item, tuple):
                pool_speakers.append(str(item[0]))
                pool_signals.append(np.asarray(item[1], dtype=np.float32))
            else:
                pool_speakers.append(item.speaker)
                same = item.id in utts and utts[item.id].path == item.path
                pool_signals.append(signals[item.id] if same else _load_utterance(item, sr, min_dur))
    results: dict[str, dict[str, Any]] = {}
    for cond in conds:
        if cond.name in cached:
            results[cond.name] = cached[cond.name]
            continue
        ctx = PerturbContext(pool_signals, pool_speakers, num_talkers=num_talkers)
        feats: dict[str, np.ndarray] = {}
        for i, u in enumerate(utterances):
            ctx.speaker = u.speaker
            perturbed = cond(signals[u.id], sr, _rng_for(seed, cond.name, i), ctx)
            feats[u.id] = compute_features(perturbed, fcfg)
        normed = normalise_for_checkpoint(loaded.normaliser, feats, utterances)
        post = predict_posteriors(loaded.model, normed, ids, loaded.config, device)
        metrics = score_posteriors(post, utts, loaded.labels)
        metrics.pop("predictions", None)
        metrics["perturbation"] = {"mix_rescaled": ctx.counts.get("mix_rescaled", 0),
                                   "clipped": ctx.counts.get("clipped", 0)}
        results[cond.name] = metrics
        if cond.name in keys:
            write_json_atomic(keys[cond.name], metrics)
        log.info("robustness %s: accuracy %.3f UAR %.3f", cond.name, metrics["accuracy"], metrics["uar"])
    return results


def file_sha1(path: Union[str, Path]) -> str:
    """SHA-1 of a file's bytes: a cache key that follows the content, not the path or the mtime."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_keys(cache_dir: Path, checkpoint_path: str, utterances: Sequence[Any], babble_pool: Optional[Sequence[Any]],
                conds: Sequence[Condition], seed: int, num_talkers: int) -> dict[str, Path]:
    """One cache file per condition; the key covers everything the condition's metrics depend on."""
    pool: Any
    if babble_pool is None:
        pool = "test utterances"
    else:
        pool = [[str(item[0]), hashlib.sha1(np.ascontiguousarray(item[1], dtype=np.float32).tobytes()).hexdigest()]
                if isinstance(item, tuple) else [item.speaker, item.id, str(item.path), item.start, item.end]
                for item in babble_pool]
    base = {"checkpoint": file_sha1(checkpoint_path), "seed": int(seed), "num_talkers": int(num_talkers),
            "utterances": [[u.id, str(u.path), u.speaker, u.label, u.start, u.end] for u in utterances],
            "pool": pool}
    out = {}
    for c in conds:
        digest = hashlib.sha1(json.dumps({**base, "condition": [c.name, c.family, c.level]},
                                         sort_keys=True).encode("utf-8")).hexdigest()
        out[c.name] = cache_dir / f"{c.name}-{digest[:16]}.json"
    return out


def select_utterances(utterances: Sequence[Any], max_n: Optional[int], seed: int = 0, *,
                      key: str = "label") -> list[Any]:
    """At most ``max_n`` utterances, balanced over ``key`` (``"label"`` or ``"speaker"``).

    Each group is shuffled with ``numpy.random.default_rng([seed, crc32(group)])`` and the groups are taken
    round-robin, so a small subset still covers every class (every speaker) and the choice depends only on
    ``seed`` and the utterances, not on their order. ``None`` or a count >= the total keeps all (sorted by id).
    """
    items = sorted(utterances, key=lambda u: u.id)
    if max_n is None or max_n >= len(items):
        return items
    if max_n < 1:
        raise ValueError(f"the number of utterances must be >= 1, got {max_n}")
    groups: dict[str, list[Any]] = {}
    for u in items:
        groups.setdefault(str(getattr(u, key)), []).append(u)
    queues = []
    for name in sorted(groups):
        order = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))]).permutation(len(groups[name]))
        queues.append([groups[name][i] for i in order])
    chosen: list[Any] = []
    depth = 0
    while len(chosen) < max_n:
        for q in queues:
            if depth < len(q) and len(chosen) < max_n:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen, key=lambda u: u.id)


# --------------------------------------------------------------------------- figure


def plot_degradation(results_by_model: Mapping[str, Mapping[str, Mapping[str, Any]]], out_png: Union[str, Path],
                     *, metric: str = "uar", title: str = "", caption: str = "") -> Path:
    """Left: ``metric`` (default UAR) against SNR, one line per model and noise type (white solid, babble
    dashed), with the clean score drawn at the right as "clean". Right: grouped bars per model for the
    conditions that are not noise at an SNR (clean, telephone, gain, reverb...).

    ``caption`` (e.g. the command that made the figure) is printed small under the axes, so a figure
    separated from its report still says where it came from."""
    from .plots import _pyplot, add_caption, save_figure

    plt = _pyplot()
    noise_re = re.compile(r"^(white|babble)-(-?\d+(?:\.\d+)?)dB$")
    models = list(results_by_model)
    snrs = sorted({float(m.group(2)) for res in results_by_model.values() for c in res
                   if (m := noise_re.match(c))})
    others: list[str] = []
    for res in results_by_model.values():
        for c in res:
            if not noise_re.match(c) and c not in others:
                others.append(c)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    clean_x = (max(snrs) + 10.0) if snrs else 0.0
    for mi, model in enumerate(models):
        res = results_by_model[model]
        colour = colours[mi % len(colours)]
        for noise, style in (("white", "-"), ("babble", "--")):
            pts = sorted((float(m.group(2)), float(v[metric])) for c, v in res.items()
                         if (m := noise_re.match(c)) and m.group(1) == noise)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if "clean" in res:
                xs.append(clean_x)
                ys.append(float(res["clean"][metric]))
            ax1.plot(xs, ys, style, marker="o", color=colour, label=f"{model} {noise}")
    if snrs:
        ticks = snrs + [clean_x]
        ax1.set_xticks(ticks)
        ax1.set_xticklabels([f"{s:g}" for s in snrs] + ["clean"])
    ax1.set_xlabel("SNR (dB)")
    ax1.set_ylabel(metric.upper() if metric == "uar" else metric)
    ax1.set_title("Additive noise")
    ax1.grid(alpha=0.3)
    if ax1.lines:
        ax1.legend(fontsize=8)
    width = 0.8 / max(1, len(models))
    for mi, model in enumerate(models):
        res = results_by_model[model]
        xs = [i + (mi - (len(models) - 1) / 2) * width for i, c in enumerate(others) if c in res]
        ys = [float(res[c][metric]) for c in others if c in res]
        ax2.bar(xs, ys, width=width, color=colours[mi % len(colours)], label=model)
    ax2.set_xticks(range(len(others)))
    ax2.set_xticklabels(others, rotation=30, ha="right")
    ax2.set_ylabel(metric.upper() if metric == "uar" else metric)
    ax2.set_title("Channel, level and room")
    ax2.set_ylim(0, 1)
    if models and others:
        ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if caption:
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        add_caption(fig, caption, width=160)
    else:
        fig.tight_layout()
    return save_figure(fig, out_png)


# --------------------------------------------------------------------------- several checkpoints: moma robustness


def _model_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the fewest trailing folder names (``best.safetensors`` and the like dropped)."""
    parts = []
    for p in paths:
        p = Path(p)
        bits = list(p.parts[:-1]) if p.name in ("best.safetensors", "model.safetensors", "last.safetensors") \
            else list(p.parent.parts) + [p.stem]
        parts.append([b for b in bits if b not in ("/", "")] or [p.stem])
    for k in range(1, max(len(b) for b in parts) + 1):
        names = ["/".join(b[-k:]) for b in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}:{'/'.join(b)}" for i, b in enumerate(parts)]


def run_robustness(checkpoints: Sequence[Union[str, Path]], utterances: Sequence[Any], out_dir: Union[str, Path], *,
                   conditions: Optional[Sequence[str]] = None, max_utterances: Optional[int] = None, seed: int = 0,
                   cache_dir: Optional[Union[str, Path]] = None, babble_pool: Optional[Sequence[Any]] = None,
                   babble_pool_size: int = 32, num_talkers: int = 4, command: str = "",
                   device: str = "cpu") -> dict[str, Any]:
    """Score each checkpoint on ``utterances`` under every condition; write results.json, report.md and
    degradation.png into ``out_dir``. Returns the content of results.json.

    ``max_utterances`` keeps a label-balanced seeded subset (:func:`select_utterances`); every model sees the
    same utterances and the same perturbations. Babble is built from ``babble_pool`` (default: the utterances
    themselves), at most ``babble_pool_size`` of them balanced over speakers; for each target utterance only
    other speakers' signals are used. ``cache_dir`` (default ``out_dir/cache``) keeps each (checkpoint,
    condition) result so a rerun recomputes only what is new.
    """
    from .checkpoint import existing_checkpoint_paths, load_checkpoint

    paths = existing_checkpoint_paths(checkpoints)
    utterances = list(utterances)
    if not utterances:
        raise ValueError("no utterances to evaluate (empty manifest or speaker selection)")
    conds = _resolve(conditions)
    chosen = select_utterances(utterances, max_utterances, seed)
    pool_source = list(babble_pool) if babble_pool is not None else utterances
    pool = select_utterances(pool_source, babble_pool_size, seed, key="speaker")
    if len({u.speaker for u in pool}) < 2 and any(c.family == "babble" for c in conds):
        raise ValueError(f"babble needs speech of at least 2 speakers, the pool has {len({u.speaker for u in pool})}; "
                         "select more speakers or leave out the babble conditions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    names = _model_names(paths)
    models: dict[str, Any] = {}
    for name, path in zip(names, paths):
        loaded = load_checkpoint(path, device=device)
        log.info("robustness: %s (%s)", name, path)
        res = evaluate_robustness(path, chosen, conds, seed=seed, babble_pool=pool, num_talkers=num_talkers,
                                  device=device, cache_dir=cache)
        models[name] = {"checkpoint": str(path), "arch": loaded.config.model.arch,
                        "labels": loaded.labels, "test_speakers_of_checkpoint": loaded.info.get("test_speakers", []),
                        "conditions": res}
    results: dict[str, Any] = {
        "command": command,
        "conditions": [c.name for c in conds],
        "n_utterances": len(chosen),
        "n_available": len(utterances),
        "speakers": sorted({u.speaker for u in chosen}),
        "utterance_ids": [u.id for u in chosen],
        "seed": seed,
        "babble_pool": {"n": len(pool), "speakers": sorted({u.speaker for u in pool}), "num_talkers": num_talkers},
        "models": models,
        "figure": "degradation.png",
    }
    plot_degradation({n: m["conditions"] for n, m in models.items()}, out_dir / "degradation.png",
                     title="UAR under noise, channel and room conditions", caption=f"made by: {command}")
    write_json_atomic(out_dir / "results.json", results)
    (out_dir / "report.md").write_text(render_robustness_report(results), encoding="utf-8")
    return results


def render_robustness_report(results: Mapping[str, Any]) -> str:
    """Markdown: UAR and accuracy per condition per model, the drop from clean, and the conventions."""
    models = results["models"]
    names = list(models)
    lines = ["# Robustness to noise, channel and room conditions", "", "Made by:", "", "```",
             results.get("command") or "(library call)", "```", "",
             f"- Utterances: {results['n_utterances']} (of {results['n_available']} selected; label-balanced "
             f"subset, seed {results['seed']}), speakers: {', '.join(results['speakers'])}",
             f"- Babble: {results['babble_pool']['num_talkers']} talkers drawn from {results['babble_pool']['n']} "
             f"utterances of speakers {', '.join(results['babble_pool']['speakers'])}; never the target's own "
             "speaker",
             "- SNR = 10 log10(P_speech / P_noise), powers over the whole utterance (pauses included); a mix that "
             "would clip is scaled down as a whole (SNR unchanged). Gain clips to [-1, 1]. Reverb: synthetic "
             "exponential-decay impulse response, level-matched. Telephone: 8 kHz, 300-3400 Hz band.",
             "- UAR = mean per-class recall (the paper's \"WA\"); accuracy = correct / total (the paper's \"UA\").",
             "", "## Models", "", "| model | architecture | checkpoint | the checkpoint's own test speakers |",
             "|---|---|---|---|"]
    for n in names:
        m = models[n]
        lines.append(f"| {n} | {m['arch']} | `{m['checkpoint']}` | "
                     f"{', '.join(m['test_speakers_of_checkpoint']) or 'not recorded'} |")
    lines += ["", "## UAR / accuracy per condition", "",
              "| condition | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in results["conditions"]:
        cells = []
        for n in names:
            r = models[n]["conditions"].get(c)
            cells.append(f"{r['uar']:.3f} / {r['accuracy']:.3f}" if r else "–")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if "clean" in results["conditions"]:
        lines += ["", "## UAR drop from clean (clean − condition; positive = worse)", "",
                  "| condition | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        drops: dict[str, list[float]] = {n: [] for n in names}
        for c in results["conditions"]:
            if c == "clean":
                continue
            cells = []
            for n in names:
                res = models[n]["conditions"]
                d = res["clean"]["uar"] - res[c]["uar"]
                drops[n].append(d)
                cells.append(f"{d:+.3f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{np.mean(drops[n]):+.3f}**" if drops[n] else "–"
                                                 for n in names) + " |")
    counts = [(n, c, models[n]["conditions"][c].get("perturbation", {})) for n in names[:1]
              for c in results["conditions"]]
    notes = [f"{c}: {p.get('mix_rescaled', 0)} mixes scaled down, {p.get('clipped', 0)} utterances clipped"
             for _, c, p in counts if p.get("mix_rescaled") or p.get("clipped")]
    if notes:
        lines += ["", "Perturbation events (identical for every model): " + "; ".join(notes) + "."]
    lines += ["", f"![UAR per condition]({results['figure']})", "",
              f"*UAR per condition and model.* Made by `{results.get('command') or '(library call)'}`.", ""]
    return "\n".join(lines)
