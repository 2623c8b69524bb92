"""``report.json`` and its per-utterance predictions, kept in one compact ``predictions.npz`` beside it.

A report's per-utterance rows (id, speaker, true label, prediction, posteriors) are most of its bytes: a nEMO
leave-one-speaker-out report held 1.1 MB of them as JSON text. :func:`save_report_json` moves every
``predictions`` list of a report (a ``moma cv`` or ``moma fuse`` report's ``folds[i].test``, a ``moma classical``
report's ``runs[j].folds[i].test``) into ``predictions.npz`` (numpy's compressed archive: utterance ids once,
speakers, labels and predictions as indices into one list each, posteriors as integers in units of 1e-6, the
precision :func:`moma.evaluation.metrics.score_posteriors` rounds them to, so nothing is lost), and
``report.json`` names that file. :func:`load_report_json` is the one reader: it puts the rows back, so every
command sees the report as it was; a report written before this (rows inline) is read as it is.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moma.files import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.npz"
POINTER = "predictions_file"  # the key in report.json naming the file that holds its predictions
FIELDS = ("id", "speaker", "label", "predicted", "posteriors")  # a prediction row's keys, in their order
SCALE = 1_000_000  # posteriors are stored as integers in units of 1/SCALE (they are rounded to 6 decimals)


def _holders(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, dict[str, Any]]]:
    """(path, dict) of every dict in ``node`` holding a ``predictions`` list; a path item is a key or an index."""
    if isinstance(node, dict):
        if isinstance(node.get("predictions"), list):
            yield path, node
        for key, value in node.items():
            if key != "predictions":
                yield from _holders(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _holders(value, path + (i,))


def _fields(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], int] | None:
    """The keys and the posterior length the (non-empty) rows all share, or None where they differ."""
    fields = tuple(rows[0])
    if not set(fields) <= set(FIELDS) or any(tuple(r) != fields for r in rows):
        return None
    widths = {len(r.get("posteriors", ())) for r in rows}
    return (fields, widths.pop()) if len(widths) == 1 else None


def _pack(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Rows of one shape as arrays: ids in order, speakers and classes once each with an index per row,
    posteriors as integers on the 1e-6 grid they were rounded to (exactly, else as they are)."""
    arrays: dict[str, np.ndarray] = {}
    if "id" in fields:
        arrays["id"] = np.array([r["id"] for r in rows], dtype=str)
    if "speaker" in fields:
        arrays["speaker_names"], index = np.unique(np.array([r["speaker"] for r in rows], dtype=str),
                                                   return_inverse=True)
        arrays["speaker_index"] = index.astype(np.int32)
    classes = sorted({r[f] for r in rows for f in ("label", "predicted") if f in fields})
    arrays["classes"] = np.array(classes, dtype=str)
    for field in ("label", "predicted"):
        if field in fields:
            arrays[field] = np.array([classes.index(r[field]) for r in rows], dtype=np.int16)
    if "posteriors" in fields:
        post = np.array([r["posteriors"] for r in rows], dtype=np.float64).reshape(len(rows), -1)  # (n, classes)
        units = np.round(post * SCALE)
        if post.min(initial=0.0) >= 0 and post.max(initial=0.0) <= 1 and np.array_equal(units / SCALE, post):
            arrays["posteriors_units"] = units.astype(np.uint32)
        else:  # not on the 1e-6 grid (a hand-made report): kept exactly
            arrays["posteriors"] = post
    return arrays


def _unpack(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    columns: dict[str, list[Any]] = {}
    if "id" in arrays:
        columns["id"] = arrays["id"].tolist()
    if "speaker_index" in arrays:
        columns["speaker"] = arrays["speaker_names"][arrays["speaker_index"]].tolist()
    for field in ("label", "predicted"):
        if field in arrays:
            columns[field] = arrays["classes"][arrays[field]].tolist()
    if "posteriors_units" in arrays:  # k / 1e6 is the double nearest k * 1e-6: the value JSON held
        columns["posteriors"] = (arrays["posteriors_units"].astype(np.float64) / SCALE).tolist()
    elif "posteriors" in arrays:
        columns["posteriors"] = arrays["posteriors"].tolist()
    fields = [f for f in FIELDS if f in columns]
    n = int(arrays["sizes"].sum())
    return [{f: columns[f][i] for f in fields} for i in range(n)]


def split_predictions(report: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """``report`` without its prediction lists, and the ``predictions.npz`` bytes holding them (None when there
    are none). A list of another shape than the first (other keys, other posterior lengths) stays inline."""
    out = copy.deepcopy(report)
    shape, blocks, sizes, rows = None, [], [], []
    for path, holder in _holders(out):
        if holder["predictions"]:
            its = _fields(holder["predictions"])
            if its is None or (shape is not None and its != shape):
                continue
            shape = its
        blocks.append(json.dumps(list(path)))
        sizes.append(len(holder["predictions"]))
        rows += holder.pop("predictions")
    if not blocks:
        return out, None
    out[POINTER] = PREDICTIONS_FILE
    buffer = io.BytesIO()
    np.savez_compressed(buffer, blocks=np.array(blocks, dtype=str), sizes=np.array(sizes, dtype=np.int64),
                        **_pack(rows, shape[0] if shape else ()))
    return out, buffer.getvalue()


def join_predictions(report: dict[str, Any], npz: Path) -> dict[str, Any]:
    """Put the rows of ``npz`` back where :func:`split_predictions` took them from (in place)."""
    with np.load(npz, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    rows = _unpack(arrays)
    start = 0
    for block, n in zip(arrays["blocks"].tolist(), arrays["sizes"].tolist()):
        holder = report
        for step in json.loads(block):
            holder = holder[step]
        holder["predictions"] = rows[start:start + n]
        start += n
    return report


def save_report_json(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.json`` in ``out_dir``, its predictions in ``predictions.npz`` beside it (the archive first,
    so that a report never names a file not yet written). Returns the path of ``report.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compact, npz = split_predictions(report)
    if npz is not None:
        write_bytes_atomic(out_dir / PREDICTIONS_FILE, npz)
    return write_text_atomic(out_dir / REPORT_FILE, json.dumps(compact, indent=1))


def load_report_json(path: str | Path) -> dict[str, Any]:
    """A report as it was written: ``path`` is a ``report.json`` or its folder. Predictions kept in the
    ``predictions.npz`` it names are put back; a report that holds them inline (written before) is read as it is."""
    path = Path(path)
    file = path / REPORT_FILE if path.is_dir() else path
    report = json.loads(file.read_text(encoding="utf-8"))
    name = report.pop(POINTER, None) if isinstance(report, dict) else None
    if name is None:
        return report
    npz = file.parent / name
    if not npz.is_file():
        raise FileNotFoundError(f"{file}: its per-utterance predictions are in {name}, which is not beside it "
                                f"(copy {name} together with {file.name})")
    log.debug("%s: predictions from %s", file, npz)
    return join_predictions(report, npz)
