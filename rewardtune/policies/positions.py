"""Position ids of left-padded rows, as `generate` numbers them.

With left padding the positions are *not* arange(T): they count real tokens only. Sampling (causal_lm.py),
rewardtune's decoding loop (decode.py) and every training forward pass must agree on them, so they live
here, below all three.
"""
from __future__ import annotations

import torch


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as `generate` does for left-padded rows.  (B, L)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
