"""Dropout whose masks cost a quarter of torch's on CPU.

torch's CPU dropout draws one Bernoulli variable per element (`bernoulli_`), about 6 ns each on
this project's machine: for MiniLM at 256 tokens × 32 rows, the attention-probability dropout alone
draws 25M per layer, about a third of a training step. Here the mask comes from 16 random bits per
element (one 64-bit draw gives four elements), compared with a threshold: the same distribution,
Bernoulli(1 − p) scaled by 1 / (1 − p), with p rounded to a multiple of 1/65536 (0.1 → 0.100006).
Only the random stream differs from torch's.

Off CPU nothing changes: GPU dropout is cheap and fused into SDPA there.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION = "rewardtune_sdpa"  # the attention implementation name registered with transformers


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bernoulli(1 − p) booleans from 16 random bits each.  → bool tensor of `shape`."""
    n = math.prod(shape)
    # randint's bounds are [low, high): every 64-bit pattern but one, i.e. uniform 16-bit quarters
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return (bits.view(torch.int16)[:n] < -32768 + round((1 - p) * 65536)).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout` with `keep_mask` on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    return x * keep_mask(x.shape, p, x.device) * (1.0 / (1.0 - p))


class FastDropout(torch.nn.Dropout):
    """nn.Dropout with `dropout` inside (same `p`, same train/eval behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout_p: float = 0.0, scaling: float | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except when training with dropout on CPU: there torch's SDPA falls back
    to its math path anyway; this is that path with `keep_mask`.  q (B, H, T, D), k/v (B, H, S, D) → (B, T, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dropout_p = kwargs.pop("dropout", dropout_p)  # transformers passes it as `dropout`
    if not (module.training and dropout_p > 0 and query.device.type == "cpu") or key.shape[1] != query.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout_p, scaling=scaling, **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)  # (B, H, T, S)
    if attention_mask is not None:  # SDPA's masks: boolean (True = attend) or additive
        scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
            else scores + attention_mask
    probs = dropout(scores.softmax(-1), dropout_p)  # (B, H, T, S)
    return torch.matmul(probs.to(value.dtype), value).transpose(1, 2).contiguous(), None


def use_fast_dropout(model: Any) -> Any:
    """Swap every nn.Dropout for FastDropout and route attention through `attention` (models whose attention
    goes through transformers' attention interface, e.g. BERT/MiniLM; others keep their own)."""
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, attention)
    if ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) == "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION)
    return model
