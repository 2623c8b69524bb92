"""Uploaded audio as the service receives it: bytes in any container a browser or a client sends.

libsndfile reads WAV, FLAC, OGG and MP3; what it does not recognise goes to PyAV
(FFmpeg), which reads what browsers record (WebM/Opus, MP4/AAC). A waveform
envelope is computed for the page's plot.
"""

from __future__ import annotations

import io

import numpy as np

from moma.audio.io import AudioError, load_audio, prepare_signal


class UnsupportedAudio(AudioError):
    """Audio whose container or codec no decoder here understands (HTTP 415, not 422)."""


def decode_audio_bytes(data: bytes, sample_rate: int, *, name: str = "<upload>", min_duration: float = 0.025,
                       max_duration_s: float = 0.0) -> np.ndarray:
    """Decode uploaded bytes to mono float32 at ``sample_rate``.

    libsndfile first (WAV, FLAC, OGG, MP3 ...); what it does not recognise goes
    to PyAV (FFmpeg), which reads what browsers record (WebM/Opus, MP4/AAC).
    Raises :class:`UnsupportedAudio` when neither can decode the bytes and
    :class:`AudioError` for decodable but unusable audio (too short, too long,
    NaN). ``max_duration_s`` > 0 bounds the decoded length, so a small,
    highly compressed upload cannot expand into gigabytes.
    """
    if not data:
        raise AudioError(name, "empty upload")
    try:
        with_sf = _soundfile_duration(data)
    except AudioError:
        with_sf = None
    if with_sf is not None:
        if max_duration_s > 0 and with_sf > max_duration_s:
            raise AudioError(name, f"too long: {with_sf:.1f} s exceeds the {max_duration_s:g} s limit")
        return load_audio(data, sample_rate, name=name, min_duration=min_duration)
    signal = _decode_with_av(data, sample_rate, name, max_duration_s)
    return prepare_signal(signal, sample_rate, sample_rate, name=name, min_duration=min_duration)


def _soundfile_duration(data: bytes) -> float:
    from moma.audio.io import audio_info

    duration, _, _ = audio_info(data)
    return duration


def _decode_with_av(data: bytes, sample_rate: int, name: str, max_duration_s: float) -> np.ndarray:
    try:
        import av
    except ImportError:  # PyAV is optional: without it only libsndfile formats are accepted
        raise UnsupportedAudio(name, "not a recognised audio format (install PyAV to read WebM/Opus)") from None
    pieces: list[np.ndarray] = []
    total = 0
    limit = int(max_duration_s * sample_rate) if max_duration_s > 0 else 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise UnsupportedAudio(name, "no audio stream in the upload")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    pieces.append(arr)
                    total += arr.shape[0]
                if limit and total > limit:
                    raise AudioError(name, f"too long: exceeds the {max_duration_s:g} s limit")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    except AudioError:
        raise
    except Exception as exc:  # PyAV raises many FFmpeg error types (InvalidDataError, ValueError ...)
        raise UnsupportedAudio(name, f"not a recognised or decodable audio format ({type(exc).__name__})") from None
    if not pieces:
        raise AudioError(name, "no samples")
    return np.concatenate(pieces)


def waveform_envelope(signal: np.ndarray, points: int = 800) -> list[list[float]]:
    """[min, max] pairs over ``points`` equal slices of a signal: enough to draw its waveform."""
    n = signal.shape[0]
    points = max(1, min(points, n))
    edges = np.linspace(0, n, points + 1).astype(np.int64)
    return [[round(float(signal[a:b].min()), 4), round(float(signal[a:b].max()), 4)]
            for a, b in zip(edges[:-1], edges[1:]) if b > a]
