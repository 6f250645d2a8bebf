"""Rollout sampling: truncation by hand, inverse-CDF draws against softmax, HF's warpers as reference."""
import math

import pytest
import torch

from rewardtune.policies.sampling import TokenSampler, inverse_cdf_sample, truncate

NEG = float("-inf")


def test_top_k_keeps_the_k_largest():
    z = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert truncate(z, top_k=2).tolist() == [[NEG, 3.0, 2.0, NEG]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    # probabilities 0.5, 0.3, 0.15, 0.05; mass ranked above each: 0, 0.5, 0.8, 0.95
    z = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(truncate(z, top_p=0.7)).tolist() == [[True, True, False, False]]  # 0.5 < 0.7 ≤ 0.8
    assert torch.isfinite(truncate(z, top_p=0.5)).tolist() == [[True, False, False, False]]  # 0.5 ≥ 0.5
    assert torch.isfinite(truncate(z, top_p=0.99)).tolist() == [[True] * 4]  # 0.95 < 0.99


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.9), (7, 0.6), (0, 0.3)])
def test_truncation_matches_transformers_warpers(top_k, top_p):
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 50, generator=g) * 3
    ref = z
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    assert torch.equal(torch.isfinite(truncate(z, top_k, top_p)), torch.isfinite(ref))


def test_inverse_cdf_draws_follow_softmax_and_never_pick_masked_tokens():
    torch.manual_seed(0)
    z = torch.tensor([0.0, 1.0, 2.0, NEG, 0.5])
    n = 40_000
    draws = inverse_cdf_sample(z.expand(n, -1))
    freq = torch.bincount(draws, minlength=5).float() / n
    p = z.softmax(-1)  # 0.0897, 0.2438, 0.6628, 0, 0.1479 (e^z / 7.4587 with e^.5 = 1.6487)
    assert freq[3] == 0
    # binomial standard error ≤ sqrt(0.25 / 40000) = 0.0025; 5 s.e. ≈ 0.0125
    assert torch.allclose(freq, p, atol=0.0125), (freq, p)


def test_sampler_greedy_takes_argmax_and_records_log_softmax():
    z = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    s = TokenSampler(temperature=0.5, greedy=True)  # greedy ignores the temperature
    out = s(None, z)
    assert out.argmax(-1).tolist() == [1, 2]
    assert torch.isinf(out).sum() == 4  # only the chosen entry per row is finite
    # log softmax([1, 3, 2])[1] = 3 − log(e + e³ + e²) = 3 − 3.4076 = −0.4076
    assert s.stacked()[0, 0].item() == pytest.approx(3 - math.log(math.e + math.e ** 3 + math.e ** 2), abs=1e-6)


def test_sampler_logprob_is_under_the_tempered_untruncated_policy():
    torch.manual_seed(1)
    z = torch.randn(4, 10)
    s = TokenSampler(temperature=0.7, top_k=3)
    token = s(None, z).argmax(-1)  # (4,)
    expect = (z / 0.7).log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
    assert torch.allclose(s.stacked()[:, 0], expect)
    top3 = z.topk(3, dim=-1).indices
    assert all(t in row for t, row in zip(token.tolist(), top3.tolist()))  # drawn from the top 3 only
