"""What the report shows beside the cells' numbers: the block-count series, the classical anchors on the
experiment's folds and the attention maps of the reference variant."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from moma.corpora.base import Utterance
from moma.data.protocols import Fold
from moma.files import write_json_atomic
from moma.research.experiment.analysis import cell_checkpoint
from moma.research.experiment.cells import Cell, config_signature
from moma.research.experiment.spec import Experiment

log = logging.getLogger(__name__)


def blocks_series(exp: Experiment) -> list[str]:
    """MOMA variants that differ from the reference (or each other) only in ``model.num_blocks``, by blocks."""
    moma = [n for n, v in exp.variants.items() if v.config.model.arch == "moma"]
    if not moma:
        return []
    anchor = exp.reference if exp.reference in moma else moma[0]

    def key(n: str) -> dict[str, Any]:
        d = config_signature(exp.variants[n].config)
        d["model"].pop("num_blocks", None)
        return d

    same = [n for n in moma if key(n) == key(anchor)]
    return sorted(same, key=lambda n: exp.variants[n].config.model.num_blocks)


# --------------------------------------------------------------------------- anchors and attention maps

def run_anchors(exp: Experiment, utterances: Sequence[Utterance], folds: Sequence[Fold], out_dir: Path, *,
                compute: bool = True, workers: int = 1, progress: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The ``classical:`` section's anchors on the experiment's folds (cached in ``out_dir/classical/``).

    Returns ``({feature set: result}, notes)``; a feature set that could not run (openSMILE missing, or not
    computed in a report-only run) is left out and named in the notes.
    """
    spec = exp.classical
    if spec is None:
        return {}, []
    import importlib.util

    if importlib.util.find_spec("opensmile") is None:  # the optional 'classical' extra
        return {}, ["Classical anchors not run: the `opensmile` package is missing "
                    "(`pip install 'moma-ser[classical]'`)."]
    from moma.research.classical import DEFAULT_C_GRID, run_anchor

    out: dict[str, Any] = {}
    notes = []
    for fs in spec.feature_sets:
        res = run_anchor(utterances, folds, out_dir / "classical" / f"{fs}-{spec.normalisation}.json",
                         feature_set=fs, normalisation=spec.normalisation, c_grid=spec.c_grid or DEFAULT_C_GRID,
                         seed=0, cache_dir=spec.cache, workers=workers, progress=progress, compute=compute)
        if res is None:
            notes.append(f"Classical anchor {fs} not computed yet (a report-only run computes nothing).")
        else:
            out[fs] = res
    return out, notes


def pick_map_utterances(cells: Sequence[Cell], utterances: Sequence[Utterance], n: int,
                        seed: int) -> list[tuple[Utterance, Cell]]:
    """``n`` test utterances for attention maps, one per label in turn (labels sorted, cycling), each drawn at
    random (seeded) from the finished cells' test sets and paired with the cell that tested it.

    The draw never looks at predictions, so the maps are not picked for looking good. Utterances that are a
    region of a longer file are skipped (the plot shows the whole file).
    """
    owner = {}
    for cell in cells:
        if cell.done():
            for uid in cell.fold.test:
                owner[uid] = cell
    by_label: dict[str, list[Utterance]] = {}
    for u in sorted(utterances, key=lambda u: u.id):
        if u.id in owner and u.start == 0 and u.end == 0:
            by_label.setdefault(u.label, []).append(u)
    rng = np.random.default_rng(seed)
    for pool in by_label.values():
        rng.shuffle(pool)
    picked: list[tuple[Utterance, Cell]] = []
    labels = sorted(by_label)
    round_ = 0
    while len(picked) < n and any(len(by_label[lab]) > round_ for lab in labels):
        for lab in labels:
            if len(picked) < n and len(by_label[lab]) > round_:
                u = by_label[lab][round_]
                picked.append((u, owner[u.id]))
        round_ += 1
    return picked


def plot_attention_maps(exp: Experiment, cells: Sequence[Cell], utterances: Sequence[Utterance], out_dir: Path, *,
                        command: str, config: str, compute: bool = True) -> list[dict[str, Any]]:
    """The paper's Figures 2-5 for the reference variant: waveform, spectrogram, layer-1 attention, the MOMA
    mixture and each block with its gamma, with the corpus's word/syllable and phone boundaries when it has them.

    One map per utterance of :func:`pick_map_utterances` (analysis seeds' first seed), each made by the
    checkpoint of the fold that tested it, into ``out_dir/attention_maps/<utterance>.png``; an existing map is
    reused. Returns one record per map (file, utterance, true and predicted label, fold).
    """
    spec = exp.analysis
    ref = exp.variants[exp.reference]
    if spec is None or not spec.attention_maps or ref.config.model.arch == "mean":
        return []
    from moma.corpora.alignment import read_alignment
    from moma.inference.predictor import Predictor, plot_prediction

    seed = spec.seeds[0]
    mine = [c for c in cells if c.variant == exp.reference and c.seed == seed]
    maps_dir = out_dir / "attention_maps"
    records_path = maps_dir / "maps.json"
    old = {r["utterance"]: r for r in json.loads(records_path.read_text(encoding="utf-8"))} \
        if records_path.is_file() else {}
    predictors: dict[str, Predictor] = {}
    records = []
    for u, cell in pick_map_utterances(mine, utterances, spec.attention_maps, spec.seed):
        png = maps_dir / f"{u.id}.png"
        if png.is_file() and u.id in old:
            records.append(old[u.id])
            continue
        ckpt = cell_checkpoint(cell)
        if not compute or ckpt is None:
            continue
        if str(ckpt) not in predictors:
            predictors[str(ckpt)] = Predictor.from_checkpoint(ckpt)
        predictor = predictors[str(ckpt)]

        def alignment(path: str) -> Any:
            try:
                return read_alignment(path) if path else None
            except (OSError, ValueError) as exc:  # a map without boundaries beats no map
                log.warning("attention map of %s: alignment %s unreadable (%s)", u.id, path, exc)
                return None

        pred = predictor.predict_file(u.path)
        title = (f"{u.id} (speaker {u.speaker}): true {u.label}, predicted {pred.label} "
                 f"({pred.probabilities[pred.label]:.2f}); {ref.label}, seed {seed}, fold {cell.fold.name}")
        plot_prediction(predictor, u.path, png, pred=pred, alignment=alignment(u.words), phones=alignment(u.phones),
                        title=title, caption=f"made by: {command}\nconfig: {config}")
        records.append({"file": f"attention_maps/{png.name}", "utterance": u.id, "speaker": u.speaker,
                        "label": u.label, "predicted": pred.label, "fold": cell.fold.name, "seed": seed,
                        "variant": exp.reference, "checkpoint": str(ckpt),
                        "alignment": bool(u.words), "phones": bool(u.phones)})
    if records:
        write_json_atomic(records_path, records)
    return records

