"""Hand-computed cases for rewardtune.algorithms.kl (arithmetic in the comments)."""

import math

import pytest
import torch

from rewardtune.algorithms import kl

F64 = torch.float64
LN2 = math.log(2)


def t(data):
    return torch.tensor(data, dtype=F64)


def close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual, t(expected), rtol=0, atol=atol)


def test_estimators_by_hand():
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    close(kl.kl_k1(logp, ref), [LN2])  # log(0.5 / 0.25)
    close(kl.kl_k2(logp, ref), [0.5 * LN2**2])  # 0.5 * 0.480453 = 0.240227
    close(kl.kl_k3(logp, ref), [-0.5 + LN2])  # r = 0.25 / 0.5: (0.5 - 1) - log 0.5 = 0.193147


# pi = [1/2, 1/4, 1/4], ref = [1/4, 1/2, 1/4]
PI, REF = t([0.5, 0.25, 0.25]), t([0.25, 0.5, 0.25])
# KL(pi || ref) = 0.5 ln 2 + 0.25 ln 0.5 + 0.25 ln 1 = 0.25 ln 2 = 0.173287
TRUE_KL = 0.25 * LN2


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_k1_k3_are_unbiased_exactly(name):
    # E_pi[k] summed over the three outcomes with their probabilities
    per_outcome = kl.get_kl_estimator(name)(PI.log(), REF.log())
    close((PI * per_outcome).sum(), TRUE_KL)


def test_k2_is_biased_by_hand():
    # E_pi[0.5 log^2(pi/ref)] = 0.5 * 0.5 * ln2^2 + 0.25 * 0.5 * ln2^2 = 0.375 ln2^2 = 0.180170
    close((PI * kl.kl_k2(PI.log(), REF.log())).sum(), 0.375 * LN2**2)


def test_k2_loss_gives_exact_kl_gradient_and_k1_loss_gives_none():
    # exact expectations over a finite support, so no sampling noise
    logits = t([0.3, -0.2, 0.5, 1.0]).requires_grad_()
    ref = torch.log_softmax(t([0.0, 0.4, -0.1, 0.2]), -1)
    logp = torch.log_softmax(logits, -1)
    true_kl = (logp.exp() * (logp - ref)).sum()
    (true_grad,) = torch.autograd.grad(true_kl, logits, retain_graph=True)
    weights = logp.exp().detach()  # samples y ~ pi: the estimator's gradient weighted by pi(y)
    k2_loss = (weights * kl.kl_k2(logp, ref)).sum()
    (k2_grad,) = torch.autograd.grad(k2_loss, logits, retain_graph=True)
    (k1_grad,) = torch.autograd.grad((weights * kl.kl_k1(logp, ref)).sum(), logits)
    torch.testing.assert_close(k2_grad, true_grad)
    torch.testing.assert_close(k1_grad, torch.zeros(4, dtype=F64))  # sum_y grad pi(y) = 0
    assert true_grad.abs().max() > 0.01  # the comparison is not trivially 0 == 0


def test_kl_loss_by_hand():
    logp = t([[math.log(0.5), math.log(0.5)], [math.log(0.5), 5.0]]).requires_grad_()
    ref = t([[math.log(0.25), math.log(0.5)], [math.log(0.25), 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = kl.kl_loss(logp, ref, mask, beta=0.1, estimator="k1")
    close(loss, 0.1 * (2 * LN2) / 3)  # k1 = [ln2, 0, ln2] on valid tokens; token mean * beta
    close(stats.kl_mean, 2 * LN2 / 3)  # stats are unscaled
    loss, _ = kl.kl_loss(logp, ref, mask, 1.0, "k3", "seq_mean_token_mean")
    k3 = LN2 - 0.5  # see test_estimators_by_hand
    close(loss, ((k3 + 0.0) / 2 + k3 / 1) / 2)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl.kl_loss(logp, ref, mask, estimator="k4")


def test_kl_penalized_rewards_sequence_reward_by_hand():
    logp = t([[math.log(0.5), math.log(0.5), 3.0], [math.log(0.5), 3.0, 3.0]])
    ref = t([[math.log(0.25), math.log(0.5), 0.0], [math.log(0.25), 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = kl.kl_penalized_rewards(t([1.0, 2.0]), logp, ref, mask, beta=0.1)
    # k1 on valid tokens: [[ln2, 0], [ln2]]; the reward sits on each row's last valid token
    close(out, [[-0.1 * LN2, 1.0, 0.0], [2.0 - 0.1 * LN2, 0.0, 0.0]])
    assert not out.requires_grad


def test_kl_penalized_rewards_token_rewards_and_empty_row():
    logp = t([[math.log(0.5), 0.0], [0.0, 0.0]])
    ref = t([[math.log(0.25), 0.0], [0.0, 0.0]])
    token_rewards = t([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    out = kl.kl_penalized_rewards(token_rewards, logp, ref, mask, 0.5, "k1")
    close(out, [[1.0 - 0.5 * LN2, 2.0], [0.0, 0.0]])  # an all-masked row gets nothing
    seq = kl.kl_penalized_rewards(t([1.0, 9.0]), logp, ref, mask, 0.5)
    close(seq, [[-0.5 * LN2, 1.0], [0.0, 0.0]])  # the empty row's reward is dropped


def test_adaptive_kl_controller_by_hand():
    ctl = kl.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=1000)  # e = clip(12/6 - 1, ±0.2) = 0.2; 0.1 * (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.102)
    ctl = kl.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(6.6, n_steps=1000)  # e = 0.1; 0.1 * (1 + 0.1 * 0.1) = 0.101
    assert ctl.value == pytest.approx(0.101)
    ctl = kl.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(torch.tensor(0.0), n_steps=1000)  # e = clip(-1) = -0.2; 0.1 * 0.98
    assert ctl.value == pytest.approx(0.098)


def test_kl_controllers_state_dict_and_registry():
    ctl = kl.get_kl_controller("adaptive", value=0.2, target=3.0, horizon=100)
    ctl.update(6.0, n_steps=10)  # e = 0.2: 0.2 * (1 + 0.2 * 0.1) = 0.204
    restored = kl.AdaptiveKLController()
    restored.load_state_dict(ctl.state_dict())
    assert restored == ctl and restored.value == pytest.approx(0.204)
    fixed = kl.get_kl_controller("fixed", value=0.05)
    fixed.update(100.0, n_steps=10)
    assert fixed.value == 0.05 and fixed.state_dict() == {"value": 0.05}
    with pytest.raises(ValueError, match="adaptive, fixed"):
        kl.get_kl_controller("pid")
