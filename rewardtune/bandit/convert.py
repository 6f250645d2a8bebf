"""Supervised-to-bandit conversion (Swaminathan & Joachims 2015): a labelled text set becomes a bandit log.

A logging policy μ (a weak classifier's probabilities, with softmax-temperature or ε-greedy exploration) picks one
label per text; the reward is 1 when it is the gold label, 0 otherwise; μ's probability of the pick is logged as the
propensity. The gold label itself is not written: a learner sees only the feedback on the action taken.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data import DataError, Examples


def softmax_exploration(probs: torch.Tensor, temperature: float = 1.0, epsilon: float = 0.0) -> torch.Tensor:
    """μ(a|x) ∝ p(a|x)^(1/τ): (N, A) → (N, A). τ = 1 samples from the classifier; larger τ flattens it."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(torch.log(probs.double().clamp_min(1e-30)) / temperature, dim=-1)


def epsilon_greedy_exploration(probs: torch.Tensor, temperature: float = 1.0, epsilon: float = 0.1) -> torch.Tensor:
    """μ(a|x) = (1 − ε)·1[a = argmax p(·|x)] + ε/A: (N, A) → (N, A)."""
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"epsilon must be in (0, 1] (every action needs a positive propensity), got {epsilon}")
    n, a = probs.shape
    greedy = torch.nn.functional.one_hot(probs.argmax(-1), a).double()  # (N, A)
    return (1.0 - epsilon) * greedy + epsilon / a


EXPLORATION: dict[str, Callable[..., torch.Tensor]] = {
    "softmax": softmax_exploration, "epsilon": epsilon_greedy_exploration,
}


def sample_log(mu: torch.Tensor, labels: Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One action per row from μ (N, A), seeded: actions (N,), propensities μ(a_i|x_i) (N,), rewards 1[a_i = y_i]."""
    gen = torch.Generator().manual_seed(seed)
    actions = torch.multinomial(mu.float(), 1, generator=gen).squeeze(-1)  # (N,)
    prop = mu.gather(-1, actions[:, None]).squeeze(-1)  # (N,)
    reward = (actions == torch.as_tensor(list(labels))).double()  # (N,)
    return actions, prop, reward


def logging_accuracy(mu: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """The logging policy's expected accuracy E_μ[1[a = y]] and its greedy accuracy, on these rows."""
    y = torch.as_tensor(list(labels))
    expected = mu.gather(-1, y[:, None]).mean().item()
    return {"logging_expected_accuracy": expected, "logging_greedy_accuracy": (mu.argmax(-1) == y).double().mean().item()}


def write_log(path: str | Path, texts: Sequence[str], actions: torch.Tensor, prop: torch.Tensor, reward: torch.Tensor,
              names: Sequence[str]) -> None:
    """JSON lines {text, action, reward, propensity}, written to a temporary file first (nothing half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for t, a, p, r in zip(texts, actions.tolist(), prop.tolist(), reward.tolist()):
            fh.write(json.dumps({"text": t, "action": names[a], "reward": r, "propensity": p}) + "\n")
    tmp.replace(path)


def label_indices(ex: Examples, names: Sequence[str]) -> list[int]:
    """The examples' labels as indices into the logging policy's label set `names` (a label it lacks is an error)."""
    index = {n: i for i, n in enumerate(names)}
    missing = sorted({ex.label_names[y] for y in ex.labels or []} - set(index))
    if missing:
        raise DataError(f"{ex.source}: label(s) {', '.join(missing[:5])} are not among the logging policy's labels "
                        f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); train it on this label set")
    return [index[ex.label_names[y]] for y in ex.labels or []]


def convert(ex: Examples, probs: torch.Tensor, names: Sequence[str], out: str | Path, exploration: str = "softmax",
            temperature: float = 1.0, epsilon: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Write the bandit log of `ex` under the logging policy's probabilities (N, A); return its summary."""
    labels = label_indices(ex, names)
    mu = EXPLORATION[exploration](probs, temperature, epsilon)  # (N, A)
    actions, prop, reward = sample_log(mu, labels, seed)
    write_log(out, ex.texts, actions, prop, reward, names)
    return {"rows": len(ex), "out": str(out), "mean_reward": reward.mean().item(),
            "min_propensity": prop.min().item(), **logging_accuracy(mu, labels)}
