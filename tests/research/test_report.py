"""moma.research.report: the verdict sentences, the number formats and report.md on hand-made results (no training),
and each committed experiment report against what its results.json renders to."""

import json
from pathlib import Path

import pytest

from moma.cli.main import main
from moma.research.report import (
    _ms,
    main_summary,
    plot_uar_by_variant,
    plot_uar_vs_blocks,
    render_experiment_report,
    verdict,
)


def metric(mean: float, std: float = 0.01, seeds: int = 3, **extra) -> dict:
    return {"mean": mean, "std": std, "seeds": seeds, **extra}


def variant(label: str, uar: float, vs: dict | None = None, ci: tuple[float, float] | None = None, **extra) -> dict:
    v = {"label": label, "uar": metric(uar), "accuracy": metric(uar + 0.05), "macro_f1": metric(uar - 0.02),
         "vs_reference": vs, "parameters": 123456, "per_seed": [{"seed": 0, "uar": uar}], "base": [], "set": [],
         "description": "a model", "note": ""}
    if ci:
        v["pooled"] = {"uar": uar, "uar_ci": {"estimate": uar, "low": ci[0], "high": ci[1]}}
    v.update(extra)
    return v


def paired(diff: float, p: float, low: float, high: float) -> dict:
    return {"n": 30, "mean_diff": diff, "permutation_p": p, "wilcoxon_p": p, "wins": 20, "losses": 10,
            "pooled_uar_diff_ci": {"estimate": diff, "low": low, "high": high}}


def summary_of(other: dict) -> dict:
    return {"variants": {"moma-3": variant("MOMA 3", 0.60, ci=(0.56, 0.64)), "mean": other}}


@pytest.mark.parametrize("test,expected", [
    (paired(0.08, 0.001, 0.03, 0.12), "moma-3 beats mean pooling: significant at α = 0.05 and the difference's CI "
                                      "excludes 0"),
    (paired(0.03, 0.01, -0.01, 0.07), "the evidence is mixed (paired test significant, CI includes 0)"),
    (paired(0.02, 0.40, -0.02, 0.06), "higher than mean pooling but not significantly"),
    (paired(-0.08, 0.001, -0.12, -0.03), "moma-3 is significantly worse than mean pooling"),
    (paired(-0.01, 0.60, -0.04, 0.03), "lower than mean pooling, not significantly so by the paired test"),
    (paired(0.0, 1.0, -0.02, 0.02), "the same mean fold×seed UAR"),
    (None, "no matched finished cells yet"),
])
def test_verdict_names_the_direction_and_the_evidence(test, expected):
    other_uar = 0.60 - (test["mean_diff"] if test else 0.0)
    text = verdict("mean", "moma-3", summary_of(variant("mean pooling", other_uar, vs=test)), 0.05)
    assert expected in text
    if test:  # the numbers that decided it are in the sentence
        assert f"{test['mean_diff']:+.3f}" in text and "30 fold×seed pairs (moma-3 higher in 20, lower in 10)" in text
        assert "[" in text and "95% CI" in text


def test_verdict_says_whether_the_other_pooled_uar_is_inside_the_reference_ci():
    inside = verdict("mean", "moma-3", summary_of(variant("m", 0.58, vs=paired(0.02, 0.4, -0.02, 0.06), ci=(0.5, 0.6))),
                     0.05)
    outside = verdict("mean", "moma-3", summary_of(variant("m", 0.50, vs=paired(0.1, 0.001, 0.05, 0.15),
                                                           ci=(0.45, 0.55))), 0.05)
    assert "the pooled UAR of m, 0.580, is inside the CI of moma-3, [0.560, 0.640]" in inside
    assert "the pooled UAR of m, 0.500, is outside the CI of moma-3" in outside


def test_mean_std_format_says_when_a_spread_means_nothing():
    assert _ms(metric(0.5, 0.02)) == "0.500 ± 0.020"
    assert _ms(metric(0.5, 0.0, seeds=1)) == "0.500 (1 seed)"
    assert _ms(metric(0.7, 0.0, seeds=1, deterministic=True)) == "0.700 (no seeds)"
    assert _ms({}) == "–" and _ms(metric(0.5, seeds=0)) == "–"


def results_of(missing: list[str], seeds: list[int]) -> dict:
    summary = summary_of(variant("mean pooling", 0.55, vs=paired(0.05, 0.01, 0.01, 0.09), ci=(0.5, 0.6)))
    return {"experiment": {"title": "hand-made", "reference": "moma-3", "alpha": 0.05, "seeds": seeds,
                           "protocol": {"name": "loso"}, "bootstrap": 100, "set": [], "base": [],
                           "notes": ["A note from the experiment file."]},
            "summary": summary, "command": "moma experiment x.yaml --out y", "config_path": "x.yaml",
            "corpus": "emodb", "n_utterances": 10, "n_speakers": 2, "labels": ["angry", "sad"],
            "folds": [{}, {}], "cells_finished": 6 - len(missing), "cells_planned": 6, "cells_run_now": 0,
            "wall_time_s": 1.0, "missing_cells": missing, "figures": [{"file": "f.png", "title": "A figure"}],
            "claims": []}


def test_report_states_naming_partial_grid_seeds_and_deltas():
    report = render_experiment_report(results_of(["mean/seed1/f1"], [0, 1]))
    assert report.startswith("# hand-made\n")
    assert "Made by:\n\n```\nmoma experiment x.yaml --out y\n```" in report
    assert 'paper\'s "UA"' in report and "UAR" in report  # the paper's swapped names are spelled out
    assert "**Partial grid**: 1 cell(s) not finished (mean/seed1/f1)" in report
    assert "**Only 2 seed(s)**" in report
    row = next(line for line in report.splitlines() if line.startswith("| mean pooling |"))
    assert "-0.050" in row and "0.123 M" not in row and "0.12 M" in row  # ΔUAR = variant − reference
    assert "![A figure](f.png)" in report and report.rstrip().endswith("A note from the experiment file.")
    full = render_experiment_report(results_of([], [0, 1, 2]))
    assert "Partial grid" not in full and "Only" not in full


def test_main_summary_lists_each_variant_with_its_delta():
    text = main_summary(results_of([], [0, 1, 2]))
    assert text.splitlines()[0] == "hand-made: 6/6 cells (0 run now)"
    assert "Δ -0.050 vs moma-3" in text and text.count("UAR") == 2


def test_block_and_variant_figures_are_written_with_their_caption(tmp_path):
    summary = summary_of(variant("mean pooling", 0.55, vs=paired(0.05, 0.01, 0.01, 0.09), ci=(0.5, 0.6)))
    summary["variants"]["moma-1"] = variant("MOMA 1", 0.58, ci=(0.54, 0.62))
    summary["labels"] = ["angry", "sad"]
    by_variant = plot_uar_by_variant(summary, tmp_path / "v.png", reference="moma-3", command="c", config="k",
                                     title="t")
    blocks = plot_uar_vs_blocks(summary, {"moma-1": 1, "moma-3": 3}, tmp_path / "b.png", title="t", command="c",
                                config="k")
    for path in (by_variant, blocks):
        assert path.stat().st_size > 5000
    summary["variants"]["moma-1"]["uar"]["seeds"] = 0  # an unfinished variant is left out, not plotted as 0
    plot_uar_vs_blocks(summary, {"moma-1": 1, "moma-3": 3}, tmp_path / "b2.png", title="t", command="c", config="k")
    assert (tmp_path / "b2.png").stat().st_size > 5000


def test_moma_report_rerenders_an_experiment_folder_from_results_json(tmp_path, capsys):
    results = results_of([], [0, 1, 2])
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "report.md").write_text("stale")
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == render_experiment_report(results)
    assert capsys.readouterr().out.startswith("hand-made: 6/6 cells")


REPORTS = sorted(p.parent for p in (Path(__file__).resolve().parents[2] / "reports").glob("*/results.json"))


@pytest.mark.parametrize("folder", REPORTS, ids=[p.name for p in REPORTS])
def test_committed_experiment_reports_are_what_their_results_render_to(folder):
    """A committed report.md that drifted from its results.json (hand edits, or rendering changed without
    `moma report FOLDER`) fails here."""
    results = json.loads((folder / "results.json").read_text())
    assert (folder / "report.md").read_text() == render_experiment_report(results)
    for fig in results["figures"] + (results.get("attention_maps") or []):
        assert (folder / fig["file"]).is_file(), fig["file"]


def test_a_variant_not_yet_run_is_marked_not_analysed_and_mean_pooling_has_no_attention():
    """A partial grid's analysis table must not call an unrun MOMA variant attention-free."""
    results = json.loads((Path(__file__).resolve().parents[2] / "reports" / "nemo-table1" / "results.json")
                         .read_text())
    for name in ("moma-2", "moma-5"):  # as the grid stood before these variants ran
        results["analysis"]["variants"][name] = {"cells_analysed": 0}
    report = render_experiment_report(results)
    entropy = report.split("### Attention entropy")[1].split("###")[0]  # that table only (the probe's has its own)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in entropy.splitlines() if line.startswith("| ")}
    assert "(no attention)" in rows["BLSTM + mean pooling"]
    assert "not analysed" in rows["MOMA 2 blocks"] and "not analysed" in rows["MOMA 5 blocks"]
