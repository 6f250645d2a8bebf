"""The policy-gradient update of generative RL (REINFORCE, RLOO, GRPO, Dr. GRPO): reference log-probs, the KL
(in the reward or in the loss), the advantages, the micro-batched objective and backward pass, one optimiser step.

The objective itself is `algorithms.objectives.pg_objective`; this file only feeds it. `micro_batch_size`
only bounds memory: each micro-batch's loss is weighted by its share of the aggregation's denominator, so
the summed gradient equals the full-batch gradient (tested).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..algorithms import EMABaseline, get_advantage_fn, get_kl_estimator, masked_mean, masked_sum
from ..algorithms.objectives import Objective, pg_objective
from ..collectives import gather_to_cpu, token_mean_shares
from ..policies.causal_lm import Rollout
from ..policies.families import CAUSAL_LM, LMFamily
from ..run import RunContext


@dataclass(frozen=True)
class UpdatePlan:
    """What the update of every step uses, made once from the run's resolved settings (`gen_setup.update_plan`)."""

    objective: Objective  # aggregation, its length, KL estimator, clips (β comes from the KL controller)
    kl_in_reward: bool  # β·k off the rewards before the advantages (True) or a term of the objective (False)
    temperature: float  # the sampling temperature: log-probs are those of the tempered policy
    micro_batch_size: int = 0  # rows per forward/backward (0 = all): memory only
    no_grad_rows: int = 0  # rows per pass without gradient (0 = all): memory only
    share_prompt: bool = True  # rows come in groups of K > 1 sharing a prompt, which then goes through once
    max_grad_norm: float = 0.0  # gradient clipping (0 = off)
    family: LMFamily = CAUSAL_LM  # the policy kind's forward passes (causal LM or seq2seq)


def no_grad_rows(samples_per_prompt: int, inference_batch_size: int) -> int:
    """Rows per pass without gradient (`inference_batch_size` in whole prompt groups, at least one; 0 = all)."""
    K, n = samples_per_prompt, inference_batch_size
    return max(K, n // K * K) if n else 0


def reference_logprobs(model: Any, ref: Callable[[], Any], ro: Rollout, temperature: float,
                       rows: int = 0, share_prompt: bool = True, fam: LMFamily = CAUSAL_LM) -> torch.Tensor:
    """log π_ref of the rollout's completion tokens (no gradient), `rows` rows per pass (0 = all: memory
    only, each row's result does not depend on the others'); `share_prompt`: see `completion_logits`.
    (B, L) → (B, T)."""
    return reference_logprobs_at(model, ref, ro, (temperature,), rows, share_prompt, fam)[0]


def reference_logprobs_at(model: Any, ref: Callable[[], Any], ro: Rollout, temperatures: tuple[float, ...],
                          rows: int = 0, share_prompt: bool = True, fam: LMFamily = CAUSAL_LM) -> list[torch.Tensor]:
    """`reference_logprobs` at each of `temperatures`, from one pass of the reference.  (B, L) → [(B, T)]."""
    T = ro.completion_ids.shape[1]
    with torch.no_grad(), ref() as ref_model:
        net = model if ref_model is None else ref_model
        pieces = [fam.token_logprobs_at(net, r.input_ids, r.attention_mask, T, temperatures, share_prompt)
                  for r in ro.chunks(rows)]  # per chunk: one (b, T) per temperature
    return [torch.cat([piece[i] for piece in pieces]) for i in range(len(temperatures))]


def plan_reference(model: Any, ref: Callable[[], Any], ro: Rollout, plan: UpdatePlan) -> torch.Tensor:
    """`reference_logprobs` with the plan's temperature and passes.  → (B, T)"""
    return reference_logprobs(model, ref, ro, plan.temperature, plan.no_grad_rows, plan.share_prompt, plan.family)


def kl_in_reward(model: Any, ref: Callable[[], Any], ro: Rollout, rewards: torch.Tensor, beta: float,
                 plan: UpdatePlan) -> tuple[torch.Tensor, float]:
    """r − β·Σ_t k_t(π_old, π_ref) per completion, and the mean per-token KL.  rewards (P, K) → (P, K)."""
    k = get_kl_estimator(plan.objective.kl_estimator)(ro.logprobs, plan_reference(model, ref, ro, plan))  # (B, T)
    seq_kl = masked_sum(k, ro.completion_mask, -1)  # (B,)
    return rewards - beta * seq_kl.reshape(rewards.shape).cpu(), float(masked_mean(k, ro.completion_mask))


def micro_weight(mask: torch.Tensor, full_mask: torch.Tensor, aggregation: str, tokens: float | None = None) -> float:
    """This micro-batch's share of the full batch's aggregation denominator. `tokens` (token_mean under
    several processes) is the global batch's token count divided by the process count: DDP averages the
    processes' gradients, so each must divide by that, not by its own count, for one global token mean."""
    if aggregation == "token_mean":
        return float(mask.sum()) / max(tokens if tokens is not None else float(full_mask.sum()), 1.0)
    return mask.shape[0] / full_mask.shape[0]  # every process holds the same number of whole groups


def policy_loss(model: Any, ro: Rollout, adv: torch.Tensor, full_mask: torch.Tensor, plan: UpdatePlan,
                beta: float = 0.0, tokens: float | None = None,
                ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective of one micro-batch, already weighted; stats are the micro-batch's token means. `ref_logp`
    (b, T): the reference's log-probs (`reference_logprobs`), needed when β is not 0."""
    T = ro.completion_ids.shape[1]
    logp, ent = plan.family.token_logprobs(model, ro.input_ids, ro.attention_mask, T, plan.temperature,
                               share_prompt=plan.share_prompt)  # (b, T)
    mask = ro.completion_mask
    loss, stats = pg_objective(logp, adv, mask, plan.objective, ref_logprobs=ref_logp, beta=beta)
    stats = {"entropy": masked_mean(ent, mask), **stats}
    return loss * micro_weight(mask, full_mask, plan.objective.aggregation, tokens), stats


def accumulate_gradients(backward: Callable[[torch.Tensor], None], model: Any, ref: Callable[[], Any], ro: Rollout,
                         adv: torch.Tensor, plan: UpdatePlan, beta: float = 0.0, tokens: float | None = None,
                         no_sync: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
    """Backward over the rollout in micro-batches; the summed gradient is the full batch's (`tokens`: see
    micro_weight), and so are the stats (token means over the whole rollout, whatever the micro-batches).
    `no_sync` (the accelerator's, for a DDP model) holds back the all-reduce of every micro-batch but the last:
    DDP would otherwise average the gradients over processes once per micro-batch instead of once per step."""
    B = ro.completion_ids.shape[0]
    mb = plan.micro_batch_size or B
    sums: dict[str, float] = {}
    all_tokens = max(float(ro.completion_mask.sum()), 1.0)
    # The reference pass (no gradient) runs before any policy graph exists, in passes of no_grad_rows rows (all
    # by default): one pass on B rows is faster than B/mb small ones, it keeps no activations, and its transient
    # memory does not sit on top of the graph.
    ref_logp = plan_reference(model, ref, ro, plan) if beta else None  # (B, T)
    starts = range(0, B, mb)
    for s in starts:
        rows = slice(s, s + mb)
        with nullcontext() if s == starts[-1] else no_sync():  # the forward too: DDP prepares its all-reduce there
            loss, stats = policy_loss(model, ro.rows(rows), adv[rows], ro.completion_mask, plan, beta, tokens,
                                      None if ref_logp is None else ref_logp[rows])
            backward(loss)
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        share = float(ro.completion_mask[rows].sum()) / all_tokens  # the stats are token means: weigh by tokens
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * share
    return sums


def pg_update(run: RunContext, model: Any, optim: Any, ref: Callable[[], Any], ro: Rollout, adv: torch.Tensor,
              plan: UpdatePlan, beta: float, ok: Callable[[torch.Tensor, Any], bool]) -> dict[str, float]:
    """One optimiser step over the rollout (skipped when `ok` finds the loss or gradient non-finite)."""
    acc, tokens = run.accelerator, None
    if acc.num_processes > 1 and plan.objective.aggregation == "token_mean":  # global tokens / processes
        tokens = float(acc.reduce(ro.completion_mask.sum().float().to(acc.device), "mean"))
    with acc.autocast():  # bf16 mixed precision: the chunked LM head runs outside the prepared forward
        stats = accumulate_gradients(acc.backward, model, ref, ro, adv, plan, beta, tokens, lambda: acc.no_sync(model))
    norm = run.accelerator.clip_grad_norm_(model.parameters(), plan.max_grad_norm or float("inf"))
    stats["grad_norm"] = float(norm)
    if ok(torch.tensor(stats["loss"]), norm):
        optim.step()
    optim.zero_grad(set_to_none=True)
    return stats


def advantages(rewards: torch.Tensor, algorithm: str, baseline: str, ema: EMABaseline,
               gather: Callable[[torch.Tensor], torch.Tensor] | None = None, rank: int = 0) -> torch.Tensor:
    """(P, K) rewards of this process → (P·K,) advantages with `algorithm`'s estimator (`baseline`: REINFORCE's).

    With several processes, `gather` returns every process's rewards (P·world, K) in rank order: the
    estimator then sees the global batch, as one process would, so REINFORCE's batch-mean and EMA
    baselines are the global batch's (and the EMA's state is the same on every process); this
    process keeps its own rows. Group estimators (GRPO, RLOO) give the same either way.
    """
    full = gather(rewards) if gather is not None else rewards  # (P·world, K)
    fn = get_advantage_fn(algorithm)
    adv = fn(full, baseline=baseline, ema=ema) if algorithm == "reinforce" else fn(full)
    P = rewards.shape[0]
    return adv.reshape(full.shape)[rank * P:(rank + 1) * P].reshape(-1)  # (P·K,)


def pg_step(run: RunContext, model: Any, optim: Any, ref: Callable[[], Any], ro: Rollout, rewards: torch.Tensor,
            plan: UpdatePlan, estimator: tuple[str, str, EMABaseline], beta: float,
            ok: Callable[[torch.Tensor, Any], bool]) -> dict[str, float]:
    """The update of one step: the KL off the rewards (when it goes in the reward), advantages, one policy-gradient
    step (the KL in the objective otherwise). `estimator`: (algorithm, baseline, EMA state). rewards (P, K)."""
    shaped, kl_tok, acc = rewards, None, run.accelerator
    if plan.kl_in_reward and beta:
        with acc.autocast():  # the LM head runs outside the prepared forward (policies/head.py)
            shaped, kl_tok = kl_in_reward(model, ref, ro, rewards, beta, plan)
    gather = gather_to_cpu(acc) if acc.num_processes > 1 else None
    adv = advantages(shaped, *estimator, gather, acc.process_index)  # (B,)
    loss_beta = 0.0 if kl_tok is not None else beta  # the KL is counted once: in the reward or in the objective
    stats = pg_update(run, model, optim, ref, ro, adv.to(ro.logprobs.device), plan, loss_beta, ok)
    stats = stats if kl_tok is None else {**stats, "kl": kl_tok}
    return token_mean_shares(acc, stats, ro.completion_mask) if acc.num_processes > 1 else stats
