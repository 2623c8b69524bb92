"""Tests for moma.audio.io: every format in, one kind of signal out, clear errors for bad input."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import moma.audio.io as audio
from moma.audio.io import AudioError, audio_info, file_sha1, iter_audio_blocks, load_audio, prepare_signal, resample

SR = 16000


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def write_or_skip(path: Path, data: np.ndarray, sr: int, fmt: str, subtype: str) -> None:
    try:
        sf.write(path, data, sr, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        pytest.skip(f"libsndfile cannot write {fmt}/{subtype} here: {exc}")


# (format, subtype, extension, lossless)
FORMATS = [
    ("WAV", "PCM_U8", "wav", True),
    ("WAV", "PCM_16", "wav", True),
    ("WAV", "PCM_24", "wav", True),
    ("WAV", "PCM_32", "wav", True),
    ("WAV", "FLOAT", "wav", True),
    ("FLAC", "PCM_16", "flac", True),
    ("AIFF", "PCM_16", "aiff", True),
    ("OGG", "VORBIS", "ogg", False),
    ("OGG", "OPUS", "opus", False),
    ("MP3", "MPEG_LAYER_III", "mp3", False),
]


@pytest.mark.parametrize("fmt,subtype,ext,lossless", FORMATS, ids=[f"{f[0]}-{f[1]}" for f in FORMATS])
def test_every_format_loads_as_float32_mono_16k(tmp_path: Path, fmt: str, subtype: str, ext: str,
                                                lossless: bool) -> None:
    ref = sine(440, 1.0, SR)
    path = tmp_path / f"tone.{ext}"
    write_or_skip(path, ref, SR, fmt, subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    if lossless:
        assert len(x) == len(ref)
        assert np.corrcoef(x, ref)[0, 1] > 0.99
        assert np.max(np.abs(x - ref)) < 1.0 / 64  # 8-bit is the coarsest quantiser here
    else:
        # Codecs add priming/padding; the tone must survive even if alignment shifts.
        assert abs(len(x) - len(ref)) <= 1200
        assert abs(peak_hz(x, SR) - 440) <= 2
        rms = float(np.sqrt(np.mean(x[1600:-1600] ** 2)))
        assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_bytes_and_file_objects_load_like_paths(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    sf.write(path, sine(300, 0.5, 22050), 22050)
    from_path = load_audio(path)
    raw = path.read_bytes()
    np.testing.assert_array_equal(load_audio(raw), from_path)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(load_audio(fh), from_path)
    np.testing.assert_array_equal(load_audio(io.BytesIO(raw)), from_path)


@pytest.mark.parametrize("orig_sr", [44100, 8000])
def test_resampling_keeps_frequency_and_length(tmp_path: Path, orig_sr: int) -> None:
    path = tmp_path / f"tone_{orig_sr}.wav"
    sf.write(path, sine(1000, 1.0, orig_sr), orig_sr, subtype="PCM_16")
    x = load_audio(path)
    assert abs(len(x) - SR) <= 1
    assert abs(peak_hz(x, SR) - 1000) <= 1
    assert audio_info(path) == (pytest.approx(1.0), orig_sr, 1)


def test_resampler_filters_content_above_new_nyquist() -> None:
    # A 10 kHz tone cannot exist at 16 kHz. A band-limited resampler removes
    # it; linear interpolation would alias it to 6 kHz at a high level.
    tone = sine(10000, 0.5, 44100)
    out = resample(tone, 44100, SR)
    assert len(out) == SR // 2
    assert float(np.sqrt(np.mean(out[200:-200] ** 2))) < 5e-3


def test_stereo_is_downmixed_to_the_channel_mean(tmp_path: Path) -> None:
    left = sine(440, 0.5, SR)
    right = sine(1000, 0.5, SR, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)
    assert audio_info(path)[2] == 2


def test_prepare_signal_scales_integers_by_dtype() -> None:
    pcm16 = np.full((800, 2), 16384, dtype=np.int16)
    np.testing.assert_allclose(prepare_signal(pcm16, SR), 0.5)
    u8 = np.full(800, 192, dtype=np.uint8)  # 128 is silence for unsigned 8-bit
    np.testing.assert_allclose(prepare_signal(u8, SR), 0.5)
    i32 = np.full(800, -(2**31), dtype=np.int32)
    np.testing.assert_allclose(prepare_signal(i32, SR), -1.0)
    out = prepare_signal(np.ones(4410, dtype=np.float64), 44100)
    assert out.dtype == np.float32 and out.ndim == 1 and len(out) == 1600


def _missing(tmp: Path) -> Path:
    return tmp / "absent.wav"


def _random_bytes(tmp: Path) -> Path:
    path = tmp / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _truncated_header(tmp: Path) -> Path:
    full = tmp / "full.wav"
    sf.write(full, sine(440, 0.5, SR), SR, subtype="PCM_16")
    path = tmp / "truncated.wav"
    path.write_bytes(full.read_bytes()[:20])
    return path


def _zero_samples(tmp: Path) -> Path:
    path = tmp / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    return path


def _ten_ms(tmp: Path) -> Path:
    path = tmp / "short.wav"
    sf.write(path, sine(440, 0.010, SR), SR)
    return path


def _nan(tmp: Path) -> Path:
    path = tmp / "nan.wav"
    x = sine(440, 0.5, SR)
    x[100] = np.nan
    sf.write(path, x, SR, subtype="FLOAT")
    return path


BAD_INPUTS = [
    (_missing, "file not found"),
    (_random_bytes, "not a recognised audio format"),
    (_truncated_header, "truncated or malformed audio header"),
    (_zero_samples, "no samples"),
    (_ten_ms, "shorter than one 25 ms analysis window"),
    (_nan, "contains NaN or infinite samples"),
]


@pytest.mark.parametrize("make,reason", BAD_INPUTS, ids=[m.__name__.strip("_") for m, _ in BAD_INPUTS])
def test_bad_input_raises_one_line_audio_error(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    err = info.value
    message = str(err)
    assert isinstance(err, ValueError)
    assert message.startswith(f"{path}: ")
    assert reason in message and reason in err.reason
    assert err.path == str(path)
    assert "\n" not in message
    # Bad input is the user's problem, not a bug: no chained library traceback.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_bad_input_errors_in_audio_info(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="file not found"):
        audio_info(tmp_path / "absent.flac")
    with pytest.raises(AudioError, match="not a recognised audio format"):
        audio_info(_random_bytes(tmp_path))


def test_bad_bytes_are_named_by_the_caller() -> None:
    with pytest.raises(AudioError, match=r"^upload\.wav: not a recognised audio format"):
        load_audio(b"definitely not audio" * 10, name="upload.wav")
    with pytest.raises(AudioError, match=r"^<bytes>: "):
        load_audio(b"definitely not audio" * 10)


def test_audio_error_survives_pickling() -> None:
    # Worker processes send errors back pickled; the two-argument constructor must round-trip.
    err = pickle.loads(pickle.dumps(AudioError("a.wav", "no samples")))
    assert isinstance(err, AudioError) and err.path == "a.wav" and err.reason == "no samples"
    assert str(err) == "a.wav: no samples"


def test_digital_silence_warns_but_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), SR, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="moma.audio.io"):
        x = load_audio(path)
    assert len(x) == 8000 and not np.any(x)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "moma.audio.io"]
    assert len(warnings) == 1 and "all zeros" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()


def test_region_reads_only_the_selected_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x, SR, subtype="FLOAT")

    requested: list[int] = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):  # type: ignore[no-untyped-def]
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    np.testing.assert_array_equal(load_audio(path, start=1.0, end=2.0), x[SR:2 * SR])
    assert requested == [SR]  # one read of exactly the region, not the whole file
    np.testing.assert_array_equal(load_audio(path, start=2.5), x[int(2.5 * SR):])
    np.testing.assert_array_equal(load_audio(path, end=0.5), x[:SR // 2])
    # An end past the file is clipped to the file.
    np.testing.assert_array_equal(load_audio(path, start=2.0, end=9.0), x[2 * SR:])


def test_invalid_regions_raise(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    sf.write(path, sine(440, 1.0, SR), SR)
    with pytest.raises(AudioError, match="beyond the end of the file"):
        load_audio(path, start=5.0)
    with pytest.raises(AudioError, match="not after start"):
        load_audio(path, start=0.5, end=0.2)
    with pytest.raises(AudioError, match="shorter than one"):
        load_audio(path, start=0.5, end=0.51)


def test_audio_info_reads_the_header(tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    sf.write(path, np.zeros((22050 * 2, 2), dtype=np.float32) + 0.1, 22050)
    assert audio_info(path) == (pytest.approx(2.0), 22050, 2)


def test_file_sha1_matches_hashlib_across_blocks(tmp_path: Path) -> None:
    data = np.random.default_rng(2).bytes(int(2.5 * (1 << 20)))  # spans three 1 MiB blocks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha1(path) == hashlib.sha1(data).hexdigest()
    with pytest.raises(AudioError, match="file not found"):
        file_sha1(tmp_path / "absent.wav")


@pytest.mark.parametrize("file_sr,channels", [(44100, 2), (16000, 1)])
def test_iter_audio_blocks_concatenates_to_load_audio(tmp_path: Path, file_sr: int, channels: int) -> None:
    rng = np.random.default_rng(3)
    x = (0.2 * rng.standard_normal((int(3.3 * file_sr), channels))).astype(np.float32)
    path = tmp_path / f"long_{file_sr}.wav"
    sf.write(path, x, file_sr, subtype="FLOAT")
    blocks = list(iter_audio_blocks(path, 1.0))
    starts = [s for s, _ in blocks]
    lengths = [len(b) for _, b in blocks]
    assert starts == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert lengths[:3] == [SR] * 3 and abs(lengths[3] - int(0.3 * SR)) <= 1
    assert all(b.dtype == np.float32 and b.ndim == 1 for _, b in blocks)
    np.testing.assert_allclose(np.concatenate([b for _, b in blocks]), load_audio(path), atol=1e-4)


def test_iter_audio_blocks_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="file not found"):
        list(iter_audio_blocks(tmp_path / "absent.wav", 1.0))
    with pytest.raises(AudioError, match="NaN"):
        list(iter_audio_blocks(_nan(tmp_path), 0.1))
    with pytest.raises(ValueError):
        list(iter_audio_blocks(_ten_ms(tmp_path), 0.0))


def test_sample_rate_constant() -> None:
    assert audio.SAMPLE_RATE == 16000
