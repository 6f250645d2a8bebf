"""How a reward function is called: which arguments it gets by name, and which data columns it needs.

A reward sees `prompts`, `completions` and every other column of the data rows, one list per column aligned with
the completions, all by keyword — the convention TRL's reward functions use, so `f(completions, ground_truth,
**kwargs)` works unchanged. A function that names neither `prompts` nor `completions` but takes two positional
parameters first (`lambda p, c, **_: ...`, rewardtune's older contract) gets them in that order; nothing else is
ever bound by position. A function's required parameters are checked against the data's columns before a run
starts (`missing_columns`), so a reward never silently scores the wrong list.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

RESERVED = ("prompts", "completions")  # what every reward is given; no data column may take these names
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class Binding:
    """How to call one reward function."""

    positional: bool  # prompts and completions go to its first two parameters (it names neither)
    accepts: frozenset[str] | None  # the keywords it takes (None: any, it has **kwargs)
    required: tuple[str, ...]  # parameters without a default that the data's columns must supply


def binding(fn: Callable[..., Any]) -> Binding:
    """`fn`'s binding, read from its signature (a callable whose signature cannot be read takes everything by
    keyword, as the contract says)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return Binding(False, None, ())
    names = {p.name for p in params}
    positional = [p for p in params if p.kind in _POSITIONAL]
    legacy = not names & set(RESERVED) and len(positional) >= 2
    bound = {p.name for p in positional[:2]} if legacy else set(RESERVED)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    required = tuple(p.name for p in named if p.default is inspect.Parameter.empty and p.name not in bound)
    accepts = None if var_kw else frozenset(p.name for p in named if p.kind is not inspect.Parameter.POSITIONAL_ONLY)
    return Binding(legacy, accepts, required)


def call_reward(fn: Callable[..., Any], prompts: list[str], completions: list[str],
                columns: dict[str, list[Any]], how: Binding | None = None) -> Any:
    """`fn` on one batch, every argument by name (see the module's docstring)."""
    how = how or binding(fn)
    given = columns if how.positional else {"prompts": prompts, "completions": completions, **columns}
    kwargs = given if how.accepts is None else {k: v for k, v in given.items() if k in how.accepts}
    return fn(prompts, completions, **kwargs) if how.positional else fn(**kwargs)


def missing_columns(fn: Callable[..., Any], columns: Sequence[str]) -> list[str]:
    """The required parameters of `fn` that no data column supplies."""
    return [p for p in binding(fn).required if p not in columns]
