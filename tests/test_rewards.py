"""Reward contract, validation, the weighted combiner, loading, and the rule rewards.

Every expected value is computed by hand in the comments next to it.
"""
from __future__ import annotations

import math

import pytest
import torch

from rewardtune.rewards import (CombinedReward, RewardError, build_rewards, check_rewards, cost_matrix, indicator,
                                load_function, parse_cost_matrix)

# --- reward functions used by name ('test_rewards:...': tests/ is on sys.path under pytest) -------------


def my_reward(prompts, completions, **_):
    """len(completion) as the reward."""
    return [float(len(c)) for c in completions]


def r_one(prompts, completions, **_):
    return [1.0] * len(prompts)


def r_two(prompts, completions, **_):
    return [2.0] * len(prompts)


NOT_CALLABLE = 42


def const(values):
    """A reward function that ignores its input and returns `values`."""
    def fn(prompts, completions, **_):
        return values
    return fn


def close(t: torch.Tensor, expected: list[float]) -> bool:
    """Element-wise equality up to float32 rounding, NaN == NaN."""
    return torch.allclose(t, torch.tensor(expected, dtype=t.dtype), equal_nan=True, atol=1e-6)


P = ["p0", "p1", "p2"]
C = ["c0", "c1", "c2"]


# --- check_rewards ----------------------------------------------------------------------------------------


def test_check_rewards_converts_to_floats_and_keeps_none():
    # ints, numpy-like scalars and None → [float, float, None]
    assert check_rewards("f", [1, 0.5, None], P, C) == [1.0, 0.5, None]
    out = check_rewards("f", [1, 0.5, None], P, C)
    assert type(out[0]) is float and type(out[1]) is float


def test_check_rewards_accepts_a_tensor():
    # list(tensor([1., 2., 3.])) gives 0-d tensors; float() of each → [1.0, 2.0, 3.0]
    assert check_rewards("f", torch.tensor([1.0, 2.0, 3.0]), P, C) == [1.0, 2.0, 3.0]


def test_check_rewards_wrong_count_names_the_function():
    # 2 values for 3 samples
    with pytest.raises(RewardError) as ei:
        check_rewards("my_len", [1.0, 2.0], P, C)
    msg = str(ei.value)
    assert "'my_len'" in msg
    assert "returned 2 values for 3 samples" in msg


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_rewards_non_finite_shows_the_offending_sample(bad):
    # the bad value sits at index 1 → the message shows prompt 'p1' and completion 'c1', not sample 0
    with pytest.raises(RewardError) as ei:
        check_rewards("f", [0.0, bad, 1.0], P, C)
    msg = str(ei.value)
    assert "'f'" in msg
    assert f"returned {float(bad)}" in msg
    assert "example 1: prompt='p1', completion='c1'" in msg
    assert "'p0'" not in msg


def test_check_rewards_non_numeric_item_shows_the_sample():
    # 'abc' at index 2 cannot be float()ed → message shows the value and sample 2
    with pytest.raises(RewardError) as ei:
        check_rewards("f", [0.0, 1.0, "abc"], P, C)
    msg = str(ei.value)
    assert "'abc'" in msg and "example 2: prompt='p2', completion='c2'" in msg


def test_check_rewards_non_numeric_object_item():
    with pytest.raises(RewardError, match=r"returned \{\} on example 0"):
        check_rewards("f", [{}, 1.0, 1.0], P, C)


@pytest.mark.parametrize("value, type_name", [(3.0, "float"), (None, "NoneType")])
def test_check_rewards_not_a_list(value, type_name):
    with pytest.raises(RewardError, match=rf"reward 'f' returned {type_name}, expected a list of floats"):
        check_rewards("f", value, P, C)


def test_check_rewards_long_prompt_is_cut_in_the_message():
    # prompts are cut to 200 characters in the message: 'x' * 500 → 'x' * 200 in the repr
    long = "x" * 500
    with pytest.raises(RewardError) as ei:
        check_rewards("f", [math.nan], [long], ["c"])
    msg = str(ei.value)
    assert repr("x" * 200) in msg and "x" * 201 not in msg


def test_check_rewards_wrong_count_on_empty_batch_is_a_reward_error():
    # 1 value for 0 samples: a wrong count, which should be reported as RewardError
    with pytest.raises(RewardError, match="returned 1 values for 0 samples"):
        check_rewards("f", [1.0], [], [])


# --- CombinedReward ---------------------------------------------------------------------------------------


def test_combined_plain_weighted_sum_when_all_present():
    # weights a=2, b=1; a=[1, 0], b=[0.5, 3]; W = W_S = 3
    # sample 0: 2·1 + 1·0.5 = 2.5; sample 1: 2·0 + 1·3 = 3.0
    comb = CombinedReward({"a": const([1.0, 0.0]), "b": const([0.5, 3.0])}, {"a": 2.0, "b": 1.0})
    res = comb(["p0", "p1"], ["c0", "c1"])
    assert close(res.total, [2.5, 3.0])
    assert close(res.components["a"], [1.0, 0.0])
    assert close(res.components["b"], [0.5, 3.0])


def test_combined_none_is_left_out_and_weights_rescaled():
    # weights a=2, b=1 → W = 3
    # a = [1.0, 0.5, None], b = [0.5, None, 2.0]
    # sample 0: S={a,b}, W_S=3 → 3/3·(2·1.0 + 1·0.5) = 2.5
    # sample 1: S={a},   W_S=2 → 3/2·(2·0.5)         = 1.5
    # sample 2: S={b},   W_S=1 → 3/1·(1·2.0)         = 6.0
    comb = CombinedReward({"a": const([1.0, 0.5, None]), "b": const([0.5, None, 2.0])}, {"a": 2.0, "b": 1.0})
    res = comb(P, C)
    assert close(res.total, [2.5, 1.5, 6.0])
    # components keep NaN where the function had no opinion
    assert close(res.components["a"], [1.0, 0.5, math.nan])
    assert close(res.components["b"], [0.5, math.nan, 2.0])


def test_combined_none_is_not_zero():
    # weights 2 and 1, rewards 1.0 and None → W=3, W_S=2 → total = 3/2·2·1.0 = 3.0
    # (were None counted as 0 the total would be 2·1.0 + 1·0 = 2.0)
    comb = CombinedReward({"a": const([1.0]), "b": const([None])}, {"a": 2.0, "b": 1.0})
    assert close(comb(["p"], ["c"]).total, [3.0])


def test_combined_single_function_weight_scales():
    # one function, weight 0.5: W = W_S = 0.5 → total = 0.5·r: [0.5·4, 0.5·(-2)] = [2.0, -1.0]
    comb = CombinedReward({"a": const([4.0, -2.0])}, {"a": 0.5})
    assert close(comb(["p0", "p1"], ["c0", "c1"]).total, [2.0, -1.0])


def test_combined_all_none_sample_names_the_example():
    # sample 1 has no opinion from either function → RewardError naming example 1
    comb = CombinedReward({"a": const([1.0, None, 0.0]), "b": const([None, None, 1.0])}, {"a": 1.0, "b": 1.0})
    with pytest.raises(RewardError) as ei:
        comb(P, C)
    msg = str(ei.value)
    assert "no reward function with a non-zero weight gave a value" in msg
    assert "example 1: prompt='p1', completion='c1'" in msg


def test_combined_passes_columns_and_batch():
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions, **columns)
        return [0.0] * len(prompts)

    CombinedReward({"s": spy}, {"s": 1.0})(["p0", "p1"], ["c0", "c1"], label=["x", "y"], other=[1, 2])
    assert seen == {"prompts": ["p0", "p1"], "completions": ["c0", "c1"], "label": ["x", "y"], "other": [1, 2]}


def test_combined_raising_function_is_named_and_chained():
    original = KeyError("missing column")

    def broken(prompts, completions, **_):
        raise original

    comb = CombinedReward({"ok": const([1.0, 1.0]), "broken": broken}, {"ok": 1.0, "broken": 1.0})
    with pytest.raises(RewardError) as ei:
        comb(["p0", "p1"], ["c0", "c1"])
    msg = str(ei.value)
    assert "'broken'" in msg and "raised KeyError" in msg and "missing column" in msg
    assert "batch of 2" in msg and "prompt='p0'" in msg
    assert ei.value.__cause__ is original


def test_combined_wrong_count_names_the_function():
    comb = CombinedReward({"ok": const([1.0, 1.0]), "short": const([1.0])}, {"ok": 1.0, "short": 1.0})
    with pytest.raises(RewardError, match=r"reward 'short' returned 1 values for 2 samples"):
        comb(["p0", "p1"], ["c0", "c1"])


def test_combined_nan_shows_the_offending_sample():
    comb = CombinedReward({"n": const([0.0, math.nan])}, {"n": 1.0})
    with pytest.raises(RewardError) as ei:
        comb(["good prompt", "bad prompt"], ["good answer", "bad answer"])
    msg = str(ei.value)
    assert "'n'" in msg and "returned nan" in msg
    assert "prompt='bad prompt', completion='bad answer'" in msg


def test_combined_non_numeric_value():
    comb = CombinedReward({"s": const(["high"])}, {"s": 1.0})
    with pytest.raises(RewardError, match=r"reward 's' returned 'high' on example 0"):
        comb(["p"], ["c"])


def test_combined_raising_function_on_empty_batch_is_a_reward_error():
    def broken(prompts, completions, **_):
        raise RuntimeError("boom")

    with pytest.raises(RewardError, match="boom"):
        CombinedReward({"broken": broken}, {"broken": 1.0})([], [])


# --- load_function ----------------------------------------------------------------------------------------


def test_load_function_from_this_module():
    fn = load_function("test_rewards:my_reward")
    # len('ab') = 2, len('') = 0
    assert fn(["p", "q"], ["ab", ""]) == [2.0, 0.0]


def test_load_function_stdlib():
    import os.path

    assert load_function("os.path:join") is os.path.join


@pytest.mark.parametrize("spec, match", [
    ("my_reward", r"expected a built-in name or 'module:function'"),
    ("no_such_module_xyz:f", r"'no_such_module_xyz:f' cannot be imported"),
    ("test_rewards:no_such_function", r"'test_rewards:no_such_function' cannot be imported"),
    ("test_rewards:", r"'test_rewards:' cannot be imported"),
    ("test_rewards:NOT_CALLABLE", r"'test_rewards:NOT_CALLABLE' is not callable"),
    ("math:pi", r"'math:pi' is not callable"),
])
def test_load_function_bad_specs(spec, match):
    with pytest.raises(RewardError, match=match):
        load_function(spec)


@pytest.mark.parametrize("spec", [
    ":my_reward",
    ".relative:my_reward",
])
def test_load_function_malformed_module_is_a_reward_error(spec):
    with pytest.raises(RewardError, match="cannot be imported"):
        load_function(spec)


# --- build_rewards ----------------------------------------------------------------------------------------


def test_build_rewards_builtin_via_registry_calls_the_factory():
    calls = []

    def factory():
        calls.append(1)
        return indicator

    comb = build_rewards(["indicator"], registry={"indicator": factory})
    assert calls == [1]
    assert comb.fns == {"indicator": indicator}
    assert comb.weights == {"indicator": 1.0}
    # gold 'pos', completions pos/neg → [1.0, 0.0]; one function, weight 1 → total = reward
    res = comb(["a", "b"], ["pos", "neg"], label=["pos", "pos"])
    assert close(res.total, [1.0, 0.0])


def test_build_rewards_default_weights_are_one():
    # r_one = 1.0, r_two = 2.0 on each sample, weights 1, 1 → total = 1 + 2 = 3.0
    comb = build_rewards(["test_rewards:r_one", "test_rewards:r_two"])
    assert comb.weights == {"test_rewards:r_one": 1.0, "test_rewards:r_two": 1.0}
    assert close(comb(["p", "q"], ["c", "d"]).total, [3.0, 3.0])


def test_build_rewards_weights_and_module_function():
    # my_reward = len(completion): 'abc' → 3.0, 'a' → 1.0; r_one = 1.0
    # weights 0.5 (my_reward), 2 (r_one), ints converted to float; W = W_S = 2.5
    # sample 0: 0.5·3 + 2·1 = 3.5; sample 1: 0.5·1 + 2·1 = 2.5
    comb = build_rewards(["test_rewards:my_reward", "test_rewards:r_one"], [0.5, 2])
    assert comb.weights == {"test_rewards:my_reward": 0.5, "test_rewards:r_one": 2.0}
    assert all(type(w) is float for w in comb.weights.values())
    assert close(comb(["p", "q"], ["abc", "a"]).total, [3.5, 2.5])


def test_build_rewards_mixes_builtin_and_module():
    # indicator: gold 'pos' → completions pos/neg → [1, 0]; r_two → [2, 2]; weights 3, 1 → W = 4
    # sample 0: 3·1 + 1·2 = 5.0; sample 1: 3·0 + 1·2 = 2.0
    comb = build_rewards(["indicator", "test_rewards:r_two"], [3, 1], {"indicator": lambda: indicator})
    assert close(comb(["a", "b"], ["pos", "neg"], label=["pos", "pos"]).total, [5.0, 2.0])


def test_build_rewards_unknown_builtin_lists_builtins():
    registry = {"indicator": lambda: indicator, "cost_matrix": lambda: cost_matrix({})}
    with pytest.raises(RewardError) as ei:
        build_rewards(["accuracy"], registry=registry)
    msg = str(ei.value)
    assert "unknown reward 'accuracy'" in msg
    assert "built-ins: indicator, cost_matrix" in msg
    assert "module:function" in msg


def test_build_rewards_weight_count_mismatch():
    with pytest.raises(RewardError, match=r"3 reward weights for 2 reward functions"):
        build_rewards(["test_rewards:r_one", "test_rewards:r_two"], [1.0, 2.0, 3.0])
    with pytest.raises(RewardError, match=r"1 reward weights for 2 reward functions"):
        build_rewards(["test_rewards:r_one", "test_rewards:r_two"], [1.0])


def test_build_rewards_no_names():
    with pytest.raises(RewardError, match="no reward functions given"):
        build_rewards([])


def test_build_rewards_bad_module_spec():
    with pytest.raises(RewardError, match=r"cannot be imported"):
        build_rewards(["no_such_module_xyz:f"])


def test_build_rewards_takes_a_callable_as_is_named_by_its_function_name():
    # my_reward = len(completion): 'abc' → 3.0; r_one = 1.0; weights 0.5, 2 → 0.5·3 + 2·1 = 3.5
    comb = build_rewards([my_reward, "test_rewards:r_one"], [0.5, 2])
    assert comb.fns == {"my_reward": my_reward, "test_rewards:r_one": r_one}
    assert comb.weights == {"my_reward": 0.5, "test_rewards:r_one": 2.0}
    assert close(comb(["p"], ["abc"]).total, [3.5])


def test_build_rewards_names_lambdas_and_clashing_callables_by_their_position():
    # a lambda has no usable name (`<lambda>`) → reward_<position>; a second function called `fn` (const makes
    # them all so) and a function whose name a string entry holds take their position's name too
    a, b, lam = const([1.0]), const([2.0]), (lambda prompts, completions, **_: [4.0])
    comb = build_rewards([a, lam, b, "r_one", r_one], registry={"r_one": lambda: r_one})
    assert list(comb.fns) == ["fn", "reward_2", "reward_3", "r_one", "reward_5"]
    assert comb.fns["reward_2"] is lam and comb.fns["reward_3"] is b and comb.fns["reward_5"] is r_one
    assert close(comb(["p"], ["c"]).total, [1.0 + 4.0 + 2.0 + 1.0 + 1.0])


def test_build_rewards_refuses_the_same_callable_twice_and_what_is_not_callable():
    with pytest.raises(RewardError, match="listed twice"):
        build_rewards([r_one, r_one])
    with pytest.raises(RewardError, match="expected a name or a callable, got int"):
        build_rewards([42])
    with pytest.raises(RewardError, match="'reward_2' is already a reward's name"):
        build_rewards(["reward_2", lambda p, c, **_: [0.0] * len(p)], registry={"reward_2": lambda: r_one})


def test_a_classifier_rl_reward_may_be_a_callable():
    from rewardtune.train.rl_classifier import ClassifierRewardSettings, setup_reward

    reward = setup_reward(ClassifierRewardSettings(functions=("indicator", my_reward), weights=(2.0, 1.0)))
    assert reward.fns == {"indicator": indicator, "my_reward": my_reward}
    # indicator: 'pos' is gold → 1; my_reward: len('pos') = 3; 2·1 + 1·3 = 5
    assert close(reward(["x"], ["pos"], label=["pos"]).total, [5.0])


def test_a_generative_rl_reward_may_be_a_callable():
    from rewardtune.train.gen_config import RewardSettings
    from rewardtune.train.gen_setup import setup_reward

    reward = setup_reward(RewardSettings(functions=("length", my_reward)))
    assert list(reward.fns) == ["length", "my_reward"] and reward.fns["my_reward"] is my_reward
    # length: 2 words / 10 = 0.2; my_reward: len('a b') = 3 → 3.2
    assert close(reward(["p"], ["a b"]).total, [3.2])


def test_build_rewards_repeated_name_keeps_weights_aligned():
    # names a, a, b with weights 1, 2, 3: b's weight is 3. Either refuse the repeat or keep b at 3.
    try:
        comb = build_rewards(["test_rewards:r_one", "test_rewards:r_one", "test_rewards:r_two"], [1.0, 2.0, 3.0])
    except RewardError:
        return
    assert comb.weights["test_rewards:r_two"] == 3.0


# --- indicator ----------------------------------------------------------------------------------------------


def test_indicator_str_labels():
    assert indicator(P, ["pos", "neg", "pos"], label=["pos", "pos", "neg"]) == [1.0, 0.0, 0.0]


def test_indicator_int_gold_labels_compare_as_strings():
    # str(1) == '1', str(0) != '1'
    assert indicator(["a", "b"], ["1", "1"], label=[1, 0]) == [1.0, 0.0]


def test_indicator_none_gold_is_no_opinion():
    assert indicator(["a", "b"], ["pos", "pos"], label=[None, "pos"]) == [None, 1.0]


def test_indicator_needs_label():
    with pytest.raises(ValueError, match="gold `label` column"):
        indicator(["a"], ["pos"])


def test_indicator_ignores_other_columns():
    assert indicator(["a"], ["pos"], label=["pos"], source=["x"]) == [1.0]


# --- cost matrix --------------------------------------------------------------------------------------------


def test_parse_cost_matrix():
    # whitespace is stripped; values are floats; an empty item (trailing comma) is skipped
    table = parse_cost_matrix(" positive / negative = -5 , negative/positive=-0.5,neutral/neutral=2,")
    assert table == {("positive", "negative"): -5.0, ("negative", "positive"): -0.5, ("neutral", "neutral"): 2.0}


def test_parse_cost_matrix_empty():
    assert parse_cost_matrix("") == {}


@pytest.mark.parametrize("spec, item", [
    ("positive-negative=-5", "positive-negative=-5"),       # no '/'
    ("positive/negative", "positive/negative"),             # no '='
    ("a/b=1=2", "a/b=1=2"),                                 # two '='
    ("a/b/c=1", "a/b/c=1"),                                 # two '/'
    ("a/b=1, a/c=high", "a/c=high"),                        # value is not a number; the bad item is named
])
def test_parse_cost_matrix_errors(spec, item):
    with pytest.raises(ValueError) as ei:
        parse_cost_matrix(spec)
    msg = str(ei.value)
    assert f"cost matrix entry {item!r}" in msg
    assert "expected gold/pred=value" in msg


def test_cost_matrix_table_and_defaults():
    fn = cost_matrix(parse_cost_matrix("positive/negative=-5,negative/negative=0.5"))
    # (gold, pred):
    #   (positive, negative) listed → -5
    #   (negative, negative) listed → 0.5 (overrides the default 1 for a right answer)
    #   (positive, positive) not listed, right → 1.0
    #   (negative, positive) not listed, wrong → 0.0
    out = fn(["a", "b", "c", "d"], ["negative", "negative", "positive", "positive"],
             label=["positive", "negative", "positive", "negative"])
    assert out == [-5.0, 0.5, 1.0, 0.0]


def test_cost_matrix_int_gold_labels():
    # gold 1 → '1'; ('1', '0') listed → -2; ('0', '0') unlisted right → 1.0
    fn = cost_matrix({("1", "0"): -2.0})
    assert fn(["a", "b"], ["0", "0"], label=[1, 0]) == [-2.0, 1.0]


def test_cost_matrix_needs_label():
    with pytest.raises(ValueError, match="gold `label` column"):
        cost_matrix({})(["a"], ["pos"])


def test_cost_matrix_through_combiner():
    # cost_matrix weight 1, indicator weight 1 → W = 2, all present
    # (positive, negative): cost -5, indicator 0 → -5; (positive, positive): 1 + 1 = 2
    comb = CombinedReward({"cm": cost_matrix({("positive", "negative"): -5.0}), "ind": indicator},
                          {"cm": 1.0, "ind": 1.0})
    res = comb(["a", "b"], ["negative", "positive"], label=["positive", "positive"])
    assert close(res.total, [-5.0, 2.0])


def test_cost_matrix_none_gold_is_no_opinion():
    fn = cost_matrix({})
    assert fn(["a", "b"], ["pos", "None"], label=[None, None]) == [None, None]


def test_negative_weight_keeps_its_sign_when_others_abstain():
    # weights good=2, penalty=-1; sample 0: both present (1.0, 1.0) → 2·1 - 1·1 = 1.0
    # sample 1: only penalty present (1.0) → W = |2|+|-1| = 3, W_S = 1 → 3/1 · (-1·1.0) = -3.0 (still a penalty)
    def good(prompts, completions, **_):
        return [1.0, None]

    def penalty(prompts, completions, **_):
        return [1.0, 1.0]

    combined = CombinedReward({"good": good, "penalty": penalty}, {"good": 2.0, "penalty": -1.0})
    assert combined(["p0", "p1"], ["c0", "c1"]).total.tolist() == [1.0, -3.0]


def _lengths(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def _halves_over_two_processes(normalize):
    """One process scoring 8 completions, and two simulated processes scoring 4 each with `gather` returning the
    global batch's values (what the run's accelerator.gather gives): (one process's totals, the two shares')."""
    texts = ["a", "bbbb", "cc", "ddddddd", "e", "ff", "ggg", "hhhhh"]
    one = CombinedReward({"len": _lengths}, {"len": 1.0}, normalize)
    whole = [one([""] * 8, texts).total for _ in range(2)]  # two steps: the running statistics carry over
    full = torch.tensor(_lengths([], texts))
    shares = [CombinedReward({"len": _lengths}, {"len": 1.0}, normalize, gather=lambda _t: full, rank=r) for r in (0, 1)]
    parts = [[shares[r]([""] * 4, texts[4 * r:4 * r + 4]).total for r in (0, 1)] for _ in range(2)]
    return one, whole, shares, parts


@pytest.mark.parametrize("normalize", ["running", "rank"])
def test_normalisation_over_processes_is_the_global_batch_s(normalize):
    one, whole, shares, parts = _halves_over_two_processes(normalize)
    for w, (p0, p1) in zip(whole, parts):
        assert torch.allclose(torch.cat([p0, p1]), w, atol=1e-6)
    if normalize == "running":  # every process keeps the same statistics, so a checkpoint of any one resumes all
        assert shares[0].state_dict() == shares[1].state_dict() == one.state_dict()
    alone = CombinedReward({"len": _lengths}, {"len": 1.0}, normalize)([""] * 4, ["e", "ff", "ggg", "hhhhh"]).total
    assert not torch.allclose(alone, whole[0][4:])  # without the gather: the share's own normalisation differs


def test_unnormalized_scores_are_raw_and_leave_the_statistics_alone():
    r = CombinedReward({"len": _lengths, "half": lambda p, c, **_: [0.5] * len(c)}, {"len": 2.0, "half": 1.0}, "running")
    r([""] * 3, ["a", "bb", "ccc"])  # training sees these
    before = r.state_dict()
    raw = r.unnormalized([""] * 2, ["dddd", "e"])
    assert raw.total.tolist() == [2.0 * 4 + 0.5, 2.0 * 1 + 0.5] and r.state_dict() == before
