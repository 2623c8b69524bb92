"""``moma bench``: speed and memory at every scale (see :mod:`moma.bench`).

``moma.cli.main`` registers it with::

    from moma.cli.bench import add_bench_command
    add_bench_command(sub)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moma.cli.common import add_cache_arg, command_line, manifest_speakers


def add_bench_command(subparsers: Any) -> None:
    """Register ``bench`` on an argparse subparsers object."""
    from moma.bench import SECTIONS

    p = subparsers.add_parser(
        "bench", help="measure feature, training and inference speed and memory; writes bench.json + README.md",
        description="Measure every figure side by side in one run, each case in a fresh child process (peak "
                    "memory per case). The full run takes about 10-15 minutes on a 2-core CPU; --quick runs "
                    "tiny versions of every case in well under a minute.")
    p.add_argument("--out", default="reports/bench", metavar="DIR", help="folder for bench.json and README.md")
    p.add_argument("--quick", action="store_true", help="tiny model, short audio, tiny corpora (a smoke test)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), metavar="SECTION",
                   help=f"sections to run (default: all of {', '.join(SECTIONS)})")
    p.add_argument("--checkpoint", default=None,
                   help="model for the inference cases (default: a randomly initialised paper-configuration model)")
    p.add_argument("--manifest", default=None, help="labelled manifest for the accuracy check (with --speakers)")
    p.add_argument("--speakers", nargs="+", default=[], help="test speakers of the accuracy fold")
    add_cache_arg(p, "feature cache for the accuracy fold")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="CPU thread counts for training rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None,
                   help="scratch folder for corpora and exports (default: OUT/.work; up to ~1 GB; removed after)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from moma.bench import BenchOptions, run_benchmarks

    if args.checkpoint and not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"{args.checkpoint}: checkpoint not found")
    if args.manifest and args.speakers:
        manifest_speakers(args.manifest, args.speakers)  # unknown speakers: an error naming them
    if any(n < 1 for n in args.threads):
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    opts = BenchOptions(out=Path(args.out), quick=args.quick, sections=args.sections, checkpoint=args.checkpoint,
                        manifest=args.manifest, speakers=args.speakers, cache_dir=args.cache, seed=args.seed,
                        work_dir=args.work_dir, keep_work=args.keep_work, threads=args.threads,
                        command=command_line(args))
    results = run_benchmarks(opts, progress=lambda name: print(f"bench: {name}", file=sys.stderr, flush=True))
    for t in results["targets"]:
        state = {True: "reached", False: "NOT reached", None: "not assessed"}[t["reached"]]
        print(f"{state:>13}: {t['target']} -- {t['figure']}")
    failed = [f"{s}/{k}" for s, sec in results["sections"].items() for k, r in sec.items()
              if isinstance(r, dict) and r.get("error")]
    if failed:
        print(f"failed cases: {', '.join(failed)}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'bench.json'} and {Path(args.out) / 'README.md'} ({results['wall_s']:.0f} s)")
    return 1 if failed else 0
