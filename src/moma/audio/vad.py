"""An offline, streaming, energy-based voice-activity detector.

No model and no download: each 10 ms frame's energy (dBFS) is compared with
an adaptive threshold, ``max(floor_db, min(noise + margin_db, loud - margin_db))``
where ``noise`` and ``loud`` are the 10th and 95th percentiles of the frame
energies over the last ``history_s`` seconds. The percentile noise floor
follows slow changes of background level; the ``loud - margin`` cap keeps a
recording that is speech throughout (no pauses to learn the floor from) from
being called silence. Frames are non-overlapping, so a signal fed in blocks
gives exactly the frames it gives in one piece (when blocks are whole frames).

Speech regions are formed with a small state machine: a region opens at a
speech frame and closes after ``merge_gap_s`` of silence; regions shorter
than ``min_region_s`` are dropped. Memory is bounded by ``history_s``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.01  # s, VAD frame length (non-overlapping)
_EPS = 1e-10  # energy floor so log10 of digital silence is finite (-100 dBFS)


@dataclass
class VadConfig:
    floor_db: float = -50.0  # dBFS; frames quieter than this are never speech
    margin_db: float = 12.0  # dB above the noise floor (and below the loud level) that speech must reach
    history_s: float = 30.0  # s of frame energies the percentiles are taken over
    merge_gap_s: float = 0.3  # s; silences shorter than this do not split a speech region
    min_region_s: float = 0.2  # s; shorter speech regions are dropped


class EnergyVad:
    """Streaming energy VAD: feed blocks of a mono signal, get a speech flag per 10 ms frame."""

    def __init__(self, sample_rate: int, config: VadConfig | None = None) -> None:
        self.cfg = config or VadConfig()
        self.sample_rate = sample_rate
        self.frame_len = max(1, int(round(FRAME_S * sample_rate)))
        self._history: deque[float] = deque(maxlen=max(1, int(self.cfg.history_s / FRAME_S)))
        self._carry = np.zeros(0, dtype=np.float32)  # samples not yet making a whole frame
        self._frames_seen = 0
        # region state machine
        self._open_start: int | None = None  # frame index where the open region began
        self._last_speech = -1  # last speech frame index of the open region

    def frame_energies_db(self, samples: np.ndarray) -> np.ndarray:
        """dBFS of each whole frame in ``samples`` (trailing partial frame ignored)."""
        n = samples.shape[0] // self.frame_len
        frames = samples[: n * self.frame_len].reshape(n, self.frame_len).astype(np.float64)
        return 10.0 * np.log10(np.mean(frames * frames, axis=1) + _EPS)

    def accept(self, block: np.ndarray) -> np.ndarray:
        """Speech flags (bool, one per whole 10 ms frame) for the frames this block completes."""
        samples = np.concatenate([self._carry, np.asarray(block, dtype=np.float32)]) if self._carry.size else \
            np.asarray(block, dtype=np.float32)
        energies = self.frame_energies_db(samples)
        used = energies.shape[0] * self.frame_len
        self._carry = samples[used:].copy()
        if energies.size == 0:
            return np.zeros(0, dtype=bool)
        self._history.extend(energies.tolist())
        hist = np.fromiter(self._history, dtype=np.float64)
        noise, loud = np.percentile(hist, [10, 95])
        threshold = max(self.cfg.floor_db, min(noise + self.cfg.margin_db, loud - self.cfg.margin_db))
        flags = energies > threshold
        self._frames_seen += flags.shape[0]
        return flags

    def regions(self, flags: np.ndarray, first_frame: int, final: bool = False) -> Iterator[tuple[float, float]]:
        """Closed speech regions (start s, end s) given the flags of frames ``first_frame ...``."""
        gap = int(round(self.cfg.merge_gap_s / FRAME_S))
        for offset in np.flatnonzero(flags).tolist():
            idx = first_frame + offset
            if self._open_start is not None and idx - self._last_speech > gap:
                yield from self._close()
            if self._open_start is None:
                self._open_start = idx
            self._last_speech = idx
        end_frame = first_frame + flags.shape[0]
        if self._open_start is not None and (final or end_frame - 1 - self._last_speech > gap):
            yield from self._close()

    def _close(self) -> Iterator[tuple[float, float]]:
        assert self._open_start is not None
        start, end = self._open_start * FRAME_S, (self._last_speech + 1) * FRAME_S
        self._open_start, self._last_speech = None, -1
        if end - start >= self.cfg.min_region_s:
            yield round(start, 3), round(end, 3)
