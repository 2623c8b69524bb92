"""Mean/variance normalisation fitted on training speakers only, and how a checkpoint applies it.

:class:`Normaliser` holds the mean/variance statistics. They are fitted on the
training set only; the one exception, per-speaker statistics for test
speakers, is explicit (:meth:`Normaliser.fit_speaker`) and shows in
:meth:`Normaliser.describe` so that reports can say so. The same class
standardises utterance-level functionals for the classical anchor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moma.corpora.base import Utterance

log = logging.getLogger(__name__)

# A feature whose standard deviation is below this is constant over the fitting data: it is centred and left
# unscaled (std 1). Dividing by a floor instead (the old filterbank rule, 1e-5) blew up any variation such a
# feature showed at test time by 1e5; the classical anchor's rule (kept here) cannot.
STD_FLOOR = 1e-10
NORMALISATION_MODES = ("global", "speaker", "utterance", "none")
# Where a checkpoint's statistics may come from at test time: its training set (none), each input alone
# (utterance), all of the inputs together (batch: the files a user passes from one source), or each input
# speaker/recording (speaker).
ADAPTATIONS = ("none", "utterance", "batch", "speaker")


# --------------------------------------------------------------------------- normalisation

def _moments(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean, standard deviation (floored) and frame count over all frames, in float64.

    Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2,
    which loses precision when the mean is large relative to the spread.
    """
    count = sum(int(f.shape[0]) for f in features)
    if count == 0:
        raise ValueError("cannot fit normalisation statistics on zero frames")
    mean = np.zeros(features[0].shape[1], dtype=np.float64)
    for f in features:
        mean += f.sum(axis=0, dtype=np.float64)
    mean /= count
    sq = np.zeros_like(mean)
    for f in features:
        d = f.astype(np.float64) - mean  # (T, D)
        sq += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(sq / count)
    return mean, np.where(std < STD_FLOOR, 1.0, std), count


def check_normalisation(mode: str) -> str:
    """``mode`` if it names a normalisation, else one ValueError line listing them (before anything is read)."""
    if mode not in NORMALISATION_MODES:
        raise ValueError(f"unknown normalisation mode {mode!r}; choose one of {', '.join(NORMALISATION_MODES)}")
    return mode


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _check_dims(features: Sequence[np.ndarray]) -> None:
    dims = {f.shape[1] if f.ndim == 2 else None for f in features}
    if None in dims or len(dims) != 1:
        raise ValueError(f"features must be 2-D (frames, bins) with one common bin count, got {sorted(map(str, dims))}")


class Normaliser:
    """Mean/variance feature normalisation with statistics fitted on the training set only.

    Modes:

    * ``"global"``: one mean/std vector over all training frames.
    * ``"speaker"``: one mean/std per training speaker. Speakers unseen in
      :meth:`fit` (test speakers) get statistics only through
      :meth:`fit_speaker`, from their own *unlabelled* features. That is the
      transductive setting (test speakers' audio, never their labels, is used
      before evaluation); :meth:`describe` states it, and reports must say so.
    * ``"utterance"``: each utterance is normalised by its own statistics;
      nothing is fitted.
    * ``"none"``: features pass through unchanged.

    Statistics are accumulated in float64; a feature whose standard deviation is below ``STD_FLOOR`` (1e-10)
    is centred and left unscaled.
    """

    def __init__(self, mode: str = "global") -> None:
        self.mode = check_normalisation(mode)
        self.mean: np.ndarray | None = None  # global mode
        self.std: np.ndarray | None = None  # global mode
        self.frames = 0  # training frames behind the global statistics
        self.num_speakers = 0  # training speakers seen by fit
        self.speakers: dict[str, dict[str, Any]] = {}  # speaker -> {"mean", "std", "frames", "transductive"}
        self.adapted_to = ""  # set when the statistics come from the test inputs themselves (transductive)

    def fit(self, features: Sequence[np.ndarray], speakers: Sequence[str] | None = None) -> Normaliser:
        """Fit statistics on the training features (``speakers[i]`` is the speaker of ``features[i]``)."""
        feats = list(features)
        if speakers is not None and len(speakers) != len(feats):
            raise ValueError(f"{len(feats)} feature arrays but {len(speakers)} speaker ids")
        self.num_speakers = len(set(speakers)) if speakers is not None else 0
        if self.mode in ("utterance", "none"):
            return self
        if not feats:
            raise ValueError("cannot fit normalisation statistics on an empty training set")
        _check_dims(feats)
        if self.mode == "global":
            self.mean, self.std, self.frames = _moments(feats)
            return self
        if speakers is None:
            raise ValueError("speaker normalisation needs the speaker of every training utterance")
        groups: dict[str, list[np.ndarray]] = {}
        for f, spk in zip(feats, speakers):
            groups.setdefault(spk, []).append(f)
        self.speakers = {}
        for spk, group in groups.items():
            mean, std, count = _moments(group)
            self.speakers[spk] = {"mean": mean, "std": std, "frames": count, "transductive": False}
        self.frames = sum(s["frames"] for s in self.speakers.values())
        return self

    def fit_speaker(self, speaker: str, features_list: Sequence[np.ndarray]) -> Normaliser:
        """Add statistics for a speaker unseen in training, from that speaker's unlabelled features.

        Transductive: the test speaker's audio (not labels) informs its own
        normalisation. Flagged in :meth:`describe` and :meth:`state_dict`.
        """
        if self.mode != "speaker":
            raise ValueError(f"fit_speaker applies to speaker normalisation, not {self.mode!r}")
        if speaker in self.speakers and not self.speakers[speaker]["transductive"]:
            raise ValueError(f"speaker {speaker!r} already has statistics from the training set")
        feats = list(features_list)
        if not feats:
            raise ValueError(f"no features given for speaker {speaker!r}")
        _check_dims(feats)
        mean, std, count = _moments(feats)
        self.speakers[speaker] = {"mean": mean, "std": std, "frames": count, "transductive": True}
        return self

    def has_speaker(self, speaker: str) -> bool:
        """Whether speaker mode holds statistics for ``speaker`` (from training or :meth:`fit_speaker`)."""
        return speaker in self.speakers

    def transform(self, feat: np.ndarray, speaker: str | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Normalise one utterance's ``(frames, bins)`` features; returns ``dtype`` (float32: model input)."""
        x = np.asarray(feat, dtype=dtype)
        if self.mode == "none":
            return x
        if self.mode == "utterance":
            if x.shape[0] == 0:
                return x
            mean, std, _ = _moments([x])
        elif self.mode == "global":
            if self.mean is None or self.std is None:
                raise RuntimeError("Normaliser.transform called before fit")
            mean, std = self.mean, self.std
        else:
            if speaker is None:
                raise ValueError("speaker normalisation needs the utterance's speaker")
            if speaker not in self.speakers:
                raise KeyError(f"speaker {speaker!r} has no normalisation statistics "
                               "(not in training; add them with fit_speaker)")
            mean, std = self.speakers[speaker]["mean"], self.speakers[speaker]["std"]
        if x.ndim != 2 or x.shape[1] != mean.shape[0]:
            raise ValueError(f"expected features of shape (frames, {mean.shape[0]}), got {x.shape}")
        return ((x - mean.astype(dtype)) / std.astype(dtype)).astype(dtype, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this normaliser (numpy arrays; see :meth:`from_state`)."""
        return {
            "mode": self.mode,
            "mean": None if self.mean is None else self.mean.copy(),
            "std": None if self.std is None else self.std.copy(),
            "frames": self.frames,
            "num_speakers": self.num_speakers,
            "speakers": {spk: {"mean": s["mean"].copy(), "std": s["std"].copy(), "frames": s["frames"],
                               "transductive": s["transductive"]} for spk, s in self.speakers.items()},
            "adapted_to": self.adapted_to,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Normaliser:
        """Rebuild from :meth:`state_dict` output (arrays may also be plain lists, e.g. from JSON)."""
        norm = cls(str(state["mode"]))

        def arr(value: Any) -> np.ndarray | None:
            return None if value is None else np.asarray(value, dtype=np.float64)

        norm.mean = arr(state.get("mean"))
        norm.std = arr(state.get("std"))
        norm.frames = int(state.get("frames", 0))
        norm.num_speakers = int(state.get("num_speakers", 0))
        norm.speakers = {str(spk): {"mean": arr(s["mean"]), "std": arr(s["std"]), "frames": int(s.get("frames", 0)),
                                    "transductive": bool(s.get("transductive", False))}
                         for spk, s in (state.get("speakers") or {}).items()}
        norm.adapted_to = str(state.get("adapted_to", ""))
        return norm

    def describe(self, rows: str = "frames") -> str:
        """One line for logs and reports saying where the statistics come from; ``rows`` names what was
        counted ("utterances" for a fusion model's functionals, one row each)."""
        if self.mode == "none":
            return "no feature normalisation"
        if self.mode == "utterance":
            return "per-utterance mean/variance (each utterance normalised by its own statistics)"
        who = _plural(self.num_speakers, "training speaker") if self.num_speakers else "training speakers"
        if self.adapted_to:
            return f"{self.mode} mean/variance from {self.adapted_to} ({self.frames} {rows}; transductive)"
        if self.mode == "global":
            return f"global mean/variance from {who} only ({self.frames} {rows})"
        train = sum(not s["transductive"] for s in self.speakers.values())
        extra = sorted(spk for spk, s in self.speakers.items() if s["transductive"])
        line = f"per-speaker mean/variance: {_plural(train, 'training speaker')}"
        if extra:
            line += (f"; {_plural(len(extra), 'unseen speaker')} ({', '.join(extra)}) normalised with statistics from "
                     "their own unlabelled audio (transductive)")
        return line


class NormalisedFeatures(Mapping):
    """``{id: normalised [frames, F] float32}`` computed on access from raw features and a :class:`Normaliser`.

    Normalising on access (a subtraction and a division per frame) instead of
    storing a normalised copy keeps one copy of the corpus, or none in memory
    when the raw features are :class:`PackedFeatures`.
    """

    def __init__(self, raw: Mapping[str, np.ndarray], normaliser: Normaliser, speakers: Mapping[str, str],
                 keys: Sequence[str]) -> None:
        self.raw = raw
        self.normaliser = normaliser
        self.speakers = speakers  # utterance id -> speaker (per-speaker statistics)
        self.keys_ = list(keys)
        self._keys = set(self.keys_)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        out = self.normaliser.transform(self.raw[key], self.speakers.get(key))
        # modes that change nothing hand back the mapped, read-only rows: give callers their own
        return out if out.flags.writeable else np.array(out, dtype=np.float32)

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


def normalise_features(normaliser: Normaliser, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
    """Apply a checkpoint's normaliser to one utterance.

    A speaker-normalised model meeting an unknown speaker with no statistics
    falls back to the utterance's own statistics, and says so.
    """
    if normaliser.mode == "speaker" and (speaker is None or not normaliser.has_speaker(speaker)):
        log.warning("speaker-normalised model, no statistics for speaker %r: using the utterance's own", speaker)
        return Normaliser("utterance").transform(feats).astype(np.float32, copy=False)
    return normaliser.transform(feats, speaker).astype(np.float32, copy=False)


def pooled_training_statistics(normaliser: Normaliser) -> Normaliser:
    """One global mean/variance pooled over a speaker normaliser's training speakers (transductive ones left
    out): mean = sum_s n_s m_s / N and variance = sum_s n_s (v_s + m_s^2) / N - mean^2, exactly the statistics
    of all their rows together (up to the per-speaker floor on constant features)."""
    train = [s for s in normaliser.speakers.values() if not s["transductive"]]
    if normaliser.mode != "speaker" or not train:
        raise ValueError("pooled statistics need a speaker normaliser with training speakers")
    counts = np.array([s["frames"] for s in train], dtype=np.float64)[:, None]  # (S, 1)
    means = np.stack([s["mean"] for s in train])  # (S, D)
    second = np.stack([s["std"] ** 2 + s["mean"] ** 2 for s in train])  # (S, D): E[x^2] per speaker
    total = counts.sum()
    mean = (counts * means).sum(axis=0) / total
    std = np.sqrt(np.maximum((counts * second).sum(axis=0) / total - mean ** 2, 0.0))
    pooled = Normaliser("global")
    pooled.mean, pooled.std = mean, np.where(std < STD_FLOOR, 1.0, std)
    pooled.frames, pooled.num_speakers = int(total), len(train)
    return pooled


def normalise_functionals(normaliser: Normaliser, values: np.ndarray, speaker: str | None = None) -> np.ndarray:
    """One utterance's functionals (D_f,) standardised as a fusion checkpoint was trained: its training
    statistics, or its speaker's under speaker normalisation; an unknown speaker gets the training speakers'
    pooled statistics (one vector has no statistics of its own)."""
    row = np.asarray(values, dtype=np.float64)[None, :]  # (D_f,) -> (1, D_f): the normaliser works on rows
    if normaliser.mode == "speaker" and (speaker is None or not normaliser.has_speaker(speaker)):
        normaliser = pooled_training_statistics(normaliser)
    return normaliser.transform(row, speaker)[0].astype(np.float32)


def adapt_normaliser(normaliser: Normaliser, features: Sequence[np.ndarray], adapt: str,
                     speakers: Sequence[str] | None = None) -> Normaliser:
    """A copy of a checkpoint's normaliser with statistics from the test inputs themselves (transductive).

    ``utterance``: each input by its own mean/variance (uses nothing but the input itself); ``batch``: one
    mean/variance over all of ``features`` (the files a user passes from one source, a test corpus);
    ``speaker``: one per speaker or recording in ``speakers``. Models normalised per utterance, or not at
    all, have no statistics to replace and come back unchanged; ``none`` returns ``normaliser``.
    """
    if adapt not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adapt!r}; choose one of {', '.join(ADAPTATIONS)}")
    if adapt == "none":
        return normaliser
    if normaliser.mode in ("utterance", "none"):
        log.info("adaptation %r does not apply: the model uses %s", adapt, normaliser.describe())
        return normaliser
    if adapt == "utterance":
        return Normaliser("utterance")
    feats = list(features)
    if adapt == "batch":
        adapted = Normaliser("global").fit(feats)
        adapted.adapted_to = f"the {_plural(len(feats), 'input')} together"
        return adapted
    if speakers is None or len(speakers) != len(feats):
        raise ValueError("adaptation 'speaker' needs the speaker (or recording) of every input")
    adapted = Normaliser("speaker")
    groups: dict[str, list[np.ndarray]] = {}
    for f, spk in zip(feats, speakers):
        groups.setdefault(spk, []).append(f)
    for spk, group in groups.items():
        adapted.fit_speaker(spk, group)
    adapted.frames = sum(s["frames"] for s in adapted.speakers.values())
    adapted.adapted_to = f"each input speaker's own audio ({_plural(len(groups), 'speaker')})"
    return adapted


def standardise_functionals_for_checkpoint(normaliser: Normaliser, raw: Mapping[str, np.ndarray],
                                           utterances: Sequence[Utterance], adapt: str = "none"
                                           ) -> dict[str, np.ndarray]:
    """A fusion checkpoint's utterance functionals (id -> (D_f,)) standardised as it was trained, or with the
    test data's own statistics under ``adapt`` "batch" / "speaker" (transductive). "utterance" leaves them as
    trained: one vector per utterance has no statistics of its own."""
    func_adapt = adapt if adapt in ("batch", "speaker") else "none"
    rows = normalise_for_checkpoint(normaliser, {k: np.asarray(v)[None, :] for k, v in raw.items()}, utterances,
                                    adapt=func_adapt)
    return {k: v[0] for k, v in rows.items()}  # (1, D_f) -> (D_f,)


def normalise_for_checkpoint(normaliser: Normaliser, features: dict[str, np.ndarray],
                             utterances: Sequence[Utterance], adapt: str = "none") -> dict[str, np.ndarray]:
    """Normalise labelled test features the way a checkpoint was trained.

    A speaker-normalised checkpoint has no statistics for unseen speakers: they
    are fitted from each speaker's own (unlabelled) features, transductively,
    on a copy so the checkpoint's normaliser is left as it was. ``adapt``
    (:func:`adapt_normaliser`) replaces a checkpoint's statistics with the test
    data's own, over all of it or per speaker.
    """
    speaker_of = {u.id: u.speaker for u in utterances}
    if adapt != "none":
        keys = list(features)
        normaliser = adapt_normaliser(normaliser, [features[k] for k in keys], adapt, [speaker_of[k] for k in keys])
        if normaliser.mode != "speaker":
            return {k: normaliser.transform(v).astype(np.float32, copy=False) for k, v in features.items()}
    if normaliser.mode == "speaker":
        normaliser = Normaliser.from_state(normaliser.state_dict())
        by_speaker: dict[str, list[np.ndarray]] = {}
        for u in utterances:
            if not normaliser.has_speaker(u.speaker):
                by_speaker.setdefault(u.speaker, []).append(features[u.id])
        for spk, feats in by_speaker.items():
            normaliser.fit_speaker(spk, feats)
    return {k: normaliser.transform(v, speaker_of[k]).astype(np.float32, copy=False) for k, v in features.items()}
