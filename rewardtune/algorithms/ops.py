"""Masked reductions, token aggregation and log-probability helpers.

Shapes: ``B`` sequences (``B = P·K``), ``T`` completion tokens, ``V`` vocabulary size.
Masks are binary (bool or 0/1). Reductions *select* with ``torch.where`` rather than
multiply, so a masked position never reaches a result even when it holds inf or nan
(``0 * inf`` would be nan).

Reference for the masking conventions: Huang et al. 2024, "The N+ Implementation
Details of RLHF with PPO: A Case Study on TL;DR Summarization", arXiv:2403.17031.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Callable, Mapping, TypeVar

import torch
from torch import Tensor

V = TypeVar("V")


def lookup(registry: Mapping[str, V], name: str, kind: str) -> V:
    """Return ``registry[name]``; unknown names raise a ValueError listing the valid ones."""
    try:
        return registry[name]
    except KeyError:
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} {name!r}; valid names: {valid}") from None


class StateDictMixin:
    """``state_dict`` / ``load_state_dict`` for the small dataclasses that carry training state."""

    def state_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` dict, safe to pass to ``torch.save`` or JSON."""
        return asdict(self)  # type: ignore[call-overload]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore every field from ``state`` (a missing field raises KeyError)."""
        for f in fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, state[f.name])


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·m over ``dim`` (all elements when None).

    Shapes: x (..., T), mask broadcastable to x -> reduced shape.
    Reference: Huang et al. 2024, arXiv:2403.17031 (padding tokens must not count).
    """
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·m / Σ m over ``dim``; an all-masked slice gives 0 rather than nan.

    Shapes: x (..., T), mask broadcastable to x -> reduced shape.
    Reference: Huang et al. 2024, arXiv:2403.17031.
    """
    mask = mask.bool().expand_as(x)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """Variance of the unmasked elements, Σ m (x - x̄)² / (n - [unbiased]).

    Shapes: x (B, T), mask (B, T) -> scalar.
    Reference: Huang et al. 2024, arXiv:2403.17031.
    """
    mean = masked_mean(x, mask)
    n = mask.bool().expand_as(x).sum().to(x.dtype)
    dof = (n - 1.0 if unbiased else n).clamp_min(1.0)
    return masked_sum((x - mean) ** 2, mask) / dof


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, unbiased: bool = False, eps: float = 1e-8,
    all_sum: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """(x - x̄) / sqrt(var + eps) over unmasked elements; masked positions become 0.

    With ``shift_mean=False`` the mean is added back, so only the scale changes
    (useful for rewards, whose sign carries meaning). With ``all_sum`` (a sum over processes, e.g.
    an all-reduce) x̄ and var are those of every process's elements together.
    Shapes: x (B, T), mask (B, T) -> (B, T).
    Reference: Huang et al. 2024, arXiv:2403.17031 (advantage/reward whitening in PPO).
    """
    if all_sum is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased)
    else:
        mean, var = _global_mean_var(x, mask, unbiased, all_sum)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return torch.where(mask.bool(), white, torch.zeros((), dtype=x.dtype, device=x.device))


def _global_mean_var(x: Tensor, mask: Tensor, unbiased: bool, all_sum: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """masked_mean and masked_var over all processes in two passes: (Σ x·m, Σ m) → x̄, then Σ m (x - x̄)²."""
    sums = all_sum(torch.stack([masked_sum(x, mask), mask.bool().expand_as(x).sum().to(x.dtype)]))  # (2,)
    mean = sums[0] / sums[1].clamp_min(1.0)
    dof = (sums[1] - 1.0 if unbiased else sums[1]).clamp_min(1.0)
    return mean, all_sum(masked_sum((x - mean) ** 2, mask)) / dof


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log π(label) = z_label - logsumexp(z), the log-softmax picked at ``labels``.

    Works for tokens, logits (B, T, V) with labels (B, T) -> (B, T), and for classes,
    logits (B, V) with labels (B,) -> (B,). Gathering one logit and subtracting
    logsumexp keeps it stable for huge logits and never stores the full (B, T, V)
    log-softmax output.
    Reference: Huang et al. 2024, arXiv:2403.17031 (token log-probs of sampled tokens).
    """
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # (B, T) or (B,)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H(π) = logsumexp(z) - Σ_v π_v z_v, the entropy of softmax(z) per row.

    Shapes: logits (..., V) -> (...).
    Reference: Williams & Peng 1991, "Function Optimization using Connectionist
    Reinforcement Learning Algorithms" (entropy regularisation of policies).
    """
    probs = torch.softmax(logits, dim=-1)  # (..., V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)



def tempered_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0,
                      entropy: bool = True) -> tuple[Tensor, Tensor | None]:
    """log softmax(z / τ) at ``labels`` and, if asked, H(softmax(z / τ)) without gradient (a logged statistic, or
    the entropy bonus's detached view).  logits (B, T, V), labels (B, T) → (B, T), (B, T) or None."""
    if temperature != 1.0:  # each pass over (B, T, V) costs as much as a layer of a small model
        logits = logits / temperature
    logp = logprobs_from_logits(logits, labels)  # (B, T)
    if not entropy:
        return logp, None
    with torch.no_grad():
        return logp, entropy_from_logits(logits)

def token_mean(x: Tensor, mask: Tensor, max_len: int | None = None) -> Tensor:
    """Σ_{i,t} m_it x_it / Σ_{i,t} m_it: every valid token weighs the same (DAPO).

    ``max_len`` is unused; it keeps all aggregations callable the same way.
    Shapes: x (B, T), mask (B, T) -> scalar.
    Reference: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System
    at Scale", arXiv:2503.14476 (token-level policy-gradient loss).
    """
    return masked_mean(x, mask)


def seq_mean_token_mean(x: Tensor, mask: Tensor, max_len: int | None = None) -> Tensor:
    """(1/B) Σ_i (1/|o_i|) Σ_t m_it x_it: each sequence weighs the same (GRPO).

    ``max_len`` is unused; it keeps all aggregations callable the same way.
    Shapes: x (B, T), mask (B, T) -> scalar.
    Reference: Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3.
    """
    return masked_mean(x, mask, dim=-1).mean()


def seq_mean_token_sum(x: Tensor, mask: Tensor, max_len: int | None = None) -> Tensor:
    """(1/B) Σ_i Σ_t m_it x_it / L with a constant L (Dr. GRPO), no per-length division.

    L is ``max_len`` (pass the generation budget) or, when None, the padded length T.
    Dividing by a constant rather than |o_i| removes GRPO's length bias.
    Shapes: x (B, T), mask (B, T) -> scalar.
    Reference: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
    Perspective", arXiv:2503.20783.
    """
    length = x.shape[-1] if max_len is None else max_len
    return (masked_sum(x, mask, dim=-1) / length).mean()


Aggregation = Callable[[Tensor, Tensor, "int | None"], Tensor]

AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
}


def get_aggregation(name: str) -> Aggregation:
    """The aggregation registered as ``name`` in ``AGGREGATIONS`` (ValueError if unknown)."""
    return lookup(AGGREGATIONS, name, "aggregation")


def aggregate(
    x: Tensor, mask: Tensor, mode: str = "token_mean", max_len: int | None = None
) -> Tensor:
    """Reduce per-token losses (B, T) to a scalar with the aggregation named ``mode``.

    Shapes: x (B, T), mask (B, T) -> scalar.
    Reference: see ``token_mean``, ``seq_mean_token_mean``, ``seq_mean_token_sum``.
    """
    return get_aggregation(mode)(x, mask, max_len)
