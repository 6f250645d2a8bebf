"""Learning from logged bandit feedback: off-policy value estimates and the learning objectives built on them.

A log holds N rows (x_i, a_i, r_i, p_i): a context, the action the logging policy μ chose, its reward, and
p_i = μ(a_i | x_i), the propensity. A target policy π is valued from the log alone by re-weighting each row with
w_i = π(a_i | x_i) / p_i. Shapes: ``N`` (or ``B``) logged rows, ``A`` actions.

Every estimator returns *per-row terms* whose mean is the estimate, so that one function turns any of them into
a confidence interval (`normal_interval`; `bootstrap_interval` re-computes them on resampled rows). The learning
losses are the same estimators of π_θ's value, negated, with w differentiable in θ. Variants are picked by name
from ``OPE_ESTIMATORS`` and ``OFF_POLICY_LOSSES``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor


def importance_weights(target: Tensor, propensity: Tensor, clip: float = 0.0) -> Tensor:
    """w_i = min(π(a_i|x_i) / p_i, M); (N,), (N,) → (N,). `clip` M ≤ 0 means no clipping.

    Clipping trades a downward bias for variance: a row whose weight is cut counts as if π gave its action less
    probability (Ionides 2008; Bottou et al. 2013)."""
    w = target / propensity  # (N,)
    return w.clamp(max=clip) if clip > 0 else w


@dataclass(frozen=True)
class OffPolicyData:
    """What the estimators read: weights w (N,), rewards r (N,), and for DR the reward model's predictions:
    q̂(x_i, a_i) (N,) and its value under π, Σ_a π(a|x_i) q̂(x_i, a) (N,)."""

    w: Tensor
    reward: Tensor
    q_logged: Tensor | None = None
    q_target: Tensor | None = None

    def rows(self, idx: Tensor) -> "OffPolicyData":
        """The same data restricted to (or resampled by) row indices idx (M,)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return OffPolicyData(self.w[idx], self.reward[idx], pick(self.q_logged), pick(self.q_target))


def ips_terms(d: OffPolicyData) -> Tensor:
    """IPS: V̂ = (1/N) Σ w_i r_i; terms w_i r_i (N,). Unbiased when unclipped and p_i > 0 wherever π acts."""
    return d.w * d.reward  # (N,)


def snips_terms(d: OffPolicyData) -> Tensor:
    """SNIPS: V̂ = Σ w_i r_i / Σ w_i; terms V̂ + w_i (r_i − V̂) / w̄ (N,), w̄ = mean(w).

    The terms are the ratio's linearisation (delta method): their mean is exactly V̂ and their sample variance
    / N is the ratio's asymptotic variance. Self-normalising removes the dependence on the scale of w (bias
    O(1/N), far less variance when weights are large). With every weight 0 (π never takes a logged action) the log
    says nothing: the terms are 0."""
    w_bar = d.w.mean()
    if w_bar == 0:
        return torch.zeros_like(d.reward)
    value = (d.w * d.reward).sum() / d.w.sum()
    return value + d.w * (d.reward - value) / w_bar  # (N,)


def dr_terms(d: OffPolicyData) -> Tensor:
    """Doubly robust: V̂ = (1/N) Σ [Σ_a π(a|x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i))]; terms (N,).

    Unbiased if either the propensities or q̂ are right (Dudík, Langford & Li 2011); a good q̂ shrinks the
    importance-weighted residual, so the variance drops below IPS's."""
    if d.q_logged is None or d.q_target is None:
        raise ValueError("the DR estimate needs a reward model's predictions (q_logged, q_target)")
    return d.q_target + d.w * (d.reward - d.q_logged)  # (N,)


def dm_terms(d: OffPolicyData) -> Tensor:
    """Direct method: V̂ = (1/N) Σ_a π(a|x_i) q̂(x_i, a); terms (N,). No weights: biased as q̂ is."""
    if d.q_target is None:
        raise ValueError("the direct-method estimate needs a reward model's predictions (q_target)")
    return d.q_target


OPE_ESTIMATORS: dict[str, Callable[[OffPolicyData], Tensor]] = {
    "ips": ips_terms, "snips": snips_terms, "dr": dr_terms, "dm": dm_terms,
}


class Estimate(NamedTuple):
    """A value estimate, its standard error and a two-sided interval at `level`."""

    value: float
    stderr: float
    low: float
    high: float
    n: int


def normal_quantile(level: float) -> float:
    """z with P(|Z| ≤ z) = level for a standard normal Z (1.96 at 0.95)."""
    return math.sqrt(2.0) * torch.erfinv(torch.tensor(level, dtype=torch.float64)).item()


def normal_interval(terms: Tensor, level: float = 0.95) -> Estimate:
    """mean(terms) ± z·s/√N, s the sample standard deviation (ddof 1) of the per-row terms (N,)."""
    t = terms.double()
    n = t.numel()
    se = (t.std(unbiased=True) / math.sqrt(n)).item() if n > 1 else float("inf")
    value, z = t.mean().item(), normal_quantile(level)
    return Estimate(value, se, value - z * se, value + z * se, n)


def bootstrap_interval(d: OffPolicyData, estimator: Callable[[OffPolicyData], Tensor], samples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the estimate over `samples` resamples of the N rows with replacement (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    n = d.w.numel()
    values = torch.empty(samples, dtype=torch.float64)
    for s in range(samples):
        idx = torch.randint(n, (n,), generator=gen)  # (N,)
        values[s] = estimator(d.rows(idx)).double().mean()
    tail = (1.0 - level) / 2
    return (torch.quantile(values, tail).item(), torch.quantile(values, 1.0 - tail).item())


def effective_sample_size(w: Tensor) -> float:
    """(Σ w)² / Σ w² (Kish): how many on-policy rows the weighted log is worth; N when w is constant."""
    w = w.double()
    return (w.sum() ** 2 / (w * w).sum()).item() if bool((w != 0).any()) else 0.0


# ---------------------------------------------------------------- learning from logs
@dataclass
class LoggedBatch:
    """A batch of logged rows under a policy with parameters θ: logits (B, A) of π_θ, the logged actions (B,),
    rewards (B,), propensities (B,), and for DR the reward model's table q̂(x_i, ·) (B, A)."""

    logits: Tensor
    actions: Tensor
    reward: Tensor
    propensity: Tensor
    q_hat: Tensor | None = None


class OffPolicyStats(NamedTuple):
    """Detached statistics: mean weight (BanditNet's control variate S; 1 in expectation) and the estimate."""

    weight_mean: Tensor
    value: Tensor


def policy_weights(b: LoggedBatch, clip: float = 0.0) -> Tensor:
    """w_i = π_θ(a_i|x_i) / p_i, differentiable in θ (B,); a clipped weight carries no gradient."""
    logp = torch.log_softmax(b.logits.float(), dim=-1).gather(-1, b.actions[:, None]).squeeze(-1)  # (B,)
    return importance_weights(logp.exp(), b.propensity, clip)


def ips_loss(b: LoggedBatch, clip: float = 0.0, baseline: float = 0.0) -> tuple[Tensor, OffPolicyStats]:
    """−(1/B) Σ w_i r_i: clipped IPS risk (Strehl et al. 2010; Bottou et al. 2013)."""
    w = policy_weights(b, clip)  # (B,)
    value = (w * b.reward).mean()
    return -value, OffPolicyStats(w.detach().mean(), value.detach())


def snips_loss(b: LoggedBatch, clip: float = 0.0, baseline: float = 0.0) -> tuple[Tensor, OffPolicyStats]:
    """−Σ w_i r_i / Σ w_i over the batch (Swaminathan & Joachims 2015b): invariant to adding a constant to r."""
    w = policy_weights(b, clip)  # (B,)
    value = (w * b.reward).sum() / w.sum().clamp_min(1e-12)
    return -value, OffPolicyStats(w.detach().mean(), value.detach())


def dr_loss(b: LoggedBatch, clip: float = 0.0, baseline: float = 0.0) -> tuple[Tensor, OffPolicyStats]:
    """−(1/B) Σ [Σ_a π_θ(a|x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i))], q̂ fixed (fitted on the log beforehand)."""
    if b.q_hat is None:
        raise ValueError("the DR loss needs the reward model's table q_hat (B, A)")
    probs = torch.softmax(b.logits.float(), dim=-1)  # (B, A)
    w = policy_weights(b, clip)  # (B,)
    q_logged = b.q_hat.gather(-1, b.actions[:, None]).squeeze(-1)  # (B,)
    value = ((probs * b.q_hat).sum(-1) + w * (b.reward - q_logged)).mean()
    return -value, OffPolicyStats(w.detach().mean(), value.detach())


def banditnet_loss(b: LoggedBatch, clip: float = 0.0, baseline: float = 0.0) -> tuple[Tensor, OffPolicyStats]:
    """−(1/B) Σ (r_i − λ) w_i: BanditNet's λ-translated IPS (Joachims, Swaminathan & de Rijke 2018).

    In their loss units δ = −r this is (1/B) Σ (δ_i − λ') w_i. Subtracting λ makes rows with r_i < λ push
    probability away from their action; with λ = 0 and r ≥ 0, IPS only ever raises π on logged actions
    (propensity overfitting). Minimising it for a fixed λ is SNIPS's minimiser at the λ whose solution has
    mean weight S; λ near the policy's value (the log's mean reward by default) is the usual choice."""
    w = policy_weights(b, clip)  # (B,)
    value = (w * b.reward).mean()
    return -((b.reward - baseline) * w).mean(), OffPolicyStats(w.detach().mean(), value.detach())


OFF_POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, OffPolicyStats]]] = {
    "ips": ips_loss, "snips": snips_loss, "dr": dr_loss, "banditnet": banditnet_loss,
}
