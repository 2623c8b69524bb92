"""Emotion over time for recordings of any length (``moma timeline``).

The recording is read in blocks (``moma.audio.io.iter_audio_blocks``), so memory
depends on the block and window sizes, not on the recording's length. Each
block goes through the VAD (``moma.audio.vad``, Silero by default); fixed-length windows slide
over the signal, and a window is classified when enough of its frames are
speech. Windows of one recording all have the same length, so they are
batched with no padding. Probabilities are then smoothed with a centred
moving average over neighbouring speech windows; the smoothed argmax is the
label, and the unsmoothed one is kept as ``raw_label``.

Only per-window numbers are kept (a few floats per hop; an hour at a 0.5 s
hop is 7200 rows), never the audio.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from moma.audio.io import AudioSource, iter_audio_blocks
from moma.audio.vad import FRAME_S, VadConfig, make_vad
from moma.inference.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class TimelineConfig:
    window_s: float = 2.0  # s, analysis window given to the model
    hop_s: float = 0.5  # s between window starts
    min_speech: float = 0.3  # fraction of a window's VAD frames that must be speech for it to be classified
    smooth: int = 5  # windows in the centred moving average of probabilities (1 = none)
    block_s: float = 30.0  # s of audio decoded at a time
    batch_size: int = 16  # windows per model call
    vad: VadConfig | None = None  # None: the predictor's own speech check (one VAD for predict and timeline)

    def validate(self) -> None:
        if self.window_s <= 0 or self.hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be positive, got {self.window_s} and {self.hop_s}")
        if not 0.0 <= self.min_speech <= 1.0:
            raise ValueError(f"min_speech must lie in [0, 1], got {self.min_speech}")
        if self.smooth < 1 or self.batch_size < 1 or self.block_s <= 0:
            raise ValueError("smooth and batch_size must be >= 1 and block_s positive")


@dataclass
class TimelineRow:
    start_s: float
    end_s: float
    speech: float  # fraction of VAD frames in the window that are speech
    label: str = ""  # smoothed argmax; "" for a window with too little speech
    raw_label: str = ""  # argmax of this window alone
    probabilities: dict[str, float] = field(default_factory=dict)  # smoothed
    raw_probabilities: dict[str, float] = field(default_factory=dict)
    ood_score: float | None = None  # this window's out-of-domain score (None: unclassified, or no statistics)
    in_domain: bool | None = None  # ood_score within the model's threshold (set on whole utterances)


@dataclass
class Segment:
    """A stretch of consecutive classified windows with one smoothed label."""

    start_s: float
    end_s: float
    label: str
    confidence: float  # mean smoothed probability of ``label`` over the segment's windows


TIMELINE_FORMATS = {".csv": "csv", ".json": "json", ".srt": "srt", ".vtt": "vtt"}


@dataclass
class Timeline:
    labels: list[str]
    rows: list[TimelineRow]
    regions: list[tuple[float, float]]  # speech regions (start s, end s) from the VAD
    duration_s: float
    config: TimelineConfig

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "duration_s": round(self.duration_s, 3),
                "config": asdict(self.config), "regions": [list(r) for r in self.regions],
                "segments": [asdict(s) for s in self.segments()],
                "windows": [asdict(r) for r in self.rows]}

    def segments(self) -> list[Segment]:
        """Runs of classified windows with the same smoothed label. Each window stands for the hop around
        its centre (windows overlap), so segments do not overlap; an unclassified window ends a run."""
        half = self.config.hop_s / 2.0
        out: list[Segment] = []
        probs: list[float] = []
        previous = ""
        for r in self.rows:
            mid = (r.start_s + r.end_s) / 2.0
            start, end = max(0.0, mid - half), min(self.duration_s, mid + half)
            if r.label and r.label == previous:
                out[-1].end_s = round(end, 3)
                probs.append(r.probabilities[r.label])
            elif r.label:
                if out and probs:
                    out[-1].confidence = round(float(np.mean(probs)), 3)
                out.append(Segment(round(start, 3), round(end, 3), r.label, 0.0))
                probs = [r.probabilities[r.label]]
            previous = r.label
        if out and probs:
            out[-1].confidence = round(float(np.mean(probs)), 3)
        return out

    def summary(self) -> dict[str, float]:
        """Share of classified speech time per label (by smoothed label)."""
        speech = [r for r in self.rows if r.label]
        if not speech:
            return {}
        return {lab: sum(r.label == lab for r in speech) / len(speech) for lab in self.labels}


def timeline_from_blocks(predictor: Predictor, blocks: Iterable[tuple[float, np.ndarray]],
                         config: TimelineConfig | None = None,
                         progress: Callable[[float], None] | None = None) -> Timeline:
    """Build a timeline from ``(start s, mono float32 block at predictor.sample_rate)`` pairs in order.
    ``progress`` is called with the seconds of audio done after each model call and at the end."""
    cfg = config or TimelineConfig()
    cfg.validate()
    sr = predictor.sample_rate
    win = int(round(cfg.window_s * sr))
    hop = int(round(cfg.hop_s * sr))
    vad_per_sample = int(round(FRAME_S * sr))
    vad = make_vad(sr, cfg.vad or predictor.speech_check or VadConfig())
    rows: list[TimelineRow] = []
    regions: list[tuple[float, float]] = []
    pending: list[tuple[int, np.ndarray]] = []  # (row index, window samples) awaiting the model
    buf = np.zeros(0, dtype=np.float32)  # samples from buf_start on
    flags = np.zeros(0, dtype=bool)  # VAD flags of frames from flag_start on
    buf_start = 0  # sample index of buf[0]
    flag_start = 0  # VAD frame index of flags[0]
    next_start = 0  # sample index of the next window
    total = 0

    def flush() -> None:
        if not pending:
            return
        preds = predictor.predict_prepared([w for _, w in pending], check_speech=False)  # VAD done here
        for (idx, _), pred in zip(pending, preds):
            rows[idx].raw_label = pred.label
            rows[idx].raw_probabilities = pred.probabilities
            rows[idx].in_domain, rows[idx].ood_score = pred.in_domain, pred.ood_score and round(pred.ood_score, 4)
        pending.clear()
        if progress is not None:
            progress(rows[-1].end_s)

    def emit(start: int, end: int) -> None:
        window = buf[start - buf_start:end - buf_start]
        f0, f1 = start // vad_per_sample, max(start // vad_per_sample + 1, end // vad_per_sample)
        wf = flags[max(0, f0 - flag_start):max(0, f1 - flag_start)]
        speech = float(wf.mean()) if wf.size else 0.0
        rows.append(TimelineRow(start_s=round(start / sr, 3), end_s=round(end / sr, 3), speech=round(speech, 3)))
        if speech >= cfg.min_speech and speech > 0 and window.shape[0] >= int(0.025 * sr):
            pending.append((len(rows) - 1, window.copy()))
            if len(pending) >= cfg.batch_size:
                flush()

    def windows(final: bool) -> None:
        nonlocal next_start, buf, buf_start, flags, flag_start
        while next_start + win <= total or (final and next_start < total and (next_start == 0 or
                                                                             next_start + win - hop < total)):
            emit(next_start, min(next_start + win, total))
            next_start += hop
        # Drop what no future window needs, so memory stays bounded by the window.
        drop = min(next_start, total) - buf_start
        if drop > 0:
            buf = buf[drop:]
            buf_start += drop
        drop_frames = buf_start // vad_per_sample - flag_start
        if drop_frames > 0:
            flags = flags[drop_frames:]
            flag_start += drop_frames

    for _, block in blocks:
        block = np.asarray(block, dtype=np.float32)
        buf = np.concatenate([buf, block]) if buf.size else block
        total += block.shape[0]
        new_flags = vad.accept(block)
        regions.extend(vad.regions(new_flags, flag_start + flags.shape[0]))
        flags = np.concatenate([flags, new_flags]) if flags.size else new_flags
        windows(final=False)
    tail = vad.finish()  # the frames of a last partial VAD chunk
    regions.extend(vad.regions(tail, flag_start + flags.shape[0], final=True))
    flags = np.concatenate([flags, tail])
    windows(final=True)
    flush()
    if progress is not None:
        progress(total / sr)
    _smooth(rows, predictor.labels, cfg.smooth)
    log.info("timeline: %.1f s, %d windows (%d with speech), %d speech regions", total / sr, len(rows),
             sum(bool(r.label) for r in rows), len(regions))
    return Timeline(labels=list(predictor.labels), rows=rows, regions=regions, duration_s=total / sr, config=cfg)


def _smooth(rows: list[TimelineRow], labels: list[str], width: int) -> None:
    """Centred moving average of probabilities over speech windows within ``width // 2`` hops."""
    half = width // 2
    speech_idx = [i for i, r in enumerate(rows) if r.raw_probabilities]
    if not speech_idx:
        return
    probs = np.array([[rows[i].raw_probabilities[lab] for lab in labels] for i in speech_idx])
    pos = np.array(speech_idx)
    for k, i in enumerate(speech_idx):
        near = np.abs(pos - i) <= half  # neighbours in time, not in list order: silence breaks smoothing
        mean = probs[near].mean(axis=0)
        rows[i].probabilities = {lab: round(float(p), 6) for lab, p in zip(labels, mean)}
        rows[i].label = labels[int(mean.argmax())]


def timeline_for_source(predictor: Predictor, source: AudioSource, config: TimelineConfig | None = None,
                        progress: Callable[[float], None] | None = None) -> Timeline:
    """Timeline of a file (path, bytes or file object libsndfile reads), read block by block; ``progress``
    as :func:`timeline_from_blocks`."""
    cfg = config or TimelineConfig()
    return timeline_from_blocks(predictor, iter_audio_blocks(source, cfg.block_s, predictor.sample_rate), cfg,
                                progress)


def timeline_for_signal(predictor: Predictor, signal: np.ndarray, config: TimelineConfig | None = None) -> Timeline:
    """Timeline of a mono float32 signal already at ``predictor.sample_rate`` (e.g. a decoded upload)."""
    cfg = config or TimelineConfig()
    return timeline_from_blocks(predictor, _split(signal, cfg.block_s, predictor.sample_rate), cfg)


def _split(signal: np.ndarray, block_s: float, sample_rate: int) -> Iterator[tuple[float, np.ndarray]]:
    """``(start s, block)`` pairs of an in-memory signal, as iter_audio_blocks gives for a file."""
    size = max(1, int(block_s * sample_rate))
    for start in range(0, signal.shape[0], size):
        yield start / sample_rate, signal[start:start + size]


def timeline_format(out: str | Path | None, fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given, else from ``out``'s extension (csv for stdout); ValueError, one
    line, for an extension with no writer."""
    if fmt is not None:
        if fmt not in TIMELINE_FORMATS.values():
            raise ValueError(f"unknown timeline format {fmt!r}; choose one of {', '.join(TIMELINE_FORMATS.values())}")
        return fmt
    if out is None:
        return "csv"
    suffix = Path(out).suffix.lower()
    if suffix not in TIMELINE_FORMATS:
        raise ValueError(f"{out}: cannot tell the timeline format from the extension {suffix or '(none)'!r}; use "
                         f"{', '.join(TIMELINE_FORMATS)} or --format {{{','.join(TIMELINE_FORMATS.values())}}}")
    return TIMELINE_FORMATS[suffix]


def write_timeline(timeline: Timeline, out: str | Path | TextIO, fmt: str = "csv") -> None:
    """Write the timeline as ``csv`` (one row per window), ``json`` (everything) or ``srt`` / ``vtt``
    (one subtitle per merged segment: "fear 0.61"). Files get "\n" line ends."""
    if isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as fh:
            write_timeline(timeline, fh, fmt)
        return
    if fmt == "csv":
        write_timeline_csv(timeline, out)
    elif fmt == "json":
        out.write(json.dumps(timeline.to_dict()) + "\n")
    elif fmt in ("srt", "vtt"):
        out.write(subtitles(timeline.segments(), fmt))
    else:
        raise ValueError(f"unknown timeline format {fmt!r}")


def subtitles(segments: list[Segment], fmt: str) -> str:
    """SubRip (``srt``) or WebVTT (``vtt``) text, one cue per segment."""
    sep = "," if fmt == "srt" else "."
    cues = ["WEBVTT\n"] if fmt == "vtt" else []
    for n, seg in enumerate(segments, 1):
        times = f"{_clock(seg.start_s, sep)} --> {_clock(seg.end_s, sep)}"
        cues.append(f"{n}\n{times}\n{seg.label} {seg.confidence:.2f}\n")
    return "\n".join(cues)


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def write_timeline_csv(timeline: Timeline, out: TextIO) -> None:
    """One row per window: times, speech fraction, smoothed label and probabilities, raw label, out-of-domain score."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["start_s", "end_s", "speech", "label", "raw_label", *[f"p_{lab}" for lab in timeline.labels],
                     "ood_score", "in_domain"])
    for r in timeline.rows:
        writer.writerow([f"{r.start_s:.3f}", f"{r.end_s:.3f}", f"{r.speech:.3f}", r.label, r.raw_label,
                         *[f"{r.probabilities[lab]:.6f}" if r.probabilities else "" for lab in timeline.labels],
                         "" if r.ood_score is None else f"{r.ood_score:.4f}",
                         "" if r.in_domain is None else str(r.in_domain).lower()])


def plot_timeline(timeline: Timeline, path: str | Path, title: str = "") -> Path:
    """Stacked smoothed probabilities over time, speech regions shaded beneath."""
    from moma.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 3.2))
    mids = np.array([(r.start_s + r.end_s) / 2 for r in timeline.rows])
    probs = np.array([[r.probabilities.get(lab, np.nan) for lab in timeline.labels] for r in timeline.rows]) \
        if timeline.rows else np.zeros((0, len(timeline.labels)))
    for start, end in timeline.regions:
        ax.axvspan(start, end, ymin=0, ymax=0.03, color="0.3", lw=0)
    if mids.size:
        ax.stackplot(mids, np.nan_to_num(probs.T), labels=timeline.labels, alpha=0.85)
    ax.set_xlim(0, max(timeline.duration_s, 1e-3))
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(title or "emotion over time (speech regions marked at the bottom)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
