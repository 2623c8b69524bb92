"""``moma demo``: the whole pipeline on the embedded synthetic corpus, no download needed.

It synthesises a small multi-speaker corpus, trains a small MOMA with test
and validation speakers held out, evaluates it, and writes the report and an
attention plot. ``--corpus emodb --root DIR`` runs the same pipeline on a real
corpus with its full leave-one-speaker-out protocol.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from moma.config import load_run_config
from moma.data.protocols import ProtocolSpec
from moma.features.cache import DEFAULT_CACHE_DIR
from moma.recipes import resolve_recipe
from moma.training.crossval import run_cross_validation

log = logging.getLogger(__name__)

DEMO_SPEAKERS = 10  # 6 train, 2 validation, 2 test
DEMO_TEST_SPEAKERS = ("spk01", "spk02")  # one female, one male (genders alternate)


def run_demo(out_dir: str | Path, *, corpus: str = "synthetic", root: str | Path | None = None,
             cache_dir: str | Path = DEFAULT_CACHE_DIR, jobs: int = 1, progress: bool = False,
             command: str = "moma demo", extra_configs: Sequence[str] = (),
             sets: Sequence[str] = ()) -> dict[str, Any]:
    t0 = time.time()
    out_dir = Path(out_dir)
    if corpus == "synthetic" and root is not None:
        raise ValueError("--root is for a real corpus (--corpus NAME); the synthetic demo corpus is generated")
    if corpus == "synthetic":
        from moma.corpora.synthetic import make_synthetic_corpus

        utts = make_synthetic_corpus(out_dir / "corpus", num_speakers=DEMO_SPEAKERS, seed=0)
        recipe, protocol, test_speakers = "demo", "predefined", list(DEMO_TEST_SPEAKERS)
    else:
        if root is None:
            raise ValueError(f"--root is required for --corpus {corpus}")
        from moma.corpora import prepare_corpus

        utts = prepare_corpus(corpus, root, progress=progress)
        recipe, protocol, test_speakers = "emodb-cpu" if corpus == "emodb" else "cpu", "loso", None
    # a demo writes no TensorBoard curves unless asked (a runtime setting, so not in the recipe)
    cfg = load_run_config([resolve_recipe(recipe)] + [resolve_recipe(c) for c in extra_configs],
                          ["train.tensorboard=false", *sets])
    spec = ProtocolSpec(protocol, test_speakers=tuple(test_speakers) if test_speakers else None, corpus=corpus)
    report = run_cross_validation(utts, cfg, out_dir / "run", spec, cache_dir=cache_dir, jobs=jobs,
                                  progress=progress, title=f"moma demo: {corpus}", command=command)
    result: dict[str, Any] = {"report": report, "report_path": out_dir / "run" / "report.md"}
    # attention plot of the first test utterance of the first fold
    first = report["folds"][0]
    pred = first["test"]["predictions"][0]
    utt = next(u for u in utts if u.id == pred["id"])
    from moma.inference.predictor import plot_attention_for_file

    result["attention_plot"] = plot_attention_for_file(
        out_dir / "run" / first["name"] / "best.safetensors", utt.path, out_dir / "run" / "attention.png",
        alignment=utt.words or None, phones=utt.phones or None,
        title=f"{utt.id} (true: {utt.label}, predicted: {pred['predicted']})", caption=command)
    from moma.evaluation.plots import plot_confusion

    plot_confusion(out_dir / "run" / "confusion.png", report["summary"]["pooled"]["confusion"], report["labels"],
                   title=report["title"])
    result["wall_time_s"] = time.time() - t0
    return result
