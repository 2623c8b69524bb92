"""benchmarks/multi_corpus.sh: every command it would run parses with the CLI, its recipes resolve, and a run
whose report is committed is reproduced with the configuration that report records."""

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from moma.cli.common import load_config
from moma.cli.main import build_parser
from moma.config import config_to_dict, drop_removed_options

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "multi_corpus.sh"
SUITES = ("nemo-loso", "loco", "pool-emodb-loso")


def run_script(*argv, out):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out)}
    return subprocess.run(["bash", str(SCRIPT), *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=False)


def subset_mismatches(recorded, resolved, prefix=""):
    """Keys of the recorded config whose value the resolved one does not have (options added to the config
    after a report was made are not in its record, and keep their defaults)."""
    bad = []
    for key, value in recorded.items():
        if isinstance(value, dict):
            bad += subset_mismatches(value, resolved.get(key, {}), f"{prefix}{key}.")
        elif resolved.get(key) != value:
            bad.append(f"{prefix}{key}: {value!r} recorded, {resolved.get(key)!r} now")
    return bad


@pytest.mark.parametrize("suite", SUITES)
def test_every_variant_of_a_suite_is_a_valid_command_and_matches_its_committed_report(suite, tmp_path):
    listed = run_script(suite, "list", out=tmp_path)
    assert listed.returncode == 0, listed.stderr
    variants = listed.stdout.split()
    assert len(variants) >= 1
    done = run_script(suite, *variants, out=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    parser = build_parser()
    outs, checked = [], 0
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "moma"
        args = parser.parse_args(argv[1:])
        outs.append(args.out)
        if argv[1] != "cv":
            continue
        resolved = config_to_dict(load_config(args))  # unknown options or recipes raise here
        name = Path(args.out).name
        record = ROOT / "reports" / suite / name / "run.json"
        if record.is_file():
            # options removed since, at their "off" value in the record, are dropped (moma.config.REMOVED_OPTIONS)
            recorded = drop_removed_options(json.loads(record.read_text(encoding="utf-8"))["config"])
            assert subset_mismatches(recorded, resolved) == [], f"{name} no longer reproduces its report"
            checked += 1
    # every variant runs once, into its own folder under OUT
    for v in variants:
        assert outs.count(str(tmp_path / suite / v)) == 1, v
    assert any("compare" == shlex.split(line)[1] for line in lines)
    assert checked >= 2  # every suite's headline runs have committed reports


def test_an_unknown_suite_or_variant_is_one_line_and_exit_2(tmp_path):
    for argv in (("nowhere",), ("nemo-loso", "no-such-run")):
        done = run_script(*argv, out=tmp_path)
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1 and "unknown" in done.stderr
