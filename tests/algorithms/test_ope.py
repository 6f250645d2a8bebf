"""Off-policy estimators and losses (algorithms/ope.py): hand-computed values, IPS's unbiasedness on a simulated
bandit, intervals, and the direction of each loss's gradient."""
from __future__ import annotations

import math

import pytest
import torch

from rewardtune.algorithms.ope import (OFF_POLICY_LOSSES, OPE_ESTIMATORS, LoggedBatch, OffPolicyData,
                                       bootstrap_interval, dr_terms, effective_sample_size, importance_weights,
                                       ips_terms, normal_interval, normal_quantile, snips_terms)

# Four logged rows: π(a_i|x_i) = [0.5, 1, 0, 0.25], p_i = [0.25, 0.5, 0.5, 0.25] → w = [2, 2, 0, 1]; r = [1, 0, 1, 1].
TARGET = torch.tensor([0.5, 1.0, 0.0, 0.25], dtype=torch.float64)
PROP = torch.tensor([0.25, 0.5, 0.5, 0.25], dtype=torch.float64)
REWARD = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
Q_LOGGED = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)  # q̂(x_i, a_i)
Q_TARGET = torch.tensor([0.6, 0.2, 0.4, 0.8], dtype=torch.float64)  # Σ_a π(a|x_i) q̂(x_i, a)


def data(clip: float = 0.0) -> OffPolicyData:
    return OffPolicyData(importance_weights(TARGET, PROP, clip), REWARD, Q_LOGGED, Q_TARGET)


def test_hand_computed_ips_snips_dr():
    d = data()
    assert d.w.tolist() == [2.0, 2.0, 0.0, 1.0]
    # IPS: (2·1 + 2·0 + 0·1 + 1·1) / 4 = 3/4
    assert ips_terms(d).mean().item() == pytest.approx(0.75)
    # SNIPS: 3 / (2 + 2 + 0 + 1) = 0.6; terms 0.6 + w(r − 0.6)/1.25 = [1.24, −0.36, 0.6, 0.92]
    assert snips_terms(d).tolist() == pytest.approx([1.24, -0.36, 0.6, 0.92])
    assert snips_terms(d).mean().item() == pytest.approx(0.6)
    # DR: q_t + w(r − q_l) = [0.6 + 2·0.5, 0.2 − 2·0.5, 0.4 + 0, 0.8 + 1·0.5] = [1.6, −0.8, 0.4, 1.3] → 2.5/4
    assert dr_terms(d).tolist() == pytest.approx([1.6, -0.8, 0.4, 1.3])
    assert dr_terms(d).mean().item() == pytest.approx(0.625)
    # clipped at M = 1.5: w = [1.5, 1.5, 0, 1] → IPS (1.5 + 1) / 4 = 0.625
    assert ips_terms(data(1.5)).mean().item() == pytest.approx(0.625)
    assert OPE_ESTIMATORS["dm"](d).mean().item() == pytest.approx(0.5)  # (0.6 + 0.2 + 0.4 + 0.8) / 4


def test_normal_interval_by_hand():
    # terms [2, 0, 0, 1]: mean 0.75, sample variance (1.25² + 0.75² + 0.75² + 0.25²)/3 = 2.75/3, se = √(2.75/3)/2
    e = normal_interval(torch.tensor([2.0, 0.0, 0.0, 1.0]))
    se = math.sqrt(2.75 / 3) / 2
    assert e.value == pytest.approx(0.75) and e.stderr == pytest.approx(se)
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-5)
    assert (e.low, e.high) == pytest.approx((0.75 - 1.959964 * se, 0.75 + 1.959964 * se), abs=1e-5)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    d = data()
    a = bootstrap_interval(d, snips_terms, samples=200, seed=3)
    assert a == bootstrap_interval(d, snips_terms, samples=200, seed=3)
    assert a[0] <= 0.6 <= a[1]


def test_effective_sample_size():
    assert effective_sample_size(torch.ones(10)) == pytest.approx(10)
    assert effective_sample_size(torch.tensor([2.0, 2.0, 0.0, 1.0])) == pytest.approx(25 / 9)  # 5² / (4 + 4 + 1)


def simulated_logs(logs: int, n: int, seed: int) -> tuple[OffPolicyData, float]:
    """`logs` logs of n rows each from a 3-context, 4-action bandit; the target policy's true value."""
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.7, 0.2, 0.4, 0.6], [0.3, 0.8, 0.1, 0.5]], dtype=torch.float64)
    mu = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    pi = torch.tensor([[0.0, 0.2, 0.8, 0.0], [0.9, 0.0, 0.0, 0.1], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    truth = (pi * q).sum(-1).mean().item()  # contexts uniform
    x = torch.randint(3, (logs * n,), generator=g)  # (M·n,)
    a = torch.multinomial(mu[x], 1, generator=g).squeeze(-1)
    r = torch.bernoulli(q[x, a], generator=g)
    return OffPolicyData(importance_weights(pi[x, a], mu[x, a]), r), truth


def test_ips_is_unbiased_on_a_simulated_bandit():
    logs, n = 4000, 20
    d, truth = simulated_logs(logs, n, seed=0)
    per_log = ips_terms(d).reshape(logs, n).mean(-1)  # (M,): one IPS estimate per log
    # The mean of M independent estimates has standard error sd/√M: 4 of them is a false alarm 1 time in 15,000.
    tolerance = 4 * per_log.std().item() / math.sqrt(logs)
    assert abs(per_log.mean().item() - truth) < tolerance
    # SNIPS is biased at n = 20 but consistent: on one long log it is close
    assert snips_terms(d).mean().item() == pytest.approx(truth, abs=0.02)


def test_normal_interval_covers_the_truth_about_as_often_as_stated():
    logs, n = 400, 400
    d, truth = simulated_logs(logs, n, seed=1)
    hits = sum(normal_interval(ips_terms(d.rows(torch.arange(i * n, (i + 1) * n)))).low <= truth <=
               normal_interval(ips_terms(d.rows(torch.arange(i * n, (i + 1) * n)))).high for i in range(logs))
    # 95% nominal; binomial sd over 400 logs ≈ 1.1%: [0.91, 0.99] is ≥ 3.5 sd either side
    assert 0.91 <= hits / logs <= 0.99


def batch(q_hat: bool = False) -> LoggedBatch:
    # two actions, uniform π_θ (logits 0): π = 0.5 everywhere; p = [0.25, 0.5] → w = [2, 1]; r = [1, 0]
    return LoggedBatch(torch.zeros(2, 2, requires_grad=True), torch.tensor([0, 1]), torch.tensor([1.0, 0.0]),
                       torch.tensor([0.25, 0.5]), torch.tensor([[0.5, 0.5], [0.2, 0.4]]) if q_hat else None)


def test_hand_computed_losses():
    assert OFF_POLICY_LOSSES["ips"](batch())[0].item() == pytest.approx(-1.0)  # −(2·1 + 1·0)/2
    assert OFF_POLICY_LOSSES["snips"](batch())[0].item() == pytest.approx(-2 / 3)  # −2 / (2 + 1)
    # BanditNet, λ = 0.5: −((1 − 0.5)·2 + (0 − 0.5)·1)/2 = −0.25
    assert OFF_POLICY_LOSSES["banditnet"](batch(), baseline=0.5)[0].item() == pytest.approx(-0.25)
    # DR: Σπq̂ = [0.5, 0.3], q̂(x, a_i) = [0.5, 0.4]: [0.5 + 2·0.5, 0.3 + 1·(0 − 0.4)] = [1.5, −0.1] → −0.7
    assert OFF_POLICY_LOSSES["dr"](batch(q_hat=True))[0].item() == pytest.approx(-0.7)
    # clipped at 1.5: IPS −(1.5·1 + 1·0)/2
    assert OFF_POLICY_LOSSES["ips"](batch(), clip=1.5)[0].item() == pytest.approx(-0.75)


def test_banditnet_pushes_probability_away_from_actions_below_the_baseline():
    b = batch()
    loss, _ = OFF_POLICY_LOSSES["banditnet"](b, baseline=0.5)
    loss.backward()
    g = b.logits.grad  # descent moves logits by −g
    assert g[0, 0] < 0 < g[0, 1]  # row 0 (r = 1 > λ): raise its action's logit
    assert g[1, 1] > 0 > g[1, 0]  # row 1 (r = 0 < λ): lower its action's logit
    b = batch()
    OFF_POLICY_LOSSES["ips"](b)[0].backward()
    assert torch.equal(b.logits.grad[1], torch.zeros(2))  # plain IPS: a zero reward teaches nothing


def test_a_clipped_weight_carries_no_gradient():
    b = batch()
    OFF_POLICY_LOSSES["ips"](b, clip=1.5)[0].backward()
    assert torch.equal(b.logits.grad[0], torch.zeros(2))  # w_0 = 2 was clipped to 1.5
