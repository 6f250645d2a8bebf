"""Which rows of a decode have ended, kept on the device, and the host's look at them every N tokens.

Why: a loop that asks the host after every token whether all rows have ended (`bool(running.any())`) makes the
host wait for the device once per token; on a GPU that wait, not the math, sets the pace of a small model
(see docs/gpu.md). Here the tokens so far, the EOS test and the running mask stay device tensors; stop strings
(transformers' `StopStringCriteria`, which needs no host either) are checked in one batch per host check, over
the tokens since the last one; and the host looks every `every` tokens (`gen.check_every`), or never.

A row that completed a stop string between two checks goes on decoding until the next one: rows do not see each
other (their own attention, their own uniform draws), and `Rows.completions` puts pad after each row's end and cuts
after the last row's end, so the completions are the ones a check after every token gives (tested).
Shapes: B rows, Tp prompt tokens, T new tokens at most.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


class Rows:
    """The prompt and the tokens so far (B, Tp + T), which rows still run (B,), and where stop strings ended rows."""

    def __init__(self, ids: torch.Tensor, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int,
                 stop: Callable[[torch.Tensor], torch.Tensor] | None = None):
        B, self.Tp = ids.shape
        self.pad, self.stop = pad_id, stop
        self.seq = torch.cat([ids, ids.new_full((B, max_new_tokens), pad_id)], dim=1)  # (B, Tp + T)
        self.eos = torch.tensor(list(eos_ids), device=ids.device)  # (E,)
        self.running = torch.ones(B, dtype=torch.bool, device=ids.device)  # (B,)
        self.stopped = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=ids.device)  # (B, T)
        self.checked = 0  # tokens whose stop strings have been checked

    def advance(self, t: int | torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Record step t's tokens (B,), pad for rows that had ended; a row that emits an EOS ends. `t` a Python int,
        or a (1,) device tensor (the static step of a CUDA graph).  → (B,) the tokens recorded."""
        nxt = torch.where(self.running, token, self.pad)  # (B,)
        if isinstance(t, int):
            self.seq[:, self.Tp + t] = nxt
        else:
            self.seq.index_copy_(1, t + self.Tp, nxt[:, None])
        self.running &= (nxt[:, None] != self.eos).all(-1)
        return nxt

    def check_stops(self, upto: int) -> None:
        """Stop strings ending at tokens `checked` … upto − 1, in one batch (prompt and tokens so far, as `generate`
        checks them); the rows that completed one stop running."""
        if self.stop is None or upto <= self.checked:
            return
        hits = torch.stack([self.stop(self.seq[:, :self.Tp + t + 1]) for t in range(self.checked, upto)], dim=1)
        self.stopped[:, self.checked:upto] = hits  # (B, upto − checked)
        self.running &= ~hits.any(-1)
        self.checked = upto

    def all_ended(self, steps: int) -> bool:
        """Whether every row has ended after `steps` tokens: the one host–device synchronisation of a check."""
        self.check_stops(steps)
        return not bool(self.running.any())

    def completions(self, steps: int) -> torch.Tensor:
        """The `steps` tokens decoded, pad after each row's end (its EOS, or the token completing a stop string),
        cut after the last row's end, as `generate` returns them (it stops when every row has ended); one
        synchronisation.  → (B, n ≤ steps)"""
        self.check_stops(steps)
        out = self.seq[:, self.Tp:self.Tp + steps]  # (B, steps)
        ended = (out[..., None] == self.eos).any(-1) | self.stopped[:, :steps]  # (B, steps)
        first = torch.where(ended.any(-1), ended.int().argmax(-1), steps - 1)  # (B,) each row's last token
        after = torch.arange(steps, device=out.device)[None] > first[:, None]  # (B, steps)
        n = int(first.max()) + 1
        return out.masked_fill(after, self.pad)[:, :n]


def run_steps(step: Callable[[int], Any], rows: Rows, max_new_tokens: int, every: int) -> int:
    """step(t) for t = 0, 1, … up to `max_new_tokens`, the host checking every `every` tokens (≤ 0: never) whether
    all rows have ended, then stopping.  → the steps run."""
    for t in range(max_new_tokens):
        step(t)
        if every > 0 and (t + 1) % every == 0 and t + 1 < max_new_tokens and rows.all_ended(t + 1):
            return t + 1
    return max_new_tokens


def check_interval(asked: int, device: torch.device) -> int:
    """`gen.check_every` made a number of tokens: 0 (auto) is every token on a CPU, where the device is the host and
    a check costs nothing but lets the loop stop early, and every 32 tokens on a GPU; −1 (never) is 0."""
    if asked == 0:
        return 1 if device.type == "cpu" else 32
    return max(asked, 0)
