"""Tests for moma.audio.vad and moma.inference.timeline: speech regions found where the speech is, windows classified only
over speech, block reading equal to whole-signal reading, smoothing, ``moma timeline`` output, and a
one-hour recording under 1 GB peak RSS.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from helpers import LABELS, on_screen, run_cli, run_cli_on_a_terminal  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from moma.audio.vad import VadConfig
    from moma.inference.predictor import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint, speech_check=VadConfig(engine="energy"))


def bursts(spans: list[tuple[float, float]], total: float, seed: int = 0, noise: float = 0.001) -> np.ndarray:
    """Low background noise with loud 'speech' (noise bursts) in the given spans (seconds)."""
    rng = np.random.default_rng(seed)
    sig = rng.normal(size=int(total * SR)) * noise
    for start, end in spans:
        a, b = int(start * SR), int(end * SR)
        sig[a:b] += rng.normal(size=b - a) * 0.2
    return sig.astype(np.float32)


def test_vad_regions_streaming_equals_whole():
    from moma.audio.vad import EnergyVad

    sig = bursts([(1.0, 2.5), (2.7, 3.0), (5.0, 5.1), (6.0, 8.0)], 9.0)
    whole = EnergyVad(SR)
    flags = whole.accept(sig)
    regions = list(whole.regions(flags, 0, final=True))
    # the 0.2 s gap at 2.5-2.7 s is merged; the 0.1 s burst at 5.0 s is too short to count
    assert len(regions) == 2
    assert regions[0] == pytest.approx((1.0, 3.0), abs=0.02)
    assert regions[1] == pytest.approx((6.0, 8.0), abs=0.02)
    streamed = EnergyVad(SR)
    got, frame = [], 0
    for start in range(0, sig.shape[0], 7777):  # blocks that are not whole frames
        f = streamed.accept(sig[start:start + 7777])
        got.extend(streamed.regions(f, frame))
        frame += f.shape[0]
    got.extend(streamed.regions(np.zeros(0, bool), frame, final=True))
    assert got == regions


def test_vad_all_speech_is_not_silence():
    """A recording with no pauses has no noise floor to learn; the loud-level cap still calls it speech."""
    from moma.audio.vad import EnergyVad

    vad = EnergyVad(SR)
    flags = vad.accept(np.random.default_rng(0).normal(size=3 * SR).astype(np.float32) * 0.2)
    assert flags.mean() > 0.8


def test_timeline_windows_follow_speech(predictor):
    from moma.inference.timeline import TimelineConfig, timeline_for_signal

    sig = bursts([(2.0, 6.0)], 10.0)
    tl = timeline_for_signal(predictor, sig, TimelineConfig(window_s=1.0, hop_s=0.5, smooth=3, block_s=1.3))
    assert tl.duration_s == pytest.approx(10.0)
    assert [r.start_s for r in tl.rows] == pytest.approx([0.5 * i for i in range(19)])
    for r in tl.rows:
        inside = 2.0 <= r.start_s and r.end_s <= 6.0
        outside = r.end_s <= 2.0 or r.start_s >= 6.0
        if inside:
            assert r.speech == pytest.approx(1.0) and r.label in LABELS
            assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        if outside:
            assert r.speech == 0.0 and r.label == "" and not r.probabilities
    assert tl.regions == [pytest.approx((2.0, 6.0), abs=0.02)]


def test_timeline_blocks_do_not_change_results(predictor):
    from moma.inference.timeline import TimelineConfig, timeline_for_signal

    sig = bursts([(0.5, 3.5), (4.0, 6.3)], 7.0, seed=3)
    a = timeline_for_signal(predictor, sig, TimelineConfig(block_s=0.37))
    b = timeline_for_signal(predictor, sig, TimelineConfig(block_s=30.0))
    assert [(r.start_s, r.label) for r in a.rows] == [(r.start_s, r.label) for r in b.rows]
    for ra, rb in zip(a.rows, b.rows):
        for lab in ra.probabilities:
            assert ra.probabilities[lab] == pytest.approx(rb.probabilities[lab], abs=1e-5)
    assert a.regions == b.regions


def test_smoothing_is_a_centred_mean(predictor):
    from moma.inference.timeline import TimelineConfig, timeline_for_signal

    sig = bursts([(0.0, 6.0)], 6.0, seed=4)
    tl = timeline_for_signal(predictor, sig, TimelineConfig(window_s=1.0, hop_s=0.5, smooth=3))
    raw = np.array([[r.raw_probabilities[lab] for lab in LABELS] for r in tl.rows])
    smooth = np.array([[r.probabilities[lab] for lab in LABELS] for r in tl.rows])
    np.testing.assert_allclose(smooth[3], raw[2:5].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(smooth[0], raw[0:2].mean(axis=0), atol=1e-6)  # edge: one neighbour


def test_short_recording_gets_one_partial_window(predictor):
    from moma.inference.timeline import timeline_for_signal

    tl = timeline_for_signal(predictor, bursts([(0.0, 0.8)], 0.8))
    assert len(tl.rows) == 1 and tl.rows[0].end_s == pytest.approx(0.8) and tl.rows[0].label in LABELS


@pytest.mark.slow
def test_cli_timeline(tiny_checkpoint, tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(str(wav), bursts([(1.0, 4.0), (6.0, 9.0)], 10.0), SR, subtype="PCM_16")
    res = run_cli("timeline", str(wav), "--vad", "energy", "--checkpoint", str(tiny_checkpoint),
                  "--out", str(tmp_path / "t.csv"),
                  "--plot", str(tmp_path / "t.png"), "--json", str(tmp_path / "t.json"))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == 17  # starts 0, 0.5, ..., 8.0 with 2 s windows over 10 s
    assert {r["label"] for r in rows} - {""} <= set(LABELS)
    assert (tmp_path / "t.png").stat().st_size > 5000
    assert len(json.loads((tmp_path / "t.json").read_text())["regions"]) == 2
    assert "2 speech regions" in res.stderr


@pytest.mark.slow
def test_cli_timeline_shows_one_progress_bar_on_a_terminal_unless_quiet(tiny_checkpoint, tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(str(wav), bursts([(1.0, 4.0), (6.0, 9.0)], 10.0), SR, subtype="PCM_16")
    common = ["--vad", "energy", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "t.csv")]
    code, shown = run_cli_on_a_terminal("timeline", str(wav), *common)
    seen = on_screen(shown)
    bars = [line for line in seen if "%|" in line]
    assert code == 0 and len(bars) == 1 and "timeline: 100%" in bars[0] and "10/10 s of audio" in bars[0], shown
    segment = re.compile(r"[\d.]+-[\d.]+ s: \w+ [\d.]+")  # "1.0-4.0 s: angry 0.53", one per merged segment
    assert any(segment.fullmatch(line) for line in seen), shown
    code, shown = run_cli_on_a_terminal("timeline", str(wav), *common, "-q")
    assert code == 0 and "%|" not in shown and not any(segment.fullmatch(line) for line in on_screen(shown)), shown
    assert "2 speech regions" in shown


def test_segments_merge_windows_of_one_label(predictor):
    from moma.inference.timeline import Timeline, TimelineConfig, TimelineRow

    def row(start: float, label: str, p: float) -> TimelineRow:
        probs = {lab: (p if lab == label else (1 - p) / 2) for lab in LABELS} if label else {}
        return TimelineRow(start, start + 2.0, 1.0 if label else 0.0, label, label, probs, probs)

    rows = [row(0.0, "angry", 0.6), row(0.5, "angry", 0.8), row(1.0, "", 0), row(1.5, "happy", 0.5),
            row(2.0, "happy", 0.7), row(2.5, "angry", 0.9)]
    tl = Timeline(LABELS, rows, [], 4.5, TimelineConfig(window_s=2.0, hop_s=0.5))
    got = [(s.start_s, s.end_s, s.label, s.confidence) for s in tl.segments()]
    # each window stands for the hop around its centre: 1.0 +- 0.25 s, 1.5 +- 0.25 s, ...
    assert got == [(0.75, 1.75, "angry", 0.7), (2.25, 3.25, "happy", 0.6), (3.25, 3.75, "angry", 0.9)]


def test_cli_timeline_formats_by_extension_and_plot_folder(tiny_checkpoint, tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(str(wav), bursts([(1.0, 4.0)], 6.0), SR, subtype="PCM_16")
    base = ("timeline", str(wav), "--vad", "energy", "--checkpoint", str(tiny_checkpoint))
    res = run_cli(*base, "--out", str(tmp_path / "t.srt"), "--plot", str(tmp_path / "plots") + "/")
    assert res.returncode == 0, res.stderr
    srt = (tmp_path / "t.srt").read_text()
    assert srt.startswith("1\n00:00:0") and " --> " in srt and "\r" not in srt
    assert srt.splitlines()[2].split()[0] in LABELS  # "angry 0.61"
    assert (tmp_path / "plots" / "long.png").is_file() and not (tmp_path / "plots.png").exists()
    assert " s: " in res.stderr  # the merged segments, "1.2-4.1 s: angry 0.61"
    res = run_cli(*base, "--out", str(tmp_path / "t.vtt"), "-q")
    assert res.returncode == 0 and (tmp_path / "t.vtt").read_text().startswith("WEBVTT\n\n1\n")
    assert " s: " not in res.stderr
    res = run_cli(*base, "--out", str(tmp_path / "t.txt"))
    assert res.returncode == 2 and not (tmp_path / "t.txt").exists()
    assert len(res.stderr.strip().splitlines()) == 1 and "t.txt" in res.stderr and "--format" in res.stderr
    res = run_cli(*base, "--out", str(tmp_path / "t.txt"), "--format", "json")
    assert res.returncode == 0 and "segments" in json.loads((tmp_path / "t.txt").read_text())
    res = run_cli(*base)  # CSV on stdout
    assert res.returncode == 0 and res.stdout.startswith("start_s,end_s,speech,label") and "\r" not in res.stdout


def test_timeline_uses_silero_by_default(tiny_checkpoint):
    """Noise bursts are loud but not speech: with the default VAD no window is classified."""
    from moma.inference.predictor import Predictor
    from moma.inference.timeline import timeline_for_signal

    tl = timeline_for_signal(Predictor.from_checkpoint(tiny_checkpoint), bursts([(1.0, 4.0)], 6.0))
    assert tl.regions == [] and not any(r.label for r in tl.rows) and tl.segments() == []


# Peak RSS is read from VmHWM (this process's own address space), not ru_maxrss: Linux carries
# ru_maxrss across fork+exec, so a child of a large pytest process would report the parent's peak.
ONE_HOUR_SCRIPT = """
import sys
from moma.inference.predictor import Predictor
from moma.inference.timeline import TimelineConfig, timeline_for_source
from moma.audio.vad import VadConfig
p = Predictor.from_checkpoint(sys.argv[1])
tl = timeline_for_source(p, sys.argv[2], TimelineConfig(hop_s=1.0, vad=VadConfig(engine="energy")))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(len(tl.rows), round(tl.duration_s), hwm)
"""


@pytest.mark.slow
def test_one_hour_recording_under_1gb(tiny_checkpoint, tmp_path):
    """A 1-hour 16 kHz file (115 MB as int16, 230 MB as float32) runs with bounded memory.

    Speech bursts cover 10 % of the hour so the model runs on ~360 windows and the test stays fast;
    reading, resampling-free decoding, VAD and windowing still touch every sample.
    """
    wav = tmp_path / "hour.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(wav), "w", samplerate=SR, channels=1, subtype="PCM_16") as fh:
        for minute in range(60):
            block = rng.normal(size=60 * SR).astype(np.float32) * 0.001
            block[: 6 * SR] += rng.normal(size=6 * SR).astype(np.float32) * 0.2  # 6 s of 'speech' a minute
            fh.write(block)
    res = subprocess.run([sys.executable, "-c", ONE_HOUR_SCRIPT, str(tiny_checkpoint), str(wav)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows, duration, maxrss_kb = map(int, res.stdout.split())
    assert duration == 3600 and rows >= 3599
    assert maxrss_kb < 1024 * 1024, f"peak RSS {maxrss_kb / 1024:.0f} MiB"
    print(f"1-hour timeline peak RSS: {maxrss_kb / 1024:.0f} MiB")


def test_windows_carry_the_out_of_domain_score(tiny_checkpoint, predictor, tmp_path):
    from helpers import add_test_ood

    from moma.audio.vad import VadConfig
    from moma.inference.predictor import Predictor
    from moma.inference.timeline import TimelineConfig, timeline_for_signal, write_timeline

    sig = bursts([(1.0, 4.0)], 5.0)
    cfg = TimelineConfig(window_s=1.0, hop_s=0.5, smooth=1)
    plain = timeline_for_signal(predictor, sig, cfg)
    assert all(r.ood_score is None and r.in_domain is None for r in plain.rows)
    with_ood = Predictor.from_checkpoint(add_test_ood(tiny_checkpoint, tmp_path / "ood.safetensors"),
                                         speech_check=VadConfig(engine="energy"))
    tl = timeline_for_signal(with_ood, sig, cfg)
    for r in tl.rows:
        assert (r.ood_score is not None) == bool(r.label)  # every classified window, and only those
        if r.label:
            window = sig[int(r.start_s * SR):int(r.end_s * SR)]
            assert r.ood_score == pytest.approx(with_ood.predict_prepared([window], check_speech=False)[0].ood_score,
                                                abs=1e-3)
            assert r.in_domain == (r.ood_score <= with_ood.ood.threshold)
    out = io.StringIO()
    write_timeline(tl, out, "csv")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["ood_score"] != "" for r in rows] == [bool(r.label) for r in tl.rows]
    assert "ood_score" in tl.to_dict()["windows"][0]
