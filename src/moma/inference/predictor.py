"""Using a trained model: the :class:`Predictor` API (signals, files, a manifest's utterances), plotting attention.

:class:`Predictor` is the one entry point for prediction from Python, the
command line (``moma predict``), the HTTP service and the web page. It turns a
signal or a file into features exactly as training did (the checkpoint's own
feature configuration and normalisation statistics), runs a backend (PyTorch,
or onnxruntime on an exported model) and returns a :class:`Prediction` with
the label, the class probabilities and the attention weights. The probabilities
come from :func:`moma.evaluation.posteriors.class_posteriors`, the function
``moma evaluate`` and ``moma cv`` score with (the checkpoint's temperature; a
segment-trained model's window mean), so a model predicts what it was scored on.

Backends (``backend=``): ``torch`` (the float32 model), ``torch-int8``
(PyTorch dynamic int8 quantisation of the LSTMs and linear layers, CPU only),
``onnx`` (onnxruntime, float32) and ``onnx-int8`` (onnxruntime dynamic int8).
The int8 backends trade a posterior change of the order of 1e-3 for speed on
CPU; ``moma bench`` measures both, and the change in UAR on a labelled fold.

Every signal and file is first checked for speech (:mod:`moma.audio.vad`, Silero by default): with no
speech found the result has ``status="no-speech"``, an empty label and no probabilities, and the model is
not run; with less than ``min_speech_s`` (0.5 s) of speech it is predicted but flagged ``status="too-short"``.
``confidence`` is the top probability and ``calibrated`` says whether the checkpoint carries a fitted softmax
temperature (``docs/serving.md`` says what that means and does not).

Files are predicted in length-bucketed batches: files are read a chunk at a
time, sorted by length inside the chunk and batched with little padding. The
model is exact under padding (``tests/test_model.py``), so batching changes
speed, never results.

A tiny model trained on random features stands in for a real one here; the
doctests below only check the shapes of what comes back.

>>> import numpy as np
>>> predictor = Predictor.from_checkpoint(checkpoint_path, speech_check=None)  # noise stands in for speech here
>>> predictor.labels
['angry', 'happy', 'neutral']
>>> signal = np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32)
>>> pred = predictor.predict_signal(signal, 16000)           # 1 s of audio at 16 kHz
>>> pred.label in predictor.labels, round(sum(pred.probabilities.values()), 4)
(True, 1.0)
>>> pred.num_frames, pred.attention["mixture"].shape         # one weight per 10 ms frame
(98, (98,))
>>> [p.label in predictor.labels for p in predictor.predict_files([wav_path, wav_path], batch_size=2)]
[True, True]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moma.audio.io import AudioError, load_audio, prepare_signal
from moma.audio.vad import VadConfig, speech_flags, speech_seconds
from moma.capabilities import (UnsupportedHardwareError, check_cuda, int8_unsupported_reason, require_extra,
                               set_inference_threads)
from moma.checkpoint import LoadedCheckpoint, load_checkpoint
from moma.config import RunConfig
from moma.corpora.base import Utterance
from moma.evaluation.posteriors import MAX_BATCH_FRAMES, Segmenting, aggregate, class_posteriors, window_logits
from moma.features.cache import FeatureCache, extract_features
from moma.features.encoders import check_identity, use_device
from moma.features.frontend import compute_features
from moma.features.functionals import compute_run_functionals, extract_run_functionals
from moma.features.normalise import (
    Normaliser,
    adapt_normaliser,
    normalise_features,
    normalise_for_checkpoint,
    normalise_functionals,
    standardise_functionals_for_checkpoint,
)
from moma.features.ood import OodModel, ood_description, utterance_statistics
from moma.inference.backends import Backend, TorchBackend, quantize_torch_int8

log = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"  # NAME.safetensors + NAME.md (its card)
DEFAULT_MODEL = "emodb-nemo-egemaps-8class"  # the bundled model used when no checkpoint is named
BUNDLED_CHECKPOINT = PRETRAINED_DIR / f"{DEFAULT_MODEL}.safetensors"
BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")
ATTENTION_KEYS = ("layer1", "mixture", "blocks", "gammas")
DEFAULT_BATCH_SIZE = 16  # files per batch in predict_files
CHUNK_BATCHES = 8  # predict_files reads this many batches' worth of files, then sorts them by length
# s of detected speech below which a prediction is flagged "too-short": about two syllables; less carries
# too little pitch and energy movement for an emotion (docs/serving.md)
MIN_SPEECH_S = 0.5
SPEECH_CHECK = VadConfig()  # the default speech check: Silero (never mutated; pass your own to change it)
STATUSES = ("ok", "too-short", "no-speech")


def bundled_models() -> dict[str, Path]:
    """The models shipped with the package, by name (their file stem)."""
    return {p.stem: p for p in sorted(PRETRAINED_DIR.glob("*.safetensors"))}


def default_checkpoint() -> Path:
    """The checkpoint bundled with the package, or FileNotFoundError saying how to get a model."""
    if not BUNDLED_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"no bundled model at {BUNDLED_CHECKPOINT}; pass --checkpoint PATH (a .safetensors file or a run "
            "folder from `moma train`/`moma cv`)")
    return BUNDLED_CHECKPOINT


def resolve_model(name_or_path: str | Path | None) -> Path:
    """A checkpoint path from a path, a bundled model's name (``emodb-7class``) or None (the default model)."""
    if name_or_path is None:
        return default_checkpoint()
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = bundled_models()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    raise FileNotFoundError(f"{name_or_path}: no such checkpoint file or run folder, and not a bundled model "
                            f"(bundled: {', '.join(bundled) or 'none'})")


# --------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """One input's result.

    ``attention`` holds this input's weights with the batch axis removed:
    ``layer1`` (T,), ``mixture`` (T,), ``blocks`` (N, T), ``gammas`` (N,),
    where T is ``num_frames`` (one frame every ``frame_shift_ms``); keys an
    architecture lacks are absent. ``error`` is set (and ``label`` empty)
    when ``predict_files(..., on_error="record")`` could not use a file.
    ``status`` is ``ok``, ``too-short`` (less than ``MIN_SPEECH_S`` of speech: predicted, but do not trust
    it) or ``no-speech`` (no label, no probabilities); ``speech_s`` is the speech the VAD found (None when
    the predictor runs without a speech check). ``ood_score`` is the input's distance from the training recordings
    and ``in_domain`` whether it is within the model's threshold (:mod:`moma.features.ood`); both None when the
    model carries no such statistics or nothing was predicted.
    """

    label: str
    probabilities: dict[str, float]
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    num_frames: int = 0
    logits: np.ndarray | None = None
    source: str = ""  # file path, or "" for in-memory signals
    duration_s: float = 0.0  # seconds of audio at the model's sample rate
    frame_shift_ms: float = 10.0
    error: str = ""
    status: str = "ok"  # "ok" | "too-short" | "no-speech"
    speech_s: float | None = None  # s of speech found by the VAD
    calibrated: bool = False  # True when the probabilities went through a fitted temperature
    ood_score: float | None = None  # Mahalanobis distance from the training utterances (moma.features.ood)
    in_domain: bool | None = None  # ood_score at most the model's threshold; False: do not trust the label

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def confidence(self) -> float:
        """The top probability (0.0 when there is no prediction)."""
        return max(self.probabilities.values(), default=0.0)

    def __repr__(self) -> str:  # short: the attention arrays and logits are left out
        where = f", source={self.source!r}" if self.source else ""
        error = f", error={self.error!r}" if self.error else ""
        return (f"Prediction(label={self.label!r}, status={self.status!r}, confidence={self.confidence:.3f}, "
                f"calibrated={self.calibrated}, duration_s={self.duration_s:.3f}{where}{error})")

    __str__ = __repr__

    def to_dict(self, *, attention: bool = False) -> dict[str, Any]:
        """JSON-able dict; attention weights (lists of floats) only when asked, as they are long."""
        out: dict[str, Any] = {"source": self.source, "label": self.label, "status": self.status,
                               "confidence": round(self.confidence, 6), "calibrated": self.calibrated,
                               "probabilities": dict(self.probabilities), "duration_s": self.duration_s,
                               "speech_s": self.speech_s, "num_frames": self.num_frames, "error": self.error,
                               "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
                               "in_domain": self.in_domain}
        if attention:
            out["frame_shift_ms"] = self.frame_shift_ms
            out["attention"] = {k: np.asarray(v, dtype=np.float64).round(6).tolist()
                                for k, v in self.attention.items()}
        return out


# --------------------------------------------------------------------------- predictor


class Predictor:
    """Emotion predictions from a trained model, for signals, files and lists of files.

    Build one with :meth:`from_checkpoint`; it is safe to call from several
    threads at once (the service does), as it holds no per-call state.
    """

    recipe: dict[str, str] | None = None  # how from_checkpoint loaded it: worker processes (jobs > 1) load the same

    def __init__(self, backend: Backend, config: RunConfig, labels: Sequence[str], normaliser: Normaliser, *,
                 info: dict[str, Any] | None = None, source: str = "",
                 functionals_normaliser: Normaliser | None = None,
                 speech_check: VadConfig | None = SPEECH_CHECK, min_speech_s: float = MIN_SPEECH_S,
                 ood: OodModel | None = None) -> None:
        if config.features.functionals != "none":  # a fusion model: its functionals are computed per input
            if functionals_normaliser is None:
                raise ValueError(f"{source or 'this model'}: a fusion model without the statistics of its functionals")
            require_extra("opensmile", "classical", f"a fusion model (features.functionals="
                                                    f"{config.features.functionals})")
        check_identity(config.features, (info or {}).get("frontend"), source or "this model")  # its encoder's weights
        self.functionals_normaliser = functionals_normaliser
        self.backend = backend
        self.config = config
        self.labels = list(labels)
        self.normaliser = normaliser
        self.info = dict(info or {})
        self.source = source
        # softmax temperature fitted on validation speakers after training (1: an uncalibrated checkpoint)
        self.temperature = float((self.info.get("calibration") or {}).get("temperature", 1.0))
        self.calibrated = "temperature" in (self.info.get("calibration") or {})
        self.segments = Segmenting.of(config)  # a segment-trained model's windows (moma.evaluation.posteriors)
        self.speech_check = speech_check  # None: every input is predicted, speech or not
        self.min_speech_s = min_speech_s
        self.ood = ood  # the training utterances' density; None: predictions carry no ood_score

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, device: str = "cpu", backend: str = "torch",
                        num_threads: int | None = None, speech_check: VadConfig | None = SPEECH_CHECK) -> Predictor:
        """Load a model.

        ``path``: a checkpoint (``.safetensors``), a run folder holding one, or
        (``onnx``, ``onnx-int8``) a folder written by ``moma export``; ``None``
        means the default bundled model, and a bundled model's name (see
        :func:`bundled_models`) that model. The onnx backends on a checkpoint export it in
        memory first; ``onnx-int8`` and ``torch-int8`` quantise in memory (a
        second or two). ``num_threads``: inference threads (torch's, which are process-wide, and onnxruntime's):
        None, one (:data:`moma.capabilities.INFERENCE_THREADS`, the measured best); 0, the libraries' own
        defaults; n, n. ``speech_check``: the VAD that decides
        whether an input holds speech (None: no check, every input gets an emotion).
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "torch-int8" and torch.device(device).type != "cpu":
            raise ValueError(f"backend 'torch-int8' runs on the CPU only, not on {device!r}")
        path = resolve_model(path)
        threads = set_inference_threads(num_threads)
        predictor = cls._from_path(path, device, backend, threads, speech_check)
        predictor.recipe = {"path": str(path), "device": device, "backend": backend}
        return predictor

    @classmethod
    def _from_path(cls, path: Path, device: str, backend: str, threads: int,
                   speech_check: VadConfig | None) -> Predictor:
        from moma.inference.ensemble import is_ensemble_artefact, load_ensemble_predictor  # it builds on this one

        if is_ensemble_artefact(path):  # `moma combine` or a linear functionals model: members combined
            return load_ensemble_predictor(path, device=device, backend=backend, speech_check=speech_check)
        if backend in ("onnx", "onnx-int8"):
            from moma.inference.export import load_onnx_predictor_parts

            onnx_backend, config, labels, normaliser, info, func_norm, ood = load_onnx_predictor_parts(
                path, num_threads=threads, quantize="int8" if backend == "onnx-int8" else "none")
            return cls(onnx_backend, config, labels, normaliser, info=info, source=str(path),
                       functionals_normaliser=func_norm, speech_check=speech_check, ood=ood)
        check_cuda(str(device))
        loaded = load_checkpoint(path, device=device)
        return cls.from_loaded(loaded, device=device, backend=backend, speech_check=speech_check)

    @classmethod
    def from_loaded(cls, loaded: LoadedCheckpoint, device: str = "cpu", backend: str = "torch",
                    speech_check: VadConfig | None = SPEECH_CHECK) -> Predictor:
        """Wrap an already loaded checkpoint (``torch`` or ``torch-int8`` backend)."""
        use_device(device if backend == "torch" else "cpu")  # a pretrained front end runs beside the model
        if backend == "torch-int8":
            reason = int8_unsupported_reason()
            if reason:
                raise UnsupportedHardwareError(f"backend 'torch-int8' is not supported here: {reason}; "
                                               "use --backend torch or onnx-int8")
            torch_backend = TorchBackend(quantize_torch_int8(loaded.model), "cpu", name="torch-int8")
        elif backend == "torch":
            torch_backend = TorchBackend(loaded.model, device)
        else:
            raise ValueError(f"from_loaded builds the torch backends only, not {backend!r}")
        return cls(torch_backend, loaded.config, loaded.labels, loaded.normaliser, info=loaded.info,
                   source=loaded.path, functionals_normaliser=loaded.functionals_normaliser,
                   speech_check=speech_check, ood=loaded.ood)

    # ----------------------------------------------------------------- features

    @property
    def sample_rate(self) -> int:
        return int(self.config.features.sample_rate)

    def features(self, signal: np.ndarray, sampling_rate: int, name: str = "<signal>") -> np.ndarray:
        """Normalised model input (frames, dims) of an in-memory signal at any rate."""
        sig = prepare_signal(signal, sampling_rate, self.sample_rate, name=name,
                             min_duration=self.config.features.frame_length_ms / 1000.0)
        return self.features_of_prepared(sig)

    def features_of_prepared(self, signal: np.ndarray) -> np.ndarray:
        """Normalised features of a mono float32 signal already at :attr:`sample_rate`."""
        return normalise_features(self.normaliser, compute_features(signal, self.config.features))

    def functionals_of_prepared(self, signal: np.ndarray) -> np.ndarray | None:
        """A fusion model's standardised utterance functionals (D_f,) of a signal at :attr:`sample_rate`;
        None for a model without them."""
        if self.functionals_normaliser is None:
            return None
        return normalise_functionals(self.functionals_normaliser, self._raw_functionals(signal))

    def _raw_functionals(self, signal: np.ndarray) -> np.ndarray:
        return compute_run_functionals(signal, self.config.features, self.sample_rate)

    def file_features(self, path: str | Path) -> tuple[np.ndarray, float]:
        """Normalised features of one audio file and its duration in seconds; raises AudioError."""
        raw, duration = self.raw_file_features(path)
        return normalise_features(self.normaliser, raw), duration

    def raw_file_features(self, path: str | Path) -> tuple[np.ndarray, float]:
        """Features of one audio file before normalisation, and its duration in seconds; raises AudioError."""
        sig = self._load(path)
        return compute_features(sig, self.config.features), sig.shape[0] / self.sample_rate

    def _load(self, path: str | Path) -> np.ndarray:
        """One audio file as a mono signal at :attr:`sample_rate`; raises AudioError."""
        return load_audio(path, self.sample_rate, min_duration=self.config.features.frame_length_ms / 1000.0)

    # ----------------------------------------------------------------- speech check

    def speech_status(self, signal: np.ndarray) -> tuple[str, float | None]:
        """(status, seconds of speech) of a mono signal at :attr:`sample_rate`: ``no-speech`` when the VAD
        finds no speech region, ``too-short`` under ``min_speech_s``, else ``ok`` (``ok``, None unchecked)."""
        if self.speech_check is None:
            return "ok", None
        _, regions = speech_flags(signal, self.sample_rate, self.speech_check)
        seconds = round(speech_seconds(regions), 3)
        if seconds <= 0.0:
            return "no-speech", 0.0
        return ("too-short" if seconds < self.min_speech_s else "ok"), seconds

    def no_speech(self, source: str = "", duration_s: float = 0.0) -> Prediction:
        """The result for an input without speech: no label, no probabilities."""
        return Prediction(label="", probabilities={}, source=source, duration_s=duration_s, status="no-speech",
                          speech_s=0.0, calibrated=self.calibrated,
                          frame_shift_ms=float(self.config.features.frame_shift_ms))

    # ----------------------------------------------------------------- prediction

    def predict_batch(self, feats: Sequence[np.ndarray],
                      functionals: Sequence[np.ndarray | None] | None = None) -> list[Prediction]:
        """Predict several normalised feature arrays as one padded batch (a fusion model also needs each
        utterance's standardised ``functionals``, from :meth:`functionals_of_prepared`).

        The probabilities come from :func:`moma.evaluation.posteriors.class_posteriors`, the function `moma
        evaluate` and `moma cv` score with: the backend's logits divided by the checkpoint's temperature, and for
        a segment-trained model the mean over its windows. ``attention`` and ``logits`` come from the same pass
        for any other model; a segment-trained model's attention comes from one more pass over each whole
        utterance (the weights the model gives the whole of it; its probabilities are the windows' mean), and its
        ``logits`` are the log of its windows' mean untempered posteriors.
        """
        if not feats:
            return []
        funcs = self._stacked_functionals(feats, functionals)
        seen: dict[str, dict[str, np.ndarray]] = {}

        def forward(x: np.ndarray, lengths: np.ndarray, f: np.ndarray | None) -> np.ndarray:
            logits, seen["attention"] = self.backend.run(x, lengths, f)
            return logits

        # max_frames=None: every window in one call, in input order (this is the batch)
        windows = window_logits(forward, feats, funcs, segments=self.segments, max_frames=None)
        probs = aggregate(windows, self.temperature)  # (B, C)
        if self.segments.window:
            logits = np.log(np.clip(aggregate(windows), 1e-12, None))  # (B, C) log mean window posterior
            window_logits(forward, feats, funcs, max_frames=None)  # whole utterances, for the attention only
        else:
            logits = np.stack([z[0] for z in windows])  # (B, C): one window each
        return [Prediction(label=self.labels[int(probs[i].argmax())],
                           probabilities={lab: float(p) for lab, p in zip(self.labels, probs[i])},
                           attention=_attention_row(seen["attention"], i, f.shape[0]), num_frames=int(f.shape[0]),
                           logits=logits[i].astype(np.float32), duration_s=0.0,
                           frame_shift_ms=float(self.config.features.frame_shift_ms), calibrated=self.calibrated)
                for i, f in enumerate(feats)]

    def posteriors(self, feats: Sequence[np.ndarray],
                   functionals: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """Class probabilities ``(n, C)`` of normalised feature arrays, batched by length: what
        :meth:`predict_batch` returns without the rest of a :class:`Prediction` (`moma evaluate` scores these)."""
        funcs = self._stacked_functionals(feats, functionals)
        return class_posteriors(lambda x, lengths, f: self.backend.run(x, lengths, f)[0], feats, funcs,
                                segments=self.segments, temperature=self.temperature)

    def _stacked_functionals(self, feats: Sequence[np.ndarray],
                             functionals: Sequence[np.ndarray | None] | None) -> np.ndarray | None:
        """A fusion model's functionals as one (B, D_f) array, refused in one line when any is missing; None
        for any other model."""
        if self.functionals_normaliser is None:
            return None
        if functionals is None or len(functionals) != len(feats) or any(f is None for f in functionals):
            raise ValueError("this fusion model needs the standardised functionals of every input "
                             "(Predictor.functionals_of_prepared)")
        return np.stack([np.asarray(f, dtype=np.float32) for f in functionals])  # (B, D_f)

    def predict_features(self, feats: np.ndarray, functionals: np.ndarray | None = None) -> Prediction:
        """Predict one utterance's normalised features (frames, dims) [and a fusion model's functionals]."""
        return self.predict_batch([feats], None if functionals is None else [functionals])[0]

    def predict_prepared(self, signals: Sequence[np.ndarray], *, check_speech: bool = True) -> list[Prediction]:
        """Predict mono float32 signals already at :attr:`sample_rate` as one batch (features, and a fusion
        model's functionals, computed here). Signals without speech are not run through the model;
        ``check_speech=False`` skips the check (the timeline has run its own VAD)."""
        checks = [self.speech_status(s) if check_speech else ("ok", None) for s in signals]
        todo = [i for i, (status, _) in enumerate(checks) if status != "no-speech"]
        preds = iter(self.predict_speech([signals[i] for i in todo]))
        out = []
        for sig, (status, seconds) in zip(signals, checks):
            pred = self.no_speech() if status == "no-speech" else next(preds)
            pred.status, pred.speech_s = status, seconds
            pred.duration_s = sig.shape[0] / self.sample_rate
            out.append(pred)
        return out

    def score_ood(self, pred: Prediction, frames: np.ndarray) -> Prediction:
        """``pred`` with the out-of-domain score of its input's raw front-end frames (unchanged without a density)."""
        if self.ood is not None and frames.shape[0] > 0:
            pred.ood_score, pred.in_domain = self.ood.score(utterance_statistics(frames))
        return pred

    def predict_signal(self, signal: np.ndarray, sampling_rate: int) -> Prediction:
        """Predict an in-memory signal, shape (samples,) or (samples, channels), at any sampling rate."""
        sig = prepare_signal(signal, sampling_rate, self.sample_rate, name="<signal>",
                             min_duration=self.config.features.frame_length_ms / 1000.0)
        pred = self.predict_prepared([sig])[0]
        pred.duration_s = np.asarray(signal).shape[0] / float(sampling_rate)
        return pred

    def predict_file(self, path: str | Path) -> Prediction:
        """Predict one audio file (anything libsndfile reads); raises AudioError for a bad file."""
        return next(self._predict_chunk([str(path)], 1, "raise"))

    def iter_predict_files(self, paths: Iterable[str | Path], *, batch_size: int = DEFAULT_BATCH_SIZE,
                           on_error: str = "raise", adapt: str = "none", jobs: int = 1) -> Iterator[Prediction]:
        """Predictions for ``paths`` in input order, produced a chunk of files at a time.

        Inside each chunk (``CHUNK_BATCHES`` batches' worth of files) files are
        sorted by length and batched, so padding stays small while memory holds
        one chunk's features only. ``on_error="record"`` yields a Prediction
        with ``error`` set for an unusable file instead of raising.
        ``adapt="batch"`` normalises with statistics of all the given files
        together instead of the checkpoint's (transductive: for many files from
        one source, e.g. one microphone or one corpus); it reads every file
        before the first prediction. ``adapt="utterance"`` normalises each file
        by its own statistics. ``jobs`` > 1 predicts in that many worker processes, one thread and one loaded
        model each (:mod:`moma.inference.parallel`): the same predictions (to float rounding) in the same
        order, started here (a predictor from :meth:`from_checkpoint` only); ``adapt="batch"`` and a GPU run in
        this process.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        if adapt not in ("none", "utterance", "batch"):
            raise ValueError(f"adapt must be 'none', 'utterance' or 'batch' for files, got {adapt!r}")
        if jobs != 1:
            from moma.inference.parallel import iter_in_workers  # it builds on this module

            return iter_in_workers(self, paths, jobs=jobs, batch_size=batch_size, on_error=on_error, adapt=adapt)
        return self._iter_files(paths, batch_size, on_error, adapt)

    def _iter_files(self, paths: Iterable[str | Path], batch_size: int, on_error: str,
                    adapt: str) -> Iterator[Prediction]:
        if adapt == "batch":
            yield from self._predict_chunk([str(p) for p in paths], batch_size, on_error, adapt)
            return
        chunk: list[str] = []
        for path in paths:
            chunk.append(str(path))
            if len(chunk) >= batch_size * CHUNK_BATCHES:
                yield from self._predict_chunk(chunk, batch_size, on_error, adapt)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk, batch_size, on_error, adapt)

    def predict_files(self, paths: Iterable[str | Path], *, batch_size: int = DEFAULT_BATCH_SIZE,
                      on_error: str = "raise", adapt: str = "none", jobs: int = 1) -> list[Prediction]:
        """Predictions for many files (in input order), in length-bucketed batches of up to ``batch_size``
        (``jobs``: worker processes, as :meth:`iter_predict_files`)."""
        return list(self.iter_predict_files(paths, batch_size=batch_size, on_error=on_error, adapt=adapt,
                                            jobs=jobs))

    def _predict_chunk(self, paths: list[str], batch_size: int, on_error: str,
                       adapt: str = "none") -> Iterator[Prediction]:
        results: list[Prediction | None] = [None] * len(paths)
        loaded: list[tuple[int, np.ndarray, float, tuple[str, float | None]]] = []  # (index, signal, s, speech)
        for i, path in enumerate(paths):
            try:
                sig = self._load(path)
            except AudioError as exc:
                if on_error == "raise":
                    raise
                results[i] = Prediction(label="", probabilities={}, source=path, error=exc.reason)
                continue
            check = self.speech_status(sig)
            if check[0] == "no-speech":  # not run, and not part of batch statistics
                results[i] = self.no_speech(path, sig.shape[0] / self.sample_rate)
                continue
            loaded.append((i, sig, sig.shape[0] / self.sample_rate, check))
        preds = self.predict_speech([sig for _, sig, _, _ in loaded], batch_size=batch_size, adapt=adapt)
        for (i, _, duration, (status, seconds)), pred in zip(loaded, preds):
            pred.source, pred.duration_s, pred.status, pred.speech_s = paths[i], duration, status, seconds
            results[i] = pred
        for pred in results:
            assert pred is not None  # every index was filled above
            yield pred

    def predict_speech(self, signals: Sequence[np.ndarray], *, batch_size: int | None = None,
                       adapt: str = "none") -> list[Prediction]:
        """Predict mono signals at :attr:`sample_rate` that were checked for speech, in input order, in
        length-bucketed batches of up to ``batch_size`` (None: one batch); ``adapt`` (``utterance``, ``batch``)
        normalises them with their own statistics instead of the checkpoint's. An ensemble combines its members
        here, each computing its own features."""
        batch_size = batch_size or max(1, len(signals))
        raw = [compute_features(s, self.config.features) for s in signals]
        raw_funcs = [self._raw_functionals(s) if self.functionals_normaliser is not None else None for s in signals]
        normaliser, func_norm = self._adapted_normalisers(raw, raw_funcs, adapt)
        feats = [normalise_features(normaliser, f) for f in raw]
        funcs = [None if func_norm is None else normalise_functionals(func_norm, f) for f in raw_funcs]
        results: list[Prediction | None] = [None] * len(feats)
        batch: list[int] = []

        def flush() -> None:
            for i, pred in zip(batch, self.predict_batch([feats[i] for i in batch], [funcs[i] for i in batch])):
                results[i] = self.score_ood(pred, raw[i])  # the score reads the frames before normalisation
            batch.clear()

        for i in sorted(range(len(feats)), key=lambda k: feats[k].shape[0]):  # by length: little padding
            longest = max(feats[i].shape[0], feats[batch[-1]].shape[0] if batch else 0)
            if batch and (len(batch) >= batch_size or longest * (len(batch) + 1) > MAX_BATCH_FRAMES):
                flush()
            batch.append(i)
        if batch:
            flush()
        return [pred for pred in results if pred is not None]

    def labelled_posteriors(self, utterances: Sequence[Utterance], cache_dir: str | Path, adapt: str = "none"
                            ) -> tuple[dict[str, np.ndarray], str]:
        """(class probabilities by utterance id, how the inputs were normalised) of a manifest's utterances: what
        `moma evaluate` scores. The features come from the feature cache (the values :meth:`predict_files`
        computes from the same files) and go through :meth:`posteriors`. ``adapt`` (``utterance``, ``batch``,
        ``speaker``) normalises them with the data's own statistics (transductive); a speaker-normalised model
        meets unseen speakers with statistics from their own unlabelled audio."""
        feats = extract_features(utterances, FeatureCache(cache_dir, self.config.features))
        normaliser = self.normaliser
        if adapt != "none":  # fitted once here, so that the features and the report line use the same statistics
            normaliser = adapt_normaliser(self.normaliser, [feats[u.id] for u in utterances], adapt,
                                          [u.speaker for u in utterances])
        normed = normalise_for_checkpoint(normaliser, feats, utterances)
        funcs = None
        if self.functionals_normaliser is not None:  # a fusion model: its functionals, standardised alike
            raw = extract_run_functionals(self.config.features, utterances, cache_dir) or {}
            funcs = standardise_functionals_for_checkpoint(self.functionals_normaliser, raw, utterances, adapt)
        ids = [u.id for u in utterances]
        probs = self.posteriors([normed[k] for k in ids], None if funcs is None else [funcs[k] for k in ids])
        return dict(zip(ids, probs)), self._normalisation_note(normaliser, adapt)

    def _normalisation_note(self, normaliser: Normaliser, adapt: str) -> str:
        """How :meth:`labelled_posteriors` normalised its inputs (frames with ``normaliser``), for a report."""
        note = self.normaliser.describe() + (
            "; unseen test speakers normalised with statistics from their own unlabelled audio (transductive)"
            if self.normaliser.mode == "speaker" else "")
        if adapt != "none":
            note = f"trained with {self.normaliser.describe()}; tested with {normaliser.describe()}"
        if self.functionals_normaliser is not None:  # the functionals follow their own rule: say which
            if adapt in ("batch", "speaker"):  # the rule of standardise_functionals_for_checkpoint
                scope = "over all of it" if adapt == "batch" else "per speaker"
                note += (f"; openSMILE functionals standardised with the test data's own statistics, {scope} "
                         "(transductive: unlabelled test audio)")
            else:
                note += ("; openSMILE functionals standardised with "
                         f"{self.functionals_normaliser.describe(rows='utterances')}")
        return note

    def _adapted_normalisers(self, feats: list[np.ndarray], funcs: list[np.ndarray | None], adapt: str
                             ) -> tuple[Normaliser, Normaliser | None]:
        """The frame and functionals normalisers for ``adapt``, and one log line saying truly what changed.

        A model that normalises each utterance itself has no frame statistics to adapt; a fusion model's
        functionals are still standardised with the inputs' own statistics under ``batch`` (one vector per
        file has none of its own under ``utterance``), and that changes its predictions.
        """
        normaliser, func_norm = self.normaliser, self.functionals_normaliser
        if adapt == "none" or not feats:
            return normaliser, func_norm
        changed = []
        if normaliser.mode not in ("utterance", "none"):
            normaliser = adapt_normaliser(normaliser, feats, adapt)
            changed.append(f"frames: {normaliser.describe()}")
        if func_norm is not None and adapt == "batch":
            func_norm = adapt_normaliser(func_norm, [f[None, :] for f in funcs if f is not None], "batch")
            changed.append(f"openSMILE functionals standardised with the {len(feats)} inputs' own statistics")
        if changed:
            log.info("--adapt %s: %s", adapt, "; ".join(changed))
        else:
            log.info("--adapt %s changes nothing: the model uses %s", adapt, normaliser.describe())
        return normaliser, func_norm

    def describe(self) -> dict[str, Any]:
        """What a client needs to know about the model: labels, configuration, provenance (the model card)."""
        from moma.config import config_to_dict
        from moma.version import __version__

        return {"labels": self.labels, "backend": self.backend.name, "sample_rate": self.sample_rate,
                "frame_shift_ms": float(self.config.features.frame_shift_ms),
                "architecture": self.config.model.arch, "normalisation": self.normaliser.describe(),
                "config": config_to_dict(self.config), "card": _model_card(self.info), **ood_description(self.ood),
                "moma_version": __version__, "source": Path(self.source).name if self.source else ""}


def _attention_row(attention: dict[str, np.ndarray], i: int, n: int) -> dict[str, np.ndarray]:
    """Row ``i`` of a batch's attention arrays, cut to its ``n`` frames (``gammas`` has no batch axis)."""
    att: dict[str, np.ndarray] = {}
    for key, value in attention.items():
        if key == "gammas":
            att[key] = np.asarray(value, dtype=np.float32)
        elif value.ndim == 3:  # blocks (B, N, T)
            att[key] = value[i, :, :n].astype(np.float32)
        else:  # (B, T)
            att[key] = value[i, :n].astype(np.float32)
    return att


def _model_card(info: dict[str, Any]) -> dict[str, Any]:
    """The provenance fields of a checkpoint that are safe and useful to show a client."""
    keep = ("moma_version", "torch_version", "created", "epoch", "corpus", "fold", "test_speakers",
            "val_speakers", "metrics", "val_uar", "val_loss", "calibration", "description", "intended_use",
            "limitations")
    return {k: info[k] for k in keep if k in info}


# --------------------------------------------------------------------------- plots


def plot_prediction(predictor: Predictor, audio: str | Path, out: str | Path, *, pred: Prediction | None = None,
                    alignment: Any = None, phones: Any = None, title: str | None = None,
                    caption: str = "") -> Path:
    """Plot waveform, spectrogram and attention of one file (predicting it unless ``pred`` is given)."""
    from moma.evaluation.plots import plot_attention

    cfg = predictor.config.features
    sig = load_audio(audio, cfg.sample_rate, min_duration=cfg.frame_length_ms / 1000.0)
    raw = compute_features(sig, cfg)
    if pred is None:  # a fusion model also reads the file's functionals (None for any other model)
        pred = predictor.predict_features(normalise_features(predictor.normaliser, raw),
                                          predictor.functionals_of_prepared(sig))
    probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(pred.probabilities.items(), key=lambda kv: -kv[1]))
    return plot_attention(out, sig, cfg.sample_rate, raw[:, :cfg.n_mels], pred.attention, cfg.frame_shift_ms,
                          title=title or f"{Path(audio).name}: {pred.label} ({probs})",
                          alignment=alignment, phones=phones, caption=caption)


def plot_attention_for_file(checkpoint: str | Path, audio: str | Path, out: str | Path, *,
                            alignment: str | Path | None = None, phones: str | Path | None = None,
                            title: str | None = None, caption: str = "") -> Path:
    """Predict one file and plot waveform, spectrogram and both attention layers."""
    from moma.corpora.alignment import read_alignment

    predictor = Predictor.from_checkpoint(checkpoint)
    return plot_prediction(predictor, audio, out,
                           alignment=read_alignment(alignment) if alignment else None,
                           phones=read_alignment(phones) if phones else None, title=title,
                           caption=caption or f"moma plot-attention {checkpoint} {audio}")


__all__ = ["BACKENDS", "BUNDLED_CHECKPOINT", "DEFAULT_MODEL", "Prediction", "Predictor", "bundled_models",
           "default_checkpoint", "resolve_model",
           "plot_attention_for_file", "plot_prediction"]
