"""Tokenise once, then batch with dynamic padding and (optionally) length grouping.

Tokenising the whole set up front (fast tokenizers, batched) is cheaper than tokenising in
every step, and lets the sampler group similar lengths so that little compute goes to padding.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import torch

Truncation = Literal["head", "tail", "head+tail"]


def truncate(ids: list[int], budget: int, how: Truncation) -> list[int]:
    """Keep `budget` tokens: the first ones, the last ones, or a quarter head + three quarters tail.

    head+tail follows Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?"), where
    keeping the start and the end of long reviews beat either alone.
    """
    if how not in ("head", "tail", "head+tail"):
        raise ValueError(f"truncation {how!r}: expected head, tail or head+tail")
    if len(ids) <= budget:
        return ids
    if how == "head":
        return ids[:budget]
    if how == "tail":
        return ids[len(ids) - budget:]
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head):]


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, how: Truncation = "head") -> list[list[int]]:
    """Token ids with special tokens, each at most `max_length` long, truncated as asked."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget <= 0:
        raise ValueError(f"max_length={max_length} leaves no room after {len(prefix) + len(suffix)} special tokens")
    # Whole texts first, cut below: transformers warns once that a text exceeds the model's length,
    # which is expected here, so the warning is marked as already given.
    getattr(tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
    raw = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    return [prefix + truncate(ids, budget, how) + suffix for ids in raw]


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text (e.g. [CLS] … [SEP]).

    Found by encoding a probe with and without special tokens, which works for any tokenizer
    (transformers 5 dropped `build_inputs_with_special_tokens` from fast tokenizers).
    """
    plain = tokenizer("movie", add_special_tokens=False)["input_ids"]
    full = tokenizer("movie", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    raise ValueError("cannot tell where this tokenizer puts its special tokens")


@dataclass
class Batch:
    """A padded batch: ids (b, L), mask (b, L), labels (b,) or None, and row indices into the set."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    index: torch.Tensor
    weight: float = 1.0  # multiplies the batch-mean loss (see train.common.epoch_batches)

    def to(self, device: Any) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     None if self.labels is None else self.labels.to(device), self.index.to(device), self.weight)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def collate(encoded: Sequence[list[int]], labels: Sequence[int] | None, index: Sequence[int], pad_id: int) -> Batch:
    """Right-pad the rows in `index` to the longest of them."""
    rows = [encoded[i] for i in index]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r)
        mask[j, : len(r)] = 1
    lab = None if labels is None else torch.tensor([labels[i] for i in index])
    return Batch(ids, mask, lab, torch.tensor(list(index)))


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                group_by_length: bool = True, mega: int = 50) -> list[list[int]]:
    """Index lists, one per batch, deterministic in (seed, epoch).

    Length grouping: shuffle, cut into chunks of `mega` batches, sort each chunk by length, cut
    into batches, then shuffle the batches. Batches stay random across the epoch but rows within
    a batch have similar lengths.
    """
    idx = list(range(len(lengths)))
    rng = random.Random(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(idx)
    if group_by_length:
        chunk = batch_size * mega
        idx = [i for s in range(0, len(idx), chunk) for i in sorted(idx[s:s + chunk], key=lambda i: -lengths[i])]
    batches = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    return batches


def iterate(encoded: Sequence[list[int]], labels: Sequence[int] | None, batches: Sequence[Sequence[int]],
            pad_id: int) -> Iterator[Batch]:
    for index in batches:
        yield collate(encoded, labels, index, pad_id)
