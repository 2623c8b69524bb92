"""The driver: :func:`run_experiment` runs (or resumes) the cells, then writes results.json, report.md and the
figures; :func:`run_analysis` analyses the finished cells of the analysis seeds."""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from moma.config import save_config
from moma.corpora.base import Utterance, label_list
from moma.recipes import display_path
from moma.research.claims import paper_claims
from moma.research.experiment.aggregate import aggregate_experiment
from moma.research.experiment.analysis import aggregate_analysis, analyse_cell
from moma.research.experiment.cells import Cell, check_cell, plan_cells, run_cells
from moma.research.experiment.corpus import experiment_folds, load_corpus
from moma.research.experiment.figures import blocks_series, plot_attention_maps, run_anchors
from moma.research.experiment.spec import Experiment, load_experiment
from moma.research.report import plot_analysis, plot_uar_by_variant, plot_uar_vs_blocks, render_experiment_report

log = logging.getLogger(__name__)


def run_experiment(config_path: str | Path, out_dir: str | Path | None = None, *, jobs: int = 1,
                   cache_dir: str | Path | None = None, sets: Sequence[str] = (), command: str | None = None,
                   progress: bool = False, feature_workers: int = 1, train: bool = True,
                   corpus_root: str | Path | None = None, variants: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) every cell of the experiment, then write results.json, report.md and the figures.

    ``train=False`` only aggregates the cells that have finished (a report of a
    grid still running elsewhere). ``variants`` trains only those variants' cells this time (the ones
    that decide a claim first, on a machine that cannot run the whole grid at once); the report covers
    every finished cell and lists the rest as missing. Returns the content of ``results.json``.

    A cell that fails does not stop the others (:func:`moma.training.crossval.run_in_pool`): results.json
    and report.md cover the cells that finished and list the failed ones (``failed_cells``), then the error
    names each failed cell; rerunning the same command retries only those.
    """
    t0 = time.time()
    exp = load_experiment(config_path, sets, corpus_root)
    out_dir = Path(out_dir) if out_dir is not None else Path("runs/experiments") / Path(config_path).stem
    command = command or "moma experiment " + " ".join(shlex.quote(a) for a in
                                                       [str(config_path), "--out", str(out_dir)])
    utterances = load_corpus(exp, progress=progress)
    if not utterances:
        raise ValueError(f"{exp.path}: the corpus has no utterances")
    labels = label_list(utterances)
    corpus = utterances[0].corpus or str(exp.corpus.get("name") or Path(str(exp.corpus.get("manifest"))).stem)
    folds = experiment_folds(exp, utterances)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "experiment.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(exp.to_dict())), sort_keys=False),
                                             encoding="utf-8")
    (out_dir / "configs").mkdir(exist_ok=True)
    for name, variant in exp.variants.items():
        save_config(variant.config, out_dir / "configs" / f"{name}.yaml")
    (out_dir / "folds.json").write_text(json.dumps([f.to_dict() for f in folds], indent=1), encoding="utf-8")
    cells = plan_cells(exp, folds, out_dir)
    for cell in cells:
        check_cell(cell)
    if variants:
        unknown = [v for v in variants if v not in exp.variants]
        if unknown:
            raise ValueError(f"{exp.path}: no variant {', '.join(map(repr, unknown))}; its variants are "
                             f"{', '.join(exp.variants)}")
    pending = [c for c in cells if not c.done() and (not variants or c.variant in variants)]
    log.info("%s: %d cells (%d variants x %d seeds x %d folds), %d to run", exp.title, len(cells),
             len(exp.variants), len(exp.seeds), len(folds), len(pending))
    failed: dict[str, BaseException] = {}  # cell key -> error

    def run(batch: list[Cell]) -> None:
        failed.update(run_cells(batch, utterances, labels, cache_dir or exp.cache, corpus, jobs, progress,
                                feature_workers))

    def write_results() -> dict[str, Any]:
        anchors, anchor_notes = run_anchors(exp, utterances, folds, out_dir, compute=train, workers=feature_workers,
                                            progress=progress)
        summary = aggregate_experiment(exp, folds, cells, utterances, labels, anchors)
        summary["labels"] = labels
        results: dict[str, Any] = {
            "command": command,
            "config_path": display_path(config_path),
            "classical_notes": anchor_notes,
            "experiment": exp.to_dict(),
            "corpus": corpus,
            "n_utterances": len(utterances),
            "n_speakers": len({u.speaker for u in utterances}),
            "labels": labels,
            "folds": [f.to_dict() for f in folds],
            "cells_planned": len(cells),
            "cells_finished": len(cells) - len(summary["missing_cells"]),
            "cells_run_now": len(pending) if train else 0,
            "failed_cells": list(failed),
            "missing_cells": summary["missing_cells"],
            "wall_time_s": time.time() - t0,
            "summary": {"variants": summary["variants"]},
            "figures": [],
        }
        results["summary"]["blocks_series"] = blocks_series(exp)
        if exp.analysis is not None:
            results["analysis"] = run_analysis(exp, cells, utterances, cache_dir or exp.cache, summary,
                                               compute=train)
        results["claims"] = paper_claims(results)
        if results["cells_finished"]:
            caption = dict(command=command, config=results["config_path"])
            plot_uar_by_variant(summary, out_dir / "uar_by_variant.png", reference=exp.reference, title=exp.title,
                                **caption)
            results["figures"].append({"file": "uar_by_variant.png", "title": "UAR per variant with bootstrap CI"})
            if results["summary"]["blocks_series"]:
                plot_uar_vs_blocks(summary, {n: exp.variants[n].config.model.num_blocks
                                             for n in results["summary"]["blocks_series"]},
                                   out_dir / "uar_vs_blocks.png", title=exp.title, **caption)
                results["figures"].append({"file": "uar_vs_blocks.png", "title": "UAR vs number of MOMA blocks"})
            results["figures"] += plot_analysis(results, out_dir, **caption)
            results["attention_maps"] = plot_attention_maps(exp, cells, utterances, out_dir, compute=train,
                                                            **caption)
        tmp = out_dir / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
        os.replace(tmp, out_dir / "results.json")
        (out_dir / "report.md").write_text(render_experiment_report(results), encoding="utf-8")
        return results

    if train and pending:
        first = [c for c in pending if exp.analysis is not None and c.seed in exp.analysis.seeds]
        rest = [c for c in pending if c not in first]
        if first and rest:
            # the analysis seeds' cells first, then their analysis and a report: a grid stopped
            # part-way (or still running) already has a complete, analysed report of those seeds
            run(first)
            write_results()
            log.info("%s: analysed seeds done; %d cells of the other seeds to run", exp.title, len(rest))
            run(rest)
        else:
            run(pending)
    results = write_results()
    from moma.training.crossval import raise_failures

    raise_failures(failed, "cell", finished=results["cells_finished"])  # the report covers the others
    return results


def run_analysis(exp: Experiment, cells: Sequence[Cell], utterances: Sequence[Utterance], cache_dir: str | Path,
                 summary: dict[str, Any], *, compute: bool = True) -> dict[str, Any]:
    """Analyse every finished cell of the analysis seeds (cached per cell) and aggregate per variant."""
    spec = exp.analysis
    assert spec is not None
    targets = [c for c in cells if c.seed in spec.seeds]
    memo: dict[str, dict[str, np.ndarray]] = {}
    analyses: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    computed_now = 0
    for i, cell in enumerate(targets, 1):
        if not cell.done():
            missing.append(cell.key)
            continue
        data, parts = analyse_cell(cell, spec, utterances, cache_dir, features=memo, compute=compute)
        if parts:
            log.info("analysis %d/%d: %s (%s)", i, len(targets), cell.key, ", ".join(parts))
        computed_now += len(parts)
        if data:
            analyses[cell.key] = data
        else:
            missing.append(cell.key)
    out = aggregate_analysis(exp, cells, analyses, summary, utterances)
    out.update({"cells_analysed": len(analyses), "computed_now": computed_now, "missing": missing})
    return out

