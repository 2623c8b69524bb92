"""Load test of the HTTP service on loopback: N requests at concurrency C, latency percentiles,
errors and the server's peak memory.

    python benchmarks/serve_load.py [--checkpoint CKPT] [--audio FILE] [--requests 500] [--concurrency 16]
                                    [--workers 2] [--backend torch|onnx]

The server runs in a child process (uvicorn, the app of ``moma serve``); its RSS (children included) is
sampled every 50 ms with psutil. Without --checkpoint the paper-size architecture (10.6 M parameters,
untrained weights: speed does not depend on their values) is used. Without --audio the first EmoDB file is
used when present, else a generated 2.5 s signal.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SERVER = """
import sys, torch, uvicorn
from moma.inference.predictor import Predictor
from moma.serving.app import ServiceSettings, create_app
torch.set_num_threads(int(sys.argv[4]))
p = Predictor.from_checkpoint(sys.argv[1], backend=sys.argv[5], num_threads=int(sys.argv[4]))
uvicorn.run(create_app(p, ServiceSettings(workers=int(sys.argv[3]))), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""


def paper_checkpoint(folder: Path) -> Path:
    import torch

    from moma.checkpoint import save_checkpoint
    from moma.config import RunConfig, replace
    from moma.features.normalise import Normaliser
    from moma.model import build_model

    cfg = RunConfig()
    cfg = replace(cfg, model=replace(cfg.model, num_classes=7))
    torch.manual_seed(0)
    return save_checkpoint(folder / "paper.safetensors", build_model(cfg.model), cfg,
                           ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"],
                           Normaliser("none"))


def default_audio() -> tuple[bytes, str]:
    root = Path(os.environ.get("MOMA_EMODB") or Path(__file__).resolve().parents[2] / "shared/corpora/emodb")
    real = root / "wav" / "03a01Fa.wav"
    if real.is_file():
        return real.read_bytes(), real.name
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, (np.random.default_rng(0).normal(size=40000) * 0.1).astype(np.float32), 16000, format="WAV")
    return buf.getvalue(), "generated.wav"


async def load(url: str, data: bytes, name: str, requests: int, concurrency: int) -> tuple[list[float], dict]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/predict", files={"file": (name, data, "audio/wav")})
                    key: int | str = r.status_code
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--audio", default=None)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per inference")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or str(paper_checkpoint(Path(tmp)))
        data, name = (Path(args.audio).read_bytes(), Path(args.audio).name) if args.audio else default_audio()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", SERVER, ckpt, str(port), str(args.workers),
                                 str(args.threads), args.backend])
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            ps = psutil.Process(proc.pid)
            idle_rss = ps.memory_info().rss
            peak = [idle_rss]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    try:
                        peak[0] = max(peak[0], ps.memory_info().rss)
                    except psutil.Error:
                        return
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            latencies, statuses = asyncio.run(load(url, data, name, args.requests, args.concurrency))
            wall = time.perf_counter() - t0
            done.set()
            sampler.join()
        finally:
            proc.terminate()
            proc.wait(30)
    latencies.sort()
    errors = sum(n for k, n in statuses.items() if k != 200)
    result = {"requests": args.requests, "concurrency": args.concurrency, "workers": args.workers,
              "backend": args.backend, "audio": name, "audio_bytes": len(data), "statuses": statuses,
              "errors": errors, "p50_ms": round(statistics.median(latencies), 1),
              "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
              "max_ms": round(latencies[-1], 1), "throughput_rps": round(args.requests / wall, 2),
              "server_rss_idle_mib": round(idle_rss / 2**20), "server_rss_peak_mib": round(peak[0] / 2**20)}
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
