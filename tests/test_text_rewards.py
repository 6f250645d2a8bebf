"""Text rewards (lexicon, regex, length penalty) and the combiner's normalisation modes, by hand."""
from __future__ import annotations

import math

import pytest
import torch

from rewardtune.rewards import CombinedReward, RewardError, build_rewards
from rewardtune.rewards.text import length_penalty, lexicon, lexicon_score, regex


def test_lexicon_counts_and_negation():
    assert lexicon_score("A great, funny film.") == 1.0  # 2 pos, 0 neg → (2-0)/2
    assert lexicon_score("boring and awful but the music was great") == pytest.approx(-1 / 3)  # (1-2)/3
    assert lexicon_score("not good at all, never boring") == 0.0  # "not good" → neg, "never boring" → pos: (1-1)/2
    assert lexicon_score("The film is about a dog.") == 0.0  # no sentiment words
    assert lexicon()(["p", "p"], ["loved it", "hated it"]) == [1.0, -1.0]


def test_regex_search_and_full_match():
    fn = regex(r"\d+")
    assert fn(["", ""], ["it scores 10 points", "no digits"]) == [1.0, 0.0]
    full = regex(r"(positive|negative)", full=True)
    assert full(["", ""], ["positive", "positive review"]) == [1.0, 0.0]


def test_length_penalty_by_hand():
    fn = length_penalty(4)  # scale defaults to the target: -|n - 4| / 4
    assert fn(["", "", ""], ["a b c d", "a b", "a b c d e f g h"]) == [0.0, -0.5, -1.0]
    assert length_penalty(10, "chars", scale=5)([""], ["abc"]) == [-7 / 5]
    with pytest.raises(ValueError, match="expected words or chars"):
        length_penalty(3, "tokens")


def f_const(values):
    return lambda prompts, completions, **_: list(values)


def test_running_normalisation_uses_all_values_so_far():
    comb = CombinedReward({"a": f_const([1.0, 3.0])}, {"a": 1.0}, normalize="running")
    first = comb(["", ""], ["", ""]).total  # mean 2, std (population) 1 → [-1, 1]
    assert first.tolist() == [-1.0, 1.0]
    comb.fns["a"] = f_const([5.0, None])
    with pytest.raises(RewardError, match="example 1"):  # row 1 has no reward from anyone
        comb(["", ""], ["", ""])
    assert comb.stats["a"].n == 2  # the refused batch left the running statistics alone
    comb = CombinedReward({"a": f_const([1.0, 3.0])}, {"a": 1.0}, normalize="running")
    comb(["", ""], ["", ""])
    comb.fns["a"] = f_const([5.0, 5.0])
    second = comb(["", ""], ["", ""])  # seen 1, 3, 5, 5: mean 3.5, std sqrt(11/4) → 5 ↦ 1.5/1.6583 = 0.9045
    assert second.total[0].item() == pytest.approx(1.5 / math.sqrt(11 / 4), rel=1e-5)
    assert second.components["a"][0].item() == 5.0  # components are logged raw
    assert comb.stats["a"].n == 4


def test_rank_normalisation_within_batch_with_ties_and_none():
    from rewardtune.rewards.base import RunningStats, _rank_norm

    comb = CombinedReward({"a": f_const([10.0, 30.0, 20.0, 20.0])}, {"a": 1.0}, normalize="rank")
    # 10, 30, 20, 20 → ranks 0, 3, 1.5, 1.5 (ties share the mean rank) → / (4 - 1) = 0, 1, .5, .5
    assert comb([""] * 4, [""] * 4).total.tolist() == [0.0, 1.0, 0.5, 0.5]
    out = _rank_norm(torch.tensor([2.0, math.nan, 1.0]), RunningStats())  # no opinion stays no opinion
    assert out[0].item() == 1.0 and math.isnan(out[1].item()) and out[2].item() == 0.0


def test_normalisation_name_is_checked():
    with pytest.raises(RewardError, match="expected one of none, running, rank"):
        build_rewards(["math:floor"], normalize="zscore")
