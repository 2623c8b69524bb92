"""The experiment file: its schema (:class:`Experiment`, :class:`Variant`, :class:`AnalysisSpec`,
:class:`ClassicalSpec`) and :func:`load_experiment`, which reads and validates it.

The file's format is documented in :mod:`moma.research.experiment`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from moma.config import RunConfig, load_run_config
from moma.data.protocols import PROTOCOLS

DEFAULT_CACHE = "cache/features"
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
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def anchor_name(feature_set: str) -> str:
    """The results' name of the classical anchor of ``feature_set`` (``svm-<feature set>``)."""
    return ANCHOR_PREFIX + feature_set.lower()


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
    (:func:`moma.research.classical.run_anchor`) on the experiment's own folds, shown beside the model variants.

    The SVM trains on each fold's training and validation speakers (it has no early stopping) and is tested on
    exactly the fold's test speakers; C comes from an inner leave-one-speaker-out CV on the training side.
    """

    feature_sets: list[str]
    normalisation: str = "global"  # global: training speakers' statistics; speaker: transductive
    cache: str = "cache/opensmile"
    c_grid: list[float] = field(default_factory=list)  # empty: moma.research.classical.DEFAULT_C_GRID

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


def find_path(value: str, base_dir: Path) -> Path:
    """A relative path as found from the current directory, else from the experiment file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = base_dir / p
    return alt if alt.exists() else p


def _resolve_base(item: str, base_dir: Path) -> Path:
    from moma.recipes import resolve_recipe

    p = find_path(item, base_dir)
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
    from moma.audio.perturb import DEFAULT_CONDITIONS, get_condition

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
    from moma.features.functionals import OPENSMILE_SETS
    from moma.research.classical import FEATURE_SETS, NORMALISATIONS

    data = _check_keys({} if data is True else data, CLASSICAL_KEYS, f"{where}: classical")
    sets = _as_list(data.get("feature_sets"), f"{where}: classical.feature_sets") or list(OPENSMILE_SETS)
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
    analysis = parse_analysis(data.get("analysis"), str(path), seeds)
    fusion = [n for n, v in variants.items() if v.config.features.functionals != "none"]
    if analysis is not None and fusion:
        raise ValueError(f"{path}: the analysis (attention, probe, robustness) does not feed utterance functionals "
                         f"to fusion variants ({', '.join(fusion)}): leave 'analysis' out of this experiment")
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
                      analysis=analysis, classical=classical,
                      root_given=corpus_root is not None)
