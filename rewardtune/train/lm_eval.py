"""Held-out evaluation of a generative policy (causal LM or seq2seq): completions of held-out prompts (greedy, or sampled with the same
draws every time), their rewards, length, distinct-n, and the KL to the reference and its perplexity."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from ..algorithms import kl_k3, masked_sum
from ..collectives import row_share
from ..data import repeat_columns
from ..policies.causal_lm import GenSettings
from ..policies.families import CAUSAL_LM, LMFamily
from ..rewards import CombinedReward
from ..run import RunContext
from .pg_update import reference_logprobs_at


EVAL_METRICS = ("reward", "length_words", "distinct_1", "distinct_2", "kl", "kl_greedy", "ref_perplexity")
EVAL_SEED_OFFSET = 7919  # evaluation's draws come from seed + this, never from training's random stream


@contextmanager
def eval_draws(seed: int, device: torch.device) -> Iterator[None]:
    """Inside: the random state of held-out evaluation's draws, `seed` + EVAL_SEED_OFFSET (on the device too, where
    the draws are made); outside it is as it was, so training's random stream never sees an evaluation. Shared with
    `rewardtune eval-lm`, which reproduces a run's held-out figures from the run's seed."""
    accel = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accel else [], device_type=device.type if accel else "cuda"):
        torch.manual_seed(seed + EVAL_SEED_OFFSET)
        yield


@torch.no_grad()
def evaluate_lm(run: RunContext, model: Any, tok: Any, reward: CombinedReward, prompts: list[str], gen: GenSettings,
             step: int, max_prompt: int = 10**9, rows: int = 0, samples: int = 0,
             reference: Callable[[], Any] | None = None, columns: dict[str, list[Any]] | None = None,
             fam: LMFamily = CAUSAL_LM) -> dict[str, float]:
    """Held-out completions, greedy (`samples=0`) or `samples` per prompt sampled at gen's temperature with the
    same draws at every evaluation (a generator seeded from the run's seed; training's random state is left as
    it was), so evaluations differ only by the policy. Metrics: reward, length, distinct-1/2, and against the
    reference (LoRA: the adapter disabled; full fine-tuning: `reference`, the run's frozen copy, a context factory
    as `setup_reference` makes; none without either) the KL per token on those tokens (`kl_greedy`: Σ(log π − log π_ref)/n;
    or `kl`, sampled: the k3 estimate of KL(π‖π_ref) between the policy and the reference at gen's temperature,
    unbiased when neither top-k nor top-p truncates the sampling) and their perplexity under the reference,
    exp(−mean log π_ref) at temperature 1. `rows`: rows per pass (0 = all). Under several processes each
    evaluates a contiguous share of the prompts, with the draws one process would give them, and the metrics are
    over every share (the same on every process). `columns`: the prompts' other columns, which the rewards see.
    `fam`: the policy kind's sampling and forward passes (`policies.families`)."""
    net, greedy, acc = run.accelerator.unwrap_model(model), samples == 0, run.accelerator
    device, k = next(net.parameters()).device, samples or 1
    rows = max(k, rows // k * k) if rows else 0  # whole prompt groups per pass
    share = row_share(acc, len(prompts))  # None: one process, or fewer prompts than processes (each does all)
    with eval_draws(run.seed, device):
        ro = fam.sample(net, tok, prompts, k, gen, max_prompt, greedy=greedy, rows=rows, only=share)
    part = {"prompts": ro.prompts, "completions": ro.completions,  # rewards raw: comparable across evaluations
            "rewards": reward.unnormalized(ro.prompts, ro.completions,
                                           **repeat_columns(columns or {}, k, share)).total.tolist()}
    ref = net.disable_adapter if hasattr(net, "disable_adapter") else reference
    if ref is not None:
        mask, temperature = ro.completion_mask, 1.0 if greedy else gen.temperature
        # As π was sampled, and (for the perplexity, the reference model's own) untempered: one reference pass.
        temps = (temperature,) if temperature == 1.0 else (temperature, 1.0)
        ref_at = reference_logprobs_at(net, ref, ro, temps, rows, True, fam)  # (B, T) per temperature
        # Greedy tokens are not samples of π: their log-ratio is reported as it is. Sampled tokens give k3, an
        # unbiased estimate of KL(π‖π_ref) that is never negative (k1 can be, on few samples).
        kl = ro.logprobs - ref_at[0] if greedy else kl_k3(ro.logprobs, ref_at[0])  # (B, T)
        ref_logp = ref_at[-1]  # (B, T) at temperature 1
        part |= {"tokens": float(mask.sum()), "kl": float(masked_sum(kl, mask)), "ref": float(masked_sum(ref_logp, mask))}
    m = eval_metrics(_gather_shares(acc, part) if share is not None else part, greedy)
    run.log(step, split="eval", decoding="greedy" if greedy else f"sampled x{samples}", **m)
    for i in range(min(3, len(ro.prompts))):
        run.log_sample(step, split="eval", prompt=ro.prompts[i], completion=ro.completions[i],
                       reward=part["rewards"][i])
    return m


def _gather_shares(acc: Any, part: dict[str, Any]) -> dict[str, Any]:
    """Every process's share of an evaluation in rank order: lists concatenated, numbers summed (a collective)."""
    from accelerate.utils import gather_object

    shares = gather_object([part])  # one dict per process, in rank order
    return {key: [x for sh in shares for x in sh[key]] if isinstance(v, list) else sum(sh[key] for sh in shares)
            for key, v in part.items()}


def eval_metrics(whole: dict[str, Any], greedy: bool) -> dict[str, float]:
    """The held-out metrics of all completions: reward, length and distinct-n; KL per token and the reference's
    perplexity when the reference was measured."""
    words = [c.split() for c in whole["completions"]]
    m = {"reward": sum(whole["rewards"]) / len(whole["rewards"]), "length_words": sum(map(len, words)) / len(words),
         "distinct_1": distinct_n(words, 1), "distinct_2": distinct_n(words, 2)}
    if "tokens" in whole:
        n = max(whole["tokens"], 1.0)
        m["kl_greedy" if greedy else "kl"] = whole["kl"] / n
        m["ref_perplexity"] = math.exp(-whole["ref"] / n)
    return m


def distinct_n(words: list[list[str]], n: int) -> float:
    grams = [tuple(w[i:i + n]) for w in words for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))
