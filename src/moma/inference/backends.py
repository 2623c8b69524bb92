"""What runs the model for a :class:`~moma.inference.predictor.Predictor`: PyTorch (float32, bf16 autocast,
dynamic int8) or onnxruntime on an exported graph. Every backend maps padded features and their lengths to
logits and attention arrays, so the Predictor around it does not care which one it has; the Predictor turns the
logits into probabilities with :func:`moma.evaluation.posteriors.class_posteriors`, as every other path does."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from moma.capabilities import check_bf16, require_extra
from moma.evaluation.posteriors import run_torch


class Backend(Protocol):
    """What a :class:`Predictor` runs: padded features in, logits and attention out (numpy)."""

    name: str

    def run(self, features: np.ndarray, lengths: np.ndarray, functionals: np.ndarray | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """features (B, T, F) float32, lengths (B,) int64 [, functionals (B, D_f) float32 for a fusion model]
        -> logits (B, C), attention arrays with a batch axis (``gammas`` has none)."""
        ...


class TorchBackend:
    """A checkpoint's PyTorch model.

    ``autocast`` (e.g. ``torch.bfloat16``) runs the forward pass under
    autocast, as training with ``train.bf16`` does; ``moma bench`` uses it to
    measure bf16 inference. ``name`` is what a Predictor reports.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", *, name: str = "torch",
                 autocast: torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        self.name = name
        if autocast == torch.bfloat16:
            check_bf16(self.device.type, f"inference backend {name!r}")
        self.autocast = autocast

    def run(self, features: np.ndarray, lengths: np.ndarray, functionals: np.ndarray | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return run_torch(self.model, self.device, features, lengths, functionals, self.autocast)


def quantize_torch_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch dynamic int8 quantisation of a model's ``nn.LSTM`` and ``nn.Linear`` modules (CPU only).

    Weights are stored as int8 and activations quantised per call, so no
    calibration data is needed. The BLSTM is built from unidirectional
    ``nn.LSTM`` modules (model.BLSTMEncoder), which quantise as they are; the
    attention arithmetic and masking stay in float32. The input model is left
    unchanged. ``torch.ao.quantization`` warns that it is deprecated in favour
    of torchao, which is not a dependency; the warning is silenced here.
    """
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(copy.deepcopy(model).cpu().eval(), {torch.nn.LSTM, torch.nn.Linear},
                                     dtype=torch.qint8)
    return quantized


class OnnxBackend:
    """onnxruntime inference on an exported model (CPU execution provider).

    ``name`` is ``onnx`` or ``onnx-int8`` (a dynamically quantised graph), as a Predictor reports it.
    """

    def __init__(self, model: bytes | str | Path, output_names: tuple[str, ...], num_threads: int = 0,
                 name: str = "onnx") -> None:
        self.name = name
        ort = require_extra("onnxruntime", "export", f"the {name!r} backend")

        opts = ort.SessionOptions()
        if num_threads > 0:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # onnxruntime's warnings about unused initialisers are noise here
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        self.output_names = tuple(output_names)

    def run(self, features: np.ndarray, lengths: np.ndarray, functionals: np.ndarray | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feed = {"features": np.ascontiguousarray(features, dtype=np.float32),
                "lengths": np.asarray(lengths, dtype=np.int64)}
        if functionals is not None:  # a fusion model's graph has a third input
            feed["functionals"] = np.ascontiguousarray(functionals, dtype=np.float32)
        outs = self.session.run(list(self.output_names), feed)
        return outs[0], dict(zip(self.output_names[1:], outs[1:]))
