import json

import numpy as np
import pytest

from moma.corpora.base import Utterance
from moma.evaluate import (PAPER_NAMING_NOTE, aggregate_folds, compute_metrics, mean_std, render_markdown,
                           score_posteriors, write_report)

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
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2.0)))
    assert mean_std([0.5]) == (0.5, 0.0)


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
