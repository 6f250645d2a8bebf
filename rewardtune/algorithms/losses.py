"""Policy, value and reward-model losses. Each returns ``(loss, stats)``.

``stats`` is a small NamedTuple of detached tensors for the caller to log. Shapes:
``B`` sequences, ``T`` tokens, ``A`` actions of a finite action set (e.g. class labels).
Advantages, returns and rewards are constants of the update, so they are detached.
Token losses are reduced with an aggregation from ``ops.AGGREGATIONS``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .kl import kl_k3
from .ops import aggregate, entropy_from_logits, masked_mean


def _per_token(advantages: Tensor, logprobs: Tensor) -> Tensor:
    """Advantages (B,) or (B, T) as a detached tensor that broadcasts against (B, T)."""
    advantages = advantages.detach()
    return advantages.unsqueeze(-1) if advantages.dim() < logprobs.dim() else advantages


class PGStats(NamedTuple):
    """Detached statistics of ``pg_loss``."""

    advantage_mean: Tensor  # masked token mean of A
    logprob_mean: Tensor  # masked token mean of log π


def pg_loss(
    logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, PGStats]:
    """REINFORCE: ∇L = -aggregate_t A·∇log π(y_t), the vanilla policy gradient.

    Written as -A·π/⊥π = -A·exp(log π - ⊥log π) (⊥ = stop-gradient): the gradient is
    exactly -A·∇log π, and the value, -aggregate(A), is the on-policy value of the PPO
    surrogate, so ``clipped_surrogate`` with old = new log-probs matches it in both.
    Shapes: logprobs (B, T), advantages (B,) or (B, T), mask (B, T) -> (scalar, PGStats).
    Reference: Williams 1992, "Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning", Machine Learning 8.
    """
    adv = _per_token(advantages, logprobs)  # (B, 1) or (B, T)
    ratio_to_self = torch.exp(logprobs - logprobs.detach())  # (B, T), value 1
    loss = aggregate(-adv * ratio_to_self, mask, aggregation, max_len)
    stats = PGStats(
        advantage_mean=masked_mean(adv.expand_as(logprobs), mask).detach(),
        logprob_mean=masked_mean(logprobs, mask).detach(),
    )
    return loss, stats


class ClipStats(NamedTuple):
    """Detached statistics of ``clipped_surrogate``."""

    clip_frac: Tensor  # share of valid tokens where the clipped term was active
    dual_clip_frac: Tensor  # share of valid tokens capped by the dual clip
    approx_kl: Tensor  # k3 estimate of KL(π_old ‖ π) per token
    ratio_mean: Tensor  # masked token mean of π/π_old


def _dual_clip(per_token: Tensor, adv: Tensor, c: float) -> Tensor:
    """Cap the loss at -c·A for A < 0, so a huge ratio on a bad action cannot explode it."""
    if c <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {c}")
    return torch.where(adv < 0, torch.minimum(per_token, -c * adv), per_token)


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, ClipStats]:
    """PPO: L = aggregate_t max(-A·ρ, -A·clip(ρ, 1 - ε_low, 1 + ε_high)), ρ = π/π_old.

    ``eps_high`` defaults to ``eps_low`` (symmetric PPO); a larger one is DAPO's
    clip-higher. ``dual_clip=c`` (c > 1) also caps the loss at -c·A when A < 0.
    Shapes: logprobs (B, T), old_logprobs (B, T), advantages (B,) or (B, T),
    mask (B, T) -> (scalar, ClipStats).
    Reference: Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
    arXiv:1707.06347, eq. 7; Yu et al. 2025, "DAPO", arXiv:2503.14476
    (decoupled ε_low/ε_high); Ye et al. 2020, "Mastering Complex Control in MOBA Games
    with Deep Reinforcement Learning", arXiv:1912.09729 (dual clip).
    """
    eps_high = eps_low if eps_high is None else eps_high
    adv = _per_token(advantages, logprobs)  # (B, 1) or (B, T)
    old_logprobs = old_logprobs.detach()
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -adv * ratio  # (B, T)
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)  # (B, T)
    ppo = torch.maximum(unclipped, clipped)  # (B, T)
    per_token = ppo if dual_clip is None else _dual_clip(ppo, adv, dual_clip)
    loss = aggregate(per_token, mask, aggregation, max_len)
    stats = ClipStats(
        clip_frac=masked_mean((clipped > unclipped).to(ratio.dtype), mask).detach(),
        dual_clip_frac=masked_mean((per_token < ppo).to(ratio.dtype), mask).detach(),
        approx_kl=masked_mean(kl_k3(old_logprobs, logprobs), mask).detach(),
        ratio_mean=masked_mean(ratio, mask).detach(),
    )
    return loss, stats


class ValueStats(NamedTuple):
    """Detached statistics of ``value_loss``."""

    clip_frac: Tensor  # share of valid tokens where the clipped error was the larger
    value_mean: Tensor  # masked token mean of the predicted values


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None = 0.2,
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, ValueStats]:
    """L_V = aggregate_t ½ max((V - R)², (V_old + clip(V - V_old, ±ε) - R)²).

    ``clip_eps=None`` gives the plain squared error ½ (V - R)².
    Shapes: values (B, T), old_values (B, T), returns (B, T), mask (B, T)
    -> (scalar, ValueStats).
    Reference: Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
    arXiv:1707.06347 (value clipping as in OpenAI baselines' PPO2).
    """
    clip_eps = float("inf") if clip_eps is None else clip_eps
    returns, old_values = returns.detach(), old_values.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped = (values - returns) ** 2  # (B, T)
    clipped = (clipped_values - returns) ** 2  # (B, T)
    loss = aggregate(0.5 * torch.maximum(unclipped, clipped), mask, aggregation, max_len)
    stats = ValueStats(
        clip_frac=masked_mean((clipped > unclipped).to(values.dtype), mask).detach(),
        value_mean=masked_mean(values, mask).detach(),
    )
    return loss, stats


class PreferenceStats(NamedTuple):
    """Detached statistics of ``bradley_terry_loss``."""

    accuracy: Tensor  # share of pairs with r_chosen > r_rejected (ties count as wrong)
    margin: Tensor  # mean of r_chosen - r_rejected


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None
) -> tuple[Tensor, PreferenceStats]:
    """L = -mean log σ(r_chosen - r_rejected - m): pairwise reward-model loss.

    The optional margin m (scalar or (N,)) asks the chosen reward to win by at least m.
    Shapes: chosen_rewards (N,), rejected_rewards (N,) -> (scalar, PreferenceStats).
    Reference: Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs";
    Ouyang et al. 2022, arXiv:2203.02155, eq. 1; margin: Touvron et al. 2023,
    "Llama 2", arXiv:2307.09288.
    """
    diff = chosen_rewards - rejected_rewards  # (N,)
    shifted = diff if margin is None else diff - margin
    loss = -F.logsigmoid(shifted).mean()
    stats = PreferenceStats(
        accuracy=(diff > 0).to(diff.dtype).mean().detach(), margin=diff.mean().detach()
    )
    return loss, stats


def centring_penalty(rewards: Tensor, batch_mean: Tensor) -> Tensor:
    """(E_batch r)²: keeps a pairwise reward model's scores centred at 0 (Eisenstein et al. 2023,
    arXiv:2312.09244), for one process's share `rewards` (n,) of a batch whose mean over every process is
    `batch_mean` (no gradient flows through it).

    Value m²; gradient 2m · ∇mean(rewards). A process whose loss is weighted by its share of the batch
    (world · n / N, as the trainers do) then contributes its share of 2m · ∇m, so DDP's average over
    processes is the whole batch's gradient. With one process, batch_mean = rewards.mean() and this is
    mean(rewards)² in value and gradient.  Shapes: rewards (n,), batch_mean () -> scalar.
    """
    m = batch_mean.detach()
    surrogate = 2 * m * rewards.mean()  # its gradient is the one wanted; its value is not
    return surrogate - surrogate.detach() + m**2


class ExpectedRewardStats(NamedTuple):
    """Detached statistics of ``expected_reward_loss``."""

    expected_reward: Tensor  # mean over the batch of Σ_y π(y|x) R(x, y)
    entropy: Tensor  # mean policy entropy


def expected_reward_loss(
    logits: Tensor, rewards: Tensor, baseline: Tensor | float | None = None
) -> tuple[Tensor, ExpectedRewardStats]:
    """L = -(1/B) Σ_x Σ_y π(y|x) (R(x, y) - b(x)) over a finite action set.

    Its gradient is the exact expectation of the REINFORCE gradient: no sampling, no
    variance. Since Σ_y ∇π(y|x) = 0, the baseline b (None = 0, scalar or (B,)) shifts
    the value but not the gradient.
    Shapes: logits (B, A), rewards (B, A), baseline (B,) -> (scalar, ExpectedRewardStats).
    Reference: Sutton et al. 2000, "Policy Gradient Methods for Reinforcement Learning
    with Function Approximation" (NeurIPS); Asadi et al. 2017, "Mean Actor Critic",
    arXiv:1709.00503 (summing over all actions).
    """
    rewards = rewards.detach()
    probs = torch.softmax(logits, dim=-1)  # (B, A)
    b = torch.as_tensor(0.0 if baseline is None else baseline, dtype=rewards.dtype)
    b = b.to(rewards.device).detach()
    b = b.unsqueeze(-1) if b.dim() == 1 else b  # (B, 1) or scalar
    loss = -(probs * (rewards - b)).sum(-1).mean()
    stats = ExpectedRewardStats(
        expected_reward=(probs * rewards).sum(-1).mean().detach(),
        entropy=entropy_from_logits(logits).mean().detach(),
    )
    return loss, stats
