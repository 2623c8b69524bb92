"""Cross-validation: all folds of a protocol, trained, tested and aggregated into one report.

A finished fold (its ``result.json`` exists) is never recomputed, and an
unfinished one resumes from its last checkpoint, so a killed run picks up
where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .capabilities import check_bf16
from .checkpoint import load_checkpoint
from .config import RunConfig, config_from_dict, config_to_dict, replace, save_config
from .corpora.base import Utterance, label_list
from .distributed import DistInfo, barrier, broadcast_object, env_dist_info, init_distributed, shutdown_distributed
from .evaluate import aggregate_folds, predict_posteriors, score_posteriors, write_report
from .features import FeatureCache, NormalisedFeatures, Normaliser, pack_features
from .protocols import Fold, make_folds, rotate_validation, validate_fold
from .train import resolve_device, train_model

log = logging.getLogger(__name__)

NORMALISATION_NOTES = {
    "global": "global mean/variance from training speakers only (test speakers' audio unused)",
    "utterance": "per-utterance mean/variance (each utterance normalised by its own statistics)",
    "speaker": ("per-speaker mean/variance; the TEST speaker's statistics come from its own unlabelled "
                "test audio (transductive: the setting behind many published EmoDB figures)"),
    "none": "no normalisation",
}


def fit_normaliser(mode: str, features: dict[str, np.ndarray], utterances: dict[str, Utterance],
                   fit_ids: Sequence[str], test_ids: Sequence[str]) -> Normaliser:
    """Statistics from ``fit_ids`` (training speakers); speaker mode also adds test speakers' own stats."""
    norm = Normaliser(mode)
    norm.fit([features[k] for k in fit_ids], [utterances[k].speaker for k in fit_ids])
    if mode == "speaker":
        by_speaker: dict[str, list[np.ndarray]] = {}
        for k in test_ids:
            by_speaker.setdefault(utterances[k].speaker, []).append(features[k])
        for spk, feats in by_speaker.items():
            norm.fit_speaker(spk, feats)
    return norm


def normalise_all(norm: Normaliser, features: Mapping[str, np.ndarray], utterances: dict[str, Utterance],
                  ids: Sequence[str]) -> NormalisedFeatures:
    """The features of ``ids`` normalised on access (no second copy of the corpus is stored)."""
    return NormalisedFeatures(features, norm, {k: utterances[k].speaker for k in ids}, ids)


ENSEMBLE_VALIDATION = ("same", "rotate")  # train.ensemble_validation: see protocols.rotate_validation


@dataclass
class FoldJob:
    cfg: RunConfig
    fold: Fold
    features: Mapping[str, np.ndarray]  # PackedFeatures: pickles as a path, so worker processes share pages
    utterances: dict[str, Utterance]
    labels: list[str]
    out_dir: Path
    resume: bool
    progress: bool
    corpus: str


def run_fold(job: FoldJob, dist_info: DistInfo | None = None) -> dict[str, Any] | None:
    """Train on one fold, test its best checkpoint, write ``result.json``.

    Under torchrun every rank trains; rank 0 alone tests and writes, and the
    other ranks return None.
    """
    dist_info = dist_info or DistInfo()
    main = dist_info.is_main
    out_dir = job.out_dir
    result_path = out_dir / "result.json"
    # rank 0's view decides, so all ranks agree on whether this fold trains
    if broadcast_object(result_path.is_file(), dist_info):
        log.info("fold %s already finished: reusing %s", job.fold.name, result_path)
        return json.loads(result_path.read_text(encoding="utf-8")) if main else None
    fold, utts = job.fold, job.utterances
    norm = fit_normaliser(job.cfg.data.normalisation, job.features, utts, fold.train + fold.val, fold.test)
    feats = normalise_all(norm, job.features, utts, fold.train + fold.val + fold.test)
    label_of = {k: job.labels.index(utts[k].label) for k in feats}
    info = {"fold": fold.name, "corpus": job.corpus, "test_speakers": fold.test_speakers,
            "val_speakers": fold.val_speakers, "normalisation": norm.describe()}
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fold.json").write_text(json.dumps(fold.to_dict(), indent=1), encoding="utf-8")
    t0 = time.time()
    device = resolve_device(job.cfg.train.device)
    n_models = max(1, job.cfg.train.ensemble)
    seeds, posteriors, trained = [], None, None
    if job.cfg.train.ensemble_validation not in ENSEMBLE_VALIDATION:
        raise ValueError(f"train.ensemble_validation must be one of {', '.join(ENSEMBLE_VALIDATION)}, "
                         f"got {job.cfg.train.ensemble_validation!r}")
    rotate = job.cfg.train.ensemble_validation == "rotate"
    for i in range(n_models):
        # an ensemble trains the same recipe from different seeds; its members' test
        # posteriors are averaged, and each member's own score is kept for mean +- std over seeds
        cfg = replace(job.cfg, train=replace(job.cfg.train, seed=job.cfg.train.seed + i))
        member_dir = out_dir if n_models == 1 else out_dir / f"seed{cfg.train.seed}"
        split = rotate_validation(fold, list(utts.values()), i, seed=job.cfg.train.seed) if rotate else fold
        member = train_model(cfg, feats, job.labels, label_of, split.train, split.val, member_dir, norm,
                             resume=job.resume, info={**info, "val_speakers": split.val_speakers},
                             progress=job.progress, speaker_of={k: utts[k].speaker for k in split.train})
        seed_row = {"seed": cfg.train.seed, "val_speakers": split.val_speakers, "best_epoch": member.best_epoch,
                    "epochs_run": member.epochs_run}
        trained = trained or member
        if not main:
            continue  # testing and writing are rank 0's
        if not fold.test:  # protocol "all": a model to ship, nothing to score
            seeds.append(seed_row)
            continue
        best = load_checkpoint(member.best_checkpoint, device=device)
        post = predict_posteriors(best.model, feats, fold.test, best.config, device)
        scored = score_posteriors(post, utts, job.labels)
        seeds.append({**seed_row, **{m: scored[m] for m in ("accuracy", "uar", "macro_f1")}})
        posteriors = post if posteriors is None else {k: posteriors[k] + post[k] for k in post}
    if not main:
        barrier(dist_info)  # wait until rank 0 has written result.json
        return None
    if posteriors is not None:
        posteriors = {k: v / n_models for k, v in posteriors.items()}
    result = {
        **fold.to_dict(),
        "best_epoch": trained.best_epoch,
        "epochs_run": trained.epochs_run,
        "parameters": trained.parameters,
        "train_time_s": round(time.time() - t0, 1),
        "normalisation": norm.describe(),
        "seeds": seeds,
        "test": score_posteriors(posteriors, utts, job.labels) if posteriors is not None else None,
    }
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    os.replace(tmp, result_path)
    if result["test"] is not None:
        log.info("fold %s: test accuracy %.3f UAR %.3f (best epoch %d)", fold.name, result["test"]["accuracy"],
                 result["test"]["uar"], trained.best_epoch)
    barrier(dist_info)
    return result


def _run_fold_in_subprocess(job: FoldJob) -> dict[str, Any]:
    import torch

    # each worker process gets its share of the cores so parallel folds do not oversubscribe
    torch.set_num_threads(max(1, job.cfg.train.num_threads or 1))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_fold(job)


def describe_model(cfg: RunConfig) -> str:
    m = cfg.model
    text = f"{m.arch}, BLSTM {m.num_layers}x{m.hidden_size} per direction, context {m.context_dim}"
    if m.arch == "moma":
        text += f", {m.num_blocks} blocks ({'learned' if m.learn_gammas else 'fixed equal'} gammas)"
    f, d = cfg.features, cfg.data
    extras = [f"{f.n_mels} log-Mel" + (" + pitch (log F0, voicing)" if f.pitch else "")
              + (f" + openSMILE {f.lld} LLDs" if f.lld != "none" else "")]
    if d.segment_length_s > 0:
        extras.append(f"segments {d.segment_length_s:g} s / hop {d.segment_hop_s:g} s")
    if d.random_crop_s > 0:
        extras.append(f"random crops of {d.random_crop_s:g} s")
    if d.spec_augment:
        extras.append("SpecAugment")
    if d.vtlp > 0 or d.tempo > 0:
        extras.append(f"VTLP ±{d.vtlp:g} / tempo ±{d.tempo:g}")
    if cfg.train.speaker_adversarial > 0:
        extras.append(f"speaker-adversarial (gradient reversal ×{cfg.train.speaker_adversarial:g})")
    t = cfg.train
    if t.ensemble > 1:
        extras.append(f"ensemble of {t.ensemble} seeds (posteriors averaged"
                      + (", validation speakers rotated)" if t.ensemble_validation == "rotate" else ")"))
    extras.append(f"lr {t.lr:g}, max {t.max_epochs} epochs, dropout {m.dropout:g}, seed {t.seed}")
    return text + "; " + ", ".join(extras)


def build_report(meta: dict[str, Any], results: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    """Aggregate fold results into report.json / report.md; says so when folds are missing."""
    summary = aggregate_folds(results, meta["labels"])
    report = {k: v for k, v in meta.items() if k != "started"}
    report.update({"wall_time_s": time.time() - meta["started"] if "started" in meta else meta.get("wall_time_s", 0),
                   "summary": summary, "folds": list(results)})
    missing = [n for n in meta.get("fold_names", []) if n not in {r["name"] for r in results}]
    if missing:
        report["notes"] = report.get("notes", []) + [
            f"**Partial run: {len(results)} of {len(meta['fold_names'])} folds finished** "
            f"(missing: {', '.join(missing)}); means are over the finished folds only."]
    write_report(report, out_dir)
    log.info("%s: UAR %.3f ± %.3f, accuracy %.3f ± %.3f over %d folds", report["title"],
             summary["uar"]["mean"], summary["uar"]["std"], summary["accuracy"]["mean"],
             summary["accuracy"]["std"], summary["folds"])
    return report


def rebuild_report(run_dir: str | Path) -> dict[str, Any]:
    """Rewrite a run's report from its ``run.json`` and whatever folds have finished (``moma report``)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no run.json (not a moma cv run folder)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    results = []
    for name in meta["fold_names"]:
        path = run_dir / name / "result.json"
        if path.is_file():
            res = json.loads(path.read_text(encoding="utf-8"))
            res["name"] = name
            results.append(res)
    if not results:
        raise ValueError(f"{run_dir}: no finished fold yet")
    meta.pop("started", None)
    if "config" in meta:  # descriptions follow the current wording of describe_model
        meta["model"] = describe_model(config_from_dict(RunConfig, meta["config"]))
    return build_report(meta, results, run_dir)


def run_cross_validation(utterances: Sequence[Utterance], cfg: RunConfig, out_dir: str | Path, *,
                         protocol: str, cache_dir: str | Path, k: int = 5, test_session: str | None = None,
                         test_speakers: Sequence[str] | None = None, only_folds: Sequence[str] | None = None,
                         jobs: int = 1, resume: bool = True, progress: bool = False, feature_workers: int = 1,
                         title: str | None = None, command: str | None = None,
                         corpus: str | None = None) -> dict[str, Any]:
    """Run every fold of ``protocol`` and write ``report.json`` / ``report.md`` in ``out_dir``.

    Under ``torchrun`` (see :mod:`moma.distributed`) the folds run one after
    another, each trained by all processes together; rank 0 writes every file
    and returns the report, the other ranks return ``{"summary": None}``.
    """
    device_type = resolve_device(cfg.train.device).type  # also refuses cuda where there is none
    if cfg.train.bf16:  # before features and folds: the answer is the same for every fold
        check_bf16(device_type, "training")
    dist_info = DistInfo()
    if env_dist_info().enabled:
        if jobs > 1:
            raise ValueError("--jobs > 1 cannot be combined with torchrun: the processes already share each fold")
        dist_info = init_distributed(resolve_device(cfg.train.device).type)
    try:
        return _run_cross_validation(utterances, cfg, out_dir, protocol=protocol, cache_dir=cache_dir, k=k,
                                     test_session=test_session, test_speakers=test_speakers, only_folds=only_folds,
                                     jobs=jobs, resume=resume, progress=progress, feature_workers=feature_workers,
                                     title=title, command=command, corpus=corpus, dist_info=dist_info)
    finally:
        if dist_info.enabled:
            shutdown_distributed()


def _run_cross_validation(utterances: Sequence[Utterance], cfg: RunConfig, out_dir: str | Path, *,
                          protocol: str, cache_dir: str | Path, k: int, test_session: str | None,
                          test_speakers: Sequence[str] | None, only_folds: Sequence[str] | None, jobs: int,
                          resume: bool, progress: bool, feature_workers: int, title: str | None,
                          command: str | None, corpus: str | None, dist_info: DistInfo) -> dict[str, Any]:
    t0 = time.time()
    main = dist_info.is_main
    out_dir = Path(out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    utts = {u.id: u for u in utterances}
    labels = label_list(utterances)
    corpus = corpus or (utterances[0].corpus if utterances else "") or "corpus"
    cache = FeatureCache(cache_dir, cfg.features)
    # rank 0 fills the cache first; the others then read it (or, on a machine that does not
    # share the cache folder, compute their own copy)
    if not main:
        barrier(dist_info)
    # one memory-mapped file for the corpus: training memory no longer grows with corpus size
    features = pack_features(list(utterances), cache, workers=feature_workers, progress=progress and main)
    if main:
        barrier(dist_info)
    folds = make_folds(utterances, protocol, val_speakers=cfg.train.val_speakers, k=k, seed=cfg.train.seed,
                       test_session=test_session, test_speakers=test_speakers)
    if only_folds:
        wanted = set(only_folds)
        folds = [f for f in folds if f.name in wanted or any(s in wanted for s in f.test_speakers)]
        if not folds:
            raise ValueError(f"no fold matches {', '.join(only_folds)}")
    for fold in folds:
        validate_fold(fold, utterances)
    meta = {
        "title": title or f"{corpus}: {protocol} cross-validation",
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "corpus": corpus,
        "n_utterances": len(utterances),
        "n_speakers": len({u.speaker for u in utterances}),
        "labels": labels,
        "protocol": protocol,
        "fold_names": [f.name for f in folds],
        "normalisation": NORMALISATION_NOTES.get(cfg.data.normalisation, cfg.data.normalisation),
        "model": describe_model(cfg),
        "device": str(resolve_device(cfg.train.device)),
        "started": t0,
        "config": config_to_dict(cfg),
    }
    if main:
        (out_dir / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    jobs_list = [FoldJob(cfg, fold, features, utts, labels, out_dir / fold.name, resume, progress and jobs == 1,
                         corpus) for fold in folds]
    if jobs > 1 and len(jobs_list) > 1:
        import multiprocessing as mp

        # spawn, not fork: forking a process whose OpenMP pool is running can deadlock
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_run_fold_in_subprocess, jobs_list))
    else:
        results = [run_fold(job, dist_info) for job in jobs_list]
    if not main:
        return {**meta, "summary": None, "folds": []}
    for fold, res in zip(folds, results):
        res["name"] = fold.name
    if all(res["test"] is None for res in results):
        return {**meta, "summary": None, "folds": results}  # nothing was tested: no report to write
    return build_report(meta, results, out_dir)
