"""Equivalence checks against independent, straightforward implementations.

- vectorised GAE == a plain reversed double loop over (row, token);
- expected_reward_loss's exact gradient == Monte-Carlo mean of REINFORCE gradients;
- GRPO / Dr. GRPO losses == loops written from the papers' formulas.
"""

import math
import typing

import pytest
import torch

from rewardtune.algorithms import advantages as adv
from rewardtune.algorithms import kl, losses, ops
from rewardtune.algorithms.objectives import OBJECTIVES, Objective, pg_objective

F64 = torch.float64


# ---------------------------------------------------------------- GAE


def gae_reference(rewards, values, mask, gamma, lam):
    """Schulman et al. 2016 eq. 16 as a reversed loop over each row's valid tokens."""
    rows, cols = len(rewards), len(rewards[0])
    advantages = [[0.0] * cols for _ in range(rows)]
    returns = [[0.0] * cols for _ in range(rows)]
    for b in range(rows):
        next_value, running = 0.0, 0.0  # terminal after the last valid token
        for t in reversed(range(cols)):
            if not mask[b][t]:
                continue
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            running = delta + gamma * lam * running
            advantages[b][t] = running
            returns[b][t] = running + values[b][t]
            next_value = values[b][t]
    return torch.tensor(advantages, dtype=F64), torch.tensor(returns, dtype=F64)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layout", ["full", "right_padded", "holes"])
def test_gae_matches_reversed_double_loop(seed, layout):
    gen = torch.Generator().manual_seed(seed)
    rows, cols = 5, 9
    rewards = torch.randn(rows, cols, generator=gen, dtype=F64)
    values = torch.randn(rows, cols, generator=gen, dtype=F64)
    lengths = torch.randint(0, cols + 1, (rows, 1), generator=gen)
    masks = {
        "full": torch.ones(rows, cols, dtype=torch.bool),
        "right_padded": torch.arange(cols) < lengths,
        "holes": torch.rand(rows, cols, generator=gen) < 0.6,
    }
    mask = masks[layout]
    gamma, lam = (0.5 + 0.5 * torch.rand(2, generator=gen, dtype=F64)).tolist()  # in [0.5, 1)
    got_a, got_r = adv.gae(rewards, values, mask, gamma, lam)
    ref_a, ref_r = gae_reference(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(got_a, ref_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_r, ref_r, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- expected reward vs REINFORCE


def reinforce_sample_grads(logits, rewards, baseline, n, gen):
    """Per-sample REINFORCE gradients (B, n, A) of the batch-mean objective, via pg_loss."""
    batch, actions = logits.shape
    y = torch.multinomial(torch.softmax(logits, -1), n, replacement=True, generator=gen)  # (B, n)
    copies = logits.detach().unsqueeze(1).expand(batch, n, actions).clone().requires_grad_()
    logp = ops.logprobs_from_logits(copies, y)  # (B, n)
    advantage = rewards.gather(1, y) - baseline[:, None]  # (B, n)
    # one "sequence" per sample, one token each: token_mean averages over all B*n samples
    loss, _ = losses.pg_loss(logp.reshape(-1, 1), advantage.reshape(-1), torch.ones(batch * n, 1))
    loss.backward()
    # copies.grad[x, s] = -(A / (B n)) grad log pi; times n: one sample's estimate of grad[x]
    return copies.grad * n


def test_expected_reward_gradient_matches_monte_carlo_reinforce():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, generator=gen, dtype=F64).requires_grad_()
    rewards = torch.rand(3, 5, generator=gen, dtype=F64)
    baseline = torch.tensor([0.2, 0.5, 0.0], dtype=F64)
    loss, _ = losses.expected_reward_loss(logits, rewards, baseline)
    (exact,) = torch.autograd.grad(loss, logits)

    n = 40_000
    samples = reinforce_sample_grads(logits, rewards, baseline, n, gen)  # (B, n, A)
    estimate = samples.mean(1)  # (B, A)
    stderr = samples.std(1) / math.sqrt(n)  # (B, A)
    tolerance = 5 * stderr + 1e-12
    assert ((estimate - exact).abs() <= tolerance).all(), (estimate - exact) / stderr
    # the test has teeth: the tolerance is far below the gradient's own size
    assert tolerance.max() < 0.1 * exact.abs().max()


# ---------------------------------------------------------------- GRPO / Dr. GRPO


def clip(x, lo, hi):
    return min(max(x, lo), hi)


def grpo_reference(logp, old, ref, rewards, lengths, group, eps, beta, std_eps=1e-6):
    """Shao et al. 2024 eq. 3: -(1/G) sum_i (1/|o_i|) sum_t [min(r A, clip(r) A) - beta k3]."""
    adv_ = []
    for start in range(0, len(rewards), group):
        rs = rewards[start : start + group]
        mean = sum(rs) / group
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (group - 1))
        adv_ += [(r - mean) / (std + std_eps) for r in rs]
    total = 0.0
    for i, length in enumerate(lengths):
        seq = 0.0
        for t in range(length):
            ratio = math.exp(logp[i][t] - old[i][t])
            surrogate = min(ratio * adv_[i], clip(ratio, 1 - eps, 1 + eps) * adv_[i])
            k3 = math.exp(ref[i][t] - logp[i][t]) - (ref[i][t] - logp[i][t]) - 1
            seq += surrogate - beta * k3
        total += seq / length
    return -total / len(lengths)


def dr_grpo_reference(logp, old, rewards, lengths, group, eps, max_len):
    """Liu et al. 2025: A = r - mean(group), no std; -(1/G) sum_i sum_t min(...) / MAX_LEN."""
    adv_ = []
    for start in range(0, len(rewards), group):
        rs = rewards[start : start + group]
        adv_ += [r - sum(rs) / group for r in rs]
    total = 0.0
    for i, length in enumerate(lengths):
        for t in range(length):
            ratio = math.exp(logp[i][t] - old[i][t])
            total += min(ratio * adv_[i], clip(ratio, 1 - eps, 1 + eps) * adv_[i]) / max_len
    return -total / len(lengths)


def rollout(seed, prompts=3, group=4, cols=7):
    gen = torch.Generator().manual_seed(seed)
    batch = prompts * group
    old = -torch.rand(batch, cols, generator=gen, dtype=F64) * 3
    logp = old + 0.4 * torch.randn(batch, cols, generator=gen, dtype=F64)  # ratios beyond the clip
    ref = old + 0.3 * torch.randn(batch, cols, generator=gen, dtype=F64)
    rewards = torch.randint(0, 3, (batch,), generator=gen).to(F64)
    lengths = torch.randint(1, cols + 1, (batch,), generator=gen)
    mask = torch.arange(cols) < lengths[:, None]  # (B, T) right-padded
    return logp, old, ref, rewards, lengths, mask


@pytest.mark.parametrize("seed", range(4))
def test_grpo_loss_matches_paper_formula(seed):
    logp, old, ref, rewards, lengths, mask = rollout(seed)
    group, eps, beta = 4, 0.2, 0.04
    a = adv.get_advantage_fn("grpo")(rewards, group_size=group)
    agg = "seq_mean_token_mean"
    pol, stats = losses.clipped_surrogate(logp, old, a, mask, eps, aggregation=agg)
    kl_term, _ = kl.kl_loss(logp, ref, mask, beta, "k3", agg)
    lists = [x.tolist() for x in (logp, old, ref, rewards, lengths)]
    expected = grpo_reference(*lists, group, eps, beta)
    assert 0 < stats.clip_frac < 1  # both branches of the clip are exercised
    assert (pol + kl_term).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_dr_grpo_loss_matches_paper_formula(seed):
    logp, old, _, rewards, lengths, mask = rollout(seed)
    group, eps, max_len = 4, 0.2, 16  # the generation budget, larger than the padded T = 7
    a = adv.get_advantage_fn("dr_grpo")(rewards, group_size=group)
    agg = "seq_mean_token_sum"
    loss, _ = losses.clipped_surrogate(logp, old, a, mask, eps, aggregation=agg, max_len=max_len)
    lists = [x.tolist() for x in (logp, old, rewards, lengths)]
    expected = dr_grpo_reference(*lists, group, eps, max_len)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


# ---------------------------------------------------------------- the objective in one function (objectives.py)


@pytest.mark.parametrize("seed", range(4))
def test_pg_objective_is_grpo_s_paper_formula(seed):
    """The whole GRPO loss of Shao et al. eq. 3 is `pg_objective` with a clipped ratio and β·k3."""
    logp, old, ref, rewards, lengths, mask = rollout(seed)
    group, eps, beta = 4, 0.2, 0.04
    a = adv.get_advantage_fn("grpo")(rewards, group_size=group)
    objective = Objective("seq_mean_token_mean", kl_estimator="k3", clip_eps=eps)
    loss, stats = pg_objective(logp, a, mask, objective, old_logprobs=old, ref_logprobs=ref, beta=beta)
    expected = grpo_reference(*[x.tolist() for x in (logp, old, ref, rewards, lengths)], group, eps, beta)
    assert 0 < stats["clip_frac"] < 1
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pg_objective_with_one_update_per_rollout_is_the_formula_at_ratio_one(seed):
    """rewardtune's GRPO makes one update per rollout, so π_old = π_θ: `old_logprobs=None` gives the paper's loss
    with old = logp (ratio 1, no clipping) in value and in gradient."""
    logp, _, ref, rewards, lengths, mask = rollout(seed)
    group, beta = 4, 0.04
    a = adv.get_advantage_fn("grpo")(rewards, group_size=group)
    objective = Objective("seq_mean_token_mean", kl_estimator="k3")
    theta = logp.clone().requires_grad_(True)
    loss, _ = pg_objective(theta, a, mask, objective, ref_logprobs=ref, beta=beta)
    (grad,) = torch.autograd.grad(loss, theta)
    lists = [x.tolist() for x in (logp, logp, ref, rewards, lengths)]
    assert loss.item() == pytest.approx(grpo_reference(*lists, group, 0.2, beta), rel=1e-10, abs=1e-12)
    clipped = theta.detach().clone().requires_grad_(True)  # the paper's form with π_old = π_θ, detached
    ref_loss, _ = pg_objective(clipped, a, mask, Objective("seq_mean_token_mean", kl_estimator="k3", clip_eps=0.2),
                               old_logprobs=clipped.detach(), ref_logprobs=ref, beta=beta)
    (ref_grad,) = torch.autograd.grad(ref_loss, clipped)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pg_objective_is_dr_grpo_s_formula(seed):
    logp, old, _, rewards, lengths, mask = rollout(seed)
    group, eps, max_len = 4, 0.2, 16
    a = adv.get_advantage_fn("dr_grpo")(rewards, group_size=group)
    loss, _ = pg_objective(logp, a, mask, Objective("seq_mean_token_sum", max_len=max_len, clip_eps=eps),
                           old_logprobs=old)
    expected = dr_grpo_reference(*[x.tolist() for x in (logp, old, rewards, lengths)], group, eps, max_len)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_pg_objective_needs_the_reference_when_beta_is_set():
    logp, _, _, _, _, mask = rollout(0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        pg_objective(logp, torch.ones(logp.shape[0], dtype=F64), mask, Objective(), beta=0.1)


def test_every_algorithm_has_its_objective_defaults():
    """The `auto` settings resolve from OBJECTIVES (gen_config.GenRLSettings.resolved reads it)."""
    from rewardtune.train.gen_config import GenRLSettings

    for name, own in OBJECTIVES.items():
        got = GenRLSettings(algorithm=name).resolved()
        assert (got.aggregation, got.kl_estimator, got.kl_mode) == (own.aggregation, own.kl_estimator, own.kl_mode)
    algorithms = typing.get_args(typing.get_type_hints(GenRLSettings)["algorithm"])
    assert set(OBJECTIVES) == set(algorithms)  # no algorithm without its defaults, none left over
