"""The experiment report: report.md's text and the grid's figures, from the numbers of ``results.json``.

:func:`moma.research.experiment.run_experiment` computes the numbers; this module only renders them, so a report can
be re-rendered from a ``results.json`` without the corpus or the checkpoints. Every figure carries, in its
caption, the command and config that made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moma.evaluation.metrics import PAPER_NAMING_NOTE
from moma.evaluation.plots import add_caption, save_figure
from moma.evaluation.stats import format_p
from moma.research.claims import render_claims

# --------------------------------------------------------------------------- figures

def pyplot():
    from moma.evaluation.plots import pyplot as plots_pyplot

    return plots_pyplot()


def _finish_figure(fig, ax, out_path: Path, command: str, config: str) -> Path:
    """Legend, room for the caption, the caption (command and config that made the figure), saved."""
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    add_caption(fig, f"made by: {command}\nconfig: {config}")
    return save_figure(fig, out_path)


def plot_uar_by_variant(summary: dict[str, Any], out_path: Path, *, reference: str, command: str, config: str,
                        title: str) -> Path:
    """Pooled UAR with its bootstrap CI per variant, plus mean ± std over seeds of the fold-mean UAR."""
    plt = pyplot()
    names = list(summary["variants"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    for i, n in enumerate(names):
        v = summary["variants"][n]
        color = "tab:red" if n == reference else "tab:green" if v.get("kind") == "classical" else "tab:blue"
        if v.get("pooled"):
            ci = v["pooled"]["uar_ci"]
            ax.errorbar(i - 0.12, ci["estimate"], yerr=[[ci["estimate"] - ci["low"]], [ci["high"] - ci["estimate"]]],
                        fmt="o", color=color, capsize=4, label="pooled UAR, bootstrap CI" if i == 0 else None)
        if v["uar"]["seeds"]:
            ax.errorbar(i + 0.12, v["uar"]["mean"], yerr=v["uar"]["std"] or 0.0, fmt="s", color=color, alpha=0.5,
                        capsize=3, label="fold-mean UAR, mean ± std over seeds" if i == 0 else None)
    chance = 1.0 / max(1, len(summary.get("labels", [])) or 1)
    ax.axhline(chance, color="0.6", ls=":", lw=1, label="chance")
    ax.set_xticks(x, [summary["variants"][n]["label"] for n in names], rotation=30, ha="right")
    ax.set_ylabel("UAR")
    ax.set_title(f"{title}: UAR per variant (red: reference, green: classical anchor)", fontsize=9)
    return _finish_figure(fig, ax, out_path, command, config)


def plot_uar_vs_blocks(summary: dict[str, Any], num_blocks: dict[str, int], out_path: Path, *, title: str,
                       command: str, config: str) -> Path:
    """UAR against the number of MOMA blocks; other variants as horizontal reference lines.

    ``num_blocks`` maps each variant of the block-count series (:func:`moma.research.experiment.blocks_series`) to its
    ``model.num_blocks``.
    """
    plt = pyplot()
    series = list(num_blocks)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    xs, ys, es, lo, hi = [], [], [], [], []
    for n in series:
        v = summary["variants"][n]
        if not v["uar"]["seeds"]:
            continue
        xs.append(num_blocks[n])
        ys.append(v["uar"]["mean"])
        es.append(v["uar"]["std"])
        ci = (v.get("pooled") or {}).get("uar_ci")
        lo.append(ci["low"] if ci else np.nan)
        hi.append(ci["high"] if ci else np.nan)
    if xs:
        ax.errorbar(xs, ys, yerr=es, fmt="o-", color="tab:red", capsize=4, label="MOMA: mean ± std over seeds")
        ax.fill_between(xs, lo, hi, color="tab:red", alpha=0.12, label="pooled UAR bootstrap CI")
        ax.set_xticks(sorted(set(xs)))
    colors = iter(["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray", "tab:olive",
                   "tab:cyan", "tab:pink"])
    for n, v in summary["variants"].items():
        if n in series or not v["uar"]["seeds"]:
            continue
        ax.axhline(v["uar"]["mean"], ls="--", lw=1, color=next(colors, "0.5"), label=f"{v['label']}")
    ax.set_xlabel("number of MOMA blocks (model.num_blocks)")
    ax.set_ylabel("UAR (fold mean)")
    ax.set_title(f"{title}: UAR vs number of blocks", fontsize=9)
    return _finish_figure(fig, ax, out_path, command, config)


def plot_entropy_by_layer(analysis: dict[str, Any], labels: dict[str, str], out_path: Path, *, command: str,
                          config: str, title: str) -> Path:
    """Normalised attention entropy (H / log L) at layer 1, each MOMA block and the mixture, per variant."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    max_blocks = max((len(v["attention"]["blocks"]) for v in analysis["variants"].values() if "attention" in v),
                     default=0)
    ticks = ["layer 1"] + [f"block {i + 1}" for i in range(max_blocks)] + ["mixture"]
    for i, (name, v) in enumerate((n, v) for n, v in analysis["variants"].items() if "attention" in v):
        a = v["attention"]
        pts = [(0, a["layer1"])] + [(1 + j, b) for j, b in enumerate(a["blocks"])]
        if a["mixture"]["n"]:
            pts.append((max_blocks + 1, a["mixture"]))
        xs = [x + 0.06 * (i - 1) for x, p in pts if p["n"]]
        ys = [p["mean"] for _, p in pts if p["n"]]
        es = [p["std"] for _, p in pts if p["n"]]
        ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3, label=labels.get(name, name))
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_ylabel("normalised entropy H / log L (1 = uniform)")
    ax.set_title(f"{title}: attention entropy per layer (mean ± std over cells)", fontsize=9)
    return _finish_figure(fig, ax, out_path, command, config)


def plot_probe_by_stage(analysis: dict[str, Any], labels: dict[str, str], out_path: Path, *, command: str,
                        config: str, title: str) -> Path:
    """Speaker-probe accuracy after the encoder, after layer 1 and after the final pooling, per variant."""
    plt = pyplot()
    stages = [("encoder", "after encoder"), ("layer1", "after layer 1"), ("final", "after MOMA layer / final pooling")]
    names = [n for n, v in analysis["variants"].items() if "stages" in (v.get("probe") or {})]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 3), 4.4))
    width = 0.8 / max(1, len(stages))
    chance = []
    for j, (stage, text) in enumerate(stages):
        xs, ys, es = [], [], []
        for i, n in enumerate(names):
            st = analysis["variants"][n]["probe"]["stages"].get(stage)
            if st and st["n"]:
                xs.append(i + (j - 1) * width)
                ys.append(st["mean"])
                es.append(st["std"])
        if xs:
            ax.bar(xs, ys, width=width, yerr=es, capsize=3, label=text)
    for n in names:
        ch = analysis["variants"][n]["probe"]["stages"].get("chance")
        if ch and ch["n"]:
            chance.append(ch["mean"])
    if chance:
        ax.axhline(float(np.mean(chance)), color="0.5", ls=":", lw=1, label="chance (largest speaker)")
    ax.set_xticks(range(len(names)), [labels.get(n, n) for n in names], rotation=30, ha="right")
    ax.set_ylabel("speaker probe accuracy\n(lower = less speaker information)", fontsize=8)
    ax.set_title(f"{title}: linear speaker probe per stage (mean ± std over cells)", fontsize=9)
    return _finish_figure(fig, ax, out_path, command, config)


def plot_analysis(results: dict[str, Any], out_dir: Path, *, command: str, config: str) -> list[dict[str, str]]:
    """The analysis figures that have data: entropy per layer, probe per stage, robustness degradation."""
    an = results.get("analysis")
    if not an:
        return []
    from moma.research.robustness import plot_degradation

    title = results["experiment"]["title"]
    label = {n: v["label"] for n, v in results["summary"]["variants"].items()}
    av = an["variants"]
    figures = []
    if any("attention" in v for v in av.values()):
        plot_entropy_by_layer(an, label, out_dir / "analysis_entropy.png", command=command, config=config, title=title)
        figures.append({"file": "analysis_entropy.png", "title": "Normalised attention entropy per layer and variant"})
    if any("stages" in (v.get("probe") or {}) for v in av.values()):
        plot_probe_by_stage(an, label, out_dir / "analysis_probe.png", command=command, config=config, title=title)
        figures.append({"file": "analysis_probe.png", "title": "Speaker-probe accuracy per stage and variant"})
    rob = {label[n]: {c: {"uar": m["uar"]["mean"]} for c, m in v["robustness"]["conditions"].items()
                      if m["uar"]["n"]}
           for n, v in av.items() if "robustness" in v}
    if rob:
        plot_degradation(rob, out_dir / "analysis_robustness.png",
                         title=f"{title}: UAR per condition (mean over cells)",
                         caption=f"made by: {command}\nconfig: {config}")
        figures.append({"file": "analysis_robustness.png", "title": "Robustness: UAR per condition and variant"})
    return figures


# --------------------------------------------------------------------------- report.md and the terminal summary

def _ms(d: dict[str, Any]) -> str:
    if not d or not d.get("seeds"):
        return "–"
    if d.get("deterministic"):  # a classical anchor: one deterministic fit per fold
        return f"{d['mean']:.3f} (no seeds)"
    if d["seeds"] == 1:  # a std over one seed says nothing
        return f"{d['mean']:.3f} (1 seed)"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def _fmt_agg(d: dict[str, Any] | None) -> str:
    if not d or not d.get("n"):
        return "–"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def verdict(name: str, ref: str, summary: dict[str, Any], alpha: float) -> str:
    """One sentence: does the reference beat this variant, by a margin outside the CI / significantly?"""
    v = summary["variants"][name]
    r = summary["variants"][ref]
    t = v.get("vs_reference")
    if not t:
        return f"- **{ref} vs {v['label']}**: no matched finished cells yet; nothing to compare."
    d = t["mean_diff"]
    sig = not np.isnan(t["permutation_p"]) and t["permutation_p"] < alpha
    dci = t.get("pooled_uar_diff_ci")
    ci_excl = bool(dci and (dci["low"] > 0 or dci["high"] < 0))
    ref_ci = (r.get("pooled") or {}).get("uar_ci")
    v_uar = (v.get("pooled") or {}).get("uar")
    outside = (ref_ci is not None and v_uar is not None and not (ref_ci["low"] <= v_uar <= ref_ci["high"]))
    direction = "higher" if d > 0 else "lower" if d < 0 else "equal"
    stats = (f"mean UAR difference {d:+.3f} over {t['n']} {t.get('unit', 'fold×seed')} pairs ({ref} higher in "
             f"{t['wins']}, lower in {t['losses']}); "
             f"sign-flip p = {format_p(t['permutation_p'])}, Wilcoxon p = {format_p(t['wilcoxon_p'])}")
    if dci:
        stats += (f"; paired bootstrap {100 * (1 - alpha):.0f}% CI of the pooled UAR difference "
                  f"[{dci['low']:+.3f}, {dci['high']:+.3f}]")
    if ref_ci is not None and v_uar is not None:
        stats += (f"; the pooled UAR of {v['label']}, {v_uar:.3f}, is {'outside' if outside else 'inside'} "
                  f"the CI of {ref}, [{ref_ci['low']:.3f}, {ref_ci['high']:.3f}]")
    if d > 0 and sig and ci_excl:
        head = f"{ref} beats {v['label']}: significant at α = {alpha:g} and the difference's CI excludes 0"
    elif d > 0 and (sig or ci_excl):
        head = (f"{ref} is {direction} than {v['label']}, but the evidence is mixed "
                f"({'paired test significant' if sig else 'paired test not significant'}, "
                f"{'CI excludes 0' if ci_excl else 'CI includes 0'})")
    elif d > 0:
        head = f"{ref} is {direction} than {v['label']} but not significantly: the difference is within the noise"
    elif d < 0 and sig and ci_excl:
        head = f"{ref} is significantly worse than {v['label']}"
    elif d < 0:
        head = f"{ref} is {direction} than {v['label']}, not significantly so" + (
            " by the paired test" if not sig else " (CI includes 0)")
    else:
        head = f"{ref} and {v['label']} have the same mean fold×seed UAR"
    return f"- **{ref} vs {v['label']}**: {head} ({stats})."


def render_analysis(results: dict[str, Any]) -> list[str]:
    """The "Analysis" section: attention, probe, speaker spread and robustness tables per variant."""
    an = results["analysis"]
    spec = an["spec"]
    variants = results["summary"]["variants"]
    label = {n: v["label"] for n, v in variants.items()}
    lines = ["", "## Analysis", "",
             f"Computed on each fold's best checkpoint of seed(s) {', '.join(str(s) for s in spec['seeds'])} "
             f"({an['cells_analysed']} cell(s) analysed, {an['computed_now']} part(s) computed by this invocation; "
             "finished analyses are cached in `cells/<variant>/seed<k>/<fold>/analysis.json`). Every number is the "
             "mean ± std over analysed cells (fold × seed)."]
    if an.get("missing"):
        lines += ["", f"> Not analysed (no finished cell or not computed in a report-only run): "
                      f"{', '.join(an['missing'][:12])}{' ...' if len(an['missing']) > 12 else ''}."]
    av = an["variants"]
    if spec.get("attention"):
        max_b = max((len(v["attention"]["blocks"]) for v in av.values() if "attention" in v), default=0)
        lines += ["", "### Attention entropy (normalised, H / log L: 0 = one-hot, 1 = uniform)", "",
                  "Data: the fold's test utterances. Entropy over valid frames only, divided by the log of the "
                  "utterance's frame count so utterances of different lengths are comparable.", "",
                  "| variant | layer 1 | " + " | ".join(f"block {i + 1}" for i in range(max_b))
                  + " | mixture | block correlation | gammas |", "|---|---|" + "---|" * max_b + "---|---|---|"]
        for n, v in av.items():
            a = v.get("attention")
            if not a:
                # a mean-pooling model has no attention; any other variant without numbers was not analysed
                what = "(no attention)" if variants.get(n, {}).get("arch") == "mean" else "not analysed"
                lines.append(f"| {label[n]} | {what} |" + " |" * max_b + " | | |")
                continue
            blocks = [_fmt_agg(a["blocks"][i]) if i < len(a["blocks"]) else "" for i in range(max_b)]
            gam = ", ".join(f"{g['mean']:.2f}" for g in a["gammas"] if g["n"])
            lines.append(f"| {label[n]} | {_fmt_agg(a['layer1'])} | " + " | ".join(blocks)
                         + f" | {_fmt_agg(a['mixture'])} | {_fmt_agg(a['block_correlation'])} | {gam} |")
    if spec.get("probe"):
        mode = spec["probe"]["speakers"]
        data = {"heldout": "each fold's test and validation speakers (held out from training: no gradient came "
                           "from their audio; a leave-one-speaker-out fold has a single test speaker, and a probe "
                           "needs several)",
                "test": "each fold's test speakers only (folds with fewer than 2 are skipped)",
                "all": "every speaker of the corpus (training speakers included)"}[mode]
        lines += ["", "### Speaker probe (lower = less speaker information)", "",
                  f"Data: {data}. A logistic regression on standardised pooled representations predicts the speaker, "
                  f"{spec['probe']['folds']}-fold stratified cross-validation over utterances. Stages: after the "
                  "encoder (mean of the BLSTM output), after attention layer 1 (mean of its residual output; MOMA "
                  "only), and after the final pooling (MOMA: the mixture-attention output of the MOMA layer; "
                  "baselines: their pooled BLSTM output).", "",
                  "| variant | after encoder | after layer 1 | after MOMA layer / final pooling | chance | speakers |",
                  "|---|---|---|---|---|---|"]
        for n, v in av.items():
            p = v.get("probe") or {}
            if "stages" not in p:
                lines.append(f"| {label[n]} | {p.get('skipped', 'not analysed')} | | | | |")
                continue
            st = p["stages"]
            lines.append(f"| {label[n]} | {_fmt_agg(st.get('encoder'))} | {_fmt_agg(st.get('layer1'))} | "
                         f"{_fmt_agg(st.get('final'))} | {_fmt_agg(st.get('chance'))} | "
                         f"{p['n_speakers']['mean']:g} |")
    bias_rows = {**av, **an.get("anchors", {})}
    if any("speaker_bias" in v for v in bias_rows.values()):
        lines += ["", "### Per-speaker UAR spread and gender gap", "",
                  "Each test speaker's UAR, averaged over every finished seed; gap = female − male mean.", "",
                  "| variant | speakers | mean | std | min (speaker) | max (speaker) | female | male | gap |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n, v in bias_rows.items():
            b = v.get("speaker_bias")
            if not b:
                continue

            def f(x: float) -> str:
                return f"{x:.3f}" if x is not None and np.isfinite(x) else "–"

            lines.append(f"| {label[n]} | {b['n_speakers']} | {f(b['mean'])} | {f(b['std'])} | {f(b['min'])} "
                         f"({b['worst_speaker']}) | {f(b['max'])} ({b['best_speaker']}) | {f(b['female_mean'])} | "
                         f"{f(b['male_mean'])} | {f(b['gender_gap'])} |")
    if spec.get("robustness"):
        conds = spec["robustness"]["conditions"]
        names = [n for n, v in av.items() if "robustness" in v]
        lines += ["", "### Robustness (UAR per condition)", "",
                  f"Data: at most {spec['robustness']['max_utterances_per_fold']} test utterances per fold "
                  f"(label-balanced, seed {spec['robustness']['seed']}, the same for every variant and seed); "
                  "babble from up to "
                  f"{spec['robustness']['babble_pool']} utterances of the fold's training and validation speakers. "
                  "SNR over the whole utterance.", "",
                  "| condition | " + " | ".join(label[n] for n in names) + " |", "|---|" + "---|" * len(names)]
        for c in conds:
            lines.append(f"| {c} | " + " | ".join(_fmt_agg(av[n]["robustness"]["conditions"].get(c, {}).get("uar"))
                                                  for n in names) + " |")
        lines.append("| **mean drop from clean** | " + " | ".join(_fmt_agg(av[n]["robustness"]["drop"])
                                                               for n in names) + " |")
    return lines


def render_experiment_report(results: dict[str, Any]) -> str:
    exp = results["experiment"]
    summary = results["summary"]
    ref = exp["reference"]
    alpha = exp["alpha"]
    level = f"{100 * (1 - alpha):.0f}%"
    seeds = exp["seeds"]
    lines = [f"# {exp['title']}", "", "Made by:", "", "```", results["command"], "```", "",
             f"Experiment config: `{results['config_path']}` (resolved copy: `experiment.yaml`; each variant's "
             "full config: `configs/<variant>.yaml`).", "",
             f"- Corpus: {results['corpus']} ({results['n_utterances']} utterances, {results['n_speakers']} speakers), "
             f"labels: {', '.join(results['labels'])}",
             f"- Protocol: {exp['protocol']['name']}, {len(results['folds'])} folds, identical for every variant and "
             "seed (`folds.json`); validation speakers come from training speakers only",
             f"- Seeds: {', '.join(str(s) for s in seeds)}; reference for the paired tests: **{ref}**",
             f"- Cells: {results['cells_finished']} of {results['cells_planned']} finished; "
             f"wall time of this invocation {results['wall_time_s']:.0f} s", "",
             f"> {PAPER_NAMING_NOTE}", ""]
    if len(seeds) < 3:
        lines += [f"> **Only {len(seeds)} seed(s)**: the ± std over seeds is not a reliable spread (use >= 3).", ""]
    if results["missing_cells"]:
        shown = ", ".join(results["missing_cells"][:12]) + (" ..." if len(results["missing_cells"]) > 12 else "")
        lines += [f"> **Partial grid**: {len(results['missing_cells'])} cell(s) not finished ({shown}); numbers are "
                  "over the finished cells only. Rerun the same command to complete it.", ""]
    lines += ["## Results", "",
              f"| variant | params | accuracy | UAR | macro-F1 | UAR {level} CI (pooled) | ΔUAR vs {ref} "
              "| p (sign-flip / Wilcoxon) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        ci = (v.get("pooled") or {}).get("uar_ci")
        ci_text = f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "–"
        t = v.get("vs_reference")
        if name == ref:
            delta, ptxt = "(reference)", ""
        elif t:
            delta, ptxt = f"{0.0 - t['mean_diff']:+.3f}", f"{format_p(t['permutation_p'])} / {format_p(t['wilcoxon_p'])}"
        else:
            delta, ptxt = "–", ""
        label = f"**{v['label']}**" if name == ref else v["label"]
        size = f"{v['n_features']} functionals" if v.get("kind") == "classical" else _params(v["parameters"])
        lines.append(f"| {label} | {size} | {_ms(v['accuracy'])} | {_ms(v['uar'])} | "
                     f"{_ms(v['macro_f1'])} | {ci_text} | {delta} | {ptxt} |")
    lines += ["", f"Accuracy (the paper's \"UA\"), UAR (the paper's \"WA\") and macro-F1: mean ± std over seeds of "
              "the per-seed mean over folds. UAR CI: each utterance's posteriors averaged over seeds, UAR of those "
              f"pooled predictions, {exp['bootstrap']} bootstrap resamples of utterances (percentile). "
              f"ΔUAR: variant − {ref}, mean over matched fold×seed cells; p: two-sided paired tests on those "
              "per-cell UARs (sign-flip permutation, Wilcoxon signed-rank)."]
    anchors = [v for v in summary["variants"].values() if v.get("kind") == "classical"]
    if anchors:
        norm = anchors[0]["normalisation"]
        lines[-1] += (f" Classical anchors ({', '.join(v['label'] for v in anchors)}): openSMILE functionals, "
                      f"{'training-speaker' if norm == 'global' else 'per-speaker (transductive)'} standardisation, "
                      "a linear SVM trained on each fold's training and validation speakers with C chosen by inner "
                      "leave-one-speaker-out CV, tested on the same test speakers; deterministic, so one fit per "
                      f"fold (\"no seeds\"), and their paired tests pair each fold's SVM UAR with {ref}'s UAR on that "
                      "fold averaged over seeds.")
    lines += ["",
              f"## {ref} against each other variant", ""]
    for name in summary["variants"]:
        if name != ref:
            lines.append(verdict(name, ref, summary, alpha))
    for note in results.get("classical_notes") or []:
        lines += ["", f"> {note}"]
    lines += render_claims(results)
    if results.get("analysis"):
        lines += render_analysis(results)
    lines += ["", "## Variants", "", "| variant | overrides | model |", "|---|---|---|"]
    for name, v in summary["variants"].items():
        over = ", ".join(f"`{s}`" for s in (v["base"] + v["set"])) or (
            "`classical:` section" if v.get("kind") == "classical" else "(experiment defaults)")
        lines.append(f"| {v['label']} | {over} | {v['description']}{'; ' + v['note'] if v['note'] else ''} |")
    if exp["set"] or exp["base"]:
        lines += ["", "Applied to every variant first: " + ", ".join(f"`{s}`" for s in exp["base"] + exp["set"])]
    lines += ["", "## Per seed (UAR, mean over folds)", "",
              "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, v in summary["variants"].items():
        if v.get("kind") == "classical":
            continue
        by = {s["seed"]: s for s in v["per_seed"]}
        lines.append(f"| {v['label']} | " + " | ".join(f"{by[s]['uar']:.3f}" if s in by else "–" for s in seeds)
                     + " |")
    maps = results.get("attention_maps") or []
    if maps:
        lines += ["", "## Attention maps", "",
                  f"Like the paper's Figures 2-5: waveform, log-Mel spectrogram, attention layer 1, the MOMA mixture "
                  f"and each block with its learned gamma, over one test utterance each, from the checkpoint of "
                  f"the fold that tested it ({ref}, seed {maps[0]['seed']}). Utterances are drawn at random "
                  "(seeded), one per label in turn, without looking at predictions. Word/syllable and phone "
                  "boundaries are drawn where the corpus has them.", ""]
        for m in maps:
            lines += [f"![{m['utterance']}]({m['file']})", "",
                      f"*{m['utterance']} (speaker {m['speaker']}, fold {m['fold']}): true {m['label']}, predicted "
                      f"{m['predicted']}.* Made by `{results['command']}` from `{results['config_path']}`.", ""]
    lines += ["", "## Figures", ""]
    for fig in results["figures"]:
        lines += [f"![{fig['title']}]({fig['file']})", "",
                  f"*{fig['title']}.* Made by `{results['command']}` from `{results['config_path']}`.", ""]
    for note in exp.get("notes", []):
        lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


def main_summary(results: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    ref = results["experiment"]["reference"]
    out = [f"{results['experiment']['title']}: {results['cells_finished']}/{results['cells_planned']} cells "
           f"({results['cells_run_now']} run now)"]
    for name, v in results["summary"]["variants"].items():
        t = v.get("vs_reference")
        extra = f"  Δ {0.0 - t['mean_diff']:+.3f} vs {ref}, p {format_p(t['permutation_p'])}" if t else ""
        out.append(f"  {v['label']:<20} UAR {_ms(v['uar'])}  accuracy {_ms(v['accuracy'])}{extra}")
    for c in results.get("claims") or []:
        out.append(f"  claim {c['text'].split(' ', 1)[0]} {c['claim']:<10} {c['verdict']}")
    return "\n".join(out)


def is_experiment_folder(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds an experiment's ``results.json`` (a ``moma cv`` run holds ``report.json``)."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and "experiment" in data and "summary" in data


def rewrite_experiment_report(run_dir: str | Path) -> dict[str, Any]:
    """Re-render ``run_dir/report.md`` from ``run_dir/results.json`` alone (no corpus, no checkpoints); returns
    the results. The figures are not redrawn: they are files beside it already."""
    results = json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8"))
    (Path(run_dir) / "report.md").write_text(render_experiment_report(results), encoding="utf-8")
    return results
