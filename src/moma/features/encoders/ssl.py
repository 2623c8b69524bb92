"""Self-supervised speech encoders from ``transformers`` as a frozen frame-level front end.

WavLM, HuBERT, wav2vec 2.0 (any model whose ``AutoModel`` takes raw 16 kHz audio) and Whisper's encoder, named
by a hub id or a local folder (``features.ssl_model``). The model is loaded once per process, frozen, in eval
mode, and returns every hidden state (the CNN / embedding output as layer 0, then each transformer layer); the
layers named by ``features.ssl_layers`` are stacked per frame, so that MOMA learns a softmax weighting over them
(``model.input_layers``). Weights are read from safetensors when the folder has them (transformers reads a
``pytorch_model.bin`` with ``torch.load(weights_only=True)``, which runs no pickled code).

Frames: wav2vec 2.0-style encoders give one frame every 20 ms whose receptive field is 400 samples from
``320 k`` (centre ``320 k + 200``); Whisper's encoder one every 20 ms centred near ``320 k``. Each hidden state is
linearly interpolated onto the filterbank frame centres (``160 i + 200`` samples, 10 ms apart), so every front
end gives the same number of frames at the same times (:func:`moma.features.frontend.num_frames`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import numpy as np

from moma.capabilities import require_extra

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, every supported encoder's input rate
WHISPER_CHUNK = 30 * SAMPLE_RATE  # samples: Whisper's encoder always reads 30 s windows
WEIGHT_FILES = ("*.safetensors", "*.bin")  # what a model folder's hash covers, besides its JSON files


def resolve_folder(name: str) -> Path:
    """A local model folder, or the hub snapshot of ``name`` (downloaded once by huggingface_hub, or read from
    its cache offline with ``HF_HUB_OFFLINE=1``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name.startswith((".", "/", "~")):
        raise ValueError(f"features.ssl_model: {name} is not a model folder (config.json, weights, "
                         "preprocessor_config.json)")
    hub = require_extra("huggingface_hub", "ssl", f"features.ssl_model={name}")
    try:
        return Path(hub.snapshot_download(repo_id=name, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline, unknown id, no network: one line naming the model
        raise ValueError(f"features.ssl_model: cannot fetch {name!r} from the Hugging Face hub ({type(exc).__name__}"
                         "); download it once where there is a network, or give a local folder") from None


@functools.lru_cache(maxsize=None)
def folder_sha256(folder: str) -> str:
    """sha256 over a model folder's JSON files and weights (names and bytes, sorted): the cache key and the
    identity a checkpoint records."""
    h = hashlib.sha256()
    files = sorted({p for pattern in ("*.json", *WEIGHT_FILES) for p in Path(folder).glob(pattern)})
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise ValueError(f"features.ssl_model: {folder} holds no weights (*.safetensors or *.bin)")
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def parse_layers(spec: str, available: int) -> list[int]:
    """``features.ssl_layers`` (all | one index | comma list; 0 is the CNN / embedding output) -> indices."""
    text = str(spec).strip()
    if text == "all":
        return list(range(available))
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"features.ssl_layers must be all, an index or a comma list, got {spec!r}") from None
    if not layers or any(not 0 <= i < available for i in layers):
        raise ValueError(f"features.ssl_layers {spec!r}: this model has hidden states 0..{available - 1}")
    return layers


def interpolate_frames(states: np.ndarray, src_first: float, src_step: float, n_out: int) -> np.ndarray:
    """Linear interpolation along time of ``states`` (T_src, ...) whose frame k is centred at
    ``src_first + k * src_step`` samples onto the filterbank centres ``160 i + 200``, i < ``n_out``."""
    pos = (160.0 * np.arange(n_out) + 200.0 - src_first) / src_step  # fractional source index per output frame
    pos = np.clip(pos, 0.0, states.shape[0] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, states.shape[0] - 1)
    w = (pos - lo).astype(np.float32).reshape((-1,) + (1,) * (states.ndim - 1))
    return (1.0 - w) * states[lo] + w * states[hi]


class SSLEncoder:
    """One frozen transformers encoder; :meth:`frames_batch` returns each signal's stacked hidden states."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        transformers = require_extra("transformers", "ssl", f"features.ssl_model={name}")
        self.folder = resolve_folder(name)
        self.device = device
        config = transformers.AutoConfig.from_pretrained(self.folder)
        self.whisper = config.model_type == "whisper"
        self.extractor = transformers.AutoFeatureExtractor.from_pretrained(self.folder)
        model = transformers.AutoModel.from_pretrained(self.folder)
        self.model = (model.get_encoder() if self.whisper else model).to(device).eval().requires_grad_(False)
        # attention masks are only exact for layer-normed CNN features: group norm mixes the padding in
        self.maskable = not self.whisper and getattr(config, "feat_extract_norm", "layer") == "layer"
        self.kernels = list(getattr(config, "conv_kernel", []))
        self.strides = list(getattr(config, "conv_stride", []))

    def valid_frames(self, n: int) -> int:
        """Encoder frames that ``n`` samples give (the CNN's output length, no padding frames)."""
        if self.whisper:
            return min(1500, -(-n // 320))
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
        return max(n, 0)

    def hidden_states(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """Each signal's hidden states at the encoder's own rate: (T_enc, layers, D) float32."""
        import torch

        if self.whisper or not self.maskable:
            if len(signals) > 1:  # Whisper pads every input to 30 s itself; group norm cannot batch exactly
                return [self.hidden_states([s])[0] for s in signals]
        # Whisper's extractor pads to 30 s by itself (its default); the others pad to the longest signal
        padding = {} if self.whisper else {"padding": True, "return_attention_mask": self.maskable}
        inputs = self.extractor([np.asarray(s, dtype=np.float32) for s in signals], sampling_rate=SAMPLE_RATE,
                                return_tensors="pt", **padding)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_values", "input_features",
                                                                           "attention_mask")}
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=True)
        stacked = torch.stack(out.hidden_states, dim=2).float().cpu().numpy()  # L x (B, T, D) -> (B, T, L, D)
        return [stacked[b, :self.valid_frames(len(s))] for b, s in enumerate(signals)]

    def frames_batch(self, signals: list[np.ndarray], layers: str, n_frames: list[int]) -> list[np.ndarray]:
        """Each signal's chosen layers on the filterbank's frames: (n_frames, layers * D) float32."""
        if self.whisper and any(len(s) > WHISPER_CHUNK for s in signals):
            return [self.whisper_long(s, layers, n) for s, n in zip(signals, n_frames)]
        out = []
        for states, n in zip(self.hidden_states(signals), n_frames):
            chosen = states[:, parse_layers(layers, states.shape[1])]  # (T_enc, L, D)
            first = 0.0 if self.whisper else 200.0  # samples: centre of encoder frame 0
            frames = interpolate_frames(chosen, first, 320.0, n)  # (n, L, D)
            out.append(np.ascontiguousarray(frames.reshape(n, -1), dtype=np.float32))  # (n, L, D) -> (n, L*D)
        return out

    def whisper_long(self, signal: np.ndarray, layers: str, n_frames: int) -> np.ndarray:
        """Whisper over a signal longer than 30 s: 30 s chunks one after the other, frames joined."""
        parts = []
        for start in range(0, len(signal), WHISPER_CHUNK):
            chunk = signal[start:start + WHISPER_CHUNK]
            # 10 ms frames of the chunk, so that the chunks' frames follow each other every 10 ms
            parts.append(self.frames_batch([chunk], layers, [max(len(chunk) // 160, 1)])[0])
        joined = np.concatenate(parts)
        return joined[:n_frames] if joined.shape[0] >= n_frames else np.pad(
            joined, ((0, n_frames - joined.shape[0]), (0, 0)), mode="edge")


@functools.lru_cache(maxsize=2)
def get_encoder(name: str, device: str = "cpu") -> SSLEncoder:
    """One encoder per (model, device) and process."""
    log.info("SSL encoder %s loaded on %s", name, device)
    return SSLEncoder(name, device)
