"""The policy-gradient update of generative RL: reference log-probs, the KL (in the reward or in the loss),
the micro-batched loss and backward pass, and one optimiser step.

`micro_batch_size` only bounds memory: each micro-batch's loss is weighted by its share of the
aggregation's denominator, so the summed gradient equals the full-batch gradient (tested).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..algorithms import get_kl_estimator, kl_loss, masked_mean, masked_sum, pg_loss
from ..policies.causal_lm import GenSettings, Rollout, token_logprobs, token_logprobs_at
from ..run import RunContext

if TYPE_CHECKING:
    from .gen_setup import GenRLSettings


def no_grad_rows(rl: GenRLSettings) -> int:
    """Rows per pass without gradient (`rl.inference_batch_size` in whole prompt groups, at least one; 0 = all)."""
    K, n = rl.samples_per_prompt, rl.inference_batch_size
    return max(K, n // K * K) if n else 0


def grouped(rl: GenRLSettings) -> bool:
    """Whether rows come in groups of K > 1 sharing a prompt (with K = 1 there is nothing to share)."""
    return rl.samples_per_prompt > 1


def reference_logprobs(model: Any, ref: Callable[[], Any], ro: Rollout, temperature: float,
                       rows: int = 0, share: bool = True) -> torch.Tensor:
    """log π_ref of the rollout's completion tokens (no gradient), `rows` rows per pass (0 = all: memory
    only, each row's result does not depend on the others'); `share`: see `completion_logits`.  (B, L) → (B, T)."""
    return reference_logprobs_at(model, ref, ro, (temperature,), rows, share)[0]


def reference_logprobs_at(model: Any, ref: Callable[[], Any], ro: Rollout, temperatures: tuple[float, ...],
                          rows: int = 0, share: bool = True) -> list[torch.Tensor]:
    """`reference_logprobs` at each of `temperatures`, from one pass of the reference.  (B, L) → [(B, T)]."""
    T = ro.completion_ids.shape[1]
    with torch.no_grad(), ref() as ref_model:
        net = model if ref_model is None else ref_model
        pieces = [token_logprobs_at(net, r.input_ids, r.attention_mask, T, temperatures, share)
                  for r in ro.chunks(rows)]  # per chunk: one (b, T) per temperature
    return [torch.cat([piece[i] for piece in pieces]) for i in range(len(temperatures))]


def kl_in_reward(model: Any, ref: Callable[[], Any], ro: Rollout, rewards: torch.Tensor, beta: float,
                 rl: GenRLSettings, gen: GenSettings) -> tuple[torch.Tensor, float]:
    """r − β·Σ_t k_t(π_old, π_ref) per completion, and the mean per-token KL.  rewards (P, K) → (P, K)."""
    rl = rl.resolved()  # rl.kl_estimator "auto" → the algorithm's own
    ref_logp = reference_logprobs(model, ref, ro, gen.temperature, no_grad_rows(rl), grouped(rl))  # (B, T)
    k = get_kl_estimator(rl.kl_estimator)(ro.logprobs, ref_logp)  # (B, T)
    seq_kl = masked_sum(k, ro.completion_mask, -1)  # (B,)
    return rewards - beta * seq_kl.reshape(rewards.shape).cpu(), float(masked_mean(k, ro.completion_mask))


def micro_weight(mask: torch.Tensor, full_mask: torch.Tensor, aggregation: str, tokens: float | None = None) -> float:
    """This micro-batch's share of the full batch's aggregation denominator. `tokens` (token_mean under
    several processes) is the global batch's token count divided by the process count: DDP averages the
    processes' gradients, so each must divide by that, not by its own count, for one global token mean."""
    if aggregation == "token_mean":
        return float(mask.sum()) / max(tokens if tokens is not None else float(full_mask.sum()), 1.0)
    return mask.shape[0] / full_mask.shape[0]  # every process holds the same number of whole groups


def policy_loss(model: Any, ro: Rollout, adv: torch.Tensor, full_mask: torch.Tensor, rl: GenRLSettings,
                gen: GenSettings, tokens: float | None = None,
                ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch, already weighted; stats are the micro-batch's token means. `ref_logp` (b, T): the
    reference's log-probs (`reference_logprobs`), needed when rl.kl_coef is not 0."""
    T, rl = ro.completion_ids.shape[1], rl.resolved()  # rl.aggregation "auto" → the algorithm's own
    logp, ent = token_logprobs(model, ro.input_ids, ro.attention_mask, T, gen.temperature, share=grouped(rl))  # (b, T)
    mask = ro.completion_mask
    loss, _ = pg_loss(logp, adv, mask, rl.aggregation, gen.max_new_tokens)
    stats = {"entropy": masked_mean(ent, mask)}
    if rl.kl_coef:
        if ref_logp is None:
            raise ValueError(f"rl.kl_coef={rl.kl_coef} needs the reference's log-probs (reference_logprobs)")
        kl, kst = kl_loss(logp, ref_logp, mask, rl.kl_coef, rl.kl_estimator, rl.aggregation, gen.max_new_tokens)
        loss = loss + kl
        stats["kl"] = kst.kl_mean
    return loss * micro_weight(mask, full_mask, rl.aggregation, tokens), stats


def accumulate_gradients(backward: Callable[[torch.Tensor], None], model: Any, ref: Callable[[], Any], ro: Rollout,
                         adv: torch.Tensor, rl: GenRLSettings, gen: GenSettings, tokens: float | None = None,
                         no_sync: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
    """Backward over the rollout in micro-batches; the summed gradient is the full batch's (`tokens`: see
    micro_weight), and so are the stats (token means over the whole rollout, whatever the micro-batches).
    `no_sync` (the accelerator's, for a DDP model) holds back the all-reduce of every micro-batch but the last:
    DDP would otherwise average the gradients over processes once per micro-batch instead of once per step."""
    B, rl = ro.completion_ids.shape[0], rl.resolved()  # rl.aggregation "auto" → the algorithm's own
    mb = rl.micro_batch_size or B
    sums: dict[str, float] = {}
    all_tokens = max(float(ro.completion_mask.sum()), 1.0)
    # The reference pass (no gradient) runs before any policy graph exists, in passes of rl.inference_batch_size
    # rows (all by default): one pass on B rows is faster than B/mb small ones, it keeps no activations, and its
    # transient memory does not sit on top of the graph.
    ref_logp = (reference_logprobs(model, ref, ro, gen.temperature, no_grad_rows(rl), grouped(rl))
                if rl.kl_coef else None)  # (B, T)
    starts = range(0, B, mb)
    for s in starts:
        rows = slice(s, s + mb)
        with nullcontext() if s == starts[-1] else no_sync():  # the forward too: DDP prepares its all-reduce there
            loss, stats = policy_loss(model, ro.rows(rows), adv[rows], ro.completion_mask, rl, gen, tokens,
                                      None if ref_logp is None else ref_logp[rows])
            backward(loss)
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        share = float(ro.completion_mask[rows].sum()) / all_tokens  # the stats are token means: weigh by tokens
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * share
    return sums


def update(run: RunContext, model: Any, optim: Any, ref: Callable[[], Any], ro: Rollout, adv: torch.Tensor,
           rl: GenRLSettings, gen: GenSettings, ok: Callable[[torch.Tensor, Any], bool]) -> dict[str, float]:
    """One optimiser step over the rollout (skipped when `ok` finds the loss or gradient non-finite)."""
    acc, tokens, rl = run.accelerator, None, rl.resolved()
    if acc.num_processes > 1 and rl.aggregation == "token_mean":  # global tokens / processes, the same everywhere
        tokens = float(acc.reduce(ro.completion_mask.sum().float().to(acc.device), "mean"))
    with acc.autocast():  # bf16 mixed precision: the chunked LM head runs outside the prepared forward
        stats = accumulate_gradients(acc.backward, model, ref, ro, adv, rl, gen, tokens, lambda: acc.no_sync(model))
    norm = run.accelerator.clip_grad_norm_(model.parameters(), rl.max_grad_norm or float("inf"))
    stats["grad_norm"] = float(norm)
    if ok(torch.tensor(stats["loss"]), norm):
        optim.step()
    optim.zero_grad(set_to_none=True)
    return stats
