"""Hypothesis properties of the advantage estimators, losses and KL estimators."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardtune.algorithms import advantages as adv
from rewardtune.algorithms import kl, losses, ops

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)
AGGREGATIONS = st.sampled_from(sorted(ops.AGGREGATIONS))


def floats(lo=-10.0, hi=10.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def tensor(draw, shape, lo=-10.0, hi=10.0):
    n = shape[0] * shape[1]
    values = draw(st.lists(floats(lo, hi), min_size=n, max_size=n))
    return torch.tensor(values, dtype=F64).view(shape)


@st.composite
def grouped_rewards(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 6)))  # (P, K)
    return tensor(draw, shape, -100.0, 100.0)


@st.composite
def token_batch(draw):
    """Per-token inputs (B, T), a mask, and a copy of each input with masked entries replaced."""
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)))
    n = shape[0] * shape[1]
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).view(shape)
    names = ("logp", "old", "ref", "adv", "values", "old_values", "returns", "rewards")
    bounds = {"logp": (-5.0, 0.0), "old": (-5.0, 0.0), "ref": (-5.0, 0.0)}
    x = {k: tensor(draw, shape, *bounds.get(k, (-10.0, 10.0))) for k in names}
    junk = {k: torch.where(mask, v, tensor(draw, shape, -50.0, 50.0)) for k, v in x.items()}
    return x, junk, mask


# ---------------------------------------------------------------- advantages


@SETTINGS
@given(grouped_rewards())
def test_rloo_sums_to_zero_per_group_and_is_scaled_centering(r):
    a = adv.rloo(r)
    torch.testing.assert_close(a.sum(-1), torch.zeros(r.shape[0], dtype=F64), rtol=0, atol=1e-9)
    # independent identity: r_k - (S - r_k)/(K-1) = K/(K-1) (r_k - mean)
    k = r.shape[1]
    torch.testing.assert_close(a, k / (k - 1) * (r - r.mean(-1, keepdim=True)), rtol=0, atol=1e-9)


@SETTINGS
@given(grouped_rewards(), st.sampled_from(["std", "none"]))
def test_group_norm_sums_to_zero_per_group(r, scale):
    a = adv.group_norm(r, scale=scale)
    torch.testing.assert_close(a.sum(-1), torch.zeros(r.shape[0], dtype=F64), rtol=0, atol=1e-6)


@SETTINGS
@given(grouped_rewards(), floats(-100.0, 100.0), st.sampled_from(["std", "none"]))
def test_group_norm_is_invariant_to_a_constant(r, c, scale):
    flat = adv.group_norm(r.flatten() + c, group_size=r.shape[1], scale=scale).view(r.shape)
    torch.testing.assert_close(flat, adv.group_norm(r, scale=scale), rtol=1e-6, atol=1e-5)


@SETTINGS
@given(token_batch(), floats(0.0, 1.0), floats(0.0, 1.0))
def test_gae_ignores_masked_positions(batch, gamma, lam):
    x, junk, mask = batch
    a1, r1 = adv.gae(x["rewards"], x["values"], mask, gamma, lam)
    a2, r2 = adv.gae(junk["rewards"], junk["values"], mask, gamma, lam)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


# ---------------------------------------------------------------- masked ops


@SETTINGS
@given(token_batch(), st.booleans(), AGGREGATIONS)
def test_masked_ops_ignore_masked_positions(batch, shift_mean, mode):
    x, junk, mask = batch
    a, b = x["values"], junk["values"]
    assert torch.equal(ops.masked_sum(a, mask), ops.masked_sum(b, mask))
    assert torch.equal(ops.masked_mean(a, mask, dim=-1), ops.masked_mean(b, mask, dim=-1))
    assert torch.equal(ops.masked_var(a, mask), ops.masked_var(b, mask))
    white = [ops.masked_whiten(v, mask, shift_mean) for v in (a, b)]
    assert torch.equal(*white)
    assert torch.equal(ops.aggregate(a, mask, mode), ops.aggregate(b, mask, mode))


@SETTINGS
@given(token_batch())
def test_masked_whiten_has_zero_mean_unit_variance(batch):
    x, _, mask = batch
    v = x["values"]
    if mask.sum() < 2 or ops.masked_var(v, mask) < 1e-3:
        return  # whitening a constant is not meaningful
    w = ops.masked_whiten(v, mask, eps=0.0)
    assert abs(ops.masked_mean(w, mask).item()) < 1e-9
    assert abs(ops.masked_var(w, mask).item() - 1.0) < 1e-9


# ---------------------------------------------------------------- losses


def _loss_and_grad(fn, logp, *args, **kw):
    leaf = logp.clone().requires_grad_()
    loss, _ = fn(leaf, *args, **kw)
    loss.backward()
    return loss.detach(), leaf.grad


@SETTINGS
@given(
    token_batch(),
    st.booleans(),
    floats(0.01, 0.5),
    floats(0.01, 0.5),
    st.one_of(st.none(), floats(1.5, 5.0)),
    AGGREGATIONS,
)
def test_clipped_surrogate_equals_pg_loss_on_policy(batch, per_token, lo, hi, dual, mode):
    x, _, mask = batch
    a = x["adv"] if per_token else x["adv"][:, 0]
    logp = x["logp"]
    pg = _loss_and_grad(losses.pg_loss, logp, a, mask, mode)
    old = logp.clone()  # old == new: ratio 1 everywhere
    ppo = _loss_and_grad(losses.clipped_surrogate, logp, old, a, mask, lo, hi, dual, mode)
    torch.testing.assert_close(ppo[0], pg[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ppo[1], pg[1], rtol=1e-12, atol=1e-12)


@SETTINGS
@given(token_batch(), AGGREGATIONS, st.one_of(st.none(), floats(1.5, 5.0)))
def test_losses_ignore_masked_positions(batch, mode, dual):
    x, junk, mask = batch
    for d in (x, junk):
        d["pg"] = _loss_and_grad(losses.pg_loss, d["logp"], d["adv"], mask, mode)
        d["ppo"] = _loss_and_grad(
            losses.clipped_surrogate, d["logp"], d["old"], d["adv"], mask, 0.2, 0.3, dual, mode
        )
        d["vf"] = _loss_and_grad(
            losses.value_loss, d["values"], d["old_values"], d["returns"], mask, 0.2, mode
        )
        d["kl"] = _loss_and_grad(kl.kl_loss, d["logp"], d["ref"], mask, 0.1, "k3", mode)
        d["pen"] = kl.kl_penalized_rewards(d["rewards"], d["logp"], d["ref"], mask, 0.1, "k2")
        seq_rewards = x["rewards"][:, 0]  # one per sequence: not a masked quantity
        d["seq"] = kl.kl_penalized_rewards(seq_rewards, d["logp"], d["ref"], mask, 0.1, "k3")
    for key in ("pg", "ppo", "vf", "kl"):
        assert torch.equal(x[key][0], junk[key][0]), key
        assert torch.equal(x[key][1], junk[key][1]), key
    assert torch.equal(x["pen"], junk["pen"]) and torch.equal(x["seq"], junk["seq"])


# ---------------------------------------------------------------- KL estimators


@SETTINGS
@given(token_batch())
def test_k3_and_k2_are_nonnegative(batch):
    x, _, _ = batch
    assert (kl.kl_k3(x["logp"], x["ref"]) >= 0).all()
    assert (kl.kl_k2(x["logp"], x["ref"]) >= 0).all()


@SETTINGS
@given(
    st.lists(floats(-1e-6, 1e-6), min_size=1, max_size=20),
    st.sampled_from(["float32", "float64"]),
)
def test_k3_is_nonnegative_for_tiny_log_ratios(log_ratios, dtype):
    # where exp(x) - 1 - x would round below zero
    d = torch.tensor(log_ratios, dtype=getattr(torch, dtype))
    assert (kl.kl_k3(torch.zeros_like(d), d) >= 0).all()


@SETTINGS
@given(token_batch(), st.sampled_from(sorted(kl.KL_ESTIMATORS)))
def test_estimators_are_zero_when_policies_match(batch, name):
    logp = batch[0]["logp"]
    assert torch.equal(kl.get_kl_estimator(name)(logp, logp.clone()), torch.zeros_like(logp))
