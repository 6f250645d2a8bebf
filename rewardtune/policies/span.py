"""A span extractor as a policy: the action is a span (s, e) of a window's context tokens, drawn start first.

    π(s, e | x) = π(s | x) · π(e | s, x),   π(s | x) = softmax over the allowed positions of the start logits,
    π(e | s, x) = softmax of the end logits over s ≤ e < s + L (context tokens only, L = the longest answer).

Shapes: b windows, T positions, K spans per window. `allowed` (b, T) marks the context tokens and position 0 (NULL:
"not in this window"), whose only end is itself (the span (0, 0), read as the empty text). Both distributions are
small enough to be exact: the joint table (b, T, T) gives the KL to the reference policy, the entropy and the greedy
span without estimators. Log-probs are float32 whatever the model's precision.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..qa_data import NULL, char_span

NEG = float("-inf")


def span_logits(model: Any, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's scores: model inputs (b, T) → start logits (b, T), end logits (b, T), float32."""
    out = model(**inputs)
    return out.start_logits.float(), out.end_logits.float()


def start_logprobs(start_logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log π(s | x) over the allowed positions, −inf elsewhere.  (b, T), (b, T) bool → (b, T)."""
    return torch.log_softmax(start_logits.masked_fill(~allowed, NEG), dim=-1)


def end_allowed(allowed: torch.Tensor, starts: torch.Tensor, max_len: int) -> torch.Tensor:
    """Which ends each start permits: s ≤ e < s + L among the context tokens; NULL only for NULL.
    allowed (b, T), starts (b, K) → (b, K, T) bool."""
    t = torch.arange(allowed.shape[-1], device=allowed.device)  # (T,)
    s = starts[..., None]  # (b, K, 1)
    window = (t >= s) & (t < s + max_len)  # (b, K, T)
    same_kind = (t == NULL) == (s == NULL)  # the null start ends at NULL; a real start at a context token
    return window & same_kind & allowed[:, None, :]


def end_logprobs(end_logits: torch.Tensor, allowed: torch.Tensor, starts: torch.Tensor, max_len: int) -> torch.Tensor:
    """log π(e | s, x) for each given start, −inf outside its ends.  (b, T), (b, T), starts (b, K) → (b, K, T)."""
    mask = end_allowed(allowed, starts, max_len)  # (b, K, T)
    # A start that is no action (padding) has no end: give it NULL so that its row is finite (an all −inf row is
    # NaN, and NaN poisons the gradient even where it is masked out later); such rows never reach a loss.
    mask[..., NULL] |= ~mask.any(-1)
    return torch.log_softmax(end_logits[:, None, :].masked_fill(~mask, NEG), dim=-1)


def sample(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor, k: int,
           max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K spans per window: s ~ π(s|x), then e ~ π(e|s,x); with log π(s, e) (with gradient).
    → spans (b, K, 2), log π (b, K)."""
    lp_s = start_logprobs(start_logits, allowed)  # (b, T)
    starts = torch.multinomial(lp_s.exp().detach(), k, replacement=True)  # (b, K)
    lp_e = end_logprobs(end_logits, allowed, starts, max_len)  # (b, K, T)
    b = starts.shape[0]
    ends = torch.multinomial(lp_e.exp().detach().reshape(b * k, -1), 1).reshape(b, k)  # (b, K)
    logp = lp_s.gather(-1, starts) + lp_e.gather(-1, ends[..., None]).squeeze(-1)  # (b, K)
    return torch.stack([starts, ends], -1), logp


def logprobs(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor, spans: torch.Tensor,
             max_len: int) -> torch.Tensor:
    """log π(s, e | x) of given spans, with gradient.  spans (b, K, 2) → (b, K)."""
    starts, ends = spans[..., 0], spans[..., 1]  # (b, K) each
    lp_e = end_logprobs(end_logits, allowed, starts, max_len)  # (b, K, T)
    return start_logprobs(start_logits, allowed).gather(-1, starts) + lp_e.gather(-1, ends[..., None]).squeeze(-1)


def joint_logprobs(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor,
                   max_len: int) -> torch.Tensor:
    """Every span's log π(s, e | x): [s, e] = log π(s) + log π(e | s), −inf where (s, e) is no action.
    (b, T), (b, T), (b, T) → (b, T, T)."""
    b, t = start_logits.shape
    every_start = torch.arange(t, device=start_logits.device).expand(b, t)  # (b, T): each position as a start
    lp_e = end_logprobs(end_logits, allowed, every_start, max_len)  # (b, T, T)
    lp = start_logprobs(start_logits, allowed)[..., None] + lp_e  # (b, T, T)
    ok = allowed[..., None] & end_allowed(allowed, every_start, max_len)  # (b, T, T)
    return lp.masked_fill(~ok, NEG)


def _probs_and_logs(joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """π and log π with the −inf of impossible spans replaced by 0 (their probability is 0: no 0·∞ NaN)."""
    finite = torch.isfinite(joint)
    logs = torch.where(finite, joint, torch.zeros_like(joint))
    return logs.exp() * finite, logs


def kl(joint: torch.Tensor, ref_joint: torch.Tensor) -> torch.Tensor:
    """Exact KL(π || π_ref) = Σ_{s,e} π(s,e)·(log π − log π_ref) over all spans, with gradient through π.
    (b, T, T), (b, T, T) → (b,)."""
    p, lp = _probs_and_logs(joint)
    _, lq = _probs_and_logs(ref_joint)
    return (p * (lp - lq)).sum((-2, -1))


def entropy(joint: torch.Tensor) -> torch.Tensor:
    """H(π(·|x)) over all spans, with gradient.  (b, T, T) → (b,)."""
    p, lp = _probs_and_logs(joint)
    return -(p * lp).sum((-2, -1))


def greedy(joint: torch.Tensor, real_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The most probable span per window and its log π: (b, T, T) → spans (b, 2), scores (b,). `real_only`: never
    NULL (evaluation: SQuAD v1.1 questions always have an answer, which some window holds)."""
    if real_only:
        joint = joint.clone()
        joint[:, NULL, NULL] = NEG
    b, t, _ = joint.shape
    score, flat = joint.reshape(b, t * t).max(-1)  # (b,)
    return torch.stack([flat // t, flat % t], -1), score


def gold_nll(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor, gold: torch.Tensor,
             max_len: int) -> torch.Tensor:
    """The supervised loss: −(log π(s*) + log π(e* | s*)) / 2 per window, the start and (start-constrained) end
    cross-entropies of the gold span.  gold (b, 2) → (b,)."""
    return -logprobs(start_logits, end_logits, allowed, gold[:, None, :], max_len).squeeze(-1) / 2


def reference_logprobs(model: Any, reference: Callable[[], Any], inputs: Mapping[str, torch.Tensor],
                    allowed: torch.Tensor, max_len: int) -> torch.Tensor:
    """log π_ref of every span, no gradient (the reference as `train.common.setup_reference` gives it). → (b, T, T)"""
    with torch.no_grad(), reference() as ref:
        s, e = span_logits(model if ref is None else ref, inputs)
    return joint_logprobs(s, e, allowed, max_len)


def action_texts(spans: torch.Tensor, offsets: Sequence[Sequence[Any]], contexts: Sequence[str]) -> list[str]:
    """What each span reads as: the context's characters it covers ('' for NULL), row-major.
    spans (b, K, 2); offsets and contexts: one per window of the batch → b·K texts."""
    out = []
    for row, offs, context in zip(spans.tolist(), offsets, contexts):
        for s, e in row:
            a, z = char_span(offs, s, e)
            out.append(context[a:z])
    return out
