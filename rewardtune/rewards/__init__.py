"""Rewards: plain callables `(prompts, completions, **columns) -> list[float | None]`, and a combiner."""
from .base import CombinedReward, RewardError, RewardFn, RewardResult, check_rewards
from .build import build_rewards, load_function
from .model import RewardModel, RewardModelError, reward_model
from .rules import cost_matrix, indicator, parse_cost_matrix

__all__ = ["CombinedReward", "RewardError", "RewardFn", "RewardResult", "build_rewards", "check_rewards",
           "cost_matrix", "indicator", "load_function", "parse_cost_matrix", "RewardModel", "RewardModelError", "reward_model"]
