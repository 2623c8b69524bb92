"""Speaker-independent evaluation protocols.

A protocol turns a manifest into folds of (train, validation, test) utterance
ids. Two rules hold for every fold and are checked, not assumed:

* no speaker is in both training and test;
* the validation set that drives the learning-rate schedule, early stopping
  and checkpoint choice is drawn from *training* speakers, never test speakers.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

PROTOCOLS = ("session-holdout", "loso", "loso-session", "speaker-kfold", "speaker-groups", "loco", "predefined",
             "all")


class SpeakerLeakageError(ValueError):
    """A speaker appears on both sides of a split that must be speaker-independent."""


@dataclass
class Fold:
    name: str
    train: list[str]  # utterance ids used for gradient steps
    val: list[str]  # utterance ids (training speakers only) for schedule / early stopping / selection
    test: list[str]  # utterance ids of held-out speakers
    train_speakers: list[str] = field(default_factory=list)
    val_speakers: list[str] = field(default_factory=list)
    test_speakers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "train_speakers": self.train_speakers,
            "val_speakers": self.val_speakers,
            "test_speakers": self.test_speakers,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
        }


def check_speaker_disjoint(first: Iterable[Utterance], second: Iterable[Utterance],
                           first_name: str = "training", second_name: str = "test") -> None:
    """Raise :class:`SpeakerLeakageError` naming every speaker found in both sets."""
    shared = sorted({u.speaker for u in first} & {u.speaker for u in second})
    if shared:
        raise SpeakerLeakageError(
            f"speaker(s) {', '.join(shared)} appear in both the {first_name} and the {second_name} set; "
            "speaker-independent evaluation requires disjoint speakers")


def choose_validation_speakers(utterances: Sequence[Utterance], count: int, seed: int,
                               min_utterances: int = 0) -> list[str]:
    """Pick ``count`` training speakers for validation, alternating genders when known, and more in the same
    order while they hold fewer than ``min_utterances`` utterances (two small speakers can leave a fold a few dozen
    validation utterances, too few to choose epochs on).

    Balancing gender keeps the validation signal from tracking one voice type;
    the choice is seeded so a fold is reproducible.
    """
    speakers = sorted({u.speaker for u in utterances})
    if count <= 0 or len(speakers) < 2:
        return []
    sizes = Counter(u.speaker for u in utterances)
    order = _alternating_order(utterances, speakers, seed)[:len(speakers) - 1]  # leave one speaker to train on
    count = min(count, len(order))
    while count < len(order) and sum(sizes[s] for s in order[:count]) < min_utterances:
        count += 1
    return sorted(order[:count])


def _alternating_order(utterances: Sequence[Utterance], speakers: list[str], seed: int) -> list[str]:
    """Every speaker once, genders taking turns, shuffled with ``seed`` (the order validation speakers are taken)."""
    gender = {u.speaker: (u.gender or "?") for u in utterances}
    rng = random.Random(seed)
    by_gender: dict[str, list[str]] = defaultdict(list)
    for spk in speakers:
        by_gender[gender[spk]].append(spk)
    pools = [sorted(v) for _, v in sorted(by_gender.items())]
    for pool in pools:
        rng.shuffle(pool)
    rng.shuffle(pools)
    order: list[str] = []
    while len(order) < len(speakers):
        for pool in pools:
            if pool:
                order.append(pool.pop())
    return order


def choose_pool_validation_speakers(utterances: Sequence[Utterance], count: int, seed: int,
                                    min_utterances: int = 0) -> list[str]:
    """:func:`choose_validation_speakers` within each corpus of a pool, the count shared out over the corpora
    (at least one speaker each), so that early stopping watches every language and channel the model trains on.
    A single-corpus manifest gets exactly :func:`choose_validation_speakers`' choice."""
    corpora = sorted({u.corpus for u in utterances})
    if len(corpora) < 2 or count <= 0:
        return choose_validation_speakers(utterances, count, seed, min_utterances)
    per = [count // len(corpora) + (1 if i < count % len(corpora) else 0) for i in range(len(corpora))]
    chosen: list[str] = []
    for i, corpus in enumerate(corpora):
        part = [u for u in utterances if u.corpus == corpus]
        chosen += choose_validation_speakers(part, max(per[i], 1), seed + 7919 * i, -(-min_utterances // len(corpora)))
    return sorted(chosen)


def _fold(name: str, utterances: Sequence[Utterance], test_speakers: set[str], val_count: int,
          seed: int, val_min: int = 0) -> Fold:
    test = [u for u in utterances if u.speaker in test_speakers]
    rest = [u for u in utterances if u.speaker not in test_speakers]
    val_speakers = set(choose_pool_validation_speakers(rest, val_count, seed, val_min))
    train = [u for u in rest if u.speaker not in val_speakers]
    val = [u for u in rest if u.speaker in val_speakers]
    fold = Fold(
        name=name,
        train=[u.id for u in train],
        val=[u.id for u in val],
        test=[u.id for u in test],
        train_speakers=sorted({u.speaker for u in train}),
        val_speakers=sorted(val_speakers),
        test_speakers=sorted(test_speakers),
    )
    validate_fold(fold, utterances)
    return fold


def rotate_validation(fold: Fold, utterances: Sequence[Utterance], member: int, seed: int = 0) -> Fold:
    """The fold as ensemble member ``member`` sees it: the same test speakers and the same training side
    (``train + val``), with other training speakers held out for validation.

    Member 0 keeps the fold's own split. Member ``m`` takes ``len(fold.val_speakers)`` speakers (gender-balanced,
    seeded by ``seed + m``) among those no earlier member validated on, starting over once every training-side
    speaker has validated. Each member therefore selects its epochs on speakers it did not train on, and
    together the members train on every training speaker: the ensemble no longer leaves the same speakers out
    of every model (a steadier validation signal than one fixed pair on a small corpus).
    """
    count = len(fold.val_speakers)
    if member == 0 or count == 0:
        return fold
    by_id = {u.id: u for u in utterances}
    side = [by_id[i] for i in fold.train + fold.val]
    speakers = sorted({u.speaker for u in side})
    used = set(fold.val_speakers)
    chosen: list[str] = []
    for m in range(1, member + 1):
        if len(speakers) - len(used) < count:
            used = set()  # every speaker has validated: start over
        chosen = choose_pool_validation_speakers([u for u in side if u.speaker not in used], count, seed + m)
        used |= set(chosen)
    val = set(chosen)
    out = Fold(name=fold.name, train=[u.id for u in side if u.speaker not in val],
               val=[u.id for u in side if u.speaker in val], test=list(fold.test),
               train_speakers=sorted(set(speakers) - val), val_speakers=sorted(val),
               test_speakers=list(fold.test_speakers))
    validate_fold(out, utterances)
    return out


def validate_fold(fold: Fold, utterances: Sequence[Utterance]) -> None:
    """Check speaker disjointness of a fold (also for folds a user supplies)."""
    by_id = {u.id: u for u in utterances}
    missing = [i for i in fold.train + fold.val + fold.test if i not in by_id]
    if missing:
        raise ValueError(f"fold {fold.name}: {len(missing)} utterance id(s) not in the manifest, e.g. {missing[0]}")
    train = [by_id[i] for i in fold.train]
    val = [by_id[i] for i in fold.val]
    test = [by_id[i] for i in fold.test]
    check_speaker_disjoint(train, test, "training", "test")
    check_speaker_disjoint(val, test, "validation", "test")
    if not train:
        raise ValueError(f"fold {fold.name}: no training utterances")


def make_folds(utterances: Sequence[Utterance], protocol: str, *, val_speakers: int = 2, k: int = 5,
               seed: int = 0, test_session: str | None = None,
               test_speakers: Sequence[str] | None = None, test_corpus: str | None = None,
               val_min: int = 0) -> list[Fold]:
    """Folds of a named protocol (``val_min``: validation speakers are added until they hold this many
    utterances, :func:`choose_validation_speakers`).

    * ``session-holdout``: one session is the test set (IEMOCAP's Session 5 by
      default, the paper's protocol: the last session in sort order).
    * ``loso``: leave one speaker out (EmoDB: 10 folds).
    * ``loso-session``: leave one session out (IEMOCAP: 5 folds).
    * ``speaker-kfold``: ``k`` folds of speaker groups drawn at random (seeded).
    * ``speaker-groups``: ``k`` folds of consecutive speakers in sorted order, the usual fixed folds of a corpus
      whose speakers are numbered (RAVDESS actors 01-16: 01-04, 05-08, 09-12, 13-16), so that results compare
      across papers and tools.
    * ``loco``: leave one corpus out, on a pooled manifest (:mod:`moma.corpora.pool`): each corpus in turn is
      the test set and the others train.
    * ``predefined``: the given ``test_speakers`` are the test set.

    ``test_corpus`` (``loso`` on a pool): only that corpus's speakers are left out in turn, and every other
    utterance of the pool trains. On a pool, validation speakers are drawn from every training corpus.
    * ``all``: no test set; every speaker but the validation speakers trains (a final model to ship).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not utterances:
        raise ValueError("no utterances to split")
    speakers = sorted({u.speaker for u in utterances})
    folds: list[Fold] = []
    corpora = sorted({u.corpus for u in utterances if u.corpus})
    if test_corpus is not None and protocol != "loso":
        raise ValueError(f"test_corpus is for the loso protocol on a pool, not {protocol}")
    if test_corpus is not None and test_corpus not in corpora:
        raise ValueError(f"test corpus {test_corpus!r} not in the manifest (corpora: {', '.join(corpora) or 'none'})")
    if protocol == "loso":
        left_out = sorted({u.speaker for u in utterances if u.corpus == test_corpus}) if test_corpus else speakers
        if len(speakers) < 2:
            raise ValueError("leave-one-speaker-out needs at least two speakers")
        for i, spk in enumerate(left_out):
            folds.append(_fold(f"spk-{spk}", utterances, {spk}, val_speakers, seed + i, val_min))
    elif protocol == "loco":
        if len(corpora) < 2:
            raise ValueError("leave-one-corpus-out needs a pooled manifest of at least two corpora "
                             "(moma pool A.jsonl B.jsonl --out pool.jsonl)")
        for i, corpus in enumerate(corpora):
            held_out = {u.speaker for u in utterances if u.corpus == corpus}
            folds.append(_fold(f"corpus-{corpus}", utterances, held_out, val_speakers, seed + i, val_min))
    elif protocol in ("loso-session", "session-holdout"):
        sessions = sorted({u.session for u in utterances if u.session})
        if len(sessions) < 2:
            raise ValueError(f"protocol {protocol} needs at least two sessions in the manifest")
        chosen = sessions if protocol == "loso-session" else [test_session or sessions[-1]]
        for i, ses in enumerate(chosen):
            if ses not in sessions:
                raise ValueError(f"test session {ses!r} not in the manifest (sessions: {', '.join(sessions)})")
            ses_speakers = {u.speaker for u in utterances if u.session == ses}
            other = {u.speaker for u in utterances if u.session != ses}
            if ses_speakers & other:
                raise SpeakerLeakageError(
                    f"speaker(s) {', '.join(sorted(ses_speakers & other))} occur in session {ses} and in other "
                    "sessions, so a session split is not speaker-independent")
            folds.append(_fold(f"session-{ses}", utterances, ses_speakers, val_speakers, seed + i, val_min))
    elif protocol in ("speaker-kfold", "speaker-groups"):
        if k < 2 or k > len(speakers):
            raise ValueError(f"{protocol} needs 2 <= k <= number of speakers ({len(speakers)}), got {k}")
        if protocol == "speaker-groups":  # k runs of consecutive speakers, the first ones one longer if uneven
            sizes = [len(speakers) // k + (1 if i < len(speakers) % k else 0) for i in range(k)]
            starts = [sum(sizes[:i]) for i in range(k)]
            groups = [speakers[a:a + n] for a, n in zip(starts, sizes)]
        else:
            order = speakers[:]
            random.Random(seed).shuffle(order)
            groups = [sorted(order[i::k]) for i in range(k)]
        for i, group in enumerate(groups):
            folds.append(_fold(f"group-{i + 1}", utterances, set(group), val_speakers, seed + i, val_min))
    elif protocol == "all":
        folds.append(_fold("all", utterances, set(), val_speakers, seed, val_min))
    else:  # predefined
        if not test_speakers:
            raise ValueError("protocol 'predefined' needs test_speakers")
        unknown = sorted(set(test_speakers) - set(speakers))
        if unknown:
            raise ValueError(f"test speaker(s) not in the manifest: {', '.join(unknown)}")
        folds.append(_fold("predefined", utterances, set(test_speakers), val_speakers, seed, val_min))
    for fold in folds:
        log.info("fold %s: %d train (%d speakers), %d val (%s), %d test (%s)", fold.name, len(fold.train),
                 len(fold.train_speakers), len(fold.val), ",".join(fold.val_speakers), len(fold.test),
                 ",".join(fold.test_speakers))
    return folds


@dataclass(frozen=True)
class ProtocolSpec:
    """Which folds a cross-validation run has and which of them this call computes; the CLI builds it once."""

    protocol: str  # session-holdout | loso | loso-session | speaker-kfold | loco | predefined | all (make_folds)
    k: int = 5  # speaker-group folds of protocol speaker-kfold
    test_session: str | None = None  # session-holdout: the test session (default: the last in sort order)
    test_speakers: tuple[str, ...] | None = None  # predefined: the test speakers
    test_corpus: str | None = None  # loso on a pool: only this corpus's speakers are left out
    only_folds: tuple[str, ...] | None = None  # compute these folds (names or test speakers); the report covers all
    corpus: str | None = None  # the corpus's name in titles and reports; None: from the utterances

    def folds(self, utterances: Sequence[Utterance], *, val_speakers: int, seed: int,
              val_min: int = 0) -> list[Fold]:
        """Every fold of the protocol, in its order."""
        return make_folds(utterances, self.protocol, val_speakers=val_speakers, k=self.k, seed=seed,
                          test_session=self.test_session, test_speakers=self.test_speakers,
                          test_corpus=self.test_corpus, val_min=val_min)


def select_folds(folds: Sequence[Fold], wanted: Sequence[str] | None) -> list[Fold]:
    """The folds named in ``wanted`` (a fold's name or one of its test speakers), all when ``wanted`` is empty;
    a name that matches nothing is an error, so a typo never runs the wrong folds silently."""
    if not wanted:
        return list(folds)
    chosen = [f for f in folds if f.name in wanted or any(s in wanted for s in f.test_speakers)]
    known = {f.name for f in folds} | {s for f in folds for s in f.test_speakers}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"no fold matches {', '.join(unknown)} (folds: {', '.join(f.name for f in folds)})")
    return chosen


def fold_scored_classes(fold: Fold, utterances: Sequence[Utterance], labels: Sequence[str]) -> list[str] | None:
    """The classes a fold is scored over: those of its test corpus, where a pool holds classes that corpus lacks
    (its speakers cannot be asked to tell apart classes their corpus never recorded). ``None`` otherwise."""
    by_id = {u.id: u for u in utterances}
    test_corpora = {by_id[i].corpus for i in fold.test}
    if len(test_corpora) != 1:
        return None
    corpus = test_corpora.pop()
    own = {u.label for u in utterances if u.corpus == corpus}
    return [c for c in labels if c in own] if own != set(labels) else None
