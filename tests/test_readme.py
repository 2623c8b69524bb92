"""README.md is the users' front door: short, predicting on one's own file within its first screen, its two set-up
commands the ones CI runs, and every recipe, report and command it names real."""

import re
from pathlib import Path

from moma.cli.main import build_parser
from moma.recipes import available_recipes

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_short_and_shows_prediction_on_the_first_screen():
    lines = README.splitlines()
    assert len(lines) <= 160
    assert any(line.startswith("moma predict ") for line in lines[:40])


def test_the_test_command_is_the_one_ci_runs():
    test_line = README.splitlines()[4]
    assert test_line.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_line.replace("pip install ", "pip install -q ") in ci


def test_every_recipe_report_and_command_named_exists():
    for name in set(re.findall(r"`([a-z0-9-]+-cpu|cpu|paper)`", README)):
        assert name in available_recipes(), name
    for link in re.findall(r"\]\(((?:reports|docs|src)/[^)#]+)\)", README):
        assert (ROOT / link).exists(), link
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in re.findall(r"^moma (\S+)", README, flags=re.M):
        assert command in commands, command
    for suite, run in re.findall(r"benchmarks/reproduce.py ([a-z-]+) ([a-z0-9-]+)`", README):
        text = (ROOT / "benchmarks" / "suites" / f"{suite}.yaml").read_text(encoding="utf-8")
        assert re.search(rf"^  {re.escape(run)}:", text, flags=re.M), (suite, run)
