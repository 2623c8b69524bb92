"""moma.features.functionals: openSMILE functionals per utterance, cached, for the anchor and fusion models."""

import subprocess
import sys

import numpy as np
import pytest

import moma.features.functionals as functionals
from moma.config import FeatureConfig
from moma.corpora.base import Utterance
from moma.features.frontend import feature_config_hash


def test_functionals_dim_names_the_sets_and_refuses_others():
    assert functionals.functionals_dim("none") == 0
    assert functionals.functionals_dim("eGeMAPSv02") == 88
    assert functionals.functionals_dim("ComParE_2016") == 6373
    with pytest.raises(ValueError, match="unknown openSMILE feature set 'GeMAPS'; choose none, eGeMAPSv02"):
        functionals.functionals_dim("GeMAPS")


def test_functionals_live_beside_the_frame_feature_cache(tmp_path):
    assert functionals.functionals_cache_dir("cache/features").as_posix() == "cache/opensmile"
    assert functionals.extract_run_functionals(FeatureConfig(), [], tmp_path) is None


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


def test_a_reused_engine_gives_process_signals_values(monkeypatch):
    """compute_functionals runs one openSMILE engine per thread, reset between signals: bit-identical to a fresh
    ``Smile.process_signal`` per signal, for signals of any length, both openSMILE sets, from two threads at
    once, across the engine's renewal; a signal too short for openSMILE gets process_signal's NaN."""
    pytest.importorskip("opensmile")
    import threading
    import warnings

    rng = np.random.default_rng(3)
    t = np.arange(48000) / 16000.0
    voice = (0.3 * np.sin(2 * np.pi * (150 + 40 * np.sin(2 * np.pi * 0.7 * t)) * t)).astype(np.float32)
    signals = [voice[:n] + rng.normal(scale=0.01, size=n).astype(np.float32) for n in (48000, 7000, 20000, 31000)]
    monkeypatch.setattr(functionals.SmileRunner, "RENEW", 3)  # a fresh engine after 3 signals

    def fresh(signal, feature_set):
        frame = functionals._smile(feature_set).process_signal(signal, 16000)
        return np.asarray(frame.values, dtype=np.float32).reshape(-1)

    for signal in signals:
        np.testing.assert_array_equal(functionals.compute_functionals(signal), fresh(signal, "eGeMAPSv02"))
    np.testing.assert_array_equal(functionals.compute_functionals(signals[1], "ComParE_2016"),
                                  fresh(signals[1], "ComParE_2016"))
    got: dict[int, list[np.ndarray]] = {}

    def worker(k):
        got[k] = [functionals.compute_functionals(s) for s in signals]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        for signal, values in zip(signals, got[k]):
            np.testing.assert_array_equal(values, fresh(signal, "eGeMAPSv02"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # process_signal says "Segment too short, filling with NaN."
        short = functionals.compute_functionals(voice[:400])
    assert np.isnan(short).all()
    np.testing.assert_array_equal(functionals.compute_functionals(signals[0]), fresh(signals[0], "eGeMAPSv02"))


def test_functionals_level_makes_them_independent_of_the_recording_gain(tmp_path):
    pytest.importorskip("opensmile")
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000.0
    voice = (0.2 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    voice = (voice + 0.005 * rng.standard_normal(t.size)).astype(np.float32)
    quiet = (voice * np.float32(10 ** (-20 / 20))).astype(np.float32)
    as_recorded = [functionals.compute_functionals(x, "eGeMAPSv02") for x in (voice, quiet)]
    levelled = [functionals.compute_functionals(x, "eGeMAPSv02", level=-26.0) for x in (voice, quiet)]
    # loudness (loudness_sma3_amean, the set's 11th functional) follows the gain as recorded, not when levelled
    assert as_recorded[0][10] > 2 * as_recorded[1][10]
    np.testing.assert_allclose(levelled[0], levelled[1], rtol=1e-3, atol=1e-3)
    # the cache keeps a folder per level, and the recorded level keeps its old folder
    wavs = []
    for name, x in (("loud", voice), ("quiet", quiet)):
        sf.write(tmp_path / f"{name}.wav", x, 16000, subtype="FLOAT")
        wavs.append(Utterance(id=name, path=str(tmp_path / f"{name}.wav"), speaker="x", label="neutral", sha1=name * 4))
    cfg = FeatureConfig(functionals="eGeMAPSv02", functionals_level=-26.0)
    got = functionals.extract_run_functionals(cfg, wavs, tmp_path / "cache" / "features")
    np.testing.assert_allclose(got["loud"], got["quiet"], rtol=1e-3, atol=1e-3)
    assert functionals.count_cached(wavs, "eGeMAPSv02", tmp_path / "cache" / "opensmile", level=-26.0) == 2
    assert functionals.count_cached(wavs, "eGeMAPSv02", tmp_path / "cache" / "opensmile") == 0
    assert [p.name for p in (tmp_path / "cache" / "opensmile").iterdir()] == ["opensmile-eGeMAPSv02-level-26dB"]
    with pytest.raises(ValueError, match="functionals_level: 3.0 dBFS is above full scale"):
        functionals.compute_functionals(voice, "eGeMAPSv02", level=3.0)


def test_functionals_level_leaves_the_frame_cache_alone():
    assert feature_config_hash(FeatureConfig(functionals_level=-26.0)) == feature_config_hash(FeatureConfig())
