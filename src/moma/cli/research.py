"""The research commands: ``moma experiment CONFIG.yaml``, a grid of model variants x seeds x folds (see
:mod:`moma.research.experiment`), and the analyses that go with it: ``moma robustness``
(:func:`moma.research.robustness.run_robustness`), ``moma analyse-attention``
(:func:`moma.research.attention.run_attention_analysis`) and ``moma classical``
(:func:`moma.research.classical.run_classical_report`). :func:`add_research_commands` registers all four.

Library errors (ValueError, FileNotFoundError) propagate to ``moma.cli.main.main``,
which prints them as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moma.capabilities import require_extra
from moma.cli.common import add_cache_arg, command_line, manifest_speakers
from moma.recipes import resolve_experiment


def add_research_commands(subparsers: Any) -> None:
    """Register ``experiment``, ``robustness``, ``analyse-attention`` and ``classical``."""
    p = subparsers.add_parser(
        "experiment", help="run a grid of variants x seeds x folds (resumable) and write a comparison report",
        description="Train every cell (variant x seed x fold) of an experiment file on identical folds, then write "
                    "results.json, report.md and figures into the run folder. Finished cells are reused; rerun "
                    "the same command to resume a killed grid.")
    p.add_argument("config", metavar="CONFIG.yaml", help="experiment file (see moma/configs/experiments/)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default: runs/experiments/<config name>)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained in parallel processes")
    p.add_argument("--cache", default=None, help="feature cache folder (default: the file's 'cache' or "
                                                 "cache/features)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option in every variant, after the variants' own (repeatable); "
                        "a changed option needs a new --out")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="the corpus folder, replacing the file's corpus.root (a shipped experiment on your copy "
                        "of its corpus); the manifest is prepared from it when missing")
    p.add_argument("--feature-workers", type=int, default=1)
    p.add_argument("--variants", default=None, metavar="NAME,...",
                   help="train only these variants' cells this time (e.g. the ones that decide a claim first); "
                        "the report covers every finished cell and lists the others as missing")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: aggregate the finished cells into the report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_experiment)

    p = subparsers.add_parser(
        "robustness", help="score checkpoints on clean and degraded audio (noise, babble, telephone, gain, reverb)",
        description="Evaluate each checkpoint on the manifest's utterances (or --speakers) under every condition; "
                    "writes results.json, report.md (UAR / accuracy per condition per model) and degradation.png.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or fold folders")
    p.add_argument("--manifest", required=True)
    p.add_argument("--speakers", nargs="+", default=None, help="only these speakers (default: all; use the "
                                                               "checkpoints' test speakers for unseen voices)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--conditions", nargs="+", default=None, metavar="NAME",
                   help="conditions (default: the 13 standard ones: clean, white-/babble-{20,10,5,0}dB, telephone, "
                        "gain+10dB, gain-10dB, reverb-0.5s); any white-<snr>dB, babble-<snr>dB, "
                        "gain<+|-><db>dB, reverb-<rt60>s")
    p.add_argument("--max-utterances", type=int, default=None, metavar="N",
                   help="a label-balanced seeded subset of N utterances (default: all)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="per (checkpoint, condition) result cache (default: the --out folder's cache/); a rerun "
                        "reuses it")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset, the noise and the babble")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_robustness)

    p = subparsers.add_parser(
        "analyse-attention", help="attention entropy, block correlation, gammas and speaker probes of checkpoints",
        description="For each checkpoint: entropy of layer 1, each MOMA block and the mixture (also normalised by "
                    "log length), correlation between blocks, the gammas, and a cross-validated linear speaker "
                    "probe after the encoder, after layer 1 and after the MOMA layer. Writes results.json and "
                    "report.md.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files or fold folders")
    p.add_argument("--manifest", required=True)
    p.add_argument("--speakers", nargs="+", default=None,
                   help="only these speakers (default: all); the probe needs >= 2 speakers")
    p.add_argument("--out", required=True, metavar="DIR")
    add_cache_arg(p)
    p.add_argument("--probe-folds", type=int, default=5, help="cross-validation folds of the speaker probe")
    p.add_argument("--seed", type=int, default=0, help="seeds the probe's folds")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_analyse_attention)

    p = subparsers.add_parser(
        "classical", help="openSMILE functionals + linear SVM on the MOMA folds (the classical anchor)",
        description="Extract openSMILE functionals for every utterance (cached), then for each feature set and "
                    "normalisation train a linear SVM per fold of the protocol on its training and validation "
                    "speakers, C chosen by inner leave-one-speaker-out CV, and test it on the fold's test "
                    "speakers. Writes report.md and report.json. Needs the 'classical' extra (opensmile).")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and report.json")
    # names checked in cmd_classical: importing moma.research.classical here would slow every moma command
    p.add_argument("--cache", default=None, metavar="DIR", help="openSMILE feature cache folder (default: "
                                                                "cache/opensmile)")
    p.add_argument("--feature-sets", nargs="+", default=None, metavar="NAME",
                   help="utterance functionals: eGeMAPSv02, ComParE_2016 (openSMILE; default: both), ge2e-stats "
                        "(mean and std of the GE2E speaker encoder's last layer; -1 / -2 for layers 1 / 2)")
    p.add_argument("--normalisations", nargs="+", default=None, metavar="MODE",
                   help="global: statistics of training speakers only; speaker: every speaker by its own "
                        "statistics, the test speaker's unlabelled audio included (transductive); corpus: every "
                        "corpus of a pool by its own statistics (transductive) (default: global speaker)")
    p.add_argument("--protocol", default="loso", choices=["loso", "loso-session", "session-holdout",
                                                         "speaker-kfold", "speaker-groups", "loco", "all"],
                   help="loco: leave one corpus out of a pooled manifest (moma pool); all: no test speakers, "
                        "train one servable model per feature set on every speaker (global normalisation) and "
                        "write OUT/<feature set>.safetensors for `moma combine` / `moma predict`")
    p.add_argument("--fuse", action="store_true",
                   help="with --protocol all: also write OUT/fusion.safetensors, the late fusion of every feature "
                        "set's model (what `moma fuse` scores), servable by `moma predict` and `moma serve`")
    p.add_argument("--test-corpus", default=None, metavar="NAME",
                   help="loso on a pooled manifest: leave out this corpus's speakers, training on the rest of "
                        "the pool")
    p.add_argument("--k", type=int, default=5, help="folds for speaker-kfold and speaker-groups")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes for feature extraction")
    p.add_argument("--fold", nargs="+", default=None, help="compute only these folds (names or test speakers); "
                                                           "the report covers every fold finished so far")
    p.add_argument("--jobs", type=int, default=1, help="folds computed at once, in parallel processes")
    p.add_argument("--resume-from", default=None, metavar="REPORT",
                   help="an earlier report.json of the same command (e.g. a committed one): its finished folds are "
                        "reused when their utterances, C grid and seed match, so a fresh checkout continues it")
    p.add_argument("--restart", action="store_true", help="compute the folds again (with --fold: those "
                                                          "named); finished folds under OUT/folds are otherwise "
                                                          "reused")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_classical)


def cmd_robustness(args: argparse.Namespace) -> int:
    from moma.research.robustness import run_robustness

    if args.max_utterances is not None and args.max_utterances < 1:
        raise ValueError(f"--max-utterances must be >= 1, got {args.max_utterances}")
    chosen, every = manifest_speakers(args.manifest, args.speakers)
    results = run_robustness(args.checkpoints, chosen, args.out, conditions=args.conditions,
                             max_utterances=args.max_utterances, seed=args.seed, cache_dir=args.cache,
                             babble_pool=every, command=command_line(args), device=args.device)
    names = list(results["models"])
    print(f"{results['n_utterances']} utterances, {len(results['speakers'])} speaker(s); UAR / accuracy")
    print(f"  {'condition':<14}" + "".join(f"{n[-24:]:>26}" for n in names))
    for c in results["conditions"]:
        row = "".join(f"{results['models'][n]['conditions'][c]['uar']:>17.3f} / "
                      f"{results['models'][n]['conditions'][c]['accuracy']:.3f}" for n in names)
        print(f"  {c:<14}{row}")
    print(f"report:  {Path(args.out) / 'report.md'}")
    print(f"figure:  {Path(args.out) / results['figure']}")
    return 0


def cmd_classical(args: argparse.Namespace) -> int:
    from moma.research.classical import (
        DEFAULT_CACHE,
        DEFAULT_NORMALISATIONS,
        FEATURE_SETS,
        NORMALISATIONS,
        OPENSMILE_SETS,
        run_classical_report,
    )

    args.cache = args.cache or DEFAULT_CACHE
    args.feature_sets = args.feature_sets or list(OPENSMILE_SETS)
    if args.protocol == "all" and args.normalisations not in (None, ["global"]):
        raise ValueError(f"--protocol all trains with global normalisation only (no test speaker to normalise by "
                         f"its own statistics), not {' '.join(args.normalisations)}; drop --normalisations")
    args.normalisations = args.normalisations or list(DEFAULT_NORMALISATIONS)
    if args.fuse and args.protocol != "all":
        raise ValueError(f"--fuse writes a servable fusion of --protocol all's models; for --protocol {args.protocol} "
                         "score the fusion of the report's runs with `moma fuse`")
    if args.test_corpus and args.protocol != "loso":
        raise ValueError(f"--test-corpus is for --protocol loso on a pooled manifest, not {args.protocol}")
    for option, given, known in (("--feature-sets", args.feature_sets, FEATURE_SETS),
                                 ("--normalisations", args.normalisations, NORMALISATIONS)):
        unknown = [v for v in given if v not in known]
        if unknown:
            raise ValueError(f"{option}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    if args.k < 2:
        raise ValueError(f"--k must be >= 2, got {args.k}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    require_extra("opensmile", "classical", "moma classical")
    if args.protocol == "all":
        return _classical_models(args)
    report = run_classical_report(args.manifest, args.out, feature_sets=args.feature_sets,
                                  normalisations=args.normalisations, cache_dir=args.cache, command=command_line(args),
                                  protocol=args.protocol, k=args.k, seed=args.seed, workers=args.workers,
                                  progress=not args.quiet, test_corpus=args.test_corpus, only_folds=args.fold,
                                  jobs=args.jobs, restart=args.restart, resume_from=args.resume_from)
    for run in report["runs"]:
        s = run["summary"]
        part = f"  ({s['folds']} of {report['n_folds']} folds)" if run["missing_folds"] else ""
        print(f"{run['feature_set']:>13} {run['normalisation']:>7}: UAR {s['uar']['mean']:.3f} ± "
              f"{s['uar']['std']:.3f}  accuracy {s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}  "
              f"pooled UAR {s['pooled']['uar']:.3f}{part}")
    print(f"report:  {Path(args.out) / 'report.md'}")
    return 0


def _classical_models(args: argparse.Namespace) -> int:
    """``moma classical --protocol all``: one servable linear model per feature set, no report."""
    from moma.research.linear_model import write_linear_models

    for model in write_linear_models(args.manifest, args.out, feature_sets=args.feature_sets, cache_dir=args.cache,
                                     seed=args.seed, workers=args.workers, progress=not args.quiet, fuse=args.fuse):
        if "C" not in model:  # the fusion of the others
            print(f"{'fusion':>13}: {model['feature_set']} -> {model['path']}")
            continue
        print(f"{model['feature_set']:>13}: C {model['C']:g} (inner leave-one-speaker-out UAR "
              f"{model['inner_uar']:.3f}), temperature {model['temperature']:.3f} -> {model['path']}")
    return 0


def cmd_analyse_attention(args: argparse.Namespace) -> int:
    from moma.research.attention import run_attention_analysis

    if args.probe_folds < 2:
        raise ValueError(f"--probe-folds must be >= 2, got {args.probe_folds}")
    chosen, _ = manifest_speakers(args.manifest, args.speakers)
    results = run_attention_analysis(args.checkpoints, chosen, args.out, cache_dir=args.cache,
                                     probe_folds=args.probe_folds, seed=args.seed, command=command_line(args),
                                     device=args.device)
    for name, m in results["models"].items():
        att = m.get("attention") or {}
        ent = ", ".join(f"{k.replace('_entropy_norm', '')} {att[k]['mean']:.3f}" for k in
                        ("layer1_entropy_norm", "mixture_entropy_norm") if k in att)
        probe = m.get("probe") or {}
        pr = ("probe skipped" if "skipped" in probe else
              "probe " + ", ".join(f"{s} {r['accuracy_mean']:.3f}" for s, r in probe.get("stages", {}).items()))
        print(f"{name}: normalised entropy {ent or '(no attention)'}; {pr}")
    print(f"report:  {Path(args.out) / 'report.md'}")
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from moma.research.experiment import run_experiment
    from moma.research.report import main_summary

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    config = resolve_experiment(args.config)
    out = args.out or str(Path("runs/experiments") / Path(config).stem)
    results = run_experiment(config, out, jobs=args.jobs, cache_dir=args.cache, sets=args.set, command=command_line(args),
                             progress=not args.quiet, feature_workers=args.feature_workers,
                             train=not args.report_only, corpus_root=args.root,
                             variants=[v.strip() for v in args.variants.split(",") if v.strip()]
                             if args.variants else None)
    print(main_summary(results))
    print(f"report:  {Path(out) / 'report.md'}")
    print(f"results: {Path(out) / 'results.json'}")
    return 0
