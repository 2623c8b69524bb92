"""Paired comparison of cross-validation runs made on the same folds (``moma compare``).

Two ``moma cv`` runs on one manifest and protocol test the same speakers in
the same folds, so their difference is judged pair by pair, not by whether two
mean ± std intervals overlap (fold-to-fold spread on EmoDB is 0.08-0.17 UAR,
far larger than most differences worth knowing about):

* per fold: the metric of each run on the fold's test speakers, compared by a
  two-sided sign-flip test (exact up to 16 folds) and Wilcoxon signed-rank;
* pooled: the metric over every test utterance both runs classified, with a
  paired bootstrap CI of the difference (both runs scored on the same
  resampled utterances).

A leave-one-speaker-out run on a pool (``moma cv --test-corpus C``) is paired
with a run on corpus C alone: its speakers, utterances and folds carry C's
namespace (``C.03``), which is matched away, and both are scored over C's
classes. With several runs against one reference the sign-flip p-values are also
Holm-adjusted. Only ``report.json`` files are read: no corpus, no checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from moma.corpora.pool import SEPARATOR
from moma.evaluation.report_files import load_report_json
from moma.evaluation.stats import METRICS, format_p, holm_adjust, metric_value, paired_bootstrap_diff, paired_test

log = logging.getLogger(__name__)


def load_run_reports(spec: str | Path) -> list[dict[str, Any]]:
    """The cross-validation runs in a ``moma cv`` run folder or ``report.json``, or in a ``moma classical`` report.

    A classical report holds one run per feature set and normalisation; each becomes a run named
    ``FEATURES/NORMALISATION`` (e.g. ``ComParE_2016/global``), and ``PATH#FEATURES/NORMALISATION`` picks one.
    A ``moma cv`` run is named after its folder.
    """
    text = str(spec)
    path_text, _, selector = text.partition("#")
    path = Path(path_text)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no report.json (is it a finished `moma cv` run? `moma report` rebuilds "
                                "one from its finished folds)")
    report = load_report_json(file)
    if "runs" in report and "labels" in report:  # moma classical: several runs over the same folds
        runs = [{**run, "name": f"{run['feature_set']}/{run['normalisation']}", "labels": report["labels"]}
                for run in report["runs"]]
    elif "folds" in report and "labels" in report:
        runs = [{**report, "name": file.parent.name}]
    else:
        raise ValueError(f"{file}: not a cross-validation report (no folds or labels)")
    if selector:
        runs = [r for r in runs if r["name"] == selector]
        if not runs:
            raise ValueError(f"{file}: no run named {selector!r}")
    return runs


def _predictions(report: dict[str, Any], folds: Sequence[str]) -> dict[str, tuple[str, str]]:
    """utterance id -> (true label, predicted label) over the named folds."""
    out: dict[str, tuple[str, str]] = {}
    for fold in report["folds"]:
        if fold["name"] in folds:
            for p in fold["test"].get("predictions", []):
                out[p["id"]] = (p["label"], p["predicted"])
    return out


UNITS = ("fold", "speaker")  # what the paired test pairs: fold scores, or each test speaker's own score


def _unit_scores(folds: dict[str, dict[str, Any]], names: Sequence[str], metric: str, unit: str) -> dict[str, float]:
    if unit == "fold":
        return {n: float(folds[n]["test"][metric]) for n in names}
    return {spk: float(v[metric]) for n in names for spk, v in folds[n]["test"]["per_speaker"].items()}


def scored_labels(report: dict[str, Any]) -> list[str]:
    """The classes a run was scored over: its folds' test corpus's classes (cross-corpus scoring), else its labels."""
    per_fold = [f["test"].get("scored_classes") for f in report["folds"] if f.get("test")]
    if per_fold and all(per_fold):
        return sorted({c for classes in per_fold for c in classes})
    return list(report["labels"])


def _namespace(report: dict[str, Any]) -> str | None:
    """The one corpus namespace every test speaker of a pooled run carries (``emodb`` of ``emodb.03``), else None."""
    speakers = [s for f in report["folds"] for s in f["test_speakers"]]
    corpora = {s.split(SEPARATOR, 1)[0] for s in speakers if SEPARATOR in s}
    if len(corpora) != 1 or not all(SEPARATOR in s for s in speakers):
        return None
    return corpora.pop()


def _carries_namespace(report: dict[str, Any]) -> bool:
    """Whether any test speaker of the run is namespaced by a corpus (a run on a pool, of one corpus or several)."""
    return any(SEPARATOR in s for f in report["folds"] for s in f["test_speakers"])


def _strip_namespace(report: dict[str, Any], corpus: str) -> dict[str, Any]:
    """A copy of a pooled run's report in its test corpus's own names: ``C.03`` -> ``03`` in folds,
    speakers and utterance ids, so that it pairs with a run on corpus C alone."""
    prefix = corpus + SEPARATOR

    def strip(name: str) -> str:
        return name.replace(prefix, "", 1)  # spk-emodb.03 -> spk-03, emodb.03a01Fa -> 03a01Fa

    folds = []
    for fold in report["folds"]:
        test = dict(fold["test"])
        test["per_speaker"] = {strip(k): v for k, v in test.get("per_speaker", {}).items()}
        test["predictions"] = [{**p, "id": strip(p["id"]), "speaker": strip(p.get("speaker", ""))}
                               for p in test.get("predictions", [])]
        folds.append({**fold, "name": strip(fold["name"]), "test_speakers": [strip(s) for s in fold["test_speakers"]],
                      "test": test})
    return {**report, "folds": folds}


def align_corpus_namespaces(reference: dict[str, Any], other: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pair a pooled run's leave-one-speaker-out folds with a single-corpus run's: when exactly one of the two
    runs tests speakers of one namespaced corpus and the other run's speakers carry no namespace, the pooled
    run's names lose it. Anything else is returned as it is (and must then match by name)."""
    ref_ns, oth_ns = _namespace(reference), _namespace(other)
    if (ref_ns is None) == (oth_ns is None):
        return reference, other
    corpus = ref_ns or oth_ns
    pooled, single = (reference, other) if ref_ns else (other, reference)
    if _carries_namespace(single):
        # both are runs on a pool: a leave-one-corpus-out run tests several namespaced corpora, and the same run
        # with one fold finished tests one; they pair by their own names
        return reference, other
    log.info("%s is a pooled run testing %s: its speakers are matched to %s's without the %r namespace",
             pooled["name"], corpus, single["name"], corpus + SEPARATOR)
    stripped = _strip_namespace(pooled, corpus)
    return (stripped, other) if ref_ns else (reference, stripped)


def compare_pair(reference: dict[str, Any], other: dict[str, Any], *, metric: str = "uar", n_boot: int = 2000,
                 seed: int = 0, unit: str = "fold") -> dict[str, Any]:
    """``other`` against ``reference`` over the folds both finished (differences are other - reference).

    ``unit="speaker"`` pairs each test speaker's score instead of each fold's: the choice for protocols with
    few folds of many speakers (leave-one-corpus-out, a held-out session), where fold pairs are too few to
    test anything.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(UNITS)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    ref_labels, oth_labels = scored_labels(reference), scored_labels(other)
    if sorted(ref_labels) != sorted(oth_labels):
        raise ValueError(f"{other['name']} and {reference['name']} are scored over different classes "
                         f"({oth_labels} vs {ref_labels}): not the same task")
    reference, other = align_corpus_namespaces(reference, other)
    ref_folds = {f["name"]: f for f in reference["folds"]}
    oth_folds = {f["name"]: f for f in other["folds"]}
    shared = [name for name in ref_folds if name in oth_folds]
    for name in shared:
        if sorted(ref_folds[name]["test_speakers"]) != sorted(oth_folds[name]["test_speakers"]):
            raise ValueError(f"fold {name} tests speakers {ref_folds[name]['test_speakers']} in {reference['name']} "
                             f"but {oth_folds[name]['test_speakers']} in {other['name']}: not the same folds")
    if not shared:
        raise ValueError(f"{other['name']} and {reference['name']} have no finished fold in common")
    skipped = sorted(set(ref_folds) ^ set(oth_folds))
    if skipped:
        log.warning("%s vs %s: folds finished in only one run are left out: %s", other["name"], reference["name"],
                    ", ".join(skipped))
    ref_units = _unit_scores(ref_folds, shared, metric, unit)
    oth_units = _unit_scores(oth_folds, shared, metric, unit)
    units = [u for u in ref_units if u in oth_units]
    ref_scores = [ref_units[u] for u in units]
    oth_scores = [oth_units[u] for u in units]
    test = paired_test(oth_scores, ref_scores)

    ref_pred, oth_pred = _predictions(reference, shared), _predictions(other, shared)
    ids = sorted(set(ref_pred) & set(oth_pred))
    for i in ids:
        if ref_pred[i][0] != oth_pred[i][0]:
            raise ValueError(f"utterance {i} is labelled {ref_pred[i][0]!r} in {reference['name']} but "
                             f"{oth_pred[i][0]!r} in {other['name']}: the runs used different manifests")
    pooled: dict[str, Any] | None = None
    if ids:
        y_true = [ref_pred[i][0] for i in ids]
        ref_y, oth_y = [ref_pred[i][1] for i in ids], [oth_pred[i][1] for i in ids]
        ci = paired_bootstrap_diff(y_true, oth_y, ref_y, metric=metric, n=n_boot, seed=seed)
        pooled = {"n": len(ids), "reference": metric_value(y_true, ref_y, metric),
                  "other": metric_value(y_true, oth_y, metric), "diff_ci": ci.to_dict()}
    return {"reference": reference["name"], "other": other["name"], "metric": metric, "folds": shared,
            "skipped_folds": skipped, "unit": unit,
            "per_fold": [{"fold": n, "reference": r, "other": o} for n, r, o in zip(units, ref_scores, oth_scores)],
            "reference_mean": sum(ref_scores) / len(ref_scores), "other_mean": sum(oth_scores) / len(oth_scores),
            "test": test, "pooled": pooled}


def compare_runs(reports: Sequence[dict[str, Any]], *, metric: str = "uar", n_boot: int = 2000,
                 seed: int = 0, unit: str = "fold") -> dict[str, Any]:
    """Every report after the first against the first; sign-flip p-values Holm-adjusted over the comparisons."""
    if len(reports) < 2:
        raise ValueError("compare needs a reference run and at least one other run")
    ref_ns = _namespace(reports[0])
    if ref_ns is not None and any(not _carries_namespace(r) for r in reports[1:]):  # a pooled reference, named
        reports = [_strip_namespace(reports[0], ref_ns), *reports[1:]]              # as the single-corpus runs it meets
    pairs = [compare_pair(reports[0], other, metric=metric, n_boot=n_boot, seed=seed, unit=unit)
             for other in reports[1:]]
    for pair, adj in zip(pairs, holm_adjust([p["test"]["permutation_p"] for p in pairs])):
        pair["test"]["permutation_p_holm"] = adj
    folds = {f["name"]: f for f in reports[0]["folds"]}
    reference_folds = _unit_scores(folds, list(folds), metric, unit)
    return {"reference": reports[0]["name"], "metric": metric, "unit": unit, "reference_folds": reference_folds,
            "comparisons": pairs}


def render_comparison(result: dict[str, Any]) -> str:
    """Markdown: one row per compared run, then the per-fold scores side by side."""
    metric, ref = result["metric"], result["reference"]
    unit = result.get("unit", "fold")
    units = "folds" if unit == "fold" else "test speakers"
    paired = "folds both finished" if unit == "fold" else "test speakers of the folds both finished"
    lines = [f"# Paired comparison against {ref} ({metric})", "",
             f"Differences are run − {ref} over the {paired}. p: two-sided sign-flip test "
             f"over {units} (exact up to 16 pairs), Holm-adjusted over the rows; the CI is a paired bootstrap over "
             "the pooled test utterances.", "",
             f"| run | {units} | {metric} (mean over {units}) | {ref} | Δ | wins / losses / ties | p (sign-flip) | "
             "p (Holm) | p (Wilcoxon) | pooled Δ, 95% CI |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        t, pooled = c["test"], c["pooled"]
        ci = (f"{pooled['diff_ci']['estimate']:+.3f} [{pooled['diff_ci']['low']:+.3f}, {pooled['diff_ci']['high']:+.3f}]"
              if pooled else "n/a")
        lines.append(f"| {c['other']} | {len(c['per_fold'])} | {c['other_mean']:.3f} | {c['reference_mean']:.3f} | "
                     f"{t['mean_diff']:+.3f} | {t['wins']} / {t['losses']} / {t['ties']} | "
                     f"{format_p(t['permutation_p'])} | {format_p(t['permutation_p_holm'])} | "
                     f"{format_p(t['wilcoxon_p'])} | {ci} |")
    names = [c["other"] for c in result["comparisons"]]
    lines += ["", f"| {unit} | {ref} | " + " | ".join(names) + " |", "|---|" + "---|" * (len(names) + 1)]
    by_run = [{r["fold"]: r["other"] for r in c["per_fold"]} for c in result["comparisons"]]
    for fold, score in result["reference_folds"].items():
        cells = [f"{b[fold]:.3f}" if fold in b else "–" for b in by_run]
        lines.append(f"| {fold} | {score:.3f} | " + " | ".join(cells) + " |")
    notes = [f"{c['other']}: folds finished in only one run left out ({', '.join(c['skipped_folds'])})"
             for c in result["comparisons"] if c["skipped_folds"]]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
