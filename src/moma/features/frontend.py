"""The acoustic front end: Kaldi-compatible log-Mel filterbanks, optional pitch and openSMILE descriptors.

Features are Kaldi-compatible log-Mel filterbanks computed by
``kaldi_native_fbank`` (the paper's front end: 23 bins, 25 ms windows, 10 ms
hop). Optional columns follow the Mel bins: Praat pitch (``features.pitch``)
and openSMILE low-level descriptors (``features.lld``), each aligned to the
filterbank frame centres. :func:`feature_config_hash` names a configuration
for the cache (:mod:`moma.features.cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import get_type_hints

import kaldi_native_fbank as knf
import numpy as np

from moma.capabilities import require_extra
from moma.config import FeatureConfig
from moma.features.encoders import check_frontend, encoder_frames, frontend_identity

log = logging.getLogger(__name__)

INT16_SCALE = 32768.0  # Kaldi computes features on int16-range samples


# --------------------------------------------------------------------------- filterbanks

def _fbank_options(cfg: FeatureConfig) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    fo = opts.frame_opts
    fo.samp_freq = float(cfg.sample_rate)
    fo.frame_length_ms = float(cfg.frame_length_ms)
    fo.frame_shift_ms = float(cfg.frame_shift_ms)
    fo.dither = float(cfg.dither)
    fo.preemph_coeff = float(cfg.preemphasis)
    fo.window_type = str(cfg.window_type)
    fo.snip_edges = bool(cfg.snip_edges)
    mo = opts.mel_opts
    mo.num_bins = int(cfg.n_mels)
    mo.low_freq = float(cfg.low_freq)
    mo.high_freq = float(cfg.high_freq)
    return opts


def _window_sizes(cfg: FeatureConfig) -> tuple[int, int]:
    """(window length, window shift) in samples, rounded exactly as Kaldi does.

    Kaldi stores the rate and durations as 32-bit floats and truncates
    ``samp_freq * 0.001 * ms`` (double arithmetic); mirroring that keeps
    :func:`num_frames` equal to the extractor's count for odd settings too.
    """
    sr = float(np.float32(cfg.sample_rate))
    length = int(sr * 0.001 * float(np.float32(cfg.frame_length_ms)))
    shift = int(sr * 0.001 * float(np.float32(cfg.frame_shift_ms)))
    return length, shift


def num_frames(num_samples: int, cfg: FeatureConfig) -> int:
    """Number of feature frames Kaldi produces for ``num_samples`` samples.

    With ``snip_edges`` only windows lying wholly inside the signal count;
    without it frames are centred every shift and the count is
    ``(n + shift // 2) // shift``. Frame ``i`` starts at ``i * shift`` samples
    (snip_edges), which is how attention weights map back to time.
    """
    length, shift = _window_sizes(cfg)
    if cfg.snip_edges:
        return 0 if num_samples < length else 1 + (num_samples - length) // shift
    return (num_samples + shift // 2) // shift


def compute_fbank(signal: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log-Mel filterbanks of a 1-D float signal in [-1, 1] at ``cfg.sample_rate``.

    Returns float32 of shape ``(frames, cfg.n_mels)``. Deterministic when
    ``cfg.dither == 0``. Raises ValueError if the signal is shorter than one
    analysis window.
    """
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"compute_fbank expects a 1-D signal, got shape {x.shape}")
    length, _ = _window_sizes(cfg)
    if x.shape[0] < length:
        raise ValueError(f"signal of {x.shape[0]} samples is shorter than one {cfg.frame_length_ms:g} ms "
                         f"analysis window ({length} samples at {cfg.sample_rate} Hz)")
    fbank = knf.OnlineFbank(_fbank_options(cfg))
    # Kaldi's filterbank energies (and so the log floor) assume int16-scaled samples.
    fbank.accept_waveform(float(cfg.sample_rate), np.ascontiguousarray(x * INT16_SCALE, dtype=np.float32))
    fbank.input_finished()
    n = fbank.num_frames_ready
    # kaldi_native_fbank 1.23 has no batch getter; measured on a 60 s signal,
    # collecting frames this way costs ~3 ms against ~57 ms of computation,
    # and np.stack copies out of the extractor-owned buffers.
    return np.stack([fbank.get_frame(i) for i in range(n)]).astype(np.float32, copy=False)


def frame_centres(n_frames: int, cfg: FeatureConfig) -> np.ndarray:
    """Centre of each filterbank frame in seconds, shape ``(n_frames,)``: Kaldi frame i covers
    [i * shift, i * shift + length), so features from other trackers are interpolated onto these times."""
    return (np.arange(n_frames) * cfg.frame_shift_ms + cfg.frame_length_ms / 2.0) / 1000.0


def compute_pitch(signal: np.ndarray, cfg: FeatureConfig, n_frames: int) -> np.ndarray:
    """Log F0 and voicing strength at the centre of each filterbank frame, shape ``(n_frames, 2)``.

    F0 is what 23 Mel bands blur away (harmonics are not resolved), yet pitch
    level and range are among the strongest acoustic cues to emotion. Praat's
    autocorrelation tracker (through ``praat-parselmouth``) gives F0 every
    10 ms; unvoiced frames get log F0 interpolated between voiced neighbours
    (continuous, as Kaldi's pitch feature is) and voicing strength 0.
    """
    import parselmouth

    snd = parselmouth.Sound(np.asarray(signal, dtype=np.float64), sampling_frequency=float(cfg.sample_rate))
    pitch = snd.to_pitch_ac(time_step=cfg.frame_shift_ms / 1000.0, pitch_floor=cfg.pitch_floor,
                            pitch_ceiling=cfg.pitch_ceiling)
    times = np.asarray(pitch.xs(), dtype=np.float64)
    f0 = np.asarray(pitch.selected_array["frequency"], dtype=np.float64)
    strength = np.asarray(pitch.selected_array["strength"], dtype=np.float64)
    voiced = f0 > 0
    centres = frame_centres(n_frames, cfg)
    if voiced.sum() >= 1 and times.size:
        log_f0 = np.interp(centres, times[voiced], np.log(f0[voiced]))
    else:  # no voiced frame at all: a constant at the floor keeps the feature defined
        log_f0 = np.full(n_frames, np.log(cfg.pitch_floor))
    voicing = np.interp(centres, times, np.where(voiced, strength, 0.0)) if times.size else np.zeros(n_frames)
    return np.stack([log_f0, voicing], axis=1).astype(np.float32)  # [T, 2]


# openSMILE low-level descriptor sets: name -> (feature set, dimensions per frame)
LLD_SETS = {"egemaps": ("eGeMAPSv02", 25), "compare": ("ComParE_2016", 65)}


def compute_lld(signal: np.ndarray, cfg: FeatureConfig, n_frames: int) -> np.ndarray:
    """openSMILE low-level descriptors at the centre of each filterbank frame, shape ``(n_frames, dims)``.

    The classical anchors (functionals of these descriptors + SVM) beat a
    BLSTM on 23 log-Mel bands on small corpora; the descriptors carry voice
    quality (jitter, shimmer, HNR, spectral slopes, formants) that the Mel
    bands blur. Appending them per frame lets MOMA pool them with its own
    attention instead of fixed functionals. openSMILE's frames also hop 10 ms
    but start at 0 with their own window lengths, so each column is linearly
    interpolated onto the Kaldi frame centres.
    """
    opensmile = require_extra("opensmile", "classical", f"features.lld={cfg.lld}")
    dims = lld_dim(cfg)
    name = LLD_SETS[cfg.lld][0]
    smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, name),
                            feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    frame = smile.process_signal(np.asarray(signal, dtype=np.float32), cfg.sample_rate)
    values = frame.to_numpy(dtype=np.float64)  # [T_smile, dims]
    if values.shape[0] == 0:
        return np.zeros((n_frames, dims), dtype=np.float32)
    starts = frame.index.get_level_values("start").total_seconds().to_numpy()
    ends = frame.index.get_level_values("end").total_seconds().to_numpy()
    src_centres = (starts + ends) / 2.0
    centres = frame_centres(n_frames, cfg)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.stack([np.interp(centres, src_centres, values[:, j]) for j in range(values.shape[1])], axis=1)
    return out.astype(np.float32)  # [T, dims]


def compute_features(signal: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The model's input features, shape (frames, dims): log-Mel filterbanks, then pitch (log F0, voicing)
    when ``cfg.pitch``, then openSMILE low-level descriptors when ``cfg.lld`` names a set; or, with
    ``cfg.frontend`` ge2e / ssl, a pretrained encoder's outputs on the same frames (:mod:`.encoders`)."""
    if cfg.frontend != "fbank":
        check_frontend(cfg)
        length, _ = _window_sizes(cfg)
        if np.asarray(signal).shape[0] < length:
            raise ValueError(f"signal of {np.asarray(signal).shape[0]} samples is shorter than one "
                             f"{cfg.frame_length_ms:g} ms analysis window ({length} samples at {cfg.sample_rate} Hz)")
        return encoder_frames(np.asarray(signal, dtype=np.float32), cfg, num_frames(len(signal), cfg))
    fbank = compute_fbank(signal, cfg)
    parts = [fbank]
    if cfg.pitch:
        parts.append(compute_pitch(signal, cfg, fbank.shape[0]))
    if cfg.lld != "none":
        parts.append(compute_lld(signal, cfg, fbank.shape[0]))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def lld_dim(cfg: FeatureConfig) -> int:
    """Dimensions that ``cfg.lld`` appends per frame (0 for none); an unknown set name is a ValueError."""
    if cfg.lld == "none":
        return 0
    if cfg.lld not in LLD_SETS:
        raise ValueError(f"features.lld: unknown set {cfg.lld!r}; choose none, {', '.join(LLD_SETS)}")
    return LLD_SETS[cfg.lld][1]


def feature_dim(cfg: FeatureConfig) -> int:
    return cfg.n_mels + (2 if cfg.pitch else 0) + lld_dim(cfg)


def frame_feature_settings(cfg: FeatureConfig) -> dict:
    """The settings the frame features depend on: every option but ``functionals`` and ``functionals_level``
    (utterance functionals have their own cache, so a fusion model shares the frame cache of the same front
    end)."""
    data = asdict(cfg)
    del data["functionals"], data["functionals_level"]
    return data


def feature_config_hash(cfg: FeatureConfig) -> str:
    """Short stable hash of a feature configuration (12 hex chars of SHA-1 of sorted JSON).

    Values of float fields are written as floats, so ``frame_length_ms=25``
    and ``frame_length_ms=25.0`` name the same cache.
    """
    hints = get_type_hints(type(cfg))
    data = frame_feature_settings(cfg)
    for key, value in data.items():
        if hints.get(key) is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
    if data.get("lld") == "none":
        # added after caches existed: leaving the default out keeps their hashes (and entries) valid
        del data["lld"]
    for key in ("frontend", "ge2e_layer", "ssl_model", "ssl_layers"):  # the same for the front-end options
        del data[key]
    data.update(frontend_identity(cfg))  # {} for fbank; else the encoder, its layers and its weights' sha256
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:12]
