"""MOMA and its baselines: BLSTM encoder, context attention, mixture of multi-view attention.

Jalal, Milner, Hain, Moore, "Removing Bias with Residual Mixture of Multi-View
Attention for Speech Emotion Recognition", Interspeech 2020.

    [features (B, T, L*D) -> learned softmax weighting of a pretrained encoder's L layers -> (B, T, D)]
    features (B, T, F) -> 2-layer BLSTM -> Y (B, T, 2H)
      -> attention layer 1 (one context-attention block, residual)      -> Y2 (B, T, 2H)
      -> attention layer 2 (N blocks, mixture sum_n gamma_n a_n)         -> pooled (B, 2H)
      [-> joined with utterance functionals (B, D_f), fusion models only -> (B, 2H + D_f)]
      -> projection (linear + nonlinearity)                              -> embedding (B, P)
      -> classifier (linear)                                             -> logits (B, C)

Every equation, every interpretation and the config option that changes it is
in docs/model.md. This module imports no data code: only torch, the config
dataclass and the standard library.

Padding contract: ``features`` is a right-padded batch and ``lengths`` holds the
number of valid frames per utterance. Whatever the padding holds, an
utterance's outputs are the same as when it is run alone (tests/test_model.py
checks 1e-5). That needs three things, all done here: the backward LSTM reads
each sequence reversed within its own length (so it never sees padding before
valid frames), every softmax masks padded frames out in float32, and every mean
or pooling sums over valid frames only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from moma.config import ModelConfig

__all__ = [
    "ARCHS",
    "AttentionBLSTM",
    "BLSTMEncoder",
    "ContextAttention",
    "ExportWrapper",
    "LAYER1_OUTPUTS",
    "LayerWeighting",
    "MOMA",
    "MeanPoolBLSTM",
    "MixtureOfAttention",
    "ModelOutput",
    "apply_layer1",
    "build_model",
    "count_parameters",
    "example_inputs",
    "lengths_to_mask",
    "masked_mean",
    "masked_softmax",
    "reverse_index",
]

ARCHS = ("moma", "attention", "mean")
LAYER1_OUTPUTS = ("scale", "weight", "context")
GAMMA_NORMS = ("softmax", "none")
GAMMA_INITS = ("equal", "random")  # equal: gamma_n = 1/N at the start; random: the paper's random initialisation
PROJECTION_ACTIVATIONS = ("relu", "tanh")
# Initialisation scheme of MOMA block n is BLOCK_INITS[n % 3]; see MixtureOfAttention.
BLOCK_INITS = ("xavier_uniform", "kaiming_normal", "orthogonal")


@dataclass
class ModelOutput:
    """What every model's forward returns.

    logits:    (B, C) unnormalised class scores; the loss (softmax cross-entropy) lives in training code.
    embedding: (B, D) the representation the classifier reads (MOMA: the projection output, D =
               projection_dim; baselines: the pooled BLSTM output, D = 2H, joined with the functionals in
               a fusion model). Used for speaker probes.
    attention: "layer1" (B, T), "blocks" (B, N, T), "mixture" (B, T), "gammas" (N,); None where an
               architecture has no such thing. Padded frames hold exactly 0.
    encoded:   (B, 2H) the pooled BLSTM statistics before any projection (MOMA: the mixture-pooled
               layer-1 output; baselines: equal to ``embedding``).
    """

    logits: Tensor
    embedding: Tensor
    attention: dict[str, Optional[Tensor]] = field(default_factory=dict)
    encoded: Optional[Tensor] = None


# --------------------------------------------------------------------------------------------
# Masking helpers
# --------------------------------------------------------------------------------------------


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, T) bool mask, True on valid frames."""
    steps = torch.arange(max_len, device=lengths.device)  # (T,)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)  # (1, T) < (B, 1) -> (B, T)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis that gives padded positions exactly 0, computed in float32.

    The fill value is float32's most negative finite number rather than -inf so that a row with
    no valid frame gives zeros instead of NaN; exp(min - max) underflows to exactly 0. The
    final multiply by the mask makes padded weights exactly 0 even in that degenerate row.
    Under bf16 autocast ``scores`` may arrive in bf16: casting first keeps the normalisation
    (a sum over up to thousands of frames) in float32.
    """
    scores = scores.float()
    scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=-1) * mask.to(torch.float32)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) -> (B, D): mean over valid frames only, in float32."""
    weights = mask.to(torch.float32).unsqueeze(-1)  # (B, T) -> (B, T, 1) to broadcast over D
    count = weights.sum(dim=1).clamp(min=1.0)  # (B, 1); clamp only guards an empty row
    return (x.float() * weights).sum(dim=1) / count  # (B, D)


def reverse_index(lengths: Tensor, max_len: int) -> Tensor:
    """(B, T) gather index that reverses each row within its own length.

    rev_idx[b, t] = L_b - 1 - t for t < L_b, else t: the valid frames are reversed in place and
    the padding stays where it is (after them). The map is its own inverse, so the same index
    both reverses the input and restores the order of the backward LSTM's outputs.
    """
    steps = torch.arange(max_len, device=lengths.device).unsqueeze(0)  # (T,) -> (1, T)
    lens = lengths.unsqueeze(1)  # (B,) -> (B, 1)
    # (1, T) vs (B, 1) broadcast to (B, T)
    return torch.where(steps < lens, lens - 1 - steps, steps.expand(lens.size(0), -1))


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x (B, T, D) reordered along time by index (B, T): out[b, t] = x[b, index[b, t]]."""
    # gather needs the index with x's full shape: (B, T) -> (B, T, 1) -> (B, T, D) (a view, no copy)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


class BLSTMEncoder(nn.Module):
    """Stacked bidirectional LSTM that is exact on padded batches at padded-batch speed.

    Each layer is two unidirectional ``nn.LSTM``s. The forward one runs on the padded batch as
    is: padding comes after the valid frames, so the outputs at valid frames never depend on it.
    The backward one runs on each sequence reversed within its own length (``reverse_index``),
    so it too reads all valid frames before any padding; its outputs are put back in time order
    with the same index. This gives the same numbers as ``pack_padded_sequence`` without its
    cost (about 4x slower for a CPU training step, measured in docs/model.md) and without
    data-dependent Python control flow, so the encoder
    traces with a dynamic time axis. Outputs at padded frames are set to zero.

    Parameter count per layer and direction is PyTorch's: 4H(I + H) + 8H (two bias vectors).
    """

    def __init__(self, input_dim: int, hidden_size: int, num_layers: int, dropout: float = 0.0,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input_dim = input_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_dim = 2 * hidden_size
        self.input_dropout = nn.Dropout(input_dropout)
        self.dropout = nn.Dropout(dropout)
        in_dims = [input_dim] + [2 * hidden_size] * (num_layers - 1)
        # PyTorch's default LSTM initialisation (uniform in +-1/sqrt(H)): the paper names no other.
        self.forward_lstms = nn.ModuleList(nn.LSTM(d, hidden_size, batch_first=True) for d in in_dims)
        self.backward_lstms = nn.ModuleList(nn.LSTM(d, hidden_size, batch_first=True) for d in in_dims)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, T, F), lengths (B,) -> Y (B, T, 2H) zero on padding, mask (B, T) bool."""
        max_len = features.size(1)
        mask = lengths_to_mask(lengths, max_len)  # (B, T)
        rev_idx = reverse_index(lengths, max_len)  # (B, T)
        keep = mask.unsqueeze(-1)  # (B, T) -> (B, T, 1), broadcasts over the feature axis
        x = self.input_dropout(features)
        for fwd, bwd in zip(self.forward_lstms, self.backward_lstms):
            out_f, _ = fwd(x)  # (B, T, H); valid frames exact because padding comes after them
            x_rev = _gather_time(x, rev_idx)  # (B, T, I): each row reversed within its length
            out_b_rev, _ = bwd(x_rev)  # (B, T, H) in reversed time
            out_b = _gather_time(out_b_rev, rev_idx)  # (B, T, H) back in time order (involution)
            # (B, T, H) + (B, T, H) -> (B, T, 2H), [forward; backward] as in nn.LSTM; zero the padding
            # so that nothing downstream (next layer's forward direction excepted, which is causal)
            # can pick up padded values.
            x = torch.cat([out_f, out_b], dim=-1) * keep
            x = self.dropout(x)
        return x, mask


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


class ContextAttention(nn.Module):
    """One attention block of the paper's form.

        M   = (1/L) sum_{t<L} y_t                     global context: mean of the valid frames
        E_t = tanh(W_h y_t) * tanh(W_m M)             (C,) per frame, * elementwise
        a   = softmax_t(W_e E_t)                      over valid frames only

    W_e has no bias: a bias would add the same constant to every frame's score, which softmax
    cancels, so it could never learn anything. W_h and W_m carry a bias only with
    ``attention_bias`` (the paper's equations have none).
    """

    def __init__(self, input_dim: int, context_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.w_h = nn.Linear(input_dim, context_dim, bias=bias)
        self.w_m = nn.Linear(input_dim, context_dim, bias=bias)
        self.w_e = nn.Linear(context_dim, 1, bias=False)

    def forward(self, y: Tensor, mask: Tensor) -> Tensor:
        """y (B, T, D), mask (B, T) -> attention weights a (B, T), float32, 0 on padding, rows sum to 1."""
        m = masked_mean(y, mask)  # (B, D)
        # (B, T, C) * (B, 1, C): the utterance context gates every frame's projection
        e = torch.tanh(self.w_h(y)) * torch.tanh(self.w_m(m)).unsqueeze(1)
        scores = self.w_e(e).squeeze(-1)  # (B, T, 1) -> (B, T)
        return masked_softmax(scores, mask)

    def reset_parameters_with(self, scheme: str) -> None:
        """Re-initialise the weights with one named scheme (biases to zero); see MixtureOfAttention."""
        for lin in (self.w_h, self.w_m, self.w_e):
            if scheme == "xavier_uniform":
                nn.init.xavier_uniform_(lin.weight)
            elif scheme == "kaiming_normal":
                # std = gain / sqrt(fan_in) with tanh's gain 5/3: the weights feed tanh (w_h, w_m)
                nn.init.kaiming_normal_(lin.weight, mode="fan_in", nonlinearity="tanh")
            elif scheme == "orthogonal":
                nn.init.orthogonal_(lin.weight)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(BLOCK_INITS)}")
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)


def apply_layer1(y: Tensor, a: Tensor, mask: Tensor, lengths: Tensor, mode: str, residual: bool,
                 scale_max: float = 0.0) -> Tensor:
    """Attention layer 1's output, which keeps the time axis for layer 2.

    y (B, T, D) zero on padding, a (B, T) zero on padding -> (B, T, D), zero on padding.

        scale:   y'_t = min(L * a_t, scale_max) * y_t   uniform attention (a_t = 1/L) gives y'_t = y_t;
                 without the cap (scale_max 0) one peaked frame could be multiplied by up to L
        weight:  y'_t = a_t * y_t          literal reading; y' is ~1/L the size of y
        context: y'_t = c = sum_s a_s y_s  the pooled context vector at every valid frame
        residual: out_t = y_t + y'_t, else out_t = y'_t
    """
    if mode == "scale":
        factor = a * lengths.to(a.dtype).unsqueeze(1)  # (B, T) * (B, 1) -> (B, T): weight relative to uniform
        if scale_max > 0:
            factor = factor.clamp(max=scale_max)
        y_att = y * factor.unsqueeze(-1)  # (B, T) -> (B, T, 1) broadcast over D
    elif mode == "weight":
        y_att = y * a.unsqueeze(-1)  # (B, T) -> (B, T, 1) broadcast over D
    elif mode == "context":
        context = (a.unsqueeze(-1) * y).sum(dim=1)  # (B, T, 1) * (B, T, D) summed over T -> (B, D)
        # (B, D) -> (B, 1, D) * (B, T, 1) -> (B, T, D): the same vector at each valid frame, 0 on padding
        y_att = context.unsqueeze(1) * mask.to(context.dtype).unsqueeze(-1)
    else:
        raise ValueError(f"unknown layer1_output {mode!r}; known: {', '.join(LAYER1_OUTPUTS)}")
    return y + y_att if residual else y_att


class MixtureOfAttention(nn.Module):
    """Attention layer 2 (MOMA): N context-attention blocks mixed as sum_n gamma_n a_n.

    Each block starts as a different "view": block n is initialised with BLOCK_INITS[n % 3]
    (xavier_uniform, kaiming_normal with tanh gain, orthogonal), drawn one block after another
    from the global torch RNG, so blocks beyond the third (same scheme) still get different
    values. Gammas: a raw vector g (N,); mixture weights are softmax(g) (gamma_norm="softmax",
    g starts at 0 so gamma_n = 1/N) or g itself (gamma_norm="none", g starts at 1/N). With
    gamma_init="random" (the paper: "randomly initialised") g starts at N(0, 1) draws under softmax,
    or at U(0, 1) draws divided by their sum without it, so the weights start unequal but positive and
    summing to 1 either way. With learn_gammas=False, g is a buffer (saved in the state dict, never trained).
    """

    def __init__(self, input_dim: int, context_dim: int, num_blocks: int, learn_gammas: bool = True,
                 gamma_norm: str = "softmax", bias: bool = False, gamma_init: str = "equal") -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if gamma_norm not in GAMMA_NORMS:
            raise ValueError(f"unknown gamma_norm {gamma_norm!r}; known: {', '.join(GAMMA_NORMS)}")
        self.gamma_norm = gamma_norm
        self.blocks = nn.ModuleList(ContextAttention(input_dim, context_dim, bias) for _ in range(num_blocks))
        for n, block in enumerate(self.blocks):
            block.reset_parameters_with(BLOCK_INITS[n % len(BLOCK_INITS)])
        if gamma_init not in GAMMA_INITS:
            raise ValueError(f"unknown gamma_init {gamma_init!r}; known: {', '.join(GAMMA_INITS)}")
        if gamma_init == "random":  # drawn after the blocks, from the same seeded global torch RNG
            init = torch.randn(num_blocks) if gamma_norm == "softmax" else torch.rand(num_blocks)
            init = init if gamma_norm == "softmax" else init / init.sum()
        else:
            init = torch.zeros(num_blocks) if gamma_norm == "softmax" else torch.full((num_blocks,), 1.0 / num_blocks)
        if learn_gammas:
            self.gamma_raw = nn.Parameter(init)
        else:
            self.register_buffer("gamma_raw", init)

    def gammas(self) -> Tensor:
        """(N,) mixture weights, float32."""
        raw = self.gamma_raw.float()
        return torch.softmax(raw, dim=0) if self.gamma_norm == "softmax" else raw

    def forward(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """y (B, T, D), mask (B, T) -> blocks (B, N, T), mixture (B, T), gammas (N,)."""
        blocks = torch.stack([block(y, mask) for block in self.blocks], dim=1)  # N x (B, T) -> (B, N, T)
        gammas = self.gammas()
        mixture = (gammas.view(1, -1, 1) * blocks).sum(dim=1)  # (1, N, 1) * (B, N, T) summed over N -> (B, T)
        return blocks, mixture, gammas


def _attention_pool(y: Tensor, weights: Tensor) -> Tensor:
    """y (B, T, D), weights (B, T) zero on padding -> (B, D) = sum_t w_t y_t, in float32."""
    return (weights.float().unsqueeze(-1) * y.float()).sum(dim=1)  # (B, T, 1) * (B, T, D) -> sum T -> (B, D)


class LayerWeighting(nn.Module):
    """A learned softmax weighting of a pretrained encoder's layers, as SUPERB (Yang et al., 2021) probes them.

        features (B, T, L * D) -> (B, T, L, D) -> sum_l softmax(w)_l x_l -> (B, T, D)

    The front end stores a frame's L layers side by side (``model.input_layers`` = L); the weights start equal
    (w = 0) and are learned with the rest of the model, so training picks the layers that carry emotion. It
    works frame by frame, so padding cannot leak; padded frames are zeroed all the same, as the encoder's are.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.logits = nn.Parameter(torch.zeros(num_layers))  # (L,) raw layer weights; softmax(0) = 1/L each

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        b, t, f = features.shape
        x = features.reshape(b, t, self.num_layers, f // self.num_layers)  # (B, T, L*D) -> (B, T, L, D)
        weights = torch.softmax(self.logits.float(), dim=0).to(x.dtype)  # (L,)
        mixed = torch.einsum("btld,l->btd", x, weights)  # (B, T, L, D) -> (B, T, D)
        return mixed * mask.unsqueeze(-1)  # (B, T) -> (B, T, 1): padding stays zero

    def layer_weights(self) -> Tensor:
        """The current weights of the layers, (L,), summing to 1."""
        return torch.softmax(self.logits.detach().float(), dim=0)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class _EncoderModel(nn.Module):
    """Shared parts: the BLSTM encoder, input checks, ``encode``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.input_layers < 1 or cfg.input_dim % cfg.input_layers:
            raise ValueError(f"model.input_dim {cfg.input_dim} is not model.input_layers {cfg.input_layers} x a "
                             "per-layer size")
        # a pretrained front end's stacked layers are mixed into one per-layer-sized frame first (input_layers > 1)
        self.layer_weighting = LayerWeighting(cfg.input_layers) if cfg.input_layers > 1 else None
        self.encoder = BLSTMEncoder(cfg.input_dim // cfg.input_layers, cfg.hidden_size, cfg.num_layers, cfg.dropout,
                                    cfg.input_dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def _check(self, features: Tensor, lengths: Tensor) -> Tensor:
        lengths = lengths.to(device=features.device, dtype=torch.long)
        # Skipped while tracing: the check reads tensor values (.item()) and would be frozen into the graph.
        if not torch.jit.is_tracing():
            if features.dim() != 3 or lengths.dim() != 1 or lengths.size(0) != features.size(0):
                raise ValueError(f"expected features (B, T, F) and lengths (B,), got {tuple(features.shape)} "
                                 f"and {tuple(lengths.shape)}")
            if features.size(-1) != self.cfg.input_dim:
                raise ValueError(f"feature dim {features.size(-1)} != ModelConfig.input_dim {self.cfg.input_dim}")
            if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > features.size(1)):
                raise ValueError(f"lengths must lie in [1, T={features.size(1)}], got {lengths.tolist()}")
        return lengths

    def join_functionals(self, pooled: Tensor, functionals: Optional[Tensor]) -> Tensor:
        """pooled (B, D), functionals (B, D_f) -> (B, D + D_f), the input of the projection or classifier.

        Fusion (``functionals_dim`` > 0): utterance-level descriptors (openSMILE functionals, standardised with
        training-speaker statistics by the data code) carry voice quality and prosody statistics that the
        classical anchor classifies well; joined here, the layers after pooling can weigh both sources.
        A model without them returns ``pooled`` unchanged.
        """
        dim = self.cfg.functionals_dim
        if not torch.jit.is_tracing():
            if dim == 0 and functionals is not None:
                raise ValueError("this model takes no utterance functionals (model.functionals_dim is 0)")
            if dim > 0 and (functionals is None or tuple(functionals.shape) != (pooled.size(0), dim)):
                got = "none" if functionals is None else str(tuple(functionals.shape))
                raise ValueError(f"this model joins {dim} utterance functionals to its pooled representation "
                                 f"(model.functionals_dim): expected functionals ({pooled.size(0)}, {dim}), got {got}")
        if dim == 0:
            return pooled
        # (B, D) ++ (B, D_f) -> (B, D + D_f); the model's dropout regularises the functionals too (ComParE's
        # 6373 values against a few thousand training utterances)
        return torch.cat([pooled, self.dropout(functionals.to(pooled.dtype))], dim=-1)

    def encode(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, T, F), lengths (B,) -> BLSTM output Y (B, T, 2H) zero on padding, mask (B, T) bool."""
        lengths = self._check(features, lengths)
        return self.run_encoder(features, lengths)

    def run_encoder(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Checked features (B, T, F), lengths (B,) -> Y (B, T, 2H), mask (B, T); stacked layers weighted first."""
        if self.layer_weighting is not None:
            features = self.layer_weighting(features, lengths_to_mask(lengths, features.size(1)))  # (B, T, D)
        return self.encoder(features, lengths)


class MeanPoolBLSTM(_EncoderModel):
    """Baseline: BLSTM + mean over valid frames + linear classifier."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.classifier = nn.Linear(self.encoder.output_dim + cfg.functionals_dim, cfg.num_classes)

    def forward(self, features: Tensor, lengths: Tensor, functionals: Optional[Tensor] = None) -> ModelOutput:
        y, mask = self.encode(features, lengths)  # (B, T, 2H), (B, T)
        pooled = masked_mean(y, mask)  # (B, 2H)
        joined = self.join_functionals(pooled, functionals)  # (B, 2H + D_f)
        logits = self.classifier(self.dropout(joined))  # (B, C)
        attention = {"layer1": None, "blocks": None, "mixture": None, "gammas": None}
        return ModelOutput(logits=logits, embedding=joined, attention=attention, encoded=pooled)


class AttentionBLSTM(_EncoderModel):
    """Baseline: BLSTM + attention layer 1 alone, pooling Y with its weights + linear classifier."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.attention1 = ContextAttention(self.encoder.output_dim, cfg.context_dim, cfg.attention_bias)
        self.classifier = nn.Linear(self.encoder.output_dim + cfg.functionals_dim, cfg.num_classes)

    def forward(self, features: Tensor, lengths: Tensor, functionals: Optional[Tensor] = None) -> ModelOutput:
        y, mask = self.encode(features, lengths)  # (B, T, 2H), (B, T)
        a1 = self.attention1(y, mask)  # (B, T)
        pooled = _attention_pool(y, a1)  # (B, 2H)
        joined = self.join_functionals(pooled, functionals)  # (B, 2H + D_f)
        logits = self.classifier(self.dropout(joined))  # (B, C)
        attention = {"layer1": a1, "blocks": None, "mixture": None, "gammas": None}
        return ModelOutput(logits=logits, embedding=joined, attention=attention, encoded=pooled)


class MOMA(_EncoderModel):
    """The paper's model: BLSTM -> residual attention layer 1 -> mixture of N attention blocks
    -> attention pooling -> projection (linear + nonlinearity) -> linear classifier."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        if cfg.layer1_output not in LAYER1_OUTPUTS:
            raise ValueError(f"unknown layer1_output {cfg.layer1_output!r}; known: {', '.join(LAYER1_OUTPUTS)}")
        if cfg.projection_activation not in PROJECTION_ACTIVATIONS:
            raise ValueError(f"unknown projection_activation {cfg.projection_activation!r}; "
                             f"known: {', '.join(PROJECTION_ACTIVATIONS)}")
        if cfg.layer1_scale_max < 0:
            raise ValueError(f"model.layer1_scale_max must be 0 (no cap) or positive, got {cfg.layer1_scale_max}")
        d = self.encoder.output_dim
        # Layer-1 attention keeps PyTorch's default Linear initialisation (uniform +-1/sqrt(fan_in)).
        self.attention1 = ContextAttention(d, cfg.context_dim, cfg.attention_bias)
        self.attention2 = MixtureOfAttention(d, cfg.context_dim, cfg.num_blocks, cfg.learn_gammas,
                                             cfg.gamma_norm, cfg.attention_bias, cfg.gamma_init)
        self.projection = nn.Linear(d + cfg.functionals_dim, cfg.projection_dim)
        self.classifier = nn.Linear(cfg.projection_dim, cfg.num_classes)

    def attend_layer1(self, y: Tensor, mask: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Attention layer 1 on the encoder output: its weights a1 (B, T) and output y2 (B, T, 2H), as this
        model's config reads it (the analysis calls it too, so an option of layer 1 lives in one place)."""
        a1 = self.attention1(y, mask)  # (B, T)
        y2 = apply_layer1(y, a1, mask, lengths, self.cfg.layer1_output, self.cfg.residual,
                          self.cfg.layer1_scale_max)  # (B, T, 2H)
        return a1, y2

    def forward(self, features: Tensor, lengths: Tensor, functionals: Optional[Tensor] = None) -> ModelOutput:
        lengths = self._check(features, lengths)
        y, mask = self.run_encoder(features, lengths)  # (B, T, 2H), (B, T)
        a1, y2 = self.attend_layer1(y, mask, lengths)  # (B, T), (B, T, 2H)
        blocks, mixture, gammas = self.attention2(y2, mask)  # (B, N, T), (B, T), (N,)
        pooled = _attention_pool(y2, mixture)  # (B, 2H)
        projected = self.projection(self.join_functionals(pooled, functionals))  # (B, 2H + D_f) -> (B, P)
        embedding = torch.relu(projected) if self.cfg.projection_activation == "relu" else torch.tanh(projected)
        logits = self.classifier(self.dropout(embedding))  # (B, C)
        attention = {"layer1": a1, "blocks": blocks, "mixture": mixture, "gammas": gammas}
        return ModelOutput(logits=logits, embedding=embedding, attention=attention, encoded=pooled)


def build_model(cfg: ModelConfig) -> nn.Module:
    """ModelConfig -> MOMA | AttentionBLSTM | MeanPoolBLSTM (cfg.arch: moma | attention | mean)."""
    if cfg.arch == "moma":
        return MOMA(cfg)
    if cfg.arch == "attention":
        return AttentionBLSTM(cfg)
    if cfg.arch == "mean":
        return MeanPoolBLSTM(cfg)
    raise ValueError(f"unknown arch {cfg.arch!r}; known: {', '.join(ARCHS)}")


def example_inputs(cfg: ModelConfig, frames: int = 4) -> tuple[Tensor, ...]:
    """Zero inputs of one utterance of ``frames`` frames for this config: (features (1, T, F), lengths (1,)),
    plus functionals (1, D_f) for a fusion model. For shape probes and tracing, never for predictions."""
    inputs = (torch.zeros(1, frames, cfg.input_dim), torch.tensor([frames]))
    return inputs + ((torch.zeros(1, cfg.functionals_dim),) if cfg.functionals_dim > 0 else ())


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as fixed gammas are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ExportWrapper(nn.Module):
    """Tensor-only view of a model for ``torch.jit.trace`` and ONNX export: (features, lengths[, functionals])
    -> the named outputs, in order. Tracers cannot return a dataclass or a dict holding None, so the names are fixed at
    construction: ``"logits"``, ``"embedding"`` or an attention key (``"layer1"``, ``"mixture"``, ...)."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...] = ("logits", "embedding")) -> None:
        super().__init__()
        self.model = model
        self.outputs = tuple(outputs)

    def forward(self, features: Tensor, lengths: Tensor, *functionals: Tensor) -> tuple[Tensor, ...]:
        out = self.model(features, lengths, *functionals)
        fields = {"logits": out.logits, "embedding": out.embedding}
        return tuple(fields[name] if name in fields else out.attention[name] for name in self.outputs)
