"""Tests for moma.inference.export: ``moma export`` writes model.onnx (dynamic batch and time axes) and model.json,
onnxruntime matches torch within 1e-4 on real EmoDB utterances of different lengths (paper-size model),
and the onnx backend of Predictor gives the torch backend's predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from helpers import LABELS, make_tiny_checkpoint, run_cli, write_tone  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    res = run_cli("export", str(tiny_checkpoint), "--format", "onnx", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_export_writes_model_and_metadata(exported):
    import onnx

    meta = json.loads((exported / "model.json").read_text())
    assert meta["format"] == "moma-onnx/1"
    assert meta["labels"] == LABELS
    assert meta["features"]["n_mels"] == 23 and meta["features"]["frame_shift_ms"] == 10.0
    assert meta["outputs"] == ["logits", "layer1", "mixture", "blocks", "gammas"]
    assert meta["normaliser"]["mode"] == "global" and len(meta["normaliser"]["mean"]) == 23
    assert meta["moma_version"]
    proto = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(proto)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"features": ["batch", "time", 23], "lengths": ["batch"]}
    assert json.loads({p.key: p.value for p in proto.metadata_props}["moma"])["labels"] == LABELS


def test_onnx_backend_matches_torch_on_files(tiny_checkpoint, exported, tmp_path):
    from moma.inference.predictor import Predictor

    paths = [write_tone(tmp_path / f"t{i}.wav", s, seed=i) for i, s in enumerate([0.3, 1.7, 0.9, 3.2])]
    torch_p = Predictor.from_checkpoint(tiny_checkpoint, speech_check=None)
    onnx_p = Predictor.from_checkpoint(exported, backend="onnx", speech_check=None)
    assert onnx_p.labels == torch_p.labels and onnx_p.backend.name == "onnx"
    for a, b in zip(torch_p.predict_files(paths, batch_size=3), onnx_p.predict_files(paths, batch_size=3)):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
        assert a.label == b.label
        for key in ("layer1", "mixture", "blocks", "gammas"):
            np.testing.assert_allclose(a.attention[key], b.attention[key], atol=1e-5)
    # a checkpoint path with backend="onnx" exports in memory
    mem = Predictor.from_checkpoint(tiny_checkpoint, backend="onnx", speech_check=None)
    np.testing.assert_allclose(mem.predict_file(paths[1]).logits, torch_p.predict_file(paths[1]).logits, atol=1e-4)


@pytest.mark.slow
def test_attention_only_and_mean_archs_export(tmp_path):
    from moma.inference.predictor import Predictor

    for arch, outputs in (("attention", ["logits", "layer1"]), ("mean", ["logits"])):
        ckpt = make_tiny_checkpoint(tmp_path / arch, arch=arch)
        res = run_cli("export", str(ckpt), "--out", str(tmp_path / f"{arch}_onnx"))
        assert res.returncode == 0, res.stderr
        assert json.loads((tmp_path / f"{arch}_onnx" / "model.json").read_text())["outputs"] == outputs
        sig = np.random.default_rng(0).normal(scale=0.1, size=9000).astype(np.float32)
        a = Predictor.from_checkpoint(ckpt, speech_check=None).predict_signal(sig, 16000)
        b = Predictor.from_checkpoint(tmp_path / f"{arch}_onnx", backend="onnx",
                                      speech_check=None).predict_signal(sig, 16000)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
        assert set(a.attention) == set(b.attention)


def test_tampered_model_is_refused(exported, tmp_path):
    import shutil

    from moma.inference.predictor import Predictor

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        Predictor.from_checkpoint(copy, backend="onnx")
    with pytest.raises(FileNotFoundError, match="neither a moma ONNX export"):
        Predictor.from_checkpoint(tmp_path, backend="onnx")


@pytest.fixture(scope="module")
def paper_size_checkpoint(tmp_path_factory, emodb_root) -> tuple[Path, list[Path]]:
    """The paper's architecture (10.6 M parameters, untrained weights: parity does not need training),
    normalised with statistics of real EmoDB utterances, plus utterances of clearly different lengths."""
    import torch

    from moma.audio.io import load_audio
    from moma.checkpoint import save_checkpoint
    from moma.config import RunConfig, replace
    from moma.features.frontend import compute_features
    from moma.features.normalise import Normaliser
    from moma.model import build_model

    wavs = sorted((emodb_root / "wav").glob("*.wav"))
    by_len = sorted(wavs, key=lambda p: p.stat().st_size)
    picks = [by_len[0], by_len[len(by_len) // 3], by_len[2 * len(by_len) // 3], by_len[-1]]
    cfg = RunConfig()
    cfg = replace(cfg, model=replace(cfg.model, num_classes=7))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    norm = Normaliser("global").fit([compute_features(load_audio(p), cfg.features) for p in picks])
    labels = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
    path = save_checkpoint(tmp_path_factory.mktemp("paper") / "paper.safetensors", model, cfg, labels, norm)
    return path, picks


@pytest.mark.slow
def test_parity_real_utterances_paper_size(paper_size_checkpoint, tmp_path):
    """onnxruntime logits within 1e-4 of torch on real EmoDB utterances of different lengths,
    one at a time and as one padded batch."""
    from moma.inference.export import export_onnx
    from moma.inference.predictor import Predictor

    ckpt, wavs = paper_size_checkpoint
    export_onnx(ckpt, tmp_path / "onnx")
    torch_p = Predictor.from_checkpoint(ckpt, speech_check=None)
    onnx_p = Predictor.from_checkpoint(tmp_path / "onnx", backend="onnx", speech_check=None)
    feats = [torch_p.file_features(p)[0] for p in wavs]
    frames = [f.shape[0] for f in feats]
    assert max(frames) > 3 * min(frames)  # lengths really differ
    for f in feats:
        a, b = torch_p.predict_features(f), onnx_p.predict_features(f)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a.attention["mixture"], b.attention["mixture"], atol=1e-5)
    for a, b in zip(torch_p.predict_batch(feats), onnx_p.predict_batch(feats)):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_export_quantize_int8_writes_int8_graph_that_agrees(tiny_checkpoint, exported, tmp_path):
    """``moma export --quantize int8``: DynamicQuantizeLSTM in the graph, metadata says so, posteriors agree."""
    import onnx

    from moma.inference.predictor import Predictor

    out = tmp_path / "int8"
    res = run_cli("export", str(tiny_checkpoint), "--out", str(out), "--quantize", "int8")
    assert res.returncode == 0, res.stderr
    assert "pre-processing" not in res.stderr  # onnxruntime's advice is filtered out
    meta = json.loads((out / "model.json").read_text())
    assert meta["quantization"] == "dynamic-int8"
    assert json.loads((exported / "model.json").read_text())["quantization"] == "none"
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    q = Predictor.from_checkpoint(out, backend="onnx", speech_check=None)  # an int8 export reports itself as such
    assert q.backend.name == "onnx-int8"
    ref = Predictor.from_checkpoint(tiny_checkpoint, speech_check=None)
    rng = np.random.default_rng(3)
    feats = [rng.normal(size=(n, 23)).astype(np.float32) for n in (40, 77, 150)]
    for a, b in zip(ref.predict_batch(feats), q.predict_batch(feats)):
        pa, pb = np.array(list(a.probabilities.values())), np.array(list(b.probabilities.values()))
        assert np.abs(pa - pb).max() < 0.02
        assert not np.array_equal(a.logits, b.logits)  # it is a different (quantised) computation


def test_unknown_quantization_is_rejected(tiny_checkpoint, tmp_path):
    from moma.inference.export import export_onnx

    with pytest.raises(ValueError, match="quantization"):
        export_onnx(tiny_checkpoint, tmp_path / "x", quantize="int4")


def test_an_export_keeps_the_out_of_domain_statistics(tiny_checkpoint, exported, tmp_path):
    from helpers import add_test_ood

    from moma.inference.predictor import Predictor

    assert "ood" not in json.loads((exported / "model.json").read_text())  # a model made without them
    assert Predictor.from_checkpoint(exported, backend="onnx", speech_check=None).ood is None
    ckpt = add_test_ood(tiny_checkpoint, tmp_path / "ood.safetensors")
    res = run_cli("export", str(ckpt), "--out", str(tmp_path / "onnx"))
    assert res.returncode == 0, res.stderr
    paths = [write_tone(tmp_path / f"t{i}.wav", s, seed=i) for i, s in enumerate([0.6, 1.4])]
    torch_p = Predictor.from_checkpoint(ckpt, speech_check=None)
    for source in (tmp_path / "onnx", ckpt):  # an export folder, and a checkpoint exported in memory
        onnx_p = Predictor.from_checkpoint(source, backend="onnx", speech_check=None)
        assert onnx_p.ood.threshold == pytest.approx(torch_p.ood.threshold)
        for a, b in zip(torch_p.predict_files(paths), onnx_p.predict_files(paths)):
            assert b.ood_score == pytest.approx(a.ood_score, rel=1e-5) and a.in_domain == b.in_domain
