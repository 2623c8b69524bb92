"""One utterance: timing plan, f0 contour and the full source-filter synthesis."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from moma.corpora.synthetic.dsp import Framing, glottal_source, noise_shape_table, raised_cosine, resonator_cascade
from moma.corpora.synthetic.emotions import PROFILES, SYNTH_EMOTIONS, scaled
from moma.corpora.synthetic.phonetics import (
    BANDWIDTHS,
    BASE_TILT_DB_OCT,
    FRICATIVES,
    HIGHER_FORMANTS,
    NASALS,
    NEUTRAL_LEVEL_DBFS,
    NOISE_FLOOR_DB,
    NOISE_KINDS,
    PLOSIVES,
    SCHWA,
    VOWELS,
    Syllable,
    text_plan,
)
from moma.corpora.synthetic.speakers import SpeakerVoice


@dataclass
class _Segments:
    """Per-sample excitation envelopes and formant knots of one utterance's timing plan."""

    voicing: np.ndarray  # glottal-source amplitude
    aspiration: np.ndarray  # extra aspiration (plosive release), through the vocal tract
    noise: np.ndarray  # obstruent noise amplitude (own spectrum)
    noise_centres: list[float]  # sample index of each obstruent segment's centre
    noise_kinds: list[int]  # index into NOISE_KINDS per obstruent segment
    knot_times: list[float]  # samples
    knot_formants: list[np.ndarray]  # F1-F4 (unscaled), one per knot
    accents: list[tuple[float, float]]  # (centre sample, width samples) per stressed vowel


def _lay_out(plan: list[Syllable], n: int, sample_rate: int, rate: float, pause_factor: float,
             attack_ms: float, rng: np.random.Generator) -> _Segments:
    """Place syllables in time so they fill ``n`` samples, and draw their envelopes."""
    sr = float(sample_rate)
    lead = min(rng.uniform(0.05, 0.15) * sr, 0.2 * n)  # capped so very short utterances keep speech
    tail = min(rng.uniform(0.05, 0.12) * sr, 0.15 * n)
    budget = n - lead - tail

    # Durations in seconds at rate 1 (vowels: Klatt 1976 ranges; stressed and
    # phrase-final vowels lengthen), each jittered, then divided by the rate.
    events: list[tuple[str, float, Syllable | None]] = []  # (kind, samples, syllable)
    used = 0.0
    for syl in itertools.cycle(plan):  # a long max_duration repeats the sentence
        parts: list[tuple[str, float, Syllable | None]] = []
        if syl.onset in FRICATIVES:
            parts.append(("fric", FRICATIVES[syl.onset][0], syl))
        elif syl.onset in PLOSIVES:
            parts += [("closure", 0.055, syl), ("burst", 0.012, syl), ("asp", 0.030, syl)]
        elif syl.onset in NASALS:
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
            seg.noise[a:b] += 10 ** (FRICATIVES[syl.onset][1] / 20) * raised_cosine(span, int(20 * ms), int(15 * ms))
            seg.noise_centres.append(0.5 * (a + b))
            seg.noise_kinds.append(NOISE_KINDS.index(syl.onset))
        elif kind == "burst":
            seg.noise[a:b] += 10 ** (-10.0 / 20) * raised_cosine(span, int(1 * ms), int(4 * ms))
            seg.noise_centres.append(0.5 * (a + b))
            seg.noise_kinds.append(NOISE_KINDS.index(syl.onset))
        elif kind == "asp":
            seg.aspiration[a:b] += 10 ** (-14.0 / 20) * raised_cosine(span, int(3 * ms), int(10 * ms))
        elif kind == "nasal":
            seg.voicing[a:b] += 10 ** (-9.0 / 20) * raised_cosine(span, int(10 * ms), int(5 * ms))
            targets = np.array(NASALS[syl.onset])
            seg.knot_times += [a + 0.3 * span, a + 0.7 * span]
            seg.knot_formants += [targets, targets]
        elif kind == "vowel":
            gain = 10 ** ((2.5 if syl.stressed else 0.0) / 20)
            seg.voicing[a:b] += gain * raised_cosine(span, int(attack_ms * ms), int(40 * ms))
            # Unstressed and fast vowels undershoot their targets towards schwa
            # (Lindblom 1963); every token also varies a little.
            reduction = (0.0 if syl.stressed else 0.3) + float(np.clip(0.4 * (rate - 1.0), 0.0, 0.2))
            targets = np.array(VOWELS[syl.vowel]) * np.exp(rng.normal(0.0, 0.03, 4))
            targets = (1.0 - reduction) * targets + reduction * SCHWA
            seg.knot_times += [a + 0.25 * span, a + 0.75 * span]
            seg.knot_formants += [targets, targets]
            if syl.stressed:
                seg.accents.append((0.5 * (a + b), 0.35 * span + 0.03 * sr))
    if not seg.knot_times:  # degenerate (tiny duration): one schwa so the filter is defined
        seg.knot_times, seg.knot_formants = [n / 2.0], [SCHWA.copy()]
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
    if emotion not in PROFILES:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {SYNTH_EMOTIONS}")
    if not 0.0 < min_duration <= max_duration:
        raise ValueError(f"need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be >= 8000 Hz, not {sample_rate}")
    prof = PROFILES[emotion]
    e = voice.expressiveness
    sr = sample_rate

    # Per-utterance realisation: the emotion's effect scaled by the speaker's
    # expressiveness, plus random variation of every cue.
    f0_mean = voice.f0 * scaled(prof.f0, e) * math.exp(rng.normal(0.0, 0.05))
    range_st = voice.pitch_range * scaled(prof.f0_range, e) * math.exp(rng.normal(0.0, 0.2))
    rate = voice.rate * scaled(prof.rate, e) * math.exp(rng.normal(0.0, 0.06))
    level_db = NEUTRAL_LEVEL_DBFS + voice.level_db + e * prof.level_db + rng.normal(0.0, 1.5)
    tilt = BASE_TILT_DB_OCT + e * prof.tilt_db_oct + rng.normal(0.0, 1.0)
    modal = PROFILES["neutral"]
    oq = modal.open_quotient + e * (prof.open_quotient - modal.open_quotient) + rng.normal(0.0, 0.03)
    oq = float(np.clip(oq, 0.35, 0.85))
    sq = modal.speed_quotient * scaled(prof.speed_quotient / modal.speed_quotient, e)
    sq = float(np.clip(sq * math.exp(rng.normal(0.0, 0.1)), 1.1, 4.0))
    breath = voice.breathiness * scaled(prof.breath, e) * math.exp(rng.normal(0.0, 0.25))
    jitter = voice.jitter * scaled(prof.jitter, e) * math.exp(rng.normal(0.0, 0.2))
    shimmer = voice.shimmer * math.exp(rng.normal(0.0, 0.2))
    fscale = voice.formant_scale * scaled(prof.formant, e) * math.exp(rng.normal(0.0, 0.01))
    f1_factor = scaled(prof.f1, e)
    attack_ms = prof.attack_ms * math.exp(rng.normal(0.0, 0.2))
    pause = scaled(prof.pause, e)

    plan, nominal = text_plan(text_seed)
    u = float(np.clip(nominal + rng.normal(0.0, 0.08), 0.02, 0.98)) ** rate  # slow speech -> longer
    n = int(round((min_duration + u * (max_duration - min_duration)) * sr))
    seg = _lay_out(plan, n, sr, rate, pause, attack_ms, rng)

    # Source: glottal pulses + pulsed aspiration (turbulence while the glottis is open).
    f0 = _f0_contour(n, sr, f0_mean, range_st, seg, prof.final_rise, rng)
    pulses, open_phase = glottal_source(f0, oq, sq, jitter, shimmer, rng, sr)
    asp_noise = rng.standard_normal(n)
    aspiration = asp_noise * (breath * (0.3 + 0.7 * open_phase) * seg.voicing + seg.aspiration)
    energy_decl = 10 ** (-3.0 * np.arange(n) / max(n, 1) / 20.0)  # loudness falls over an utterance
    pulses = pulses * seg.voicing * energy_decl

    # Vocal tract: formant trajectories per frame, the resonator cascade, and the
    # voice-quality tilt on the glottal pulses only (aspiration keeps its flat source).
    framing = Framing.for_signal(n, sr)
    freqs_hz = np.fft.rfftfreq(framing.nfft, 1.0 / sr)
    omega = 2.0 * np.pi * freqs_hz / sr
    order = np.argsort(seg.knot_times, kind="stable")
    knot_t = np.asarray(seg.knot_times)[order]
    knot_f = np.asarray(seg.knot_formants)[order] * fscale
    knot_f[:, 0] *= f1_factor
    formants = np.stack([np.interp(framing.centres, knot_t, knot_f[:, k]) for k in range(4)], axis=1)
    formants = np.minimum(formants, 0.45 * sr)
    bandwidths = list(BANDWIDTHS * np.array([1.0 + 2.0 * breath, 1.0, 1.0, 1.0]))  # breathy: glottal losses widen B1
    higher = [(f * fscale, bw) for f, bw in HIGHER_FORMANTS if f * fscale < 0.45 * sr]
    if higher:
        formants = np.concatenate([formants, np.tile([f for f, _ in higher], (formants.shape[0], 1))], axis=1)
        bandwidths += [bw for _, bw in higher]
    bws = np.broadcast_to(np.asarray(bandwidths), formants.shape)
    tract = resonator_cascade(formants, bws, omega, sr)
    tilt_gain = 10 ** (tilt / 20.0 * np.log2(np.maximum(freqs_hz, 500.0) / 500.0))
    voiced = framing.synthesise(framing.analyse(pulses) * (tract * tilt_gain) + framing.analyse(aspiration) * tract)

    active = seg.voicing > 0.3
    ref = math.sqrt(float(np.mean(voiced[active] ** 2))) if active.any() else 1.0
    voiced /= ref + 1e-12
    out = voiced
    if seg.noise_centres:
        table = noise_shape_table(freqs_hz, math.sqrt(fscale), sr / 2.0)
        centres = np.asarray(seg.noise_centres)
        kinds = np.asarray(seg.noise_kinds)
        # Each frame takes the spectrum of the nearest obstruent.
        nearest = np.abs(framing.centres[:, None] - centres[None, :]).argmin(axis=1)
        shaped = framing.analyse(rng.standard_normal(n) * seg.noise) * table[kinds[nearest]]
        out = out + framing.synthesise(shaped)

    out *= 10 ** (level_db / 20.0)
    out += 10 ** (NOISE_FLOOR_DB / 20.0) * rng.standard_normal(n)  # recording noise floor
    # Soft limiter: loud (angry) peaks saturate smoothly below full scale.
    mag = np.abs(out)
    knee = 0.9
    out = np.where(mag > knee, np.sign(out) * (knee + (1.0 - knee) * np.tanh((mag - knee) / (1.0 - knee))), out)
    return np.clip(out, -1.0, 1.0).astype(np.float32)
