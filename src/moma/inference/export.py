"""ONNX export and the onnxruntime backend.

``moma export CHECKPOINT --format onnx --out DIR`` writes, in the spirit of
audonnx:

* ``DIR/model.onnx``: the network, inputs ``features`` (batch, time, dims)
  float32 and ``lengths`` (batch,) int64, both with dynamic batch and time
  axes; outputs ``logits`` (batch, classes) and the attention weights the
  architecture has (``layer1``, ``mixture`` (batch, time), ``blocks``
  (batch, blocks, time), ``gammas`` (blocks,)).
* ``DIR/model.json``: everything needed to use it without moma's training
  code: labels, the feature configuration, the normalisation statistics, the
  input/output names, the moma version and the SHA-256 of ``model.onnx``.
  The same JSON is stored in the ONNX file's ``metadata_props`` under
  ``moma``, so the ``.onnx`` file alone is self-describing too.

``--quantize int8`` writes onnxruntime's dynamic int8 quantisation of the
same graph (weights int8, activations quantised per call): the BLSTM becomes
``DynamicQuantizeLSTM`` and the linear layers ``MatMulInteger``. On one CPU
thread that is the fastest backend measured by ``moma bench`` (about 4x the
torch eager model at batch 1 for the paper configuration) for a posterior
change of the order of 1e-3; ``model.json`` records ``quantization``.

Features are not part of the graph: Kaldi filterbanks are computed by
``kaldi_native_fbank`` in both backends, so both see identical inputs and
parity is a property of the network alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moma.capabilities import require_extra
from moma.checkpoint import LoadedCheckpoint, load_checkpoint, resolve_checkpoint_path
from moma.config import RunConfig, config_from_dict, config_to_dict
from moma.features.normalise import Normaliser
from moma.features.ood import OodModel
from moma.files import write_bytes_atomic, write_text_atomic
from moma.inference.backends import OnnxBackend
from moma.inference.ensemble import is_ensemble_artefact
from moma.model import ExportWrapper, example_inputs
from moma.version import __version__

log = logging.getLogger(__name__)

FORMAT = "moma-onnx/1"
OPSET = 17
MODEL_FILE = "model.onnx"
META_FILE = "model.json"
INPUT_NAMES = ("features", "lengths")
QUANTIZATIONS = ("none", "int8")  # --quantize choices: float32 graph, or onnxruntime dynamic int8
_PREPROCESS_HINT = "Please consider to run pre-processing before quantization"
ATTENTION_ORDER = ("layer1", "mixture", "blocks", "gammas")
_TIME_AXIS = {"layer1": 1, "mixture": 1, "blocks": 2}  # attention outputs' time axis (gammas has none)


def attention_keys_of(model: nn.Module) -> tuple[str, ...]:
    """The attention outputs an architecture produces (those not None), in ATTENTION_ORDER."""
    with torch.inference_mode():
        out = model(*example_inputs(model.cfg))
    return tuple(k for k in ATTENTION_ORDER if (out.attention or {}).get(k) is not None)


def onnx_bytes(loaded: LoadedCheckpoint, opset: int = OPSET) -> tuple[bytes, tuple[str, ...]]:
    """Serialise a loaded checkpoint's model to ONNX; returns (model bytes, output names)."""
    require_extra("onnx", "export", "ONNX export")
    if loaded.config.features.frontend != "fbank":
        # the ONNX file would hold MOMA alone, and a user of it could not compute its input frames
        raise ValueError(f"{loaded.path or 'this model'}: ONNX export is not supported for the pretrained front end "
                         f"features.frontend={loaded.config.features.frontend} (it runs in PyTorch before the "
                         "model); use the torch backend (moma predict without --backend onnx)")
    model = loaded.model.cpu().eval()
    input_dim, func_dim = loaded.config.model.input_dim, loaded.config.model.functionals_dim
    keys = attention_keys_of(model)
    wrapper = ExportWrapper(model, ("logits", *keys)).eval()
    # Two sequences of different lengths, so the trace goes through the padded-batch path
    # (masking, per-row reversal) rather than a special case of equal lengths.
    example: tuple[torch.Tensor, ...] = (torch.randn(2, 37, input_dim), torch.tensor([37, 21], dtype=torch.int64))
    input_names = INPUT_NAMES
    output_names = ("logits", *keys)
    dynamic_axes: dict[str, dict[int, str]] = {"features": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                               "logits": {0: "batch"}}
    if func_dim:  # a fusion model: the utterance functionals are a third input (batch, D_f)
        example, input_names = example + (torch.randn(2, func_dim),), INPUT_NAMES + ("functionals",)
        dynamic_axes["functionals"] = {0: "batch"}
    for key in keys:
        if key in _TIME_AXIS:
            dynamic_axes[key] = {0: "batch", _TIME_AXIS[key]: "time"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated and that LSTMs with a batch
        # size other than 1 are traced generically; both are expected here. It is used rather
        # than the dynamo exporter because the model's input checks read tensor values, which
        # tracing skips (torch.jit.is_tracing) but dynamo would turn into data-dependent guards.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, buf, dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset,
                          do_constant_folding=True)
    return _name_outputs(buf.getvalue(), output_names), output_names


def _name_outputs(data: bytes, names: tuple[str, ...]) -> bytes:
    """Give every graph output its intended name.

    An output that depends on parameters alone (``gammas``) is constant-folded
    into an initialiser and the exporter then names it after that initialiser
    (e.g. ``"735"``); an Identity node restores the documented name.
    """
    import onnx
    from onnx import helper

    proto = onnx.load_from_string(data)
    for out, name in zip(proto.graph.output, names):
        if out.name != name:
            proto.graph.node.append(helper.make_node("Identity", [out.name], [name], name=f"rename_{name}"))
            out.name = name
    return proto.SerializeToString()


class _DropPreprocessHint(logging.Filter):
    """Drops onnxruntime's root-logger advice to run its shape-inference pre-processing.

    The advice concerns static (calibrated) quantisation of convolutional
    models; dynamic quantisation of this graph gives the same result either
    way, and the pre-processing step's symbolic shape inference is slow.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PREPROCESS_HINT)


def quantize_onnx_int8(data: bytes) -> bytes:
    """onnxruntime dynamic int8 quantisation of a serialised model (LSTM, MatMul, Gemm nodes).

    ``quantize_dynamic`` works on files, so the model goes through a private
    temporary folder. It logs through the root logger, which would install a
    stderr handler (``logging.basicConfig``) in a program that configured
    none; a NullHandler stands in while it runs.
    """
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    hint_filter = _DropPreprocessHint()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(hint_filter)
    try:
        with tempfile.TemporaryDirectory(prefix="moma-quant-") as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(data)
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            return dst.read_bytes()
    finally:
        root.removeFilter(hint_filter)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _check_quantize(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")


def _json_state(state: dict[str, Any]) -> dict[str, Any]:
    """A normaliser's or out-of-domain density's state with its arrays as (nested) lists of floats."""
    def conv(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.astype(np.float64).tolist()
        if isinstance(value, dict):
            return {k: conv(v) for k, v in value.items()}
        return value

    return conv(state)


def _json_normaliser(norm: Normaliser) -> dict[str, Any]:
    return _json_state(norm.state_dict())


def export_metadata(loaded: LoadedCheckpoint, output_names: tuple[str, ...], model_sha256: str,
                    opset: int = OPSET, quantization: str = "none") -> dict[str, Any]:
    """The JSON document that makes an exported model usable on its own."""
    return {
        "format": FORMAT,
        "moma_version": __version__,
        "opset": opset,
        "quantization": "dynamic-int8" if quantization == "int8" else "none",
        "model_sha256": model_sha256,
        "labels": list(loaded.labels),
        "inputs": {"features": {"shape": ["batch", "time", loaded.config.model.input_dim], "dtype": "float32",
                                "description": "normalised features (see 'features' and 'normaliser')"},
                   "lengths": {"shape": ["batch"], "dtype": "int64", "description": "valid frames per row"},
                   **({"functionals": {"shape": ["batch", loaded.config.model.functionals_dim], "dtype": "float32",
                                       "description": "the utterance's openSMILE functionals (features."
                                                      "functionals; computed after scaling the signal to features."
                                                      "functionals_level dBFS of active speech when that is below "
                                                      "0), standardised (see 'functionals_normaliser')"}}
                      if loaded.functionals_normaliser is not None else {})},
        "outputs": list(output_names),
        "features": config_to_dict(loaded.config.features),
        "normaliser": _json_normaliser(loaded.normaliser),
        **({"functionals_normaliser": _json_normaliser(loaded.functionals_normaliser)}
           if loaded.functionals_normaliser is not None else {}),
        **({"ood": _json_state(loaded.ood.state_dict())} if loaded.ood is not None else {}),
        "config": config_to_dict(loaded.config),
        "info": loaded.info,
        "source_checkpoint": Path(loaded.path).name,
    }


def export_onnx(checkpoint: str | Path, out_dir: str | Path, *, opset: int = OPSET, quantize: str = "none") -> Path:
    """Write ``out_dir/model.onnx`` and ``out_dir/model.json`` for a checkpoint; returns the ONNX path.

    ``quantize="int8"`` writes onnxruntime's dynamic int8 quantisation of the graph instead of float32.
    """
    if is_ensemble_artefact(checkpoint):
        raise ValueError(f"{checkpoint}: an ensemble or linear functionals model cannot be exported to ONNX (its "
                         "members read openSMILE functionals and combine outside any one graph); serve the file "
                         "itself with moma serve / moma predict")
    onnx = require_extra("onnx", "export", "moma export")
    if quantize == "int8":
        require_extra("onnxruntime", "export", "int8 quantisation of an ONNX export")
    _check_quantize(quantize)
    loaded = load_checkpoint(checkpoint, device="cpu")
    data, output_names = onnx_bytes(loaded, opset)
    if quantize == "int8":
        data = quantize_onnx_int8(data)
    proto = onnx.load_from_string(data)
    meta = export_metadata(loaded, output_names, "", opset, quantize)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "moma", json.dumps({k: v for k, v in meta.items() if k != "model_sha256"})
    data = proto.SerializeToString()
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / MODEL_FILE, data)
    write_text_atomic(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    log.info("exported %s -> %s (%d bytes, outputs %s)", checkpoint, out / MODEL_FILE, len(data),
             ", ".join(output_names))
    return out / MODEL_FILE


def read_export(path: str | Path) -> dict[str, Any]:
    """The metadata of an export folder (or of the folder holding a given ``model.onnx``)."""
    folder = Path(path)
    if folder.suffix == ".onnx":
        folder = folder.parent
    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not a moma ONNX export (needs {MODEL_FILE} and {META_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_onnx_predictor_parts(path: str | Path, *, num_threads: int = 0, quantize: str = "none"
                              ) -> tuple[OnnxBackend, RunConfig, list[str], Normaliser, dict[str, Any],
                                         Normaliser | None, OodModel | None]:
    """(backend, config, labels, normaliser, info, functionals normaliser or None, out-of-domain density or None)
    for a Predictor on onnxruntime.

    ``path`` is an export folder (or its ``model.onnx``), or a checkpoint,
    which is then exported in memory. ``quantize="int8"`` quantises a float32
    model in memory (an export written with ``--quantize int8`` is used as it
    is); an int8 export is reported as ``onnx-int8`` whatever was asked.
    """
    _check_quantize(quantize)
    backend_name = "onnx-int8" if quantize == "int8" else "onnx"
    require_extra("onnxruntime", "export", f"the {backend_name!r} backend")  # before any export work
    p = Path(path)
    is_export = (p.is_dir() and (p / MODEL_FILE).is_file()) or p.suffix == ".onnx"
    if is_export:
        meta = read_export(p)
        folder = p.parent if p.suffix == ".onnx" else p
        data = (folder / MODEL_FILE).read_bytes()
        if meta.get("model_sha256") and hashlib.sha256(data).hexdigest() != meta["model_sha256"]:
            raise ValueError(f"{folder / MODEL_FILE}: SHA-256 does not match {META_FILE} (file changed?)")
        config = config_from_dict(RunConfig, meta["config"])
        is_int8 = meta.get("quantization", "none") == "dynamic-int8"
        if quantize == "int8" and not is_int8:
            data, is_int8 = quantize_onnx_int8(data), True
        backend = OnnxBackend(data, tuple(meta["outputs"]), num_threads, name="onnx-int8" if is_int8 else "onnx")
        func_norm = meta.get("functionals_normaliser")
        return (backend, config, list(meta["labels"]), Normaliser.from_state(meta["normaliser"]), meta.get("info", {}),
                Normaliser.from_state(func_norm) if func_norm else None,
                OodModel.from_state(meta["ood"]) if meta.get("ood") else None)
    if p.is_dir():
        try:
            resolve_checkpoint_path(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: neither a moma ONNX export ({MODEL_FILE} + {META_FILE}) nor a run "
                                    "folder holding a checkpoint") from None
    loaded = load_checkpoint(p, device="cpu")
    data, names = onnx_bytes(loaded)
    if quantize == "int8":
        data = quantize_onnx_int8(data)
    backend = OnnxBackend(data, names, num_threads, name="onnx-int8" if quantize == "int8" else "onnx")
    return (backend, loaded.config, loaded.labels, loaded.normaliser, loaded.info, loaded.functionals_normaliser,
            loaded.ood)
