"""Where a step's rollout comes from: a `RolloutEngine` turns prompts into sampled completions — token ids, the
log-probs of the sampled tokens, texts — as one `causal_lm.Rollout`.

The generative trainer asks an engine for every rollout (`train.rl_generate.rollout`) and needs nothing else of it.
`LocalEngine`, the only one shipped, decodes with the policy being trained, in the training process
(`causal_lm.sample`: rewardtune's own loop or `generate`). An inference server (vLLM, SGLang) would be a second
implementation; what it must honour is in docs/gpu.md ("A rollout engine"): the same tokenizer and left-padded
prompt ids, completions masked up to and including EOS, log-probs under softmax(logits / temperature) untruncated
by top-k/top-p, and the policy's current weights at each step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from . import causal_lm
from .causal_lm import GenSettings, Rollout


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples K completions of each prompt (rows prompt-major), with the log-probs of the sampled tokens."""

    def sample(self, prompts: Sequence[str], k: int, gen: GenSettings, max_prompt_tokens: int, greedy: bool = False,
               rows: int = 0) -> Rollout:
        """K completions per prompt under `gen` (greedy: argmax, log-probs untempered); `rows`: at most this many
        rows decoded at once (memory only; 0 = all). Prompts longer than `max_prompt_tokens` are an error."""
        ...


@dataclass
class LocalEngine:
    """The policy itself, decoding in this process (its family's sampler: `causal_lm.sample`, `seq2seq.sample`)."""

    model: Any  # the model being trained, unwrapped (no DDP wrapper)
    tok: Any
    sampler: Callable[..., Rollout] | None = None  # None: causal_lm.sample, looked up at each call (patchable)

    def sample(self, prompts: Sequence[str], k: int, gen: GenSettings, max_prompt_tokens: int, greedy: bool = False,
               rows: int = 0) -> Rollout:
        sampler = self.sampler or causal_lm.sample
        return sampler(self.model, self.tok, prompts, k, gen, max_prompt_tokens, greedy=greedy, rows=rows)
