"""Figures: attention over time (like the paper's Figures 2-5) and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from moma.corpora.base import Alignment


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: figures go to files, never to a window
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure (creating its folder) and close it: pyplot keeps every open figure alive otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def add_caption(fig, text: str, width: int = 130) -> None:
    """Small grey monospace text at the figure's bottom left: the command and config that made it.

    Lines are wrapped at ``width`` characters; leave room for them with
    ``fig.tight_layout(rect=(0, bottom, 1, 1))``.
    """
    import textwrap

    fig.text(0.01, 0.01, "\n".join(textwrap.fill(line, width) for line in text.splitlines()), fontsize=6,
             family="monospace", va="bottom", ha="left", color="0.3")


def _as_numpy(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def plot_attention(out_path: str | Path, signal: np.ndarray, sample_rate: int, features: np.ndarray,
                   attention: dict[str, Any], frame_shift_ms: float = 10.0, *, title: str = "",
                   alignment: Alignment | None = None, phones: Alignment | None = None,
                   caption: str = "") -> Path:
    """Waveform, log-Mel spectrogram, layer-1 attention, the MOMA mixture and each block with its gamma.

    ``attention`` holds one utterance's weights (batch index removed):
    ``layer1`` [T], ``mixture`` [T], ``blocks`` [N, T], ``gammas`` [N]; absent
    entries are skipped. Word/syllable and phone boundaries are drawn when given.
    """
    plt = pyplot()
    layer1 = _as_numpy(attention.get("layer1"))
    mixture = _as_numpy(attention.get("mixture"))
    blocks = _as_numpy(attention.get("blocks"))
    gammas = _as_numpy(attention.get("gammas"))
    panels = 2 + (layer1 is not None) + (mixture is not None) + (blocks is not None)
    fig, axes = plt.subplots(panels, 1, figsize=(10, 1.7 * panels + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    t_sig = np.arange(len(signal)) / sample_rate
    duration = len(signal) / sample_rate
    n_frames = features.shape[0]
    # frame centres: Kaldi frames start every shift and are 25 ms long
    t_frames = (np.arange(n_frames) * frame_shift_ms + 12.5) / 1000.0
    ax = axes[0]
    ax.plot(t_sig, signal, lw=0.4, color="0.3")
    ax.set_ylabel("waveform")
    if alignment is not None:
        for s, e, lab in zip(alignment.starts, alignment.ends, alignment.labels):
            ax.axvline(s, color="tab:blue", lw=0.5, alpha=0.6)
            ax.text((s + e) / 2, ax.get_ylim()[1] * 0.85, lab, ha="center", va="top", fontsize=6, color="tab:blue")
    ax = axes[1]
    ax.imshow(features.T, origin="lower", aspect="auto", extent=(0, n_frames * frame_shift_ms / 1000.0, 0,
                                                                  features.shape[1]), cmap="magma")
    ax.set_ylabel("log-Mel bin")
    if phones is not None:
        for s, e, lab in zip(phones.starts, phones.ends, phones.labels):
            ax.axvline(s, color="white", lw=0.4, alpha=0.5)
            ax.text((s + e) / 2, features.shape[1] - 1, lab, ha="center", va="top", fontsize=5, color="white")
    row = 2
    if layer1 is not None:
        axes[row].plot(t_frames[: len(layer1)], layer1, color="tab:green")
        axes[row].set_ylabel("MOMA1\n(layer 1)")
        row += 1
    if mixture is not None:
        axes[row].plot(t_frames[: len(mixture)], mixture, color="tab:red")
        axes[row].set_ylabel("MOMA2\n(mixture)")
        row += 1
    if blocks is not None:
        for n, att in enumerate(blocks):
            g = f" (γ={gammas[n]:.2f})" if gammas is not None else ""
            axes[row].plot(t_frames[: len(att)], att, lw=0.8, label=f"block {n + 1}{g}")
        axes[row].set_ylabel("blocks")
        axes[row].legend(fontsize=6, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, duration)
    if title:
        fig.suptitle(title, fontsize=10)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return save_figure(fig, out_path)


def plot_confusion(out_path: str | Path, confusion: Sequence[Sequence[int]], labels: Sequence[str], *,
                   title: str = "") -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    plt = pyplot()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.7 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_path)
