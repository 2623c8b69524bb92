"""moma.evaluation.compare: paired comparison of cross-validation runs on the same folds."""

import json

import pytest

from moma.cli.main import main
from moma.evaluation.compare import compare_pair, compare_runs, load_run_reports, render_comparison
from moma.evaluation.metrics import compute_metrics

LABELS = ["angry", "neutral", "sad"]


def make_report(name, correct_per_fold, folds=("spk-a", "spk-b", "spk-c", "spk-d")):
    """A cv report whose fold k classifies the first correct_per_fold[k] of its 6 utterances right."""
    out = []
    for fold, n_right in zip(folds, correct_per_fold):
        truth = [LABELS[i % 3] for i in range(6)]
        pred = [t if i < n_right else LABELS[(LABELS.index(t) + 1) % 3] for i, t in enumerate(truth)]
        metrics = compute_metrics([LABELS.index(t) for t in truth], [LABELS.index(p) for p in pred], LABELS)
        preds = [{"id": f"{fold}-{i}", "speaker": fold, "label": t, "predicted": p}
                 for i, (t, p) in enumerate(zip(truth, pred))]
        out.append({"name": fold, "test_speakers": [fold], "val_speakers": [], "test": {**metrics, "predictions": preds}})
    return {"name": name, "labels": LABELS, "folds": out}


def test_a_run_better_in_every_fold_wins_every_pair():
    ref = make_report("ref", [2, 3, 2, 3])
    better = make_report("better", [5, 6, 5, 6])
    pair = compare_pair(ref, better)
    assert pair["folds"] == ["spk-a", "spk-b", "spk-c", "spk-d"] and not pair["skipped_folds"]
    assert pair["test"]["wins"] == 4 and pair["test"]["losses"] == 0
    assert pair["test"]["mean_diff"] == pytest.approx(pair["other_mean"] - pair["reference_mean"])
    assert pair["test"]["mean_diff"] > 0.3
    assert pair["test"]["permutation_p"] == pytest.approx(2 / 16)  # exact: 2 of 2^4 sign patterns as extreme
    ci = pair["pooled"]["diff_ci"]
    assert pair["pooled"]["n"] == 24 and 0 < ci["low"] <= ci["estimate"] <= ci["high"]
    same = compare_pair(ref, make_report("copy", [2, 3, 2, 3]))
    assert same["test"]["mean_diff"] == 0 and same["test"]["ties"] == 4 and same["pooled"]["diff_ci"]["estimate"] == 0


def test_only_shared_folds_are_compared_and_the_rest_named(caplog):
    ref = make_report("ref", [2, 3, 2, 3])
    partial = make_report("partial", [6, 6], folds=("spk-a", "spk-c"))
    pair = compare_pair(ref, partial)
    assert pair["folds"] == ["spk-a", "spk-c"] and pair["skipped_folds"] == ["spk-b", "spk-d"]
    assert pair["pooled"]["n"] == 12
    assert "spk-b, spk-d" in caplog.text
    text = render_comparison(compare_runs([ref, partial]))
    assert "| spk-b | " in text and "–" in text and "left out (spk-b, spk-d)" in text


def test_runs_of_different_tasks_or_folds_are_refused():
    ref = make_report("ref", [2, 3, 2, 3])
    other = make_report("other", [2, 3, 2, 3])
    other["labels"] = ["a", "b", "c"]
    with pytest.raises(ValueError, match="scored over different classes"):
        compare_pair(ref, other)
    moved = make_report("moved", [2, 3, 2, 3])
    moved["folds"][1]["test_speakers"] = ["spk-x"]
    with pytest.raises(ValueError, match="fold spk-b tests speakers"):
        compare_pair(ref, moved)
    relabelled = make_report("relabelled", [2, 3, 2, 3])
    relabelled["folds"][0]["test"]["predictions"][0]["label"] = "sad"
    with pytest.raises(ValueError, match="different manifests"):
        compare_pair(ref, relabelled)
    with pytest.raises(ValueError, match="no finished fold in common"):
        compare_pair(ref, make_report("elsewhere", [1], folds=("spk-z",)))


def pooled_copy(report, corpus="emodb"):
    """The same predictions as a leave-one-speaker-out run on a pool would report them: names namespaced by
    corpus, one more class in the model (from another corpus), each fold scored over the test corpus's classes."""
    folds = []
    for fold in report["folds"]:
        spk = fold["test_speakers"][0]
        test = {**fold["test"], "scored_classes": LABELS,
                "per_speaker": {f"{corpus}.{spk}": {"uar": fold["test"]["uar"]}},
                "predictions": [{**p, "id": f"{corpus}.{p['id']}", "speaker": f"{corpus}.{spk}"}
                                for p in fold["test"]["predictions"]]}
        folds.append({**fold, "name": f"spk-{corpus}.{spk}", "test_speakers": [f"{corpus}.{spk}"], "test": test})
    return {"name": f"pooled-{report['name']}", "labels": [*LABELS, "surprise"], "folds": folds}


def test_a_pooled_run_pairs_with_a_run_on_its_test_corpus_alone(caplog):
    def speaker_folds(name, correct):  # as leave-one-speaker-out names them: fold spk-X tests speaker X
        report = make_report(name, correct)
        for fold in report["folds"]:
            spk = fold["name"].removeprefix("spk-")
            fold["test_speakers"] = [spk]
            fold["test"]["per_speaker"] = {spk: {"uar": fold["test"]["uar"]}}
            fold["test"]["predictions"] = [{**p, "speaker": spk} for p in fold["test"]["predictions"]]
        return report

    caplog.set_level("INFO")
    single = speaker_folds("single", [2, 3, 2, 3])
    pooled = pooled_copy(speaker_folds("better", [5, 6, 5, 6]))
    assert pooled["folds"][0]["name"] == "spk-emodb.a" and pooled["folds"][0]["test_speakers"] == ["emodb.a"]
    for unit, names in (("fold", ["spk-a", "spk-b", "spk-c", "spk-d"]), ("speaker", ["a", "b", "c", "d"])):
        pair = compare_pair(single, pooled, unit=unit)
        assert pair["test"]["wins"] == 4 and pair["pooled"]["n"] == 24
        assert [row["fold"] for row in pair["per_fold"]] == names
    assert "without the 'emodb.' namespace" in caplog.text
    # either way round, and as the reference of several runs
    assert compare_pair(pooled, single)["test"]["losses"] == 4
    result = compare_runs([pooled, single])
    assert list(result["reference_folds"]) == ["spk-a", "spk-b", "spk-c", "spk-d"]
    assert result["comparisons"][0]["test"]["losses"] == 4
    # a pooled run that scores other classes is still another task
    wrong = pooled_copy(speaker_folds("w", [5, 6, 5, 6]))
    for fold in wrong["folds"]:
        fold["test"]["scored_classes"] = ["angry", "neutral", "surprise"]
    with pytest.raises(ValueError, match="scored over different classes"):
        compare_pair(single, wrong)


def test_holm_adjustment_over_several_runs():
    ref = make_report("ref", [2, 3, 2, 3])
    result = compare_runs([ref, make_report("a", [5, 6, 5, 6]), make_report("b", [3, 3, 2, 3])])
    a, b = result["comparisons"]
    assert a["test"]["permutation_p_holm"] == pytest.approx(min(1.0, 2 * a["test"]["permutation_p"]))
    assert b["test"]["permutation_p_holm"] >= a["test"]["permutation_p_holm"]
    text = render_comparison(result)
    assert text.count("\n| a |") == 1 and "| spk-d | 0.500 | 1.000 | 0.500 |" in text


def test_cli_compares_run_folders_and_writes_both_files(tmp_path, capsys):
    for name, right in (("ref", [2, 3, 2, 3]), ("new", [5, 6, 5, 6])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(make_report(name, right)))
    assert main(["compare", str(tmp_path / "ref"), str(tmp_path / "new"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "Paired comparison against ref (uar)" in out and "| new | 4 |" in out
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["comparisons"][0]["test"]["wins"] == 4 and (tmp_path / "cmp.md").is_file()
    assert [r["name"] for r in load_run_reports(tmp_path / "new" / "report.json")] == ["new"]
    with pytest.raises(FileNotFoundError, match="no report.json"):
        load_run_reports(tmp_path / "missing")


def test_classical_reports_expand_to_one_run_per_feature_set_and_normalisation(tmp_path, capsys):
    runs = []
    for features, right in (("eGeMAPSv02", [3, 3, 3, 3]), ("ComParE_2016", [6, 6, 6, 6])):
        run = make_report("x", right)
        runs.append({"feature_set": features, "normalisation": "global", "folds": run["folds"]})
    (tmp_path / "classical.json").write_text(json.dumps({"labels": LABELS, "runs": runs}))
    names = [r["name"] for r in load_run_reports(tmp_path / "classical.json")]
    assert names == ["eGeMAPSv02/global", "ComParE_2016/global"]
    one = load_run_reports(f"{tmp_path / 'classical.json'}#ComParE_2016/global")
    assert len(one) == 1 and one[0]["labels"] == LABELS
    with pytest.raises(ValueError, match="no run named 'ComParE_2016/speaker'"):
        load_run_reports(f"{tmp_path / 'classical.json'}#ComParE_2016/speaker")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.json").write_text(json.dumps(make_report("mine", [3, 3, 3, 3])))
    assert main(["compare", str(tmp_path / "mine"), str(tmp_path / "classical.json")]) == 0
    out = capsys.readouterr().out
    assert "| eGeMAPSv02/global | 4 | 0.500 | 0.500 | +0.000 |" in out and "| ComParE_2016/global | 4 | 1.000 |" in out


def test_a_partial_leave_one_corpus_out_run_pairs_with_the_whole_one_by_its_own_names():
    """Two runs on one pool: the whole run tests emodb.* and nemo.* speakers, the partial one only nemo.*.
    The partial one looks like a pooled run testing one corpus, but the other side is namespaced too, so
    nothing is stripped and the finished fold pairs with its namesake."""
    def loco_report(name, right, corpora=("emodb", "nemo")):
        folds = []
        for corpus in corpora:
            speakers = [f"{corpus}.{s}" for s in ("s1", "s2")]
            truth = [LABELS[i % 3] for i in range(6)]
            preds = [{"id": f"{corpus}.u{i}", "speaker": speakers[i % 2], "label": t,
                      "predicted": t if i < right else LABELS[(LABELS.index(t) + 1) % 3]}
                     for i, t in enumerate(truth)]
            metrics = compute_metrics([LABELS.index(p["label"]) for p in preds],
                                      [LABELS.index(p["predicted"]) for p in preds], LABELS)
            per_speaker = {s: {"n": 3, "uar": metrics["uar"], "accuracy": metrics["accuracy"],
                               "macro_f1": metrics["macro_f1"]} for s in speakers}
            folds.append({"name": f"corpus-{corpus}", "test_speakers": speakers, "val_speakers": [],
                          "test": {**metrics, "per_speaker": per_speaker, "predictions": preds}})
        return {"name": name, "labels": LABELS, "folds": folds}

    whole = loco_report("whole", 2)
    partial = loco_report("partial", 5, corpora=("nemo",))
    for unit in ("fold", "speaker"):
        pair = compare_pair(whole, partial, unit=unit)
        assert pair["skipped_folds"] == ["corpus-emodb"] and pair["pooled"]["n"] == 6
        assert pair["test"]["wins"] == (1 if unit == "fold" else 2)
    assert compare_pair(partial, whole)["test"]["losses"] == 1
    # the partial run as the reference of several, one of them namespaced too: still paired by its own names
    both = compare_runs([partial, whole, loco_report("other", 4)], unit="speaker")
    assert [c["test"]["n"] for c in both["comparisons"]] == [2, 2]
    assert set(both["reference_folds"]) == {"nemo.s1", "nemo.s2"}


def test_speaker_unit_pairs_each_test_speaker_of_few_folds():
    """Two folds of three speakers each (leave one corpus out): fold pairs are too few to test anything, so
    ``unit="speaker"`` pairs the six speakers' own scores."""
    def corpus_report(name, right):
        folds = []
        for f, speakers in (("corpus-a", ["a1", "a2", "a3"]), ("corpus-b", ["b1", "b2", "b3"])):
            per_speaker = {s: {"n": 6, "accuracy": right[s] / 6, "uar": right[s] / 6, "macro_f1": right[s] / 6}
                           for s in speakers}
            folds.append({"name": f, "test_speakers": speakers, "val_speakers": [],
                          "test": {"uar": sum(right[s] for s in speakers) / 18, "accuracy": 0.0, "macro_f1": 0.0,
                                   "per_speaker": per_speaker, "predictions": []}})
        return {"name": name, "labels": LABELS, "folds": folds}

    ref = corpus_report("ref", {s: 2 for s in ("a1", "a2", "a3", "b1", "b2", "b3")})
    better = corpus_report("better", {s: 4 for s in ("a1", "a2", "a3", "b1", "b2", "b3")})
    by_fold = compare_runs([ref, better])
    by_speaker = compare_runs([ref, better], unit="speaker")
    assert len(by_fold["comparisons"][0]["per_fold"]) == 2 and by_fold["comparisons"][0]["test"]["wins"] == 2
    pair = by_speaker["comparisons"][0]
    assert [r["fold"] for r in pair["per_fold"]] == ["a1", "a2", "a3", "b1", "b2", "b3"]
    assert pair["test"]["wins"] == 6 and pair["test"]["permutation_p"] == pytest.approx(2 / 64)
    assert pair["test"]["mean_diff"] == pytest.approx(2 / 6)
    text = render_comparison(by_speaker)
    assert "over test speakers" in text and "| speaker | ref | better |" in text and "| b3 | 0.333 | 0.667 |" in text
    with pytest.raises(ValueError, match="unknown unit"):
        compare_pair(ref, better, unit="utterance")
