"""Running one benchmark case in a fresh child process and reading its peak memory.

Why a child per case: peak memory is only meaningful per process, and a
process that has already run other cases has a high-water mark, warm caches
and thread pools from them. Why ``forkserver``: a ``spawn`` child re-imports
torch and moma (about 2.7 s each on the development machine, which would
dominate ``--quick``), whereas a forkserver that imported them once forks
children in milliseconds. A forked child inherits the server's high-water
mark (the imports), not the parent's, and each child resets its own mark at
start by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so
``VmHWM`` read at the end is the peak resident memory of that case alone,
imported libraries included. ``ru_maxrss`` is not used: it survives
fork+exec and would report an earlier process's peak.

Thread counts are set in the child before any work: torch intra-op threads,
BLAS/OpenMP pools through threadpoolctl (numpy, librosa), and onnxruntime's
through its session options (the cases pass them on).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

# Imported once by the forkserver, so that every case starts from the same baseline.
PRELOAD = ["numpy", "torch", "moma.model", "moma.data.batching", "moma.features.frontend", "moma.inference.predictor", "moma.inference.export",
           "moma.evaluation.metrics", "moma.bench.cases"]
_CONTEXT: Any = None


@dataclass
class Case:
    """One measured figure (or one group of figures measured together, interleaved)."""

    section: str
    name: str
    target: str  # "module:function" run in the child; returns a JSON-able dict
    kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    timeout_s: float = 300.0
    record: dict[str, Any] = field(default_factory=dict)  # stored with the result, not passed to the target
    unsupported: str = ""  # why this machine cannot run the case (probed); such a case is reported, not run


def read_status_kb(key: str) -> int:
    """A ``/proc/self/status`` field in kB (VmRSS, VmHWM ...); 0 where /proc is absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
        else:  # no forkserver (not Linux/macOS): spawn is slower but as fresh
            ctx = mp.get_context("spawn")
        _CONTEXT = ctx
    return _CONTEXT


def _resolve(target: str) -> Callable[..., dict[str, Any]]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _child_main(target: str, kwargs: dict[str, Any], threads: int, conn: Connection) -> None:
    """Entry point of a case's process: pin threads, reset the peak, run, report."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s (bench child): %(message)s")
    # A forkserver child inherits "forkserver" as its default start method; put back the platform's
    # default so that worker pools inside a case (extract_features) start as they do for users, as
    # children of this process (their CPU time then shows in RUSAGE_CHILDREN).
    mp.set_start_method(None, force=True)
    reset_ok = reset_peak_rss()
    start_rss = read_status_kb("VmRSS")
    t0 = time.perf_counter()
    try:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(max(1, threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process: harmless
            pass
        with threadpool_limits(limits=max(1, threads)):
            result = dict(_resolve(target)(**kwargs))
    except Exception as exc:  # reported in the results, so one failing case does not end the run
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
    peak = read_status_kb("VmHWM")
    result["memory"] = {"peak_rss_mb": round(peak / 1024.0, 1), "start_rss_mb": round(start_rss / 1024.0, 1),
                        "peak_over_start_mb": round((peak - start_rss) / 1024.0, 1),
                        "peak_reset": reset_ok}
    result["case_wall_s"] = round(time.perf_counter() - t0, 3)
    conn.send(result)
    conn.close()


def run_case(case: Case) -> dict[str, Any]:
    """Run ``case`` in a fresh child and return its result dict (``error`` set if it failed or timed out)."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(case.target, case.kwargs, case.threads, send),
                       name=f"bench-{case.section}-{case.name}")
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result: dict[str, Any]
    try:
        if receive.poll(case.timeout_s):
            result = receive.recv()
        else:
            proc.kill()
            result = {"error": f"timed out after {case.timeout_s:g} s"}
    except EOFError:  # the child died without reporting (killed, out of memory)
        proc.join(5)
        result = {"error": f"child process died (exit code {proc.exitcode})"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join()
    result.setdefault("case_wall_s", round(time.perf_counter() - t0, 3))
    if "error" in result:
        log.warning("bench case %s/%s failed: %s", case.section, case.name, result["error"])
    return result


def time_calls(fn: Callable[[], Any], *, budget_s: float, min_repeats: int = 3, max_repeats: int = 200,
               warmup: int = 1) -> dict[str, float]:
    """Wall time of ``fn`` over repeats: min (the figure least disturbed by other load), median, first call.

    Repeats until ``budget_s`` is spent and at least ``min_repeats`` ran.
    """
    first = 0.0
    for i in range(warmup):
        t = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - t
    times: list[float] = []
    spent_from = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - spent_from < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"min_s": min(times), "median_s": statistics.median(times), "repeats": len(times), "first_call_s": first}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in present]
    except OSError:
        pass
    return []


def _mem_total_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024.0 / 1024.0, 1)
    except OSError:
        pass
    return 0.0


def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # not installed, or no __version__
        return ""


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, library versions, thread defaults, load."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
        "memory_gb": _mem_total_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "onnxruntime": _version("onnxruntime"),
        "kaldi_native_fbank": _version("kaldi_native_fbank"),
        "librosa": _version("librosa"),
        "python_speech_features": _version("python_speech_features"),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "child_start_method": _context().get_start_method(),
    }
    return info
