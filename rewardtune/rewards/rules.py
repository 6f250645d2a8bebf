"""Rule rewards for classifiers: the completion is the label name the policy chose."""
from __future__ import annotations

from typing import Any, Callable


def indicator(prompts: list[str], completions: list[str], label: list[Any] | None = None, **_: Any) -> list[float | None]:
    """1.0 when the chosen label equals the gold `label` column, else 0.0 (None without a gold label)."""
    if label is None:
        raise ValueError("indicator needs the gold `label` column")
    return [None if g is None else float(str(c) == str(g)) for c, g in zip(completions, label)]


def parse_cost_matrix(spec: str) -> dict[tuple[str, str], float]:
    """'gold/pred=value,...' → {(gold, pred): value}; e.g. 'positive/negative=-5' (a costly miss)."""
    table: dict[tuple[str, str], float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            pair, value = item.split("=")
            gold, pred = pair.split("/")
            gold, pred, v = gold.strip(), pred.strip(), float(value)
            if not gold or not pred or v != v or v in (float("inf"), float("-inf")):
                raise ValueError
            table[(gold, pred)] = v
        except ValueError:
            raise ValueError(f"cost matrix entry {item!r}: expected gold/pred=value with a finite value, e.g. positive/negative=-5") from None
    return table


def cost_matrix(table: dict[tuple[str, str], float]) -> Callable[..., list[float | None]]:
    """Reward from a (gold, pred) table; pairs not listed get 1 if right, 0 if wrong. `*` stands for any wrong
    label: `oos/*=-2` prices every miss of gold `oos`, `*/oos=-1` every false `oos` (an exact pair comes first)."""
    def value(g: str, c: str) -> float:
        if (g, c) in table or g == c:
            return table.get((g, c), 1.0)
        return table.get((g, "*"), table.get(("*", c), 0.0))

    def reward(prompts: list[str], completions: list[str], label: list[Any] | None = None, **_: Any) -> list[float | None]:
        if label is None:
            raise ValueError("cost_matrix needs the gold `label` column")
        return [None if g is None else value(str(g), str(c)) for c, g in zip(completions, label)]
    return reward
