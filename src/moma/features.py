"""Log-Mel filterbank features, their on-disk cache, and mean/variance normalisation.

Features are Kaldi-compatible log-Mel filterbanks computed by
``kaldi_native_fbank`` (the paper's front end: 23 bins, 25 ms windows, 10 ms
hop). They are cached on disk keyed by the audio's content hash and the
feature configuration, so a corpus is featurised once per configuration and a
cache stays valid when files move (or are absent, see :class:`FeatureCache`).

:class:`Normaliser` holds the mean/variance statistics. They are fitted on the
training set only; the one exception, per-speaker statistics for test
speakers, is explicit (:meth:`Normaliser.fit_speaker`) and shows in
:meth:`Normaliser.describe` so that reports can say so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_type_hints

import kaldi_native_fbank as knf
import numpy as np
from tqdm import tqdm

from moma.audio import AudioError, file_sha1, load_audio
from moma.capabilities import require_extra
from moma.config import FeatureConfig
from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

INT16_SCALE = 32768.0  # Kaldi computes features on int16-range samples
STD_FLOOR = 1e-5  # smallest standard deviation used when normalising (constant bins would divide by 0)
NORMALISATION_MODES = ("global", "speaker", "utterance", "none")


# --------------------------------------------------------------------------- filterbanks

def _fbank_options(cfg: FeatureConfig) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    fo = opts.frame_opts
    fo.samp_freq = float(cfg.sample_rate)
    fo.frame_length_ms = float(cfg.frame_length_ms)
    fo.frame_shift_ms = float(cfg.frame_shift_ms)
    fo.dither = float(cfg.dither)
    fo.preemph_coeff = float(cfg.preemphasis)
    fo.window_type = str(cfg.window_type)
    fo.snip_edges = bool(cfg.snip_edges)
    mo = opts.mel_opts
    mo.num_bins = int(cfg.n_mels)
    mo.low_freq = float(cfg.low_freq)
    mo.high_freq = float(cfg.high_freq)
    return opts


def _window_sizes(cfg: FeatureConfig) -> tuple[int, int]:
    """(window length, window shift) in samples, rounded exactly as Kaldi does.

    Kaldi stores the rate and durations as 32-bit floats and truncates
    ``samp_freq * 0.001 * ms`` (double arithmetic); mirroring that keeps
    :func:`num_frames` equal to the extractor's count for odd settings too.
    """
    sr = float(np.float32(cfg.sample_rate))
    length = int(sr * 0.001 * float(np.float32(cfg.frame_length_ms)))
    shift = int(sr * 0.001 * float(np.float32(cfg.frame_shift_ms)))
    return length, shift


def num_frames(num_samples: int, cfg: FeatureConfig) -> int:
    """Number of feature frames Kaldi produces for ``num_samples`` samples.

    With ``snip_edges`` only windows lying wholly inside the signal count;
    without it frames are centred every shift and the count is
    ``(n + shift // 2) // shift``. Frame ``i`` starts at ``i * shift`` samples
    (snip_edges), which is how attention weights map back to time.
    """
    length, shift = _window_sizes(cfg)
    if cfg.snip_edges:
        return 0 if num_samples < length else 1 + (num_samples - length) // shift
    return (num_samples + shift // 2) // shift


def compute_fbank(signal: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log-Mel filterbanks of a 1-D float signal in [-1, 1] at ``cfg.sample_rate``.

    Returns float32 of shape ``(frames, cfg.n_mels)``. Deterministic when
    ``cfg.dither == 0``. Raises ValueError if the signal is shorter than one
    analysis window.
    """
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"compute_fbank expects a 1-D signal, got shape {x.shape}")
    length, _ = _window_sizes(cfg)
    if x.shape[0] < length:
        raise ValueError(f"signal of {x.shape[0]} samples is shorter than one {cfg.frame_length_ms:g} ms "
                         f"analysis window ({length} samples at {cfg.sample_rate} Hz)")
    fbank = knf.OnlineFbank(_fbank_options(cfg))
    # Kaldi's filterbank energies (and so the log floor) assume int16-scaled samples.
    fbank.accept_waveform(float(cfg.sample_rate), np.ascontiguousarray(x * INT16_SCALE, dtype=np.float32))
    fbank.input_finished()
    n = fbank.num_frames_ready
    # kaldi_native_fbank 1.23 has no batch getter; measured on a 60 s signal,
    # collecting frames this way costs ~3 ms against ~57 ms of computation,
    # and np.stack copies out of the extractor-owned buffers.
    return np.stack([fbank.get_frame(i) for i in range(n)]).astype(np.float32, copy=False)


def frame_centres(n_frames: int, cfg: FeatureConfig) -> np.ndarray:
    """Centre of each filterbank frame in seconds, shape ``(n_frames,)``: Kaldi frame i covers
    [i * shift, i * shift + length), so features from other trackers are interpolated onto these times."""
    return (np.arange(n_frames) * cfg.frame_shift_ms + cfg.frame_length_ms / 2.0) / 1000.0


def compute_pitch(signal: np.ndarray, cfg: FeatureConfig, n_frames: int) -> np.ndarray:
    """Log F0 and voicing strength at the centre of each filterbank frame, shape ``(n_frames, 2)``.

    F0 is what 23 Mel bands blur away (harmonics are not resolved), yet pitch
    level and range are among the strongest acoustic cues to emotion. Praat's
    autocorrelation tracker (through ``praat-parselmouth``) gives F0 every
    10 ms; unvoiced frames get log F0 interpolated between voiced neighbours
    (continuous, as Kaldi's pitch feature is) and voicing strength 0.
    """
    import parselmouth

    snd = parselmouth.Sound(np.asarray(signal, dtype=np.float64), sampling_frequency=float(cfg.sample_rate))
    pitch = snd.to_pitch_ac(time_step=cfg.frame_shift_ms / 1000.0, pitch_floor=cfg.pitch_floor,
                            pitch_ceiling=cfg.pitch_ceiling)
    times = np.asarray(pitch.xs(), dtype=np.float64)
    f0 = np.asarray(pitch.selected_array["frequency"], dtype=np.float64)
    strength = np.asarray(pitch.selected_array["strength"], dtype=np.float64)
    voiced = f0 > 0
    centres = frame_centres(n_frames, cfg)
    if voiced.sum() >= 1 and times.size:
        log_f0 = np.interp(centres, times[voiced], np.log(f0[voiced]))
    else:  # no voiced frame at all: a constant at the floor keeps the feature defined
        log_f0 = np.full(n_frames, np.log(cfg.pitch_floor))
    voicing = np.interp(centres, times, np.where(voiced, strength, 0.0)) if times.size else np.zeros(n_frames)
    return np.stack([log_f0, voicing], axis=1).astype(np.float32)  # [T, 2]


# openSMILE low-level descriptor sets: name -> (feature set, dimensions per frame)
LLD_SETS = {"egemaps": ("eGeMAPSv02", 25), "compare": ("ComParE_2016", 65)}


def compute_lld(signal: np.ndarray, cfg: FeatureConfig, n_frames: int) -> np.ndarray:
    """openSMILE low-level descriptors at the centre of each filterbank frame, shape ``(n_frames, dims)``.

    The classical anchors (functionals of these descriptors + SVM) beat a
    BLSTM on 23 log-Mel bands on small corpora; the descriptors carry voice
    quality (jitter, shimmer, HNR, spectral slopes, formants) that the Mel
    bands blur. Appending them per frame lets MOMA pool them with its own
    attention instead of fixed functionals. openSMILE's frames also hop 10 ms
    but start at 0 with their own window lengths, so each column is linearly
    interpolated onto the Kaldi frame centres.
    """
    opensmile = require_extra("opensmile", "classical", f"features.lld={cfg.lld}")
    dims = lld_dim(cfg)
    name = LLD_SETS[cfg.lld][0]
    smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, name),
                            feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    frame = smile.process_signal(np.asarray(signal, dtype=np.float32), cfg.sample_rate)
    values = frame.to_numpy(dtype=np.float64)  # [T_smile, dims]
    if values.shape[0] == 0:
        return np.zeros((n_frames, dims), dtype=np.float32)
    starts = frame.index.get_level_values("start").total_seconds().to_numpy()
    ends = frame.index.get_level_values("end").total_seconds().to_numpy()
    src_centres = (starts + ends) / 2.0
    centres = frame_centres(n_frames, cfg)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.stack([np.interp(centres, src_centres, values[:, j]) for j in range(values.shape[1])], axis=1)
    return out.astype(np.float32)  # [T, dims]


def compute_features(signal: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The model's input features, shape (frames, dims): log-Mel filterbanks, then pitch (log F0, voicing)
    when ``cfg.pitch``, then openSMILE low-level descriptors when ``cfg.lld`` names a set."""
    fbank = compute_fbank(signal, cfg)
    parts = [fbank]
    if cfg.pitch:
        parts.append(compute_pitch(signal, cfg, fbank.shape[0]))
    if cfg.lld != "none":
        parts.append(compute_lld(signal, cfg, fbank.shape[0]))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def lld_dim(cfg: FeatureConfig) -> int:
    """Dimensions that ``cfg.lld`` appends per frame (0 for none); an unknown set name is a ValueError."""
    if cfg.lld == "none":
        return 0
    if cfg.lld not in LLD_SETS:
        raise ValueError(f"features.lld: unknown set {cfg.lld!r}; choose none, {', '.join(LLD_SETS)}")
    return LLD_SETS[cfg.lld][1]


def feature_dim(cfg: FeatureConfig) -> int:
    return cfg.n_mels + (2 if cfg.pitch else 0) + lld_dim(cfg)


def feature_config_hash(cfg: FeatureConfig) -> str:
    """Short stable hash of a feature configuration (12 hex chars of SHA-1 of sorted JSON).

    Values of float fields are written as floats, so ``frame_length_ms=25``
    and ``frame_length_ms=25.0`` name the same cache.
    """
    hints = get_type_hints(type(cfg))
    data = asdict(cfg)
    for key, value in data.items():
        if hints.get(key) is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
    if data.get("lld") == "none":
        # added after caches existed: leaving the default out keeps their hashes (and entries) valid
        del data["lld"]
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- cache

def _fmt_seconds(value: float) -> str:
    """Region bound for a cache file name: microsecond precision, no trailing zeros."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` it into place.

    A process killed mid-write leaves at most a stray ``.tmp`` file, never a
    truncated entry under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (see :func:`_atomic_write`): results and caches that a
    killed run must find whole or not at all."""
    _atomic_write(Path(path), lambda fh: fh.write(json.dumps(data, indent=1).encode("utf-8")))


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
        _atomic_write(path, lambda fh: np.save(fh, np.asarray(feats, dtype=np.float32), allow_pickle=False))

    def _load(self, path: Path) -> np.ndarray | None:
        return load_cached_array(path)

    def _write_config(self) -> None:
        config_path = self.dir / "config.json"
        if config_path.is_file():
            return
        text = json.dumps(asdict(self.cfg), indent=2, sort_keys=True) + "\n"
        _atomic_write(config_path, lambda fh: fh.write(text.encode("utf-8")))


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
    unusable file raises :class:`~moma.audio.AudioError` naming the utterance
    id and path.
    """
    resolved = _resolve_hashes(utterances, cache)
    misses = [u for u in resolved if not cache.path_for(u.sha1, u.start, u.end).is_file()]
    if misses:
        log.info("features: %d of %d utterances to compute (%s)", len(misses), len(resolved), cache)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, dims.pop()))
    rows: dict[str, list[int]] = {}
    row = 0
    for u, shape in zip(tqdm(resolved, desc="packing", unit="utt", disable=not progress), shapes):
        out[row:row + shape[0]] = _load_entry(cache, u, mmap=True)
        rows[u.id] = [row, row + shape[0]]
        row += shape[0]
    out.flush()
    del out
    index_tmp = tmp.with_suffix(".json")
    index_tmp.write_text(json.dumps({"feature_config": cache.config_hash, "rows": rows}), encoding="utf-8")
    os.replace(index_tmp, path.with_suffix(".json"))  # the index first: a pack without one is never opened
    os.replace(tmp, path)
    log.info("packed %d utterances (%.1f MB) into %s", len(rows), total * 4 * shapes[0][1] / 1e6, path)
    return PackedFeatures(path)


# --------------------------------------------------------------------------- normalisation

def _moments(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean, standard deviation (floored) and frame count over all frames, in float64.

    Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2,
    which loses precision when the mean is large relative to the spread.
    """
    count = sum(int(f.shape[0]) for f in features)
    if count == 0:
        raise ValueError("cannot fit normalisation statistics on zero frames")
    total = np.zeros(features[0].shape[1], dtype=np.float64)
    for f in features:
        total += f.sum(axis=0, dtype=np.float64)
    mean = total / count
    sq = np.zeros_like(mean)
    for f in features:
        d = f.astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", d, d)
    std = np.maximum(np.sqrt(sq / count), STD_FLOOR)
    return mean, std, count


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _check_dims(features: Sequence[np.ndarray]) -> None:
    dims = {f.shape[1] if f.ndim == 2 else None for f in features}
    if None in dims or len(dims) != 1:
        raise ValueError(f"features must be 2-D (frames, bins) with one common bin count, got {sorted(map(str, dims))}")


class Normaliser:
    """Mean/variance feature normalisation with statistics fitted on the training set only.

    Modes:

    * ``"global"``: one mean/std vector over all training frames.
    * ``"speaker"``: one mean/std per training speaker. Speakers unseen in
      :meth:`fit` (test speakers) get statistics only through
      :meth:`fit_speaker`, from their own *unlabelled* features. That is the
      transductive setting (test speakers' audio, never their labels, is used
      before evaluation); :meth:`describe` states it, and reports must say so.
    * ``"utterance"``: each utterance is normalised by its own statistics;
      nothing is fitted.
    * ``"none"``: features pass through unchanged.

    Statistics are accumulated in float64; standard deviations are floored
    at 1e-5.
    """

    def __init__(self, mode: str = "global") -> None:
        if mode not in NORMALISATION_MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; choose one of {', '.join(NORMALISATION_MODES)}")
        self.mode = mode
        self.mean: np.ndarray | None = None  # global mode
        self.std: np.ndarray | None = None
        self.frames = 0  # training frames behind the global statistics
        self.num_speakers = 0  # training speakers seen by fit
        self.speakers: dict[str, dict[str, Any]] = {}  # speaker -> {"mean", "std", "frames", "transductive"}

    def fit(self, features: Sequence[np.ndarray], speakers: Sequence[str] | None = None) -> Normaliser:
        """Fit statistics on the training features (``speakers[i]`` is the speaker of ``features[i]``)."""
        feats = list(features)
        if speakers is not None and len(speakers) != len(feats):
            raise ValueError(f"{len(feats)} feature arrays but {len(speakers)} speaker ids")
        self.num_speakers = len(set(speakers)) if speakers is not None else 0
        if self.mode in ("utterance", "none"):
            return self
        if not feats:
            raise ValueError("cannot fit normalisation statistics on an empty training set")
        _check_dims(feats)
        if self.mode == "global":
            self.mean, self.std, self.frames = _moments(feats)
            return self
        if speakers is None:
            raise ValueError("speaker normalisation needs the speaker of every training utterance")
        groups: dict[str, list[np.ndarray]] = {}
        for f, spk in zip(feats, speakers):
            groups.setdefault(spk, []).append(f)
        self.speakers = {}
        for spk, group in groups.items():
            mean, std, count = _moments(group)
            self.speakers[spk] = {"mean": mean, "std": std, "frames": count, "transductive": False}
        self.frames = sum(s["frames"] for s in self.speakers.values())
        return self

    def fit_speaker(self, speaker: str, features_list: Sequence[np.ndarray]) -> Normaliser:
        """Add statistics for a speaker unseen in training, from that speaker's unlabelled features.

        Transductive: the test speaker's audio (not labels) informs its own
        normalisation. Flagged in :meth:`describe` and :meth:`state_dict`.
        """
        if self.mode != "speaker":
            raise ValueError(f"fit_speaker applies to speaker normalisation, not {self.mode!r}")
        if speaker in self.speakers and not self.speakers[speaker]["transductive"]:
            raise ValueError(f"speaker {speaker!r} already has statistics from the training set")
        feats = list(features_list)
        if not feats:
            raise ValueError(f"no features given for speaker {speaker!r}")
        _check_dims(feats)
        mean, std, count = _moments(feats)
        self.speakers[speaker] = {"mean": mean, "std": std, "frames": count, "transductive": True}
        return self

    def has_speaker(self, speaker: str) -> bool:
        """Whether speaker mode holds statistics for ``speaker`` (from training or :meth:`fit_speaker`)."""
        return speaker in self.speakers

    def transform(self, feat: np.ndarray, speaker: str | None = None) -> np.ndarray:
        """Normalise one utterance's ``(frames, bins)`` features; returns float32."""
        x = np.asarray(feat, dtype=np.float32)
        if self.mode == "none":
            return x
        if self.mode == "utterance":
            if x.shape[0] == 0:
                return x
            mean, std, _ = _moments([x])
        elif self.mode == "global":
            if self.mean is None or self.std is None:
                raise RuntimeError("Normaliser.transform called before fit")
            mean, std = self.mean, self.std
        else:
            if speaker is None:
                raise ValueError("speaker normalisation needs the utterance's speaker")
            if speaker not in self.speakers:
                raise KeyError(f"speaker {speaker!r} has no normalisation statistics "
                               "(not in training; add them with fit_speaker)")
            mean, std = self.speakers[speaker]["mean"], self.speakers[speaker]["std"]
        if x.ndim != 2 or x.shape[1] != mean.shape[0]:
            raise ValueError(f"expected features of shape (frames, {mean.shape[0]}), got {x.shape}")
        return ((x - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float32, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this normaliser (numpy arrays; see :meth:`from_state`)."""
        return {
            "mode": self.mode,
            "mean": None if self.mean is None else self.mean.copy(),
            "std": None if self.std is None else self.std.copy(),
            "frames": self.frames,
            "num_speakers": self.num_speakers,
            "speakers": {spk: {"mean": s["mean"].copy(), "std": s["std"].copy(), "frames": s["frames"],
                               "transductive": s["transductive"]} for spk, s in self.speakers.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Normaliser:
        """Rebuild from :meth:`state_dict` output (arrays may also be plain lists, e.g. from JSON)."""
        norm = cls(str(state["mode"]))

        def arr(value: Any) -> np.ndarray | None:
            return None if value is None else np.asarray(value, dtype=np.float64)

        norm.mean = arr(state.get("mean"))
        norm.std = arr(state.get("std"))
        norm.frames = int(state.get("frames", 0))
        norm.num_speakers = int(state.get("num_speakers", 0))
        norm.speakers = {str(spk): {"mean": arr(s["mean"]), "std": arr(s["std"]), "frames": int(s.get("frames", 0)),
                                    "transductive": bool(s.get("transductive", False))}
                         for spk, s in (state.get("speakers") or {}).items()}
        return norm

    def describe(self) -> str:
        """One line for logs and reports saying where the statistics come from."""
        if self.mode == "none":
            return "no feature normalisation"
        if self.mode == "utterance":
            return "per-utterance mean/variance (each utterance normalised by its own statistics)"
        if self.mode == "global":
            who = _plural(self.num_speakers, "training speaker") if self.num_speakers else "training speakers"
            return f"global mean/variance from {who} only ({self.frames} frames)"
        train = sum(not s["transductive"] for s in self.speakers.values())
        extra = sorted(spk for spk, s in self.speakers.items() if s["transductive"])
        line = f"per-speaker mean/variance: {_plural(train, 'training speaker')}"
        if extra:
            line += (f"; {_plural(len(extra), 'unseen speaker')} ({', '.join(extra)}) normalised with statistics from "
                     "their own unlabelled audio (transductive)")
        return line


class NormalisedFeatures(Mapping):
    """``{id: normalised [frames, F] float32}`` computed on access from raw features and a :class:`Normaliser`.

    Normalising on access (a subtraction and a division per frame) instead of
    storing a normalised copy keeps one copy of the corpus, or none in memory
    when the raw features are :class:`PackedFeatures`.
    """

    def __init__(self, raw: Mapping[str, np.ndarray], normaliser: Normaliser, speakers: Mapping[str, str],
                 keys: Sequence[str]) -> None:
        self.raw = raw
        self.normaliser = normaliser
        self.speakers = speakers  # utterance id -> speaker (per-speaker statistics)
        self.keys_ = list(keys)
        self._keys = set(self.keys_)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        out = self.normaliser.transform(self.raw[key], self.speakers.get(key))
        # modes that change nothing hand back the mapped, read-only rows: give callers their own
        return out if out.flags.writeable else np.array(out, dtype=np.float32)

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)
