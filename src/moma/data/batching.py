"""From normalised feature matrices to padded, masked, length-bucketed batches.

Batches are padded (not packed: a packed BLSTM training step was about 4x slower on CPU, docs/model.md) and
carry explicit lengths; the model masks padded frames. Utterances of similar
length are grouped so that padding stays a small share of the frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from moma.config import DataConfig


@dataclass
class Item:
    """One training or evaluation example: a whole utterance or one window of it."""

    key: str  # utterance id
    start: int  # first frame of the window in the utterance
    end: int  # one past the last frame
    label: int  # class index (-1 when unknown)


@dataclass
class Batch:
    features: torch.Tensor  # [B, T_max, F] float32, zero-padded
    lengths: torch.Tensor  # [B] int64, valid frames per row
    labels: torch.Tensor  # [B] int64
    keys: list[str]  # utterance id per row
    starts: list[int]  # window start frame per row
    functionals: torch.Tensor | None = None  # [B, D_f] float32 utterance functionals (fusion models), else None

    def model_inputs(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The model's positional inputs on ``device``: (features, lengths[, functionals]); a fusion model's
        third input is present only when the batch carries functionals, so a plain model gets two."""
        inputs = (self.features.to(device, non_blocking=True), self.lengths.to(device))
        return inputs if self.functionals is None else (*inputs, self.functionals.to(device))


def window_starts(num_frames: int, window: int, hop: int) -> list[int]:
    """Start frames of fixed windows covering an utterance; the last window ends at the last frame.

    An utterance shorter than the window gives one window (itself), so no
    utterance is dropped and no window reaches past the end.
    """
    if window <= 0 or num_frames <= window:
        return [0]
    hop = max(1, hop)
    starts = list(range(0, num_frames - window + 1, hop))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def make_items(features: dict[str, np.ndarray], keys: Sequence[str], labels: dict[str, int] | None,
               window: int = 0, hop: int = 0) -> list[Item]:
    """Items for ``keys``: one per utterance, or one per window when ``window`` > 0 (frames).

    Windows are cut inside one utterance only, so a split made on utterances
    (and speakers) can never leak across segments.
    """
    items = []
    for key in keys:
        n = int(features[key].shape[0])
        label = labels[key] if labels is not None else -1
        if window > 0:
            items.extend(Item(key, s, min(n, s + window), label) for s in window_starts(n, window, hop))
        else:
            items.append(Item(key, 0, n, label))
    return items


class FeatureDataset(Dataset):
    """Items over in-memory feature matrices, with optional random crops and augmentation for training.

    Random choices come from a generator seeded by (seed, epoch, index), so an
    epoch is reproducible whatever the worker count or a resume point.
    """

    def __init__(self, features: dict[str, np.ndarray], items: list[Item], cfg: DataConfig | None = None,
                 *, train: bool = False, seed: int = 0, frames_per_second: float = 100.0,
                 functionals: Mapping[str, np.ndarray] | None = None) -> None:
        self.features = features
        # utterance id -> its standardised functionals (D_f,), for fusion models; a window reads its utterance's
        self.functionals = functionals
        self.items = items
        self.cfg = cfg or DataConfig()
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.crop = int(round(self.cfg.random_crop_s * frames_per_second)) if train else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Frames each item will have (after cropping), for length bucketing."""
        out = []
        for it in self.items:
            n = it.end - it.start
            out.append(min(n, self.crop) if self.crop > 0 else n)
        return out

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str, int, np.ndarray | None]:
        it = self.items[index]
        start, end = it.start, it.end
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.crop > 0 and end - start > self.crop:
                start = start + int(rng.integers(0, end - start - self.crop + 1))
                end = start + self.crop
        feats = self.features[it.key][start:end]
        if self.train and rng is not None:
            feats = augment(feats, self.cfg, rng)
        func = None if self.functionals is None else np.asarray(self.functionals[it.key], dtype=np.float32)
        return np.ascontiguousarray(feats, dtype=np.float32), it.label, it.key, start, func


def augment(feats: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment-style masking and feature noise ([T, F] in and out). Frequency masks may cover any column."""
    if not cfg.spec_augment and cfg.noise_std <= 0:
        return feats
    out = np.array(feats, dtype=np.float32)  # a writable copy
    n_frames, n_bins = out.shape
    if cfg.spec_augment:
        if cfg.freq_mask_bins > 0:
            width = int(rng.integers(0, cfg.freq_mask_bins + 1))
            if width:
                f0 = int(rng.integers(0, max(1, n_bins - width + 1)))
                out[:, f0:f0 + width] = 0.0  # 0 is the normalised mean
        for _ in range(cfg.num_time_masks):
            # never mask more than a fifth of a short utterance per mask
            width = int(rng.integers(0, min(cfg.time_mask_frames, n_frames // 5) + 1))
            if width:
                t0 = int(rng.integers(0, max(1, n_frames - width + 1)))
                out[t0:t0 + width] = 0.0
    if cfg.noise_std > 0:
        out += rng.normal(0.0, cfg.noise_std, size=out.shape).astype(np.float32)
    return out


def collate(samples: list[tuple[np.ndarray, int, str, int, np.ndarray | None]]) -> Batch:
    """Zero-pad to the longest item; lengths say which frames are real. Functionals, when the items carry
    them (fusion), are stacked to [B, D_f]."""
    lengths = [s[0].shape[0] for s in samples]
    n_bins = samples[0][0].shape[1]
    feats = np.zeros((len(samples), max(lengths), n_bins), dtype=np.float32)  # [B, T_max, F]
    for i, s in enumerate(samples):
        feats[i, : s[0].shape[0]] = s[0]
    funcs = [s[4] for s in samples]
    functionals = None if funcs[0] is None else torch.from_numpy(np.stack(funcs).astype(np.float32, copy=False))
    return Batch(
        features=torch.from_numpy(feats),
        lengths=torch.tensor(lengths, dtype=torch.long),
        labels=torch.tensor([s[1] for s in samples], dtype=torch.long),
        keys=[s[2] for s in samples],
        starts=[s[3] for s in samples],
        functionals=functionals,
    )


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length items under a frame budget (padding included).

    Items are sorted by length, with a seeded jitter so batch composition varies
    between epochs, cut into batches whose padded size stays under
    ``max_frames`` and ``batch_size``; the batch order is shuffled per epoch.
    Deterministic given (seed, epoch).
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, min_batch_size: int = 1) -> None:
        if max_frames <= 0 or batch_size <= 0 or min_batch_size <= 0:
            raise ValueError("max_frames, batch_size and min_batch_size must be positive")
        self.lengths = list(lengths)
        self.max_frames = max_frames
        self.batch_size = max(batch_size, min_batch_size)
        self.min_batch_size = min_batch_size  # a batch is cut only once it has this many items
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        lengths = np.asarray(self.lengths, dtype=np.float64)
        if self.shuffle:
            # jitter of up to 10% reorders near-equal lengths without hurting padding much
            keys = lengths * (1.0 + 0.1 * rng.random(len(lengths)))
        else:
            keys = lengths
        order = np.argsort(keys, kind="stable")
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for idx in order.tolist():
            n = self.lengths[idx]
            new_longest = max(longest, n)
            full = new_longest * (len(current) + 1) > self.max_frames or len(current) >= self.batch_size
            if current and full and len(current) >= self.min_batch_size:
                batches.append(current)
                current, new_longest = [], n
            current.append(idx)
            longest = new_longest
        if current:
            if len(current) < self.min_batch_size and batches:
                batches[-1].extend(current)  # a short tail joins the batch of the next-shorter items
            else:
                batches.append(current)
        if self.shuffle:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


class DistributedBucketBatchSampler(Sampler[list[int]]):
    """This rank's share of every global length-bucketed batch, for data-parallel training.

    Every rank builds the same global batches (same lengths, seed and epoch) as
    a single process would, with ``max_frames`` and ``batch_size`` meaning the
    GLOBAL batch so a recipe means the same thing on 1 or N processes, and
    takes items ``rank, rank + world_size, ...`` of each. Items within a batch
    are in length order, so the shares have near-equal lengths. Global
    batches hold at least ``world_size`` items, so no rank ever gets an empty
    share and every rank takes the same number of steps (DDP requires both).
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, batch_size: int, *, rank: int, world_size: int,
                 shuffle: bool = True, seed: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        if len(lengths) < world_size:
            raise ValueError(f"{len(lengths)} items cannot be shared by {world_size} processes")
        self.global_sampler = BucketBatchSampler(lengths, max_frames, batch_size, shuffle=shuffle, seed=seed,
                                                 min_batch_size=world_size)
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.global_sampler.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        return [batch[self.rank::self.world_size] for batch in self.global_sampler.batches()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.global_sampler)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded frames over all frames fed to the model."""
    real = padded = 0
    for b in batches:
        ls = [lengths[i] for i in b]
        real += sum(ls)
        padded += max(ls) * len(ls)
    return 0.0 if padded == 0 else 1.0 - real / padded


def make_loader(dataset: FeatureDataset, cfg: DataConfig, *, shuffle: bool, seed: int,
                max_frames: int | None = None, rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """DataLoader with length-bucketed batches (this rank's share of each when ``world_size`` > 1)."""
    sampler: BucketBatchSampler | DistributedBucketBatchSampler
    if world_size > 1:
        sampler = DistributedBucketBatchSampler(dataset.lengths(), max_frames or cfg.max_frames_per_batch,
                                                cfg.batch_size, rank=rank, world_size=world_size,
                                                shuffle=shuffle, seed=seed)
    else:
        sampler = BucketBatchSampler(dataset.lengths(), max_frames or cfg.max_frames_per_batch, cfg.batch_size,
                                     shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                       num_workers=cfg.num_workers, persistent_workers=False)


def frames_to_seconds(frames: int | float, frame_shift_ms: float) -> float:
    return float(frames) * frame_shift_ms / 1000.0


def seconds_to_frames(seconds: float, frame_shift_ms: float) -> int:
    return int(math.floor(seconds * 1000.0 / frame_shift_ms + 1e-9))
