"""What every group of commands shares: config arguments, the feature-cache default, the provenance line
recorded in every report, and speaker selection from a manifest."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
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


# One normalisation vocabulary for every option that names where statistics come from (data.normalisation,
# --adapt, classical --normalisations): global (the training set's), corpus, speaker, utterance, batch (all the
# inputs together). --adapt used to call the training set's statistics "none", which data.normalisation uses for
# no normalisation at all; that spelling is still accepted, with a note.
ADAPT_ALIASES = {"none": "global"}


def add_adapt_arg(p: argparse.ArgumentParser, sources: list[str]) -> None:
    """--adapt SOURCE: whose statistics normalise the inputs; ``global`` keeps the checkpoint's own."""
    def source(value: str) -> str:
        if value in ADAPT_ALIASES:
            print(f"note: --adapt {value} is now spelled --adapt {ADAPT_ALIASES[value]}", file=sys.stderr)
            value = ADAPT_ALIASES[value]
        if value not in ["global", *sources]:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from global, {', '.join(sources)})")
        return value

    p.add_argument("--adapt", type=source, default="global", metavar="{global," + ",".join(sources) + "}",
                   help="normalise the inputs with these statistics: global, the checkpoint's training set "
                        "(default); utterance, each input's own; batch, all the inputs together; speaker, each "
                        "speaker's (batch and speaker are transductive: the test audio, never its labels)")


def adapt_mode(args: argparse.Namespace) -> str:
    """The library's name for --adapt's choice (the library calls the checkpoint's own statistics 'none')."""
    return "none" if args.adapt == "global" else args.adapt


# `moma --help` lists the everyday commands first, then the research ones (the order of each group is its own)
COMMAND_GROUPS = {
    "use a model": ["predict", "timeline", "serve", "export", "models", "combine", "ood"],
    "train and test on your corpus": ["prepare", "train", "cv", "evaluate", "features", "pool", "demo"],
    "research: reports, comparisons, the paper's grids": ["report", "compare", "fuse", "experiment", "classical",
                                                          "robustness", "analyse-attention", "plot-attention",
                                                          "bench"],
}


def group_commands(parser: argparse.ArgumentParser, sub: Any) -> None:
    """Replace argparse's one flat list of commands by COMMAND_GROUPS, in the parser's help."""
    helps = {a.dest: a.help for a in sub._choices_actions}  # argparse keeps each command's help only here
    missing = set(helps) - {c for group in COMMAND_GROUPS.values() for c in group}
    assert not missing, f"commands missing from COMMAND_GROUPS: {sorted(missing)}"
    lines = []
    for title, names in COMMAND_GROUPS.items():
        lines.append(f"{title}:")
        lines += [textwrap.fill(helps[name], 100, initial_indent=f"  {name:<18} ", subsequent_indent=" " * 21)
                  for name in names]
    parser.epilog = "\n".join(lines) + "\n\n'moma COMMAND --help' for a command's options."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub.metavar, sub.help = "COMMAND", "one of the commands below"
    sub._choices_actions.clear()
