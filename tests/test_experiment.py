"""moma experiment: a tiny grid (2 variants x 2 seeds x 2 folds) on the synthetic corpus."""

import json
from pathlib import Path

import pytest
import yaml

from moma.cli_experiment import add_experiment_command
from moma.corpora.base import write_manifest
from moma.corpora.synthetic import make_synthetic_corpus
from moma.experiment import load_experiment, run_experiment

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
        assert f"![" in report and f"({fig})" in report
    assert report.count("Made by `moma experiment exp.yaml --out run`") == 2
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


def test_changed_config_in_same_folder_is_refused(grid):
    root, _, manifest, out, _ = grid
    changed = write_yaml(root / "changed.yaml", manifest, set=TINY + ["train.lr=0.02"])
    with pytest.raises(ValueError, match="differs in: train.lr"):
        run_experiment(changed, out, cache_dir=root / "cache")


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
    add_experiment_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", "x.yaml", "--out", "d", "--jobs", "2"])
    assert args.config == "x.yaml" and args.out == "d" and args.jobs == 2 and callable(args.func)
