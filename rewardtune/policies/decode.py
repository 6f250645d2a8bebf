"""rewardtune's own decoding loop for Llama-style decoders: the same math as `generate`, less Python.

Why: with few rows per step (16 in the GRPO benchmark) a decoding step is dominated by what is not a
matmul: `generate`, the decoder's modules and peft's LoRA layers run many small ops per layer and token
(cache objects, mask building, kwargs plumbing, per-adapter checks) and Python between them. This loop
keeps only the math: a preallocated KV cache, the attention of the one new position over the cached keys,
and the LoRA update as `addmm(x Aᵀ, Bᵀ, s)` on the base layer's output. Profiled on the 2-core CPU of
BENCHMARKS.md (16 × 32 tokens from SmolLM2-135M): 293k op calls instead of 398k, 0.6 s outside the ops
instead of 0.9 s; a sampling call took 2.6–3.3 s against `generate`'s 2.9–3.5 s (two interleaved runs of
`benchmarks/grpo_step_profile.py --decode f32`).

What it reuses from the model, so that the numbers are the model's own: the embedding, the RMSNorm
modules, the rotary embedding module and the model file's `apply_rotary_pos_emb`, the activation, each
projection's base layer (prepacked where `prepack` packed it) with its LoRA weights and scaling, the final
norm and the LM head. The prompt is prefilled by the model itself (`causal_lm.prompt_cache`). Which rows have
ended stays on the device (`decode_rows.py`); `decode_graph.py` runs the same layers with static shapes, once
captured as a CUDA graph.

Supported: Llama and Qwen2 (without sliding windows) on one device, with plain `nn.Linear` projections or
peft's LoRA layers (unmerged; not DoRA or another LoRA variant; no LoRA bias). Anything else (`unsupported`
says why) takes `generate` (`causal_lm._sample`). Stop strings are checked by transformers' own criterion, in
batches (`decode_rows.Rows.check_stops`).
Tested against `generate`: the same tokens, and log-probs within 1e-5 in fp32 (`tests/test_decode.py`).
Shapes: B rows, Tp prompt tokens, T new tokens, Hq query heads, Hk key/value heads, D head size, V vocab.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .decode_rows import Rows, run_steps
from .positions import position_ids

_FAMILIES = ("llama", "qwen2")


def unsupported(model: Any) -> str | None:
    """Why this loop cannot decode `model` (a causal LM, possibly peft-wrapped), or None when it can."""
    if hasattr(model, "peft_config") and "LORA" not in str(getattr(model, "peft_type", "")):
        return f"peft method {getattr(model, 'peft_type', None)} (only LoRA is decoded by this loop)"
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(inner, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in _FAMILIES:
        return f"model type {kind!r} is not one of {_FAMILIES}"
    if getattr(cfg, "use_sliding_window", False) or (kind != "qwen2" and getattr(cfg, "sliding_window", None)):
        return "sliding-window attention"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    if len(set(getattr(inner, "hf_device_map", {}).values())) > 1:
        return "a model split over several devices"
    body = getattr(inner, "model", None)
    if not all(hasattr(body, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "not a Llama-style decoder (embed_tokens, layers, norm, rotary_emb)"
    for layer in body.layers:
        for m in (*_attn_projs(layer.self_attn), *_mlp_projs(layer.mlp)):
            why = _projection_unsupported(m)
            if why:
                return why
    return None


def _attn_projs(attn: Any) -> tuple:
    return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj


def _mlp_projs(mlp: Any) -> tuple:
    return mlp.gate_proj, mlp.up_proj, mlp.down_proj


def _projection_unsupported(m: Any) -> str | None:
    if type(m) is torch.nn.Linear:
        return None
    from peft.tuners.lora.layer import Linear as LoraLinear  # only reached for peft-wrapped models

    if type(m) is not LoraLinear:
        return f"projection {type(m).__name__} is neither nn.Linear nor peft's LoRA Linear"
    if getattr(m, "merged", False):
        return "a LoRA adapter merged into the base weights"
    for name in _active(m):  # DoRA and peft's other LoRA variants compute more than s·(x Aᵀ) Bᵀ
        if getattr(m, "use_dora", {}).get(name) or getattr(m, "lora_variant", {}).get(name) is not None:
            return f"a LoRA variant ({type(getattr(m, 'lora_variant', {}).get(name)).__name__}, DoRA, ...)"
        if m.lora_B[name].bias is not None:
            return "a LoRA bias"
    return None


def _active(m: Any) -> list[str]:
    """The LoRA adapters that change this layer's output now (none when disabled or merged)."""
    if getattr(m, "disable_adapters", False) or getattr(m, "merged", False):
        return []
    return [a for a in m.active_adapters if a in m.lora_A]


def _projection(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """x → the layer's output, as the module computes it: base layer, plus s·(x Aᵀ) Bᵀ per active adapter."""
    if not hasattr(m, "base_layer"):
        return m
    base = m.base_layer
    lora = [(m.lora_A[a].weight, m.lora_B[a].weight.t(), m.scaling[a]) for a in _active(m)]  # A (r, in), Bᵀ (r, out)

    def run(x: torch.Tensor) -> torch.Tensor:  # x (B, 1, in) → (B, 1, out)
        y = out = base(x)
        for A, Bt, s in lora:
            if out.dtype == A.dtype == x.dtype:  # y + s·(x Aᵀ) Bᵀ in two calls
                flat = F.linear(x.view(-1, x.shape[-1]), A)  # (B, r)
                out = torch.addmm(out.view(-1, out.shape[-1]), flat, Bt, alpha=s).view(out.shape)
            else:  # the adapter in its own dtype, summed there and rounded once, as peft does (fp32 over bf16)
                out = out + F.linear(x.to(A.dtype), A) @ Bt * s
        return out.to(y.dtype)
    return run


class _Layer:
    """One decoder layer's callables and its KV cache: (B, Hk, Tp − 1 + T, D) keys and values."""

    def __init__(self, layer: Any):
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = (_projection(m) for m in _attn_projs(attn))
        self.gate, self.up, self.down = (_projection(m) for m in _mlp_projs(mlp))
        self.norm1, self.norm2, self.act = layer.input_layernorm, layer.post_attention_layernorm, mlp.act_fn
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the model file's own
        self.d, self.scale = attn.head_dim, attn.scaling
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def cache(self, prefix_k: torch.Tensor | None, prefix_v: torch.Tensor | None, rows: int, hk: int, length: int,
              like: torch.Tensor) -> None:
        """Allocate the cache for `length` positions and copy the prompt's keys/values (B, Hk, Tp − 1, D) in."""
        src = prefix_k if prefix_k is not None else like
        self.keys = src.new_zeros(rows, hk, length, self.d)
        self.values = torch.zeros_like(self.keys)
        if prefix_k is not None:
            self.keys[:, :, :prefix_k.shape[2]] = prefix_k
            self.values[:, :, :prefix_v.shape[2]] = prefix_v

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, j: int | torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """One new position per row at cache slot j.  x (B, 1, E) → (B, 1, E). A Python int j attends slots
        0..j (mask (B, 1, 1, j + 1)); a (1,) device tensor j keeps the shapes static for CUDA graphs: the slot is
        written by `index_copy_` and every slot attended (mask (B, 1, 1, L), False past j)."""
        B, hk = x.shape[0], self.keys.shape[1]
        h = self.norm1(x)
        q = self.q(h).view(B, -1, 1, self.d)  # (B, Hq, 1, D): one position, so no transpose is needed
        k = self.k(h).view(B, hk, 1, self.d)  # (B, Hk, 1, D)
        q, k = self.rope(q, k, cos, sin)
        v = self.v(h).view(B, hk, 1, self.d)
        if isinstance(j, int):
            self.keys[:, :, j] = k[:, :, 0].to(self.keys.dtype)
            self.values[:, :, j] = v[:, :, 0].to(self.values.dtype)
            keys, values = self.keys[:, :, :j + 1], self.values[:, :, :j + 1]
        else:  # no host value in the step: the same kernels whatever the slot
            self.keys.index_copy_(2, j, k.to(self.keys.dtype))
            self.values.index_copy_(2, j, v.to(self.values.dtype))
            keys, values = self.keys, self.values
        # Grouped-query attention without repeating keys: the G = Hq / Hk query heads of a key/value head are
        # G queries over that head's keys (HF's repeat_kv pairs query head i with key head i // G).
        q = q.reshape(B, hk, -1, self.d).to(self.keys.dtype)  # (B, Hk, G, D)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)  # (B, Hk, G, D)
        x = x + self.o(a.reshape(B, 1, -1).to(x.dtype))
        h = self.norm2(x)
        return x + self.down(self.act(self.gate(h)) * self.up(h))


def cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Each layer's (keys, values) in a transformers cache (the `layers` API, or the older key/value lists)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _layers_with_caches(decoder_layers: Sequence[Any], prefix: list | None, hk: int, length: int,
                        x: torch.Tensor) -> list[_Layer]:
    """Each decoder layer as a `_Layer` holding a cache of `length` slots, the prompt's keys/values copied in.
    `prefix` is emptied as it goes (see `decode`).  x (B, 1, E): the first input, for the rows, dtype and device."""
    layers = [_Layer(layer) for layer in decoder_layers]
    for i, layer in enumerate(layers):
        k, v = (None, None) if prefix is None else prefix[i]
        if prefix is not None:
            prefix[i] = None  # handed over: freed once copied
        layer.cache(k, v, x.shape[0], hk, length, x)
    return layers


@torch.no_grad()
def decode(model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix: list | None,
           choose: Callable[[torch.Tensor], torch.Tensor], max_new_tokens: int, eos_ids: Sequence[int],
           pad_id: int, stop: Callable[[torch.Tensor], torch.Tensor] | None = None, check_every: int = 1) -> torch.Tensor:
    """Up to `max_new_tokens` tokens after each left-padded prompt, as `generate` makes them: `choose` picks
    each step's tokens from the (B, V) logits; a row that emitted an EOS, or whose ids so far (B, Tp + t) `stop`
    finds ended by a stop string (transformers' `StopStringCriteria`, as `generate` applies it), gets `pad_id`
    from then on; the loop stops when every row has ended.  ids, mask (B, Tp); `prefix` the (B, Hk, Tp − 1, D)
    keys and values of ids[:, :-1] per layer (`cache_layers`; None when Tp = 1) → (B, ≤ T).

    Which rows ended is kept on the device (`decode_rows.Rows`); the host looks every `check_every` tokens (≤ 0:
    never), the loop's only synchronisations besides one at the end. The completions do not depend on it.

    `prefix` is consumed: each entry is set to None once copied into the loop's cache, so that a caller holding
    no other reference does not keep the prompt's keys/values twice (with long prompts, the larger part)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body, cfg = inner.model, inner.config
    B, Tp = ids.shape
    if max_new_tokens < 1:
        return ids.new_zeros(B, 0)
    hk, length = cfg.num_key_value_heads, Tp - 1 + max_new_tokens  # the last token's keys are never needed
    keep = torch.zeros(B, length, dtype=torch.bool, device=ids.device)  # which cache slots a row attends
    keep[:, :Tp] = mask.bool()
    pos = position_ids(mask)[:, -1:]  # (B, 1) as generate numbers them
    layers = _layers_with_caches(body.layers[:cfg.num_hidden_layers], prefix, hk, length,
                                 body.embed_tokens(ids[:, -1:]))  # as the model's forward
    rows = Rows(ids, max_new_tokens, eos_ids, pad_id, stop)

    def step(t: int) -> None:
        j = Tp - 1 + t  # the cache slot of this step's input token, the last one recorded
        keep[:, j] = True
        x = body.embed_tokens(rows.seq[:, j:j + 1])  # (B, 1, E)
        cos, sin = body.rotary_emb(x, pos + t)  # (B, 1, D) each
        attend = keep[:, None, None, :j + 1]  # (B, 1, 1, j + 1)
        for layer in layers:
            x = layer(x, cos, sin, j, attend)
        rows.advance(t, choose(inner.lm_head(body.norm(x))[:, -1]))  # (B, V) logits → (B,)
    return rows.completions(run_steps(step, rows, max_new_tokens, check_every))  # (B, ≤ T)
