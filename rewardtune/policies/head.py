"""Token log-probs through the LM head in row chunks, without ever holding the (N, V) logits.

Why: the update needs log π(token) for every completion position, i.e. log_softmax over V logits per
position, of which one is kept. Through the model's own head that is a (B, T, V) float tensor, plus
the log-softmax the backward pass saves, plus the entropy's softmax: for SmolLM2 (V = 49,152) 100 MB
each at 16 × 32 tokens, and 3.2 GB each at 64 × 256. Here the head runs on ≈128 rows at a time; the
forward keeps only the hidden states (N, H) and the backward recomputes each chunk's logits, the way
fused linear-cross-entropy kernels do (e.g. Liger-Kernel), written in plain torch.

    logp_i = z_i[a_i] − logsumexp(z_i),  z_i = W h_i / τ
    ∂logp_i/∂z_i = onehot(a_i) − softmax(z_i)   →   ∂h_i = W^T (that) / τ,  ∂W = (that) h_i^T / τ

The entropy H_i = logsumexp(z_i) − Σ_v softmax(z_i)_v z_iv comes out of the same chunks, without
gradient (the trainers log it). Values equal the unchunked computation up to float rounding (tested).

The hidden states are the LM head's own input, taken by a hook (`head_inputs`), so whatever a model does
before its head is kept. What a model does after it (Gemma 2's logit soft-capping, Cohere's logit scale)
would be lost: `logits_are_head_outputs` checks that once per model, and the caller falls back to the
model's own logits when it fails.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

CHUNK_BYTES = 32 * 2**20  # one chunk's float32 logits: ≈170 rows of a 49k vocabulary


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _chunk_logits(head: torch.nn.Module, h: torch.Tensor, temperature: float) -> torch.Tensor:
    z = head(h).float()  # (n, V); through the module, so a prepacked head (rewardtune.prepack) is used
    return z / temperature if temperature != 1.0 else z


def _autocast_state(device: str) -> tuple[str, bool, torch.dtype]:
    """(device type, whether autocast is on there, its dtype) now."""
    try:
        return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    except (TypeError, AttributeError):  # torch < 2.4: per-device functions
        if device == "cpu":
            return device, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return device, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                temperature: float, entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        logp, ent = [], []
        step = _rows_per_chunk(weight.shape[0])
        for s in range(0, hidden.shape[0], step):
            z = _chunk_logits(head, hidden[s:s + step], temperature)  # (n, V)
            lse = torch.logsumexp(z, dim=-1)  # (n,)
            logp.append(z.gather(-1, labels[s:s + step, None]).squeeze(-1) - lse)
            ent.append(lse - (torch.softmax(z, dim=-1) * z).sum(-1) if entropy else torch.zeros_like(lse))
        ctx.save_for_backward(hidden, weight, labels)
        ctx.head, ctx.temperature, ctx.step, ctx.autocast = head, temperature, step, _autocast_state(hidden.device.type)
        out_ent = torch.cat(ent)
        ctx.mark_non_differentiable(out_ent)
        return torch.cat(logp), out_ent  # (N,), (N,)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _grad_ent: Any) -> tuple[Any, ...]:
        device, enabled, dtype = ctx.autocast
        # CUDA runs backward passes on its own thread, where the caller's autocast is off: the recomputed logits and
        # the gradient matmuls must run as the forward's did (torch.amp.custom_bwd does the same).
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _ChunkedLogprobs._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, labels = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], ctx.step):
            h = hidden[s:s + ctx.step]  # (n, H)
            with torch.no_grad():
                z = _chunk_logits(ctx.head, h, ctx.temperature)  # (n, V), recomputed
            dz = -torch.softmax(z, dim=-1)  # ∂logp/∂z = onehot − softmax
            dz.scatter_add_(-1, labels[s:s + ctx.step, None], torch.ones_like(dz[:, :1]))
            dz *= grad[s:s + ctx.step, None] / ctx.temperature  # (n, V), through z = W h / τ
            if need_h:
                grad_h[s:s + ctx.step] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)  # (n, H)
            if need_w:  # (under the forward's autocast, as any autocast layer's weight gradient would be)
                grad_w += dz.t() @ h.float()  # (V, H)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


@contextmanager
def head_inputs(head: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside, each call of `head` records its input (..., k, H) in the yielded list and computes its last
    position only (the caller uses the recorded input, not the logits)."""
    seen: list[torch.Tensor] = []

    def keep(_module: Any, args: tuple) -> tuple:
        seen.append(args[0])
        return (args[0][..., -1:, :].contiguous(), *args[1:])  # contiguous: see models.contiguous_head_input
    handle = head.register_forward_pre_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


def logits_are_head_outputs(model: Any) -> bool:
    """Whether `model`'s logits are exactly its LM head's output (checked once on three tokens, then remembered on
    the model): false for models that scale or soft-cap the logits after it.

    The head's output is taken by a hook inside the same forward call, so it was computed under whatever that call
    ran with (accelerate's bf16 autocast wraps a prepared model's forward): a head recomputed outside it would differ
    from bf16 logits by their rounding and wrongly send the model down the whole-logits path."""
    inner = getattr(model, "module", model)
    known = getattr(inner, "_rt_plain_head", None)
    if known is None:
        head = inner.get_output_embeddings()
        ids = torch.arange(1, 4, device=head.weight.device)[None]  # (1, 3)
        seen: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda _m, _args, out: seen.append(out))
        try:
            with torch.no_grad():
                logits = inner(input_ids=ids, logits_to_keep=1).logits  # (1, 1, V)
        finally:
            handle.remove()
        direct = seen[-1][:, -1:]  # (1, 1, V): the head's own output in that call
        # [:, -1:]: a model that ignores logits_to_keep returns every position
        known = bool(torch.allclose(logits[:, -1:].float(), direct.float(), rtol=1e-5, atol=1e-5))
        inner._rt_plain_head = known
    return known


def chunked_token_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor,
                           temperature: float = 1.0, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(hidden) / τ) at `labels`, and (if `entropy`) the entropy (no gradient), chunk by chunk.
    hidden (..., H), labels (...) → (...), (...) or None. The head must be bias-free (LM heads are)."""
    if getattr(head, "bias", None) is not None:
        raise ValueError("chunked_token_logprobs needs a bias-free LM head")
    shape = labels.shape
    logp, ent = _ChunkedLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]).contiguous(), head.weight,
                                       labels.reshape(-1).long(), head, temperature, entropy)
    return logp.reshape(shape), ent.reshape(shape) if entropy else None
