"""Robustness of trained models to noise, channel and room conditions: a test set re-scored under each
condition of :mod:`moma.audio.perturb`, several checkpoints side by side (``moma robustness``), the
degradation figure and the report."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from moma.audio.io import file_sha1, load_audio
from moma.audio.perturb import Condition, PerturbContext, condition_rng, resolve_conditions
from moma.checkpoint import short_checkpoint_names
from moma.files import write_json_atomic

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- evaluation


def _load_utterance(u: Any, sr: int, min_duration: float) -> np.ndarray:
    return load_audio(u.path, sr, start=float(getattr(u, "start", 0.0) or 0.0),
                      end=float(getattr(u, "end", 0.0) or 0.0), name=u.id, min_duration=min_duration)


def evaluate_robustness(checkpoint: Any, utterances: Sequence[Any],
                        conditions: Optional[Sequence[Union[str, Condition]]] = None, *, seed: int = 0,
                        babble_pool: Optional[Sequence[Any]] = None, num_talkers: int = 4,
                        device: str = "cpu", cache_dir: Optional[Union[str, Path]] = None
                        ) -> dict[str, dict[str, Any]]:
    """Score a checkpoint on ``utterances`` (moma Utterance records with path, speaker, label) under each
    condition (names or :class:`Condition`; default :data:`DEFAULT_CONDITIONS`).

    Per condition and utterance: load the audio at the checkpoint's sample rate, perturb it, compute features
    with the checkpoint's feature config, normalise with its normaliser and predict (posteriors as in
    evaluation: segment-trained models average their windows). Returns ``{condition: metrics}`` where metrics
    are :func:`moma.evaluation.metrics.score_posteriors`'s (accuracy, uar, macro_f1, per_class_recall, confusion,
    per_speaker) without the per-utterance rows, plus ``"perturbation"``: counts of mixes scaled down to
    avoid clipping (``mix_rescaled``) and of utterances clipped by gain (``clipped``).

    ``babble_pool``: the utterances babble is built from (Utterance records, or ``(speaker, signal)`` pairs
    at the checkpoint's rate); default the test utterances themselves. For each target utterance babble only
    uses pool signals of *other* speakers. A speaker-normalised checkpoint gets statistics for speakers it
    lacks from that speaker's perturbed features in each condition (transductive, like ``moma evaluate``).
    Deterministic given ``seed``.

    ``cache_dir``: when ``checkpoint`` is a path, each condition's metrics are stored in
    ``cache_dir/<key>.json``, keyed by the checkpoint file's content, the condition, the utterances, the
    babble pool, ``seed`` and ``num_talkers``, so an interrupted or extended run (another condition, another
    model) recomputes only what is new. A :class:`LoadedCheckpoint` is never cached: its in-memory state
    (e.g. a replaced normaliser) need not match any file.
    """
    from moma.checkpoint import LoadedCheckpoint, load_checkpoint
    from moma.evaluation.metrics import predict_posteriors, score_posteriors
    from moma.features.frontend import compute_features
    from moma.features.functionals import compute_run_functionals
    from moma.features.normalise import normalise_for_checkpoint, standardise_functionals_for_checkpoint

    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, device=device)
    utterances = list(utterances)
    if not utterances:
        raise ValueError("no utterances to evaluate")
    unknown = sorted({u.label for u in utterances} - set(loaded.labels))
    if unknown:
        raise ValueError(f"labels {', '.join(unknown)} are not among the model's labels ({', '.join(loaded.labels)})")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("utterance ids must be unique")
    conds = resolve_conditions(conditions)
    keys: dict[str, Path] = {}
    if cache_dir is not None and not isinstance(checkpoint, LoadedCheckpoint):
        keys = _cache_keys(Path(cache_dir), loaded.path, utterances, babble_pool, conds, seed, num_talkers)
    cached = {c.name: json.loads(keys[c.name].read_text(encoding="utf-8"))
              for c in conds if c.name in keys and keys[c.name].is_file()}
    if len(cached) == len(conds):
        log.info("robustness: all %d conditions of %s from the cache", len(conds), loaded.path)
        return {c.name: cached[c.name] for c in conds}
    fcfg = loaded.config.features
    sr = int(fcfg.sample_rate)
    min_dur = fcfg.frame_length_ms / 1000.0
    signals = {u.id: _load_utterance(u, sr, min_dur) for u in utterances}
    utts = {u.id: u for u in utterances}
    if babble_pool is None:
        pool_signals = [signals[u.id] for u in utterances]
        pool_speakers = [u.speaker for u in utterances]
    else:
        pool_signals, pool_speakers = [], []
        for item in babble_pool:
            if isinstance(item, tuple):
                pool_speakers.append(str(item[0]))
                pool_signals.append(np.asarray(item[1], dtype=np.float32))
            else:
                pool_speakers.append(item.speaker)
                same = item.id in utts and utts[item.id].path == item.path
                pool_signals.append(signals[item.id] if same else _load_utterance(item, sr, min_dur))
    results: dict[str, dict[str, Any]] = {}
    for cond in conds:
        if cond.name in cached:
            results[cond.name] = cached[cond.name]
            continue
        ctx = PerturbContext(pool_signals, pool_speakers, num_talkers=num_talkers)
        feats: dict[str, np.ndarray] = {}
        funcs: dict[str, np.ndarray] | None = None if loaded.functionals_normaliser is None else {}
        for i, u in enumerate(utterances):
            ctx.speaker = u.speaker
            perturbed = cond(signals[u.id], sr, condition_rng(seed, cond.name, i), ctx)
            feats[u.id] = compute_features(perturbed, fcfg)
            if funcs is not None:  # a fusion model: its functionals see the same perturbed audio as its frames
                funcs[u.id] = compute_run_functionals(perturbed, fcfg, sr)
        # both standardised as `moma evaluate` does (a speaker-normalised model: each test speaker's own audio)
        normed = normalise_for_checkpoint(loaded.normaliser, feats, utterances)
        if funcs is not None:
            funcs = standardise_functionals_for_checkpoint(loaded.functionals_normaliser, funcs, utterances)
        # the checkpoint's temperature, as evaluate and predict apply it (it moves a segment model's window mean)
        post = predict_posteriors(loaded.model, normed, ids, loaded.config, device, functionals=funcs,
                                  temperature=float((loaded.info.get("calibration") or {}).get("temperature", 1.0)))
        metrics = score_posteriors(post, utts, loaded.labels)
        metrics.pop("predictions", None)
        metrics["perturbation"] = {"mix_rescaled": ctx.counts.get("mix_rescaled", 0),
                                   "clipped": ctx.counts.get("clipped", 0)}
        results[cond.name] = metrics
        if cond.name in keys:
            write_json_atomic(keys[cond.name], metrics)
        log.info("robustness %s: accuracy %.3f UAR %.3f", cond.name, metrics["accuracy"], metrics["uar"])
    return results


def _cache_keys(cache_dir: Path, checkpoint_path: str, utterances: Sequence[Any], babble_pool: Optional[Sequence[Any]],
                conds: Sequence[Condition], seed: int, num_talkers: int) -> dict[str, Path]:
    """One cache file per condition; the key covers everything the condition's metrics depend on."""
    pool: Any
    if babble_pool is None:
        pool = "test utterances"
    else:
        pool = [[str(item[0]), hashlib.sha1(np.ascontiguousarray(item[1], dtype=np.float32).tobytes()).hexdigest()]
                if isinstance(item, tuple) else [item.speaker, item.id, str(item.path), item.start, item.end]
                for item in babble_pool]
    base = {"checkpoint": file_sha1(checkpoint_path), "seed": int(seed), "num_talkers": int(num_talkers),
            "utterances": [[u.id, str(u.path), u.speaker, u.label, u.start, u.end] for u in utterances],
            "pool": pool}
    out = {}
    for c in conds:
        digest = hashlib.sha1(json.dumps({**base, "condition": [c.name, c.family, c.level]},
                                         sort_keys=True).encode("utf-8")).hexdigest()
        out[c.name] = cache_dir / f"{c.name}-{digest[:16]}.json"
    return out


def select_utterances(utterances: Sequence[Any], max_n: Optional[int], seed: int = 0, *,
                      key: str = "label") -> list[Any]:
    """At most ``max_n`` utterances, balanced over ``key`` (``"label"`` or ``"speaker"``).

    Each group is shuffled with ``numpy.random.default_rng([seed, crc32(group)])`` and the groups are taken
    round-robin, so a small subset still covers every class (every speaker) and the choice depends only on
    ``seed`` and the utterances, not on their order. ``None`` or a count >= the total keeps all (sorted by id).
    """
    items = sorted(utterances, key=lambda u: u.id)
    if max_n is None or max_n >= len(items):
        return items
    if max_n < 1:
        raise ValueError(f"the number of utterances must be >= 1, got {max_n}")
    groups: dict[str, list[Any]] = {}
    for u in items:
        groups.setdefault(str(getattr(u, key)), []).append(u)
    queues = []
    for name in sorted(groups):
        order = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))]).permutation(len(groups[name]))
        queues.append([groups[name][i] for i in order])
    chosen: list[Any] = []
    depth = 0
    while len(chosen) < max_n:
        for q in queues:
            if depth < len(q) and len(chosen) < max_n:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen, key=lambda u: u.id)


# --------------------------------------------------------------------------- figure


def plot_degradation(results_by_model: Mapping[str, Mapping[str, Mapping[str, Any]]], out_png: Union[str, Path],
                     *, metric: str = "uar", title: str = "", caption: str = "") -> Path:
    """Left: ``metric`` (default UAR) against SNR, one line per model and noise type (white solid, babble
    dashed), with the clean score drawn at the right as "clean". Right: grouped bars per model for the
    conditions that are not noise at an SNR (clean, telephone, gain, reverb...).

    ``caption`` (e.g. the command that made the figure) is printed small under the axes, so a figure
    separated from its report still says where it came from."""
    from moma.evaluation.plots import add_caption, pyplot, save_figure

    plt = pyplot()
    noise_re = re.compile(r"^(white|babble)-(-?\d+(?:\.\d+)?)dB$")
    models = list(results_by_model)
    snrs = sorted({float(m.group(2)) for res in results_by_model.values() for c in res
                   if (m := noise_re.match(c))})
    others: list[str] = []
    for res in results_by_model.values():
        for c in res:
            if not noise_re.match(c) and c not in others:
                others.append(c)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    clean_x = (max(snrs) + 10.0) if snrs else 0.0
    for mi, model in enumerate(models):
        res = results_by_model[model]
        colour = colours[mi % len(colours)]
        for noise, style in (("white", "-"), ("babble", "--")):
            pts = sorted((float(m.group(2)), float(v[metric])) for c, v in res.items()
                         if (m := noise_re.match(c)) and m.group(1) == noise)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if "clean" in res:
                xs.append(clean_x)
                ys.append(float(res["clean"][metric]))
            ax1.plot(xs, ys, style, marker="o", color=colour, label=f"{model} {noise}")
    if snrs:
        ticks = snrs + [clean_x]
        ax1.set_xticks(ticks)
        ax1.set_xticklabels([f"{s:g}" for s in snrs] + ["clean"])
    ax1.set_xlabel("SNR (dB)")
    ax1.set_ylabel(metric.upper() if metric == "uar" else metric)
    ax1.set_title("Additive noise")
    ax1.grid(alpha=0.3)
    if ax1.lines:
        ax1.legend(fontsize=8)
    width = 0.8 / max(1, len(models))
    for mi, model in enumerate(models):
        res = results_by_model[model]
        xs = [i + (mi - (len(models) - 1) / 2) * width for i, c in enumerate(others) if c in res]
        ys = [float(res[c][metric]) for c in others if c in res]
        ax2.bar(xs, ys, width=width, color=colours[mi % len(colours)], label=model)
    ax2.set_xticks(range(len(others)))
    ax2.set_xticklabels(others, rotation=30, ha="right")
    ax2.set_ylabel(metric.upper() if metric == "uar" else metric)
    ax2.set_title("Channel, level and room")
    ax2.set_ylim(0, 1)
    if models and others:
        ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if caption:
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        add_caption(fig, caption, width=160)
    else:
        fig.tight_layout()
    return save_figure(fig, out_png)


# --------------------------------------------------------------------------- several checkpoints: moma robustness


def run_robustness(checkpoints: Sequence[Union[str, Path]], utterances: Sequence[Any], out_dir: Union[str, Path], *,
                   conditions: Optional[Sequence[str]] = None, max_utterances: Optional[int] = None, seed: int = 0,
                   cache_dir: Optional[Union[str, Path]] = None, babble_pool: Optional[Sequence[Any]] = None,
                   babble_pool_size: int = 32, num_talkers: int = 4, command: str = "",
                   device: str = "cpu") -> dict[str, Any]:
    """Score each checkpoint on ``utterances`` under every condition; write results.json, report.md and
    degradation.png into ``out_dir``. Returns the content of results.json.

    ``max_utterances`` keeps a label-balanced seeded subset (:func:`select_utterances`); every model sees the
    same utterances and the same perturbations. Babble is built from ``babble_pool`` (default: the utterances
    themselves), at most ``babble_pool_size`` of them balanced over speakers; for each target utterance only
    other speakers' signals are used. ``cache_dir`` (default ``out_dir/cache``) keeps each (checkpoint,
    condition) result so a rerun recomputes only what is new.
    """
    from moma.checkpoint import existing_checkpoint_paths, load_checkpoint

    paths = existing_checkpoint_paths(checkpoints)
    utterances = list(utterances)
    if not utterances:
        raise ValueError("no utterances to evaluate (empty manifest or speaker selection)")
    conds = resolve_conditions(conditions)
    chosen = select_utterances(utterances, max_utterances, seed)
    pool_source = list(babble_pool) if babble_pool is not None else utterances
    pool = select_utterances(pool_source, babble_pool_size, seed, key="speaker")
    if len({u.speaker for u in pool}) < 2 and any(c.family == "babble" for c in conds):
        raise ValueError(f"babble needs speech of at least 2 speakers, the pool has {len({u.speaker for u in pool})}; "
                         "select more speakers or leave out the babble conditions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    names = short_checkpoint_names(paths)
    models: dict[str, Any] = {}
    for name, path in zip(names, paths):
        loaded = load_checkpoint(path, device=device)
        log.info("robustness: %s (%s)", name, path)
        res = evaluate_robustness(path, chosen, conds, seed=seed, babble_pool=pool, num_talkers=num_talkers,
                                  device=device, cache_dir=cache)
        models[name] = {"checkpoint": str(path), "arch": loaded.config.model.arch,
                        "labels": loaded.labels, "test_speakers_of_checkpoint": loaded.info.get("test_speakers", []),
                        "conditions": res}
    results: dict[str, Any] = {
        "command": command,
        "conditions": [c.name for c in conds],
        "n_utterances": len(chosen),
        "n_available": len(utterances),
        "speakers": sorted({u.speaker for u in chosen}),
        "utterance_ids": [u.id for u in chosen],
        "seed": seed,
        "babble_pool": {"n": len(pool), "speakers": sorted({u.speaker for u in pool}), "num_talkers": num_talkers},
        "models": models,
        "figure": "degradation.png",
    }
    plot_degradation({n: m["conditions"] for n, m in models.items()}, out_dir / "degradation.png",
                     title="UAR under noise, channel and room conditions", caption=f"made by: {command}")
    write_json_atomic(out_dir / "results.json", results)
    (out_dir / "report.md").write_text(render_robustness_report(results), encoding="utf-8")
    return results


def render_robustness_report(results: Mapping[str, Any]) -> str:
    """Markdown: UAR and accuracy per condition per model, the drop from clean, and the conventions."""
    models = results["models"]
    names = list(models)
    lines = ["# Robustness to noise, channel and room conditions", "", "Made by:", "", "```",
             results.get("command") or "(library call)", "```", "",
             f"- Utterances: {results['n_utterances']} (of {results['n_available']} selected; label-balanced "
             f"subset, seed {results['seed']}), speakers: {', '.join(results['speakers'])}",
             f"- Babble: {results['babble_pool']['num_talkers']} talkers drawn from {results['babble_pool']['n']} "
             f"utterances of speakers {', '.join(results['babble_pool']['speakers'])}; never the target's own "
             "speaker",
             "- SNR = 10 log10(P_speech / P_noise), powers over the whole utterance (pauses included); a mix that "
             "would clip is scaled down as a whole (SNR unchanged). Gain clips to [-1, 1]. Reverb: synthetic "
             "exponential-decay impulse response, level-matched. Telephone: 8 kHz, 300-3400 Hz band.",
             "- UAR = mean per-class recall (the paper's \"WA\"); accuracy = correct / total (the paper's \"UA\").",
             "", "## Models", "", "| model | architecture | checkpoint | the checkpoint's own test speakers |",
             "|---|---|---|---|"]
    for n in names:
        m = models[n]
        lines.append(f"| {n} | {m['arch']} | `{m['checkpoint']}` | "
                     f"{', '.join(m['test_speakers_of_checkpoint']) or 'not recorded'} |")
    lines += ["", "## UAR / accuracy per condition", "",
              "| condition | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in results["conditions"]:
        cells = []
        for n in names:
            r = models[n]["conditions"].get(c)
            cells.append(f"{r['uar']:.3f} / {r['accuracy']:.3f}" if r else "–")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if "clean" in results["conditions"]:
        lines += ["", "## UAR drop from clean (clean − condition; positive = worse)", "",
                  "| condition | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        drops: dict[str, list[float]] = {n: [] for n in names}
        for c in results["conditions"]:
            if c == "clean":
                continue
            cells = []
            for n in names:
                res = models[n]["conditions"]
                d = res["clean"]["uar"] - res[c]["uar"]
                drops[n].append(d)
                cells.append(f"{d:+.3f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{np.mean(drops[n]):+.3f}**" if drops[n] else "–"
                                                 for n in names) + " |")
    counts = [(n, c, models[n]["conditions"][c].get("perturbation", {})) for n in names[:1]
              for c in results["conditions"]]
    notes = [f"{c}: {p.get('mix_rescaled', 0)} mixes scaled down, {p.get('clipped', 0)} utterances clipped"
             for _, c, p in counts if p.get("mix_rescaled") or p.get("clipped")]
    if notes:
        lines += ["", "Perturbation events (identical for every model): " + "; ".join(notes) + "."]
    lines += ["", f"![UAR per condition]({results['figure']})", "",
              f"*UAR per condition and model.* Made by `{results.get('command') or '(library call)'}`.", ""]
    return "\n".join(lines)
