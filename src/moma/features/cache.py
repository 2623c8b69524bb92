"""The on-disk feature cache and the memory-mapped pack a training run reads.

Entries are keyed by the audio's content hash (and region) and the feature
configuration, so a corpus is featurised once per configuration and a cache
stays valid when files move (or are absent, see :class:`FeatureCache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from moma.audio.io import AudioError, file_sha1, load_audio
from moma.capabilities import require_extra
from moma.config import FeatureConfig
from moma.corpora.base import Utterance
from moma.features.encoders import check_frontend, frontend_identity
from moma.features.frontend import compute_features, feature_config_hash, frame_feature_settings, lld_dim
from moma.files import replace_atomically, write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "cache/features"  # where commands keep features unless told otherwise


# --------------------------------------------------------------------------- cache

def _fmt_seconds(value: float) -> str:
    """Region bound for a cache file name: microsecond precision, no trailing zeros."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"


class FeatureCache:
    """On-disk feature cache keyed by audio content and feature configuration.

    Layout: ``root/<config hash>/<sha1[:2]>/<sha1>[_<start>_<end>].npy`` with
    ``root/<config hash>/config.json`` describing the configuration. The
    region suffix appears only for utterances that select a region of their
    file. When an utterance carries its ``sha1`` (manifests do), a hit never
    touches the audio file, so a cache can travel without the audio.
    """

    def __init__(self, root: str | Path, cfg: FeatureConfig) -> None:
        self.root = Path(root)
        self.cfg = cfg
        # an unknown descriptor set or a missing openSMILE fails here, not once per file in the workers
        if lld_dim(cfg):
            require_extra("opensmile", "classical", f"features.lld={cfg.lld}")
        check_frontend(cfg)  # likewise a bad front-end option or missing weights (the hash reads them)
        self.config_hash = feature_config_hash(cfg)
        self.dir = self.root / self.config_hash

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r}, config {self.config_hash})"

    def sha1_of(self, utt: Utterance) -> str:
        """The utterance's content hash: its ``sha1`` field, or hashed from the file when empty."""
        if utt.sha1:
            return utt.sha1
        try:
            return file_sha1(utt.path)
        except AudioError as exc:
            raise _with_utterance(exc, utt) from None

    def path_for(self, sha1: str, start: float = 0.0, end: float = 0.0) -> Path:
        """Cache file for audio ``sha1`` (and region ``start``..``end`` seconds, if any)."""
        stem = sha1
        if start > 0 or end > 0:
            stem = f"{sha1}_{_fmt_seconds(start)}_{_fmt_seconds(end)}"
        return self.dir / sha1[:2] / f"{stem}.npy"

    def entry_path(self, utt: Utterance) -> Path:
        """Cache file of one utterance (hashes the audio when ``utt.sha1`` is empty)."""
        return self.path_for(self.sha1_of(utt), utt.start, utt.end)

    def contains(self, utt: Utterance) -> bool:
        return self.entry_path(utt).is_file()

    def get(self, utt: Utterance) -> np.ndarray:
        """Features of ``utt``: loaded on a hit, else computed from the audio and stored."""
        path = self.entry_path(utt)
        cached = self._load(path)
        if cached is not None:
            return cached
        feats = self.compute(utt)
        self.put(path, feats)
        return feats

    def compute(self, utt: Utterance) -> np.ndarray:
        """Compute the features of ``utt`` from its audio, without touching the cache.

        Errors name the utterance id and path.
        """
        try:
            signal = load_audio(utt.path, self.cfg.sample_rate, start=utt.start, end=utt.end,
                                min_duration=self.cfg.frame_length_ms / 1000.0)
            return compute_features(signal, self.cfg)
        except ValueError as exc:  # AudioError included
            raise _with_utterance(exc, utt) from None

    def put(self, path: Path, feats: np.ndarray) -> None:
        """Store ``feats`` at ``path`` atomically (and the folder's config.json on first use)."""
        self._write_config()
        replace_atomically(path, lambda tmp: np.save(tmp, np.asarray(feats, dtype=np.float32), allow_pickle=False))

    def _load(self, path: Path) -> np.ndarray | None:
        return load_cached_array(path)

    def _write_config(self) -> None:
        config_path = self.dir / "config.json"
        if config_path.is_file():
            return
        settings = {**frame_feature_settings(self.cfg), **frontend_identity(self.cfg)}  # the weights' sha256 too
        text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
        write_text_atomic(config_path, text)


def load_cached_array(path: Path, *, mmap: bool = False) -> np.ndarray | None:
    """A cached ``.npy`` array, or None when absent or unreadable (the caller recomputes it).

    Unreadable entries are only reachable after e.g. a power cut or manual
    tampering, since entries are written atomically. ``mmap`` maps the file
    instead of reading it (the shape is then known without reading the data).
    """
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:
        log.warning("%s: unreadable cache entry (%s); recomputing", path, exc)
        return None


def _with_utterance(exc: Exception, utt: Utterance) -> AudioError:
    """Re-word an error about one utterance so the message carries its id and path."""
    reason = exc.reason if isinstance(exc, AudioError) else str(exc)
    return AudioError(utt.path, f"{reason} (utterance {utt.id})")


def _fill_entry(cache: FeatureCache, utt: Utterance) -> str:
    """Worker task: compute one missing entry and write it to the cache; returns the id."""
    cache.put(cache.path_for(utt.sha1, utt.start, utt.end), cache.compute(utt))
    return utt.id


def _resolve_hashes(utterances: Iterable[Utterance], cache: FeatureCache) -> list[Utterance]:
    # Fill in content hashes up front: they name the cache entries, and workers
    # then never hash a file twice.
    return [u if u.sha1 else dataclasses.replace(u, sha1=cache.sha1_of(u)) for u in utterances]


def fill_cache(utterances: Iterable[Utterance], cache: FeatureCache, *, workers: int = 1,
               progress: bool = False) -> list[Utterance]:
    """Compute and store every missing cache entry, keeping no features in memory.

    Returns the utterances with their content hashes filled in. Resumable by
    construction: entries are written atomically one by one, so a killed run
    rerun computes only what is still missing. ``workers`` > 1 computes in that
    many processes (hours of audio per core-second are in ``moma bench``). An
    unusable file raises :class:`~moma.audio.io.AudioError` naming the utterance
    id and path.
    """
    resolved = _resolve_hashes(utterances, cache)
    misses = [u for u in resolved if not cache.path_for(u.sha1, u.start, u.end).is_file()]
    if misses:
        log.info("features: %d of %d utterances to compute (%s)", len(misses), len(resolved), cache)
    if cache.cfg.frontend != "fbank":
        workers = 1  # one pretrained encoder in memory (and on the GPU), which runs its own threads
    with tqdm(total=len(misses), desc="features", unit="utt", disable=not progress or not misses) as bar:
        if workers > 1 and len(misses) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(misses))) as pool:
                futures = [pool.submit(_fill_entry, cache, u) for u in misses]
                try:
                    for fut in as_completed(futures):
                        fut.result()
                        bar.update(1)
                except AudioError as exc:
                    for fut in futures:
                        fut.cancel()
                    # Re-raise without the worker's remote traceback attached: the
                    # message already names the utterance, its file and the reason.
                    raise AudioError(exc.path, exc.reason) from None
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        else:
            for u in misses:
                _fill_entry(cache, u)
                bar.update(1)
    return resolved


def _load_entry(cache: FeatureCache, u: Utterance, *, mmap: bool = False) -> np.ndarray:
    path = cache.path_for(u.sha1, u.start, u.end)
    loaded = load_cached_array(path, mmap=mmap)
    if loaded is None:  # written moments ago, or unreadable: compute it again
        loaded = cache.compute(u)
        cache.put(path, loaded)
    return loaded


def extract_features(utterances: Iterable[Utterance], cache: FeatureCache, *, workers: int = 1,
                     progress: bool = False) -> dict[str, np.ndarray]:
    """Features of every utterance in memory, ``{utterance id: (frames, n_mels) float32}``.

    Cache hits are loaded; misses are computed first (see :func:`fill_cache`).
    For corpora larger than memory use :func:`pack_features`.
    """
    resolved = fill_cache(utterances, cache, workers=workers, progress=progress)
    return {u.id: _load_entry(cache, u) for u in resolved}


def prepare_features(utterances: Iterable[Utterance], cache: FeatureCache, *, workers: int = 1,
                     progress: bool = False, pack: bool = True) -> dict[str, Any]:
    """Featurise a corpus ahead of training (resumable, parallel) and report the throughput.

    Returns counts, the hours of audio computed (hits excluded), wall time and
    hours of audio per core-second (``workers`` cores), and the pack path.
    """
    resolved = _resolve_hashes(utterances, cache)
    missing = [u for u in resolved if not cache.path_for(u.sha1, u.start, u.end).is_file()]
    t0 = time.perf_counter()
    fill_cache(resolved, cache, workers=workers, progress=progress)
    seconds = time.perf_counter() - t0
    hours = sum((u.end - u.start) if u.end > 0 else u.duration for u in missing) / 3600.0
    packed = pack_features(resolved, cache) if pack and resolved else None
    return {
        "utterances": len(resolved),
        "computed": len(missing),
        "hours_computed": hours,
        "hours_total": sum((u.end - u.start) if u.end > 0 else u.duration for u in resolved) / 3600.0,
        "seconds": seconds,
        "workers": workers,
        "hours_per_core_second": hours / (seconds * workers) if missing and seconds > 0 else None,
        "pack": str(packed.path) if packed is not None else None,
    }


class PackedFeatures(Mapping):
    """The features of a whole corpus in ONE memory-mapped ``.npy`` file, read as ``{id: [frames, F]}``.

    Rows of all utterances are stacked (``[total_frames, F]`` float32) with an
    index of ``id -> (first row, end row)``. Values are views into the mapped
    file, so a corpus larger than memory trains with the page cache holding
    what is in use, processes training folds in parallel share the pages, and
    pickling (to a worker process) sends the path, not the data. One file
    rather than one mapping per utterance: a process may hold only ~65k
    mappings (``vm.max_map_count``), fewer than large corpora have utterances.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = json.loads(self.path.with_suffix(".json").read_text(encoding="utf-8"))
        self.index: dict[str, tuple[int, int]] = {k: (int(a), int(b)) for k, (a, b) in index["rows"].items()}
        self.data = np.load(self.path, mmap_mode="r", allow_pickle=False)  # [total_frames, F]

    def __getitem__(self, key: str) -> np.ndarray:
        start, end = self.index[key]
        return self.data[start:end]  # [frames, F], a view of the mapped file

    def __iter__(self):
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __reduce__(self):
        return (PackedFeatures, (str(self.path),))


def _pack_key(utterances: Sequence[Utterance], cache: FeatureCache) -> str:
    h = hashlib.sha1(cache.config_hash.encode())
    for u in utterances:
        h.update(f"{u.id}\t{u.sha1}\t{u.start}\t{u.end}\n".encode())
    return h.hexdigest()[:16]


def pack_features(utterances: Iterable[Utterance], cache: FeatureCache, *, workers: int = 1,
                  progress: bool = False) -> PackedFeatures:
    """Features of a corpus as one memory-mapped file (see :class:`PackedFeatures`).

    Missing cache entries are computed first (:func:`fill_cache`); the pack is
    then written entry by entry, so peak memory stays at one utterance, and is
    kept in the cache folder keyed by the utterances (ids, content hashes,
    regions) and the feature config: a second run maps it at once.
    """
    resolved = fill_cache(utterances, cache, workers=workers, progress=progress)
    if not resolved:
        raise ValueError("no utterances to pack")
    path = cache.dir / "packed" / f"{_pack_key(resolved, cache)}.npy"
    if path.is_file() and path.with_suffix(".json").is_file():
        try:
            return PackedFeatures(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable pack (%s); rebuilding", path, exc)
    shapes = [_load_entry(cache, u, mmap=True).shape for u in resolved]  # headers only
    dims = {shape[1] for shape in shapes}
    if len(dims) != 1:
        raise ValueError(f"cache entries of different feature sizes {sorted(dims)} in {cache.dir}")
    total = sum(shape[0] for shape in shapes)
    rows: dict[str, list[int]] = {}

    def write_pack(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, dims.pop()))
        row = 0
        for u, shape in zip(tqdm(resolved, desc="packing", unit="utt", disable=not progress), shapes):
            out[row:row + shape[0]] = _load_entry(cache, u, mmap=True)
            rows[u.id] = [row, row + shape[0]]
            row += shape[0]
        out.flush()
        del out
        # the index first: a pack without one is never opened
        write_text_atomic(path.with_suffix(".json"), json.dumps({"feature_config": cache.config_hash, "rows": rows}))

    replace_atomically(path, write_pack)
    log.info("packed %d utterances (%.1f MB) into %s", len(rows), total * 4 * shapes[0][1] / 1e6, path)
    return PackedFeatures(path)
