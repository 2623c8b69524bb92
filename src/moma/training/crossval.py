"""Cross-validation: all folds of a protocol, trained, tested and aggregated into one report.

A finished fold (its ``result.json`` exists) is never recomputed, and an
unfinished one resumes from its last checkpoint, so a killed run picks up
where it stopped. A fold that fails does not stop the others: the report
covers those that finished, then the failed folds are named in the error
(see :func:`run_in_pool`, which also runs ``moma experiment``'s cells).
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from moma.capabilities import check_bf16
from moma.checkpoint import load_checkpoint
from moma.config import RunConfig, config_from_dict, config_to_dict, replace, save_config
from moma.corpora.base import Utterance, label_list
from moma.data.protocols import (
    Fold,
    ProtocolSpec,
    fold_scored_classes,
    rotate_validation,
    select_folds,
    validate_fold,
)
from moma.evaluation.calibration import expected_calibration_error, negative_log_likelihood
from moma.evaluation.metrics import aggregate_folds, predict_window_logits, score_posteriors, write_report
from moma.evaluation.posteriors import aggregate
from moma.features.cache import FeatureCache, pack_features
from moma.features.encoders import use_device
from moma.features.functionals import check_level, extract_run_functionals, functionals_dim
from moma.features.normalise import NormalisedFeatures, Normaliser, check_normalisation, normalise_functionals
from moma.features.ood import score_summary
from moma.files import claim_directory, write_json_atomic
from moma.training.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    env_dist_info,
    init_distributed,
    shutdown_distributed,
)
from moma.training.ood import fit_training_ood
from moma.training.train import check_train_options, resolve_device, train_model

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


def functionals_normalisation(mode: str) -> str:
    """How a fusion model's functionals are standardised when the frames use ``data.normalisation`` ``mode``:
    per speaker when the frames are (the same transductive setting), otherwise with the training speakers'
    statistics, since one vector per utterance has no statistics of its own ("utterance" and "none" included)."""
    return "speaker" if mode == "speaker" else "global"


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
    # cross-corpus folds (a pool): the argmax is taken over the test corpus's classes only; None: every class
    scored_classes: list[str] | None = None
    # utterance id -> raw openSMILE functionals (features.functionals, fusion models); standardised per fold
    functionals: dict[str, np.ndarray] | None = None


def run_fold(job: FoldJob, dist_info: DistInfo | None = None) -> dict[str, Any] | None:
    """Train on one fold, test its best checkpoint, write ``result.json``.

    Under torchrun every rank trains; rank 0 alone tests and writes, and the
    other ranks return None.
    """
    dist_info = dist_info or DistInfo()
    main = dist_info.is_main
    result_path = job.out_dir / "result.json"
    # rank 0 claims the fold's folder and its view decides, so all ranks agree on whether this fold trains.
    # The claim keeps a second `moma cv` on the same folder, or pool workers that outlived a killed run, from
    # training the same fold into the same checkpoints at once
    with claim_directory(job.out_dir) if main else nullcontext() as owner:
        if broadcast_object(owner is not None, dist_info):
            if main:
                log.warning("fold %s is being trained by process %s on %s (since %s): skipped here; rerun this "
                            "command once that run is done and its result joins the report",
                            job.fold.name, owner["pid"], owner["host"], owner["since"])
            return None
        if main and not job.resume:  # --restart: computed again; a run killed meanwhile must not reuse the old one
            result_path.unlink(missing_ok=True)
        if broadcast_object(result_path.is_file(), dist_info):
            log.info("fold %s already finished: reusing %s", job.fold.name, result_path)
            return json.loads(result_path.read_text(encoding="utf-8")) if main else None
        return _train_and_test_fold(job, dist_info)


def _fold_functionals(job: FoldJob, speaker_of: Mapping[str, str]
                      ) -> tuple[Normaliser | None, dict[str, np.ndarray] | None]:
    """A fusion fold's functionals normaliser, fitted on its training side, and every utterance's standardised
    functionals; (None, None) without functionals."""
    if job.cfg.features.functionals == "none":
        return None, None
    if job.functionals is None:
        raise ValueError(f"features.functionals={job.cfg.features.functionals}: the fold job carries no functionals")
    fold, ids = job.fold, job.fold.train + job.fold.val + job.fold.test
    rows = {k: job.functionals[k][None, :] for k in ids}  # (D_f,) -> (1, D_f): one row per utterance
    func_norm = fit_normaliser(functionals_normalisation(job.cfg.data.normalisation), rows, job.utterances,
                               fold.train + fold.val, fold.test)
    return func_norm, {k: normalise_functionals(func_norm, job.functionals[k], speaker_of[k]) for k in ids}


def _train_and_test_fold(job: FoldJob, dist_info: DistInfo) -> dict[str, Any] | None:
    main = dist_info.is_main
    out_dir = job.out_dir
    result_path = out_dir / "result.json"
    fold, utts = job.fold, job.utterances
    norm = fit_normaliser(job.cfg.data.normalisation, job.features, utts, fold.train + fold.val, fold.test)
    ids = fold.train + fold.val + fold.test
    speaker_of = {k: utts[k].speaker for k in ids}
    feats = NormalisedFeatures(job.features, norm, speaker_of, ids)
    label_of = {k: job.labels.index(utts[k].label) for k in ids}
    func_norm, funcs = _fold_functionals(job, speaker_of)
    ood = fit_training_ood(job.features, fold.train + fold.val, speaker_of,
                           fitted_on=f"training and validation speakers of fold {fold.name} ({job.corpus})")
    info = {"fold": fold.name, "corpus": job.corpus, "test_speakers": fold.test_speakers,
            "val_speakers": fold.val_speakers, "normalisation": norm.describe()}
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fold.json").write_text(json.dumps(fold.to_dict(), indent=1), encoding="utf-8")
    t0 = time.time()
    device = resolve_device(job.cfg.train.device)
    n_models = max(1, job.cfg.train.ensemble)
    seeds, trained = [], None
    raw_sum: dict[str, np.ndarray] | None = None  # members' raw test posteriors, summed
    scaled_sum: dict[str, np.ndarray] | None = None  # members' test posteriors as each one serves them, summed
    temperatures: list[float] = []
    rotate = job.cfg.train.ensemble_validation == "rotate"
    for i in range(n_models):
        # an ensemble trains the same recipe from different seeds; its members' test
        # posteriors are averaged, and each member's own score is kept for mean +- std over seeds
        cfg = replace(job.cfg, train=replace(job.cfg.train, seed=job.cfg.train.seed + i))
        member_dir = out_dir if n_models == 1 else out_dir / f"seed{cfg.train.seed}"
        split = rotate_validation(fold, list(utts.values()), i, seed=job.cfg.train.seed) if rotate else fold
        member = train_model(cfg, feats, job.labels, label_of, split.train, split.val, member_dir, norm,
                             resume=job.resume, info={**info, "val_speakers": split.val_speakers},
                             progress=job.progress, speaker_of={k: utts[k].speaker for k in split.train},
                             corpus_of={k: utts[k].corpus for k in split.train},
                             functionals=funcs, functionals_normaliser=func_norm, ood=ood)
        seed_row = {"seed": cfg.train.seed, "val_speakers": split.val_speakers, "best_epoch": member.best_epoch,
                    "epochs_run": member.epochs_run}
        trained = trained or member
        if not main:
            continue  # testing and writing are rank 0's
        if not fold.test:  # protocol "all": a model to ship, nothing to score
            seeds.append(seed_row)
            continue
        raw, post, temperature = _test_posteriors(member.best_checkpoint, feats, fold.test, device, funcs)
        if temperature is not None:
            temperatures.append(temperature)
        scored = score_posteriors(post, utts, job.labels, job.scored_classes)
        seeds.append({**seed_row, **{m: scored[m] for m in ("accuracy", "uar", "macro_f1")}})
        raw_sum = raw if raw_sum is None else {k: raw_sum[k] + raw[k] for k in raw}
        scaled_sum = post if scaled_sum is None else {k: scaled_sum[k] + post[k] for k in post}
    if not main:
        barrier(dist_info)  # wait until rank 0 has written result.json
        return None
    test, calibration = _score_fold(raw_sum, scaled_sum, n_models, temperatures, job)
    result = {
        **fold.to_dict(),
        "best_epoch": trained.best_epoch,
        "epochs_run": trained.epochs_run,
        "parameters": trained.parameters,
        "train_time_s": round(time.time() - t0, 1),
        "normalisation": norm.describe(),
        "ood": score_summary(ood, [job.features[k] for k in fold.test]),  # against the training side's density
        "seeds": seeds,
        "test": test,
    }
    if calibration is not None:
        result["calibration"] = calibration
    write_json_atomic(result_path, result)
    if result["test"] is not None:
        log.info("fold %s: test accuracy %.3f UAR %.3f (best epoch %d)", fold.name, result["test"]["accuracy"],
                 result["test"]["uar"], trained.best_epoch)
    barrier(dist_info)
    return result


def _score_fold(raw_sum: dict[str, np.ndarray] | None, scaled_sum: dict[str, np.ndarray] | None, n_models: int,
                temperatures: Sequence[float], job: FoldJob) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the fold's test scores, its test calibration or None) from its members' summed raw and served posteriors
    (None: nothing tested)."""
    if raw_sum is None or scaled_sum is None:
        return None, None
    raw = {k: v / n_models for k, v in raw_sum.items()}
    served = {k: v / n_models for k, v in scaled_sum.items()}
    # One model: the stored probabilities are what its checkpoint serves (moma evaluate / predict), the calibrated
    # ones when it has a temperature; the temperature never moves a non-segment model's argmax, so results made
    # before the change keep their predictions. A seed ensemble keeps the mean of its members' raw posteriors (a
    # mean of differently scaled posteriors could move an argmax), and `moma fuse` scales it by the members'
    # temperatures as before. ``calibration.posteriors_scaled`` says which.
    stored = served if n_models == 1 else raw
    test = score_posteriors(stored, job.utterances, job.labels, job.scored_classes)
    if len(temperatures) != n_models:
        return test, None
    return test, {**test_calibration(raw, served, job.utterances, job.labels, temperatures),
                  "posteriors_scaled": n_models == 1}


def _test_posteriors(checkpoint: Path, feats: Mapping[str, np.ndarray], test_ids: Sequence[str], device: Any,
                     funcs: Mapping[str, np.ndarray] | None
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float | None]:
    """(raw test posteriors, the posteriors the checkpoint serves, its temperature or None) of one trained model:
    the posterior function of every prediction path (moma.evaluation.posteriors) run once, read raw and at the
    temperature fitted on its validation speakers (the served ones are the raw ones without a temperature)."""
    best = load_checkpoint(checkpoint, device=device)
    logits = predict_window_logits(best.model, feats, test_ids, best.config, device, functionals=funcs)
    windows = [logits[k] for k in test_ids]  # (windows, classes) each: one window unless segment-trained
    temperature = (best.info.get("calibration") or {}).get("temperature")
    raw = dict(zip(test_ids, aggregate(windows)))
    served = raw if temperature is None else dict(zip(test_ids, aggregate(windows, float(temperature))))
    return raw, served, None if temperature is None else float(temperature)


def test_calibration(raw: Mapping[str, np.ndarray], scaled: Mapping[str, np.ndarray],
                     utterances: Mapping[str, Utterance], labels: Sequence[str],
                     temperatures: Sequence[float]) -> dict[str, Any]:
    """ECE and NLL of a fold's test posteriors before and after each member's temperature scaling."""
    keys = sorted(raw)
    y_true = [labels.index(utterances[k].label) for k in keys]
    before, after = np.stack([raw[k] for k in keys]), np.stack([scaled[k] for k in keys])
    return {"temperatures": [round(t, 4) for t in temperatures], "n": len(keys),
            "ece_before": round(expected_calibration_error(before, y_true), 4),
            "ece_after": round(expected_calibration_error(after, y_true), 4),
            "nll_before": round(negative_log_likelihood(before, y_true), 4),
            "nll_after": round(negative_log_likelihood(after, y_true), 4)}


def _run_fold_in_subprocess(job: FoldJob) -> dict[str, Any]:
    import torch

    # each worker process gets its share of the cores so parallel folds do not oversubscribe
    torch.set_num_threads(max(1, job.cfg.train.num_threads or 1))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_fold(job)


def run_in_pool(jobs: Sequence[FoldJob], workers: int, names: Sequence[str], *, what: str = "fold",
                dist_info: DistInfo | None = None) -> tuple[list[dict[str, Any] | None], dict[str, BaseException]]:
    """Train every job with :func:`run_fold`: in up to ``workers`` spawned processes when ``workers > 1`` and
    there is more than one job, else one after another in this process. ``moma cv`` (folds) and
    ``moma experiment`` (cells) both run their jobs here.

    Returns ``(results, failures)``: each job's result in job order (None where it failed, and on the ranks
    other than 0 under torchrun) and ``{name: exception}`` of the jobs that raised, ``names[i]`` naming job ``i``
    (its fold or cell) in logs and errors.

    On failure: a job that raises is logged with its name and traceback, and the other jobs run on, in
    parallel and serially alike. This was the experiment grid's behaviour and it won over ``moma cv``'s old
    one (the first error stopped the run, cancelled the folds still queued, wrote no report and named no
    fold): one bad fold or cell (out of memory, an unreadable file) should cost neither the others' work
    nor their report. The caller writes its report over what finished, then calls :func:`raise_failures`.
    Under torchrun the error is raised at once instead: all processes train each fold together and must
    stay in step.
    """
    if len(names) != len(jobs):
        raise ValueError(f"run_in_pool: {len(jobs)} jobs but {len(names)} names")
    dist_info = dist_info or DistInfo()
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    failures: dict[str, BaseException] = {}

    def failed(i: int, exc: BaseException) -> None:
        log.error("%s %s failed (the others run on): %s: %s", what, names[i], type(exc).__name__, exc,
                  exc_info=exc)
        failures[names[i]] = exc

    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        # spawn, not fork: forking a process whose OpenMP pool is running can deadlock
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_fold_in_subprocess, job): i for i, job in enumerate(jobs)}
            for done, fut in enumerate(as_completed(futures), 1):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                    log.info("%s %d/%d done: %s", what, done, len(jobs), names[i])
                except Exception as exc:  # noqa: BLE001 - the other jobs keep running; the caller raises
                    failed(i, exc)
    else:
        for i, job in enumerate(jobs):
            if len(jobs) > 1:
                log.info("%s %d/%d: %s", what, i + 1, len(jobs), names[i])
            try:
                results[i] = run_fold(job, dist_info)
            except Exception as exc:  # noqa: BLE001 - as above, except under torchrun
                if dist_info.enabled:
                    raise
                failed(i, exc)
    return results, failures


def raise_failures(failures: Mapping[str, BaseException], what: str, finished: int) -> None:
    """Raise for the failed jobs of :func:`run_in_pool`, once the caller has saved the report of the ``finished``
    ones; nothing when none failed.

    With nothing finished, the first failure's own exception is raised: there is no partial report to point
    to, and the usual cause is one error every job shares (a bad option), whose type and message say more than
    a count. Otherwise a :class:`RuntimeError` names each failed job with its error.
    """
    if not failures:
        return
    if not finished:
        raise next(iter(failures.values()))
    detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures.items())
    raise RuntimeError(f"{len(failures)} {what}(s) failed ({detail}); the report covers the others. "
                       "Rerun the same command to retry them.")


def describe_model(cfg: RunConfig) -> str:
    m = cfg.model
    text = f"{m.arch}, BLSTM {m.num_layers}x{m.hidden_size} per direction, context {m.context_dim}"
    if m.arch == "moma":
        text += f", {m.num_blocks} blocks ({'learned' if m.learn_gammas else 'fixed equal'} gammas)"
    f, d = cfg.features, cfg.data
    extras = [f"{f.n_mels} log-Mel" + (" + pitch (log F0, voicing)" if f.pitch else "")
              + (f" + openSMILE {f.lld} LLDs" if f.lld != "none" else "")]
    if f.functionals != "none":
        level = (f" (each utterance first scaled to {f.functionals_level:g} dBFS active level)"
                 if f.functionals_level < 0 else "")
        extras.append(f"fusion: openSMILE {f.functionals} functionals{level} joined to the pooled representation")
    if d.segment_length_s > 0:
        extras.append(f"segments {d.segment_length_s:g} s / hop {d.segment_hop_s:g} s")
    if d.random_crop_s > 0:
        extras.append(f"random crops of {d.random_crop_s:g} s")
    if d.spec_augment:
        extras.append("SpecAugment")
    if cfg.train.balance != "none":
        extras.append(f"loss balanced over {cfg.train.balance.replace('-', ' x ')}")
    if cfg.train.speaker_adversarial > 0:
        extras.append(f"speaker-adversarial (gradient reversal ×{cfg.train.speaker_adversarial:g})")
    t = cfg.train
    if t.ensemble > 1:
        extras.append(f"ensemble of {t.ensemble} seeds (posteriors averaged"
                      + (", validation speakers rotated)" if t.ensemble_validation == "rotate" else ")"))
    if t.label_smoothing > 0:
        extras.append(f"label smoothing {t.label_smoothing:g}")
    decay = f", weight decay {t.weight_decay:g}" if t.weight_decay > 0 else ""
    extras.append(f"lr {t.lr:g}{decay}, max {t.max_epochs} epochs, dropout {m.dropout:g}, seed {t.seed}")
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
    restricted = {r["name"]: r["test"]["scored_classes"] for r in results
                  if r.get("test") and r["test"].get("scored_classes")}
    if restricted:
        classes = sorted({", ".join(c) for c in restricted.values()})
        report["notes"] = report.get("notes", []) + [
            f"Cross-corpus scoring: {len(restricted)} fold(s) scored over their test corpus's classes only "
            f"({'; '.join(classes)}), the argmax restricted to them; the model's other outputs are ignored."]
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
    previous = run_dir / "report.json"
    if previous.is_file():  # a rebuild is not a run: keep the wall time the run reported (it used to become 0)
        meta["wall_time_s"] = json.loads(previous.read_text(encoding="utf-8")).get("wall_time_s", 0)
    if "config" in meta:  # descriptions follow the current wording of describe_model
        meta["model"] = describe_model(config_from_dict(RunConfig, meta["config"]))
    return build_report(meta, results, run_dir)


def run_cross_validation(utterances: Sequence[Utterance], cfg: RunConfig, out_dir: str | Path, spec: ProtocolSpec,
                         *, cache_dir: str | Path, jobs: int = 1, resume: bool = True, progress: bool = False,
                         feature_workers: int = 1, title: str | None = None,
                         command: str | None = None) -> dict[str, Any]:
    """Run every fold of ``spec`` (or its ``only_folds``) and write ``report.json`` / ``report.md`` in ``out_dir``.

    Under ``torchrun`` (see :mod:`moma.training.distributed`) the folds run one after
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
        report = _run_cross_validation(utterances, cfg, Path(out_dir), spec, cache_dir=cache_dir, jobs=jobs,
                                       resume=resume, progress=progress, feature_workers=feature_workers,
                                       title=title, command=command, dist_info=dist_info)
        barrier(dist_info)  # the ranks leave the group together, not while rank 0 still writes the report
        return report
    finally:
        if dist_info.enabled:
            shutdown_distributed()


def _run_cross_validation(utterances: Sequence[Utterance], cfg: RunConfig, out_dir: Path, spec: ProtocolSpec, *,
                          cache_dir: str | Path, jobs: int, resume: bool, progress: bool, feature_workers: int,
                          title: str | None, command: str | None, dist_info: DistInfo) -> dict[str, Any]:
    t0 = time.time()
    main = dist_info.is_main
    functionals_dim(cfg.features.functionals)  # bad functionals settings are refused before any file is read
    check_level(cfg.features.functionals_level)
    check_normalisation(cfg.data.normalisation)
    check_train_options(cfg.train)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    utts = {u.id: u for u in utterances}
    labels = label_list(utterances)
    corpora = sorted({u.corpus for u in utterances if u.corpus})
    corpus = spec.corpus or (f"pool of {' + '.join(corpora)}" if len(corpora) > 1 else corpora[0] if corpora else "corpus")
    use_device(cfg.train.device)  # a pretrained front end (features.frontend) runs where the model trains
    cache = FeatureCache(cache_dir, cfg.features)
    # rank 0 fills the cache first; the others then read it (or, on a machine that does not
    # share the cache folder, compute their own copy)
    if not main:
        barrier(dist_info)
    # one memory-mapped file for the corpus: training memory no longer grows with corpus size
    features = pack_features(list(utterances), cache, workers=feature_workers, progress=progress and main)
    functionals = extract_run_functionals(cfg.features, list(utterances), cache_dir,
                                          workers=feature_workers, progress=progress and main)
    if main:
        barrier(dist_info)
    all_folds = spec.folds(utterances, val_speakers=cfg.train.val_speakers, seed=cfg.train.seed,
                           val_min=cfg.train.val_min_utterances)
    folds = select_folds(all_folds, spec.only_folds)  # what this call computes; the report covers every fold
    for fold in folds:
        validate_fold(fold, utterances)
    meta = {
        "title": title or f"{corpus}: {spec.protocol} cross-validation",
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "corpus": corpus,
        "n_utterances": len(utterances),
        "n_speakers": len({u.speaker for u in utterances}),
        "labels": labels,
        "protocol": spec.protocol,
        "fold_names": [f.name for f in all_folds],
        "normalisation": NORMALISATION_NOTES.get(cfg.data.normalisation, cfg.data.normalisation),
        "model": describe_model(cfg),
        "device": str(resolve_device(cfg.train.device)),
        "started": t0,
        "config": config_to_dict(cfg),
    }
    if main:
        (out_dir / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    jobs_list = [FoldJob(cfg, fold, features, utts, labels, out_dir / fold.name, resume, progress and jobs == 1,
                         corpus, fold_scored_classes(fold, utterances, labels), functionals=functionals)
                 for fold in folds]
    outcomes, failures = run_in_pool(jobs_list, jobs, [f.name for f in folds], dist_info=dist_info)
    if not main:
        return {**meta, "summary": None, "folds": []}
    computed = {fold.name: res for fold, res in zip(folds, outcomes)}
    results = []
    for fold in all_folds:  # in the protocol's order; a failed or never-run fold is missing, and the report says so
        res = computed.get(fold.name)
        if res is None and (out_dir / fold.name / "result.json").is_file():
            # an earlier --fold call, or another process that held this fold while this call ran
            res = json.loads((out_dir / fold.name / "result.json").read_text(encoding="utf-8"))
        if res is not None:
            res["name"] = fold.name
            results.append(res)
    report = {**meta, "summary": None, "folds": results}  # nothing was tested: no report to write
    if any(res["test"] is not None for res in results):
        report = build_report(meta, results, out_dir)
    raise_failures(failures, "fold", finished=len(results))
    return report
