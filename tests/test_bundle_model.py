"""benchmarks/bundle_model.py: a trained checkpoint becomes a bundled model with its card fields and loses
nothing a Predictor needs, a fusion model's functionals statistics included."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import make_fusion_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bundle_model.py"


def test_bundling_keeps_weights_normalisers_and_calibration_and_adds_the_card_fields(tmp_path):
    import torch

    from moma.checkpoint import load_checkpoint
    from moma.features.normalise import Normaliser

    rng = np.random.default_rng(0)
    func_norm = Normaliser("global").fit([rng.normal(2.0, 3.0, size=(30, 5)).astype(np.float32)])
    trained = make_fusion_checkpoint(tmp_path / "best.safetensors", labels=["a", "b", "c"], functionals_dim=5,
                                     functionals_normaliser=func_norm,
                                     info={"calibration": {"temperature": 1.7}, "val_speakers": ["x", "y"],
                                           "created": "2020-01-01T00:00:00+0000"})  # trained long before bundling
    res = subprocess.run([sys.executable, str(SCRIPT), str(trained), "tiny-fusion", "--out-dir", str(tmp_path / "pkg"),
                          "--description", "d", "--intended-use", "u", "--limitations", "l"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    bundled = load_checkpoint(tmp_path / "pkg" / "tiny-fusion.safetensors")
    before = load_checkpoint(trained)
    assert bundled.functionals_normaliser is not None
    np.testing.assert_allclose(bundled.functionals_normaliser.mean, func_norm.mean)
    np.testing.assert_allclose(bundled.functionals_normaliser.std, func_norm.std)
    for key, value in before.model.state_dict().items():
        assert torch.equal(bundled.model.state_dict()[key], value)
    assert bundled.labels == ["a", "b", "c"] and bundled.config.features.functionals == "eGeMAPSv02"
    assert bundled.info["calibration"] == {"temperature": 1.7} and bundled.info["val_speakers"] == ["x", "y"]
    assert {bundled.info[k] for k in ("description", "intended_use", "limitations")} == {"d", "u", "l"}
    assert bundled.info["trained"] == before.info["created"]
    # bundling a bundled model again (new card fields) keeps when it was trained
    again = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "pkg" / "tiny-fusion.safetensors"), "tiny-fusion",
                            "--out-dir", str(tmp_path / "pkg2"), "--description", "d2", "--intended-use", "u",
                            "--limitations", "l"], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    rebundled = load_checkpoint(tmp_path / "pkg2" / "tiny-fusion.safetensors")
    assert rebundled.info["trained"] == before.info["created"] and rebundled.info["description"] == "d2"


def test_bundling_keeps_the_out_of_domain_statistics(tiny_checkpoint, tmp_path):
    from helpers import add_test_ood

    from moma.checkpoint import load_checkpoint

    trained = add_test_ood(tiny_checkpoint, tmp_path / "best.safetensors")
    res = subprocess.run([sys.executable, str(SCRIPT), str(trained), "tiny", "--out-dir", str(tmp_path / "pkg"),
                          "--description", "d", "--intended-use", "u", "--limitations", "l"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    bundled, before = load_checkpoint(tmp_path / "pkg" / "tiny.safetensors").ood, load_checkpoint(trained).ood
    assert bundled.threshold == before.threshold and bundled.info == before.info
    np.testing.assert_array_equal(bundled.precision, before.precision)
