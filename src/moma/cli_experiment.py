"""``moma experiment CONFIG.yaml``: a grid of model variants x seeds x folds (see :mod:`moma.experiment`).

``moma.cli`` registers it with::

    from .cli_experiment import add_experiment_command
    add_experiment_command(sub)

Library errors (ValueError, FileNotFoundError) propagate to ``moma.cli.main``,
which prints them as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any


def add_experiment_command(subparsers: Any) -> None:
    """Register ``experiment`` on an argparse subparsers object."""
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
    p.add_argument("--feature-workers", type=int, default=1)
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: aggregate the finished cells into the report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_experiment)


def _resolve_config(name: str) -> str:
    """A path as given, or a shipped experiment (``emodb-table1`` -> moma/configs/experiments/emodb-table1.yaml)."""
    path = Path(name)
    if path.is_file():
        return name
    shipped = Path(__file__).with_name("configs") / "experiments" / f"{name}.yaml"
    return str(shipped) if shipped.is_file() else name


def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiment import main_summary, run_experiment

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    config = _resolve_config(args.config)
    out = args.out or str(Path("runs/experiments") / Path(config).stem)
    parts = ["moma", "experiment", args.config, "--out", out]
    parts += ["--jobs", str(args.jobs)] if args.jobs > 1 else []
    parts += ["--cache", args.cache] if args.cache else []
    for s in args.set:
        parts += ["--set", s]
    command = " ".join(shlex.quote(a) for a in parts)
    results = run_experiment(config, out, jobs=args.jobs, cache_dir=args.cache, sets=args.set, command=command,
                             progress=not args.quiet, feature_workers=args.feature_workers,
                             train=not args.report_only)
    print(main_summary(results))
    print(f"report:  {Path(out) / 'report.md'}")
    print(f"results: {Path(out) / 'results.json'}")
    return 0
