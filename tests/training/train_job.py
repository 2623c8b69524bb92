"""A tiny, deterministic training job run in a subprocess by test_train.py (so it can be SIGKILLed)."""

import sys
from pathlib import Path

import numpy as np

from moma.config import load_run_config
from moma.features.normalise import Normaliser
from moma.training.train import train_model


def tiny_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    feats, label_of = {}, {}
    for i in range(48):
        label = i % 3
        n = int(rng.integers(30, 70))
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[:, label] += 1.5  # a learnable class cue
        feats[f"u{i}"] = x
        label_of[f"u{i}"] = label
    ids = sorted(feats)
    return feats, label_of, ids[:36], ids[36:]


def main(out_dir: str, resume: bool, slow: float = 0.0, adversarial: float = 0.0) -> None:
    cfg = load_run_config(sets=["model.hidden_size=8", "model.context_dim=8", "model.projection_dim=8",
                                "model.dropout=0.2", "train.lr=0.01", "train.max_epochs=8",
                                "train.early_stop_patience=0", "train.tensorboard=false",
                                "data.max_frames_per_batch=400", "data.spec_augment=true",
                                "data.random_crop_s=0.4", "train.num_threads=1",
                                f"train.speaker_adversarial={adversarial}", "train.adversary_hidden=8"])
    feats, label_of, train_ids, val_ids = tiny_problem()
    if slow:
        import moma.training.train as t

        original = t.save_checkpoint

        def slow_save(*args, **kwargs):  # widen the window in which the parent kills us
            import time

            time.sleep(slow)
            return original(*args, **kwargs)

        t.save_checkpoint = slow_save
    speaker_of = {k: f"s{int(k[1:]) % 4}" for k in feats}  # 4 speakers, for the speaker adversary
    train_model(cfg, feats, ["a", "b", "c"], label_of, train_ids, val_ids, Path(out_dir), Normaliser("none"),
                resume=resume, speaker_of=speaker_of)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "resume", float(sys.argv[3]) if len(sys.argv) > 3 else 0.0,
         *(float(a) for a in sys.argv[4:5]))
