"""The classical anchor (openSMILE functionals + linear SVM): leakage, C selection, normalisation, report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.svm import LinearSVC

import moma.research.classical as classical
from moma.corpora.base import Utterance
from moma.data.protocols import make_folds
from moma.evaluation.metrics import PAPER_NAMING_NOTE, aggregate_folds
from moma.evaluation.report_files import load_report_json
from moma.research.classical import run_svm_cv, select_c, standardise

LABELS = ("angry", "neutral", "sad")
SPEAKERS = ("s1", "s2", "s3", "s4")
GRID = (0.01, 1.0)


def toy_corpus(per_class: int = 6, dim: int = 5, separation: float = 4.0, seed: int = 0):
    """Utterances of 4 speakers x 3 classes with class means far apart and a per-speaker offset and scale."""
    rng = np.random.default_rng(seed)
    utts, feats = [], {}
    for si, spk in enumerate(SPEAKERS):
        offset = rng.normal(0, 3.0, dim)
        scale = 1.0 + si
        for ci, lab in enumerate(LABELS):
            for j in range(per_class):
                uid = f"{spk}-{lab}-{j}"
                utts.append(Utterance(id=uid, path=f"{uid}.wav", speaker=spk, label=lab))
                x = rng.normal(0, 0.3, dim)
                x[ci] += separation
                feats[uid] = (offset + scale * x).astype(np.float32)
    return utts, feats


def loso(utts):
    return make_folds(utts, "loso", val_speakers=0)


def test_global_standardisation_uses_training_speakers_only():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, (40, 3))
    spk = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["test"] * 10)
    train = spk != "test"
    out = standardise(x, spk, train, "global")
    np.testing.assert_allclose(out[train].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(out[train].std(axis=0), 1.0, atol=1e-12)
    changed = x.copy()
    changed[~train] = changed[~train] * 100.0 + 1e3  # wildly different test features
    out2 = standardise(changed, spk, train, "global")
    np.testing.assert_array_equal(out[train], out2[train])  # the scaler did not move
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    np.testing.assert_allclose(out2[~train], (changed[~train] - mean) / std)
    # a feature constant over the training speakers is centred and left unscaled, whatever the test rows do
    const = x.copy()
    const[train, 1] = 7.0
    out3 = standardise(const, spk, train, "global")
    np.testing.assert_array_equal(out3[train, 1], 0.0)
    np.testing.assert_allclose(out3[~train, 1], const[~train, 1] - 7.0)


def test_run_svm_cv_never_fits_global_statistics_on_the_test_speaker(monkeypatch):
    utts, feats = toy_corpus()
    speaker_of = {u.id: u.speaker for u in utts}
    folds = loso(utts)
    calls = []
    original = classical.standardise

    def spy(x, speakers, fit_rows, mode, corpora=None):
        calls.append(set(np.asarray(speakers)[np.asarray(fit_rows, dtype=bool)].tolist()))
        return original(x, speakers, fit_rows, mode, corpora)

    monkeypatch.setattr(classical, "standardise", spy)
    # run fold by fold so each call is attributed to its fold's test speaker
    for fold in folds:
        calls.clear()
        run_svm_cv(utts, feats, [fold], normalisation="global", c_grid=GRID)
        test_speaker = {speaker_of[k] for k in fold.test}
        assert calls, "no standardisation was fitted"
        assert all(not (c & test_speaker) for c in calls), (fold.name, calls)


@pytest.mark.parametrize("mode", ["global", "speaker"])
def test_inner_cv_never_sees_the_test_speaker(monkeypatch, mode):
    utts, feats = toy_corpus()
    folds = loso(utts)
    seen = []
    original = classical.select_c

    def spy(x, y, speakers, **kwargs):
        seen.append((x.copy(), set(np.asarray(speakers).tolist())))
        return original(x, y, speakers, **kwargs)

    monkeypatch.setattr(classical, "select_c", spy)
    run_svm_cv(utts, feats, folds, normalisation=mode, c_grid=GRID)
    assert len(seen) == len(folds)
    for fold, (x, speakers) in zip(folds, seen):
        assert speakers == set(fold.train_speakers)
        assert not speakers & set(fold.test_speakers)
        test_rows = np.stack([feats[k] for k in fold.test])
        # the raw test features are not among the rows handed to the inner CV
        assert not any((x == row).all(axis=1).any() for row in test_rows)
        assert x.shape[0] == len(fold.train) + len(fold.val)


def test_inner_cv_holds_out_each_training_speaker_once(monkeypatch):
    utts, feats = toy_corpus()
    ids = [u.id for u in utts if u.speaker != "s4"]
    x = np.stack([feats[k] for k in ids]).astype(np.float64)
    y = np.array([LABELS.index(k.split("-")[1]) for k in ids])
    spk = np.array([k.split("-")[0] for k in ids])
    predicted_rows = []

    class SpySVC:
        def __init__(self, c, seed):
            self.inner = LinearSVC(C=c, class_weight="balanced", dual="auto", random_state=seed)

        def fit(self, xs, ys):
            self.inner.fit(xs, ys)
            self.C, self.classes_ = self.inner.C, self.inner.classes_
            return self

        def decision_function(self, xs):
            predicted_rows.append(xs.shape[0])
            return self.inner.decision_function(xs)

    monkeypatch.setattr(classical, "_make_svm", lambda c, seed, dual="auto": SpySVC(c, seed))
    best, scores, held_out = select_c(x, y, spk, normalisation="global", c_grid=GRID)
    assert best in GRID
    assert sorted(scores) == sorted(GRID)
    # 3 inner folds (one per training speaker) x 2 values of C, each predicting one speaker's 18 rows
    assert predicted_rows == [18] * 6
    # every training row gets one held-out posterior, from the inner fold that held its speaker out
    assert held_out.shape == (54, 3) and np.allclose(held_out.sum(axis=1), 1.0)
    for held in ("s1", "s2", "s3"):
        rows = spk == held
        xs = standardise(x, spk, ~rows, "global")
        own = LinearSVC(C=best, class_weight="balanced", dual="auto", random_state=0).fit(xs[~rows], y[~rows])
        assert (held_out[rows].argmax(axis=1) == own.predict(xs[rows])).all()


def test_inner_folds_refit_global_statistics_without_their_held_out_speaker(monkeypatch):
    utts, feats = toy_corpus()
    ids = [u.id for u in utts if u.speaker != "s4"]
    x = np.stack([feats[k] for k in ids]).astype(np.float64)
    y = np.array([LABELS.index(k.split("-")[1]) for k in ids])
    spk = np.array([k.split("-")[0] for k in ids])
    calls = []
    original = classical.standardise

    def spy(rows, speakers, fit_rows, mode, corpora=None):
        calls.append(frozenset(np.asarray(speakers)[np.asarray(fit_rows, dtype=bool)].tolist()))
        return original(rows, speakers, fit_rows, mode, corpora)

    monkeypatch.setattr(classical, "standardise", spy)
    select_c(x, y, spk, normalisation="global", c_grid=GRID)
    assert len(calls) == 3  # one fit per inner fold, each without its held-out speaker
    assert set(calls) == {frozenset({"s2", "s3"}), frozenset({"s1", "s3"}), frozenset({"s1", "s2"})}


def test_svm_temperature_is_fitted_on_training_speakers_only():
    """Each fold's temperature comes from the training rows' held-out inner predictions: relabelling the test
    speaker's utterances moves its scores, never its temperature; the report shows what scaling does."""
    import dataclasses

    utts, feats = toy_corpus(separation=1.0)
    folds = loso(utts)[:1]
    a = run_svm_cv(utts, feats, folds, normalisation="global", c_grid=GRID)[0]
    test = set(folds[0].test)
    relabelled = [dataclasses.replace(u, label=LABELS[(LABELS.index(u.label) + 1) % 3]) if u.id in test else u
                  for u in utts]
    b = run_svm_cv(relabelled, feats, folds, normalisation="global", c_grid=GRID)[0]
    assert a["test"]["uar"] != b["test"]["uar"]
    (t,) = a["calibration"]["temperatures"]
    assert b["calibration"]["temperatures"] == [t] and t > 0
    assert a["calibration"]["n"] == len(test)
    assert a["calibration"]["nll_before"] != a["calibration"]["nll_after"]


def test_c_is_chosen_from_the_grid():
    utts, feats = toy_corpus(separation=1.0)
    grid = (1e-4, 3e-3, 0.1, 1.0)
    results = run_svm_cv(utts, feats, loso(utts), normalisation="global", c_grid=grid)
    for r in results:
        assert r["chosen_C"] in grid
        assert set(r["inner_uar"]) == {f"{c:g}" for c in grid}
    single = run_svm_cv(utts, feats, loso(utts)[:1], normalisation="global", c_grid=(0.37,))
    assert single[0]["chosen_C"] == 0.37


def test_select_c_prefers_the_best_inner_uar_then_the_smallest_c(monkeypatch):
    spk = np.repeat(list(SPEAKERS), 6)
    y = np.tile([0, 1, 2], 8)
    x = np.eye(3)[y] * 10.0  # argmax of a row is its class, before and after standardisation
    good_from = {"value": 0.1}

    class FakeSVC:
        """Predicts perfectly when C >= good_from, else always class 0 (UAR 1/3)."""

        def __init__(self, c, seed):
            self.C = c

        def fit(self, xs, ys):
            self.classes_ = np.arange(3)
            return self

        def decision_function(self, xs):
            if self.C >= good_from["value"]:
                return np.eye(3)[[int(np.argmax(r[:3])) for r in xs]]
            return np.eye(3)[np.zeros(len(xs), dtype=int)]

    monkeypatch.setattr(classical, "_make_svm", lambda c, seed, dual="auto": FakeSVC(c, seed))
    best, scores, _ = select_c(x, y, spk, normalisation="global", c_grid=(1.0, 1e-3, 0.1))
    assert scores[1e-3] == pytest.approx(1 / 3)
    assert scores[0.1] == scores[1.0] == 1.0
    assert best == 0.1  # tie: the smaller C
    good_from["value"] = 1.0
    best, scores, _ = select_c(x, y, spk, normalisation="global", c_grid=(1e-3, 0.1, 1.0))
    assert best == 1.0


def test_row_space_projection_leaves_the_svm_unchanged():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 200))  # more features than rows, as ComParE on EmoDB
    y = np.arange(30) % 3
    x[np.arange(30), y] += 2.0
    x_new = rng.normal(size=(10, 200))
    plain = classical._make_svm(0.1, 0).fit(x, y).decision_function(x_new)
    x_fit, x_other, dual = classical.row_space(x, x_new)
    assert x_fit.shape == (30, 30) and x_other.shape == (10, 30) and dual is True
    projected = classical._make_svm(0.1, 0, dual).fit(x_fit, y).decision_function(x_other)
    np.testing.assert_allclose(projected, plain, atol=1e-8)
    small = rng.normal(size=(30, 5))
    same = classical.row_space(small, x_new[:, :5])
    assert same[0] is small and same[2] == "auto"


def test_speaker_mode_normalises_every_speaker_to_zero_mean():
    utts, feats = toy_corpus()
    ids = [u.id for u in utts]
    x = np.stack([feats[k] for k in ids]).astype(np.float64)
    spk = np.array([k.split("-")[0] for k in ids])
    train = spk != "s4"
    out = standardise(x, spk, train, "speaker")
    for s in SPEAKERS:  # the test speaker s4 included, from its own statistics
        np.testing.assert_allclose(out[spk == s].mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(out[spk == s].std(axis=0), 1.0, atol=1e-9)
    # global mode does not: the per-speaker offsets survive
    glob = standardise(x, spk, train, "global")
    assert np.abs(glob[spk == "s4"].mean(axis=0)).max() > 0.1


def test_constant_feature_does_not_divide_by_zero():
    x = np.ones((6, 2))
    x[:, 1] = np.arange(6)
    out = standardise(x, ["a"] * 3 + ["b"] * 3, np.array([True] * 6), "global")
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 0], 0.0)


@pytest.mark.parametrize("mode", ["global", "speaker"])
def test_separable_toy_problem_gets_uar_one(mode):
    utts, feats = toy_corpus(separation=6.0)
    results = run_svm_cv(utts, feats, loso(utts), normalisation=mode, c_grid=GRID)
    assert [r["name"] for r in results] == [f"spk-{s}" for s in SPEAKERS]
    for r in results:
        assert r["test"]["uar"] == 1.0
        assert r["val_speakers"] == [] and r["best_epoch"] == ""
        for p in r["test"]["predictions"]:
            assert abs(sum(p["posteriors"]) - 1.0) < 1e-4
    summary = aggregate_folds(results, list(LABELS))
    assert summary["uar"]["mean"] == 1.0 and summary["pooled"]["uar"] == 1.0


def test_random_labels_do_not_score_perfectly():
    utts, feats = toy_corpus(separation=0.0)
    results = run_svm_cv(utts, feats, loso(utts), normalisation="global", c_grid=GRID)
    assert np.mean([r["test"]["uar"] for r in results]) < 0.8


def _toy_manifest(tmp_path, monkeypatch, scales=None):
    """The toy corpus as a manifest, its vectors served in place of openSMILE's (no audio needed); ``scales``
    (feature set -> factor) makes the feature sets differ."""
    utts, feats = toy_corpus()
    manifest = tmp_path / "toy.jsonl"
    manifest.write_text("".join(json.dumps({"id": u.id, "path": u.path, "speaker": u.speaker, "label": u.label,
                                            "corpus": "toy", "sha1": "ab" * 20}) + "\n" for u in utts))

    def fake_extract(utterances, feature_set, **kwargs):
        return {u.id: feats[u.id] * (scales or {}).get(feature_set, 1.0) for u in utterances}

    monkeypatch.setattr(classical, "extract_functionals", fake_extract)
    return manifest


def test_moma_classical_writes_one_table(tmp_path, monkeypatch, capsys):
    pytest.importorskip("opensmile")  # the command refuses to start without it
    from moma.cli.main import main

    manifest = _toy_manifest(tmp_path, monkeypatch, scales={"eGeMAPSv02": 1.0, "ComParE_2016": 2.0})
    out = tmp_path / "out"
    assert main(["classical", "--manifest", str(manifest), "--out", str(out), "--cache", str(tmp_path / "c"),
                 "-q"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and printed[0].split()[:2] == ["eGeMAPSv02", "global:"]
    saved = json.loads((out / "report.json").read_text())
    assert [(r["feature_set"], r["normalisation"]) for r in saved["runs"]] == [
        ("eGeMAPSv02", "global"), ("eGeMAPSv02", "speaker"), ("ComParE_2016", "global"), ("ComParE_2016", "speaker")]
    assert saved["runs"][0]["summary"]["folds"] == 4
    md = (out / "report.md").read_text()
    assert f"moma classical --manifest {manifest} --out {out}" in md  # the command that made it
    assert "| eGeMAPSv02 | speaker (transductive) |" in md
    assert "unlabelled" in md and PAPER_NAMING_NOTE in md
    assert md.count("| spk-s") >= 8  # per-fold UAR and chosen-C tables
    assert md.count("| eGeMAPSv02 | global | ") == 2 and "ECE raw -> scaled" in md  # summary and calibration
    assert main(["classical", "--manifest", str(manifest), "--out", str(out), "--feature-sets", "GeMAPS"]) == 2
    assert "--feature-sets: unknown GeMAPS (choose from eGeMAPSv02, ComParE_2016, ge2e-stats" in capsys.readouterr().err
    part = tmp_path / "part"
    assert main(["classical", "--manifest", str(manifest), "--out", str(part), "--cache", str(tmp_path / "c"),
                 "--feature-sets", "eGeMAPSv02", "--normalisations", "global", "--fold", "s1", "-q"]) == 0
    assert "(1 of 4 folds)" in capsys.readouterr().out.splitlines()[0]
    assert main(["classical", "--manifest", str(manifest), "--out", str(part), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err


def test_importing_baselines_does_not_import_torch():
    code = "import sys, moma.research.classical; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _two_corpora(shift: float):
    """Two copies of the toy corpus as two corpora; the second one's features shifted by a constant (another
    channel or language), its speakers renamed so the pool keeps them apart."""
    import dataclasses

    a_utts, a_feats = toy_corpus(seed=1)
    b_utts, b_feats = toy_corpus(seed=2)
    utts = [dataclasses.replace(u, corpus="a", speaker=f"a.{u.speaker}", id=f"a.{u.id}") for u in a_utts]
    utts += [dataclasses.replace(u, corpus="b", speaker=f"b.{u.speaker}", id=f"b.{u.id}") for u in b_utts]
    feats = {f"a.{k}": v for k, v in a_feats.items()} | {f"b.{k}": v + shift for k, v in b_feats.items()}
    return utts, feats


def test_leave_one_corpus_out_and_per_corpus_standardisation():
    """Across a channel shift, global (training-corpus) statistics leave the test corpus off-centre; each corpus
    standardised by its own statistics (transductive over the corpus) brings it back."""
    utts, feats = _two_corpora(shift=25.0)
    folds = make_folds(utts, "loco", val_speakers=0)
    assert [f.name for f in folds] == ["corpus-a", "corpus-b"]
    glob = run_svm_cv(utts, feats, folds, normalisation="global", c_grid=GRID)
    corp = run_svm_cv(utts, feats, folds, normalisation="corpus", c_grid=GRID)
    for g, c in zip(glob, corp):
        assert {s.split(".")[0] for s in c["train_speakers"]} != {s.split(".")[0] for s in c["test_speakers"]}
        assert c["test"]["uar"] > 0.9 and c["test"]["uar"] > g["test"]["uar"] + 0.2
    with pytest.raises(ValueError, match="needs the corpus of every row"):
        standardise(np.zeros((2, 3)), ["s1", "s2"], np.array([True, False]), "corpus")




def _count_computed_folds(monkeypatch):
    """(the names of the folds the SVM is run on, in order; the real run_svm_cv)."""
    computed = []
    real = classical.run_svm_cv

    def counting(utterances, features, folds, **kw):
        computed.extend(f.name for f in folds)
        return real(utterances, features, folds, **kw)

    monkeypatch.setattr(classical, "run_svm_cv", counting)
    return computed, real


def test_classical_computes_chosen_folds_then_resumes_the_rest(tmp_path, monkeypatch):
    """A stopped or partial anchor run keeps its finished folds: the report says what is missing, and the same
    command computes only the missing folds; other settings never reuse a fold made with different ones."""
    manifest = _toy_manifest(tmp_path, monkeypatch)
    computed, real = _count_computed_folds(monkeypatch)
    out = tmp_path / "out"
    kw = {"feature_sets": ["eGeMAPSv02"], "normalisations": ["global"], "cache_dir": tmp_path / "c", "c_grid": GRID}
    first = classical.run_classical_report(manifest, out, only_folds=["s2", "spk-s4"], **kw)
    assert computed == ["spk-s2", "spk-s4"]
    run = first["runs"][0]
    assert [f["name"] for f in run["folds"]] == ["spk-s2", "spk-s4"] and run["missing_folds"] == ["spk-s1", "spk-s3"]
    md = (out / "report.md").read_text()
    assert "Partial: eGeMAPSv02 / global: 2 of 4 folds (missing: spk-s1, spk-s3)" in md
    assert "| 2 of 4 |" in md and "| spk-s1 |" not in md
    computed.clear()
    full = classical.run_classical_report(manifest, out, **kw)
    assert computed == ["spk-s1", "spk-s3"]  # only the missing ones
    run = full["runs"][0]
    assert [f["name"] for f in run["folds"]] == ["spk-s1", "spk-s2", "spk-s3", "spk-s4"] and not run["missing_folds"]
    assert "Partial" not in (out / "report.md").read_text()
    toy = classical.read_manifest(manifest)
    once = real(toy, classical.extract_functionals(toy, "eGeMAPSv02"), loso(toy), normalisation="global", c_grid=GRID)
    assert [r["test"]["uar"] for r in run["folds"]] == [r["test"]["uar"] for r in once]  # same as in one go
    computed.clear()
    classical.run_classical_report(manifest, out, **{**kw, "c_grid": (0.1,)})  # another grid: all again
    assert computed == ["spk-s1", "spk-s2", "spk-s3", "spk-s4"]
    computed.clear()
    classical.run_classical_report(manifest, out, **{**kw, "c_grid": (0.1,)}, restart=True)
    assert len(computed) == 4
    computed.clear()
    again = classical.run_classical_report(manifest, out, **{**kw, "c_grid": (0.1,)}, restart=True, only_folds=["s3"])
    assert computed == ["spk-s3"] and len(again["runs"][0]["folds"]) == 4  # the others' results are kept
    with pytest.raises(ValueError, match="no fold matches spk-s9"):
        classical.run_classical_report(manifest, out, only_folds=["spk-s9"], **kw)


def test_classical_resumes_from_an_earlier_report_in_a_fresh_folder(tmp_path, monkeypatch):
    """A fresh checkout has the committed report.json but no fold store: --resume-from takes the report's finished
    folds (same utterances, grid and seed) and computes only the rest; the result equals one uninterrupted run."""
    manifest = _toy_manifest(tmp_path, monkeypatch)
    computed, _ = _count_computed_folds(monkeypatch)
    kw = {"feature_sets": ["eGeMAPSv02"], "normalisations": ["global"], "cache_dir": tmp_path / "c", "c_grid": GRID}
    classical.run_classical_report(manifest, tmp_path / "old", only_folds=["s1", "s3"], **kw)
    committed = tmp_path / "committed.json"
    # as a report written before predictions.npz held the predictions (inline), which must still resume
    committed.write_text(json.dumps(load_report_json(tmp_path / "old")))
    computed.clear()
    full = classical.run_classical_report(manifest, tmp_path / "fresh", resume_from=committed, **kw)
    assert computed == ["spk-s2", "spk-s4"]  # the committed folds are not computed again
    once = classical.run_classical_report(manifest, tmp_path / "once", **kw)
    assert [(f["name"], f["chosen_C"], f["test"]["uar"]) for f in full["runs"][0]["folds"]] == [
        (f["name"], f["chosen_C"], f["test"]["uar"]) for f in once["runs"][0]["folds"]]
    computed.clear()
    with pytest.raises(ValueError, match="made with C grid"):
        classical.run_classical_report(manifest, tmp_path / "grid", resume_from=committed,
                                       **{**kw, "c_grid": (0.1,)})
    # a report whose fold held other utterances lends nothing: that fold is computed
    changed = json.loads(committed.read_text())
    changed["runs"][0]["fold_keys"]["spk-s1"]["folds"] = "0" * 16
    committed.write_text(json.dumps(changed))
    classical.run_classical_report(manifest, tmp_path / "other", resume_from=committed, only_folds=["s1"], **kw)
    assert computed == ["spk-s1"]
    # a report from before fold keys were kept is matched by its fold definitions (speakers and counts)
    del changed["runs"][0]["fold_keys"]
    changed["folds_definition"][2]["n_test"] -= 1  # spk-s3
    committed.write_text(json.dumps(changed))
    computed.clear()
    classical.run_classical_report(manifest, tmp_path / "older", resume_from=committed, **kw)
    assert computed == ["spk-s2", "spk-s3", "spk-s4"]
    with pytest.raises(ValueError, match="toy.jsonl: not a readable report.json"):
        classical.run_classical_report(manifest, tmp_path / "x", resume_from=tmp_path / "toy.jsonl", **kw)
    (tmp_path / "cv.json").write_text(json.dumps({"folds": [], "labels": []}))  # a moma cv report
    with pytest.raises(ValueError, match="cv.json: not a `moma classical` report"):
        classical.run_classical_report(manifest, tmp_path / "x", resume_from=tmp_path / "cv.json", **kw)


def test_experiment_anchor_keeps_finished_folds_when_stopped(tmp_path, monkeypatch):
    """An experiment's anchor (run_anchor) that stops part-way keeps the folds it finished: the rerun computes
    only the rest, gives what one uninterrupted run gives, and a report-only call computes nothing."""
    utts, feats = toy_corpus()
    folds = loso(utts)
    monkeypatch.setattr(classical, "extract_functionals", lambda utterances, feature_set, **kw: feats)
    computed = []
    real = classical.run_svm_cv

    def stopping_after(n):
        def run(utterances, features, folds, **kw):
            if len(computed) == n:
                raise KeyboardInterrupt  # the grid is stopped while this fold runs
            computed.extend(f.name for f in folds)
            return real(utterances, features, folds, **kw)
        return run

    out = tmp_path / "classical" / "eGeMAPSv02-global.json"
    kw = {"feature_set": "eGeMAPSv02", "normalisation": "global", "c_grid": GRID}
    monkeypatch.setattr(classical, "run_svm_cv", stopping_after(2))
    with pytest.raises(KeyboardInterrupt):
        classical.run_anchor(utts, folds, out, **kw)
    assert computed == ["spk-s1", "spk-s2"] and not out.exists()
    assert sorted(p.name for p in classical.anchor_fold_path(out, "x").parent.iterdir()) == ["spk-s1.json",
                                                                                              "spk-s2.json"]
    assert classical.run_anchor(utts, folds, out, compute=False, **kw) is None
    computed.clear()
    monkeypatch.setattr(classical, "run_svm_cv", stopping_after(99))
    resumed = classical.run_anchor(utts, folds, out, **kw)
    assert computed == ["spk-s3", "spk-s4"]  # only the folds the stopped run had not finished
    once = real(utts, feats, folds, normalisation="global", c_grid=GRID)
    assert [(r["name"], r["chosen_C"], r["test"]["uar"]) for r in resumed["folds"]] == [
        (r["name"], r["chosen_C"], r["test"]["uar"]) for r in once]
    assert resumed["wall_time_s"] == pytest.approx(sum(r["train_time_s"] for r in resumed["folds"]), abs=0.1)
    computed.clear()
    assert classical.run_anchor(utts, folds, out, compute=False, **kw) == resumed  # cached whole
    classical.run_anchor(utts, folds, out, **{**kw, "c_grid": (0.1,)})  # another grid: every fold again
    assert computed == ["spk-s1", "spk-s2", "spk-s3", "spk-s4"]


def test_classical_jobs_give_the_same_folds_as_one_process(tmp_path, monkeypatch):
    manifest = _toy_manifest(tmp_path, monkeypatch)
    kw = {"feature_sets": ["eGeMAPSv02"], "normalisations": ["global", "speaker"], "cache_dir": tmp_path / "c",
          "c_grid": GRID}
    serial = classical.run_classical_report(manifest, tmp_path / "one", **kw)
    parallel = classical.run_classical_report(manifest, tmp_path / "two", jobs=3, **kw)
    assert "3 fold process(es)" in parallel["host"]
    for a, b in zip(serial["runs"], parallel["runs"]):
        assert [(f["name"], f["chosen_C"], f["test"]["uar"]) for f in a["folds"]] == [
            (f["name"], f["chosen_C"], f["test"]["uar"]) for f in b["folds"]]
    assert len(list((tmp_path / "two" / "folds").glob("*/*.json"))) == 8
