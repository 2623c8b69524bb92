"""The GE2E speaker encoder that ships inside the ``resemblyzer`` wheel, as a frame-level front end.

Resemblyzer (Apache-2.0, https://github.com/resemble-ai/Resemblyzer) packs the weights of a GE2E speaker
encoder (Wan et al., ICASSP 2018) trained on LibriSpeech, VoxCeleb 1 and 2: a 3-layer LSTM (40 -> 256) on
40 Mel power bands, then linear(256, 256) + ReLU whose L2-normed output is the speaker embedding. Only the
weights file is read here (``pretrained.pt``, a dict of tensors, loaded with ``weights_only=True`` so no
pickled code runs, and checked against its sha256); the ``resemblyzer`` package itself is never imported (its
audio module needs webrtcvad).

Input, as resemblyzer computes it: ``librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160,
n_mels=40)`` (power, not log), after the signal is raised to -30 dBFS RMS when it is quieter (the encoder's
training audio was; :func:`normalise_volume`). Resemblyzer also trims long silences with webrtcvad; that is
not done here, so every frame keeps its place in time.

Alignment: frames are taken with ``center=False``, so frame ``i`` covers samples ``[160 i, 160 i + 400)``:
the same 25 ms windows every 10 ms as the Kaldi filterbank frames with ``snip_edges`` (the default), the same
count (:func:`moma.features.frontend.num_frames`) and the same centres (``frame_centres``). Resemblyzer's own
frames are centred (frame ``i`` around sample ``160 i``); windows shifted by 2.5 ms have the same statistics,
and the LSTM is causal, so only the alignment changes. The LSTM runs over the whole utterance at once
(resemblyzer cuts 1.6 s windows for its embedding; per-frame outputs need the continuous state).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"  # resemblyzer 0.1.4
SAMPLE_RATE = 16000  # Hz, the encoder's training rate
N_FFT, HOP, N_MELS = 400, 160, 40  # samples (25 ms), samples (10 ms), Mel bands: resemblyzer's hparams
HIDDEN = 256  # LSTM units = size of one layer's frame output
LAYERS = 3  # stacked LSTM layers
TARGET_DBFS = -30.0  # dBFS RMS the training audio was raised to
INSTALL_HINT = "pip install 'moma-ser[pretrained]'"


class EncoderWeightsError(ValueError):
    """The pretrained weights are missing or are not the expected file; the message says what to do."""


def weights_path() -> Path:
    """``pretrained.pt`` inside the installed resemblyzer wheel (found without importing the package)."""
    spec = importlib.util.find_spec("resemblyzer")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / "pretrained.pt"
        if path.is_file():
            return path
    raise EncoderWeightsError("features.frontend=ge2e needs the GE2E weights of the resemblyzer wheel, which is "
                              f"not installed: {INSTALL_HINT}")


@functools.lru_cache(maxsize=None)
def _checked_path() -> Path:
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise EncoderWeightsError(f"{path}: sha256 {digest[:16]}... is not the GE2E weights moma was built for "
                                  f"(resemblyzer 0.1.4, {WEIGHTS_SHA256[:16]}...): pip install "
                                  "--force-reinstall --no-deps resemblyzer==0.1.4")
    return path


def weights_sha256() -> str:
    """The checked sha256 of the weights (raises :class:`EncoderWeightsError` when missing or different)."""
    _checked_path()
    return WEIGHTS_SHA256


def normalise_volume(signal: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Scale ``signal`` up so that its RMS is ``target_dbfs`` (never down), as resemblyzer's
    ``normalize_volume(wav, -30, increase_only=True)``; silence stays silence."""
    x = np.asarray(signal, dtype=np.float32)
    power = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    if power <= 0.0:
        return x
    change_db = target_dbfs - 10.0 * np.log10(power)
    return x if change_db <= 0 else (x * np.float32(10.0 ** (change_db / 20.0)))


def mel_frames(signal: np.ndarray) -> np.ndarray:
    """The encoder's input: 40 Mel power bands every 10 ms, (frames, 40) float32, frames as documented above."""
    import librosa

    x = normalise_volume(signal)
    mel = librosa.feature.melspectrogram(y=x, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS,
                                         center=False)  # (40, frames)
    return np.ascontiguousarray(mel.T, dtype=np.float32)  # (40, frames) -> (frames, 40)


class GE2EEncoder:
    """The pretrained encoder as three single-layer LSTMs, so that every layer's per-frame output is
    available (``nn.LSTM`` returns only the last layer's), plus the embedding head. Frozen, eval mode, CPU."""

    def __init__(self) -> None:
        import torch
        from torch import nn

        state = torch.load(_checked_path(), weights_only=True, map_location="cpu")["model_state"]
        self.lstms = nn.ModuleList(nn.LSTM(N_MELS if i == 0 else HIDDEN, HIDDEN, batch_first=True)
                                   for i in range(LAYERS))
        for i, lstm in enumerate(self.lstms):
            lstm.load_state_dict({f"{name}_l0": state[f"lstm.{name}_l{i}"]
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.linear.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
        for module in (self.lstms, self.linear):
            module.eval().requires_grad_(False)

    def layer_outputs(self, signal: np.ndarray) -> np.ndarray:
        """Every LSTM layer's output at every frame of a 16 kHz signal: (frames, 3, 256) float32."""
        import torch

        mel = mel_frames(signal)
        if mel.shape[0] == 0:
            raise ValueError(f"signal of {len(signal)} samples is shorter than one 25 ms GE2E frame ({N_FFT})")
        x = torch.from_numpy(mel).unsqueeze(0)  # (frames, 40) -> (1, frames, 40)
        outs = []
        # One thread: a batch-1 LSTM step is too small to share, and on a busy 2-core machine two threads took
        # 1.87 s per EmoDB utterance against 0.13 s with one (workers, not threads, parallelise extraction)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for lstm in self.lstms:
                    x, _ = lstm(x)  # (1, frames, 256)
                    outs.append(x[0])
        finally:
            torch.set_num_threads(threads)
        return torch.stack(outs, dim=1).numpy()  # 3 x (frames, 256) -> (frames, 3, 256)

    def embedding(self, signal: np.ndarray) -> np.ndarray:
        """Resemblyzer's ``forward`` on the whole signal: L2-normed ReLU(linear(last layer's last state))."""
        import torch

        last = torch.from_numpy(self.layer_outputs(signal)[-1, -1])  # (256,)
        with torch.inference_mode():
            emb = torch.relu(self.linear(last))
        return (emb / emb.norm().clamp_min(1e-12)).numpy()


@functools.lru_cache(maxsize=1)
def get_encoder() -> GE2EEncoder:
    """One encoder per process (workers build their own)."""
    log.info("GE2E encoder loaded from %s", _checked_path())
    return GE2EEncoder()


def parse_layer(layer: str) -> int | None:
    """``features.ge2e_layer`` -> 0-based layer index, or None for ``weighted`` (all three)."""
    text = str(layer).strip()
    if text == "weighted":
        return None
    if text in ("1", "2", "3"):
        return int(text) - 1
    raise ValueError(f"features.ge2e_layer must be 1, 2, 3 or weighted, got {layer!r}")


def ge2e_frames(signal: np.ndarray, layer: str) -> np.ndarray:
    """Frame features: one layer's outputs (frames, 256), or all three flattened (frames, 3 * 256) in layer
    order for the model's learned weighting (it reshapes them back to (frames, 3, 256))."""
    index = parse_layer(layer)
    outs = get_encoder().layer_outputs(signal)  # (frames, 3, 256)
    if index is None:
        return outs.reshape(outs.shape[0], LAYERS * HIDDEN)  # (frames, 3, 256) -> (frames, 768)
    return np.ascontiguousarray(outs[:, index])


def ge2e_stats(signal: np.ndarray, layer: int = LAYERS) -> np.ndarray:
    """Utterance statistics of one layer's frames (1-based ``layer``): mean then std over time, (512,)."""
    frames = get_encoder().layer_outputs(signal)[:, layer - 1]  # (frames, 256)
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)]).astype(np.float32)
