"""Perturbations and robustness evaluation (moma.robustness)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from moma import robustness as rb

SR = 16000


def speech_like(seed: int, seconds: float = 2.0, amp: float = 0.3) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope with pauses: power varies over time like speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    env = np.clip(np.sin(2 * np.pi * (3.0 + seed % 3) * t), 0, None) ** 2
    carrier = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")  # low-passed noise
    x = carrier * env
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


def regression_snr(mix: np.ndarray, speech: np.ndarray) -> float:
    """SNR measured from the mix alone: project out the speech (the noise is independent of it)."""
    mix = mix.astype(np.float64)
    s = speech.astype(np.float64)
    g = float(mix @ s / (s @ s))
    residual = mix - g * s
    return 10 * math.log10(np.mean((g * s) ** 2) / np.mean(residual ** 2))


def tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2))


# --------------------------------------------------------------------------- SNR


@pytest.mark.parametrize("kind", ["white", "babble"])
@pytest.mark.parametrize("snr", [20, 10, 5, 0])
def test_mix_at_snr_is_exact(kind, snr):
    speech = speech_like(0)
    rng = np.random.default_rng(1)
    if kind == "white":
        noise = rb.white_noise(5000, rng)  # shorter than the speech: it is looped
    else:
        noise = rb.make_babble([speech_like(s, 1.3) for s in (11, 12, 13, 14, 15)], 7000, 4, rng)
    mix, s_part, n_part = rb.mix_at_snr(speech, noise, snr, np.random.default_rng(2), return_components=True)
    assert mix.shape == speech.shape and mix.dtype == np.float32
    np.testing.assert_allclose(mix, s_part + n_part, atol=1e-6)
    assert abs(rb.measure_snr(s_part, n_part) - snr) < 1e-6
    assert abs(regression_snr(mix, speech) - snr) < 0.5  # measured from the mix: the acceptance criterion
    assert np.max(np.abs(mix)) <= 1.0


@pytest.mark.parametrize("kind", ["white", "babble"])
def test_clip_safety_scales_the_mix_and_keeps_the_snr(kind):
    speech = tone(440.0, 1.0, amp=0.8)  # dense and loud: at 0 dB SNR the noise's peaks push it past 1
    rng = np.random.default_rng(3)
    noise = (rb.white_noise(SR, rng) if kind == "white"
             else rb.make_babble([speech_like(s, 1.0) for s in (21, 22, 23, 24)], SR, 4, rng))
    mix, s_part, _ = rb.mix_at_snr(speech, noise, 0.0, np.random.default_rng(4), return_components=True)
    scale = float(s_part @ speech.astype(np.float64) / (speech.astype(np.float64) @ speech))
    assert scale < 0.99  # it would have clipped: the whole mix was scaled down
    assert np.max(np.abs(mix)) <= 1.0 + 1e-6
    assert abs(regression_snr(mix, speech) - 0.0) < 0.5


def test_active_reference_measures_speech_frames_only():
    speech = np.concatenate([np.zeros(SR, dtype=np.float32), speech_like(5, 1.0)])
    noise = rb.white_noise(SR, np.random.default_rng(0))
    _, s_part, n_part = rb.mix_at_snr(speech, noise, 10, np.random.default_rng(0), reference="active",
                                      return_components=True)
    assert abs(rb.measure_snr(s_part, n_part, "active") - 10) < 1e-6
    assert rb.measure_snr(s_part, n_part) < 10 - 2  # over the whole signal the silent half lowers it


def test_mix_is_deterministic_given_rng():
    speech, noise = speech_like(0), rb.white_noise(3000, np.random.default_rng(0))
    a = rb.mix_at_snr(speech, noise, 5, np.random.default_rng(7))
    b = rb.mix_at_snr(speech, noise, 5, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- babble


def test_babble_uses_only_the_given_signals():
    # tones with a whole number of periods in their length loop seamlessly: the babble's spectrum
    # must hold energy only at their frequencies
    freqs = [500.0, 1250.0, 2000.0, 3000.0, 4500.0]
    signals = [tone(f, 0.5) for f in freqs]
    babble = rb.make_babble(signals, 2 * SR, 3, np.random.default_rng(0))
    assert babble.shape == (2 * SR,)
    assert abs(np.mean(babble ** 2) - 1.0) < 1e-9
    spectrum = np.abs(np.fft.rfft(babble)) ** 2
    bins = np.fft.rfftfreq(babble.size, 1 / SR)
    at_tones = np.isin(bins, freqs)
    assert spectrum[at_tones].sum() / spectrum.sum() > 0.999
    assert (spectrum[at_tones] > 1e-3 * spectrum.max()).sum() == 3  # exactly num_talkers talkers


def test_babble_with_few_signals_reuses_them():
    babble = rb.make_babble([speech_like(1, 0.5), speech_like(2, 0.5)], SR, 4, np.random.default_rng(0))
    assert babble.shape == (SR,) and np.isfinite(babble).all()


def test_babble_refuses_same_speaker():
    signals = [speech_like(s, 0.5) for s in range(3)]
    with pytest.raises(ValueError, match="target speaker"):
        rb.make_babble(signals, SR, 2, np.random.default_rng(0), speakers=["a", "b", "c"], exclude_speaker="b")
    out = rb.make_babble(signals, SR, 2, np.random.default_rng(0), speakers=["a", "b", "c"], exclude_speaker="z")
    assert out.shape == (SR,)
    with pytest.raises(ValueError):
        rb.make_babble(signals, SR, 2, speakers=["a", "b"])


def test_context_babble_excludes_the_target_speaker():
    sigs = [tone(500.0, 0.5), tone(1000.0, 0.5), tone(2000.0, 0.5)]
    ctx = rb.PerturbContext(sigs, ["x", "y", "y"], speaker="y", num_talkers=2)
    babble = ctx.babble(SR, np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(babble)) ** 2
    bins = np.fft.rfftfreq(babble.size, 1 / SR)
    assert spectrum[bins == 500.0].sum() / spectrum.sum() > 0.999  # only speaker x's signal
    ctx.babble_speakers = ["y", "y", "y"]
    with pytest.raises(ValueError, match="other than"):
        ctx.babble(SR, np.random.default_rng(0))


# --------------------------------------------------------------------------- channel, gain, reverb


def test_telephone_band():
    for freq, keep in ((100.0, False), (1000.0, True), (5000.0, False)):
        x = tone(freq)
        y = rb.telephone_band(x, SR)
        assert y.shape == x.shape and y.dtype == np.float32
        mid = slice(SR // 4, 3 * SR // 4)  # away from the filter's edges
        change = rms_db(y[mid]) - rms_db(x[mid])
        if keep:
            assert abs(change) < 1.0, (freq, change)
        else:
            assert change < -20.0, (freq, change)
    odd = speech_like(3, 0.5)[:7999]  # odd length: the 8 kHz round trip must give the length back
    assert rb.telephone_band(odd).shape == odd.shape


@pytest.mark.parametrize("db", [10.0, -10.0])
def test_gain_changes_level_by_db(db):
    x = speech_like(0, amp=0.05)
    y, clipped = rb.apply_gain(x, db)
    assert not clipped
    assert abs((rms_db(y) - rms_db(x)) - db) < 1e-3


def test_gain_reports_clipping():
    y, clipped = rb.apply_gain(speech_like(0, amp=0.5), 10.0)
    assert clipped > 0 and np.max(np.abs(y)) <= 1.0


def schroeder_rt60(h: np.ndarray, sr: int) -> float:
    """RT60 from the Schroeder energy decay curve: T20 (-5 to -25 dB) times 3."""
    edc = np.cumsum((h ** 2)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    t = np.arange(h.size) / sr
    sel = (edc_db <= -5) & (edc_db >= -25)
    slope = np.polyfit(t[sel], edc_db[sel], 1)[0]  # dB per second
    return -60.0 / slope


@pytest.mark.parametrize("rt60", [0.3, 0.5, 1.0])
def test_reverb_impulse_response_has_the_rt60(rt60):
    h = rb.reverb_impulse_response(SR, rt60, np.random.default_rng(0))
    assert h[0] == 1.0
    assert abs(schroeder_rt60(h, SR) - rt60) / rt60 < 0.15


def test_reverb_keeps_length_and_level():
    x = speech_like(0)
    y = rb.synthetic_reverb(x, SR, 0.5, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert abs(rms_db(y) - rms_db(x)) < 0.01
    assert np.corrcoef(x, y)[0, 1] < 0.95  # it did change the signal
    loud = rb.synthetic_reverb(speech_like(0, amp=1.0), SR, 1.0, np.random.default_rng(0))
    assert np.max(np.abs(loud)) <= 1.0


def test_condition_names():
    assert set(rb.DEFAULT_CONDITIONS) == set(rb.CONDITIONS)
    for name in ("clean", "white-20dB", "babble-0dB", "telephone", "gain+10dB", "gain-10dB", "reverb-0.5s"):
        assert name in rb.CONDITIONS
    c = rb.get_condition("white-15dB")
    assert (c.family, c.level) == ("white", 15.0)
    assert rb.get_condition("gain-6dB").level == -6.0
    assert rb.get_condition("reverb-1.2s").level == 1.2
    with pytest.raises(ValueError):
        rb.get_condition("pink-5dB")
    x = speech_like(0, 0.5)
    ctx = rb.PerturbContext([speech_like(9, 0.5)], ["other"], speaker="me")
    for name, cond in rb.CONDITIONS.items():
        y = cond(x, SR, np.random.default_rng(0), ctx)
        assert y.shape == x.shape and np.max(np.abs(y)) <= 1.0, name


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from moma.config import load_run_config
    from moma.corpora.base import Utterance
    from moma.features import Normaliser
    from moma.train import train_model

    root = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(0)
    feats, label_of = {}, {}
    for i in range(12):
        x = rng.normal(size=(int(rng.integers(20, 40)), 23)).astype(np.float32)
        x[:, i % 2] += 1.5
        feats[f"t{i}"], label_of[f"t{i}"] = x, i % 2
    ids = sorted(feats)
    cfg = load_run_config(sets=["model.hidden_size=4", "model.context_dim=4", "model.projection_dim=4",
                                "model.num_layers=1", "train.max_epochs=1", "train.early_stop_patience=0",
                                "train.tensorboard=false", "train.num_threads=1", "data.max_frames_per_batch=400"])
    norm = Normaliser("global").fit([feats[k] for k in ids])
    result = train_model(cfg, feats, ["calm", "angry"], label_of, ids[:9], ids[9:], root / "run", norm)
    utts = []
    for i in range(6):
        path = root / f"w{i}.wav"
        sf.write(path, speech_like(i, 0.4, amp=0.3 + 0.2 * (i % 2)), SR)
        utts.append(Utterance(id=f"w{i}", path=str(path), speaker=f"s{i % 3}", label=["calm", "angry"][i % 2]))
    return result.best_checkpoint, utts


def test_evaluate_robustness_all_conditions(tiny_setup):
    ckpt, utts = tiny_setup
    res = rb.evaluate_robustness(ckpt, utts, seed=0)
    assert list(res) == list(rb.DEFAULT_CONDITIONS)
    for name, m in res.items():
        assert m["n"] == len(utts)
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["uar"] <= 1.0, name
        assert set(m["per_speaker"]) == {"s0", "s1", "s2"}
        assert "predictions" not in m and set(m["perturbation"]) == {"mix_rescaled", "clipped"}
    assert res["gain+10dB"]["perturbation"]["clipped"] > 0  # amplitude 0.5 + 10 dB clips


def test_evaluate_robustness_is_deterministic(tiny_setup, tmp_path):
    ckpt, utts = tiny_setup
    conds = ["babble-0dB", "white-5dB", "reverb-0.5s"]
    a = rb.evaluate_robustness(ckpt, utts, conds, seed=3)
    b = rb.evaluate_robustness(ckpt, utts, list(reversed(conds)), seed=3)  # order does not matter
    for c in conds:
        assert a[c] == b[c]
    pool = [("other1", speech_like(40, 0.7)), ("other2", speech_like(41, 0.7))]
    c = rb.evaluate_robustness(ckpt, utts, ["babble-5dB"], seed=3, babble_pool=pool, num_talkers=2)
    assert c["babble-5dB"]["n"] == len(utts)
    with pytest.raises(ValueError, match="labels"):
        from dataclasses import replace

        rb.evaluate_robustness(ckpt, [replace(utts[0], label="bored")], ["clean"])
    out = rb.plot_degradation({"moma": a | {"clean": a["reverb-0.5s"]}, "mean": b}, tmp_path / "deg.png")
    assert out.is_file() and out.stat().st_size > 1000


def test_evaluate_robustness_speaker_normalisation(tiny_setup):
    from moma.checkpoint import load_checkpoint
    from moma.features import Normaliser

    ckpt, utts = tiny_setup
    loaded = load_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    loaded.normaliser = Normaliser("speaker").fit([rng.normal(size=(30, 23)) for _ in range(2)], ["s0", "s0"])
    res = rb.evaluate_robustness(loaded, utts, ["clean", "white-0dB"], seed=0)
    assert res["clean"]["n"] == res["white-0dB"]["n"] == len(utts)
    # unseen speakers got statistics per condition, on a copy: the checkpoint's normaliser is untouched
    assert not loaded.normaliser.has_speaker("s1") and loaded.normaliser.has_speaker("s0")


def test_select_utterances_is_balanced_seeded_and_order_free():
    from moma.corpora.base import Utterance

    utts = [Utterance(id=f"u{i:02d}", path="x.wav", speaker=f"s{i % 4}", label="abc"[i % 3 if i < 24 else 0])
            for i in range(30)]  # label a is over-represented
    pick = rb.select_utterances(utts, 9, seed=0)
    assert [u.label for u in pick].count("a") == 3 and len({u.id for u in pick}) == 9
    assert [u.id for u in rb.select_utterances(list(reversed(utts)), 9, seed=0)] == [u.id for u in pick]
    assert [u.id for u in rb.select_utterances(utts, 9, seed=1)] != [u.id for u in pick]
    by_speaker = rb.select_utterances(utts, 8, seed=0, key="speaker")
    assert sorted(u.speaker for u in by_speaker) == ["s0", "s0", "s1", "s1", "s2", "s2", "s3", "s3"]
    assert len(rb.select_utterances(utts, None)) == 30 and len(rb.select_utterances(utts, 100)) == 30
    with pytest.raises(ValueError):
        rb.select_utterances(utts, 0)


def test_evaluate_robustness_cache_reuses_conditions(tiny_setup, tmp_path):
    ckpt, utts = tiny_setup
    first = rb.evaluate_robustness(ckpt, utts, ["clean", "white-5dB"], seed=0, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    again = rb.evaluate_robustness(ckpt, utts, ["white-5dB", "clean", "telephone"], seed=0, cache_dir=tmp_path)
    assert again["clean"] == first["clean"] and again["white-5dB"] == first["white-5dB"]
    assert [f.stat().st_mtime_ns for f in files] == stamps and len(list(tmp_path.glob("*.json"))) == 3
    other_seed = rb.evaluate_robustness(ckpt, utts, ["white-5dB"], seed=1, cache_dir=tmp_path)
    assert other_seed["white-5dB"]["n"] == len(utts) and len(list(tmp_path.glob("*.json"))) == 4
