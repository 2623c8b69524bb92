"""Corpus loaders, label maps, and ``prepare_corpus`` which turns a corpus into manifest rows.

Every loader ``load_<name>(root) -> list[Utterance]`` reads one corpus layout and
returns utterances with absolute paths and ``raw_label`` (the corpus's own code;
``label`` is the same until mapped). ``prepare_corpus`` then

1. applies a label map from ``labelmaps.yaml`` (utterances whose raw label the
   map does not list are dropped, counted and logged),
2. fills ``duration`` from the audio where the loader could not,
3. fills ``sha1`` (the feature-cache key) when ``hash_audio``,
4. sets ``corpus``.

Label maps are data (``labelmaps.yaml``): ``{corpus: {map_name: {raw: label}}}``,
every one emitting names of one vocabulary, :data:`CANONICAL_LABELS` (angry,
happy, sad, neutral, bored, calm, disgust, fear, surprise; IEMOCAP's ``all``
adds excited, frustrated, other), so that classes line up across corpora:
pooled training, cross-corpus scoring and the shared classes of two corpora
all rest on it (a test checks every map).
"""

from __future__ import annotations

import importlib.resources
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from moma.corpora.alignment import read_alignment
from moma.corpora.base import Alignment, Utterance, label_list, read_manifest, summarise, write_manifest
from moma.corpora.cremad import load_cremad
from moma.corpora.emodb import load_emodb
from moma.corpora.generic import load_csv, load_folders
from moma.corpora.iemocap import load_iemocap
from moma.corpora.nemo import load_nemo
from moma.corpora.ravdess import load_ravdess
from moma.corpora.tess import load_tess

log = logging.getLogger(__name__)

__all__ = [
    "CANONICAL_LABELS",
    "LOADERS",
    "Alignment",
    "Utterance",
    "apply_label_map",
    "available_label_maps",
    "label_list",
    "load_cremad",
    "load_csv",
    "load_emodb",
    "load_folders",
    "load_iemocap",
    "load_nemo",
    "load_label_maps",
    "load_ravdess",
    "load_tess",
    "prepare_corpus",
    "read_alignment",
    "read_manifest",
    "resolve_label_map",
    "summarise",
    "write_manifest",
]

# The one emotion vocabulary of every label map (adjectives, as the first loaders used them):
# anger -> angry, happiness -> happy, sadness -> sad, boredom -> bored, surprised -> surprise.
CANONICAL_LABELS = ("angry", "happy", "sad", "neutral", "fear", "disgust", "surprise", "bored", "calm",
                    "excited", "frustrated", "other")

Loader = Callable[..., list[Utterance]]
LabelMap = dict[str, str] | None  # None: identity (labels kept as they are)

LABELMAPS_FILE = "labelmaps.yaml"
DEFAULT_MAP = "default"


def _load_synthetic(root: Path, **options: Any) -> list[Utterance]:
    """Entry for the synthetic corpus, written separately in ``moma/corpora/synthetic/``.

    Imported lazily so that this package works (and says clearly what is wrong)
    when that module is absent.
    """
    # --- lazy import: moma.corpora.synthetic.load_synthetic  ---
    try:
        from moma.corpora.synthetic import load_synthetic
    except ModuleNotFoundError as exc:
        if exc.name != "moma.corpora.synthetic":
            raise  # a dependency of synthetic.py is missing: report that, not a missing module
        raise ImportError(
            "corpus 'synthetic' needs moma.corpora.synthetic.load_synthetic, which is not installed"
        ) from exc
    return load_synthetic(root, **options)


# Read-only: the registry is configuration, not state to patch at run time.
LOADERS: Mapping[str, Loader] = MappingProxyType(
    {
        "iemocap": load_iemocap,
        "emodb": load_emodb,
        "ravdess": load_ravdess,
        "tess": load_tess,
        "cremad": load_cremad,
        "nemo": load_nemo,
        "csv": load_csv,
        "folders": load_folders,
        "synthetic": _load_synthetic,
    }
)


def _check_corpus(name: str) -> str:
    key = name.strip().lower()
    if key not in LOADERS:
        raise ValueError(f"unknown corpus {name!r}; valid names: {', '.join(LOADERS)}")
    return key


def load_label_maps() -> dict[str, dict[str, LabelMap | str]]:
    """All label maps from ``labelmaps.yaml`` (read on each call: it is small and callers may edit it)."""
    text = importlib.resources.files(__name__).joinpath(LABELMAPS_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{LABELMAPS_FILE}: expected a mapping of corpus names")
    out: dict[str, dict[str, LabelMap | str]] = {}
    for corpus, maps in data.items():
        if not isinstance(maps, dict):
            raise ValueError(f"{LABELMAPS_FILE}: {corpus}: expected a mapping of label map names")
        out[str(corpus)] = {}
        for map_name, spec in maps.items():
            if spec is None or isinstance(spec, str):
                out[str(corpus)][str(map_name)] = spec
            elif isinstance(spec, dict):
                # str(): YAML may read unquoted codes such as 01 as numbers.
                out[str(corpus)][str(map_name)] = {str(k): str(v) for k, v in spec.items()}
            else:
                raise ValueError(f"{LABELMAPS_FILE}: {corpus}.{map_name}: expected a mapping, a map name or null")
    return out


def _corpus_maps(corpus: str) -> dict[str, LabelMap | str]:
    # A corpus without an entry (e.g. synthetic) keeps its labels as they are.
    return load_label_maps().get(corpus, {DEFAULT_MAP: None})


def available_label_maps(corpus: str) -> list[str]:
    """Names of the label maps for ``corpus``, ``"default"`` first."""
    maps = _corpus_maps(_check_corpus(corpus))
    return [DEFAULT_MAP] + sorted(name for name in maps if name != DEFAULT_MAP)


def resolve_label_map(corpus: str, label_map: str | Mapping[str, str] = DEFAULT_MAP) -> LabelMap:
    """The ``{raw: label}`` dict of a named map (following aliases), or ``None`` for identity.

    A mapping passed in is used as it is (custom maps for csv/folders corpora).
    """
    key = _check_corpus(corpus)
    if isinstance(label_map, Mapping):
        return {str(k): str(v) for k, v in label_map.items()}
    maps = _corpus_maps(key)
    name = label_map
    seen: list[str] = []
    while True:
        if name not in maps:
            valid = [DEFAULT_MAP] + sorted(n for n in maps if n != DEFAULT_MAP)
            raise ValueError(f"unknown label map {label_map!r} for corpus {key!r}; valid names: {', '.join(valid)}")
        spec = maps[name]
        if not isinstance(spec, str):
            return spec
        seen.append(name)
        if spec in seen:
            raise ValueError(f"{LABELMAPS_FILE}: {key}: label map aliases form a cycle: {' -> '.join(seen + [spec])}")
        name = spec


def apply_label_map(utterances: list[Utterance], mapping: LabelMap) -> tuple[list[Utterance], Counter[str]]:
    """Set ``label`` from ``raw_label``; returns the kept utterances and a count of dropped raw labels."""
    kept: list[Utterance] = []
    dropped: Counter[str] = Counter()
    for utt in utterances:
        raw = utt.raw_label or utt.label  # a loader that sets only label: that is the raw label
        utt.raw_label = raw
        if mapping is None:
            utt.label = raw
        elif raw in mapping:
            utt.label = mapping[raw]
        else:
            dropped[raw] += 1
            continue
        kept.append(utt)
    return kept, dropped


def prepare_corpus(
    name: str,
    root: str | Path,
    *,
    label_map: str | Mapping[str, str] = DEFAULT_MAP,
    hash_audio: bool = True,
    progress: bool = False,
    loader_options: Mapping[str, Any] | None = None,
) -> list[Utterance]:
    """Load corpus ``name`` from ``root`` and return manifest-ready utterances.

    ``label_map`` names a map of ``labelmaps.yaml`` (see ``available_label_maps``)
    or is a ``{raw: label}`` mapping. ``loader_options`` are passed to the loader
    (e.g. ``{"speaker_pattern": ...}`` for ``folders``). Utterances whose audio
    cannot be read for their duration are skipped with a warning.

    Raises ``ValueError`` for an unknown corpus or label map name (listing the
    valid ones), duplicate utterance ids, or when no utterance is left.
    """
    key = _check_corpus(name)
    mapping = resolve_label_map(key, label_map)  # fail on a bad map name before a long scan
    root = Path(root).expanduser()
    loaded = LOADERS[key](root, **dict(loader_options or {}))
    if not loaded:
        raise ValueError(f"{key}: no utterances found under {root}")
    utterances, dropped = apply_label_map(loaded, mapping)
    if dropped:
        log.info(
            "%s: label map %r dropped %d of %d utterances (raw labels %s)",
            key,
            label_map if isinstance(label_map, str) else "custom",
            sum(dropped.values()),
            len(loaded),
            dict(sorted(dropped.items())),
        )
    if not utterances:
        raise ValueError(f"{key}: the label map kept none of the {len(loaded)} utterances")
    ids = Counter(u.id for u in utterances)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise ValueError(f"{key}: {len(repeated)} utterance ids occur more than once (e.g. {repeated[:3]})")
    return _fill_audio_fields(key, utterances, hash_audio=hash_audio, progress=progress)


def _fill_audio_fields(
    corpus: str, utterances: list[Utterance], *, hash_audio: bool, progress: bool
) -> list[Utterance]:
    """Fill ``duration`` / ``sha1`` / ``corpus``; each file is read at most once (regions share files)."""
    import moma.audio.io as audio  # imported here: loaders stay usable without the audio stack

    items: Iterable[Utterance] = utterances
    if progress:
        from tqdm import tqdm

        items = tqdm(utterances, desc=f"{corpus}: audio", unit="file")
    durations: dict[str, float] = {}
    hashes: dict[str, str] = {}
    out: list[Utterance] = []
    unreadable: list[str] = []
    for utt in items:
        try:
            if utt.duration <= 0:
                if utt.path not in durations:
                    durations[utt.path] = float(audio.audio_info(utt.path)[0])
                utt.duration = round((utt.end or durations[utt.path]) - utt.start, 4)
                if utt.duration <= 0:
                    raise ValueError(f"region starts at {utt.start} s, after the end of the audio")
            if hash_audio and not utt.sha1:
                if utt.path not in hashes:
                    hashes[utt.path] = audio.file_sha1(utt.path)
                utt.sha1 = hashes[utt.path]
        except (OSError, RuntimeError, ValueError) as exc:  # soundfile raises RuntimeError subclasses
            unreadable.append(f"{utt.path} ({exc})")
            continue
        utt.corpus = corpus
        out.append(utt)
    if unreadable:
        log.warning(
            "%s: skipped %d utterances whose audio could not be read, e.g. %s", corpus, len(unreadable), unreadable[:3]
        )
    if not out:
        raise ValueError(f"{corpus}: no readable audio among {len(utterances)} utterances")
    counts = dict(sorted(Counter(u.label for u in out).items()))
    log.info("%s: %d utterances, %d speakers, labels %s", corpus, len(out), len({u.speaker for u in out}), counts)
    return out
