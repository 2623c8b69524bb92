"""Several corpora in one manifest: a pool for multi-corpus training and cross-corpus protocols.

Each utterance keeps its corpus in ``corpus``; utterance ids and speakers are
namespaced by corpus (``emodb.03``, ``nemo.EB0``), so two corpora that both
number their actors from 1 never merge two people into one speaker, and the
protocols' speaker-leakage guard holds across the whole pool.

Labels are the shared English vocabulary every loader's label maps emit
(:data:`moma.corpora.CANONICAL_LABELS`). ``labels="union"`` keeps every
class; ``labels="shared"`` keeps only the classes every corpus has (what
leave-one-corpus-out scores), and says what it dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from moma.corpora.base import Utterance, read_manifest

log = logging.getLogger(__name__)

SEPARATOR = "."  # corpus + SEPARATOR + speaker (or id): readable, and legal in a folder name everywhere
LABEL_MODES = ("union", "shared")


def corpus_of_manifest(path: str | Path, utterances: Sequence[Utterance]) -> str:
    """The manifest's one corpus name (its ``corpus`` column, or the file name for a manifest without one)."""
    names = {u.corpus for u in utterances if u.corpus}
    if len(names) > 1:
        raise ValueError(f"{path}: already holds several corpora ({', '.join(sorted(names))}); pool single-corpus "
                         "manifests")
    return names.pop() if names else Path(path).stem


def pool_corpora(manifests: Sequence[str | Path], *, labels: str = "union") -> list[Utterance]:
    """One pooled list of utterances from single-corpus manifests, ids and speakers namespaced by corpus."""
    if labels not in LABEL_MODES:
        raise ValueError(f"unknown label mode {labels!r}; choose one of {', '.join(LABEL_MODES)}")
    if len(manifests) < 2:
        raise ValueError("a pool needs at least two manifests")
    per_corpus: dict[str, list[Utterance]] = {}
    for path in manifests:
        utts = read_manifest(path)
        name = corpus_of_manifest(path, utts)
        if not name or SEPARATOR in name:
            raise ValueError(f"{path}: corpus name {name!r} must be non-empty and hold no {SEPARATOR!r}")
        if name in per_corpus:
            raise ValueError(f"corpus {name!r} is given twice ({path})")
        per_corpus[name] = utts
    label_sets = {name: {u.label for u in utts} for name, utts in per_corpus.items()}
    keep = set.intersection(*label_sets.values()) if labels == "shared" else set.union(*label_sets.values())
    if not keep:
        raise ValueError("the corpora share no class: " + "; ".join(f"{n}: {', '.join(sorted(s))}"
                                                                    for n, s in label_sets.items()))
    pooled: list[Utterance] = []
    for name, utts in per_corpus.items():
        dropped = Counter(u.label for u in utts if u.label not in keep)
        if dropped:
            log.info("pool: %s: %d utterances of classes other corpora lack dropped (%s)", name,
                     sum(dropped.values()), dict(sorted(dropped.items())))
        pooled += [dataclasses.replace(u, id=f"{name}{SEPARATOR}{u.id}", speaker=f"{name}{SEPARATOR}{u.speaker}",
                                       session=f"{name}{SEPARATOR}{u.session}" if u.session else "", corpus=name)
                   for u in utts if u.label in keep]
    return pooled


def corpora_of(utterances: Sequence[Utterance]) -> list[str]:
    """The corpus names of a (pooled) manifest, sorted."""
    return sorted({u.corpus for u in utterances if u.corpus})
