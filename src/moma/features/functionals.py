"""openSMILE functionals: one vector of descriptors per utterance (eGeMAPSv02: 88, ComParE_2016: 6373).

Two users: the classical anchor (functionals + linear SVM, :mod:`moma.research.classical`) and fusion
models that join the vector to MOMA's pooled representation (``features.functionals``). Both read the
same cache, so an utterance is analysed once per feature set. This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from moma.audio.io import SAMPLE_RATE, AudioError, file_sha1, load_audio
from moma.audio.perturb import set_active_level
from moma.capabilities import require_extra
from moma.config import FeatureConfig
from moma.corpora.base import Utterance
from moma.features.cache import load_cached_array
from moma.features.encoders.ge2e import WEIGHTS_SHA256
from moma.files import replace_atomically

log = logging.getLogger(__name__)

FEATURE_SETS = {"eGeMAPSv02": 88, "ComParE_2016": 6373,  # name -> number of functionals
                # mean and std over time of the GE2E speaker encoder's frames (features.encoders.ge2e): its last
                # LSTM layer, or layer 1 / 2 with a suffix; computed from the same frames as features.frontend=ge2e
                "ge2e-stats": 512, "ge2e-stats-1": 512, "ge2e-stats-2": 512}
OPENSMILE_SETS = ("eGeMAPSv02", "ComParE_2016")
DEFAULT_CACHE = "cache/opensmile"


def check_level(level: float) -> float:
    """``features.functionals_level`` checked: 0 (as recorded) or a level below 0 dBFS."""
    if level > 0:
        raise ValueError(f"features.functionals_level: {level} dBFS is above full scale; use a level below 0 "
                         "(for example -26) or 0 to keep the recorded level")
    return float(level)


def functionals_dim(feature_set: str) -> int:
    """Length of one utterance's vector for ``feature_set`` ("none": 0); an unknown name is a ValueError."""
    if feature_set == "none":
        return 0
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown openSMILE feature set {feature_set!r}; choose none, {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def _smile(feature_set: str):
    opensmile = require_extra("opensmile", "classical", f"openSMILE {feature_set} functionals")
    functionals_dim(feature_set)
    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=opensmile.FeatureLevel.Functionals)


_SMILES: dict[str, Any] = {}  # one opensmile.Smile (its configuration) per feature set and process
_RUNNERS = threading.local()  # per thread: (feature set, sample rate) -> SmileRunner


class SmileRunner:
    """One openSMILE engine for a feature set and sample rate, initialised once and reset after each signal.

    ``opensmile.Smile.process_signal`` parses the configuration and builds openSMILE's component graph for every
    signal, then wraps the values in pandas: 7 ms of the 74 ms a 3 s EmoDB file took (both measured on the same
    107 files). openSMILE's ``smile_reset`` readies a finished engine for the next input instead, and the values
    are bit-identical (``tests/features/test_functionals.py``). It builds the engine the way ``process_signal``
    does, through opensmile-python's ``Smile._options`` and ``Smile._smile`` (2.6): where those are missing,
    :func:`compute_functionals` uses ``process_signal``. An engine serves one thread; a fresh one replaces it
    every ``RENEW`` signals (opensmile-python keeps every sink callback ever registered on an engine).
    """

    RENEW = 500

    def __init__(self, smile: Any, sample_rate: int) -> None:
        from opensmile.core.config import config

        options = smile._options()
        options.update(source=os.path.join(smile.default_config_root, config.EXTERNAL_INPUT_CONFIG),
                       sampleRate=sample_rate, nBits=16)
        self._source, self._sink = config.EXTERNAL_SOURCE_COMPONENT, config.EXTERNAL_OUTPUT_COMPONENT
        self._engine = smile._smile(options=options)
        self._rows: list[np.ndarray] = []
        self.runs = 0
        self._listen()

    def _listen(self) -> None:
        self._engine.external_sink_set_callback_ex(self._sink, lambda data, meta: self._rows.append(data.copy()))

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        """The functionals of a float signal in [-1, 1], as ``process_signal`` computes them (16-bit samples)."""
        self._rows.clear()
        samples = (np.asarray(signal, dtype=np.float32) * 32768).astype(np.int16)
        self._engine.external_audio_source_write_data(self._source, samples.tobytes())
        self._engine.external_audio_source_set_eoi(self._source)
        self._engine.run()
        self._engine.reset()
        self._listen()  # a reset forgets the sink's callback
        self.runs += 1
        if not self._rows:
            raise ValueError("openSMILE gave no functionals (a signal too short for its analysis windows)")
        return np.asarray(self._rows[0], dtype=np.float32).reshape(-1)

    def close(self) -> None:
        self._engine.free()


def _run_opensmile(feature_set: str, signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """openSMILE functionals through this thread's :class:`SmileRunner`; through ``process_signal`` where none
    can be built, and for a signal it gives nothing for (process_signal fills those with NaN and a warning)."""
    global _REUSE
    if feature_set not in _SMILES:
        _SMILES[feature_set] = _smile(feature_set)
    runners = _RUNNERS.__dict__.setdefault("runners", {})
    key = (feature_set, sample_rate)
    if _REUSE:
        try:
            runner = runners.get(key)
            if runner is None or runner.runs >= SmileRunner.RENEW:
                if runner is not None:
                    runner.close()
                runner = runners[key] = SmileRunner(_SMILES[feature_set], sample_rate)
            return runner(signal)
        except (AttributeError, ImportError, TypeError) as exc:  # another opensmile-python: its public API only
            log.debug("openSMILE engine reuse unavailable (%s): process_signal for every signal", exc)
            _REUSE = False
        except Exception:  # noqa: BLE001 - a failed run leaves the engine in no known state: a new one next time
            failed = runners.pop(key, None)
            if failed is not None:
                failed.close()
    frame = _SMILES[feature_set].process_signal(np.asarray(signal, dtype=np.float32), sample_rate)
    return np.asarray(frame.values, dtype=np.float32).reshape(-1)


def _forget_engines() -> None:
    """In a forked child: the parent's engines are copies of another process's; the child builds its own."""
    global _RUNNERS
    _RUNNERS = threading.local()


_REUSE = True  # False once SmileRunner could not be built with this opensmile-python
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engines)


def compute_functionals(signal: np.ndarray, feature_set: str = "eGeMAPSv02",
                        sample_rate: int = SAMPLE_RATE, level: float = 0.0) -> np.ndarray:
    """openSMILE functionals of one 1-D float signal: a float32 vector of the set's length. ``level`` < 0
    first scales the signal to that active-speech level in dBFS (``features.functionals_level``)."""
    if check_level(level) < 0:
        signal = set_active_level(signal, level, sample_rate)
    if feature_set.startswith("ge2e-stats"):
        from moma.features.encoders.ge2e import LAYERS, ge2e_stats

        functionals_dim(feature_set)
        return ge2e_stats(signal, int(feature_set[len("ge2e-stats-"):] or LAYERS))
    values = _run_opensmile(feature_set, signal, sample_rate)
    expected = FEATURE_SETS[feature_set]
    if values.shape[0] != expected:
        raise ValueError(f"openSMILE {feature_set} gave {values.shape[0]} values, expected {expected}")
    return values


def _cache_path(cache_dir: Path, feature_set: str, utt: Utterance, level: float = 0.0) -> Path:
    stem = utt.sha1
    if utt.start > 0 or utt.end > 0:
        stem = f"{utt.sha1}_{utt.start:.6f}_{utt.end:.6f}"
    folder = f"opensmile-{feature_set}" + (f"-level{level:g}dB" if level < 0 else "")  # recorded level: as before
    if feature_set.startswith("ge2e-stats"):  # keyed by the weights too (one hash; another is refused on load)
        folder = f"{feature_set}-{WEIGHTS_SHA256[:12]}" + (f"-level{level:g}dB" if level < 0 else "")
    return cache_dir / folder / utt.sha1[:2] / f"{stem}.npy"


def _save_atomic(path: Path, values: np.ndarray) -> None:
    replace_atomically(path, lambda tmp: np.save(tmp, values.astype(np.float32), allow_pickle=False))


def _compute_entry(args: tuple[Utterance, str, float, str]) -> str:
    """Compute one utterance's functionals and write its cache entry; returns the id."""
    utt, feature_set, level, path = args
    try:
        signal = load_audio(utt.path, SAMPLE_RATE, start=utt.start, end=utt.end)
    except AudioError as exc:
        raise AudioError(utt.path, f"{exc.reason} (utterance {utt.id})") from None
    values = compute_functionals(signal, feature_set, level=level)
    if not np.isfinite(values).all():
        raise ValueError(f"{utt.path}: openSMILE {feature_set} gave non-finite values (utterance {utt.id})")
    _save_atomic(Path(path), values)
    return utt.id


def count_cached(utterances: Sequence[Utterance], feature_set: str, cache_dir: str | Path,
                 level: float = 0.0) -> int:
    """How many utterances already have a cache entry (those without a ``sha1`` count as missing)."""
    return sum(1 for u in utterances if u.sha1 and _cache_path(Path(cache_dir), feature_set, u, level).is_file())


def extract_functionals(utterances: Iterable[Utterance], feature_set: str = "eGeMAPSv02", *,
                        cache_dir: str | Path = DEFAULT_CACHE, workers: int = 1, level: float = 0.0,
                        progress: bool = False) -> dict[str, np.ndarray]:
    """openSMILE functionals of every utterance, ``{utterance id: (n_features,) float32}``.

    Audio is loaded with :func:`moma.audio.io.load_audio` (16 kHz mono float32,
    the utterance's region when it has one). Vectors are cached as ``.npy``
    under ``cache_dir/opensmile-<feature set>/`` keyed by the audio's SHA-1
    (the manifest's ``sha1``, or hashed from the file when empty), so a rerun
    only loads files. ``level`` < 0: each signal is first scaled to that
    active-speech level (dBFS), cached in a folder of its own.
    """
    functionals_dim(feature_set)
    check_level(level)
    cache = Path(cache_dir)
    utts = [u if u.sha1 else dataclasses.replace(u, sha1=file_sha1(u.path)) for u in utterances]
    paths = {u.id: _cache_path(cache, feature_set, u, level) for u in utts}
    out: dict[str, np.ndarray] = {}
    misses = []
    for u in utts:
        cached = load_cached_array(paths[u.id])
        if cached is None:
            misses.append(u)
        else:
            out[u.id] = cached
    if misses:
        from tqdm import tqdm

        name = feature_set if feature_set.startswith("ge2e") else f"openSMILE {feature_set}"
        log.info("%s: computing %d of %d utterances (%d cached)", name, len(misses), len(utts),
                 len(utts) - len(misses))
        tasks = [(u, feature_set, level, str(paths[u.id])) for u in misses]
        with tqdm(total=len(tasks), desc=name, unit="utt", disable=not progress) as bar:
            if workers > 1 and len(tasks) > 1:
                import multiprocessing as mp

                with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                         mp_context=mp.get_context("spawn")) as pool:
                    for _ in pool.map(_compute_entry, tasks, chunksize=8):
                        bar.update(1)
            else:
                for task in tasks:
                    _compute_entry(task)
                    bar.update(1)
        for u in misses:
            loaded = load_cached_array(paths[u.id])
            if loaded is None:
                raise OSError(f"{paths[u.id]}: cache entry missing after extraction (utterance {u.id})")
            out[u.id] = loaded
    return {u.id: out[u.id] for u in utts}


def functionals_cache_dir(feature_cache_dir: str | Path) -> Path:
    """Where a run whose frame features live in ``feature_cache_dir`` keeps openSMILE functionals: the sibling
    folder ``opensmile`` (``cache/features`` -> ``cache/opensmile``, the classical anchor's default), so the
    anchor and a fusion model analyse each utterance once."""
    return Path(feature_cache_dir).parent / "opensmile"


def extract_run_functionals(cfg: FeatureConfig, utterances: Sequence[Utterance], feature_cache_dir: str | Path, *,
                            workers: int = 1, progress: bool = False) -> dict[str, np.ndarray] | None:
    """The raw functionals a fusion run with feature settings ``cfg`` needs (``features.functionals`` at
    ``features.functionals_level``), or None when it has none."""
    if functionals_dim(cfg.functionals) == 0:
        return None
    return extract_functionals(utterances, cfg.functionals, cache_dir=functionals_cache_dir(feature_cache_dir),
                               workers=workers, level=cfg.functionals_level, progress=progress)


def functionals_key(cfg: FeatureConfig) -> tuple[str, float]:
    """What the functionals of feature settings ``cfg`` depend on, (set, level): runs with equal keys share one
    extraction, as :func:`moma.features.frontend.feature_config_hash` does for the frames."""
    return cfg.functionals, cfg.functionals_level


def compute_run_functionals(signal: np.ndarray, cfg: FeatureConfig, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One signal's raw functionals as a fusion model with feature settings ``cfg`` reads them (its set, at its
    level): the single-file form of :func:`extract_run_functionals`."""
    return compute_functionals(signal, cfg.functionals, sample_rate, level=cfg.functionals_level)
