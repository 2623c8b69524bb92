"""HTTP service (``moma serve``): FastAPI over :class:`moma.inference.predictor.Predictor`.

Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /v1/predict``: multipart upload ``file`` (WAV, FLAC, OGG, MP3, and
  WebM/Opus as browsers record it) -> label, probabilities, attention weights.
* ``POST /v1/timeline``: the same upload -> emotion over time (VAD + windows).
* ``GET /v1/model``: labels, configuration, model card.
* ``GET /healthz``: liveness.
* ``GET /``: the web page (``moma/web``).

Error contract: an upload over ``max_upload_bytes`` gets 413 (checked on the
declared length and, for chunked uploads, while reading); bytes no decoder
understands get 415; decodable but unusable audio (too short, too long,
NaN) gets 422; a full queue gets 503 with Retry-After. Every error body is
``{"detail": "<one line>"}``. Decoding and inference run in a bounded thread
pool (``workers`` threads, ``queue`` waiting requests at most), so a burst of
requests waits its turn instead of decoding everything at once.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from moma.audio.io import AudioError
from moma.inference.predictor import Predictor
from moma.inference.timeline import TimelineConfig, timeline_for_signal
from moma.serving.uploads import UnsupportedAudio, decode_audio_bytes, waveform_envelope

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"


@dataclass
class ServiceSettings:
    workers: int = 2  # inference threads
    queue: int = 64  # requests that may wait for a worker; more get 503
    max_upload_bytes: int = 20 * 1024 * 1024  # larger request bodies get 413
    max_duration_s: float = 600.0  # seconds of decoded audio accepted per request (422 beyond)
    timeline: TimelineConfig = field(default_factory=TimelineConfig)


# --------------------------------------------------------------------------- response schemas


class Attention(BaseModel):
    frame_shift_ms: float = Field(description="time between attention frames")
    layer1: Optional[list[float]] = Field(None, description="attention layer 1, one weight per frame")
    mixture: Optional[list[float]] = Field(None, description="MOMA mixture sum_n gamma_n a_n, one weight per frame")
    blocks: Optional[list[list[float]]] = Field(None, description="each MOMA block's weights (blocks x frames)")
    gammas: Optional[list[float]] = Field(None, description="mixture weights of the blocks")


class PredictResponse(BaseModel):
    label: str = Field(description="the most probable emotion; empty when status is no-speech")
    status: str = Field(description="ok; too-short (under min_speech_s of speech: predicted, do not trust it); "
                                    "no-speech (no label, no probabilities)")
    confidence: float = Field(description="the top probability (0 without speech)")
    calibrated: bool = Field(description="true when the model's probabilities went through a softmax "
                                         "temperature fitted on validation speakers")
    speech_s: Optional[float] = Field(None, description="seconds of speech the VAD found")
    ood_score: Optional[float] = Field(None, description="distance of the recording from the model's training "
                                                         "utterances (Mahalanobis); null when the model has no "
                                                         "out-of-domain statistics or there was no speech")
    in_domain: Optional[bool] = Field(None, description="false when ood_score is above the model's threshold "
                                                        "(GET /v1/model, ood.threshold): the recording is unlike "
                                                        "anything the model was trained on, do not trust the label")
    probabilities: dict[str, float]
    duration_s: float
    num_frames: int
    attention: Optional[Attention] = None
    waveform: Optional[list[list[float]]] = Field(None, description="[min, max] per slice, for drawing")


class TimelineWindow(BaseModel):
    start_s: float
    end_s: float
    speech: float
    label: str
    raw_label: str
    probabilities: dict[str, float]
    raw_probabilities: dict[str, float]
    ood_score: Optional[float] = Field(None, description="this window's out-of-domain score (as /v1/predict's)")
    in_domain: Optional[bool] = None


class TimelineSegment(BaseModel):
    start_s: float
    end_s: float
    label: str
    confidence: float = Field(description="mean smoothed probability of the label over the segment")


class TimelineResponse(BaseModel):
    labels: list[str]
    duration_s: float
    regions: list[list[float]]
    segments: list[TimelineSegment]
    windows: list[TimelineWindow]
    config: dict[str, Any]


class ModelInfo(BaseModel):
    labels: list[str]
    backend: str
    sample_rate: int
    frame_shift_ms: float
    architecture: str
    normalisation: str
    config: dict[str, Any]
    card: dict[str, Any]
    moma_version: str
    source: str
    kind: str = "model"  # "ensemble" for `moma combine` files and linear functionals models
    rule: str = ""  # an ensemble's combination rule
    members: list[dict[str, Any]] = []  # an ensemble's members: kind, source, labels, weight, temperature, ...
    ood: Optional[dict[str, Any]] = Field(None, description="the out-of-domain score's threshold and how it was "
                                                            "set; null for a model without it (see ood_note)")
    ood_note: str = ""  # why ood is null
    ood_member: str = ""  # an ensemble: the member whose out-of-domain score it reports


class Health(BaseModel):
    status: str


class Error(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Error, "description": "upload larger than the configured limit"},
    415: {"model": Error, "description": "not an audio format this service decodes"},
    422: {"model": Error, "description": "audio decoded but unusable (too short, too long, ...) or bad form"},
    503: {"model": Error, "description": "too many requests waiting; retry later"},
}


# --------------------------------------------------------------------------- body limit


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes, declared or streamed.

    A declared Content-Length is checked before reading; a chunked body is read
    (up to the limit, no further) and replayed to the app.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                await _send_error(send, 413, f"upload of {int(declared)} bytes exceeds the limit of {self.limit}")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _send_error(send, 413, f"upload exceeds the limit of {self.limit} bytes")
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Callable, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status)
    await response({"type": "http"}, _noop_receive, send)


async def _noop_receive() -> dict:
    return {"type": "http.disconnect"}


# --------------------------------------------------------------------------- app


def create_app(predictor: Predictor, settings: ServiceSettings | None = None) -> FastAPI:
    """The ASGI app for one predictor. All state lives on ``app.state``; nothing is global."""
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="moma-infer")
        app.state.slots = asyncio.Semaphore(settings.workers + settings.queue)
        try:
            yield
        finally:
            app.state.pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="moma speech emotion recognition", version=predictor.describe()["moma_version"],
                  description="Speech emotion recognition with MOMA (Jalal et al., Interspeech 2020).",
                  lifespan=lifespan)
    app.state.predictor = predictor
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)

    async def in_pool(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
        slots: asyncio.Semaphore = request.app.state.slots
        if slots.locked():
            raise HTTPException(503, "too many requests waiting; retry later", headers={"Retry-After": "1"})
        async with slots:
            return await asyncio.get_running_loop().run_in_executor(request.app.state.pool, fn, *args)

    def decode(data: bytes, name: str) -> Any:
        return decode_audio_bytes(data, predictor.sample_rate, name=name,
                                  min_duration=predictor.config.features.frame_length_ms / 1000.0,
                                  max_duration_s=settings.max_duration_s)

    async def read_upload(file: UploadFile) -> tuple[bytes, str]:
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes")
        return data, (file.filename or "upload")[:200]

    @app.exception_handler(UnsupportedAudio)
    async def unsupported(_: Request, exc: UnsupportedAudio) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=415)

    @app.exception_handler(AudioError)
    async def unusable(_: Request, exc: AudioError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/v1/model", response_model=ModelInfo, tags=["model"])
    async def model_info() -> dict[str, Any]:
        return predictor.describe()

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS, tags=["model"])
    async def predict(request: Request, file: UploadFile = File(..., description="audio file"),
                      attention: bool = Query(True, description="include attention weights"),
                      waveform: bool = Query(False, description="include a waveform envelope for drawing")
                      ) -> dict[str, Any]:
        data, name = await read_upload(file)

        def work() -> dict[str, Any]:
            signal = decode(data, name)
            pred = predictor.predict_prepared([signal])[0]
            out: dict[str, Any] = {"label": pred.label, "status": pred.status, "confidence": pred.confidence,
                                   "calibrated": pred.calibrated, "speech_s": pred.speech_s,
                                   "ood_score": pred.ood_score, "in_domain": pred.in_domain,
                                   "probabilities": pred.probabilities,
                                   "duration_s": signal.shape[0] / predictor.sample_rate,
                                   "num_frames": pred.num_frames}
            if attention:
                out["attention"] = {"frame_shift_ms": pred.frame_shift_ms,
                                    **{k: np.asarray(v, dtype=np.float64).round(6).tolist()
                                       for k, v in pred.attention.items()}}
            if waveform:
                out["waveform"] = waveform_envelope(signal)
            return out

        return await in_pool(request, work)

    @app.post("/v1/timeline", response_model=TimelineResponse, responses=ERRORS, tags=["model"])
    async def timeline(request: Request, file: UploadFile = File(..., description="audio file"),
                       window: float = Query(settings.timeline.window_s, gt=0.05, le=30.0, description="s"),
                       hop: float = Query(settings.timeline.hop_s, gt=0.05, le=30.0, description="s"),
                       smooth: int = Query(settings.timeline.smooth, ge=1, le=101)) -> dict[str, Any]:
        data, name = await read_upload(file)
        cfg = TimelineConfig(window_s=window, hop_s=hop, smooth=smooth, min_speech=settings.timeline.min_speech,
                             block_s=settings.timeline.block_s, batch_size=settings.timeline.batch_size,
                             vad=settings.timeline.vad)  # None: the predictor's speech check, as /v1/predict

        def work() -> dict[str, Any]:
            return timeline_for_signal(predictor, decode(data, name), cfg).to_dict()

        return await in_pool(request, work)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    return app


def run_server(predictor: Predictor, settings: ServiceSettings | None = None, *, host: str = "127.0.0.1",
               port: int = 8000) -> None:
    """Serve with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(predictor, settings), host=host, port=port, log_level="info")
