"""A sequence classifier as a policy: the action is one label of a small set, π(y|x) = softmax(logits).

Shapes: b examples, A labels, K actions per example. The label set is small, so every piece here is exact:
log-probs come from the full softmax, the KL to the reference policy and the entropy are sums over all A
labels (no estimator), and every label can be scored at once (`every_label`, for E_π[R]).
Log-probs are computed in float32 whatever the model's precision (bf16 logits would round them).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..algorithms import entropy_from_logits


def label_logits(model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The policy's scores of every label: model inputs (b, L) → logits (b, A)."""
    return model(**inputs).logits


def label_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """log π(y|x) of every label, with gradient.  logits (b, A) → (b, A)."""
    return torch.log_softmax(logits.float(), dim=-1)


def logprobs(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log π(a|x) of given labels, with gradient.  logits (b, A), actions (b, K) → (b, K)."""
    return label_logprobs(logits).gather(-1, actions)


def sample(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K labels per example drawn from π (with replacement), and their log-probs (with gradient).
    logits (b, A) → actions (b, K), log π (b, K)."""
    logp_all = label_logprobs(logits)  # (b, A)
    actions = torch.multinomial(logp_all.exp().detach(), k, replacement=True)  # (b, K)
    return actions, logp_all.gather(-1, actions)


def every_label(logits: torch.Tensor) -> torch.Tensor:
    """Each example's whole action set, to score every label (the exact E_π[R]).  logits (b, A) → actions (b, A)."""
    b, a = logits.shape
    return torch.arange(a).expand(b, a)


def epsilon_greedy(q: torch.Tensor, epsilon: float) -> torch.Tensor:
    """argmax_a Q(x, a), or a uniform label with probability ε.  q (b, A) → actions (b, 1)."""
    b, a = q.shape
    explore = torch.rand(b, 1, device=q.device) < epsilon
    return torch.where(explore, torch.randint(0, a, (b, 1), device=q.device), q.argmax(-1, keepdim=True))


def boltzmann(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sample a ~ softmax(Q(x, ·) / τ).  q (b, A) → actions (b, 1)."""
    return torch.multinomial(torch.softmax(q / temperature, -1), 1)


def action_texts(actions: torch.Tensor, label_names: Sequence[str]) -> list[str]:
    """What each action reads as for the rewards (its label's name), row-major.  actions (b, K) → b·K names."""
    return [label_names[a] for a in actions.reshape(-1).tolist()]


def reference_logprobs(model: Any, reference: Callable[[], Any], inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """log π_ref over every label, no gradient.  inputs (b, L) → (b, A).

    `reference` is `train.common.setup_reference`'s context factory: it yields a frozen copy, or nothing when the
    reference is `model` itself with its LoRA adapter disabled inside the context."""
    with torch.no_grad(), reference() as ref:
        ref_logits = label_logits(model if ref is None else ref, inputs)  # (b, A)
    return label_logprobs(ref_logits)


def kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Exact KL(π || π_ref) = Σ_y π(y|x)·(log π − log π_ref) over the label set, with gradient through π.
    log π (b, A), log π_ref (b, A) → (b,)."""
    return (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(π(·|x)) over the label set, with gradient.  logits (b, A) → (b,)."""
    return entropy_from_logits(logits.float())
