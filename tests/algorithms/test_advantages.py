"""Hand-computed cases for rewardtune.algorithms.advantages (arithmetic in the comments)."""

import math

import pytest
import torch

from rewardtune.algorithms import advantages as adv
from rewardtune.algorithms.advantages import EMABaseline

F64 = torch.float64


def t(data):
    return torch.tensor(data, dtype=F64)


def close(actual, expected, atol=1e-9):
    torch.testing.assert_close(actual, t(expected), rtol=0, atol=atol)


def test_reinforce_baselines_by_hand():
    r = t([1.0, 2.0, 6.0])
    close(adv.reinforce(r), [1.0, 2.0, 6.0])  # b = 0
    close(adv.reinforce(r, baseline="mean"), [-2.0, -1.0, 3.0])  # b = (1 + 2 + 6) / 3 = 3
    grouped = adv.reinforce(t([[1.0, 2.0], [6.0, 3.0]]), baseline="mean")  # b = 12 / 4 = 3
    close(grouped, [[-2.0, -1.0], [3.0, 0.0]])


def test_reinforce_ema_baseline_by_hand():
    ema = EMABaseline(decay=0.9)
    # batch 1: nothing seen yet, b = 0; then value := batch mean (1 + 3) / 2 = 2
    close(adv.reinforce(t([1.0, 3.0]), "ema", ema), [1.0, 3.0])
    assert ema.initialized and ema.value == pytest.approx(2.0)
    # batch 2: b = 2 -> [4 - 2, 6 - 2]; then value := 0.9 * 2 + 0.1 * 5 = 2.3
    close(adv.reinforce(t([4.0, 6.0]), "ema", ema), [2.0, 4.0])
    assert ema.value == pytest.approx(2.3)


def test_ema_baseline_state_dict_round_trip():
    ema = EMABaseline(decay=0.5)
    ema.update(4.0)  # first update: value = 4
    ema.update(2.0)  # 0.5 * 4 + 0.5 * 2 = 3
    state = ema.state_dict()
    assert state == {"decay": 0.5, "value": 3.0, "initialized": True}
    restored = EMABaseline()
    restored.load_state_dict(state)
    # the restored baseline continues exactly like the original: b = 3
    close(adv.reinforce(t([5.0]), "ema", restored), [2.0])
    close(adv.reinforce(t([5.0]), "ema", ema), [2.0])
    assert restored == ema  # both now 0.5 * 3 + 0.5 * 5 = 4


def test_reinforce_rejects_bad_baselines():
    with pytest.raises(ValueError, match="ema"):
        adv.reinforce(t([1.0]), "ema")  # no EMABaseline given
    with pytest.raises(ValueError, match="ema, mean, none"):
        adv.reinforce(t([1.0]), "median")


def test_rloo_three_samples_by_hand():
    # baselines: [(2 + 6) / 2, (1 + 6) / 2, (1 + 2) / 2] = [4, 3.5, 1.5]
    close(adv.rloo(t([[1.0, 2.0, 6.0]])), [[-3.0, -1.5, 4.5]])


def test_rloo_flat_rewards_with_group_size_by_hand():
    # group 1 as above; group 2 [0, 0, 3]: baselines [1.5, 1.5, 0] -> [-1.5, -1.5, 3]
    out = adv.rloo(t([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), group_size=3)
    close(out, [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])


def test_group_shape_errors():
    with pytest.raises(ValueError, match="at least 2"):
        adv.rloo(t([[1.0], [2.0]]))  # K = 1: no "other" samples
    with pytest.raises(ValueError, match="multiple"):
        adv.rloo(t([1.0, 2.0, 3.0]), group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        adv.rloo(t([1.0, 2.0]))  # flat without K
    with pytest.raises(ValueError, match="group_size=2"):
        adv.group_norm(t([[1.0, 2.0, 3.0]]), group_size=2)


def test_group_norm_by_hand():
    # [1, 2, 6]: mean 3, centred [-2, -1, 3], sample var (4 + 1 + 9) / 2 = 7, std sqrt(7)
    r = t([[1.0, 2.0, 6.0]])
    s7 = math.sqrt(7)
    close(adv.group_norm(r, eps=0.0), [[-2 / s7, -1 / s7, 3 / s7]])
    close(adv.group_norm(r), [[-2 / (s7 + 1e-6), -1 / (s7 + 1e-6), 3 / (s7 + 1e-6)]])
    close(adv.group_norm(r, scale="none"), [[-2.0, -1.0, 3.0]])  # Dr. GRPO: no scaling
    close(adv.grpo(r.flatten(), group_size=3, eps=0.0), [-2 / s7, -1 / s7, 3 / s7])
    close(adv.dr_grpo(r.flatten(), group_size=3), [-2.0, -1.0, 3.0])


def test_group_norm_constant_group_is_zero_not_nan():
    # std 0: (5 - 5) / (0 + eps) = 0
    close(adv.group_norm(t([[5.0, 5.0, 5.0]])), [[0.0, 0.0, 0.0]])


def test_group_norm_unknown_scale():
    with pytest.raises(ValueError, match="none, std"):
        adv.group_norm(t([[1.0, 2.0]]), scale="mad")


def test_advantage_registry():
    assert adv.get_advantage_fn("rloo") is adv.rloo
    assert set(adv.ADVANTAGES) == {"reinforce", "rloo", "group_norm", "grpo", "dr_grpo"}
    with pytest.raises(ValueError, match="dr_grpo, group_norm, grpo, reinforce, rloo"):
        adv.get_advantage_fn("ppo")


def test_advantages_are_detached():
    r = t([[1.0, 2.0, 4.0]]).requires_grad_()
    for name in ("rloo", "grpo", "dr_grpo", "reinforce"):
        assert not adv.get_advantage_fn(name)(r).requires_grad


def test_gae_full_row_by_hand():
    # gamma 0.9, lam 0.8 (gamma * lam = 0.72); V after the last token is 0
    # d2 = 1 + 0.9 * 0   - 0.7 = 0.3
    # d1 = 0 + 0.9 * 0.7 - 0.6 = 0.03
    # d0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    # A2 = 0.3; A1 = 0.03 + 0.72 * 0.3 = 0.246; A0 = 0.04 + 0.72 * 0.246 = 0.21712
    a, ret = adv.gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.8)
    close(a, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.21712 + 0.5, 0.246 + 0.6, 0.3 + 0.7]])  # returns = A + V


def test_gae_right_padding_by_hand():
    # valid tokens 0, 1; the padded step holds junk that must not matter
    # d1 = 1 + 0 - 0.6 = 0.4; d0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    # A1 = 0.4; A0 = 0.04 + 0.72 * 0.4 = 0.328
    mask = torch.tensor([[1, 1, 0]])
    a, ret = adv.gae(t([[0.0, 1.0, 7.0]]), t([[0.5, 0.6, 9.0]]), mask, 0.9, 0.8)
    close(a, [[0.328, 0.4, 0.0]])
    close(ret, [[0.828, 1.0, 0.0]])


def test_gae_skips_a_masked_hole_by_hand():
    # trajectory is tokens 0 and 2: d2 = 1 - 0.7 = 0.3; d0 = 0 + 0.9 * 0.7 - 0.5 = 0.13
    # A2 = 0.3; A0 = 0.13 + 0.72 * 0.3 = 0.346
    mask = torch.tensor([[1, 0, 1]])
    a, _ = adv.gae(t([[0.0, 7.0, 1.0]]), t([[0.5, 9.0, 0.7]]), mask, 0.9, 0.8)
    close(a, [[0.346, 0.0, 0.3]])


def test_gae_gamma_lam_one_is_monte_carlo_return_minus_value():
    # lam = gamma = 1: A_t = sum_{s >= t} r_s - V_t = [1 - 0.5, 1 - 0.6, 1 - 0.7]
    a, ret = adv.gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 1.0)
    close(a, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])
