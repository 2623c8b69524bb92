"""Experiment grids: model variants x seeds x folds, on identical folds, with statistics and figures.

``moma experiment CONFIG.yaml --out DIR`` (see :func:`run_experiment`) reads an
experiment file (format below), trains every *cell* (one variant, one seed,
one fold) with :func:`moma.crossval.run_fold` in
``DIR/cells/<variant>/seed<k>/<fold>/`` and writes into ``DIR``:

* ``results.json``: every number (per cell, per seed, per variant, tests);
* ``report.md``: the side-by-side table, the paired comparisons and figures;
* ``uar_by_variant.png``, ``uar_vs_blocks.png``: each carries the command and
  config that made it;
* ``experiment.yaml`` (the experiment file as resolved), ``configs/<variant>.yaml``
  (each variant's resolved :class:`~moma.config.RunConfig`) and ``folds.json``.

A finished cell (its ``result.json`` exists) is never recomputed and an
unfinished one resumes from its last checkpoint, so a killed grid picks up
where it stopped. Each cell records the configuration it ran with
(``cell.json``); rerunning into the same folder with a changed configuration
is refused rather than silently mixing results.

Experiment file (YAML)::

    title: EmoDB Table 1
    corpus: {manifest: runs/emodb.jsonl}   # or {name: emodb, root: DIR, label_map: default}
    protocol: {name: loso}                 # + k, seed, test_session, test_speakers
    base: [emodb-cpu]                      # recipes / YAML files applied first, in order
    set: [train.max_epochs=40]             # overrides for every variant
    seeds: [0, 1, 2]                       # train.seed of each repetition
    reference: moma-3                      # the variant the paired tests compare against
    cache: cache/features                  # feature cache (optional)
    bootstrap: 1000                        # bootstrap resamples (optional)
    alpha: 0.05                            # significance level (optional)
    variants:
      mean:   {set: [model.arch=mean]}
      moma-3: {}                           # base + set as they are
      ...

Each variant may also hold ``base`` (more recipes, after the experiment's),
``label`` (display name) and ``note``. Relative paths are looked up from the
current directory first, then from the experiment file's folder.

Statistics (per variant): accuracy, UAR and macro-F1 are averaged over folds
for each seed, then reported as mean ± std over seeds. For the confidence
interval each utterance's posteriors are averaged over seeds (every utterance
is tested exactly once per seed) and the UAR of these pooled predictions gets a
percentile bootstrap CI over utterances. The paired tests compare the
reference's UAR with each other variant's on matched (seed, fold) cells.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .config import RunConfig, config_to_dict, load_run_config, replace, save_config
from .corpora.base import Utterance, label_list
from .evaluate import PAPER_NAMING_NOTE, compute_metrics, mean_std
from .plots import save_figure
from .protocols import PROTOCOLS, Fold, make_folds, validate_fold
from .stats import bootstrap_ci, paired_bootstrap_diff, paired_test

log = logging.getLogger(__name__)

DEFAULT_CACHE = "cache/features"
METRIC_NAMES = ("accuracy", "uar", "macro_f1")
TOP_KEYS = {"title", "corpus", "protocol", "base", "set", "seeds", "reference", "variants", "cache", "bootstrap",
            "alpha", "notes"}
VARIANT_KEYS = {"set", "base", "label", "note"}
CORPUS_KEYS = {"manifest", "name", "root", "label_map"}
PROTOCOL_KEYS = {"name", "k", "seed", "test_session", "test_speakers"}
# runtime knobs that do not change what a cell computes: a finished cell stays valid when they change
RUNTIME_KEYS = {("train", "num_threads"), ("train", "device"), ("train", "log_every"), ("train", "tensorboard"),
                ("data", "num_workers")}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- the experiment file

@dataclass
class Variant:
    name: str
    config: RunConfig  # resolved, seed not yet applied
    sets: list[str] = field(default_factory=list)  # the variant's own overrides, as written
    bases: list[str] = field(default_factory=list)
    label: str = ""
    note: str = ""


@dataclass
class Experiment:
    path: Path  # the experiment file
    title: str
    corpus: dict[str, Any]
    protocol: dict[str, Any]
    seeds: list[int]
    reference: str
    variants: dict[str, Variant]
    base: list[str]
    sets: list[str]  # experiment-wide overrides (YAML ``set`` then the command line's ``--set``)
    cache: str = DEFAULT_CACHE
    bootstrap: int = 1000
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment, as written to ``experiment.yaml``."""
        return {
            "title": self.title, "source": str(self.path), "corpus": self.corpus, "protocol": self.protocol,
            "base": self.base, "set": self.sets, "seeds": self.seeds, "reference": self.reference,
            "cache": self.cache, "bootstrap": self.bootstrap, "alpha": self.alpha, "notes": self.notes,
            "variants": {n: {"label": v.label, "base": v.bases, "set": v.sets, "note": v.note}
                         for n, v in self.variants.items()},
        }


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return [str(v) for v in value]
    raise ValueError(f"{where}: expected a list of strings, got {value!r}")


def _check_keys(data: Any, known: set[str], where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return data


def _find_path(value: str, base_dir: Path) -> Path:
    """A relative path as found from the current directory, else from the experiment file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = base_dir / p
    return alt if alt.exists() else p


def _resolve_base(item: str, base_dir: Path) -> Path:
    from .recipes import resolve_recipe

    p = _find_path(item, base_dir)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    return resolve_recipe(item)


def load_experiment(path: str | Path, extra_sets: Sequence[str] = ()) -> Experiment:
    """Read and validate an experiment file; every variant's config is resolved (unknown options fail here).

    ``extra_sets`` (the command line's ``--set``) apply to every variant after
    the variant's own overrides. Raises :class:`ValueError` naming the file and
    the offending key, variant or option.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    data = _check_keys(raw, TOP_KEYS, str(path))
    base_dir = path.resolve().parent
    corpus = dict(_check_keys(data.get("corpus"), CORPUS_KEYS, f"{path}: corpus"))
    if ("manifest" in corpus) == ("name" in corpus):
        raise ValueError(f"{path}: corpus needs either 'manifest' or 'name' (with 'root')")
    if "name" in corpus and "root" not in corpus:
        raise ValueError(f"{path}: corpus {corpus['name']!r} needs 'root'")
    protocol = dict(_check_keys(data.get("protocol") or {"name": "loso"}, PROTOCOL_KEYS, f"{path}: protocol"))
    protocol.setdefault("name", "loso")
    if protocol["name"] not in PROTOCOLS or protocol["name"] == "all":
        raise ValueError(f"{path}: protocol {protocol['name']!r} must be one of "
                         f"{', '.join(p for p in PROTOCOLS if p != 'all')}")
    for key in ("k", "seed"):
        if key in protocol and not isinstance(protocol[key], int):
            raise ValueError(f"{path}: protocol.{key} must be an integer, got {protocol[key]!r}")
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds) or len(set(seeds)) != len(seeds)):
        raise ValueError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    base = _as_list(data.get("base"), f"{path}: base")
    sets = _as_list(data.get("set"), f"{path}: set") + list(extra_sets)
    base_paths = [_resolve_base(b, base_dir) for b in base]
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, dict) or not raw_variants:
        raise ValueError(f"{path}: 'variants' must be a non-empty mapping of name -> {{set: [...]}}")
    variants: dict[str, Variant] = {}
    for name, spec in raw_variants.items():
        name = str(name)
        if not _NAME_RE.match(name):
            raise ValueError(f"{path}: variant name {name!r} must be letters, digits, '.', '_' or '-' "
                             "(it names a folder)")
        spec = _check_keys(spec, VARIANT_KEYS, f"{path}: variant {name}")
        v_base = _as_list(spec.get("base"), f"{path}: variant {name}: base")
        v_sets = _as_list(spec.get("set"), f"{path}: variant {name}: set")
        try:
            cfg = load_run_config(base_paths + [_resolve_base(b, base_dir) for b in v_base],
                                  _as_list(data.get("set"), "set") + v_sets + list(extra_sets))
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"{path}: variant {name}: {exc}") from None
        variants[name] = Variant(name, cfg, v_sets, v_base, str(spec.get("label") or name), str(spec.get("note") or ""))
    reference = data.get("reference")
    if reference is None:
        reference = next((n for n, v in variants.items() if v.config.model.arch == "moma"), next(iter(variants)))
    reference = str(reference)
    if reference not in variants:
        raise ValueError(f"{path}: reference {reference!r} is not a variant ({', '.join(variants)})")
    val = {v.config.train.val_speakers for v in variants.values()}
    if len(val) > 1:
        raise ValueError(f"{path}: variants differ in train.val_speakers ({sorted(val)}); every variant must "
                         "use identical folds, so set it experiment-wide")
    bootstrap = data.get("bootstrap", 1000)
    alpha = data.get("alpha", 0.05)
    if not isinstance(bootstrap, int) or bootstrap < 1:
        raise ValueError(f"{path}: bootstrap must be a positive integer, got {bootstrap!r}")
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"{path}: alpha must be in (0, 1), got {alpha!r}")
    return Experiment(path=path, title=str(data.get("title") or path.stem), corpus=corpus, protocol=protocol,
                      seeds=list(seeds), reference=reference, variants=variants, base=base, sets=sets,
                      cache=str(data.get("cache") or DEFAULT_CACHE), bootstrap=bootstrap, alpha=float(alpha),
                      notes=_as_list(data.get("notes"), f"{path}: notes"), raw=data)


def load_corpus(exp: Experiment, progress: bool = False) -> list[Utterance]:
    """The experiment's utterances: a manifest, or a corpus prepared from its folder."""
    base_dir = exp.path.resolve().parent
    if "manifest" in exp.corpus:
        from .corpora.base import read_manifest

        return read_manifest(_find_path(str(exp.corpus["manifest"]), base_dir))
    from .corpora import prepare_corpus

    return prepare_corpus(str(exp.corpus["name"]), _find_path(str(exp.corpus["root"]), base_dir),
                          label_map=exp.corpus.get("label_map", "default"), progress=progress)


def experiment_folds(exp: Experiment, utterances: Sequence[Utterance]) -> list[Fold]:
    """The protocol's folds, identical for every variant and seed (seeded by ``protocol.seed``, default 0)."""
    p = exp.protocol
    first = next(iter(exp.variants.values())).config
    folds = make_folds(utterances, p["name"], val_speakers=first.train.val_speakers, k=int(p.get("k", 5)),
                       seed=int(p.get("seed", 0)), test_session=p.get("test_session"),
                       test_speakers=p.get("test_speakers"))
    for fold in folds:
        validate_fold(fold, utterances)
    return folds


# --------------------------------------------------------------------------- cells

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


def _signature(cfg: RunConfig) -> dict[str, Any]:
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


def check_cell(cell: Cell) -> None:
    """Refuse a cell folder that was computed (or started) with another configuration or fold."""
    stamp = cell.out_dir / "cell.json"
    if not stamp.is_file():
        return
    old = json.loads(stamp.read_text(encoding="utf-8"))
    diff = _diff_keys(old.get("config"), _signature(cell.config))
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
                                     "config": _signature(cell.config)}, indent=1), encoding="utf-8")


def _run_cells(cells: Sequence[Cell], utterances: Sequence[Utterance], labels: list[str], cache_dir: str | Path,
               corpus: str, jobs: int, progress: bool, feature_workers: int) -> list[str]:
    """Train the given (unfinished) cells; returns the keys of cells that failed."""
    from .crossval import FoldJob, _run_fold_in_subprocess, run_fold
    from .features import FeatureCache, extract_features, feature_config_hash

    utts = {u.id: u for u in utterances}
    features_by_hash: dict[str, dict[str, np.ndarray]] = {}
    for cell in cells:  # one extraction per distinct feature configuration
        h = feature_config_hash(cell.config.features)
        if h not in features_by_hash:
            cache = FeatureCache(cache_dir, cell.config.features)
            features_by_hash[h] = extract_features(list(utterances), cache, workers=feature_workers,
                                                   progress=progress)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    jobs_list = []
    for cell in cells:
        cfg = cell.config
        if jobs > 1 and cfg.train.num_threads == 0:
            cfg = replace(cfg, train=replace(cfg.train, num_threads=threads))
        _stamp_cell(cell)
        jobs_list.append(FoldJob(cfg, cell.fold, features_by_hash[feature_config_hash(cfg.features)], utts, labels,
                                 cell.out_dir, True, progress and jobs == 1, corpus))
    failed: list[str] = []
    if jobs > 1 and len(jobs_list) > 1:
        import multiprocessing as mp

        # spawn, not fork: forking a process whose OpenMP pool is running can deadlock
        with ProcessPoolExecutor(max_workers=min(jobs, len(jobs_list)), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_fold_in_subprocess, job): cell for job, cell in zip(jobs_list, cells)}
            for i, fut in enumerate(as_completed(futures), 1):
                cell = futures[fut]
                try:
                    fut.result()
                    log.info("cell %d/%d done: %s", i, len(cells), cell.key)
                except Exception as exc:  # noqa: BLE001 - the other cells keep running; reported below
                    log.error("cell %s failed: %s", cell.key, exc)
                    failed.append(cell.key)
    else:
        for i, (job, cell) in enumerate(zip(jobs_list, cells), 1):
            log.info("cell %d/%d: %s", i, len(cells), cell.key)
            run_fold(job)  # serial: an error stops the grid at once (finished cells stay finished)
    return failed


# --------------------------------------------------------------------------- aggregation

def _read_result(cell: Cell) -> dict[str, Any] | None:
    if not cell.done():
        return None
    return json.loads(cell.result_path.read_text(encoding="utf-8"))


def _describe(cfg: RunConfig) -> str:
    from .crossval import describe_model

    return re.sub(r", seed -?\d+$", "", describe_model(cfg))


def aggregate_experiment(exp: Experiment, folds: Sequence[Fold], cells: Sequence[Cell],
                         utterances: Sequence[Utterance], labels: Sequence[str]) -> dict[str, Any]:
    """Per-variant statistics from the finished cells (partial grids are aggregated over what finished)."""
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
            mean, std = mean_std(s[m] for s in per_seed)
            entry[m] = {"mean": mean, "std": std, "seeds": len(per_seed)}
        if post_sum:
            ids = sorted(post_sum)
            y_true = [index[utts[i].label] for i in ids]
            y_pred = [int(np.argmax(post_sum[i] / post_n[i])) for i in ids]
            pooled = compute_metrics(y_true, y_pred, labels)
            ci = bootstrap_ci(y_true, y_pred, "uar", n=exp.bootstrap, seed=0, level=1 - exp.alpha)
            entry["pooled"] = {"n": pooled["n"], **{m: pooled[m] for m in METRIC_NAMES},
                               "seeds_averaged": int(max(post_n.values())),
                               "per_class_recall": pooled["per_class_recall"], "confusion": pooled["confusion"],
                               "uar_ci": ci.to_dict()}
            pooled_pred[name] = dict(zip(ids, y_pred))
        uar_of[name] = {(r["seed"], r["fold"]): r["uar"] for r in rows}
        per_variant[name] = entry
    ref = exp.reference
    for name, entry in per_variant.items():
        if name == ref:
            continue
        common = sorted(set(uar_of[ref]) & set(uar_of[name]))
        if not common:
            entry["vs_reference"] = None
            continue
        test = paired_test([uar_of[ref][k] for k in common], [uar_of[name][k] for k in common])
        test["reference"] = ref
        test["pairs"] = "fold x seed UAR (reference - variant)"
        ids = sorted(set(pooled_pred.get(ref, {})) & set(pooled_pred.get(name, {})))
        if ids:
            diff = paired_bootstrap_diff([index[utts[i].label] for i in ids], [pooled_pred[ref][i] for i in ids],
                                         [pooled_pred[name][i] for i in ids], "uar", n=exp.bootstrap, seed=0,
                                         level=1 - exp.alpha)
            test["pooled_uar_diff_ci"] = diff.to_dict()
        entry["vs_reference"] = test
    return {"variants": per_variant, "missing_cells": missing}


# --------------------------------------------------------------------------- figures and report

def _pyplot():
    from .plots import _pyplot as plots_pyplot

    return plots_pyplot()


def _caption(fig, command: str, config: str) -> None:
    text = f"made by: {command}\nconfig: {config}"
    fig.text(0.01, 0.01, "\n".join(textwrap.fill(line, 130) for line in text.splitlines()), fontsize=6,
             family="monospace", va="bottom", ha="left", color="0.3")


def plot_uar_by_variant(summary: dict[str, Any], out_path: Path, *, reference: str, command: str, config: str,
                        title: str) -> Path:
    """Pooled UAR with its bootstrap CI per variant, plus mean ± std over seeds of the fold-mean UAR."""
    plt = _pyplot()
    names = list(summary["variants"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    for i, n in enumerate(names):
        v = summary["variants"][n]
        color = "tab:red" if n == reference else "tab:blue"
        if v.get("pooled"):
            ci = v["pooled"]["uar_ci"]
            ax.errorbar(i - 0.12, ci["estimate"], yerr=[[ci["estimate"] - ci["low"]], [ci["high"] - ci["estimate"]]],
                        fmt="o", color=color, capsize=4, label="pooled UAR, bootstrap CI" if i == 0 else None)
        if v["uar"]["seeds"]:
            ax.errorbar(i + 0.12, v["uar"]["mean"], yerr=v["uar"]["std"], fmt="s", color=color, alpha=0.5,
                        capsize=3, label="fold-mean UAR, mean ± std over seeds" if i == 0 else None)
    chance = 1.0 / max(1, len(summary.get("labels", [])) or 1)
    ax.axhline(chance, color="0.6", ls=":", lw=1, label="chance")
    ax.set_xticks(x, [summary["variants"][n]["label"] for n in names], rotation=30, ha="right")
    ax.set_ylabel("UAR")
    ax.set_title(f"{title}: UAR per variant (red: reference)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _caption(fig, command, config)
    return save_figure(fig, out_path)


def blocks_series(exp: Experiment) -> list[str]:
    """MOMA variants that differ from the reference (or each other) only in ``model.num_blocks``, by blocks."""
    moma = [n for n, v in exp.variants.items() if v.config.model.arch == "moma"]
    if not moma:
        return []
    anchor = exp.reference if exp.reference in moma else moma[0]

    def key(n: str) -> dict[str, Any]:
        d = _signature(exp.variants[n].config)
        d["model"].pop("num_blocks", None)
        return d

    same = [n for n in moma if key(n) == key(anchor)]
    return sorted(same, key=lambda n: exp.variants[n].config.model.num_blocks)


def plot_uar_vs_blocks(exp: Experiment, summary: dict[str, Any], out_path: Path, *, command: str,
                       config: str) -> Path:
    """UAR against the number of MOMA blocks; other variants as horizontal reference lines."""
    plt = _pyplot()
    series = blocks_series(exp)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    xs, ys, es, lo, hi = [], [], [], [], []
    for n in series:
        v = summary["variants"][n]
        if not v["uar"]["seeds"]:
            continue
        xs.append(exp.variants[n].config.model.num_blocks)
        ys.append(v["uar"]["mean"])
        es.append(v["uar"]["std"])
        ci = (v.get("pooled") or {}).get("uar_ci")
        lo.append(ci["low"] if ci else np.nan)
        hi.append(ci["high"] if ci else np.nan)
    if xs:
        ax.errorbar(xs, ys, yerr=es, fmt="o-", color="tab:red", capsize=4, label="MOMA: mean ± std over seeds")
        ax.fill_between(xs, lo, hi, color="tab:red", alpha=0.12, label="pooled UAR bootstrap CI")
        ax.set_xticks(sorted(set(xs)))
    colors = iter(["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray", "tab:olive",
                   "tab:cyan", "tab:pink"])
    for n, v in summary["variants"].items():
        if n in series or not v["uar"]["seeds"]:
            continue
        ax.axhline(v["uar"]["mean"], ls="--", lw=1, color=next(colors, "0.5"), label=f"{v['label']}")
    ax.set_xlabel("number of MOMA blocks (model.num_blocks)")
    ax.set_ylabel("UAR (fold mean)")
    ax.set_title(f"{exp.title}: UAR vs number of blocks", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _caption(fig, command, config)
    return save_figure(fig, out_path)


def _ms(d: dict[str, Any]) -> str:
    if not d or not d.get("seeds"):
        return "–"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def _p(x: float | None) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.1e}"


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def verdict(name: str, ref: str, summary: dict[str, Any], alpha: float) -> str:
    """One sentence: does the reference beat this variant, by a margin outside the CI / significantly?"""
    v = summary["variants"][name]
    r = summary["variants"][ref]
    t = v.get("vs_reference")
    if not t:
        return f"- **{ref} vs {v['label']}**: no matched finished cells yet; nothing to compare."
    d = t["mean_diff"]
    sig = not np.isnan(t["permutation_p"]) and t["permutation_p"] < alpha
    dci = t.get("pooled_uar_diff_ci")
    ci_excl = bool(dci and (dci["low"] > 0 or dci["high"] < 0))
    ref_ci = (r.get("pooled") or {}).get("uar_ci")
    v_uar = (v.get("pooled") or {}).get("uar")
    outside = (ref_ci is not None and v_uar is not None and not (ref_ci["low"] <= v_uar <= ref_ci["high"]))
    direction = "higher" if d > 0 else "lower" if d < 0 else "equal"
    stats = (f"mean UAR difference {d:+.3f} over {t['n']} fold×seed pairs ({t['wins']} wins, {t['losses']} losses); "
             f"sign-flip p = {_p(t['permutation_p'])}, Wilcoxon p = {_p(t['wilcoxon_p'])}")
    if dci:
        stats += (f"; paired bootstrap {100 * (1 - alpha):.0f}% CI of the pooled UAR difference "
                  f"[{dci['low']:+.3f}, {dci['high']:+.3f}]")
    if ref_ci is not None and v_uar is not None:
        stats += (f"; {v['label']}'s pooled UAR {v_uar:.3f} is {'outside' if outside else 'inside'} "
                  f"{ref}'s CI [{ref_ci['low']:.3f}, {ref_ci['high']:.3f}]")
    if d > 0 and sig and ci_excl:
        head = f"{ref} beats {v['label']}: significant at α = {alpha:g} and the difference's CI excludes 0"
    elif d > 0 and (sig or ci_excl):
        head = (f"{ref} is {direction} than {v['label']}, but the evidence is mixed "
                f"({'paired test significant' if sig else 'paired test not significant'}, "
                f"{'CI excludes 0' if ci_excl else 'CI includes 0'})")
    elif d > 0:
        head = f"{ref} is {direction} than {v['label']} but not significantly: the difference is within the noise"
    elif d < 0 and sig and ci_excl:
        head = f"{ref} is significantly worse than {v['label']}"
    elif d < 0:
        head = f"{ref} is {direction} than {v['label']}, not significantly so" + (
            " by the paired test" if not sig else " (CI includes 0)")
    else:
        head = f"{ref} and {v['label']} have the same mean fold×seed UAR"
    return f"- **{ref} vs {v['label']}**: {head} ({stats})."


def render_experiment_report(results: dict[str, Any]) -> str:
    exp = results["experiment"]
    summary = results["summary"]
    ref = exp["reference"]
    alpha = exp["alpha"]
    level = f"{100 * (1 - alpha):.0f}%"
    seeds = exp["seeds"]
    lines = [f"# {exp['title']}", "", "Made by:", "", "```", results["command"], "```", "",
             f"Experiment config: `{results['config_path']}` (resolved copy: `experiment.yaml`; each variant's "
             "full config: `configs/<variant>.yaml`).", "",
             f"- Corpus: {results['corpus']} ({results['n_utterances']} utterances, {results['n_speakers']} speakers), "
             f"labels: {', '.join(results['labels'])}",
             f"- Protocol: {exp['protocol']['name']}, {len(results['folds'])} folds, identical for every variant and "
             "seed (`folds.json`); validation speakers come from training speakers only",
             f"- Seeds: {', '.join(str(s) for s in seeds)}; reference for the paired tests: **{ref}**",
             f"- Cells: {results['cells_finished']} of {results['cells_planned']} finished; "
             f"wall time of this invocation {results['wall_time_s']:.0f} s", "",
             f"> {PAPER_NAMING_NOTE}", ""]
    if len(seeds) < 3:
        lines += [f"> **Only {len(seeds)} seed(s)**: the ± std over seeds is not a reliable spread (use >= 3).", ""]
    if results["missing_cells"]:
        shown = ", ".join(results["missing_cells"][:12]) + (" ..." if len(results["missing_cells"]) > 12 else "")
        lines += [f"> **Partial grid**: {len(results['missing_cells'])} cell(s) not finished ({shown}); numbers are "
                  "over the finished cells only. Rerun the same command to complete it.", ""]
    lines += ["## Results", "",
              f"| variant | params | accuracy | UAR | macro-F1 | UAR {level} CI (pooled) | ΔUAR vs {ref} "
              "| p (sign-flip / Wilcoxon) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        ci = (v.get("pooled") or {}).get("uar_ci")
        ci_text = f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "–"
        t = v.get("vs_reference")
        if name == ref:
            delta, ptxt = "(reference)", ""
        elif t:
            delta, ptxt = f"{0.0 - t['mean_diff']:+.3f}", f"{_p(t['permutation_p'])} / {_p(t['wilcoxon_p'])}"
        else:
            delta, ptxt = "–", ""
        label = f"**{v['label']}**" if name == ref else v["label"]
        lines.append(f"| {label} | {_params(v['parameters'])} | {_ms(v['accuracy'])} | {_ms(v['uar'])} | "
                     f"{_ms(v['macro_f1'])} | {ci_text} | {delta} | {ptxt} |")
    lines += ["", f"Accuracy (the paper's \"UA\"), UAR (the paper's \"WA\") and macro-F1: mean ± std over seeds of "
              "the per-seed mean over folds. UAR CI: each utterance's posteriors averaged over seeds, UAR of those "
              f"pooled predictions, {exp['bootstrap']} bootstrap resamples of utterances (percentile). "
              f"ΔUAR: variant − {ref}, mean over matched fold×seed cells; p: two-sided paired tests on those "
              "per-cell UARs (sign-flip permutation, Wilcoxon signed-rank).", "",
              f"## {ref} against each other variant", ""]
    for name in summary["variants"]:
        if name != ref:
            lines.append(verdict(name, ref, summary, alpha))
    lines += ["", "## Variants", "", "| variant | overrides | model |", "|---|---|---|"]
    for name, v in summary["variants"].items():
        over = ", ".join(f"`{s}`" for s in (v["base"] + v["set"])) or "(experiment defaults)"
        lines.append(f"| {v['label']} | {over} | {v['description']}{'; ' + v['note'] if v['note'] else ''} |")
    if exp["set"] or exp["base"]:
        lines += ["", "Applied to every variant first: " + ", ".join(f"`{s}`" for s in exp["base"] + exp["set"])]
    lines += ["", "## Per seed (UAR, mean over folds)", "",
              "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, v in summary["variants"].items():
        by = {s["seed"]: s for s in v["per_seed"]}
        lines.append(f"| {v['label']} | " + " | ".join(f"{by[s]['uar']:.3f}" if s in by else "–" for s in seeds)
                     + " |")
    lines += ["", "## Figures", ""]
    for fig in results["figures"]:
        lines += [f"![{fig['title']}]({fig['file']})", "",
                  f"*{fig['title']}.* Made by `{results['command']}` from `{results['config_path']}`.", ""]
    for note in exp.get("notes", []):
        lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- the whole run

def run_experiment(config_path: str | Path, out_dir: str | Path | None = None, *, jobs: int = 1,
                   cache_dir: str | Path | None = None, sets: Sequence[str] = (), command: str | None = None,
                   progress: bool = False, feature_workers: int = 1, train: bool = True) -> dict[str, Any]:
    """Run (or resume) every cell of the experiment, then write results.json, report.md and the figures.

    ``train=False`` only aggregates the cells that have finished (a report of a
    grid still running elsewhere). Returns the content of ``results.json``.
    """
    t0 = time.time()
    exp = load_experiment(config_path, sets)
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
    pending = [c for c in cells if not c.done()]
    log.info("%s: %d cells (%d variants x %d seeds x %d folds), %d to run", exp.title, len(cells),
             len(exp.variants), len(exp.seeds), len(folds), len(pending))
    failed: list[str] = []
    if train and pending:
        failed = _run_cells(pending, utterances, labels, cache_dir or exp.cache, corpus, jobs, progress,
                            feature_workers)
    summary = aggregate_experiment(exp, folds, cells, utterances, labels)
    summary["labels"] = labels
    results: dict[str, Any] = {
        "command": command,
        "config_path": str(config_path),
        "experiment": exp.to_dict(),
        "corpus": corpus,
        "n_utterances": len(utterances),
        "n_speakers": len({u.speaker for u in utterances}),
        "labels": labels,
        "folds": [f.to_dict() for f in folds],
        "cells_planned": len(cells),
        "cells_finished": len(cells) - len(summary["missing_cells"]),
        "cells_run_now": len(pending) if train else 0,
        "failed_cells": failed,
        "missing_cells": summary["missing_cells"],
        "wall_time_s": time.time() - t0,
        "summary": {"variants": summary["variants"]},
        "figures": [],
    }
    if results["cells_finished"]:
        caption = dict(command=command, config=str(config_path))
        plot_uar_by_variant(summary, out_dir / "uar_by_variant.png", reference=exp.reference, title=exp.title,
                            **caption)
        results["figures"].append({"file": "uar_by_variant.png", "title": "UAR per variant with bootstrap CI"})
        if blocks_series(exp):
            plot_uar_vs_blocks(exp, summary, out_dir / "uar_vs_blocks.png", **caption)
            results["figures"].append({"file": "uar_vs_blocks.png", "title": "UAR vs number of MOMA blocks"})
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    os.replace(tmp, out_dir / "results.json")
    (out_dir / "report.md").write_text(render_experiment_report(results), encoding="utf-8")
    if failed:
        raise RuntimeError(f"{len(failed)} cell(s) failed ({', '.join(failed)}); the report covers the others. "
                           "Rerun the same command to retry them.")
    return results


def main_summary(results: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    ref = results["experiment"]["reference"]
    out = [f"{results['experiment']['title']}: {results['cells_finished']}/{results['cells_planned']} cells "
           f"({results['cells_run_now']} run now)"]
    for name, v in results["summary"]["variants"].items():
        t = v.get("vs_reference")
        extra = f"  Δ {0.0 - t['mean_diff']:+.3f} vs {ref}, p {_p(t['permutation_p'])}" if t else ""
        out.append(f"  {v['label']:<20} UAR {_ms(v['uar'])}  accuracy {_ms(v['accuracy'])}{extra}")
    return "\n".join(out)

