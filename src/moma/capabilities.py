"""What this machine and this install can do, probed rather than assumed.

Two kinds of question come up everywhere in the pipeline:

- **Optional extras.** ``moma serve`` needs FastAPI, ``moma export`` needs
  onnx, ``features.lld`` needs openSMILE. :func:`require_extra` imports such a
  module or raises :class:`MissingExtraError`, whose message names the package
  and the ``pip install 'moma-ser[EXTRA]'`` line that fixes it. The CLI turns it
  into one line and exit code 2, like every other user error.
- **Hardware capabilities.** oneDNN has no bf16 LSTM kernel on CPUs without
  AVX-512 BF16 or AMX (most laptops, many servers): ``torch.autocast(bfloat16)``
  around an ``nn.LSTM`` then raises deep inside torch. :func:`bf16_unsupported_reason`
  runs a tiny LSTM forward and backward under autocast once per process and
  device type and caches the answer; :func:`check_bf16` turns a "no" into
  :class:`UnsupportedHardwareError` before any work starts. The same is done for
  int8 dynamic quantisation (a quantised engine must exist) and for CUDA itself.

Both error classes are subclasses of the exceptions callers already catch
(``ImportError``, ``RuntimeError``), so library users can handle them as before.

It also holds the inference thread policy (:data:`INFERENCE_THREADS`, :func:`set_inference_threads`) and the
number of cores this process may use (:func:`usable_cores`), which sets the default of ``moma predict --jobs``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)

__all__ = [
    "INFERENCE_THREADS",
    "MissingExtraError",
    "UnsupportedHardwareError",
    "bf16_unsupported_reason",
    "check_bf16",
    "check_cuda",
    "inference_threads",
    "int8_unsupported_reason",
    "require_extra",
    "set_inference_threads",
    "usable_cores",
]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class UnsupportedHardwareError(RuntimeError):
    """This machine cannot run what was asked (bf16 LSTM, int8, CUDA); the message says what to do instead."""


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra``.

    ``purpose`` completes the sentence "<purpose> needs ..." (e.g. ``"moma serve"``).
    Only a missing ``module`` (or one of its parents) becomes that error: a
    module that is installed but fails inside its own imports keeps its traceback,
    because that is a broken install, not a missing extra.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not module.startswith(exc.name) and not exc.name.startswith(module):
            raise
        raise MissingExtraError(
            f"{purpose} needs the optional package '{module.split('.')[0]}', which is not installed: "
            f"pip install 'moma-ser[{extra}]'"
        ) from None


@functools.lru_cache(maxsize=None)  # one probe per process and device type: the answer cannot change
def bf16_unsupported_reason(device_type: str = "cpu") -> str | None:
    """``None`` when an LSTM trains under bf16 autocast on ``device_type``; else why not, in one sentence."""
    import torch

    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if not torch.cuda.is_bf16_supported():
            return f"the GPU ({torch.cuda.get_device_name()}) has no bf16 support"
    elif device_type != "cpu":
        return f"bf16 autocast is not probed for device type {device_type!r}"
    # A 2-step sequence through the same module kinds the models use (nn.LSTM + nn.Linear),
    # forward and backward: oneDNN fails at primitive creation, so a tiny input is enough.
    with torch.random.fork_rng(devices=[]):  # the probe must not move the caller's random stream
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(4, 4, batch_first=True).to(device_type)
        x = torch.randn(1, 2, 4, device=device_type, requires_grad=True)
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out, _ = lstm(x)
        out.float().sum().backward()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.debug("bf16 autocast probe failed on %s: %s", device_type, first)
        if device_type == "cpu":
            return ("this CPU has no bf16 LSTM kernel (oneDNN needs AVX-512 BF16 or AMX; "
                    f"torch says: {first[:120]})")
        return f"bf16 LSTM failed on {device_type}: {first[:160]}"
    return None


def check_bf16(device_type: str, what: str) -> None:
    """Raise :class:`UnsupportedHardwareError` before ``what`` starts if bf16 autocast cannot run here."""
    reason = bf16_unsupported_reason(device_type)
    if reason is not None:
        raise UnsupportedHardwareError(f"{what} with bf16 is not supported here: {reason}; "
                                       "use fp32 (train.bf16=false) on this machine")


@functools.lru_cache(maxsize=None)
def int8_unsupported_reason() -> str | None:
    """``None`` when PyTorch dynamic int8 quantisation can run on this CPU build; else why not."""
    import torch

    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return "this PyTorch build has no quantised CPU engine (fbgemm, x86, onednn or qnnpack)"
    return None


def check_cuda(name: str) -> None:
    """Raise :class:`UnsupportedHardwareError` when device ``name`` asks for CUDA that this machine lacks."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedHardwareError(f"device {name!r} requested but CUDA is not available on this machine "
                                       "(no GPU, or a CPU-only torch build); use --device cpu / train.device=cpu")


# --------------------------------------------------------------------------- inference threads

# Threads per inference process (torch intra-op and onnxruntime sessions: `moma predict/timeline/serve --threads`,
# Predictor.from_checkpoint's num_threads). One, by measurement (benchmarks/folder_predict.py --grid;
# reports/bench-cpu/README.md, "Threads and jobs"; 2-core AMD EPYC VM, load average 4-6 from other jobs, the
# default model, same output at every count): `moma predict` of 200 three-second files in one process took
# 21.5 s with 1 thread, 59.8 s with 2 and 114.7 s with torch's and onnxruntime's defaults (43.7 / 116.7 / 167.2 s
# beside one busy process); `moma timeline` of 192 s took 23.2 / 96.2 / 189.9 s (49.1 / 181.0 / 134.9 s busy).
# More threads only spin: CPU time rose from 20 s to 58 and 111 s. The model is small and most of a file's time
# is single-threaded (openSMILE's functionals), so more cores are used by more processes (`moma predict --jobs`,
# default usable_cores(): 2 jobs took 22.1 / 33.0 s where 1 took 21.5 / 43.7 s, 3 jobs 22.1 / 31.0 s).
INFERENCE_THREADS = 1
_threads = INFERENCE_THREADS  # the count this process was last set to (0: the libraries' own defaults)


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (a container's or taskset's limit), else
    ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def inference_threads() -> int:
    """Threads an inference session of this process should use (0: the library's own default)."""
    return _threads


def set_inference_threads(threads: int | None = None) -> int:
    """Apply the thread policy to this process and return the count: ``None`` means :data:`INFERENCE_THREADS`,
    0 leaves torch's and onnxruntime's own defaults (torch's is one per physical core), n sets n. torch's
    count is process-wide; onnxruntime sessions created afterwards read :func:`inference_threads`."""
    global _threads
    threads = INFERENCE_THREADS if threads is None else int(threads)
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: the libraries' defaults), got {threads}")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    _threads = threads
    return threads
