"""Tag-sequence math of a token-tagging policy: one tag per word, the words' tags drawn left to right.

Shapes: b sentences, W words (right-padded; `mask` (b, W) marks the real ones, a prefix of each row), A tags,
K sampled sequences per sentence. Unconstrained, the policy factorises: π(y|x) = Π_w π_w(y_w), with
π_w = softmax of word w's logits. Constrained (`Transitions`: which tag may follow which, and which may open a
sentence), a sequence is drawn left to right from q(y_w | y_{w-1}) ∝ π_w(y_w)·allowed(y_{w-1}, y_w), and its
log-prob is Σ_w log q(y_w | y_{w-1}); the greedy sequence is the Viterbi path of Σ_w log π_w(y_w) over the
allowed paths.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor


class Transitions(NamedTuple):
    """allowed (A, A): allowed[i, j] = tag j may follow tag i; start (A,): tag j may tag a sentence's first word."""

    allowed: Tensor
    start: Tensor


def bio_transitions(tag_names: Sequence[str]) -> Transitions:
    """IOB2: `I-X` only right after `B-X` or `I-X` (so never first); every other tag anywhere."""
    a = len(tag_names)
    allowed, start = torch.ones(a, a, dtype=torch.bool), torch.ones(a, dtype=torch.bool)
    for j, tag in enumerate(tag_names):
        if tag.startswith("I-"):
            start[j] = False
            allowed[:, j] = torch.tensor([t in (f"B-{tag[2:]}", tag) for t in tag_names])
    return Transitions(allowed, start)


def next_tag_logprobs(logp: Tensor, prev: Tensor, tr: Transitions) -> Tensor:
    """log q(·|prev): one word's log π renormalised over the tags allowed after `prev` (−1: the sentence start).
    logp (n, A), prev (n,) → (n, A), −inf at forbidden tags."""
    ok = torch.where((prev < 0)[:, None], tr.start.to(logp.device)[None, :],
                     tr.allowed.to(logp.device)[prev.clamp(min=0)])  # (n, A)
    masked = logp.masked_fill(~ok, float("-inf"))
    return masked - torch.logsumexp(masked, -1, keepdim=True)


def sequence_logprob(logp: Tensor, tags: Tensor, mask: Tensor, tr: Transitions | None = None) -> Tensor:
    """log π(y|x) of whole tag sequences, with gradient: Σ_w over real words of log π_w(y_w) (unconstrained) or
    log q(y_w | y_{w-1}) (constrained).  logp (b, W, A) word log-probs, tags (b, K, W), mask (b, W) → (b, K)."""
    b, k, w = tags.shape
    m = mask[:, None, :].expand(b, k, w)  # (b, K, W)
    if tr is None:
        per_word = logp[:, None].expand(b, k, w, logp.shape[-1]).gather(-1, tags[..., None])[..., 0]  # (b, K, W)
        return torch.where(m, per_word, 0.0).sum(-1)
    total = logp.new_zeros(b * k)
    prev = torch.full((b * k,), -1, dtype=torch.long, device=logp.device)
    for i in range(w):
        lq = next_tag_logprobs(logp[:, None, i].expand(b, k, -1).reshape(b * k, -1), prev, tr)  # (b·K, A)
        y = tags[:, :, i].reshape(-1)  # (b·K,)
        total = total + torch.where(m[:, :, i].reshape(-1), lq.gather(-1, y[:, None])[:, 0], 0.0)
        prev = y
    return total.reshape(b, k)


def sample_tags(logp: Tensor, k: int, mask: Tensor, tr: Transitions | None = None) -> Tensor:
    """K tag sequences per sentence, drawn from π (unconstrained) or left to right from q (constrained); padded
    words get tag 0. No gradient.  logp (b, W, A), mask (b, W) → tags (b, K, W)."""
    b, w, a = logp.shape
    probs = logp.detach().exp()
    if tr is None:
        tags = torch.multinomial(probs.reshape(b * w, a), k, replacement=True).reshape(b, w, k).transpose(1, 2)
    else:
        cols, prev = [], torch.full((b * k,), -1, dtype=torch.long, device=logp.device)
        for i in range(w):
            lq = next_tag_logprobs(logp.detach()[:, None, i].expand(b, k, a).reshape(b * k, a), prev, tr)  # (b·K, A)
            prev = torch.multinomial(lq.exp(), 1)[:, 0]  # (b·K,)
            cols.append(prev.reshape(b, k))
        tags = torch.stack(cols, -1) if cols else torch.zeros(b, k, 0, dtype=torch.long, device=logp.device)
    return torch.where(mask[:, None, :], tags, 0)


def viterbi(logp: Tensor, mask: Tensor, tr: Transitions) -> Tensor:
    """argmax over allowed paths of Σ_w log π_w(y_w); padded words get tag 0.  logp (b, W, A), mask (b, W) → (b, W)."""
    b, w, a = logp.shape
    if w == 0:
        return torch.zeros(b, 0, dtype=torch.long, device=logp.device)
    trans = torch.zeros(a, a, device=logp.device).masked_fill(~tr.allowed.to(logp.device), float("-inf"))  # (A, A)
    score = logp[:, 0].masked_fill(~tr.start.to(logp.device)[None], float("-inf"))  # (b, A)
    stay = torch.arange(a, device=logp.device).expand(b, a)
    back = []
    for i in range(1, w):
        best, arg = (score[:, :, None] + trans[None]).max(1)  # (b, A): the best previous tag for each tag
        real = mask[:, i, None]  # (b, 1): past a row's end its score and path stand still
        score = torch.where(real, best + logp[:, i], score)
        back.append(torch.where(real, arg, stay))
    path = [score.argmax(-1)]  # (b,)
    for arg in reversed(back):
        path.append(arg.gather(-1, path[-1][:, None])[:, 0])
    return torch.where(mask, torch.stack(path[::-1], -1), 0)


def greedy_tags(logp: Tensor, mask: Tensor, tr: Transitions | None = None) -> Tensor:
    """The policy's best sequence: each word's argmax, or the Viterbi path when constrained.  → (b, W)."""
    return torch.where(mask, logp.argmax(-1), 0) if tr is None else viterbi(logp, mask, tr)


def expected_token_reward(logp: Tensor, token_rewards: Tensor, mask: Tensor) -> Tensor:
    """Exact E_π[R] of a reward that is a mean of per-word rewards, R(y) = (1/n) Σ_w r_w(y_w), under the
    factorised π: (1/n) Σ_w Σ_a π_w(a)·r_w(a). No sampling.  logp (b, W, A), token_rewards (b, W, A),
    mask (b, W) → (b,); an empty sentence (n = 0) gives 0."""
    per_word = (logp.exp() * token_rewards.detach()).sum(-1)  # (b, W)
    n = mask.sum(-1).clamp(min=1)  # (b,)
    return torch.where(mask, per_word, 0.0).sum(-1) / n


def token_match_rewards(gold: Tensor, n_tags: int) -> Tensor:
    """r_w(a) = 1 if a is word w's gold tag else 0 (the token accuracy's per-word terms).  gold (b, W) → (b, W, A)."""
    return torch.nn.functional.one_hot(gold.clamp(min=0), n_tags).float()


def self_critical(rewards: Tensor, greedy_rewards: Tensor) -> Tensor:
    """A_k = r_k − r(greedy): the baseline is the reward of the policy's own greedy sequence (Rennie et al. 2017,
    "Self-critical Sequence Training for Image Captioning").  rewards (b, K), greedy_rewards (b,) → (b, K)."""
    return rewards.detach() - greedy_rewards.detach()[:, None]


def word_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over each sentence's real words (0 for an empty one).  x (b, W), mask (b, W) → (b,)."""
    return torch.where(mask, x, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)
