"""The decoding step with static shapes, captured once as a CUDA graph and replayed per token (`gen.cuda_graph`).

Why: a decoding step of a small model is hundreds of small kernels (SmolLM2-135M: 30 layers of norms, seven
projections with their LoRA matmuls, rotary embedding, attention), each launched by Python; on a GPU the launches,
not the math, set the pace (issue 24: 88 ms per token for 16 rows of a 135M model that reads its 0.27 GB of
weights in ≈0.1 ms). A CUDA graph records the step's kernels once and replays them with one call.

What a graph needs, and how this step provides it: every tensor at a fixed address and every shape fixed, and no
value read by the host. So the KV cache is preallocated for a whole number of 64-slot blocks and attended whole
under a mask (`decode._Layer` given a device slot index); the step reads its input token from the tokens so far,
its slot and step number from (1,) device counters that it advances itself; the sampler (`TokenSampler.pick`)
reads its uniform draw for the step from the (T, B) draws fixed before decoding; tokens and log-probs are written
in place into preallocated buffers; which rows ended is `decode_rows.Rows`, which the host checks every
`gen.check_every` tokens between replays. Under bf16 autocast the casts are recorded inside the graph
(autocast's cast cache is off while capturing).

Step 0 runs eagerly on a side stream (CUDA's warm-up before a capture), step 1 is captured and then replayed,
and so is every later step. Where no graph can be captured (not CUDA; a capture that fails), a warning says why and
the eager loop decodes; the static step run eagerly gives the same tokens and log-probs as the eager loop
(tests/test_decode_sync.py on the CPU; tests/test_gpu.py compares the replayed graph with it on a GPU).
Shapes: B rows, Tp prompt tokens, T new tokens, L cache slots, V vocabulary.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Sequence

import torch

from . import decode as eager
from .decode_rows import Rows, check_interval, run_steps
from .positions import position_ids
from .sampling import TokenSampler, draw_uniforms

SLOT_BLOCK = 64  # cache lengths are rounded up to whole blocks: fewer distinct shapes, a little more attention


class StaticStep:
    """One decoding step over device buffers only (callable with no argument; capturable as a CUDA graph)."""

    def __init__(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix: list | None, sampler: TokenSampler,
                 rows: Rows, max_new_tokens: int):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.inner, self.body, cfg = inner, inner.model, inner.config
        B, self.Tp = ids.shape
        L = -(-(self.Tp - 1 + max_new_tokens) // SLOT_BLOCK) * SLOT_BLOCK
        self.keep = torch.zeros(B, L, dtype=torch.bool, device=ids.device)  # (B, L) which slots a row attends
        self.keep[:, :self.Tp] = mask.bool()
        self.pos = position_ids(mask)[:, -1:].clone()  # (B, 1) position of step 0's input token
        self.t = torch.zeros(1, dtype=torch.long, device=ids.device)  # (1,) the step number, advanced by the step
        self.layers = eager._layers_with_caches(self.body.layers[:cfg.num_hidden_layers], prefix, cfg.num_key_value_heads,
                                          L, self.body.embed_tokens(ids[:, -1:]))
        self.logp = torch.zeros(B, max_new_tokens, device=ids.device)  # (B, T) log π of each chosen token
        self.sampler, self.rows = sampler, rows

    def __call__(self) -> None:
        j = self.t + (self.Tp - 1)  # (1,) the cache slot of this step's input token
        self.keep.index_fill_(1, j, True)
        x = self.body.embed_tokens(self.rows.seq.index_select(1, j))  # (B, 1, E)
        cos, sin = self.body.rotary_emb(x, self.pos + self.t)
        attend = self.keep[:, None, None, :]  # (B, 1, 1, L)
        for layer in self.layers:
            x = layer(x, cos, sin, j, attend)
        logits = self.inner.lm_head(self.body.norm(x))[:, -1]  # (B, V)
        u = None if self.sampler.greedy else self.sampler.uniforms.index_select(0, self.t)[0]  # (B,)
        token, logp = self.sampler.pick(logits, u)
        self.logp.index_copy_(1, self.t, logp[:, None])
        self.rows.advance(self.t, token)
        self.t += 1


class Replay:
    """Runs a `StaticStep` per token: eagerly at step 0, on a side stream as CUDA's warm-up before a capture wants;
    at step 1 captures it as a CUDA graph and replays it; from then on replays. A capture that fails leaves the
    buffers as they were (a capture runs nothing): a warning, and the step runs eagerly from there."""

    def __init__(self, step: StaticStep):
        self.step, self.graph, self.eager = step, None, False

    def __call__(self, t: int) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.eager:
            self.step()
        elif t == 0:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
        else:
            self.capture()
            self(t)

    def capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()
            self.graph = graph
        except RuntimeError as e:  # an op that cannot be captured: decode on without the graph
            warnings.warn(f"gen.cuda_graph: the decoding step could not be captured as a CUDA graph ({e}); "
                          "decoding eagerly", stacklevel=2)
            self.eager = True


def graph_unavailable(device: torch.device) -> str | None:
    """Why no CUDA graph can decode on `device`, or None when one can."""
    if device.type != "cuda":
        return f"the model is on {device.type}, and CUDA graphs need a CUDA device"
    return None


@contextlib.contextmanager
def _uncached_autocast(device: torch.device) -> Iterator[None]:
    """The caller's autocast with its cast cache off, so that a captured graph makes its casts itself (a cached
    cast made during warm-up would be a tensor outside the graph's memory)."""
    if not torch.is_autocast_enabled(device.type):
        yield
        return
    with torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False):
        yield


@torch.no_grad()
def decode_static(model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix: list | None, sampler: TokenSampler,
                  max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, stop: Any = None, check_every: int = 1,
                  graph: bool = True) -> torch.Tensor:
    """`decode.decode` with static shapes, the step replayed as a CUDA graph when `graph` (CUDA only), with the
    sampler's log-probs recorded as `TokenSampler.choose` records them; the host checks every `check_every` tokens
    (≤ 0: never).  ids, mask (B, Tp) → (B, ≤ T)."""
    B = ids.shape[0]
    if max_new_tokens < 1:
        return ids.new_zeros(B, 0)
    if not sampler.greedy and sampler.uniforms is None:  # the draws are fixed before the loop, not drawn in it
        sampler.uniforms = draw_uniforms(max_new_tokens, B, ids.device)
    rows = Rows(ids, max_new_tokens, eos_ids, pad_id, stop)
    step = StaticStep(model, ids, mask, prefix, sampler, rows, max_new_tokens)
    run = Replay(step) if graph else (lambda t: step())
    with _uncached_autocast(ids.device):
        steps = run_steps(run, rows, max_new_tokens, check_every)
    sampler.logprobs = list(step.logp[:, :steps].unbind(1))
    return rows.completions(steps)


def decode_any(model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix: list | None, sampler: TokenSampler,
               max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, stop: Any, check_every: int,
               cuda_graph: bool) -> torch.Tensor:
    """The loop the settings ask for (`gen.check_every`, `gen.cuda_graph`): the replayed graph where one can be
    captured, else the eager loop (`decode.decode`; a warning when a graph was asked for).  → (B, ≤ T)"""
    every = check_interval(check_every, ids.device)
    why = graph_unavailable(ids.device) if cuda_graph else None
    if cuda_graph and why is None:
        return decode_static(model, ids, mask, prefix, sampler, max_new_tokens, eos_ids, pad_id, stop, every)
    if why:
        warnings.warn(f"gen.cuda_graph: {why}; decoding eagerly", stacklevel=2)
    return eager.decode(model, ids, mask, prefix, sampler.choose, max_new_tokens, eos_ids, pad_id, stop, every)
