"""The rows of LM supervised fine-tuning: read, checked (every error names the file, the line, the field and the
fix, before any run folder exists), tokenised with their target tokens marked, and batched with labels.

A row is either
- prompt + completion (`data.prompt_column`, `data.completion_column`): the prompt is tokenised as sampling tokenises
  a prompt (with the tokenizer's own special tokens), the completion after it without them, then EOS; the targets
  are the completion's tokens and that EOS;
- chat turns (`data.messages_column`: a list of {role, content}) rendered with the model's chat template; the targets
  are, for every assistant turn, the text that turn adds to the rendered conversation after the generation prompt
  (`add_generation_prompt=True`) of the turns before it: its content and the template's end-of-turn tokens. The
  system/user turns and the generation prompts ("<|im_start|>assistant\\n") are context, not targets.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..data import DataError, read_table
from ..policies.positions import position_ids
from .sft_lm_config import SFTLMData

IGNORE = -100  # the label cross-entropy skips: prompt and padding tokens


@dataclass
class LMRows:
    """Tokenised rows: token ids, which of them are targets, and what validation generation needs."""

    ids: list[list[int]] = field(default_factory=list)
    target: list[list[bool]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # the text a completion is generated from
    columns: dict[str, list[Any]] = field(default_factory=dict)  # other columns; the reference completion included
    where: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: list[int]) -> LMRows:
        return LMRows([self.ids[i] for i in idx], [self.target[i] for i in idx], [self.prompts[i] for i in idx],
                      {k: [v[i] for i in idx] for k, v in self.columns.items()}, [self.where[i] for i in idx])


def read_rows(path: str, data: SFTLMData, tok: Any, max_length: int, truncate: bool) -> LMRows:
    """Every row of `path`, checked and tokenised (see the module's docstring for what is a target)."""
    table = read_table(path, data.split, data.config)
    own = {data.prompt_column, data.completion_column, data.messages_column}
    others = [c for c in table.columns if c not in own]
    out = LMRows(columns={c: [] for c in [*others, data.completion_column]})
    for row, where in zip(table.rows, table.where):
        segments, prompt, reference = _segments(row, where, data, tok)
        ids, target = _tokenise(tok, segments, chat=_is_chat(row, data))
        ids, target = _fit(ids, target, max_length, truncate, where)
        out.ids.append(ids), out.target.append(target), out.prompts.append(prompt), out.where.append(where)
        for c in others:
            out.columns[c].append(row.get(c))
        out.columns[data.completion_column].append(reference)
    return out


def _segments(row: dict, where: str, data: SFTLMData, tok: Any) -> tuple[list[tuple[str, bool]], str, str]:
    """([(text, is_target)], the generation prompt, the reference completion) of one row."""
    p, c, m = data.prompt_column, data.completion_column, data.messages_column
    if not _is_chat(row, data):
        for col in (p, c):
            if not isinstance(row.get(col), str):
                what = "is missing" if row.get(col) is None else f"is a {type(row[col]).__name__}, not text"
                raise DataError(f"{where}: field {col!r} {what}; each row needs text in {p!r} and {c!r} (set "
                                f"data.prompt_column / data.completion_column), or chat turns in {m!r}")
        if not row[p].strip():
            raise DataError(f"{where}: field {p!r} is empty and the row has no {m!r}: nothing to complete; write the "
                            f"prompt, give the row chat turns in {m!r}, or drop it")
        if not row[c].strip():
            raise DataError(f"{where}: field {c!r} is empty: there is nothing to train on; fill it or drop the row")
        return [(row[p], False), (row[c], True)], row[p], row[c]
    if row.get(m) is None:
        raise DataError(f"{where}: the row has neither {p!r}/{c!r} nor {m!r} (its fields: {', '.join(map(str, row))}); "
                        "set data.prompt_column / data.completion_column / data.messages_column to its columns")
    return _chat_segments(_check_messages(row[m], where, m), where, m, tok)


def _is_chat(row: dict, data: SFTLMData) -> bool:
    """A row is chat turns when it has neither a prompt nor a completion field (a row with one is checked as such)."""
    return row.get(data.prompt_column) is None and row.get(data.completion_column) is None


def _check_messages(msgs: Any, where: str, col: str) -> list[dict[str, str]]:
    """`msgs` as a list of {role, content} text turns with at least one non-empty assistant turn."""
    fix = f"{col!r} must be a list of {{\"role\": ..., \"content\": ...}} objects with text values"
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field {col!r} is {type(msgs).__name__ if msgs else 'empty'}; {fix}")
    for i, turn in enumerate(msgs):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            raise DataError(f"{where}: field {col!r}, turn {i + 1}: {str(turn)[:80]!r} is not a role/content pair; {fix}")
    if not any(t["role"] == "assistant" and t["content"].strip() for t in msgs):
        raise DataError(f"{where}: field {col!r} has no non-empty assistant turn: there is nothing to train on")
    return [{"role": t["role"], "content": t["content"]} for t in msgs]


def _chat_segments(msgs: list[dict[str, str]], where: str, col: str,
                   tok: Any) -> tuple[list[tuple[str, bool]], str, str]:
    """The rendered conversation cut at each assistant turn (targets) and the context between; the last assistant
    turn's generation prompt and content are the validation prompt and reference."""
    if not getattr(tok, "chat_template", None):
        raise DataError(f"{where}: field {col!r} holds chat turns but this tokenizer has no chat template; use a "
                        "chat model, or give prompt/completion columns instead")
    render = lambda turns, gen=False: tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=gen) if turns else ""  # noqa: E731
    segments: list[tuple[str, bool]] = []
    done, prompt, reference = "", "", ""
    for i, turn in enumerate(msgs):
        if turn["role"] != "assistant":
            continue
        before, after = render(msgs[:i], True), render(msgs[:i + 1])
        if not (before.startswith(done) and after.startswith(before)):  # the targets could not be cut out
            raise DataError(f"{where}: field {col!r}: the chat template does not render turn {i + 1} as an extension "
                            "of the turns before it, so its tokens cannot be marked as targets; use prompt/completion")
        segments += [(before[len(done):], False), (after[len(before):], True)]
        done, prompt, reference = after, before, turn["content"]
    return segments, _without_added_bos(tok, prompt), reference


def _without_added_bos(tok: Any, text: str) -> str:
    """A rendered prompt without the BOS its template wrote when the tokenizer adds one itself: sampling tokenises a
    prompt with the tokenizer's special tokens, which would otherwise give it two."""
    bos = getattr(tok, "bos_token", None)
    added = tok("")["input_ids"][:1] == [tok.bos_token_id] if bos else False
    return text[len(bos):] if added and text.startswith(bos) else text


def _tokenise(tok: Any, segments: list[tuple[str, bool]], chat: bool) -> tuple[list[int], list[bool]]:
    """Ids and target flags. A prompt/completion row's prompt gets the tokenizer's special tokens (as sampling gives
    them) and its completion an EOS (the model learns to stop); chat text already holds its template's special
    tokens. Each segment is tokenised on its own, so a target's tokens are exactly its text's; a target as the
    tokenizer's target side (`text_target`: Marian's target-language sentencepiece model, the one its decoder's
    outputs decode with; the same tokenizer for every other model)."""
    ids: list[int] = []
    target: list[bool] = []
    for k, (text, is_target) in enumerate(segments):
        special = k == 0 and not chat
        part = (tok(text_target=text, add_special_tokens=special) if is_target else
                tok(text, add_special_tokens=special))["input_ids"]
        ids += part
        target += [is_target] * len(part)
    if not chat and tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
        target.append(True)
    return ids, target


def _fit(ids: list[int], target: list[bool], max_length: int, truncate: bool, where: str) -> tuple[list[int], list[bool]]:
    """The row within `max_length` tokens: as it is, cut (the context before its first target from the left, then
    the end), or an error naming the fix."""
    if len(ids) <= max_length:
        return ids, target
    if not truncate:
        raise DataError(f"{where}: prompt + completion is {len(ids)} tokens, over train.max_length={max_length}; "
                        "shorten the row, raise train.max_length, or set train.truncate=true to cut it")
    cut = min(len(ids) - max_length, target.index(True))
    return ids[cut:][:max_length], target[cut:][:max_length]


def split_rows(rows: LMRows, fraction: float, seed: int) -> tuple[LMRows, LMRows]:
    """(train, validation): a seeded `fraction` of the rows (at least one) held out."""
    if len(rows) < 2:
        raise DataError(f"{rows.where[0] if rows.where else 'data.path'}: {len(rows)} row(s) cannot be split into "
                        "training and validation rows; give more rows or data.val_path")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    return rows.subset(sorted(order[n_val:])), rows.subset(sorted(order[:n_val]))


def collate(ids: list[list[int]], target: list[list[bool]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, position_ids (over real tokens: correct under either padding side)
    and labels: the token id at targets, IGNORE at context and padding."""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    labels = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, (row, tgt) in enumerate(zip(ids, target)):
        input_ids[r, :len(row)] = torch.tensor(row)
        labels[r, :len(row)] = torch.tensor([t if f else IGNORE for t, f in zip(row, tgt)])
        mask[r, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids(mask), "labels": labels}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the target tokens, their number): position t predicts token t + 1, and labels equal
    to IGNORE (context, padding) count for nothing."""
    return target_nll(logits[:, :-1], labels[:, 1:])


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of targets) of logits and labels aligned: position t predicts labels[:, t] (a
    decoder's output), IGNORE counting for nothing.  (B, T, V), (B, T)."""
    pred = logits.float()
    total = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels.reshape(-1),
                                              ignore_index=IGNORE, reduction="sum")
    return total, (labels != IGNORE).sum()


def check_seq2seq_rows(rows: LMRows) -> None:
    """Each row is context then targets (the encoder's input, then the decoder's), as prompt/completion rows and
    chat rows with one assistant turn at the end are: a seq2seq model has no place for context between targets."""
    for ids, target, where in zip(rows.ids, rows.target, rows.where):
        k = target.index(True)
        if k == 0 or not all(target[k:]):
            what = "has no prompt tokens" if k == 0 else "has context after a target (several assistant turns)"
            raise DataError(f"{where}: the row {what}; policy=seq2seq takes one prompt (the encoder's input) and one "
                            "completion (the decoder's): give prompt/completion columns, or chat rows whose one "
                            "assistant turn is the last")


def seq2seq_collate(ids: list[list[int]], target: list[list[bool]], pad_id: int,
                    prefix: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rows (context ‖ targets, `check_seq2seq_rows`) as an encoder–decoder's batch: input_ids and attention_mask of
    the context (right-padded), decoder_input_ids = prefix + targets[:-1] (`seq2seq.decoder_prefix`: the start
    token, then a forced first token if the model has one) and labels = targets from the prefix's last position on,
    aligned (IGNORE on the prefix's other positions and on padding), as the policy reads and samples them."""
    cut = [t.index(True) for t in target]
    src, tgt = [row[:k] for row, k in zip(ids, cut)], [row[k:] for row, k in zip(ids, cut)]
    width, T, L = max(map(len, src)), max(map(len, tgt)), len(prefix)
    out = {"input_ids": torch.full((len(ids), width), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((len(ids), width), dtype=torch.long),
           "decoder_input_ids": torch.full((len(ids), L - 1 + T), pad_id, dtype=torch.long),
           "labels": torch.full((len(ids), L - 1 + T), IGNORE, dtype=torch.long)}
    for r, (s, t) in enumerate(zip(src, tgt)):
        out["input_ids"][r, :len(s)], out["attention_mask"][r, :len(s)] = torch.tensor(s), 1
        out["decoder_input_ids"][r, :L - 1 + len(t)] = torch.tensor([*prefix, *t[:-1]])
        out["labels"][r, L - 1:L - 1 + len(t)] = torch.tensor(t)
    return out
