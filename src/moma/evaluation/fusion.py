"""Late fusion of cross-validation runs made on the same folds (``moma fuse``).

MOMA reads filterbank frames, the classical anchor reads openSMILE functionals, and on the same folds they are
often right on different test speakers. Late (score-level) fusion combines what they already predicted: for every
test utterance of a fold that all runs scored, the fused posterior is the weighted geometric mean of the runs'
temperature-scaled posteriors,

    log p(c | x) = sum_i w_i * log softmax(log p_i(c | x) / T_i) + const
                 = sum_i (w_i / T_i) * log p_i(c | x) + const,

so the fused argmax is ``argmax_c sum_i (w_i / T_i) log p_i(c | x)``. The temperatures T_i are each fold's own
(``calibration.temperatures`` in the run's report: fitted on MOMA's validation speakers, or on the SVM's inner
folds), so both runs' scores are on a probability scale before they are weighed, and the weights are fixed in
advance (equal unless told otherwise): nothing is fitted on a test speaker. A seed ensemble stores the mean of
its members' raw posteriors and one temperature per member, each fitted on that member's validation speakers;
no held-out set is common to all members (with rotated validation each trained on the others' validation
speakers), so the ensemble takes the geometric mean of its members' temperatures, and the report says so. A fold
without any temperature (an older report) keeps T = 1, also said. A fold of one model per fold whose stored
posteriors are already the temperature-scaled ones (``calibration.posteriors_scaled``: ``moma cv`` stores what the
checkpoint serves) is read as it is, not scaled twice.

A run trained on a pool and tested on one of its corpora (``moma cv --test-corpus C``) fuses with runs made on C
alone: its corpus namespace is matched away as ``moma compare`` does, and every run is read over the classes all
of them were scored over (C's), the pooled model's other outputs left out and said so.

The result is a ``moma cv``-shaped report (folds, labels, predictions with posteriors), so ``moma compare`` pairs
it with each of its members on the same folds. Only ``report.json`` files are read.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy.special import softmax

from moma.corpora.base import Utterance
from moma.evaluation.compare import align_corpus_namespaces, scored_labels
from moma.evaluation.metrics import PAPER_NAMING_NOTE, aggregate_folds, score_posteriors

log = logging.getLogger(__name__)

LOG_FLOOR = 1e-12  # posteriors are stored rounded to 6 decimals; a 0 (a class the SVM never saw) stays finite


def fold_temperature(fold: dict[str, Any]) -> float | None:
    """The fold's fitted temperature: its one temperature, the geometric mean of an ensemble's (one per member),
    or None (no calibration)."""
    temps = (fold.get("calibration") or {}).get("temperatures") or []
    return float(np.exp(np.mean(np.log(temps)))) if temps else None


def posteriors_scaled(fold: dict[str, Any]) -> bool:
    """Whether the fold stored its test posteriors already temperature-scaled (``moma cv`` of one model per fold
    since the posterior function was shared: what its checkpoint serves), so fusion must not scale them again."""
    return bool((fold.get("calibration") or {}).get("posteriors_scaled"))


def combine_posteriors(posteriors: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                       temperatures: Sequence[float | None] | None = None) -> np.ndarray:
    """The late-fusion rule: the weighted geometric mean of each member's temperature-scaled posteriors,
    renormalised. ``posteriors``: one (n, labels) array per member, columns in one label order (the classes all
    members share); ``weights`` (default equal) are normalised to sum to 1; a temperature of None counts as 1.
    ``moma fuse`` (stored posteriors) and served ensembles (:mod:`moma.inference.ensemble`) both use it."""
    if not posteriors:
        raise ValueError("nothing to combine")
    weights = [1.0] * len(posteriors) if weights is None else [float(w) for w in weights]
    temperatures = [1.0] * len(posteriors) if temperatures is None else [1.0 if t is None else float(t)
                                                                          for t in temperatures]
    total = sum(weights)
    # (n, labels) per member -> weighted sum of log posteriors, each divided by its member's temperature
    logits = sum((w / total / t) * np.log(np.clip(np.asarray(p, dtype=np.float64), LOG_FLOOR, None))
                 for w, t, p in zip(weights, temperatures, posteriors))
    return softmax(logits, axis=1)


def _fold_posteriors(run: dict[str, Any], fold: dict[str, Any], labels: Sequence[str]) -> dict[str, np.ndarray]:
    """utterance id -> the fold's stored test posteriors, reordered to ``labels``."""
    order = [list(run["labels"]).index(name) for name in labels]
    out = {}
    for p in fold["test"].get("predictions", []):
        if "posteriors" not in p:
            raise ValueError(f"{run['name']}: fold {fold['name']} stores no posteriors for {p['id']}; "
                             "late fusion needs them (rerun it with this version)")
        out[p["id"]] = np.asarray(p["posteriors"], dtype=np.float64)[order]
    return out


def align_namespaces(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs with a pooled leave-one-speaker-out run's corpus namespace matched away when another run was made
    on that corpus alone (``spk-nemo.EB0`` -> ``spk-EB0``, as ``moma compare`` pairs them)."""
    runs = list(runs)
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            runs[i], runs[j] = align_corpus_namespaces(runs[i], runs[j])
    return runs


def fuse_runs(runs: Sequence[dict[str, Any]], weights: Sequence[float] | None = None,
              command: str = "") -> dict[str, Any]:
    # long: the checks that the runs share folds, classes and temperatures come before the one fusion loop
    """Late fusion of ``runs`` (from :func:`moma.evaluation.compare.load_run_reports`) over the folds all of
    them finished. ``weights`` (default equal) are normalised to sum to 1. Returns a report with ``folds``
    (each with the fused ``test`` scores, every member's UAR and temperature) and ``summary``."""
    if len(runs) < 2:
        raise ValueError("late fusion needs at least two runs")
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs with the same name cannot be told apart: {', '.join(names)} (a run is named after "
                         "its folder: copy or link one under another name)")
    weights = [1.0] * len(runs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(runs) or not all(w > 0 for w in weights):
        raise ValueError(f"--weights: one positive weight per run ({len(runs)}), got {weights}")
    weights = [w / sum(weights) for w in weights]
    runs = align_namespaces(runs)
    # the classes each run was scored over (a pooled run's test corpus's classes), which must be one set; a run
    # with more outputs (trained on a pool) is read over those classes only
    classes = [scored_labels(run) for run in runs]
    scored = set(classes[0])
    for run, its in zip(runs[1:], classes[1:]):
        if set(its) != scored:
            raise ValueError(f"{run['name']} is scored over {', '.join(its)} but {runs[0]['name']} "
                             f"over {', '.join(classes[0])}: late fusion needs the same classes")
    labels = [c for c in runs[0]["labels"] if c in scored]
    notes = []
    wider = [f"{run['name']} ({', '.join(c for c in run['labels'] if c not in scored)})"
             for run in runs if set(run["labels"]) != scored]
    if wider:
        notes.append(f"Fused over the {len(labels)} classes every run was scored over ({', '.join(labels)}); the "
                     f"other outputs of {', '.join(wider)} are left out.")
    by_run = [{f["name"]: f for f in run["folds"]} for run in runs]
    common = [f["name"] for f in runs[0]["folds"] if all(f["name"] in b for b in by_run)]
    if not common:
        raise ValueError(f"{' and '.join(names)} share no finished fold")
    left_out = sorted({n for b in by_run for n in b} - set(common))
    if left_out:
        notes.append(f"Folds not finished by every run, left out: {', '.join(left_out)}.")
    uncalibrated, ensembles = [], []
    folds = []
    for name in common:
        members = [b[name] for b in by_run]
        posts = [_fold_posteriors(run, fold, labels) for run, fold in zip(runs, members)]
        ids = sorted(posts[0])
        for run, post in zip(runs[1:], posts[1:]):
            if sorted(post) != ids:
                raise ValueError(f"fold {name}: {run['name']} tested other utterances than {runs[0]['name']} "
                                 f"({len(post)} against {len(ids)}); fuse runs made on the same folds")
        temps, applied = [], []  # each run's fitted temperature, and the one still to apply to what it stored
        for run, fold in zip(runs, members):
            t = fold_temperature(fold)
            if t is None:
                uncalibrated.append(f"{run['name']} {name}")
            elif len(fold["calibration"]["temperatures"]) > 1:
                ensembles.append(f"{run['name']} {name}")
            temps.append(1.0 if t is None else t)
            applied.append(1.0 if t is None or posteriors_scaled(fold) else t)
        fused = combine_posteriors([np.stack([p[k] for k in ids]) for p in posts], weights, applied)
        first = {p["id"]: p for p in members[0]["test"]["predictions"]}
        utts = {k: Utterance(id=k, path="", speaker=first[k]["speaker"], label=first[k]["label"]) for k in ids}
        # a fold's own scored classes (each test corpus's, on leave-one-corpus-out) stay its argmax's classes
        result = score_posteriors(dict(zip(ids, fused)), utts, labels, members[0]["test"].get("scored_classes"))
        folds.append({"name": name, "test_speakers": list(members[0].get("test_speakers", [])), "n_test": len(ids),
                      "members": {run["name"]: {"temperature": round(t, 4), "uar": f["test"]["uar"],
                                                "accuracy": f["test"]["accuracy"]}
                                  for run, t, f in zip(runs, temps, members)},
                      "test": result})
    if uncalibrated:
        notes.append("No fitted temperature (T = 1 used): " + ", ".join(uncalibrated) + ".")
    if ensembles:
        notes.append("Seed ensembles, scaled by the geometric mean of their members' temperatures: "
                     + ", ".join(ensembles) + ".")
    member_means = {run["name"]: {m: float(np.mean([by_run[i][n]["test"][m] for n in common]))
                                  for m in ("uar", "accuracy")} for i, run in enumerate(runs)}
    return {"title": "Late fusion of " + " + ".join(names), "command": command, "labels": labels,
            "protocol": runs[0].get("protocol", ""),
            "fused": [{"name": n, "weight": round(w, 4)} for n, w in zip(names, weights)],
            "member_means": member_means, "fold_names": common, "folds": folds,
            "summary": aggregate_folds(folds, labels), "notes": notes}


def render_fusion_markdown(report: dict[str, Any]) -> str:
    runs = [m["name"] for m in report["fused"]]
    s = report["summary"]
    lines = [f"# {report['title']}", ""]
    if report.get("command"):
        lines += ["Made by:", "", "```", report["command"], "```", ""]
    lines += ["Fused posterior: the weighted geometric mean of each run's temperature-scaled posteriors "
              "(weights " + ", ".join(f"{m['name']} {m['weight']:g}" for m in report["fused"]) + ", fixed in "
              "advance; temperatures are each fold's own, fitted on training speakers only). No parameter "
              "of the fusion is fitted on a test speaker.", "", f"> {PAPER_NAMING_NOTE}", "",
              f"## Summary over the {s['folds']} folds every run finished (mean ± std over folds)", "",
              "| run | UAR | accuracy |", "|---|---|---|"]
    for name in runs:
        m = report["member_means"][name]
        lines.append(f"| {name} | {m['uar']:.3f} | {m['accuracy']:.3f} |")
    lines.append(f"| **late fusion** | **{s['uar']['mean']:.3f} ± {s['uar']['std']:.3f}** | "
                 f"{s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f} |")
    lines += ["", f"Pooled over all {s['pooled']['n']} test utterances: UAR {s['pooled']['uar']:.3f}, accuracy "
              f"{s['pooled']['accuracy']:.3f}.", "", "## Per fold", "",
              "| fold | test speakers | n | " + " | ".join(f"{n} UAR (T)" for n in runs) + " | fused UAR |",
              "|---|---|---|" + "---|" * (len(runs) + 1)]
    for f in report["folds"]:
        cells = " | ".join(f"{f['members'][n]['uar']:.3f} ({f['members'][n]['temperature']:.2f})" for n in runs)
        lines.append(f"| {f['name']} | {', '.join(f['test_speakers'])} | {f['n_test']} | {cells} | "
                     f"{f['test']['uar']:.3f} |")
    for note in report["notes"]:
        lines += ["", note]
    lines += ["", "Paired against each member on the same folds: `moma compare RUN FUSED` (this folder)."]
    return "\n".join(lines) + "\n"
