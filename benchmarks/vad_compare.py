"""Energy VAD against Silero VAD: frame-level F1 and false alarms on speech with noise, and on non-speech.

    python benchmarks/vad_compare.py [--emodb /work/shared/corpora/emodb] [--files 30] [--seed 0] [--out DIR]

Speech: ``--files`` EmoDB utterances (drawn with ``--seed``), each with 1 s of silence added before and after,
so that every item has known speech and non-speech. The speech region is taken from the phone timings in
``lablaut/``: from 0 to the start of the final "." (pause) segment, shifted by the added second; pauses inside
the utterance count as speech (the timings do not mark them reliably), which is what a region-level detector
with a 0.3 s merge gap reports anyway. Each item is scored clean and with white noise or 4-talker babble (of
other speakers' utterances) at 20, 10, 5 and 0 dB SNR over the speech's active frames
(``moma.audio.perturb.mix_at_snr(reference="active")``). Non-speech: 4 s of digital silence, of -90 dBFS noise,
of white noise at -20 dBFS, and of synthetic music (``moma.audio.perturb.synthetic_music``), 10 clips each.

Frames are 10 ms and a frame counts as speech when it lies in a detected speech region (after each detector's
0.3 s merge gap and 0.2 s minimum region, as the predictor and timeline use them). Reported per condition and
detector: precision, recall, F1 and false-alarm rate (share of non-speech frames called speech); for
non-speech clips the false-alarm rate and the share of clips with >= 0.5 s of "speech" (those would be given an
emotion). Writes vad.json into ``--out`` and prints the markdown table that reports/vad/README.md quotes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from moma.audio.io import load_audio
from moma.audio.perturb import make_babble, mix_at_snr, synthetic_music, white_noise
from moma.audio.vad import FRAME_S, VadConfig, speech_flags
from moma.corpora.alignment import read_alignment

SR = 16000
PAD_S = 1.0  # s of silence added before and after each utterance
SNRS = (20, 10, 5, 0)  # dB
ENGINES = ("energy", "silero")
MIN_SPEECH_S = 0.5  # s; the predictor's too-short limit: a non-speech clip above it would get an emotion


def speech_items(root: Path, count: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, float]]:
    """(name, padded signal, speech end in s of the unpadded utterance) for ``count`` EmoDB files."""
    wavs = sorted((root / "wav").glob("*.wav"))
    items = []
    for i in rng.permutation(len(wavs)).tolist():
        lab = root / "lablaut" / f"{wavs[i].stem}xx.lablaut"
        if not lab.is_file():
            continue
        ali = read_alignment(lab)
        ends = [start for start, label in zip(ali.starts, ali.labels) if label == "."]
        if not ends:
            continue
        sig = load_audio(wavs[i], SR)
        items.append((wavs[i].stem, sig, float(ends[-1])))
        if len(items) == count:
            break
    return items


def truth(n: int, speech_end: float) -> np.ndarray:
    """Frame truth of a padded item: speech from PAD_S to PAD_S + speech_end."""
    t = (np.arange(n) + 0.5) * FRAME_S
    return (t >= PAD_S) & (t < PAD_S + speech_end)


def region_frames(signal: np.ndarray, engine: str) -> tuple[np.ndarray, float]:
    """Per-frame speech (inside a detected region) and seconds of speech, by one detector."""
    flags, regions = speech_flags(signal, SR, VadConfig(engine=engine))
    frames = np.zeros(flags.shape[0], dtype=bool)
    for start, end in regions:
        frames[int(round(start / FRAME_S)):int(round(end / FRAME_S))] = True
    return frames, float(sum(e - s for s, e in regions))


def condition_signals(items: list[tuple[str, np.ndarray, float]], condition: str, snr: float | None,
                      seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(signal, frame truth) per item under one condition."""
    pad = np.zeros(int(PAD_S * SR), dtype=np.float32)
    out = []
    for k, (name, sig, end) in enumerate(items):
        rng = np.random.default_rng([seed, k, int(snr or 0), len(condition)])
        padded = np.concatenate([pad, sig, pad])
        if condition == "white":
            padded = _mix_padded(sig, white_noise(padded.size, rng), snr, rng)
        elif condition == "babble":
            others = [s for n, s, _ in items if n[:2] != name[:2]]  # other speakers only
            padded = _mix_padded(sig, make_babble(others, padded.size, 4, rng), snr, rng)
        out.append((padded, truth(padded.size // int(FRAME_S * SR), end)))
    return out


def _mix_padded(sig: np.ndarray, noise: np.ndarray, snr: float | None, rng: np.random.Generator) -> np.ndarray:
    """Padded utterance plus ``noise`` over the whole length, at ``snr`` dB over the speech's active frames."""
    n_pad = int(PAD_S * SR)
    padded = np.concatenate([np.zeros(n_pad), sig, np.zeros(n_pad)])
    # the noise's level is set against the unpadded speech, then the noise runs over the padding too
    _, _, scaled = mix_at_snr(sig, noise[n_pad:n_pad + sig.size], float(snr), rng, reference="active", sr=SR,
                              return_components=True)
    gain = float(np.std(scaled)) / max(float(np.std(noise[n_pad:n_pad + sig.size])), 1e-12)
    mix = padded + noise * gain
    return (mix / max(1.0, float(np.max(np.abs(mix))))).astype(np.float32)


def score(pairs: list[tuple[np.ndarray, np.ndarray]], engine: str) -> dict[str, float]:
    tp = fp = fn = neg = 0
    clips_with_speech = 0
    for signal, true in pairs:
        pred, seconds = region_frames(signal, engine)
        m = min(pred.size, true.size)
        pred, true = pred[:m], true[:m]
        tp += int(np.sum(pred & true))
        fp += int(np.sum(pred & ~true))
        fn += int(np.sum(~pred & true))
        neg += int(np.sum(~true))
        clips_with_speech += seconds >= MIN_SPEECH_S
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else (0.0 if tp + fn else float("nan"))
    return {"precision": precision, "recall": recall, "f1": f1, "false_alarm": fp / neg if neg else float("nan"),
            "clips_over_min_speech": clips_with_speech / len(pairs)}


def non_speech(seed: int, clips: int = 10, seconds: float = 4.0) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    n = int(seconds * SR)
    frames = n // int(FRAME_S * SR)
    make = {
        "silence (digital zero)": lambda rng: np.zeros(n, np.float32),
        "near-silence (-90 dBFS noise)": lambda rng: (white_noise(n, rng) * 10 ** (-90 / 20)).astype(np.float32),
        "white noise (-20 dBFS)": lambda rng: (white_noise(n, rng) * 10 ** (-20 / 20)).astype(np.float32),
        "synthetic music": lambda rng: synthetic_music(seconds, SR, rng),
    }
    return {name: [(fn(np.random.default_rng([seed, i, k])), np.zeros(frames, bool)) for i in range(clips)]
            for k, (name, fn) in enumerate(make.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emodb", default="/work/shared/corpora/emodb")
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/vad")
    args = parser.parse_args()
    t0 = time.time()
    items = speech_items(Path(args.emodb), args.files, np.random.default_rng(args.seed))
    conditions: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
        "clean": condition_signals(items, "clean", None, args.seed)}
    for kind in ("white", "babble"):
        for snr in SNRS:
            conditions[f"{kind} noise {snr} dB" if kind == "white" else f"babble {snr} dB"] = \
                condition_signals(items, kind, snr, args.seed)
    conditions.update(non_speech(args.seed))
    results = {name: {eng: score(pairs, eng) for eng in ENGINES} for name, pairs in conditions.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"files": len(items), "seed": args.seed, "wall_time_s": round(time.time() - t0, 1)}
    (out / "vad.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(table(results))
    print(f"\n{len(items)} EmoDB files, seed {args.seed}, {meta['wall_time_s']} s")


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    head = "| condition | " + " | ".join(f"{e} F1 | {e} false alarm | {e} clips >= 0.5 s" for e in ENGINES) + " |"
    rows = [head, "|" + "---|" * (1 + 3 * len(ENGINES))]
    for name, by_engine in results.items():
        cells = []
        for eng in ENGINES:
            r = by_engine[eng]
            f1 = "" if np.isnan(r["f1"]) else f"{r['f1']:.3f}"
            cells += [f1, f"{r['false_alarm']:.3f}", f"{r['clips_over_min_speech']:.2f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
