"""Voice-activity detection: which 10 ms frames of a signal are speech, and the speech regions they form.

Two detectors share one streaming interface (``accept(block)`` -> a speech flag
per whole 10 ms frame, ``regions(flags, first_frame)`` -> closed regions):

* :class:`SileroVad` (the default, ``VadConfig.engine = "silero"``): the Silero
  VAD neural network (MIT licence), run by onnxruntime from the ONNX file that
  ships inside the ``silero-vad`` wheel (nothing is downloaded). It scores
  32 ms chunks at 16 kHz; a chunk is speech when its probability reaches
  ``threshold``, or ``threshold - 0.15`` while speech is ongoing (Silero's own
  hysteresis). It tells speech from noise, music and tones, which an energy
  threshold cannot: see ``reports/vad/README.md`` (frame-level F1 and false
  alarms of both detectors on EmoDB with noise and babble, and on non-speech).
* :class:`EnergyVad` (``engine = "energy"``): no model. Each 10 ms frame's
  energy (dBFS) is compared with an adaptive threshold,
  ``max(floor_db, min(noise + margin_db, loud - margin_db))`` where ``noise``
  and ``loud`` are the 10th and 95th percentiles of the frame energies over the
  last ``history_s`` seconds. Kept for signals where "loud" is what matters
  (synthetic stand-ins for speech in tests, animal or machine sounds); it calls
  any loud sound speech.

Speech regions are formed with a small state machine: a region opens at a
speech frame and closes after ``merge_gap_s`` of silence; regions shorter
than ``min_region_s`` are dropped. Frames are non-overlapping, so a signal fed
in blocks gives exactly the frames it gives in one piece. Memory is bounded
(``history_s`` of energies; one 32 ms chunk of samples for Silero).
"""

from __future__ import annotations

import importlib.util
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moma.capabilities import inference_threads

FRAME_S = 0.01  # s, VAD frame length (non-overlapping)
_EPS = 1e-10  # energy floor so log10 of digital silence is finite (-100 dBFS)


VAD_ENGINES = ("silero", "energy")


@dataclass
class VadConfig:
    engine: str = "silero"  # "silero" (neural, tells speech from noise and music) or "energy" (loudness only)
    threshold: float = 0.5  # Silero speech probability a 32 ms chunk needs (0.15 less while speech goes on)
    floor_db: float = -50.0  # dBFS; frames quieter than this are never speech
    margin_db: float = 12.0  # dB above the noise floor (and below the loud level) that speech must reach
    history_s: float = 30.0  # s of frame energies the percentiles are taken over
    merge_gap_s: float = 0.3  # s; silences shorter than this do not split a speech region
    min_region_s: float = 0.2  # s; shorter speech regions are dropped


class Vad(Protocol):
    """What the timeline and the predictor need of a detector."""

    cfg: VadConfig

    def accept(self, block: np.ndarray) -> np.ndarray: ...

    def finish(self) -> np.ndarray: ...

    def regions(self, flags: np.ndarray, first_frame: int,
                final: bool = False) -> Iterator[tuple[float, float]]: ...


class RegionTracker:
    """The region state machine both detectors share: speech flags per 10 ms frame -> closed regions."""

    def __init__(self, config: VadConfig) -> None:
        if config.engine not in VAD_ENGINES:
            raise ValueError(f"unknown VAD engine {config.engine!r}; choose one of {', '.join(VAD_ENGINES)}")
        self.cfg = config
        self._open_start: int | None = None  # frame index where the open region began
        self._last_speech = -1  # last speech frame index of the open region

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


class EnergyVad(RegionTracker):
    """Streaming energy VAD: feed blocks of a mono signal, get a speech flag per 10 ms frame."""

    def __init__(self, sample_rate: int, config: VadConfig | None = None) -> None:
        super().__init__(config or VadConfig(engine="energy"))
        self.sample_rate = sample_rate
        self.frame_len = max(1, int(round(FRAME_S * sample_rate)))
        self._history: deque[float] = deque(maxlen=max(1, int(self.cfg.history_s / FRAME_S)))
        self._carry = np.zeros(0, dtype=np.float32)  # samples not yet making a whole frame
        self._frames_seen = 0

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

    def finish(self) -> np.ndarray:
        """Flags of what is left at the end of the signal: none (a trailing partial frame is ignored)."""
        return np.zeros(0, dtype=bool)


SILERO_RATE = 16000  # Hz, the rate of the Silero model used here
SILERO_CHUNK = 512  # samples at 16 kHz (32 ms): one model step
SILERO_CONTEXT = 64  # samples of the previous chunk the model sees before each chunk
SILERO_MAX_CHUNKS = 512  # chunks per onnxruntime call (~16 s), bounds the call's memory
SILERO_HYSTERESIS = 0.15  # probability below threshold that still continues ongoing speech (Silero's default)
_SILERO_MODEL = "silero_vad_16k_sequence.onnx"  # a whole sequence of chunks per call, no Python loop per chunk


class MissingVadModelError(RuntimeError):
    """The silero-vad package (which carries the model file) or onnxruntime is not installed."""


def silero_session() -> Any:
    """The onnxruntime session of Silero's sequence model, loaded once per process and thread count from the
    installed wheel (no download), with the process's inference threads (:func:`moma.capabilities.
    inference_threads`, one by default: a VAD call is small, and more cores are used by more processes)."""
    return _silero_session(inference_threads())


@lru_cache(maxsize=2)
def _silero_session(threads: int) -> Any:
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        raise MissingVadModelError(f"the speech check needs the package '{exc.name}', which is not installed: "
                                   "pip install onnxruntime (or VadConfig(engine='energy'))") from None
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
    opts.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(silero_model_path()), sess_options=opts,
                                        providers=["CPUExecutionProvider"])


def silero_model_path() -> Path:
    """The ONNX file inside the installed silero-vad wheel, found without importing the package: importing it
    sets torch's threads to one for the whole process (silero_vad/model.py, 6.2.3), whatever the caller chose."""
    spec = importlib.util.find_spec("silero_vad")
    path = Path(spec.submodule_search_locations[0]) / "data" / _SILERO_MODEL if spec and \
        spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise MissingVadModelError("the speech check needs the package 'silero-vad' (its ONNX model), which is not "
                                   "installed: pip install silero-vad (or VadConfig(engine='energy'))")
    return path


class SileroVad(RegionTracker):
    """Streaming Silero VAD: feed blocks of a mono signal, get a speech flag per 10 ms frame.

    Each 10 ms frame takes the decision of the 32 ms chunk holding its centre.
    A frame is flagged only once its chunk is complete; :meth:`finish` pads the
    last partial chunk with zeros and flags the frames left.
    """

    def __init__(self, sample_rate: int, config: VadConfig | None = None) -> None:
        super().__init__(config or VadConfig())
        self.sample_rate = sample_rate
        self.frame_len = max(1, int(round(FRAME_S * sample_rate)))
        self._session = silero_session()
        self._resampler = None
        if sample_rate != SILERO_RATE:  # a streaming resampler keeps block reading equal to whole reading
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, SILERO_RATE, 1, dtype="float32")
        self._pending = np.zeros(0, dtype=np.float32)  # 16 kHz samples not yet making a whole chunk
        self._context = np.zeros(SILERO_CONTEXT, dtype=np.float32)
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))  # LSTM h, c
        self._speaking = False  # hysteresis state
        self._decisions = np.zeros(0, dtype=bool)  # speech decision per chunk, from chunk _first_chunk on
        self._first_chunk = 0
        self._samples_in = 0  # input samples seen (at sample_rate)
        self._frames_out = 0  # 10 ms frames flagged so far

    def accept(self, block: np.ndarray) -> np.ndarray:
        """Speech flags (bool, one per 10 ms frame) for the frames whose 32 ms chunk this block completes."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._samples_in += block.shape[0]
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block)
        self._run(np.concatenate([self._pending, block]))
        return self._flags(final=False)

    def finish(self) -> np.ndarray:
        """Flags of the frames left at the end: the last partial chunk is padded with zeros."""
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True) if self._resampler else \
            np.zeros(0, np.float32)
        rest = np.concatenate([self._pending, tail])
        if rest.size:
            self._run(np.concatenate([rest, np.zeros(SILERO_CHUNK - rest.size % SILERO_CHUNK, np.float32)]))
        return self._flags(final=True)

    def _run(self, samples: np.ndarray) -> None:
        """Score the whole chunks of ``samples`` (16 kHz), keep the remainder for the next call."""
        n = samples.shape[0] // SILERO_CHUNK
        self._pending = samples[n * SILERO_CHUNK:].copy()
        decisions = [self._decisions]
        for first in range(0, n, SILERO_MAX_CHUNKS):
            chunks = samples[first * SILERO_CHUNK:min(n, first + SILERO_MAX_CHUNKS) * SILERO_CHUNK]
            chunks = chunks.reshape(-1, SILERO_CHUNK)  # (chunks, 512)
            contexts = np.concatenate([self._context[None, :], chunks[:-1, -SILERO_CONTEXT:]])  # (chunks, 64)
            self._context = chunks[-1, -SILERO_CONTEXT:].copy()
            probs, h, c = self._session.run(["speech_probs", "hn", "cn"], {
                "input": np.ascontiguousarray(np.concatenate([contexts, chunks], axis=1)),  # (chunks, 576)
                "h": self._state[0], "c": self._state[1]})
            self._state = (h, c)
            decisions.append(self._hysteresis(np.asarray(probs).reshape(-1)))
        self._decisions = np.concatenate(decisions)

    def _hysteresis(self, probs: np.ndarray) -> np.ndarray:
        out = np.zeros(probs.shape[0], dtype=bool)
        for i, p in enumerate(probs.tolist()):
            self._speaking = p >= self.cfg.threshold or (self._speaking and
                                                         p >= self.cfg.threshold - SILERO_HYSTERESIS)
            out[i] = self._speaking
        return out

    def _flags(self, final: bool) -> np.ndarray:
        """Flags of 10 ms frames ``_frames_out ...`` whose centre lies in a scored chunk."""
        total_frames = self._samples_in // self.frame_len
        centres = (np.arange(self._frames_out, total_frames) + 0.5) * FRAME_S  # s
        chunk = (centres * SILERO_RATE // SILERO_CHUNK).astype(np.int64)
        if not final:
            chunk = chunk[chunk < self._first_chunk + self._decisions.shape[0]]
        chunk = np.minimum(chunk, self._first_chunk + self._decisions.shape[0] - 1)
        flags = self._decisions[chunk - self._first_chunk] if chunk.size else np.zeros(0, dtype=bool)
        self._frames_out += flags.shape[0]
        if chunk.size:  # chunks before the last one used are no longer needed
            drop = int(chunk[-1]) - self._first_chunk
            self._decisions = self._decisions[drop:]
            self._first_chunk += drop
        return flags


def make_vad(sample_rate: int, config: VadConfig | None = None) -> Vad:
    """The detector ``config.engine`` names (default: Silero)."""
    cfg = config or VadConfig()
    if cfg.engine == "energy":
        return EnergyVad(sample_rate, cfg)
    return SileroVad(sample_rate, cfg)


def speech_flags(signal: np.ndarray, sample_rate: int, config: VadConfig | None = None
                 ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speech flags per 10 ms frame and speech regions (start s, end s) of a whole mono signal."""
    vad = make_vad(sample_rate, config)
    flags = np.concatenate([vad.accept(signal), vad.finish()])
    return flags, list(vad.regions(flags, 0, final=True))


def speech_seconds(regions: list[tuple[float, float]]) -> float:
    """Total length of speech regions, in seconds."""
    return float(sum(end - start for start, end in regions))
