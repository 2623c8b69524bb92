"""The paper's claims, checked: a verdict for each from an experiment's measured numbers.

The MOMA paper claims that MOMA beats other architectures (Table 1), that the
mixture of attention blocks smooths attention, that the model removes speaker
bias, and leaves the number of blocks open. :func:`paper_claims` turns an
experiment's ``results.json`` content into one verdict per claim --
supported, not supported, inconclusive or not measured -- by the rules in
:data:`CLAIM_RULES`, which the report prints beside each verdict together
with the numbers that decided it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from moma.evaluation.stats import format_p, holm_adjust, paired_test

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_MEASURED = "supported", "not supported", "inconclusive", "not measured"
SMOOTHING_IDENTICAL_CORRELATION = 0.99  # mean block correlation at or above this: the blocks are copies

# The rules, stated once: the report prints them beside each verdict, and the functions below implement them.
CLAIM_RULES = {
    "ranking": (
        "For MOMA (the reference) against every baseline (BLSTM + mean pooling, BLSTM + attention layer 1): "
        "*beats* = mean fold×seed UAR difference > 0 AND sign-flip p < α AND the paired bootstrap CI of the pooled "
        "UAR difference excludes 0. Supported: it beats every baseline. Not supported: some baseline's mean UAR "
        "is at least MOMA's. Inconclusive: otherwise (higher, but not by both criteria)."),
    "smoothing": (
        "On MOMA's (the reference's, else the MOMA variant with the most analysed cells and >= 2 blocks) "
        "normalised attention entropy H / log L per analysed cell: d1 = mixture − layer 1, d2 = mixture − the "
        "smoothest single block (max over blocks; the mixture's entropy is never below the γ-weighted mean of "
        "the blocks' by concavity, so that comparison would prove nothing). Supported: mean d1 > 0 and mean "
        f"d2 > 0, each with sign-flip p < α over cells, and mean block correlation < {SMOOTHING_IDENTICAL_CORRELATION}"
        " (blocks not identical). Not supported: mean d1 <= 0 or mean d2 <= 0 or block correlation >= "
        f"{SMOOTHING_IDENTICAL_CORRELATION}. Inconclusive: otherwise (right direction, not significant)."),
    "bias": (
        "Three parts, MOMA against every baseline. (1) Probe: speaker-probe accuracy after the final pooling "
        "(MOMA: after the MOMA layer) paired over cells, d = baseline − MOMA; supported if d > 0 with sign-flip "
        "p < α for every baseline, not supported if d <= 0 for some baseline, else inconclusive. (2) Speaker "
        "spread: std of per-speaker UAR and |female − male| UAR gap (descriptive, no test); supported if "
        "neither is larger for MOMA than for any baseline, not supported if both are larger than some "
        "baseline's, else inconclusive. (3) Robustness: mean UAR drop from clean over the conditions, paired over "
        "cells, d = MOMA − baseline; not supported if d > 0 with sign-flip p < α for some baseline (MOMA "
        "degrades more), supported if d <= 0 for every baseline, else inconclusive. Claim: not measured if no "
        "part is; not supported if any measured part is not; supported only if all three parts are measured and "
        "supported; else inconclusive."),
    "blocks": (
        "MOMA variants differing only in the number of blocks; every pair compared on matched fold×seed UARs "
        "(sign-flip test, Holm-adjusted over the pairs). *Significantly better* = higher mean and adjusted p < α. "
        "Claim: several blocks (the reference's count, the paper's 3) beat one block and no count beats it. "
        "Supported: it is significantly better than 1 block and no count is significantly better than it. Not "
        "supported: another count is significantly better, or its mean UAR is not above 1 block's. Inconclusive: "
        "otherwise. Not measured: fewer than 2 counts or the reference's count / 1 block missing."),
}
CLAIM_TEXT = {
    "ranking": "(a) Table 1 ranking: MOMA beats BLSTM + mean pooling and BLSTM + attention layer 1",
    "smoothing": "(b) Smoothing: the mixture attention is smoother (higher entropy) than layer 1 and than any single "
                 "block, and the blocks are not identical",
    "bias": "(c) Removing bias: less speaker information after the MOMA layer, a smaller per-speaker spread and "
            "gender gap, and no worse degradation under noise and channel conditions than the baselines",
    "blocks": "(d) Number of blocks: several blocks (the paper's 3) beat one, and no other count is better",
}


def _claim(key: str, verdict_: str, evidence: Sequence[str]) -> dict[str, Any]:
    return {"claim": key, "text": CLAIM_TEXT[key], "verdict": verdict_, "evidence": list(evidence),
            "rule": CLAIM_RULES[key]}


def _moma_reference(results: dict[str, Any]) -> str | None:
    ref = results["experiment"]["reference"]
    v = results["summary"]["variants"].get(ref)
    return ref if v and v.get("arch") == "moma" else None


def _baselines(results: dict[str, Any]) -> list[str]:
    return [n for n, v in results["summary"]["variants"].items() if v.get("arch") in ("mean", "attention")]


def claim_ranking(results: dict[str, Any]) -> dict[str, Any]:
    """Claim (a); see ``CLAIM_RULES["ranking"]``."""
    alpha = results["experiment"]["alpha"]
    variants = results["summary"]["variants"]
    ref = _moma_reference(results)
    bases = _baselines(results)
    if ref is None or not bases:
        return _claim("ranking", NOT_MEASURED, ["needs a MOMA reference and at least one baseline variant"])
    evidence, beats, against, missing = [], [], [], []
    for b in bases:
        t = variants[b].get("vs_reference")
        if not t:
            missing.append(variants[b]["label"])
            continue
        d, p = t["mean_diff"], t["permutation_p"]
        ci = t.get("pooled_uar_diff_ci")
        sig = p is not None and np.isfinite(p) and p < alpha
        excl = bool(ci and ci["low"] > 0)
        text = (f"{ref} − {variants[b]['label']}: ΔUAR {d:+.3f} over {t['n']} fold×seed pairs, "
                f"sign-flip p = {format_p(p)}"
                + (f", pooled UAR difference CI [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci else ", no pooled CI"))
        if d <= 0:
            against.append(b)
            text += (" — the baseline is significantly better" if sig and ci and ci["high"] < 0
                     else " — MOMA is not better")
        elif d > 0 and sig and excl:
            beats.append(b)
            text += " — MOMA significantly better"
        else:
            text += " — higher, not significantly"
        evidence.append(text)
    if missing:
        evidence.append(f"no matched finished cells against {', '.join(missing)}")
    if len(missing) == len(bases):
        return _claim("ranking", NOT_MEASURED, evidence)
    if against:
        return _claim("ranking", NOT_SUPPORTED, evidence)
    if len(beats) == len(bases):
        return _claim("ranking", SUPPORTED, evidence)
    return _claim("ranking", INCONCLUSIVE, evidence)


def _analysis_variants(results: dict[str, Any]) -> dict[str, Any]:
    return ((results.get("analysis") or {}).get("variants")) or {}


def claim_smoothing(results: dict[str, Any]) -> dict[str, Any]:
    """Claim (b); see ``CLAIM_RULES["smoothing"]``."""
    from moma.evaluation.stats import sign_flip_test

    alpha = results["experiment"]["alpha"]
    an = _analysis_variants(results)
    variants = results["summary"]["variants"]
    ref = _moma_reference(results)
    cands = [n for n, v in an.items() if variants.get(n, {}).get("arch") == "moma"
             and (v.get("attention") or {}).get("cells")
             and all(len(c["blocks"]) >= 2 and c["mixture"] is not None for c in v["attention"]["cells"].values())]
    if not cands:
        return _claim("smoothing", NOT_MEASURED, ["no attention statistics of a MOMA variant with >= 2 blocks "
                                                  "(analysis section absent, or attention: false)"])
    name = ref if ref in cands else max(cands, key=lambda n: len(an[n]["attention"]["cells"]))
    cells = list(an[name]["attention"]["cells"].values())
    d1 = [c["mixture"] - c["layer1"] for c in cells]
    d2 = [c["mixture"] - max(c["blocks"]) for c in cells]
    corr = [c["block_correlation"] for c in cells if c["block_correlation"] is not None
            and np.isfinite(c["block_correlation"])]
    p1, p2 = sign_flip_test(d1)[0], sign_flip_test(d2)[0]
    m1, m2 = float(np.mean(d1)), float(np.mean(d2))
    mc = float(np.mean(corr)) if corr else math.nan
    a = an[name]["attention"]
    evidence = [f"{name}, {len(cells)} analysed cell(s); normalised entropy: layer 1 {a['layer1']['mean']:.3f}, "
                + ", ".join(f"block {i + 1} {b['mean']:.3f}" for i, b in enumerate(a["blocks"]))
                + f", mixture {a['mixture']['mean']:.3f}",
                f"mixture − layer 1: {m1:+.3f} (sign-flip p = {format_p(p1)})",
                f"mixture − smoothest block: {m2:+.3f} (sign-flip p = {format_p(p2)})",
                f"mean block correlation {mc:.3f}" if corr else "block correlation undefined"]
    if m1 <= 0 or m2 <= 0 or (corr and mc >= SMOOTHING_IDENTICAL_CORRELATION):
        return _claim("smoothing", NOT_SUPPORTED, evidence)
    if p1 < alpha and p2 < alpha and corr:
        return _claim("smoothing", SUPPORTED, evidence)
    return _claim("smoothing", INCONCLUSIVE, evidence)


def _paired(a: dict[str, Any], b: dict[str, Any], field_: str) -> tuple[list[float], list[float]]:
    keys = sorted(k for k in set(a) & set(b) if a[k].get(field_) is not None and b[k].get(field_) is not None)
    return [a[k][field_] for k in keys], [b[k][field_] for k in keys]


def _paired_differences(an: dict[str, Any], ref: str, bases: Sequence[str], part: str, field_: str, *,
                        reference_minus_baseline: bool) -> list[tuple[str, float, float, float, float, int]]:
    """Per baseline with cells paired to the reference's on ``part``/``field_``: (baseline, mean difference,
    sign-flip p, reference mean, baseline mean, cells). The difference is reference − baseline, or the reverse."""
    from moma.evaluation.stats import sign_flip_test

    ref_cells = (an[ref].get(part) or {}).get("cells")
    rows = []
    for b in bases:
        base_cells = (an[b].get(part) or {}).get("cells")
        if not ref_cells or not base_cells:
            continue
        r, o = _paired(ref_cells, base_cells, field_)
        if r:
            d = [ri - oi if reference_minus_baseline else oi - ri for ri, oi in zip(r, o)]
            rows.append((b, float(np.mean(d)), sign_flip_test(d)[0], float(np.mean(r)), float(np.mean(o)), len(d)))
    return rows


def _combine(parts: dict[str, str]) -> str:
    measured = [v for v in parts.values() if v != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    if NOT_SUPPORTED in measured:
        return NOT_SUPPORTED
    if len(measured) == len(parts) and all(v == SUPPORTED for v in measured):
        return SUPPORTED
    return INCONCLUSIVE


def claim_bias(results: dict[str, Any]) -> dict[str, Any]:
    """Claim (c); see ``CLAIM_RULES["bias"]``."""
    alpha = results["experiment"]["alpha"]
    an = _analysis_variants(results)
    variants = results["summary"]["variants"]
    ref = _moma_reference(results)
    bases = [b for b in _baselines(results) if b in an]
    if ref is None or ref not in an or not bases:
        return _claim("bias", NOT_MEASURED, ["needs the analysis of a MOMA reference and of a baseline"])
    parts: dict[str, str] = {}
    evidence: list[str] = []
    # (1) probe
    rows = _paired_differences(an, ref, bases, "probe", "final", reference_minus_baseline=False)
    if rows:
        for b, d, p, m_ref, m_b, n in rows:
            evidence.append(f"probe after the final pooling: {ref} {m_ref:.3f} vs {variants[b]['label']} {m_b:.3f} "
                            f"(baseline − MOMA {d:+.3f} over {n} cells, sign-flip p = {format_p(p)})")
        if any(d <= 0 for _, d, *_ in rows):
            parts["probe"] = NOT_SUPPORTED
        elif all(p < alpha for _, _, p, *_ in rows) and len(rows) == len(bases):
            parts["probe"] = SUPPORTED
        else:
            parts["probe"] = INCONCLUSIVE
    else:
        parts["probe"] = NOT_MEASURED
    # (2) per-speaker spread and gender gap
    sb_ref = an[ref].get("speaker_bias")
    cmp = [(b, an[b]["speaker_bias"]) for b in bases if an[b].get("speaker_bias")]
    if sb_ref and cmp:
        larger_both, larger_any = False, False
        for b, sb in cmp:
            gap_ok = all(np.isfinite(x) for x in (sb_ref["gender_gap"], sb["gender_gap"]))
            std_larger = sb_ref["std"] > sb["std"]
            gap_larger = gap_ok and abs(sb_ref["gender_gap"]) > abs(sb["gender_gap"])
            larger_any |= std_larger or gap_larger
            larger_both |= std_larger and (gap_larger or not gap_ok)
            evidence.append(f"per-speaker UAR std {ref} {sb_ref['std']:.3f} vs {variants[b]['label']} {sb['std']:.3f}"
                            + (f"; |gender gap| {abs(sb_ref['gender_gap']):.3f} vs {abs(sb['gender_gap']):.3f}"
                               if gap_ok else "; gender gap undefined (a gender without speakers)"))
        parts["spread"] = NOT_SUPPORTED if larger_both else INCONCLUSIVE if larger_any else SUPPORTED
    else:
        parts["spread"] = NOT_MEASURED
    # (3) robustness
    rows = _paired_differences(an, ref, bases, "robustness", "drop", reference_minus_baseline=True)
    if rows:
        for b, d, p, m_ref, m_b, n in rows:
            evidence.append(f"mean UAR drop from clean: {ref} {m_ref:+.3f} vs {variants[b]['label']} {m_b:+.3f} "
                            f"(MOMA − baseline {d:+.3f} over {n} cells, sign-flip p = {format_p(p)})")
        if any(d > 0 and p < alpha for _, d, p, *_ in rows):
            parts["robustness"] = NOT_SUPPORTED
        elif all(d <= 0 for _, d, *_ in rows) and len(rows) == len(bases):
            parts["robustness"] = SUPPORTED
        else:
            parts["robustness"] = INCONCLUSIVE
    else:
        parts["robustness"] = NOT_MEASURED
    evidence.append("parts: " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    result = _claim("bias", _combine(parts), evidence)
    result["parts"] = parts
    return result


def claim_blocks(results: dict[str, Any]) -> dict[str, Any]:
    """Claim (d); see ``CLAIM_RULES["blocks"]``."""
    alpha = results["experiment"]["alpha"]
    variants = results["summary"]["variants"]
    series = results["summary"].get("blocks_series")
    if series is None:
        series = [n for n, v in variants.items() if v.get("arch") == "moma"]
    by_count: dict[int, str] = {}
    for n in series:
        v = variants[n]
        if v["cells"] and v["num_blocks"] not in by_count:
            by_count[int(v["num_blocks"])] = n
    ref = _moma_reference(results)
    target = int(variants[ref]["num_blocks"]) if ref and ref in series else 3
    if len(by_count) < 2:
        return _claim("blocks", NOT_MEASURED, ["fewer than 2 block counts with finished cells"])
    uar = {k: {(r["seed"], r["fold"]): r["uar"] for r in variants[n]["cells"]} for k, n in by_count.items()}
    mean = {k: float(np.mean(list(u.values()))) for k, u in uar.items()}
    evidence = []
    for k in sorted(by_count):
        ci = (variants[by_count[k]].get("pooled") or {}).get("uar_ci")
        evidence.append(f"{k} block(s): fold×seed UAR {mean[k]:.3f}"
                        + (f", pooled {ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""))
    pairs, ps = [], []
    counts = sorted(by_count)
    for i, a in enumerate(counts):
        for b in counts[i + 1:]:
            common = sorted(set(uar[a]) & set(uar[b]))
            if not common:
                continue
            t = paired_test([uar[a][c] for c in common], [uar[b][c] for c in common])
            pairs.append((a, b, t["mean_diff"]))
            ps.append(t["permutation_p"])
    adj = holm_adjust(ps) if ps else []
    better = []  # (winner, loser, diff, adjusted p)
    for (a, b, d), p in zip(pairs, adj):
        if p < alpha and d != 0:
            better.append((a, b, d, p) if d > 0 else (b, a, -d, p))
    if better:
        evidence.append("significantly better (Holm-adjusted sign-flip p < α): "
                        + "; ".join(f"{w} over {lo} blocks (ΔUAR {d:+.3f}, p = {format_p(p)})"
                                    for w, lo, d, p in better))
    else:
        evidence.append(f"no block count is significantly better than another ({len(pairs)} pairs, Holm-adjusted "
                        f"sign-flip p >= {alpha:g})")
    if target not in by_count or 1 not in by_count or target == 1:
        evidence.append(f"the reference's count ({target}) or the 1-block variant has no finished cells")
        return _claim("blocks", NOT_MEASURED, evidence)
    if any(lo == target for _, lo, _, _ in better) or mean[target] <= mean[1]:
        return _claim("blocks", NOT_SUPPORTED, evidence)
    if any(w == target and lo == 1 for w, lo, _, _ in better):
        return _claim("blocks", SUPPORTED, evidence)
    return _claim("blocks", INCONCLUSIVE, evidence)


def paper_claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim of the paper with its verdict, the numbers that decided it and the rule (``CLAIM_RULES``)."""
    return [claim_ranking(results), claim_smoothing(results), claim_bias(results), claim_blocks(results)]

def render_claims(results: dict[str, Any]) -> list[str]:
    """The "Paper claims" section: verdict, deciding numbers and rule of each claim."""
    lines = ["", "## Paper claims", "",
             "Each verdict is computed from the numbers in this report by the rule printed under it "
             "(`moma.research.claims.CLAIM_RULES`): *supported*, *not supported*, *inconclusive* (the data point the "
             "claim's way but not clearly enough), or *not measured* (the data are absent).", ""]
    for c in results.get("claims") or paper_claims(results):
        lines += [f"### {c['text']}", "", f"**Verdict: {c['verdict']}.**", ""]
        lines += [f"- {e}" for e in c["evidence"]]
        lines += ["", f"<sub>Rule: {c['rule']}</sub>", ""]
    return lines
