"""The one way a model's output becomes class probabilities, whoever asks for them.

    normalised features -> model forward -> segment aggregation -> temperature -> probabilities

``moma cv`` (test scoring), ``moma evaluate``, the :class:`~moma.inference.predictor.Predictor` (``moma predict``,
``moma timeline``, the service, the ONNX backends) and every MOMA member of a served ensemble call
:func:`class_posteriors` (or its two halves, :func:`window_logits` and :func:`aggregate`), so a model gives the
same probabilities whichever of them asks.

The forward pass is a callable, so this sits below training and inference: ``forward(padded (B, T, F) float32,
lengths (B,) int64, functionals (B, D_f) float32 or None) -> logits (B, C)``. :func:`torch_forward` wraps a
PyTorch model; a backend's ``run`` (PyTorch or onnxruntime) fits once its attention arrays are dropped.

A segment-trained model (``data.segment_length_s`` > 0) reads windows cut as training cut them
(:func:`moma.data.batching.make_items`: one every ``data.segment_hop_s``, the last ending at the utterance's last
frame; an utterance shorter than a window is one window), and an utterance's probabilities are the mean of its
windows' temperature-scaled posteriors, ``mean_w softmax(z_w / T)``. Any other model has one window, the whole
utterance: ``softmax(z / T)``. ``T`` is the checkpoint's fitted temperature (1: uncalibrated); it never changes
the argmax of a single window, so it never changes a non-segment model's prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import softmax

from moma.capabilities import bf16_unsupported_reason
from moma.config import RunConfig
from moma.data.batching import BucketBatchSampler, make_items, seconds_to_frames

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]
MAX_BATCH_FRAMES = 60000  # frames (10 ms) per padded forward call; long inputs get smaller batches
MAX_BATCH_ITEMS = 64  # windows per forward call


@dataclass(frozen=True)
class Segmenting:
    """How utterances are cut for a model: ``window`` frames every ``hop`` frames; 0: the whole utterance."""

    window: int = 0
    hop: int = 0

    @classmethod
    def of(cls, cfg: RunConfig) -> Segmenting:
        """The windows a run configuration trains on (``data.segment_length_s`` / ``segment_hop_s``)."""
        if cfg.data.segment_length_s <= 0:
            return cls()
        shift = cfg.features.frame_shift_ms
        return cls(seconds_to_frames(cfg.data.segment_length_s, shift),
                   seconds_to_frames(cfg.data.segment_hop_s, shift))


def window_logits(forward: Forward, features: Sequence[np.ndarray],
                  functionals: Sequence[np.ndarray] | np.ndarray | None = None, *,
                  segments: Segmenting = Segmenting(), max_frames: int | None = MAX_BATCH_FRAMES,
                  batch_size: int = MAX_BATCH_ITEMS) -> list[np.ndarray]:
    """Each utterance's window logits, ``(windows, C)`` float64 in window order, one array per input.

    ``features``: normalised (T_i, F) arrays; ``functionals``: a fusion model's standardised (D_f,) vector per
    input (each window reads its utterance's), else None. Windows of similar length are batched under
    ``max_frames`` padded frames and ``batch_size`` windows; ``max_frames=None`` runs every window in one call,
    in input order (the caller has batched already, e.g. to read the attention of that call).
    """
    if functionals is not None and len(functionals) != len(features):
        raise ValueError(f"{len(features)} inputs but {len(functionals)} functionals vectors")
    if len(features) == 0:
        return []
    keyed = {str(i): f for i, f in enumerate(features)}  # make_items reads each input's length by key
    items = make_items(keyed, list(keyed), None, segments.window, segments.hop)
    if max_frames is None:
        batches = [list(range(len(items)))]
    else:  # length-sorted, no shuffling: the same batches every time
        batches = BucketBatchSampler([it.end - it.start for it in items], max_frames, batch_size,
                                     shuffle=False).batches()
    found: list[list[tuple[int, np.ndarray]]] = [[] for _ in features]  # per input: (window start, logits)
    for batch in batches:
        rows = [items[j] for j in batch]
        lengths = np.array([it.end - it.start for it in rows], dtype=np.int64)
        dim = keyed[rows[0].key].shape[1]
        padded = np.zeros((len(rows), int(lengths.max()), dim), dtype=np.float32)  # (B, T_max, F), zero-padded
        for r, it in enumerate(rows):
            padded[r, :lengths[r]] = keyed[it.key][it.start:it.end]
        funcs = None if functionals is None else \
            np.stack([np.asarray(functionals[int(it.key)], dtype=np.float32) for it in rows])  # (B, D_f)
        logits = np.asarray(forward(padded, lengths, funcs), dtype=np.float64)  # (B, C)
        for it, z in zip(rows, logits):
            found[int(it.key)].append((it.start, z))
    return [np.stack([z for _, z in sorted(rows, key=lambda row: row[0])]) for rows in found]


def aggregate(logits: Sequence[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """Probabilities ``(n, C)``: per input, the mean over its windows (``(windows, C)`` logits each) of
    ``softmax(z / temperature)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(logits) == 0:
        return np.zeros((0, 0))
    return np.stack([softmax(np.asarray(z, dtype=np.float64) / temperature, axis=-1).mean(axis=0) for z in logits])


def class_posteriors(forward: Forward, features: Sequence[np.ndarray],
                     functionals: Sequence[np.ndarray] | np.ndarray | None = None, *,
                     segments: Segmenting = Segmenting(), temperature: float = 1.0,
                     max_frames: int | None = MAX_BATCH_FRAMES, batch_size: int = MAX_BATCH_ITEMS) -> np.ndarray:
    """Class probabilities ``(n, C)`` of normalised inputs: :func:`window_logits`, then :func:`aggregate`."""
    return aggregate(window_logits(forward, features, functionals, segments=segments, max_frames=max_frames,
                                   batch_size=batch_size), temperature)


def run_torch(model: torch.nn.Module, device: torch.device, features: np.ndarray, lengths: np.ndarray,
              functionals: np.ndarray | None = None, autocast: torch.dtype | None = None
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One forward pass of a PyTorch model on numpy inputs: logits (B, C) and its attention arrays (numpy,
    float32), under ``autocast`` when given."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    lens = torch.from_numpy(np.asarray(lengths, dtype=np.int64)).to(device)
    extra = () if functionals is None else (torch.from_numpy(np.asarray(functionals, np.float32)).to(device),)
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.bfloat16,
                                                enabled=autocast is not None):
        out = model(x, lens, *extra)
    attention = {k: v.detach().float().cpu().numpy() for k, v in (out.attention or {}).items() if v is not None}
    return out.logits.detach().float().cpu().numpy(), attention


def torch_forward(model: torch.nn.Module, device: torch.device | str = "cpu", bf16: bool = False) -> Forward:
    """A :data:`Forward` of a PyTorch model in eval mode; ``bf16`` (a checkpoint trained with ``train.bf16``)
    runs under bf16 autocast where the device supports it, else in fp32 (the figures move by rounding only,
    and the user gets them instead of an oneDNN error)."""
    model.eval()
    dev = torch.device(device)
    reason = bf16_unsupported_reason(dev.type) if bf16 else None
    if reason:
        log.info("scoring in fp32: %s", reason)
    autocast = torch.bfloat16 if bf16 and reason is None else None
    return lambda x, lengths, funcs: run_torch(model, dev, x, lengths, funcs, autocast)[0]


__all__ = ["MAX_BATCH_FRAMES", "Forward", "Segmenting", "aggregate", "class_posteriors", "run_torch",
           "torch_forward", "window_logits"]
