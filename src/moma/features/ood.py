"""Out-of-domain (OOD) scores: how unlike the training recordings one input is.

A model says an emotion for anything it is given. This module gives each input a second number, independent of
the network: the Mahalanobis distance of a representation of the utterance from a Gaussian fitted on the training
utterances, and a threshold above which the input is called out of domain.

* **Representation** (:func:`utterance_statistics`): the mean and the standard deviation over time of the
  front end's raw frames (``frames``: log-Mel bins, plus pitch and descriptors when the model has them; the encoder
  frames of a pretrained front end), or a linear model's utterance functionals (``functionals``). Every model
  computes these anyway, so the score costs no network run.
* **Density**: each dimension standardised with the training mean and standard deviation, projected onto
  ``PCA_DIM`` principal components when there are more than ``MAX_DIM`` dimensions, then a Gaussian with
  Ledoit-Wolf shrinkage covariance (scikit-learn); the score is the Mahalanobis distance (not squared).
* **Threshold** (``speaker-cv``): each training speaker is scored by the density fitted on the other speakers, and
  the threshold is the ``THRESHOLD_QUANTILE`` quantile of those held-out distances, so that about 5% of utterances
  of new speakers from the training domain are flagged. Scores of the training utterances themselves
  (``in-sample``) are too low to set it: the measurement and the choice are in reports/ood.

The fitted model is a few arrays and a JSON header: :meth:`OodModel.state_dict` goes into a checkpoint, and
:meth:`OodModel.from_state` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# "functionals" is written "functionals:<set>" (eGeMAPSv02, ge2e-stats, ...)
REPRESENTATIONS = ("frames", "functionals")
RULES = ("speaker-cv", "in-sample")
THRESHOLD_RULE = "speaker-cv"  # chosen on EmoDB vs nEMO (reports/ood)
THRESHOLD_QUANTILE = 0.95  # of held-out training speakers' distances (reports/ood)
MAX_DIM = 128  # representations wider than this are projected onto their principal components first
PCA_DIM = 64  # components kept then (at most the number of training utterances - 1)
MIN_UTTERANCES = 5  # fewer training utterances give no density
MIN_CV_ROWS = 2  # the fewest rows a held-out fit of the threshold rule may have
STD_FLOOR = 1e-8  # a dimension constant over the training utterances is centred, not scaled
CV_FOLDS = 5  # utterance folds for the threshold when the training set has a single speaker
MAX_SPEAKER_GROUPS = 10  # more training speakers than this are held out in this many groups, not one at a time


def utterance_statistics(frames: np.ndarray) -> np.ndarray:
    """The ``frames`` representation of one utterance: mean then standard deviation over time of its raw front-end
    frames (T, D), a (2D,) float64 vector."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"utterance statistics need frames of shape (T > 0, D), got {x.shape}")
    return np.concatenate([x.mean(axis=0), x.std(axis=0)])


@dataclass
class OodModel:
    """A fitted density: standardiser, optional projection, Gaussian (location and precision) and threshold."""

    center: np.ndarray  # (D,) training mean of the representation
    scale: np.ndarray  # (D,) training standard deviation (1 where constant)
    components: np.ndarray | None  # (k, D) principal axes of the standardised representation, or None (k = D)
    location: np.ndarray  # (k,) Gaussian mean in the (projected) standardised space
    precision: np.ndarray  # (k, k) inverse of the Ledoit-Wolf covariance
    threshold: float  # Mahalanobis distance above which an input is out of domain
    info: dict[str, Any] = field(default_factory=dict)  # representation, rule, quantile, counts, quantiles

    @property
    def representation(self) -> str:
        return str(self.info.get("representation", "frames"))

    def distances(self, reps: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (n,) of representations (n, D) (one (D,) vector gives shape (1,))."""
        x = (np.atleast_2d(np.asarray(reps, dtype=np.float64)) - self.center) / self.scale
        if x.shape[1] != self.center.shape[0]:
            raise ValueError(f"OOD representation of {x.shape[1]} dims, the model was fitted on "
                             f"{self.center.shape[0]}")
        if self.components is not None:
            x = x @ self.components.T
        d = x - self.location
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def score(self, rep: np.ndarray) -> tuple[float, bool]:
        """(distance, in domain) of one representation."""
        distance = float(self.distances(rep)[0])
        return distance, bool(distance <= self.threshold)

    def describe(self) -> dict[str, Any]:
        """What a client needs to read a score: the threshold, the representation and how both were chosen."""
        return {"threshold": round(self.threshold, 4), "score": "Mahalanobis distance", **self.info}

    def state_dict(self) -> dict[str, Any]:
        """Arrays and JSON-able fields, as :func:`moma.checkpoint.save_checkpoint` stores a normaliser."""
        return {"center": self.center.astype(np.float32), "scale": self.scale.astype(np.float32),
                "components": None if self.components is None else self.components.astype(np.float32),
                "location": self.location.astype(np.float32), "precision": self.precision.astype(np.float32),
                "threshold": float(self.threshold), "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> OodModel:
        def arr(value: Any) -> np.ndarray:
            return np.asarray(value, dtype=np.float64)

        components = state.get("components")
        return cls(center=arr(state["center"]), scale=arr(state["scale"]),
                   components=None if components is None else arr(components), location=arr(state["location"]),
                   precision=arr(state["precision"]), threshold=float(state["threshold"]),
                   info=dict(state.get("info") or {}))


NO_OOD_NOTE = ("this model carries no out-of-domain statistics (made before they existed): predictions have no "
               "ood_score; add them with `moma ood fit`")


def ood_description(ood: OodModel | None) -> dict[str, Any]:
    """``{"ood": the threshold and how it was set}``, or ``{"ood": None, "ood_note": why}`` (a model card's part)."""
    return {"ood": ood.describe()} if ood is not None else {"ood": None, "ood_note": NO_OOD_NOTE}


def score_summary(ood: OodModel | None, frames: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """How utterances (their raw frames) score against ``ood``: the threshold, the share above it, the median
    score and the count; None without a density or utterances (a test fold's, or a manifest's)."""
    if ood is None or not frames:
        return None
    scores = ood.distances(np.stack([utterance_statistics(f) for f in frames]))
    return {"threshold": round(ood.threshold, 4), "flagged": round(float(np.mean(scores > ood.threshold)), 4),
            "median_score": round(float(np.median(scores)), 4), "n": len(frames)}


def summary_note(summary: dict[str, Any]) -> str:
    """One report line for a :func:`score_summary`."""
    return (f"Out of domain: {summary['flagged']:.1%} of the {summary['n']} utterances score above the checkpoint's "
            f"threshold {summary['threshold']:.2f} (median {summary['median_score']:.2f}; docs/serving.md).")


def _fit_density(reps: np.ndarray) -> OodModel:
    """The density of ``reps`` (n, D) without a threshold (threshold +inf)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    center = reps.mean(axis=0)
    scale = reps.std(axis=0)
    scale = np.where(scale < STD_FLOOR, 1.0, scale)
    z = (reps - center) / scale
    components = None
    if z.shape[1] > MAX_DIM:
        pca = PCA(n_components=min(PCA_DIM, z.shape[0] - 1), svd_solver="full").fit(z)
        components = pca.components_
        z = z @ components.T
    lw = LedoitWolf().fit(z)
    return OodModel(center=center, scale=scale, components=components, location=lw.location_,
                    precision=lw.precision_, threshold=float("inf"))


def cv_groups(speakers: Sequence[str] | None, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(group of each of ``n`` rows, what the groups are) for the ``speaker-cv`` rule: one group per speaker; over
    ``MAX_SPEAKER_GROUPS`` speakers, that many groups of speakers (sorted speakers dealt round-robin); with a
    single speaker (or none given), or a speaker so big that too few rows are left without it, ``CV_FOLDS``
    shuffled utterance folds drawn with ``seed``."""
    groups = np.asarray(list(speakers) if speakers is not None else [""] * n)
    names = sorted(set(groups.tolist()))
    if len(names) > MAX_SPEAKER_GROUPS:
        group_of = {name: i % MAX_SPEAKER_GROUPS for i, name in enumerate(names)}
        groups = np.array([group_of[g] for g in groups.tolist()])
        kind = f"{MAX_SPEAKER_GROUPS} groups of held-out speakers"
    else:
        kind = "held-out speakers"
    counts = np.unique(groups, return_counts=True)[1]
    if len(names) < 2 or n - counts.max() < MIN_CV_ROWS:
        return np.random.default_rng(seed).permutation(n) % min(CV_FOLDS, n), f"{min(CV_FOLDS, n)} utterance folds"
    return groups, kind


def held_out_distances(reps: np.ndarray, speakers: Sequence[str] | None, seed: int = 0) -> np.ndarray:
    """Each utterance's distance under a density fitted without its group of :func:`cv_groups` (its speaker)."""
    groups, _ = cv_groups(speakers, reps.shape[0], seed)
    out = np.empty(reps.shape[0], dtype=np.float64)
    for g in np.unique(groups):
        held = groups == g
        out[held] = _fit_density(reps[~held]).distances(reps[held])
    return out


def fit_ood(reps: np.ndarray, speakers: Sequence[str] | None = None, *, representation: str = "frames",
            rule: str = THRESHOLD_RULE, quantile: float = THRESHOLD_QUANTILE, seed: int = 0,
            fitted_on: str = "") -> OodModel:
    """Fit the density on training representations (n, D) and set the threshold by ``rule`` at ``quantile``.

    ``speakers[i]`` is the speaker of row ``i`` (``speaker-cv`` leaves each out in turn); ``fitted_on`` says in
    words what the rows are (a corpus, a manifest), for the model card.
    """
    if representation != "frames" and not representation.startswith("functionals:"):
        raise ValueError(f"unknown OOD representation {representation!r}; choose frames or functionals:<set>")
    if rule not in RULES:
        raise ValueError(f"unknown OOD threshold rule {rule!r}; choose one of {', '.join(RULES)}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"OOD threshold quantile must be in (0, 1), got {quantile}")
    x = np.asarray(reps, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_UTTERANCES:
        raise ValueError(f"an OOD density needs at least {MIN_UTTERANCES} training utterances, got "
                         f"{x.shape[0] if x.ndim == 2 else 0}")
    if not np.isfinite(x).all():
        raise ValueError("OOD representations hold non-finite values")
    if speakers is not None and len(speakers) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} OOD representations but {len(speakers)} speakers")
    model = _fit_density(x)
    ref = model.distances(x) if rule == "in-sample" else held_out_distances(x, speakers, seed)
    model.threshold = float(np.quantile(ref, quantile))
    model.info = {"representation": representation, "dims": int(x.shape[1]),
                  "projected_dims": None if model.components is None else int(model.components.shape[0]),
                  "rule": rule, "quantile": quantile,
                  **({"held_out": cv_groups(speakers, x.shape[0], seed)[1]} if rule == "speaker-cv" else {}),
                  "utterances": int(x.shape[0]),
                  "speakers": len(set(speakers)) if speakers is not None else 0,
                  "reference_quantiles": {f"p{q}": round(float(np.quantile(ref, q / 100)), 4)
                                          for q in (50, 90, 95, 99)},
                  **({"fitted_on": fitted_on} if fitted_on else {})}
    return model


__all__ = [
    "MAX_DIM",
    "NO_OOD_NOTE",
    "PCA_DIM",
    "REPRESENTATIONS",
    "RULES",
    "THRESHOLD_QUANTILE",
    "THRESHOLD_RULE",
    "OodModel",
    "cv_groups",
    "fit_ood",
    "held_out_distances",
    "ood_description",
    "score_summary",
    "summary_note",
    "utterance_statistics",
]
