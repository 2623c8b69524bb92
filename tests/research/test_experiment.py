"""moma experiment: a tiny grid (2 variants x 2 seeds x 2 folds) on the synthetic corpus."""

import json
from pathlib import Path

import pytest
import yaml

from moma.cli.research import add_research_commands
from moma.corpora.base import write_manifest
from moma.corpora.synthetic import make_synthetic_corpus
from moma.research.experiment import load_experiment, run_experiment
from moma.research.report import render_experiment_report

TINY = ["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8", "train.max_epochs=1",
        "train.lr=0.01", "train.tensorboard=false", "train.val_speakers=1"]


def write_yaml(path: Path, manifest: Path, **changes) -> Path:
    spec = {"title": "tiny grid", "corpus": {"manifest": str(manifest)}, "protocol": {"name": "speaker-kfold", "k": 2},
            "set": TINY, "seeds": [0, 1], "reference": "moma-1", "bootstrap": 200,
            "variants": {"mean": {"set": ["model.arch=mean"]}, "moma-1": {"set": ["model.num_blocks=1"]}}}
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    utts = make_synthetic_corpus(root / "corpus", num_speakers=4, utterances_per_emotion=2, max_duration=1.5)
    manifest = write_manifest(utts, root / "m.jsonl")
    config = write_yaml(root / "exp.yaml", manifest)
    out = root / "run"
    results = run_experiment(config, out, cache_dir=root / "cache", command="moma experiment exp.yaml --out run")
    return root, config, manifest, out, results


def cell_results(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "cells").rglob("result.json"))}


def test_grid_writes_results_report_and_figures(grid):
    root, config, _, out, results = grid
    assert results["cells_planned"] == results["cells_finished"] == 8 and not results["missing_cells"]
    saved = json.loads((out / "results.json").read_text())
    variants = saved["summary"]["variants"]
    assert set(variants) == {"mean", "moma-1"}
    for name, v in variants.items():
        assert v["uar"]["seeds"] == 2 and len(v["per_seed"]) == 2 and len(v["cells"]) == 4
        assert 0 <= v["uar"]["mean"] <= 1 and v["parameters"] > 0
        ci = v["pooled"]["uar_ci"]
        assert ci["low"] <= ci["estimate"] <= ci["high"] and v["pooled"]["n"] == 32
        assert v["pooled"]["seeds_averaged"] == 2
    t = variants["mean"]["vs_reference"]
    assert t["n"] == 4 and 0 <= t["permutation_p"] <= 1 and "pooled_uar_diff_ci" in t
    assert variants["moma-1"].get("vs_reference") is None
    # identical folds for every variant and seed
    folds = {json.dumps(json.loads((p.parent / "fold.json").read_text())) for p in (out / "cells").rglob("result.json")}
    assert len(folds) == 2
    report = (out / "report.md").read_text()
    assert "| mean |" in report and "| **moma-1** |" in report and "moma-1 vs mean" in report
    assert "Only 2 seed(s)" in report
    for fig in ("uar_by_variant.png", "uar_vs_blocks.png"):
        assert (out / fig).stat().st_size > 5000
        assert "![" in report and f"({fig})" in report
    assert report.count("Made by `moma experiment exp.yaml --out run`") == 2
    assert render_experiment_report(saved) == report  # results.json alone re-renders the report
    assert (out / "experiment.yaml").is_file() and (out / "configs" / "mean.yaml").is_file()
    assert yaml.safe_load((out / "configs" / "mean.yaml").read_text())["model"]["arch"] == "mean"


def test_rerun_recomputes_nothing_and_resume_reruns_only_the_missing_cell(grid):
    root, config, _, out, _ = grid
    before = cell_results(out)
    assert len(before) == 8
    again = run_experiment(config, out, cache_dir=root / "cache")
    assert again["cells_run_now"] == 0 and cell_results(out) == before
    victim = out / "cells" / "mean" / "seed1" / "group-2" / "result.json"
    victim.unlink()
    partial = run_experiment(config, out, cache_dir=root / "cache", train=False)  # report of a partial grid
    assert partial["missing_cells"] == ["mean/seed1/group-2"] and partial["cells_finished"] == 7
    assert "Partial grid" in (out / "report.md").read_text()
    resumed = run_experiment(config, out, cache_dir=root / "cache")
    assert resumed["cells_run_now"] == 1 and not resumed["missing_cells"]
    after = cell_results(out)
    changed = [k for k in after if after[k] != before.get(k)]
    assert changed == ["cells/mean/seed1/group-2/result.json"]


def test_variants_train_only_those_cells_and_the_report_lists_the_rest(grid, tmp_path):
    """--variants: the cells of the named variants train now; the others are listed as missing, not run."""
    root, config, _, _, _ = grid
    with pytest.raises(ValueError, match="no variant 'moma-9'.*mean, moma-1"):
        run_experiment(config, tmp_path / "bad", cache_dir=root / "cache", variants=["moma-9"])
    first = run_experiment(config, tmp_path / "run", cache_dir=root / "cache", variants=["mean"])
    assert first["cells_run_now"] == 4 and first["cells_finished"] == 4
    assert sorted(first["missing_cells"]) == sorted(f"moma-1/seed{s}/group-{g}" for s in (0, 1) for g in (1, 2))
    assert len(first["summary"]["variants"]["mean"]["cells"]) == 4
    assert "Partial grid" in (tmp_path / "run" / "report.md").read_text()
    second = run_experiment(config, tmp_path / "run", cache_dir=root / "cache", variants=["moma-1"])
    assert second["cells_run_now"] == 4 and not second["missing_cells"]


def test_changed_config_in_same_folder_is_refused(grid):
    root, _, manifest, out, _ = grid
    changed = write_yaml(root / "changed.yaml", manifest, set=TINY + ["train.lr=0.02"])
    with pytest.raises(ValueError, match="differs in: train.lr"):
        run_experiment(changed, out, cache_dir=root / "cache")


def test_cells_stamped_before_an_option_existed_are_reused_at_its_default(grid, tmp_path):
    """A cell.json written before an option was added lacks it: reused while the option keeps its default."""
    import shutil

    root, config, manifest, out, _ = grid
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for stamp in (old / "cells").rglob("cell.json"):
        data = json.loads(stamp.read_text())
        del data["config"]["train"]["speaker_adversarial"]  # as written by an older moma
        stamp.write_text(json.dumps(data))
    before = cell_results(old)
    assert run_experiment(config, old, cache_dir=root / "cache")["cells_run_now"] == 0
    assert cell_results(old) == before
    changed = write_yaml(root / "adversarial.yaml", manifest, set=TINY + ["train.speaker_adversarial=0.5"])
    with pytest.raises(ValueError, match="differs in: train.speaker_adversarial"):
        run_experiment(changed, old, cache_dir=root / "cache")


def test_bad_yaml_gives_clear_errors(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    bad_variant_key = write_yaml(tmp_path / "a.yaml", manifest, variants={"mean": {"sett": ["model.arch=mean"]}})
    with pytest.raises(ValueError, match=r"variant mean: unknown key\(s\) sett"):
        load_experiment(bad_variant_key)
    bad_option = write_yaml(tmp_path / "b.yaml", manifest, variants={"mean": {"set": ["model.num_blokcs=2"]}})
    with pytest.raises(ValueError, match="variant mean: unknown ModelConfig option.*num_blokcs"):
        load_experiment(bad_option)
    with pytest.raises(ValueError, match=r"unknown key\(s\) varients"):
        load_experiment(write_yaml(tmp_path / "c.yaml", manifest, varients={}))
    with pytest.raises(ValueError, match="reference 'moma-9' is not a variant"):
        load_experiment(write_yaml(tmp_path / "d.yaml", manifest, reference="moma-9"))
    with pytest.raises(ValueError, match="seeds"):
        load_experiment(write_yaml(tmp_path / "e.yaml", manifest, seeds=[]))
    (tmp_path / "f.yaml").write_text("variants: [oops\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_experiment(tmp_path / "f.yaml")


def test_shipped_example_and_cli_registration(tmp_path):
    import argparse

    shipped = Path(__import__("moma").__file__).with_name("configs") / "experiments" / "emodb-table1.yaml"
    exp = load_experiment(shipped)
    assert exp.reference == "moma-3" and len(exp.seeds) >= 3
    arch = {n: v.config.model for n, v in exp.variants.items()}
    assert arch["mean"].arch == "mean" and arch["attention"].arch == "attention"
    assert [arch[f"moma-{b}"].num_blocks for b in (1, 2, 3, 5)] == [1, 2, 3, 5]
    assert arch["moma-3-fixed"].learn_gammas is False
    assert exp.variants["moma-3-segments"].config.data.segment_length_s == 2
    parser = argparse.ArgumentParser(prog="moma")
    add_research_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", "x.yaml", "--out", "d", "--jobs", "2"])
    assert args.config == "x.yaml" and args.out == "d" and args.jobs == 2 and callable(args.func)


# --------------------------------------------------------------------------- analysis section and paper claims

ANALYSIS = {"seeds": [0], "attention": True, "probe": {"speakers": "heldout", "folds": 2}, "attention_maps": 3,
            "robustness": {"conditions": ["clean", "white-0dB", "babble-5dB"], "max_utterances_per_fold": 4,
                           "babble_pool": 6}}
ANALYSIS_VARIANTS = {"mean": {"set": ["model.arch=mean"]}, "attention": {"set": ["model.arch=attention"]},
                     "moma-1": {"set": ["model.num_blocks=1"]}, "moma-2": {"set": ["model.num_blocks=2"]}}


@pytest.fixture(scope="module")
def analysed(grid):
    """The same corpus, 4 variants x 1 seed x 2 folds, with every analysis switched on."""
    root, _, manifest, _, _ = grid
    config = write_yaml(root / "analysed.yaml", manifest, seeds=[0], reference="moma-2", variants=ANALYSIS_VARIANTS,
                        analysis=ANALYSIS)
    out = root / "analysed"
    results = run_experiment(config, out, cache_dir=root / "cache", command="moma experiment analysed.yaml")
    return root, config, manifest, out, results


def analysis_stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "cells").rglob("analysis.json"))}


def test_analysis_results_report_and_figures(analysed):
    root, config, _, out, results = analysed
    an = json.loads((out / "results.json").read_text())["analysis"]
    assert an["cells_analysed"] == 8 and an["computed_now"] == 8 * 3 and not an["missing"]
    assert len(analysis_stamps(out)) == 8
    v = an["variants"]
    # attention: layer 1 for attention-based variants, blocks and mixture for MOMA, none for mean pooling
    assert "attention" not in v["mean"]
    assert v["attention"]["attention"]["blocks"] == [] and v["attention"]["attention"]["layer1"]["n"] == 2
    m2 = v["moma-2"]["attention"]
    assert len(m2["blocks"]) == 2 and len(m2["gammas"]) == 2 and m2["mixture"]["n"] == 2
    for cell in m2["cells"].values():
        assert 0 <= cell["mixture"] <= 1 and len(cell["blocks"]) == 2 and -1 <= cell["block_correlation"] <= 1
    # probe on the fold's test + validation speakers: 3 of the 4
    assert v["moma-2"]["probe"]["final_stage"] == "pooled" and v["mean"]["probe"]["final_stage"] == "embedding"
    assert v["moma-2"]["probe"]["n_speakers"]["mean"] == 3
    assert set(v["moma-2"]["probe"]["stages"]) >= {"encoder", "layer1", "pooled", "final", "chance"}
    assert "layer1" not in v["mean"]["probe"]["stages"]
    # robustness: every condition, per cell and aggregated, on the same 4 utterances for every variant
    for name in ANALYSIS_VARIANTS:
        rob = v[name]["robustness"]
        assert list(rob["conditions"]) == ["clean", "white-0dB", "babble-5dB"] and rob["drop"]["n"] == 2
    subsets = {json.dumps(json.loads(p.read_text())["robustness"]["settings"]["utterances"])
               for p in (out / "cells").rglob("analysis.json")}
    assert len(subsets) == 2  # one subset per fold, shared by the variants
    for p in (out / "cells").rglob("analysis.json"):
        a = json.loads(p.read_text())
        fold = json.loads((p.parent / "fold.json").read_text())
        assert not {u.split("_")[0] for u in a["robustness"]["settings"]["babble_pool"]} & set(fold["test_speakers"])
    # speaker spread and gender gap for every variant, over all 4 test speakers
    for name in ANALYSIS_VARIANTS:
        assert v[name]["speaker_bias"]["n_speakers"] == 4
    report = (out / "report.md").read_text()
    for text in ("## Analysis", "### Attention entropy", "### Speaker probe", "### Per-speaker UAR spread",
                 "### Robustness", "## Paper claims", "(a) Table 1 ranking", "(b) Smoothing", "(c) Removing bias",
                 "(d) Number of blocks", "Rule:", "test and validation speakers"):
        assert text in report, text
    for fig in ("analysis_entropy.png", "analysis_probe.png", "analysis_robustness.png"):
        assert (out / fig).stat().st_size > 5000 and f"({fig})" in report
    # 2 grid figures + 3 analysis figures + 3 attention maps, each with the command that made it
    assert report.count("Made by `moma experiment analysed.yaml`") == 8
    maps = results["attention_maps"]
    assert [m["label"] for m in maps] == sorted({m["label"] for m in maps}) and len(maps) == 3
    for m in maps:
        assert (out / m["file"]).stat().st_size > 5000 and f"]({m['file']})" in report
        fold = json.loads((out / "cells" / "moma-2" / "seed0" / m["fold"] / "fold.json").read_text())
        assert m["speaker"] in fold["test_speakers"] and m["variant"] == "moma-2"
    assert "## Attention maps" in report
    claims = {c["claim"]: c for c in results["claims"]}
    assert set(claims) == {"ranking", "smoothing", "bias", "blocks"}
    for c in claims.values():
        assert c["verdict"] in ("supported", "not supported", "inconclusive", "not measured") and c["evidence"]
    assert claims["smoothing"]["verdict"] != "not measured" and claims["bias"]["verdict"] != "not measured"
    assert set(claims["bias"]["parts"]) == {"probe", "spread", "robustness"}
    assert "not measured" not in claims["bias"]["parts"].values()


def test_analysis_cache_rerun_computes_nothing_and_new_conditions_only(analysed):
    root, config, manifest, out, _ = analysed
    before = analysis_stamps(out)
    again = run_experiment(config, out, cache_dir=root / "cache")
    maps = {p.name: p.stat().st_mtime_ns for p in (out / "attention_maps").glob("*.png")}
    assert again["cells_run_now"] == 0 and again["analysis"]["computed_now"] == 0
    assert analysis_stamps(out) == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "attention_maps").glob("*.png")} == maps
    assert again["attention_maps"] == json.loads((out / "attention_maps" / "maps.json").read_text())
    # one more condition: only robustness is computed, and only that condition; attention and probe stay
    more = dict(ANALYSIS, robustness=dict(ANALYSIS["robustness"],
                                          conditions=ANALYSIS["robustness"]["conditions"] + ["telephone"]))
    extended = write_yaml(root / "analysed.yaml", manifest, seeds=[0], reference="moma-2",
                          variants=ANALYSIS_VARIANTS, analysis=more)
    cell = out / "cells" / "moma-2" / "seed0" / "group-1" / "analysis.json"
    old = json.loads(cell.read_text())
    res = run_experiment(extended, out, cache_dir=root / "cache")
    assert res["analysis"]["computed_now"] == 8
    new = json.loads(cell.read_text())
    assert new["attention"] == old["attention"] and new["probe"] == old["probe"]
    assert new["robustness"]["conditions"]["clean"] == old["robustness"]["conditions"]["clean"]
    assert "telephone" in new["robustness"]["conditions"]
    assert "telephone" in res["analysis"]["variants"]["moma-2"]["robustness"]["conditions"]
    write_yaml(root / "analysed.yaml", manifest, seeds=[0], reference="moma-2", variants=ANALYSIS_VARIANTS,
               analysis=ANALYSIS)  # leave the file as the fixture wrote it


def test_without_analysis_the_claims_needing_it_are_not_measured(grid):
    _, _, _, out, results = grid
    claims = {c["claim"]: c["verdict"] for c in results["claims"]}
    assert claims["smoothing"] == claims["bias"] == "not measured"
    assert claims["ranking"] in ("not measured", "supported", "not supported", "inconclusive")
    report = (out / "report.md").read_text()
    assert "## Paper claims" in report and "## Analysis" not in report


def test_bad_analysis_sections_are_refused(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    cases = [({"atention": True}, r"analysis: unknown key\(s\) atention"),
             ({"seeds": [7]}, r"analysis.seeds \[7\] are not among"),
             ({"robustness": {"conditions": ["pink-5dB"]}}, "unknown condition 'pink-5dB'"),
             ({"probe": {"speakers": "everyone"}}, "analysis.probe.speakers must be one of"),
             ({"robustness": {"max_utterances_per_fold": 0}}, "max_utterances_per_fold"),
             ({"attention_maps": -1}, "attention_maps must be a non-negative integer")]
    for i, (section, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            load_experiment(write_yaml(tmp_path / f"{i}.yaml", manifest, analysis=section))
    fusion = {"moma-1": {"set": ["model.num_blocks=1"]}, "fused": {"set": ["features.functionals=eGeMAPSv02"]}}
    with pytest.raises(ValueError, match=r"does not feed utterance functionals to fusion variants \(fused\)"):
        load_experiment(write_yaml(tmp_path / "fusion.yaml", manifest, analysis={"robustness": True}, variants=fusion))
    assert load_experiment(write_yaml(tmp_path / "fusion-ok.yaml", manifest, variants=fusion)).analysis is None
    spec = load_experiment(write_yaml(tmp_path / "ok.yaml", manifest, analysis={"robustness": True})).analysis
    assert spec.attention and spec.probe and spec.robustness and len(spec.conditions) == 13 and spec.seeds == [0]


@pytest.mark.parametrize("name,classes", [("emodb-table1", None), ("emodb-table1-4class", "4class"),
                                          ("iemocap-table1", "4class"), ("nemo-table1", "4class")])
def test_shipped_experiments_have_the_analysis_section(name, classes):
    shipped = Path(__import__("moma").__file__).with_name("configs") / "experiments" / f"{name}.yaml"
    exp = load_experiment(shipped)
    a = exp.analysis
    assert a is not None and a.attention and a.probe and a.robustness and a.seeds == [0]
    assert set(a.conditions) == {"clean", "white-20dB", "white-10dB", "white-5dB", "white-0dB", "babble-20dB",
                                 "babble-10dB", "babble-5dB", "babble-0dB", "telephone", "gain+10dB", "gain-10dB",
                                 "reverb-0.5s"}
    assert {n: v.config.model.arch for n, v in exp.variants.items()}["mean"] == "mean"
    if classes:
        from moma.corpora import resolve_label_map

        assert "4class" in exp.corpus["manifest"] and exp.reference == "moma-3"
        # the paper-scale grids add the fidelity variants (gamma initialisation, layer-1 readings)
        assert len(exp.variants) == (11 if name in ("iemocap-table1", "nemo-table1") else 8)
        corpus = exp.corpus["name"]
        assert sorted(set(resolve_label_map(corpus, classes).values())) == ["angry", "happy", "neutral", "sad"]


def test_analysed_seeds_run_first_and_are_reported_before_the_other_seeds(grid, monkeypatch):
    """A grid stopped after the analysis seeds' cells already has their analysed report."""
    import moma.research.experiment.run as experiment_run  # where run_experiment looks run_cells up

    root, _, manifest, _, _ = grid
    config = write_yaml(root / "seed-first.yaml", manifest, seeds=[0, 1],
                        analysis={"seeds": [0], "attention": True, "probe": False})
    out = root / "seed-first"
    calls = []
    original = experiment_run.run_cells

    def run_then_stop(cells, *args, **kwargs):
        calls.append(sorted({c.seed for c in cells}))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while training the other seeds
        return original(cells, *args, **kwargs)

    monkeypatch.setattr(experiment_run, "run_cells", run_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, cache_dir=root / "cache")
    assert calls == [[0], [1]]
    results = json.loads((out / "results.json").read_text())
    assert results["cells_finished"] == 4 and len(results["missing_cells"]) == 4  # seed 0 of 2 variants x 2 folds
    assert results["analysis"]["cells_analysed"] == 4 and (out / "report.md").is_file()


def test_map_utterances_one_per_label_seeded_from_the_folds_that_tested_them():
    from moma.corpora.base import Utterance
    from moma.data.protocols import Fold
    from moma.research.experiment import Cell, pick_map_utterances

    utts = [Utterance(id=f"{spk}_{lab}{i}", path=f"/x/{spk}_{lab}{i}.wav", speaker=spk, label=lab)
            for spk in ("a", "b") for lab in ("angry", "sad") for i in range(3)]
    utts.append(Utterance(id="a_region", path="/x/long.wav", speaker="a", label="happy", start=1.0, end=2.0))

    class Done(Cell):
        def done(self) -> bool:
            return True

    def cell(test_spk: str) -> Cell:
        test = [u.id for u in utts if u.speaker == test_spk]
        train = [u.id for u in utts if u.speaker != test_spk]
        fold = Fold(name=f"spk-{test_spk}", train=train, val=[], test=test, train_speakers=["b" if test_spk == "a"
                    else "a"], val_speakers=[], test_speakers=[test_spk])
        return Done("moma-3", 0, fold, None, Path("/nowhere"))

    cells = [cell("a"), cell("b")]
    picked = pick_map_utterances(cells, utts, 5, seed=0)
    assert [u.label for u, _ in picked] == ["angry", "sad", "angry", "sad", "angry"]  # no region, no "happy"
    assert len({u.id for u, _ in picked}) == 5
    for u, c in picked:
        assert u.id in c.fold.test
    assert [u.id for u, _ in picked] == [u.id for u, _ in pick_map_utterances(cells, utts, 5, seed=0)]
    assert len(pick_map_utterances(cells, utts, 50, seed=0)) == 12  # every non-region utterance, once
    assert pick_map_utterances(cells[:1], utts, 50, seed=0)[0][0].speaker == "a"


def test_bad_classical_sections_are_refused(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    cases = [({"feature_sets": ["MFCC"]}, "classical.feature_sets must be distinct names"),
             ({"normalisation": "utterance"}, "classical.normalisation must be one of"),
             ({"c_grid": [0, 1]}, "classical.c_grid must be a list of positive numbers"),
             ({"kernel": "rbf"}, r"classical: unknown key\(s\) kernel")]
    for i, (section, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            load_experiment(write_yaml(tmp_path / f"{i}.yaml", manifest, classical=section))
    with pytest.raises(ValueError, match="taken by the classical anchor"):
        load_experiment(write_yaml(tmp_path / "clash.yaml", manifest, classical={"feature_sets": ["eGeMAPSv02"]},
                                   variants={"svm-egemapsv02": {}, "moma-1": {"set": ["model.num_blocks=1"]}}))
    spec = load_experiment(write_yaml(tmp_path / "ok.yaml", manifest, classical=True)).classical
    assert spec.feature_sets == ["eGeMAPSv02", "ComParE_2016"] and spec.normalisation == "global"


def test_classical_anchor_on_the_grid_folds_with_paired_tests(grid):
    """eGeMAPS + SVM beside the model variants: same test speakers, cached, compared with the reference."""
    pytest.importorskip("opensmile")
    root, _, manifest, _, _ = grid
    config = write_yaml(root / "anchored.yaml", manifest, seeds=[0], classical={"feature_sets": ["eGeMAPSv02"]})
    out = root / "anchored"
    results = run_experiment(config, out, cache_dir=root / "cache", command="moma experiment anchored.yaml")
    anchor = results["summary"]["variants"]["svm-egemapsv02"]
    assert anchor["kind"] == "classical" and anchor["n_features"] == 88 and anchor["cells_finished"] == 2
    folds = json.loads((out / "folds.json").read_text())
    cached = json.loads((out / "classical" / "eGeMAPSv02-global.json").read_text())
    assert [f["test_speakers"] for f in cached["folds"]] == [f["test_speakers"] for f in folds]
    assert anchor["pooled"]["n"] == sum(f["n_test"] for f in folds)
    assert anchor["uar"]["mean"] == pytest.approx(sum(f["test"]["uar"] for f in cached["folds"]) / 2)
    test = anchor["vs_reference"]
    ref_cells = results["summary"]["variants"]["moma-1"]["cells"]
    want = sum(c["uar"] for c in ref_cells) / 2 - anchor["uar"]["mean"]
    assert test["unit"] == "fold" and test["n"] == 2 and test["mean_diff"] == pytest.approx(want)
    report = (out / "report.md").read_text()
    assert "eGeMAPSv02 + linear SVM | 88 functionals" in report and "(no seeds)" in report
    assert "over 2 fold pairs" in report and "Classical anchors (eGeMAPSv02 + linear SVM)" in report
    # a rerun reuses the cached anchor; a report-only run in a fresh folder computes none and says so
    stamp = (out / "classical" / "eGeMAPSv02-global.json").stat().st_mtime_ns
    run_experiment(config, out, cache_dir=root / "cache")
    assert (out / "classical" / "eGeMAPSv02-global.json").stat().st_mtime_ns == stamp
    empty = run_experiment(config, root / "anchored-report", cache_dir=root / "cache", train=False)
    assert "svm-egemapsv02" not in empty["summary"]["variants"]
    assert any("not computed yet" in n for n in empty["classical_notes"])


def test_missing_manifest_is_prepared_from_the_corpus_root(tmp_path, monkeypatch):
    """corpus: {manifest, name, root}: one command from a clean checkout writes the manifest, then reuses it."""
    from replicas import make_emodb_replica

    from moma.corpora.base import read_manifest
    from moma.research.experiment import load_corpus

    make_emodb_replica(tmp_path / "emodb")
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "e.yaml", "runs/emodb.jsonl")
    spec = yaml.safe_load(config.read_text())
    spec["corpus"].update(name="emodb", root="emodb")
    config.write_text(yaml.safe_dump(spec))
    utts = load_corpus(load_experiment(config))
    assert len(utts) == 8 and (tmp_path / "runs" / "emodb.jsonl").is_file()
    assert [u.id for u in read_manifest(tmp_path / "runs" / "emodb.jsonl")] == [u.id for u in utts]
    (tmp_path / "runs" / "emodb.jsonl").write_text("\n".join(
        (tmp_path / "runs" / "emodb.jsonl").read_text().splitlines()[:3]) + "\n")
    assert len(load_corpus(load_experiment(config))) == 3  # an existing manifest is read, not rebuilt
    spec["corpus"] = {"manifest": "runs/none.jsonl"}
    config.write_text(yaml.safe_dump(spec))
    with pytest.raises(FileNotFoundError):
        load_corpus(load_experiment(config))


def test_shipped_iemocap_experiment_runs_on_a_copy_given_by_root(tmp_path, monkeypatch):
    """--root points a shipped experiment at the user's copy: the paper's split (Session 5 tested, validation
    speakers from Sessions 1-4), its 4 classes, and a stale manifest from another copy refused."""
    from replicas import make_iemocap_replica

    from moma.research.experiment import experiment_folds, load_corpus

    replica = make_iemocap_replica(tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    shipped = Path(__import__("moma").__file__).with_name("configs") / "experiments" / "iemocap-table1.yaml"
    exp = load_experiment(shipped, corpus_root=replica.root)
    assert {v.config.model.hidden_size for v in exp.variants.values()} == {512}  # the paper's model
    utts = load_corpus(exp)
    assert (tmp_path / "runs" / "iemocap-4class.jsonl").is_file()
    assert {u.label for u in utts} <= {"angry", "happy", "neutral", "sad"} and "happy" in {u.label for u in utts}
    by_id = {u.id: u for u in utts}
    assert any(replica.raw_labels.get(u.id) == "exc" and u.label == "happy" for u in utts)  # excited merged
    (fold,) = experiment_folds(exp, utts)
    assert {by_id[i].session for i in fold.test} == {"Ses05"}
    assert {by_id[i].session for i in fold.train + fold.val} == {"Ses01"}
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ValueError, match="prepared from another copy"):
        load_corpus(load_experiment(shipped, corpus_root=other))
    with pytest.raises(ValueError, match="needs a corpus 'name'"):
        load_experiment(write_yaml(tmp_path / "m.yaml", "runs/iemocap-4class.jsonl"), corpus_root=other)


def test_nemo_and_iemocap_grids_plan_the_same_cells(tmp_path, monkeypatch):
    """nemo-table1 and iemocap-table1 share everything but the corpus and its protocol: the same variants with
    the same configurations (the paper's model, random gammas, no gradient clipping), analysis and anchors; on
    their replicas each plans every variant x seed on each of its folds."""
    from replicas import make_iemocap_replica, make_nemo_replica

    from moma.research.experiment import experiment_folds, load_corpus
    from moma.research.experiment.cells import config_signature, plan_cells

    monkeypatch.chdir(tmp_path)
    shipped = Path(__import__("moma").__file__).with_name("configs") / "experiments"
    iemocap = load_experiment(shipped / "iemocap-table1.yaml", corpus_root=make_iemocap_replica(tmp_path / "i").root)
    make_nemo_replica(tmp_path / "n")
    nemo = load_experiment(shipped / "nemo-table1.yaml", corpus_root=tmp_path / "n")
    assert list(nemo.variants) == list(iemocap.variants) and len(nemo.variants) == 11
    for name in nemo.variants:
        assert config_signature(nemo.variants[name].config) == config_signature(iemocap.variants[name].config), name
    moma3 = nemo.variants["moma-3"].config
    assert (moma3.model.hidden_size, moma3.model.gamma_init, moma3.train.grad_clip) == (512, "random", 0.0)
    assert nemo.variants["moma-3-equal"].config.model.gamma_init == "equal"
    assert {nemo.variants[f"moma-3-{r}"].config.model.layer1_output for r in ("weight", "context")} == {"weight",
                                                                                                         "context"}
    assert nemo.analysis.to_dict() == {**iemocap.analysis.to_dict(),
                                       "robustness": {**iemocap.analysis.to_dict()["robustness"],
                                                      "max_utterances_per_fold": 40}}
    assert nemo.classical == iemocap.classical
    for exp in (nemo, iemocap):
        utts = load_corpus(exp)
        assert {u.label for u in utts} <= {"angry", "happy", "neutral", "sad"}
        folds = experiment_folds(exp, utts)
        cells = plan_cells(exp, folds, tmp_path / exp.title[:4])
        assert len(cells) == len(exp.variants) * len(exp.seeds) * len(folds)
        assert {(c.variant, c.seed) for c in cells} == {(v, s) for v in exp.variants for s in exp.seeds}
    cpu = load_experiment(shipped / "nemo-table1-cpu.yaml", corpus_root=tmp_path / "n")
    assert list(cpu.variants) == list(nemo.variants)
    assert cpu.variants["moma-3"].config.model.hidden_size == 128
    assert cpu.variants["moma-3"].config.model.gamma_init == "random"
    assert cpu.variants["moma-3-equal"].config.model.gamma_init == "equal"  # the variant's own set wins
    # the paper-size grid runs the CPU grid's folds, so that each of its cells pairs with a CPU-sized one
    paper = load_experiment(shipped / "nemo-table1-paper.yaml", corpus_root=tmp_path / "n")
    assert paper.protocol == cpu.protocol and set(paper.variants) <= set(cpu.variants)
    for name in paper.variants:
        ran = paper.variants[name].config
        assert (ran.model.hidden_size, ran.model.projection_dim, ran.train.lr, ran.train.grad_clip) == (
            512, 1024, 1e-4, 0.0), name
        assert ran.model.arch == nemo.variants[name].config.model.arch, name


REPORTS = Path(__file__).resolve().parents[2] / "reports"


@pytest.mark.parametrize("report", sorted(p.parent.name for p in REPORTS.glob("*/experiment.yaml")))
def test_shipped_grids_still_resolve_to_the_configs_their_committed_reports_ran(report):
    """A shipped recipe's defaults may change (cpu gained min_epochs and smoothing); a grid whose report is
    committed must pin what it ran with, or its own command would refuse every finished cell."""
    from moma.research.experiment.cells import config_differences

    saved = yaml.safe_load((REPORTS / report / "experiment.yaml").read_text())
    shipped = Path(__import__("moma").__file__).with_name("configs") / "experiments" / Path(saved["source"]).name
    exp = load_experiment(shipped)
    assert set(exp.variants) == set(saved["variants"])
    for name, variant in exp.variants.items():
        ran = yaml.safe_load((REPORTS / report / "configs" / f"{name}.yaml").read_text())
        assert config_differences(ran, variant.config) == [], f"{report}: variant {name}"
