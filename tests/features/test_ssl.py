"""moma.features.encoders.ssl: transformers encoders (WavLM, HuBERT, wav2vec 2.0, Whisper) as a frozen front end.
Nothing is downloaded: each test builds a tiny randomly initialised model and saves it to a folder."""

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from moma.config import FeatureConfig, load_run_config  # noqa: E402
from moma.corpora.synthetic import make_synthetic_corpus  # noqa: E402
from moma.features.cache import FeatureCache, extract_features  # noqa: E402
from moma.features.frontend import compute_features, feature_config_hash, num_frames  # noqa: E402

CNN = dict(conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 64), num_conv_pos_embeddings=4,
           num_conv_pos_embedding_groups=2)  # 400-sample receptive field, one frame every 320 samples (20 ms)
SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **CNN)


def save_model(folder, kind: str):
    """A tiny random model of ``kind`` with its feature extractor, saved as a hub folder would be."""
    if kind == "whisper":
        config = transformers.WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
        model, extractor = transformers.WhisperModel(config), transformers.WhisperFeatureExtractor()
    else:
        cls = {"wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
               "hubert": (transformers.HubertConfig, transformers.HubertModel),
               "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model)}[kind]
        config = cls[0](**SMALL, feat_extract_norm="layer" if kind != "hubert" else "group",
                        do_stable_layer_norm=kind != "hubert")
        model = cls[1](config)
        extractor = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=kind != "hubert")
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


def speech(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl")
    return {k: str(save_model(root / k, k)) for k in ("wavlm", "hubert", "wav2vec2", "whisper")}


@pytest.mark.parametrize("kind", ["wavlm", "hubert", "wav2vec2", "whisper"])
def test_every_hidden_state_lands_on_the_filterbank_frames(models, kind):
    x = speech(1.3, 0)
    n = num_frames(len(x), FeatureConfig())
    feats = compute_features(x, FeatureConfig(frontend="ssl", ssl_model=models[kind]))
    assert feats.shape == (n, 3 * 16) and feats.dtype == np.float32 and np.isfinite(feats).all()  # CNN + 2 layers
    one = compute_features(x, FeatureConfig(frontend="ssl", ssl_model=models[kind], ssl_layers="2"))
    np.testing.assert_allclose(one, feats[:, 32:], rtol=1e-5, atol=1e-5)  # the last hidden state
    np.testing.assert_array_equal(compute_features(x, FeatureConfig(frontend="ssl", ssl_model=models[kind])), feats)


def test_a_padded_batch_gives_each_utterance_its_own_frames(models):
    from moma.features.encoders.ssl import SSLEncoder

    signals = [speech(1.6, 1), speech(0.7, 2), speech(1.1, 3)]
    counts = [num_frames(len(s), FeatureConfig()) for s in signals]
    for kind in ("wavlm", "hubert", "whisper"):  # attention-masked, group-normed (one by one), padded to 30 s
        enc = SSLEncoder(models[kind])
        batched = enc.frames_batch(signals, "all", counts)
        for s, n, got in zip(signals, counts, batched):
            np.testing.assert_allclose(got, enc.frames_batch([s], "all", [n])[0], rtol=1e-4, atol=1e-4)


def test_cache_keys_on_the_weights(models, tmp_path):
    root = tmp_path
    utts = make_synthetic_corpus(root / "corpus", num_speakers=2, utterances_per_emotion=1, seed=1, max_duration=1.0)
    cfg = FeatureConfig(frontend="ssl", ssl_model=models["wavlm"])
    cache = FeatureCache(root / "cache", cfg)
    feats = extract_features(utts[:2], cache)
    assert json.loads((cache.dir / "config.json").read_text())["ssl_model"] == models["wavlm"]
    assert all(f.shape[1] == 48 for f in feats.values())
    other = save_model(root / "other", "wavlm")  # the same architecture, other random weights
    assert feature_config_hash(FeatureConfig(frontend="ssl", ssl_model=str(other))) != cache.config_hash
    assert feature_config_hash(FeatureConfig(frontend="ssl", ssl_model=models["wavlm"], ssl_layers="1")) \
        != cache.config_hash


def test_bad_model_or_layers_are_refused_in_one_line(models, tmp_path):
    with pytest.raises(ValueError, match="features.ssl_layers"):
        compute_features(speech(0.5, 0), FeatureConfig(frontend="ssl", ssl_model=models["wavlm"], ssl_layers="7"))
    with pytest.raises(ValueError, match="holds no weights"):
        feature_config_hash(FeatureConfig(frontend="ssl", ssl_model=str(tmp_path)))


def test_weighted_ssl_layers_train_and_predict(models, tmp_path):
    from moma.checkpoint import load_checkpoint
    from moma.inference.predictor import Predictor
    from moma.data.protocols import ProtocolSpec
    from moma.training.crossval import run_cross_validation

    utts = make_synthetic_corpus(tmp_path / "corpus", num_speakers=3, utterances_per_emotion=1, seed=5,
                                 max_duration=1.2)
    sets = ["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8", "train.max_epochs=2",
            "train.lr=0.01", "train.tensorboard=false", "train.val_speakers=1", "features.frontend=ssl",
            f"features.ssl_model={models['wavlm']}"]
    report = run_cross_validation(utts, load_run_config(sets=sets), tmp_path / "run", ProtocolSpec("loso", only_folds=("spk-spk01",)),
                                  cache_dir=tmp_path / "cache")
    assert report["folds"][0]["test"]["n"] == report["folds"][0]["n_test"] > 0
    best = next((tmp_path / "run").rglob("best.safetensors"))
    loaded = load_checkpoint(best)
    assert (loaded.config.model.input_dim, loaded.config.model.input_layers) == (48, 3)
    assert loaded.info["frontend"]["ssl_model"] == models["wavlm"]
    assert Predictor.from_checkpoint(best).predict_file(utts[0].path).label in loaded.labels
