"""Command-line front ends for using a trained model: ``predict``, ``timeline``, ``export``, ``serve``.

Thin: parse, call :mod:`moma.inference.predictor` / :mod:`moma.inference.timeline` / :mod:`moma.inference.export` /
:mod:`moma.serving.app`, print. ``moma.cli.main`` registers these with::

    from moma.cli.inference import add_inference_commands
    add_inference_commands(sub)

Library errors (AudioError, FileNotFoundError, ValueError) propagate to
``moma.cli.main.main``, which prints them as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from moma.capabilities import INFERENCE_THREADS
from moma.cli.common import adapt_mode, add_adapt_arg

TIMELINE_FORMATS = ("csv", "json", "srt", "vtt")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")
_GLOB_CHARS = set("*?[")


def add_inference_commands(subparsers: Any) -> None:
    """Register ``predict``, ``timeline``, ``export`` and ``serve`` on an argparse subparsers object."""
    p = subparsers.add_parser("predict", help="predict the emotion of audio files (files, folders, globs)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders (searched recursively) or globs")
    _add_model_args(p)
    p.add_argument("--out", default=None, help="results file: .csv or .jsonl (default: CSV on stdout)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write an attention plot per file into DIR")
    p.add_argument("--batch-size", type=int, default=16, help="files per model call (length-bucketed)")
    add_adapt_arg(p, ["utterance", "batch"])  # batch: many files from one source, e.g. one microphone or corpus
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes, one thread and one loaded model each (default: the usable CPU cores; "
                        "--adapt batch and a GPU use one)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (there is none anyway unless stdout and stderr are a terminal and the "
                        "results go to --out)")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("timeline", help="emotion over time for a long recording (VAD + sliding windows)")
    p.add_argument("audio", metavar="LONG_AUDIO")
    _add_model_args(p)
    p.add_argument("--out", default=None,
                   help="timeline file: .csv (windows), .json (everything), .srt or .vtt (merged segments as "
                        "subtitles); default: CSV on stdout")
    p.add_argument("--format", choices=TIMELINE_FORMATS, default=None,
                   help="format of --out (default: from its extension) or of stdout (default csv)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the full timeline as JSON")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="plot of the smoothed probabilities over time (a folder: FOLDER/<audio name>.png)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary of the merged segments on stderr (there is no bar anyway "
                        "unless stdout and stderr are a terminal and the timeline goes to --out)")
    p.add_argument("--window", type=float, default=2.0, help="window length in seconds")
    p.add_argument("--hop", type=float, default=0.5, help="hop between windows in seconds")
    p.add_argument("--smooth", type=int, default=5, help="windows in the moving average (1 = none)")
    p.add_argument("--min-speech", type=float, default=0.3, help="speech fraction a window needs to be classified")
    p.set_defaults(func=cmd_timeline)

    p = subparsers.add_parser("models", help="list the models bundled with the package (or describe given ones)")
    p.add_argument("paths", nargs="*", metavar="MODEL", help="describe these model files instead (an ensemble "
                                                             "from `moma combine` lists its members)")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("combine", help="one servable ensemble of MOMA checkpoints and linear functionals "
                                              "models (late fusion, the rule of `moma fuse`)")
    p.add_argument("members", nargs="+", metavar="MEMBER",
                   help="MOMA checkpoints or run folders, and linear models from `moma classical --protocol all`")
    p.add_argument("--out", required=True, metavar="FILE", help="the ensemble's .safetensors file")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="one positive weight per member, normalised to sum to 1 (default: equal)")
    p.set_defaults(func=cmd_combine)

    p = subparsers.add_parser("export", help="export a checkpoint for onnxruntime (model.onnx + model.json)")
    p.add_argument("checkpoint", help="checkpoint file, run folder or bundled model name")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: onnxruntime dynamic int8 quantisation (about 4x faster on one CPU thread; "
                        "see `moma bench`)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("serve", help="HTTP service with an OpenAPI spec and a web page at /")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2, help="inference threads (bounded worker pool)")
    p.add_argument("--queue", type=int, default=64, help="requests allowed to wait for a worker before 503")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="larger uploads get HTTP 413")
    p.add_argument("--max-duration", type=float, default=600.0, help="seconds of audio accepted per request")
    p.set_defaults(func=cmd_serve)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file, run folder or bundled model name (see `moma models`); an export folder "
                        "with --backend onnx; default: the default bundled model")
    p.add_argument("--backend", choices=["torch", "torch-int8", "onnx", "onnx-int8"], default="torch",
                   help="torch: float32 PyTorch; torch-int8 / onnx-int8: dynamic int8 quantisation (CPU, faster, "
                        "posteriors within ~1e-3); onnx: onnxruntime float32 (a checkpoint is exported in memory)")
    p.add_argument("--vad", choices=["silero", "energy"], default="silero",
                   help="speech detector: silero (default; tells speech from noise and music, reports/vad) or "
                        "energy (any loud sound is speech); inputs without speech get no emotion")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"CPU threads per process for inference (default: {INFERENCE_THREADS}, measured fastest "
                        "alone and beside other work; 0: torch's and onnxruntime's own defaults)")


def _predictor(args: argparse.Namespace):
    from moma.audio.vad import VadConfig
    from moma.inference.predictor import Predictor

    if args.threads is not None and args.threads < 0:
        raise ValueError(f"--threads {args.threads}: give 1 or more, or 0 for the libraries' defaults")
    return Predictor.from_checkpoint(args.checkpoint, device=args.device, backend=args.backend,
                                     num_threads=args.threads, speech_check=VadConfig(engine=args.vad))


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar only on a terminal: stdout and stderr both one, results to --out (never over CSV rows on
    stdout), and no -q."""
    return not args.quiet and args.out is not None and sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(show: bool, **options: Any) -> Iterator[Any]:
    """One tqdm bar on stderr (a disabled one unless ``show``); log lines meanwhile are written above it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(disable=not show, file=sys.stderr, **options) as bar, \
            logging_redirect_tqdm() if show else contextlib.nullcontext():
        yield bar


def _jobs(args: argparse.Namespace) -> int:
    """--jobs, or the usable cores; one for --adapt batch (said once) and on a GPU. One job per usable core was
    never slower than fewer and 1.3x faster beside a busy process (moma.capabilities.INFERENCE_THREADS has the
    figures); a third job on two cores gained nothing idle."""
    from moma.capabilities import usable_cores

    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: give 1 or more worker processes")
    jobs = args.jobs or (usable_cores() if args.device == "cpu" else 1)
    if jobs > 1 and args.adapt == "batch":
        print("moma predict: note: --adapt batch reads every file's statistics before the first prediction, so it "
              "predicts in one process", file=sys.stderr)
        return 1
    return jobs


def expand_inputs(items: list[str]) -> Iterator[tuple[str, str]]:
    """(path, error) for each input: files as given, folders searched recursively for audio, globs expanded.

    A glob matching nothing gives one row with the error "no file matches" so that it shows in the results.
    A file named twice (e.g. by a folder and a glob) is predicted once.
    """
    seen: set[str] = set()
    for path, error in _expand(items):
        key = str(Path(path).resolve()) if not error else f"\0{path}"
        if key not in seen:
            seen.add(key)
            yield path, error


def _expand(items: list[str]) -> Iterator[tuple[str, str]]:
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                yield item, "no audio files in folder"
            for p in found:
                yield str(p), ""
        elif not path.exists() and _GLOB_CHARS & set(item):
            matches = sorted(m for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                yield item, "no file matches"
            for m in matches:
                yield m, ""
        else:
            yield item, ""  # a missing plain path is reported by the predictor as "file not found"


class _ResultWriter:
    """Rows to CSV or JSONL, one per input file, written as they come."""

    def __init__(self, out: str | None, labels: list[str]) -> None:
        self.labels = labels
        self.jsonl = bool(out) and str(out).endswith(".jsonl")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        self.fh: TextIO = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout
        # "\n" line ends everywhere (csv's default is "\r\n")
        self.csv = None if self.jsonl else csv.writer(self.fh, lineterminator="\n")
        if self.csv is not None:
            self.csv.writerow(["path", "label", "status", "confidence", "calibrated",
                               *[f"p_{lab}" for lab in labels], "duration_s", "speech_s", "error", "ood_score",
                               "in_domain"])

    def write(self, pred: Any) -> None:
        """One row for a Prediction (``label`` empty and ``status`` no-speech when there was no speech)."""
        if self.csv is not None:
            probs = pred.probabilities
            self.csv.writerow([pred.source, pred.label, "" if pred.error else pred.status,
                               f"{pred.confidence:.6f}" if probs else "", str(pred.calibrated).lower(),
                               *[f"{probs[lab]:.6f}" if probs else "" for lab in self.labels],
                               f"{pred.duration_s:.3f}" if not pred.error else "",
                               "" if pred.speech_s is None else f"{pred.speech_s:.3f}", pred.error,
                               "" if pred.ood_score is None else f"{pred.ood_score:.4f}",
                               "" if pred.in_domain is None else str(pred.in_domain).lower()])
        else:
            row = pred.to_dict()
            row["path"] = row.pop("source")
            self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


def cmd_predict(args: argparse.Namespace) -> int:
    from moma.inference.predictor import Prediction, plot_prediction

    predictor = _predictor(args)
    inputs = list(expand_inputs(args.paths))
    writer = _ResultWriter(args.out, predictor.labels)
    counts = {"failed": 0, "no-speech": 0, "too-short": 0, "out-of-domain": 0}
    preds = None
    try:
        # started before the bar: worker processes are forked before any thread of the bar's exists
        preds = predictor.iter_predict_files([p for p, e in inputs if not e], batch_size=args.batch_size,
                                             on_error="record", adapt=adapt_mode(args), jobs=_jobs(args))
        with progress_bar(show_progress(args), total=len(inputs), unit="file", desc="predict") as bar:
            for path, error in inputs:
                if error:
                    _report(writer, Prediction(label="", probabilities={}, source=path, error=error), counts)
                    bar.update(1)
            for pred in preds:
                _report(writer, pred, counts)
                if args.plot and pred.ok and pred.status != "no-speech":
                    plot_prediction(predictor, pred.source, Path(args.plot) / f"{Path(pred.source).stem}.png",
                                    pred=pred)
                bar.update(1)
    finally:
        if preds is not None:
            preds.close()  # worker processes stop here, also on Ctrl-C
        writer.close()
    failed, ood = counts["failed"], counts.pop("out-of-domain")
    flagged = ", ".join(f"{n} {k}" for k, n in counts.items() if k != "failed" and n)
    if failed:
        print(f"moma predict: {failed} of {len(inputs)} failed", file=sys.stderr)
    if flagged:
        print(f"moma predict: {flagged} (status column: no emotion without speech; too-short = under "
              f"{predictor.min_speech_s:g} s of speech, do not trust it)", file=sys.stderr)
    _report_ood(predictor, ood)
    if args.out:
        print(f"wrote {args.out}: {len(inputs) - failed} predicted, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _report_ood(predictor: Any, out_of_domain: int) -> None:
    """One stderr line on the out-of-domain score: how many files were flagged, or that the model has no score."""
    if predictor.ood is None:
        print("moma predict: ood_score is empty: this model carries no out-of-domain statistics (add them with "
              "`moma ood fit`)", file=sys.stderr)
    elif out_of_domain:
        print(f"moma predict: {out_of_domain} out of domain (in_domain false: ood_score above the model's threshold "
              f"{predictor.ood.threshold:.2f}; the recording is unlike the model's training data, do not trust the "
              "label)", file=sys.stderr)


def _report(writer: _ResultWriter, pred: Any, counts: dict[str, int]) -> None:
    """Write one result; an unusable input is also said once on stderr (above the progress bar, if any)."""
    from tqdm import tqdm

    writer.write(pred)
    if pred.error:
        counts["failed"] += 1
        tqdm.write(f"moma predict: {pred.source}: {pred.error}", file=sys.stderr)
    elif pred.status in counts:
        counts[pred.status] += 1
    if pred.in_domain is False:
        counts["out-of-domain"] += 1


def cmd_models(args: argparse.Namespace) -> int:
    from moma.checkpoint import read_checkpoint_file, resolve_checkpoint_path
    from moma.inference.ensemble import is_ensemble_artefact, summary_line
    from moma.inference.predictor import DEFAULT_MODEL, bundled_models, resolve_model

    models = {str(p): resolve_checkpoint_path(resolve_model(p)) for p in args.paths} if args.paths else bundled_models()
    for name, path in models.items():
        if is_ensemble_artefact(path):
            print(f"{name}: {summary_line(path)}")
            continue
        meta, _ = read_checkpoint_file(path)
        labels = json.loads(meta["labels"])
        card = path.with_suffix(".md")
        print(f"{name}{' (default)' if name == DEFAULT_MODEL else ''}: {len(labels)} classes ({', '.join(labels)}), "
              f"{path.stat().st_size / 1e6:.1f} MB; card: {card if card.is_file() else 'none'}")
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    from moma.audio.io import audio_info
    from moma.inference.timeline import (
        TimelineConfig,
        plot_timeline,
        timeline_for_source,
        timeline_format,
        write_timeline,
    )

    fmt = timeline_format(args.out, args.format)  # checked before the model loads
    predictor = _predictor(args)
    cfg = TimelineConfig(window_s=args.window, hop_s=args.hop, smooth=args.smooth, min_speech=args.min_speech)
    show = show_progress(args)
    total = audio_info(args.audio)[0] if show else 0.0  # seconds of audio: the bar's unit
    with progress_bar(show, total=round(total), unit="s", desc="timeline",
                      bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]") as bar:

        def advance(done_s: float) -> None:
            bar.update(round(min(done_s, total)) - bar.n)

        timeline = timeline_for_source(predictor, args.audio, cfg, progress=advance if show else None)
    write_timeline(timeline, args.out or sys.stdout, fmt)
    if args.out:
        print(f"wrote {args.out} ({fmt}): {len(timeline.rows)} windows, {len(timeline.segments())} segments",
              file=sys.stderr)
    if args.json:
        write_timeline(timeline, args.json, "json")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot = Path(args.plot)
        if args.plot.endswith(("/", "\\")) or plot.is_dir():  # a folder: the plot goes inside it
            plot = plot / f"{Path(args.audio).stem}.png"
        print(f"wrote {plot_timeline(timeline, plot, title=Path(args.audio).name)}", file=sys.stderr)
    if not args.quiet:
        for seg in timeline.segments():
            print(f"{seg.start_s:.1f}-{seg.end_s:.1f} s: {seg.label} {seg.confidence:.2f}", file=sys.stderr)
    share = ", ".join(f"{k} {v:.0%}" for k, v in sorted(timeline.summary().items(), key=lambda kv: -kv[1]))
    print(f"{timeline.duration_s:.1f} s, {len(timeline.regions)} speech regions; {share or 'no speech found'}",
          file=sys.stderr)
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from moma.inference.ensemble import combine_members, summary_line
    from moma.inference.predictor import resolve_model

    path = combine_members([resolve_model(m) for m in args.members], args.out, weights=args.weights)
    print(f"wrote {path}: {summary_line(path)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from moma.inference.export import export_onnx
    from moma.inference.predictor import resolve_model

    path = export_onnx(resolve_model(args.checkpoint), args.out, opset=args.opset, quantize=args.quantize)
    print(f"wrote {path} and {path.with_name('model.json')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from moma.capabilities import require_extra

    for module in ("fastapi", "uvicorn", "python_multipart"):  # checked before the model loads
        require_extra(module, "serve", "moma serve")
    from moma.serving.app import ServiceSettings, run_server

    predictor = _predictor(args)
    settings = ServiceSettings(workers=args.workers, queue=args.queue,
                               max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                               max_duration_s=args.max_duration)
    run_server(predictor, settings, host=args.host, port=args.port)
    return 0
