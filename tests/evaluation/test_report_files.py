import json

import numpy as np
import pytest

from moma.corpora.base import Utterance
from moma.evaluation.compare import load_run_reports
from moma.evaluation.metrics import score_posteriors
from moma.evaluation.report_files import PREDICTIONS_FILE, load_report_json, save_report_json

LABELS = ["angry", "happy", "sad"]


def _test_block(speaker: str, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    utts = {f"{speaker}_{i}": Utterance(id=f"{speaker}_{i}", path="", speaker=speaker, label=LABELS[i % 3])
            for i in range(n)}
    post = {k: rng.dirichlet(np.ones(3)) for k in utts}
    return score_posteriors(post, utts, LABELS)


def _cv_report() -> dict:
    folds = [{"name": f"spk-{s}", "test_speakers": [s], "val_speakers": [], "test": _test_block(s, 7, i)}
             for i, s in enumerate(["a", "b"])]
    return {"title": "t", "labels": LABELS, "folds": folds, "summary": {"folds": 2}}


def test_predictions_leave_report_json_and_come_back_exactly(tmp_path):
    report = _cv_report()
    path = save_report_json(report, tmp_path)
    text = path.read_text()
    assert '"predictions"' not in text and json.loads(text)["predictions_file"] == PREDICTIONS_FILE
    assert (tmp_path / PREDICTIONS_FILE).is_file()
    back = load_report_json(tmp_path)
    assert json.dumps(back) == json.dumps(report)  # same rows, values and key order: nothing rounded away
    assert load_report_json(path) == back  # the file or its folder


def test_a_classical_report_keeps_each_runs_folds_apart(tmp_path):
    runs = [{"feature_set": fs, "normalisation": "global",
             "folds": [{"name": "spk-a", "test_speakers": ["a"], "val_speakers": [], "test": _test_block("a", 5, j)}]}
            for j, fs in enumerate(["eGeMAPSv02", "ComParE_2016"])]
    report = {"labels": LABELS, "runs": runs}
    save_report_json(report, tmp_path)
    assert load_report_json(tmp_path) == report
    named = {r["name"]: r for r in load_run_reports(tmp_path)}  # what moma compare / moma fuse read
    assert named["ComParE_2016/global"]["folds"][0]["test"]["predictions"] == runs[1]["folds"][0]["test"]["predictions"]


def test_an_older_report_with_inline_predictions_is_read_as_it_is(tmp_path):
    report = _cv_report()
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert load_report_json(tmp_path) == report


def test_a_missing_predictions_file_is_named(tmp_path):
    save_report_json(_cv_report(), tmp_path)
    (tmp_path / PREDICTIONS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"predictions\.npz, which is not beside it"):
        load_report_json(tmp_path)


def test_rows_off_the_grid_or_of_another_shape_are_kept_as_they_are(tmp_path):
    report = _cv_report()
    report["folds"][0]["test"]["predictions"][0]["posteriors"] = [0.1234567891, 0.5, 0.3765432109]
    odd = [{"id": "x", "label": "sad", "predicted": "sad", "note": "hand-made"}]
    report["folds"].append({"name": "odd", "test": {"predictions": odd}})
    report["folds"].append({"name": "empty", "test": {"predictions": []}})
    path = save_report_json(report, tmp_path)
    assert json.loads(path.read_text())["folds"][2]["test"]["predictions"] == odd  # other keys: left inline
    assert load_report_json(tmp_path) == report


def test_rows_without_posteriors_or_speakers(tmp_path):
    rows = [{"id": f"u{i}", "label": LABELS[i % 3], "predicted": LABELS[(i + 1) % 3]} for i in range(4)]
    report = {"labels": LABELS, "folds": [{"name": "f", "test": {"predictions": rows}}]}
    save_report_json(report, tmp_path)
    assert load_report_json(tmp_path) == report


def test_committed_reports_stay_small_and_name_predictions_that_are_there():
    """Issue 35: no committed report file over 1 MB; each report.json that moved its predictions out has them."""
    from pathlib import Path

    reports = Path(__file__).resolve().parents[2] / "reports"
    big = [str(p) for p in reports.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
    assert not big, f"over 1 MB (benchmarks/compact_reports.py shrinks them): {big}"
    for path in reports.rglob("report.json"):
        name = json.loads(path.read_text(encoding="utf-8")).get("predictions_file")
        assert name is None or (path.parent / name).is_file(), path
