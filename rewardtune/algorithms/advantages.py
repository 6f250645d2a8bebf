"""Advantage estimators: how much better a sample was than expected.

Outcome rewards come as (P, K) (P prompts, K samples each) or flat (B,) with
``group_size=K``; the result has the shape of the input. Advantages are constants for
the policy update, so every estimator detaches its inputs.

Pick one by name with ``get_advantage_fn``; ``gae`` is separate because it needs a
critic's per-token values, not just rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .ops import StateDictMixin, lookup


@dataclass
class EMABaseline(StateDictMixin):
    """Exponential moving average of past batch-mean rewards, used as a REINFORCE baseline.

    ``value`` only ever holds *previous* batches, so the baseline is independent of the
    current samples and the gradient stays unbiased. The first update sets ``value`` to
    the batch mean instead of decaying from the arbitrary starting 0.
    Reference: Williams 1992, "Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning" (reinforcement baselines).
    """

    decay: float = 0.9
    value: float = 0.0
    initialized: bool = False

    def update(self, batch_mean: float) -> None:
        """b <- decay·b + (1 - decay)·mean(r); the first call sets b = mean(r)."""
        batch_mean = float(batch_mean)
        if self.initialized:
            self.value = self.decay * self.value + (1.0 - self.decay) * batch_mean
        else:
            self.value, self.initialized = batch_mean, True


def _no_baseline(rewards: Tensor, ema: EMABaseline | None) -> Tensor | float:
    return 0.0


def _mean_baseline(rewards: Tensor, ema: EMABaseline | None) -> Tensor | float:
    return rewards.mean()


def _ema_baseline(rewards: Tensor, ema: EMABaseline | None) -> Tensor | float:
    if ema is None:
        raise ValueError("baseline='ema' needs an EMABaseline passed as ema=")
    # Read before updating: the current batch must not be part of its own baseline.
    baseline = ema.value
    ema.update(rewards.mean().item())
    return baseline


BASELINES: dict[str, Callable[[Tensor, "EMABaseline | None"], "Tensor | float"]] = {
    "none": _no_baseline,
    "mean": _mean_baseline,
    "ema": _ema_baseline,
}


def reinforce(rewards: Tensor, baseline: str = "none", ema: EMABaseline | None = None) -> Tensor:
    """A_i = r_i - b with b = 0 ("none"), the batch mean ("mean") or an EMA ("ema").

    With "ema" the passed ``EMABaseline`` is read, then updated with this batch: the one
    stateful estimator. Shapes: rewards (P, K) or (B,) -> same shape.
    Reference: Williams 1992, "Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning", Machine Learning 8.
    """
    rewards = rewards.detach()
    return rewards - lookup(BASELINES, baseline, "baseline")(rewards, ema)


def _as_groups(rewards: Tensor, group_size: int | None) -> Tensor:
    """View rewards as (P, K): 2-D input is already grouped, 1-D needs ``group_size``."""
    if rewards.dim() == 2:
        if group_size is not None and group_size != rewards.shape[1]:
            raise ValueError(f"group_size={group_size} but rewards have K={rewards.shape[1]}")
        return rewards
    if rewards.dim() != 1 or group_size is None:
        raise ValueError("rewards must be (P, K), or (B,) together with group_size=K")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"B={rewards.numel()} is not a multiple of group_size={group_size}")
    return rewards.view(-1, group_size)


def rloo(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """A_ik = r_ik - (1/(K-1)) Σ_{j≠k} r_ij: each sample's baseline is its group's other samples.

    Shapes: rewards (P, K), or (B,) with ``group_size=K`` -> same shape. Needs K >= 2.
    Reference: Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"
    (ICLR DeepRLStructPred workshop); Ahmadian et al. 2024, "Back to Basics: Revisiting
    REINFORCE Style Optimization for Learning from Human Feedback", arXiv:2402.14740.
    """
    groups = _as_groups(rewards.detach(), group_size)  # (P, K)
    k = groups.shape[-1]
    if k < 2:
        raise ValueError("rloo needs at least 2 samples per group")
    baseline = (groups.sum(-1, keepdim=True) - groups) / (k - 1)  # (P, K)
    return (groups - baseline).reshape(rewards.shape)


def _std_scale(groups: Tensor, eps: float) -> Tensor:
    if groups.shape[-1] < 2:
        raise ValueError("scale='std' needs at least 2 samples per group")
    return groups.std(-1, keepdim=True) + eps  # (P, 1), Bessel-corrected as in GRPO code


def _no_scale(groups: Tensor, eps: float) -> Tensor:
    return torch.ones_like(groups[..., :1])  # (P, 1)


GROUP_SCALES: dict[str, Callable[[Tensor, float], Tensor]] = {"std": _std_scale, "none": _no_scale}


def group_norm(
    rewards: Tensor, group_size: int | None = None, scale: str = "std", eps: float = 1e-6
) -> Tensor:
    """A_ik = (r_ik - mean_j r_ij) / (std_j r_ij + eps), or unscaled with ``scale="none"``.

    ``std`` is the sample (Bessel-corrected) standard deviation within the group.
    Shapes: rewards (P, K), or (B,) with ``group_size=K`` -> same shape.
    Reference: Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, sec. 4.1.2 (GRPO);
    ``scale="none"``: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
    Perspective", arXiv:2503.20783 (Dr. GRPO).
    """
    scale_fn = lookup(GROUP_SCALES, scale, "group scale")
    groups = _as_groups(rewards.detach(), group_size)  # (P, K)
    centred = groups - groups.mean(-1, keepdim=True)  # (P, K)
    return (centred / scale_fn(groups, eps)).reshape(rewards.shape)


def grpo(rewards: Tensor, group_size: int | None = None, eps: float = 1e-6) -> Tensor:
    """GRPO advantages: ``group_norm`` with ``scale="std"``.

    Shapes: rewards (P, K), or (B,) with ``group_size=K`` -> same shape.
    Reference: Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300.
    """
    return group_norm(rewards, group_size, scale="std", eps=eps)


def dr_grpo(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """Dr. GRPO advantages: ``group_norm`` with ``scale="none"`` (mean-centred only).

    Shapes: rewards (P, K), or (B,) with ``group_size=K`` -> same shape.
    Reference: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
    Perspective", arXiv:2503.20783.
    """
    return group_norm(rewards, group_size, scale="none")


def self_critical(rewards: Tensor, greedy_rewards: Tensor) -> Tensor:
    """A_ik = r_ik - r_i(greedy): each sample's baseline is the reward of the policy's own most probable output.

    Shapes: rewards (P, K), greedy_rewards (P,) -> (P, K).
    Reference: Rennie et al. 2017, "Self-critical Sequence Training for Image Captioning" (CVPR); used for span
    extraction by Xiong et al. 2018, "DCN+: Mixed Objective and Deep Residual Coattention for Question Answering".
    """
    return rewards.detach() - greedy_rewards.detach()[:, None]


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "reinforce": reinforce,
    "rloo": rloo,
    "group_norm": group_norm,
    "grpo": grpo,
    "dr_grpo": dr_grpo,
}


def get_advantage_fn(name: str) -> Callable[..., Tensor]:
    """The outcome-reward estimator registered as ``name`` in ``ADVANTAGES``.

    Every entry is called as ``fn(rewards, **options)`` with rewards (P, K) or (B,).
    Reference: see the individual estimators.
    """
    return lookup(ADVANTAGES, name, "advantage estimator")


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE: Â_t = Σ_l (γλ)^l δ_{t+l} with δ_t = r_t + γ V_{t+1} - V_t.

    The trajectory is the unmasked tokens of each row, in order: masked positions are
    skipped (not treated as zero-reward steps) and the step after the last valid token
    is terminal (V = 0). Returns (advantages, returns = advantages + values), both zero
    where masked and detached (they are targets). Vectorised over B; one reverse
    pass over T.
    Shapes: rewards (B, T), values (B, T), mask (B, T) -> ((B, T), (B, T)).
    Reference: Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation", arXiv:1506.02438, eq. 16.
    """
    rewards, values, valid = rewards.detach(), values.detach(), mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    next_value = torch.zeros_like(values[:, 0])  # (B,) V of the next valid token
    next_adv = torch.zeros_like(values[:, 0])  # (B,) Â of the next valid token
    advantages = torch.zeros_like(values)  # (B, T)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        adv_t = delta + gamma * lam * next_adv  # (B,)
        advantages[:, t] = torch.where(valid[:, t], adv_t, zero)
        # A masked step must not break the chain between the valid tokens around it.
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
    returns = torch.where(valid, advantages + values, zero)  # (B, T)
    return advantages, returns
