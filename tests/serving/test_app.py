"""Tests for moma.serving.app: every endpoint, the error contract (413 / 415 / 422 / 503, never 500),
WebM/Opus uploads, the OpenAPI spec, and a schemathesis fuzz run with no server errors.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from helpers import LABELS, make_webm_opus  # noqa: E402


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from moma.audio.vad import VadConfig
    from moma.inference.predictor import Predictor

    # noise stands in for speech
    return Predictor.from_checkpoint(tiny_checkpoint, speech_check=VadConfig(engine="energy"))


def make_app(predictor, **settings):
    from moma.serving.app import ServiceSettings, create_app

    return create_app(predictor, ServiceSettings(**settings))


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(make_app(predictor, max_upload_bytes=200_000, max_duration_s=5.0)) as c:
        yield c


def audio_bytes(seconds: float, fmt: str = "WAV", sr: int = 16000, level: float = 0.1) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    sf.write(buf, (rng.normal(size=int(seconds * sr)) * level).astype(np.float32), sr, format=fmt)
    return buf.getvalue()


def test_healthz_and_model(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["labels"] == LABELS
    assert info["sample_rate"] == 16000 and info["architecture"] == "moma"
    assert info["config"]["model"]["hidden_size"] == 8
    assert "epoch" in info["card"]


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_predict_formats(client, fmt):
    r = client.post("/v1/predict", files={"file": (f"a.{fmt.lower()}", audio_bytes(1.0, fmt, sr=22050))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in LABELS
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["duration_s"] == pytest.approx(1.0, abs=0.06)  # MP3 adds encoder padding
    assert len(body["attention"]["mixture"]) == body["num_frames"]
    assert len(body["attention"]["blocks"]) == 3 and body["attention"]["frame_shift_ms"] == 10.0
    assert body["waveform"] is None


def test_predict_matches_python_api(client, predictor):
    data = audio_bytes(1.2)
    r = client.post("/v1/predict?waveform=true&attention=false", files={"file": ("x.wav", data)})
    assert r.status_code == 200
    body = r.json()
    direct = predictor.predict_signal(*sf.read(io.BytesIO(data), dtype="float32")[::-1][::-1])
    assert body["label"] == direct.label
    for lab in LABELS:
        assert body["probabilities"][lab] == pytest.approx(direct.probabilities[lab], abs=1e-6)
    assert body["attention"] is None
    assert 100 < len(body["waveform"]) <= 800 and all(lo <= hi for lo, hi in body["waveform"])
    assert (body["status"], body["calibrated"]) == (direct.status, direct.calibrated) == ("ok", True)
    assert body["confidence"] == pytest.approx(direct.confidence, abs=1e-6) and body["speech_s"] > 0.5


def test_silence_gets_no_emotion_and_the_schema_says_so(client):
    silence = io.BytesIO()
    sf.write(silence, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
    r = client.post("/v1/predict", files={"file": ("quiet.wav", silence.getvalue())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["label"], body["probabilities"], body["confidence"]) == ("no-speech", "", {}, 0.0)
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"status", "confidence", "calibrated", "speech_s"} <= set(schema["PredictResponse"]["properties"])
    assert "segments" in schema["TimelineResponse"]["properties"]


def test_predict_webm_opus(client):
    pytest.importorskip("av")
    r = client.post("/v1/predict", files={"file": ("recording.webm", make_webm_opus(1.0), "audio/webm")})
    assert r.status_code == 200, r.text
    assert r.json()["duration_s"] == pytest.approx(1.0, abs=0.05)


def test_errors_413_415_422(client, predictor):
    big = b"\0" * 300_000
    r = client.post("/v1/predict", files={"file": ("big.wav", big)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # chunked upload without Content-Length is cut off at the limit too
    r = client.post("/v1/predict", content=iter([b"x" * 100_000] * 3),
                    headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413
    r = client.post("/v1/predict", files={"file": ("notes.txt", b"hello, I am text and not audio" * 20)})
    assert r.status_code == 415 and "audio format" in r.json()["detail"]
    r = client.post("/v1/predict", files={"file": ("short.wav", audio_bytes(0.01))})
    assert r.status_code == 422 and "too short" in r.json()["detail"]
    r = client.post("/v1/predict", files={"file": ("long.wav", audio_bytes(6.0, "FLAC", sr=8000, level=0.0))})
    assert r.status_code == 422 and "too long" in r.json()["detail"]
    r = client.post("/v1/predict", files={"file": ("empty.wav", b"")})
    assert r.status_code == 422
    r = client.post("/v1/predict")  # no file field at all
    assert r.status_code == 422
    truncated = audio_bytes(1.0)[:60]
    r = client.post("/v1/predict", files={"file": ("cut.wav", truncated)})
    assert r.status_code in (415, 422) and r.json()["detail"]


def test_timeline_endpoint(client):
    sr = 16000
    rng = np.random.default_rng(0)
    sig = np.concatenate([np.zeros(sr), rng.normal(size=2 * sr) * 0.2, np.zeros(sr)]).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, sig, sr, format="WAV")
    r = client.post("/v1/timeline?window=1.0&hop=0.5&smooth=1", files={"file": ("t.wav", buf.getvalue())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration_s"] == pytest.approx(4.0)
    assert len(body["regions"]) == 1
    start, end = body["regions"][0]
    assert start == pytest.approx(1.0, abs=0.05) and end == pytest.approx(3.0, abs=0.05)
    labelled = [w for w in body["windows"] if w["label"]]
    assert labelled and all(0.5 <= w["start_s"] <= 2.5 for w in labelled)
    assert client.post("/v1/timeline?window=-1", files={"file": ("t.wav", buf.getvalue())}).status_code == 422


def test_full_queue_gets_503(predictor):
    """With one worker and no queue, a second request arriving while the first runs is refused, not queued."""
    import threading

    import httpx

    gate = threading.Event()
    original = predictor.predict_prepared

    def slow(signals):
        gate.wait(5)
        return original(signals)

    app = make_app(predictor, workers=1, queue=0)

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
                first = asyncio.create_task(ac.post("/v1/predict", files={"file": ("a.wav", audio_bytes(0.5))}))
                await asyncio.sleep(0.3)
                second = await ac.post("/v1/predict", files={"file": ("b.wav", audio_bytes(0.5))})
                gate.set()
                return [(await first).status_code, second.status_code, second.headers.get("retry-after")]

    predictor.predict_prepared = slow  # instance attribute: only this test's predictor object
    try:
        codes = asyncio.run(scenario())
    finally:
        del predictor.predict_prepared
    assert codes == [200, 503, "1"]


def test_openapi_spec(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/timeline", "/v1/model", "/healthz"} <= set(spec["paths"])
    responses = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "413", "415", "422", "503"} <= set(responses)


def test_index_page(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/v1/predict" in r.text and "MediaRecorder" in r.text


@pytest.mark.slow
def test_schemathesis_fuzz_no_server_errors(predictor):
    """Fuzz every operation of the OpenAPI spec; the service must never answer 5xx (503 excepted: it is
    the documented back-pressure answer, and does not occur with the default queue)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = make_app(predictor, max_upload_bytes=100_000)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    statuses: list[int] = []
    with TestClient(app):
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case) -> None:
                response = case.call()
                statuses.append(response.status_code)
                if response.status_code >= 500:
                    failures.append(f"{operation.label}: {response.status_code} {response.text[:200]}")

            check()
    assert failures == []
    assert len(statuses) >= 40 and 422 in statuses  # the fuzzer really called the API, bad inputs included


def test_the_service_returns_the_out_of_domain_score_and_the_model_its_threshold(client, tiny_checkpoint, tmp_path):
    from helpers import add_test_ood, speech_like, tone

    from moma.audio.vad import VadConfig
    from moma.inference.predictor import Predictor

    info = client.get("/v1/model").json()  # the tiny model was made without out-of-domain statistics
    assert info["ood"] is None and "moma ood fit" in info["ood_note"]
    body = client.post("/v1/predict", files={"file": ("a.wav", audio_bytes(1.0))}).json()
    assert body["ood_score"] is None and body["in_domain"] is None
    predictor = Predictor.from_checkpoint(add_test_ood(tiny_checkpoint, tmp_path / "ood.safetensors"),
                                          speech_check=VadConfig(engine="energy"))
    with TestClient(make_app(predictor)) as c:
        info = c.get("/v1/model").json()
        assert info["ood"]["threshold"] == pytest.approx(predictor.ood.threshold, abs=1e-4)
        assert info["ood"]["rule"] == "speaker-cv" and info["ood_note"] == ""
        results = {}
        for name, signal in (("kin", speech_like(40, 1.5, amp=0.2)), ("tone", tone(600.0, 1.5, amp=0.3))):
            buf = io.BytesIO()
            sf.write(buf, signal, 16000, format="WAV")
            upload = {"file": (f"{name}.wav", buf.getvalue())}
            results[name] = c.post("/v1/predict?attention=false", files=upload).json()
    assert results["kin"]["in_domain"] is True and results["tone"]["in_domain"] is False
    assert results["tone"]["ood_score"] > info["ood"]["threshold"] > results["kin"]["ood_score"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"ood_score", "in_domain"} <= set(schema["PredictResponse"]["properties"])
    assert "ood" in schema["ModelInfo"]["properties"]
