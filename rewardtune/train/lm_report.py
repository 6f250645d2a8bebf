"""What a generative-RL run reports of each step: the metrics.jsonl row (over every process's share of the
batch), and samples.jsonl. Held-out evaluation is in `lm_eval.py`, the best policy's keeping in `heldout.py`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..collectives import gather_to_cpu, over_processes
from ..policies.causal_lm import Rollout
from ..run import RunContext


@dataclass
class TrainBatch:
    """What a train row reports of one step's completions: this process's, or every process's (`global_batch`)."""

    rewards: torch.Tensor  # (P, K) the rewards the advantages used (normalised as configured)
    lengths: torch.Tensor  # (B,) completion tokens
    components: dict[str, torch.Tensor]  # each (B,): a reward function's raw values, NaN where it had no opinion
    dropped: int  # samples whose reward failed (reward.on_error=skip)

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


def global_batch(run: RunContext, tb: TrainBatch, stats: dict[str, float]) -> tuple[TrainBatch, dict[str, float]]:
    """Every process's rewards, lengths and reward components in rank order, their dropped samples summed, and each
    statistic's mean over processes (each is a share whose mean is the global value: see
    `collectives.token_mean_shares`)."""
    gather, row = gather_to_cpu(run.accelerator), over_processes(run, {**stats, "reward_dropped": float(tb.dropped)})
    dropped = int(row.pop("reward_dropped"))
    return TrainBatch(gather(tb.rewards), gather(tb.lengths), {k: gather(v) for k, v in tb.components.items()},
                      dropped), row
