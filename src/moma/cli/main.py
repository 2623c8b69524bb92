"""Command line: a thin layer that parses arguments, calls the library and prints results."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from moma.cli.common import (adapt_mode, add_adapt_arg, add_cache_arg, add_config_args, command_line, group_commands,
                             load_config, manifest_speakers)
from moma.version import __version__


def _print_summary(report: dict) -> None:
    s = report["summary"]
    print(f"{report['title']}")
    print(f"  folds: {s['folds']}   normalisation: {report['normalisation']}")
    print(f"  accuracy (paper's 'UA'): {s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}")
    print(f"  UAR      (paper's 'WA'): {s['uar']['mean']:.3f} ± {s['uar']['std']:.3f}")
    print(f"  macro-F1:                {s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f}")


def cmd_prepare(args: argparse.Namespace) -> int:
    from moma.corpora import prepare_corpus
    from moma.corpora.base import summarise, write_manifest

    utts = prepare_corpus(args.corpus, args.root, label_map=args.label_map, hash_audio=not args.no_hash,
                          progress=True)
    write_manifest(utts, args.out)
    summary = summarise(utts)
    print(f"wrote {args.out}: {summary['utterances']} utterances, {summary['speakers']} speakers, "
          f"{len(summary['labels'])} labels, {summary['hours']:.2f} h")
    print("labels:   " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()))
    print("speakers: " + ", ".join(f"{k} {v}" for k, v in summary["per_speaker"].items()))
    if summary["sessions"]:
        print("sessions: " + ", ".join(f"{k} {v}" for k, v in summary["sessions"].items()))
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    from moma.corpora.base import summarise, write_manifest
    from moma.corpora.pool import pool_corpora

    utts = pool_corpora(args.manifests, labels=args.labels)
    write_manifest(utts, args.out)
    summary = summarise(utts)
    per_corpus = {c: sum(1 for u in utts if u.corpus == c) for c in sorted({u.corpus for u in utts})}
    print(f"wrote {args.out}: {summary['utterances']} utterances, {summary['speakers']} speakers, "
          f"{len(summary['labels'])} labels ({args.labels}), {summary['hours']:.2f} h")
    print("corpora:  " + ", ".join(f"{k} {v}" for k, v in per_corpus.items()))
    print("labels:   " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from moma.corpora.base import read_manifest
    from moma.features.cache import FeatureCache, prepare_features

    cfg = load_config(args)
    utts = read_manifest(args.manifest)
    stats = prepare_features(utts, FeatureCache(args.cache, cfg.features), workers=args.workers,
                             progress=not args.quiet, pack=not args.no_pack)
    print(f"{stats['utterances']} utterances ({stats['hours_total']:.2f} h): {stats['computed']} computed "
          f"({stats['hours_computed']:.2f} h) in {stats['seconds']:.1f} s with {args.workers} worker(s)")
    if stats["hours_per_core_second"]:
        print(f"throughput: {stats['hours_per_core_second'] * 3600:.0f} s of audio per core-second "
              f"({stats['hours_per_core_second']:.4f} h per core-second)")
    if stats["pack"]:
        print(f"pack: {stats['pack']}")
    return 0


def _run_cv(args: argparse.Namespace, only_folds=None) -> dict:
    from moma.corpora.base import read_manifest
    from moma.data.protocols import ProtocolSpec
    from moma.training.crossval import run_cross_validation

    if args.test_speakers and args.protocol != "predefined":
        raise ValueError(f"--test-speakers is for --protocol predefined, not {args.protocol}")
    if args.test_corpus and args.protocol != "loso":
        raise ValueError(f"--test-corpus is for --protocol loso on a pooled manifest, not {args.protocol}")
    if args.test_session and args.protocol != "session-holdout":
        raise ValueError(f"--test-session is for --protocol session-holdout, not {args.protocol}")
    if args.resume and args.restart:
        raise ValueError("--resume and --restart contradict each other: give one")
    if args.resume and not (Path(args.out) / "config.yaml").is_file():
        raise ValueError(f"--resume: {args.out} holds no earlier run to resume (drop --resume to start one)")

    cfg = load_config(args)
    utts = read_manifest(args.manifest)
    spec = ProtocolSpec(args.protocol, k=args.k, test_session=args.test_session,
                        test_speakers=tuple(args.test_speakers) if args.test_speakers else None,
                        test_corpus=args.test_corpus, only_folds=tuple(only_folds) if only_folds else None)
    return run_cross_validation(
        utts, cfg, args.out, spec, cache_dir=args.cache, jobs=args.jobs, resume=not args.restart,
        progress=not args.quiet, feature_workers=args.feature_workers, command=command_line(args))


def cmd_cv(args: argparse.Namespace) -> int:
    if args.protocol == "all":
        print("moma cv: protocol 'all' has no test speakers; use `moma train --protocol all` for a final model",
              file=sys.stderr)
        return 2
    report = _run_cv(args, args.fold)
    if report["summary"] is None:  # a torchrun rank other than 0: rank 0 prints
        return 0
    _print_summary(report)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if not args.fold and args.protocol not in ("session-holdout", "predefined", "all"):
        print("moma train: --fold NAME is required for this protocol (or use `moma cv` for all folds)",
              file=sys.stderr)
        return 2
    report = _run_cv(args, args.fold)
    if report["summary"] is not None:
        _print_summary(report)
    for fold in report["folds"]:  # empty on torchrun ranks other than 0
        print(f"checkpoint: {Path(args.out) / fold['name'] / 'best.safetensors'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from moma.inference.evaluate import evaluate_checkpoint

    utts, every = manifest_speakers(args.manifest, args.speakers)
    report = evaluate_checkpoint(args.checkpoint, utts, args.out, cache_dir=args.cache, device=args.device,
                                 command=command_line(args), label_inventory=[u.label for u in every],
                                 adapt=adapt_mode(args))
    _print_summary(report)
    for note in report["notes"][1:]:  # the cross-corpus scoring, when there is any to report
        print(f"  {note}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from moma.research.demo import run_demo

    result = run_demo(args.out, corpus=args.corpus, root=args.root, cache_dir=args.cache, jobs=args.jobs,
                      progress=not args.quiet, command=command_line(args), extra_configs=args.config,
                      sets=args.set)
    _print_summary(result["report"])
    print(f"report:         {result['report_path']}")
    if result.get("attention_plot"):
        print(f"attention plot: {result['attention_plot']}")
    print(f"wall time:      {result['wall_time_s']:.0f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from moma.research.report import is_experiment_folder, main_summary, rewrite_experiment_report

    if is_experiment_folder(args.run_dir):
        print(main_summary(rewrite_experiment_report(args.run_dir)))
        print(f"report: {Path(args.run_dir) / 'report.md'}")
        return 0
    from moma.training.crossval import rebuild_report

    report = rebuild_report(args.run_dir)
    _print_summary(report)
    print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    from moma.evaluation.compare import load_run_reports
    from moma.evaluation.fusion import fuse_runs, render_fusion_markdown
    from moma.evaluation.report_files import save_report_json

    report = fuse_runs([run for spec in args.runs for run in load_run_reports(spec)], weights=args.weights,
                       command=command_line(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_report_json(report, out)
    (out / "report.md").write_text(render_fusion_markdown(report), encoding="utf-8")
    s = report["summary"]
    members = ", ".join(f"{name} {m['uar']:.3f}" for name, m in report["member_means"].items())
    print(f"late fusion: UAR {s['uar']['mean']:.3f} ± {s['uar']['std']:.3f} over {s['folds']} folds "
          f"(members: {members})")
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from moma.evaluation.compare import compare_runs, load_run_reports, render_comparison

    result = compare_runs([run for spec in args.runs for run in load_run_reports(spec)], metric=args.metric,
                          unit=args.unit)
    text = render_comparison(result)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text, encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


def cmd_plot_attention(args: argparse.Namespace) -> int:
    from moma.inference.predictor import plot_attention_for_file

    out = plot_attention_for_file(args.checkpoint, args.audio, args.out, alignment=args.alignment,
                                  phones=args.phones)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moma", description="Speech emotion recognition with MOMA")
    parser.add_argument("--version", action="version", version=f"moma {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="write a manifest for a corpus")
    p.add_argument("corpus", help="iemocap, emodb, nemo, ravdess, tess, cremad, csv, folders, synthetic")
    p.add_argument("--root", required=True, help="corpus folder (or the CSV file for 'csv')")
    p.add_argument("--out", required=True, help="manifest path (.jsonl or .csv)")
    p.add_argument("--label-map", default="default", help="label map name, e.g. 4class")
    p.add_argument("--no-hash", action="store_true", help="skip content hashing (faster; disables cache reuse)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pool", help="pool several corpora's manifests into one (speakers namespaced by corpus)")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="single-corpus manifests (from moma prepare)")
    p.add_argument("--out", required=True, help="pooled manifest path (.jsonl or .csv)")
    p.add_argument("--labels", choices=["union", "shared"], default="union",
                   help="union: every class of every corpus; shared: only the classes all corpora have "
                        "(what leave-one-corpus-out scores)")
    p.set_defaults(func=cmd_pool)

    p = sub.add_parser("features", help="featurise a manifest ahead of training (parallel, resumable)")
    p.add_argument("--manifest", required=True)
    add_cache_arg(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--no-pack", action="store_true", help="fill the cache only; skip the memory-mapped pack")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_config_args(p)
    p.set_defaults(func=cmd_features)

    for name, helptext in (("cv", "train and test every fold of a protocol, then aggregate"),
                           ("train", "train and test one fold")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--manifest", required=True)
        p.add_argument("--out", required=True, help="run folder")
        p.add_argument("--protocol", default="loso",
                       choices=["loso", "loso-session", "session-holdout", "speaker-kfold", "speaker-groups", "loco",
                                "predefined", "all"],
                       help="loco: leave one corpus out of a pooled manifest (moma pool); all: no test speakers, "
                            "train a final model (train only)")
        p.add_argument("--k", type=int, default=5, help="folds for speaker-kfold (random groups) and speaker-groups "
                                                        "(consecutive speakers: RAVDESS 01-04, 05-08, ...)")
        p.add_argument("--test-session", default=None, help="session-holdout: the test session (default: last)")
        p.add_argument("--test-speakers", nargs="+", default=None, help="predefined: test speakers")
        p.add_argument("--test-corpus", default=None, metavar="NAME",
                       help="loso on a pooled manifest: leave out this corpus's speakers one at a time, training "
                            "on everything else in the pool; scored over that corpus's classes")
        p.add_argument("--fold", nargs="+", default=None, help="run only these folds (names or test speakers)")
        p.add_argument("--jobs", type=int, default=1, help="folds trained in parallel processes")
        p.add_argument("--feature-workers", type=int, default=1)
        add_cache_arg(p)
        p.add_argument("--restart", action="store_true", help="ignore finished folds and checkpoints")
        p.add_argument("--resume", action="store_true",
                       help="insist on continuing an earlier run: an error if --out holds none (without it, an "
                            "earlier run there is continued anyway and a new folder is started)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        add_config_args(p)
        p.set_defaults(func=cmd_cv if name == "cv" else cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint on a manifest")
    p.add_argument("checkpoint")
    p.add_argument("--manifest", required=True)
    p.add_argument("--speakers", nargs="+", default=None, help="only these speakers")
    p.add_argument("--out", required=True)
    add_adapt_arg(p, ["utterance", "batch", "speaker"])
    add_cache_arg(p)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="train and evaluate on the embedded synthetic corpus (or --corpus emodb)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--corpus", default="synthetic", help="synthetic (embedded, default) or a corpus name")
    p.add_argument("--root", default=None, help="corpus folder when --corpus is not synthetic")
    add_cache_arg(p)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("-q", "--quiet", action="store_true")
    add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="rebuild a cv run's report from its finished folds, or re-render an "
                                      "experiment's report.md from its results.json")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="paired comparison of cv runs on the same folds: per-fold sign-flip test "
                                       "and a paired bootstrap CI, each run against the first")
    p.add_argument("runs", nargs="+", help="`moma cv` run folders (or their report.json), or `moma classical` "
                                          "reports (PATH#FEATURES/NORMALISATION picks one of their runs); the "
                                          "first run is the reference")
    p.add_argument("--metric", default="uar", choices=["uar", "accuracy", "macro_f1"])
    p.add_argument("--unit", default="fold", choices=["fold", "speaker"],
                   help="pair fold scores (default) or each test speaker's score (for protocols with few folds, "
                        "such as leave-one-corpus-out)")
    p.add_argument("--out", default=None, help="also write OUT.md and OUT.json")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("fuse", help="late fusion of cv runs on the same folds (for example MOMA and an openSMILE "
                                    "+ SVM anchor): weighted geometric mean of their temperature-scaled posteriors")
    p.add_argument("runs", nargs="+", help="`moma cv` run folders (or their report.json), or `moma classical` "
                                          "reports with PATH#FEATURES/NORMALISATION")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one positive weight per run, fixed in advance (default: equal)")
    p.add_argument("--out", required=True, help="folder for report.json and report.md")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("plot-attention", help="plot a model's attention over one audio file")
    p.add_argument("checkpoint")
    p.add_argument("audio")
    p.add_argument("--alignment", default=None, help="word/syllable alignment (.wdseg, .silb, .lablaut ...)")
    p.add_argument("--phones", default=None, help="phone alignment (.phseg, .lablaut)")
    p.add_argument("--out", default="attention.png")
    p.set_defaults(func=cmd_plot_attention)

    from moma.cli.inference import add_inference_commands

    add_inference_commands(sub)  # predict, timeline, export, serve
    from moma.cli.research import add_research_commands

    add_research_commands(sub)  # experiment grids, robustness, analyse-attention, classical
    from moma.cli.ood import add_ood_commands

    add_ood_commands(sub)  # ood fit: out-of-domain statistics for a checkpoint made before them
    from moma.cli.bench import add_bench_command

    add_bench_command(sub)  # speed and memory benchmarks
    group_commands(parser, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the provenance line of every report (cli.common.command_line)
    level = logging.DEBUG if args.verbose else logging.INFO
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun; ranks other than 0 log warnings only
    prefix = "" if rank == 0 else f"[rank {rank}] "
    logging.basicConfig(level=level if rank == 0 else max(level, logging.WARNING),
                        format=prefix + "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from moma.audio.io import AudioError
    from moma.capabilities import MissingExtraError, UnsupportedHardwareError
    from moma.data.protocols import SpeakerLeakageError

    try:
        return int(args.func(args) or 0)
    except (AudioError, SpeakerLeakageError, FileNotFoundError, ValueError, MissingExtraError,
            UnsupportedHardwareError) as exc:
        # user errors get one clear line, not a traceback
        print(f"moma {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
