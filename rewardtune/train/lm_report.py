"""What a generative-RL run reports and keeps: the per-step metrics row, the held-out evaluation, the
saved policy. Split from `rl_generate.py` so that the loop file holds the loop."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..algorithms import kl_k3, masked_sum
from ..policies.causal_lm import GenSettings, Rollout, sample
from ..rewards import CombinedReward
from ..collectives import row_share
from ..run import RunContext
from .pg_update import reference_logprobs_at


@dataclass
class TrainBatch:
    """What a train row reports of one step's completions: this process's, or every process's (`global_batch`)."""

    rewards: torch.Tensor  # (P, K) the rewards the advantages used (normalised as configured)
    lengths: torch.Tensor  # (B,) completion tokens
    components: dict[str, torch.Tensor]  # each (B,): a reward function's raw values, NaN where it had no opinion
    dropped: int  # samples whose reward failed (rl.on_reward_error=skip)

    @classmethod
    def of(cls, ro: Rollout, scored: Any, rewards: torch.Tensor, dropped: int) -> "TrainBatch":
        return cls(rewards, ro.completion_mask.sum(-1), scored.components, dropped)


def log_train_step(run: RunContext, step: int, tb: TrainBatch, stats: dict[str, float], beta: float,
                   **extra: Any) -> None:
    """One metrics.jsonl row: the batch (P·K completions), reward (total, each component), KL, lengths, equal-reward
    groups, timings, tokens/s."""
    run.log(step, split="train", batch=tb.rewards.numel(), reward=tb.rewards.mean(), reward_std=tb.rewards.std(),
            kl_coef=beta, **{f"reward/{k}": torch.nanmean(v) for k, v in tb.components.items()},
            **{f"reward_std/{k}": _nanstd(v) for k, v in tb.components.items()}, **stats,
            completion_len=tb.lengths.float().mean(), reward_dropped=tb.dropped,
            equal_reward_groups=(tb.rewards.amax(-1) == tb.rewards.amin(-1)).float().mean(), **extra,
            tokens_per_s=float(tb.lengths.sum()) / extra["time_generate"])


def _nanstd(v: torch.Tensor) -> float:
    """The sample standard deviation of the values that are not NaN (a component with no opinion gives NaN)."""
    kept = v[~torch.isnan(v)].double()
    return float(kept.std()) if kept.numel() > 1 else 0.0


def log_samples(run: RunContext, step: int, ro: Rollout, scored: Any, k: int) -> None:
    """samples.jsonl: the first prompt's K completions, each with its total reward and every component's."""
    for i in range(min(k, len(ro.prompts))):
        parts = {name: None if torch.isnan(v[i]) else float(v[i]) for name, v in scored.components.items()}
        run.log_sample(step, prompt=ro.prompts[i], completion=ro.completions[i], reward=float(scored.total[i]),
                       rewards=parts)


EVAL_METRICS = ("reward", "length_words", "distinct_1", "distinct_2", "kl", "kl_greedy", "ref_perplexity")
EVAL_SEED_OFFSET = 7919  # evaluation's draws come from seed + this, never from training's random stream


@torch.no_grad()
def evaluate(run: RunContext, model: Any, tok: Any, reward: CombinedReward, prompts: list[str], gen: GenSettings,
             step: int, max_prompt: int = 10**9, rows: int = 0, samples: int = 0,
             reference: Callable[[], Any] | None = None) -> dict[str, float]:
    """Held-out completions, greedy (`samples=0`) or `samples` per prompt sampled at gen's temperature with the
    same draws at every evaluation (a generator seeded from the run's seed; training's random state is left as
    it was), so evaluations differ only by the policy. Metrics: reward, length, distinct-1/2, and against the
    reference (LoRA: the adapter disabled; full fine-tuning: `reference`, the run's frozen copy, a context factory
    as `setup_reference` makes; none without either) the KL per token on those tokens (`kl_greedy`: Σ(log π − log π_ref)/n;
    or `kl`, sampled: the k3 estimate of KL(π‖π_ref) between the policy and the reference at gen's temperature,
    unbiased when neither top-k nor top-p truncates the sampling) and their perplexity under the reference,
    exp(−mean log π_ref) at temperature 1. `rows`: rows per pass (0 = all). Under several processes each
    evaluates a contiguous share of the prompts, with the draws one process would give them, and the metrics are
    over every share (the same on every process)."""
    net, greedy, acc = run.accelerator.unwrap_model(model), samples == 0, run.accelerator
    device, k = next(net.parameters()).device, samples or 1
    rows = max(k, rows // k * k) if rows else 0  # whole prompt groups per pass
    share = row_share(acc, len(prompts))  # None: one process, or fewer prompts than processes (each does all)
    accel = device.type != "cpu"  # its generator is forked (and restored) too: the draws are made on the device
    with torch.random.fork_rng(devices=[device] if accel else [], device_type=device.type if accel else "cuda"):
        torch.manual_seed(run.seed + EVAL_SEED_OFFSET)
        ro = sample(net, tok, prompts, k, gen, max_prompt, greedy=greedy, rows=rows, only=share)
    part = {"prompts": ro.prompts, "completions": ro.completions,  # rewards raw: comparable across evaluations
            "rewards": reward.unnormalized(ro.prompts, ro.completions).total.tolist()}
    ref = net.disable_adapter if hasattr(net, "disable_adapter") else reference
    if ref is not None:
        mask, temperature = ro.completion_mask, 1.0 if greedy else gen.temperature
        # As π was sampled, and (for the perplexity, the reference model's own) untempered: one reference pass.
        temps = (temperature,) if temperature == 1.0 else (temperature, 1.0)
        ref_at = reference_logprobs_at(net, ref, ro, temps, rows)  # (B, T) per temperature
        # Greedy tokens are not samples of π: their log-ratio is reported as it is. Sampled tokens give k3, an
        # unbiased estimate of KL(π‖π_ref) that is never negative (k1 can be, on few samples).
        kl = ro.logprobs - ref_at[0] if greedy else kl_k3(ro.logprobs, ref_at[0])  # (B, T)
        ref_logp = ref_at[-1]  # (B, T) at temperature 1
        part |= {"tokens": float(mask.sum()), "kl": float(masked_sum(kl, mask)), "ref": float(masked_sum(ref_logp, mask))}
    m = _eval_metrics(_gather_shares(acc, part) if share is not None else part, greedy)
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


def _eval_metrics(whole: dict[str, Any], greedy: bool) -> dict[str, float]:
    """The held-out metrics of all completions: reward, length and distinct-n; KL per token and the reference's
    perplexity when the reference was measured."""
    words = [c.split() for c in whole["completions"]]
    m = {"reward": sum(whole["rewards"]) / len(whole["rewards"]), "length_words": sum(map(len, words)) / len(words),
         "distinct_1": _distinct(words, 1), "distinct_2": _distinct(words, 2)}
    if "tokens" in whole:
        n = max(whole["tokens"], 1.0)
        m["kl_greedy" if greedy else "kl"] = whole["kl"] / n
        m["ref_perplexity"] = math.exp(-whole["ref"] / n)
    return m


class HeldOut:
    """A run's held-out evaluations and its best policy so far by rl.best_metric, kept in checkpoints/best. The first
    evaluation is the starting policy's, which is the first best: checkpoints/best exists even if nothing beats it."""

    def __init__(self, run: RunContext, model: Any, tok: Any, head: Any, rl: Any,
                 evaluate_at: Callable[[int], dict[str, float]]) -> None:
        self.run, self.model, self.tok, self.head, self.rl, self.evaluate_at = run, model, tok, head, rl, evaluate_at
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.best = float("-inf") if rl.best_mode == "max" else float("inf")

    def due(self, step: int) -> bool:
        return bool(self.rl.eval_every and step % self.rl.eval_every == 0) or step == self.rl.steps

    def evaluate(self, step: int) -> None:
        """Evaluate the policy now; when rl.best_metric improved, save it in checkpoints/best and log a `best` row."""
        self.last = self.evaluate_at(step)
        self.first = self.first or self.last
        value, metric = self.last[self.rl.best_metric], self.rl.best_metric
        if value > self.best if self.rl.best_mode == "max" else value < self.best:
            save_policy(self.run, self.model, self.tok, self.head, "best")
            self.run.log(step, split="best", **{metric: value})
            self.best = value

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "eval_start": self.first, "eval": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.first, self.last = state["best"], state["eval_start"], state["eval"]


def _distinct(words: list[list[str]], n: int) -> float:
    grams = [tuple(w[i:i + n]) for w in words for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def save_policy(run: RunContext, model: Any, tok: Any, head: Any = None, name: str = "final") -> None:
    """Weights (adapter only with LoRA) as safetensors, with the tokenizer (and PPO's value head)."""
    if run.is_main:
        out = run.checkpoints / name
        run.accelerator.unwrap_model(model).save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        if head is not None:
            from safetensors.torch import save_file
            save_file(head.state_dict(), str(out / "value_head.safetensors"))
