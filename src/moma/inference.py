"""Using a trained checkpoint: scoring a manifest, predicting files and signals, plotting attention."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .audio import load_audio, prepare_signal
from .checkpoint import LoadedCheckpoint, load_checkpoint
from .corpora.base import Utterance
from .evaluate import aggregate_folds, predict_posteriors, score_posteriors, write_report
from .features import FeatureCache, Normaliser, compute_features, extract_features

log = logging.getLogger(__name__)


def normalise_features(normaliser: Normaliser, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
    """Apply a checkpoint's normaliser to one utterance.

    A speaker-normalised model meeting an unknown speaker with no statistics
    falls back to the utterance's own statistics, and says so.
    """
    if normaliser.mode == "speaker" and (speaker is None or not normaliser.has_speaker(speaker)):
        log.warning("speaker-normalised model, no statistics for speaker %r: using the utterance's own", speaker)
        return Normaliser("utterance").transform(feats).astype(np.float32, copy=False)
    return normaliser.transform(feats, speaker).astype(np.float32, copy=False)


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # per-frame weights for this input
    num_frames: int = 0


class Predictor:
    """Emotion predictions from a checkpoint, for signals and files.

    >>> predictor = Predictor.from_checkpoint("runs/demo/fold/best.safetensors")  # doctest: +SKIP
    >>> predictor.predict_file("speech.wav").label  # doctest: +SKIP
    'angry'
    """

    def __init__(self, loaded: LoadedCheckpoint, device: str = "cpu") -> None:
        self.loaded = loaded
        self.device = torch.device(device)
        self.labels = loaded.labels
        self.config = loaded.config

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu") -> "Predictor":
        return cls(load_checkpoint(path, device=device), device=device)

    def features(self, signal: np.ndarray, sampling_rate: int, name: str = "<signal>") -> np.ndarray:
        sig = prepare_signal(signal, sampling_rate, self.config.features.sample_rate, name=name)
        return normalise_features(self.loaded.normaliser, compute_features(sig, self.config.features))

    @torch.no_grad()
    def predict_features(self, feats: np.ndarray) -> Prediction:
        x = torch.from_numpy(feats).unsqueeze(0).to(self.device)  # [1, T, F]
        lengths = torch.tensor([feats.shape[0]], device=self.device)
        out = self.loaded.model(x, lengths)
        probs = torch.softmax(out.logits.float(), dim=-1)[0].cpu().numpy()
        attention = {}
        for key, value in (out.attention or {}).items():
            if value is None:
                continue
            arr = value.detach().float().cpu().numpy()
            attention[key] = arr if key == "gammas" else arr[0]
        return Prediction(label=self.labels[int(probs.argmax())],
                          probabilities={lab: float(p) for lab, p in zip(self.labels, probs)},
                          attention=attention, num_frames=int(feats.shape[0]))

    def predict_signal(self, signal: np.ndarray, sampling_rate: int) -> Prediction:
        return self.predict_features(self.features(signal, sampling_rate))

    def predict_file(self, path: str | Path) -> Prediction:
        sig = load_audio(path, self.config.features.sample_rate)
        return self.predict_features(normalise_features(self.loaded.normaliser,
                                                        compute_features(sig, self.config.features)))


def evaluate_checkpoint(checkpoint: str | Path, utterances: Sequence[Utterance], out_dir: str | Path, *,
                        cache_dir: str | Path, device: str = "cpu", command: str = "") -> dict[str, Any]:
    """Score a checkpoint on labelled utterances; writes report.json / report.md."""
    t0 = time.time()
    loaded = load_checkpoint(checkpoint, device=device)
    unknown = sorted({u.label for u in utterances} - set(loaded.labels))
    if unknown:
        raise ValueError(f"labels {', '.join(unknown)} are not among the model's labels "
                         f"({', '.join(loaded.labels)}); prepare the manifest with the matching label map")
    trained_on = set(loaded.info.get("test_speakers", []))
    feats = extract_features(list(utterances), FeatureCache(cache_dir, loaded.config.features))
    utts = {u.id: u for u in utterances}
    norm = loaded.normaliser
    if norm.mode == "speaker":
        by_speaker: dict[str, list[np.ndarray]] = {}
        for u in utterances:
            if not norm.has_speaker(u.speaker):
                by_speaker.setdefault(u.speaker, []).append(feats[u.id])
        for spk, fl in by_speaker.items():
            norm.fit_speaker(spk, fl)
    normed = {k: norm.transform(v, utts[k].speaker).astype(np.float32, copy=False) for k, v in feats.items()}
    posteriors = predict_posteriors(loaded.model, normed, list(normed), loaded.config, device)
    labels = loaded.labels
    fold = {"name": "evaluation", "test_speakers": sorted({u.speaker for u in utterances}),
            "val_speakers": [], "best_epoch": loaded.info.get("epoch", ""),
            "test": score_posteriors(posteriors, utts, labels)}
    report = {
        "title": f"Evaluation of {checkpoint}",
        "command": command,
        "corpus": utterances[0].corpus if utterances else "",
        "n_utterances": len(utterances),
        "n_speakers": len({u.speaker for u in utterances}),
        "labels": labels,
        "protocol": "fixed checkpoint on the given manifest",
        "normalisation": norm.describe(),
        "model": loaded.config.model.arch,
        "device": device,
        "wall_time_s": time.time() - t0,
        "summary": aggregate_folds([fold], labels),
        "folds": [fold],
        "notes": [f"The checkpoint's own test speakers were {', '.join(sorted(trained_on)) or 'not recorded'}."],
    }
    write_report(report, out_dir)
    return report


def plot_attention_for_file(checkpoint: str | Path, audio: str | Path, out: str | Path, *,
                            alignment: str | Path | None = None, phones: str | Path | None = None,
                            title: str | None = None, caption: str = "") -> Path:
    """Predict one file and plot waveform, spectrogram and both attention layers."""
    from .corpora.alignment import read_alignment
    from .plots import plot_attention

    predictor = Predictor.from_checkpoint(checkpoint)
    cfg = predictor.config.features
    sig = load_audio(audio, cfg.sample_rate)
    raw = compute_features(sig, cfg)
    pred = predictor.predict_features(normalise_features(predictor.loaded.normaliser, raw))
    probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(pred.probabilities.items(), key=lambda kv: -kv[1]))
    return plot_attention(out, sig, cfg.sample_rate, raw[:, :cfg.n_mels], pred.attention, cfg.frame_shift_ms,
                          title=title or f"{Path(audio).name}: {pred.label} ({probs})",
                          alignment=read_alignment(alignment) if alignment else None,
                          phones=read_alignment(phones) if phones else None,
                          caption=caption or f"moma plot-attention {checkpoint} {audio}")
