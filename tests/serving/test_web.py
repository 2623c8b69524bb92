"""End-to-end test of the web page in headless Chromium (Debian's ``chromium`` driven by Playwright):
a real EmoDB file (or a generated one when EmoDB is absent) is uploaded through the page and the rendered
probability bars and attention plot are checked against the API's answer.

Skipped cleanly when Playwright or /usr/bin/chromium is missing; no browser is ever downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from helpers import LABELS, write_tone  # noqa: E402

CHROMIUM = os.environ.get("MOMA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

if not Path(CHROMIUM).is_file():
    pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint):
    """A real uvicorn server on loopback for ``checkpoint``, in a thread: yields (url, predictor)."""
    import uvicorn

    from moma.audio.vad import VadConfig
    from moma.inference.predictor import Predictor
    from moma.serving.app import create_app

    predictor = Predictor.from_checkpoint(checkpoint,
                                          speech_check=VadConfig(engine="energy"))  # noise stands in for speech
    port = _free_port()
    config = uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", predictor
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """A real uvicorn server on loopback, in a thread, stopped after the module."""
    with running_server(tiny_checkpoint) as running:
        yield running


@pytest.fixture()
def audio_file(tmp_path) -> Path:
    env = os.environ.get("MOMA_EMODB")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared/corpora/emodb"
    real = root / "wav" / "03a01Fa.wav"
    if real.is_file():
        return real
    return write_tone(tmp_path / "speech.wav", 1.5)


@contextlib.contextmanager
def chromium_page(extra_args: tuple[str, ...] = ()):
    """A page in a fresh headless Chromium (Playwright gives every launch a new temporary profile)."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + list(extra_args))
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.fixture()
def page():
    with chromium_page() as p:
        yield p


def test_upload_renders_probabilities_and_attention(server, page, audio_file):
    url, predictor = server
    expected = predictor.predict_file(audio_file)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
    assert ", ".join(LABELS) in page.text_content("#model-info")
    page.set_input_files("#file", str(audio_file))
    page.click("#upload")
    page.wait_for_selector("#bars .bar-row", timeout=30000)
    rows = page.query_selector_all("#bars .bar-row")
    shown = {r.get_attribute("data-label"): float(r.get_attribute("data-probability")) for r in rows}
    assert set(shown) == set(LABELS)
    for lab in LABELS:
        assert shown[lab] == pytest.approx(expected.probabilities[lab], abs=1e-5)
    assert page.get_attribute("#label", "data-label") == expected.label
    # the top bar is the predicted class and its width is its probability
    assert rows[0].get_attribute("data-label") == expected.label
    width = page.eval_on_selector("#bars .bar-row.top .bar-fill", "e => parseFloat(e.style.width)")
    assert width == pytest.approx(100 * expected.probabilities[expected.label], abs=0.06)
    assert page.get_attribute("#plot", "data-attention-curves") == "2"
    assert int(page.get_attribute("#plot", "data-waveform-points")) > 100
    # something was actually drawn on the canvas
    painted = page.eval_on_selector("#plot", """c => { const d = c.getContext('2d').getImageData(0, 0, c.width,
        c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
    assert painted > 1000
    assert "analysed" in page.text_content("#status")
    assert errors == []


def test_bad_upload_shows_error(server, page, tmp_path):
    url, _ = server
    bad = tmp_path / "notes.wav"
    bad.write_text("definitely not audio " * 10)
    page.goto(url + "/")
    page.set_input_files("#file", str(bad))
    page.click("#upload")
    page.wait_for_selector("#status.error", timeout=20000)
    assert "415" in page.text_content("#status")
    assert page.is_hidden("#result")


# Keeps a copy of every file the page uploads (Playwright does not expose blob request bodies).
KEEP_UPLOADS = """
const originalFetch = window.fetch;
window.__uploads = [];
window.fetch = async (resource, init) => {
  if (init && init.body instanceof FormData && init.body.get("file")) {
    const file = init.body.get("file");
    const bytes = new Uint8Array(await file.arrayBuffer());
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    window.__uploads.push({ name: file.name, type: file.type, base64: btoa(text) });
  }
  return originalFetch(resource, init);
};
"""


@pytest.fixture()
def microphone_page(audio_file):
    """Chromium whose microphone plays ``audio_file`` (Chromium's fake capture device), permission granted."""
    with chromium_page(("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                        f"--use-file-for-fake-audio-capture={audio_file}")) as p:
        yield p


def test_record_button_records_the_microphone_and_shows_the_services_answer(server, microphone_page, audio_file):
    """Record about 2 s of a real utterance through the page's Record button, stop, and check that the page
    shows exactly what /v1/predict answers for the WebM/Ogg the page uploaded."""
    import httpx
    import numpy as np

    from moma.serving.uploads import decode_audio_bytes

    url, predictor = server
    page = microphone_page
    page.add_init_script(KEEP_UPLOADS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
    page.click("#record")
    page.wait_for_function("document.getElementById('record').textContent === 'Stop'", timeout=15000)
    assert "Recording" in page.text_content("#status")
    page.wait_for_timeout(2000)
    page.click("#record")
    page.wait_for_selector("#bars .bar-row", timeout=30000)
    uploads = page.evaluate("window.__uploads")
    assert len(uploads) == 1
    name, recorded = uploads[0]["name"], base64.b64decode(uploads[0]["base64"])
    assert name in ("recording.webm", "recording.ogg") and len(recorded) > 1000
    assert errors == []
    assert page.text_content("#record") == "Record"

    # The upload is real audio of about 2 s that carries the utterance's energy, not silence.
    signal = decode_audio_bytes(recorded, predictor.sample_rate, name=name)
    duration = signal.shape[0] / predictor.sample_rate
    assert 1.0 < duration < 4.0, duration
    assert float(np.sqrt(np.mean(signal ** 2))) > 1e-3

    # The page shows what the service says for those very bytes.
    answer = httpx.post(url + "/v1/predict", files={"file": (name, recorded)}, timeout=30).json()
    rows = page.query_selector_all("#bars .bar-row")
    shown = {r.get_attribute("data-label"): float(r.get_attribute("data-probability")) for r in rows}
    assert set(shown) == set(answer["probabilities"])
    for label, p in answer["probabilities"].items():
        assert shown[label] == pytest.approx(p, abs=1e-5)
    assert page.get_attribute("#label", "data-label") == answer["label"]
    assert f"{answer['duration_s']:.2f} s analysed" in page.text_content("#status")


def test_an_out_of_domain_recording_shows_a_warning(tiny_checkpoint, page, tmp_path):
    import soundfile as sf
    from helpers import add_test_ood, speech_like, tone

    sf.write(tmp_path / "kin.wav", speech_like(50, 1.5, amp=0.2), 16000)
    sf.write(tmp_path / "tone.wav", tone(800.0, 1.5, amp=0.3), 16000)
    with running_server(add_test_ood(tiny_checkpoint, tmp_path / "ood.safetensors")) as (url, predictor):
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
        assert "no out-of-domain check" not in page.text_content("#model-info")
        for name, shown in (("tone", True), ("kin", False)):
            page.set_input_files("#file", str(tmp_path / f"{name}.wav"))
            page.click("#upload")
            page.wait_for_function(f"document.getElementById('status').textContent.startsWith('{name}.wav:')")
            assert page.is_visible("#ood") == shown, name
            score = float(page.get_attribute("#ood", "data-score"))
            assert score == pytest.approx(predictor.predict_file(tmp_path / f"{name}.wav").ood_score, abs=2e-3)
        page.set_input_files("#file", str(tmp_path / "tone.wav"))
        page.click("#upload")
        page.wait_for_selector("#ood", state="visible")
        assert "unlike anything the model was trained on" in page.text_content("#ood")
        assert f"threshold {predictor.ood.threshold:.2f}" in page.text_content("#ood")
