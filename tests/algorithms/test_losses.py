"""Hand-computed cases for rewardtune.algorithms.losses (arithmetic in the comments)."""

import math

import pytest
import torch

from rewardtune.algorithms import losses

F64 = torch.float64
E = math.e


def t(data):
    return torch.tensor(data, dtype=F64)


def leaf(data):
    return t(data).requires_grad_()


def close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual, t(expected), rtol=0, atol=atol)


# ---------------------------------------------------------------- pg_loss


def test_pg_loss_sequence_advantage_by_hand():
    logp = leaf([[math.log(0.5), math.log(0.25)]])
    loss, stats = losses.pg_loss(logp, t([2.0]), torch.ones(1, 2))
    close(loss, -2.0)  # value -(2 + 2) / 2: the on-policy surrogate -mean(A)
    loss.backward()
    close(logp.grad, [[-1.0, -1.0]])  # d/dlogp of -(1/2) sum A log p = -A / 2
    close(stats.advantage_mean, 2.0)
    close(stats.logprob_mean, (math.log(0.5) + math.log(0.25)) / 2)


def test_pg_loss_token_advantages_by_hand():
    logp = leaf([[-1.0, -2.0]])
    loss, _ = losses.pg_loss(logp, t([[1.0, 3.0]]), torch.ones(1, 2))
    close(loss, -2.0)  # -(1 + 3) / 2
    loss.backward()
    close(logp.grad, [[-0.5, -1.5]])  # -A_t / 2


def test_pg_loss_aggregations_by_hand():
    mask = torch.tensor([[1, 1], [1, 0]])  # 3 valid tokens
    a = t([1.0, -1.0])
    logp = leaf([[-1.0, -1.0], [-1.0, -1.0]])
    loss, _ = losses.pg_loss(logp, a, mask, "token_mean")
    close(loss, -1 / 3)  # -(1 + 1 - 1) / 3
    loss.backward()
    close(logp.grad, [[-1 / 3, -1 / 3], [1 / 3, 0.0]])  # -A / 3, 0 where masked
    logp.grad = None
    loss, _ = losses.pg_loss(logp, a, mask, "seq_mean_token_mean")
    close(loss, 0.0)  # (-(1 + 1) / 2 + 1 / 1) / 2
    loss.backward()
    close(logp.grad, [[-0.25, -0.25], [0.5, 0.0]])  # row 0: -1 / (2 * 2); row 1: +1 / (2 * 1)


def test_pg_loss_gradient_equals_classic_minus_a_log_pi():
    # independent form: L = -mean_t A log pi (value differs, gradient must not)
    torch.manual_seed(0)
    logp = leaf(torch.randn(3, 4).tolist())
    a = torch.randn(3, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    losses.pg_loss(logp, a, mask)[0].backward()
    classic = leaf(logp.detach().tolist())
    (-(a[:, None] * classic * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(logp.grad, classic.grad)


# ---------------------------------------------------------------- clipped_surrogate


def surrogate(logp, advantage, **kw):
    logp = leaf([[logp]])
    loss, stats = losses.clipped_surrogate(logp, t([[0.0]]), t([advantage]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss, stats, logp.grad


def test_ppo_ratio_e_positive_advantage_is_clipped():
    # ratio = e^(1 - 0) = 2.718 > 1.2; A = +1: max(-e, -1.2) = -1.2, no gradient
    loss, stats, grad = surrogate(1.0, 1.0, eps_low=0.2)
    close(loss, -1.2)
    close(grad, [[0.0]])
    close(stats.clip_frac, 1.0)
    close(stats.ratio_mean, E)
    close(stats.approx_kl, E - 2)  # k3(old || new): log r = 1, (e - 1) - 1


def test_ppo_ratio_e_negative_advantage_is_not_clipped():
    # A = -1: max(+e, +1.2) = e; gradient d(-A e^logp)/dlogp = e
    loss, stats, grad = surrogate(1.0, -1.0, eps_low=0.2)
    close(loss, E)
    close(grad, [[E]])
    close(stats.clip_frac, 0.0)


def test_dual_clip_caps_negative_advantage():
    # as above but capped by the dual clip: min(e, -c A) = min(2.718, 2) = 2, no gradient
    loss, stats, grad = surrogate(1.0, -1.0, eps_low=0.2, dual_clip=2.0)
    close(loss, 2.0)
    close(grad, [[0.0]])
    close(stats.dual_clip_frac, 1.0)
    with pytest.raises(ValueError, match="> 1"):
        surrogate(1.0, -1.0, dual_clip=0.5)


def test_ppo_small_ratio():
    r = math.exp(-1)  # 0.3679 < 0.8
    loss, _, _ = surrogate(-1.0, 1.0)  # A = +1: max(-0.3679, -0.8) = -0.3679 (pessimistic)
    close(loss, -r)
    loss, stats, grad = surrogate(-1.0, -1.0)  # A = -1: max(0.3679, 0.8) = 0.8, clipped
    close(loss, 0.8)
    close(grad, [[0.0]])
    close(stats.clip_frac, 1.0)


def test_dapo_clip_higher():
    # ratio 1.25, A = +1: symmetric eps 0.2 clips at -1.2; eps_high 0.28 leaves -1.25
    loss, _, _ = surrogate(math.log(1.25), 1.0, eps_low=0.2)
    close(loss, -1.2)
    loss, stats, grad = surrogate(math.log(1.25), 1.0, eps_low=0.2, eps_high=0.28)
    close(loss, -1.25)
    close(grad, [[-1.25]])  # -A * ratio
    close(stats.clip_frac, 0.0)


# ---------------------------------------------------------------- value_loss


def test_value_loss_by_hand():
    values = leaf([[2.0, 1.1]])
    old, returns = t([[1.0, 1.0]]), t([[3.0, 0.0]])
    loss, stats = losses.value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    # token 0: (2 - 3)^2 = 1; clipped V = 1 + 0.2 = 1.2, (1.2 - 3)^2 = 3.24 -> max 3.24
    # token 1: V - V_old = 0.1 inside the clip -> (1.1 - 0)^2 = 1.21 both ways
    # loss = 0.5 * (3.24 + 1.21) / 2 = 1.1125
    close(loss, 1.1125)
    close(stats.clip_frac, 0.5)
    close(stats.value_mean, 1.55)
    loss.backward()
    close(values.grad, [[0.0, 0.55]])  # clipped token: no gradient; 0.5 * 2 * 1.1 / 2


def test_value_loss_unclipped_by_hand():
    # 0.5 * ((2 - 3)^2 + (1.1 - 0)^2) / 2 = 0.5 * 2.21 / 2 = 0.5525
    values, old, returns = t([[2.0, 1.1]]), t([[1.0, 1.0]]), t([[3.0, 0.0]])
    loss, _ = losses.value_loss(values, old, returns, torch.ones(1, 2), clip_eps=None)
    close(loss, 0.5525)


# ---------------------------------------------------------------- bradley_terry_loss


def test_bradley_terry_by_hand():
    chosen, rejected = leaf([2.0, 0.0]), t([0.0, 0.0])
    loss, stats = losses.bradley_terry_loss(chosen, rejected)
    # -log sigma(2) = log(1 + e^-2) = 0.126928; -log sigma(0) = log 2 = 0.693147
    close(loss, (math.log1p(math.exp(-2)) + math.log(2)) / 2)  # 0.410038
    close(stats.accuracy, 0.5)  # the tie counts as wrong
    close(stats.margin, 1.0)  # (2 + 0) / 2
    loss.backward()
    # d/dc -log sigma(d) / N = -(1 - sigma(d)) / 2: sigma(2) = 0.880797, sigma(0) = 0.5
    close(chosen.grad, [-(1 - 1 / (1 + math.exp(-2))) / 2, -0.25])


def test_bradley_terry_margin_by_hand():
    # margin 1: d - m = [1, -1]; (log(1 + e^-1) + log(1 + e)) / 2 = (0.313262 + 1.313262) / 2
    loss, stats = losses.bradley_terry_loss(t([2.0, 0.0]), t([0.0, 0.0]), margin=t([1.0, 1.0]))
    close(loss, (math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2)
    close(stats.margin, 1.0)  # the reported margin is r_chosen - r_rejected, not shifted


# ---------------------------------------------------------------- centring_penalty


def test_centring_penalty_by_hand_on_one_process():
    r = leaf([1.0, 2.0, 6.0])
    pen = losses.centring_penalty(r, r.mean())
    close(pen, 9.0)  # mean 3, squared
    pen.backward()
    close(r.grad, [2.0, 2.0, 2.0])  # d(mean²)/dr_i = 2 · 3 / 3


def test_centring_penalty_over_two_weighted_shares_is_the_whole_batch_gradient():
    # What DDP computes: each process's penalty × its weight world·n_p/N, gradients averaged over processes.
    r = leaf([1.0, 2.0, 6.0, -1.0, 4.0])
    whole = torch.autograd.grad(r.mean() ** 2, r)[0]  # 2 · 2.4 / 5 = 0.96 each
    close(whole, [0.96] * 5)
    m = r.detach().mean()  # what the all-reduce of (sum, count) gives every process
    shards, world = (r[:3], r[3:]), 2
    total = sum(losses.centring_penalty(s, m) * world * len(s) / 5 for s in shards) / world
    close(total, 2.4 ** 2)
    close(torch.autograd.grad(total, r)[0], whole)


# ---------------------------------------------------------------- expected_reward_loss


def test_expected_reward_loss_by_hand():
    logits = leaf([[0.0, math.log(3)]])  # pi = [1/4, 3/4]
    rewards = t([[1.0, 0.0]])
    loss, stats = losses.expected_reward_loss(logits, rewards)
    close(loss, -0.25)  # -(0.25 * 1 + 0.75 * 0)
    close(stats.expected_reward, 0.25)
    close(stats.entropy, 0.5623351446)  # 0.25 ln 4 + 0.75 ln(4/3)
    loss.backward()
    # d/dz_j sum pi R = pi_j (R_j - sum pi R) = [0.25 * 0.75, 0.75 * (-0.25)]; loss negates
    close(logits.grad, [[-0.1875, 0.1875]])


def test_expected_reward_loss_baseline_moves_value_not_gradient():
    logits = leaf([[0.0, math.log(3)]])
    loss, _ = losses.expected_reward_loss(logits, t([[1.0, 0.0]]), baseline=t([0.5]))
    close(loss, 0.25)  # -(0.25 * 0.5 + 0.75 * (-0.5)) = -(0.125 - 0.375)
    loss.backward()
    close(logits.grad, [[-0.1875, 0.1875]])  # same as without a baseline
    scalar, _ = losses.expected_reward_loss(logits, t([[1.0, 0.0]]), baseline=0.5)
    close(scalar, 0.25)
