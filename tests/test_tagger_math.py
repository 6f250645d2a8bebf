"""The tagger's math: BIO transitions, Viterbi and constrained sampling against brute force, sequence log-probs
that sum to one, the `expected` gradient against the Monte-Carlo average of REINFORCE gradients."""
from __future__ import annotations

import itertools

import pytest
import torch

from rewardtune.algorithms.tagging import (bio_transitions, expected_token_reward, greedy_tags, sample_tags,
                                           self_critical, sequence_logprob, viterbi)
from rewardtune.rewards import build_rewards
from rewardtune.train.rl_tagger import REWARDS, Step, TaggerRLSettings, expected, sampled

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def _valid(seq: list[int], tr) -> bool:
    return bool(tr.start[seq[0]]) and all(bool(tr.allowed[a, b]) for a, b in zip(seq, seq[1:]))


def test_the_tagger_module_is_a_policy_kind():
    from rewardtune.policies import tagger
    from rewardtune.policies.protocol import PolicyKind

    assert isinstance(tagger, PolicyKind)


def test_bio_transitions_by_hand():
    tr = bio_transitions(TAGS)
    assert tr.start.tolist() == [True, True, False, True, False]  # I- never opens a sentence
    assert tr.allowed[:, 2].tolist() == [False, True, True, False, False]  # I-LOC only after B-LOC or I-LOC
    assert tr.allowed[:, 0].all() and tr.allowed[:, 3].all()  # O and B- follow anything


def test_viterbi_is_the_best_allowed_path_and_respects_padding():
    torch.manual_seed(0)
    tr = bio_transitions(TAGS)
    logp = torch.log_softmax(torch.randn(4, 3, 5), -1)  # (b, W, A)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    got = viterbi(logp, mask, tr)
    for i in range(4):
        n = int(mask[i].sum())
        paths = [p for p in itertools.product(range(5), repeat=n) if n == 0 or _valid(list(p), tr)]
        best = max(paths, key=lambda p: sum(float(logp[i, w, t]) for w, t in enumerate(p)))
        assert got[i, :n].tolist() == list(best) and (got[i, n:] == 0).all()
    assert torch.equal(greedy_tags(logp, mask), torch.where(mask, logp.argmax(-1), 0))
    assert viterbi(logp[:, :0], mask[:, :0], tr).shape == (4, 0)


def test_constrained_sequence_logprobs_are_a_distribution_over_allowed_paths():
    torch.manual_seed(1)
    tr = bio_transitions(TAGS)
    logp = torch.log_softmax(torch.randn(1, 3, 5), -1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    allowed = [p for p in itertools.product(range(5), repeat=3) if _valid(list(p), tr)]
    tags = torch.tensor(allowed)[None]  # (1, K, 3): every allowed path
    total = sequence_logprob(logp, tags, mask, tr).exp().sum()
    assert total == pytest.approx(1.0, abs=1e-5)  # q sums to one over the allowed paths
    every = torch.tensor(list(itertools.product(range(5), repeat=3)))[None]
    assert sequence_logprob(logp, every, mask).exp().sum() == pytest.approx(1.0, abs=1e-5)  # and π over all paths
    # unconstrained: the sum of the words' log-probs, padded words left out: log π_0(1) + log π_1(2)
    two = sequence_logprob(logp, torch.tensor([[[1, 2, 4]]]), torch.tensor([[True, True, False]]))
    assert two.item() == pytest.approx((logp[0, 0, 1] + logp[0, 1, 2]).item())


def test_constrained_samples_are_valid_and_follow_q():
    torch.manual_seed(2)
    tr = bio_transitions(TAGS)
    logp = torch.log_softmax(torch.randn(1, 2, 5), -1)
    mask = torch.ones(1, 2, dtype=torch.bool)
    tags = sample_tags(logp, 20000, mask, tr)  # (1, K, 2)
    assert all(_valid(seq, tr) for seq in tags[0].tolist())
    path = tags[0, 0][None, None]  # one drawn path's frequency against its q
    freq = (tags[0] == tags[0, 0]).all(-1).float().mean()
    q = sequence_logprob(logp, path, mask, tr).exp().item()
    assert abs(freq.item() - q) < 4 * (q * (1 - q) / 20000) ** 0.5 + 1e-3
    padded = sample_tags(logp, 3, torch.tensor([[True, False]]), tr)
    assert (padded[..., 1] == 0).all()


def test_expected_token_reward_and_self_critical_by_hand():
    # one sentence, two words, two tags: π_0 = (0.5, 0.5), π_1 = (0.25, 0.75); gold tags 0 and 1;
    # E[(1/2)(1[y0=0] + 1[y1=1])] = (0.5 + 0.75) / 2 = 0.625
    logp = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))
    rewards = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert expected_token_reward(logp, rewards, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(0.625)
    assert expected_token_reward(logp, rewards, torch.tensor([[True, False]])).item() == pytest.approx(0.5)
    assert self_critical(torch.tensor([[1.0, 0.5]]), torch.tensor([0.5])).tolist() == [[0.5, 0.0]]


def _step(logits, mask, gold, estimator, k=0, baseline="none"):
    reward = build_rewards(["token_accuracy"], registry=REWARDS)
    words = [["w"] * int(n) for n in mask.sum(-1)]
    rl = TaggerRLSettings(estimator=estimator, samples=k, baseline=baseline)
    return Step(logits, mask, gold, words, TAGS, reward, rl, None)


def test_expected_gradient_equals_the_monte_carlo_average_of_reinforce_gradients():
    """R(y) = token accuracy = (1/n) Σ_w 1[y_w = gold_w], whose exact E_π is what `expected` maximises. Each sample's
    REINFORCE gradient w.r.t. the logits is −(1/b)·R(y)·(onehot(y) − π) per word; their mean must match the exact
    gradient within 5 standard errors (from the K samples' spread) everywhere."""
    torch.manual_seed(3)
    b, w, k = 2, 3, 20000
    logits = torch.randn(b, w, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    gold = torch.tensor([[0, 1, 2], [3, 4, 0]])
    loss, _ = expected(_step(logits, mask, gold, "expected"))
    (exact,) = torch.autograd.grad(loss, logits)
    loss, stats = sampled(_step(logits, mask, gold, "reinforce", k))
    (mc,) = torch.autograd.grad(loss, logits)
    # the spread of the per-sample gradients, recomputed from fresh samples of the same policy
    probs = torch.softmax(logits.detach(), -1)
    tags = sample_tags(torch.log(probs), k, mask)  # (b, K, W)
    acc = ((tags == gold[:, None]) & mask[:, None]).sum(-1) / mask.sum(-1)[:, None]  # (b, K)
    per = -(acc[..., None, None] * (torch.nn.functional.one_hot(tags, 5) - probs[:, None])) / b  # (b, K, W, A)
    se = per.std(1) / k ** 0.5  # (b, W, A)
    assert ((mc - exact).abs() <= 5 * se + 1e-6).all(), (mc - exact).abs().max()
    assert exact[1, 2].abs().sum() == 0 and mc[1, 2].abs().sum() == 0  # a padded word gets no gradient
    assert stats["reward"].item() == pytest.approx(float(acc.mean()), abs=0.02)
