"""One audio loader for every way audio enters moma.

Corpus files, regions of long recordings, uploaded bytes and in-memory arrays
all pass through the same validation, down-mixing and resampling, so a model
never sees a signal prepared differently at training and at inference time.

Everything is decoded by libsndfile (through ``soundfile``): WAV in any
integer or float encoding, FLAC, OGG/Vorbis, OGG/Opus, AIFF, MP3 and the rest
of what libsndfile reads. Resampling uses soxr at "HQ" quality; linear
interpolation is never used because it aliases and dulls the spectrum that the
filterbank features are computed from.

Bad input raises :class:`AudioError`, whose message is a single line naming
the file and the reason, so a command-line user sees what is wrong with which
file instead of a libsndfile traceback.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Union

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz; the rate every model input is resampled to
MIN_DURATION = 0.025  # s; one 25 ms analysis window, the shortest signal that yields a feature frame
RESAMPLE_QUALITY = "HQ"  # soxr quality recipe
_SHA1_BLOCK = 1 << 20  # bytes read at a time by file_sha1

AudioSource = Union[str, Path, bytes, bytearray, memoryview, IO[bytes]]

# libsndfile error codes (sndfile.h) that deserve their own wording.
_SF_ERR_UNRECOGNISED_FORMAT = 1
_SF_ERR_SYSTEM = 2


class AudioError(ValueError):
    """Audio that cannot be used, with a one-line message ``"<file>: <reason>"``.

    ``path`` is the file name or path (or a stand-in such as ``"<bytes>"`` for
    in-memory input) and ``reason`` says what is wrong with it.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        # A multi-line reason (libsndfile sometimes ends messages with "\n")
        # would break the one-line promise that log files and CLIs rely on.
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Exceptions are pickled by their ``args``; ours has two constructor
        # arguments, so spell them out or a worker process's error could not
        # be re-raised in the parent.
        return (type(self), (self.path, self.reason))


def _source_name(source: AudioSource, name: str | None) -> str:
    """A human name for error messages: the given name, the path, or a stand-in."""
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(source, "name", None) or "<stream>")


def _libsndfile_reason(exc: Exception) -> str:
    """Turn a soundfile/libsndfile exception into a short reason."""
    detail = str(getattr(exc, "error_string", "") or exc).strip()
    code = getattr(exc, "code", None)
    if code == _SF_ERR_UNRECOGNISED_FORMAT:
        return f"not a recognised audio format ({detail})"
    if code == _SF_ERR_SYSTEM:
        return f"cannot read the file ({detail})"
    if any(word in detail.lower() for word in ("unsupported", "not supported", "unimplemented", "unknown format")):
        return f"unsupported audio encoding ({detail})"
    # Any other libsndfile failure at open time means the container was
    # recognised but its header is damaged or cut short.
    return f"truncated or malformed audio header ({detail})"


def _open(source: AudioSource, name: str) -> sf.SoundFile:
    """Open ``source`` for reading with libsndfile, or raise :class:`AudioError`."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise AudioError(name, "file not found")
        if path.is_dir():
            raise AudioError(name, "is a directory, not an audio file")
        target: object = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        # libsndfile needs to seek; a non-seekable stream (e.g. a socket or an
        # upload pipe) is buffered into memory first.
        seekable = getattr(source, "seekable", None)
        target = source if callable(seekable) and seekable() else io.BytesIO(source.read())
    else:
        raise TypeError(f"audio source must be a path, bytes or a binary file object, not {type(source).__name__}")
    try:
        return sf.SoundFile(target)  # type: ignore[arg-type]
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(name, _libsndfile_reason(exc)) from None
    except OSError as exc:
        raise AudioError(name, f"cannot read the file ({exc.strerror or exc})") from None


def _int_to_float(signal: np.ndarray) -> np.ndarray:
    """Scale an integer array to [-1, 1] by its dtype's range (unsigned is offset first)."""
    info = np.iinfo(signal.dtype)
    half = 2.0 ** (info.bits - 1)
    data = signal.astype(np.float64)
    if info.min == 0:  # unsigned: silence sits at mid-range (e.g. 128 for uint8)
        data -= half
    return (data / half).astype(np.float32)


def resample(signal: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a 1-D (or (n, channels)) float signal from ``orig_sr`` to ``target_sr`` with soxr.

    The output has ``round(n * target_sr / orig_sr)`` samples and keeps its
    dtype when it is float32 or float64.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return signal
    return soxr.resample(signal, orig_sr, target_sr, quality=RESAMPLE_QUALITY)


def prepare_signal(signal: np.ndarray, sampling_rate: int, sample_rate: int = SAMPLE_RATE, *,
                   name: str = "<signal>", min_duration: float = MIN_DURATION) -> np.ndarray:
    """Validate, down-mix and resample an in-memory signal.

    ``signal`` has shape ``(n,)`` or ``(n, channels)``; integer arrays are
    scaled to [-1, 1] by their dtype. Returns a 1-D float32 array at
    ``sample_rate``. Raises :class:`AudioError` (named ``name``) for empty,
    too short or non-finite input; an all-zero signal is logged as a warning
    because digital silence is legal but almost always a data mistake.
    """
    data = np.asarray(signal)
    if data.ndim not in (1, 2):
        raise AudioError(name, f"expected shape (samples,) or (samples, channels), got {data.shape}")
    if sampling_rate <= 0:
        raise AudioError(name, f"invalid sampling rate {sampling_rate}")
    if data.dtype.kind in "iu":
        data = _int_to_float(data)
    elif data.dtype.kind == "f":
        data = data.astype(np.float32, copy=False)
    else:
        raise AudioError(name, f"unsupported sample type {data.dtype}")
    if data.shape[0] == 0 or data.size == 0:
        raise AudioError(name, "no samples")
    if not np.isfinite(data).all():
        raise AudioError(name, "contains NaN or infinite samples")
    if data.ndim == 2:
        # Mean (not sum) keeps the level of correlated channels unchanged.
        data = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    duration = data.shape[0] / sampling_rate
    if duration < min_duration:
        raise AudioError(name, f"too short: {duration * 1000:.1f} ms is shorter than one "
                               f"{min_duration * 1000:g} ms analysis window")
    if not np.any(data):
        log.warning("%s: signal is all zeros (digital silence)", name)
    out = resample(data, sampling_rate, sample_rate)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE, *, start: float = 0.0, end: float = 0.0,
               name: str | None = None, min_duration: float = MIN_DURATION) -> np.ndarray:
    """Load audio as a 1-D float32 mono signal at ``sample_rate``.

    ``source`` is a path, raw file bytes, or a binary file object. ``start``
    and ``end`` (seconds) select a region; ``end <= 0`` means the end of the
    file. Only the region is decoded, so a segment of an hour-long recording
    costs the segment, not the hour. ``name`` overrides the name used in
    error messages (useful for uploads). A (region of a) signal shorter than
    ``min_duration`` seconds, one analysis window, is rejected because it
    would give no feature frame. Raises :class:`AudioError`.
    """
    label = _source_name(source, name)
    if start < 0 or end < 0:
        raise AudioError(label, f"negative region bounds start={start} end={end}")
    if end > 0 and end <= start:
        raise AudioError(label, f"region end {end} s is not after start {start} s")
    with _open(source, label) as f:
        file_sr = f.samplerate
        first = int(round(start * file_sr))
        last = int(round(end * file_sr)) if end > 0 else f.frames
        last = min(last, f.frames)
        if f.frames > 0 and first >= f.frames:
            raise AudioError(label, f"region start {start} s is beyond the end of the file "
                                    f"({f.frames / file_sr:.3f} s)")
        try:
            if first > 0:
                f.seek(first)
            data = f.read(max(last - first, 0), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(label, f"cannot decode audio data ({getattr(exc, 'error_string', exc)})") from None
    return prepare_signal(data, file_sr, sample_rate, name=label, min_duration=min_duration)


def audio_info(path: AudioSource) -> tuple[float, int, int]:
    """``(duration seconds, sample rate, channels)`` from the header, without decoding the audio."""
    label = _source_name(path, None)
    with _open(path, label) as f:
        return f.frames / f.samplerate, int(f.samplerate), int(f.channels)


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file's bytes, read in 1 MiB blocks so memory stays flat."""
    p = Path(path)
    digest = hashlib.sha1()
    try:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(_SHA1_BLOCK), b""):
                digest.update(block)
    except FileNotFoundError:
        raise AudioError(p, "file not found") from None
    except OSError as exc:
        raise AudioError(p, f"cannot read the file ({exc.strerror or exc})") from None
    return digest.hexdigest()


def iter_audio_blocks(path: AudioSource, block_s: float,
                      sample_rate: int = SAMPLE_RATE) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(start_seconds, block)`` pairs covering a whole file, block by block.

    Each block is float32 mono at ``sample_rate`` and holds ``block_s``
    seconds (the last one may be shorter). The file is decoded with
    soundfile's ``blocks`` and resampled with one streaming soxr resampler, so
    memory stays flat for hour-long recordings and block edges are seamless:
    concatenating the blocks gives the same signal as :func:`load_audio`
    (up to resampler rounding).
    """
    if block_s <= 0:
        raise ValueError(f"block_s must be positive, got {block_s}")
    label = _source_name(path, None)
    out_len = max(1, int(round(block_s * sample_rate)))
    with _open(path, label) as f:
        file_sr = f.samplerate
        if f.frames == 0:
            raise AudioError(label, "no samples")
        stream = (soxr.ResampleStream(file_sr, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
                  if file_sr != sample_rate else None)
        # Read in the file's own rate, about one output block at a time.
        in_len = max(1, int(round(block_s * file_sr)))
        pending: list[np.ndarray] = []  # resampled samples not yet yielded
        pending_len = 0
        emitted = 0  # output samples yielded so far
        read = 0  # input frames consumed so far

        def take(final: bool) -> Iterator[tuple[float, np.ndarray]]:
            """Cut the pending samples into whole blocks (and the tail when ``final``)."""
            nonlocal pending, pending_len, emitted
            if not pending:
                return
            buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
            pos = 0
            while buf.shape[0] - pos >= out_len or (final and pos < buf.shape[0]):
                block = buf[pos:pos + out_len]
                yield emitted / sample_rate, np.ascontiguousarray(block, dtype=np.float32)
                emitted += block.shape[0]
                pos += block.shape[0]
            rest = buf[pos:]
            pending = [rest] if rest.shape[0] else []
            pending_len = rest.shape[0]

        try:
            for chunk in f.blocks(blocksize=in_len, dtype="float32", always_2d=True):
                if not np.isfinite(chunk).all():
                    raise AudioError(label, f"contains NaN or infinite samples (near {read / file_sr:.3f} s)")
                read += chunk.shape[0]
                mono = chunk.mean(axis=1, dtype=np.float32) if chunk.shape[1] > 1 else chunk[:, 0]
                out = stream.resample_chunk(mono, last=False) if stream is not None else mono
                if out.shape[0]:
                    pending.append(np.asarray(out, dtype=np.float32))
                    pending_len += out.shape[0]
                if pending_len >= out_len:
                    yield from take(final=False)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(label, f"cannot decode audio data ({getattr(exc, 'error_string', exc)})") from None
        if stream is not None:
            # Flush the resampler's look-ahead so the tail of the file is not lost.
            tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.shape[0]:
                pending.append(np.asarray(tail, dtype=np.float32))
                pending_len += tail.shape[0]
        yield from take(final=True)
