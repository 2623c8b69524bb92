"""Tests for moma.features.frontend: filterbanks, the feature cache, normalisation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import moma.features.cache as feats_mod
from moma.audio.io import AudioError, file_sha1, load_audio
from moma.config import FeatureConfig
from moma.corpora.base import Utterance
from moma.features.cache import FeatureCache, PackedFeatures, extract_features, fill_cache, pack_features
from moma.features.frontend import compute_fbank, feature_config_hash, num_frames
from moma.features.normalise import NormalisedFeatures, Normaliser

SR = 16000


def noise(seconds: float, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(round(seconds * SR)))).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    sf.write(path, x, sr, subtype="PCM_16")
    return path


def utt(path: Path, uid: str, **kw) -> Utterance:  # type: ignore[no-untyped-def]
    return Utterance(id=uid, path=str(path), speaker=kw.pop("speaker", "s1"), label="neutral", **kw)


# --------------------------------------------------------------------------- filterbanks

def kaldi_reference_frame(frame: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Kaldi's fbank for one 400-sample frame, written out in numpy (povey window, power, log)."""
    x = frame.astype(np.float64) * 32768.0
    x = x - x.mean()  # remove_dc_offset
    x = np.concatenate([[x[0] - cfg.preemphasis * x[0]], x[1:] - cfg.preemphasis * x[:-1]])
    n = len(x)
    x = x * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))) ** 0.85
    padded = 512
    power = np.abs(np.fft.rfft(x, padded)) ** 2
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    high = cfg.high_freq if cfg.high_freq > 0 else cfg.sample_rate / 2 + cfg.high_freq
    lo, hi = mel(cfg.low_freq), mel(high)
    delta = (hi - lo) / (cfg.n_mels + 1)
    bin_mel = mel(np.arange(padded // 2) * cfg.sample_rate / padded)
    out = np.empty(cfg.n_mels)
    for b in range(cfg.n_mels):
        left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        w = np.where((bin_mel > left) & (bin_mel <= centre), (bin_mel - left) / (centre - left), 0.0)
        w = np.where((bin_mel > centre) & (bin_mel < right), (right - bin_mel) / (right - centre), w)
        out[b] = np.log(max(float(w @ power[: padded // 2]), np.finfo(np.float32).eps))
    return out


def test_shape_of_one_second() -> None:
    cfg = FeatureConfig()
    f = compute_fbank(noise(1.0), cfg)
    assert f.shape == (98, 23) and f.dtype == np.float32
    assert num_frames(SR, cfg) == 98
    assert np.isfinite(f).all()


def test_matches_a_numpy_kaldi_reference() -> None:
    # Checks the option mapping and the int16 scaling: an unscaled signal
    # would be ~20.8 (= log 32768^2) lower in every bin.
    cfg = FeatureConfig()
    x = noise(0.1, seed=5)
    f = compute_fbank(x, cfg)
    for i in (0, 3):
        np.testing.assert_allclose(f[i], kaldi_reference_frame(x[i * 160:i * 160 + 400], cfg), atol=2e-3)


@pytest.mark.parametrize("cfg", [
    FeatureConfig(),
    FeatureConfig(snip_edges=False),
    FeatureConfig(frame_shift_ms=12.5, frame_length_ms=30.0),
    FeatureConfig(sample_rate=8000, n_mels=15, high_freq=-200.0),
], ids=["default", "no-snip", "odd-shift", "8k"])
def test_num_frames_agrees_with_the_extractor(cfg: FeatureConfig) -> None:
    window = int(cfg.sample_rate * cfg.frame_length_ms / 1000)
    shift = int(cfg.sample_rate * cfg.frame_shift_ms / 1000)
    rng = np.random.default_rng(0)
    for n in (window, window + 1, window + shift - 1, window + shift, cfg.sample_rate + 161, 12345):
        f = compute_fbank((0.1 * rng.standard_normal(n)).astype(np.float32), cfg)
        assert f.shape == (num_frames(n, cfg), cfg.n_mels), n
    if cfg.snip_edges:
        assert num_frames(window - 1, cfg) == 0


def test_shorter_than_one_window_raises() -> None:
    with pytest.raises(ValueError, match="shorter than one 25 ms analysis window"):
        compute_fbank(noise(0.02), FeatureConfig())
    with pytest.raises(ValueError, match="1-D"):
        compute_fbank(np.zeros((800, 2), dtype=np.float32), FeatureConfig())


def test_deterministic_without_dither_and_changed_by_dither() -> None:
    x = noise(0.5, seed=1)
    cfg = FeatureConfig()
    a, b = compute_fbank(x, cfg), compute_fbank(x, cfg)
    np.testing.assert_array_equal(a, b)
    dithered = compute_fbank(x * 1e-3, replace(cfg, dither=1.0))
    assert dithered.shape == a.shape
    assert not np.array_equal(dithered, compute_fbank(x * 1e-3, cfg))


def test_config_hash_is_stable_and_discriminating() -> None:
    cfg = FeatureConfig()
    h = feature_config_hash(cfg)
    assert len(h) == 12 and h == feature_config_hash(FeatureConfig())
    assert h == feature_config_hash(FeatureConfig(frame_length_ms=25))  # int 25 == float 25.0
    assert h != feature_config_hash(FeatureConfig(n_mels=40))
    assert h != feature_config_hash(FeatureConfig(snip_edges=False))


# --------------------------------------------------------------------------- cache

def test_cache_miss_then_hit_without_the_audio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav = write_wav(tmp_path / "a.wav", noise(0.5))
    cfg = FeatureConfig()
    cache = FeatureCache(tmp_path / "cache", cfg)
    u = utt(wav, "a", sha1=file_sha1(wav))

    first = cache.get(u)
    entry = cache.root / feature_config_hash(cfg) / u.sha1[:2] / f"{u.sha1}.npy"
    assert entry.is_file() and cache.entry_path(u) == entry
    np.testing.assert_array_equal(first, compute_fbank(load_audio(wav), cfg))
    saved = json.loads((cache.dir / "config.json").read_text())
    assert saved["n_mels"] == 23 and saved["frame_shift_ms"] == 10.0
    assert not list(cache.dir.rglob("*.tmp"))

    # A hit neither decodes nor even needs the audio file.
    wav.unlink()
    monkeypatch.setattr(feats_mod, "load_audio", lambda *a, **k: pytest.fail("hit must not decode audio"))
    np.testing.assert_array_equal(cache.get(u), first)

    # Without a sha1 the file must be hashed, so a missing file is an error naming it.
    with pytest.raises(AudioError, match=r"a\.wav: file not found \(utterance a\)"):
        cache.get(replace(u, sha1=""))


def test_cache_hashes_the_file_when_sha1_is_empty(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "b.wav", noise(0.3, seed=2))
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    cache.get(utt(wav, "b"))
    assert cache.path_for(file_sha1(wav)).is_file()


def test_cache_entries_depend_on_config_and_region(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "long.wav", noise(2.0, seed=3))
    sha = file_sha1(wav)
    base, wide = FeatureConfig(), FeatureConfig(n_mels=40)
    c1, c2 = FeatureCache(tmp_path / "cache", base), FeatureCache(tmp_path / "cache", wide)
    whole = utt(wav, "whole", sha1=sha)
    assert c1.get(whole).shape == (198, 23)
    assert c2.get(whole).shape == (198, 40)
    assert c1.entry_path(whole) != c2.entry_path(whole)
    assert (c2.dir / "config.json").is_file() and c1.dir != c2.dir
    # utterance functionals (fusion) are not frame features: the same frame cache, and config.json never names them
    fused = FeatureCache(tmp_path / "cache", replace(base, functionals="eGeMAPSv02"))
    assert fused.dir == c1.dir and fused.entry_path(whole) == c1.entry_path(whole)
    assert "functionals" not in json.loads((c1.dir / "config.json").read_text())

    first = utt(wav, "r1", sha1=sha, start=0.0, end=1.0)
    second = utt(wav, "r2", sha1=sha, start=1.0, end=2.0)
    paths = {c1.entry_path(u) for u in (whole, first, second)}
    assert len(paths) == 3
    assert c1.entry_path(second).name == f"{sha}_1_2.npy"
    f1, f2 = c1.get(first), c1.get(second)
    assert f1.shape == f2.shape == (98, 23)
    assert not np.array_equal(f1, f2)
    np.testing.assert_array_equal(f2, compute_fbank(load_audio(wav, start=1.0, end=2.0), base))


def test_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "c.wav", noise(0.3, seed=4))
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    u = utt(wav, "c", sha1=file_sha1(wav))
    good = cache.get(u)
    cache.entry_path(u).write_bytes(b"\x93NUMPY truncated")  # what a power cut might leave
    np.testing.assert_array_equal(cache.get(u), good)


def test_extract_features_parallel_equals_serial(tmp_path: Path) -> None:
    wavs = [write_wav(tmp_path / f"u{i}.wav", noise(0.3 + 0.1 * i, seed=10 + i)) for i in range(4)]
    utts = [utt(w, f"u{i}") for i, w in enumerate(wavs)]
    utts.append(utt(wavs[0], "u0-region", start=0.1, end=0.3))
    serial = extract_features(utts, FeatureCache(tmp_path / "c1", FeatureConfig()), workers=1)
    parallel = extract_features(utts, FeatureCache(tmp_path / "c2", FeatureConfig()), workers=2)
    assert list(serial) == list(parallel) == [u.id for u in utts]
    for key in serial:
        np.testing.assert_array_equal(serial[key], parallel[key])
    assert serial["u0-region"].shape == (18, 23)
    # Second pass is all hits and gives the same arrays.
    again = extract_features(utts, FeatureCache(tmp_path / "c2", FeatureConfig()), workers=2)
    for key in serial:
        np.testing.assert_array_equal(again[key], serial[key])


def test_fill_cache_resumes_computing_only_missing_entries(tmp_path: Path, monkeypatch) -> None:
    wavs = [write_wav(tmp_path / f"u{i}.wav", noise(0.3, seed=30 + i)) for i in range(4)]
    utts = [utt(w, f"u{i}") for i, w in enumerate(wavs)]
    cache = FeatureCache(tmp_path / "c", FeatureConfig())
    fill_cache(utts, cache)
    cache.entry_path(utts[2]).unlink()  # as if the run had been killed before this entry
    computed = []
    original = FeatureCache.compute
    monkeypatch.setattr(FeatureCache, "compute", lambda self, u: computed.append(u.id) or original(self, u))
    resolved = fill_cache(utts, cache)
    assert computed == ["u2"] and all(u.sha1 for u in resolved)


def test_packed_features_equal_the_cache_and_are_reused(tmp_path: Path) -> None:
    import pickle

    wavs = [write_wav(tmp_path / f"u{i}.wav", noise(0.3 + 0.1 * i, seed=40 + i)) for i in range(5)]
    utts = [utt(w, f"u{i}") for i, w in enumerate(wavs)]
    cache = FeatureCache(tmp_path / "c", FeatureConfig())
    in_memory = extract_features(utts, cache)
    packed = pack_features(utts, cache, workers=2)
    assert isinstance(packed, PackedFeatures) and list(packed) == [u.id for u in utts]
    for key, value in in_memory.items():
        np.testing.assert_array_equal(packed[key], value)
    assert isinstance(packed["u3"], np.memmap)  # rows are read from the mapped file, not held in memory
    stamp = packed.path.stat().st_mtime_ns
    assert pack_features(utts, cache).path.stat().st_mtime_ns == stamp  # the same corpus maps the same pack
    other = pack_features(utts[:3], cache)
    assert other.path != packed.path and len(other) == 3
    # a worker process receives the path, not the data
    blob = pickle.dumps(packed)
    assert len(blob) < 1000
    np.testing.assert_array_equal(pickle.loads(blob)["u4"], in_memory["u4"])


@pytest.mark.parametrize("mode", ["global", "speaker", "utterance", "none"])
def test_normalised_on_access_equals_normalising_up_front(mode: str) -> None:
    rng = np.random.default_rng(0)
    raw = {f"u{i}": (rng.normal(size=(20 + i, 23)) * (i + 1) + i).astype(np.float32) for i in range(6)}
    speakers = {k: f"s{i % 2}" for i, k in enumerate(raw)}
    norm = Normaliser(mode).fit(list(raw.values()), list(speakers.values()))
    lazy = NormalisedFeatures(raw, norm, speakers, ["u1", "u4"])
    assert list(lazy) == ["u1", "u4"] and len(lazy) == 2
    for key in lazy:
        np.testing.assert_array_equal(lazy[key], norm.transform(raw[key], speakers[key]))
        assert lazy[key].dtype == np.float32 and lazy[key].flags.writeable
    with pytest.raises(KeyError):
        lazy["u0"]  # noqa: B018 - not among the keys it serves


@pytest.mark.parametrize("workers", [1, 2])
def test_extract_features_names_the_bad_utterance(tmp_path: Path, workers: int) -> None:
    good = write_wav(tmp_path / "good.wav", noise(0.3))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 64)
    utts = [utt(good, "good-1"), utt(bad, "broken-7")]
    with pytest.raises(AudioError) as info:
        extract_features(utts, FeatureCache(tmp_path / "cache", FeatureConfig()), workers=workers)
    message = str(info.value)
    assert message.startswith(str(bad)) and "broken-7" in message
    assert "not a recognised audio format" in message and "\n" not in message


# --------------------------------------------------------------------------- normalisation

def make_speaker_feats(rng: np.random.Generator, shift: float, n: int = 3) -> list[np.ndarray]:
    return [(rng.standard_normal((50 + 10 * i, 4)) * (1 + shift) + 10 * shift).astype(np.float32)
            for i in range(n)]


def test_global_normaliser_fits_training_frames_only() -> None:
    rng = np.random.default_rng(0)
    train = make_speaker_feats(rng, 0.0) + make_speaker_feats(rng, 1.0)
    test = [f + 100.0 for f in make_speaker_feats(rng, 2.0)]
    norm = Normaliser("global").fit(train, ["a"] * 3 + ["b"] * 3)
    out = np.concatenate([norm.transform(f) for f in train])
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-5)
    before = norm.state_dict()
    for f in test:  # transforming test data must not update anything
        norm.transform(f)
    after = norm.state_dict()
    np.testing.assert_array_equal(before["mean"], after["mean"])
    np.testing.assert_array_equal(before["std"], after["std"])
    assert np.all(np.concatenate([norm.transform(f) for f in test]).mean(axis=0) > 10)
    assert "training speakers only" in norm.describe()


def test_global_statistics_use_float64() -> None:
    # Large offset, small spread: float32 accumulation of 2e5 frames would drift.
    rng = np.random.default_rng(1)
    x = (1000.0 + 0.01 * rng.standard_normal((200_000, 2))).astype(np.float32)
    norm = Normaliser("global").fit([x], ["s"])
    exact = x.astype(np.float64)
    np.testing.assert_allclose(norm.mean, exact.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(norm.std, exact.std(axis=0), rtol=1e-6)


def test_constant_bins_do_not_divide_by_zero() -> None:
    x = np.ones((20, 3), dtype=np.float32)
    norm = Normaliser("global").fit([x], ["s"])
    assert np.all(norm.std >= 1e-5)
    assert np.isfinite(norm.transform(x)).all()
    assert np.isfinite(Normaliser("utterance").transform(x)).all()


def test_speaker_normaliser_per_speaker_and_transductive_speakers() -> None:
    rng = np.random.default_rng(2)
    fa, fb = make_speaker_feats(rng, 0.0), make_speaker_feats(rng, 3.0)
    norm = Normaliser("speaker").fit(fa + fb, ["a"] * 3 + ["b"] * 3)
    for spk, group in (("a", fa), ("b", fb)):
        out = np.concatenate([norm.transform(f, spk) for f in group])
        np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-5)
    unseen = make_speaker_feats(rng, 5.0)
    assert norm.has_speaker("a") and not norm.has_speaker("c")
    with pytest.raises(KeyError, match="'c'"):
        norm.transform(unseen[0], "c")
    assert "transductive" not in norm.describe()
    norm.fit_speaker("c", unseen)
    assert norm.has_speaker("c")
    out = np.concatenate([norm.transform(f, "c") for f in unseen])
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    assert "transductive" in norm.describe() and "c" in norm.describe()
    with pytest.raises(ValueError, match="training set"):
        norm.fit_speaker("a", unseen)
    with pytest.raises(ValueError):
        norm.transform(unseen[0])  # speaker mode needs a speaker


def test_utterance_and_none_modes() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((80, 5)) * 4 + 7).astype(np.float32)
    out = Normaliser("utterance").fit([], []).transform(x)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(Normaliser("none").transform(x), x)
    with pytest.raises(ValueError, match="unknown normalisation mode"):
        Normaliser("per-corpus")
    with pytest.raises(RuntimeError):
        Normaliser("global").transform(x)


@pytest.mark.parametrize("via_json", [False, True])
def test_normaliser_state_round_trip(via_json: bool) -> None:
    rng = np.random.default_rng(4)
    fa, fb = make_speaker_feats(rng, 0.0), make_speaker_feats(rng, 1.0)
    x = fb[0]
    for mode in ("global", "speaker", "utterance", "none"):
        norm = Normaliser(mode).fit(fa, ["a"] * 3)
        if mode == "speaker":
            norm.fit_speaker("b", fb)
        state = norm.state_dict()
        if via_json:
            state = json.loads(json.dumps(state, default=lambda a: a.tolist()))
        back = Normaliser.from_state(state)
        assert back.mode == mode and back.describe() == norm.describe()
        spk = "b" if mode == "speaker" else None
        np.testing.assert_array_equal(back.transform(x, spk), norm.transform(x, spk))


# --------------------------------------------------------------------------- real data

def test_real_emodb_file(emodb_root: Path) -> None:
    wav = sorted((emodb_root / "wav").glob("*.wav"))[0]
    x = load_audio(wav)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) > SR // 2
    f = compute_fbank(x, FeatureConfig())
    assert f.shape == (num_frames(len(x), FeatureConfig()), 23)
    assert np.isfinite(f).all()


def test_pitch_features_track_f0_and_voicing():
    from moma.config import FeatureConfig
    from moma.features.frontend import compute_features, feature_dim

    sr = 16000
    t = np.arange(int(1.0 * sr)) / sr
    f0 = 120.0 + 100.0 * t  # a rising glide: 120 -> 220 Hz
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)).astype(np.float32) * 0.3
    signal = np.concatenate([voiced, np.zeros(sr // 2, np.float32)])
    signal[sr:] = np.random.default_rng(0).normal(0, 1e-3, sr // 2)  # unvoiced tail
    cfg = FeatureConfig(pitch=True)
    feats = compute_features(signal, cfg)
    assert feats.shape[1] == feature_dim(cfg) == 25
    est = np.exp(feats[:, 23])
    assert 110 < est[10] < 140 and 195 < est[90] < 235  # follows the glide (frames at 0.1 s and 0.9 s)
    assert feats[20:80, 24].mean() > 0.5 and feats[-20:, 24].max() < 0.3  # voicing strength on vs off
    assert np.all(np.isfinite(feats))
    plain = compute_features(signal, FeatureConfig())
    np.testing.assert_array_equal(plain, feats[:, :23])


def _glide(seconds: float = 1.0) -> np.ndarray:
    """A harmonic tone gliding 120 -> 220 Hz, then half a second of faint noise."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120.0 + 100.0 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)).astype(np.float32) * 0.3
    return np.concatenate([voiced, np.random.default_rng(0).normal(0, 1e-3, SR // 2).astype(np.float32)])


def test_opensmile_descriptors_are_aligned_to_filterbank_frames():
    from moma.features.frontend import compute_features, feature_dim

    signal = _glide()
    plain = compute_features(signal, FeatureConfig())
    for name, dims in (("egemaps", 25), ("compare", 65)):
        cfg = FeatureConfig(lld=name, pitch=True)
        feats = compute_features(signal, cfg)
        assert feats.shape == (plain.shape[0], feature_dim(cfg)) == (plain.shape[0], 23 + 2 + dims)
        assert np.isfinite(feats).all()
        np.testing.assert_array_equal(feats[:, :23], plain)
    # eGeMAPS column 10 is F0 in semitones above 27.5 Hz: it follows the glide at 0.1 s and 0.9 s
    semitones = compute_features(signal, FeatureConfig(lld="egemaps"))[:, 23 + 10]
    expected = 12 * np.log2(np.array([130.0, 210.0]) / 27.5)
    assert np.all(np.abs(semitones[[10, 90]] - expected) < 1.5), semitones[[10, 90]]


def test_unknown_descriptor_set_is_refused_before_any_file_is_read(tmp_path):
    with pytest.raises(ValueError, match="features.lld: unknown set 'gemaps'"):
        FeatureCache(tmp_path, FeatureConfig(lld="gemaps"))


def test_descriptor_option_keeps_existing_cache_hashes():
    import dataclasses
    import hashlib

    # the hash of a configuration without descriptors is what it was before the option existed
    data = dataclasses.asdict(FeatureConfig())
    del data["lld"], data["functionals"], data["functionals_level"]
    del data["frontend"], data["ge2e_layer"], data["ssl_model"], data["ssl_layers"]  # fbank: left out likewise
    before = hashlib.sha1(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert feature_config_hash(FeatureConfig()) == before
    assert feature_config_hash(FeatureConfig(lld="egemaps")) not in (before, feature_config_hash(FeatureConfig(lld="compare")))


def test_a_constant_bin_is_centred_and_left_unscaled() -> None:
    """The one standardiser rule (shared with the classical anchor): a feature constant over the fitting data
    gets std 1, so variation it shows at test time is passed on as it is instead of being multiplied by 1e5."""
    rng = np.random.default_rng(0)
    train = rng.standard_normal((50, 3)).astype(np.float32)
    train[:, 1] = -4.0  # e.g. a silent band: log of the energy floor
    norm = Normaliser("global").fit([train])
    assert norm.std[1] == 1.0 and norm.mean[1] == pytest.approx(-4.0)
    test = np.array([[0.0, -3.5, 0.0]], dtype=np.float32)
    assert norm.transform(test)[0, 1] == pytest.approx(0.5)
    # float64 in, float64 out when asked (the SVM anchor standardises functionals in float64)
    assert norm.transform(test.astype(np.float64), dtype=np.float64).dtype == np.float64
