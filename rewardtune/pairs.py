"""Preference pairs from rated texts (`rewardtune data pairs`): the data a pairwise reward model trains on, made
from a file whose rows carry a numeric rating (IMDb's 1-10 stars), the way benchmarks/imdb_reward_models.py makes
them: the split first (stratified by label, seeded), then pairs inside each side only, so no validation review is
ever seen in training; two texts form a pair when their ratings differ by at least `min_gap`, the higher one chosen.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

from .data import DataError, load_examples, split

DEFAULT_OUT = "runs/imdb-pairs"  # where the shipped config imdb-rm-pairwise reads its pairs


def make_pairs(texts: Sequence[str], ratings: Sequence[float], n: int, seed: int, min_gap: float = 4) -> list[dict]:
    """n random {prompt: '', chosen, rejected} pairs with |rating difference| ≥ min_gap, no pair drawn twice."""
    if n <= 0:
        return []
    if not ratings or max(ratings) - min(ratings) < min_gap:
        raise DataError(f"no two ratings differ by {min_gap} or more: no pair can be made")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    pairs: list[dict] = []
    for _ in range(1000 + 1000 * n):  # bounded: a small file may hold fewer distinct pairs than asked for
        i, j = rng.randrange(len(texts)), rng.randrange(len(texts))
        if abs(ratings[i] - ratings[j]) < min_gap or (i, j) in seen or (j, i) in seen:
            continue
        seen.add((i, j))
        hi, lo = (i, j) if ratings[i] > ratings[j] else (j, i)
        pairs.append({"prompt": "", "chosen": texts[hi], "rejected": texts[lo]})
        if len(pairs) == n:
            return pairs
    raise DataError(f"found only {len(pairs)} of {n} pairs with ratings {min_gap} or more apart; ask for fewer")


def write_rating_pairs(path: str, out: str = DEFAULT_OUT, train_pairs: int = 1500, val_pairs: int = 500,
                       min_gap: float = 4, val_fraction: float = 0.1, rating_column: str = "rating",
                       text_column: str = "text", label_column: str = "label") -> dict[str, Any]:
    """`out`/train.jsonl and `out`/val.jsonl of pairs from `path` (split seed 0, pair seeds 0 and 1)."""
    ex = load_examples(path, text_column, label_column or None, keep_columns=[rating_column])
    bad = next((r for r in ex.columns[rating_column] if isinstance(r, bool) or not isinstance(r, (int, float))), None)
    if bad is not None or not len(ex):
        raise DataError(f"{ex.source}: column {rating_column!r} must hold a number in every row (found {bad!r})")
    train, val = split(ex, val_fraction, seed=0, stratify=True)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part, n, seed in (("train", train, train_pairs, 0), ("val", val, val_pairs, 1)):
        rows = make_pairs(part.texts, part.columns[rating_column], n, seed, min_gap)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"source": ex.source, "train": str(folder / "train.jsonl"), "val": str(folder / "val.jsonl"),
            "train_pairs": train_pairs, "val_pairs": val_pairs, "train_texts": len(train), "val_texts": len(val)}
