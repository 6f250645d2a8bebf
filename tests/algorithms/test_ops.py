"""Hand-computed cases for rewardtune.algorithms.ops (arithmetic in the comments)."""

import math

import pytest
import torch

from rewardtune.algorithms import ops
from rewardtune.algorithms.ops import entropy_from_logits, logprobs_from_logits, tempered_logprobs

F64 = torch.float64


def t(data, dtype=F64):
    return torch.tensor(data, dtype=dtype)


def close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual, t(expected, actual.dtype), rtol=0, atol=atol)


X = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [0, 1, 1]])  # keeps 1, 2, 5, 6


def test_masked_sum_by_hand():
    close(ops.masked_sum(X, MASK), 14.0)  # 1 + 2 + 5 + 6
    close(ops.masked_sum(X, MASK, dim=-1), [3.0, 11.0])  # [1 + 2, 5 + 6]



def two_process_all_sum():
    """An all-reduce (sum) between two threads, each standing for one process."""
    import threading

    barrier, slots = threading.Barrier(2), [None, None]

    def for_rank(rank):
        def all_sum(x):
            slots[rank] = x
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both have read before either writes again
            return total
        return all_sum
    return for_rank


@pytest.mark.parametrize("unbiased", [False, True])
def test_masked_whiten_over_processes_is_the_whole_batch_s(unbiased):
    import threading

    # rank 0 holds row 0 (kept 1, 2), rank 1 row 1 (kept 5, 6): each alone would whiten to ±1,
    # together they share the mean 3.5 and variance 17/4 (17/3 unbiased), as test_masked_whiten_by_hand
    whole = ops.masked_whiten(X, MASK, unbiased=unbiased, eps=0.0)
    for_rank, out = two_process_all_sum(), [None, None]

    def run(rank):
        out[rank] = ops.masked_whiten(X[rank:rank + 1], MASK[rank:rank + 1], unbiased=unbiased, eps=0.0,
                                      all_sum=for_rank(rank))
    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    close(torch.cat(out), whole.tolist())
    alone = ops.masked_whiten(X[:1], MASK[:1], unbiased=unbiased, eps=0.0)
    assert not torch.allclose(alone, whole[:1])


def test_masked_sum_never_reads_masked_inf_or_nan():
    x = X.clone()
    x[0, 2], x[1, 0] = math.inf, math.nan  # both under mask 0
    close(ops.masked_sum(x, MASK), 14.0)


def test_masked_mean_by_hand():
    close(ops.masked_mean(X, MASK), 3.5)  # 14 / 4
    close(ops.masked_mean(X, MASK, dim=-1), [1.5, 5.5])  # [3 / 2, 11 / 2]
    empty = torch.tensor([[0, 0, 0], [1, 1, 1]])
    close(ops.masked_mean(X, empty, dim=-1), [0.0, 5.0])  # empty row -> 0, not nan


def test_masked_var_by_hand():
    # kept 1, 2, 5, 6; mean 3.5; squared deviations 6.25 + 2.25 + 2.25 + 6.25 = 17
    close(ops.masked_var(X, MASK), 17 / 4)
    close(ops.masked_var(X, MASK, unbiased=True), 17 / 3)


def test_masked_whiten_by_hand():
    sd = math.sqrt(17 / 4)  # 2.0615528...
    white = ops.masked_whiten(X, MASK, eps=0.0)
    # (x - 3.5) / sd on kept positions, 0 where masked
    close(white, [[-2.5 / sd, -1.5 / sd, 0.0], [0.0, 1.5 / sd, 2.5 / sd]])
    kept_scale = ops.masked_whiten(X, MASK, shift_mean=False, eps=0.0)
    # shift_mean=False adds the mean 3.5 back: only the scale changes
    close(
        kept_scale,
        [[3.5 - 2.5 / sd, 3.5 - 1.5 / sd, 0.0], [0.0, 3.5 + 1.5 / sd, 3.5 + 2.5 / sd]],
    )


def test_logprobs_from_logits_class_case_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([ln 3, 0]) = [3/4, 1/4]
    logits = t([[0.0, math.log(3)], [math.log(3), 0.0]])
    close(ops.logprobs_from_logits(logits, torch.tensor([1, 1])), [math.log(0.75), math.log(0.25)])


def test_logprobs_from_logits_token_case_by_hand():
    # token 0: uniform over 3 -> log(1/3); token 1: softmax([ln 2, 0, 0]) = [2/4, 1/4, 1/4]
    logits = t([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]]])  # (B=1, T=2, V=3)
    out = ops.logprobs_from_logits(logits, torch.tensor([[2, 0]]))
    assert out.shape == (1, 2)
    close(out, [[math.log(1 / 3), math.log(0.5)]])


def test_logprobs_from_logits_is_stable_for_huge_logits():
    logits = torch.tensor([[1000.0, 0.0]])  # float32; softmax underflows to [1, 0]
    naive = torch.log(torch.softmax(logits, -1))[0, 1]
    assert torch.isinf(naive)  # the naive route fails ...
    # ... while log p(1) = 0 - logsumexp(1000, 0) = -1000 - log(1 + e^-1000) = -1000
    out = ops.logprobs_from_logits(logits, torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([-1000.0]))


def test_logprobs_from_logits_gradient_by_hand():
    # d log p_0 / dz = onehot(0) - softmax(z) = [1 - 1/4, -3/4]
    logits = t([0.0, math.log(3)]).requires_grad_()
    ops.logprobs_from_logits(logits, torch.tensor(0)).backward()
    close(logits.grad, [0.75, -0.75])


def test_entropy_from_logits_by_hand():
    close(ops.entropy_from_logits(torch.zeros(4, dtype=F64)), math.log(4))  # uniform: ln V
    # p = [1/4, 3/4]: H = 0.25 ln 4 + 0.75 ln(4/3) = 0.346574 + 0.215762 = 0.562335
    close(ops.entropy_from_logits(t([0.0, math.log(3)])), 0.5623351446, atol=1e-9)
    huge = ops.entropy_from_logits(torch.tensor([1000.0, 0.0]))
    assert torch.isfinite(huge) and abs(huge.item()) < 1e-6  # near-deterministic -> ~0


AGG_X = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
AGG_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])  # lengths 2 and 3


def test_token_mean_by_hand():
    close(ops.aggregate(AGG_X, AGG_MASK, "token_mean"), 3.6)  # (1 + 2 + 4 + 5 + 6) / 5


def test_seq_mean_token_mean_by_hand():
    # ((1 + 2) / 2 + (4 + 5 + 6) / 3) / 2 = (1.5 + 5) / 2
    close(ops.aggregate(AGG_X, AGG_MASK, "seq_mean_token_mean"), 3.25)


def test_seq_mean_token_sum_by_hand():
    # default L = T = 3: (3 / 3 + 15 / 3) / 2 = 3
    close(ops.aggregate(AGG_X, AGG_MASK, "seq_mean_token_sum"), 3.0)
    # constant L = 10: (3 / 10 + 15 / 10) / 2 = 0.9
    close(ops.aggregate(AGG_X, AGG_MASK, "seq_mean_token_sum", max_len=10), 0.9)


def test_unknown_aggregation_lists_valid_names():
    with pytest.raises(ValueError, match="seq_mean_token_mean, seq_mean_token_sum, token_mean"):
        ops.aggregate(AGG_X, AGG_MASK, "sum")
    assert ops.get_aggregation("token_mean") is ops.token_mean


def test_tempered_logprobs_by_hand_and_against_dividing_first():
    # logits (1, 1, 2) = [ln 1, ln 3] at τ = 1: softmax = [1/4, 3/4]; label 1 → log 3/4; H = -(¼ ln ¼ + ¾ ln ¾)
    z = torch.log(torch.tensor([[[1.0, 3.0]]], requires_grad=False))
    logp, ent = tempered_logprobs(z, torch.tensor([[1]]))
    assert torch.allclose(logp, torch.log(torch.tensor([[0.75]])))
    assert torch.allclose(ent, torch.tensor([[-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]]))
    # at τ = 2 it is the plain functions on z / 2; entropy off gives None and no entropy gradient is ever taken
    z = torch.randn(2, 3, 5, requires_grad=True)
    y = torch.randint(0, 5, (2, 3))
    logp, ent = tempered_logprobs(z, y, temperature=2.0)
    assert torch.allclose(logp, logprobs_from_logits(z / 2, y)) and torch.allclose(ent, entropy_from_logits(z / 2))
    assert logp.requires_grad and not ent.requires_grad
    assert tempered_logprobs(z, y, 2.0, entropy=False)[1] is None
