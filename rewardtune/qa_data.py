"""Extractive QA data: SQuAD-layout rows → validated questions → strided windows over each context.

A row holds `id`, `title`, `context`, `question` and `answers` (`text`: list, `answer_start`: list of character
offsets), the Hugging Face `squad` layout. Each gold answer must sit in its context at its offset: a row where it does
not is an error naming the file, line and field, before any model loads.

A context longer than the model's window is cut into windows of at most `max_length` tokens that overlap by `stride`
tokens (the fast tokenizer's `return_overflowing_tokens`); every context token keeps its character span in the
context (`offsets`), so a span of tokens maps back to a span of the original text, whatever the tokenizer did to
accents, case or spacing. Position 0 of every window (the [CLS] token for BERT) is the policy's "no answer in this
window" action: never a context token, since the question comes first.
"""
from __future__ import annotations

import random
import reprlib
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import torch

from .data import DataError, read_table

NULL = 0  # the window position that stands for "the answer is not in this window"


@dataclass
class QAExamples:
    """Validated questions; `answers[i]` holds question i's gold answers as (text, character start)."""

    ids: list[str]
    titles: list[str]
    contexts: list[str]
    questions: list[str]
    answers: list[list[tuple[str, int]]]
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Sequence[int]) -> "QAExamples":
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return replace(self, ids=pick(self.ids), titles=pick(self.titles), contexts=pick(self.contexts),
                       questions=pick(self.questions), answers=pick(self.answers))

    def answer_texts(self, i: int) -> list[str]:
        return [t for t, _ in self.answers[i]]


def _field(row: dict, name: str, kind: type, where: str) -> Any:
    value = row.get(name)
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise DataError(f"{where}: field {name!r}: expected a non-empty {kind.__name__}, got {reprlib.repr(value)}")
    return value


def check_answers(row: dict, context: str, where: str) -> list[tuple[str, int]]:
    """The row's gold answers as (text, start), each checked to be in `context` at its offset."""
    answers = _field(row, "answers", dict, where)
    texts, starts = answers.get("text"), answers.get("answer_start")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts) or not texts:
        raise DataError(f"{where}: field 'answers': expected equal, non-empty lists 'text' and 'answer_start', got "
                        f"{reprlib.repr(answers)}")
    out = []
    for j, (text, start) in enumerate(zip(texts, starts)):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'answers.text'[{j}]: expected a non-empty answer text, got {text!r}")
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= len(context) - len(text):
            raise DataError(f"{where}: field 'answers.answer_start'[{j}]: {start!r} puts the answer {text!r} outside "
                            f"its context ({len(context)} characters); fix the offset")
        if context[start:start + len(text)] != text:
            raise DataError(f"{where}: field 'answers.answer_start'[{j}]: the context reads "
                            f"{context[start:start + len(text)]!r} at {start}, not the answer text {text!r}; fix the "
                            "offset or the text")
        out.append((text, start))
    return out


def load_squad(path: str) -> QAExamples:
    """Validated questions from a SQuAD-layout file (jsonl[.gz], csv, parquet or a hub name)."""
    table = read_table(path)
    ex = QAExamples([], [], [], [], [], table.source)
    for row, where in zip(table.rows, table.where):
        context = _field(row, "context", str, where)
        ex.answers.append(check_answers(row, context, where))
        ex.ids.append(str(row.get("id", len(ex.ids))))
        ex.titles.append(str(row.get("title") or ""))
        ex.contexts.append(context)
        ex.questions.append(_field(row, "question", str, where))
    return ex


def split_by_article(ex: QAExamples, val_fraction: float, seed: int = 0) -> tuple[QAExamples, QAExamples]:
    """(train, val) with whole articles (titles) on one side: questions on one paragraph share their answers' context,
    so a question-level split would leak it. round(fraction · articles) articles, at least one, go to val."""
    titles = list(dict.fromkeys(ex.titles))
    if len(titles) < 2:
        raise DataError(f"{ex.source}: {len(titles)} article(s) (titles); a split by article needs at least 2, or "
                        "give data.val_path")
    random.Random(seed).shuffle(titles)
    held = set(titles[:min(len(titles) - 1, max(1, round(len(titles) * val_fraction)))])
    val = [i for i, t in enumerate(ex.titles) if t in held]
    return ex.subset([i for i, t in enumerate(ex.titles) if t not in held]), ex.subset(val)


def seeded_subset(ex: QAExamples, n: int, seed: int) -> QAExamples:
    """At most n questions, drawn with `seed`, in file order (0 = all)."""
    if not 0 < n < len(ex):
        return ex
    return ex.subset(sorted(random.Random(seed).sample(range(len(ex)), n)))


@dataclass
class Windows:
    """Token windows over the questions' contexts; per window: its question, its tokens' character spans in the
    context (None outside the context) and the first gold answer's token span (NULL, NULL when not inside)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    offsets: list[list[tuple[int, int] | None]]
    question: list[int]
    start: list[int]
    end: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def make_windows(tok: Any, ex: QAExamples, max_length: int, stride: int, max_answer_tokens: int) -> Windows:
    """Strided windows of [question, context] pairs; the context is cut, never the question."""
    too_long = next((i for i, q in enumerate(ex.questions)
                     if len(tok(q, add_special_tokens=False)["input_ids"]) > max_length // 2), None)
    if too_long is not None:
        raise DataError(f"{ex.source}: question {ex.ids[too_long]!r} takes over half of train.max_length="
                        f"{max_length} tokens; raise train.max_length or shorten the question")
    enc = tok(ex.questions, ex.contexts, truncation="only_second", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    w = Windows([], [] if "token_type_ids" in enc else None, [], [], [], [])
    for k, q in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(k)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][k], seq)]
        w.input_ids.append(enc["input_ids"][k])
        if w.token_type_ids is not None:
            w.token_type_ids.append(enc["token_type_ids"][k])
        w.offsets.append(offsets)
        w.question.append(q)
        text, a = ex.answers[q][0]
        s, e = token_span(offsets, a, a + len(text))
        w.start.append(s if e - s < max_answer_tokens else NULL)  # an over-long answer is no target here
        w.end.append(e if e - s < max_answer_tokens else NULL)
    return w


def token_span(offsets: Sequence[tuple[int, int] | None], a: int, b: int) -> tuple[int, int]:
    """The context tokens covering characters [a, b), or (NULL, NULL) unless the window holds all of them."""
    inside = [i for i, o in enumerate(offsets) if o is not None and o[1] > o[0]]
    if not inside or a < offsets[inside[0]][0] or b > offsets[inside[-1]][1]:
        return NULL, NULL
    s = next(i for i in inside if offsets[i][1] > a)
    e = next(i for i in reversed(inside) if offsets[i][0] < b)
    return s, e


def char_span(offsets: Sequence[tuple[int, int] | None], s: int, e: int) -> tuple[int, int]:
    """Token span [s, e] (inclusive) → character span [a, b) in the context; (0, 0) for NULL or non-context tokens."""
    if s == NULL or offsets[s] is None or offsets[e] is None:
        return 0, 0
    return offsets[s][0], offsets[e][1]


@dataclass
class WindowBatch:
    """Windows padded to the longest: ids, mask, types (b, L); allowed (b, L): context tokens and NULL; gold (b, 2);
    `index`: window numbers; `weight` as in `train.common.epoch_batches`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    allowed: torch.Tensor
    gold: torch.Tensor
    index: list[int]
    weight: float = 1.0

    def model_inputs(self, device: Any) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids.to(device)
        return out


def collate_windows(w: Windows, index: Sequence[int], pad_id: int) -> WindowBatch:
    width = max(len(w.input_ids[i]) for i in index)
    ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    allowed = torch.zeros((len(index), width), dtype=torch.bool)
    for j, i in enumerate(index):
        n = len(w.input_ids[i])
        ids[j, :n], mask[j, :n] = torch.tensor(w.input_ids[i]), 1
        if w.token_type_ids is not None:
            types[j, :n] = torch.tensor(w.token_type_ids[i])
        allowed[j, :n] = torch.tensor([o is not None for o in w.offsets[i]])
    allowed[:, NULL] = True
    gold = torch.tensor([[w.start[i], w.end[i]] for i in index], dtype=torch.long)
    return WindowBatch(ids, mask, types if w.token_type_ids is not None else None, allowed, gold, list(index))


def iterate_windows(w: Windows, batches: Sequence[Sequence[int]], pad_id: int) -> Iterator[WindowBatch]:
    for index in batches:
        yield collate_windows(w, index, pad_id)
