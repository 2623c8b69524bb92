import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from moma.checkpoint import load_checkpoint, load_training_state
from moma.train import class_weights

JOB = Path(__file__).with_name("train_job.py")


def run_job(out_dir, mode="fresh", slow=0.0):
    return subprocess.Popen([sys.executable, str(JOB), str(out_dir), mode, str(slow)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def weights(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def test_class_weights_are_inverse_frequency():
    w = class_weights([0, 0, 0, 1], 3).numpy()
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0])


def test_training_writes_self_describing_checkpoints_and_learns(tmp_path):
    assert run_job(tmp_path / "run").wait(120) == 0
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_uar"] for r in rows) > 0.6  # the cue is learnable
    loaded = load_checkpoint(tmp_path / "run")  # a folder resolves to best.safetensors
    assert loaded.labels == ["a", "b", "c"]
    assert loaded.config.model.hidden_size == 8 and loaded.config.model.num_classes == 3
    assert loaded.info["epoch"] == max(rows, key=lambda r: r["val_uar"])["epoch"]
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    assert run_job(tmp_path / "full").wait(120) == 0
    proc = run_job(tmp_path / "killed", slow=0.3)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_training_state(tmp_path / "killed" / "last.safetensors")
    assert 2 <= state["epoch"] < 8  # really interrupted mid-run
    assert run_job(tmp_path / "killed", mode="resume").wait(120) == 0
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_rows = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in ("frames_per_s", "epoch_time_s")}
                          for r in rows]
    assert strip(resumed_rows) == strip(full_rows)
    for name in ("best.safetensors", "last.safetensors"):
        a, b = weights(tmp_path / "full" / name), weights(tmp_path / "killed" / name)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
