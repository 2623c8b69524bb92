"""Typed run configuration.

Every knob lives in a dataclass with its unit in a comment. YAML files (and
``--set key=value`` on the command line) only override these defaults; the
resolved configuration is written next to every run and inside every
checkpoint, so a result can always be traced back to the exact settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

log = logging.getLogger(__name__)

# Options removed after this version, once measured not to help: name -> (the value that meant "off", why). A
# saved config (a committed report's, a bundled checkpoint's) holding one at that value still loads, the key
# dropped; any other value is refused in one line, since the run it describes can no longer be made. A
# "name=value" entry is one removed value of an option that stays: refused wherever it appears.
REMOVED_AFTER = "0.1.0"
REMOVED_OPTIONS: dict[str, tuple[Any, str]] = {
    "train.mixup_alpha": (0.0, "measured not to help: -0.023 UAR pooled on nEMO, reports/nemo-loso"),
    "train.weight_average_epochs": (0.0, "measured not to help: -0.010 UAR on nEMO and on EmoDB, "
                                         "reports/nemo-loso and reports/pool-emodb-loso"),
    "data.vtlp": (0.0, "measured not to help: -0.106 UAR on the first nEMO fold, reports/nemo-loso"),
    "data.tempo": (0.0, "measured not to help: -0.106 UAR on the first nEMO fold, reports/nemo-loso"),
    "data.augment_copies": (0, "channel-augmented training copies measured not to help between corpora: "
                               "reports/loco"),
    "data.augment_conditions": ("white,babble,reverb,telephone,gain", "the channel families of data.augment_copies, "
                                "removed with it (measured not to help between corpora: reports/loco)"),
    "data.normalisation=utterance-mean": (None, "measured worse than utterance on nEMO, EmoDB and between them: "
                                                "reports/nemo-loso, reports/pool-emodb-loso, reports/loco"),
}


@dataclass
class FeatureConfig:
    """Kaldi-compatible log-Mel filterbank settings (the paper: 23 bins, 25 ms / 10 ms)."""

    sample_rate: int = 16000  # Hz; every input is resampled to this rate
    n_mels: int = 23  # number of Mel bins
    frame_length_ms: float = 25.0  # ms, analysis window
    frame_shift_ms: float = 10.0  # ms, hop between frames
    dither: float = 0.0  # Kaldi dither amplitude; 0 keeps features deterministic
    preemphasis: float = 0.97  # pre-emphasis coefficient
    low_freq: float = 20.0  # Hz, lowest Mel edge
    high_freq: float = 0.0  # Hz, highest Mel edge; <= 0 means offset below Nyquist (Kaldi convention)
    window_type: str = "povey"  # Kaldi window: povey | hamming | hanning | rectangular | blackman
    snip_edges: bool = True  # Kaldi snip-edges: only frames that fit wholly inside the signal
    pitch: bool = False  # append 2 prosodic dims per frame: log F0 (Praat autocorrelation) and voicing strength
    pitch_floor: float = 60.0  # Hz, lowest F0 searched
    pitch_ceiling: float = 600.0  # Hz, highest F0 searched (emotional speech reaches high F0)
    lld: str = "none"  # none | egemaps (25 dims) | compare (65 dims): openSMILE low-level descriptors appended per frame
    functionals: str = "none"  # none | eGeMAPSv02 (88) | ComParE_2016 (6373): openSMILE functionals of each utterance,
    #   standardised with training-speaker statistics and joined to the model's pooled representation (fusion)
    functionals_level: float = 0.0  # dBFS; < 0 scales each utterance to this active-speech level before openSMILE
    #   computes its functionals, so that they do not depend on the recording's gain (-26: ITU-T P.56's usual
    #   level); 0 keeps the level as recorded. The frames are not rescaled (per-utterance normalisation already
    #   removes a gain from log-Mel frames)
    frontend: str = "fbank"  # what each 10 ms frame holds: fbank (the log-Mel bins, + pitch + lld) | ge2e (the GE2E
    #   speaker encoder's LSTM outputs, resemblyzer's weights) | ssl (a transformers encoder's hidden states); the
    #   pretrained ones are frozen and cached like the filterbanks (docs/pretrained.md)
    ge2e_layer: str = "3"  # ge2e: which LSTM layer's 256 outputs per frame: 1 | 2 | 3 | weighted (all 3 stacked,
    #   the model learns a softmax weighting over them)
    ssl_model: str = ""  # ssl: hub id (e.g. microsoft/wavlm-base-plus) or local folder of a transformers model
    ssl_layers: str = "all"  # ssl: hidden states per frame: all | one index (0 = CNN / embedding output) | comma
    #   list; several are stacked and the model learns a softmax weighting over them


@dataclass
class ModelConfig:
    """Architecture. Defaults are the paper's sizes; the initial gammas (equal, not random) and train.grad_clip
    (5, the paper names none) are ours, and the ``paper`` recipe takes the paper's. The paper reports 8.6 M
    parameters for 4 classes; its stated sizes give 10,601,991 here (the BLSTM alone is 8.50 M): docs/model.md."""

    arch: str = "moma"  # moma | attention (BLSTM + attention layer 1) | mean (BLSTM + mean pooling)
    input_dim: int = 23  # feature dimension per frame, derived from the front end at training time (fbank: n_mels)
    input_layers: int = 1  # encoder layers stacked in each frame (features.frontend ge2e / ssl); > 1: the model
    #   learns a softmax weighting over them (input_dim = input_layers x per-layer size); derived like input_dim
    num_classes: int = 4  # set from the label list at training time
    hidden_size: int = 512  # LSTM units per direction (BLSTM output is 2x this)
    num_layers: int = 2  # stacked BLSTM layers
    context_dim: int = 128  # attention context dimension (W_h, W_m project to this)
    num_blocks: int = 3  # N attention blocks in the MOMA layer
    learn_gammas: bool = True  # False fixes the mixture weights gamma_n = 1/N
    gamma_norm: str = "softmax"  # softmax | none: how raw gamma parameters become mixture weights
    gamma_init: str = "equal"  # equal (gamma_n = 1/N) | random (the paper's "randomly initialised"; docs/model.md)
    residual: bool = True  # attention layer 1 adds its output back to Y (the paper's residual)
    layer1_output: str = "scale"  # scale: y'_t = L*a_t*y_t | weight: y'_t = a_t*y_t | context: y'_t = sum_s a_s y_s (docs/model.md)
    layer1_scale_max: float = 0.0  # scale only: cap on L*a_t (a frame's weight relative to uniform); 0 = no cap
    projection_dim: int = 1024  # size of the MOMA projection before the classifier
    dropout: float = 0.0  # dropout on BLSTM outputs and before the classifier
    input_dropout: float = 0.0  # dropout on input features
    attention_bias: bool = False  # bias in the attention projections W_h, W_m (the paper's equations have none)
    projection_activation: str = "relu"  # relu | tanh: nonlinearity after the MOMA projection
    functionals_dim: int = 0  # utterance-level descriptors joined to the pooled representation before the projection
    #   (MOMA) or classifier (baselines); set from features.functionals at training time; 0 = none


@dataclass
class DataConfig:
    """How features become batches."""

    normalisation: str = "global"  # global | speaker | utterance | none (see features.Normaliser)
    # frames (10 ms each) per batch, padding included; under torchrun both limits are for the GLOBAL batch,
    # shared by the processes, so a recipe means the same on 1 or N processes
    max_frames_per_batch: int = 12000
    batch_size: int = 32  # upper bound on utterances per (global) batch
    segment_length_s: float = 0.0  # s; > 0 trains on fixed windows cut from each utterance
    segment_hop_s: float = 1.0  # s; hop between evaluation windows when segmenting
    random_crop_s: float = 0.0  # s; > 0 takes one random crop of at most this length per utterance per epoch
    spec_augment: bool = False  # time and frequency masking on training batches
    freq_mask_bins: int = 4  # maximum width of one frequency mask, in Mel bins
    time_mask_frames: int = 20  # maximum width of one time mask, in frames
    num_time_masks: int = 2  # time masks per utterance
    noise_std: float = 0.0  # std of Gaussian noise added to normalised training features
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class TrainConfig:
    """Optimisation, schedule, model selection."""

    seed: int = 0
    lr: float = 1e-4  # Adam learning rate (the paper's)
    weight_decay: float = 0.0  # AdamW-style decoupled weight decay
    max_epochs: int = 60
    lr_patience: int = 4  # epochs without validation improvement before the LR drops (the paper's)
    lr_factor: float = 0.1  # LR multiplier on plateau (the paper's)
    min_lr: float = 1e-7
    early_stop_patience: int = 10  # epochs without validation improvement before stopping; 0 disables
    grad_clip: float = 5.0  # max global gradient norm; 0 disables
    class_weighted: bool = False  # weight cross-entropy by inverse training class frequency
    balance: str = "none"  # none | class | corpus | corpus-class: weight each training item's loss so that every
    #   class, corpus or (corpus, class) pair carries the same total weight (a pool of corpora of unequal size)
    label_smoothing: float = 0.0
    speaker_adversarial: float = 0.0  # lambda of a gradient-reversal speaker classifier on the embedding; 0 = off
    adversary_hidden: int = 128  # hidden units of that speaker classifier (one ReLU layer)
    monitor: str = "uar"  # validation metric that drives the schedule and checkpoint choice: uar | accuracy | loss
    monitor_smoothing: float = 0.0  # EMA weight of the previous epochs on the monitored value (0 = raw; 0.5
    #   halves an epoch's weight each epoch): a fluke epoch on few validation speakers cannot win or stall alone
    min_epochs: int = 0  # epochs before the schedule, early stopping and model choice start counting (0 = from
    #   the first): an early, lucky epoch is never kept while the training loss still falls
    val_speakers: int = 2  # number of training speakers held out for validation (gender-balanced when possible)
    val_min_utterances: int = 0  # utterances; > 0: more validation speakers are taken (in the same order) until
    #   they hold this many, so that a fold whose chosen speakers are small still chooses epochs on enough speech
    calibrate: bool = True  # fit a softmax temperature on the validation speakers after training and store it in
    #   best.safetensors (evaluation.calibration); the argmax, so accuracy and UAR, never changes
    ensemble: int = 1  # models per fold trained with seeds seed, seed+1, ...; test posteriors are averaged
    ensemble_validation: str = "same"  # same: every member validates on the fold's speakers; rotate: member m
    #   validates on other training speakers (protocols.rotate_validation), so the members together train on all
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    num_threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    bf16: bool = False  # bfloat16 autocast for forward/backward
    log_every: int = 0  # batches between progress log lines; 0 logs once per epoch
    tensorboard: bool = True


@dataclass
class RunConfig:
    """Everything one training run needs besides the data itself."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a (nested) dataclass config."""
    return asdict(cfg)


def config_from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys.

    Unknown keys are an error rather than silently ignored: a misspelt option
    that does nothing is the worst kind of configuration bug.
    """
    data = drop_removed_options(data or {}) if cls is RunConfig else dict(data or {})
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        near = [m for u in unknown for m in difflib.get_close_matches(u, known, n=1)]
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}{hint} "
                         f"(known: {', '.join(sorted(known))})")
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        typ = hints[f.name]
        if is_dataclass(typ):
            kwargs[f.name] = config_from_dict(typ, value)
        else:
            kwargs[f.name] = _coerce(value, typ, f"{cls.__name__}.{f.name}")
    return cls(**kwargs)


def drop_removed_options(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a nested run-config dict without the :data:`REMOVED_OPTIONS` it holds at their "off" value;
    one set to anything else is refused with a ValueError naming it, when it went and why."""
    out = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
    for name, (off, why) in REMOVED_OPTIONS.items():
        name, _, removed_value = name.partition("=")
        section, key = name.split(".", 1)
        if not isinstance(out.get(section), dict) or key not in out[section]:
            continue
        if removed_value:
            if out[section][key] == removed_value:
                raise ValueError(f"{name}={removed_value}: this value was removed after moma {REMOVED_AFTER} "
                                 f"({why}); choose another")
            continue
        value = out[section].pop(key)
        try:
            is_off = _coerce(value, type(off), name) == off
        except ValueError:
            is_off = False
        if not is_off:
            raise ValueError(f"{name}={value!r}: this option was removed after moma {REMOVED_AFTER} ({why}); "
                             "drop it from the config")
        log.debug("%s=%r: a removed option at its off value, dropped", name, value)
    return out


def _coerce(value: Any, typ: Any, name: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
            return value.lower() in {"true", "1", "yes", "on"}
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(as_float)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if typ is str:
        return str(value)
    return value


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into a copy of ``base``."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = value
    return out


def parse_set_option(text: str) -> dict[str, Any]:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 1e-3}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


RECIPE_DIR = Path(__file__).resolve().parent / "configs"  # the shipped recipes, which a ``base:`` may name

# Keys computed from the data and the front end at training time. --set refuses them (the value would be
# overwritten without a word); a file drops them with a warning, so that a run's saved config.yaml, which records
# them, can be given back as --config.
DERIVED_KEYS = {"model.input_dim": "the front end (features.*)", "model.num_classes": "the label list",
                "model.functionals_dim": "features.functionals",
                "model.input_layers": "the front end (features.ge2e_layer, features.ssl_layers)"}
# Keys that say how to run, not what to train: they change no result, so recipes leave them out (a test checks)
# and comparisons of a run with its recipe ignore them.
RUNTIME_KEYS = {"train.device", "train.num_threads", "train.log_every", "train.tensorboard", "data.num_workers"}


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The overrides of one YAML file with its ``base:`` recipes merged under it (bases first, in order).

    ``base:`` names a recipe (a file beside this one, else a shipped recipe) or a path, or a list of them, so a
    variant is its base plus the few lines that differ."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: recipe bases form a cycle ({' -> '.join(p.stem for p in _seen + (path,))})")
    with open(path, encoding="utf-8") as fh:
        loaded = yaml.safe_load(fh) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    bases = loaded.pop("base", None) or []
    merged: dict[str, Any] = {}
    for name in [bases] if isinstance(bases, str) else bases:
        merged = merge_overrides(merged, read_recipe(_find_base(str(name), path.parent), _seen + (path,)))
    return merge_overrides(merged, loaded)


def _find_base(name: str, folder: Path) -> Path:
    for candidate in (folder / name, folder / f"{name}.yaml", RECIPE_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"base recipe {name!r}: no {name}.yaml beside the file nor among the shipped recipes")


def _derived_in(overrides: dict[str, Any]) -> list[str]:
    return [k for k in DERIVED_KEYS if k.split(".")[1] in (overrides.get(k.split(".")[0]) or {})]


def _drop_derived(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    for key in _derived_in(overrides):
        section, name = key.split(".")
        overrides = {**overrides, section: {k: v for k, v in overrides[section].items() if k != name}}
        log.warning("%s: %s is derived from %s at training time; the file's value is ignored", where, key,
                    DERIVED_KEYS[key])
    return overrides


def load_run_config(paths: list[str | Path] | None = None, sets: list[str] | None = None,
                    base: RunConfig | None = None) -> RunConfig:
    """Defaults (or ``base``) <- each YAML file in order (its ``base:`` recipes first) <- each ``key=value``."""
    merged = config_to_dict(base or RunConfig())
    for path in paths or []:
        merged = merge_overrides(merged, _drop_derived(read_recipe(path), str(path)))
    for item in sets or []:
        override = parse_set_option(item)
        derived = _derived_in(override)
        if derived:
            raise ValueError(f"--set {item}: {derived[0]} is derived from {DERIVED_KEYS[derived[0]]} at training "
                             "time and cannot be set")
        merged = merge_overrides(merged, override)
    return config_from_dict(RunConfig, merged)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a resolved config as YAML (human-readable; JSON-compatible values only)."""
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(config_to_dict(cfg))), sort_keys=False),
                          encoding="utf-8")


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported so callers need not import dataclasses."""
    return dataclasses.replace(cfg, **changes)
