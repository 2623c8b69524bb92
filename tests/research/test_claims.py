"""moma.research.claims: each paper claim's verdict rule on hand-made numbers (every verdict reached by some case)."""

import pytest

from moma.research.claims import paper_claims

FOLDS = [f"f{i}" for i in range(10)]


def variant(arch: str, uars, blocks: int = 3, vs=None, label: str | None = None) -> dict:
    return {"label": label or arch, "arch": arch, "num_blocks": blocks, "vs_reference": vs,
            "cells": [{"seed": 0, "fold": f, "uar": u} for f, u in zip(FOLDS, uars)],
            "uar": {"mean": sum(uars) / len(uars), "std": 0.0, "seeds": 1}}


def vs(diff: float, p: float, low: float, high: float) -> dict:
    return {"n": 10, "mean_diff": diff, "permutation_p": p, "wilcoxon_p": p, "wins": 0, "losses": 0,
            "pooled_uar_diff_ci": {"estimate": diff, "low": low, "high": high}}


def results_of(variants: dict, analysis: dict | None = None, series=None) -> dict:
    summary = {"variants": variants}
    if series is not None:
        summary["blocks_series"] = series
    return {"experiment": {"reference": "moma-3", "alpha": 0.05}, "summary": summary, "analysis": analysis}


def claims_of(results: dict) -> dict[str, dict]:
    return {c["claim"]: c for c in paper_claims(results)}


BASE = [0.5 + 0.01 * i for i in range(10)]


@pytest.mark.parametrize("mean_vs,att_vs,expected", [
    (vs(0.05, 0.01, 0.01, 0.09), vs(0.04, 0.002, 0.005, 0.08), "supported"),
    (vs(0.05, 0.01, 0.01, 0.09), vs(-0.02, 0.4, -0.06, 0.03), "not supported"),
    (vs(0.05, 0.01, 0.01, 0.09), vs(0.03, 0.30, -0.02, 0.07), "inconclusive"),
    (None, None, "not measured"),
])
def test_ranking_rule(mean_vs, att_vs, expected):
    c = claims_of(results_of({"mean": variant("mean", BASE, vs=mean_vs), "attention":
                              variant("attention", BASE, vs=att_vs), "moma-3": variant("moma", BASE)}))["ranking"]
    assert c["verdict"] == expected
    if expected != "not measured":
        assert any("ΔUAR" in e for e in c["evidence"])
    assert claims_of(results_of({"moma-3": variant("moma", BASE)}))["ranking"]["verdict"] == "not measured"


def attention_cells(n: int, mixture: float, layer1: float, blocks, corr: float) -> dict:
    return {f"seed0/f{i}": {"layer1": layer1 + 0.001 * i, "mixture": mixture + 0.001 * i,
                            "blocks": [b + 0.001 * i for b in blocks], "block_correlation": corr}
            for i in range(n)}


def with_attention(cells: dict) -> dict:
    agg = {"mean": 0.5, "std": 0.0, "n": len(cells)}
    return {"variants": {"moma-3": {"attention": {"cells": cells, "layer1": agg, "mixture": agg,
                                                  "blocks": [agg, agg, agg]}}}}


@pytest.mark.parametrize("cells,expected", [
    (attention_cells(8, 0.9, 0.7, [0.6, 0.8, 0.75], 0.4), "supported"),
    (attention_cells(8, 0.9, 0.7, [0.6, 0.8, 0.75], 0.995), "not supported"),  # blocks are copies
    (attention_cells(8, 0.78, 0.7, [0.6, 0.8, 0.75], 0.4), "not supported"),  # a single block is smoother
    (attention_cells(3, 0.9, 0.7, [0.6, 0.8, 0.75], 0.4), "inconclusive"),  # 3 cells: p >= 0.25
])
def test_smoothing_rule(cells, expected):
    variants = {"moma-3": variant("moma", BASE)}
    c = claims_of(results_of(variants, with_attention(cells)))["smoothing"]
    assert c["verdict"] == expected and any("mixture − smoothest block" in e for e in c["evidence"])
    assert claims_of(results_of(variants))["smoothing"]["verdict"] == "not measured"


def bias_entry(probe: float, std: float, gap: float, drop: float | None) -> dict:
    entry = {"probe": {"cells": {f"seed0/f{i}": {"final": probe + 0.001 * i} for i in range(8)}},
             "speaker_bias": {"std": std, "gender_gap": gap}}
    if drop is not None:
        entry["robustness"] = {"cells": {f"seed0/f{i}": {"drop": drop + 0.001 * i} for i in range(8)}}
    return entry


@pytest.mark.parametrize("moma,expected,parts", [
    (bias_entry(0.40, 0.05, 0.01, 0.05), "supported", {"probe": "supported", "spread": "supported",
                                                       "robustness": "supported"}),
    (bias_entry(0.40, 0.05, 0.01, 0.20), "not supported", {"robustness": "not supported"}),  # degrades more
    (bias_entry(0.70, 0.05, 0.01, 0.05), "not supported", {"probe": "not supported"}),  # more speaker info
    (bias_entry(0.40, 0.05, 0.01, None), "inconclusive", {"robustness": "not measured"}),
    (bias_entry(0.40, 0.12, 0.01, 0.05), "inconclusive", {"spread": "inconclusive"}),  # larger spread only
])
def test_bias_rule(moma, expected, parts):
    variants = {"mean": variant("mean", BASE), "attention": variant("attention", BASE),
                "moma-3": variant("moma", BASE)}
    base = bias_entry(0.60, 0.10, 0.05, 0.08)
    analysis = {"variants": {"mean": base, "attention": base, "moma-3": moma}}
    c = claims_of(results_of(variants, analysis))["bias"]
    assert c["verdict"] == expected
    assert parts.items() <= c["parts"].items()
    assert claims_of(results_of(variants))["bias"]["verdict"] == "not measured"


def blocks_results(uar3_offset: float, uar5_offset: float, counts=(1, 2, 3, 5)) -> dict:
    offsets = {1: 0.0, 2: 0.05, 3: uar3_offset, 5: uar5_offset}
    variants = {}
    for k in counts:
        jitter = [0.002 * ((i * 7 + k) % 5) for i in range(10)] if k in (3, 5) else [0.0] * 10
        variants[f"moma-{k}"] = variant("moma", [b + offsets[k] + j for b, j in zip(BASE, jitter)], blocks=k)
    return results_of(variants, series=list(variants))


@pytest.mark.parametrize("results,expected", [
    (blocks_results(0.10, 0.10), "supported"),  # 3 >> 1, 5 ~ 3
    (blocks_results(0.10, 0.30), "not supported"),  # 5 blocks significantly better than 3
    (blocks_results(-0.01, 0.0), "not supported"),  # 3 blocks not above 1
    (blocks_results(-0.003, 0.0, counts=(1, 3)), "inconclusive"),  # mean +0.001, mixed signs
    (blocks_results(0.10, 0.10, counts=(3,)), "not measured"),
])
def test_block_count_rule(results, expected):
    c = claims_of(results)["blocks"]
    assert c["verdict"] == expected
    if expected != "not measured":
        assert any(e.startswith("1 block(s): fold×seed UAR") for e in c["evidence"])
