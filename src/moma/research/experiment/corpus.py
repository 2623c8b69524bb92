"""The experiment's utterances (a manifest, or a corpus prepared from its folder) and its folds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from moma.corpora.base import Utterance
from moma.data.protocols import Fold, make_folds, validate_fold
from moma.research.experiment.spec import Experiment, find_path

log = logging.getLogger(__name__)


def load_corpus(exp: Experiment, progress: bool = False) -> list[Utterance]:
    """The experiment's utterances: a manifest, or a corpus prepared from its folder.

    With both (``{manifest: M, name: N, root: R}``) an existing manifest is read, and a missing one is prepared
    from the corpus and written to ``M`` first, so one command runs the experiment from a clean checkout.
    """
    from moma.corpora.base import read_manifest, write_manifest

    base_dir = exp.path.resolve().parent
    manifest = exp.corpus.get("manifest")
    if manifest is not None:
        found = find_path(str(manifest), base_dir)
        if found.is_file() or "name" not in exp.corpus:
            utterances = read_manifest(found)
            if exp.root_given:
                root = find_path(str(exp.corpus["root"]), base_dir).resolve()
                elsewhere = [u.path for u in utterances if not Path(u.path).resolve().is_relative_to(root)]
                if elsewhere:
                    raise ValueError(f"{found} lists audio outside --root {root} (e.g. {elsewhere[0]}): it was "
                                     "prepared from another copy of the corpus; remove it to prepare it again")
            return utterances
    from moma.corpora import prepare_corpus

    utterances = prepare_corpus(str(exp.corpus["name"]), find_path(str(exp.corpus["root"]), base_dir),
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
                       test_speakers=p.get("test_speakers"), val_min=first.train.val_min_utterances)
    for fold in folds:
        validate_fold(fold, utterances)
    return folds

