"""Fitting a model's out-of-domain density on its training utterances: at training time, or afterwards.

Every fold that ``moma train`` and ``moma cv`` train fits the density (:mod:`moma.features.ood`) on the raw
front-end frames of its training side (training and validation speakers, as the normaliser), and every checkpoint
of the fold carries it. :func:`add_ood_to_checkpoint` (``moma ood fit``) adds it to a checkpoint made before, from
the manifest(s) it was trained on; nothing else in the checkpoint changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from moma.checkpoint import load_checkpoint, resolve_checkpoint_path, save_checkpoint
from moma.corpora.base import Utterance, read_manifest
from moma.features.cache import FeatureCache, fill_cache
from moma.features.encoders import use_device
from moma.features.ood import MIN_UTTERANCES, OodModel, fit_ood, utterance_statistics

log = logging.getLogger(__name__)


def fit_training_ood(features: Mapping[str, np.ndarray], ids: Sequence[str], speaker_of: Mapping[str, str], *,
                     fitted_on: str = "") -> OodModel | None:
    """The density of the raw frames ``features[k]`` of training utterances ``ids`` (each one's speaker in
    ``speaker_of``); None, with a warning, when there are too few utterances to fit one."""
    reps = {k: utterance_statistics(features[k]) for k in ids if features[k].shape[0] > 0}
    return fit_representations(reps, speaker_of, fitted_on=fitted_on)


def fit_representations(reps: Mapping[str, np.ndarray], speaker_of: Mapping[str, str], *,
                        fitted_on: str = "") -> OodModel | None:
    """:func:`fit_training_ood` on utterance representations already computed (id -> (D,))."""
    if len(reps) < MIN_UTTERANCES:
        log.warning("no out-of-domain statistics: %d training utterances, at least %d needed", len(reps),
                    MIN_UTTERANCES)
        return None
    model = fit_ood(np.stack(list(reps.values())), [speaker_of[k] for k in reps], fitted_on=fitted_on)
    log.info("out-of-domain threshold %.3f (%s, quantile %.2f; %d utterances of %d speakers)", model.threshold,
             model.info["rule"], model.info["quantile"], len(reps), model.info["speakers"])
    return model


def _speaker_key(u: Utterance, several: bool) -> str:
    return f"{u.corpus}.{u.speaker}" if several and not u.speaker.startswith(f"{u.corpus}.") else u.speaker


def add_ood_to_checkpoint(checkpoint: str | Path, manifests: Sequence[str | Path], *, cache_dir: str | Path,
                          out: str | Path | None = None, speakers: Sequence[str] | None = None,
                          workers: int = 1, progress: bool = False) -> tuple[Path, OodModel]:
    """Fit the density on the utterances of ``manifests`` (those of ``speakers`` only, when given: the
    checkpoint's training speakers) with the checkpoint's own front end, and write the checkpoint again with it,
    to ``out`` (default: in place). Returns the path written and the density."""
    path = resolve_checkpoint_path(checkpoint)
    loaded = load_checkpoint(path)
    utts: list[Utterance] = [u for m in manifests for u in read_manifest(m)]
    several = len({u.corpus for u in utts}) > 1  # speaker ids of two corpora may coincide
    if speakers is not None:
        wanted = set(speakers)
        utts = [u for u in utts if u.speaker in wanted or _speaker_key(u, several) in wanted]
    if not utts:
        raise ValueError(f"no utterances to fit on in {', '.join(map(str, manifests))}"
                         + (f" for speakers {', '.join(speakers)}" if speakers is not None else ""))
    use_device("cpu")  # a pretrained front end runs on the CPU here
    cache = FeatureCache(cache_dir, loaded.config.features)
    utts = fill_cache(utts, cache, workers=workers, progress=progress)
    reps = {u.id: utterance_statistics(cache.get(u)) for u in utts}  # one utterance's frames in memory at a time
    names = ", ".join(Path(m).name for m in manifests)
    ood = fit_representations(reps, {u.id: _speaker_key(u, several) for u in utts},
                              fitted_on=f"{len(utts)} utterances of {names}")
    if ood is None:
        raise ValueError(f"{names}: too few utterances ({len(utts)}) for out-of-domain statistics")
    target = Path(out) if out is not None else path
    save_checkpoint(target, loaded.model, loaded.config, loaded.labels, loaded.normaliser, info=loaded.info,
                    functionals_normaliser=loaded.functionals_normaliser, ood=ood)
    return target, ood
