"""Late fusion of cross-validation runs (moma fuse): the fused rule, temperatures, fold matching, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moma.evaluation.compare import compare_runs, load_run_reports
from moma.evaluation.fusion import fuse_runs, render_fusion_markdown

LABELS = ["angry", "neutral", "sad"]


def _run(name, folds, labels=LABELS):
    """A cv-shaped run: folds = {fold name: (temperature or None, [(id, speaker, label, posteriors), ...])}."""
    out = []
    for fold, (temp, rows) in folds.items():
        preds = [{"id": i, "speaker": s, "label": lab, "predicted": labels[int(np.argmax(p))], "posteriors": p}
                 for i, s, lab, p in rows]
        uar = float(np.mean([np.mean([labels[int(np.argmax(r[3]))] == c for r in rows if r[2] == c])
                             for c in sorted({r[2] for r in rows})]))
        fold_result = {"name": fold, "test_speakers": sorted({r[1] for r in rows}),
                       "test": {"uar": uar, "accuracy": uar, "predictions": preds}}
        if temp is not None:  # a list: one temperature per ensemble member
            fold_result["calibration"] = {"temperatures": temp if isinstance(temp, list) else [temp]}
        out.append(fold_result)
    return {"name": name, "labels": list(labels), "folds": out}


def test_fusion_is_the_weighted_sum_of_temperature_scaled_log_posteriors():
    a = _run("moma", {"f1": (2.0, [("u1", "s1", "angry", [0.6, 0.3, 0.1]), ("u2", "s1", "sad", [0.5, 0.1, 0.4])])})
    b = _run("svm", {"f1": (0.5, [("u1", "s1", "angry", [0.4, 0.35, 0.25]), ("u2", "s1", "sad", [0.3, 0.2, 0.5])])})
    report = fuse_runs([a, b], weights=[3, 1])
    assert [m["weight"] for m in report["fused"]] == [0.75, 0.25]
    got = {p["id"]: p["posteriors"] for p in report["folds"][0]["test"]["predictions"]}
    for uid, pa, pb in (("u1", [0.6, 0.3, 0.1], [0.4, 0.35, 0.25]), ("u2", [0.5, 0.1, 0.4], [0.3, 0.2, 0.5])):
        z = 0.75 / 2.0 * np.log(pa) + 0.25 / 0.5 * np.log(pb)
        assert got[uid] == pytest.approx(np.exp(z) / np.exp(z).sum(), abs=1e-6)
    # u2: moma alone says angry, the sharper svm (T = 0.5) tips the fusion to sad; u1 stays angry
    assert [p["predicted"] for p in report["folds"][0]["test"]["predictions"]] == ["angry", "sad"]
    assert report["folds"][0]["test"]["uar"] == 1.0
    assert report["folds"][0]["members"]["moma"] == {"temperature": 2.0, "uar": 0.5, "accuracy": 0.5}


def test_fusion_pairs_folds_by_name_reorders_labels_and_notes_what_it_lacks(tmp_path):
    rows = [("u1", "s1", "angry", [0.7, 0.2, 0.1]), ("u2", "s1", "neutral", [0.2, 0.7, 0.1])]
    a = _run("moma", {"f1": (1.5, rows), "f2": (1.5, [("u3", "s2", "sad", [0.1, 0.2, 0.7])])})
    # the same classes in another order; no temperature; fold f2 missing
    other = ["sad", "angry", "neutral"]
    b = _run("svm", {"f1": (None, [(i, s, lab, [p[2], p[0], p[1]]) for i, s, lab, p in rows])}, labels=other)
    report = fuse_runs([a, b])
    assert report["fold_names"] == ["f1"] and report["labels"] == LABELS
    assert [p["predicted"] for p in report["folds"][0]["test"]["predictions"]] == ["angry", "neutral"]
    assert "left out: f2" in report["notes"][0] and "T = 1 used): svm f1" in report["notes"][1]
    md = render_fusion_markdown(report)
    assert "| **late fusion** | **1.000 ± 0.000** |" in md and "| f1 | s1 | 2 | 1.000 (1.50) | 1.000 (1.00) |" in md
    # the fused report is a cv-shaped report that moma compare pairs with its members
    out = tmp_path / "fused"
    out.mkdir()
    (out / "report.json").write_text(json.dumps(report))
    fused = load_run_reports(out)[0]
    assert fused["name"] == "fused"
    assert compare_runs([a, fused])["comparisons"][0]["folds"] == ["f1"]


def test_a_seed_ensemble_is_scaled_by_the_geometric_mean_of_its_members_temperatures():
    rows = [("u1", "s1", "angry", [0.6, 0.3, 0.1]), ("u2", "s1", "sad", [0.5, 0.1, 0.4])]
    svm_rows = [("u1", "s1", "angry", [0.4, 0.35, 0.25]), ("u2", "s1", "sad", [0.3, 0.2, 0.5])]
    ensemble = _run("ens", {"f1": ([2.0, 8.0], rows)})
    report = fuse_runs([ensemble, _run("svm", {"f1": (1.0, svm_rows)})])
    assert report["folds"][0]["members"]["ens"]["temperature"] == pytest.approx(4.0)
    got = report["folds"][0]["test"]["predictions"][1]["posteriors"]
    z = 0.5 / 4.0 * np.log([0.5, 0.1, 0.4]) + 0.5 * np.log([0.3, 0.2, 0.5])
    assert got == pytest.approx(np.exp(z) / np.exp(z).sum(), abs=1e-6)
    assert report["notes"] == ["Seed ensembles, scaled by the geometric mean of their members' temperatures: ens f1."]


def test_a_pooled_run_fuses_with_a_single_corpus_run_over_the_classes_both_were_scored_over():
    # trained on a pool: four outputs, tested on corpus c's speaker s1 (namespaced), scored over c's three classes
    pooled_labels = ["angry", "bored", "neutral", "sad"]
    pooled = _run("pool", {"spk-c.s1": (2.0, [("c.u1", "c.s1", "angry", [0.5, 0.0, 0.3, 0.2]),
                                              ("c.u2", "c.s1", "sad", [0.2, 0.0, 0.5, 0.3])])}, labels=pooled_labels)
    for fold in pooled["folds"]:
        fold["test"]["scored_classes"] = LABELS
    single = _run("svm", {"spk-s1": (1.0, [("u1", "s1", "angry", [0.6, 0.3, 0.1]),
                                           ("u2", "s1", "sad", [0.2, 0.3, 0.5])])})
    for first, second in ((pooled, single), (single, pooled)):
        report = fuse_runs([first, second])
        assert report["labels"] == LABELS and report["fold_names"] == ["spk-s1"]
        fold = report["folds"][0]
        assert fold["test_speakers"] == ["s1"] and fold["members"]["pool"]["temperature"] == 2.0
        got = {p["id"]: p["posteriors"] for p in fold["test"]["predictions"]}
        z = 0.5 / 2.0 * np.log([0.2, 0.5, 0.3]) + 0.5 * np.log([0.2, 0.3, 0.5])
        assert got["u2"] == pytest.approx(np.exp(z) / np.exp(z).sum(), abs=1e-6)
        assert [p["predicted"] for p in fold["test"]["predictions"]] == ["angry", "sad"]
        assert report["notes"] == [("Fused over the 3 classes every run was scored over (angry, neutral, sad); "
                                    "the other outputs of pool (bored) are left out.")]
    # the fused run pairs with the single-corpus run in moma compare
    assert compare_runs([single, {**report, "name": "fused"}])["comparisons"][0]["folds"] == ["spk-s1"]


def test_fusion_refuses_runs_that_cannot_be_fused():
    a = _run("a", {"f1": (1.0, [("u1", "s1", "angry", [0.7, 0.2, 0.1])])})
    with pytest.raises(ValueError, match="at least two runs"):
        fuse_runs([a])
    with pytest.raises(ValueError, match="same name"):
        fuse_runs([a, a])
    with pytest.raises(ValueError, match="one positive weight per run"):
        fuse_runs([a, {**a, "name": "b"}], weights=[1, 0])
    other = _run("b", {"f1": (1.0, [("u1", "s1", "angry", [0.7, 0.2, 0.1])])}, labels=["angry", "happy", "sad"])
    with pytest.raises(ValueError, match="late fusion needs the same classes"):
        fuse_runs([a, other])
    other = _run("b", {"f1": (1.0, [("u9", "s1", "angry", [0.7, 0.2, 0.1])])})
    with pytest.raises(ValueError, match="fold f1: b tested other utterances"):
        fuse_runs([a, other])
    other = _run("b", {"f2": (1.0, [("u1", "s1", "angry", [0.7, 0.2, 0.1])])})
    with pytest.raises(ValueError, match="share no finished fold"):
        fuse_runs([a, other])


def test_moma_fuse_writes_a_report_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    from moma.cli.main import main

    rows = [("u1", "s1", "angry", [0.7, 0.2, 0.1]), ("u2", "s1", "sad", [0.5, 0.1, 0.4])]
    for name, temp in (("moma", 2.0), ("svm", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(_run(name, {"f1": (temp, rows)})))
    out = tmp_path / "fused"
    assert main(["fuse", str(tmp_path / "moma"), str(tmp_path / "svm"), "--weights", "2", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "late fusion: UAR 0.500 ± 0.000 over 1 folds (members: moma 0.500, svm 0.500)"
    saved = json.loads((out / "report.json").read_text())
    assert saved["fused"] == [{"name": "moma", "weight": 0.6667}, {"name": "svm", "weight": 0.3333}]
    assert "moma fuse" in (out / "report.md").read_text()
    assert main(["fuse", str(tmp_path / "moma"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["moma fuse: error: late fusion needs at least two runs"]
    assert main(["fuse", str(tmp_path / "moma"), str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_posteriors_stored_already_scaled_are_not_scaled_again():
    """``moma cv`` of one model per fold stores the calibrated posteriors its checkpoint serves
    (``calibration.posteriors_scaled``): fusion reads them as they are, and still reports the temperature."""
    rows = [("u1", "s1", "angry", [0.6, 0.3, 0.1]), ("u2", "s1", "sad", [0.5, 0.1, 0.4])]
    svm_rows = [("u1", "s1", "angry", [0.4, 0.35, 0.25]), ("u2", "s1", "sad", [0.3, 0.2, 0.5])]
    served = _run("moma", {"f1": (2.0, rows)})
    served["folds"][0]["calibration"]["posteriors_scaled"] = True
    report = fuse_runs([served, _run("svm", {"f1": (0.5, svm_rows)})])
    got = report["folds"][0]["test"]["predictions"][1]["posteriors"]
    z = 0.5 * np.log([0.5, 0.1, 0.4]) + 0.5 / 0.5 * np.log([0.3, 0.2, 0.5])  # T = 1 for the scaled run
    assert got == pytest.approx(np.exp(z) / np.exp(z).sum(), abs=1e-6)
    assert report["folds"][0]["members"]["moma"]["temperature"] == 2.0
    raw = fuse_runs([_run("moma", {"f1": (2.0, rows)}), _run("svm", {"f1": (0.5, svm_rows)})])
    assert raw["folds"][0]["test"]["predictions"][1]["posteriors"] != pytest.approx(got, abs=1e-3)
