"""The Markdown report of ``moma bench`` and the issue's targets checked against the figures.

Pure functions of the results dict that :func:`moma.bench.run_benchmarks`
also writes to ``bench.json``, so a report can be re-rendered from the JSON.
Other benchmarks add their own sections to the same README between
``<!-- begin NAME -->`` and ``<!-- end NAME -->`` (:func:`replace_section`,
e.g. ``benchmarks/folder_predict.py``); rewriting the README keeps them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Issue 5's targets.
SPEEDUP_TARGET = 2.5  # best backend vs torch eager fp32, batch 1, one thread, 3 s, paper configuration
GPU_EPOCH_TARGET_S = 10.0  # s, one IEMOCAP-sized epoch of the paper configuration on one GPU
UAR_TOLERANCE_POINTS = 0.5
BUCKETING_RATIO_TARGET = 0.90  # bucketed throughput / uniform-length throughput
PADDING_TARGET = 0.10
LINEAR_SPREAD = 1.3  # largest / smallest cost per hour across corpus sizes that still counts as "roughly constant"
_LINEAR_COSTS = ("extract_s", "extract_cpu_s", "epoch_s", "feature_mb")


def _f(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        v = float(value)
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:,.{digits}f}"
    return str(value)


def _mem(result: dict[str, Any]) -> str:
    mem = result.get("memory") or {}
    return _f(mem.get("peak_rss_mb"), 0) if mem else "–"


def _problem(result: dict[str, Any]) -> str:
    return result.get("error") or result.get("skipped") or ""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _best_backend(results: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The fastest backend of the head-to-head whose accuracy change (when measured) is within tolerance."""
    inf = results.get("sections", {}).get("inference", {})
    h2h = inf.get("head-to-head", {}).get("backends", {})
    acc = inf.get("accuracy", {}).get("backends", {})
    candidates = []
    for name, row in h2h.items():
        if name == "torch":
            continue
        delta = acc.get(name, {}).get("delta_uar_points")
        if delta is not None and abs(delta) > UAR_TOLERANCE_POINTS:
            continue
        candidates.append((row["speedup_median"], name, row))
    if not candidates:
        return None
    _, name, row = max(candidates)
    return name, row


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets: what each one asks, the measured figure, and whether it was reached (None: not measured)."""
    targets: list[dict[str, Any]] = []
    sections = results.get("sections", {})
    inf = sections.get("inference", {})
    if "head-to-head" in inf and "backends" in inf["head-to-head"]:
        prep = inf.get("prepare", {})
        paper = prep.get("hidden_size") == 512
        best = _best_backend(results)
        acc = inf.get("accuracy", {}).get("backends", {})
        if best is None:
            targets.append({"target": f"batch-1 speed-up >= {SPEEDUP_TARGET}x with UAR within "
                                      f"{UAR_TOLERANCE_POINTS} points", "figure": "no backend qualifies",
                            "reached": False})
        else:
            name, row = best
            delta = acc.get(name, {}).get("delta_uar_points")
            figure = f"{name}: {row['speedup_median']:.2f}x (median of interleaved calls)"
            figure += f", UAR change {delta:+.2f} points" if delta is not None else ", UAR change not measured"
            reached: bool | None = row["speedup_median"] >= SPEEDUP_TARGET and delta is not None
            if not paper:
                figure += " (not the paper configuration: target not assessed)"
                reached = None
            elif delta is None:
                reached = None
            targets.append({"target": f"batch 1, one thread, 3 s, paper configuration: >= {SPEEDUP_TARGET}x "
                                      f"torch eager fp32 with UAR within {UAR_TOLERANCE_POINTS} points",
                            "figure": figure, "reached": reached})
    buck = sections.get("training", {}).get("bucketing", {})
    if "ratio" in buck:
        pad = buck["bucketed"]["padding_fraction"]
        targets.append({"target": f"bucketed throughput >= {BUCKETING_RATIO_TARGET:.0%} of uniform-length, "
                                  f"padding <= {PADDING_TARGET:.0%} of frames",
                        "figure": f"{buck['ratio']:.1%} of uniform, padding {pad:.1%}",
                        "reached": buck["ratio"] >= BUCKETING_RATIO_TARGET and pad <= PADDING_TARGET})
    corpus = [r for k, r in sections.get("scaling", {}).items() if k.startswith("corpus-") and "per_hour" in r]
    if len(corpus) >= 2:
        spreads = {}
        for key in _LINEAR_COSTS:
            values = [r["per_hour"][key] for r in corpus if r["per_hour"].get(key, 0) > 0]
            if len(values) >= 2:
                spreads[key] = max(values) / min(values)
        worst = max(spreads.values()) if spreads else float("inf")
        targets.append({"target": f"cost grows linearly with corpus size (cost per hour within {LINEAR_SPREAD}x "
                                  "across sizes)",
                        "figure": ", ".join(f"{k} {v:.2f}x" for k, v in spreads.items()),
                        "reached": (worst <= LINEAR_SPREAD) if len(corpus) >= 3 else None})
    training = sections.get("training", {})
    epochs = {k: r for k, r in training.items() if k.startswith("iemocap-epoch-") and "epoch_s" in r}
    if "training" in sections:
        target = (f"one IEMOCAP-sized epoch (7 h, ~5,500 utterances), paper configuration, "
                  f"<= {GPU_EPOCH_TARGET_S:g} s on one GPU")
        if epochs:
            name, row = min(epochs.items(), key=lambda kv: kv[1]["epoch_s"])
            full = row["hours"] >= 6.5 and row["parameters"] > 5e6
            targets.append({"target": target,
                            "figure": f"{row['epoch_s']:.1f} s ({row['precision']}, {row['gpu']}, "
                                      f"{row['hours']:.2f} h, {row['utterances']} utterances)",
                            "reached": (row["epoch_s"] <= GPU_EPOCH_TARGET_S) if full else None})
        else:
            targets.append({"target": target, "figure": "no GPU on this machine", "reached": None})
    wall = results.get("wall_s")
    if wall is not None and not results.get("options", {}).get("quick"):
        sections_run = results.get("options", {}).get("sections", [])
        targets.append({"target": "full benchmark under 15 minutes on this CPU", "figure": f"{wall / 60:.1f} min",
                        "reached": wall < 900 if len(sections_run) == 4 else None})
    return targets


def linear_fits(scaling: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Least-squares line cost = fixed + per_hour * hours for each corpus cost, and how far points lie from it.

    A straight line with an intercept is what "grows linearly" means: fixed
    costs (starting worker processes, synthesising the source pool) show up
    as the intercept instead of inflating the per-hour cost of small corpora.
    """
    import numpy as np

    corpus = [r for k, r in scaling.items() if k.startswith("corpus-") and "per_hour" in r]
    if len(corpus) < 2:
        return {}
    hours = np.array([r["audio_h"] for r in corpus], dtype=np.float64)
    fits: dict[str, dict[str, float]] = {}
    for key in _LINEAR_COSTS:
        y = np.array([r[key] for r in corpus], dtype=np.float64)
        slope, intercept = np.polyfit(hours, y, 1)
        pred = intercept + slope * hours
        rel = np.abs(y - pred) / np.maximum(np.abs(y), 1e-12)
        fits[key] = {"per_hour": float(slope), "fixed": float(intercept), "max_rel_residual": float(rel.max()),
                     "points": len(corpus)}
    return fits


def _machine(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    lines = [f"- CPU: {m.get('cpu_model', '?')} ({m.get('usable_cores', '?')} usable of {m.get('logical_cores', '?')} "
             f"logical cores; flags {', '.join(m.get('cpu_flags', [])) or 'n/a'}), {m.get('memory_gb', '?')} GB RAM",
             f"- torch {m.get('torch')} (default {m.get('torch_default_threads')} threads), onnxruntime "
             f"{m.get('onnxruntime') or 'not installed'}, numpy {m.get('numpy')}, kaldi-native-fbank "
             f"{m.get('kaldi_native_fbank')}, librosa {m.get('librosa') or 'not installed'}, Python {m.get('python')}",
             f"- GPU: {m.get('cuda') or 'none (GPU rows skipped)'}",
             f"- load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in m.get('load_average_start', []))}"
             f"; at end {', '.join(f'{x:.2f}' for x in m.get('load_average_end', []))}",
             f"- each case in a fresh child process ({m.get('child_start_method')}); thread counts per case as given"]
    return lines


def _features(sec: dict[str, Any]) -> list[str]:
    lines = ["## 1. Features", "",
             "Real-time factor (compute time / audio time, lower is better; best of repeats) of the same "
             "speech-like signal, 23 Mel bins, 25 ms / 10 ms, log; one thread.", ""]
    rows = []
    for name in ("moma", "librosa", "python_speech_features"):
        r = sec.get(name)
        if r is None:
            continue
        if _problem(r):
            rows.append([name, _problem(r), "", "", "", ""])
            continue
        rows.append([f"{name} ({r.get('version', '')})", _f(r["rtf"], 5), _f(r["x_realtime"], 0),
                     _f(r["first_call_s"], 3), str(r["frames"]), _mem(r)])
    if rows:
        lines += _table(["extractor", "RTF", "x real time", "first call s", "frames", "peak RSS MB"], rows)
    rows = []
    for workers in (1, 2):
        r = sec.get(f"corpus-w{workers}")
        if r is None:
            continue
        if _problem(r):
            rows.append([str(workers), _problem(r), "", "", "", "", "", ""])
            continue
        rows.append([str(workers), _f(r["audio_h"], 3), _f(r["wall_s"], 2), _f(r["cpu_s"], 2),
                     _f(r["hours_per_core_s"], 5), _f(r["hours_per_cpu_s"], 5), _f(r["x_realtime"], 0), _mem(r)])
    if rows:
        lines += ["", "Corpus extraction (`moma.features.frontend.extract_features`, empty cache: read, hash, fbank, write). "
                  "Hours per core-second divide by wall time x workers; per CPU-second by the CPU time used "
                  "(parent and workers; robust to other load). Peak RSS is the parent's.", ""]
        lines += _table(["workers", "audio h", "wall s", "CPU s", "h audio / core-s", "h audio / CPU-s",
                         "x real time", "peak RSS MB"], rows)
    return lines + [""]


def _bucketing_body(b: dict[str, Any]) -> list[str]:
    lines = [f"Model: {b['config']} configuration, one thread; lengths: {b.get('lengths_source', '')}; "
             f"batches of at most {b['batch_size']} utterances and {b['max_frames_per_batch']} frames "
             f"(padding included) through FeatureDataset + BucketBatchSampler + collate; "
             f"best of {b['rounds']} interleaved epochs per kind.", ""]
    rows = [[kind, str(b[kind]["utterances"]), str(b[kind]["batches"]), _f(b[kind]["mean_length_frames"], 0),
             f"{b[kind]['padding_fraction']:.1%}", _f(b[kind]["frames_per_s"], 0)]
            for kind in ("bucketed", "uniform")]
    lines += _table(["batches", "utterances", "batches/epoch", "mean length (frames)", "padding",
                     "real frames/s"], rows)
    return lines + ["", f"Bucketed / uniform throughput: **{b['ratio']:.1%}** (peak RSS {_mem(b)} MB)."]


def _compile_body(c: dict[str, Any]) -> list[str]:
    return [f"Training steps of the {c['config']} configuration ({_f(c['parameters'] / 1e6, 2)} M "
            f"parameters), batch {c['batch']} x {c['frames_per_utterance']} frames, one thread, float32: "
            f"eager {_f(c['eager_frames_per_s'], 0)} frames/s, `torch.compile` "
            f"{_f(c['compiled_frames_per_s'], 0)} frames/s (**{c['speedup']:.2f}x**) after "
            f"{_f(c['compile_s'], 1)} s of compilation; logits differ by at most "
            f"{c['max_abs_logit_diff']:.1e}. "
            + ("Training does not compile: a gain this small does not pay for the compilation."
               if c["speedup"] < 1.2 else
               "Compiling pays on this machine; training does not yet compile by default.")]


def _workers_body(w: dict[str, Any]) -> list[str]:
    lines = [f"Training epochs of the {w['config']} configuration through the training data path with "
             f"augmentation (3 s crops, SpecAugment) on {w.get('lengths_source', '')}; "
             f"compute on one thread; best of {w['rounds']} interleaved epochs.", ""]
    rows = [[n, _f(fps, 0), f"{w['speedup'][n]:.2f}x"] for n, fps in w["frames_per_s"].items()]
    return lines + _table(["data.num_workers", "real frames/s", "vs 0 workers"], rows)


def _subsection(title: str, result: dict[str, Any] | None,
                body: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """A ``###`` section for one case's result: its body, or why it was not measured; nothing if absent."""
    if not result:
        return []
    return ["", f"### {title}", ""] + ([f"Not measured: {_problem(result)}"] if _problem(result) else body(result))


def _training(sec: dict[str, Any]) -> list[str]:
    lines = ["## 2. Training", "",
             "Real (unpadded) frames per second of forward + backward + gradient clipping + Adam, batches of "
             "3 s utterances (no padding); best and median step.", ""]
    rows = []
    for name, r in sec.items():
        if name in ("bucketing", "compile", "loader-workers") or name.startswith(("_", "iemocap-epoch-")):
            continue
        if _problem(r):
            rows.append([name, "", "", "", "", _problem(r), "", ""])
            continue
        rows.append([r["config"], _f(r["parameters"] / 1e6, 2) + " M", r["device"], str(r["threads"]),
                     r["precision"], _f(r["frames_per_s"], 0), _f(r["frames_per_s_median"], 0), _mem(r)])
    if rows:
        lines += _table(["config", "parameters", "device", "threads", "precision", "frames/s", "frames/s (median)",
                         "peak RSS MB"], rows)
    lines += _subsection("Bucketing", sec.get("bucketing"), _bucketing_body)
    epochs = {k: r for k, r in sec.items() if k.startswith("iemocap-epoch-")}
    if epochs:
        lines += ["", "### One IEMOCAP-sized epoch on the GPU", "",
                  "A synthetic corpus of IEMOCAP's size and shape (7 h, median utterance 4.5 s), whole utterances in "
                  "length-bucketed batches, warm-up batch excluded, validation excluded.", ""]
        rows = []
        for name, r in epochs.items():
            if _problem(r):
                rows.append([name, "", "", "", "", "", _problem(r)])
                continue
            rows.append([r["gpu"] or r["device"], r["precision"], _f(r["hours"], 2), str(r["utterances"]),
                         f"{r['max_frames']} / {r['batch_size']}", _f(r["frames_per_s"], 0), _f(r["epoch_s"], 1)])
        lines += _table(["device", "precision", "hours", "utterances", "batch frames / utterances", "frames/s",
                         "epoch s"], rows)
    lines += _subsection("torch.compile", sec.get("compile"), _compile_body)
    lines += _subsection("DataLoader workers", sec.get("loader-workers"), _workers_body)
    return lines + [""]


def _inference(sec: dict[str, Any], features_rtf: float | None = None) -> list[str]:
    lines = ["## 3. Inference", ""]
    prep = sec.get("prepare", {})
    if _problem(prep):
        return lines + [f"Model preparation failed: {_problem(prep)}", ""]
    if prep:
        lines += [f"Model: `{Path(prep['checkpoint']).name}` ({prep['parameters'] / 1e6:.2f} M parameters, hidden "
                  f"{prep['hidden_size']}); ONNX float32 {prep['onnx_mb']:.1f} MB, int8 {prep['onnx-int8_mb']:.1f} MB. "
                  "RTF = time of `Predictor.predict_batch` / audio time (features excluded; \"+ features\" adds "
                  "moma's filterbank RTF from section 1), one thread, 3 s utterances, best of repeats. "
                  "Speed-up: median of interleaved batch-1 calls against torch fp32 in one process.", ""]
    h2h = sec.get("head-to-head", {}).get("backends", {})
    acc = sec.get("accuracy", {})
    accb = acc.get("backends", {})
    rows = []
    for backend in ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8"):
        b1, b32 = sec.get(f"{backend}-b1"), sec.get(f"{backend}-b32")
        if b1 is None and backend not in h2h:
            continue
        h = h2h.get(backend, {})
        a = accb.get(backend, {})
        rows.append([backend,
                     _problem(b1) or _f(b1["rtf"], 4) if b1 else "–",
                     _f(b1["rtf"] + features_rtf, 4) if b1 and "rtf" in b1 and features_rtf else "–",
                     (_problem(b32) or _f(b32["rtf"], 4)) if b32 else "–",
                     _f(h.get("speedup_median"), 2) + "x" if h else "–",
                     _f(h.get("synthetic_max_abs_diff"), 5) if h else "–",
                     _f(a.get("uar"), 4) if a else "–", _f(a.get("accuracy"), 4) if a else "–",
                     (f"{a['delta_uar_points']:+.2f}" if "delta_uar_points" in a else "–"),
                     _f(a.get("max_abs_posterior_diff"), 5) if a else "–",
                     f"{a['label_agreement']:.1%}" if "label_agreement" in a else "–",
                     _mem(b1) if b1 else "–", _mem(b32) if b32 else "–"])
    lines += _table(["backend", "RTF batch 1", "RTF b1 + features", "RTF batch 32", "speed-up b1",
                     "max abs Δp (random inputs)", "UAR", "accuracy", "Δ UAR points", "max abs Δp (fold)",
                     "same label", "peak MB b1", "peak MB b32"],
                    rows)
    left_out = sec.get("head-to-head", {}).get("not_supported") or {}
    if left_out:
        lines += ["", "Not measured on this machine: " + "; ".join(f"{b} ({why})" for b, why in left_out.items())]
    if acc.get("skipped") or acc.get("error"):
        lines += ["", f"Accuracy: {_problem(acc)}"]
    elif acc:
        lines += ["", f"Accuracy fold: speakers {', '.join(acc['speakers'])}, {acc['utterances']} utterances "
                  f"({acc['audio_s']:.0f} s), batch 1, each backend against torch fp32."]
    return lines + [""]


def _scaling(sec: dict[str, Any]) -> list[str]:
    lines = ["## 4. Scaling", "", "### Utterance length (batch 1, one thread)", ""]
    lengths = sorted({r["audio_s"] for k, r in sec.items() if not k.startswith("corpus-") and "audio_s" in r})
    backends = [b for b in ("torch", "onnx-int8") if any(k.startswith(b + "-") for k in sec)]
    rows = []
    for backend in backends:
        row = [backend]
        for s in lengths:
            r = sec.get(f"{backend}-{s:g}s", {})
            row.append(f"{r['min_s'] * 1000:.1f} ms (RTF {r['rtf']:.4f}, {_mem(r)} MB)" if "rtf" in r
                       else _problem(r) or "–")
        rows.append(row)
    if rows:
        lines += _table(["backend"] + [f"{s:g} s" for s in lengths], rows)
        lines += ["", "A constant RTF across lengths means time grows linearly with length."]
    corpus = [(k, r) for k, r in sec.items() if k.startswith("corpus-")]
    if corpus:
        lines += ["", "### Corpus size", "",
                  "Synthetic corpora (`make_synthetic_hours`); feature extraction with 2 workers into an empty "
                  "cache, loading from the cache, normaliser fit, one epoch of the configuration's training "
                  "(3 s random crops, SpecAugment, bucketed batches). Per-hour figures that stay constant "
                  "across sizes show linear growth.", ""]
        rows = []
        for name, r in corpus:
            if _problem(r):
                rows.append([name, _problem(r)] + [""] * 9)
                continue
            ph = r["per_hour"]
            epoch = f"{r['epoch_s']:.1f}" + (f" (extrapolated from {r['timed_batches']}/{r['batches']} batches)"
                                             if r["epoch_extrapolated"] else "")
            rows.append([f"{r['audio_h']:.3f}", str(r["utterances"]), _f(r["generate_s"], 1), _f(r["extract_s"], 1),
                         _f(r["load_s"], 2), epoch, _f(ph["extract_s"], 1), _f(ph["extract_cpu_s"], 1),
                         _f(ph["epoch_s"], 1), _f(ph["feature_mb"], 0), _mem(r)])
        lines += _table(["hours", "utterances", "generate s", "extract s", "load s", "epoch s",
                         "extract s/h", "extract CPU s/h", "epoch s/h", "features MB/h", "peak RSS MB"], rows)
        fits = linear_fits(sec)
        if fits:
            lines += ["", "Straight-line fits over the sizes (cost = fixed + per hour x hours); the verdict in "
                      "the targets uses the spread of the per-hour columns above:", ""]
            lines += _table(["cost", "per hour", "fixed", "worst point off the line"],
                            [[k, _f(f["per_hour"], 2), _f(f["fixed"], 2), f"{f['max_rel_residual']:.1%}"]
                             for k, f in fits.items()])
    return lines + [""]


def render_markdown(results: dict[str, Any]) -> str:
    """The README of a bench folder: machine, one table per section, targets, notes."""
    opts = results.get("options", {})
    lines = ["# moma bench" + (" (quick)" if opts.get("quick") else ""), "",
             f"Created {results.get('created', '')} in {results.get('wall_s', 0):.0f} s"
             + (f" by `{opts['command']}`" if opts.get("command") else "") + ".", "", "## Machine", ""]
    lines += _machine(results) + [""]
    sections = results.get("sections", {})
    if "features" in sections:
        lines += _features(sections["features"])
    if "training" in sections:
        lines += _training(sections["training"])
    if "inference" in sections:
        fbank = sections.get("features", {}).get("moma", {}).get("rtf")
        lines += _inference(sections["inference"], fbank)
    if "scaling" in sections:
        lines += _scaling(sections["scaling"])
    targets = results.get("targets", [])
    if targets:
        lines += ["## Targets (issue 5)", ""]
        lines += _table(["target", "measured", "reached"],
                        [[t["target"], t["figure"], {True: "yes", False: "**no**", None: "not assessed"}[t["reached"]]]
                         for t in targets])
        lines.append("")
    peak_notes = [f"{s}/{k}: {r['error']}" for s, sec in sections.items() for k, r in sec.items()
                  if isinstance(r, dict) and r.get("error")]
    notes = list(results.get("notes", [])) + [f"Failed case {n}" for n in peak_notes]
    notes.append("Peak RSS is each case's own process (VmHWM after a reset at its start), imported libraries "
                 "included; worker processes of multi-worker extraction are not included.")
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``README.md`` into ``out_dir``, keeping the sections other benchmarks wrote there; returns its path."""
    path = Path(out_dir) / "README.md"
    kept = [m.group(0) for m in _SECTION.finditer(path.read_text(encoding="utf-8"))] if path.is_file() else []
    path.write_text(render_markdown(results) + "".join(f"\n{block}\n" for block in kept), encoding="utf-8")
    return path


_SECTION = re.compile(r"<!-- begin (\S+) -->\n.*?<!-- end \1 -->", re.DOTALL)


def replace_section(readme: str | Path, name: str, markdown: str) -> Path:
    """Put ``markdown`` into ``readme`` as the section ``name`` (between its begin and end markers): in place
    of the section's earlier text, else at the end (the file is made if missing). Returns the path."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"<!-- begin {name} -->\n{markdown.strip()}\n<!-- end {name} -->"
    old = next((m for m in _SECTION.finditer(text) if m.group(1) == name), None)
    if old is not None:
        text = text[:old.start()] + block + text[old.end():]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def rerender(bench_json: str | Path) -> Path:
    """Re-write README.md next to a bench.json (after a change to the report's layout)."""
    path = Path(bench_json)
    return write_report(json.loads(path.read_text(encoding="utf-8")), path.parent)
