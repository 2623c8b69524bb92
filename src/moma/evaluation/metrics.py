"""Predictions, metrics and reports.

Metric names are unambiguous on purpose: ``accuracy`` is the share of
utterances classified correctly and ``uar`` is the unweighted average recall
(mean per-class recall). The MOMA paper labels these the other way round from
the field's usual usage: its "UA" column is plain accuracy and its "WA" column
is the class-balanced figure (UAR).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from moma.config import RunConfig
from moma.corpora.base import Utterance
from moma.evaluation.posteriors import Segmenting, aggregate, torch_forward, window_logits
from moma.evaluation.report_files import save_report_json
from moma.evaluation.stats import mean_std

log = logging.getLogger(__name__)

PAPER_NAMING_NOTE = (
    "The MOMA paper's \"UA\" column is plain accuracy and its \"WA\" column is the class-balanced "
    "figure (UAR), the reverse of the field's usual naming; this report uses the unambiguous names "
    "accuracy and UAR (mean per-class recall)."
)


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, UAR, macro-F1, per-class recall and the confusion matrix (rows: true, columns: predicted).

    Classes absent from ``y_true`` are left out of UAR and macro-F1 (a recall
    over zero examples is undefined) and listed under ``absent_classes``.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if y_true.size == 0:
        raise ValueError("no predictions to score")
    # imported here: scikit-learn takes a second to import, which every `moma predict` would pay otherwise
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    present = sorted(set(y_true.tolist()))
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    recalls = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "uar": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class_recall": {labels[c]: float(r) for c, r in zip(present, recalls)},
        "absent_classes": [labels[c] for c in range(len(labels)) if c not in present],
        "confusion": cm.tolist(),
    }


def predict_window_logits(model: torch.nn.Module, features: Mapping[str, np.ndarray], keys: Sequence[str],
                          cfg: RunConfig, device: torch.device | str = "cpu", *,
                          functionals: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each utterance's window logits ``(windows, C)`` from a PyTorch model
    (:func:`moma.evaluation.posteriors.window_logits`; one window unless the model is segment-trained), for
    callers that need its posteriors at more than one temperature. A checkpoint trained with bf16 runs under bf16
    autocast where the device supports it. ``functionals``: each utterance's standardised functionals (fusion)."""
    forward = torch_forward(model, device, bf16=bool(cfg.train.bf16))
    logits = window_logits(forward, [features[k] for k in keys],
                           None if functionals is None else [functionals[k] for k in keys], segments=Segmenting.of(cfg))
    return dict(zip(keys, logits))


def predict_posteriors(model: torch.nn.Module, features: Mapping[str, np.ndarray], keys: Sequence[str],
                       cfg: RunConfig, device: torch.device | str = "cpu", *, temperature: float = 1.0,
                       functionals: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Class posteriors per utterance of a PyTorch model, as every prediction path computes them
    (:func:`moma.evaluation.posteriors.class_posteriors`: a segment-trained model averages its windows'
    temperature-scaled posteriors). ``temperature``: the checkpoint's fitted one; 1, the default, gives the raw
    posteriors validation and calibration need."""
    logits = predict_window_logits(model, features, keys, cfg, device, functionals=functionals)
    return dict(zip(keys, aggregate([logits[k] for k in keys], temperature)))


def score_posteriors(posteriors: dict[str, np.ndarray], utterances: dict[str, Utterance],
                     labels: Sequence[str], scored_classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Overall metrics, per-speaker metrics and one prediction row per utterance.

    ``scored_classes`` (cross-corpus scoring): the prediction is the argmax over these classes only, the
    model's other outputs are ignored (their posteriors are still stored). Every utterance scored must be
    of one of them.
    """
    index = {name: i for i, name in enumerate(labels)}
    keys = sorted(posteriors)
    y_true = [index[utterances[k].label] for k in keys]
    allowed = np.ones(len(labels), dtype=bool)
    if scored_classes is not None:
        allowed[:] = False
        allowed[[index[c] for c in scored_classes]] = True
        outside = sorted({utterances[k].label for k in keys} - set(scored_classes))
        if outside:
            raise ValueError(f"utterances of classes {', '.join(outside)} cannot be scored over "
                             f"{', '.join(scored_classes)}")
    y_pred = [int(np.argmax(np.where(allowed, posteriors[k], -np.inf))) for k in keys]
    result = compute_metrics(y_true, y_pred, labels)
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_speaker[utterances[k].speaker].append(i)
    result["per_speaker"] = {
        spk: {key: value for key, value in
              compute_metrics([y_true[i] for i in idx], [y_pred[i] for i in idx], labels).items()
              if key in ("n", "accuracy", "uar", "macro_f1")}
        for spk, idx in sorted(by_speaker.items())
    }
    if scored_classes is not None:
        result["scored_classes"] = list(scored_classes)
    result["predictions"] = [
        {"id": k, "speaker": utterances[k].speaker, "label": utterances[k].label, "predicted": labels[p],
         "posteriors": [round(float(x), 6) for x in posteriors[k]]}
        for k, p in zip(keys, y_pred)
    ]
    return result


def aggregate_folds(fold_results: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Mean +- std over folds, plus metrics on all folds' predictions pooled.

    ``fold_results`` items hold ``name`` and ``test`` (the output of
    :func:`score_posteriors`).
    """
    summary: dict[str, Any] = {"folds": len(fold_results)}
    for metric in ("accuracy", "uar", "macro_f1"):
        ms = mean_std(r["test"][metric] for r in fold_results)
        summary[metric] = {"mean": ms["mean"], "std": ms["std"]}
    index = {name: i for i, name in enumerate(labels)}
    preds = [p for r in fold_results for p in r["test"]["predictions"]]
    if preds:
        pooled = compute_metrics([index[p["label"]] for p in preds], [index[p["predicted"]] for p in preds], labels)
        summary["pooled"] = {k: pooled[k] for k in ("n", "accuracy", "uar", "macro_f1", "per_class_recall",
                                                    "confusion")}
    n_seeds = min((len(r.get("seeds", [])) for r in fold_results), default=0)
    if n_seeds > 1:
        # each ensemble member's fold-averaged score: mean +- std over seeds of a single model
        for metric in ("accuracy", "uar", "macro_f1"):
            per_seed = [float(np.mean([r["seeds"][i][metric] for r in fold_results])) for i in range(n_seeds)]
            ms = mean_std(per_seed)
            summary[f"single_model_{metric}"] = {"mean": ms["mean"], "std": ms["std"], "seeds": n_seeds}
    if fold_results and all("calibration" in r for r in fold_results):
        # test-fold calibration of the posteriors, raw and after each fold's validation-fitted temperature
        summary["calibration"] = {key: mean_std(r["calibration"][key] for r in fold_results)
                                  for key in ("ece_before", "ece_after", "nll_before", "nll_after")}
    per_speaker: dict[str, Any] = {}
    for r in fold_results:
        per_speaker.update(r["test"]["per_speaker"])
    summary["per_speaker"] = per_speaker
    if per_speaker:
        ms = mean_std(v["uar"] for v in per_speaker.values())
        summary["per_speaker_uar"] = {"mean": ms["mean"], "std": ms["std"],
                                      "min": min(v["uar"] for v in per_speaker.values()),
                                      "max": max(v["uar"] for v in per_speaker.values())}
    return summary


def _fmt(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable report: per-fold table, mean ± std, pooled confusion matrix, per-speaker UAR."""
    labels = report["labels"]
    summary = report["summary"]
    lines = [f"# {report.get('title', 'Evaluation report')}", ""]
    if report.get("command"):
        lines += ["Made by:", "", "```", report["command"], "```", ""]
    lines += [f"- Corpus: {report.get('corpus', '?')} ({report.get('n_utterances', '?')} utterances, "
              f"{report.get('n_speakers', '?')} speakers), labels: {', '.join(labels)}",
              f"- Protocol: {report.get('protocol', '?')} ({summary['folds']} folds); validation speakers are "
              "drawn from training speakers only",
              f"- Normalisation: {report.get('normalisation', '?')}",
              f"- Model: {report.get('model', '?')}",
              f"- Device: {report.get('device', '?')}; " + (
                  f"wall time {report['wall_time_s']:.0f} s" if report.get("wall_time_s") else
                  "wall time not recorded (a report rebuilt by `moma report`; each fold's training time is in "
                  "report.json)"),
              "", f"> {PAPER_NAMING_NOTE}", "",
              "## Summary (mean ± std over folds)", "",
              "| metric | value |", "|---|---|",
              f"| accuracy (the paper's \"UA\") | {_fmt(summary['accuracy'])} |",
              f"| UAR, mean per-class recall (the paper's \"WA\") | {_fmt(summary['uar'])} |",
              f"| macro-F1 | {_fmt(summary['macro_f1'])} |"]
    if "single_model_uar" in summary:
        sm = summary["single_model_uar"]
        lines += [f"| UAR of a single ensemble member (mean ± std over {sm['seeds']} seeds) | {_fmt(sm)} |",
                  f"| accuracy of a single ensemble member | {_fmt(summary['single_model_accuracy'])} |"]
    if "pooled" in summary:
        p = summary["pooled"]
        lines += [f"| pooled over all test utterances: accuracy / UAR / macro-F1 | "
                  f"{p['accuracy']:.3f} / {p['uar']:.3f} / {p['macro_f1']:.3f} |"]
    if "calibration" in summary:
        c = summary["calibration"]
        lines += [f"| expected calibration error of the test posteriors, raw -> temperature-scaled (15 bins) | "
                  f"{_fmt(c['ece_before'])} -> {_fmt(c['ece_after'])} |",
                  f"| test negative log-likelihood, raw -> temperature-scaled (nats) | "
                  f"{_fmt(c['nll_before'])} -> {_fmt(c['nll_after'])} |"]
    lines += ["", "## Folds", "", "| fold | test speakers | validation speakers | n | best epoch | accuracy | UAR | macro-F1 |",
              "|---|---|---|---|---|---|---|---|"]
    for fold in report["folds"]:
        t = fold["test"]
        lines.append(f"| {fold['name']} | {', '.join(fold['test_speakers'])} | {', '.join(fold['val_speakers'])} | "
                     f"{t['n']} | {fold.get('best_epoch', '')} | {t['accuracy']:.3f} | {t['uar']:.3f} | "
                     f"{t['macro_f1']:.3f} |")
    if "pooled" in summary:
        cm = summary["pooled"]["confusion"]
        lines += ["", "## Confusion matrix (all folds pooled; rows true, columns predicted)", "",
                  "| true \\ predicted | " + " | ".join(labels) + " | recall |",
                  "|---|" + "---|" * (len(labels) + 1)]
        for i, row in enumerate(cm):
            recall = summary["pooled"]["per_class_recall"].get(labels[i], float("nan"))
            lines.append(f"| {labels[i]} | " + " | ".join(str(v) for v in row) + f" | {recall:.3f} |")
    if summary.get("per_speaker"):
        lines += ["", "## Per speaker", "", "| speaker | n | accuracy | UAR |", "|---|---|---|---|"]
        for spk, m in summary["per_speaker"].items():
            lines.append(f"| {spk} | {m['n']} | {m['accuracy']:.3f} | {m['uar']:.3f} |")
        ps = summary["per_speaker_uar"]
        lines += ["", f"Per-speaker UAR: mean {ps['mean']:.3f}, std {ps['std']:.3f}, "
                      f"min {ps['min']:.3f}, max {ps['max']:.3f}."]
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``report.json`` (machine-readable; every prediction in ``predictions.npz`` beside it) and ``report.md``."""
    out_dir = Path(out_dir)
    json_path = save_report_json(report, out_dir)
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path


def shared_class_scoring(model_labels: Sequence[str], data_labels: Sequence[str]) -> dict[str, Any]:
    """How a model is scored on data whose label set differs from its own (cross-corpus evaluation).

    ``scored``: the classes both have, over which the argmax is restricted; ``restricted``: whether that
    changes anything (the sets differ); ``unscorable``: the data's classes the model cannot output;
    ``chance_uar``: the UAR of a constant or uniform guess over the scored classes.
    """
    scored = [c for c in model_labels if c in set(data_labels)]
    if not scored:
        raise ValueError(f"the data's classes ({', '.join(sorted(set(data_labels)))}) and the model's "
                         f"({', '.join(model_labels)}) have none in common")
    return {"scored": scored, "restricted": set(scored) != set(model_labels),
            "unscorable": sorted(set(data_labels) - set(model_labels)), "chance_uar": 1.0 / len(scored)}
