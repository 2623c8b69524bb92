"""``moma ood fit``: add out-of-domain statistics to a checkpoint made before they existed.

    moma ood fit CHECKPOINT --manifest TRAIN.jsonl [TRAIN2.jsonl ...] [--speakers S ...] [--out FILE]

The density of the training utterances' frame statistics (:mod:`moma.features.ood`) is fitted with the
checkpoint's own front end on the manifest(s) it was trained on, and the checkpoint is written again with it
(in place unless ``--out``); its weights, normaliser and metadata stay as they were.
"""

from __future__ import annotations

import argparse
from typing import Any

from moma.cli.common import add_cache_arg


def add_ood_commands(subparsers: Any) -> None:
    """Register ``ood fit`` on an argparse subparsers object."""
    p = subparsers.add_parser("ood", help="out-of-domain statistics of a checkpoint (`moma ood fit`)")
    sub = p.add_subparsers(dest="ood_command", required=True)
    f = sub.add_parser("fit", help="fit a checkpoint's out-of-domain statistics on its training manifest(s) and "
                                   "store them in it")
    f.add_argument("checkpoint", help="checkpoint file or run folder (a bundled model: give its file path)")
    f.add_argument("--manifest", nargs="+", required=True, help="the manifest(s) the checkpoint was trained on")
    f.add_argument("--speakers", nargs="+", default=None,
                   help="only these speakers (the checkpoint's training speakers; default: every utterance)")
    f.add_argument("--out", default=None, metavar="FILE", help="write here instead of over the checkpoint")
    f.add_argument("--workers", type=int, default=1, help="feature processes for utterances not in the cache")
    add_cache_arg(f)
    f.set_defaults(func=cmd_ood_fit)


def cmd_ood_fit(args: argparse.Namespace) -> int:
    from moma.training.ood import add_ood_to_checkpoint

    path, ood = add_ood_to_checkpoint(args.checkpoint, args.manifest, cache_dir=args.cache, out=args.out,
                                      speakers=args.speakers, workers=args.workers)
    q = ood.info["reference_quantiles"]
    print(f"wrote {path}: out-of-domain threshold {ood.threshold:.3f} ({ood.info['rule']}, quantile "
          f"{ood.info['quantile']:g} of held-out speakers' distances; median {q['p50']:.3f}), fitted on "
          f"{ood.info['utterances']} utterances of {ood.info['speakers']} speakers, {ood.info['dims']} dims")
    return 0
