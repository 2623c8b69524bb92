"""The measured cases of ``moma bench``, each run in its own child process (see :mod:`moma.bench.runner`).

Every function here takes plain, picklable arguments, does one measurement
and returns a JSON-able dict. Inputs are synthetic and drawn from explicit
seeds (random normal features stand in for normalised filterbanks: an LSTM's
cost does not depend on the values), except the accuracy case, which scores
a real checkpoint on a real fold.
"""

from __future__ import annotations

import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moma.bench.runner import time_calls
from moma.capabilities import MissingExtraError, require_extra
from moma.config import DataConfig, FeatureConfig, RunConfig, load_run_config, replace
from moma.features.frontend import num_frames
from moma.model import build_model, count_parameters
from moma.recipes import resolve_recipe

log = logging.getLogger(__name__)

NUM_CLASSES = 7  # EmoDB's seven emotions: the random-init models have the trained model's head size
# Model sizes benchmarked: the paper's, the small CPU recipe, and a tiny one for --quick and tests.
MODEL_RECIPES = {"paper": "paper", "small": "emodb-cpu", "tiny": "emodb-cpu"}
_TINY = {"hidden_size": 16, "context_dim": 8, "projection_dim": 32}


def bench_config(name: str) -> RunConfig:
    """The run configuration of a benchmarked model size (7 classes, 23 inputs)."""
    if name not in MODEL_RECIPES:
        raise ValueError(f"unknown model size {name!r}; known: {', '.join(MODEL_RECIPES)}")
    cfg = load_run_config([resolve_recipe(MODEL_RECIPES[name])])
    changes: dict[str, Any] = {"num_classes": NUM_CLASSES, "input_dim": cfg.features.n_mels}
    if name == "tiny":
        changes.update(_TINY)
    return replace(cfg, model=replace(cfg.model, **changes))


def speech_signal(seconds: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """A speech-like signal of exactly ``seconds`` from the source-filter synthesiser (deterministic)."""
    from moma.corpora.synthetic import make_speaker_voices, synthesise_utterance

    voice = make_speaker_voices(2, seed)[0]
    rng = np.random.default_rng([seed, 11])
    return synthesise_utterance(voice, "neutral", seed, rng, sample_rate, min_duration=seconds, max_duration=seconds)


# --------------------------------------------------------------------------- features


def feature_extractor(extractor: str, seconds: float, seed: int, budget_s: float) -> dict[str, Any]:
    """Real-time factor of one log-Mel front end on the same signal (23 bins, 25 ms / 10 ms, log)."""
    signal = speech_signal(seconds, seed)
    cfg = FeatureConfig()
    version = ""
    if extractor == "moma":
        import kaldi_native_fbank

        from moma.features.frontend import compute_fbank

        version = f"kaldi-native-fbank {getattr(kaldi_native_fbank, '__version__', '')}".strip()

        def run() -> np.ndarray:
            return compute_fbank(signal, cfg)
    elif extractor == "librosa":
        try:
            librosa = require_extra("librosa", "bench", "the librosa row of moma bench")
        except MissingExtraError as exc:  # a reference front end: the row says so, the bench goes on
            return {"skipped": str(exc)}
        version = f"librosa {librosa.__version__}"

        def run() -> np.ndarray:
            mel = librosa.feature.melspectrogram(y=signal, sr=cfg.sample_rate, n_fft=512, win_length=400,
                                                 hop_length=160, n_mels=cfg.n_mels, fmin=cfg.low_freq,
                                                 center=False, power=2.0)
            return np.log(mel + 1e-10).T
    elif extractor == "python_speech_features":
        try:
            psf = require_extra("python_speech_features", "bench", "the python_speech_features row of moma bench")
        except MissingExtraError as exc:
            return {"skipped": str(exc)}
        version = "python_speech_features"

        def run() -> np.ndarray:
            return psf.logfbank(signal, cfg.sample_rate, winlen=0.025, winstep=0.01, nfilt=cfg.n_mels, nfft=512,
                                lowfreq=cfg.low_freq, preemph=cfg.preemphasis)
    else:
        raise ValueError(f"unknown extractor {extractor!r}")
    frames = int(run().shape[0])
    timing = time_calls(run, budget_s=budget_s)
    return {"extractor": extractor, "version": version, "audio_s": seconds, "frames": frames, **timing,
            "rtf": timing["min_s"] / seconds, "x_realtime": seconds / timing["min_s"]}


def corpus_extraction(corpus_dir: str, workers: int, scratch: str) -> dict[str, Any]:
    """``moma.features.frontend.extract_features`` on a synthetic corpus into an empty cache (every entry computed)."""
    from moma.corpora.synthetic import load_synthetic
    from moma.features.cache import FeatureCache, extract_features

    utts = load_synthetic(corpus_dir)  # hashes the files: not part of the timed extraction
    cache_dir = Path(tempfile.mkdtemp(prefix=f"cache-w{workers}-", dir=scratch))
    try:
        cache = FeatureCache(cache_dir, FeatureConfig())
        usage0 = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t0 = time.perf_counter()
        feats = extract_features(utts, cache, workers=workers)
        wall = time.perf_counter() - t0
        usage1 = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    cpu = sum((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(usage0, usage1))
    hours = sum(u.duration for u in utts) / 3600.0
    return {"workers": workers, "utterances": len(utts), "audio_h": hours, "wall_s": wall, "cpu_s": cpu,
            "frames": int(sum(f.shape[0] for f in feats.values())),
            "x_realtime": hours * 3600.0 / wall,
            "hours_per_core_s": hours / (wall * workers),  # per second of each core the run was given
            "hours_per_cpu_s": hours / cpu if cpu > 0 else 0.0}  # per second of CPU time actually used


# --------------------------------------------------------------------------- training


def _train_step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, lengths: torch.Tensor,
                   y: torch.Tensor, precision: str, device: torch.device) -> Any:
    """One forward + backward + clip + Adam step, as ``moma.training.train`` does it."""
    criterion = nn.CrossEntropyLoss()
    params = list(model.parameters())

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, lengths)
        loss = criterion(out.logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, grad_clip: float = 5.0,
                max_batches: int | None = None, device: torch.device | None = None,
                precision: str = "fp32") -> tuple[int, int, float]:
    """Train on ``loader`` as ``moma.training.train`` does; returns (batches, real frames, seconds)."""
    criterion = nn.CrossEntropyLoss()
    dev = device or torch.device("cpu")
    batches, real = 0, 0
    t0 = time.perf_counter()
    for batch in loader:
        x, lengths, y = (t.to(dev, non_blocking=True) for t in (batch.features, batch.lengths, batch.labels))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, lengths)
        loss = criterion(out.logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        batches += 1
        real += int(batch.lengths.sum())
        if max_batches is not None and batches >= max_batches:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batches, real, time.perf_counter() - t0


def training_throughput(config: str, precision: str, device: str, batch: int, seconds: float, budget_s: float,
                        seed: int) -> dict[str, Any]:
    """Real frames per second of training steps on a batch of equal-length utterances (no padding)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    cfg = bench_config(config)
    torch.manual_seed(seed)
    model = build_model(cfg.model).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    frames = num_frames(int(seconds * cfg.features.sample_rate), cfg.features)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg.model.input_dim, generator=gen).to(dev)
    lengths = torch.full((batch,), frames, dtype=torch.long, device=dev)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(dev)
    timing = time_calls(_train_step_fn(model, optimizer, x, lengths, y, precision, dev), budget_s=budget_s,
                        min_repeats=2)
    real = batch * frames
    return {"config": config, "parameters": count_parameters(model), "precision": precision, "device": device,
            "batch": batch, "frames_per_utterance": frames, **timing,
            "frames_per_s": real / timing["min_s"], "frames_per_s_median": real / timing["median_s"]}


def compile_speedup(config: str, batch: int, seconds: float, budget_s: float, seed: int) -> dict[str, Any]:
    """Training steps of the eager model against ``torch.compile`` of the same model (CPU, float32).

    Compile time (the first call) is reported apart from the steady-state
    step time, and the compiled model's logits are checked against the eager
    ones in eval mode (dropout off). This is the figure behind not compiling
    by default: the recurrent core is ``nn.LSTM``, which the compiler leaves
    to the same ATen kernel.
    """
    cfg = bench_config(config)
    torch.manual_seed(seed)
    model = build_model(cfg.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    frames = num_frames(int(seconds * cfg.features.sample_rate), cfg.features)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg.model.input_dim, generator=gen)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    dev = torch.device("cpu")
    eager = time_calls(_train_step_fn(model, optimizer, x, lengths, y, "fp32", dev), budget_s=budget_s,
                       min_repeats=2)
    compiled_model = torch.compile(model)
    step = _train_step_fn(compiled_model, optimizer, x, lengths, y, "fp32", dev)
    t0 = time.perf_counter()
    try:
        step()  # compiles forward and backward
    except Exception as exc:  # noqa: BLE001 - inductor needs a C++ toolchain and a supported CPU; report, not fail
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return {"skipped": f"not supported on this machine: torch.compile failed ({type(exc).__name__}: {first})",
                "unsupported": True}
    compile_s = time.perf_counter() - t0
    compiled = time_calls(step, budget_s=budget_s, min_repeats=2)
    model.eval()
    with torch.no_grad():
        diff = float((compiled_model(x, lengths).logits - model(x, lengths).logits).abs().max())
    real = batch * frames
    return {"config": config, "parameters": count_parameters(model), "batch": batch, "frames_per_utterance": frames,
            "compile_s": compile_s, "eager_frames_per_s": real / eager["min_s"],
            "compiled_frames_per_s": real / compiled["min_s"], "speedup": eager["min_s"] / compiled["min_s"],
            "max_abs_logit_diff": diff}


def loader_workers(config: str, lengths: list[int], workers: list[int], rounds: int, seed: int) -> dict[str, Any]:
    """Training epochs through the full data path with augmentation, DataLoader workers 0, 1, ...

    The data path is the training one (random 3 s crops, SpecAugment,
    bucketed batches); compute runs on one thread, so a
    worker process can prepare the next batch on another core. Epochs of the
    settings alternate ``rounds`` times; the best epoch of each is reported.
    """
    from moma.data.batching import FeatureDataset, make_items, make_loader

    cfg = bench_config(config)
    dim = cfg.model.input_dim
    dc = DataConfig(random_crop_s=3.0, spec_augment=True)
    rng = np.random.default_rng([seed, 41])
    feats = {f"u{i}": rng.standard_normal((n, dim)).astype(np.float32) for i, n in enumerate(lengths)}
    keys = list(feats)
    labels = {k: int(i % NUM_CLASSES) for i, k in enumerate(keys)}
    torch.manual_seed(seed)
    model = build_model(cfg.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    best: dict[int, float] = {}
    for r in range(rounds):
        for n in workers:
            dataset = FeatureDataset(feats, make_items(feats, keys, labels), replace(dc, num_workers=n), train=True,
                                     seed=seed)
            dataset.set_epoch(r + 1)
            loader = make_loader(dataset, replace(dc, num_workers=n), shuffle=True, seed=seed)
            loader.batch_sampler.set_epoch(r + 1)
            _, real, seconds = train_epoch(model, optimizer, loader)
            best[n] = max(best.get(n, 0.0), real / seconds)
    return {"config": config, "utterances": len(lengths), "rounds": rounds,
            "frames_per_s": {str(n): best[n] for n in workers},
            "speedup": {str(n): best[n] / best[workers[0]] for n in workers}}


def realistic_lengths(count: int, seed: int, median_s: float = 2.6, sigma: float = 0.35, min_s: float = 1.0,
                      max_s: float = 9.0) -> list[int]:
    """Frame counts of ``count`` utterances with EmoDB's length distribution (log-normal, 1-9 s)."""
    rng = np.random.default_rng([seed, 21])
    seconds = np.clip(median_s * np.exp(rng.normal(0.0, sigma, count)), min_s, max_s)
    return [int(round(s * 100.0)) - 1 for s in seconds]  # 25 ms windows every 10 ms


def bucketing(config: str, lengths: list[int], rounds: int, seed: int, max_frames: int,
              batch_size: int) -> dict[str, Any]:
    """Training throughput on length-bucketed variable-length batches against uniform-length batches.

    Both go through the training data path (FeatureDataset, BucketBatchSampler,
    collate, DataLoader) with the same frame budget per batch and about the
    same number of real frames; only the length distribution differs. Epochs
    of the two kinds alternate (``rounds`` each) so that a change in machine
    load hits both; each kind's best epoch is reported.
    """
    from moma.data.batching import FeatureDataset, make_items, make_loader, padding_fraction

    cfg = bench_config(config)
    dim = cfg.model.input_dim
    dc = DataConfig(max_frames_per_batch=max_frames, batch_size=batch_size)  # no crop, no augmentation
    rng = np.random.default_rng([seed, 31])
    mean_len = int(round(float(np.mean(lengths))))
    uniform_count = max(1, int(round(sum(lengths) / mean_len)))

    def loader_for(prefix: str, lens: list[int]) -> tuple[Any, list[int]]:
        feats = {f"{prefix}{i}": rng.standard_normal((n, dim)).astype(np.float32) for i, n in enumerate(lens)}
        keys = list(feats)
        labels = {k: int(i % NUM_CLASSES) for i, k in enumerate(keys)}
        dataset = FeatureDataset(feats, make_items(feats, keys, labels), dc, train=False)
        return make_loader(dataset, dc, shuffle=True, seed=seed), dataset.lengths()

    loaders = {"bucketed": loader_for("b", list(lengths)), "uniform": loader_for("u", [mean_len] * uniform_count)}
    torch.manual_seed(seed)
    model = build_model(cfg.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)

    def epoch(loader: Any, epoch_index: int) -> tuple[int, float]:
        loader.batch_sampler.set_epoch(epoch_index)
        _, real, seconds = train_epoch(model, optimizer, loader)
        return real, seconds

    for loader, _ in loaders.values():  # warm-up: one batch each (allocator, kernels)
        first = next(iter(loader))
        model(first.features, first.lengths).logits.sum().backward()
        optimizer.zero_grad(set_to_none=True)
    out: dict[str, Any] = {"config": config, "max_frames_per_batch": max_frames, "batch_size": batch_size,
                           "rounds": rounds}
    best: dict[str, float] = {}
    for r in range(rounds):
        for kind, (loader, _) in loaders.items():
            real, elapsed = epoch(loader, r + 1)
            best[kind] = max(best.get(kind, 0.0), real / elapsed)
            out.setdefault(kind, {})["real_frames"] = real
    for kind, (loader, lens) in loaders.items():
        loader.batch_sampler.set_epoch(1)
        batches = loader.batch_sampler.batches()
        out[kind].update({"utterances": len(lens), "batches": len(batches),
                          "mean_length_frames": float(np.mean(lens)),
                          "padding_fraction": padding_fraction(lens, batches), "frames_per_s": best[kind]})
    out["ratio"] = best["bucketed"] / best["uniform"]
    return out


# --------------------------------------------------------------------------- inference


def prepare_models(work_dir: str, checkpoint: str | None, config: str, seed: int) -> dict[str, Any]:
    """The checkpoint the inference cases load, and its float32 and int8 ONNX exports.

    Without ``checkpoint`` a randomly initialised model of ``config`` is saved
    (speed does not depend on the weights). Exports go through ``moma
    export``'s own function, so the int8 backend measured is the one users get.
    """
    from moma.checkpoint import load_checkpoint, save_checkpoint
    from moma.features.normalise import Normaliser
    from moma.inference.export import export_onnx

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        cfg = bench_config(config)
        torch.manual_seed(seed)
        model = build_model(cfg.model).eval()
        labels = [f"class{i}" for i in range(NUM_CLASSES)]
        checkpoint = str(save_checkpoint(work / "random-init.safetensors", model, cfg, labels, Normaliser("none"),
                                         info={"description": f"randomly initialised {config} model (bench)"}))
    loaded = load_checkpoint(checkpoint)
    out: dict[str, Any] = {"checkpoint": checkpoint, "parameters": count_parameters(loaded.model),
                           "hidden_size": loaded.config.model.hidden_size, "labels": loaded.labels}
    for name, quantize in (("onnx", "none"), ("onnx-int8", "int8")):
        t0 = time.perf_counter()
        path = export_onnx(checkpoint, work / name, quantize=quantize)
        out[f"{name}_export_s"] = time.perf_counter() - t0
        out[f"{name}_dir"] = str(path.parent)
        out[f"{name}_mb"] = path.stat().st_size / 1e6
    return out


def load_predictor(models: dict[str, Any], backend: str, threads: int) -> Any:
    """A Predictor on ``backend``, built the way users build one (``torch-bf16`` is bench-only)."""
    from moma.inference.backends import TorchBackend
    from moma.inference.predictor import Predictor

    if backend == "torch-bf16":
        predictor = Predictor.from_checkpoint(models["checkpoint"], backend="torch")
        predictor.backend = TorchBackend(predictor.backend.model, name="torch-bf16", autocast=torch.bfloat16)
        return predictor
    if backend in ("onnx", "onnx-int8"):
        return Predictor.from_checkpoint(models[f"{backend}_dir"], backend=backend, num_threads=threads)
    return Predictor.from_checkpoint(models["checkpoint"], backend=backend)


def _random_features(count: int, frames: int, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 41, frames])
    return [rng.standard_normal((frames, dim)).astype(np.float32) for _ in range(count)]


def inference_speed(models: dict[str, Any], backend: str, batch: int, seconds: float, threads: int,
                    budget_s: float, seed: int) -> dict[str, Any]:
    """Real-time factor of ``Predictor.predict_batch`` for ``batch`` utterances of ``seconds`` each."""
    t0 = time.perf_counter()
    predictor = load_predictor(models, backend, threads)
    load_s = time.perf_counter() - t0
    cfg = predictor.config.features
    frames = num_frames(int(seconds * cfg.sample_rate), cfg)
    feats = _random_features(batch, frames, predictor.config.model.input_dim, seed)
    timing = time_calls(lambda: predictor.predict_batch(feats), budget_s=budget_s)
    audio = batch * seconds
    return {"backend": backend, "batch": batch, "audio_s": seconds, "frames": frames, "threads": threads,
            "load_s": load_s, **timing, "rtf": timing["min_s"] / audio, "rtf_median": timing["median_s"] / audio}


def head_to_head(models: dict[str, Any], backends: list[str], seconds: float, threads: int, budget_s: float,
                 seed: int, check_utterances: int) -> dict[str, Any]:
    """Batch-1 latency of every backend in one process, calls interleaved round-robin.

    Interleaving makes the speed ratios robust to load that changes during
    the run (other jobs on a shared machine): each round times every backend
    once, in a rotating order. Also the largest posterior difference from
    the torch float32 model over ``check_utterances`` random inputs of 1-5 s.
    """
    predictors = {b: load_predictor(models, b, threads) for b in backends}
    ref = predictors[backends[0]]
    cfg = ref.config.features
    frames = num_frames(int(seconds * cfg.sample_rate), cfg)
    dim = ref.config.model.input_dim
    feats = _random_features(1, frames, dim, seed)
    for p in predictors.values():
        p.predict_batch(feats)
    times: dict[str, list[float]] = {b: [] for b in backends}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - t_start < budget_s and rounds < 500):
        order = backends[rounds % len(backends):] + backends[:rounds % len(backends)]
        for b in order:
            t = time.perf_counter()
            predictors[b].predict_batch(feats)
            times[b].append(time.perf_counter() - t)
        rounds += 1
    rng = np.random.default_rng([seed, 51])
    checks = [rng.standard_normal((int(rng.integers(100, 500)), dim)).astype(np.float32)
              for _ in range(check_utterances)]
    ref_probs = np.stack([list(p.probabilities.values()) for p in ref.predict_batch(checks)])
    out: dict[str, Any] = {"audio_s": seconds, "frames": frames, "threads": threads, "rounds": rounds, "backends": {}}
    base_median = float(np.median(times[backends[0]]))
    base_min = float(np.min(times[backends[0]]))
    for b in backends:
        probs = np.stack([list(p.probabilities.values()) for p in predictors[b].predict_batch(checks)])
        med, best = float(np.median(times[b])), float(np.min(times[b]))
        out["backends"][b] = {"median_s": med, "min_s": best, "rtf": med / seconds,
                              "speedup_median": base_median / med, "speedup_min": base_min / best,
                              "synthetic_max_abs_diff": float(np.abs(probs - ref_probs).max())}
    return out


def accuracy(models: dict[str, Any], backends: list[str], manifest: str, speakers: list[str], cache_dir: str,
             threads: int) -> dict[str, Any]:
    """UAR, accuracy and posterior changes of every backend on one labelled fold (batch 1, file order).

    Features are the checkpoint's own (its feature configuration, cached in
    ``cache_dir``) and normalised as ``moma evaluate`` does.
    """
    from moma.corpora.base import read_manifest
    from moma.evaluation.metrics import compute_metrics
    from moma.features.cache import FeatureCache, extract_features
    from moma.features.normalise import normalise_for_checkpoint

    wanted = set(speakers)
    utts = [u for u in read_manifest(manifest) if u.speaker in wanted]
    if not utts:
        raise ValueError(f"no utterance of speakers {', '.join(sorted(wanted))} in {manifest}")
    ref = load_predictor(models, backends[0], threads)
    unknown = sorted({u.label for u in utts} - set(ref.labels))
    if unknown:
        raise ValueError(f"labels {', '.join(unknown)} of the fold are not among the model's ({', '.join(ref.labels)})")
    feats = extract_features(utts, FeatureCache(cache_dir, ref.config.features))
    normed = normalise_for_checkpoint(ref.normaliser, feats, utts)
    keys = [u.id for u in utts]
    y_true = [ref.labels.index(u.label) for u in utts]
    audio_s = sum(normed[k].shape[0] for k in keys) * ref.config.features.frame_shift_ms / 1000.0
    out: dict[str, Any] = {"utterances": len(utts), "speakers": sorted(wanted), "audio_s": audio_s, "backends": {}}
    ref_probs: np.ndarray | None = None
    ref_metrics: dict[str, Any] = {}
    for b in backends:
        predictor = ref if b == backends[0] else load_predictor(models, b, threads)
        t0 = time.perf_counter()
        probs = np.stack([[p.probabilities[lab] for lab in ref.labels]
                          for p in (predictor.predict_features(normed[k]) for k in keys)])
        elapsed = time.perf_counter() - t0
        m = compute_metrics(y_true, probs.argmax(1).tolist(), ref.labels)
        row = {"uar": m["uar"], "accuracy": m["accuracy"], "fold_rtf": elapsed / audio_s}
        if ref_probs is None:
            ref_probs, ref_metrics = probs, m
        row.update({"delta_uar_points": 100.0 * (m["uar"] - ref_metrics["uar"]),
                    "delta_accuracy_points": 100.0 * (m["accuracy"] - ref_metrics["accuracy"]),
                    "max_abs_posterior_diff": float(np.abs(probs - ref_probs).max()),
                    "label_agreement": float(np.mean(probs.argmax(1) == ref_probs.argmax(1)))})
        out["backends"][b] = row
    return out


def length_scaling(models: dict[str, Any], backend: str, seconds: float, threads: int, budget_s: float,
                   seed: int) -> dict[str, Any]:
    """Batch-1 time of one utterance of ``seconds`` (one case per length, so memory is per length)."""
    return inference_speed(models, backend, 1, seconds, threads, budget_s, seed)


# --------------------------------------------------------------------------- corpus scaling


def corpus_scaling(hours: float, scratch: str, seed: int, config: str, workers: int,
                   max_train_batches: int) -> dict[str, Any]:
    """Costs of one corpus size: generate it, extract features, fit the normaliser, one training epoch.

    The epoch is the ``config`` recipe's (random 3 s crops, SpecAugment,
    bucketed batches). When it has more than ``max_train_batches`` batches,
    that many batches of the shuffled epoch are timed and the epoch time is
    extrapolated by real frames (said in the result); batch set-up (the
    sampler over all utterances) is always timed in full.
    """
    from moma.corpora.synthetic import make_synthetic_hours
    from moma.data.batching import FeatureDataset, make_items, make_loader
    from moma.features.cache import FeatureCache, extract_features
    from moma.features.normalise import Normaliser

    root = Path(tempfile.mkdtemp(prefix=f"corpus-{hours:g}h-", dir=scratch))
    try:
        t0 = time.perf_counter()
        utts = make_synthetic_hours(root / "corpus", hours, seed=seed)
        generate_s = time.perf_counter() - t0
        audio_h = sum(u.duration for u in utts) / 3600.0
        cfg = bench_config(config)
        cache = FeatureCache(root / "cache", cfg.features)
        usage0 = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t0 = time.perf_counter()
        feats = extract_features(utts, cache, workers=workers)
        extract_s = time.perf_counter() - t0
        usage1 = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        extract_cpu = sum((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(usage0, usage1))
        del feats
        t0 = time.perf_counter()
        feats = extract_features(utts, cache, workers=1)  # all cache hits: what every later run pays
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        keys = [u.id for u in utts]
        normaliser = Normaliser(cfg.data.normalisation).fit([feats[k] for k in keys])
        feats = {k: normaliser.transform(feats[k]).astype(np.float32, copy=False) for k in keys}
        normalise_s = time.perf_counter() - t0
        feature_mb = sum(f.nbytes for f in feats.values()) / 1e6

        labels = sorted({u.label for u in utts})
        label_of = {u.id: labels.index(u.label) for u in utts}
        frames_per_second = 1000.0 / cfg.features.frame_shift_ms
        t0 = time.perf_counter()
        dataset = FeatureDataset(feats, make_items(feats, keys, label_of), cfg.data, train=True, seed=seed,
                                 frames_per_second=frames_per_second)
        loader = make_loader(dataset, cfg.data, shuffle=True, seed=seed)
        loader.batch_sampler.set_epoch(1)
        dataset.set_epoch(1)
        num_batches = len(loader.batch_sampler)
        epoch_frames = int(sum(dataset.lengths()))
        setup_s = time.perf_counter() - t0
        cfg_model = replace(cfg.model, num_classes=len(labels))
        torch.manual_seed(seed)
        model = build_model(cfg_model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        timed, real, measured_s = train_epoch(model, optimizer, loader, cfg.train.grad_clip, max_train_batches)
        extrapolated = timed < num_batches
        epoch_s = measured_s * epoch_frames / real if extrapolated else measured_s
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_hour = {"generate_s": generate_s / audio_h, "extract_s": extract_s / audio_h,
                "extract_cpu_s": extract_cpu / audio_h, "load_s": load_s / audio_h,
                "normalise_s": normalise_s / audio_h, "setup_s": setup_s / audio_h, "epoch_s": epoch_s / audio_h,
                "feature_mb": feature_mb / audio_h}
    return {"hours": hours, "audio_h": audio_h, "utterances": len(utts), "workers": workers, "config": config,
            "generate_s": generate_s, "extract_s": extract_s, "extract_cpu_s": extract_cpu, "load_s": load_s,
            "normalise_s": normalise_s, "feature_mb": feature_mb, "setup_s": setup_s, "batches": num_batches,
            "timed_batches": timed, "epoch_real_frames": epoch_frames, "epoch_s": epoch_s,
            "epoch_extrapolated": extrapolated, "epoch_frames_per_s": real / measured_s, "per_hour": per_hour}


def corpus_epoch(hours: float, median_duration_s: float, config: str, device: str, precision: str,
                 max_frames: int, batch_size: int, workers: int, scratch: str, seed: int) -> dict[str, Any]:
    """Wall time of one full training epoch over a synthetic corpus, e.g. IEMOCAP-sized on a GPU.

    IEMOCAP's 4-class set is about 7 hours in 5,500 utterances (median about
    4.5 s); ``hours`` and ``median_duration_s`` give a corpus of that shape.
    The epoch is the recipe's (3 s random crops off, whole utterances,
    bucketed batches of ``max_frames``), on ``device`` with ``precision``
    autocast, with validation excluded; a warm-up batch runs first so that
    cuDNN set-up is not counted.
    """
    from moma.corpora.synthetic import make_synthetic_hours
    from moma.data.batching import FeatureDataset, make_items, make_loader
    from moma.features.cache import FeatureCache, pack_features
    from moma.features.normalise import NormalisedFeatures, Normaliser

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False  # lengths vary per batch: tuning per shape would not pay
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    root = Path(tempfile.mkdtemp(prefix=f"epoch-{hours:g}h-", dir=scratch))
    try:
        utts = make_synthetic_hours(root / "corpus", hours, seed=seed, median_duration=median_duration_s)
        cfg = bench_config(config)
        cache = FeatureCache(root / "cache", cfg.features)
        t0 = time.perf_counter()
        packed = pack_features(utts, cache, workers=workers)
        extract_s = time.perf_counter() - t0
        keys = [u.id for u in utts]
        normaliser = Normaliser("global").fit([packed[k] for k in keys])
        feats = NormalisedFeatures(packed, normaliser, {u.id: u.speaker for u in utts}, keys)
        labels = sorted({u.label for u in utts})
        label_of = {u.id: labels.index(u.label) for u in utts}
        data_cfg = replace(cfg.data, random_crop_s=0.0, max_frames_per_batch=max_frames, batch_size=batch_size)
        dataset = FeatureDataset(feats, make_items(feats, keys, label_of), data_cfg, train=True, seed=seed)
        loader = make_loader(dataset, data_cfg, shuffle=True, seed=seed)
        loader.batch_sampler.set_epoch(1)
        torch.manual_seed(seed)
        model = build_model(replace(cfg.model, num_classes=len(labels))).to(dev).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        train_epoch(model, optimizer, loader, cfg.train.grad_clip, 1, dev, precision)  # warm-up batch
        batches, real, epoch_s = train_epoch(model, optimizer, loader, cfg.train.grad_clip, None, dev, precision)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"hours": sum(u.duration for u in utts) / 3600.0, "utterances": len(utts), "config": config,
            "parameters": count_parameters(model), "device": device, "precision": precision,
            "max_frames": max_frames, "batch_size": batch_size, "batches": batches, "real_frames": real,
            "extract_s": extract_s, "epoch_s": epoch_s, "frames_per_s": real / epoch_s,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def memory_probe(megabytes: int) -> dict[str, Any]:
    """Touch ``megabytes`` of fresh memory: a known allocation that checks the per-case peak measurement."""
    block = np.ones(megabytes * 2**20 // 8, dtype=np.float64)  # ones, not empty: every page is written
    return {"allocated_mb": megabytes, "checksum": float(block[:: 4096].sum())}
