"""Training one model on one fold: Adam, ReduceLROnPlateau, early stopping, resumable checkpoints.

The loop follows nanoGPT's train.py in spirit: one function, explicit state,
everything that can change a result in the config. Resuming restores the
model, optimizer, scheduler, counters, history and the torch RNG, and batch
order and augmentation are derived from (seed, epoch), so a run killed with
SIGKILL and resumed ends where an uninterrupted run ends (tested on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from moma.capabilities import check_bf16, check_cuda
from moma.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from moma.config import ModelConfig, RunConfig, TrainConfig, replace, save_config
from moma.data.batching import FeatureDataset, make_items, make_loader
from moma.evaluation.calibration import calibration_summary, fit_window_temperature
from moma.evaluation.metrics import compute_metrics, predict_posteriors, predict_window_logits
from moma.evaluation.posteriors import Segmenting, aggregate
from moma.features.encoders import frame_layers
from moma.features.functionals import functionals_dim
from moma.features.normalise import Normaliser
from moma.features.ood import OodModel
from moma.model import build_model, count_parameters, example_inputs
from moma.training.distributed import DistInfo, all_reduce_sum, broadcast_object, gather_objects, init_distributed

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_epoch: int  # 1-based epoch whose weights are in best.safetensors
    epochs_run: int
    best_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    parameters: int = 0
    train_time_s: float = 0.0


def resolve_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    """``auto`` -> CUDA when present; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_cuda(name)
    dev = torch.device(name)
    if dev.type == "cuda" and dist_info is not None and dist_info.enabled and dev.index is None:
        dev = torch.device("cuda", dist_info.local_rank)
    return dev


def class_weights(label_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (classes absent from training get weight 0)."""
    counts = np.bincount(np.asarray(label_ids, dtype=int), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    return torch.tensor(weights, dtype=torch.float32)


BALANCES = ("none", "class", "corpus", "corpus-class")
MONITORS = ("uar", "accuracy", "loss")
ENSEMBLE_VALIDATION = ("same", "rotate")  # train.ensemble_validation: see protocols.rotate_validation


def check_train_options(tc: TrainConfig) -> None:
    """Refuse a training option that cannot work, in one line naming it; ``moma cv`` calls this before any file
    is read or written, so that a misspelt value does not fail inside every fold after the features are packed."""
    if tc.balance not in BALANCES:
        raise ValueError(f"train.balance must be one of {', '.join(BALANCES)}, got {tc.balance!r}")
    if tc.balance != "none" and tc.class_weighted:
        raise ValueError("train.class_weighted and train.balance both weight the loss: use train.balance alone")
    if tc.monitor not in MONITORS:
        raise ValueError(f"train.monitor must be one of {', '.join(MONITORS)}, got {tc.monitor!r}")
    if not 0.0 <= tc.monitor_smoothing < 1.0 or tc.min_epochs < 0:
        raise ValueError(f"train.monitor_smoothing must be in [0, 1) and train.min_epochs >= 0, got "
                         f"{tc.monitor_smoothing} and {tc.min_epochs}")
    if tc.ensemble_validation not in ENSEMBLE_VALIDATION:
        raise ValueError(f"train.ensemble_validation must be one of {', '.join(ENSEMBLE_VALIDATION)}, "
                         f"got {tc.ensemble_validation!r}")


def balance_weights(groups: Sequence[Any]) -> np.ndarray:
    """Per-item weights, inverse to the size of each item's group and of mean 1: every group's items
    together weigh the same."""
    keys = list(groups)
    counts: dict[Any, int] = {}
    for g in keys:
        counts[g] = counts.get(g, 0) + 1
    return np.array([len(keys) / (len(counts) * counts[g]) for g in keys], dtype=np.float64)


def _weighted_losses(criterion: nn.Module, logits: torch.Tensor, y: torch.Tensor, keys: Sequence[str],
                     item_weight: dict[str, float], weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's weighted loss against labels ``y`` and the weight it carries in the batch's normaliser: the
    utterance's balance weight (train.balance), else its class weight (train.class_weighted, already applied by
    ``criterion``), else 1."""
    losses = criterion(logits, y)  # [B]
    if item_weight:
        weights = torch.tensor([item_weight[k] for k in keys], dtype=losses.dtype, device=losses.device)
        return losses * weights, weights
    return losses, (weight[y] if weight is not None else torch.ones_like(losses))


class _GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


class SpeakerAdversary(nn.Module):
    """A speaker classifier on the utterance embedding behind a gradient-reversal layer (Ganin and Lempitsky,
    2015): the classifier learns to tell the training speakers apart, and the reversed gradient, scaled by
    ``scale``, pushes the encoder to remove what it uses. Training only; checkpoints for inference hold the
    emotion model alone."""

    def __init__(self, dim: int, num_speakers: int, hidden: int, scale: float):
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_speakers))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(_GradientReversal.apply(embedding, self.scale))  # [B, num_speakers]


class _WithAdversary(nn.Module):
    """The model and its adversary as one module, so DDP averages the adversary's gradients too."""

    def __init__(self, model: nn.Module, adversary: SpeakerAdversary):
        super().__init__()
        self.model = model
        self.adversary = adversary

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                *functionals: torch.Tensor) -> tuple[Any, torch.Tensor]:
        out = self.model(features, lengths, *functionals)
        return out, self.adversary(out.embedding)


def _embedding_dim(model: nn.Module, cfg: ModelConfig) -> int:
    """Width of the model's utterance embedding, from one tiny forward pass (eval mode: no dropout draws)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        dim = int(model(*(x.to(device) for x in example_inputs(cfg))).embedding.shape[1])
    model.train(was_training)
    return dim


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    sd = opt.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}


def _restore_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    opt.load_state_dict({"state": {int(k): v for k, v in state["state"].items()},
                         "param_groups": state["param_groups"]})


def _scheduler_state(sched: torch.optim.lr_scheduler.ReduceLROnPlateau) -> dict[str, Any]:
    # keep only plain values: the state dict also holds a reference-free copy of the optimizer settings
    return {k: (float(v) if isinstance(v, float) else v) for k, v in sched.state_dict().items()
            if isinstance(v, (int, float, str, bool, list)) or v is None}


@dataclass
class _Run:
    """The fixed parts of one training run, built once by :func:`_build_run` and read by every epoch."""

    cfg: RunConfig  # resolved: num_classes, input_dim and functionals_dim set from the data
    out_dir: Path
    dist_info: DistInfo
    device: torch.device
    model: nn.Module  # the emotion model: validated, chosen and saved
    adversary: SpeakerAdversary | None
    net: nn.Module  # what the forward pass runs: the model (with its adversary), DDP-wrapped under torchrun
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    train_set: FeatureDataset
    loader: Any  # DataLoader over length-bucketed batches
    criterion: nn.Module
    weight: torch.Tensor | None  # class weights (train.class_weighted)
    item_weight: dict[str, float]  # utterance id -> loss weight (train.balance); empty when off
    speaker_index: dict[str, int]  # training speaker -> adversary class
    speaker_of: Mapping[str, str]
    monitor: str  # uar | accuracy | loss, or train_loss without validation speakers
    mode: str  # max | min: the direction in which the monitored value improves
    n_params: int
    writer: Any  # TensorBoard SummaryWriter on rank 0, else None


@dataclass
class _Selection:
    """Model-choice and early-stopping bookkeeping: saved in last.safetensors every epoch, restored on resume."""

    start_epoch: int = 1
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def train_model(cfg: RunConfig, features: dict[str, np.ndarray], labels: list[str], label_of: dict[str, int],
                train_ids: Sequence[str], val_ids: Sequence[str], out_dir: str | Path, normaliser: Normaliser,
                *, resume: bool = False, info: dict[str, Any] | None = None, progress: bool = False,
                speaker_of: dict[str, str] | None = None,
                corpus_of: Mapping[str, str] | None = None,
                functionals: Mapping[str, np.ndarray] | None = None,
                functionals_normaliser: Normaliser | None = None, ood: OodModel | None = None) -> TrainResult:
    """Train on ``train_ids`` and select on ``val_ids`` (training speakers only); features are normalised.

    A fusion model (``features.functionals`` names an openSMILE set) also reads ``functionals``: each
    utterance's functionals, already standardised by ``functionals_normaliser``, which the checkpoint keeps.
    ``ood``, the density of the training utterances (:mod:`moma.training.ood`), goes into every checkpoint.

    Writes ``config.yaml``, ``metrics.jsonl``, ``best.safetensors`` (the selected
    model, self-describing), ``last.safetensors`` (resumable) and TensorBoard
    events under ``out_dir/tb``.

    ``train.speaker_adversarial`` > 0 adds a :class:`SpeakerAdversary` over the
    training speakers (``speaker_of`` maps each training utterance to its
    speaker); its weights and optimizer state live in ``last.safetensors`` only.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this with the
    same arguments: each trains on its share of every global batch, gradients
    are averaged by DDP, and rank 0 alone validates and writes files (so
    ``out_dir`` must be on a filesystem all ranks see for ``resume``).

    The pieces: :func:`_build_run` (model, adversary, data, loss, optimiser, scheduler), :func:`_resume`,
    then per epoch :func:`_train_epoch`, :func:`_validate`, :func:`_select` and :func:`_save_epoch`, and
    :func:`_finish` (the best checkpoint's temperature).
    """
    run = _build_run(cfg, features, labels, label_of, train_ids, val_ids, Path(out_dir), speaker_of=speaker_of,
                     corpus_of=corpus_of, functionals=functionals, functionals_normaliser=functionals_normaliser)
    functionals = functionals if run.cfg.model.functionals_dim else None
    sel = _resume(run) if resume else _Selection()
    _rewrite_metrics(run, sel.history)
    ckpt = _CheckpointInputs(labels, normaliser, functionals_normaliser, info or {}, ood)
    t0 = time.time()
    stopped_early = bool(sel.history and sel.history[-1].get("stop"))
    for epoch in range(sel.start_epoch, run.cfg.train.max_epochs + 1):
        if stopped_early:
            break
        row = _train_epoch(run, epoch, progress)
        value = _validate(run, row, features, labels, label_of, val_ids, functionals)
        stop = _select(run, sel, row, epoch, value, ckpt)
        _save_epoch(run, sel, row, epoch, ckpt)
        if stop:
            log.info("early stop after %d epochs without improvement", sel.bad_epochs)
            break
    _finish(run, features, label_of, val_ids, functionals)
    return TrainResult(best_epoch=sel.best_epoch, epochs_run=len(sel.history), best_checkpoint=_best_path(run),
                       history=sel.history, parameters=run.n_params, train_time_s=time.time() - t0)


@dataclass
class _CheckpointInputs:
    """What every checkpoint of a run carries beside the weights and the config."""

    labels: list[str]
    normaliser: Normaliser
    functionals_normaliser: Normaliser | None
    info: dict[str, Any]
    ood: OodModel | None = None


def _best_path(run: _Run) -> Path:
    return run.out_dir / "best.safetensors"


def _resolve_dims(cfg: RunConfig, features: Mapping[str, np.ndarray], labels: list[str], ids: Sequence[str],
                  functionals: Mapping[str, np.ndarray] | None, functionals_normaliser: Normaliser | None) -> RunConfig:
    """``cfg`` with the model's class count, input width and functionals width set from the data; a fusion model
    without every utterance's standardised functionals is refused."""
    func_dim = functionals_dim(cfg.features.functionals)
    if func_dim and (functionals is None or functionals_normaliser is None):
        raise ValueError(f"features.functionals={cfg.features.functionals}: training needs each utterance's "
                         "standardised functionals and their normaliser")
    if func_dim:
        missing = [k for k in ids if k not in functionals]
        if missing:
            raise ValueError(f"no functionals for {len(missing)} utterances (first: {missing[0]})")
    feat_dim = int(next(iter(features.values())).shape[1])
    return replace(cfg, model=replace(cfg.model, num_classes=len(labels), input_dim=feat_dim,
                                      input_layers=frame_layers(cfg.features), functionals_dim=func_dim))


def _build_model(cfg: RunConfig, device: torch.device, dist_info: DistInfo, train_ids: Sequence[str],
                 speaker_of: Mapping[str, str] | None) -> tuple[nn.Module, SpeakerAdversary | None, nn.Module,
                                                                dict[str, int]]:
    """The model seeded by ``train.seed``, its speaker adversary (or None), the module the forward pass runs
    (DDP-wrapped under torchrun) and the adversary's speaker index."""
    tc = cfg.train
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(cfg.model).to(device)
    adversary: SpeakerAdversary | None = None
    speaker_index: dict[str, int] = {}
    if tc.speaker_adversarial > 0:
        if speaker_of is None or any(k not in speaker_of for k in train_ids):
            raise ValueError("train.speaker_adversarial needs the speaker of every training utterance")
        speaker_index = {spk: i for i, spk in enumerate(sorted({speaker_of[k] for k in train_ids}))}
        adversary = SpeakerAdversary(_embedding_dim(model, cfg.model), len(speaker_index), tc.adversary_hidden,
                                     tc.speaker_adversarial).to(device)
        log.info("speaker adversary over %d training speakers, gradient reversal x%g", len(speaker_index),
                 tc.speaker_adversarial)
    log.info("model %s: %d parameters on %s%s", cfg.model.arch, count_parameters(model), device,
             f" (rank {dist_info.rank} of {dist_info.world_size})" if dist_info.enabled else "")
    net: nn.Module = model if adversary is None else _WithAdversary(model, adversary)
    if dist_info.enabled:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return model, adversary, net, speaker_index


def _build_loss(tc: TrainConfig, train_items: Sequence[Any], num_classes: int, corpus_of: Mapping[str, str] | None,
                device: torch.device) -> tuple[nn.Module, torch.Tensor | None, dict[str, float]]:
    """The per-item criterion, the class weights (train.class_weighted) and each utterance's loss weight
    (train.balance; its windows share its group)."""
    weight = class_weights([it.label for it in train_items], num_classes).to(device) if tc.class_weighted else None
    item_weight: dict[str, float] = {}
    if tc.balance != "none":
        corpus = corpus_of or {}
        groups = [(corpus.get(it.key, "") if "corpus" in tc.balance else "",
                   it.label if "class" in tc.balance else -1) for it in train_items]
        item_weight = {it.key: float(w) for it, w in zip(train_items, balance_weights(groups))}
        log.info("balanced loss over %d groups (%s)", len(set(groups)), tc.balance)
    # per-item losses, summed and divided by the GLOBAL batch's total weight in _train_step: this equals
    # CrossEntropyLoss's weighted mean on one process, and on N processes (whose shares of a
    # batch differ in size) DDP's gradient average then still equals the single-process gradient
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing, reduction="none")
    return criterion, weight, item_weight


def _build_run(cfg: RunConfig, features: dict[str, np.ndarray], labels: list[str], label_of: dict[str, int],
               train_ids: Sequence[str], val_ids: Sequence[str], out_dir: Path, *,
               speaker_of: Mapping[str, str] | None, corpus_of: Mapping[str, str] | None,
               functionals: Mapping[str, np.ndarray] | None, functionals_normaliser: Normaliser | None) -> _Run:
    """Everything an epoch needs: device, model and adversary, training batches, loss, optimiser, scheduler,
    TensorBoard writer; ``config.yaml`` written on rank 0. Built in a fixed order, so the seeded draws match."""
    tc, dc = cfg.train, cfg.data
    check_train_options(tc)
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    dist_info = init_distributed(resolve_device(tc.device).type)
    device = resolve_device(tc.device, dist_info)
    if tc.bf16:  # refuse before the first epoch, not from inside oneDNN halfway through it
        check_bf16(device.type, "training")
    cfg = _resolve_dims(cfg, features, labels, list(train_ids) + list(val_ids), functionals, functionals_normaliser)
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    model, adversary, net, speaker_index = _build_model(cfg, device, dist_info, train_ids, speaker_of)
    frame_shift = cfg.features.frame_shift_ms
    segments = Segmenting.of(cfg)  # the windows every prediction path cuts too (moma.evaluation.posteriors)
    train_items = make_items(features, train_ids, label_of, segments.window, segments.hop)
    train_set = FeatureDataset(features, train_items, dc, train=True, seed=tc.seed,
                               frames_per_second=1000.0 / frame_shift,
                               functionals=functionals if cfg.model.functionals_dim else None)
    loader = make_loader(train_set, dc, shuffle=True, seed=tc.seed, rank=dist_info.rank,
                         world_size=dist_info.world_size)
    params = list(model.parameters()) + (list(adversary.parameters()) if adversary is not None else [])
    if tc.weight_decay > 0:
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=tc.lr)
    monitor = tc.monitor if len(val_ids) > 0 else "train_loss"
    if len(val_ids) == 0:
        log.warning("no validation speakers: the schedule follows the training loss and the last epoch is kept")
    mode = "max" if monitor in ("uar", "accuracy") else "min"
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=tc.lr_factor,
                                                           patience=tc.lr_patience, min_lr=tc.min_lr)
    criterion, weight, item_weight = _build_loss(tc, train_items, len(labels), corpus_of, device)
    return _Run(cfg, out_dir, dist_info, device, model, adversary, net, params, optimizer, scheduler, train_set,
                loader, criterion, weight, item_weight, speaker_index, speaker_of or {}, monitor, mode,
                count_parameters(model), _open_writer(tc, out_dir, dist_info))


def _open_writer(tc: TrainConfig, out_dir: Path, dist_info: DistInfo) -> Any:
    """A TensorBoard writer on rank 0 when train.tensorboard is on and tensorboard is installed, else None."""
    if not (tc.tensorboard and dist_info.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(out_dir / "tb"))
    except ImportError:  # tensorboard is optional at run time
        log.warning("tensorboard not installed: no event files written")
        return None


def _resume(run: _Run) -> _Selection:
    """Restore weights, adversary, optimiser, scheduler, RNG and the model-choice bookkeeping from
    ``last.safetensors``; a fresh :class:`_Selection` when there is none."""
    last_path, sel = run.out_dir / "last.safetensors", _Selection()
    state = load_training_state(last_path) if last_path.is_file() else None
    if state is None:
        return sel
    from safetensors.torch import load_file

    weights = load_file(str(last_path))
    run.model.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
    if run.adversary is not None:
        run.adversary.load_state_dict(state["adversary"])
    _restore_optimizer(run.optimizer, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    rng_states = state.get("rng_torch_ranks") or [state["rng_torch"]]
    if len(rng_states) != run.dist_info.world_size:
        log.warning("resuming a %d-process run on %d processes: dropout draws will differ from an "
                    "uninterrupted run", len(rng_states), run.dist_info.world_size)
    torch.set_rng_state(rng_states[run.dist_info.rank % len(rng_states)])
    if run.device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"])
    sel = _Selection(int(state["epoch"]) + 1, state["best_value"], int(state["best_epoch"]),
                     int(state["bad_epochs"]), list(state["history"]))
    if sel.best_epoch and not _best_path(run).is_file():
        # the weights of the best epoch are gone (deleted, or lost with a killed copy): keeping its score
        # would make every later epoch lose to it and the run end with no checkpoint at all
        log.warning("%s: best.safetensors of epoch %d is missing; the model choice starts again from "
                    "epoch %d", run.out_dir, sel.best_epoch, sel.start_epoch)
        sel.best_value, sel.best_epoch, sel.bad_epochs = None, 0, 0
    log.info("resumed %s at epoch %d", run.out_dir, sel.start_epoch)
    return sel


def _rewrite_metrics(run: _Run, history: list[dict[str, Any]]) -> None:
    """The log is rewritten from the checkpoint's history, so an epoch logged after the last checkpoint (then
    killed) is not counted twice."""
    if run.dist_info.is_main:
        with open(run.out_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
            for row in history:
                fh.write(json.dumps(row) + "\n")


def _train_step(run: _Run, batch: Any, totals: torch.Tensor) -> torch.Tensor:
    """One optimiser step on one batch; adds the batch's figures to ``totals`` and returns its loss."""
    dist_info, device, tc = run.dist_info, run.device, run.cfg.train
    inputs = batch.model_inputs(device)  # (features, lengths[, functionals])
    y = batch.labels.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
        if run.adversary is None:
            out = run.net(*inputs)
        else:
            out, speaker_logits = run.net(*inputs)
    logits = out.logits.float()
    item_losses, item_weights = _weighted_losses(run.criterion, logits, y, batch.keys, run.item_weight,
                                                 run.weight)  # [B]
    # the global batch's total weight (and size, for the adversary): one tiny all-reduce per step under DDP
    norms = [item_weights.sum().detach()]
    if run.adversary is not None:
        norms.append(torch.tensor(float(y.numel()), device=device))
    sums = all_reduce_sum(torch.stack(norms), dist_info)
    loss = item_losses.sum() * dist_info.world_size / sums[0].clamp_min(1e-12)
    speaker_stats = [0.0, 0.0]
    if run.adversary is not None:
        spk = torch.tensor([run.speaker_index[run.speaker_of[k]] for k in batch.keys], device=device)
        speaker_losses = nn.functional.cross_entropy(speaker_logits.float(), spk, reduction="none")  # [B]
        loss = loss + speaker_losses.sum() * dist_info.world_size / sums[1].clamp_min(1.0)
        speaker_stats = [float(speaker_losses.detach().sum()),
                         float((speaker_logits.detach().argmax(1) == spk).sum())]
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.params, tc.grad_clip)
    run.optimizer.step()
    totals += torch.tensor([float(item_losses.detach().sum()), float(item_weights.sum()),
                            float(batch.lengths.sum()), *speaker_stats, float(y.numel())], dtype=torch.float64)
    return loss


def _train_epoch(run: _Run, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training batches; the epoch's log row (training loss, rate, speed)."""
    main, tc = run.dist_info.is_main, run.cfg.train
    run.net.train()
    run.train_set.set_epoch(epoch)
    run.loader.batch_sampler.set_epoch(epoch)
    # summed over the epoch on this rank: weighted loss, weight, frames, speaker loss, speakers right, items
    totals = torch.zeros(6, dtype=torch.float64)
    t_epoch = time.time()
    batches = run.loader
    if progress and main:
        from tqdm.auto import tqdm

        batches = tqdm(run.loader, desc=f"{run.out_dir.name} epoch {epoch}", leave=False, unit="batch")
    for step, batch in enumerate(batches):
        loss = _train_step(run, batch, totals)
        if tc.log_every and step % tc.log_every == 0 and main:
            log.info("epoch %d step %d loss %.4f", epoch, step, float(loss) / run.dist_info.world_size)
    totals = all_reduce_sum(totals.to(run.device), run.dist_info).cpu()
    elapsed = time.time() - t_epoch
    row: dict[str, Any] = {"epoch": epoch, "train_loss": float(totals[0] / totals[1].clamp_min(1e-12)),
                           "lr": run.optimizer.param_groups[0]["lr"],
                           "frames_per_s": float(totals[2]) / max(elapsed, 1e-9), "epoch_time_s": elapsed}
    if run.adversary is not None:  # how well the adversary still tells the training speakers apart
        row["train_speaker_loss"] = float(totals[3] / totals[5].clamp_min(1.0))
        row["train_speaker_accuracy"] = float(totals[4] / totals[5].clamp_min(1.0))
    return row


def _validate(run: _Run, row: dict[str, Any], features: Mapping[str, np.ndarray], labels: list[str],
              label_of: dict[str, int], val_ids: Sequence[str],
              functionals: Mapping[str, np.ndarray] | None) -> float:
    """Score the validation speakers into ``row`` (rank 0; the other ranks receive its figures) and return the
    monitored value; without validation speakers the training loss."""
    if len(val_ids) == 0:
        return row["train_loss"]
    value = None
    if run.dist_info.is_main:  # rank 0 validates on the whole validation set; the others wait for its figures
        post = predict_posteriors(run.model, features, val_ids, run.cfg, run.device, functionals=functionals)
        y_true = [label_of[k] for k in val_ids]
        probs = np.stack([post[k] for k in val_ids])
        val_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None))))
        m = compute_metrics(y_true, probs.argmax(1).tolist(), labels)
        row.update({"val_loss": val_loss, "val_accuracy": m["accuracy"], "val_uar": m["uar"]})
        value = {"uar": m["uar"], "accuracy": m["accuracy"], "loss": val_loss}[run.monitor]
    shared, value = broadcast_object((row, value), run.dist_info)
    row.update(shared)
    return value


def _select(run: _Run, sel: _Selection, row: dict[str, Any], epoch: int, value: float,
            ckpt: _CheckpointInputs) -> bool:
    """Model choice and early stopping for one epoch: smooth the monitored value, step the schedule, save
    ``best.safetensors`` when it improved; appends ``row`` to the history and returns whether to stop."""
    tc = run.cfg.train
    if tc.monitor_smoothing > 0 and len(sel.history) > 0:  # EMA over epochs, restored from history on resume
        value = tc.monitor_smoothing * sel.history[-1].get("monitor_value", value) + (1 - tc.monitor_smoothing) * value
    row["monitor_value"] = value
    # Before min_epochs (and always on the last allowed epoch if nothing was kept) nothing counts: the
    # schedule does not step, no patience is used up and no checkpoint is chosen.
    eligible = epoch >= tc.min_epochs or (epoch == tc.max_epochs and sel.best_value is None)
    if eligible:
        run.scheduler.step(value)
    better = sel.best_value is None or (value > sel.best_value if run.mode == "max" else value < sel.best_value)
    if eligible and better:
        sel.best_value, sel.best_epoch, sel.bad_epochs = value, epoch, 0
        if run.dist_info.is_main:
            save_checkpoint(_best_path(run), run.model, run.cfg, ckpt.labels, ckpt.normaliser,
                            functionals_normaliser=ckpt.functionals_normaliser, ood=ckpt.ood,
                            info={**ckpt.info, "epoch": epoch, "monitor": run.monitor, "value": value,
                                  "parameters": run.n_params, "processes": run.dist_info.world_size})
    elif eligible:
        sel.bad_epochs += 1
    stop = tc.early_stop_patience > 0 and sel.bad_epochs >= tc.early_stop_patience
    row.update({"best_epoch": sel.best_epoch, "stop": stop})
    sel.history.append(row)
    return stop


def _save_epoch(run: _Run, sel: _Selection, row: dict[str, Any], epoch: int, ckpt: _CheckpointInputs) -> None:
    """``last.safetensors`` with everything a resume needs, the metrics line, TensorBoard scalars, the log line."""
    dist_info, main = run.dist_info, run.dist_info.is_main
    # every rank's RNG state (dropout draws differ per rank), saved by rank 0
    rng_states = gather_objects(torch.get_rng_state(), dist_info)
    if main:
        state = {
            "optimizer": _optimizer_state(run.optimizer),
            "scheduler": _scheduler_state(run.scheduler),
            "rng_torch": rng_states[0],
            "epoch": epoch, "best_value": sel.best_value, "best_epoch": sel.best_epoch,
            "bad_epochs": sel.bad_epochs, "history": sel.history,
        }
        if run.adversary is not None:
            state["adversary"] = run.adversary.state_dict()
        if dist_info.enabled:
            state["rng_torch_ranks"] = [r.clone() for r in rng_states]  # safetensors refuses shared storage
        if run.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(run.out_dir / "last.safetensors", run.model, run.cfg, ckpt.labels, ckpt.normaliser,
                        info={**ckpt.info, "epoch": epoch}, training_state=state,
                        functionals_normaliser=ckpt.functionals_normaliser, ood=ckpt.ood)
        with open(run.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    if run.writer is not None:
        for key, val in row.items():
            if isinstance(val, (int, float)) and not isinstance(val, bool) and key != "epoch":
                run.writer.add_scalar(key, val, epoch)
        run.writer.flush()
    if main:
        log.info("%s epoch %d: train loss %.4f%s lr %.1e (%.0f frames/s)", run.out_dir.name, epoch,
                 row["train_loss"], f", val UAR {row['val_uar']:.3f}" if "val_uar" in row else "", row["lr"],
                 row["frames_per_s"])


def _finish(run: _Run, features: dict[str, np.ndarray], label_of: dict[str, int], val_ids: Sequence[str],
            functionals: Mapping[str, np.ndarray] | None) -> None:
    """Close the writer, refuse a run that kept no checkpoint, and fit the best checkpoint's temperature."""
    if run.writer is not None:
        run.writer.close()
    main = run.dist_info.is_main
    if main and not _best_path(run).is_file():
        raise RuntimeError(f"{run.out_dir}: training produced no checkpoint (max_epochs={run.cfg.train.max_epochs})")
    if main and len(val_ids) > 0 and run.cfg.train.calibrate:
        calibrate_checkpoint(_best_path(run), features, val_ids, label_of, run.device, functionals=functionals)


def calibrate_checkpoint(path: Path, features: dict[str, np.ndarray], val_ids: Sequence[str],
                         label_of: dict[str, int], device: torch.device,
                         functionals: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Fit a softmax temperature on the validation utterances and store it in the checkpoint's
    ``info["calibration"]`` with the validation NLL and ECE before and after (the weights are untouched).

    The validation speakers are training speakers that chose the epoch too, so the figures here are
    optimistic; test-fold figures come from cross-validation (``result.json`` ``calibration``).
    """
    best = load_checkpoint(path, device=device)
    logits = predict_window_logits(best.model, features, val_ids, best.config, device, functionals=functionals)
    windows = [logits[k] for k in val_ids]  # (windows, classes) each: one window unless segment-trained
    y_true = [label_of[k] for k in val_ids]
    # fitted under the aggregation every prediction path applies: the mean of the windows' scaled posteriors
    temperature = fit_window_temperature(windows, y_true)
    probs, scaled = aggregate(windows), aggregate(windows, temperature)  # (n_val, classes), raw and scaled
    val_speakers = list(best.info.get("val_speakers") or [])
    summary = {**calibration_summary(probs, y_true, temperature, scaled),
               "fitted_on": f"validation speakers {', '.join(val_speakers)}" if val_speakers else "validation set"}
    save_checkpoint(path, best.model, best.config, best.labels, best.normaliser,
                    info={**best.info, "calibration": summary}, functionals_normaliser=best.functionals_normaliser,
                    ood=best.ood)
    log.info("%s: temperature %.3f (validation ECE %.3f -> %.3f, NLL %.3f -> %.3f)", path.parent.name,
             summary["temperature"], summary["ece_before"], summary["ece_after"], summary["nll_before"],
             summary["nll_after"])
    return summary


def is_finite_history(history: list[dict[str, Any]]) -> bool:
    """True if no logged loss is NaN or infinite (a diverged run should be flagged, not reported)."""
    return all(math.isfinite(r.get("train_loss", 0.0)) for r in history)
