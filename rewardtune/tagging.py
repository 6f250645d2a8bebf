"""Tagged sentences: rows of words and their BIO tags, read and checked; words aligned with sub-tokens.

A row holds a list of words (`tokens`) and one tag per word (`tags`), e.g. WikiANN and WNUT-17 in
`../shared/data/ner`. The policy acts once per word, on the word's first sub-token (the fast tokenizer's
`word_ids`). A word the encoding has no sub-token for (past `max_length`, or one the tokenizer drops entirely,
such as a lone zero-width space) is *unaligned*: it takes no part in training, and its predicted tag is `O`, so
evaluation counts a gold entity there as missed. The rows' words stay whole for evaluation and predictions.
"""
from __future__ import annotations

import logging
import reprlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import DataError, Table, read_table

log = logging.getLogger("rewardtune.data")


@dataclass
class TaggedExamples:
    """Validated sentences: words, tag indices into `tag_names`, where each row came from."""

    tokens: list[list[str]]
    tags: list[list[int]]
    tag_names: list[str]
    source: str = ""
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, idx: Sequence[int]) -> "TaggedExamples":
        return replace(self, tokens=[self.tokens[i] for i in idx], tags=[self.tags[i] for i in idx], skipped=0)

    def tag_strings(self) -> list[list[str]]:
        return [[self.tag_names[t] for t in row] for row in self.tags]


def order_tags(tags: set[str]) -> list[str]:
    """The tag set of the tags seen: O, and B-X and I-X for every type X seen (a type seen only as B-X may still
    continue); O first, then by type, B- before I-."""
    types = {t[2:] for t in tags if t != "O"}
    return ["O"] + [f"{p}-{x}" for x in sorted(types) for p in ("B", "I")]


def _check_tags(raw: Any, n: int, field: str, tag_set: Sequence[str]) -> list[str]:
    """One row's tags: a list of `n` BIO tag strings, each in `tag_set` when that is given."""
    if not isinstance(raw, list):
        raise DataError(f"field {field!r}: expected a list of tags, got {type(raw).__name__} {reprlib.repr(raw)}")
    if len(raw) != n:
        raise DataError(f"field {field!r}: {len(raw)} tags for {n} tokens; give exactly one tag per token")
    for i, t in enumerate(raw):
        if not isinstance(t, str) or not (t == "O" or (t[:2] in ("B-", "I-") and len(t) > 2 and not any(
                c.isspace() for c in t))):
            raise DataError(f"field {field!r}: tag {i} is {reprlib.repr(t)}; expected IOB2 tags: O, B-TYPE or I-TYPE")
        if tag_set and t not in tag_set:
            raise DataError(f"field {field!r}: tag {i} {t!r} is not in the tag set {list(tag_set)}; add it to "
                            "data.labels (or train on data that has it)")
    return raw


def _check_row(row: dict[str, Any], tokens_column: str, tags_column: str, tag_set: Sequence[str]
               ) -> tuple[list[str], list[str]]:
    words = row.get(tokens_column)
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise DataError(f"field {tokens_column!r}: expected a list of words (strings), got {reprlib.repr(words)}")
    return words, _check_tags(row.get(tags_column), len(words), tags_column, tag_set)


def to_tagged(table: Table, tokens_column: str = "tokens", tags_column: str = "tags", tag_names: Sequence[str] = (),
              skip_invalid: bool = False) -> TaggedExamples:
    """Rows → TaggedExamples; `tag_names` fixes the tag set (else the file's tags, in `order_tags` order)."""
    for needed in (tokens_column, tags_column):
        if needed not in table.columns:
            raise DataError(f"{table.source}: no column {needed!r}; the columns are: {', '.join(table.columns)}")
    words, tags, reasons = [], [], []
    for row, where in zip(table.rows, table.where):
        try:
            w, t = _check_row(row, tokens_column, tags_column, tag_names)
        except DataError as e:
            if not skip_invalid:
                raise DataError(f"{where}: {e}") from None
            reasons.append(f"{where}: {e}")
            continue
        words.append(w)
        tags.append(t)
    if reasons:
        log.warning("skipped %d invalid row(s) of %s; first: %s", len(reasons), table.source, "; ".join(reasons[:3]))
    if not words:
        raise DataError(f"{table.source}: no valid rows left" + (f" ({len(reasons)} skipped)" if reasons else ""))
    names = list(tag_names) or order_tags({t for row in tags for t in row})
    index = {t: i for i, t in enumerate(names)}
    return TaggedExamples(words, [[index[t] for t in row] for row in tags], names, table.source, len(reasons))


def load_tagged(path: str | Path, tokens_column: str = "tokens", tags_column: str = "tags",
                tag_names: Sequence[str] = (), skip_invalid: bool = False) -> TaggedExamples:
    """`read_table` + `to_tagged`."""
    return to_tagged(read_table(path), tokens_column, tags_column, tag_names, skip_invalid)


# ---------------------------------------------------------------- alignment
@dataclass
class Encoded:
    """One sentence's token ids, and for each aligned word (in order) its index among the words and the position
    of its first sub-token."""

    ids: list[int]
    words: list[int]
    first: list[int]


def check_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        from .models import ModelError

        raise ModelError(f"the tagger needs a fast tokenizer (word_ids), got {type(tokenizer).__name__}; use a "
                         "model whose folder has tokenizer.json")


def align(word_ids: Sequence[int | None]) -> tuple[list[int], list[int]]:
    """Each word's first sub-token: `word_ids` (None for special tokens) → (aligned words, their positions)."""
    words, first, seen = [], [], set()
    for pos, w in enumerate(word_ids):
        if w is not None and w not in seen:
            seen.add(w)
            words.append(w)
            first.append(pos)
    return words, first


def encode_tagged(tokenizer: Any, sentences: Sequence[Sequence[str]], max_length: int) -> list[Encoded]:
    """Sub-token ids (special tokens included, at most `max_length`: the head is kept) and the word alignment."""
    check_fast(tokenizer)
    out = []
    for start in range(0, len(sentences), 1000):  # batched for speed; an empty sentence is encoded alone
        chunk = [list(s) for s in sentences[start:start + 1000]]
        enc = tokenizer([s or [""] for s in chunk], is_split_into_words=True, truncation=True, max_length=max_length)
        for i, s in enumerate(chunk):
            words, first = align(enc.word_ids(i)) if s else ([], [])
            # A tokenizer without special tokens gives an empty sentence no ids; the model needs one position.
            out.append(Encoded(enc["input_ids"][i] or [tokenizer.pad_token_id or 0], words, first))
    return out


@dataclass
class TagBatch:
    """A padded batch: ids/mask (b, L); per aligned word: its first sub-token `first` (b, W), `word_mask` (b, W),
    gold `tags` (b, W) (0 where padded); `index` (b,) rows of the set; `weight` as in `batching.Batch`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    first: torch.Tensor
    word_mask: torch.Tensor
    tags: torch.Tensor
    index: torch.Tensor
    weight: float = 1.0

    def to(self, device: Any) -> "TagBatch":
        return TagBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.first, self.word_mask,
                                                  self.tags, self.index)), self.weight)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def collate_tagged(encoded: Sequence[Encoded], gold: Sequence[Sequence[int]] | None, index: Sequence[int],
                   pad_id: int) -> TagBatch:
    """Right-pad the rows in `index`: tokens to the longest row, aligned words to the most words."""
    rows = [encoded[i] for i in index]
    length, n_words = max(len(r.ids) for r in rows), max(len(r.words) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), length), dtype=torch.long)
    first = torch.zeros((len(rows), n_words), dtype=torch.long)
    tags = torch.zeros((len(rows), n_words), dtype=torch.long)
    mask = torch.zeros((len(rows), n_words), dtype=torch.bool)
    for j, (r, i) in enumerate(zip(rows, index)):
        ids[j, :len(r.ids)], att[j, :len(r.ids)] = torch.tensor(r.ids), 1
        first[j, :len(r.first)], mask[j, :len(r.first)] = torch.tensor(r.first, dtype=torch.long), True
        if gold is not None and r.words:
            tags[j, :len(r.words)] = torch.tensor([gold[i][w] for w in r.words])
    return TagBatch(ids, att, first, mask, tags, torch.tensor(list(index)))


def word_tags(aligned: Sequence[str], enc: Encoded, n_words: int, outside: str = "O") -> list[str]:
    """Tags of the aligned words → one tag per word of the sentence, `outside` for the unaligned ones."""
    out = [outside] * n_words
    for w, t in zip(enc.words, aligned):
        out[w] = t
    return out
