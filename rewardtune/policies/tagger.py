"""A token tagger as a policy: the action is a tag sequence, one tag per word, read off each word's first sub-token.

Shapes: b sentences, L sub-tokens, W aligned words (`first` (b, W) their first sub-token's position, `mask` (b, W)
the real ones), A tags, K sequences per sentence. The policy's per-word distributions π_w are exact softmaxes, so
the KL to the reference and the entropy are exact per word (sums over A), averaged over a sentence's words.
Sequences, sampling and decoding (constrained or not) are in `algorithms/tagging.py`. Log-probs in float32.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..algorithms import entropy_from_logits
from ..algorithms.tagging import Transitions, greedy_tags, sample_tags, sequence_logprob, word_mean


def word_logits(model: Any, inputs: Mapping[str, torch.Tensor], first: torch.Tensor) -> torch.Tensor:
    """Each aligned word's tag scores, from its first sub-token: inputs (b, L), first (b, W) → (b, W, A)."""
    logits = model(**inputs).logits  # (b, L, A)
    return logits.gather(1, first[..., None].expand(*first.shape, logits.shape[-1]))


def word_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """log π_w(a) of every tag, with gradient.  (b, W, A) → (b, W, A)."""
    return torch.log_softmax(logits.float(), dim=-1)


def sample(logits: torch.Tensor, k: int, mask: torch.Tensor, tr: Transitions | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """K tag sequences per sentence and their log-probs (with gradient).  → tags (b, K, W), log π (b, K)."""
    logp = word_logprobs(logits)  # (b, W, A)
    tags = sample_tags(logp, k, mask, tr)
    return tags, sequence_logprob(logp, tags, mask, tr)


def logprobs(logits: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, tr: Transitions | None = None) -> torch.Tensor:
    """log π(y|x) of given tag sequences, with gradient.  tags (b, K, W) → (b, K)."""
    return sequence_logprob(word_logprobs(logits), tags, mask, tr)


def greedy(logits: torch.Tensor, mask: torch.Tensor, tr: Transitions | None = None) -> torch.Tensor:
    """The best sequence: per-word argmax, or the Viterbi path over allowed transitions.  → (b, W)."""
    return greedy_tags(word_logprobs(logits).detach(), mask, tr)


def reference_logprobs(model: Any, reference: Callable[[], Any], inputs: Mapping[str, torch.Tensor],
                       first: torch.Tensor) -> torch.Tensor:
    """log π_ref of every tag of every word, no gradient (`reference` as in `classifier.reference_logprobs`).
    → (b, W, A)."""
    with torch.no_grad(), reference() as ref:
        return word_logprobs(word_logits(model if ref is None else ref, inputs, first))


def kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over a sentence's words of the exact KL(π_w || π_ref,w).  (b, W, A) each → (b,)."""
    per_word = (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1)  # (b, W)
    return word_mean(per_word, mask)


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over a sentence's words of H(π_w).  (b, W, A) → (b,)."""
    return word_mean(entropy_from_logits(logits.float()), mask)


def action_texts(tags: torch.Tensor, mask: torch.Tensor, tag_names: Sequence[str]) -> list[str]:
    """What each sequence reads as for the rewards: its real words' tag names joined by spaces, row-major.
    tags (b, K, W) → b·K strings."""
    lengths = mask.sum(-1).tolist()  # (b,)
    return [" ".join(tag_names[t] for t in seq[:n]) for row, n in zip(tags.tolist(), lengths) for seq in row]
