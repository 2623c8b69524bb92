"""Self-describing, pickle-free checkpoints.

A checkpoint is ONE safetensors file: the weights, the normalisation
statistics as tensors, and in the file's metadata header the resolved run
config, the label list and provenance as JSON. Nothing is unpickled on load,
so a checkpoint from an untrusted source cannot run code. Files are written to
a temporary name and renamed, so a crash never leaves a half-written file.

The same :func:`load_checkpoint` serves evaluation, prediction, export and the
web service.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moma.capabilities import check_cuda
from moma.config import RunConfig, config_from_dict, config_to_dict
from moma.features.encoders import frontend_identity
from moma.features.normalise import Normaliser
from moma.features.ood import OodModel
from moma.files import replace_atomically
from moma.model import build_model
from moma.version import __version__

FORMAT = "moma-checkpoint/1"


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # in eval mode, on the requested device
    config: RunConfig
    labels: list[str]  # class index -> label name
    normaliser: Normaliser
    info: dict[str, Any] = field(default_factory=dict)  # provenance: epoch, metrics, fold, versions
    path: str = ""
    # fusion models (features.functionals): the training statistics of the utterance functionals; else None
    functionals_normaliser: Normaliser | None = None
    # the out-of-domain density fitted on the training utterances (moma.features.ood); None in checkpoints made
    # before it existed (`moma ood fit` adds it)
    ood: OodModel | None = None


def _flatten(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move arrays out of a nested structure into ``tensors``; return the JSON-able rest."""
    if isinstance(obj, np.ndarray):
        key = f"{prefix}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__tensor__": key}
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): _flatten(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor], as_numpy: bool) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            t = tensors[obj["__tensor__"]]
            return t.numpy() if as_numpy else t
        return {k: _unflatten(v, tensors, as_numpy) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, as_numpy) for v in obj]
    return obj


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: RunConfig, labels: list[str],
                    normaliser: Normaliser, info: dict[str, Any] | None = None,
                    training_state: dict[str, Any] | None = None,
                    functionals_normaliser: Normaliser | None = None, ood: OodModel | None = None) -> Path:
    """Write a checkpoint; ``training_state`` (optimizer, scheduler, RNG, counters) makes it resumable;
    ``functionals_normaliser`` standardises a fusion model's utterance functionals; ``ood`` is the density of the
    training utterances that scores how unlike them an input is."""
    path = Path(path)
    frontend = frontend_identity(config.features)  # {} for fbank
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    norm_meta = _flatten("normaliser", normaliser.state_dict(), tensors)
    meta = {
        "format": FORMAT,
        "config": json.dumps(config_to_dict(config)),
        "labels": json.dumps(list(labels)),
        "normaliser": json.dumps(norm_meta),
        "info": json.dumps({
            "moma_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"frontend": frontend} if frontend else {}),  # a pretrained front end's weights (sha256)
            **(info or {}),
        }),
    }
    if functionals_normaliser is not None:
        meta["functionals_normaliser"] = json.dumps(_flatten("functionals_normaliser",
                                                             functionals_normaliser.state_dict(), tensors))
    if ood is not None:
        meta["ood"] = json.dumps(_flatten("ood", ood.state_dict(), tensors))
    if training_state is not None:
        meta["training_state"] = json.dumps(_flatten("state", training_state, tensors))
    _atomic_save(tensors, meta, path)
    return path


def read_checkpoint_file(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a checkpoint file, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a moma checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta, tensors


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, a fold folder holding ``best.safetensors``, or a run folder of one such fold."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "model.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        folds = sorted(path.glob("*/best.safetensors"))
        if len(folds) == 1:  # a run of one fold, such as `moma train --protocol all --out DIR`: DIR/all/...
            return folds[0]
        raise FileNotFoundError(f"{path}: no best.safetensors, model.safetensors or last.safetensors inside"
                                + (f" ({len(folds)} folds hold one: name the fold's folder)" if folds else ""))
    return path


def existing_checkpoint_paths(checkpoints: Sequence[str | Path]) -> list[Path]:
    """Each named checkpoint (file or run folder) as a file path; one clear error for none or a missing one."""
    if not checkpoints:
        raise ValueError("no checkpoint given")
    paths = []
    for c in checkpoints:
        p = resolve_checkpoint_path(c)
        if not p.is_file():
            raise FileNotFoundError(f"{c}: checkpoint not found")
        paths.append(p)
    return paths


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model, config, labels and normaliser from one checkpoint file."""
    check_cuda(str(device))  # one line for a GPU that is not there, before reading anything
    path = resolve_checkpoint_path(path)
    meta, tensors = read_checkpoint_file(path)
    return checkpoint_from_parts(meta, tensors, device, str(path))


def checkpoint_from_parts(meta: dict[str, str], tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                          path: str = "") -> LoadedCheckpoint:
    """A checkpoint rebuilt from its metadata and tensors (a file's, or an ensemble member's with its prefix
    removed): what :func:`load_checkpoint` returns."""
    config = config_from_dict(RunConfig, json.loads(meta["config"]))
    labels = json.loads(meta["labels"])
    model = build_model(config.model)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    normaliser = Normaliser.from_state(_unflatten(json.loads(meta["normaliser"]), tensors, as_numpy=True))
    info = json.loads(meta.get("info", "{}"))
    functionals_normaliser = None
    if "functionals_normaliser" in meta:
        functionals_normaliser = Normaliser.from_state(
            _unflatten(json.loads(meta["functionals_normaliser"]), tensors, as_numpy=True))
    elif config.model.functionals_dim > 0:
        raise ValueError(f"{path}: a fusion model (model.functionals_dim {config.model.functionals_dim}) without "
                         "the statistics of its functionals")
    ood = OodModel.from_state(_unflatten(json.loads(meta["ood"]), tensors, as_numpy=True)) if "ood" in meta else None
    return LoadedCheckpoint(model=model, config=config, labels=labels, normaliser=normaliser, info=info,
                            path=path, functionals_normaliser=functionals_normaliser, ood=ood)


def load_training_state(path: str | Path) -> dict[str, Any] | None:
    """The resumable part of a checkpoint (tensors as torch tensors), or None if it has none."""
    meta, tensors = read_checkpoint_file(path)
    if "training_state" not in meta:
        return None
    return _unflatten(json.loads(meta["training_state"]), tensors, as_numpy=False)


def short_checkpoint_names(paths: Sequence[str | Path]) -> list[str]:
    """Short unique names of checkpoints, for tables and figures: the fewest trailing folder names (``best.safetensors`` and the like dropped)."""
    parts = []
    for p in paths:
        p = Path(p)
        bits = list(p.parts[:-1]) if p.name in ("best.safetensors", "model.safetensors", "last.safetensors") \
            else list(p.parent.parts) + [p.stem]
        parts.append([b for b in bits if b not in ("/", "")] or [p.stem])
    for k in range(1, max(len(b) for b in parts) + 1):
        names = ["/".join(b[-k:]) for b in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}:{'/'.join(b)}" for i, b in enumerate(parts)]
