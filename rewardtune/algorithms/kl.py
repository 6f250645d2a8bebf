"""KL divergence to a reference policy: per-token estimators, penalty, loss and controllers.

The estimators take log-probs of tokens *sampled from π* under π (``logprobs``) and
under π_ref (``ref_logprobs``), and estimate KL(π ‖ π_ref) per token.
Reference: Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .ops import StateDictMixin, aggregate, lookup, masked_mean


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log π(y) - log π_ref(y): unbiased, high variance, can be negative.

    Shapes: logprobs (B, T), ref_logprobs (B, T) -> (B, T).
    Reference: Schulman 2020, "Approximating KL Divergence".
    """
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ½ (log π(y) - log π_ref(y))²: biased, low variance, >= 0.

    Used as a loss on samples from π, its gradient (log π - log π_ref)·∇log π is in
    expectation the exact gradient of KL(π ‖ π_ref).
    Shapes: logprobs (B, T), ref_logprobs (B, T) -> (B, T).
    Reference: Schulman 2020, "Approximating KL Divergence"; Tang & Munos 2025, "On a
    Few Pitfalls in KL Divergence Gradient Estimation for RL", arXiv:2506.09477.
    """
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r - 1) - log r with r = π_ref(y)/π(y): unbiased, low variance, >= 0.

    ``expm1`` keeps k3 >= 0 in floating point too (fl(expm1 x) >= x), where
    ``exp(x) - 1 - x`` can round below zero for tiny x.
    Shapes: logprobs (B, T), ref_logprobs (B, T) -> (B, T).
    Reference: Schulman 2020, "Approximating KL Divergence"; used as GRPO's KL term,
    Shao et al. 2024, arXiv:2402.03300, eq. 4.
    """
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


KLEstimator = Callable[[Tensor, Tensor], Tensor]

KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str) -> KLEstimator:
    """The per-token KL estimator registered as ``name`` in ``KL_ESTIMATORS``.

    Reference: Schulman 2020, "Approximating KL Divergence".
    """
    return lookup(KL_ESTIMATORS, name, "KL estimator")


class KLStats(NamedTuple):
    """Detached statistics of a KL term."""

    kl_mean: Tensor  # masked token mean of the estimator


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float = 1.0,
    estimator: str = "k3",
    aggregation: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, KLStats]:
    """β · aggregate_t k(π, π_ref): KL as a loss term added to the policy loss (GRPO).

    The gradient flows through ``logprobs`` only. On samples from π, "k1" has zero
    expected gradient; "k2" gives the exact expected gradient of KL(π ‖ π_ref).
    Shapes: logprobs (B, T), ref_logprobs (B, T), mask (B, T) -> (scalar, KLStats).
    Reference: Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3-4.
    """
    kl = get_kl_estimator(estimator)(logprobs, ref_logprobs.detach())  # (B, T)
    loss = beta * aggregate(kl, mask, aggregation, max_len)
    return loss, KLStats(kl_mean=masked_mean(kl, mask).detach())


def _on_last_token(rewards: Tensor, mask: Tensor) -> Tensor:
    """Sequence rewards (B,) placed on each row's last valid token -> (B, T); (B, T) passes."""
    if rewards.dim() == mask.dim():
        return rewards
    valid = mask.bool()
    counts = valid.long().cumsum(-1)  # (B, T)
    last = valid & (counts == counts[:, -1:])  # (B, T) one True per non-empty row
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    return torch.where(last, rewards.unsqueeze(-1), zero)


def kl_penalized_rewards(
    rewards: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
) -> Tensor:
    """Per-token rewards R_t = r·[t = last] - β·k_t: KL as a penalty inside the reward.

    A sequence reward (B,) goes on the last valid token; token rewards (B, T) are used
    as given. The result is detached (a reward is a constant) and 0 where masked.
    Shapes: rewards (B,) or (B, T), logprobs (B, T), ref_logprobs (B, T), mask (B, T)
    -> (B, T).
    Reference: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", arXiv:1909.08593; Ouyang et al. 2022, arXiv:2203.02155, eq. 2.
    """
    kl = get_kl_estimator(estimator)(logprobs.detach(), ref_logprobs.detach())  # (B, T)
    token_rewards = _on_last_token(rewards.detach().to(kl.dtype), mask) - beta * kl  # (B, T)
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    return torch.where(mask.bool(), token_rewards, zero)


@dataclass
class FixedKLController(StateDictMixin):
    """A constant KL coefficient β with the same interface as ``AdaptiveKLController``.

    Reference: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", arXiv:1909.08593.
    """

    value: float = 0.1

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: β stays fixed."""


@dataclass
class AdaptiveKLController(StateDictMixin):
    """β <- β (1 + K_β e), e = clip(KL / target - 1, ±0.2), K_β = n_steps / horizon.

    Raises β when the measured KL overshoots ``target`` and lowers it when below; the
    clip bounds how fast it moves on one noisy KL estimate.
    Reference: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", arXiv:1909.08593.
    """

    value: float = 0.1
    target: float = 6.0
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β towards keeping ``current_kl`` (measured over ``n_steps`` samples) at target."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


KL_CONTROLLERS: dict[str, type] = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}


def get_kl_controller(name: str, **kwargs: float) -> FixedKLController | AdaptiveKLController:
    """A new KL controller of kind ``name`` ("fixed" | "adaptive") built from ``kwargs``.

    Reference: Ziegler et al. 2019, arXiv:1909.08593.
    """
    return lookup(KL_CONTROLLERS, name, "KL controller")(**kwargs)
