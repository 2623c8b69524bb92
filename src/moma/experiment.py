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

Analysis (optional section; see :class:`AnalysisSpec` and :func:`analyse_cell`)::

    analysis:
      seeds: [0]                  # whose cells are analysed (each fold's best checkpoint)
      attention: true             # entropy per layer / block / mixture, block correlation, gammas
      probe: {speakers: heldout, folds: 5}   # linear speaker probe per stage; heldout | test | all
      robustness: {conditions: [clean, white-10dB, ...], max_utterances_per_fold: 20, babble_pool: 32, seed: 0}
      attention_maps: 4           # the paper's Figures 2-5 for 4 test utterances (reference variant)

Classical anchor (optional section; see :class:`ClassicalSpec` and :func:`run_anchors`)::

    classical:
      feature_sets: [eGeMAPSv02, ComParE_2016]   # openSMILE functionals + linear SVM, same folds
      normalisation: global                      # or speaker (transductive)

After the cells, each analysed cell's results go to ``<cell>/analysis.json``
(a rerun recomputes nothing that is there), the per-variant aggregates to
``results.json["analysis"]``, tables to report.md and the figures
``analysis_entropy.png``, ``analysis_probe.png``, ``analysis_robustness.png``; the attention maps go to
``attention_maps/`` and the anchors' fold results to ``classical/``, both reused by a rerun.
The per-speaker UAR spread and gender gap come from every finished cell.

Paper claims: :func:`paper_claims` turns the numbers into a verdict per claim of
the paper (supported / not supported / inconclusive / not measured) by the
explicit rules in ``CLAIM_RULES``; report.md prints each verdict with the
numbers that decided it and its rule.

The numbers are computed here; :mod:`moma.report` renders them (report.md, the
figures, the terminal summary) from ``results.json`` alone.

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
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .config import RunConfig, config_to_dict, load_run_config, merge_overrides, replace, save_config
from .corpora.base import Utterance, label_list
from .evaluate import compute_metrics, mean_std
from .features import write_json_atomic
from .protocols import PROTOCOLS, Fold, make_folds, validate_fold
from .claims import paper_claims
from .report import plot_analysis, plot_uar_by_variant, plot_uar_vs_blocks, render_experiment_report
from .stats import bootstrap_ci, paired_bootstrap_diff, paired_test

log = logging.getLogger(__name__)

DEFAULT_CACHE = "cache/features"
METRIC_NAMES = ("accuracy", "uar", "macro_f1")
TOP_KEYS = {"title", "corpus", "protocol", "base", "set", "seeds", "reference", "variants", "cache", "bootstrap",
            "alpha", "notes", "analysis", "classical"}
ANALYSIS_KEYS = {"attention", "probe", "robustness", "seeds", "attention_maps"}
CLASSICAL_KEYS = {"feature_sets", "normalisation", "cache", "c_grid"}
ANCHOR_PREFIX = "svm-"  # results' name of a classical anchor: svm-<feature set>
PROBE_KEYS = {"speakers", "folds"}
PROBE_SPEAKERS = ("heldout", "test", "all")
ROBUSTNESS_KEYS = {"conditions", "max_utterances_per_fold", "babble_pool", "seed"}
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
class AnalysisSpec:
    """The experiment file's optional ``analysis:`` section (see :func:`analyse_cell`).

    ``probe_speakers``: whose utterances the speaker probe of a cell runs on. ``heldout`` (default): the fold's
    test and validation speakers, whose audio never produced a gradient (a probe needs >= 2 speakers, and a
    leave-one-speaker-out fold has one test speaker); ``test``: test speakers only (skipped where a fold has
    fewer than 2); ``all``: every speaker of the corpus, training speakers included.
    """

    seeds: list[int]
    attention: bool = True
    probe: bool = True
    probe_speakers: str = "heldout"
    probe_folds: int = 5
    robustness: bool = False
    conditions: list[str] = field(default_factory=list)
    max_utterances: int | None = 20  # per fold, label-balanced, identical for every variant and seed
    babble_pool: int = 32  # training-speaker utterances of the fold that babble is built from
    seed: int = 0  # seeds the robustness subset, noise, babble and the probe's folds
    attention_maps: int = 0  # test utterances (one per label, seeded draw) plotted with the reference's attention

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "attention": self.attention, "attention_maps": self.attention_maps,
                "probe": {"speakers": self.probe_speakers, "folds": self.probe_folds} if self.probe else False,
                "robustness": {"conditions": self.conditions, "max_utterances_per_fold": self.max_utterances,
                               "babble_pool": self.babble_pool, "seed": self.seed} if self.robustness else False}


@dataclass
class ClassicalSpec:
    """The experiment file's optional ``classical:`` section: openSMILE functionals + linear SVM
    (:func:`moma.baselines.run_anchor`) on the experiment's own folds, shown beside the model variants.

    The SVM trains on each fold's training and validation speakers (it has no early stopping) and is tested on
    exactly the fold's test speakers; C comes from an inner leave-one-speaker-out CV on the training side.
    """

    feature_sets: list[str]
    normalisation: str = "global"  # global: training speakers' statistics; speaker: transductive
    cache: str = "cache/opensmile"
    c_grid: list[float] = field(default_factory=list)  # empty: moma.baselines.DEFAULT_C_GRID

    def to_dict(self) -> dict[str, Any]:
        return {"feature_sets": self.feature_sets, "normalisation": self.normalisation, "cache": self.cache,
                "c_grid": self.c_grid}


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
    analysis: AnalysisSpec | None = None
    classical: ClassicalSpec | None = None
    root_given: bool = False  # corpus.root came from the command line: an existing manifest must be from it

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment, as written to ``experiment.yaml``."""
        return {
            "title": self.title, "source": str(self.path), "corpus": self.corpus, "protocol": self.protocol,
            "base": self.base, "set": self.sets, "seeds": self.seeds, "reference": self.reference,
            "cache": self.cache, "bootstrap": self.bootstrap, "alpha": self.alpha, "notes": self.notes,
            "variants": {n: {"label": v.label, "base": v.bases, "set": v.sets, "note": v.note}
                         for n, v in self.variants.items()},
            "analysis": self.analysis.to_dict() if self.analysis else None,
            "classical": self.classical.to_dict() if self.classical else None,
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


def _flag_or_mapping(value: Any, keys: set[str], where: str) -> tuple[bool, dict[str, Any]]:
    """``true`` / ``false`` / a mapping of options (which means true)."""
    if value is None or isinstance(value, bool):
        return bool(value), {}
    return True, dict(_check_keys(value, keys, where))


def parse_analysis(data: Any, where: str, seeds: Sequence[int]) -> AnalysisSpec | None:
    """Validate the ``analysis:`` section; None when absent or empty."""
    if data is None:
        return None
    data = _check_keys(data, ANALYSIS_KEYS, f"{where}: analysis")
    a_seeds = data.get("seeds", [seeds[0]])
    if isinstance(a_seeds, int):
        a_seeds = [a_seeds]
    if (not isinstance(a_seeds, list) or not a_seeds or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in a_seeds)):
        raise ValueError(f"{where}: analysis.seeds must be a non-empty list of integers, got {a_seeds!r}")
    if set(a_seeds) - set(seeds):
        raise ValueError(f"{where}: analysis.seeds {sorted(set(a_seeds) - set(seeds))} are not among the "
                         f"experiment's seeds {list(seeds)}")
    attention = data.get("attention", True)
    if not isinstance(attention, bool):
        raise ValueError(f"{where}: analysis.attention must be true or false, got {attention!r}")
    probe, p_opts = _flag_or_mapping(data.get("probe", True), PROBE_KEYS, f"{where}: analysis.probe")
    robust, r_opts = _flag_or_mapping(data.get("robustness", False), ROBUSTNESS_KEYS,
                                      f"{where}: analysis.robustness")
    speakers = str(p_opts.get("speakers", "heldout"))
    if speakers not in PROBE_SPEAKERS:
        raise ValueError(f"{where}: analysis.probe.speakers must be one of {', '.join(PROBE_SPEAKERS)}, "
                         f"got {speakers!r}")
    folds = p_opts.get("folds", 5)
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"{where}: analysis.probe.folds must be an integer >= 2, got {folds!r}")
    from .robustness import DEFAULT_CONDITIONS, get_condition

    conditions = _as_list(r_opts.get("conditions"), f"{where}: analysis.robustness.conditions") or \
        list(DEFAULT_CONDITIONS)
    for c in conditions:
        try:
            get_condition(c)
        except ValueError as exc:
            raise ValueError(f"{where}: analysis.robustness: {exc}") from None
    if len(set(conditions)) != len(conditions):
        raise ValueError(f"{where}: analysis.robustness.conditions has duplicates")
    max_utt = r_opts.get("max_utterances_per_fold", 20)
    if max_utt is not None and (not isinstance(max_utt, int) or max_utt < 1):
        raise ValueError(f"{where}: analysis.robustness.max_utterances_per_fold must be a positive integer or "
                         f"null, got {max_utt!r}")
    pool = r_opts.get("babble_pool", 32)
    seed = r_opts.get("seed", 0)
    if not isinstance(pool, int) or pool < 1 or not isinstance(seed, int):
        raise ValueError(f"{where}: analysis.robustness.babble_pool must be a positive integer and seed an "
                         "integer")
    maps = data.get("attention_maps", 0)
    if isinstance(maps, bool) or not isinstance(maps, int) or maps < 0:
        raise ValueError(f"{where}: analysis.attention_maps must be a non-negative integer (utterances to plot), "
                         f"got {maps!r}")
    if not (attention or probe or robust or maps):
        return None
    return AnalysisSpec(seeds=list(a_seeds), attention=attention, probe=probe, probe_speakers=speakers,
                        probe_folds=folds, robustness=robust, conditions=conditions, max_utterances=max_utt,
                        babble_pool=pool, seed=seed, attention_maps=maps)


def parse_classical(data: Any, where: str) -> ClassicalSpec | None:
    """Validate the ``classical:`` section; None when absent or false."""
    if data is None or data is False:
        return None
    from .baselines import FEATURE_SETS, NORMALISATIONS

    data = _check_keys({} if data is True else data, CLASSICAL_KEYS, f"{where}: classical")
    sets = _as_list(data.get("feature_sets"), f"{where}: classical.feature_sets") or list(FEATURE_SETS)
    unknown = [f for f in sets if f not in FEATURE_SETS]
    if unknown or len(set(sets)) != len(sets):
        raise ValueError(f"{where}: classical.feature_sets must be distinct names among {', '.join(FEATURE_SETS)}, "
                         f"got {sets!r}")
    norm = str(data.get("normalisation", "global"))
    if norm not in NORMALISATIONS:
        raise ValueError(f"{where}: classical.normalisation must be one of {', '.join(NORMALISATIONS)}, "
                         f"got {norm!r}")
    grid = data.get("c_grid") or []
    if not isinstance(grid, list) or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0
                                             for c in grid):
        raise ValueError(f"{where}: classical.c_grid must be a list of positive numbers, got {grid!r}")
    return ClassicalSpec(feature_sets=sets, normalisation=norm, cache=str(data.get("cache") or "cache/opensmile"),
                         c_grid=[float(c) for c in grid])


def load_experiment(path: str | Path, extra_sets: Sequence[str] = (), corpus_root: str | Path | None = None
                    ) -> Experiment:
    """Read and validate an experiment file; every variant's config is resolved (unknown options fail here).

    ``extra_sets`` (the command line's ``--set``) apply to every variant after
    the variant's own overrides. ``corpus_root`` (the command line's ``--root``)
    replaces ``corpus.root``, so a shipped experiment runs on a copy of its
    corpus anywhere. Raises :class:`ValueError` naming the file and the
    offending key, variant or option.
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
    if "manifest" not in corpus and "name" not in corpus:
        raise ValueError(f"{path}: corpus needs 'manifest', or 'name' with 'root' (or all three: the manifest is "
                         "then prepared from the corpus when it does not exist yet)")
    if corpus_root is not None:
        if "name" not in corpus:
            raise ValueError(f"{path}: --root needs a corpus 'name' in the file (it reads only a manifest)")
        corpus["root"] = str(corpus_root)
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
    classical = parse_classical(data.get("classical"), str(path))
    for fs in (classical.feature_sets if classical else []):
        if anchor_name(fs) in variants:
            raise ValueError(f"{path}: variant name {anchor_name(fs)!r} is taken by the classical anchor of {fs}")
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
                      notes=_as_list(data.get("notes"), f"{path}: notes"), raw=data,
                      analysis=parse_analysis(data.get("analysis"), str(path), seeds), classical=classical,
                      root_given=corpus_root is not None)


def load_corpus(exp: Experiment, progress: bool = False) -> list[Utterance]:
    """The experiment's utterances: a manifest, or a corpus prepared from its folder.

    With both (``{manifest: M, name: N, root: R}``) an existing manifest is read, and a missing one is prepared
    from the corpus and written to ``M`` first, so one command runs the experiment from a clean checkout.
    """
    from .corpora.base import read_manifest, write_manifest

    base_dir = exp.path.resolve().parent
    manifest = exp.corpus.get("manifest")
    if manifest is not None:
        found = _find_path(str(manifest), base_dir)
        if found.is_file() or "name" not in exp.corpus:
            utterances = read_manifest(found)
            if exp.root_given:
                root = _find_path(str(exp.corpus["root"]), base_dir).resolve()
                elsewhere = [u.path for u in utterances if not Path(u.path).resolve().is_relative_to(root)]
                if elsewhere:
                    raise ValueError(f"{found} lists audio outside --root {root} (e.g. {elsewhere[0]}): it was "
                                     "prepared from another copy of the corpus; remove it to prepare it again")
            return utterances
    from .corpora import prepare_corpus

    utterances = prepare_corpus(str(exp.corpus["name"]), _find_path(str(exp.corpus["root"]), base_dir),
                                label_map=exp.corpus.get("label_map", "default"), progress=progress)
    if manifest is not None:
        write_manifest(utterances, manifest)
        log.info("prepared %s from %s: %d utterances written to %s", exp.corpus["name"], exp.corpus["root"],
                 len(utterances), manifest)
    return utterances


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
    # an option added to the config after the cell ran is absent from its stamp; the cell ran with that
    # option's default (a new option's default keeps the old behaviour), so the stamp is read over the defaults
    stamped = merge_overrides(_signature(RunConfig()), old.get("config") or {})
    diff = _diff_keys(stamped, _signature(cell.config))
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


def anchor_name(feature_set: str) -> str:
    return ANCHOR_PREFIX + feature_set.lower()


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
            mean, std = mean_std(s[m] for s in per_seed)
            entry[m] = {"mean": mean, "std": std, "seeds": len(per_seed)}
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


# --------------------------------------------------------------------------- analysis of finished cells

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
    from .analysis import analyse_checkpoint
    from .checkpoint import load_checkpoint
    from .robustness import evaluate_robustness, file_sha1, select_utterances

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
        from .features import FeatureCache, extract_features, feature_config_hash

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


def _agg(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def aggregate_analysis(exp: Experiment, cells: Sequence[Cell], analyses: dict[str, dict[str, Any]],
                       summary: dict[str, Any], utterances: Sequence[Utterance]) -> dict[str, Any]:
    """Per-variant analysis: every statistic as mean ± std over the analysed cells (fold x seed), with the
    per-cell values kept (keyed ``seed<k>/<fold>``) for paired comparisons between variants."""
    from .analysis import speaker_bias

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
                "layer1": _agg([v["layer1"] for v in vals]),
                "layer1_nats": _agg([v["layer1_nats"] for v in vals]),
                "mixture": _agg([v["mixture"] for v in vals]),
                "mixture_nats": _agg([v["mixture_nats"] for v in vals]),
                "blocks": [_agg([v["blocks"][i] for v in vals if len(v["blocks"]) > i]) for i in range(n_blocks)],
                "block_correlation": _agg([v["block_correlation"] for v in vals]),
                "gammas": [_agg([v["gammas"][i] for v in vals if len(v["gammas"]) > i])
                           for i in range(max((len(v["gammas"]) for v in vals), default=0))]}
        if probe_cells:
            stages = [s for s in ("encoder", "layer1", "pooled", "embedding", "final", "chance")
                      if any(s in v for v in probe_cells.values())]
            entry["probe"] = {"cells": probe_cells, "final_stage": probe_info.get("final_stage"),
                              "stages": {s: _agg([v.get(s) for v in probe_cells.values()]) for s in stages},
                              "n_speakers": _agg([v["n_speakers"] for v in probe_cells.values()])}
        elif "skipped" in probe_info:
            entry["probe"] = {"skipped": probe_info["skipped"]}
        if rob_cells:
            conds = [c for c in spec.conditions if any(c in v for v in rob_cells.values())]
            entry["robustness"] = {"cells": rob_cells,
                                   "conditions": {c: {"uar": _agg([v.get(c) for v in rob_cells.values()]),
                                                      "accuracy": _agg([v.get(f"{c}:accuracy")
                                                                        for v in rob_cells.values()])}
                                                  for c in conds},
                                   "drop": _agg([v.get("drop") for v in rob_cells.values()])}
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


# --------------------------------------------------------------------------- the block-count series

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


# --------------------------------------------------------------------------- anchors and attention maps

def run_anchors(exp: Experiment, utterances: Sequence[Utterance], folds: Sequence[Fold], out_dir: Path, *,
                compute: bool = True, workers: int = 1, progress: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The ``classical:`` section's anchors on the experiment's folds (cached in ``out_dir/classical/``).

    Returns ``({feature set: result}, notes)``; a feature set that could not run (openSMILE missing, or not
    computed in a report-only run) is left out and named in the notes.
    """
    spec = exp.classical
    if spec is None:
        return {}, []
    import importlib.util

    if importlib.util.find_spec("opensmile") is None:  # the optional 'classical' extra
        return {}, ["Classical anchors not run: the `opensmile` package is missing "
                    "(`pip install 'moma-ser[classical]'`)."]
    from .baselines import DEFAULT_C_GRID, run_anchor

    out: dict[str, Any] = {}
    notes = []
    for fs in spec.feature_sets:
        res = run_anchor(utterances, folds, out_dir / "classical" / f"{fs}-{spec.normalisation}.json",
                         feature_set=fs, normalisation=spec.normalisation, c_grid=spec.c_grid or DEFAULT_C_GRID,
                         seed=0, cache_dir=spec.cache, workers=workers, progress=progress, compute=compute)
        if res is None:
            notes.append(f"Classical anchor {fs} not computed yet (a report-only run computes nothing).")
        else:
            out[fs] = res
    return out, notes


def pick_map_utterances(cells: Sequence[Cell], utterances: Sequence[Utterance], n: int,
                        seed: int) -> list[tuple[Utterance, Cell]]:
    """``n`` test utterances for attention maps, one per label in turn (labels sorted, cycling), each drawn at
    random (seeded) from the finished cells' test sets and paired with the cell that tested it.

    The draw never looks at predictions, so the maps are not picked for looking good. Utterances that are a
    region of a longer file are skipped (the plot shows the whole file).
    """
    owner = {}
    for cell in cells:
        if cell.done():
            for uid in cell.fold.test:
                owner[uid] = cell
    by_label: dict[str, list[Utterance]] = {}
    for u in sorted(utterances, key=lambda u: u.id):
        if u.id in owner and u.start == 0 and u.end == 0:
            by_label.setdefault(u.label, []).append(u)
    rng = np.random.default_rng(seed)
    for pool in by_label.values():
        rng.shuffle(pool)
    picked: list[tuple[Utterance, Cell]] = []
    labels = sorted(by_label)
    round_ = 0
    while len(picked) < n and any(len(by_label[lab]) > round_ for lab in labels):
        for lab in labels:
            if len(picked) < n and len(by_label[lab]) > round_:
                u = by_label[lab][round_]
                picked.append((u, owner[u.id]))
        round_ += 1
    return picked


def plot_attention_maps(exp: Experiment, cells: Sequence[Cell], utterances: Sequence[Utterance], out_dir: Path, *,
                        command: str, config: str, compute: bool = True) -> list[dict[str, Any]]:
    """The paper's Figures 2-5 for the reference variant: waveform, spectrogram, layer-1 attention, the MOMA
    mixture and each block with its gamma, with the corpus's word/syllable and phone boundaries when it has them.

    One map per utterance of :func:`pick_map_utterances` (analysis seeds' first seed), each made by the
    checkpoint of the fold that tested it, into ``out_dir/attention_maps/<utterance>.png``; an existing map is
    reused. Returns one record per map (file, utterance, true and predicted label, fold).
    """
    spec = exp.analysis
    ref = exp.variants[exp.reference]
    if spec is None or not spec.attention_maps or ref.config.model.arch == "mean":
        return []
    from .corpora.alignment import read_alignment
    from .inference import Predictor, plot_prediction

    seed = spec.seeds[0]
    mine = [c for c in cells if c.variant == exp.reference and c.seed == seed]
    maps_dir = out_dir / "attention_maps"
    records_path = maps_dir / "maps.json"
    old = {r["utterance"]: r for r in json.loads(records_path.read_text(encoding="utf-8"))} \
        if records_path.is_file() else {}
    predictors: dict[str, Predictor] = {}
    records = []
    for u, cell in pick_map_utterances(mine, utterances, spec.attention_maps, spec.seed):
        png = maps_dir / f"{u.id}.png"
        if png.is_file() and u.id in old:
            records.append(old[u.id])
            continue
        ckpt = cell_checkpoint(cell)
        if not compute or ckpt is None:
            continue
        if str(ckpt) not in predictors:
            predictors[str(ckpt)] = Predictor.from_checkpoint(ckpt)
        predictor = predictors[str(ckpt)]

        def alignment(path: str) -> Any:
            try:
                return read_alignment(path) if path else None
            except (OSError, ValueError) as exc:  # a map without boundaries beats no map
                log.warning("attention map of %s: alignment %s unreadable (%s)", u.id, path, exc)
                return None

        pred = predictor.predict_file(u.path)
        title = (f"{u.id} (speaker {u.speaker}): true {u.label}, predicted {pred.label} "
                 f"({pred.probabilities[pred.label]:.2f}); {ref.label}, seed {seed}, fold {cell.fold.name}")
        plot_prediction(predictor, u.path, png, pred=pred, alignment=alignment(u.words), phones=alignment(u.phones),
                        title=title, caption=f"made by: {command}\nconfig: {config}")
        records.append({"file": f"attention_maps/{png.name}", "utterance": u.id, "speaker": u.speaker,
                        "label": u.label, "predicted": pred.label, "fold": cell.fold.name, "seed": seed,
                        "variant": exp.reference, "checkpoint": str(ckpt),
                        "alignment": bool(u.words), "phones": bool(u.phones)})
    if records:
        write_json_atomic(records_path, records)
    return records


def _display_path(path: str | Path) -> str:
    """A config path as a reader can use it: packaged files by their place in the package, others relative
    to the current directory when they are under it."""
    p = Path(path).resolve()
    package = Path(__file__).resolve().parent
    if p.is_relative_to(package):
        return f"moma/{p.relative_to(package).as_posix()}"
    return p.relative_to(Path.cwd()).as_posix() if p.is_relative_to(Path.cwd()) else str(path)


# --------------------------------------------------------------------------- the whole run

def run_experiment(config_path: str | Path, out_dir: str | Path | None = None, *, jobs: int = 1,
                   cache_dir: str | Path | None = None, sets: Sequence[str] = (), command: str | None = None,
                   progress: bool = False, feature_workers: int = 1, train: bool = True,
                   corpus_root: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) every cell of the experiment, then write results.json, report.md and the figures.

    ``train=False`` only aggregates the cells that have finished (a report of a
    grid still running elsewhere). Returns the content of ``results.json``.
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
    pending = [c for c in cells if not c.done()]
    log.info("%s: %d cells (%d variants x %d seeds x %d folds), %d to run", exp.title, len(cells),
             len(exp.variants), len(exp.seeds), len(folds), len(pending))
    failed: list[str] = []

    def run(batch: list[Cell]) -> None:
        failed.extend(_run_cells(batch, utterances, labels, cache_dir or exp.cache, corpus, jobs, progress,
                                 feature_workers))

    def write_results() -> dict[str, Any]:
        anchors, anchor_notes = run_anchors(exp, utterances, folds, out_dir, compute=train, workers=feature_workers,
                                            progress=progress)
        summary = aggregate_experiment(exp, folds, cells, utterances, labels, anchors)
        summary["labels"] = labels
        results: dict[str, Any] = {
            "command": command,
            "config_path": _display_path(config_path),
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
            "failed_cells": failed,
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
    if failed:
        raise RuntimeError(f"{len(failed)} cell(s) failed ({', '.join(failed)}); the report covers the others. "
                           "Rerun the same command to retry them.")
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

