"""Signal conditions (moma.audio.perturb): SNR mixing, babble, telephone band, gain, reverberation, names."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SR, regression_snr, rms_db, schroeder_rt60, speech_like, tone

import moma.audio.perturb as pt


@pytest.mark.parametrize("kind", ["white", "babble"])
@pytest.mark.parametrize("snr", [20, 10, 5, 0])
def test_mix_at_snr_is_exact(kind, snr):
    speech = speech_like(0)
    rng = np.random.default_rng(1)
    if kind == "white":
        noise = pt.white_noise(5000, rng)  # shorter than the speech: it is looped
    else:
        noise = pt.make_babble([speech_like(s, 1.3) for s in (11, 12, 13, 14, 15)], 7000, 4, rng)
    mix, s_part, n_part = pt.mix_at_snr(speech, noise, snr, np.random.default_rng(2), return_components=True)
    assert mix.shape == speech.shape and mix.dtype == np.float32
    np.testing.assert_allclose(mix, s_part + n_part, atol=1e-6)
    assert abs(pt.measure_snr(s_part, n_part) - snr) < 1e-6
    assert abs(regression_snr(mix, speech) - snr) < 0.5  # measured from the mix: the acceptance criterion
    assert np.max(np.abs(mix)) <= 1.0


@pytest.mark.parametrize("kind", ["white", "babble"])
def test_clip_safety_scales_the_mix_and_keeps_the_snr(kind):
    speech = tone(440.0, 1.0, amp=0.8)  # dense and loud: at 0 dB SNR the noise's peaks push it past 1
    rng = np.random.default_rng(3)
    noise = (pt.white_noise(SR, rng) if kind == "white"
             else pt.make_babble([speech_like(s, 1.0) for s in (21, 22, 23, 24)], SR, 4, rng))
    mix, s_part, _ = pt.mix_at_snr(speech, noise, 0.0, np.random.default_rng(4), return_components=True)
    scale = float(s_part @ speech.astype(np.float64) / (speech.astype(np.float64) @ speech))
    assert scale < 0.99  # it would have clipped: the whole mix was scaled down
    assert np.max(np.abs(mix)) <= 1.0 + 1e-6
    assert abs(regression_snr(mix, speech) - 0.0) < 0.5


def test_active_reference_measures_speech_frames_only():
    speech = np.concatenate([np.zeros(SR, dtype=np.float32), speech_like(5, 1.0)])
    noise = pt.white_noise(SR, np.random.default_rng(0))
    _, s_part, n_part = pt.mix_at_snr(speech, noise, 10, np.random.default_rng(0), reference="active",
                                      return_components=True)
    assert abs(pt.measure_snr(s_part, n_part, "active") - 10) < 1e-6
    assert pt.measure_snr(s_part, n_part) < 10 - 2  # over the whole signal the silent half lowers it
    with pytest.raises(ValueError, match="empty signal"):  # one speech detector: it refuses nothing to detect
        pt.measure_snr(np.zeros(0), np.zeros(0), "active")


def test_set_active_level_reaches_the_level_whatever_the_recorded_gain():
    speech = np.concatenate([np.zeros(SR // 2, dtype=np.float32), speech_like(3, 1.0)])
    for gain_db in (-30.0, 0.0, 6.0):
        scaled = speech * np.float32(10 ** (gain_db / 20))
        out = pt.set_active_level(scaled, -26.0, SR)
        assert out.dtype == np.float32 and out.shape == speech.shape
        assert abs(10 * np.log10(pt.signal_power(out, "active", SR)) + 26.0) < 1e-3
        np.testing.assert_allclose(out, pt.set_active_level(speech, -26.0, SR), rtol=1e-5, atol=1e-7)
    silence = np.zeros(SR, dtype=np.float32)
    np.testing.assert_array_equal(pt.set_active_level(silence, -26.0, SR), silence)


def test_mix_is_deterministic_given_rng():
    speech, noise = speech_like(0), pt.white_noise(3000, np.random.default_rng(0))
    a = pt.mix_at_snr(speech, noise, 5, np.random.default_rng(7))
    b = pt.mix_at_snr(speech, noise, 5, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_babble_uses_only_the_given_signals():
    # tones with a whole number of periods in their length loop seamlessly: the babble's spectrum
    # must hold energy only at their frequencies
    freqs = [500.0, 1250.0, 2000.0, 3000.0, 4500.0]
    signals = [tone(f, 0.5) for f in freqs]
    babble = pt.make_babble(signals, 2 * SR, 3, np.random.default_rng(0))
    assert babble.shape == (2 * SR,)
    assert abs(np.mean(babble ** 2) - 1.0) < 1e-9
    spectrum = np.abs(np.fft.rfft(babble)) ** 2
    bins = np.fft.rfftfreq(babble.size, 1 / SR)
    at_tones = np.isin(bins, freqs)
    assert spectrum[at_tones].sum() / spectrum.sum() > 0.999
    assert (spectrum[at_tones] > 1e-3 * spectrum.max()).sum() == 3  # exactly num_talkers talkers


def test_babble_with_few_signals_reuses_them():
    babble = pt.make_babble([speech_like(1, 0.5), speech_like(2, 0.5)], SR, 4, np.random.default_rng(0))
    assert babble.shape == (SR,) and np.isfinite(babble).all()


def test_babble_refuses_same_speaker():
    signals = [speech_like(s, 0.5) for s in range(3)]
    with pytest.raises(ValueError, match="target speaker"):
        pt.make_babble(signals, SR, 2, np.random.default_rng(0), speakers=["a", "b", "c"], exclude_speaker="b")
    out = pt.make_babble(signals, SR, 2, np.random.default_rng(0), speakers=["a", "b", "c"], exclude_speaker="z")
    assert out.shape == (SR,)
    with pytest.raises(ValueError):
        pt.make_babble(signals, SR, 2, speakers=["a", "b"])


def test_context_babble_excludes_the_target_speaker():
    sigs = [tone(500.0, 0.5), tone(1000.0, 0.5), tone(2000.0, 0.5)]
    ctx = pt.PerturbContext(sigs, ["x", "y", "y"], speaker="y", num_talkers=2)
    babble = ctx.babble(SR, np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(babble)) ** 2
    bins = np.fft.rfftfreq(babble.size, 1 / SR)
    assert spectrum[bins == 500.0].sum() / spectrum.sum() > 0.999  # only speaker x's signal
    ctx.babble_speakers = ["y", "y", "y"]
    with pytest.raises(ValueError, match="other than"):
        ctx.babble(SR, np.random.default_rng(0))


def test_telephone_band():
    for freq, keep in ((100.0, False), (1000.0, True), (5000.0, False)):
        x = tone(freq)
        y = pt.telephone_band(x, SR)
        assert y.shape == x.shape and y.dtype == np.float32
        mid = slice(SR // 4, 3 * SR // 4)  # away from the filter's edges
        change = rms_db(y[mid]) - rms_db(x[mid])
        if keep:
            assert abs(change) < 1.0, (freq, change)
        else:
            assert change < -20.0, (freq, change)
    odd = speech_like(3, 0.5)[:7999]  # odd length: the 8 kHz round trip must give the length back
    assert pt.telephone_band(odd).shape == odd.shape


@pytest.mark.parametrize("db", [10.0, -10.0])
def test_gain_changes_level_by_db(db):
    x = speech_like(0, amp=0.05)
    y, clipped = pt.apply_gain(x, db)
    assert not clipped
    assert abs((rms_db(y) - rms_db(x)) - db) < 1e-3


def test_gain_reports_clipping():
    y, clipped = pt.apply_gain(speech_like(0, amp=0.5), 10.0)
    assert clipped > 0 and np.max(np.abs(y)) <= 1.0


@pytest.mark.parametrize("rt60", [0.3, 0.5, 1.0])
def test_reverb_impulse_response_has_the_rt60(rt60):
    h = pt.reverb_impulse_response(SR, rt60, np.random.default_rng(0))
    assert h[0] == 1.0
    assert abs(schroeder_rt60(h, SR) - rt60) / rt60 < 0.15


def test_reverb_keeps_length_and_level():
    x = speech_like(0)
    y = pt.synthetic_reverb(x, SR, 0.5, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert abs(rms_db(y) - rms_db(x)) < 0.01
    assert np.corrcoef(x, y)[0, 1] < 0.95  # it did change the signal
    loud = pt.synthetic_reverb(speech_like(0, amp=1.0), SR, 1.0, np.random.default_rng(0))
    assert np.max(np.abs(loud)) <= 1.0


def test_condition_names():
    assert set(pt.DEFAULT_CONDITIONS) == set(pt.CONDITIONS)
    for name in ("clean", "white-20dB", "babble-0dB", "telephone", "gain+10dB", "gain-10dB", "reverb-0.5s"):
        assert name in pt.CONDITIONS
    c = pt.get_condition("white-15dB")
    assert (c.family, c.level) == ("white", 15.0)
    assert pt.get_condition("gain-6dB").level == -6.0
    assert pt.get_condition("reverb-1.2s").level == 1.2
    with pytest.raises(ValueError):
        pt.get_condition("pink-5dB")
    x = speech_like(0, 0.5)
    ctx = pt.PerturbContext([speech_like(9, 0.5)], ["other"], speaker="me")
    for name, cond in pt.CONDITIONS.items():
        y = cond(x, SR, np.random.default_rng(0), ctx)
        assert y.shape == x.shape and np.max(np.abs(y)) <= 1.0, name
