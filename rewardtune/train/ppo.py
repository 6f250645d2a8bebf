"""PPO for generative policies (causal LM, seq2seq): a value head, GAE over tokens, several epochs over minibatches of a rollout.

The KL to the reference goes into the per-token reward (Ziegler et al. 2019; `rl.kl_mode=reward`, PPO's
default), the score on the last token; GAE turns those rewards and the value head's estimates into token
advantages; each minibatch minimises the clipped surrogate plus `vf_coef` × the clipped value loss (plus
β × the KL estimator's token mean with `rl.kl_mode=loss`).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..algorithms import gae, get_kl_estimator, kl_penalized_rewards, masked_mean, masked_sum, masked_whiten, value_loss
from ..algorithms.objectives import pg_objective
from ..collectives import average_gradients
from ..policies.causal_lm import Rollout
from ..policies.families import CAUSAL_LM, LMFamily
from ..run import RunContext
from .gen_config import PPOSettings
from .pg_update import UpdatePlan, plan_reference


class ValueHead(torch.nn.Module):
    """V(s_t) from the policy's last hidden state: one linear layer, zero-initialised (V = 0 at start)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):  # fp32 values under bf16 autocast too
            return self.linear(h.float()).squeeze(-1)  # (B, T)


def logprobs_and_values(model: Any, value_head: ValueHead, ids: torch.Tensor, mask: torch.Tensor, n: int,
                        temperature: float, fam: LMFamily = CAUSAL_LM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π, V and the entropy (no gradient) for the last `n` positions in one forward pass: all read the final
    hidden states (`fam.token_outputs`; a causal LM's head runs in row chunks where it can).  ids (B, L) → (B, T),
    (B, T), (B, T)."""
    logp, hidden, ent = fam.token_outputs(model, ids, mask, n, temperature)  # hidden: the state before each token
    return logp, value_head(hidden), ent


def old_values(model: Any, value_head: ValueHead, ro: Rollout, rows: int = 0, fam: LMFamily = CAUSAL_LM) -> torch.Tensor:
    """V of the rollout's states before any update (no gradient), `rows` rows per pass (0 = all). Only the
    final hidden states are needed, so a causal LM's head runs on one position per forward call, not on every token;
    rows are prompt-major, so each prompt goes through the model once for its K samples.  → (B, T)"""
    T = ro.completion_ids.shape[1]
    with torch.no_grad():
        return torch.cat([value_head(fam.completion_hidden(model, r.input_ids, r.attention_mask, T))
                          for r in ro.chunks(rows)])  # pieces (b, T)


def token_advantages(ro: Rollout, scores: torch.Tensor, ref: torch.Tensor, values0: torch.Tensor, beta: float,
                     kl_estimator: str, ppo: PPOSettings, all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns of the rollout's tokens, the score on the last token and β·k_t (`kl_estimator` to
    `ref`) taken off every token's reward; whitened over the (global) batch if asked.  → (B, T), (B, T)"""
    mask = ro.completion_mask
    token_rewards = kl_penalized_rewards(scores, ro.logprobs, ref, mask, beta, kl_estimator)  # (B, T)
    adv, returns = gae(token_rewards, values0, mask, ppo.gamma, ppo.lam)  # (B, T), (B, T)
    return (masked_whiten(adv, mask, all_sum=all_sum) if ppo.whiten_advantages else adv), returns


@dataclass
class Targets:
    """What every minibatch of one rollout is fitted to, fixed before the first update.  All (B, T)."""

    adv: torch.Tensor  # token advantages
    returns: torch.Tensor  # the value head's targets
    values0: torch.Tensor  # the values before the update (the value clip's centre)
    ref: torch.Tensor  # the reference's log-probs (the rollout's own when there is no reference)


def micro_batch_loss(model: Any, value_head: ValueHead, ro: Rollout, idx: torch.Tensor, fit: Targets, plan: UpdatePlan,
                     ppo: PPOSettings, kl_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows `idx`: the clipped objective (`pg_objective` with the rollout's log-probs as π_old; + kl_coef × the KL
    estimator, with the KL in the loss) + vf_coef × the clipped value loss, each a token mean; and their stats
    (no gradient)."""
    T, m = ro.completion_ids.shape[1], ro.completion_mask[idx]
    logp, values, ent = logprobs_and_values(model, value_head, ro.input_ids[idx], ro.attention_mask[idx], T,
                                            plan.temperature, plan.family)  # (b, T) each
    pl, pst = pg_objective(logp, fit.adv[idx], m, plan.objective, old_logprobs=ro.logprobs[idx],
                           ref_logprobs=fit.ref[idx], beta=kl_coef)
    vl, vst = value_loss(values, fit.values0[idx], fit.returns[idx], m, ppo.value_clip or None)
    stats = {"loss": pl, "value_loss": vl, "clip_frac": pst["clip_frac"], "approx_kl": pst["approx_kl"],
             "value_clip_frac": vst.clip_frac, "entropy": masked_mean(ent, m)}
    return pl + ppo.vf_coef * vl, {k: v.detach() for k, v in stats.items()}


def ppo_update(backward: Callable[[torch.Tensor], None], step_fn: Callable[[torch.Tensor], None], model: Any,
               value_head: ValueHead, ro: Rollout, scores: torch.Tensor, ref_logprobs: torch.Tensor | None, beta: float,
               ppo: PPOSettings, plan: UpdatePlan, all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
               no_sync: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
    """Advantages once per rollout, then `epochs` × `minibatches` clipped updates; the stats are means over them.
    scores (B,).

    `all_sum` (a sum over processes) makes the advantage whitening and the token means the global batch's. Each
    minibatch's gradient is accumulated over micro-batches of `plan.micro_batch_size` rows (0 = the minibatch), each
    weighted by its share of the minibatch's tokens, so the step is the same (all losses are token means; tested).
    `plan.no_grad_rows`: rows per pass of the no-gradient value pass (0 = all). The KL (`plan.objective.kl_estimator`)
    to `ref_logprobs` goes into the token rewards (`plan.kl_in_reward`) or into each minibatch's objective. `no_sync`:
    DDP's all-reduce held back for every micro-batch of a minibatch but the last (as pg_update.accumulate_gradients)."""
    mask, kl_estimator = ro.completion_mask, plan.objective.kl_estimator
    ref = ro.logprobs if ref_logprobs is None else ref_logprobs
    values0 = old_values(model, value_head, ro, plan.no_grad_rows, plan.family)  # (B, T)
    adv, returns = token_advantages(ro, scores, ref, values0, beta if plan.kl_in_reward else 0.0, kl_estimator, ppo,
                                    all_sum)  # (B, T), (B, T)
    fit, kl_coef = Targets(adv, returns, values0, ref), 0.0 if plan.kl_in_reward else beta
    B = mask.shape[0]
    size = -(-B // ppo.minibatches)
    sums: dict[str, float] = {}
    world = 1 if all_sum is None else int(all_sum(torch.ones((), device=mask.device)))
    for _ in range(ppo.epochs):
        for perm in torch.randperm(B).split(size):
            # The minibatch's tokens over all processes / their number: DDP averages the processes' gradients, so
            # each divides by that, not by its own count, for one global token mean (as pg_update.micro_weight).
            here = mask[perm].sum().float()
            tokens = (float(here) if all_sum is None else float(all_sum(here)) / world) or 1.0
            stats = dict.fromkeys(("loss", "value_loss", "clip_frac", "approx_kl", "value_clip_frac", "entropy"), 0.0)
            micro = perm.split(plan.micro_batch_size or len(perm))
            for i, idx in enumerate(micro):
                w = float(mask[idx].sum()) / tokens  # this micro-batch's share of the minibatch's tokens
                with nullcontext() if i == len(micro) - 1 else no_sync():
                    loss, mst = micro_batch_loss(model, value_head, ro, idx, fit, plan, ppo, kl_coef)
                    backward(w * loss)
                for k, v in mst.items():
                    stats[k] += w * float(v)  # shares: their mean over processes is the token mean
            step_fn(torch.tensor(stats["loss"] + stats["value_loss"]))
            sums = {k: sums.get(k, 0.0) + v for k, v in stats.items()}
    steps = ppo.epochs * len(range(0, B, size))
    out = {k: v / steps for k, v in sums.items()}  # means over the update's minibatch steps, not the last one's
    per_process = float(mask.sum()) if all_sum is None else float(all_sum(mask.sum().float())) / world
    kl = get_kl_estimator(kl_estimator)(ro.logprobs, ref)  # (B, T): the rollout's, a share as the stats above
    out["kl"] = float(masked_sum(kl, mask)) / max(per_process, 1.0)
    return out


def ppo_step(run: RunContext, model: Any, value_head: ValueHead, optim: Any, params: list, ref: Callable[[], Any],
             ro: Rollout, scores: torch.Tensor, plan: UpdatePlan, ppo: PPOSettings, beta: float,
             ok: Callable[[torch.Tensor, Any], bool]) -> dict[str, float]:
    """The update of one PPO step: reference log-probs for the KL, then PPO's epochs of minibatch updates. scores (B,)."""
    acc = run.accelerator
    with acc.autocast():  # bf16 mixed precision: the chunked LM head runs outside the prepared forward
        ref_logp = plan_reference(model, ref, ro, plan) if beta else None  # (B, T)

    def step(loss: torch.Tensor) -> None:
        with torch.autocast(acc.device.type, enabled=False):  # the optimiser step is not a forward pass
            if acc.num_processes > 1:  # as DDP averages the policy's gradients
                average_gradients(list(value_head.parameters()), lambda g: acc.reduce(g, "mean"))
            norm = torch.nn.utils.clip_grad_norm_(params, plan.max_grad_norm or float("inf"))
            if ok(loss, norm):
                optim.step()
            optim.zero_grad(set_to_none=True)
    all_sum = (lambda t: acc.reduce(t.to(acc.device), "sum").to(t.device)) if acc.num_processes > 1 else None
    with acc.autocast():
        return ppo_update(acc.backward, step, model, value_head, ro, scores.to(ro.logprobs.device), ref_logp, beta, ppo,
                          plan, all_sum, lambda: acc.no_sync(model))
