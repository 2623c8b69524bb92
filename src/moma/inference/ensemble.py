"""Servable ensembles and late fusion: what ``moma fuse`` evaluates, as one file that ``moma predict`` runs.

Two artefacts, both single safetensors files (no pickle) with JSON metadata:

* a **linear functionals model** (``moma classical --protocol all --out DIR`` writes ``DIR/<set>.safetensors``):
  the classical anchor's LinearSVC trained on every speaker, as coef (labels, D) and intercept (labels,), the
  standardiser's mean and std (D,), and its softmax temperature;
* an **ensemble** (``moma combine MEMBER... --out FILE``): MOMA checkpoints and linear models, each member's
  tensors under the prefix ``m{i}.``, the metadata listing every member (kind, labels, config or feature set,
  temperature, normaliser, weight) and the rule.

The rule is :func:`moma.evaluation.fusion.combine_posteriors`, the one ``moma fuse`` applies to stored
posteriors: the weighted geometric mean of the members' temperature-scaled posteriors over the labels every
member shares, renormalised. :class:`EnsemblePredictor` serves it behind the :class:`Predictor` interface, so
``moma predict`` (``--adapt`` included: each member adapts its own inputs), ``moma timeline``, ``moma serve`` and
``moma evaluate`` run an ensemble unchanged. Each member's probabilities are the ones it serves alone (a MOMA
member's from :func:`moma.evaluation.posteriors.class_posteriors`, calibrated), so the rule applies no temperature
of its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy.special import softmax

from moma.audio.io import SAMPLE_RATE
from moma.audio.vad import VadConfig
from moma.checkpoint import checkpoint_from_parts, read_checkpoint_file, resolve_checkpoint_path
from moma.config import RunConfig
from moma.corpora.base import Utterance
from moma.evaluation.fusion import combine_posteriors
from moma.features.functionals import compute_functionals, extract_functionals, functionals_cache_dir
from moma.features.normalise import (
    Normaliser,
    adapt_normaliser,
    normalise_functionals,
    standardise_functionals_for_checkpoint,
)
from moma.features.ood import OodModel, ood_description
from moma.files import replace_atomically
from moma.inference.predictor import MIN_SPEECH_S, SPEECH_CHECK, Prediction, Predictor
from moma.version import __version__

log = logging.getLogger(__name__)

LINEAR_FORMAT = "moma-linear/1"
ENSEMBLE_FORMAT = "moma-ensemble/1"
LINEAR_KIND = "linear-functionals"
RULE = ("weighted geometric mean of the members' temperature-scaled posteriors over the labels every member "
        "shares, renormalised (moma.evaluation.fusion.combine_posteriors, the rule of `moma fuse`)")
LINEAR_TENSORS = ("coef", "intercept", "mean", "std")
FEATURE_ARRAYS_REFUSED = ("an ensemble predicts signals and files (each member computes and normalises its own "
                          "features), not one model's feature arrays: use predict_signal, predict_files or "
                          "predict_speech")


# --------------------------------------------------------------------------- linear functionals model


@dataclass
class LinearModel:
    """A linear classifier on standardised utterance functionals (the classical anchor, servable)."""

    coef: np.ndarray  # (labels, D) float32: one weight row per label (binary: [-w, w])
    intercept: np.ndarray  # (labels,) float32
    mean: np.ndarray  # (D,) float32, standardiser mean of the training utterances
    std: np.ndarray  # (D,) float32, standardiser std (1 where a functional was constant)
    labels: list[str]
    feature_set: str
    temperature: float | None  # softmax temperature of the decision values; None: uncalibrated
    info: dict[str, Any] = field(default_factory=dict)  # C, training corpus and speakers, versions
    ood: OodModel | None = None  # density of the training utterances' raw functionals (moma.features.ood)

    def standardiser(self) -> Normaliser:
        """The training utterances' standardiser of the functionals, as a :class:`Normaliser` (so that ``--adapt``
        can replace it with the inputs' own statistics, as it does a fusion model's)."""
        norm = Normaliser("global")
        norm.mean, norm.std = self.mean.astype(np.float64), self.std.astype(np.float64)
        norm.frames, norm.num_speakers = int(self.info.get("n_train", 0)), len(self.info.get("train_speakers", []))
        return norm

    def posteriors(self, standardised: np.ndarray) -> np.ndarray:
        """Temperature-scaled posteriors (n, labels) of standardised functionals (n, D): ``softmax(decision / T)``,
        the probabilities this model serves (T = 1 when uncalibrated)."""
        x = np.asarray(standardised, dtype=np.float64)  # (n, D)
        decision = x @ self.coef.astype(np.float64).T + self.intercept.astype(np.float64)  # (n, labels)
        return softmax(decision / (self.temperature or 1.0), axis=1)

    def metadata(self) -> dict[str, Any]:
        ood = {"ood": self._ood_state()[0]} if self.ood is not None else {}
        return {"kind": LINEAR_KIND, "feature_set": self.feature_set, "labels": list(self.labels),
                "temperature": self.temperature, "moma_version": __version__, **self.info, **ood}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float32))
               for name in LINEAR_TENSORS}
        return {**out, **(self._ood_state()[1] if self.ood is not None else {})}

    def _ood_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The density's JSON fields (arrays named ``ood.<name>``) and its arrays as tensors."""
        assert self.ood is not None
        fields, tensors = {}, {}
        for key, value in self.ood.state_dict().items():
            if isinstance(value, np.ndarray):
                tensors[f"ood.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
                fields[key] = {"__tensor__": f"ood.{key}"}
            else:
                fields[key] = value
        return fields, tensors


def save_linear_model(path: str | Path, model: LinearModel) -> Path:
    """Write ``model`` as one safetensors file (tensors + JSON metadata), atomically."""
    meta = {"format": LINEAR_FORMAT, "linear": json.dumps(model.metadata())}
    return replace_atomically(Path(path), lambda tmp: save_file(model.tensors(), str(tmp), metadata=meta))


def linear_from_parts(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LinearModel:
    """A :class:`LinearModel` from its metadata (the ``linear`` JSON) and its four tensors."""
    arrays = {name: tensors[name].numpy() for name in LINEAR_TENSORS}
    info = {k: v for k, v in meta.items() if k not in ("kind", "feature_set", "labels", "temperature", "ood")}
    ood = None
    if meta.get("ood"):  # linear models written before the out-of-domain score have none
        ood = OodModel.from_state({k: tensors[v["__tensor__"]].numpy() if isinstance(v, dict) and "__tensor__" in v
                                   else v for k, v in meta["ood"].items()})
    return LinearModel(**arrays, labels=list(meta["labels"]), feature_set=meta["feature_set"],
                       temperature=meta.get("temperature"), info=info, ood=ood)


def artefact_format(path: str | Path) -> str | None:
    """The ``format`` in a safetensors file's metadata, or None for anything else (a folder, another file)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return (fh.metadata() or {}).get("format")
    except Exception:  # noqa: BLE001 (safetensors raises several types): the checkpoint loader names the problem
        return None


def is_ensemble_artefact(path: str | Path) -> bool:
    """True for an ensemble or a linear functionals model (both served by :class:`EnsemblePredictor`)."""
    return artefact_format(path) in (ENSEMBLE_FORMAT, LINEAR_FORMAT)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}


def read_linear_model(path: str | Path) -> LinearModel:
    path = Path(path)
    if artefact_format(path) != LINEAR_FORMAT:
        raise ValueError(f"{path}: not a linear functionals model (written by `moma classical --protocol all`)")
    meta, tensors = _read(path)
    return linear_from_parts(json.loads(meta["linear"]), tensors)


# --------------------------------------------------------------------------- combining members


def _member_parts(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(member entry for the ensemble's metadata, its tensors without prefix) of one MEMBER argument."""
    fmt = artefact_format(path)
    if fmt == ENSEMBLE_FORMAT:
        raise ValueError(f"{path}: already an ensemble; name its members instead (ensembles do not nest)")
    if fmt == LINEAR_FORMAT:
        model = read_linear_model(path)
        return {**model.metadata(), "source": Path(path).name}, model.tensors()
    file = resolve_checkpoint_path(path)
    meta, tensors = read_checkpoint_file(file)
    meta.pop("training_state", None)  # a served member needs no optimiser state
    tensors = {k: v for k, v in tensors.items() if not k.startswith("state.")}
    info = json.loads(meta.get("info", "{}"))
    temperature = (info.get("calibration") or {}).get("temperature")
    source = file.parent.name if file.name in ("best.safetensors", "last.safetensors", "model.safetensors") \
        else file.name
    return {"kind": "moma", "labels": json.loads(meta["labels"]), "temperature": temperature,
            "config": json.loads(meta["config"]), "source": source, "checkpoint": meta}, tensors


def shared_labels(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The labels every member has, in the first member's order; fewer than 2 is refused in one line."""
    shared = [c for c in entries[0]["labels"] if all(c in e["labels"] for e in entries[1:])]
    if len(shared) < 2:
        listed = "; ".join(f"{e['source']}: {', '.join(e['labels'])}" for e in entries)
        raise ValueError(f"the members share {len(shared)} class(es) ({', '.join(shared) or 'none'}); an ensemble "
                         f"needs at least 2 in common ({listed})")
    return shared


def _sample_rate(entry: dict[str, Any]) -> int:
    return int(entry["config"]["features"].get("sample_rate", SAMPLE_RATE)) if entry["kind"] == "moma" \
        else SAMPLE_RATE


def combine_members(members: Sequence[str | Path], out: str | Path,
                    weights: Sequence[float] | None = None) -> Path:
    """Write one ensemble file of ``members`` (MOMA checkpoints or run folders, linear functionals models)."""
    if not members:
        raise ValueError("no members given")
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    if len(weights) != len(members) or not all(w > 0 for w in weights):
        raise ValueError(f"--weights: one positive weight per member ({len(members)}), got {weights}")
    parts = [_member_parts(m) for m in members]
    entries = [entry for entry, _ in parts]
    labels = shared_labels(entries)
    rates = sorted({_sample_rate(e) for e in entries})
    if len(rates) > 1:
        raise ValueError(f"the members read audio at different rates ({', '.join(map(str, rates))} Hz); combine "
                         "models of one sample rate")
    tensors: dict[str, torch.Tensor] = {}
    for i, ((entry, its), w) in enumerate(zip(parts, weights)):
        entry["weight"] = w / sum(weights)
        tensors.update({f"m{i}.{k}": v.contiguous() for k, v in its.items()})
    meta = {"format": ENSEMBLE_FORMAT,
            "ensemble": json.dumps({"labels": labels, "rule": RULE, "members": entries}),
            "info": json.dumps({"moma_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})}
    return replace_atomically(Path(out), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


# --------------------------------------------------------------------------- serving


@dataclass
class Member:
    """One loaded member: a MOMA :class:`Predictor` (no speech check of its own) or a :class:`LinearModel`."""

    entry: dict[str, Any]  # its metadata entry (kind, labels, weight, temperature, source, ...)
    columns: list[int]  # its output index of each shared label
    predictor: Predictor | None = None
    linear: LinearModel | None = None

    @property
    def temperature(self) -> float | None:
        return self.entry.get("temperature")

    def speech_posteriors(self, signals: Sequence[np.ndarray], batch_size: int | None = None, adapt: str = "none"
                          ) -> tuple[np.ndarray, list[Prediction] | None]:
        """(the probabilities it serves of mono signals (n, shared labels), a MOMA member's own predictions or
        None, or a linear member's carrying only its out-of-domain scores); ``adapt`` as :meth:`Predictor.predict_speech` (``batch``: a linear member's functionals are
        standardised with the inputs' own statistics, as a fusion model's are; ``utterance`` leaves them)."""
        if self.linear is not None:
            values = [compute_functionals(s, self.linear.feature_set, SAMPLE_RATE) for s in signals]  # (D,) each
            standardiser = self.linear.standardiser()
            if adapt == "batch" and values:
                standardiser = adapt_normaliser(standardiser, [v[None, :] for v in values], "batch")
            x = np.stack([normalise_functionals(standardiser, v) for v in values]) if values else \
                np.zeros((0, self.linear.mean.shape[0]), dtype=np.float32)  # (n, D)
            posteriors = self.linear.posteriors(x)[:, self.columns]
            if self.linear.ood is None:
                return posteriors, None
            scores = [self.linear.ood.score(v) for v in values]  # its density reads the raw functionals
            return posteriors, [Prediction(label="", probabilities={}, ood_score=d, in_domain=ok) for d, ok in scores]
        assert self.predictor is not None
        preds = self.predictor.predict_speech(list(signals), batch_size=batch_size, adapt=adapt)
        names = [self.entry["labels"][c] for c in self.columns]
        return np.array([[p.probabilities[c] for c in names] for p in preds], dtype=np.float64), preds

    def labelled_posteriors(self, utterances: Sequence[Utterance], cache_dir: str | Path, adapt: str = "none"
                            ) -> tuple[np.ndarray, str]:
        """(the probabilities it serves of a manifest's utterances (n, shared labels), how it normalised them),
        as :meth:`Predictor.labelled_posteriors` (a linear member reads its functionals from the cache)."""
        ids = [u.id for u in utterances]
        if self.linear is not None:
            raw = extract_functionals(utterances, self.linear.feature_set, cache_dir=functionals_cache_dir(cache_dir))
            rows = standardise_functionals_for_checkpoint(self.linear.standardiser(), raw, utterances, adapt)
            note = ("functionals standardised with the test data's own statistics (transductive)"
                    if adapt in ("batch", "speaker") else "functionals standardised with its training statistics")
            return self.linear.posteriors(np.stack([rows[k] for k in ids]))[:, self.columns], note
        assert self.predictor is not None
        post, note = self.predictor.labelled_posteriors(utterances, cache_dir, adapt)
        return np.stack([post[k] for k in ids])[:, self.columns], note


def _load_member(entry: dict[str, Any], tensors: dict[str, torch.Tensor], labels: Sequence[str],
                 device: str) -> Member:
    columns = [entry["labels"].index(c) for c in labels]
    if entry["kind"] == LINEAR_KIND:
        return Member(entry, columns, linear=linear_from_parts(entry, tensors))
    loaded = checkpoint_from_parts(entry["checkpoint"], tensors, device, entry["source"])
    return Member(entry, columns, predictor=Predictor.from_loaded(loaded, device=device, speech_check=None))


def load_members(path: Path, device: str = "cpu") -> tuple[list[Member], list[str]]:
    """The loaded members of an ensemble file (or of a linear model, an ensemble of one) and the shared labels."""
    meta, tensors = _read(path)
    if meta.get("format") == LINEAR_FORMAT:
        entry = {**json.loads(meta["linear"]), "weight": 1.0, "source": path.name}
        return [_load_member(entry, tensors, entry["labels"], device)], list(entry["labels"])
    spec = json.loads(meta["ensemble"])
    members = []
    for i, entry in enumerate(spec["members"]):
        prefix = f"m{i}."
        its = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        members.append(_load_member(entry, its, spec["labels"], device))
    return members, list(spec["labels"])


class EnsemblePredictor(Predictor):
    """A :class:`Predictor` over several members, combined by the late-fusion rule (:data:`RULE`).

    Signals and files take the same path as a single model's (speech check, batching, statuses); each MOMA
    member computes its own features with its own normaliser, each linear member its functionals of the
    signal. ``--adapt`` adapts each member's own inputs (its frames, a fusion or linear member's functionals
    under ``batch``). The attention shown is the first MOMA member's. Feature arrays (:meth:`predict_batch`) are
    refused in one line: no one normalisation fits every member.
    """

    def __init__(self, members: Sequence[Member], labels: Sequence[str], *, source: str = "",
                 speech_check: VadConfig | None = SPEECH_CHECK, min_speech_s: float = MIN_SPEECH_S) -> None:
        # not Predictor.__init__: there is no one backend; the first MOMA member's feature settings give the
        # sample rate and minimum duration (a linear-only ensemble: the defaults, 16 kHz as openSMILE's input)
        self.members = list(members)
        moma = [m.predictor for m in self.members if m.predictor is not None]
        self.config = moma[0].config if moma else RunConfig()
        self.normaliser = moma[0].normaliser if moma else Normaliser("none")
        self.functionals_normaliser = None
        self.backend = moma[0].backend if moma else None
        self.labels = list(labels)
        self.info = {"moma_version": __version__}
        self.source = source
        self.temperature = 1.0  # each member's probabilities already carry its own temperature
        self.calibrated = all(m.temperature is not None for m in self.members)
        self.speech_check = speech_check
        self.min_speech_s = min_speech_s
        # the out-of-domain score is the first member's that has one (members listed first count first)
        self.ood_member = next((i for i, m in enumerate(self.members) if member_ood(m) is not None), None)
        self.ood = None if self.ood_member is None else member_ood(self.members[self.ood_member])

    def predict_batch(self, feats: Sequence[np.ndarray], functionals: Any = None) -> list[Prediction]:
        raise ValueError(FEATURE_ARRAYS_REFUSED)

    def posteriors(self, feats: Sequence[np.ndarray], functionals: Any = None) -> np.ndarray:
        raise ValueError(FEATURE_ARRAYS_REFUSED)

    def predict_speech(self, signals: Sequence[np.ndarray], *, batch_size: int | None = None,
                       adapt: str = "none") -> list[Prediction]:
        """The members' probabilities of mono signals at :attr:`sample_rate`, combined by the rule; one per
        signal (:meth:`Predictor.predict_prepared` and :meth:`Predictor.predict_files` check for speech first).
        ``adapt``: each member adapts its own inputs (:meth:`Member.speech_posteriors`)."""
        if not signals:
            return []
        parts = [member.speech_posteriors(signals, batch_size, adapt) for member in self.members]
        # attention from the first MOMA member; the out-of-domain score from the first member that has a density
        shown = next((preds for m, (_, preds) in zip(self.members, parts) if m.predictor is not None), None)
        scored = parts[self.ood_member][1] if self.ood_member is not None else None
        probs = self._combine([post for post, _ in parts])  # (n, shared labels)
        shift = float(self.config.features.frame_shift_ms)
        out = []
        for i, row in enumerate(probs):
            first = shown[i] if shown else None
            out.append(Prediction(label=self.labels[int(row.argmax())],
                                  probabilities={lab: float(p) for lab, p in zip(self.labels, row)},
                                  attention=first.attention if first else {},
                                  num_frames=first.num_frames if first else 0, frame_shift_ms=shift,
                                  calibrated=self.calibrated, ood_score=scored[i].ood_score if scored else None,
                                  in_domain=scored[i].in_domain if scored else None))
        return out

    def labelled_posteriors(self, utterances: Sequence[Utterance], cache_dir: str | Path, adapt: str = "none"
                            ) -> tuple[dict[str, np.ndarray], str]:
        """The members' probabilities of a manifest's utterances combined by the rule (what `moma evaluate`
        scores), and how each member normalised its inputs."""
        parts = [member.labelled_posteriors(utterances, cache_dir, adapt) for member in self.members]
        probs = self._combine([post for post, _ in parts])
        note = "each member its own: " + "; ".join(f"{m.entry.get('source', '?')}: {n}"
                                                   for m, (_, n) in zip(self.members, parts))
        return dict(zip([u.id for u in utterances], probs)), note

    def _combine(self, posteriors: Sequence[np.ndarray]) -> np.ndarray:
        """The rule over the members' served (already temperature-scaled) probabilities, each (n, shared labels):
        ``combine_posteriors`` with T = 1, which equals the rule on raw posteriors with each member's temperature
        for any member whose probabilities are ``softmax(z / T)`` (every non-segment model)."""
        return combine_posteriors(list(posteriors), [float(m.entry.get("weight", 1.0)) for m in self.members])

    def describe(self) -> dict[str, Any]:
        """The model card of an ensemble: its labels, rule and members (kind, labels, weight, temperature,
        architecture and normaliser, or feature set)."""
        members = [describe_member(m) for m in self.members]
        return {"kind": "ensemble", "labels": self.labels, "backend": "torch", "sample_rate": self.sample_rate,
                "frame_shift_ms": float(self.config.features.frame_shift_ms), "architecture": "ensemble",
                "normalisation": "each member its own: " + "; ".join(m["normalisation"] for m in members),
                "config": {}, "card": {"calibrated": self.calibrated}, "rule": RULE, "members": members,
                **ood_description(self.ood),
                **({"ood_member": self.members[self.ood_member].entry.get("source", "")} if self.ood else {}),
                "moma_version": __version__, "source": Path(self.source).name if self.source else ""}


def member_ood(member: Member) -> OodModel | None:
    """A member's out-of-domain density: a MOMA checkpoint's or a linear model's (None when it has none)."""
    return member.predictor.ood if member.predictor is not None else member.linear.ood if member.linear else None


def describe_member(member: Member) -> dict[str, Any]:
    entry = member.entry
    out = {"kind": entry["kind"], "source": entry.get("source", ""), "labels": entry["labels"],
           "weight": round(float(entry.get("weight", 1.0)), 6), "temperature": member.temperature,
           "ood_threshold": None if member_ood(member) is None else round(member_ood(member).threshold, 4)}
    if member.predictor is not None:
        out.update(architecture=member.predictor.config.model.arch,
                   normalisation=member.predictor.normaliser.describe())
    else:
        out.update(feature_set=entry["feature_set"], C=entry.get("C"),
                   normalisation="global mean/std of the training utterances' functionals")
    return out


def load_ensemble_predictor(path: str | Path, *, device: str = "cpu", backend: str = "torch",
                            speech_check: VadConfig | None = SPEECH_CHECK) -> EnsemblePredictor:
    """An :class:`EnsemblePredictor` for an ensemble file or a linear functionals model (torch backend only)."""
    if backend != "torch":
        raise ValueError(f"backend {backend!r}: an ensemble runs on the torch backend only (its linear members "
                         "read openSMILE functionals, which have no ONNX graph); use --backend torch")
    members, labels = load_members(Path(path), device)
    return EnsemblePredictor(members, labels, source=str(path), speech_check=speech_check)


def summary_line(path: str | Path) -> str:
    """One line about an ensemble or linear file for ``moma models``-style listings: its labels and members."""
    members, labels = load_members(Path(path))
    parts = [f"{d['source']} ({d['kind']}{', ' + d['feature_set'] if 'feature_set' in d else ''}, "
             f"weight {d['weight']:g})" for d in map(describe_member, members)]
    return f"ensemble of {len(members)}: {len(labels)} classes ({', '.join(labels)}); members: {', '.join(parts)}"
