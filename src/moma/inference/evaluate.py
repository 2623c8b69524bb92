"""Scoring a served model on a labelled manifest (``moma evaluate``).

The model is loaded as ``moma predict`` loads it (:meth:`Predictor.from_checkpoint`: a checkpoint, a bundled
model, an ensemble or a linear functionals model) and scored on the probabilities it serves
(:meth:`Predictor.labelled_posteriors`, which goes through :func:`moma.evaluation.posteriors.class_posteriors` as
every prediction path does): what you evaluate is what you serve, calibrated probabilities and a segment-trained
model's window mean included. Only the features differ in where they come from: the feature cache, filled from
the same files with the same front end.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moma.corpora.base import Utterance
from moma.evaluation.metrics import aggregate_folds, score_posteriors, shared_class_scoring, write_report
from moma.features.cache import FeatureCache, extract_features
from moma.features.ood import score_summary, summary_note
from moma.inference.predictor import Predictor


def evaluate_checkpoint(checkpoint: str | Path | None, utterances: Sequence[Utterance], out_dir: str | Path, *,
                        cache_dir: str | Path, device: str = "cpu", command: str = "",
                        label_inventory: Sequence[str] | None = None, adapt: str = "none") -> dict[str, Any]:
    # long: one report assembled top to bottom (scoring, cross-corpus notes, files); its docstring is a third
    """Score a model on labelled utterances; writes report.json / report.md.

    ``checkpoint``: anything ``moma predict`` takes (None: the default bundled model). The data may hold other
    classes than the model (another corpus). Then the model is scored over the classes both have, the argmax
    restricted to them; utterances of classes the model cannot output are counted in the report, never dropped
    silently, and chance level is stated. ``label_inventory`` is the data's class list (default: the labels of
    ``utterances``); pass the whole manifest's when ``utterances`` is a selection of speakers, so that the
    classes scored do not depend on which speakers were picked. ``adapt`` (``utterance``, ``batch`` or
    ``speaker``) normalises the data with its own statistics instead of the checkpoint's (transductive;
    :func:`moma.features.normalise.adapt_normaliser`); an ensemble's members each adapt their own inputs.
    """
    t0 = time.time()
    predictor = Predictor.from_checkpoint(checkpoint, device=device, speech_check=None)  # every utterance scored
    labels = predictor.labels
    inventory = sorted(set(label_inventory) if label_inventory is not None else {u.label for u in utterances})
    scoring = shared_class_scoring(labels, inventory)
    unscorable = Counter(u.label for u in utterances if u.label not in scoring["scored"])
    scored_utts = [u for u in utterances if u.label in scoring["scored"]]
    if not scored_utts:
        raise ValueError(f"none of the {len(utterances)} utterances is of a class the model knows "
                         f"({', '.join(labels)})")
    trained_on = set(predictor.info.get("test_speakers", []))
    posteriors, normalisation = predictor.labelled_posteriors(scored_utts, cache_dir, adapt)
    scored_classes = scoring["scored"] if scoring["restricted"] else None
    fold = {"name": "evaluation", "test_speakers": sorted({u.speaker for u in scored_utts}),
            "val_speakers": [], "best_epoch": predictor.info.get("epoch", ""),
            "test": score_posteriors(posteriors, {u.id: u for u in scored_utts}, labels, scored_classes)}
    notes = [f"The checkpoint's own test speakers were {', '.join(sorted(trained_on)) or 'not recorded'}."]
    if scoring["restricted"] or unscorable:
        notes.append(f"Cross-corpus scoring: the data's classes ({', '.join(inventory)}) differ from the model's "
                     f"({', '.join(labels)}). Scored over the {len(scoring['scored'])} shared classes "
                     f"({', '.join(scoring['scored'])}), each prediction the argmax over those classes only; "
                     f"chance UAR {scoring['chance_uar']:.3f}.")
    if (ood := _ood_summary(predictor, scored_utts, cache_dir)) is not None:
        notes.append(summary_note(ood))
    if unscorable:
        notes.append("Not scored (classes the model cannot output): "
                     + ", ".join(f"{c} {n}" for c, n in sorted(unscorable.items()))
                     + f" utterances, {sum(unscorable.values())} of {len(utterances)}.")
    report = {
        "title": f"Evaluation of {checkpoint}",
        "command": command,
        "corpus": utterances[0].corpus if utterances else "",
        "n_utterances": len(scored_utts),
        "n_speakers": len({u.speaker for u in scored_utts}),
        "labels": labels,
        "protocol": "fixed checkpoint on the given manifest",
        "normalisation": normalisation,
        "model": predictor.describe()["architecture"],
        "calibrated": predictor.calibrated,  # the posteriors are the served ones: temperature-scaled when True
        "device": device,
        "wall_time_s": time.time() - t0,
        "scoring": {**scoring, "unscored": dict(sorted(unscorable.items()))},
        "ood": ood,
        "summary": aggregate_folds([fold], labels),
        "folds": [fold],
        "notes": notes,
    }
    write_report(report, out_dir)
    return report


def _ood_summary(predictor: Predictor, utterances: Sequence[Utterance], cache_dir: str | Path
                 ) -> dict[str, Any] | None:
    """How the data's raw frames score against the model's out-of-domain density (None without one; an ensemble's
    density may read functionals instead of frames, so its score is left to its predictions)."""
    if predictor.ood is None or getattr(predictor, "members", None):
        return None
    feats = extract_features(utterances, FeatureCache(cache_dir, predictor.config.features))  # cached: just scored
    return score_summary(predictor.ood, [feats[u.id] for u in utterances])


__all__ = ["evaluate_checkpoint"]
