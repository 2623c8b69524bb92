"""Cells: one (variant, seed, fold) each, planned, checked against what their folder already holds, and trained."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from moma.config import RunConfig, config_to_dict, drop_removed_options, merge_overrides, replace
from moma.corpora.base import Utterance
from moma.data.protocols import Fold
from moma.research.experiment.spec import Experiment

log = logging.getLogger(__name__)

# runtime knobs that do not change what a cell computes: a finished cell stays valid when they change
RUNTIME_KEYS = {("train", "num_threads"), ("train", "device"), ("train", "log_every"), ("train", "tensorboard"),
                ("data", "num_workers")}


@dataclass
class Cell:
    variant: str
    seed: int
    fold: Fold
    config: RunConfig  # the variant's config with train.seed = seed
    out_dir: Path

    @property
    def key(self) -> str:
        return f"{self.variant}/seed{self.seed}/{self.fold.name}"

    @property
    def result_path(self) -> Path:
        return self.out_dir / "result.json"

    def done(self) -> bool:
        return self.result_path.is_file()


def config_signature(cfg: RunConfig) -> dict[str, Any]:
    """A config as a cell's identity: its dict without :data:`RUNTIME_KEYS` (stamped in ``cell.json``)."""
    d = config_to_dict(cfg)
    for section, key in RUNTIME_KEYS:
        d.get(section, {}).pop(key, None)
    return d


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def plan_cells(exp: Experiment, folds: Sequence[Fold], out_dir: str | Path) -> list[Cell]:
    """Every (variant, seed, fold) cell, seed-major so that early partial results cover all variants."""
    out_dir = Path(out_dir)
    cells = []
    for seed in exp.seeds:
        for name, variant in exp.variants.items():
            cfg = replace(variant.config, train=replace(variant.config.train, seed=seed))
            for fold in folds:
                cells.append(Cell(name, seed, fold, cfg, out_dir / "cells" / name / f"seed{seed}" / fold.name))
    return cells


def config_differences(stamped: dict[str, Any], cfg: RunConfig) -> list[str]:
    """The keys (``section.key``) in which ``cfg`` differs from a config a run was stamped with, runtime keys
    aside. An option added to the config after that run is absent from its stamp; the run had that option's
    default (a new option's default keeps the old behaviour), so the stamp is read over the defaults; an option
    removed since is dropped at its "off" value and refused at any other (moma.config.REMOVED_OPTIONS)."""
    old = merge_overrides(config_signature(RunConfig()), drop_removed_options(stamped or {}))
    for section, key in RUNTIME_KEYS:
        old.get(section, {}).pop(key, None)
    return _diff_keys(old, config_signature(cfg))


def check_cell(cell: Cell) -> None:
    """Refuse a cell folder that was computed (or started) with another configuration or fold."""
    stamp = cell.out_dir / "cell.json"
    if not stamp.is_file():
        return
    old = json.loads(stamp.read_text(encoding="utf-8"))
    diff = config_differences(old.get("config") or {}, cell.config)
    if old.get("fold") != cell.fold.to_dict():
        diff.append("fold (speakers)")
    if diff:
        raise ValueError(f"cell {cell.key} in {cell.out_dir} was run with a different configuration "
                         f"(differs in: {', '.join(diff)}); use a new --out folder or delete that cell folder")


def _stamp_cell(cell: Cell) -> None:
    cell.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = cell.out_dir / "cell.json"
    if not stamp.is_file():
        stamp.write_text(json.dumps({"variant": cell.variant, "seed": cell.seed, "fold": cell.fold.to_dict(),
                                     "config": config_signature(cell.config)}, indent=1), encoding="utf-8")


def run_cells(cells: Sequence[Cell], utterances: Sequence[Utterance], labels: list[str], cache_dir: str | Path,
              corpus: str, jobs: int, progress: bool, feature_workers: int) -> dict[str, BaseException]:
    """Train the given (unfinished) cells, ``jobs`` at a time; returns ``{cell key: error}`` of the cells that
    failed. A failing cell does not stop the others (see :func:`moma.training.crossval.run_in_pool`)."""
    from moma.features.cache import FeatureCache, extract_features
    from moma.features.frontend import feature_config_hash
    from moma.features.functionals import extract_run_functionals, functionals_key
    from moma.training.crossval import FoldJob, run_in_pool

    utts = {u.id: u for u in utterances}
    features_by_hash: dict[str, dict[str, np.ndarray]] = {}
    functionals: dict[tuple[str, float], dict[str, np.ndarray] | None] = {}  # by functionals_key; None for none
    for cell in cells:  # one extraction per distinct feature configuration, frames and functionals alike
        h = feature_config_hash(cell.config.features)
        if h not in features_by_hash:
            cache = FeatureCache(cache_dir, cell.config.features)
            features_by_hash[h] = extract_features(list(utterances), cache, workers=feature_workers,
                                                   progress=progress)
        key = functionals_key(cell.config.features)
        if key not in functionals:
            functionals[key] = extract_run_functionals(cell.config.features, list(utterances), cache_dir,
                                                       workers=feature_workers, progress=progress)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    jobs_list = []
    for cell in cells:
        cfg = cell.config
        if jobs > 1 and cfg.train.num_threads == 0:
            cfg = replace(cfg, train=replace(cfg.train, num_threads=threads))
        _stamp_cell(cell)
        jobs_list.append(FoldJob(cfg, cell.fold, features_by_hash[feature_config_hash(cfg.features)], utts, labels,
                                 cell.out_dir, True, progress and jobs == 1, corpus,
                                 functionals=functionals[functionals_key(cfg.features)]))
    _, failures = run_in_pool(jobs_list, jobs, [c.key for c in cells], what="cell")
    return failures
