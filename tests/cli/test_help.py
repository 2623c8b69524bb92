"""`moma --help`: the everyday commands first, the research ones in their own group; one normalisation vocabulary."""

import pytest

from moma.cli.common import COMMAND_GROUPS
from moma.cli.main import build_parser


def test_help_lists_every_command_once_everyday_ones_first(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    names = [c for group in COMMAND_GROUPS.values() for c in group]
    positions = [text.index(f"\n  {name} ") for name in names]
    assert positions == sorted(positions)  # in the groups' order: predict first, research last
    assert text.index("use a model:") < text.index("predict") < text.index("research:") < text.index("  compare ")
    assert len(names) == len(set(names))


def test_adapt_speaks_the_normalisation_vocabulary_and_accepts_the_old_spelling(capsys):
    parser = build_parser()
    args = parser.parse_args(["evaluate", "m.safetensors", "--manifest", "x.jsonl", "--out", "o"])
    assert args.adapt == "global"
    args = parser.parse_args(["evaluate", "m.safetensors", "--manifest", "x.jsonl", "--out", "o", "--adapt", "none"])
    assert args.adapt == "global" and "now spelled --adapt global" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "m", "--manifest", "x", "--out", "o", "--adapt", "corpus"])


def test_predict_speaks_the_same_adapt_vocabulary():
    parser = build_parser()
    assert parser.parse_args(["predict", "a.wav"]).adapt == "global"
    assert parser.parse_args(["predict", "a.wav", "--adapt", "batch"]).adapt == "batch"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "a.wav", "--adapt", "speaker"])  # needs speaker labels predict does not have
