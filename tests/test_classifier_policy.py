"""The label classifier's policy pieces (rewardtune/policies/classifier.py) against their definitions."""
from __future__ import annotations

import torch

from rewardtune.policies import classifier
from rewardtune.policies.protocol import PolicyKind


def test_the_classifier_module_provides_every_piece_of_a_policy_kind():
    assert isinstance(classifier, PolicyKind)


def test_sampled_labels_carry_their_log_probs_under_the_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, requires_grad=True)  # (b, A)
    actions, logp = classifier.sample(logits, 5)  # (b, K) each
    assert actions.shape == logp.shape == (3, 5) and logp.requires_grad
    assert torch.equal(logp, torch.log_softmax(logits, -1).gather(-1, actions))
    assert torch.equal(classifier.logprobs(logits, actions), logp)
    assert classifier.action_texts(actions[:, :1], ["a", "b", "c", "d"]) == ["abcd"[a] for a in actions[:, 0].tolist()]


def test_kl_and_entropy_are_exact_over_the_label_set():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    logp = classifier.label_logprobs(logits)
    assert torch.allclose(classifier.kl(logp, logp), torch.zeros(2))
    assert torch.allclose(classifier.entropy(logits)[0], torch.log(torch.tensor(2.0)))
    uniform = torch.log(torch.full((2, 2), 0.5))
    assert torch.allclose(classifier.kl(logp, uniform), (logp.exp() * (logp - uniform)).sum(-1))
    assert torch.equal(classifier.every_label(logits), torch.tensor([[0, 1], [0, 1]]))
