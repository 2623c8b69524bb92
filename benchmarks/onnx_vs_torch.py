"""ONNX Runtime against PyTorch, side by side: batch 1, one CPU thread, the paper-size model.

    python benchmarks/onnx_vs_torch.py [--checkpoint CKPT] [--seconds 2 5 10] [--repeats 20]

Without --checkpoint the paper's architecture (10.6 M parameters) is built with untrained
weights: speed does not depend on the weights' values. Inputs are random features of the
given durations (10 ms frames), identical for both backends; features are not timed (both
backends share the same filterbank code). Prints one line per duration with the median and
95th percentile latency, and the max |logit difference|.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    from moma.checkpoint import save_checkpoint
    from moma.config import RunConfig, replace
    from moma.inference.export import export_onnx
    from moma.features.normalise import Normaliser
    from moma.inference.predictor import Predictor
    from moma.model import build_model

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            cfg = RunConfig()
            cfg = replace(cfg, model=replace(cfg.model, num_classes=7))
            torch.manual_seed(0)
            ckpt = save_checkpoint(Path(tmp) / "paper.safetensors", build_model(cfg.model), cfg,
                                   [f"c{i}" for i in range(7)], Normaliser("none"))
        export_onnx(ckpt, Path(tmp) / "onnx")
        torch_p = Predictor.from_checkpoint(ckpt)
        onnx_p = Predictor.from_checkpoint(Path(tmp) / "onnx", backend="onnx", num_threads=1)
        dim = torch_p.config.model.input_dim
        rng = np.random.default_rng(0)
        results = []
        for seconds in args.seconds:
            feats = rng.normal(size=(int(seconds * 100), dim)).astype(np.float32)
            row = {"seconds": seconds, "frames": feats.shape[0]}
            for name, pred in (("torch", torch_p), ("onnx", onnx_p)):
                pred.predict_features(feats)  # warm-up (allocations, ORT graph preparation)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    pred.predict_features(feats)
                    times.append((time.perf_counter() - t0) * 1000)
                times.sort()
                row[f"{name}_p50_ms"] = round(statistics.median(times), 2)
                row[f"{name}_p95_ms"] = round(times[int(0.95 * (len(times) - 1))], 2)
            diff = np.abs(torch_p.predict_features(feats).logits - onnx_p.predict_features(feats).logits).max()
            row["max_abs_logit_diff"] = float(diff)
            row["speedup_onnx_over_torch"] = round(row["torch_p50_ms"] / row["onnx_p50_ms"], 2)
            results.append(row)
            print(f"{seconds:5.1f} s ({row['frames']} frames): torch p50 {row['torch_p50_ms']:8.2f} ms "
                  f"p95 {row['torch_p95_ms']:8.2f} | onnx p50 {row['onnx_p50_ms']:8.2f} ms "
                  f"p95 {row['onnx_p95_ms']:8.2f} | speed-up x{row['speedup_onnx_over_torch']:.2f} "
                  f"| max |dlogit| {diff:.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
