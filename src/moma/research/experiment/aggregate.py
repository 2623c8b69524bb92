"""Per-variant statistics of the finished cells and the classical anchors: means over seeds, pooled posteriors
with a bootstrap CI, and paired tests against the reference variant."""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import numpy as np

from moma.config import RunConfig, config_to_dict
from moma.corpora.base import Utterance
from moma.data.protocols import Fold
from moma.evaluation.metrics import compute_metrics
from moma.evaluation.stats import bootstrap_ci, mean_std, paired_bootstrap_diff, paired_test
from moma.research.experiment.cells import Cell
from moma.research.experiment.spec import Experiment, anchor_name

METRIC_NAMES = ("accuracy", "uar", "macro_f1")


def _read_result(cell: Cell) -> dict[str, Any] | None:
    if not cell.done():
        return None
    return json.loads(cell.result_path.read_text(encoding="utf-8"))


def _describe(cfg: RunConfig) -> str:
    from moma.training.crossval import describe_model

    return re.sub(r", seed -?\d+$", "", describe_model(cfg))


def _pool_posteriors(post_sum: dict[str, np.ndarray], post_n: dict[str, int], utts: dict[str, Utterance],
                     labels: Sequence[str], exp: Experiment) -> tuple[dict[str, Any], dict[str, int]]:
    """Pooled metrics with the bootstrap UAR CI of posteriors averaged per utterance; also the predictions."""
    index = {name: i for i, name in enumerate(labels)}
    ids = sorted(post_sum)
    y_true = [index[utts[i].label] for i in ids]
    y_pred = [int(np.argmax(post_sum[i] / post_n[i])) for i in ids]
    pooled = compute_metrics(y_true, y_pred, labels)
    ci = bootstrap_ci(y_true, y_pred, "uar", n=exp.bootstrap, seed=0, level=1 - exp.alpha)
    return ({"n": pooled["n"], **{m: pooled[m] for m in METRIC_NAMES}, "seeds_averaged": int(max(post_n.values())),
             "per_class_recall": pooled["per_class_recall"], "confusion": pooled["confusion"],
             "uar_ci": ci.to_dict()}, dict(zip(ids, y_pred)))


def aggregate_experiment(exp: Experiment, folds: Sequence[Fold], cells: Sequence[Cell],
                         utterances: Sequence[Utterance], labels: Sequence[str],
                         anchors: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-variant statistics from the finished cells (partial grids are aggregated over what finished).

    ``anchors``: the classical anchors' results (``{feature set: run_anchor(...)}``), added after the model
    variants as ``svm-<feature set>`` entries (``kind: classical``). They are deterministic, so their metrics are
    means over folds and their paired test pairs each fold's SVM UAR with the reference's UAR on that fold
    averaged over seeds.
    """
    index = {name: i for i, name in enumerate(labels)}
    utts = {u.id: u for u in utterances}
    per_variant: dict[str, Any] = {}
    uar_of: dict[str, dict[tuple[int, str], float]] = {}
    pooled_pred: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    for name, variant in exp.variants.items():
        rows, post_sum, post_n, params = [], {}, {}, None
        for cell in (c for c in cells if c.variant == name):
            res = _read_result(cell)
            if res is None or res.get("test") is None:
                missing.append(cell.key)
                continue
            t = res["test"]
            params = params or res.get("parameters")
            rows.append({"seed": cell.seed, "fold": cell.fold.name, "test_speakers": res.get("test_speakers"),
                         **{m: t[m] for m in METRIC_NAMES}, "n": t["n"], "best_epoch": res.get("best_epoch"),
                         "epochs_run": res.get("epochs_run"), "train_time_s": res.get("train_time_s"),
                         "per_speaker": t.get("per_speaker"), "path": str(cell.result_path)})
            for p in t["predictions"]:
                post = np.asarray(p["posteriors"], dtype=np.float64)
                post_sum[p["id"]] = post_sum.get(p["id"], 0.0) + post
                post_n[p["id"]] = post_n.get(p["id"], 0) + 1
        entry: dict[str, Any] = {"label": variant.label, "note": variant.note, "set": variant.sets,
                                 "base": variant.bases, "description": _describe(variant.config),
                                 "arch": variant.config.model.arch, "num_blocks": variant.config.model.num_blocks,
                                 "parameters": params, "cells": rows, "cells_finished": len(rows),
                                 "cells_planned": len(exp.seeds) * len(folds), "config": config_to_dict(variant.config)}
        per_seed = []
        for seed in exp.seeds:
            srows = [r for r in rows if r["seed"] == seed]
            if srows:
                per_seed.append({"seed": seed, "folds": len(srows),
                                 **{m: float(np.mean([r[m] for r in srows])) for m in METRIC_NAMES}})
        entry["per_seed"] = per_seed
        for m in METRIC_NAMES:
            ms = mean_std(s[m] for s in per_seed)
            entry[m] = {"mean": ms["mean"], "std": ms["std"], "seeds": len(per_seed)}
        if post_sum:
            entry["pooled"], pooled_pred[name] = _pool_posteriors(post_sum, post_n, utts, labels, exp)
        uar_of[name] = {(r["seed"], r["fold"]): r["uar"] for r in rows}
        per_variant[name] = entry
    anchor_uar: dict[str, dict[str, float]] = {}
    for fs, run in (anchors or {}).items():
        name = anchor_name(fs)
        norm = exp.classical.normalisation  # anchors exist only with a classical: section
        rows = [{"seed": None, "fold": f["name"], "test_speakers": f["test_speakers"],
                 **{m: f["test"][m] for m in METRIC_NAMES}, "n": f["test"]["n"], "chosen_C": f.get("chosen_C"),
                 "train_time_s": f.get("train_time_s"), "per_speaker": f["test"].get("per_speaker")}
                for f in run["folds"]]
        post_sum = {p["id"]: np.asarray(p["posteriors"], dtype=np.float64)
                    for f in run["folds"] for p in f["test"]["predictions"]}
        entry = {"label": f"{fs} + linear SVM", "kind": "classical", "arch": "svm", "num_blocks": None,
                 "feature_set": fs, "n_features": run.get("n_features"),
                 "normalisation": norm, "note": "", "set": [], "base": [],
                 "description": (f"openSMILE {fs} functionals ({run.get('n_features')} per utterance), standardised "
                                 f"({norm}), linear SVM with balanced class "
                                 "weights, C by inner leave-one-speaker-out CV on the training speakers"),
                 "parameters": None, "cells": rows, "cells_finished": len(rows), "cells_planned": len(folds),
                 "per_seed": []}
        for m in METRIC_NAMES:
            entry[m] = {"mean": float(np.mean([r[m] for r in rows])), "std": None, "seeds": 1,
                        "deterministic": True}
        if post_sum:
            entry["pooled"], pooled_pred[name] = _pool_posteriors(post_sum, {k: 1 for k in post_sum}, utts, labels,
                                                                  exp)
        anchor_uar[name] = {r["fold"]: r["uar"] for r in rows}
        per_variant[name] = entry
    ref = exp.reference
    ref_fold_uar: dict[str, list[float]] = {}
    for (_, fold), uar in uar_of.get(ref, {}).items():
        ref_fold_uar.setdefault(fold, []).append(uar)
    for name, entry in per_variant.items():
        if name == ref:
            continue
        if name in anchor_uar:
            common_folds = sorted(set(ref_fold_uar) & set(anchor_uar[name]))
            a = [float(np.mean(ref_fold_uar[f])) for f in common_folds]
            b = [anchor_uar[name][f] for f in common_folds]
            unit = "fold"
        else:
            common = sorted(set(uar_of[ref]) & set(uar_of[name]))
            a = [uar_of[ref][k] for k in common]
            b = [uar_of[name][k] for k in common]
            unit = "fold×seed"
        if not a:
            entry["vs_reference"] = None
            continue
        test = paired_test(a, b)
        test["reference"] = ref
        test["unit"] = unit
        test["pairs"] = ("fold UAR (reference's mean over seeds - SVM)" if unit == "fold"
                         else "fold x seed UAR (reference - variant)")
        ids = sorted(set(pooled_pred.get(ref, {})) & set(pooled_pred.get(name, {})))
        if ids:
            diff = paired_bootstrap_diff([index[utts[i].label] for i in ids], [pooled_pred[ref][i] for i in ids],
                                         [pooled_pred[name][i] for i in ids], "uar", n=exp.bootstrap, seed=0,
                                         level=1 - exp.alpha)
            test["pooled_uar_diff_ci"] = diff.to_dict()
        entry["vs_reference"] = test
    return {"variants": per_variant, "missing_cells": missing}

