#!/usr/bin/env python3
"""Reproduces the committed reports made with `moma cv`, `moma classical` and `moma fuse`, from recipe names.

    benchmarks/reproduce.py SUITE [RUN...]     # the suite's default runs, or the ones named
    benchmarks/reproduce.py SUITE list         # every run of the suite
    benchmarks/reproduce.py list               # the suites

A suite is benchmarks/suites/SUITE.yaml: where its report lives, the data it reads, and its runs, each a
recipe (a shipped one such as descriptors-reg-ens3-cpu, or a small file in benchmarks/recipes/ built on one with
`base:`) on a manifest and protocol, a classical anchor, or a late fusion of two runs; then the paired
comparisons of its README. Every `moma` command resumes where it stopped. Environment: EMODB, NEMO and
RAVDESS (corpus roots; default ../shared/corpora/emodb, ../local-corpora/nemo, ../local-corpora/ravdess-dev),
OUT (default runs), JOBS (folds at once, default 1), DEVICE (default cpu), DRY_RUN=1 prints the commands instead
of running them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SUITES, RECIPES = HERE / "suites", HERE / "recipes"
# runtime settings, the same for every run: one thread per fold (folds run side by side on small machines)
RUNTIME = ["--set", "train.num_threads=1", "--set", "train.tensorboard=false"]


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def recipe_arg(name: str) -> str:
    """A benchmark recipe by its path (relative to the repository, as a reader would type it), else the name."""
    local = RECIPES / f"{name}.yaml"
    return str(local.relative_to(HERE.parent)) if local.is_file() else name


def run_commands(name: str, spec: dict, suite: dict, out: str) -> list[list[str]]:
    """The moma commands of one run (one per seed for a seeded run)."""
    folder = f"{out}/{suite['report']}"
    if "fuse" in spec:
        return [["fuse", *(source(s, folder) for s in spec["fuse"]), "--out", f"{folder}/{name}"]]
    on = shlex.split(suite["data"][spec["data"]].format(OUT=out))
    if "classical" in spec:
        return [["classical", *on, "--feature-sets", *spec["classical"], "--normalisations",
                 *spec.get("normalisations", ["global"]), "--jobs", env("JOBS", "1"), "-q", "--out", f"{folder}/{name}"]]
    commands = []
    for seed in spec.get("seeds", [0]):
        suffix, seeded = ("", []) if seed == 0 else (f"-seed{seed}", ["--set", f"train.seed={seed}"])
        commands.append(["cv", *on, "--config", recipe_arg(spec["recipe"]), *seeded, *RUNTIME,
                         "--set", f"train.device={env('DEVICE', 'cpu')}", "--jobs", env("JOBS", "1"), "-q",
                         "--out", f"{folder}/{name}{suffix}"])
    return commands


def source(item: str, folder: str) -> str:
    """A run of the suite (its folder) or an anchor's table (``classical-x#FeatureSet/normalisation``)."""
    run, _, table = item.partition("#")
    return f"{folder}/{run}/report.json#{table}" if table else f"{folder}/{run}"


def comparison_commands(suite: dict, out: str, done) -> list[list[str]]:
    folder = f"{out}/{suite['report']}"
    commands = []
    for name, spec in (suite.get("comparisons") or {}).items():
        spec = spec if isinstance(spec, dict) else {"runs": spec}
        present = [r for r in spec["runs"] if done(r.partition("#")[0])]
        if len(present) >= 2 and present[0] == spec["runs"][0]:  # the reference and at least one other
            unit = ["--unit", spec["unit"]] if "unit" in spec else []
            commands.append(["compare", *(source(r, folder) for r in present), *unit,
                             "--out", f"{folder}/comparisons/{name}"])
    return commands


def manifest_commands(runs: list[list[str]], out: str) -> list[list[str]]:
    """prepare / pool commands for the manifests the selected runs read (each corpus once, pools from them)."""
    reads = {a for cmd in runs for a in cmd if a.endswith(".jsonl")}
    need = lambda f: f"{out}/{f}" in reads and not Path(out, f).is_file()  # noqa: E731
    pooled = need("pool.jsonl") or need("pool-shared.jsonl")
    with_ravdess = need("pool-emodb-ravdess.jsonl")
    commands = []
    if need("emodb.jsonl") or pooled or with_ravdess:
        commands.append(["prepare", "emodb", "--root", env("EMODB", "../shared/corpora/emodb"), "--out", f"{out}/emodb.jsonl"])
    if need("nemo.jsonl") or pooled:
        commands.append(["prepare", "nemo", "--root", env("NEMO", "../local-corpora/nemo"), "--out", f"{out}/nemo.jsonl"])
    if need("ravdess-dev.jsonl") or with_ravdess:  # actors 01-16 only: ../shared/corpora/README.md says how to extract them
        commands.append(["prepare", "ravdess", "--root", env("RAVDESS", "../local-corpora/ravdess-dev"),
                         "--out", f"{out}/ravdess-dev.jsonl"])
    for pool, labels in (("pool.jsonl", []), ("pool-shared.jsonl", ["--labels", "shared"])):
        if need(pool):
            commands.append(["pool", f"{out}/emodb.jsonl", f"{out}/nemo.jsonl", *labels, "--out", f"{out}/{pool}"])
    if with_ravdess:
        commands.append(["pool", f"{out}/emodb.jsonl", f"{out}/ravdess-dev.jsonl", "--labels", "shared",
                         "--out", f"{out}/pool-emodb-ravdess.jsonl"])
    return commands


def main(argv: list[str]) -> int:
    known = sorted(p.stem for p in SUITES.glob("*.yaml"))
    if not argv or argv[0] == "list":
        print("\n".join(known))
        return 0
    if argv[0] not in known:
        print(f"unknown suite {argv[0]}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    suite = yaml.safe_load((SUITES / f"{argv[0]}.yaml").read_text(encoding="utf-8"))
    if argv[1:] == ["list"]:
        print("\n".join(suite["runs"]))
        return 0
    selected = argv[1:] or suite["default"]
    unknown = [n for n in selected if n not in suite["runs"]]
    if unknown:
        print(f"unknown {argv[0]} run {unknown[0]}; known: {', '.join(suite['runs'])}", file=sys.stderr)
        return 2
    out, dry = env("OUT", "runs"), env("DRY_RUN", "0") == "1"
    runs = [c for n in selected for c in run_commands(n, suite["runs"][n], suite, out)]
    done = lambda r: dry or Path(out, suite["report"], r, "report.json").is_file()  # noqa: E731
    for cmd in manifest_commands(runs, out) + runs:
        execute(cmd, dry)
    for cmd in comparison_commands(suite, out, done):  # over what exists once the runs are done
        execute(cmd, dry)
    return 0


def execute(cmd: list[str], dry: bool) -> None:
    if dry:
        print("moma " + shlex.join(cmd))
    else:
        subprocess.run(["moma", *cmd], check=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
