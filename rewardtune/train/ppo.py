"""PPO for causal LMs: a value head, GAE over tokens, several epochs over minibatches of a rollout.

The KL to the reference goes into the per-token reward (Ziegler et al. 2019), the score on the
last token; GAE turns those rewards and the value head's estimates into token advantages; each
minibatch minimises the clipped surrogate plus `vf_coef` × the clipped value loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..algorithms import clipped_surrogate, gae, kl_penalized_rewards, masked_mean, masked_whiten, value_loss
from ..config import doc
from ..policies.causal_lm import GenSettings, Rollout, position_ids
from ..algorithms import logprobs_from_logits


@dataclass(frozen=True)
class PPOSettings:
    """PPO-only settings (used when rl.algorithm=ppo)."""

    epochs: int = doc(2, "passes over each rollout")
    minibatches: int = doc(2, "minibatches per pass")
    clip_eps: float = doc(0.2, "policy ratio clip ε")
    value_clip: float = doc(0.2, "value clip (0 = none)")
    vf_coef: float = doc(0.1, "weight of the value loss")
    gamma: float = doc(1.0, "discount over tokens")
    lam: float = doc(0.95, "GAE λ")
    whiten_advantages: bool = doc(True, "normalise token advantages over the batch")


class ValueHead(torch.nn.Module):
    """V(s_t) from the policy's last hidden state: one linear layer, zero-initialised (V = 0 at start)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.float()).squeeze(-1)  # (B, T)


def logprobs_and_values(model: Any, head: ValueHead, ids: torch.Tensor, mask: torch.Tensor, n: int,
                        temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log π and V for the last `n` positions in one forward pass.  ids (B, L) → (B, T), (B, T)."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True,
                logits_to_keep=n + 1)
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V)
    values = head(out.hidden_states[-1][:, -n - 1:-1])  # (B, T): value of the state before each token
    return logprobs_from_logits(logits, ids[:, -n:]), values


def ppo_update(backward: Callable[[torch.Tensor], None], step_fn: Callable[[torch.Tensor], None], model: Any, head: ValueHead,
               ro: Rollout, scores: torch.Tensor, ref_logprobs: torch.Tensor | None, beta: float,
               ppo: PPOSettings, gen: GenSettings, all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> dict[str, float]:
    """Advantages once per rollout, then `epochs` × `minibatches` clipped updates.  scores (B,).

    `all_sum` (a sum over processes) makes the advantage whitening the global batch's."""
    T, mask = ro.completion_ids.shape[1], ro.completion_mask
    with torch.no_grad():
        _, old_values = logprobs_and_values(model, head, ro.input_ids, ro.attention_mask, T, gen.temperature)
    ref = ro.logprobs if ref_logprobs is None else ref_logprobs
    token_rewards = kl_penalized_rewards(scores, ro.logprobs, ref, mask, beta, "k1")  # (B, T)
    adv, returns = gae(token_rewards, old_values, mask, ppo.gamma, ppo.lam)  # (B, T), (B, T)
    if ppo.whiten_advantages:
        adv = masked_whiten(adv, mask, all_sum=all_sum)
    B = mask.shape[0]
    size = -(-B // ppo.minibatches)
    stats: dict[str, float] = {}
    for _ in range(ppo.epochs):
        for perm in torch.randperm(B).split(size):
            logp, values = logprobs_and_values(model, head, ro.input_ids[perm], ro.attention_mask[perm], T, gen.temperature)
            m = mask[perm]
            pl, cst = clipped_surrogate(logp, ro.logprobs[perm], adv[perm], m, ppo.clip_eps)
            vl, vst = value_loss(values, old_values[perm], returns[perm], m, ppo.value_clip or None)
            backward(pl + ppo.vf_coef * vl)
            step_fn(pl.detach() + vl.detach())
            stats = {"loss": pl.detach().item(), "value_loss": vl.detach().item(), "clip_frac": float(cst.clip_frac),
                     "approx_kl": float(cst.approx_kl), "value_clip_frac": float(vst.clip_frac)}
    stats["kl"] = float(masked_mean(ro.logprobs - ref, mask))
    return stats
