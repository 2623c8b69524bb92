"""Quantifying MOMA's "smoothing" claim and its speaker bias (issue 3).

* Attention statistics (:func:`collect_attention_stats`): how peaked each attention distribution is
  (entropy, also normalised by log L: 0 = one-hot, 1 = uniform) for layer 1, the mixture and each block, how
  similar the blocks are to each other (:func:`block_correlation`) and the learnt mixture weights.
* Speaker information (:func:`pooled_representations`, :func:`speaker_probe`): a linear probe predicting the
  speaker from utterance-level representations after the encoder, after attention layer 1 and after the MOMA
  layer. The paper claims the residual mixture removes speaker bias; lower probe accuracy after a stage means
  less (linearly decodable) speaker information there.
* :func:`speaker_bias`: spread of per-speaker UAR and the female - male gap.

Every function reads only valid frames: padded frames of a batch never enter a statistic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from moma.checkpoint import short_checkpoint_names
from moma.evaluation.stats import mean_std
from moma.features.cache import DEFAULT_CACHE_DIR
from moma.files import write_json_atomic
from moma.model import MOMA, masked_mean

__all__ = [
    "FINAL_STAGE",
    "analyse_checkpoint",
    "attention_entropy",
    "block_correlation",
    "collect_attention_stats",
    "pooled_representations",
    "probe_stages",
    "render_attention_report",
    "run_attention_analysis",
    "speaker_bias",
    "speaker_probe",
]

log = logging.getLogger(__name__)

# The representation after each architecture's last pooling layer, the one the "removing bias" claim is about:
# MOMA's mixture-pooled layer-1 output (after the MOMA layer, before the projection) and the baselines' pooled
# BLSTM output. All are 2H-dimensional, so the probes compare like with like.
FINAL_STAGE = {"moma": "pooled", "attention": "embedding", "mean": "embedding"}
STAGE_DESCRIPTIONS = {
    "encoder": "after the encoder: mean of the BLSTM output Y over valid frames",
    "layer1": "after attention layer 1: mean of its residual output Y2 (MOMA only)",
    "pooled": "after the MOMA layer: mixture-attention pooled Y2, before the projection (MOMA only)",
    "embedding": "what the classifier reads (MOMA: the projection output; baselines: the pooled BLSTM output)",
}


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- attention statistics


def attention_entropy(weights: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
    """Entropy of each utterance's attention over its valid frames.

    ``weights`` (B, T), ``lengths`` (B,) (numpy or torch). Each row's first ``L`` weights are renormalised to
    sum to 1 (they already do for model outputs) and ``H = -sum p log p`` in nats, with 0 log 0 = 0.
    Returns ``(entropy, normalised)``, both (B,) float64: ``normalised = H / log L`` (0 = one-hot,
    1 = uniform); it is NaN for L = 1, where one-hot and uniform coincide.
    """
    w = _np(weights).astype(np.float64)
    lens = _np(lengths).astype(np.int64).reshape(-1)
    if w.ndim != 2 or w.shape[0] != lens.shape[0]:
        raise ValueError(f"expected weights (B, T) and lengths (B,), got {w.shape} and {lens.shape}")
    ent = np.empty(lens.shape[0])
    norm = np.empty(lens.shape[0])
    for b, n in enumerate(lens):
        if n < 1 or n > w.shape[1]:
            raise ValueError(f"length {n} outside [1, {w.shape[1]}]")
        p = w[b, :n]
        total = p.sum()
        if total <= 0:
            raise ValueError(f"utterance {b}: attention weights sum to {total}")
        p = p / total
        nz = p[p > 0]
        ent[b] = float(-(nz * np.log(nz)).sum())
        norm[b] = ent[b] / math.log(n) if n > 1 else math.nan
    return ent, norm


def _block_correlations(blocks: Any, lengths: Any) -> np.ndarray:
    """(B,) mean pairwise Pearson correlation between blocks over each utterance's valid frames.

    NaN for an utterance with fewer than 2 valid frames, fewer than 2 blocks, or where every pair involves a
    constant (e.g. uniform) block, for which a correlation is undefined; such pairs are skipped otherwise.
    """
    a = _np(blocks).astype(np.float64)
    lens = _np(lengths).astype(np.int64).reshape(-1)
    if a.ndim != 3 or a.shape[0] != lens.shape[0]:
        raise ValueError(f"expected blocks (B, N, T) and lengths (B,), got {a.shape} and {lens.shape}")
    out = np.full(a.shape[0], math.nan)
    n_blocks = a.shape[1]
    if n_blocks < 2:
        return out
    iu = np.triu_indices(n_blocks, k=1)
    for b, n in enumerate(lens):
        if n < 2:
            continue
        x = a[b, :, :n]
        x = x - x.mean(axis=1, keepdims=True)
        norms = np.sqrt((x * x).sum(axis=1))
        ok = norms > 1e-12 * max(1.0, float(np.abs(a[b, :, :n]).max()))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = (x @ x.T) / np.outer(norms, norms)
        pairs = [corr[i, j] for i, j in zip(*iu) if ok[i] and ok[j]]
        if pairs:
            out[b] = float(np.mean(pairs))
    return out


def block_correlation(blocks: Any, lengths: Any) -> float:
    """Mean pairwise Pearson correlation between the N blocks' attention over valid frames, averaged over
    utterances (B, N, T) -> float. Identical (non-constant) blocks give 1; utterances where it is undefined
    (see :func:`_block_correlations`) are left out of the average; NaN if none is left."""
    per = _block_correlations(blocks, lengths)
    per = per[np.isfinite(per)]
    return float(per.mean()) if per.size else math.nan


def _batches(features: Mapping[str, np.ndarray], ids: Sequence[str], batch_size: int,
             functionals: Mapping[str, np.ndarray] | None = None):
    """Padded (x, lengths, ids, extra model inputs) batches in the order of ``ids``; the extra inputs are a
    fusion model's standardised functionals (B, D_f), or nothing."""
    for start in range(0, len(ids), batch_size):
        chunk = list(ids[start:start + batch_size])
        arrays = [np.asarray(features[k], dtype=np.float32) for k in chunk]
        lens = [a.shape[0] for a in arrays]
        x = np.zeros((len(arrays), max(lens), arrays[0].shape[1]), dtype=np.float32)
        for i, a in enumerate(arrays):
            x[i, : a.shape[0]] = a
        extra = () if functionals is None else (
            torch.from_numpy(np.stack([np.asarray(functionals[k], dtype=np.float32) for k in chunk])),)
        yield torch.from_numpy(x), torch.tensor(lens, dtype=torch.long), chunk, extra


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def collect_attention_stats(model: torch.nn.Module, features: Mapping[str, np.ndarray], ids: Sequence[str], *,
                            batch_size: int = 16, functionals: Mapping[str, np.ndarray] | None = None
                            ) -> dict[str, Any]:
    """Attention statistics of ``model`` over the (normalised) features of ``ids``.

    Returns ``{"n": utterances, <stat>: {"mean", "std", "n"}, ...}`` with, where the model has them:
    ``layer1_entropy``/``layer1_entropy_norm``, ``mixture_entropy``/``mixture_entropy_norm``,
    ``block_entropy``/``block_entropy_norm`` (lists, one entry per block), ``block_correlation`` (per
    utterance, then mean/std) and ``gammas`` (the mixture weights, list of mean/std: constant over
    utterances, so std 0). Entropies are in nats; ``_norm`` divides by log L. Statistics missing from an
    architecture (the mean-pooling baseline has no attention at all) are omitted.
    """
    was_training = model.training
    model.eval()
    dev = _device(model)
    acc: dict[str, list] = {}
    try:
        for x, lens, _, extra in _batches(features, list(ids), batch_size, functionals):
            out = model(x.to(dev), lens.to(dev), *(e.to(dev) for e in extra))
            att = out.attention or {}
            for key in ("layer1", "mixture"):
                if att.get(key) is not None:
                    ent, norm = attention_entropy(att[key], lens)
                    acc.setdefault(f"{key}_entropy", []).append(ent)
                    acc.setdefault(f"{key}_entropy_norm", []).append(norm)
            if att.get("blocks") is not None:
                blocks = _np(att["blocks"])
                for n in range(blocks.shape[1]):
                    ent, norm = attention_entropy(blocks[:, n], lens)
                    acc.setdefault(f"block{n}_entropy", []).append(ent)
                    acc.setdefault(f"block{n}_entropy_norm", []).append(norm)
                acc.setdefault("block_correlation", []).append(_block_correlations(blocks, lens))
            if att.get("gammas") is not None:
                acc.setdefault("gammas", []).append(_np(att["gammas"]).reshape(1, -1).repeat(len(lens), 0))
    finally:
        model.train(was_training)
    stats: dict[str, Any] = {"n": len(ids)}
    n_blocks = sum(1 for k in acc if k.startswith("block") and k.endswith("_entropy"))
    for key, parts in acc.items():
        if key.startswith("block") and key != "block_correlation":
            continue
        values = np.concatenate(parts)
        if key == "gammas":
            stats[key] = [mean_std(values[:, n]) for n in range(values.shape[1])]
        else:
            stats[key] = mean_std(values)
    if n_blocks:
        for suffix in ("entropy", "entropy_norm"):
            stats[f"block_{suffix}"] = [mean_std(np.concatenate(acc[f"block{n}_{suffix}"])) for n in range(n_blocks)]
    return stats


# --------------------------------------------------------------------------- speaker information


@torch.no_grad()
def pooled_representations(model: torch.nn.Module, features: Mapping[str, np.ndarray], ids: Sequence[str], *,
                           batch_size: int = 16, functionals: Mapping[str, np.ndarray] | None = None
                           ) -> dict[str, np.ndarray]:
    """Utterance-level representations at each stage, rows in the order of ``ids``.

    * ``"encoder"`` (n, 2H): masked mean of the BLSTM output Y (all architectures).
    * ``"layer1"`` (n, 2H): masked mean of attention layer 1's (residual) output, computed with the model's
      own ``MOMA.attend_layer1``, as ``MOMA.forward`` does (MOMA only;
      the attention baseline has no layer-1 output sequence: it pools Y directly).
    * ``"pooled"`` (n, 2H): ``ModelOutput.encoded``, the mixture-pooled layer-1 output before the projection
      (MOMA only; for the baselines it equals ``"embedding"``).
    * ``"embedding"`` (n, D): ``ModelOutput.embedding``, what the classifier reads (MOMA: after the MOMA layer
      and projection; attention baseline: attention-pooled Y; mean baseline: equal to ``"encoder"``).
    """
    was_training = model.training
    model.eval()
    dev = _device(model)
    parts: dict[str, list[np.ndarray]] = {}
    is_moma = isinstance(model, MOMA)
    # the BLSTM output (Y, mask) of the forward pass itself, so the encoder (most of the cost) runs once a batch
    encoded: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.encoder.register_forward_hook(lambda _module, _inputs, output: encoded.append(output))
    try:
        for x, lens, _, extra in _batches(features, list(ids), batch_size, functionals):
            x, lens = x.to(dev), lens.to(dev)
            encoded.clear()
            out = model(x, lens, *(e.to(dev) for e in extra))
            y, mask = encoded[0]  # (B, T, 2H), (B, T)
            parts.setdefault("encoder", []).append(_np(masked_mean(y, mask)))
            if is_moma:
                _, y2 = model.attend_layer1(y, mask, lens)
                parts.setdefault("layer1", []).append(_np(masked_mean(y2, mask)))
            if is_moma and out.encoded is not None:
                parts.setdefault("pooled", []).append(_np(out.encoded))
            parts.setdefault("embedding", []).append(_np(out.embedding))
    finally:
        hook.remove()
        model.train(was_training)
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}


def speaker_probe(reps: np.ndarray, speakers: Sequence[str], *, folds: int = 5, seed: int = 0,
                  max_iter: int = 2000, C: float = 1.0) -> dict[str, Any]:
    """Linear speaker probe: how well a logistic regression on standardised ``reps`` (n, D) predicts the
    speaker of each utterance.

    Stratified k-fold cross-validation over *utterances* (every speaker appears in both the training and the
    test part of each fold: this probes speaker information, it is not speaker-independent evaluation). The
    scaler is fitted on each fold's training part only. ``folds`` is lowered to the smallest speaker's
    utterance count when needed (at least 2 utterances per speaker are required).

    Returns ``accuracy_mean``, ``accuracy_std`` (over folds, ddof=1), ``fold_accuracies``, ``chance`` (the
    majority speaker's share), ``n``, ``n_speakers``, ``folds``. Lower accuracy = less speaker information.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(reps, dtype=np.float64)
    y = np.asarray([str(s) for s in speakers])
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected reps (n, D) and n speaker ids, got {x.shape} and {y.shape[0]}")
    names, counts = np.unique(y, return_counts=True)
    if names.size < 2:
        raise ValueError("a speaker probe needs at least 2 speakers")
    k = min(int(folds), int(counts.min()))
    if k < 2:
        raise ValueError(f"every speaker needs at least 2 utterances for a cross-validated probe "
                         f"(speaker {names[counts.argmin()]!r} has {counts.min()})")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    accs = []
    for train, test in splitter.split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
        clf.fit(x[train], y[train])
        accs.append(float(np.mean(clf.predict(x[test]) == y[test])))
    ms = mean_std(accs)
    return {"accuracy_mean": ms["mean"], "accuracy_std": ms["std"], "fold_accuracies": accs,
            "chance": float(counts.max() / counts.sum()), "n": int(y.size), "n_speakers": int(names.size),
            "folds": k}


def speaker_bias(per_speaker: Mapping[str, Mapping[str, Any]], genders: Mapping[str, str], *,
                 metric: str = "uar") -> dict[str, Any]:
    """Spread of a per-speaker metric (default UAR) and the gender gap.

    ``per_speaker``: ``{speaker: {"uar": ..., ...}}`` (e.g. ``score_posteriors(...)["per_speaker"]``);
    ``genders``: ``{speaker: "F" | "M"}``. Returns ``mean``, ``std`` (sample, ddof=1; 0 for one speaker),
    ``min``, ``max``, ``range``, ``worst_speaker``, ``best_speaker``, ``female_mean``, ``male_mean``,
    ``n_female``, ``n_male`` and ``gender_gap`` = female_mean - male_mean (NaN when a gender has no speaker).
    Speakers with no (or another) gender count in the spread but not in the gap.
    """
    if not per_speaker:
        raise ValueError("no speakers")
    values = {spk: float(m[metric]) for spk, m in per_speaker.items()}
    arr = np.array(list(values.values()))
    ms = mean_std(arr)
    g = {spk: str(genders.get(spk, "")).upper()[:1] for spk in values}
    female = [v for spk, v in values.items() if g[spk] == "F"]
    male = [v for spk, v in values.items() if g[spk] == "M"]
    f_mean = float(np.mean(female)) if female else math.nan
    m_mean = float(np.mean(male)) if male else math.nan
    return {
        "metric": metric,
        "n_speakers": len(values),
        "mean": ms["mean"],
        "std": ms["std"],
        "min": float(arr.min()),
        "max": float(arr.max()),
        "range": float(arr.max() - arr.min()),
        "worst_speaker": min(values, key=values.get),
        "best_speaker": max(values, key=values.get),
        "female_mean": f_mean,
        "male_mean": m_mean,
        "n_female": len(female),
        "n_male": len(male),
        "gender_gap": f_mean - m_mean if female and male else math.nan,
    }


# --------------------------------------------------------------------------- one checkpoint, end to end


def probe_stages(model: torch.nn.Module, features: Mapping[str, np.ndarray], ids: Sequence[str],
                 speakers: Sequence[str], *, folds: int = 5, seed: int = 0,
                 functionals: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """:func:`speaker_probe` on every stage of :func:`pooled_representations`.

    Speakers with fewer than 2 of the given utterances cannot be cross-validated and are left out (listed in
    ``dropped_speakers``). Returns ``{"stages": {stage: probe result}, "final": stage name, ...}``, or
    ``{"skipped": reason}`` when fewer than 2 speakers remain: a probe on one speaker measures nothing.
    """
    counts: dict[str, int] = {}
    for spk in speakers:
        counts[spk] = counts.get(spk, 0) + 1
    dropped = sorted(s for s, n in counts.items() if n < 2)
    keep = [i for i, spk in enumerate(speakers) if counts[spk] >= 2]
    kept_speakers = sorted({speakers[i] for i in keep})
    if len(kept_speakers) < 2:
        return {"skipped": f"a speaker probe needs >= 2 speakers with >= 2 utterances each; got "
                           f"{len(kept_speakers)} ({', '.join(kept_speakers) or 'none'})"}
    sel_ids = [ids[i] for i in keep]
    sel_spk = [speakers[i] for i in keep]
    reps = pooled_representations(model, features, sel_ids, functionals=functionals)
    arch = getattr(getattr(model, "cfg", None), "arch", "moma" if isinstance(model, MOMA) else "mean")
    stages = {name: speaker_probe(rep, sel_spk, folds=folds, seed=seed) for name, rep in reps.items()}
    return {"stages": stages, "final": FINAL_STAGE.get(arch, "embedding"), "speakers": kept_speakers,
            "dropped_speakers": dropped, "n": len(sel_ids)}


def analyse_checkpoint(loaded: Any, features: Mapping[str, np.ndarray], utterances: Sequence[Any], *,
                       attention: bool = True, probe: bool = True, probe_utterances: Optional[Sequence[Any]] = None,
                       probe_folds: int = 5, seed: int = 0,
                       functionals: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Attention statistics and speaker probes of a :class:`~moma.checkpoint.LoadedCheckpoint`.

    ``features``: raw (unnormalised) features with the checkpoint's feature config, for every utterance used.
    They are normalised as the checkpoint was trained (:func:`moma.inference.predictor.normalise_for_checkpoint`).
    ``functionals``: a fusion checkpoint's raw utterance functionals of the same utterances, standardised here
    as it was trained. Attention statistics run on ``utterances``; the probe on ``probe_utterances`` (default
    the same).
    """
    from moma.features.normalise import normalise_for_checkpoint, standardise_functionals_for_checkpoint

    probe_utts = list(probe_utterances) if probe_utterances is not None else list(utterances)
    every = {u.id: u for u in list(utterances) + probe_utts}
    missing = [k for k in every if k not in features]
    if missing:
        raise ValueError(f"no features for {len(missing)} utterance(s), e.g. {missing[0]}")
    normed = normalise_for_checkpoint(loaded.normaliser, {k: features[k] for k in every}, list(every.values()))
    funcs = None
    if loaded.functionals_normaliser is not None:
        if functionals is None:
            raise ValueError("a fusion checkpoint (features.functionals) needs the utterances' functionals")
        funcs = standardise_functionals_for_checkpoint(loaded.functionals_normaliser,
                                                       {k: functionals[k] for k in every}, list(every.values()))
    out: dict[str, Any] = {"arch": loaded.config.model.arch, "num_blocks": loaded.config.model.num_blocks}
    if attention:
        out["attention"] = collect_attention_stats(loaded.model, normed, [u.id for u in utterances],
                                                   functionals=funcs)
    if probe:
        ids = [u.id for u in probe_utts]
        out["probe"] = probe_stages(loaded.model, normed, ids, [u.speaker for u in probe_utts],
                                    folds=probe_folds, seed=seed, functionals=funcs)
    return out


def run_attention_analysis(checkpoints: Sequence[Union[str, Path]], utterances: Sequence[Any],
                           out_dir: Union[str, Path], *, cache_dir: Union[str, Path] = DEFAULT_CACHE_DIR,
                           probe_folds: int = 5, seed: int = 0, command: str = "", device: str = "cpu",
                           feature_workers: int = 1) -> dict[str, Any]:
    """``moma analyse-attention``: attention statistics and speaker probes of each checkpoint on the same
    utterances; writes results.json and report.md into ``out_dir``. Returns the content of results.json.

    Probe data: all the given utterances. The report states which of their speakers each checkpoint was
    trained on: a probe on training speakers measures what the model kept about speakers it learnt from, one
    on held-out speakers what it keeps about new voices.
    """
    from moma.checkpoint import existing_checkpoint_paths, load_checkpoint
    from moma.features.cache import FeatureCache, extract_features
    from moma.features.frontend import feature_config_hash
    from moma.features.functionals import extract_run_functionals, functionals_key

    paths = existing_checkpoint_paths(checkpoints)
    utterances = sorted(utterances, key=lambda u: u.id)
    if not utterances:
        raise ValueError("no utterances to analyse (empty manifest or speaker selection)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features_by_hash: dict[str, dict[str, np.ndarray]] = {}
    # a fusion checkpoint's raw functionals, by functionals_key; None for a model without them
    functionals_by_key: dict[tuple[str, float], dict[str, np.ndarray] | None] = {}
    models: dict[str, Any] = {}
    speakers = sorted({u.speaker for u in utterances})
    for name, path in zip(short_checkpoint_names(paths), paths):
        loaded = load_checkpoint(path, device=device)
        unknown = sorted({u.label for u in utterances} - set(loaded.labels))
        if unknown:
            raise ValueError(f"{path}: labels {', '.join(unknown)} are not among the model's labels "
                             f"({', '.join(loaded.labels)})")
        h = feature_config_hash(loaded.config.features)
        if h not in features_by_hash:
            features_by_hash[h] = extract_features(utterances, FeatureCache(cache_dir, loaded.config.features),
                                                   workers=feature_workers)
        fkey = functionals_key(loaded.config.features)
        if fkey not in functionals_by_key:  # once per feature set and level, like the frames above
            functionals_by_key[fkey] = extract_run_functionals(loaded.config.features, utterances, cache_dir,
                                                               workers=feature_workers)
        res = analyse_checkpoint(loaded, features_by_hash[h], utterances, probe_folds=probe_folds, seed=seed,
                                 functionals=functionals_by_key[fkey])
        info = loaded.info
        held_out = set(info.get("test_speakers", [])) | set(info.get("val_speakers", []))
        res.update({"checkpoint": str(path),
                    "probe_speakers_held_out": sorted(set(speakers) & held_out) if info.get("test_speakers")
                    is not None else None,
                    "checkpoint_test_speakers": info.get("test_speakers"),
                    "checkpoint_val_speakers": info.get("val_speakers")})
        models[name] = res
        log.info("analysed %s", name)
    results = {"command": command, "n_utterances": len(utterances), "speakers": speakers,
               "utterance_ids": [u.id for u in utterances], "probe_folds": probe_folds, "seed": seed,
               "models": models}
    write_json_atomic(out_dir / "results.json", results)
    (out_dir / "report.md").write_text(render_attention_report(results), encoding="utf-8")
    return results


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _ms(d: Optional[Mapping[str, Any]]) -> str:
    if not d or not d.get("n"):
        return "–"
    return f"{_f(d['mean'])} ± {_f(d['std'])}"


def attention_rows(stats: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(layer, entropy in nats, normalised entropy) rows of :func:`collect_attention_stats`'s output."""
    rows = []
    if "layer1_entropy" in stats:
        rows.append(("layer 1", _ms(stats["layer1_entropy"]), _ms(stats["layer1_entropy_norm"])))
    for n, (e, en) in enumerate(zip(stats.get("block_entropy", []), stats.get("block_entropy_norm", []))):
        rows.append((f"MOMA block {n + 1}", _ms(e), _ms(en)))
    if "mixture_entropy" in stats:
        rows.append(("MOMA mixture", _ms(stats["mixture_entropy"]), _ms(stats["mixture_entropy_norm"])))
    return rows


ENTROPY_NOTE = ("Entropy H = −Σ p_t log p_t over an utterance's valid frames, in nats, mean ± std over utterances. "
                "Normalised: H / log L (L = the utterance's frame count), so 0 is one-hot and 1 is uniform "
                "whatever the length; raw entropies grow with log L and are comparable only at equal lengths. "
                "Block correlation: mean pairwise Pearson correlation between the blocks' attention over valid "
                "frames (1 = identical blocks). Gammas: the learnt mixture weights.")
PROBE_NOTE = ("Speaker probe: a logistic regression (standardised inputs) predicting the speaker from each "
              "utterance-level representation, stratified k-fold cross-validation over utterances (every speaker "
              "is in each fold's training and test part: this measures speaker information, it is not "
              "speaker-independent evaluation). Lower accuracy = less linearly decodable speaker information; "
              "chance = the largest speaker's share.")


def render_attention_report(results: Mapping[str, Any]) -> str:
    """Markdown for :func:`run_attention_analysis`."""
    lines = ["# Attention and speaker-information analysis", "", "Made by:", "", "```",
             results.get("command") or "(library call)", "```", "",
             f"- Data: {results['n_utterances']} utterances of {len(results['speakers'])} speaker(s): "
             f"{', '.join(results['speakers'])}. The attention statistics and the speaker probe both run on all "
             "of them.", ""]
    for name, m in results["models"].items():
        lines += [f"## {name}", "", f"Checkpoint `{m['checkpoint']}`: {m['arch']}"
                  + (f", {m['num_blocks']} blocks" if m["arch"] == "moma" else ""), ""]
        held = m.get("probe_speakers_held_out")
        if held is not None:
            trained = sorted(set(results["speakers"]) - set(held))
            lines += [f"Speakers of the data held out from this checkpoint's training (its test and validation "
                      f"speakers): {', '.join(held) or 'none'}; seen in training: {', '.join(trained) or 'none'}.",
                      ""]
        att = m.get("attention") or {}
        rows = attention_rows(att)
        if rows:
            lines += ["| attention | entropy (nats) | normalised entropy H / log L |", "|---|---|---|"]
            lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
            if "block_correlation" in att:
                lines += ["", f"Block correlation: {_ms(att['block_correlation'])}."]
            if att.get("gammas"):
                lines += ["", "Gammas: " + ", ".join(f"{g['mean']:.3f}" for g in att["gammas"]) + "."]
        else:
            lines += ["This architecture has no attention (mean pooling)."]
        probe = m.get("probe") or {}
        lines += [""]
        if "skipped" in probe:
            lines += [f"Speaker probe not run: {probe['skipped']}.", ""]
        elif probe:
            lines += [f"Speaker probe ({probe['n']} utterances, {len(probe['speakers'])} speakers"
                      + (f"; left out for having < 2 utterances: {', '.join(probe['dropped_speakers'])}"
                         if probe["dropped_speakers"] else "") + "):", "",
                      "| stage | probe accuracy (mean ± std over folds) | chance | folds |", "|---|---|---|---|"]
            for stage, r in probe["stages"].items():
                mark = " (final)" if stage == probe["final"] else ""
                lines.append(f"| {stage}{mark}: {STAGE_DESCRIPTIONS.get(stage, '')} | {_f(r['accuracy_mean'])} ± "
                             f"{_f(r['accuracy_std'])} | {_f(r['chance'])} | {r['folds']} |")
            lines += [""]
    lines += ["## Definitions", "", ENTROPY_NOTE, "", PROBE_NOTE, ""]
    return "\n".join(lines)
