"""The classical anchor as a servable model: ``moma classical --protocol all --out DIR``.

For each feature set, the anchor's LinearSVC (balanced class weights) is trained on every speaker of the
manifest with ``global`` standardisation. C is chosen as in every anchor fold, by leave-one-speaker-out over
the training speakers (:func:`moma.research.classical.select_c`), and the softmax temperature of the decision
values is fitted, as the anchor's, on those inner folds' held-out predictions at the chosen C: no utterance
predicts itself. ``DIR/<feature set>.safetensors`` holds coef, intercept and the standardiser's mean and std
(:class:`moma.inference.ensemble.LinearModel`) and the out-of-domain density of the training utterances' raw
functionals (:mod:`moma.features.ood`); ``moma combine`` joins it to MOMA checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moma.corpora.base import label_list, read_manifest
from moma.evaluation.calibration import fit_temperature
from moma.features.functionals import DEFAULT_CACHE, extract_functionals
from moma.features.normalise import Normaliser
from moma.features.ood import fit_ood
from moma.inference.ensemble import LinearModel, combine_members, save_linear_model
from moma.research.classical import DEFAULT_C_GRID, fit_linear_svm, select_c

log = logging.getLogger(__name__)


def train_linear_model(x: np.ndarray, labels: Sequence[str], y: np.ndarray, speakers: Sequence[str], *,
                       feature_set: str, c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0) -> LinearModel:
    """A :class:`LinearModel` from raw functionals ``x`` (rows, D), label indices ``y`` and each row's speaker."""
    c, inner, held_out = select_c(x, y, speakers, normalisation="global", c_grid=c_grid, seed=seed,
                                  n_labels=len(labels))
    temperature = fit_temperature(held_out, y)
    norm = Normaliser("global").fit([x])  # statistics of every training utterance (no test speakers exist)
    clf = fit_linear_svm(norm.transform(x, dtype=np.float64), y, c, seed)
    coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    if coef.shape[0] == 1:  # binary: one score for classes_[1]; as two rows its softmax is the anchor's
        coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
    full_coef = np.zeros((len(labels), x.shape[1]))
    full_intercept = np.full(len(labels), -1e9)  # a class absent from training is never predicted
    full_coef[clf.classes_], full_intercept[clf.classes_] = coef, intercept
    ood = fit_ood(x, speakers, representation=f"functionals:{feature_set}",
                  fitted_on=f"{x.shape[0]} training utterances' {feature_set} functionals")
    log.info("%s: C=%g (inner UAR %.3f), temperature %.3f, out-of-domain threshold %.3f", feature_set, c, inner[c],
             temperature, ood.threshold)
    return LinearModel(coef=full_coef.astype(np.float32), intercept=full_intercept.astype(np.float32),
                       mean=norm.mean.astype(np.float32), std=norm.std.astype(np.float32), labels=list(labels),
                       feature_set=feature_set, temperature=float(temperature),
                       info={"C": float(c), "inner_uar": round(float(inner[c]), 4), "normalisation": "global",
                             "seed": int(seed), "c_grid": [float(v) for v in c_grid]}, ood=ood)


def write_linear_models(manifest_path: str | Path, out_dir: str | Path, *, feature_sets: Sequence[str],
                        cache_dir: str | Path = DEFAULT_CACHE, c_grid: Sequence[float] = DEFAULT_C_GRID,
                        seed: int = 0, workers: int = 1, progress: bool = False,
                        fuse: bool = False) -> list[dict[str, Any]]:
    """Train one linear model per feature set on every utterance of the manifest; write
    ``out_dir/<feature set>.safetensors`` each. Returns one summary per model (path, C, temperature).
    ``fuse``: also write ``out_dir/fusion.safetensors``, the late fusion of all of them with equal weights (the
    rule of ``moma fuse``, served as an ensemble), and add its summary last."""
    if fuse and len(feature_sets) < 2:
        raise ValueError(f"fusing needs at least two feature sets, got {', '.join(feature_sets) or 'none'}")
    utterances = read_manifest(manifest_path)
    labels = label_list(utterances)
    index = {name: i for i, name in enumerate(labels)}
    y = np.array([index[u.label] for u in utterances])
    speakers = sorted({u.speaker for u in utterances})
    corpus = (utterances[0].corpus if utterances else "") or Path(manifest_path).stem
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fs in feature_sets:
        feats = extract_functionals(utterances, fs, cache_dir=cache_dir, workers=workers, progress=progress)
        x = np.stack([np.asarray(feats[u.id], dtype=np.float64) for u in utterances])  # (utterances, D)
        model = train_linear_model(x, labels, y, [u.speaker for u in utterances], feature_set=fs,
                                   c_grid=c_grid, seed=seed)
        model.info.update(corpus=corpus, manifest=str(manifest_path), n_train=len(utterances),
                          train_speakers=speakers)
        path = save_linear_model(out / f"{fs}.safetensors", model)
        written.append({"path": str(path), "feature_set": fs, "C": model.info["C"],
                        "temperature": model.temperature, "inner_uar": model.info["inner_uar"]})
    if fuse:
        path = combine_members([w["path"] for w in written], out / "fusion.safetensors")
        written.append({"path": str(path), "feature_set": "+".join(feature_sets)})
    return written
