"""Channel augmentation: perturbed copies of training utterances, computed once and cached.

A model trained on one studio learns its microphone, room and level along
with the emotions. Each copy here passes an utterance through one channel
condition drawn at random: white noise or babble (other speakers of the same
data) at a random SNR, synthetic reverberation with a random RT60, a telephone
band (8 kHz, 300-3400 Hz), or a gain change. The conditions are the ones the
robustness analysis measures (:mod:`moma.audio.perturb`), so one piece of code
makes both the training copies and the test conditions.

A copy is stored like any utterance: its cache entry is keyed by the audio's
content hash plus the recipe (families, seed, copy index), and its id is
``<id>~aug<k>``, so :func:`moma.features.cache.pack_features` packs copies and
originals into one memory-mapped file. Training then replaces an utterance by
one of its copies at random each epoch (``data.augment_copies``): an epoch costs
the same as without augmentation. Validation and test data are never perturbed.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from moma.audio.io import load_audio
from moma.audio.perturb import Condition, PerturbContext
from moma.config import FeatureConfig
from moma.corpora.base import Utterance
from moma.features.cache import FeatureCache, load_cached_array
from moma.features.frontend import compute_features

log = logging.getLogger(__name__)

CHANNEL_FAMILIES = ("white", "babble", "reverb", "telephone", "gain")
SNR_RANGE_DB = (0.0, 20.0)  # dB, uniform: white noise and babble
RT60_RANGE_S = (0.2, 0.8)  # s, uniform: synthetic room reverberation
GAIN_RANGE_DB = (-12.0, 12.0)  # dB, uniform (clipping at full scale is part of the condition)
BABBLE_POOL = 48  # utterances loaded once as babble sources (each copy's babble excludes its own speaker)


def parse_families(text: str) -> list[str]:
    """``"white,babble,reverb"`` -> the list of families, with one clear error for an unknown name."""
    families = [f.strip() for f in text.split(",") if f.strip()]
    unknown = sorted(set(families) - set(CHANNEL_FAMILIES))
    if unknown or not families:
        raise ValueError(f"data.augment_conditions: unknown or empty channel families {unknown or text!r}; "
                         f"choose from {', '.join(CHANNEL_FAMILIES)}")
    return families


def augmented_id(utt_id: str, copy: int) -> str:
    """The id of copy ``copy`` (1-based) of utterance ``utt_id``."""
    return f"{utt_id}~aug{copy}"


def recipe_tag(families: Sequence[str], seed: int) -> str:
    """A short hash of what makes a copy: the families drawn from and the seed."""
    return hashlib.sha1(f"{','.join(families)}|{seed}".encode()).hexdigest()[:10]


def draw_condition(families: Sequence[str], rng: np.random.Generator) -> Condition:
    """One channel condition: a family drawn uniformly, then its level drawn from its range."""
    family = families[int(rng.integers(len(families)))]
    if family in ("white", "babble"):
        snr = round(float(rng.uniform(*SNR_RANGE_DB)), 1)
        return Condition(f"{family}-{snr}dB", family, snr)
    if family == "reverb":
        rt60 = round(float(rng.uniform(*RT60_RANGE_S)), 2)
        return Condition(f"reverb-{rt60}s", "reverb", rt60)
    if family == "gain":
        db = round(float(rng.uniform(*GAIN_RANGE_DB)), 1)
        return Condition(f"gain{db:+}dB", "gain", db)
    return Condition("telephone", "telephone")


def _copy_rng(seed: int, utt: Utterance, copy: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(utt.id.encode("utf-8")), int(copy)])


def augmented_utterances(utterances: Sequence[Utterance], cache: FeatureCache, copies: int, families: Sequence[str],
                         seed: int, *, progress: bool = False) -> dict[str, list[Utterance]]:
    """``{id: [copy utterances]}``: ``copies`` perturbed copies of each utterance, their features in ``cache``.

    Copies already cached are not recomputed; the others are computed here (the audio is read once per
    utterance). A copy utterance carries the original's path, speaker and label, the id
    :func:`augmented_id` and a content key of its own, so the cache and the pack treat it as any utterance.
    """
    if copies <= 0:
        return {}
    families = list(families)
    tag = recipe_tag(families, seed)
    out: dict[str, list[Utterance]] = {}
    todo: list[tuple[Utterance, list[tuple[int, Utterance]]]] = []
    for u in utterances:
        sha1 = cache.sha1_of(u)
        made = [replace(u, id=augmented_id(u.id, k), sha1=f"{sha1}-aug{tag}-{k}") for k in range(1, copies + 1)]
        out[u.id] = made
        missing = [(k, c) for k, c in enumerate(made, start=1) if load_cached_array(cache.entry_path(c)) is None]
        if missing:
            todo.append((u, missing))
    if not todo:
        return out
    cfg: FeatureConfig = cache.cfg
    context = PerturbContext()
    if "babble" in families:
        pool_rng = np.random.default_rng([int(seed), 7])
        chosen = pool_rng.choice(len(utterances), size=min(BABBLE_POOL, len(utterances)), replace=False)
        for i in sorted(chosen.tolist()):
            context.babble_signals.append(load_audio(utterances[i].path, cfg.sample_rate, start=utterances[i].start,
                                                     end=utterances[i].end))
            context.babble_speakers.append(utterances[i].speaker)
    log.info("channel augmentation: computing %d copies of %d utterances (%s)",
             sum(len(m) for _, m in todo), len(todo), ", ".join(families))
    for u, missing in tqdm(todo, desc="augmenting", unit="utt", disable=not progress):
        signal = load_audio(u.path, cfg.sample_rate, start=u.start, end=u.end,
                            min_duration=cfg.frame_length_ms / 1000.0)
        context.speaker = u.speaker
        for k, copy in missing:
            rng = _copy_rng(seed, u, k)
            condition = draw_condition(families, rng)
            if condition.family == "babble" and all(s == u.speaker for s in context.babble_speakers):
                condition = Condition(f"white-{condition.level}dB", "white", condition.level)  # no other talker
            perturbed = condition(signal, cfg.sample_rate, rng, context)
            cache.put(cache.entry_path(copy), compute_features(perturbed, cfg))
    return out
