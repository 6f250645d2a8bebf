"""From what a config or a caller lists to a CombinedReward: built-in names, `rm:FOLDER`, `module:function`,
or a Python callable given as is.

This sits above the combiner (base.py) and the reward-model reward (model.py): it is the one place that knows
every way of naming a reward, so neither of those needs the other.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from .base import NORMALIZERS, CombinedReward, RewardError
from .model import check_folder, reward_model


def load_function(spec: str) -> Callable[..., Any]:
    """`package.module:function` → the function (the user's own reward)."""
    if ":" not in spec:
        raise RewardError(f"reward {spec!r}: expected a built-in name or 'module:function'")
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError, ValueError, TypeError) as e:  # ValueError/TypeError: '' or relative names
        raise RewardError(f"reward {spec!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise RewardError(f"reward {spec!r} is not callable")
    return fn


def reward_names(rewards: Sequence[str | Callable[..., Any]]) -> list[str]:
    """One unique name per entry, in order: a string is its own name; a callable its `__name__`, unless that is no
    identifier (a lambda's `<lambda>`, a callable object without one) or an earlier entry has it, when it is
    `reward_<position>` (1-based). The same string or function object listed twice is an error: each function
    is given once, with its weight."""
    strings = [r for r in rewards if isinstance(r, str)]
    dup = sorted({n for n in strings if strings.count(n) > 1})
    if dup:
        raise RewardError(f"reward(s) {', '.join(dup)} listed twice; give each function once with its weight")
    fns = [r for r in rewards if not isinstance(r, str)]
    if len({id(f) for f in fns}) < len(fns):
        raise RewardError("a reward function is listed twice; give each function once with its weight")
    names: list[str] = []
    taken = set(strings)  # a string keeps its name: a callable yields to it, wherever it stands
    for i, r in enumerate(rewards, 1):
        if isinstance(r, str):
            names.append(r)
            continue
        name = getattr(r, "__name__", "")
        if not (isinstance(name, str) and name.isidentifier()) or name in taken:
            name = f"reward_{i}"
        if name in taken:
            raise RewardError(f"reward {r!r} at position {i} cannot be named: {name!r} is already a reward's name")
        taken.add(name)
        names.append(name)
    return names


def _resolve(reward: str | Callable[..., Any], registry: dict[str, Callable[[], Any]], device: Any,
             load_models: bool = True) -> Callable[..., Any]:
    """One listed reward → its function (a reward model's folder only checked, not loaded, without `load_models`)."""
    if not isinstance(reward, str):
        if not callable(reward):
            raise RewardError(f"reward {reward!r}: expected a name or a callable, got {type(reward).__name__}")
        return reward  # the caller's own function, used as is
    if reward in registry:
        return registry[reward]()
    if reward.startswith("rm:") and not load_models:  # its files checked; the model loads with the run
        check_folder(reward[3:])
        return lambda prompts, completions, **_: [0.0] * len(completions)
    if reward.startswith("rm:"):  # a trained reward model folder, scored with its own tokenizer
        return reward_model(reward[3:], **({"device": str(device)} if device is not None else {}))
    if ":" in reward:
        return load_function(reward)
    raise RewardError(f"unknown reward {reward!r}; built-ins: {', '.join(registry)}; "
                      "or give 'rm:FOLDER' or 'module:function'")


def build_rewards(names: Sequence[str | Callable[..., Any]], weights: Sequence[float] = (),
                  registry: dict[str, Callable[[], Any]] | None = None, normalize: str = "none",
                  on_error: str = "raise", device: Any = None, load_models: bool = True) -> CombinedReward:
    """Rewards (a built-in name, `rm:FOLDER`, `module:function`, or a callable: see `reward_names` for what a callable
    is called) and weights (default 1 each) → a CombinedReward. `device`: where reward models run (the trainer
    passes its accelerator's; None = the CPU). `load_models=False`: every name and setting checked, a reward model's
    folder too, but not loaded (a check before the run folder exists; the result stands in and scores 0)."""
    if not names:
        raise RewardError("no reward functions given")
    if weights and len(weights) != len(names):
        raise RewardError(f"{len(weights)} reward weights for {len(names)} reward functions")
    registry = registry or {}
    keys = reward_names(names)
    fns = {key: _resolve(r, registry, device, load_models) for key, r in zip(keys, names)}
    ws = [float(x) for x in weights] if weights else [1.0] * len(names)
    if normalize not in NORMALIZERS:
        raise RewardError(f"reward normalisation {normalize!r}: expected one of {', '.join(NORMALIZERS)}")
    if on_error not in ("raise", "skip"):
        raise RewardError(f"on_reward_error {on_error!r}: expected raise or skip")
    return CombinedReward(fns, dict(zip(fns, ws)), normalize, on_error=on_error)
