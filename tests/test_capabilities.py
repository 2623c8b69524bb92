"""Tests for moma.capabilities and the CLI's one-line refusals: missing optional extras, bf16 on a CPU
without a bf16 LSTM kernel (probed, and faked), CUDA that is not there, and CLI flags that used to do nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_tone

from moma import capabilities
from moma.capabilities import MissingExtraError, UnsupportedHardwareError, bf16_unsupported_reason, require_extra
from moma.cli.main import main

TINY = ["--set", "model.hidden_size=8", "--set", "model.context_dim=8", "--set", "model.projection_dim=8",
        "--set", "train.max_epochs=1", "--set", "train.tensorboard=false", "--set", "train.val_speakers=1"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Four speakers, two labels, short tones: enough for a fold and for --speakers checks."""
    root = tmp_path_factory.mktemp("caps_corpus")
    rows = ["id,path,speaker,label"]
    for i in range(16):
        write_tone(root / f"u{i:02d}.wav", 0.5 + 0.1 * (i % 3), seed=i)
        rows.append(f"u{i:02d},u{i:02d}.wav,s{i % 4},{'angry' if i % 2 else 'sad'}")
    path = root / "m.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ------------------------------------------------------------------ require_extra


def test_require_extra_returns_the_module_when_installed():
    assert require_extra("json", "none", "a test").dumps([1]) == "[1]"


def test_require_extra_names_the_extra_when_the_module_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what an install without the extra looks like to import
    with pytest.raises(MissingExtraError) as info:
        require_extra("fastapi", "serve", "moma serve")
    assert str(info.value) == ("moma serve needs the optional package 'fastapi', which is not installed: "
                               "pip install 'moma-ser[serve]'")
    assert isinstance(info.value, ImportError)  # library callers that catch ImportError still do


def test_require_extra_keeps_a_broken_install_visible(tmp_path, monkeypatch):
    """A module that is installed but misses one of its own dependencies is not reported as a missing extra."""
    (tmp_path / "half_installed_pkg.py").write_text("import a_dependency_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require_extra("half_installed_pkg", "serve", "a test")
    assert not isinstance(info.value, MissingExtraError) and info.value.name == "a_dependency_that_is_not_there"


# ------------------------------------------------------------------ bf16 probe


def test_bf16_probe_agrees_with_what_torch_does():
    """The cached answer is the real one: where it says yes an LSTM runs under autocast, where no it raises."""
    reason = bf16_unsupported_reason("cpu")
    assert bf16_unsupported_reason("cpu") is reason  # cached: probed once per process
    lstm = torch.nn.LSTM(3, 5, batch_first=True)
    x = torch.randn(2, 4, 3)
    if reason is None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = lstm(x)
        assert out.dtype == torch.bfloat16
    else:
        assert "bf16" in reason and "\n" not in reason
        with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(x)


def test_bf16_probe_leaves_the_random_stream_alone():
    bf16_unsupported_reason.cache_clear()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bf16_unsupported_reason("cpu")  # a fresh probe draws its own random input
    assert torch.equal(torch.rand(3), expected)


@pytest.fixture()
def no_bf16(monkeypatch):
    """Pretend this CPU has no bf16 LSTM kernel, whatever it really has."""
    reason = "this CPU has no bf16 LSTM kernel (faked by the test)"
    monkeypatch.setattr(capabilities, "bf16_unsupported_reason", lambda device_type="cpu": reason)
    monkeypatch.setattr("moma.evaluation.posteriors.bf16_unsupported_reason", lambda device_type="cpu": reason)
    return reason


def test_training_with_bf16_is_refused_before_any_work(no_bf16, manifest, tmp_path, capsys):
    cache = tmp_path / "cache"
    code = main(["cv", "--manifest", str(manifest), "--out", str(tmp_path / "run"), "--protocol", "speaker-kfold",
                 "--k", "2", "--cache", str(cache), "-q", *TINY, "--set", "train.bf16=true"])
    assert code == 2
    one_line_error(capsys, "training with bf16 is not supported here", "faked by the test", "train.bf16=false")
    assert not cache.exists()  # refused before features were computed


def test_bf16_inference_backend_is_refused(no_bf16, tiny_checkpoint):
    from moma.checkpoint import load_checkpoint
    from moma.inference.backends import TorchBackend

    with pytest.raises(UnsupportedHardwareError, match="inference backend 'torch-bf16' with bf16 is not supported"):
        TorchBackend(load_checkpoint(tiny_checkpoint).model, name="torch-bf16", autocast=torch.bfloat16)


def test_bf16_checkpoint_is_scored_in_fp32_where_bf16_cannot_run(no_bf16, tiny_checkpoint, manifest):
    """A checkpoint trained with bf16 elsewhere still evaluates here, in fp32, with the fp32 posteriors."""
    from moma.checkpoint import load_checkpoint
    from moma.config import replace
    from moma.evaluation.metrics import predict_posteriors

    loaded = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(0)
    feats = {f"k{i}": rng.standard_normal((20 + i, loaded.config.model.input_dim)).astype(np.float32)
             for i in range(3)}
    fp32 = predict_posteriors(loaded.model, feats, sorted(feats), loaded.config, "cpu")
    as_bf16 = replace(loaded.config, train=replace(loaded.config.train, bf16=True))
    post = predict_posteriors(loaded.model, feats, sorted(feats), as_bf16, "cpu")
    for key in feats:
        np.testing.assert_array_equal(post[key], fp32[key])


def test_bench_reports_unsupported_rows_without_running_them(no_bf16, tmp_path):
    from moma.bench import BenchOptions, plan_cases

    cases = {c.name: c for c in plan_cases(BenchOptions(out=tmp_path, quick=True), tmp_path)}
    assert "faked by the test" in cases["tiny-1t-bf16"].unsupported and not cases["tiny-1t-fp32"].unsupported
    assert "faked by the test" in cases["torch-bf16-b1"].unsupported
    assert "torch-bf16" not in cases["head-to-head"].kwargs["backends"]
    assert "torch-bf16" in cases["head-to-head"].record["not_supported"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_that_is_not_there_is_one_line(tiny_checkpoint, manifest, tmp_path, capsys):
    assert main(["evaluate", str(tiny_checkpoint), "--manifest", str(manifest), "--out", str(tmp_path / "e"),
                 "--cache", str(tmp_path / "c"), "--device", "cuda"]) == 2
    one_line_error(capsys, "CUDA is not available", "--device cpu")


# ------------------------------------------------------------------ every command without its extra


def test_serve_without_the_serve_extra(monkeypatch, tiny_checkpoint, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", "0"]) == 2
    one_line_error(capsys, "moma serve: error:", "'fastapi'", "pip install 'moma-ser[serve]'")


def test_export_without_onnx(monkeypatch, tiny_checkpoint, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "moma export: error:", "'onnx'", "pip install 'moma-ser[export]'")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_backends_without_onnxruntime(monkeypatch, backend, tiny_checkpoint, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    wav = write_tone(tmp_path / "a.wav", 1.0)
    assert main(["predict", str(wav), "--checkpoint", str(tiny_checkpoint), "--backend", backend]) == 2
    one_line_error(capsys, f"the '{backend}' backend needs the optional package 'onnxruntime'",
                   "pip install 'moma-ser[export]'")


def test_classical_without_opensmile(monkeypatch, manifest, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "opensmile", None)
    assert main(["classical", "--manifest", str(manifest), "--out", str(tmp_path / "c")]) == 2
    one_line_error(capsys, "moma classical needs the optional package 'opensmile'", "moma-ser[classical]")


def test_descriptor_features_without_opensmile(monkeypatch, manifest, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "opensmile", None)
    code = main(["cv", "--manifest", str(manifest), "--out", str(tmp_path / "r"), "--protocol", "speaker-kfold",
                 "--k", "2", "--cache", str(tmp_path / "cache"), "-q", *TINY, "--set", "features.lld=egemaps"])
    assert code == 2
    one_line_error(capsys, "features.lld=egemaps needs the optional package 'opensmile'", "moma-ser[classical]")


@pytest.mark.parametrize("extractor,module", [("librosa", "librosa"),
                                              ("python_speech_features", "python_speech_features")])
def test_bench_reference_front_end_without_the_bench_extra(monkeypatch, extractor, module):
    """The bench goes on without a reference front end; its row says which extra brings it."""
    from moma.bench.cases import feature_extractor

    monkeypatch.setitem(sys.modules, module, None)
    row = feature_extractor(extractor, seconds=0.5, seed=0, budget_s=0.05)
    assert row == {"skipped": f"the {extractor} row of moma bench needs the optional package '{module}', which "
                              "is not installed: pip install 'moma-ser[bench]'"}


# ------------------------------------------------------------------ CLI edges


def test_unknown_speakers_are_named(tiny_checkpoint, manifest, tmp_path, capsys):
    assert main(["evaluate", str(tiny_checkpoint), "--manifest", str(manifest), "--out", str(tmp_path / "e"),
                 "--cache", str(tmp_path / "c"), "--speakers", "s1", "nobody"]) == 2
    one_line_error(capsys, "speaker(s) nobody not in", "(it has s0, s1, s2, s3)")
    assert not (tmp_path / "e").exists()


def test_resume_needs_an_earlier_run(manifest, tmp_path, capsys):
    base = ["cv", "--manifest", str(manifest), "--protocol", "speaker-kfold", "--k", "2",
            "--cache", str(tmp_path / "c"), "-q", *TINY]
    assert main([*base, "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    one_line_error(capsys, "--resume:", "holds no earlier run")
    assert main([*base, "--out", str(tmp_path / "fresh"), "--resume", "--restart"]) == 2
    one_line_error(capsys, "--resume and --restart contradict")


@pytest.mark.parametrize("flag,value", [("--test-speakers", "s0"), ("--test-session", "Ses01")])
def test_protocol_flags_that_the_protocol_ignores_are_refused(flag, value, manifest, tmp_path, capsys):
    assert main(["cv", "--manifest", str(manifest), "--out", str(tmp_path / "r"), "--protocol", "loso",
                 flag, value, "-q", *TINY]) == 2
    one_line_error(capsys, f"{flag} is for --protocol")


def test_demo_refuses_a_root_for_the_synthetic_corpus(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--root", str(tmp_path)]) == 2
    one_line_error(capsys, "--root is for a real corpus")


def test_the_inference_thread_policy_holds_whatever_loads_first():
    """In a fresh process: loading the Silero VAD leaves torch's threads as they were (it used to import the
    silero_vad package, whose import sets them to one); the policy's default is INFERENCE_THREADS; 0 leaves
    torch's own count; a negative count is refused."""
    import importlib.util
    import subprocess

    code = ("import torch\n"
            "from moma.audio.vad import silero_session\n"
            "from moma.capabilities import INFERENCE_THREADS, inference_threads, set_inference_threads\n"
            "torch.set_num_threads(2)\n"
            "silero_session()\n"
            "print(torch.get_num_threads())\n"
            "print(set_inference_threads(None), torch.get_num_threads(), inference_threads(), INFERENCE_THREADS)\n"
            "torch.set_num_threads(2)\n"
            "print(set_inference_threads(0), torch.get_num_threads(), inference_threads())\n")
    if importlib.util.find_spec("silero_vad") is None:
        pytest.skip("silero-vad is not installed")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["2", "1 1 1 1", "0 2 0"]
    with pytest.raises(ValueError, match="threads must be >= 0"):
        capabilities.set_inference_threads(-1)


def test_usable_cores_is_the_affinity_mask():
    import os

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert capabilities.usable_cores() == expected >= 1
