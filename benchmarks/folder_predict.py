"""Folder prediction end to end: ``moma predict FOLDER --out x.csv`` on 1,000 three-second files, process start
included, with the default bundled model and with a ``moma combine`` ensemble of two bundled models; on the
cores as they are ("idle") and beside one busy process (``python -c "while True: pass"``).

    python benchmarks/folder_predict.py [--files 1000] [--seconds 3.0] [--busy 0 1] [--models default ensemble]
                                        [--grid] [--workdir DIR] [--out reports/bench-cpu]

The folder is made from EmoDB (``$MOMA_EMODB`` or ``../shared/corpora/emodb``): file i is utterance i mod 535,
looped to exactly ``--seconds`` from an offset of 0.5 s per pass over the corpus, written as 16 kHz 16-bit WAV
into a temporary folder outside the repository (``--workdir`` keeps it for reuse). Without EmoDB the script
says so in one line and exits 0.

Each row runs the command in a fresh process with the CLI's defaults (``--threads``, ``--jobs``) and checks that
the CSV has one ``ok`` row per file. Wall time is the whole command; CPU time is user + system of the command
and its workers (``RUSAGE_CHILDREN``). The load average before each row is recorded: on a shared machine the
figures are only as good as the cores were free.

``--grid`` adds the measurements behind the thread and job defaults (``moma.capabilities.INFERENCE_THREADS``,
and ``--jobs`` = ``moma.capabilities.usable_cores``): ``moma predict`` over the first ``--grid-files`` files with ``--jobs 1`` at ``--threads 1``,
``2`` and ``0`` (torch's own default), ``--jobs 1, 2, 3`` at one thread, and ``moma timeline`` on a 192 s
recording of EmoDB utterances (0.4 s apart) at ``--threads 1, 2, 0``; each idle and beside a busy process.
A run without ``--grid`` keeps the grid of the last run that made one (with its own date and command).

Writes ``folder_predict.json`` and the section "Folder prediction" of ``README.md`` in ``--out`` (the rest of
that README is ``moma bench``'s, which keeps this section when it rewrites the file).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from moma.bench.report import replace_section

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
TARGETS = {0: 40.0, 1: 80.0}  # s for 1,000 files of 3 s with the default model: idle, beside one busy process
SECTION = "folder-predict"
ENSEMBLE_MEMBERS = ("emodb-nemo-egemaps-8class", "emodb-nemo-8class")
TIMELINE_S = 192.0  # the recording of the issue: 3 min 12 s of speech


def emodb_root() -> Path:
    return Path(os.environ.get("MOMA_EMODB") or ROOT.parent / "shared" / "corpora" / "emodb")


def make_folder(folder: Path, files: int, seconds: float) -> None:
    """``files`` WAV files of exactly ``seconds`` each, cut from EmoDB's utterances (looped when shorter)."""
    import soundfile as sf

    sources = sorted((emodb_root() / "wav").glob("*.wav"))
    folder.mkdir(parents=True, exist_ok=True)
    length = round(seconds * SR)
    for i in range(files):
        out = folder / f"{i:05d}.wav"
        if out.is_file():
            continue
        x, sr = sf.read(sources[i % len(sources)], dtype="float32")
        assert sr == SR, f"{sources[i % len(sources)]}: {sr} Hz"
        offset = (SR // 2 * (i // len(sources))) % x.shape[0]
        looped = np.tile(x, (offset + length) // x.shape[0] + 2)[offset:offset + length]
        sf.write(out, looped, SR, subtype="PCM_16")


def make_recording(path: Path, seconds: float) -> None:
    """A long recording for the timeline: every 7th EmoDB utterance, 0.4 s of silence after each."""
    import soundfile as sf

    if path.is_file():
        return
    parts, total = [], 0
    for src in sorted((emodb_root() / "wav").glob("*.wav"))[::7]:
        x, _ = sf.read(src, dtype="float32")
        parts += [x, np.zeros(int(0.4 * SR), np.float32)]
        total += x.shape[0] + int(0.4 * SR)
        if total >= seconds * SR:
            break
    sf.write(path, np.concatenate(parts)[:int(seconds * SR)], SR, subtype="PCM_16")


@contextmanager
def busy(n: int):
    """``n`` processes that each keep one core busy for the duration."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0.0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run(argv: list[str], busy_n: int, shown: str) -> dict:
    """One command in a fresh process: wall s, CPU s of it and its children, load average before, exit status.
    ``shown`` is the command as the report prints it (temporary paths named by what they are)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH"))
                                                       if p)}
    with busy(busy_n):
        load = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "moma", *argv], env=env, capture_output=True, text=True,
                              check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the busy processes are reaped after this
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return {"command": shown, "busy": busy_n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "load_before": [round(v, 2) for v in load], "returncode": done.returncode}


def check_csv(path: Path, files: int) -> dict:
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    statuses = Counter(r["status"] or "failed" for r in rows)
    return {"rows": len(rows), "statuses": dict(statuses), "complete": len(rows) == files}


def folder_rows(args, folder: Path, work: Path) -> list[dict]:
    models = {"default": ([], "")}
    if "ensemble" in args.models:
        ens = work / "ensemble.safetensors"
        made = run(["combine", *ENSEMBLE_MEMBERS, "--out", str(ens)], 0, "")
        if made["returncode"] != 0:
            raise SystemExit("folder_predict: moma combine failed")
        models["ensemble"] = (["--checkpoint", str(ens)], " --checkpoint ens.safetensors")
    rows = []
    for _ in range(args.repeat):
        for model in args.models:
            for busy_n in args.busy:
                out = work / f"{model}-busy{busy_n}.csv"
                flags, shown = models[model]
                row = run(["predict", str(folder), *flags, "--out", str(out)], busy_n,
                          f"moma predict FOLDER{shown} --out x.csv")
                row.update(model=model, files=args.files, seconds=args.seconds, **check_csv(out, args.files))
                row["files_per_s"] = round(args.files / row["wall_s"], 1)
                if model == "default" and args.files == 1000 and args.seconds == 3.0:
                    row["target_s"] = TARGETS[busy_n]
                print(f"{model:>8} busy {busy_n}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU, load "
                      f"before {row['load_before'][0]:.2f}; {row['rows']} rows {row['statuses']}", file=sys.stderr)
                rows.append(row)
    return rows


def grid_rows(args, folder: Path, work: Path) -> list[dict]:
    """The evidence for the thread and job defaults: threads x busy for predict and timeline, jobs x busy;
    each setting's idle and busy runs back to back, so that they see the same background load."""
    sub = work / f"grid-{args.grid_files}"
    if not sub.is_dir():
        sub.mkdir()
        for p in sorted(folder.glob("*.wav"))[:args.grid_files]:
            os.link(p, sub / p.name)
    recording = work / "timeline-192s.wav"
    make_recording(recording, TIMELINE_S)
    plan = [("predict", ["--jobs", "1", "--threads", str(t)], f"--jobs 1 --threads {t}") for t in (1, 2, 0)]
    plan += [("predict", ["--jobs", str(j), "--threads", "1"], f"--jobs {j} --threads 1") for j in (2, 3)]
    plan += [("timeline", ["--threads", str(t)], f"--threads {t}") for t in (1, 2, 0)]
    rows = []
    for _ in range(args.repeat):
        for command, flags, setting in plan:
            for busy_n in args.busy:
                out = work / f"grid-{command}.csv"
                target, shown = ([str(sub)], "FOLDER") if command == "predict" else ([str(recording), "-q"],
                                                                                        "RECORDING -q")
                row = run([command, *target, *flags, "--out", str(out)], busy_n,
                          f"moma {command} {shown} {setting} --out x.csv")
                row.update(case=command, setting=setting, digest=_digest(out))
                print(f"grid {command} {setting} busy {busy_n}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s "
                      f"CPU, load before {row['load_before'][0]:.2f}", file=sys.stderr)
                rows.append(row)
    return rows


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()[:10] if path.is_file() else ""


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable, "python": platform.python_version(),
            "torch": torch.__version__, "torch_default_threads": torch.get_num_threads()}


def render(results: dict) -> str:
    m = results["machine"]
    intro = (f"Made {results['created']} by `{results['command']}` on {m['cpu']} ({m['usable_cores']} usable of "
             f"{m['logical_cores']} logical cores), torch {m['torch']}, Python {m['python']}. Every row is one "
             "command in a fresh process (start, imports and model load included) with the CLI's defaults "
             f"(`--jobs` = the usable cores, `--threads 1`); {results['files']} WAV files of "
             f"{results['seconds']:g} s cut from EmoDB utterances (looped where shorter); CPU s is the command's and "
             "its workers' user + system time; load is the 1-minute load average just before the row (busy "
             "processes included). \"busy 1\": one `python -c \"while True: pass\"` beside it. The ensemble is "
             f"`moma combine {' '.join(ENSEMBLE_MEMBERS)}`.")
    lines = ["## Folder prediction", "", intro, ""]
    lines += ["| model | busy | wall s | files/s | CPU s | load before | rows ok | target | reached |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        target = f"< {r['target_s']:g} s" if "target_s" in r else ""
        reached = ("yes" if r["wall_s"] < r["target_s"] else "**no**") if "target_s" in r else ""
        lines.append(f"| {r['model']} | {r['busy']} | {r['wall_s']:.1f} | {r['files_per_s']:.1f} | {r['cpu_s']:.1f} "
                     f"| {r['load_before'][0]:.2f} | {r['statuses'].get('ok', 0)} of {r['rows']} | {target} "
                     f"| {reached} |")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in results["rows"]))
              + "."]
    if results.get("grid"):
        about = (f"Made {results.get('grid_created', results['created'])} by "
                 f"`{results.get('grid_command', results['command'])}`: "
                 f"`moma predict` over the first {results['grid_files']} of these files and `moma timeline` over a "
                 f"{TIMELINE_S:g} s recording (every 7th EmoDB utterance, 0.4 s apart), default model. "
                 "`--threads 0` is torch's and onnxruntime's own default (one thread per core). Rows with the same "
                 "output digest wrote the same file (labels and probabilities).")
        lines += ["", "### Threads and jobs", "", about, "",
                  "| command | busy | wall s | CPU s | load before | output digest |", "|---|---|---|---|---|---|"]
        for r in results["grid"]:
            lines.append(f"| `{r['command']}` | {r['busy']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                         f"{r['load_before'][0]:.2f} | {r['digest']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="busy processes beside each row")
    parser.add_argument("--models", nargs="+", choices=["default", "ensemble"], default=["default", "ensemble"])
    parser.add_argument("--grid", action="store_true", help="also the thread and job grid behind the defaults")
    parser.add_argument("--grid-files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1, help="run every row this many times (interleaved)")
    parser.add_argument("--workdir", default=None, help="keep the generated audio here (default: a temp folder)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench-cpu"))
    args = parser.parse_args()
    if not (emodb_root() / "wav").is_dir():
        print(f"folder_predict: skipped: no EmoDB at {emodb_root()} (set MOMA_EMODB to its folder)")
        return 0
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="moma-folder-predict-"))
    try:
        folder = work / f"files-{args.files}x{args.seconds:g}s"
        make_folder(folder, args.files, args.seconds)
        results = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "files": args.files,
                   "seconds": args.seconds, "command": shlex.join(["python", "benchmarks/folder_predict.py",
                                                                   *sys.argv[1:]]),
                   "rows": folder_rows(args, folder, work)}
        if args.grid:
            results.update(grid_files=args.grid_files, grid=grid_rows(args, folder, work),
                           grid_created=results["created"], grid_command=results["command"])
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "folder_predict.json"
    if not args.grid and earlier.is_file():  # the grid of the last run that made one stays in the report
        last = json.loads(earlier.read_text(encoding="utf-8"))
        results.update({k: last[k] for k in ("grid", "grid_files", "grid_created", "grid_command") if k in last})
    (out / "folder_predict.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    readme = replace_section(out / "README.md", SECTION, render(results))
    print(f"wrote {out / 'folder_predict.json'} and the section of {readme}")
    failed = [r["command"] for r in results["rows"] + results.get("grid", []) if r["returncode"] != 0]
    missed = [r for r in results["rows"] if "target_s" in r and r["wall_s"] >= r["target_s"]]
    for r in missed:
        print(f"target missed: {r['model']} busy {r['busy']}: {r['wall_s']:.1f} s >= {r['target_s']:g} s "
              f"(load before {r['load_before'][0]:.2f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
