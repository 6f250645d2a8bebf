"""Rule rewards for generated text: format (regex), length, and a sentiment lexicon.

Each is a factory returning a reward function of the standard contract
`(prompts, completions, **columns) -> list[float | None]`.
"""
from __future__ import annotations

import re
from typing import Any, Callable

RewardFn = Callable[..., list]

# A small sentiment lexicon written for rewardtune (movie-review words; not copied from a published list).
POSITIVE = frozenset("""
amazing awesome beautiful best brilliant captivating charming clever compelling delight delightful enjoy enjoyable
enjoyed excellent exceptional fantastic fascinating favorite fine fun funny gem good gorgeous great happy heartfelt
hilarious impressive incredible inspiring love loved lovely magnificent marvelous masterpiece memorable moving
nice perfect pleasant powerful recommend remarkable rich satisfying smart solid stunning superb sweet terrific
thoughtful thrilling touching warm wonderful worth
""".split())
NEGATIVE = frozenset("""
annoying awful bad bland boring clumsy confusing crap disappointing disappointment dreadful dull dumb forgettable
garbage hate hated horrible lame laughable mediocre mess messy miserable painful pathetic pointless poor
predictable ridiculous sad shallow silly slow stupid tedious terrible tiresome ugly unbearable uninspired
unfunny waste wasted weak worse worst
""".split())
NEGATORS = frozenset("not no never hardly isn't wasn't don't doesn't didn't can't couldn't".split())
_WORD = re.compile(r"[a-z']+")


def lexicon_score(text: str) -> float:
    """(#positive − #negative) / (#positive + #negative) in [−1, 1]; 0 without sentiment words.

    A word right after a negator ("not good") counts for the opposite side.
    """
    words = _WORD.findall(text.lower())
    pos = neg = 0
    for i, w in enumerate(words):
        flip = i > 0 and words[i - 1] in NEGATORS
        if w in POSITIVE:
            pos, neg = (pos, neg + 1) if flip else (pos + 1, neg)
        elif w in NEGATIVE:
            pos, neg = (pos + 1, neg) if flip else (pos, neg + 1)
    return 0.0 if pos + neg == 0 else (pos - neg) / (pos + neg)


def lexicon() -> RewardFn:
    """Sentiment of each completion by the built-in lexicon, in [−1, 1]."""
    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [lexicon_score(c) for c in completions]
    return reward


def regex(pattern: str, full: bool = False) -> RewardFn:
    """1.0 when the completion matches `pattern` (searched, or the whole text with `full`), else 0.0."""
    rx = re.compile(pattern, re.DOTALL)
    match = rx.fullmatch if full else rx.search

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [float(match(c) is not None) for c in completions]
    return reward


def length_penalty(target: int, unit: str = "words", scale: float | None = None) -> RewardFn:
    """−|len − target| / scale (scale defaults to target): 0 at the target length, negative elsewhere."""
    if unit not in ("words", "chars"):
        raise ValueError(f"length unit {unit!r}: expected words or chars")
    scale = float(scale or target or 1)

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        lengths = [len(c.split()) if unit == "words" else len(c) for c in completions]
        return [-abs(n - target) / scale for n in lengths]
    return reward
