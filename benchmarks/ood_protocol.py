"""Out-of-domain score: choose the representation and threshold on one pairing of corpora, confirm on others.

    python benchmarks/ood_protocol.py [--runs runs] [--cache cache] [--out reports/ood]

No network is trained: the score (moma.features.ood) depends on the features and the training utterances only.

Pairings (in-domain corpus: the density is fitted on its training speakers of each fold and the held-out
speakers are in-domain test data; out-of-domain: every file of the other corpora and 80 synthetic non-speech
clips, 40 of white noise and 40 of synthetic music, 2-5 s at -40 to -15 dBFS):

* ``emodb`` (choice): EmoDB, 5 folds of 2 held-out speakers; OOD nEMO + synthetic;
* ``nemo`` (confirmation): nEMO, 3 folds of 3 speakers; OOD EmoDB + RAVDESS-dev + synthetic;
* ``ravdess`` (confirmation): RAVDESS-dev actors 01-16, 4 folds of 4 actors; OOD EmoDB + nEMO + synthetic;
* ``emodb+nemo`` (confirmation, the bundled models' training corpora): 5 folds, each holding out 2 EmoDB and
  1-2 nEMO speakers; OOD RAVDESS-dev + synthetic.

Candidates, all scored on every pairing, chosen on ``emodb`` only (the rule is code: :func:`choose`):
representations ``frames`` (mean and std over time of the 23 log-Mel bins, the default front end: what every
checkpoint computes) and ``frames-level-invariant`` (the same with the mean over the bins taken out of the 23
means: blind to the recording's gain); threshold rules ``in-sample`` and ``speaker-cv`` at quantiles 0.95 and
0.99 (4): 8 candidates. The choice: the candidate representation of the highest mean AUROC; among threshold rules
the highest mean OOD recall whose mean in-domain false-flag rate (held-out speakers above the threshold) is at
most ``MAX_FALSE_FLAGS``. Shown for comparison, never chosen: ``ge2e-stats`` (GE2E speaker-encoder statistics: it
needs the pretrained extra and an encoder run per input, so it cannot be every model's score) and
``frames-pitch`` (``frames`` of the front end with Praat pitch, that of the bundled ``emodb-7class``).

Informational, ``emodb`` only: the held-out EmoDB speakers' files through a telephone band (300-3400 Hz at
8 kHz) and 20 dB quieter, scored as separate sets (channel shift of in-domain speech).

Then the bundled models' own statistics (``moma ood fit`` on their training manifests): the share of each
development corpus and of the synthetic clips each one flags, with its own front end (in-sample for the corpora
it was trained on).

Writes ``OUT/ood.json`` (every fold and candidate) and prints the tables that reports/ood/README.md quotes.
Representations are computed from the feature caches (log-Mel frames, GE2E statistics; missing entries are
computed and cached), so a rerun takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from moma.audio.io import load_audio
from moma.audio.perturb import apply_gain, synthetic_music, telephone_band, white_noise
from moma.config import FeatureConfig
from moma.corpora.base import Utterance, read_manifest
from moma.features.cache import FeatureCache
from moma.features.frontend import compute_features
from moma.features.functionals import compute_functionals, extract_functionals
from moma.features.ood import fit_ood, held_out_distances, utterance_statistics

log = logging.getLogger("ood_protocol")

SR = 16000
MAX_FALSE_FLAGS = 0.10  # the largest mean in-domain false-flag rate a chosen threshold may have
# name -> a candidate for every model's score (True), or shown for comparison only (False)
REPRESENTATIONS = {"frames": True, "frames-level-invariant": True, "ge2e-stats": False, "frames-pitch": False}
N_MELS = 23
RULES = [("in-sample", 0.95), ("in-sample", 0.99), ("speaker-cv", 0.95), ("speaker-cv", 0.99)]
CHOICE_PAIRING = "emodb"
CORPORA = {"emodb": "emodb.jsonl", "nemo": "nemo.jsonl", "ravdess": "ravdess-dev.jsonl"}


def groups_of(speakers: Sequence[str], k: int) -> list[list[str]]:
    """``speakers`` sorted and cut into ``k`` consecutive groups (sizes differ by at most one)."""
    return [list(g) for g in np.array_split(sorted(speakers), k)]


def pairings(utts: dict[str, list[Utterance]]) -> dict[str, dict]:
    spk = {c: sorted({u.speaker for u in us}) for c, us in utts.items()}
    emodb, nemo = groups_of(spk["emodb"], 5), groups_of(spk["nemo"], 3)
    pool_nemo = groups_of(spk["nemo"], 5)
    return {
        "emodb": {"train": ["emodb"], "ood": ["nemo", "synthetic"],
                  "folds": [{"emodb": g} for g in emodb], "channel": True},
        "nemo": {"train": ["nemo"], "ood": ["emodb", "ravdess", "synthetic"], "folds": [{"nemo": g} for g in nemo]},
        "ravdess": {"train": ["ravdess"], "ood": ["emodb", "nemo", "synthetic"],
                    "folds": [{"ravdess": g} for g in groups_of(spk["ravdess"], 4)]},
        "emodb+nemo": {"train": ["emodb", "nemo"], "ood": ["ravdess", "synthetic"],
                       "folds": [{"emodb": e, "nemo": n} for e, n in zip(emodb, pool_nemo)]},
    }


def synthetic_signals(seed: int = 0) -> list[np.ndarray]:
    """40 white-noise and 40 synthetic-music clips, 2-5 s, at -40 to -15 dBFS RMS."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in ("noise", "music"):
        for _ in range(40):
            seconds = float(rng.uniform(2.0, 5.0))
            sig = white_noise(int(seconds * SR), rng) if kind == "noise" else synthetic_music(seconds, SR, rng)
            sig = np.asarray(sig, dtype=np.float64)
            level = float(rng.uniform(-40.0, -15.0))
            out.append((sig * 10 ** (level / 20) / np.sqrt(np.mean(sig ** 2))).astype(np.float32))
    return out


def representations(utts: dict[str, list[Utterance]], cache: Path) -> dict[str, dict[str, np.ndarray]]:
    """{set: {representation: (n, dims)}} for every corpus and the synthetic clips."""
    cfg, pitch = FeatureConfig(), FeatureConfig(pitch=True)
    fcache, pcache = FeatureCache(cache / "features", cfg), FeatureCache(cache / "features", pitch)
    reps: dict[str, dict[str, np.ndarray]] = {}
    for corpus, us in utts.items():
        t0 = time.time()
        frames = np.stack([utterance_statistics(fcache.get(u)) for u in us])
        ge2e = extract_functionals(us, "ge2e-stats", cache_dir=cache / "opensmile")
        reps[corpus] = {"frames": frames, "frames-level-invariant": level_invariant(frames),
                        "ge2e-stats": np.stack([ge2e[u.id] for u in us]).astype(np.float64),
                        "frames-pitch": np.stack([utterance_statistics(pcache.get(u)) for u in us])}
        log.info("%s: %d utterances in %.1f s", corpus, len(us), time.time() - t0)
    sigs = synthetic_signals()
    frames = np.stack([utterance_statistics(compute_features(s, cfg)) for s in sigs])
    reps["synthetic"] = {"frames": frames, "frames-level-invariant": level_invariant(frames),
                         "ge2e-stats": np.stack([compute_functionals(s, "ge2e-stats") for s in sigs]).astype(float),
                         "frames-pitch": np.stack([utterance_statistics(compute_features(s, pitch)) for s in sigs])}
    return reps


def level_invariant(frames: np.ndarray) -> np.ndarray:
    """``frames`` statistics (n, 2 x 23) with each row's mean over the 23 log-Mel means subtracted from them (a gain
    adds one constant to every log-Mel bin), the last mean dropped (the 23 centred means sum to 0)."""
    means = frames[:, :N_MELS] - frames[:, :N_MELS].mean(axis=1, keepdims=True)
    return np.concatenate([means[:, :-1], frames[:, N_MELS:]], axis=1)


def channel_frames(us: Sequence[Utterance]) -> dict[str, np.ndarray]:
    """{representation: {condition: (n, dims)}}: frame statistics of ``us`` through a telephone band and 20 dB
    quieter, in manifest order (the frames representations only)."""
    cfg = FeatureConfig()
    out: dict[str, list[np.ndarray]] = {"telephone": [], "gain-20dB": []}
    for u in us:
        sig = load_audio(u.path, SR)
        out["telephone"].append(utterance_statistics(compute_features(telephone_band(sig, SR), cfg)))
        out["gain-20dB"].append(utterance_statistics(compute_features(apply_gain(sig, -20.0)[0], cfg)))
    frames = {k: np.stack(v) for k, v in out.items()}
    return {"frames": frames, "frames-level-invariant": {k: level_invariant(v) for k, v in frames.items()}}


def score_fold(train: np.ndarray, speakers: Sequence[str], held: np.ndarray, ood: dict[str, np.ndarray],
               representation: str, held_corpus: Sequence[str] | None = None) -> dict:
    """AUROC and, per threshold rule, false-flag rate and OOD recall of one fold. The density is fitted once: the
    distances do not depend on the rule, only the threshold does (the in-sample or the held-out-speaker
    distances of the training utterances, at each quantile)."""
    name = "frames" if representation.startswith("frames") else f"functionals:{representation}"
    model = fit_ood(train, speakers, representation=name, rule="speaker-cv", quantile=0.95)
    reference = {"in-sample": model.distances(train), "speaker-cv": held_out_distances(train, speakers)}
    d_in = model.distances(held)
    d_ood = {k: model.distances(v) for k, v in ood.items()}
    pooled = np.concatenate(list(d_ood.values()))
    auroc = lambda a, b: float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))
    row: dict = {"n_train": int(train.shape[0]), "n_in": int(held.shape[0]), "auroc": auroc(d_in, pooled),
                 "auroc_by_set": {k: auroc(d_in, v) for k, v in d_ood.items()},
                 "median_distance": {"in": float(np.median(d_in)),
                                     **{k: float(np.median(v)) for k, v in d_ood.items()}},
                 "rules": {}}
    for rule, q in RULES:
        threshold = float(np.quantile(reference[rule], q))
        corpus_of = np.asarray(held_corpus if held_corpus is not None else [])
        by_corpus = {c: float(np.mean(d_in[corpus_of == c] > threshold)) for c in sorted(set(corpus_of.tolist()))}
        row["rules"][f"{rule}@{q}"] = {"threshold": threshold, "false_flags": float(np.mean(d_in > threshold)),
                                       "false_flags_by_corpus": by_corpus,
                                       "recall": float(np.mean(pooled > threshold)),
                                       "recall_by_set": {k: float(np.mean(v > threshold)) for k, v in d_ood.items()}}
    return row


def run_pairing(name: str, spec: dict, utts: dict[str, list[Utterance]], reps: dict, channel: dict | None) -> dict:
    out: dict = {"train": spec["train"], "ood": spec["ood"], "representations": {}}
    for rep in REPRESENTATIONS:
        folds = []
        for fold in spec["folds"]:
            tr, sp, held, held_ids, held_corpus = [], [], [], [], []
            for corpus in spec["train"]:
                test = set(fold[corpus])
                us = utts[corpus]
                keep = np.array([u.speaker not in test for u in us])
                tr.append(reps[corpus][rep][keep])
                sp += [f"{corpus}.{u.speaker}" for u, k in zip(us, keep) if k]
                held.append(reps[corpus][rep][~keep])
                held_ids += [i for i, k in enumerate(keep) if not k]
                held_corpus += [corpus] * int((~keep).sum())
            ood = {k: reps[k][rep] for k in spec["ood"]}
            row = score_fold(np.concatenate(tr), sp, np.concatenate(held), ood, rep, held_corpus)
            if channel is not None and rep in channel:  # informational: scored apart, not in the pooled recall
                row["channel"] = score_fold(np.concatenate(tr), sp, np.concatenate(held),
                                            {k: v[held_ids] for k, v in channel[rep].items()}, rep)
            row["held_out"] = {c: fold[c] for c in spec["train"]}
            folds.append(row)
        out["representations"][rep] = {"folds": folds, "summary": summarise(folds)}
        log.info("%s %s: AUROC %.3f", name, rep, out["representations"][rep]["summary"]["auroc"])
    return out


def summarise(folds: list[dict]) -> dict:
    mean = lambda xs: float(np.mean(xs))
    rules = {r: {m: mean([f["rules"][r][m] for f in folds]) for m in ("false_flags", "recall", "threshold")}
             for r in folds[0]["rules"]}
    for r in rules:
        rules[r]["false_flags_by_corpus"] = {k: mean([f["rules"][r]["false_flags_by_corpus"][k] for f in folds])
                                             for k in folds[0]["rules"][r]["false_flags_by_corpus"]}
        rules[r]["recall_by_set"] = {k: mean([f["rules"][r]["recall_by_set"][k] for f in folds])
                                     for k in folds[0]["rules"][r]["recall_by_set"]}
    return {"auroc": mean([f["auroc"] for f in folds]), "auroc_sd": float(np.std([f["auroc"] for f in folds])),
            "auroc_by_set": {k: mean([f["auroc_by_set"][k] for f in folds]) for k in folds[0]["auroc_by_set"]},
            "rules": rules}


def choose(result: dict) -> dict:
    """The representation and threshold rule chosen on the choice pairing (module docstring)."""
    reps = result["representations"]
    rep = max((r for r in reps if REPRESENTATIONS[r]), key=lambda r: reps[r]["summary"]["auroc"])
    rules = reps[rep]["summary"]["rules"]
    ok = [r for r in rules if rules[r]["false_flags"] <= MAX_FALSE_FLAGS]
    rule = max(ok, key=lambda r: rules[r]["recall"]) if ok else min(rules, key=lambda r: rules[r]["false_flags"])
    return {"representation": rep, "rule": rule,
            "candidates": len([r for r in reps if REPRESENTATIONS[r]]) * len(rules)}


def tables(results: dict, chosen: dict) -> str:
    lines = [("| pairing (fitted on) | OOD sets | representation | AUROC (mean ± sd over folds) | "
              f"false flags at {chosen['rule']} | OOD recall at {chosen['rule']} | recall per OOD set |"),
             "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for rep, r in res["representations"].items():
            s = r["summary"]
            c = s["rules"][chosen["rule"]]
            per = ", ".join(f"{k} {v:.3f}" for k, v in c["recall_by_set"].items())
            flags = f"{c['false_flags']:.3f}"
            if len(c["false_flags_by_corpus"]) > 1:
                flags += " (" + ", ".join(f"{k} {v:.3f}" for k, v in c["false_flags_by_corpus"].items()) + ")"
            mark = " (chosen)" if rep == chosen["representation"] else ""
            lines.append(f"| {name} | {' + '.join(res['ood'])} | {rep}{mark} | "
                         f"{s['auroc']:.3f} ± {s['auroc_sd']:.3f} | {flags} | {c['recall']:.3f} | {per} |")
    lines += ["", f"Threshold rules on {CHOICE_PAIRING} (frames):", "",
              "| rule | mean threshold | false flags | OOD recall |", "|---|---|---|---|"]
    for rule, v in results[CHOICE_PAIRING]["representations"][chosen["representation"]]["summary"]["rules"].items():
        lines.append(f"| {rule}{' (chosen)' if rule == chosen['rule'] else ''} | {v['threshold']:.2f} | "
                     f"{v['false_flags']:.3f} | {v['recall']:.3f} |")
    lines += ["", (f"Channel shifts of the held-out {CHOICE_PAIRING} speakers (informational; flagged at "
                   f"{chosen['rule']}):"),
              "", "| representation | condition | AUROC against the clean files | flagged |", "|---|---|---|---|"]
    for rep, r in results[CHOICE_PAIRING]["representations"].items():
        folds = [f["channel"] for f in r["folds"] if "channel" in f]
        for cond in (folds[0]["auroc_by_set"] if folds else []):
            auroc = np.mean([f["auroc_by_set"][cond] for f in folds])
            flagged = np.mean([f["rules"][chosen["rule"]]["recall_by_set"][cond] for f in folds])
            lines.append(f"| {rep} | {cond} | {auroc:.3f} | {flagged:.3f} |")
    return "\n".join(lines)


def bundled_flags(utts: dict[str, list[Utterance]], cache: Path) -> dict[str, dict]:
    """Per bundled model with out-of-domain statistics: its threshold and the share of each set it flags."""
    from moma.checkpoint import load_checkpoint
    from moma.inference.predictor import bundled_models

    sigs = synthetic_signals()
    out = {}
    for name, path in bundled_models().items():
        loaded = load_checkpoint(path)
        if loaded.ood is None:
            continue
        fcache = FeatureCache(cache / "features", loaded.config.features)
        sets = {c: np.stack([utterance_statistics(fcache.get(u)) for u in us]) for c, us in utts.items()}
        sets["synthetic"] = np.stack([utterance_statistics(compute_features(s, loaded.config.features)) for s in sigs])
        out[name] = {"threshold": loaded.ood.threshold, "fitted_on": loaded.ood.info.get("fitted_on", ""),
                     "flagged": {k: float(np.mean(loaded.ood.distances(v) > loaded.ood.threshold))
                                 for k, v in sets.items()}}
    return out


def bundled_table(bundled: dict[str, dict]) -> str:
    lines = ["| bundled model | threshold | fitted on | EmoDB | nEMO | RAVDESS-dev | synthetic |",
             "|---|---|---|---|---|---|---|"]
    for name, b in bundled.items():
        f = b["flagged"]
        lines.append(f"| {name} | {b['threshold']:.2f} | {b['fitted_on']} | {f['emodb']:.3f} | {f['nemo']:.3f} | "
                     f"{f['ravdess']:.3f} | {f['synthetic']:.3f} |")
    return "\n".join(lines)


def compact(result: dict, rule: str) -> dict:
    """A pairing's result for ood.json: every representation's summary, and per fold the held-out speakers, the
    counts, the AUROC and the chosen rule's threshold, false flags and recall."""
    out = {"train": result["train"], "ood": result["ood"], "representations": {}}
    for rep, r in result["representations"].items():
        folds = [{"held_out": f["held_out"], "n_train": f["n_train"], "n_in": f["n_in"], "auroc": f["auroc"],
                  **{k: f["rules"][rule][k] for k in ("threshold", "false_flags", "recall")},
                  **({"channel": {"auroc": f["channel"]["auroc_by_set"],
                                  "flagged": f["channel"]["rules"][rule]["recall_by_set"]}} if "channel" in f else {})}
                 for f in r["folds"]]
        out["representations"][rep] = {"summary": r["summary"], "folds": folds}
    return out


def rounded(value):
    """``value`` with every float rounded to 4 decimals (a small ood.json)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs", help="folder of the development manifests")
    ap.add_argument("--cache", default="cache", help="cache root (features/ and opensmile/ inside)")
    ap.add_argument("--out", default="reports/ood")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    t0 = time.time()
    utts = {c: read_manifest(Path(args.runs) / f) for c, f in CORPORA.items()}
    reps = representations(utts, Path(args.cache))
    specs = pairings(utts)
    results = {}
    for name, spec in specs.items():
        channel = channel_frames(utts["emodb"]) if spec.get("channel") else None
        results[name] = run_pairing(name, spec, utts, reps, channel)
    chosen = choose(results[CHOICE_PAIRING])
    bundled = bundled_flags(utts, Path(args.cache))
    table = (tables(results, chosen) + "\n\nShare flagged by the bundled models' own statistics:\n\n"
             + bundled_table(bundled))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"chosen": {**chosen, "on": CHOICE_PAIRING}, "max_false_flags": MAX_FALSE_FLAGS,
           "counts": {c: len(u) for c, u in utts.items()} | {"synthetic": len(reps["synthetic"]["frames"])},
           "wall_time_s": round(time.time() - t0, 1), "bundled": bundled,
           "pairings": {name: compact(res, chosen["rule"]) for name, res in results.items()}}
    (out / "ood.json").write_text(json.dumps(rounded(doc), indent=1) + "\n", encoding="utf-8")
    print(table)
    print(f"\nchosen on {CHOICE_PAIRING}: {chosen}; wrote {out / 'ood.json'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
