"""What every group of commands shares: config arguments, the feature-cache default, the provenance line
recorded in every report, and speaker selection from a manifest."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from moma.features.cache import DEFAULT_CACHE_DIR


def add_config_args(p: argparse.ArgumentParser) -> None:
    from moma.recipes import available_recipes

    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config override file or recipe name (repeatable; later wins). Recipes: "
                        + ", ".join(available_recipes()))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option, e.g. --set train.lr=1e-3 (repeatable)")


def add_cache_arg(p: argparse.ArgumentParser, what: str = "feature cache folder") -> None:
    p.add_argument("--cache", default=DEFAULT_CACHE_DIR, metavar="DIR", help=f"{what} (default: {DEFAULT_CACHE_DIR})")


def load_config(args: argparse.Namespace):
    """The run config of ``--config`` recipes/files and ``--set`` overrides, over the dataclass defaults."""
    from moma.config import load_run_config
    from moma.recipes import resolve_recipe

    return load_run_config([resolve_recipe(c) for c in args.config], args.set)


def command_line(args: argparse.Namespace) -> str:
    """The command as the user typed it (every flag kept), recorded in reports so that a run can be repeated.

    ``args.argv`` is what ``moma.cli.main.main`` parsed (its ``argv``, or the process's arguments)."""
    return "moma " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))


def manifest_speakers(manifest: str, speakers: list[str] | None) -> tuple[list[Any], list[Any]]:
    """(utterances of ``speakers``, all utterances) of a manifest; unknown speakers are an error naming them."""
    from moma.corpora.base import read_manifest, select_speakers

    utts = read_manifest(manifest)
    return select_speakers(utts, speakers, manifest), utts
