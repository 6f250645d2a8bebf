"""The token-level policy-gradient objective, whole, in one function; and what each algorithm sets in it.

    L(θ) = aggregate_t [ max(-A_t·ρ_t, -A_t·clip(ρ_t, 1 - ε_low, 1 + ε_high)) + β·k(π_θ, π_ref)_t ]
    ρ_t  = π_θ(y_t) / π_old(y_t)

Every generative algorithm of rewardtune is this one function with different arguments:

| algorithm  | advantages A (advantages.py)  | ρ (old_logprobs)            | aggregate              | KL (β·k)          |
|------------|-------------------------------|-----------------------------|------------------------|-------------------|
| reinforce  | r - baseline (none/mean/EMA)  | 1: π/⊥π                     | seq_mean_token_mean    | k3 in the loss    |
| rloo       | r - mean of the K-1 others    | 1: π/⊥π                     | seq_mean_token_mean    | k3 in the loss    |
| grpo       | (r - mean_K) / std_K          | 1: π/⊥π                     | seq_mean_token_mean    | k3 in the loss    |
| dr_grpo    | r - mean_K                    | 1: π/⊥π                     | seq_mean_token_sum / T | k3 in the loss    |
| ppo        | GAE on a value head           | π/π_old, clipped at ε       | token_mean             | k1 in the reward  |

Why GRPO's ratio is 1 here: GRPO's clipped ratio (Shao et al. 2024, eq. 3) only matters when one rollout is
used for several updates. rewardtune makes one update per GRPO rollout, so π_old = π_θ at the update: the
ratio is 1 in value, its gradient is ∇log π, and clipping never triggers. ``old_logprobs=None`` writes that
exactly (π/⊥π, ⊥ = stop-gradient) without a second forward pass. PPO takes several minibatch steps per
rollout, so it passes the rollout's log-probs and a clip.

"KL in the reward" (PPO's default) is not part of this loss: it is β·k subtracted from the token rewards
before the advantages (``kl.kl_penalized_rewards``), and here ``beta=0``.
``OBJECTIVES`` holds each algorithm's choices of the `auto` settings, read once when a run starts.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from .kl import kl_loss
from .losses import clipped_surrogate, pg_loss


class Objective(NamedTuple):
    """The objective's fixed settings; β comes from the KL controller at each step."""

    aggregation: str = "seq_mean_token_mean"  # ops.AGGREGATIONS: how token terms become one number
    max_len: int | None = None  # the constant length of seq_mean_token_sum (Dr. GRPO: max_new_tokens)
    kl_estimator: str = "k3"  # kl.KL_ESTIMATORS: k1 | k2 | k3
    clip_eps: float | None = None  # PPO's ε_low (None: no clip; the ratio is 1)
    clip_eps_high: float | None = None  # DAPO's clip-higher ε_high (None: = clip_eps)
    dual_clip: float | None = None  # cap -c·A for A < 0 (None: off)


def pg_objective(logprobs: Tensor, advantages: Tensor, mask: Tensor, objective: Objective,
                 old_logprobs: Tensor | None = None, ref_logprobs: Tensor | None = None,
                 beta: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss above and its detached stats (``kl``: the estimator's token mean; with a ratio, ``clip_frac``,
    ``approx_kl``).  Shapes: logprobs (B, T), advantages (B,) or (B, T), mask (B, T), old/ref (B, T) -> scalar.

    ``old_logprobs=None``: one update per rollout, ρ = 1 (REINFORCE, RLOO, GRPO, Dr. GRPO); else ρ = π/π_old
    clipped at ``objective.clip_eps`` (PPO). ``beta > 0`` needs ``ref_logprobs``.
    References: Williams 1992; Schulman et al. 2017, eq. 7; Shao et al. 2024, arXiv:2402.03300, eq. 3;
    Liu et al. 2025, arXiv:2503.20783 (Dr. GRPO); Yu et al. 2025, arXiv:2503.14476 (DAPO).
    """
    agg, n = objective.aggregation, objective.max_len
    stats: dict[str, Tensor] = {}
    if old_logprobs is None:  # ρ = π/⊥π: value 1, gradient ∇log π
        loss, _ = pg_loss(logprobs, advantages, mask, agg, n)
    else:
        loss, cst = clipped_surrogate(logprobs, old_logprobs, advantages, mask, objective.clip_eps or float("inf"),
                                      objective.clip_eps_high, objective.dual_clip, agg, n)
        stats |= {"clip_frac": cst.clip_frac, "approx_kl": cst.approx_kl}
    if beta:
        if ref_logprobs is None:
            raise ValueError(f"beta={beta} needs the reference's log-probs (ref_logprobs)")
        kl, kst = kl_loss(logprobs, ref_logprobs, mask, beta, objective.kl_estimator, agg, n)
        loss = loss + kl
        stats["kl"] = kst.kl_mean
    return loss, stats


class Defaults(NamedTuple):
    """What an algorithm's `auto` settings resolve to."""

    aggregation: str
    kl_estimator: str
    kl_mode: str  # "loss": β·k in the objective; "reward": β·k off the token rewards


# Dr. GRPO: a per-sequence token sum over a constant length (Liu et al. 2025); PPO: the k1 penalty in the
# reward (Ziegler et al. 2019); the others: GRPO's k3 as a loss term (Shao et al. 2024).
OBJECTIVES: dict[str, Defaults] = {
    "reinforce": Defaults("seq_mean_token_mean", "k3", "loss"),
    "rloo": Defaults("seq_mean_token_mean", "k3", "loss"),
    "grpo": Defaults("seq_mean_token_mean", "k3", "loss"),
    "dr_grpo": Defaults("seq_mean_token_sum", "k3", "loss"),
    "ppo": Defaults("token_mean", "k1", "reward"),
}
