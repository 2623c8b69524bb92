"""moma.features.functionals: openSMILE functionals per utterance, cached, for the anchor and fusion models."""

import subprocess
import sys

import numpy as np
import pytest

import moma.features.functionals as functionals
from moma.corpora.base import Utterance


def test_functionals_dim_names_the_sets_and_refuses_others():
    assert functionals.functionals_dim("none") == 0
    assert functionals.functionals_dim("eGeMAPSv02") == 88
    assert functionals.functionals_dim("ComParE_2016") == 6373
    with pytest.raises(ValueError, match="unknown openSMILE feature set 'GeMAPS'; choose none, eGeMAPSv02"):
        functionals.functionals_dim("GeMAPS")


def test_functionals_live_beside_the_frame_feature_cache(tmp_path):
    assert functionals.functionals_cache_dir("cache/features").as_posix() == "cache/opensmile"
    assert functionals.extract_run_functionals("none", [], tmp_path) is None


def test_importing_functionals_does_not_import_torch():
    code = "import sys, moma.features.functionals; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_opensmile_egemaps_on_a_tone(tmp_path, monkeypatch):
    pytest.importorskip("opensmile")
    import soundfile as sf

    t = np.arange(16000) / 16000.0
    tone = (0.3 * np.sin(2 * np.pi * 220.0 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    values = functionals.compute_functionals(tone, "eGeMAPSv02")
    assert values.shape == (88,) and values.dtype == np.float32
    assert np.isfinite(values).all()
    # through a file and the cache: a second call loads without computing
    wav = tmp_path / "tone.wav"
    sf.write(wav, tone, 16000, subtype="FLOAT")
    utt = Utterance(id="tone", path=str(wav), speaker="x", label="neutral")
    first = functionals.extract_functionals([utt], "eGeMAPSv02", cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(first["tone"], values, rtol=1e-5, atol=1e-5)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    assert functionals.count_cached([utt], "eGeMAPSv02", tmp_path / "cache") == 0  # no sha1 on the utterance
    monkeypatch.setattr(functionals, "compute_functionals", lambda *a, **k: pytest.fail("cache miss"))
    second = functionals.extract_functionals([utt], "eGeMAPSv02", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first["tone"], second["tone"])
