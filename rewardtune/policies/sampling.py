"""Token sampling for rollouts: temperature, top-k, top-p, and the sampled token's log-prob.

Why not `generate(do_sample=True)`: its `torch.multinomial` draws one exponential per vocabulary
entry per row (49k × B per token, ~15 ms per decoding step on 2 CPU cores, a tenth of SmolLM2's
step), and `output_logits=True` keeps every step's (B, V) logits until the end (100 MB for
16 × 32 tokens) only so that the log-probs can be taken afterwards. `TokenSampler` is a logits
processor run under greedy decoding: it draws the token by inverse CDF (one uniform per row, a
cumulative sum and a binary search), records log π(token) as it goes, and hands `generate` a
score row whose only finite entry is the chosen token, which greedy decoding then picks.
The KV cache, EOS and stop-string handling stay the decoder's (`generate`, or `decode.decode`
through `TokenSampler.choose`).

The recorded log-prob is under the policy softmax(logits / temperature), untruncated: top-k and
top-p only shape the sampling distribution, as with `generate` before; the training forward pass
computes the same quantity.  Shapes: B rows, V vocabulary.
"""
from __future__ import annotations

import torch

from ..algorithms import logprobs_from_logits


def truncate(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits with everything outside the top-k and the top-p nucleus set to −inf.  (B, V) → (B, V)"""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # (B, V) probability of the tokens ranked above
        drop = mass_before >= top_p  # the smallest set whose mass reaches top_p is kept (≥ 1 token)
        logits = logits.scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def inverse_cdf_sample(logits: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from softmax(logits): the first index whose cumulative probability passes
    a uniform draw (`u`, one per row, or fresh ones).  (B, V), (B,) → (B,)"""
    cdf = logits.softmax(-1).cumsum(-1)  # (B, V)
    if u is None:
        u = torch.rand(logits.shape[0], device=logits.device, dtype=cdf.dtype)
    u = u.to(cdf)[:, None] * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)  # (B,)


def draw_uniforms(steps: int, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The uniform draws of `steps` decoding steps for `rows` rows.  → (T, B). Drawn step-major, they are the
    numbers that one `torch.rand(B)` per step would give on the CPU (its generator draws serially); all T·B are
    drawn even when every row ends early, so the generator's state afterwards is that of T steps."""
    return torch.rand(steps, rows, device=device)


class TokenSampler:
    """A `generate` logits processor (use with do_sample=False) that samples, or takes the argmax when
    `greedy`, and keeps log softmax(logits / temperature) of each chosen token in `logprobs`. `choose` is the
    same without the score row, for rewardtune's own decoding loop (`decode.decode`).

    `uniforms` (T, B): the draw of each decoding step and row, fixed in advance (`draw_uniforms`), so that a
    row's tokens do not depend on which other rows are decoded with it (sampling in row chunks)."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
                 uniforms: torch.Tensor | None = None):
        self.temperature = 1.0 if greedy else temperature
        self.top_k, self.top_p, self.greedy = top_k, top_p, greedy
        self.uniforms = uniforms
        self.logprobs: list[torch.Tensor] = []  # T tensors of shape (B,)

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The next token of each row from its logits, its log-prob recorded.  (B, V) → (B,)"""
        u = None if self.uniforms is None else self.uniforms[len(self.logprobs)]  # (B,)
        token, logp = self.pick(scores, u)
        self.logprobs.append(logp)  # (B,)
        return token

    def pick(self, scores: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each row and its log-prob, recording nothing: device work only, no host value
        (`decode_graph` captures it in a CUDA graph).  (B, V), u (B,) or None → (B,), (B,)"""
        z = scores.float()
        if self.temperature != 1.0:
            z = z / self.temperature  # (B, V)
        if self.greedy:
            token = z.argmax(-1)  # (B,)
        else:
            token = inverse_cdf_sample(truncate(z, self.top_k, self.top_p), u)
        return token, logprobs_from_logits(z, token)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token = self.choose(scores)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, token[:, None], 0.0)  # greedy decoding now picks `token`

    def stacked(self) -> torch.Tensor:
        """log π of the chosen tokens.  (B, T)"""
        return torch.stack(self.logprobs, dim=1)
