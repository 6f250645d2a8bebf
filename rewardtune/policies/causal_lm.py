"""A causal LM as a policy: batched sampling with the KV cache, and token log-probs.

Shapes: P prompts, K samples each, B = P·K rows, Tp prompt tokens (left-padded), T completion
tokens (right-padded after EOS), V vocabulary.

Decoding runs rewardtune's own loop for Llama/Qwen2 models (`decode.py`, `gen.fast_decode`) and
transformers' `generate` otherwise. Log-probs of the sampled tokens are recorded while decoding
(`sampling.TokenSampler`, from the logits the decoder computes anyway, divided by the temperature), so
no extra forward pass is spent on π_old. They match a fresh full-sequence forward pass up to float rounding (KV-cached vs. one-shot
attention); `tests/test_causal_lm_policy.py` checks the tolerance. The training forward pass
must use the same position ids as generation, which with left padding are *not* arange(T):
`positions.position_ids` reproduces them from the attention mask.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..algorithms import logprobs_from_logits, tempered_logprobs
from ..config import ConfigError, doc
from . import decode
from .decode_graph import decode_any
from .head import chunked_token_logprobs, head_inputs, logits_are_head_outputs
from .positions import position_ids
from .sampling import TokenSampler, draw_uniforms


@dataclass(frozen=True)
class GenSettings:
    """How completions are sampled."""

    max_new_tokens: int = doc(32, "completion length budget T")
    temperature: float = doc(1.0, "sampling temperature (the policy is softmax(logits / temperature))")
    top_p: float = doc(1.0, "nucleus sampling mass (1 = off)")
    top_k: int = doc(0, "top-k sampling (0 = off)")
    chat_template: bool = doc(False, "wrap each prompt as a user turn with the model's chat template")
    stop_strings: tuple = doc((), "extra strings that end a completion")
    fast_decode: bool = doc(True, "decode Llama/Qwen2 models with rewardtune's own loop (less overhead per token; "
                                  "the same tokens); false or other models: transformers' generate")
    check_every: int = doc(0, "fast_decode: tokens between the host's checks that every row has ended, the loop's only "
                              "host-device synchronisations (0 = auto: 1 on a CPU, 32 on a GPU; -1 = never: always "
                              "max_new_tokens steps); the same completions")
    cuda_graph: bool = doc(False, "fast_decode on CUDA: capture the decoding step once as a CUDA graph and replay it per "
                                  "token (static shapes; the same completions); elsewhere a warning, then the eager loop")


@dataclass
class Rollout:
    """One batch of sampled completions and what the update needs about them."""

    prompt_ids: torch.Tensor  # (B, Tp) left-padded
    prompt_mask: torch.Tensor  # (B, Tp)
    completion_ids: torch.Tensor  # (B, T) right-padded
    completion_mask: torch.Tensor  # (B, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (B, T) log π_old of the sampled tokens
    prompts: list[str]  # (B,)
    completions: list[str]  # (B,)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # (B, Tp + T)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)  # (B, Tp + T)

    def rows(self, idx: slice) -> "Rollout":
        return Rollout(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx],
                       self.completion_mask[idx], self.logprobs[idx], self.prompts[idx], self.completions[idx])

    def chunks(self, rows: int) -> Iterator["Rollout"]:
        """Consecutive pieces of at most `rows` rows (0 = the whole rollout in one piece)."""
        B = self.completion_ids.shape[0]
        return (self.rows(slice(s, s + (rows or B))) for s in range(0, B, rows or B))


def format_prompts(tok: Any, prompts: Sequence[str], chat_template: bool) -> list[str]:
    """Raw prompts, or each one as a user turn through the tokenizer's chat template."""
    if not chat_template:
        return list(prompts)
    if not getattr(tok, "chat_template", None):
        raise ValueError("chat_template=true but this tokenizer has no chat template")
    return [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def without_dropout(model: Any) -> Any:
    """Set every dropout probability to 0 (nn.Dropout layers, LoRA's included, and attention dropout),
    so that training mode samples and scores exactly as evaluation mode does."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    return model


def completion_mask(ids: torch.Tensor, eos_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """1 for tokens up to and including the first EOS, 0 after; when pad is not an EOS, also 0 from the
    first pad on (`generate` fills a row that a stop string ended with pad).  ids (B, T) → (B, T)."""
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= ids == e
    ended = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    if pad_id not in eos_ids:
        ended |= (ids == pad_id).long().cumsum(-1) > 0
    return (~ended).long()


@torch.no_grad()
def sample(model: Any, tok: Any, prompts: Sequence[str], k: int, gen: GenSettings, max_prompt_tokens: int,
           greedy: bool = False, share_prompt: bool = True, rows: int = 0, only: slice | None = None) -> Rollout:
    """K completions for each of P prompts (rows ordered prompt-major: p0k0, p0k1, ..., p1k0, ...).

    `greedy=True` decodes greedily (evaluation); log-probs are then under the untempered policy.
    `share_prompt`: prefill each prompt once and repeat its keys/values to its K rows (`prompt_cache`)
    instead of running it K times; the same tokens up to float rounding (tested).
    `rows`: decode at most this many rows at once (whole prompts, at least one; 0 = all), which bounds the
    KV cache. Memory only: every row's uniform draws are fixed before decoding (`draw_uniforms`), so a row
    gets the same tokens whichever rows share its pass, up to float rounding (tested).
    `only`: decode these prompts only (a process's share of a held-out set), with the draws all `prompts` would get.
    """
    texts = format_prompts(tok, prompts, gen.chat_template)
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=not gen.chat_template)
    too_long = [i for i, m in enumerate(enc["attention_mask"]) if int(m.sum()) > max_prompt_tokens]
    if too_long:
        i = too_long[0]
        raise ValueError(f"{len(too_long)} prompt(s) longer than {max_prompt_tokens} tokens "
                         f"(context minus max_new_tokens), first: {prompts[i][:120]!r}")
    was_training = model.training
    model.eval()  # transformers < 5.23 turns the KV cache off in training mode with checkpointing on
    try:
        P, device = len(prompts), next(model.parameters()).device
        u = None if greedy else draw_uniforms(gen.max_new_tokens, P * k, device)  # (T, B)
        lo, hi = (only.start, only.stop) if only is not None else (0, P)
        per = max(1, rows // k) if rows else hi - lo  # prompts per pass
        parts = [_sample(model, tok, prompts[s:min(s + per, hi)], {n: t[s:min(s + per, hi)] for n, t in enc.items()}, k,
                         gen, greedy, share_prompt, None if u is None else u[:, s * k:min(s + per, hi) * k])
                 for s in range(lo, hi, per)]
        return parts[0] if len(parts) == 1 else concat_rollouts(parts, tok.pad_token_id)
    finally:
        model.train(was_training)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Rollouts of the same prompt width, one after the other; completions padded to the longest.  → (ΣB, ·)"""
    T = max(p.completion_ids.shape[1] for p in parts)

    def cat(name: str, value: float) -> torch.Tensor:
        return torch.cat([F.pad(getattr(p, name), (0, T - p.completion_ids.shape[1]), value=value) for p in parts])
    return Rollout(torch.cat([p.prompt_ids for p in parts]), torch.cat([p.prompt_mask for p in parts]),
                   cat("completion_ids", pad_id), cat("completion_mask", 0), cat("logprobs", 0.0),
                   [x for p in parts for x in p.prompts], [x for p in parts for x in p.completions])


def _sample(model: Any, tok: Any, prompts: Sequence[str], enc: Any, k: int, gen: GenSettings, greedy: bool,
            share_prompt: bool, uniforms: torch.Tensor | None) -> Rollout:
    device = next(model.parameters()).device
    ids = enc["input_ids"].repeat_interleave(k, 0).to(device)  # (B, Tp)
    mask = enc["attention_mask"].repeat_interleave(k, 0).to(device)  # (B, Tp)
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [tok.eos_token_id])
    from transformers import GenerationConfig, LogitsProcessorList

    sampler, stop = TokenSampler(gen.temperature, gen.top_k, gen.top_p, greedy, uniforms), stop_check(tok, gen)
    prefix = None  # each prompt prefilled once and its keys/values repeated to its K rows
    if share_prompt and k > 1 and ids.shape[1] > 1:
        prefix = prompt_cache(model, enc["input_ids"].to(device), enc["attention_mask"].to(device), k)
    if gen.fast_decode and decode.unsupported(model) is None:
        if prefix is None and ids.shape[1] > 1:  # the loop takes a prefilled prompt: one prefill per row
            prefix = prompt_cache(model, ids, mask, 1)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
        kv = decode.cache_layers(prefix) if prefix is not None else None
        del prefix  # the loop copies the prompt's keys/values into its own cache and frees these as it goes
        comp = decode_any(model, ids, mask, kv, sampler, gen.max_new_tokens, eos_ids, pad, stop, gen.check_every,
                          gen.cuda_graph)
        return _rollout(tok, prompts, k, ids, mask, comp, sampler, eos_ids, stop)
    cache = {} if prefix is None else {cache_keyword(model): prefix}
    config = GenerationConfig(do_sample=False, max_new_tokens=gen.max_new_tokens, pad_token_id=tok.pad_token_id,
                              eos_token_id=eos_ids, bos_token_id=model.generation_config.bos_token_id,
                              stop_strings=list(gen.stop_strings) or None)
    with neutral_generation_config(model):
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                             logits_processor=LogitsProcessorList([sampler]),
                             tokenizer=tok if gen.stop_strings else None, **cache)
    return _rollout(tok, prompts, k, ids, mask, out[:, ids.shape[1]:], sampler, eos_ids, stop)


def stop_check(tok: Any, gen: GenSettings) -> Any:
    """None without stop strings; else (B, L) ids → (B,) whether a stop string ends them, by transformers'
    `StopStringCriteria`, the criterion `generate` uses (so both decoders stop at the same token)."""
    if not gen.stop_strings:
        return None
    from transformers.generation.stopping_criteria import StopStringCriteria

    made, key = tok.__dict__.setdefault("_rt_stop_criteria", {}), tuple(gen.stop_strings)
    if key not in made:  # building one reads the whole vocabulary: 80 ms for SmolLM2's 49k tokens
        try:
            made[key] = StopStringCriteria(tok, list(key))
        except ValueError as e:  # e.g. it reads each token's string through the tokenizer's own prefix convention
            raise ConfigError(f"gen.stop_strings={list(key)}: transformers' StopStringCriteria, which ends completions "
                              f"at them, failed with this tokenizer ({type(tok).__name__}): {e}. It needs a tokenizer "
                              "whose tokens decode to their text (BPE, SentencePiece); otherwise end completions with "
                              "EOS and leave gen.stop_strings empty") from e
    criterion = made[key]
    return lambda ids: criterion(ids, None)


@contextmanager
def neutral_generation_config(model: Any) -> Iterator[None]:
    """While `generate` runs, the model's own generation config is a blank one. `generate` fills every field
    the caller left unset from it (transformers 5), so a checkpoint's repetition penalty, n-gram ban or
    minimum length would change the scores the sampler sees, and the recorded log-probs would no longer be
    the policy's softmax(logits / T)."""
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def _rollout(tok: Any, prompts: Sequence[str], k: int, ids: torch.Tensor, mask: torch.Tensor, comp: torch.Tensor,
             sampler: TokenSampler, eos_ids: list[int], stop: Any = None) -> Rollout:
    """The rollout of completions comp (B, T): masked after the first EOS or stop string, with their log-probs
    and texts."""
    cmask = completion_mask(comp, eos_ids, tok.pad_token_id)
    if stop is not None:  # when pad is an EOS, the pad after a stop string would pass for the row's own EOS
        cmask = cmask * ~after_stop(ids, comp, stop)
    comp = torch.where(cmask.bool(), comp, torch.full_like(comp, tok.pad_token_id))
    logp = sampler.stacked()[:, :comp.shape[1]] * cmask  # (B, T)
    completions = tok.batch_decode(comp, skip_special_tokens=True)
    return Rollout(ids, mask, comp, cmask, logp, [p for p in prompts for _ in range(k)], completions)


def after_stop(ids: torch.Tensor, comp: torch.Tensor, stop: Any) -> torch.Tensor:
    """True strictly after the first token at which `stop` finds prompt + completion so far ended by a stop
    string.  ids (B, Tp), comp (B, T) → (B, T) bool."""
    seq, Tp = torch.cat([ids, comp], dim=1), ids.shape[1]  # (B, Tp + T), built once: the checks take prefixes
    hit = torch.stack([stop(seq[:, :Tp + t + 1]) for t in range(comp.shape[1])], dim=1)
    return (hit.long().cumsum(-1) - hit.long()) > 0  # (B, T)


def prompt_cache(model: Any, ids: torch.Tensor, mask: torch.Tensor, k: int) -> Any:
    """The KV cache of every prompt position but the last, computed once per prompt and repeated to its K
    rows.  ids, mask (P, Tp) → a cache of P·K rows and Tp − 1 positions.

    `generate` given this cache and the full (P·K, Tp) prompt runs only the last prompt position (whose
    logits give the first token) and then decodes, so a prompt costs Tp − 1 + K positions, not K·Tp.
    """
    m = mask[:, :-1]  # (P, Tp - 1) left padding: the last position is a real token in every row
    out = model(input_ids=ids[:, :-1], attention_mask=m, position_ids=position_ids(m), use_cache=True,
                logits_to_keep=1)
    cache = getattr(out, cache_keyword(model))
    cache.batch_repeat_interleave(k)  # (P, ...) → (P·K, ...), prompt-major like the rows
    return cache


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of consecutive rows with the same prompt (rows are prompt-major): the first row of each run
    and, for every row, its run's number.  (B, Tp) → (G,), (B,)."""
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)  # (B-1,)
    starts = torch.cat([same.new_ones(1), ~same])  # (B,)
    return starts.nonzero().squeeze(-1), starts.long().cumsum(0) - 1


def checkpointing(model: Any) -> bool:
    """Whether activation checkpointing is on (through DDP's and peft's wrappers)."""
    inner = getattr(model, "module", model)
    on = getattr(inner, "is_activation_checkpointing", None)  # transformers ≥ 5.x; the old name before
    return bool(on if on is not None else getattr(inner, "is_gradient_checkpointing", False))


def cache_keyword(model: Any) -> str:
    """The KV cache's name in the model's forward and output: `cache` in recent transformers 5,
    `past_key_values` before (still accepted for a while, with a deprecation warning)."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "cache" if "cache" in inspect.signature(type(inner).forward).parameters else "past_key_values"


def completion_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, n_completion: int,
                      hidden: bool = False, share_prompt: bool = True) -> torch.Tensor:
    """The logits that predict each of the last `n_completion` tokens, or with `hidden` the LM head's inputs
    at those positions (the head then runs on one position per call).  ids (B, L) → (B, T, V) or (B, T, H).

    When several rows share a prompt (K samples of it), the prompt goes through the model once per group
    and its keys/values are indexed out to the group's rows, as during sampling: a group of K rows costs
    Tp + K·T token positions instead of K·(Tp + T). Gradients flow through the shared keys/values, so the
    result, values and gradient, is the one-pass result up to float rounding (tested). Gradient
    checkpointing recomputes layers and cannot keep a cache, so it takes the one-pass path, as does
    `share_prompt=False` (PPO's shuffled minibatches, whose rows rarely share a prompt; K = 1). The number of forward
    calls thus depends on the rows; under DDP that needs `rl_generate.ddp_settings` (no buffer broadcasts).
    """
    Tp = ids.shape[1] - n_completion
    first, group = prompt_groups(ids[:, :Tp], mask[:, :Tp])
    if not share_prompt or len(first) == len(group) or checkpointing(model):
        # Only the last T+1 positions go through the LM head (its 49k-wide matmul is a fifth of a small
        # model's work, and the (B, L, V) logits its largest activation); the prompt's logits are never used.
        _, x = _forward(model, hidden, input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                        logits_to_keep=n_completion + 1)
        return x[:, :-1]  # (B, T, V or H)
    pm, key = mask[first, :Tp], cache_keyword(model)  # (G, Tp)
    out, x0 = _forward(model, hidden, input_ids=ids[first, :Tp], attention_mask=pm, position_ids=position_ids(pm),
                       use_cache=True, logits_to_keep=1)  # the last prompt position predicts the first completion token
    if n_completion == 1:
        return x0[group]  # (B, 1, V or H)
    cache = getattr(out, key)
    cache.batch_select_indices(group)  # (G, ...) → (B, ...), differentiable indexing
    _, rest = _forward(model, hidden, input_ids=ids[:, Tp:-1], attention_mask=mask[:, :-1],
                       position_ids=position_ids(mask)[:, Tp:-1], use_cache=True, **{key: cache})  # (B, T - 1, ·)
    return torch.cat([x0[group], rest], dim=1)  # (B, T, V or H)


def _forward(model: Any, head_input: bool, **kwargs: Any) -> tuple[Any, torch.Tensor]:
    """(output, its logits) of model(**kwargs), or with `head_input` (output, what its LM head was given)."""
    if not head_input:
        out = model(**kwargs)
        return out, out.logits
    with head_inputs(getattr(model, "module", model).get_output_embeddings()) as seen:
        out = model(**kwargs)
    return out, seen[-1]


def chunkable_head(model: Any) -> torch.nn.Linear | None:
    """The LM head when log-probs can be taken through it in row chunks (a bias-free linear layer whose outputs
    are the model's logits), else None."""
    inner = getattr(model, "module", model)  # DDP's wrapper; peft's forwards get_output_embeddings
    head = inner.get_output_embeddings()
    ok = isinstance(head, torch.nn.Linear) and head.bias is None and logits_are_head_outputs(model)
    return head if ok else None


def token_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, n_completion: int, temperature: float = 1.0,
                   entropy: bool = True, share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token) and (if `entropy`) its entropy (no gradient) for the last `n_completion` positions.
    ids (B, L) → (B, T), (B, T) or None.

    With the usual bias-free LM head whose outputs are the logits, the (B, T, V) logits are never held: the
    head runs on its inputs in row chunks (`head.chunked_token_logprobs`); otherwise they are computed whole.
    Under bf16 autocast the caller's autocast covers the chunked head too (`pg_update.pg_update`, `pg_update.pg_step`,
    `ppo.ppo_step`)."""
    head = chunkable_head(model)
    if head is not None:
        hidden = completion_logits(model, ids, mask, n_completion, hidden=True, share_prompt=share_prompt)  # (B, T, H)
        return chunked_token_logprobs(hidden, head, ids[:, -n_completion:], temperature, entropy)  # (B, T) each
    logits = completion_logits(model, ids, mask, n_completion, share_prompt=share_prompt).float()  # (B, T, V)
    return tempered_logprobs(logits, ids[:, -n_completion:], temperature, entropy)  # (B, T) each


def token_logprobs_at(model: Any, ids: torch.Tensor, mask: torch.Tensor, n_completion: int,
                      temperatures: Sequence[float], share_prompt: bool = True) -> list[torch.Tensor]:
    """log π(token) at each of `temperatures` (no entropy) from one pass of the model's body, which is what
    costs: the LM head alone runs once per temperature. Each equals `token_logprobs` at that temperature.
    ids (B, L) → [(B, T)] one per temperature."""
    head, labels = chunkable_head(model), ids[:, -n_completion:]
    if head is not None:
        hidden = completion_logits(model, ids, mask, n_completion, hidden=True, share_prompt=share_prompt)  # (B, T, H)
        return [chunked_token_logprobs(hidden, head, labels, t, entropy=False)[0] for t in temperatures]
    logits = completion_logits(model, ids, mask, n_completion, share_prompt=share_prompt).float()  # (B, T, V)
    out, last = [], len(temperatures) - 1
    for i, t in enumerate(temperatures):  # the last one divides in place (one (B, T, V) copy fewer at the peak),
        in_place = i == last and not logits.requires_grad  # unless autograd may have saved the logits
        scaled = logits if t == 1.0 else logits.div_(t) if in_place else logits / t
        out.append(logprobs_from_logits(scaled, labels))
    return out
