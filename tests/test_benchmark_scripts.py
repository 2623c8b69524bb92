"""benchmarks/reproduce.py: every command it would run parses with the CLI, its recipes resolve, and a run whose
report is committed is reproduced with the configuration that report records."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from moma.cli.common import load_config
from moma.cli.main import build_parser
from moma.config import RUNTIME_KEYS, config_to_dict

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reproduce.py"
SUITES = sorted(p.stem for p in (ROOT / "benchmarks" / "suites").glob("*.yaml"))


def run_script(*argv, out):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out)}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=False)


def subset_mismatches(recorded, resolved, prefix=""):
    """Keys of the recorded config whose value the resolved one does not have. Runtime settings change no result;
    options added after a report was made are not in its record and keep their defaults; options removed since
    (measured not to help) are not in the config any more, and the loader refuses them at any other value."""
    bad = []
    for key, value in recorded.items():
        if f"{prefix}{key}" in RUNTIME_KEYS or key not in resolved:
            continue
        if isinstance(value, dict):
            bad += subset_mismatches(value, resolved[key], f"{prefix}{key}.")
        elif resolved[key] != value:
            bad.append(f"{prefix}{key}: {value!r} recorded, {resolved[key]!r} now")
    return bad


@pytest.mark.parametrize("suite", SUITES)
def test_every_run_of_a_suite_is_a_valid_command_and_matches_its_committed_report(suite, tmp_path):
    listed = run_script(suite, "list", out=tmp_path)
    assert listed.returncode == 0, listed.stderr
    runs = listed.stdout.split()
    done = run_script(suite, *runs, out=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    parser = build_parser()
    outs, checked = [], 0
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "moma"
        args = parser.parse_args(argv[1:])
        outs.append(Path(args.out).name)
        if argv[1] != "cv":
            continue
        assert sum(a == "--set" for a in argv) <= 4  # runtime settings and a seed; the recipe says the rest
        resolved = config_to_dict(load_config(args))  # unknown options or recipes raise here
        report = Path(args.out).relative_to(tmp_path)
        record = ROOT / "reports" / report / "run.json"
        if record.is_file():
            recorded = json.loads(record.read_text(encoding="utf-8"))["config"]
            assert subset_mismatches(recorded, resolved) == [], f"{report} no longer reproduces its report"
            checked += 1
    for run in runs:  # every run once (a seeded one once per seed), into its own folder
        assert outs.count(run) == 1, run
    assert any(shlex.split(line)[1] == "compare" for line in lines)
    assert checked >= 1  # every suite's headline MOMA runs have committed reports


def test_an_unknown_suite_or_run_is_one_line_and_exit_2(tmp_path):
    for argv in (("nowhere",), ("nemo-loso", "no-such-run")):
        done = run_script(*argv, out=tmp_path)
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1 and "unknown" in done.stderr


def test_every_benchmark_recipe_is_used_by_a_suite():
    import yaml

    used = {spec.get("recipe") for s in SUITES
            for spec in yaml.safe_load((ROOT / "benchmarks" / "suites" / f"{s}.yaml").read_text())["runs"].values()}
    files = {p.stem for p in (ROOT / "benchmarks" / "recipes").glob("*.yaml")}
    assert files - used == set()


def test_every_reproduce_line_in_the_reports_and_docs_names_a_real_run():
    import re

    import yaml

    suites = {s: yaml.safe_load((ROOT / "benchmarks" / "suites" / f"{s}.yaml").read_text())["runs"] for s in SUITES}
    for page in [*ROOT.glob("reports/*/README.md"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]:
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")
        for suite, names in re.findall(r"benchmarks/reproduce.py ([a-z-]+)((?: [a-z0-9-]+)*)", text):
            assert suite in suites or suite in ("list", "suite"), (page.name, suite)
            unknown = [n for n in names.split() if suite in suites and n not in suites[suite] and n != "list"]
            assert not unknown, (str(page.relative_to(ROOT)), suite, unknown)
