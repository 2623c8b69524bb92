"""``moma robustness`` and ``moma analyse-attention`` on tiny checkpoints through ``moma.cli.main.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from helpers import LABELS, LEVELS, make_tiny_checkpoint

from moma.cli.main import main  # noqa: E402
from moma.corpora.base import Utterance, write_manifest  # noqa: E402

SPEAKERS = ("s1", "s2", "s3")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    """Two tiny checkpoints (the session's MOMA one, and mean pooling, which only this module needs) and a
    3-speaker manifest of noise whose level is the label."""
    root = tmp_path_factory.mktemp("cli_exp")
    moma = tiny_checkpoint
    mean = make_tiny_checkpoint(root / "mean", arch="mean")
    rng = np.random.default_rng(0)
    utts = []
    for s, spk in enumerate(SPEAKERS):
        for i in range(6):
            label = LABELS[i % 3]
            path = root / "wav" / f"{spk}_{i}.wav"
            path.parent.mkdir(exist_ok=True)
            sig = rng.normal(size=int(rng.integers(5000, 8000))) * LEVELS[label] * (0.7 + 0.3 * s)
            sf.write(path, np.clip(sig, -1, 1).astype(np.float32), 16000)
            utts.append(Utterance(id=f"{spk}_{i}", path=str(path), speaker=spk, label=label,
                                  gender="F" if s % 2 else "M"))
    manifest = write_manifest(utts, root / "m.jsonl")
    return root, moma, mean, manifest


def test_robustness_command_writes_table_plot_and_reuses_its_cache(setup, tmp_path, capsys):
    root, moma, mean, manifest = setup
    out = tmp_path / "rob"
    args = ["robustness", str(moma), str(mean), "--manifest", str(manifest), "--out", str(out),
            "--conditions", "clean", "white-5dB", "babble-0dB", "telephone", "--max-utterances", "9"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "babble-0dB" in printed and "report:" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["conditions"] == ["clean", "white-5dB", "babble-0dB", "telephone"]
    assert res["n_utterances"] == 9 and len(res["models"]) == 2
    labels = [u.split("_")[1] for u in res["utterance_ids"]]
    assert sorted(int(x) % 3 for x in labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # label-balanced subset
    for m in res["models"].values():
        for c in res["conditions"]:
            r = m["conditions"][c]
            assert r["n"] == 9 and 0 <= r["uar"] <= 1 and 0 <= r["accuracy"] <= 1
    assert {m["arch"] for m in res["models"].values()} == {"moma", "mean"}
    report = (out / "report.md").read_text()
    assert "| condition |" in report and "| babble-0dB |" in report and "UAR drop from clean" in report
    assert "moma robustness" in report and "(degradation.png)" in report
    assert (out / "degradation.png").stat().st_size > 5000
    cached = sorted((out / "cache").glob("*.json"))
    assert len(cached) == 8  # 2 models x 4 conditions
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert main(args) == 0  # rerun: every condition from the cache, identical numbers
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert json.loads((out / "results.json").read_text())["models"] == res["models"]


def test_analyse_attention_command(setup, tmp_path, capsys):
    root, moma, mean, manifest = setup
    out = tmp_path / "att"
    args = ["analyse-attention", str(moma), str(mean), "--manifest", str(manifest), "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--probe-folds", "3"]
    assert main(args) == 0
    assert "normalised entropy" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    names = list(res["models"])
    m, b = (res["models"][n] for n in names)
    assert m["arch"] == "moma" and b["arch"] == "mean"
    att = m["attention"]
    assert att["n"] == 18 and len(att["block_entropy_norm"]) == 3 and len(att["gammas"]) == 3
    assert 0 <= att["mixture_entropy_norm"]["mean"] <= 1 and 0 <= att["layer1_entropy_norm"]["mean"] <= 1
    assert np.isfinite(att["block_correlation"]["mean"])
    assert set(m["probe"]["stages"]) == {"encoder", "layer1", "pooled", "embedding"}
    assert m["probe"]["final"] == "pooled" and b["probe"]["final"] == "embedding"
    for r in m["probe"]["stages"].values():
        assert r["n_speakers"] == 3 and r["folds"] == 3 and 0 <= r["accuracy_mean"] <= 1
        assert r["chance"] == pytest.approx(1 / 3)
    assert b["attention"] == {"n": 18}
    report = (out / "report.md").read_text()
    for text in ("MOMA mixture", "MOMA block 3", "layer 1", "H / log L", "Block correlation", "Speaker probe",
                 "moma analyse-attention"):
        assert text in report, text
    # one speaker: no probe, said plainly, attention statistics still there
    assert main(["analyse-attention", str(moma), "--manifest", str(manifest), "--speakers", "s1", "--out",
                 str(tmp_path / "one"), "--cache", str(tmp_path / "cache")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    only = next(iter(one["models"].values()))
    assert "skipped" in only["probe"] and only["attention"]["n"] == 6
    assert "Speaker probe not run" in (tmp_path / "one" / "report.md").read_text()


@pytest.mark.parametrize("command", ["robustness", "analyse-attention"])
def test_bad_input_gives_one_line_errors(setup, tmp_path, capsys, command):
    root, moma, _, manifest = setup
    cases = [
        ([str(tmp_path / "missing.safetensors"), "--manifest", str(manifest)], "checkpoint not found"),
        ([str(moma), "--manifest", str(manifest), "--speakers", "nobody"], "speaker(s) nobody not in"),
        ([str(moma), "--manifest", str(tmp_path / "none.jsonl")], "manifest not found"),
    ]
    for extra, message in cases:
        assert main([command, *extra, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and err.startswith(f"moma {command}: error:")
