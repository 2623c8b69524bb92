"""Analysis of finished cells: attention statistics, speaker probe and robustness of each analysed cell's best
checkpoint (cached in ``<cell>/analysis.json``), aggregated per variant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from moma.corpora.base import Utterance
from moma.data.protocols import Fold
from moma.evaluation.stats import mean_std
from moma.files import write_json_atomic
from moma.research.experiment.cells import Cell
from moma.research.experiment.spec import AnalysisSpec, Experiment

ANALYSIS_FILE = "analysis.json"
ROBUSTNESS_METRICS = ("accuracy", "uar", "macro_f1", "n", "perturbation")


def cell_checkpoint(cell: Cell) -> Path | None:
    """The best checkpoint of a finished cell (an ensemble's first member), or None."""
    for p in (cell.out_dir / "best.safetensors", cell.out_dir / f"seed{cell.seed}" / "best.safetensors"):
        if p.is_file():
            return p
    return None


def _ids_digest(ids: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:16]


def probe_utterance_ids(fold: Fold, mode: str, utterances: Sequence[Utterance]) -> list[str]:
    """The utterances a cell's speaker probe runs on (see :class:`AnalysisSpec`)."""
    if mode == "test":
        return sorted(fold.test)
    if mode == "heldout":
        return sorted(fold.test + fold.val)
    return sorted(u.id for u in utterances)


def read_cell_analysis(cell: Cell) -> dict[str, Any]:
    path = cell.out_dir / ANALYSIS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def analyse_cell(cell: Cell, spec: AnalysisSpec, utterances: Sequence[Utterance], cache_dir: str | Path, *,
                 features: dict[str, dict[str, np.ndarray]] | None = None, compute: bool = True
                 ) -> tuple[dict[str, Any], list[str]]:
    """Attention statistics, speaker probe and robustness of one finished cell's best checkpoint, cached in
    ``<cell>/analysis.json``. Returns ``(analysis, parts computed now)``.

    Each part records the settings and data it was computed with, and the whole file the SHA-1 of the
    checkpoint: a rerun recomputes only a part whose settings changed (robustness: only conditions not yet
    there), and everything when the checkpoint changed. ``compute=False`` only reads what is cached.

    Data: attention statistics on the fold's test utterances; the probe on :func:`probe_utterance_ids`;
    robustness on a label-balanced seeded subset of at most ``spec.max_utterances`` test utterances (the
    same for every variant and seed of a fold, so comparisons are paired), with babble from at most
    ``spec.babble_pool`` utterances of the fold's training and validation speakers (never a test speaker).
    ``features`` is a shared ``{feature config hash: {utterance id: raw features}}`` memo.
    """
    from moma.audio.io import file_sha1
    from moma.checkpoint import load_checkpoint
    from moma.research.attention import analyse_checkpoint
    from moma.research.robustness import evaluate_robustness, select_utterances

    path = cell.out_dir / ANALYSIS_FILE
    old = read_cell_analysis(cell)
    if not compute:
        return old, []
    ckpt = cell_checkpoint(cell)
    if ckpt is None:
        raise FileNotFoundError(f"cell {cell.key}: no best.safetensors in {cell.out_dir}")
    digest = file_sha1(ckpt)
    data: dict[str, Any] = old if old.get("checkpoint_sha1") == digest else {}
    data.update({"cell": cell.key, "checkpoint": str(ckpt), "checkpoint_sha1": digest})
    utts = {u.id: u for u in utterances}
    test = sorted(cell.fold.test)
    computed: list[str] = []
    loaded = None
    want: dict[str, dict[str, Any]] = {}
    if spec.attention:
        want["attention"] = {"utterances": _ids_digest(test), "n": len(test)}
    if spec.probe:
        pids = probe_utterance_ids(cell.fold, spec.probe_speakers, utterances)
        want["probe"] = {"speakers": spec.probe_speakers, "folds": spec.probe_folds, "seed": spec.seed,
                         "utterances": _ids_digest(pids), "n": len(pids)}
    todo = [k for k, settings in want.items() if (data.get(k) or {}).get("settings") != settings]
    if todo:
        from moma.features.cache import FeatureCache, extract_features
        from moma.features.frontend import feature_config_hash

        loaded = load_checkpoint(ckpt)
        need = set(test) | (set(probe_utterance_ids(cell.fold, spec.probe_speakers, utterances))
                            if "probe" in todo else set())
        memo = features if features is not None else {}
        h = feature_config_hash(cell.config.features)
        have = memo.setdefault(h, {})
        missing = [utts[k] for k in sorted(need) if k not in have]
        if missing:
            have.update(extract_features(missing, FeatureCache(cache_dir, cell.config.features)))
        for part in todo:
            if part == "attention":
                res = analyse_checkpoint(loaded, have, [utts[k] for k in test], attention=True, probe=False)
                data["attention"] = {"settings": want[part], "result": res["attention"]}
            else:
                pids = probe_utterance_ids(cell.fold, spec.probe_speakers, utterances)
                res = analyse_checkpoint(loaded, have, [], attention=False, probe=True,
                                         probe_utterances=[utts[k] for k in pids], probe_folds=spec.probe_folds,
                                         seed=spec.seed)
                data["probe"] = {"settings": want[part], "result": res["probe"]}
            computed.append(part)
            write_json_atomic(path, data)
    if spec.robustness:
        subset = select_utterances([utts[k] for k in test], spec.max_utterances, spec.seed)
        others = [utts[k] for k in sorted(cell.fold.train + cell.fold.val)]
        pool = select_utterances(others, spec.babble_pool, spec.seed, key="speaker")
        settings = {"utterances": [u.id for u in subset], "babble_pool": [u.id for u in pool], "seed": spec.seed,
                    "num_talkers": 4}
        rob = data.get("robustness") or {}
        if rob.get("settings") != settings:
            rob = {"settings": settings, "conditions": {}}
        new = [c for c in spec.conditions if c not in rob["conditions"]]
        if new:
            res = evaluate_robustness(loaded or ckpt, subset, new, seed=spec.seed, babble_pool=pool, num_talkers=4)
            for c in new:
                rob["conditions"][c] = {k: res[c][k] for k in ROBUSTNESS_METRICS if k in res[c]}
            computed.append("robustness")
        data["robustness"] = rob
        if new:
            write_json_atomic(path, data)
    if not path.is_file():
        write_json_atomic(path, data)
    return data, computed


def aggregate_analysis(exp: Experiment, cells: Sequence[Cell], analyses: dict[str, dict[str, Any]],
                       summary: dict[str, Any], utterances: Sequence[Utterance]) -> dict[str, Any]:
    """Per-variant analysis: every statistic as mean ± std over the analysed cells (fold x seed), with the
    per-cell values kept (keyed ``seed<k>/<fold>``) for paired comparisons between variants."""
    from moma.research.attention import speaker_bias

    spec = exp.analysis
    assert spec is not None
    genders = {u.speaker: u.gender for u in utterances}
    out: dict[str, Any] = {}
    for name in exp.variants:
        mine = [c for c in cells if c.variant == name and c.key in analyses]
        key = {c.key: f"seed{c.seed}/{c.fold.name}" for c in mine}
        entry: dict[str, Any] = {"cells_analysed": len(mine)}
        att_cells: dict[str, Any] = {}
        probe_cells: dict[str, Any] = {}
        probe_info: dict[str, Any] = {}
        rob_cells: dict[str, Any] = {}
        for c in mine:
            a = analyses[c.key]
            att = (a.get("attention") or {}).get("result")
            if att and "layer1_entropy_norm" in att:
                att_cells[key[c.key]] = {
                    "layer1": att["layer1_entropy_norm"]["mean"],
                    "layer1_nats": att["layer1_entropy"]["mean"],
                    "mixture": (att.get("mixture_entropy_norm") or {}).get("mean"),
                    "mixture_nats": (att.get("mixture_entropy") or {}).get("mean"),
                    "blocks": [b["mean"] for b in att.get("block_entropy_norm", [])],
                    "block_correlation": (att.get("block_correlation") or {}).get("mean"),
                    "gammas": [g["mean"] for g in att.get("gammas", [])]}
            pr = (a.get("probe") or {}).get("result")
            if pr and "stages" in pr:
                probe_cells[key[c.key]] = {**{s: r["accuracy_mean"] for s, r in pr["stages"].items()},
                                           "final": pr["stages"][pr["final"]]["accuracy_mean"],
                                           "chance": pr["stages"][pr["final"]]["chance"],
                                           "n_speakers": pr["stages"][pr["final"]]["n_speakers"]}
                probe_info["final_stage"] = pr["final"]
            elif pr and "skipped" in pr:
                probe_info["skipped"] = pr["skipped"]
            rob = (a.get("robustness") or {}).get("conditions") or {}
            if rob:
                row = {cond: m["uar"] for cond, m in rob.items()}
                row.update({f"{cond}:accuracy": m["accuracy"] for cond, m in rob.items()})
                if "clean" in rob and len(rob) > 1:
                    row["drop"] = float(np.mean([rob["clean"]["uar"] - m["uar"] for cond, m in rob.items()
                                                 if cond != "clean"]))
                rob_cells[key[c.key]] = row
        if att_cells:
            vals = list(att_cells.values())
            n_blocks = max(len(v["blocks"]) for v in vals)
            entry["attention"] = {
                "cells": att_cells,
                "layer1": mean_std([v["layer1"] for v in vals]),
                "layer1_nats": mean_std([v["layer1_nats"] for v in vals]),
                "mixture": mean_std([v["mixture"] for v in vals]),
                "mixture_nats": mean_std([v["mixture_nats"] for v in vals]),
                "blocks": [mean_std([v["blocks"][i] for v in vals if len(v["blocks"]) > i]) for i in range(n_blocks)],
                "block_correlation": mean_std([v["block_correlation"] for v in vals]),
                "gammas": [mean_std([v["gammas"][i] for v in vals if len(v["gammas"]) > i])
                           for i in range(max((len(v["gammas"]) for v in vals), default=0))]}
        if probe_cells:
            stages = [s for s in ("encoder", "layer1", "pooled", "embedding", "final", "chance")
                      if any(s in v for v in probe_cells.values())]
            entry["probe"] = {"cells": probe_cells, "final_stage": probe_info.get("final_stage"),
                              "stages": {s: mean_std([v.get(s) for v in probe_cells.values()]) for s in stages},
                              "n_speakers": mean_std([v["n_speakers"] for v in probe_cells.values()])}
        elif "skipped" in probe_info:
            entry["probe"] = {"skipped": probe_info["skipped"]}
        if rob_cells:
            conds = [c for c in spec.conditions if any(c in v for v in rob_cells.values())]
            entry["robustness"] = {"cells": rob_cells,
                                   "conditions": {c: {"uar": mean_std([v.get(c) for v in rob_cells.values()]),
                                                      "accuracy": mean_std([v.get(f"{c}:accuracy")
                                                                        for v in rob_cells.values()])}
                                                  for c in conds},
                                   "drop": mean_std([v.get("drop") for v in rob_cells.values()])}
        # per-speaker UAR over every finished cell (all seeds): each speaker's UAR averaged over seeds
        per_spk: dict[str, list[float]] = {}
        for row in summary["variants"][name]["cells"]:
            for spk, m in (row.get("per_speaker") or {}).items():
                per_spk.setdefault(spk, []).append(float(m["uar"]))
        if per_spk:
            entry["speaker_bias"] = speaker_bias({s: {"uar": float(np.mean(v))} for s, v in per_spk.items()},
                                                 genders)
        out[name] = entry
    # the classical anchors' per-speaker spread, from their fold results (no checkpoints to analyse)
    anchors = {}
    for name, v in summary["variants"].items():
        if v.get("kind") == "classical":
            per = {spk: {"uar": float(m["uar"])} for row in v["cells"] for spk, m in (row.get("per_speaker") or {}).items()}
            if per:
                anchors[name] = {"speaker_bias": speaker_bias(per, genders)}
    return {"spec": spec.to_dict(), "variants": out, "anchors": anchors}

