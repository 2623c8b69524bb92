"""Many files in worker processes: ``Predictor.iter_predict_files(..., jobs=N)`` and ``moma predict --jobs N``.

A prediction of one file is mostly single-threaded work (openSMILE's functionals of the default model, the
filterbank, the Silero speech check; the model itself is small), so more cores are used by more processes,
each with one inference thread, never by more threads in one process (``moma.capabilities.INFERENCE_THREADS``
says why, with figures). Each worker loads the model once, the way the parent's :class:`Predictor` was loaded
(its ``recipe``: checkpoint, backend, device; with the parent's speech check and ``min_speech_s``), then
predicts chunks of ``batch_size`` files. The parent hands out the chunks in input order, keeps at most two per
worker in flight, and yields the predictions in input order, so the output is that of one process (the same
files, the same rows, an unusable file recorded or raised as ``on_error`` says; probabilities equal up to the
float rounding of batches made of other files, about 1e-8: a worker batches its own chunk).

Workers start with ``fork`` where the platform has it, so that they inherit the parent's imports (torch,
openSMILE, onnxruntime: seconds of start-up each otherwise), elsewhere with ``spawn``. Files that fit in one
chunk are predicted here: a worker would only add its start-up.
They ignore Ctrl-C (the parent stops them) and log warnings and errors only (an info line would come once per
chunk, over the parent's progress bar). An error in a worker (a model that does not load, a bad file with
``on_error="raise"``) is raised in the parent as itself; a worker that dies (killed, out of memory) ends the run
with one line saying so.

Two cases stay in one process, each said once in the log: ``adapt="batch"`` (every file's statistics are
needed before the first prediction) and a model on a GPU (one device; CUDA does not survive ``fork``).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from moma.audio.vad import VadConfig
from moma.inference.predictor import Prediction, Predictor

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # chunks queued per worker: one running, one ready, so that no worker waits for the parent

_worker: Predictor | Exception | None = None  # this worker process's model, or why it could not load


def start_method() -> str:
    """``fork`` where available (workers inherit the imports), else ``spawn``."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def iter_in_workers(predictor: Predictor, paths: Iterable[str | Path], *, jobs: int, batch_size: int,
                    on_error: str, adapt: str) -> Iterator[Prediction]:
    """Predictions of ``paths`` in input order from ``jobs`` worker processes (started before this returns)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    files = [str(p) for p in paths]
    reason = _one_process_reason(predictor, adapt)
    if reason:
        log.info("%s: predicting in one process", reason)
    if reason or jobs == 1 or len(files) <= batch_size:  # one chunk: a worker would only add its start-up
        return predictor.iter_predict_files(files, batch_size=batch_size, on_error=on_error, adapt=adapt)
    if predictor.recipe is None:
        raise ValueError("jobs > 1 needs a predictor made by Predictor.from_checkpoint (each worker process "
                         "loads the same model)")
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    workers = min(jobs, len(chunks))
    recipe = {**predictor.recipe, "speech_check": predictor.speech_check, "min_speech_s": predictor.min_speech_s}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start_method()),
                               initializer=_start_worker, initargs=(recipe,))
    log.debug("predicting %d files in %d worker processes (%s)", len(files), workers, start_method())
    args = (batch_size, on_error, adapt)
    todo = iter(chunks)
    # the first chunks are submitted now, which starts the workers before the caller starts any thread of its
    # own (a progress bar's monitor, say): fork copies only the thread that calls it
    in_flight = deque(pool.submit(_predict, chunk, *args) for _, chunk in zip(range(workers * IN_FLIGHT), todo))
    return _ordered(pool, in_flight, todo, args)


def _one_process_reason(predictor: Predictor, adapt: str) -> str:
    if adapt == "batch":
        return "adapt='batch' needs every file's statistics before the first prediction"
    device = (predictor.recipe or {}).get("device", "cpu")
    if not str(device).startswith("cpu"):
        return f"the model runs on {device}"
    return ""


def _ordered(pool: ProcessPoolExecutor, in_flight: deque[Future], todo: Iterator[list[str]],
             args: tuple[int, str, str]) -> Iterator[Prediction]:
    """Each chunk's predictions in order, one more chunk submitted as each one is taken."""
    try:
        while in_flight:
            done = in_flight.popleft().result()  # a worker's exception (on_error="raise") is raised here
            following = next(todo, None)
            if following is not None:
                in_flight.append(pool.submit(_predict, following, *args))
            yield from done
    except BrokenProcessPool:
        raise RuntimeError("a prediction worker process died (killed, or out of memory); run with one job "
                           "(--jobs 1) to see why") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(recipe: dict[str, Any]) -> None:
    """A worker's start: ignore Ctrl-C (the parent stops the pool), load the model with one thread. A failure
    is kept and raised with the first chunk, so that the parent gets the error itself, not a broken pool."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("moma").setLevel(logging.WARNING)  # info lines would repeat per chunk, over a progress bar
    speech_check: VadConfig | None = recipe["speech_check"]
    try:
        _worker = Predictor.from_checkpoint(recipe["path"], device=recipe["device"], backend=recipe["backend"],
                                            num_threads=1, speech_check=speech_check)
        _worker.min_speech_s = recipe["min_speech_s"]
    except Exception as exc:  # noqa: BLE001 - any load error is the parent's to report
        _worker = exc


def _predict(paths: list[str], batch_size: int, on_error: str, adapt: str) -> list[Prediction]:
    if isinstance(_worker, Exception):
        raise _worker
    assert _worker is not None, "the worker's model is loaded by _start_worker"
    return list(_worker.iter_predict_files(paths, batch_size=batch_size, on_error=on_error, adapt=adapt))


__all__ = ["iter_in_workers", "start_method"]
