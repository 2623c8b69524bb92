"""The classical anchor: openSMILE functionals and a linear SVM on the same folds as MOMA.

One utterance-level feature vector (eGeMAPSv02: 88 values, ComParE_2016:
6373 values) per utterance, standardised, classified by
``sklearn.svm.LinearSVC`` with balanced class weights. The folds are those
of :func:`moma.data.protocols.make_folds` (EmoDB: leave one speaker out), with the
validation speakers folded back into training because the SVM has no early
stopping; the test speakers are therefore exactly those of the MOMA runs.

No test-speaker label is used anywhere. The regularisation constant C is
chosen by an inner leave-one-speaker-out cross-validation over the training
speakers of each fold (maximising mean UAR over the inner folds), and in
``"global"`` normalisation even the standardisation inside each inner fold is
refitted on that inner fold's training speakers. ``"speaker"`` normalisation
z-normalises every speaker with its own statistics, the test speaker
included: that is transductive (it uses the test speaker's unlabelled audio)
and the report says so.

This module does not import torch itself; scoring and aggregation reuse
:mod:`moma.evaluation.metrics` (imported when a report is built).

Usage::

    moma classical --manifest runs/emodb.jsonl --out reports/emodb-classical
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.special import softmax

from moma.corpora.base import Utterance, label_list, read_manifest
from moma.evaluation.report_files import load_report_json, save_report_json
from moma.features.functionals import (
    DEFAULT_CACHE,
    FEATURE_SETS,
    OPENSMILE_SETS,  # noqa: F401 (re-exported: `moma classical` and experiment specs read the sets here)
    count_cached,
    extract_functionals,
)
from moma.features.normalise import Normaliser
from moma.files import write_json_atomic

log = logging.getLogger(__name__)

NORMALISATIONS = ("global", "speaker", "corpus")
DEFAULT_NORMALISATIONS = ("global", "speaker")  # what `moma classical` runs unless told otherwise
DEFAULT_C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
MAX_ITER = 100_000  # LinearSVC iterations; liblinear stops far earlier on standardised functionals

NORMALISATION_NOTES = {
    "global": "global mean/variance from training speakers only (test speakers' audio unused)",
    "speaker": ("per-speaker mean/variance; the TEST speaker's statistics come from its own unlabelled "
                "test audio (transductive: the setting behind many published EmoDB figures)"),
    "corpus": ("per-corpus mean/variance; a TEST corpus's statistics come from its own unlabelled audio "
               "(transductive over the corpus: what a user has when many files of one source are scored together)"),
}


# --------------------------------------------------------------------------- standardisation


def standardise(x: np.ndarray, speakers: Sequence[str], fit_rows: np.ndarray, mode: str,
                corpora: Sequence[str] | None = None) -> np.ndarray:
    """Standardise every row of ``x`` (one utterance's functionals per row) with the pipeline's
    :class:`~moma.features.normalise.Normaliser`, rows playing the part of frames.

    ``"global"``: one mean/std from the rows in ``fit_rows`` (a boolean mask;
    the training speakers) applied to all rows. ``"speaker"``: every speaker
    normalised with its own statistics, ``fit_rows`` ignored: a speaker
    outside ``fit_rows`` (the test speaker) uses its own unlabelled features.
    ``"corpus"``: the same with each corpus (``corpora``, one name per row) as the group.
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALISATIONS)}")
    x = np.asarray(x, dtype=np.float64)
    spk = np.asarray(speakers)
    if spk.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} rows but {spk.shape[0]} speaker ids")
    if mode == "global":
        fit_rows = np.asarray(fit_rows, dtype=bool)
        return Normaliser("global").fit([x[fit_rows]]).transform(x, dtype=np.float64)
    if mode == "corpus":
        if corpora is None:
            raise ValueError("corpus normalisation needs the corpus of every row")
        spk = np.asarray(corpora)
    names = sorted(set(spk.tolist()))
    norm = Normaliser("speaker").fit([x[spk == s] for s in names], names)
    out = np.empty_like(x)
    for s in names:
        out[spk == s] = norm.transform(x[spk == s], s, dtype=np.float64)
    return out


# --------------------------------------------------------------------------- SVM


def _uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (as :func:`moma.evaluation.metrics.compute_metrics`)."""
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def _make_svm(c: float, seed: int, dual: bool | str = "auto"):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, class_weight="balanced", dual=dual, max_iter=MAX_ITER, random_state=seed)


def _fit(clf, x: np.ndarray, y: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("LinearSVC(C=%g) did not converge in %d iterations", clf.C, MAX_ITER)
    return clf


def fit_linear_svm(x: np.ndarray, y: np.ndarray, c: float, seed: int = 0):
    """The anchor's LinearSVC (balanced class weights, ``dual="auto"``) fitted on standardised rows ``x``."""
    return _fit(_make_svm(c, seed), x, y)


def row_space(x_train: np.ndarray, x_other: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool | str]:
    """SVM inputs in an orthonormal basis of ``x_train``'s row space, and the ``dual`` setting to fit them with.

    With more features than training rows (ComParE: 6373 values, EmoDB folds:
    about 480 rows) LinearSVC's ``dual="auto"`` solves the dual problem, which
    sees the rows only through their inner products; the projection keeps
    those (the appended intercept column too), and the optimal weight vector
    lies in the training rows' span, so decision values on any other row are
    unchanged. The fit is therefore the same one (same liblinear iterations,
    decision values equal to ~1e-14 on EmoDB), on ~480 instead of 6373
    columns: 3-10x faster. ``dual=True`` is returned because ``"auto"`` would
    switch to the primal solver on the now square matrix. With no more
    features than rows the inputs are returned unchanged with ``"auto"``.
    """
    n, d = x_train.shape
    if d <= n:
        return x_train, x_other, "auto"
    _, _, vt = np.linalg.svd(x_train, full_matrices=False)  # vt: (n, d), orthonormal rows
    return x_train @ vt.T, x_other @ vt.T, True


def select_c(x: np.ndarray, y: np.ndarray, speakers: Sequence[str], *, normalisation: str,
             c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0,
             corpora: Sequence[str] | None = None,
             n_labels: int | None = None) -> tuple[float, dict[float, float], np.ndarray]:
    """Choose C by leave-one-speaker-out CV over the given (training) rows only.

    ``x`` is raw (unstandardised): in ``"global"`` mode each inner fold fits
    its own standardisation on its inner training speakers. Returns the C with
    the highest mean inner UAR (the smallest such C on ties), the mean inner
    UAR of every C, and the chosen C's held-out posteriors of every row
    ``(rows, n_labels)`` (softmax of the decision values, each row predicted by
    the inner fold that held its speaker out): out-of-sample predictions of the
    training rows, on which a temperature can be fitted without the test rows.
    """
    spk = np.asarray(speakers)
    grid = sorted(float(c) for c in c_grid)
    if not grid:
        raise ValueError("empty C grid")
    inner = sorted(set(spk.tolist()))
    if len(inner) < 2:
        raise ValueError("choosing C by leave-one-speaker-out needs at least two training speakers")
    n_labels = int(y.max()) + 1 if n_labels is None else n_labels
    scores: dict[float, list[float]] = {c: [] for c in grid}
    held_out = {c: np.zeros((len(y), n_labels)) for c in grid}  # C -> (rows, labels) held-out posteriors
    for held in inner:
        val = spk == held
        xs = standardise(x, spk, ~val, normalisation, corpora)
        x_fit, x_val, dual = row_space(xs[~val], xs[val])
        for c in grid:
            clf = _fit(_make_svm(c, seed, dual), x_fit, y[~val])
            held_out[c][val] = _posteriors(clf, x_val, n_labels)
            # the argmax of the decision values is LinearSVC's own prediction
            scores[c].append(_uar(y[val], held_out[c][val].argmax(axis=1)))
    mean_scores = {c: float(np.mean(v)) for c, v in scores.items()}
    best = max(grid, key=lambda c: (mean_scores[c], -c))
    return best, mean_scores, held_out[best]


def _posteriors(clf, x: np.ndarray, n_labels: int) -> np.ndarray:
    """Softmax of the decision values, laid out over all labels (classes absent from training get 0)."""
    dec = clf.decision_function(x)
    if dec.ndim == 1:  # binary: one score for classes_[1]
        dec = np.stack([-dec, dec], axis=1)
    full = np.full((x.shape[0], n_labels), -np.inf)
    full[:, clf.classes_] = dec
    return softmax(full, axis=1)


def run_svm_cv(utterances: Sequence[Utterance], features: dict[str, np.ndarray], folds: Sequence[Any], *,
               normalisation: str = "global", c_grid: Sequence[float] = DEFAULT_C_GRID,
               seed: int = 0) -> list[dict[str, Any]]:
    """Linear SVM on every fold; results shaped like :mod:`moma.training.crossval`'s fold results.

    Per fold: training rows are ``fold.train + fold.val``; features are
    standardised (``"global"``: statistics of the training speakers;
    ``"speaker"``: each speaker by its own statistics, the test speaker
    included); C is chosen by :func:`select_c` on the training rows; the SVM
    is refitted on all training rows and predicts the test rows. Posteriors
    are the softmax of the SVM decision values (their argmax is the SVM's
    prediction).
    """
    from moma.data.protocols import fold_scored_classes
    from moma.evaluation.calibration import calibration_summary, fit_temperature
    from moma.evaluation.metrics import score_posteriors

    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; choose one of {', '.join(NORMALISATIONS)}")
    utts = {u.id: u for u in utterances}
    labels = label_list(utterances)
    index = {name: i for i, name in enumerate(labels)}
    results = []
    for fold in folds:
        train_ids = list(fold.train) + list(fold.val)
        test_ids = list(fold.test)
        train_spk = {utts[k].speaker for k in train_ids}
        leaked = sorted(train_spk & {utts[k].speaker for k in test_ids})
        if leaked:
            raise ValueError(f"fold {fold.name}: speaker(s) {', '.join(leaked)} in both training and test")
        t0 = time.time()
        ids = train_ids + test_ids
        x = np.stack([np.asarray(features[k], dtype=np.float64) for k in ids])
        y = np.array([index[utts[k].label] for k in ids])
        spk = np.array([utts[k].speaker for k in ids])
        corp = np.array([utts[k].corpus for k in ids])
        is_train = np.zeros(len(ids), dtype=bool)
        is_train[:len(train_ids)] = True
        c, inner, held_out = select_c(x[is_train], y[is_train], spk[is_train], normalisation=normalisation,
                                      c_grid=c_grid, seed=seed, corpora=corp[is_train], n_labels=len(labels))
        xs = standardise(x, spk, is_train, normalisation, corp)
        x_fit, x_test, dual = row_space(xs[is_train], xs[~is_train])
        clf = _fit(_make_svm(c, seed, dual), x_fit, y[is_train])
        post = _posteriors(clf, x_test, len(labels))
        posteriors = {k: post[i] for i, k in enumerate(test_ids)}
        scored = score_posteriors(posteriors, utts, labels, fold_scored_classes(fold, utterances, labels))
        # a temperature for the decision values, fitted on the training rows' held-out predictions at the chosen
        # C (as MOMA's on its validation speakers); the test rows only measure it
        calibration = calibration_summary(post, y[~is_train], fit_temperature(held_out, y[is_train]))
        calibration = {"temperatures": [calibration.pop("temperature")], **calibration}
        results.append({
            "name": fold.name,
            "test_speakers": list(fold.test_speakers),
            "val_speakers": [],
            "train_speakers": sorted(train_spk),
            "n_train": len(train_ids),
            "n_test": len(test_ids),
            "best_epoch": "",
            "chosen_C": c,
            "inner_uar": {f"{k:g}": round(v, 4) for k, v in inner.items()},
            "train_time_s": round(time.time() - t0, 2),
            "test": scored,
            "calibration": calibration,
        })
        log.info("fold %s (%s): C=%g inner UAR %.3f -> test UAR %.3f accuracy %.3f", fold.name, normalisation, c,
                 inner[c], scored["uar"], scored["accuracy"])
    return results


def anchor_key(folds: Sequence[Any], feature_set: str, normalisation: str, c_grid: Sequence[float],
               seed: int) -> dict[str, Any]:
    """What an anchor result depends on: the folds' utterances (by id), the features, the normalisation,
    the C grid and the seed. A cached result with another key is recomputed, never reused."""
    import hashlib

    folds_text = "\n".join(f"{f.name}:{','.join(sorted(list(f.train) + list(f.val)))}|{','.join(sorted(f.test))}"
                           for f in folds)
    return {"feature_set": feature_set, "normalisation": normalisation, "c_grid": [float(c) for c in c_grid],
            "seed": int(seed), "folds": hashlib.sha1(folds_text.encode("utf-8")).hexdigest()[:16]}


def run_anchor(utterances: Sequence[Utterance], folds: Sequence[Any], out_path: str | Path, *,
               feature_set: str, normalisation: str = "global", c_grid: Sequence[float] = DEFAULT_C_GRID,
               seed: int = 0, cache_dir: str | Path = DEFAULT_CACHE, workers: int = 1, progress: bool = False,
               compute: bool = True) -> dict[str, Any] | None:
    """One feature set + linear SVM on given folds (an experiment's), cached in ``out_path`` (JSON).

    Returns ``{"key", "n_features", "folds": [fold results of run_svm_cv], "wall_time_s"}``; a cached result
    with the same :func:`anchor_key` is returned as it is. Each fold is also kept as soon as it is finished
    (:func:`anchor_fold_path`), so a stopped grid resumes with the anchor folds it had, as ``moma classical``
    does. With ``compute=False`` a missing or stale result gives None instead of being computed (a report-only
    run).
    """
    out_path = Path(out_path)
    key = anchor_key(folds, feature_set, normalisation, c_grid, seed)
    if out_path.is_file():
        cached = json.loads(out_path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached
        log.info("%s: computed with other settings or folds; %s", out_path,
                 "recomputing" if compute else "ignored")
    if not compute:
        return None
    features: dict[str, np.ndarray] | None = None  # extracted only when a fold is still missing
    results = []
    for fold in folds:
        path = anchor_fold_path(out_path, fold.name)
        fold_key = anchor_key([fold], feature_set, normalisation, c_grid, seed)
        result = _load_fold_result(path, fold_key)
        if result is None:
            if features is None:
                features = extract_functionals(utterances, feature_set, cache_dir=cache_dir, workers=workers,
                                               progress=progress)
            result = _svm_fold(utterances, features, fold, normalisation, c_grid, seed, path, fold_key, None)
        results.append(result)
    data = {"key": key, "n_features": FEATURE_SETS[feature_set], "folds": results,
            "wall_time_s": round(sum(r["train_time_s"] for r in results), 1)}  # summed over folds, resumed or not
    write_json_atomic(out_path, data)
    return data


# --------------------------------------------------------------------------- report


def _fmt(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"


def render_classical_markdown(report: dict[str, Any]) -> str:
    from moma.evaluation.metrics import PAPER_NAMING_NOTE

    runs = report["runs"]
    lines = [f"# {report['title']}", ""]
    if report.get("command"):
        lines += ["Made by:", "", "```", report["command"], "```", ""]
    lines += [
        f"- Corpus: {report['corpus']} ({report['n_utterances']} utterances, {report['n_speakers']} speakers), "
        f"labels: {', '.join(report['labels'])}",
        f"- Protocol: {report['protocol']} ({report['n_folds']} folds), the same test speakers as the MOMA runs; "
        "the MOMA validation speakers are folded back into training (the SVM needs no early stopping)",
        "- Features: openSMILE functionals per utterance (eGeMAPSv02: 88, ComParE_2016: 6373) of the 16 kHz "
        "mono signal from moma.audio.io.load_audio",
        "- Classifier: sklearn LinearSVC, class_weight=balanced, one-vs-rest; C chosen per fold from "
        f"{{{', '.join(f'{c:g}' for c in report['c_grid'])}}} by inner leave-one-speaker-out CV on the fold's "
        "training speakers only (maximising mean inner UAR; global normalisation is refitted inside each "
        "inner fold), then refitted on all training speakers",
        "- Normalisation:",
    ]
    for mode in report["normalisations"]:
        lines.append(f"  - {mode}: {NORMALISATION_NOTES[mode]}")
    lines += [f"- Software: {report['software']}",
              "- Wall time: feature extraction " + ", ".join(
                  f"{fs} {e['seconds']:.0f} s ({e['computed']} computed, {e['cached']} from the cache)"
                  for fs, e in report["extraction"].items())
              + f"; SVM cross-validation {report['cv_time_s']:.0f} s in this run (summed over folds, finished now "
              "or earlier: "
              + ", ".join(f"{r['feature_set']}/{r['normalisation']} {r['wall_time_s']:.0f} s" for r in runs)
              + f"); {report.get('host', '')}",
              "", f"> {PAPER_NAMING_NOTE}", "",
              "## Summary (mean ± std over folds)", "",
              "| features | normalisation | UAR (the paper's \"WA\") | accuracy (the paper's \"UA\") | macro-F1 | "
              "pooled UAR | pooled accuracy | folds |",
              "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        s = run["summary"]
        trans = " (transductive)" if run["normalisation"] == "speaker" else ""
        lines.append(f"| {run['feature_set']} | {run['normalisation']}{trans} | {_fmt(s['uar'])} | "
                     f"{_fmt(s['accuracy'])} | {_fmt(s['macro_f1'])} | {s['pooled']['uar']:.3f} | "
                     f"{s['pooled']['accuracy']:.3f} | {s['folds']} of {report['n_folds']} |")
    calibrated = [r for r in runs if "calibration" in r["summary"]]
    if calibrated:
        lines += ["", "Calibration of the posteriors (softmax of the decision values; one temperature per fold, "
                  "fitted on the training speakers' held-out inner-fold predictions at the chosen C, as MOMA's "
                  "on its validation speakers), measured on the test folds, mean ± std over folds:", "",
                  "| features | normalisation | ECE raw -> scaled (15 bins) | NLL raw -> scaled (nats) |",
                  "|---|---|---|---|"]
        for run in calibrated:
            cal = run["summary"]["calibration"]
            lines.append(f"| {run['feature_set']} | {run['normalisation']} | {_fmt(cal['ece_before'])} -> "
                         f"{_fmt(cal['ece_after'])} | {_fmt(cal['nll_before'])} -> {_fmt(cal['nll_after'])} |")
    # runs may have finished different folds (a partial run): rows follow the protocol's folds, "-" where missing
    by_run = [{f["name"]: f for f in r["folds"]} for r in runs]
    names = [f["name"] for f in report.get("folds_definition", []) if any(f["name"] in b for b in by_run)]
    if not names and runs:  # reports written before folds_definition was kept
        names = [f["name"] for f in runs[0]["folds"]]
    header = " | ".join(f"{r['feature_set']} {r['normalisation']}" for r in runs)
    lines += ["", "## Test UAR per fold", "", f"| fold | test speakers | n | {header} |",
              "|---|---|---|" + "---|" * len(runs)]
    for name in names:
        f0 = next(b[name] for b in by_run if name in b)
        cells = " | ".join(f"{b[name]['test']['uar']:.3f}" if name in b else "-" for b in by_run)
        lines.append(f"| {name} | {', '.join(f0['test_speakers'])} | {f0['test']['n']} | {cells} |")
    lines += ["", "## Chosen C per fold", "", f"| fold | {header} |", "|---|" + "---|" * len(runs)]
    for name in names:
        cells = " | ".join(f"{b[name]['chosen_C']:g}" if name in b else "-" for b in by_run)
        lines.append(f"| {name} | {cells} |")
    for run in runs:
        s = run["summary"]
        labels = report["labels"]
        cm = s["pooled"]["confusion"]
        lines += ["", f"## Confusion matrix, {run['feature_set']} / {run['normalisation']} "
                      "(all folds pooled; rows true, columns predicted)", "",
                  "| true \\ predicted | " + " | ".join(labels) + " | recall |",
                  "|---|" + "---|" * (len(labels) + 1)]
        for i, row in enumerate(cm):
            recall = s["pooled"]["per_class_recall"].get(labels[i], float("nan"))
            lines.append(f"| {labels[i]} | " + " | ".join(str(v) for v in row) + f" | {recall:.3f} |")
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _software() -> str:
    import sklearn

    try:
        import opensmile

        smile = f"opensmile {opensmile.__version__}"
    except ImportError:
        smile = "opensmile (not installed)"
    return f"{smile}, scikit-learn {sklearn.__version__}, numpy {np.__version__}"


def fold_result_path(out_dir: str | Path, feature_set: str, normalisation: str, fold_name: str) -> Path:
    """Where one finished fold of one feature set x normalisation is kept, so that a stopped run resumes."""
    return Path(out_dir) / "folds" / f"{feature_set}-{normalisation}" / f"{fold_name}.json"


def anchor_fold_path(out_path: str | Path, fold_name: str) -> Path:
    """Where :func:`run_anchor` keeps one finished fold of the anchor cached at ``out_path``
    (``classical/eGeMAPSv02-global.json`` -> ``classical/eGeMAPSv02-global-folds/<fold>.json``)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}-folds") / f"{fold_name}.json"


def _load_fold_result(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A finished fold's result when it was made with the same folds, features and settings, else None."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("%s: unreadable; computing the fold again", path)
        return None
    if saved.get("key") != key:
        log.info("%s: made with other settings or folds; computing the fold again", path)
        return None
    return saved["result"]


def seed_fold_store(report_path: str | Path, folds: Sequence[Any], out_dir: str | Path, c_grid: Sequence[float],
                    seed: int) -> int:
    """Copy the finished folds of an earlier ``moma classical`` report (a committed ``report.json``) into
    ``out_dir``'s fold store, so that a fresh checkout continues a partial anchor instead of starting over.

    A fold is taken only when it was made with the same C grid and seed and the same utterances: the report's
    ``fold_keys`` (:func:`anchor_key` of each fold, which hashes its utterance ids) must equal this run's, or,
    in reports written before those were kept, its ``folds_definition`` (speakers and counts) must. A fold
    already in the store is kept. Returns how many folds were copied."""
    path = Path(report_path)
    try:
        report = load_report_json(path)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--resume-from {path}: not a readable report.json ({err})") from None
    if "runs" not in report or "folds_definition" not in report:
        raise ValueError(f"--resume-from {path}: not a `moma classical` report with its fold definitions")
    if [float(c) for c in report.get("c_grid", [])] != [float(c) for c in c_grid] or report.get("seed") != seed:
        raise ValueError(f"--resume-from {path}: made with C grid {report.get('c_grid')} and seed "
                         f"{report.get('seed')}, not {list(c_grid)} and {seed}")
    defined = {d["name"]: d for d in report["folds_definition"]}
    ours = {f.name: f for f in folds}
    copied = 0
    for run in report["runs"]:
        for result in run["folds"]:
            fold = ours.get(result["name"])
            key = None if fold is None else anchor_key([fold], run["feature_set"], run["normalisation"], c_grid, seed)
            same = fold is not None and (run["fold_keys"].get(fold.name) == key if "fold_keys" in run
                                         else defined.get(fold.name) == fold.to_dict())
            if not same:
                log.info("%s: fold %s is not one of this run's folds; not reused", path, result["name"])
                continue
            target = fold_result_path(out_dir, run["feature_set"], run["normalisation"], fold.name)
            if target.is_file():
                continue
            write_json_atomic(target, {"key": key, "result": result})
            copied += 1
    return copied


def _svm_fold(utterances: Sequence[Utterance], features: dict[str, np.ndarray], fold: Any, normalisation: str,
              c_grid: Sequence[float], seed: int, path: Path, key: dict[str, Any], threads: int | None) -> dict:
    """One fold of :func:`run_svm_cv`, saved at ``path`` as soon as it is done (a process of its own with
    ``--jobs``; ``threads`` then caps its BLAS threads so that the jobs share the cores instead of fighting)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        result = run_svm_cv(utterances, features, [fold], normalisation=normalisation, c_grid=c_grid, seed=seed)[0]
    write_json_atomic(path, {"key": key, "result": result})
    return result


def run_classical_report(manifest_path: str | Path, out_dir: str | Path, *,
                         feature_sets: Sequence[str] = ("eGeMAPSv02", "ComParE_2016"),
                         normalisations: Sequence[str] = DEFAULT_NORMALISATIONS,
                         cache_dir: str | Path = DEFAULT_CACHE,
                         command: str | None = None, protocol: str = "loso", k: int = 5,
                         c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0, workers: int = 1,
                         progress: bool = False, test_corpus: str | None = None,
                         only_folds: Sequence[str] | None = None, jobs: int = 1,
                         restart: bool = False, resume_from: str | Path | None = None) -> dict[str, Any]:
    """Every feature set x normalisation on the protocol's folds; writes ``report.md`` and ``report.json``.

    On a pooled manifest, ``protocol="loco"`` trains on the other corpora and tests on each in turn, and
    ``test_corpus`` (with ``loso``) leaves that corpus's speakers out one at a time; a fold is scored over its
    test corpus's classes, as the MOMA runs are.

    Every finished fold is kept under ``out_dir/folds/`` with what it depends on (:func:`anchor_key`): the same
    command run again computes only the folds still missing (``restart``: the chosen ones again). ``only_folds``
    (fold names or test speakers) computes just those; the report covers every fold finished so far and says
    which are missing. ``jobs`` folds are computed at once in separate processes. ``resume_from`` (an earlier
    report.json, e.g. a committed one) seeds the fold store with its finished folds first
    (:func:`seed_fold_store`)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from moma.data.protocols import make_folds, select_folds
    from moma.evaluation.metrics import aggregate_folds

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    utterances = read_manifest(manifest_path)
    labels = label_list(utterances)
    folds = make_folds(utterances, protocol, val_speakers=0, k=k, seed=seed, test_corpus=test_corpus)
    chosen = {f.name for f in select_folds(folds, only_folds)}
    if resume_from is not None:
        log.info("%d finished fold(s) taken from %s", seed_fold_store(resume_from, folds, out_dir, c_grid, seed),
                 resume_from)
    features: dict[str, dict[str, np.ndarray]] = {}
    extraction: dict[str, dict[str, float]] = {}
    for fs in feature_sets:
        t0 = time.time()
        cached = count_cached(utterances, fs, cache_dir)
        features[fs] = extract_functionals(utterances, fs, cache_dir=cache_dir, workers=workers, progress=progress)
        extraction[fs] = {"seconds": round(time.time() - t0, 1), "computed": len(utterances) - cached,
                          "cached": cached}
    extraction_s = sum(e["seconds"] for e in extraction.values())
    t1 = time.time()
    finished: dict[tuple[str, str, str], dict[str, Any]] = {}
    pending = []  # (feature set, normalisation, fold, path, key) still to compute
    keys: dict[tuple[str, str, str], dict[str, Any]] = {}  # what each fold depends on (anchor_key), for the report
    for fs in feature_sets:
        for mode in normalisations:
            for fold in folds:
                path = fold_result_path(out_dir, fs, mode, fold.name)
                key = keys[fs, mode, fold.name] = anchor_key([fold], fs, mode, c_grid, seed)
                result = None if restart and fold.name in chosen else _load_fold_result(path, key)
                if result is not None:
                    finished[fs, mode, fold.name] = result
                elif fold.name in chosen:
                    pending.append((fs, mode, fold, path, key))
    reused = sum(1 for fs, mode, name in finished if name in chosen)
    if reused:
        log.info("%d fold result(s) reused from %s (finished earlier)", reused, Path(out_dir) / "folds")
    if jobs == 1 or len(pending) <= 1:
        for fs, mode, fold, path, key in pending:
            finished[fs, mode, fold.name] = _svm_fold(utterances, features[fs], fold, mode, c_grid, seed, path,
                                                      key, None)
    else:
        # spawn, as moma cv's folds (forking a process whose BLAS threads run can deadlock); each task carries
        # its feature set's vectors, each worker's BLAS runs one thread, and every fold is saved as it ends, so
        # a failed fold costs only itself: the others finish and the same command resumes
        with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_svm_fold, utterances, features[fs], fold, mode, c_grid, seed, path, key, 1):
                       (fs, mode, fold.name) for fs, mode, fold, path, key in pending}
            for done, future in enumerate(as_completed(futures), 1):
                finished[futures[future]] = future.result()
                log.info("fold %d/%d done: %s", done, len(pending), " / ".join(futures[future]))
    runs = []
    for fs in feature_sets:
        for mode in normalisations:
            results = [finished[fs, mode, f.name] for f in folds if (fs, mode, f.name) in finished]
            if not results:
                continue
            missing = [f.name for f in folds if (fs, mode, f.name) not in finished]
            summary = aggregate_folds(results, labels)
            runs.append({"feature_set": fs, "n_features": int(next(iter(features[fs].values())).shape[0]),
                         "normalisation": mode, "normalisation_note": NORMALISATION_NOTES[mode],
                         "wall_time_s": round(sum(r["train_time_s"] for r in results), 1), "summary": summary,
                         "folds": results, "missing_folds": missing,
                         # what each finished fold was made from, so that --resume-from can trust it exactly
                         "fold_keys": {f.name: keys[fs, mode, f.name] for f in folds
                                       if (fs, mode, f.name) in finished}})
            log.info("%s / %s: UAR %.3f ± %.3f, accuracy %.3f ± %.3f over %d of %d folds", fs, mode,
                     summary["uar"]["mean"], summary["uar"]["std"], summary["accuracy"]["mean"],
                     summary["accuracy"]["std"], len(results), len(folds))
    cv_s = time.time() - t1
    corpus = (utterances[0].corpus if utterances else "") or Path(manifest_path).stem
    report = {
        "title": f"{corpus}: openSMILE functionals + linear SVM, {protocol} cross-validation",
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "corpus": corpus,
        "manifest": str(manifest_path),
        "n_utterances": len(utterances),
        "n_speakers": len({u.speaker for u in utterances}),
        "labels": labels,
        "protocol": protocol,
        "n_folds": len(folds),
        "folds_definition": [f.to_dict() for f in folds],
        "feature_sets": list(feature_sets),
        "normalisations": list(normalisations),
        "c_grid": [float(c) for c in c_grid],
        "seed": seed,
        "software": _software(),
        "host": f"{os.cpu_count()} CPU cores visible, {jobs} fold process(es) at a time",
        "extraction_time_s": round(extraction_s, 1),
        "extraction": extraction,
        "cv_time_s": round(cv_s, 1),
        "notes": ["\"Pooled\" scores are computed once on all folds' test predictions together; the mean ± std "
                  "columns are over the folds (one test speaker each).",
                  "Posteriors in report.json are the softmax of the LinearSVC decision values (their argmax is "
                  "the SVM's prediction); each fold's \"calibration\" gives the temperature that makes them "
                  "probabilities (fitted on training speakers only) and what it does on the test fold.",
                  "When a fold has more features than training utterances (ComParE_2016), each SVM is fitted on "
                  "the coordinates of the standardised features in an orthonormal basis of the training rows' span "
                  "(dual solver, as dual=\"auto\" picks for the original matrix): an exact re-parametrisation that "
                  "leaves the decision values unchanged (checked to ~1e-14 on EmoDB) and only makes fits faster."],
        "runs": runs,
    }
    partial = [f"{r['feature_set']} / {r['normalisation']}: {len(r['folds'])} of {len(folds)} folds (missing: "
               f"{', '.join(r['missing_folds'])})" for r in runs if r["missing_folds"]]
    if partial:
        report["notes"].insert(0, "Partial: " + "; ".join(partial) + ". Means are over the finished folds only; "
                               "the same command with the missing folds (--fold) completes them.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_report_json(report, out)
    (out / "report.md").write_text(render_classical_markdown(report), encoding="utf-8")
    return report
