import json

import numpy as np
import pytest

from moma.corpora.base import Utterance
from moma.evaluation.metrics import (PAPER_NAMING_NOTE, aggregate_folds, compute_metrics, render_markdown,
                                    score_posteriors, write_report)
from moma.evaluation.stats import mean_std

LABELS = ["angry", "happy", "sad"]


def test_uar_differs_from_accuracy_on_imbalanced_data():
    # 8 angry all right, 2 sad both wrong: accuracy 0.8, UAR (1 + 0) / 2 = 0.5
    m = compute_metrics([0] * 8 + [2] * 2, [0] * 8 + [0] * 2, LABELS)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["uar"] == pytest.approx(0.5)
    assert m["absent_classes"] == ["happy"]
    assert m["confusion"][2][0] == 2 and m["confusion"][0][0] == 8
    assert m["per_class_recall"] == {"angry": 1.0, "sad": 0.0}


def test_mean_std_uses_sample_std():
    """The one mean ± std (evaluation.stats): sample std, 0 for one value, finite values only, None when empty."""
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(np.sqrt(2.0)), "n": 2}
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert mean_std(v for v in [1.0, None, float("nan"), 3.0]) == mean_std([1.0, 3.0])  # a generator works too
    assert mean_std([]) == {"mean": None, "std": None, "n": 0} == mean_std(np.array([np.nan]))


def _fold(name, speaker, truth, pred):
    utts = {f"{name}{i}": Utterance(id=f"{name}{i}", path="", speaker=speaker, label=LABELS[t])
            for i, t in enumerate(truth)}
    post = {f"{name}{i}": np.eye(3)[p] for i, p in enumerate(pred)}
    return {"name": name, "test_speakers": [speaker], "val_speakers": ["v"], "best_epoch": 3,
            "test": score_posteriors(post, utts, LABELS)}


def test_aggregate_folds_mean_std_and_pooling():
    f1 = _fold("a", "s1", [0, 1, 2, 2], [0, 1, 2, 2])  # perfect
    f2 = _fold("b", "s2", [0, 1, 2, 2], [1, 1, 2, 0])  # recall angry 0, happy 1, sad .5
    s = aggregate_folds([f1, f2], LABELS)
    assert s["uar"]["mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["pooled"]["n"] == 8
    assert s["pooled"]["accuracy"] == pytest.approx(6 / 8)
    assert set(s["per_speaker"]) == {"s1", "s2"}
    assert s["per_speaker_uar"]["min"] == pytest.approx(0.5)


def test_report_names_metrics_unambiguously(tmp_path):
    folds = [_fold("a", "s1", [0, 1, 2], [0, 1, 1])]
    report = {"title": "t", "labels": LABELS, "summary": aggregate_folds(folds, LABELS), "folds": folds,
              "command": "moma cv --manifest m.jsonl", "normalisation": "global"}
    js, md = write_report(report, tmp_path)
    text = md.read_text()
    assert PAPER_NAMING_NOTE in text
    assert "UAR, mean per-class recall (the paper's \"WA\")" in text
    assert "accuracy (the paper's \"UA\")" in text
    assert "moma cv --manifest m.jsonl" in text
    assert json.loads(js.read_text())["summary"]["pooled"]["n"] == 3
    assert render_markdown(report) == text
    assert "wall time not recorded" in text  # no wall time given: said, not printed as 0 s
    assert "; wall time 125 s" in render_markdown({**report, "wall_time_s": 125.3})


def test_shared_class_scoring_restricts_the_argmax():
    """A 3-class model scored on data of 2 of its classes (plus one it lacks): the argmax runs over the
    shared classes only, the rest is reported, and chance is 1/2."""
    import numpy as np

    from moma.corpora.base import Utterance
    from moma.evaluation.metrics import score_posteriors, shared_class_scoring

    scoring = shared_class_scoring(["angry", "bored", "sad"], ["angry", "sad", "surprise"])
    assert scoring == {"scored": ["angry", "sad"], "restricted": True, "unscorable": ["surprise"],
                       "chance_uar": 0.5}
    assert shared_class_scoring(["a", "b"], ["b", "a"])["restricted"] is False
    utts = {"u1": Utterance(id="u1", path="x", speaker="s", label="angry"),
            "u2": Utterance(id="u2", path="x", speaker="s", label="sad")}
    post = {"u1": np.array([0.3, 0.6, 0.1]), "u2": np.array([0.1, 0.5, 0.4])}  # "bored" wins both unrestricted
    free = score_posteriors(post, utts, ["angry", "bored", "sad"])
    assert free["accuracy"] == 0.0
    shared = score_posteriors(post, utts, ["angry", "bored", "sad"], scored_classes=scoring["scored"])
    assert shared["accuracy"] == 1.0 and shared["scored_classes"] == ["angry", "sad"]
    assert [p["predicted"] for p in shared["predictions"]] == ["angry", "sad"]
    assert shared["predictions"][0]["posteriors"] == [0.3, 0.6, 0.1]  # stored as the model gave them
    with pytest.raises(ValueError, match="have none in common"):
        shared_class_scoring(["angry"], ["calm"])
