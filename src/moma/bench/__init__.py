"""``moma bench``: how fast moma is at every scale, measured side by side in one run.

Sections (``--sections``):

* ``features``  real-time factor of moma's front end (kaldi-native-fbank)
  against librosa and python_speech_features on one signal; corpus feature
  extraction throughput with 1 and 2 worker processes.
* ``training``  training throughput (real frames per second, forward +
  backward + Adam) of the paper and the small CPU configuration, 1 and 2
  threads, float32 and bf16 autocast (and GPU float32 / TF32 / bf16 when CUDA
  is present); length-bucketed batches against uniform-length batches;
  ``torch.compile`` against eager; DataLoader workers 0 against 1.
* ``inference`` real-time factor at batch 1 and 32 (3 s utterances, one
  thread) for every backend, an interleaved batch-1 head-to-head, and (with
  ``--checkpoint --manifest --speakers``) UAR, accuracy and posterior changes
  on a labelled fold.
* ``scaling``   cost against utterance length (1-30 s) and corpus size
  (synthetic corpora of 0.5, 2 and 8 hours): per-hour costs that stay
  constant show linear growth.

Every case runs in its own child process (:mod:`moma.bench.runner`), which
also gives its peak resident memory. Cases run one after another, never
concurrently, so that they do not compete with each other; figures are
minima over repeats (or, for the head-to-head and bucketing comparisons,
interleaved repeats), which is what stays comparable on a machine shared
with other jobs. ``bench.json`` holds everything; ``README.md`` the tables
(:mod:`moma.bench.report`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moma.bench.runner import Case, machine_info, run_case
from moma.features.cache import DEFAULT_CACHE_DIR

log = logging.getLogger(__name__)

SECTIONS = ("features", "training", "inference", "scaling")
INFERENCE_BACKENDS = ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")
FORMAT = "moma-bench/1"
_CASES = "moma.bench.cases"
# Cases that take the prepared models (checkpoint + exports) as their ``models`` argument.
_NEEDS_MODELS = {"inference_speed", "head_to_head", "accuracy", "length_scaling"}


@dataclass
class BenchOptions:
    """What to measure. ``quick`` shrinks every case (tiny model, short audio, tiny corpora) to run in seconds."""

    out: Path
    quick: bool = False
    sections: Sequence[str] = SECTIONS
    checkpoint: str | None = None  # model for the inference cases (default: a random-init paper-config model)
    manifest: str | None = None  # labelled fold for the accuracy check (with speakers)
    speakers: Sequence[str] = ()
    cache_dir: str = DEFAULT_CACHE_DIR  # feature cache for the accuracy fold
    seed: int = 0
    work_dir: str | None = None  # scratch for corpora and exports (default: OUT/.work, removed afterwards)
    keep_work: bool = False
    threads: Sequence[int] = (1, 2)  # CPU thread counts for training
    command: str = ""
    extra_notes: list[str] = field(default_factory=list)


def _c(target: str) -> str:
    return f"{_CASES}:{target}"


def _bucketing_lengths(opts: BenchOptions, count: int, max_total: int) -> tuple[list[int], str]:
    """Utterance lengths (frames) for the bucketing case: the manifest's when given, else EmoDB-like."""
    import numpy as np

    from moma.bench.cases import realistic_lengths

    source = f"{count} log-normal lengths like EmoDB's (median 2.6 s, 1-9 s)"
    lengths: list[int] = []
    if opts.manifest:
        from moma.corpora.base import read_manifest

        lengths = [max(1, int(u.duration * 100.0) - 1) for u in read_manifest(opts.manifest) if u.duration > 0]
        source = f"the {len(lengths)} utterance lengths of {opts.manifest}"
    if not lengths:
        lengths = realistic_lengths(count, opts.seed)
    if sum(lengths) > max_total:  # a seeded random subset keeps the distribution and bounds the time
        rng = np.random.default_rng([opts.seed, 61])
        order = rng.permutation(len(lengths))
        kept, total = [], 0
        for i in order.tolist():
            if total + lengths[i] > max_total:
                break
            kept.append(lengths[i])
            total += lengths[i]
        source += f", random subset of {len(kept)} ({total} frames)"
        lengths = kept
    return lengths, source


def plan_cases(opts: BenchOptions, work: Path) -> list[Case]:
    """The cases of a run, in execution order. Inference cases read ``work/models.json`` (written by prepare)."""
    import torch

    from moma.capabilities import bf16_unsupported_reason, int8_unsupported_reason

    q = opts.quick
    seed = opts.seed
    cases: list[Case] = []
    # Probed once here (in the parent): a case this machine cannot run is reported as such, not failed.
    cpu_bf16 = bf16_unsupported_reason("cpu") or ""
    backend_unsupported = {"torch-bf16": cpu_bf16, "torch-int8": int8_unsupported_reason() or ""}
    runnable_backends = [b for b in INFERENCE_BACKENDS if not backend_unsupported.get(b)]
    model_size = "tiny" if q else "paper"
    if "features" in opts.sections:
        seconds, budget = (2.0, 0.3) if q else (10.0, 2.0)
        for name in ("moma", "librosa", "python_speech_features"):
            cases.append(Case("features", name, _c("feature_extractor"),
                              {"extractor": name, "seconds": seconds, "seed": seed, "budget_s": budget}))
        for workers in (1, 2):
            cases.append(Case("features", f"corpus-w{workers}", _c("corpus_extraction"),
                              {"corpus_dir": str(work / "features-corpus"), "workers": workers,
                               "scratch": str(work)}, threads=1))
    if "training" in opts.sections:
        configs = ("tiny",) if q else ("paper", "small")
        threads = (1,) if q else tuple(opts.threads)
        budget = 0.3 if q else 4.0
        batch = 4 if q else 16
        for config in configs:
            for n in threads:
                for precision in ("fp32", "bf16"):
                    cases.append(Case("training", f"{config}-{n}t-{precision}", _c("training_throughput"),
                                      {"config": config, "precision": precision, "device": "cpu", "batch": batch,
                                       "seconds": 3.0, "budget_s": budget, "seed": seed}, threads=n,
                                      unsupported=cpu_bf16 if precision == "bf16" else ""))
        if torch.cuda.is_available():
            cuda_bf16 = bf16_unsupported_reason("cuda") or ""
            for precision in ("fp32", "tf32", "bf16"):
                cases.append(Case("training", f"{model_size}-cuda-{precision}", _c("training_throughput"),
                                  {"config": model_size, "precision": precision, "device": "cuda", "batch": 32,
                                   "seconds": 3.0, "budget_s": 0.5 if q else 4.0, "seed": seed}, threads=1,
                                  unsupported=cuda_bf16 if precision == "bf16" else ""))
            # the target: one IEMOCAP-sized epoch (7 h, about 5,500 utterances) of the paper model
            for precision in ("fp32", "bf16"):
                cases.append(Case("training", f"iemocap-epoch-cuda-{precision}", _c("corpus_epoch"),
                                  {"hours": 0.05 if q else 7.0, "median_duration_s": 4.5,
                                   "config": model_size, "device": "cuda", "precision": precision,
                                   "max_frames": 96_000, "batch_size": 256, "workers": os.cpu_count() or 1,
                                   "scratch": str(work), "seed": seed}, threads=4, timeout_s=1800,
                                  unsupported=cuda_bf16 if precision == "bf16" else ""))
        # The whole length distribution: padding depends on how many utterances share a length range.
        lengths, source = _bucketing_lengths(opts, 535, 200_000)
        cases.append(Case("training", "bucketing", _c("bucketing"),
                          {"config": "tiny" if q else "small", "lengths": lengths, "rounds": 1 if q else 2,
                           "seed": seed, "max_frames": 12000, "batch_size": 32}, threads=1, timeout_s=600,
                          record={"lengths_source": source}))
        cases.append(Case("training", "compile", _c("compile_speedup"),
                          {"config": "tiny" if q else "small", "batch": 4 if q else 16, "seconds": 3.0,
                           "budget_s": 0.3 if q else 3.0, "seed": seed}, threads=1, timeout_s=900))
        worker_lengths, worker_source = _bucketing_lengths(opts, 535, 3_000 if q else 60_000)
        cases.append(Case("training", "loader-workers", _c("loader_workers"),
                          {"config": "tiny" if q else "small", "lengths": worker_lengths, "workers": [0, 1],
                           "rounds": 1 if q else 2, "seed": seed}, threads=1, timeout_s=600,
                          record={"lengths_source": worker_source}))
    needs_models = "inference" in opts.sections or "scaling" in opts.sections
    if needs_models:
        cases.append(Case("inference", "prepare", _c("prepare_models"),
                          {"work_dir": str(work / "models"), "checkpoint": opts.checkpoint, "config": model_size,
                           "seed": seed}, threads=1))
    if "inference" in opts.sections:
        budget = 0.3 if q else 2.0
        for batch in ((1,) if q else (1, 32)):
            for backend in INFERENCE_BACKENDS:
                cases.append(Case("inference", f"{backend}-b{batch}", _c("inference_speed"),
                                  {"backend": backend, "batch": batch, "seconds": 3.0, "threads": 1,
                                   "budget_s": budget, "seed": seed}, unsupported=backend_unsupported.get(backend, "")))
        left_out = {b: r for b, r in backend_unsupported.items() if r}
        cases.append(Case("inference", "head-to-head", _c("head_to_head"),
                          {"backends": runnable_backends, "seconds": 3.0, "threads": 1,
                           "budget_s": 1.0 if q else 15.0, "seed": seed, "check_utterances": 4 if q else 16},
                          record={"not_supported": left_out} if left_out else {}))
        if opts.checkpoint and opts.manifest and opts.speakers:
            cases.append(Case("inference", "accuracy", _c("accuracy"),
                              {"backends": runnable_backends, "manifest": opts.manifest,
                               "speakers": list(opts.speakers), "cache_dir": opts.cache_dir, "threads": 1},
                              timeout_s=900))
    if "scaling" in opts.sections:
        for backend in ("torch", "onnx-int8"):
            for seconds in ((1.0, 3.0) if q else (1.0, 3.0, 10.0, 30.0)):
                cases.append(Case("scaling", f"{backend}-{seconds:g}s", _c("length_scaling"),
                                  {"backend": backend, "seconds": seconds, "threads": 1,
                                   "budget_s": 0.2 if q else 1.5, "seed": seed}))
        for hours in ((0.005, 0.02) if q else (0.5, 2.0, 8.0)):
            cases.append(Case("scaling", f"corpus-{hours:g}h", _c("corpus_scaling"),
                              {"hours": hours, "scratch": str(work), "seed": seed, "config": "tiny" if q else "small",
                               "workers": 2, "max_train_batches": 3 if q else 100}, threads=2, timeout_s=900))
    return cases


def _describe_options(opts: BenchOptions) -> dict[str, Any]:
    return {"quick": opts.quick, "sections": list(opts.sections), "checkpoint": opts.checkpoint,
            "manifest": opts.manifest, "speakers": list(opts.speakers), "seed": opts.seed,
            "threads": list(opts.threads), "command": opts.command}


def run_benchmarks(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected sections; writes ``OUT/bench.json`` and ``OUT/README.md`` and returns the results."""
    from moma.bench.report import evaluate_targets, write_report

    unknown = sorted(set(opts.sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if bool(opts.manifest) != bool(opts.speakers):
        raise ValueError("--manifest and --speakers go together (the labelled fold for the accuracy check)")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(opts.work_dir) if opts.work_dir else out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "options": _describe_options(opts), "machine": machine_info(),
                               "sections": {s: {} for s in SECTIONS if s in opts.sections},
                               "notes": list(opts.extra_notes)}
    if "features" in opts.sections:
        from moma.corpora.synthetic import make_synthetic_hours

        t0 = time.perf_counter()
        hours = 0.01 if opts.quick else 0.5
        make_synthetic_hours(work / "features-corpus", hours, seed=opts.seed)
        results["sections"]["features"]["_corpus"] = {"hours": hours, "generate_s": time.perf_counter() - t0}
    models: dict[str, Any] | None = None
    try:
        for case in plan_cases(opts, work):
            if case.target.rsplit(":", 1)[1] in _NEEDS_MODELS:
                if models is None or "error" in models:
                    results["sections"][case.section][case.name] = {"skipped": "model preparation failed"}
                    continue
                case.kwargs["models"] = models
            if case.unsupported:
                log.info("bench case %s/%s not run: %s", case.section, case.name, case.unsupported)
                results["sections"].setdefault(case.section, {})[case.name] = {
                    "skipped": f"not supported on this machine: {case.unsupported}", "unsupported": True,
                    "threads": case.threads}
                continue
            if progress:
                progress(f"{case.section}/{case.name}")
            result = run_case(case)
            result.update({"threads": case.threads, **case.record})
            if case.name == "prepare":
                models = result
            results["sections"].setdefault(case.section, {})[case.name] = result
            # Written after every case, so a long run can be followed and a killed one still leaves its figures.
            (out / "bench.partial.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        if "inference" in opts.sections and not (opts.checkpoint and opts.manifest and opts.speakers):
            results["sections"]["inference"]["accuracy"] = {
                "skipped": "no --checkpoint with --manifest and --speakers: accuracy change not measured"}
    finally:
        if not opts.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    results["wall_s"] = time.perf_counter() - t_start
    results["targets"] = evaluate_targets(results)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    write_report(results, out)
    (out / "bench.partial.json").unlink(missing_ok=True)
    log.info("bench: %d sections in %.0f s -> %s", len(results["sections"]), results["wall_s"], out)
    return results


__all__ = ["BenchOptions", "FORMAT", "INFERENCE_BACKENDS", "SECTIONS", "plan_cases", "run_benchmarks"]
