"""moma.features.encoders.ge2e: the GE2E speaker encoder of the resemblyzer wheel as a front end, with its REAL
weights (the wheel comes with the `pretrained` extra, which the `test` extra includes)."""

import importlib.util
import json

import numpy as np
import pytest

from moma.audio.io import load_audio
from moma.config import FeatureConfig, load_run_config
from moma.corpora.synthetic import make_synthetic_corpus
from moma.features.cache import FeatureCache, extract_features
from moma.features.frontend import compute_features, feature_config_hash, num_frames

pytestmark = pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None,
                                reason="the resemblyzer wheel (pip install 'moma-ser[pretrained]') is not installed")

GE2E = FeatureConfig(frontend="ge2e")
TINY = ["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8", "train.max_epochs=2",
        "train.lr=0.01", "train.tensorboard=false", "train.val_speakers=1", "features.frontend=ge2e",
        "features.ge2e_layer=weighted"]


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    """A few seconds of a voiced-like synthetic signal (harmonics of a wandering f0 plus a little noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) + 0.05 * rng.standard_normal(t.size)
    return (0.1 * x).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ge2e")
    return root, make_synthetic_corpus(root / "corpus", num_speakers=4, utterances_per_emotion=2, seed=3,
                                       max_duration=2.5)


def test_frames_have_the_filterbank_count_and_each_layers_width():
    x = tone(2.0)
    n = num_frames(len(x), GE2E)
    assert n == num_frames(len(x), FeatureConfig())  # the same 25 ms / 10 ms frames as the fbank front end
    for layer in ("1", "2", "3"):
        assert compute_features(x, FeatureConfig(frontend="ge2e", ge2e_layer=layer)).shape == (n, 256)
    stacked = compute_features(x, FeatureConfig(frontend="ge2e", ge2e_layer="weighted"))
    assert stacked.shape == (n, 768) and stacked.dtype == np.float32
    last = compute_features(x, GE2E)
    np.testing.assert_array_equal(stacked.reshape(n, 3, 256)[:, 2], last)  # layer order: 1, 2, 3
    np.testing.assert_array_equal(compute_features(x, GE2E), last)  # deterministic
    assert not np.allclose(stacked[:, :256], last)  # the layers differ


def test_signals_below_minus_30_dbfs_are_raised_to_it_and_louder_ones_kept():
    x = tone(1.5, seed=1)  # about -21 dBFS RMS
    quiet = compute_features(0.01 * x, GE2E)  # about -61 dBFS, raised to -30
    np.testing.assert_allclose(compute_features(0.001 * x, GE2E), quiet, atol=1e-4)  # raised to the same level
    assert not np.allclose(compute_features(x, GE2E), quiet, atol=1e-2)  # never lowered


def test_the_encoder_is_the_trained_one_same_speaker_embeds_closer(corpus):
    """Resemblyzer's embedding (L2-normed ReLU(linear) of the last state) puts two utterances of one synthetic
    speaker closer than utterances of different speakers, on average: measured once on this corpus, the margin
    was 0.08-0.10 for every emotion (a random LSTM has no reason to order them so)."""
    from moma.features.encoders.ge2e import get_encoder

    _, utts = corpus
    chosen = [u for u in utts if u.label == "neutral"]
    emb = {u.id: get_encoder().embedding(load_audio(u.path, 16000)) for u in chosen}
    spk = {u.id: u.speaker for u in chosen}
    same, diff = [], []
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            (same if spk[a.id] == spk[b.id] else diff).append(float(emb[a.id] @ emb[b.id]))
    assert np.mean(same) > np.mean(diff) + 0.03


def test_a_changed_weights_file_is_refused(monkeypatch, tmp_path):
    from moma.features.encoders import ge2e

    fake = tmp_path / "resemblyzer"
    fake.mkdir()
    (fake / "pretrained.pt").write_bytes(b"not the weights")
    monkeypatch.setattr(ge2e, "weights_path", lambda: fake / "pretrained.pt")
    ge2e._checked_path.cache_clear()
    try:
        with pytest.raises(ge2e.EncoderWeightsError, match="is not the GE2E weights"):
            ge2e.weights_sha256()
    finally:
        monkeypatch.undo()
        ge2e._checked_path.cache_clear()


def test_a_missing_wheel_names_the_extra(monkeypatch):
    from moma.features.encoders import ge2e

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ge2e.EncoderWeightsError, match=r"pip install 'moma-ser\[pretrained\]'"):
        ge2e.weights_path()


def test_bad_front_end_options_are_refused_in_one_line():
    for cfg, match in ((FeatureConfig(frontend="mfcc"), "features.frontend must be one of"),
                       (FeatureConfig(frontend="ge2e", ge2e_layer="4"), "features.ge2e_layer"),
                       (FeatureConfig(frontend="ge2e", pitch=True), "features.pitch and features.lld"),
                       (FeatureConfig(frontend="ge2e", n_mels=40, frame_shift_ms=20.0), "frame_shift_ms"),
                       (FeatureConfig(frontend="ssl"), "features.ssl_model")):
        with pytest.raises(ValueError, match=match):
            compute_features(tone(0.5), cfg)


def test_cache_is_keyed_by_front_end_and_weights_and_keeps_fbank_hashes(tmp_path, corpus):
    _, utts = corpus
    assert feature_config_hash(FeatureConfig()) == feature_config_hash(FeatureConfig(ge2e_layer="2"))  # fbank
    hashes = {feature_config_hash(FeatureConfig(frontend="ge2e", ge2e_layer=k)) for k in ("1", "3", "weighted")}
    assert len(hashes) == 3 and feature_config_hash(FeatureConfig()) not in hashes
    cache = FeatureCache(tmp_path, GE2E)
    feats = extract_features(utts[:2], cache)
    written = json.loads((cache.dir / "config.json").read_text())
    assert written["frontend"] == "ge2e" and written["sha256"].startswith("39373b86")
    assert all(f.shape[1] == 256 for f in feats.values())
    again = extract_features(utts[:2], FeatureCache(tmp_path, GE2E))  # hits
    for k in feats:
        np.testing.assert_array_equal(feats[k], again[k])


def test_ge2e_stats_are_mean_and_std_of_the_last_layer():
    from moma.features.functionals import compute_functionals, functionals_dim

    x = tone(1.0, seed=2)
    frames = compute_features(x, GE2E)
    stats = compute_functionals(x, "ge2e-stats")
    assert stats.shape == (functionals_dim("ge2e-stats"),) == (512,)
    np.testing.assert_allclose(stats, np.concatenate([frames.mean(0), frames.std(0)]), rtol=1e-5, atol=1e-6)
    first = compute_features(x, FeatureConfig(frontend="ge2e", ge2e_layer="1"))
    np.testing.assert_allclose(compute_functionals(x, "ge2e-stats-1")[:256], first.mean(0), rtol=1e-5, atol=1e-6)


def test_weighted_layers_train_predict_and_refuse_onnx(corpus):
    from moma.checkpoint import load_checkpoint
    from moma.inference.predictor import Predictor
    from moma.data.protocols import ProtocolSpec
    from moma.training.crossval import run_cross_validation

    root, utts = corpus
    report = run_cross_validation(utts, load_run_config(sets=TINY), root / "run", ProtocolSpec("loso", only_folds=("spk-spk01",)),
                                  cache_dir=root / "cache")
    fold = report["folds"][0]
    assert fold["test"]["n"] == fold["n_test"] > 0
    best = next((root / "run").rglob("best.safetensors"))
    loaded = load_checkpoint(best)
    assert (loaded.config.model.input_dim, loaded.config.model.input_layers) == (768, 3)
    assert loaded.info["frontend"]["sha256"].startswith("39373b86")
    weights = loaded.model.layer_weighting.layer_weights()
    assert weights.sum().item() == pytest.approx(1.0) and not np.allclose(weights.numpy(), 1 / 3)  # learned
    pred = Predictor.from_checkpoint(best).predict_file(utts[0].path)
    assert pred.label in loaded.labels and pred.num_frames == num_frames(len(load_audio(utts[0].path, 16000)), GE2E)
    pytest.importorskip("onnx")
    from moma.inference.export import onnx_bytes

    with pytest.raises(ValueError, match="ONNX export is not supported for the pretrained front end"):
        onnx_bytes(loaded)


def test_ge2e_stats_join_a_fusion_model_and_predict(corpus):
    from moma.checkpoint import load_checkpoint
    from moma.inference.predictor import Predictor
    from moma.data.protocols import ProtocolSpec
    from moma.training.crossval import run_cross_validation

    root, utts = corpus
    sets = [s for s in TINY if not s.startswith("features.")] + ["features.functionals=ge2e-stats"]
    run_cross_validation(utts, load_run_config(sets=sets), root / "fusion", ProtocolSpec("loso", only_folds=("spk-spk01",)),
                         cache_dir=root / "cache-fusion" / "features")
    best = next((root / "fusion").rglob("best.safetensors"))
    assert load_checkpoint(best).config.model.functionals_dim == 512
    assert any((root / "cache-fusion" / "opensmile").glob("ge2e-stats-39373b86598f/*/*.npy"))
    assert Predictor.from_checkpoint(best).predict_file(utts[1].path).label
