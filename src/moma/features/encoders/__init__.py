"""Pretrained front ends (``features.frontend``): the GE2E speaker encoder of the resemblyzer wheel
(:mod:`.ge2e`) and self-supervised transformers encoders (:mod:`.ssl`), frame by frame on the filterbank's
10 ms frames; docs/pretrained.md. Frames of several layers are stored flattened, (frames, layers * D), and
the model reshapes them to (B, T, layers, D) for its learned layer weighting (``model.input_layers``).

The encoders run where :func:`use_device` says (``train.device``; CPU by default). Cached frames are keyed by
the front end's identity, :func:`frontend_identity`, which includes the weights' sha256.
"""

from __future__ import annotations

import numpy as np

from moma.config import FeatureConfig

FRONTENDS = ("fbank", "ge2e", "ssl")
_DEVICE = {"name": "cpu"}  # where the encoders run in this process (use_device)


def use_device(name: str) -> None:
    """Run the pretrained encoders of this process on ``name`` (cpu | cuda | cuda:N | auto)."""
    if name == "auto":
        import torch

        name = "cuda" if torch.cuda.is_available() else "cpu"
    _DEVICE["name"] = name


def check_frontend(cfg: FeatureConfig) -> None:
    """Refuse, in one line naming the option, a front-end setting that cannot work."""
    if cfg.frontend not in FRONTENDS:
        raise ValueError(f"features.frontend must be one of {', '.join(FRONTENDS)}, got {cfg.frontend!r}")
    if cfg.frontend == "fbank":
        return
    if cfg.pitch or cfg.lld != "none":
        raise ValueError(f"features.pitch and features.lld extend the fbank front end only; with features.frontend="
                         f"{cfg.frontend} set features.pitch=false and features.lld=none")
    if (cfg.sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms, cfg.snip_edges) != (16000, 25.0, 10.0, True):
        raise ValueError(f"features.frontend={cfg.frontend} reads 16 kHz audio in 25 ms frames every 10 ms with "
                         "snip edges: keep features.sample_rate, frame_length_ms, frame_shift_ms and snip_edges "
                         "at their defaults")
    if cfg.frontend == "ge2e":
        from moma.features.encoders.ge2e import parse_layer

        parse_layer(cfg.ge2e_layer)
    elif not cfg.ssl_model:
        raise ValueError("features.frontend=ssl needs features.ssl_model: a hub id (e.g. microsoft/wavlm-base-plus) "
                         "or a local transformers model folder")


def frontend_identity(cfg: FeatureConfig) -> dict[str, str]:
    """What the frames depend on beyond the filterbank settings: the encoder, its layers and its weights'
    sha256 ({} for fbank). Part of the cache key and recorded in every checkpoint."""
    check_frontend(cfg)
    if cfg.frontend == "ge2e":
        from moma.features.encoders.ge2e import weights_sha256

        return {"frontend": "ge2e", "ge2e_layer": str(cfg.ge2e_layer), "weights": "resemblyzer-0.1.4/pretrained.pt",
                "sha256": weights_sha256()}
    if cfg.frontend == "ssl":
        from moma.features.encoders.ssl import folder_sha256, resolve_folder

        return {"frontend": "ssl", "ssl_model": cfg.ssl_model, "ssl_layers": str(cfg.ssl_layers),
                "sha256": folder_sha256(str(resolve_folder(cfg.ssl_model)))}
    return {}


def frame_layers(cfg: FeatureConfig) -> int:
    """Layers stacked in each frame (1 unless the model is to learn a weighting over several)."""
    if cfg.frontend == "ge2e":
        from moma.features.encoders.ge2e import LAYERS, parse_layer

        return LAYERS if parse_layer(cfg.ge2e_layer) is None else 1
    if cfg.frontend == "ssl":
        text = str(cfg.ssl_layers).strip()
        if text == "all":
            return encoder_of(cfg).model.config.num_hidden_layers + 1  # the CNN / embedding output, then each layer
        return len(text.split(","))
    return 1


def encoder_of(cfg: FeatureConfig):
    """The SSL encoder of ``cfg`` on this process's device (loaded once)."""
    from moma.features.encoders.ssl import get_encoder

    return get_encoder(cfg.ssl_model, _DEVICE["name"])


def encoder_frames(signal: np.ndarray, cfg: FeatureConfig, n_frames: int) -> np.ndarray:
    """Frames of a pretrained front end, (n_frames, layers * D) float32, on the filterbank's frames."""
    if cfg.frontend == "ge2e":
        from moma.features.encoders.ge2e import ge2e_frames

        frames = ge2e_frames(signal, cfg.ge2e_layer)
        if frames.shape[0] != n_frames:  # both count 25 ms windows every 10 ms inside the signal
            raise AssertionError(f"GE2E gave {frames.shape[0]} frames, the filterbank {n_frames}")
        return frames
    return encoder_of(cfg).frames_batch([signal], cfg.ssl_layers, [n_frames])[0]


def check_identity(cfg: FeatureConfig, recorded: dict | None, source: str) -> None:
    """Refuse a model whose front end's weights (recorded in its checkpoint) differ from the local ones."""
    local = frontend_identity(cfg)
    if local and recorded and recorded.get("sha256") != local["sha256"]:
        raise ValueError(f"{source}: trained on {cfg.frontend} weights with sha256 {recorded.get('sha256', '')[:16]}"
                         f"..., but the local ones are {local['sha256'][:16]}...; install the weights it was "
                         "trained with")
