"""Helpers shared by the tests: a tiny trained checkpoint, a tiny fusion checkpoint, speech-like tones,
browser-style WebM/Opus, and the inference CLI in a subprocess."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

LABELS = ["angry", "happy", "neutral"]
LEVELS = {"angry": 0.5, "happy": 0.1, "neutral": 0.01}  # noise amplitude per class: a learnable cue


def make_tiny_checkpoint(out_dir: Path, arch: str = "moma", sets: Sequence[str] = ()) -> Path:
    """Train a tiny model on synthetic noise filterbanks and return its best.safetensors (``sets``: more
    ``--set`` overrides, e.g. ``data.segment_length_s=0.5`` for a segment-trained one)."""
    from moma.config import FeatureConfig, load_run_config
    from moma.features.frontend import compute_features
    from moma.features.normalise import Normaliser
    from moma.training.train import train_model

    rng = np.random.default_rng(0)
    fcfg = FeatureConfig()
    feats, label_of = {}, {}
    for i in range(24):
        label = LABELS[i % 3]
        sig = (rng.normal(size=int(rng.integers(4000, 9000))) * LEVELS[label]).astype(np.float32)
        feats[f"u{i:02d}"] = compute_features(sig, fcfg)
        label_of[f"u{i:02d}"] = LABELS.index(label)
    ids = sorted(feats)
    norm = Normaliser("global").fit([feats[k] for k in ids[:18]])
    normed = {k: norm.transform(v) for k, v in feats.items()}
    cfg = load_run_config(sets=[f"model.arch={arch}", "model.hidden_size=8", "model.context_dim=8",
                                "model.projection_dim=8", "train.lr=0.01", "train.max_epochs=2",
                                "train.early_stop_patience=0", "train.tensorboard=false", "train.num_threads=1",
                                *sets])
    result = train_model(cfg, normed, LABELS, label_of, ids[:18], ids[18:], out_dir, norm)
    return result.best_checkpoint


def make_fusion_checkpoint(path: Path, *, labels: Sequence[str] = ("calm", "angry"), functionals_dim: int = 88,
                           functionals_normaliser=None, info: dict | None = None,
                           functionals_level: float = 0.0) -> Path:
    """An untrained tiny fusion checkpoint (eGeMAPS functionals joined after pooling, per-utterance frames):
    for the code paths that must feed a fusion model its functionals. Default functionals statistics: fitted
    on standard normal rows; ``functionals_level`` as ``features.functionals_level``."""
    import torch

    from moma.checkpoint import save_checkpoint
    from moma.config import RunConfig, replace
    from moma.features.normalise import Normaliser
    from moma.model import build_model

    cfg = RunConfig()
    cfg = replace(cfg, features=replace(cfg.features, functionals="eGeMAPSv02", functionals_level=functionals_level),
                  model=replace(cfg.model, num_classes=len(labels), hidden_size=4, context_dim=4, projection_dim=8,
                                num_layers=1, functionals_dim=functionals_dim))
    torch.manual_seed(0)
    if functionals_normaliser is None:
        rows = np.random.default_rng(0).normal(size=(30, functionals_dim)).astype(np.float32)
        functionals_normaliser = Normaliser("global").fit([rows])
    return save_checkpoint(path, build_model(cfg.model).eval(), cfg, list(labels), Normaliser("utterance"),
                           info=info, functionals_normaliser=functionals_normaliser)


def write_tone(path: Path, seconds: float, sr: int = 16000, level: float = 0.1, seed: int = 0,
               subtype: str = "PCM_16") -> Path:
    """A noisy harmonic tone (speech-like enough for filterbanks) written with soundfile."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    sig = level * (0.6 * np.sin(2 * np.pi * 180 * t) + 0.3 * np.sin(2 * np.pi * 360 * t)
                   + 0.3 * rng.normal(size=t.shape))
    sf.write(str(path), sig.astype(np.float32), sr, subtype=subtype)
    return path



def make_webm_opus(seconds: float, sr: int = 48000) -> bytes:
    """Encode a tone as WebM/Opus with PyAV, as Chromium's MediaRecorder would produce."""
    import av

    t = np.arange(int(seconds * sr)) / sr
    sig = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as out:
        stream = out.add_stream("libopus", rate=sr)
        stream.layout = "mono"
        frame_len = 960
        for start in range(0, sig.shape[0], frame_len):
            chunk = sig[start:start + frame_len]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = sr
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# --------------------------------------------------------------------------- moma predict


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``moma ARGS`` (the real entry point) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "moma", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def run_cli_on_a_terminal(*args: str, columns: int = 100, timeout: float = 120) -> tuple[int, str]:
    """Run ``moma ARGS`` with stdout and stderr on a pseudo-terminal ``columns`` wide, as a user at a terminal
    would; (exit status, everything it wrote, progress bars' carriage returns included)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "moma", *args], stdout=follower, stderr=follower,
                            stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def on_screen(written: str) -> list[str]:
    """The lines a terminal shows for ``written``: of each line, what follows its last carriage return (a
    progress bar redraws itself over one line with them)."""
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in written.split("\n") if line.strip("\r")]


# --------------------------------------------------------------------------- signals for the perturbation tests

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


def schroeder_rt60(h: np.ndarray, sr: int) -> float:
    """RT60 from the Schroeder energy decay curve: T20 (-5 to -25 dB) times 3."""
    edc = np.cumsum((h ** 2)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    t = np.arange(h.size) / sr
    sel = (edc_db <= -5) & (edc_db >= -25)
    slope = np.polyfit(t[sel], edc_db[sel], 1)[0]  # dB per second
    return -60.0 / slope


# --------------------------------------------------------------------------- out-of-domain statistics


def add_test_ood(checkpoint: Path, out: Path) -> Path:
    """A copy of ``checkpoint`` carrying an out-of-domain density fitted on 24 speech-like signals of 4 "speakers"
    (:func:`speech_like`, each speaker its own level): their kin score in domain, tones and white noise do not."""
    from moma.checkpoint import load_checkpoint, save_checkpoint
    from moma.features.frontend import compute_features
    from moma.features.ood import fit_ood, utterance_statistics

    loaded = load_checkpoint(checkpoint)
    signals = [speech_like(i, 1.5, amp=0.1 + 0.05 * (i % 4)) for i in range(24)]
    reps = np.stack([utterance_statistics(compute_features(s, loaded.config.features)) for s in signals])
    ood = fit_ood(reps, [f"s{i % 4}" for i in range(24)], fitted_on="24 speech-like test signals")
    return save_checkpoint(out, loaded.model, loaded.config, loaded.labels, loaded.normaliser, info=loaded.info,
                           functionals_normaliser=loaded.functionals_normaliser, ood=ood)
