"""Frozen float32 linear weights, prepacked once for oneDNN: faster CPU matmuls for LoRA policies.

Why: a LoRA policy's base weights never change, yet `F.linear` hands each one to the BLAS in its
plain (out, in) layout on every call, and the kernel re-packs it into its blocked layout each time.
With few rows, as in decoding (16 rows per step), that packing is most of the call: on the 2-core
CPU of BENCHMARKS.md a decoding step of SmolLM2-135M's matmuls reads its weights at ≈8 GB/s while
the machine streams memory at ≈34 GB/s (`benchmarks/bf16_probe.py --decode-floor`). Packing once,
as torch.compile's CPU backend does, made the 49k-wide LM head 2.5× faster on 16 rows and a 576→1536
layer 1.4× faster on 572 rows (measured in BENCHMARKS.md).

The price is a second copy of every packed weight (the plain one stays: the backward pass, saving,
merging and non-CPU devices use it). Only float32 weights are packed: for bf16 the gain measured small
and the packed copies large. Results equal `F.linear` up to float rounding (a different summation
order; tested), and the rollout and the update both go through the packed path.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F

# layer → ((weight's data pointer, version), packed copy). Kept off the layer, so that copying or saving a
# model never meets the opaque oneDNN tensors; an entry goes when its layer does.
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[int, int], torch.Tensor]]" = weakref.WeakKeyDictionary()


def available() -> bool:
    """Whether this torch build has the oneDNN prepacked linear (CPU builds since torch 2.1 do)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight
        torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return False
    return True


class _PackedLinear(torch.autograd.Function):
    """y = x Wᵀ with W prepacked; the backward gives x its gradient from the plain W (W is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # (N, out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None  # (N, out) @ (out, in) → (N, in)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device argument
        return torch.is_autocast_cpu_enabled()


def _usable(layer: torch.nn.Linear, x: torch.Tensor) -> bool:
    w = layer.weight
    return (not w.requires_grad and w.dtype == torch.float32 and x.dtype == torch.float32
            and w.device.type == "cpu" and x.device.type == "cpu" and not _cpu_autocast())


def packed_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` through the packed weight; plain `F.linear` whenever packing does not apply (a trainable
    weight, autocast, another device or dtype).  x (..., in) → (..., out).

    The copy is repacked when the weight is replaced or changed by a tracked in-place op (its data pointer or
    version counter moved). A write through `.data`, as peft's `merge_adapter` does, moves neither: call
    `unpack` before merging an adapter into packed base weights."""
    if not _usable(layer, x):
        return F.linear(x, layer.weight, layer.bias)
    w = layer.weight
    key, entry = (w.data_ptr(), w._version), _PACKED.get(layer)
    if entry is None or entry[0] != key:
        entry = _PACKED[layer] = key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), 16)
    y = _PackedLinear.apply(x.reshape(-1, x.shape[-1]).contiguous(), entry[1], w)  # (N, out)
    y = y.reshape(*x.shape[:-1], y.shape[-1])
    return y if layer.bias is None else y + layer.bias


def _packable(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad
            and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]


def packed_bytes(model: torch.nn.Module) -> int:
    """The memory the packed copies of `model`'s frozen float32 linear weights will take (≈ their size)."""
    return sum(m.weight.numel() * 4 for m in _packable(model))


def available_memory() -> int:
    """Bytes of memory the OS can still hand out (psutil comes with accelerate)."""
    import psutil

    return int(psutil.virtual_memory().available)


def prepack_frozen_linears(model: torch.nn.Module, max_share: float = 1.0) -> int:
    """Route every frozen float32 `nn.Linear` on the CPU (a LoRA model's base layers and LM head) through
    `packed_forward`; returns how many. Packing happens on the first call, so nothing is spent on layers
    never run. Does nothing (returns 0) where oneDNN's prepacked linear is missing, or when the copies
    would take more than `max_share` of the memory available now (speed must not cost a run that fits)."""
    layers = _packable(model)
    if not available() or not layers or sum(m.weight.numel() * 4 for m in layers) > max_share * available_memory():
        return 0
    for layer in layers:
        layer.forward = packed_forward.__get__(layer)  # an instance attribute: state_dict and class untouched
    return len(layers)


def is_packed(layer: torch.nn.Module) -> bool:
    """Whether `layer` goes through `packed_forward` (and so will hold a packed copy once called)."""
    return getattr(vars(layer).get("forward"), "__func__", None) is packed_forward


def unpack(model: torch.nn.Module) -> None:
    """Undo `prepack_frozen_linears`: the layers use `nn.Linear.forward` again and the copies are freed."""
    for layer in model.modules():
        if is_packed(layer):
            del layer.forward
            _PACKED.pop(layer, None)


def prepack_policy(model: torch.nn.Module, say: Callable[[str], None]) -> int:
    """The run's set-up step: pack a LoRA policy's frozen float32 weights unless the copies would take over a
    quarter of the free memory; says which it did."""
    size = packed_bytes(model) / 2**20
    n = prepack_frozen_linears(model, max_share=0.25)
    if n:
        say(f"model.lora.prepack: frozen float32 weights packed for oneDNN (+{size:.0f} MiB)")
    elif size:
        say(f"model.lora.prepack: not packed ({size:.0f} MiB of copies would take over a quarter of the memory "
            "available, or this torch has no oneDNN); plain matmuls")
    return n
