"""Upload decoding (moma.serving.uploads): libsndfile formats, browser WebM/Opus through PyAV, bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from helpers import make_webm_opus


def test_decode_audio_bytes(tmp_path):
    from moma.audio.io import AudioError
    from moma.serving.uploads import UnsupportedAudio, decode_audio_bytes

    buf = io.BytesIO()
    sf.write(buf, np.zeros(8000, dtype=np.float32) + 0.01, 8000, format="FLAC")
    sig = decode_audio_bytes(buf.getvalue(), 16000)
    assert sig.shape == (16000,)
    with pytest.raises(UnsupportedAudio):
        decode_audio_bytes(b"this is plain text, not audio at all" * 10, 16000)
    with pytest.raises(AudioError, match="too long"):
        decode_audio_bytes(buf.getvalue(), 16000, max_duration_s=0.5)
    with pytest.raises(AudioError, match="empty"):
        decode_audio_bytes(b"", 16000)


def test_decode_webm_opus_with_pyav():
    """What a browser's MediaRecorder uploads: Opus in WebM, which libsndfile cannot read."""
    av = pytest.importorskip("av")
    from moma.serving.uploads import decode_audio_bytes

    data = make_webm_opus(1.0)
    sig = decode_audio_bytes(data, 16000)
    assert abs(sig.shape[0] - 16000) < 400  # Opus pre-skip/padding may shift a few ms
    assert np.abs(sig).max() > 0.05
    del av
