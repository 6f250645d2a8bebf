"""What a trainer asks of a policy kind, named once: a module of functions satisfies `PolicyKind` (PEP 544).

The pieces are named by role; their arguments differ by kind (a classifier acts on its logits for a batch, a
causal LM decodes from prompts), so each member is typed by what it returns and its docstring by what it means.
`rewardtune.policies.classifier` provides every piece under these names (tests/test_classifier_policy.py checks);
see the package docstring for the causal LM's equivalents.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class PolicyKind(Protocol):
    """The pieces of one kind of policy π(a|x) that a reward-driven trainer needs.

    sample: draw K actions per input with log π of each (the rollout's log π_old), → (actions, log π (b, K)).
    logprobs: log π(a|x) of given actions, with gradient (the update's log π).
    reference_logprobs: log π_ref under the reference (initial) policy, no gradient (the KL term).
    kl: KL(π || π_ref) per input, exact where the action set allows, with gradient through π.
    entropy: H(π(·|x)) per input, with gradient (the entropy bonus).
    action_texts: what each action reads as, for the rewards (a label's name, a completion).
    """

    sample: Callable[..., tuple[Any, torch.Tensor]]
    logprobs: Callable[..., torch.Tensor]
    reference_logprobs: Callable[..., torch.Tensor]
    kl: Callable[..., torch.Tensor]
    entropy: Callable[..., torch.Tensor]
    action_texts: Callable[..., list[str]]
